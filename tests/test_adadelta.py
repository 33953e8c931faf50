"""Adadelta (Zeiler 2012, arXiv 1212.5701, Algorithm 1) against independent float64 arithmetic.

* the first two steps of every convention, written out element by element with Python floats in
  each framework's op order (``torch/optim/adadelta.py``, ``keras/src/optimizers/adadelta.py``,
  ``optax/_src/transform.py`` ``scale_by_adadelta``), compared bit for bit;
* a NumPy float64 transcription of Algorithm 1 over 150 steps against ``convention="uniopt"`` at a
  relative tolerance of 1e-12, which rejects the documented alternatives (epsilon outside the roots,
  accumulating the learning-rate-scaled step);
* validation, defaults per convention, state shapes and dtypes, complex parameters, and the
  closed forms ``rho=1`` (gradient descent) and optax's ``learning_rate=None``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import uniopt
from uniopt.adadelta import AdadeltaScalars

P0 = (1.0, -2.0, 0.5, 3.0)
G1 = (0.5, -1.5, 0.0, 1e-4)
G2 = (0.01, -2.0, 0.3, -30.0)


def f32(x: float) -> float:
    """A Python float rounded to float32 (Keras holds lr and weight_decay in float32)."""
    return float(np.float32(x))


# -- each framework's step, one Python float (float64) at a time -------------------------------------


def torch_step(h, s, a, p, g):
    """``_single_tensor_adadelta``: mul_/addcmul_ (value*t1 first), sqrt, div_/mul_, add_(alpha=-lr)."""
    rho, eps, lr, wd = h["rho"], h["eps"], h["lr"], h["weight_decay"]
    if h["maximize"]:
        g = -g
    if wd != 0:
        g = g + p * wd
    s = s * rho + ((1 - rho) * g) * g
    std = math.sqrt(s + eps)
    d = math.sqrt(a + eps) / std * g
    a = a * rho + ((1 - rho) * d) * d
    return s, a, p + d * (-lr)


def keras_step(h, s, a, p, g):
    """``Optimizer._apply_weight_decay`` then ``Adadelta.update_step``."""
    rho, eps, lr, wd = h["rho"], h["eps"], f32(h["lr"]), f32(h["weight_decay"])
    if h["maximize"]:
        g = -g
    if wd != 0:
        p = p - (p * wd) * lr
    s = rho * s + (1 - rho) * (g * g)
    d = -((math.sqrt(a + eps) * g) / math.sqrt(s + eps))
    a = rho * a + (1 - rho) * (d * d)
    return s, a, p + lr * d


def optax_step(h, s, a, p, g):
    """``add_decayed_weights``, ``scale_by_adadelta``, ``scale_by_learning_rate``, ``apply_updates``."""
    rho, eps, lr, wd = h["rho"], h["eps"], h["lr"], h["weight_decay"]
    if h["maximize"]:
        g = -g
    if wd != 0:
        g = g + wd * p
    s = (1 - rho) * (g * g) + rho * s
    u = (math.sqrt(a + eps) / math.sqrt(s + eps)) * g
    a = (1 - rho) * (u * u) + rho * a
    return s, a, p + u * (-lr)


def uniopt_step(h, s, a, p, g):
    """The spec's own op sequence (module docstring)."""
    rho, eps, lr, wd = h["rho"], h["eps"], h["lr"], h["weight_decay"]
    if h["maximize"]:
        g = -g
    if wd != 0:
        g = g + p * wd
    s = s * rho + (g * g) * (1 - rho)
    d = (math.sqrt(a + eps) / math.sqrt(s + eps)) * g
    a = a * rho + (d * d) * (1 - rho)
    return s, a, p - d * lr


STEPS = {"uniopt": uniopt_step, "torch": torch_step, "keras": keras_step, "optax": optax_step}
DEFAULTS = {
    "uniopt": {"lr": 1.0, "rho": 0.9, "eps": 1e-6},
    "torch": {"lr": 1.0, "rho": 0.9, "eps": 1e-6},
    "keras": {"lr": 1e-3, "rho": 0.95, "eps": 1e-7},
    "optax": {"lr": 1.0, "rho": 0.9, "eps": 1e-6},
}

HAND_CASES = [
    {},
    {"lr": 0.5, "rho": 0.95, "eps": 1e-5},
    {"weight_decay": 0.1},
    {"maximize": True, "weight_decay": 0.05, "lr": 2.0},
]


def hand(convention, kwargs):
    h = {"weight_decay": 0.0, "maximize": False, **DEFAULTS[convention], **kwargs}
    step = STEPS[convention]
    out = []
    for p0, g1, g2 in zip(P0, G1, G2, strict=True):
        s, a, p = step(h, 0.0, 0.0, p0, g1)
        first = (p, s, a)
        s, a, p = step(h, s, a, p, g2)
        out.append((first, (p, s, a)))
    return [np.array([[e[k][i] for e in out] for i in range(3)]) for k in range(2)]


@pytest.mark.parametrize("convention", list(STEPS))
@pytest.mark.parametrize("kwargs", HAND_CASES, ids=["defaults", "lr_rho_eps", "weight_decay", "maximize"])
def test_first_two_steps_by_hand_bitwise(convention, kwargs):
    spec = uniopt.Adadelta(**kwargs, convention=convention)
    params = [np.array(P0)]
    state = spec.init(params)
    for t, g in enumerate((G1, G2)):
        params, state = spec.update([np.array(g)], state, params)
        expected = hand(convention, kwargs)[t]
        got = np.stack([params[0], state.slots[0]["square_avg"], state.slots[0]["acc_delta"]])
        np.testing.assert_array_equal(got, expected, err_msg=f"{convention} step {t + 1}")


def test_first_step_closed_form():
    """From zero accumulators: d_1 = sqrt(eps) g / sqrt((1 - rho) g^2 + eps), about
    sqrt(eps / (1 - rho)) = 3.1623e-3 for |g| >> 3e-3 with the defaults."""
    spec = uniopt.Adadelta()
    g = np.array([1.0, -100.0, 1e-3, 0.0])
    new, state = spec.update([g], spec.init([np.zeros(4)]), [np.zeros(4)])
    d = np.array([1e-3 / math.sqrt(0.1 * x * x + 1e-6) * x for x in g])
    np.testing.assert_allclose(-new[0], d, rtol=1e-15)
    np.testing.assert_allclose(abs(new[0][:2]), 3.1623e-3, rtol=2e-4)
    assert new[0][3] == 0.0
    np.testing.assert_allclose(state.slots[0]["square_avg"], 0.1 * g * g, rtol=1e-15)
    np.testing.assert_allclose(state.slots[0]["acc_delta"], 0.1 * d * d, rtol=1e-15)


def test_keras_convention_reproduces_keras_golden_values():
    """``keras/src/optimizers/adadelta_test.py``, ``test_correctness_with_golden``: lr=1.0, rho=0.8,
    eps=1e-6, a first gradient of 0.01 then 0.1..1.0; Keras's golden values to 4 decimals."""
    spec = uniopt.Adadelta(lr=1.0, rho=0.8, eps=1e-6, convention="keras")
    params = [np.ones(10, np.float32)]
    state = spec.init(params)
    params, state = spec.update([np.full(10, 0.01, np.float32)], state, params)
    grads = np.arange(0.1, 1.1, 0.1, dtype=np.float32)[:10]
    for golden in (0.9978, 0.9947, 0.9915, 0.9882, 0.9849):
        np.testing.assert_allclose(params[0], golden, rtol=5e-4, atol=5e-4)
        params, state = spec.update([grads], state, params)


def test_keras_weight_decay_golden_value():
    """``adadelta_test.py``, ``test_weight_decay``: zero gradient, lr=1, weight_decay=0.004 from 2.0
    gives 1.9760959 after one step (Keras's float32 variables)."""
    spec = uniopt.Adadelta(lr=1.0, weight_decay=0.004, convention="keras")
    params = [np.array([2.0], np.float32)]
    for _ in range(3):  # Keras's test applies the same optimizer to var1 three times
        params, _ = spec.update([np.zeros(1, np.float32)], spec.init(params), params)
    np.testing.assert_allclose(params[0], 1.9760959, atol=1e-6)


# -- Algorithm 1 transcribed in NumPy float64 ---------------------------------------------------------

N_STEPS = 150
RTOL = 1e-12


def paper_run(h, p0, grads, variant=None):
    """Zeiler's Algorithm 1 (lines 3 to 9): Delta x carries the minus sign, x_{t+1} = x_t + lr*Delta x.
    ``variant``: ``"eps_outside"`` (RMS = sqrt(E) + eps) or ``"scaled_accumulator"`` (E[dx^2]
    accumulates lr * Delta x), alternatives the tolerance must reject."""
    rho, eps, lr, wd = h["rho"], h["eps"], h["lr"], h["weight_decay"]
    x = p0.copy()
    e_g2 = np.zeros_like(x)  # E[g^2]_0 = 0
    e_dx2 = np.zeros_like(x)  # E[dx^2]_0 = 0

    def rms(e):
        return np.sqrt(e) + eps if variant == "eps_outside" else np.sqrt(e + eps)

    history = []
    for g in grads:
        g = (-g if h["maximize"] else g) + wd * x
        e_g2 = rho * e_g2 + (1 - rho) * g**2
        dx = -rms(e_dx2) / rms(e_g2) * g
        applied = lr * dx
        e_dx2 = rho * e_dx2 + (1 - rho) * (applied if variant == "scaled_accumulator" else dx) ** 2
        x = x + applied
        history.append((x, e_g2, e_dx2))
    return history


def gradient_stream(seed, n=12):
    """Scales from 1e-7 to 1e2 per element, a drift so parameters cross zero, exact zeros."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** np.linspace(-7.0, 2.0, n)
    bias = rng.normal(0.0, 0.5, n)
    grads = []
    for _ in range(N_STEPS):
        g = scale * (bias + rng.standard_normal(n))
        g[rng.random(n) < 0.1] = 0.0
        grads.append(g)
    return rng.standard_normal(n), grads


def worst_ratio(kwargs, variant=None):
    """Largest |uniopt - paper| / (RTOL * running max |paper|) over steps, params and slots."""
    h = {"lr": 1.0, "rho": 0.9, "eps": 1e-6, "weight_decay": 0.0, "maximize": False, **kwargs}
    p0, grads = gradient_stream(len(kwargs) * 7 + 3)
    spec = uniopt.Adadelta(**kwargs)
    params = [p0.copy()]
    state = spec.init(params)
    worst, envelope = 0.0, [0.0, 0.0, 0.0]
    for g, expected in zip(grads, paper_run(h, p0, grads, variant), strict=True):
        params, state = spec.update([g.copy()], state, params)
        got = (params[0], state.slots[0]["square_avg"], state.slots[0]["acc_delta"])
        for k in range(3):
            assert got[k].dtype == np.float64 and got[k].shape == expected[k].shape
            envelope[k] = np.maximum(envelope[k], np.abs(expected[k]))
            with np.errstate(divide="ignore", invalid="ignore"):
                err = np.abs(got[k] - expected[k])
                ratio = np.where(err == 0, 0.0, err / (RTOL * envelope[k]))
            worst = max(worst, float(np.max(ratio)))
    return worst


PAPER_CASES = {
    "defaults": {},
    "paper_rho": {"rho": 0.95},
    "lr": {"lr": 0.3},
    "eps": {"eps": 1e-4},
    "weight_decay": {"weight_decay": 0.1},
    "maximize": {"maximize": True, "lr": 2.0},
}


@pytest.mark.parametrize("kwargs", list(PAPER_CASES.values()), ids=list(PAPER_CASES))
def test_matches_algorithm_1_over_150_steps(kwargs):
    assert worst_ratio(kwargs) <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "variant"),
    [({}, "eps_outside"), ({"lr": 0.3}, "scaled_accumulator")],
    ids=["eps_outside_the_root", "accumulate_the_lr_scaled_step"],
)
def test_tolerance_rejects_documented_alternatives(kwargs, variant):
    assert worst_ratio(kwargs, variant) > 1e3


# -- closed forms ------------------------------------------------------------------------------------


def test_rho_one_is_gradient_descent():
    """rho=1 freezes both accumulators at 0: d = sqrt(eps)/sqrt(eps) * g = g exactly."""
    spec = uniopt.Adadelta(lr=0.25, rho=1.0)
    p = [np.array(P0)]
    state = spec.init(p)
    for g in (G1, G2):
        expected = p[0] - np.array(g) * 0.25
        p, state = spec.update([np.array(g)], state, p)
        np.testing.assert_array_equal(p[0], expected)
        np.testing.assert_array_equal(state.slots[0]["acc_delta"], 0.0)
        np.testing.assert_array_equal(state.slots[0]["square_avg"], 0.0)


def test_optax_default_learning_rate_none_is_lr_one_maximize():
    """optax.adadelta(learning_rate=None) chains identity(): u = +ratio*g, p + u (an ascent step).
    Transcribed here, it equals lr=1.0, maximize=True under convention='optax' bit for bit."""
    spec = uniopt.Adadelta(lr=1.0, maximize=True, convention="optax")
    p = [np.array(P0)]
    state = spec.init(p)
    e_g, e_x, x = np.zeros(4), np.zeros(4), np.array(P0)
    for g in (G1, G2, G1):
        g = np.array(g)
        e_g = (1 - 0.9) * (g * g) + 0.9 * e_g
        u = (np.sqrt(e_x + 1e-6) / np.sqrt(e_g + 1e-6)) * g
        e_x = (1 - 0.9) * (u * u) + 0.9 * e_x
        x = x + u
        p, state = spec.update([g], state, p)
        np.testing.assert_array_equal(p[0], x)
        np.testing.assert_array_equal(state.slots[0]["square_avg"], e_g)
        np.testing.assert_array_equal(state.slots[0]["acc_delta"], e_x)


# -- defaults, validation, state -----------------------------------------------------------------------


@pytest.mark.parametrize("convention", list(DEFAULTS))
def test_convention_defaults(convention):
    spec = uniopt.Adadelta(convention=convention)
    expected = dict(DEFAULTS[convention])
    if convention == "keras":
        expected["lr"] = f32(expected["lr"])
    assert {k: getattr(spec, k) for k in expected} == expected
    assert spec.weight_decay == 0.0 and spec.maximize is False


def test_uniopt_defaults_are_torch_optims():
    assert uniopt.Adadelta().hyperparameters == {
        "lr": 1.0,
        "rho": 0.9,
        "eps": 1e-6,
        "weight_decay": 0.0,
        "maximize": False,
        "convention": "uniopt",
    }


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rho": 1.5}, r"Adadelta: rho=1\.5 is out of range; expected 0 <= rho <= 1"),
        ({"rho": -0.1}, r"Adadelta: rho=-0\.1 is out of range; expected 0 <= rho <= 1"),
        ({"rho": float("inf")}, r"Adadelta: rho=inf is not finite"),
        ({"rho": True}, r"Adadelta: rho=True is not a real number"),
        ({"rho": (0.9,)}, r"Adadelta: rho=\(0\.9,\) is not a real number"),
        ({"eps": 0.0}, r"Adadelta: eps=0\.0 is out of range; expected 0 < eps"),
        ({"eps": -1e-6}, r"Adadelta: eps=-1e-06 is out of range; expected 0 < eps"),
        ({"eps": "1e-6"}, r"Adadelta: eps='1e-6' is not a real number"),
        ({"weight_decay": -0.1}, r"Adadelta: weight_decay=-0\.1 is out of range; expected 0 <= weight_decay"),
        ({"weight_decay": float("nan")}, r"Adadelta: weight_decay=nan is not finite"),
        ({"lr": -1.0}, r"Adadelta: lr=-1\.0 is out of range; expected 0 <= lr"),
        ({"maximize": "no"}, r"Adadelta: maximize='no' is not a bool"),
        ({"convention": "paper"}, r"Adadelta: convention='paper' is not available; expected one of"),
        ({"rho": 2.0, "convention": "keras"}, r"Adadelta: rho=2\.0 is out of range"),
    ],
)
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        uniopt.Adadelta(**kwargs)


def test_rho_bounds_are_accepted():
    assert uniopt.Adadelta(rho=0.0).rho == 0.0
    assert uniopt.Adadelta(rho=1.0).rho == 1.0


def test_bad_per_step_lr_is_refused_before_the_state_changes():
    spec = uniopt.Adadelta()
    params = [np.array(P0)]
    state = spec.init(params)
    with pytest.raises(ValueError, match=r"Adadelta: lr=-0\.5 is out of range"):
        spec.update([np.array(G1)], state, params, lr=-0.5)
    assert state.step == 0
    np.testing.assert_array_equal(state.slots[0]["square_avg"], 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("convention", list(DEFAULTS))
def test_state_shapes_and_dtypes(dtype, convention):
    spec = uniopt.Adadelta(convention=convention)
    params = [np.ones((2, 3), dtype), np.full(4, -1.0, dtype), np.array(0.5, dtype)]
    state = spec.init(params)
    assert state.step == 0 and spec.slot_names() == ("square_avg", "acc_delta")
    for p, slots in zip(params, state.slots, strict=True):
        assert set(slots) == {"square_avg", "acc_delta"}
        for v in slots.values():
            assert v.shape == p.shape and v.dtype == p.dtype and not v.any()
    grads = [np.full_like(p, 0.25) for p in params]
    new, state = spec.update(grads, state, params)
    assert state.step == 1
    for p, q, slots in zip(params, new, state.slots, strict=True):
        assert q.shape == p.shape and q.dtype == p.dtype
        assert np.all(q < p)  # a descent step for a positive gradient
        for v in slots.values():
            assert v.dtype == p.dtype and np.all(v > 0)


@pytest.mark.parametrize("convention", list(DEFAULTS))
def test_scalars_are_constant_and_affine_in_lr(convention):
    spec = uniopt.Adadelta(rho=0.95, eps=1e-5, weight_decay=0.1, convention=convention)
    first = spec.step_scalars(1, 0.5)
    assert isinstance(first, AdadeltaScalars)
    assert spec.step_scalars(1000, 0.5) == first
    assert first.one_minus_rho == 1.0 - 0.95 and first.neg_lr == -0.5
    a, b, c = (np.array(spec.step_scalars(1, lr)) for lr in (0.0, 1.0, 0.5))
    np.testing.assert_allclose(c, a + 0.5 * (b - a), rtol=0, atol=1e-17)


@pytest.mark.parametrize("convention", ["uniopt", "torch"])
def test_complex_parameters_are_two_real_adadeltas(convention):
    """As ``torch.view_as_real``: the real and imaginary parts each follow the real recursion."""
    kwargs = {"lr": 0.5, "weight_decay": 0.1, "maximize": True}
    spec = uniopt.Adadelta(**kwargs, convention=convention)
    h = {**DEFAULTS[convention], "weight_decay": 0.0, "maximize": False, **kwargs}
    p = [np.array(P0) + 1j * np.array(P0[::-1])]
    state = spec.init(p)
    parts = [[0.0, 0.0, x] for x in P0] + [[0.0, 0.0, x] for x in P0[::-1]]
    for g_re, g_im in ((G1, G2), (G2, G1)):
        p, state = spec.update([np.array(g_re) + 1j * np.array(g_im)], state, p)
        for k, g in enumerate(g_re + g_im):
            parts[k] = list(STEPS[convention](h, *parts[k], g))
        expected = np.array(parts)
        np.testing.assert_array_equal(p[0].real, expected[:4, 2])
        np.testing.assert_array_equal(p[0].imag, expected[4:, 2])
        np.testing.assert_array_equal(state.slots[0]["square_avg"], expected[:4, 0] + 1j * expected[4:, 0])
        np.testing.assert_array_equal(state.slots[0]["acc_delta"], expected[:4, 1] + 1j * expected[4:, 1])
        assert p[0].dtype == np.complex128


@pytest.mark.parametrize("convention", ["keras", "optax"])
def test_complex_parameters_are_refused_where_the_framework_has_none(convention):
    spec = uniopt.Adadelta(convention=convention)
    p = [np.ones(2, np.complex64)]
    with pytest.raises(
        ValueError, match=rf"Adadelta: complex parameters are not supported with convention='{convention}'"
    ):
        spec.update([np.ones(2, np.complex64)], spec.init(p), p)
