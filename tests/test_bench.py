"""The benchmark's bookkeeping (``bench``): refused variants are recorded as not run with the
library's message, other failures stop the run, and the report's uniopt-against-native table picks
the rows it says it picks. No timing is asserted (speed is measured by ``nox -s bench``)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from bench.common import Measured, Variant, measure, merged, read_results, with_runs, write_results
from bench.report import (
    _ratio,
    against_natives,
    lower_precision,
    markdown,
    prepared,
    run_lines,
    sparse_targets,
    targets,
)
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


def _row(name: str, kind: str, ms: float | None, state_bytes: int | None = None) -> dict:
    """A row of a results file as the report reads it."""
    return {
        "name": name,
        "kind": kind,
        "ms": ms,
        "state_bytes": state_bytes,
        "first_step_s": None,
        "peak_step_bytes": None,
        "note": "",
        "skip": "" if ms is not None else "refused",
    }


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


# --- results files: runs, --merge, files written before runs were recorded ---------------------


def _measured(name: str, kind: str, ms: float | None, state_bytes: int | None = 0) -> Measured:
    return Measured(name, kind, ms, 0.0, 0.1, state_bytes, 0)


def _entry(label: str, *rows: Measured) -> dict:
    return {"label": label, "size": 1, "tensors": 1, "rows": list(rows)}


def _run(started: str, load: float, **options) -> dict:
    """A run record as :func:`bench.common.new_run` makes it, with a fixed start and load."""
    run = {
        "id": None,
        "started": started,
        "versions": {"torch": "2.0"},
        "machine": {"cpu": "CPU", "cores": 2, "python": "3.11", "load_before": load},
        "options": {"quick": False, "rounds": 7, "steps": 2, "warmup": 7, "device": "cpu", **options},
    }
    return run


def _runs_by_entry(payload: dict) -> dict[tuple[str, str], int]:
    return {(o, s): e["run"] for o, sets in payload["results"].items() for s, e in sets.items()}


def test_merge_replaces_the_entries_a_run_measures_and_keeps_the_others(tmp_path):
    first = _run("2024-01-01T10:00:00Z", 0.5)
    table = {
        "RAdam": {"large": _entry("L", _measured("uniopt.torch.RAdam", "uniopt", 10.0))},
        "Adam": {
            "large": _entry("L", _measured("uniopt.torch.Adam", "uniopt", 20.0)),
            "many_small": _entry("S", _measured("uniopt.torch.Adam", "uniopt", 5.0)),
        },
    }
    path = write_results(tmp_path, "torch", first, table)
    assert path == tmp_path / "torch.json"
    before = read_results(path)
    assert [r["id"] for r in before["runs"]] == [1] and before["runs"][0]["started"] == first["started"]
    assert set(_runs_by_entry(before).values()) == {1}

    second = _run("2024-01-02T10:00:00Z", 1.5, merge=True)
    write_results(
        tmp_path, "torch", second, {"Adam": {"large": _entry("L", _measured("new", "uniopt", 30.0))}}, before
    )
    after = read_results(path)
    assert _runs_by_entry(after) == {("RAdam", "large"): 1, ("Adam", "large"): 2, ("Adam", "many_small"): 1}
    assert [r["name"] for r in after["results"]["Adam"]["large"]["rows"]] == ["new"]
    assert after["results"]["Adam"]["many_small"]["rows"][0]["ms"] == 5.0  # kept as it was
    assert [(r["id"], r["started"], r["machine"]["load_before"]) for r in after["runs"]] == [
        (1, "2024-01-01T10:00:00Z", 0.5),
        (2, "2024-01-02T10:00:00Z", 1.5),
    ]
    assert after["runs"][1]["options"]["merge"] is True
    assert "load_after" in after["runs"][1]["machine"]

    # a run that replaces every entry left from run 1: run 1 is no longer listed
    third = _run("2024-01-03T10:00:00Z", 2.5)
    redo = {
        "RAdam": {"large": _entry("L", _measured("r", "uniopt", 1.0))},
        "Adam": {"many_small": _entry("S", _measured("s", "uniopt", 1.0))},
    }
    write_results(tmp_path, "torch", third, redo, after)
    last = read_results(path)
    assert [r["id"] for r in last["runs"]] == [2, 3]
    assert _runs_by_entry(last) == {("RAdam", "large"): 3, ("Adam", "large"): 2, ("Adam", "many_small"): 3}

    # without a base (no --merge) the file is replaced: only the new run's entries
    write_results(tmp_path, "torch", _run("2024-01-04T10:00:00Z", 0.1), {"Lamb": {"large": _entry("L")}})
    alone = read_results(path)
    assert [r["id"] for r in alone["runs"]] == [1] and _runs_by_entry(alone) == {("Lamb", "large"): 1}


def test_a_merged_run_cut_short_leaves_the_base_entries_it_has_not_measured_yet(tmp_path):
    base = with_runs(
        {
            "framework": "tf",
            "runs": [{**_run("2024-01-01T00:00:00Z", 1.0), "id": 4}],
            "results": {
                "Adam": {"large": {**_entry("L"), "run": 4}},
                "SGD": {"sparse": {**_entry("E"), "run": 4}},
            },
        }
    )
    run, table = _run("2024-02-01T00:00:00Z", 1.0), {}
    table["Adam"] = {"large": _entry("L2")}  # the file as a run writes it after its first set
    write_results(tmp_path, "tf", run, table, base)
    mid = read_results(tmp_path / "tf.json")
    assert run["id"] == 5 and [r["id"] for r in mid["runs"]] == [4, 5]
    assert _runs_by_entry(mid) == {("Adam", "large"): 5, ("SGD", "sparse"): 4}
    assert (
        mid["results"]["Adam"]["large"]["label"] == "L2" and mid["results"]["SGD"]["sparse"]["label"] == "E"
    )
    table["SGD"] = {"sparse": _entry("E2")}  # and after its second: run 4 has no entry left
    write_results(tmp_path, "tf", run, table, base)
    final = read_results(tmp_path / "tf.json")
    assert run["id"] == 5 and [r["id"] for r in final["runs"]] == [5]
    assert _runs_by_entry(final) == {("Adam", "large"): 5, ("SGD", "sparse"): 5}


def test_a_file_without_runs_reads_as_one_run_and_merges():
    legacy = {
        "framework": "jax",
        "versions": {"jax": "0.4"},
        "machine": {"cpu": "CPU", "cores": 2, "python": "3.11", "load_before": 1.25},
        "options": {"quick": False, "rounds": 7, "steps": 2, "warmup": 7, "device": "cpu"},
        "results": {"Adam": {"large": _entry("L"), "many_small": _entry("S")}},
    }
    data = with_runs(legacy)
    assert data["runs"] == [
        {
            "id": 1,
            "started": None,
            "versions": {"jax": "0.4"},
            "machine": {"cpu": "CPU", "cores": 2, "python": "3.11", "load_before": 1.25},
            "options": {"quick": False, "rounds": 7, "steps": 2, "warmup": 7, "device": "cpu"},
        }
    ]
    assert _runs_by_entry(data) == {("Adam", "large"): 1, ("Adam", "many_small"): 1}
    assert "run" not in legacy["results"]["Adam"]["large"]  # the file's dict is not changed
    out = merged(data, "jax", _run("2024-01-01T00:00:00Z", 1.0), {"Adam": {"large": _entry("L2")}})
    assert [r["id"] for r in out["runs"]] == [1, 2]
    assert _runs_by_entry(out) == {("Adam", "large"): 2, ("Adam", "many_small"): 1}


def test_merge_refuses_another_frameworks_file_and_an_entry_of_an_unlisted_run():
    data = with_runs({"framework": "jax", "runs": [{**_run("t", 1.0), "id": 1}], "results": {}})
    with pytest.raises(ValueError, match="cannot merge torch results into a file of 'jax' results"):
        merged(data, "torch", _run("t", 1.0), {})
    bad = {
        "framework": "jax",
        "runs": [{**_run("t", 1.0), "id": 1}],
        "results": {"Adam": {"large": {"run": 2}}},
    }
    with pytest.raises(ValueError, match="results of Adam on large name run 2"):
        with_runs(bad)


# --- the report: runs listed, ratios within one run, sparse targets, lower-precision state ----


def test_the_report_lists_each_run_with_the_rows_it_measured():
    torch_file = {
        "framework": "torch",
        "runs": [
            {**_run("2024-01-01T10:00:00Z", 0.5), "id": 1},
            {
                **_run("2024-01-02T11:30:00Z", 1.5, quick=True, sparse_threads=1),
                "id": 2,
                "machine": {
                    "cpu": "CPU",
                    "cores": 2,
                    "python": "3.11",
                    "load_before": 1.5,
                    "load_after": 2.25,
                },
            },
        ],
        "results": {
            "RAdam": {
                "large": {"label": "25M", "rows": [], "run": 1},
                "many_small": {"label": "1M", "rows": [], "run": 1},
            },
            "Adam": {
                "large": {"label": "6M", "rows": [], "run": 2},
                "many_small": {"label": "1M", "rows": [], "run": 1},
            },
            "SGD": {"sparse": {"label": "emb", "rows": [], "run": 2}},
        },
    }
    jax_file = {
        "framework": "jax",
        "versions": {"jax": "0.4", "XLA_FLAGS": ""},
        "machine": {"cpu": "CPU", "cores": 2, "python": "3.11", "load_before": 1.0},
        "options": {"quick": False, "rounds": 7, "steps": 2, "warmup": 7},
        "results": {"Adam": {"large": {"label": "25M", "rows": []}}},
    }
    tf_file = {
        "framework": "tf",
        "runs": [{**_run("2024-01-03T00:00:00Z", 1.0, not_run="TensorFlow sees no GPU"), "id": 3}],
        "results": {},
    }
    lines = run_lines(
        {fw: prepared(f) for fw, f in (("torch", torch_file), ("jax", jax_file), ("tf", tf_file))}
    )
    assert lines == [
        "* torch, run 1 (2024-01-01 10:00:00 UTC): torch 2.0; CPU, 2 cores, load average 0.50 before the "
        "run; 7 rounds x 2 steps after 7 warm-up steps; rows: large (25M): RAdam; "
        "many_small (1M): RAdam, Adam.",
        "* torch, run 2 (2024-01-02 11:30:00 UTC): torch 2.0; CPU, 2 cores, load average 1.50 before the "
        "run, 2.25 after; 7 rounds x 2 steps after 7 warm-up steps (--quick); the sparse set with 1 "
        "intra-op thread(s); rows: large (6M): Adam; sparse (emb): SGD.",
        "* jax, run 1 (date not recorded): jax 0.4; CPU, 2 cores, load average 1.00 before the run; "
        "7 rounds x 2 steps after 7 warm-up steps; rows: large (25M): Adam.",
        "* tf, run 3 (2024-01-03 00:00:00 UTC): not run on this device: TensorFlow sees no GPU.",
    ]


def test_a_ratio_is_only_formed_within_one_run():
    with pytest.raises(AssertionError, match="come from different runs"):
        _ratio({"name": "a", "ms": 1.0, "run": 1}, {"name": "b", "ms": 2.0, "run": 2})
    assert _ratio({"name": "a", "ms": 1.0, "run": 2}, {"name": "b", "ms": 4.0, "run": 2}) == 0.25

    # torch's fused-Adam target falls back to the Adam entry's fused row only where one run measured both
    def torch_file(adam_run: int) -> dict:
        return prepared(
            {
                "framework": "torch",
                "runs": [{**_run("t", 1.0), "id": 1}, {**_run("t", 1.0), "id": 2}],
                "results": {
                    "RAdam": {
                        "large": {
                            "label": "L",
                            "rows": [_row("uniopt.torch.RAdam", "uniopt", 12.0)],
                            "run": 2,
                        }
                    },
                    "Adam": {
                        "large": {
                            "label": "L",
                            "rows": [_row("torch.optim.Adam(fused=True)", "native", 16.0)],
                            "run": adam_run,
                        }
                    },
                },
            }
        )

    fused = "uniopt.torch.RAdam ≤ 0.9x torch.optim.Adam(fused=True), large"
    assert [t for t in targets({"torch": torch_file(1)}) if t[0] == fused] == []
    assert [t for t in targets({"torch": torch_file(2)}) if t[0] == fused] == [
        (fused, "12.00 / 16.00 ms = 0.75", "met")
    ]


def test_the_fused_adam_targets_are_the_issues_ratios():
    """0.9x fused Adam on the large set, 0.3x on the many-small set: a ratio between 0.3 and 1 on
    the many-small set is missed."""

    def results(ms_small):
        rows = {
            set_name: {
                "label": set_name,
                "rows": [
                    _row("uniopt.torch.RAdam", "uniopt", ours),
                    _row("torch.optim.Adam(fused=True)", "reference", 10.0),
                ],
                "run": 1,
            }
            for set_name, ours in (("large", 8.9), ("many_small", ms_small))
        }
        return {
            "torch": {"framework": "torch", "runs": [{**_run("t", 1.0), "id": 1}], "results": {"RAdam": rows}}
        }

    def verdicts(ms_small):
        return {
            t[0].split(", ")[-1]: (t[0].split(" ≤ ")[1].split("x")[0], t[2])
            for t in targets(results(ms_small))
            if "fused" in t[0]
        }

    assert verdicts(3.0) == {"large": ("0.9", "met"), "many_small": ("0.3", "met")}
    assert verdicts(5.0)["many_small"] == ("0.3", "missed")


def test_sparse_rows_are_in_the_table_against_natives_and_in_the_targets():
    results = {
        "torch": {
            "results": {
                "Adagrad": {
                    "sparse": {
                        "label": "1,000,000 x 64 embedding, 32 rows touched",
                        "rows": [
                            _row("uniopt.torch.Adagrad", "uniopt", 0.12),
                            _row("torch.optim.Adagrad", "native", 0.1),
                        ],
                    }
                },
                "SGD": {
                    "sparse": {
                        "label": "1,000,000 x 64 embedding, 32 rows touched",
                        "rows": [
                            _row("uniopt.torch.SGD", "uniopt", 0.35),
                            _row("torch.optim.SGD", "native", 0.2),
                        ],
                    }
                },
            }
        },
        "tf": {
            "results": {
                "SGD": {
                    "sparse": {
                        "label": "E",
                        "rows": [
                            _row("uniopt.tf.SGD (tf.function)", "uniopt", 0.3),
                            _row("keras.optimizers.SGD (tf.function)", "native", 0.25),
                            _row("uniopt.tf.SGD (eager)", "uniopt-mode", 1.2),
                            _row("keras.optimizers.SGD (eager)", "native", 0.5),
                        ],
                    }
                },
                # no sparse entry: no sparse target
                "Adam": {
                    "large": {"label": "L", "rows": [_row("uniopt.tf.Adam (jit_compile)", "uniopt", 9.0)]}
                },
                "Adagrad": {  # a native that steps the whole table: the ratio to two significant digits
                    "sparse": {
                        "label": "E",
                        "rows": [
                            _row("uniopt.tf.Adagrad (tf.function)", "uniopt", 0.5),
                            _row("keras.optimizers.Adagrad (tf.function)", "native", 200.0),
                        ],
                    }
                },
            }
        },
    }
    assert sparse_targets(results) == [
        (
            "uniopt.torch.Adagrad within 1.5x of the native sparse step, sparse",
            "uniopt.torch.Adagrad 0.12 / torch.optim.Adagrad 0.1 ms = 1.20",
            "met",
        ),
        (
            "uniopt.torch.SGD within 1.5x of the native sparse step, sparse",
            "uniopt.torch.SGD 0.35 / torch.optim.SGD 0.2 ms = 1.75",
            "missed",
        ),
        (
            "uniopt.tf.SGD within 1.5x of the native sparse step, sparse",
            "uniopt.tf.SGD (tf.function) 0.3 / keras.optimizers.SGD (tf.function) 0.25 ms = 1.20",
            "met",
        ),
        (
            "uniopt.tf.Adagrad within 1.5x of the native sparse step, sparse",
            "uniopt.tf.Adagrad (tf.function) 0.5 / keras.optimizers.Adagrad (tf.function) 200.00 ms = 0.0025",
            "met",
        ),
    ]
    assert targets(results)[-4:] == sparse_targets(results)
    rows = {(r[0], r[1], r[2]): r[3:] for r in against_natives(results)}
    assert rows["torch", "Adagrad", "1,000,000 x 64 embedding, 32 rows touched"] == [
        "uniopt.torch.Adagrad: 0.12 ms",
        "torch.optim.Adagrad: 0.1 ms",
        "1.20",
        "",
    ]
    assert rows["tf", "SGD", "E"] == [
        "uniopt.tf.SGD (tf.function): 0.3 ms",
        "keras.optimizers.SGD (tf.function): 0.25 ms",
        "1.20",
        "",
    ]


def test_the_lower_precision_section_pairs_each_bfloat16_row_with_its_float32_row():
    mib = 2**20
    results = {
        "torch": {
            "results": {
                "Adam": {
                    "large": {
                        "label": "L",
                        "rows": [
                            _row("uniopt.torch.Adam", "uniopt", 30.0, 96 * mib),
                            _row(
                                "uniopt.torch.Adam(state_dtypes={'exp_avg': torch.bfloat16})",
                                "uniopt-mode",
                                20.0,
                                72 * mib,
                            ),
                            _row("torch.optim.Adam(fused=True)", "native", 25.0, 96 * mib),
                        ],
                    }
                }
            }
        },
        "jax": {
            "results": {
                "Adam": {
                    "large": {
                        "label": "L",
                        "rows": [
                            _row("uniopt.jax.adam (jit, donated)", "uniopt", 40.0, 8 * mib),
                            _row("optax.adam (jit, donated)", "native", 32.0, 8 * mib),
                            _row(
                                "uniopt.jax.adam(mu_dtype=bfloat16) (jit, donated)",
                                "uniopt-mode",
                                50.0,
                                6 * mib,
                            ),
                            _row("optax.adam(mu_dtype=bfloat16) (jit, donated)", "reference", 48.0, 6 * mib),
                        ],
                    }
                }
            }
        },
        "tf": {
            "results": {
                "Adam": {
                    "large": {
                        "label": "L",
                        "rows": [
                            _row("uniopt.tf.Adam (jit_compile)", "uniopt", 10.0, 4 * mib),
                            # refused or skipped: no pair
                            _row(
                                "uniopt.tf.Adam(state_dtypes={'exp_avg': 'bfloat16'}) (jit_compile)",
                                "uniopt-mode",
                                None,
                            ),
                        ],
                    }
                }
            }
        },
    }
    assert lower_precision(results) == [
        ["torch", "Adam", "L", "uniopt.torch.Adam", "96.0", "72.0", "30.00", "20.00", "0.67"],
        ["jax", "Adam", "L", "uniopt.jax.adam (jit, donated)", "8.0", "6.0", "40.00", "50.00", "1.25"],
        ["jax", "Adam", "L", "optax.adam (jit, donated)", "8.0", "6.0", "32.00", "48.00", "1.50"],
    ]
    # a faster lower-precision row is not the "faster uniopt row": it keeps another state
    rows = {(r[0], r[1]): r[3:] for r in against_natives(results)}
    assert rows["torch", "Adam"] == [
        "uniopt.torch.Adam: 30.00 ms",
        "torch.optim.Adam(fused=True): 25.00 ms",
        "1.20",
        "",
    ]
    md = markdown(
        {
            fw: prepared(
                {
                    "framework": fw,
                    "runs": [{**_run("t", 1.0), "id": 1}],
                    "results": {"Adam": {s: {**e, "run": 1} for s, e in d["results"]["Adam"].items()}},
                }
            )
            for fw, d in results.items()
        },
        "chart.png",
    )
    section = md.split("## Lower-precision state")[1].split("![step times]")[0]
    assert "| torch | Adam | L | uniopt.torch.Adam | 96.0 | 72.0 | 30.00 | 20.00 | 0.67 |" in section
    assert "torch.optim and Keras have no Adam with a bfloat16 first moment" in section


def test_the_torch_benchmark_compiles_into_an_empty_cache_of_its_own(monkeypatch):
    """No kernel cached by an earlier process is timed (one built on one thread ran serially)."""
    from bench.__main__ import fresh_inductor_cache

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    cache = fresh_inductor_cache()
    assert cache is not None and os.environ["TORCHINDUCTOR_CACHE_DIR"] == cache
    assert os.path.isdir(cache) and not os.listdir(cache)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/chosen")
    assert fresh_inductor_cache() is None
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/chosen"


def test_the_in_place_bound_reads_four_arrays_and_writes_three_in_place():
    from bench.common import in_place_bound

    size = 3 * 32768 + 5  # whole tiles and a partial one
    rng = np.random.default_rng(1)
    p, g, m, v = (rng.standard_normal(size).astype(np.float32) for _ in range(4))
    before = [a.copy() for a in (p, g, m, v)]
    step = in_place_bound(size, threads=2, arrays=(p, g, m, v))
    if step is None:
        pytest.skip("no C compiler on this machine: the bound's row is recorded as not run")
    step()
    step()
    # NumPy's float32 additions, one rounding each, as the loop's
    for new, old in ((p, before[0]), (m, before[2]), (v, before[3])):
        np.testing.assert_array_equal(new, (old + before[1]) + before[1])
    np.testing.assert_array_equal(g, before[1])


def test_the_in_place_bound_refuses_arrays_it_cannot_update_and_needs_a_compiler(monkeypatch):
    from bench.common import in_place_bound

    def four(dtype=np.float32):
        return [np.zeros(4, dtype) for _ in range(4)]

    read_only = four()
    read_only[2] = np.frombuffer(bytes(16), np.float32)  # m: memory the loop must not write
    aliased = four()
    aliased[3] = aliased[0]  # v is p: the loop's restrict pointers would alias
    for arrays in (four(np.float64), read_only, aliased, [[0.0] * 4] * 4, four()[:3]):
        with pytest.raises(ValueError, match="arrays: expected p, g, m, v"):
            in_place_bound(4, arrays=arrays)
    for threads in (0, -1, 2.5, "2", True):
        with pytest.raises(ValueError, match="threads: expected a whole number >= 1"):
            in_place_bound(4, threads=threads)
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert in_place_bound(4) is None


def test_the_in_place_bound_takes_a_compiler_with_arguments(monkeypatch):
    """``$CC`` is split as a shell would (``ccache gcc``, ``gcc -w``)."""
    import shutil

    from bench.common import in_place_bound

    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler on this machine")
    monkeypatch.setenv("CC", f"{gcc} -w")
    p, g, m, v = (np.full(3, x, np.float32) for x in (1.0, 0.5, 2.0, 3.0))
    step = in_place_bound(3, threads=1, arrays=(p, g, m, v))
    assert step is not None
    step()
    assert p.tolist() == [1.5] * 3 and m.tolist() == [2.5] * 3 and v.tolist() == [3.5] * 3


def test_the_targets_say_whether_the_fused_adam_target_is_above_the_in_place_bound():
    def results(fused_ms: float) -> dict:
        rows = [
            _row("uniopt.torch.RAdam", "uniopt", 21.0),
            _row("torch.optim.Adam(fused=True)", "reference", fused_ms),
            _row("memory-bandwidth bound (in-place C loop)", "bound", 20.0),
            _row("memory-bandwidth bound (numpy copyto)", "bound", 30.0),
        ]
        for r in rows:
            r["run"] = 1
        return {"torch": {"results": {"RAdam": {"large": {"label": "L", "rows": rows}}}}}

    def reach(fused_ms: float) -> tuple[str, str, str]:
        (row,) = [t for t in targets(results(fused_ms)) if t[0].startswith("(whether")]
        return row

    below = reach(21.0)  # 0.9 x 21 ms = 18.9 ms, under the 20 ms bound
    assert below[1] == "21.00 / 20.00 ms = 1.05"
    assert below[2].startswith("below the bound")
    assert reach(25.0)[2] == "reachable"  # 0.9 x 25 ms = 22.5 ms, above it
    bound_row = [t for t in targets(results(25.0)) if "1.3x memory-bandwidth bound" in t[0]]
    assert bound_row[0][1] == "21.00 / 20.00 ms = 1.05"  # the tight bound, not the copy
