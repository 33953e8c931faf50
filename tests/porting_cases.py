"""Cases shared by the state-porting tests of the core and of every adapter: optimizers, a seeded
gradient stream, the uninterrupted NumPy reference run, and a bitwise comparison."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

import uniopt
from uniopt.registry import TABLE

SHAPES = ((3, 4), (5,), ())
STEPS = 9  # RAdam with betas[1]=0.999 is rectified from step 6 on

# (id, spec, the step after which the run is checkpointed)
CASES = [
    ("RAdam", uniopt.RAdam(lr=1e-2, weight_decay=0.1), 4),
    ("RAdam-decoupled", uniopt.RAdam(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True), 6),
    ("Adam-amsgrad", uniopt.Adam(lr=1e-2, amsgrad=True, weight_decay=0.05), 3),
    ("AdamW", uniopt.AdamW(lr=1e-2), 5),
    ("SGD-momentum", uniopt.SGD(lr=1e-2, momentum=0.9, nesterov=True), 1),
    ("RMSprop-centered", uniopt.RMSprop(lr=1e-2, centered=True, momentum=0.5), 4),
    ("Adagrad", uniopt.Adagrad(lr=1e-1, lr_decay=0.01, initial_accumulator_value=0.1), 2),
    # the exact products: bitwise on every backend (matmul="backend" is not: the BLAS's order)
    ("Muon-exact", uniopt.Muon(lr=0.02, matmul="exact"), 3),
]
# every other optimizer of the table, with its first case (checkpointed after step 3)
CASES += [
    (info.name, info.make(info.cases[0]), 3)
    for info in TABLE
    if info.name not in {spec.name for _, spec, _ in CASES}
]
DTYPES = ("float32", "float64")
PARAMS = [
    pytest.param(spec, split, dtype, id=f"{name}-{dtype}") for name, spec, split in CASES for dtype in DTYPES
]


def params_for(backend: str) -> list:
    """:data:`PARAMS` of the optimizers ``backend``'s adapter runs (``OptimizerInfo.skip_reason``)."""
    from uniopt.registry import get

    return [p for p in PARAMS if get(p.values[0].name).skip_reason(backend) is None]


def stream(
    dtype: str,
    steps: int = STEPS,
    shapes: Sequence[tuple[int, ...]] = SHAPES,
    seed: int = 0,
    spec: uniopt.Spec | None = None,
):
    """Initial parameters and ``steps`` gradient lists, drawn in float64 and rounded once; with
    ``spec``, each shape it refuses as a matrix of the same elements (``cases.shapes_for``)."""
    if spec is not None:
        from cases import shapes_for

        shapes = shapes_for(spec, shapes)
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    return params, grads


def reference(spec: uniopt.Spec, params, grads) -> tuple[list[np.ndarray], uniopt.State]:
    """The uninterrupted NumPy run: final parameters and state."""
    params = [p.copy() for p in params]
    state = spec.init(params)
    for g in grads:
        params, state = spec.update(g, state, params)
    return params, state


def bits(array) -> np.ndarray:
    array = np.asarray(array)
    return array.view(f"u{array.dtype.itemsize}")


def assert_bitwise(actual: Sequence, expected: Sequence, what: str) -> None:
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        a, e = np.asarray(a), np.asarray(e)
        assert a.dtype == e.dtype and a.shape == e.shape, (
            f"{what}[{i}]: {a.dtype}{a.shape} vs {e.dtype}{e.shape}"
        )
        np.testing.assert_array_equal(bits(a), bits(e), err_msg=f"{what}[{i}]")


def assert_state_bitwise(slots: Sequence, expected: uniopt.State, step: int, actual_step: int) -> None:
    """Slots (one mapping per parameter) equal the reference state's, bit for bit."""
    assert actual_step == step == expected.step
    for i, (mine, ref) in enumerate(zip(slots, expected.slots, strict=True)):
        assert set(mine) == set(ref), f"param {i}: slots {sorted(mine)} vs {sorted(ref)}"
        for name in ref:
            assert_bitwise([mine[name]], [ref[name]], f"param {i} slot {name}")
