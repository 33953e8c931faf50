"""Complex parameters under ``convention="optax"``: the NumPy reference against an independent
complex128 transcription of optax's formulas (``optax/_src/transform.py``: ``scale_by_adam``,
``scale_by_amsgrad``, ``scale_by_radam``, ``scale_by_rss``, ``scale_by_rms``, ``scale_by_stddev``;
``optax/_src/alias.py``), where the second moment accumulates :math:`|g|^2` of each complex entry
(``numerics.abs_sq``) in a complex buffer."""

from __future__ import annotations

import math

import numpy as np
import pytest
from namespaces import to_namespace, to_numpy

import uniopt

LR = 0.01
STEPS = 10

CASES = {
    "adam": (uniopt.Adam, {}),
    "amsgrad": (uniopt.Adam, {"amsgrad": True}),
    "adamw": (uniopt.AdamW, {"weight_decay": 0.1}),
    "radam": (uniopt.RAdam, {}),
    "adagrad": (uniopt.Adagrad, {}),
    "adagrad_eps0": (uniopt.Adagrad, {"eps": 0.0, "initial_accumulator_value": 0.0}),
    "rmsprop": (uniopt.RMSprop, {}),
    "rmsprop_centered_momentum": (uniopt.RMSprop, {"centered": True, "momentum": 0.9}),
}
SECOND_MOMENT = {"Adam": "exp_avg_sq", "AdamW": "exp_avg_sq", "RAdam": "exp_avg_sq"}
SECOND_MOMENT.update({"Adagrad": "sum", "RMSprop": "square_avg"})


def optax_transcription(case: str, p: np.ndarray, grads: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """optax's update, written from its source in complex128 with float64 scalars: the parameters
    after every step and the final second moment."""
    p = p.astype(np.complex128)
    grads = [g.astype(np.complex128) for g in grads]
    kw = CASES[case][1]
    if case in ("adam", "amsgrad", "adamw", "radam"):
        b1, b2, eps = 0.9, 0.999, 1e-8
        mu, nu, nu_max = (np.zeros_like(p) for _ in range(3))
        for t, g in enumerate(grads, 1):
            mu = (1 - b1) * g + b1 * mu
            nu = (1 - b2) * np.abs(g) ** 2 + b2 * nu
            mu_hat, nu_hat = mu / (1 - b1**t), nu / (1 - b2**t)
            if case == "radam":
                ro_inf = 2 / (1 - b2) - 1
                ro = ro_inf - 2 * t * b2**t / (1 - b2**t)
                if ro >= 5:
                    r = math.sqrt((ro - 4) * (ro - 2) * ro_inf / ((ro_inf - 4) * (ro_inf - 2) * ro))
                    u = r * mu_hat / (np.sqrt(nu_hat) + eps)
                else:
                    u = mu_hat
            else:
                if case == "amsgrad":
                    nu_max = np.maximum(nu_max.real, nu_hat.real) + 0j
                    nu_hat = nu_max
                u = mu_hat / (np.sqrt(nu_hat) + eps)
                if case == "adamw":
                    u = u + kw["weight_decay"] * p
            p = p - LR * u
        return p, nu
    if case.startswith("adagrad"):
        eps = kw.get("eps", 1e-7)
        s = np.full_like(p, kw.get("initial_accumulator_value", 0.1))
        for g in grads:
            s = np.abs(g) ** 2 + s
            with np.errstate(divide="ignore"):  # eps = 0: where(s > 0, rsqrt(s + eps), 0)
                inv = np.where(s.real > 0, 1 / np.sqrt(s.real + eps), 0)
            p = p - LR * inv * g
        return p, s
    decay, eps, momentum = 0.9, 1e-8, kw.get("momentum", 0.0)
    nu, mu, trace = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for g in grads:
        nu = (1 - decay) * np.abs(g) ** 2 + decay * nu
        variance = nu
        if kw.get("centered"):
            mu = (1 - decay) * g + decay * mu
            variance = nu - np.abs(mu) ** 2
        u = -LR * g / np.sqrt(variance.real + eps)
        if momentum:
            trace = u + momentum * trace
            u = trace
        p = p + u
    return p, nu


def _complex(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype)


# Distances from the complex128 transcription (parameters of unit scale, 10 steps of lr 0.01),
# measured at most 4.4e-16 (complex128) and 6.2e-7 (complex64; radam 5.1e-6), bounded with room:
# complex128 differs by rounding alone; complex64 also by optax's float32 bias corrections at jax's
# defaults (1 - float32(0.999) is 1.3e-5 away from 0.001), and RAdam by its float32 rho_t, which
# makes the first rectified step (step 6) 0.6% shorter.
ATOL = {np.complex128: 1e-13, np.complex64: 5e-6}
ATOL_RADAM_COMPLEX64 = 2e-5


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("case", sorted(CASES))
def test_complex_reference_follows_optax_formula(case, dtype, xp_name):
    rng = np.random.default_rng(5)
    p0 = _complex(rng, (4, 25), dtype)
    grads = [_complex(rng, (4, 25), dtype) for _ in range(STEPS)]
    if case == "adagrad_eps0":  # an entry whose accumulator stays 0: its update is 0, not NaN
        for g in grads:
            g[0, 0] = 0
    cls, kw = CASES[case]
    spec = cls(lr=LR, convention="optax", **kw)
    params = [to_namespace(xp_name, p0)]
    state = spec.init(params)
    for g in grads:
        params, state = spec.update([to_namespace(xp_name, g)], state, params)
    got = to_numpy(params[0])
    assert got.dtype == dtype
    for name in spec.slot_names():  # optax's state dtypes: the parameter's, complex
        assert to_numpy(state.slots[0][name]).dtype == dtype, name
    want, second = optax_transcription(case, p0, grads)
    atol = ATOL_RADAM_COMPLEX64 if (case == "radam" and dtype == np.complex64) else ATOL[dtype]
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    mine = to_numpy(state.slots[0][SECOND_MOMENT[spec.name]])
    assert not np.any(mine.imag)  # |g|^2 is real; the buffer is complex as optax's
    np.testing.assert_allclose(mine.real, second.real, rtol=1e-5 if dtype == np.complex64 else 1e-12)


def test_complex_is_not_real_pairs():
    """One second moment per complex entry: the first Adam step moves by lr along the gradient's
    phase (by hand, up to optax's float32 bias correction c), where pairs would move each part by
    lr."""
    g = np.asarray([3 + 4j, -1j], np.complex64)
    spec = uniopt.Adam(lr=LR, convention="optax")
    params, _ = spec.update([g], spec.init([np.zeros(2, np.complex64)]), [np.zeros(2, np.complex64)])
    c = float(np.float32(1 - 0.999)) / (1 - float(np.float32(0.999)))
    np.testing.assert_allclose(params[0], -LR * g / (np.abs(g) * math.sqrt(c)), rtol=1e-6)


def test_real_parameters_take_the_real_branch():
    """A real parameter's bits under convention="optax" are the real formula's (the complex branch
    is chosen by the dtype only): by hand, Adam's first step is -lr * sign(g) * c^(-1/2)."""
    g = np.asarray([0.5, -2.0], np.float32)
    spec = uniopt.Adam(lr=LR, convention="optax")
    params, state = spec.update([g], spec.init([np.zeros(2, np.float32)]), [np.zeros(2, np.float32)])
    assert params[0].dtype == np.float32 and state.slots[0]["exp_avg_sq"].dtype == np.float32
    c = float(np.float32(1 - 0.999)) / (1 - float(np.float32(0.999)))
    np.testing.assert_allclose(params[0], -LR * np.sign(g) / math.sqrt(c), rtol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: uniopt.Adam(lr=LR, convention="optax"),
        lambda: uniopt.AdamW(lr=LR, convention="optax"),
        lambda: uniopt.RAdam(lr=LR, convention="optax"),
        lambda: uniopt.RMSprop(lr=LR, eps=1e-3, convention="optax"),
        lambda: uniopt.Adagrad(lr=LR, convention="optax"),
    ],
    ids=["Adam", "AdamW", "RAdam", "RMSprop", "Adagrad"],
)
def test_bfloat16_numpy_parameters_take_the_real_branch(make):
    """ml_dtypes' bfloat16 is a dtype NumPy's ``isdtype`` does not know: the optax convention must
    still treat it as real. Yardstick: the same steps in float32, which bfloat16 follows within a
    few of its ulps (2**-8 relative) over three steps."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    spec = make()
    grads = [np.asarray([0.5, -2.0, 0.25], np.float32) * k for k in (1.0, -0.5, 2.0)]
    out = {}
    for dtype in (ml_dtypes.bfloat16, np.float32):
        params = [np.ones(3, dtype)]
        state = spec.init(params)
        for g in grads:
            params, state = spec.update([g.astype(dtype)], state, params)
        assert params[0].dtype == dtype
        out[dtype] = params[0].astype(np.float32)
    np.testing.assert_allclose(out[ml_dtypes.bfloat16], out[np.float32], rtol=4 * 2.0**-8)
