"""Adamax against arithmetic written out here: the first steps of every convention by hand, the
paper's Algorithm 2 (Kingma and Ba 2015, arXiv 1412.6980) over 150 steps, float32 transcriptions
of Keras's and optax's op order, validation, and the state.

Expected values come from the formulas in plain Python float64 (``math`` only) or NumPy float32
scalars one operation at a time, never from uniopt's host scalars or op sequence.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import uniopt

P0 = (1.0, -2.0, 0.5, 0.0)
# two steps: a negative, a zero meeting a zero state, an element whose |g| falls (so beta2 * u wins
# the maximum at step 2) and one whose |g| grows
GRADS = ((0.5, -1.5, 0.0, 0.2), (0.01, -2.0, 0.3, -0.05))
RTOL = 1e-13


def run(spec, p0, grads, dtype=np.float64):
    params = [np.array(p0, dtype=dtype)]
    state = spec.init(params)
    out = []
    for g in grads:
        params, state = spec.update([np.array(g, dtype=dtype)], state, params)
        out.append((params[0], state.slots[0]))
    return out


def hand(p, grads, *, lr, b1=0.9, b2=0.999, eps, wd=0.0, eps_inside=True, decoupled=False, bc=None):
    """One element through ``len(grads)`` steps of Adamax in textbook form:
    ``m = b1 m + (1-b1) g``, ``u = max(b2 u, |g| + eps)`` (or ``max(b2 u, |g|)`` with ``eps``
    added at the division), ``p -= lr / (1 - b1^t) * m / u``."""
    bc = bc or (lambda t: 1.0 - b1**t)
    m = u = 0.0
    out = []
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p - p * wd * lr
        else:
            g = g + wd * p
        m = b1 * m + (1.0 - b1) * g
        if eps_inside:
            u = max(b2 * u, abs(g) + eps)
            p = p - lr / bc(t) * m / u
        else:
            u = max(b2 * u, abs(g))
            p = p - lr / bc(t) * m / (u + eps)
        out.append((p, m, u))
    return out


def expected(**kw):
    per_element = [hand(p, [g[j] for g in GRADS], **kw) for j, p in enumerate(P0)]
    return [
        tuple(np.array([per_element[j][k][i] for j in range(len(P0))]) for i in range(3))
        for k in range(len(GRADS))
    ]


def check(spec, want):
    for t, ((p, slots), (wp, wm, wu)) in enumerate(zip(run(spec, P0, GRADS), want, strict=True), 1):
        np.testing.assert_allclose(p, wp, rtol=RTOL, atol=0, err_msg=f"param, step {t}")
        np.testing.assert_allclose(slots["exp_avg"], wm, rtol=RTOL, atol=0, err_msg=f"exp_avg, step {t}")
        np.testing.assert_allclose(slots["exp_inf"], wu, rtol=RTOL, atol=0, err_msg=f"exp_inf, step {t}")


@pytest.mark.parametrize("convention", ["uniopt", "torch", "optax"])
def test_first_two_steps_eps_inside_the_maximum(convention):
    check(uniopt.Adamax(lr=0.01, convention=convention), expected(lr=0.01, eps=1e-8))


@pytest.mark.parametrize("convention", ["uniopt", "torch"])
def test_first_two_steps_l2_weight_decay(convention):
    spec = uniopt.Adamax(lr=0.01, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6, convention=convention)
    check(spec, expected(lr=0.01, wd=0.1, b1=0.8, b2=0.99, eps=1e-6))


def test_torch_lerp_with_weight_of_a_half_or_more():
    # beta1 = 0.3: torch's lerp computes g - (g - m) * (1 - w) with w = 0.7; the same value
    check(
        uniopt.Adamax(lr=0.01, betas=(0.3, 0.999), convention="torch"),
        expected(lr=0.01, b1=0.3, eps=1e-8),
    )


def test_first_two_steps_keras():
    # Keras: lr and weight decay held in float32, decoupled decay first, eps outside the maximum,
    # bias correction 1 - float32(0.9)^t in float64 for a float64 model
    lr, wd = float(np.float32(0.01)), float(np.float32(0.1))
    b1_32 = float(np.float32(0.9))
    spec = uniopt.Adamax(lr=0.01, weight_decay=0.1, convention="keras")
    want = expected(lr=lr, wd=wd, eps=1e-7, eps_inside=False, decoupled=True, bc=lambda t: 1.0 - b1_32**t)
    check(spec, want)


def test_keras_defaults_first_step():
    # lr 0.001, eps 1e-7: p1 = p0 - lr * g / (|g| + eps) after m1 / (1 - b1) = g
    spec = uniopt.Adamax(convention="keras")
    assert (spec.lr, spec.eps) == (float(np.float32(1e-3)), 1e-7)
    (p, slots), _ = run(spec, P0, GRADS)
    lr, b1 = float(np.float32(1e-3)), float(np.float32(0.9))
    for j, (p0, g) in enumerate(zip(P0, GRADS[0], strict=True)):
        m = (1.0 - 0.9) * g
        want = p0 - lr / (1.0 - b1) * m / (abs(g) + 1e-7)
        assert math.isclose(p[j], want, rel_tol=RTOL, abs_tol=0), (j, p[j], want)
        assert slots["exp_inf"][j] == abs(g)  # Keras keeps eps out of the state


def test_defaults_per_convention():
    assert uniopt.Adamax().hyperparameters == {
        "lr": 2e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
        "maximize": False,
        "convention": "uniopt",
    }
    assert (uniopt.Adamax(convention="torch").lr, uniopt.Adamax(convention="torch").eps) == (2e-3, 1e-8)
    assert (uniopt.Adamax(convention="optax").lr, uniopt.Adamax(convention="optax").eps) == (2e-3, 1e-8)


def test_paper_algorithm_2_over_150_steps():
    """Algorithm 2 exactly as printed (no eps): u = max(b2 u, |g|), theta -= (alpha/(1-b1^t)) m/u,
    with its defaults alpha = 0.002, b1 = 0.9, b2 = 0.999. Gradients are never 0, so u > 0; the
    spec runs with eps = 1e-300, which cannot change |g| + eps for |g| >= 1e-6."""
    rng = np.random.default_rng(1412)
    shape = (5, 4)
    theta0 = rng.standard_normal(shape)
    scales = 10.0 ** rng.uniform(-6, 1, shape)
    grads = []
    for _ in range(150):
        g = scales * (0.3 + rng.standard_normal(shape))
        g = np.where(np.abs(g) < 1e-6, 1e-6, g)
        grads.append(g)
    alpha, b1, b2 = 0.002, 0.9, 0.999
    theta, m, u = theta0.copy(), np.zeros(shape), np.zeros(shape)
    spec = uniopt.Adamax(eps=1e-300)
    params = [theta0.copy()]
    state = spec.init(params)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        u = np.maximum(b2 * u, np.abs(g))
        theta = theta - (alpha / (1 - b1**t)) * m / u
        params, state = spec.update([g], state, params)
        np.testing.assert_allclose(params[0], theta, rtol=1e-12, atol=0, err_msg=f"step {t}")
        np.testing.assert_allclose(state.slots[0]["exp_inf"], u, rtol=1e-15, atol=0)
    assert state.step == 150


def test_float32_optax_transcription_bitwise():
    """optax.adamax at jax's default (x64 off), one float32 operation at a time as written in
    ``optax/_src/transform.py`` (``scale_by_adamax``), ``optax/tree_utils/_tree_math.py`` and
    ``optax.apply_updates``: the bias correction ``1 - 0.9**t`` is float32. optax divides by it;
    the convention multiplies by its reciprocal rounded once to float32 (as XLA would)."""
    f = np.float32
    spec = uniopt.Adamax(lr=0.01, convention="optax")
    got = run(spec, P0, GRADS, np.float32)
    p, m, u = [f(x) for x in P0], [f(0)] * 4, [f(0)] * 4
    for t, g in enumerate(GRADS, start=1):
        bc = f(1) - f(0.9) ** f(t)
        for j in range(4):
            gj = f(g[j])
            m[j] = f(1 - 0.9) * gj + f(0.9) * m[j]
            u[j] = max(abs(gj) + f(1e-8), f(0.999) * u[j])
            p[j] = p[j] + ((m[j] * f(1 / float(bc))) / u[j]) * f(-0.01)
        np.testing.assert_array_equal(got[t - 1][0], np.array(p, np.float32), err_msg=f"step {t}")
        np.testing.assert_array_equal(got[t - 1][1]["exp_inf"], np.array(u, np.float32))


def test_float32_keras_transcription_bitwise():
    """keras.optimizers.Adamax.update_step in a float32 model, one float32 operation at a time
    (``keras/src/optimizers/adamax.py``, decoupled decay from ``base_optimizer.py``)."""
    f = np.float32
    spec = uniopt.Adamax(lr=0.01, weight_decay=0.1, convention="keras")
    got = run(spec, P0, GRADS, np.float32)
    lr, wd = f(0.01), f(0.1)
    p, m, u = [f(x) for x in P0], [f(0)] * 4, [f(0)] * 4
    for t, g in enumerate(GRADS, start=1):
        bc = f(1) - f(0.9) ** f(t)
        for j in range(4):
            gj = f(g[j])
            p[j] = p[j] - p[j] * wd * lr
            m[j] = m[j] + (gj - m[j]) * f(1 - 0.9)
            u[j] = max(f(0.999) * u[j], abs(gj))
            p[j] = p[j] - (lr * m[j]) / (bc * (u[j] + f(1e-7)))
        np.testing.assert_array_equal(got[t - 1][0], np.array(p, np.float32), err_msg=f"step {t}")
        np.testing.assert_array_equal(got[t - 1][1]["exp_avg"], np.array(m, np.float32))


def test_maximize_is_descent_on_the_negated_gradient():
    a = run(uniopt.Adamax(lr=0.01, maximize=True), P0, GRADS)
    b = run(uniopt.Adamax(lr=0.01), P0, [tuple(-x for x in g) for g in GRADS])
    for (pa, sa), (pb, sb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(pa, pb)
        np.testing.assert_array_equal(sa["exp_inf"], sb["exp_inf"])


def test_zero_gradient_keeps_eps_in_the_state_except_keras():
    zeros = ((0.0, 0.0),)
    ((p, slots),) = run(uniopt.Adamax(lr=0.01), (1.0, -1.0), zeros)
    np.testing.assert_array_equal(p, [1.0, -1.0])
    np.testing.assert_array_equal(slots["exp_inf"], [1e-8, 1e-8])
    ((p, slots),) = run(uniopt.Adamax(lr=0.01, convention="keras"), (1.0, -1.0), zeros)
    np.testing.assert_array_equal(p, [1.0, -1.0])
    np.testing.assert_array_equal(slots["exp_inf"], [0.0, 0.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_names_shapes_and_dtypes(dtype):
    spec = uniopt.Adamax()
    params = [np.ones((3, 2), dtype), np.ones((4,), dtype)]
    state = spec.init(params)
    assert state.step == 0
    for p, slots in zip(params, state.slots, strict=True):
        assert tuple(slots) == ("exp_avg", "exp_inf")
        for value in slots.values():
            assert value.shape == p.shape and value.dtype == p.dtype
            assert not value.any()
    grads = [np.full((3, 2), 0.5, dtype), np.full((4,), -0.5, dtype)]
    new, state = spec.update(grads, state, params)
    assert state.step == 1
    for p, q, slots in zip(params, new, state.slots, strict=True):
        assert q.shape == p.shape and q.dtype == p.dtype
        assert all(v.dtype == p.dtype for v in slots.values())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": 0.0}, r"Adamax: eps=0\.0 is out of range; expected 0 < eps"),
        ({"eps": -1e-8}, r"Adamax: eps=-1e-08 is out of range; expected 0 < eps"),
        ({"lr": -0.1}, r"Adamax: lr=-0\.1 is out of range; expected 0 <= lr"),
        ({"betas": (0.9, 1.0)}, r"Adamax: betas\[1\]=1\.0 is out of range; expected 0 <= betas\[1\] < 1"),
        ({"betas": (-0.1, 0.9)}, r"Adamax: betas\[0\]=-0\.1 is out of range"),
        ({"betas": (0.9,)}, r"Adamax: betas=\(0\.9,\) is not a pair"),
        ({"weight_decay": -1.0}, r"Adamax: weight_decay=-1\.0 is out of range; expected 0 <= weight_decay"),
        ({"weight_decay": float("inf")}, r"Adamax: weight_decay=inf is not finite"),
        ({"maximize": "no"}, r"Adamax: maximize='no' is not a bool"),
        ({"convention": "paper"}, r"Adamax: convention='paper' is not available; expected one of"),
        (
            {"weight_decay": 0.1, "convention": "optax"},
            r"Adamax: weight_decay=0\.1 with convention='optax': optax\.adamax has no weight decay",
        ),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        uniopt.Adamax(**kwargs)
