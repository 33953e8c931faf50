"""Shared pieces of the uniopt.jax tests: seeded inputs, the NumPy reference run, bitwise checks.

The reference is the core spec run on NumPy arrays (``spec.update``), which shares no code with the
adapter's pytree handling, table gathering or jit formulation.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_dtypes
import numpy as np
import optax

import uniopt

SHAPES = ((16,), (4, 8), (), (3, 1, 2))


def np_dtype(dtype) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if str(dtype) == "bfloat16" else np.dtype(dtype)


def initial(shapes: Sequence[tuple[int, ...]], dtype, seed: int = 0, away_from_zero: bool = True):
    """Starting parameters; by default ``|p| >= 1`` so that no step in a short run changes a
    parameter by more than half of it (then ``p + (new - p) == new`` exactly, see docs/jax.md)."""
    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        x = rng.standard_normal(shape)
        if away_from_zero:
            x = np.sign(x) * (1.0 + np.abs(x)) + (x == 0)
        out.append(x.astype(np_dtype(dtype)))
    return out


def grads_at(step: int, shapes, dtype, scale: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(1000 + step)
    return [(scale * rng.standard_normal(s)).astype(np_dtype(dtype)) for s in shapes]


def reference(spec: uniopt.Spec, params0, grads, lrs=None):
    """The NumPy run of the core: (params after every step, final core State)."""
    params, state = [p.copy() for p in params0], spec.init(params0)
    history = []
    with np.errstate(all="ignore"):
        for t, g in enumerate(grads, start=1):
            lr = None if lrs is None else lrs[t - 1]
            params, state = spec.update(g, state, params, lr=lr)
            history.append([np.asarray(p).copy() for p in params])
    return history, state


def run_contract(tx, params0, grads, *, jit: bool):
    """``tx.update`` + ``optax.apply_updates`` on a list pytree: params after every step, state."""

    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step) if jit else step
    params = [jax.numpy.asarray(p) for p in params0]
    state = tx.init(params)
    history = []
    for g in grads:
        params, state = step(params, state, [jax.numpy.asarray(x) for x in g])
        history.append([np.asarray(p) for p in params])
    return history, state


def contract_steps(tx, params, grads, state=None):
    """``tx.update`` + ``optax.apply_updates`` over ``grads``, one compiled step: (params, state).
    The state is made outside ``jax.jit``, as a training loop makes it (traced from an ``init`` in
    the same program, the zero slots and step count are constants XLA folds into the first step,
    which then rounds otherwise)."""

    @jax.jit
    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params) if state is None else state
    for g in grads:
        params, state = step(params, state, g)
    return params, state


def run_direct(tx, params0, grads, *, jit: bool):
    """``tx.step``: the rule's new parameters without optax.apply_updates."""
    step = jax.jit(tx.step) if jit else tx.step
    params = [jax.numpy.asarray(p) for p in params0]
    state = tx.init(params)
    history = []
    for g in grads:
        params, state = step([jax.numpy.asarray(x) for x in g], state, params)
        history.append([np.asarray(p) for p in params])
    return history, state


def same_bits(a, b) -> bool:
    """Bit-identical arrays (any two NaNs count as equal; +0 and -0 do not)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    uint = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    fa, fb = a.astype(np.float64), b.astype(np.float64)
    return bool(np.all((a.view(uint) == b.view(uint)) | (np.isnan(fa) & np.isnan(fb))))


def assert_history_equal(got, want, what: str = "") -> None:
    for t, (g_step, w_step) in enumerate(zip(got, want, strict=True), start=1):
        for i, (g, w) in enumerate(zip(g_step, w_step, strict=True)):
            assert same_bits(g, w), f"{what} step {t} param {i}: {g!r} != {w!r}"


def assert_history_within(got, want, bound: int, what: str = "") -> None:
    """:func:`assert_history_equal` where ``bound`` is 0 (bitwise), else every value within
    ``bound`` ulp (the table's bound for the cell: Muon's backend matrix products)."""
    if bound == 0:
        assert_history_equal(got, want, what)
        return
    for t, (g_step, w_step) in enumerate(zip(got, want, strict=True), start=1):
        for i, (g, w) in enumerate(zip(g_step, w_step, strict=True)):
            g, w = np.asarray(g), np.asarray(w)
            both_nan = np.isnan(g.astype(np.float64)) & np.isnan(w.astype(np.float64))
            distance = ulp_distance(
                np.where(both_nan, 0, g).astype(g.dtype), np.where(both_nan, 0, w).astype(w.dtype)
            )
            assert distance <= bound, f"{what} step {t} param {i}: {distance} ulp > {bound}"


def ulp_distance(a, b) -> int:
    """Largest ulp distance between two float arrays of one dtype (0 for identical bits)."""
    a, b = np.asarray(a), np.asarray(b)
    ints = {2: np.int16, 4: np.int32, 8: np.int64}[a.dtype.itemsize]

    def ordinal(x):
        i = x.view(ints).astype(np.int64)
        return np.where(i < 0, np.int64(np.iinfo(ints).min) - i, i)

    if a.size == 0:
        return 0
    return int(np.max(np.abs(ordinal(a) - ordinal(b))))
