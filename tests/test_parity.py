"""The native-parity measurement (conformance/parity.py): its figures on runners with known errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conformance.backends import one_cell, run_namespace
from conformance.cells import Cell
from conformance.parity import BEGIN, END, measure_cell, render


def _numpy_runner():
    import array_api_compat.numpy as xp

    return one_cell(run_namespace(xp, lambda a: a.copy(), lambda a: np.array(a, copy=True)))


def _one_ulp_up(runner):
    """A 'native' optimizer that steps like uniopt from its own state, then rounds every parameter
    one ulp up: its one-step distance is exactly 1 ulp at every step."""
    import array_api_compat.numpy as xp

    from uniopt import State

    def run(spec, params0, grads_at, steps):
        params = [p.copy() for p in params0]
        state = spec.init(params, xp)
        yield [p.copy() for p in params], [dict(s) for s in state.slots]
        for t in range(1, steps + 1):
            params, state = spec.update(grads_at(t), State(t - 1, state.slots), params, xp)
            params = [np.nextafter(p, np.asarray(np.inf, p.dtype)) for p in params]
            yield [p.copy() for p in params], [dict(s) for s in state.slots]

    return run


CELL = Cell("Adam", "optax", "parity", "float32", 12)


def test_a_native_that_is_uniopt_measures_zero():
    row = measure_cell("optax", _numpy_runner(), CELL)
    assert (row["trajectory_rel"], row["one_step_ulp"], row["one_step_rel"]) == (0.0, 0, 0.0)
    assert row["bitwise_steps"] == 12


def test_one_ulp_per_step_is_measured_as_one_ulp():
    row = measure_cell("optax", _one_ulp_up(_numpy_runner()), CELL)
    assert row["one_step_ulp"] == 1
    assert row["bitwise_steps"] == 0
    # the trajectory accumulates the bumps: more than one float32 ulp of a parameter near 1 over a
    # step of about lr = 0.01, less than 12 of them
    assert 1e-7 / 0.5 < row["trajectory_rel"] < 12 * 2.4e-7 / 0.005
    assert row["one_step_rel"] > 0


def test_render_writes_between_the_markers_and_needs_them(tmp_path):
    record = {
        "native": "optax",
        "settings": "jit, jax_enable_x64=off",
        "label": "",
        "uniopt": "abc1234",
        "stream": "parity",
        "versions": {"optax": "0.2.8"},
        "rows": [
            {
                "optimizer": "RAdam",
                "case": "optax",
                "dtype": "float32",
                "steps": 200,
                "trajectory_rel": 2.3e-4,
                "one_step_ulp": 7208,
                "one_step_rel": 6.1e-3,
                "bitwise_steps": 0,
            }
        ],
        "skipped": {},
    }
    before = dict(record, label="before", rows=[dict(record["rows"][0], one_step_ulp=9999)])
    (tmp_path / "a.json").write_text(json.dumps(record))
    (tmp_path / "b.json").write_text(json.dumps(before))
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{BEGIN}\nold table\n{END}\noutro\n")
    render([tmp_path / "a.json", tmp_path / "b.json"], doc)
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{END}\noutro\n") and "old table" not in text
    assert (
        "| optax | jit, jax_enable_x64=off | RAdam/optax | float32 "
        "| 2.3e-04 | 9999 | 6.1e-03 | 2.3e-04 | 7208 | 6.1e-03 | 0 of 200 |" in text
    )
    doc.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        render([tmp_path / "a.json"], doc)
