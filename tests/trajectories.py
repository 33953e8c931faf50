"""Helpers shared by the Keras adapter suites (tests/tf_adapter, tests/keras_adapter): seeded
inputs, the NumPy reference trajectory, bitwise comparison. Framework-free."""

from __future__ import annotations

from collections.abc import Sequence

import array_api_compat.numpy as npx
import numpy as np

from uniopt import Spec

SHAPES = ((3, 4), (5,), ())


def params_and_grads(steps: int, dtype: str = "float32", seed: int = 0, shapes=SHAPES):
    """Initial parameters and ``steps`` gradient lists, drawn in float64 and rounded once."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    return params, grads


def reference(spec: Spec, params0, grads_seq, lrs: Sequence[float] | None = None):
    """NumPy trajectory: after each step, (params, [slots per param])."""
    params = [np.array(p, copy=True) for p in params0]
    state = spec.init(params, npx)
    out = []
    for i, grads in enumerate(grads_seq):
        lr = None if lrs is None else lrs[i]
        with np.errstate(all="ignore"):  # NaN and Inf gradients propagate on purpose
            params, state = spec.update([np.asarray(g) for g in grads], state, params, npx, lr=lr)
        out.append(([p.copy() for p in params], [{k: v.copy() for k, v in s.items()} for s in state.slots]))
    return out


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, shape and bits (any NaN equals any NaN; -0 differs from +0)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    ints = {2: np.int16, 4: np.int32, 8: np.int64}[a.dtype.itemsize]
    same = a.view(ints) == b.view(ints)
    return bool(np.all(same | (np.isnan(a) & np.isnan(b))))


def max_ulp(a: np.ndarray, b: np.ndarray) -> int:
    """Largest ulp distance (NaN against NaN is 0; NaN against a number is huge)."""
    from conformance.ulp import max_ulp as ulp

    return ulp(np.asarray(a), np.asarray(b))


def assert_trajectories(got, want, ulp: int = 0) -> None:
    """Every param and slot at every step within ``ulp`` (0: bitwise)."""
    assert len(got) == len(want)
    for step, ((gp, gs), (wp, ws)) in enumerate(zip(got, want, strict=True), start=1):
        for i, (g, w) in enumerate(zip(gp, wp, strict=True)):
            ok = bits_equal(g, w) if ulp == 0 else max_ulp(g, w) <= ulp
            assert ok, f"step {step} param {i}: {max_ulp(g, w)} ulp\n{g}\n{w}"
        for i, (g, w) in enumerate(zip(gs, ws, strict=True)):
            assert g.keys() == w.keys(), (g.keys(), w.keys())
            for name in w:
                ok = bits_equal(g[name], w[name]) if ulp == 0 else max_ulp(g[name], w[name]) <= ulp
                assert ok, f"step {step} slot {name}{i}: {max_ulp(g[name], w[name])} ulp"
