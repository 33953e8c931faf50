"""The benchmark's bookkeeping (``bench``): refused variants are recorded as not run with the
library's message, other failures stop the run, and the report's uniopt-against-native table picks
the rows it says it picks. No timing is asserted (speed is measured by ``nox -s bench``)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.common import Variant, measure
from bench.report import against_natives
from bench.tf_bench import _refuses_xla


def _variant(name: str, kind: str, fail: Exception | None = None, refusal=lambda exc: False) -> Variant:
    def build(params: list[np.ndarray], grads: list[np.ndarray]):
        def step() -> None:
            if fail is not None:
                raise fail

        return step

    return Variant(name, kind, build, refusal=refusal)


def _measure(variants: list[Variant], rounds: int = 1):
    """``measure`` over one three-element float32 parameter, quietly."""
    return measure(
        variants,
        [np.zeros(3, np.float32)],
        [np.ones(3, np.float32)],
        warmup=rounds,
        rounds=rounds,
        steps=1,
        log=lambda s: None,
    )


def test_a_refused_variant_is_recorded_as_not_run_with_the_refusal():
    refusal = ValueError("in user code: File x.py, line 3 ValueError: Adafactor: run without jit_compile")
    ours, theirs = _measure(
        [_variant("ours (jit_compile)", "uniopt", refusal, _refuses_xla), _variant("theirs", "native")],
        rounds=2,
    )
    assert ours.ms is None and ours.first_step_s is None
    assert ours.skip == "refused: Adafactor: run without jit_compile"
    assert theirs.ms is not None and theirs.ms >= 0 and theirs.skip == ""


def test_a_failure_that_is_no_refusal_stops_the_run():
    with pytest.raises(ValueError, match="a bug"):
        _measure([_variant("ours (jit_compile)", "uniopt", ValueError("a bug"), _refuses_xla)])
    with pytest.raises(TypeError):  # only a ValueError naming jit_compile is uniopt.tf's refusal
        _measure([_variant("ours", "uniopt", TypeError("jit_compile"), _refuses_xla)])


def _row(name: str, kind: str, ms: float | None) -> dict:
    return {"name": name, "kind": kind, "ms": ms}


def test_against_natives_takes_the_headline_row_or_the_fastest_uniopt_row_where_it_was_refused():
    results = {
        "tf": {
            "results": {
                "Adafactor": {
                    "large": {
                        "label": "L",
                        "rows": [
                            _row("uniopt.tf.Adafactor (tf.function)", "uniopt-mode", 50.0),
                            _row("keras Adafactor (tf.function)", "native", 20.0),
                            _row("uniopt.tf.Adafactor (jit_compile)", "uniopt", None),
                            _row("keras Adafactor (jit_compile)", "native", 25.0),
                            _row("bound", "bound", 10.0),
                        ],
                    }
                },
                "Lamb": {
                    "large": {
                        "label": "L",
                        "rows": [
                            _row("uniopt.tf.Lamb (tf.function)", "uniopt-mode", 40.0),
                            _row("uniopt.tf.Lamb (jit_compile)", "uniopt", 15.0),
                            _row("keras Lamb (jit_compile)", "native", 20.0),
                        ],
                    }
                },
            }
        },
        "torch": {
            "results": {
                "Lamb": {"large": {"label": "L", "rows": [_row("uniopt.torch.Lamb", "uniopt", 60.0)]}},
                "Muon": {
                    "large": {
                        "label": "L",
                        "rows": [
                            _row("uniopt.torch.Muon", "uniopt", 300.0),
                            _row("uniopt.torch.Muon(convention='torch')", "uniopt-mode", 250.0),
                            _row("torch.optim.Muon", "native", 100.0),
                        ],
                    }
                },
            }
        },
    }
    rows = {(r[0], r[1]): r[3:] for r in against_natives(results)}
    assert rows["tf", "Adafactor"] == [
        "uniopt.tf.Adafactor (tf.function): 50.00 ms",
        "keras Adafactor (tf.function): 20.00 ms",
        "2.50",
        "",
    ]
    assert rows["tf", "Lamb"] == [
        "uniopt.tf.Lamb (jit_compile): 15.00 ms",
        "keras Lamb (jit_compile): 20.00 ms",
        "0.75",
        "",
    ]
    assert rows["torch", "Lamb"] == ["uniopt.torch.Lamb: 60.00 ms", "none", "", ""]
    assert rows["torch", "Muon"] == [
        "uniopt.torch.Muon: 300.00 ms",
        "torch.optim.Muon: 100.00 ms",
        "3.00",
        "uniopt.torch.Muon(convention='torch'): 250.00 ms",
    ]
