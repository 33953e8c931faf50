"""The conformance row ``keras@native`` runs Keras's own optimizers in a ``tf.function`` with
TensorFlow's graph optimizer (grappler) off: the results must be those of Keras's eager apply, bit
for bit, and the process-wide option must be back as it was afterwards."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import conformance.backends  # noqa: F401  (the harness's import order: backends before native)
from conformance.cells import Cell, convention_of
from conformance.native import _keras_arguments, _keras_runner
from conformance.run import run_cell
from conformance.streams import STREAMS, gradients, initial_params
from uniopt.registry import KERAS_NATIVE_REFUSALS, TABLE

STEPS = 12
KERAS_CASES = [
    pytest.param(info, case, id=f"{info.name}-{case.desc}")
    for info in TABLE
    if info.keras is not None and info.keras.native is not None
    for case in info.cases
    if convention_of(info.name, case.desc) == "keras"
]
FIRST_PER_OPTIMIZER = list({p.values[0].name: p for p in reversed(KERAS_CASES)}.values())


def _eager(spec, dtype: str, stream: str, scale: float = 1.0) -> list[list[np.ndarray]]:
    """Keras's own optimizer applied eagerly: every parameter after each step (gradients times
    ``scale``, rounded to the dtype)."""
    params0 = initial_params(STREAMS[stream].param_set, dtype)
    variables = [keras.Variable(p, dtype=p.dtype.name) for p in params0]
    native, kwargs = _keras_arguments(spec)
    optimizer = getattr(keras.optimizers, native)(**kwargs)
    optimizer.build(variables)
    out = []
    for t in range(1, STEPS + 1):
        grads = [g * np.asarray(scale, g.dtype) for g in gradients(STREAMS[stream], t, dtype)]
        optimizer.apply([tf.constant(g) for g in grads], variables)
        out.append([v.numpy().copy() for v in variables])
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("info", "case"), FIRST_PER_OPTIMIZER)
def test_the_native_row_is_keras_eager_apply_bitwise(info, case, dtype):
    refused = KERAS_NATIVE_REFUSALS.get(info.name)
    if refused is not None and refused[0](info.make(case), dtype):
        # a cell the registry declares Keras cannot run (Muon's float64 matrices): Keras fails
        with pytest.raises(tf.errors.InvalidArgumentError):
            _eager(info.make(case), dtype, "huge")
        return
    before = tf.config.optimizer.get_experimental_options()
    cell = Cell(info.name, case.desc, "huge", dtype, STEPS)
    trajectory = run_cell(_keras_runner("native"), cell)
    want = _eager(info.make(case), dtype, "huge")
    assert len(want[0]) >= 1
    for i in range(len(want[0])):
        got = trajectory[f"param{i}"][1:]  # index 0 is the state before the first step
        expected = np.stack([step[i] for step in want])
        assert got.dtype == expected.dtype
        assert got.tobytes() == expected.tobytes(), f"param{i}"
    assert tf.config.optimizer.get_experimental_options() == before


def test_the_comparison_sees_a_one_ulp_change():
    """The comparison above can fail: gradients scaled by 1 + 2**-20 (a few ulp) change the bytes."""
    info, case = FIRST_PER_OPTIMIZER[0].values
    trajectory = run_cell(_keras_runner("native"), Cell(info.name, case.desc, "huge", "float32", STEPS))
    want = _eager(info.make(case), "float32", "huge", scale=1 + 2.0**-20)
    assert trajectory["param0"][1:].tobytes() != np.stack([step[0] for step in want]).tobytes()
