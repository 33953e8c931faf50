"""NAdam (``uniopt.NAdam``) against arithmetic written out here, never computed by the spec.

* the first two steps of each convention in float64 from the textbook formulas, one element at a
  time in Python floats (``math`` only), with each framework's schedule and momentum product as
  its source keeps it (``torch/optim/nadam.py``: a float32 ``mu_product``; ``keras/src/optimizers/
  nadam.py``: ``0.96**t`` and ``_u_product``; ``optax/_src/transform.py``: no schedule);
* Keras's and optax's op sequences in NumPy float32 (bitwise), as their sources write them;
* a float64 transcription of Dozat's Algorithm 2 (with PyTorch's schedule) over 150 steps against
  ``convention="uniopt"``;
* PyTorch's float32 running product, the memo of prefix products read out of order and at huge
  steps, the scalars' limit and convergence, affinity in the learning rate;
* validation, defaults per convention, state shape and dtype, complex parameters.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import uniopt
from uniopt.nadam import torch_mu_product
from uniopt.scalar_table import LIMIT_STEP

P0 = (1.0, -2.0, 0.5, 0.0)
G1 = (0.3, -0.1, 0.0, 0.2)
G2 = (-0.5, -0.1, 0.2, 0.0)
F32 = np.float32


def run(spec: uniopt.NAdam, p0, grads, dtype=np.float64):
    """Parameters, m and v after every step (NumPy)."""
    params = [np.asarray(p0, dtype)]
    state = spec.init(params)
    out = []
    for g in grads:
        params, state = spec.update([np.asarray(g, dtype)], state, params)
        out.append((params[0], state.slots[0]["exp_avg"], state.slots[0]["exp_avg_sq"]))
    return out


def mu_schedule(beta1: float, psi: float, t: float) -> float:
    """Dozat's warm-up with PyTorch's momentum_decay psi."""
    return beta1 * (1 - 0.5 * 0.96 ** (t * psi))


def textbook(p0, grads, *, lr, b1, b2, eps, wd, decoupled, mu, prod, maximize=False):
    """The textbook NAdam step per element with given mu(t) and prod(t) (Python floats)."""
    p, m, v = list(p0), [0.0] * len(p0), [0.0] * len(p0)
    out = []
    for t, grad in enumerate(grads, start=1):
        for i, g in enumerate(grad):
            g = -g if maximize else g
            if wd and decoupled:
                p[i] = p[i] * (1 - lr * wd)
            elif wd:
                g = g + wd * p[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_bar = (1 - mu(t)) * g / (1 - prod(t)) + mu(t + 1) * m[i] / (1 - prod(t) * mu(t + 1))
            p[i] = p[i] - lr * m_bar / (math.sqrt(v[i] / (1 - b2**t)) + eps)
        out.append((list(p), list(m), list(v)))
    return out


def check(got, want, rtol=1e-13):
    for (p, m, v), (wp, wm, wv) in zip(got, want, strict=True):
        np.testing.assert_allclose(p, wp, rtol=rtol, atol=0)
        np.testing.assert_allclose(m, wm, rtol=rtol, atol=0)
        np.testing.assert_allclose(v, wv, rtol=rtol, atol=0)


# -- the first two steps by hand ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"weight_decay": 0.1},
        {"weight_decay": 0.1, "decoupled_weight_decay": True},
        {"maximize": True, "betas": (0.8, 0.99), "eps": 1e-6},
        {"momentum_decay": 0.5},
    ],
)
def test_uniopt_first_two_steps_by_hand(kwargs):
    """mu_t = 0.9 (1 - 0.5 * 0.96^(0.004 t)): mu_1 = 0.450073..., mu_2 = 0.450147..., products in
    float64; v-hat with 1 - 0.999^t; eps on sqrt(v-hat)."""
    b1, b2 = kwargs.get("betas", (0.9, 0.999))
    psi = kwargs.get("momentum_decay", 0.004)

    def mu(t):
        return mu_schedule(b1, psi, t)

    def prod(t):
        return math.prod(mu(i) for i in range(1, t + 1))

    want = textbook(
        P0,
        [G1, G2],
        lr=0.01,
        b1=b1,
        b2=b2,
        eps=kwargs.get("eps", 1e-8),
        wd=kwargs.get("weight_decay", 0.0),
        decoupled=kwargs.get("decoupled_weight_decay", False),
        mu=mu,
        prod=prod,
        maximize=kwargs.get("maximize", False),
    )
    check(run(uniopt.NAdam(lr=0.01, **kwargs), P0, [G1, G2]), want)


def test_uniopt_first_step_as_literal_numbers():
    """Step 1 with m_0 = v_0 = 0: m = 0.1 g, v = 0.001 g^2, v-hat = g^2, so the step is
    lr * (c_g g + c_m 0.1 g) / (|g| + eps) with c_g = (1-mu_1)/(1-mu_1) = 1 and
    c_m = mu_2 / (1 - mu_1 mu_2): for g = 0.3, mu_1 = 0.45007347, mu_2 = 0.45014694,
    c_m = 0.45014694 / (1 - 0.20259836) = 0.56452, so p = 1 - 0.01 * (0.3 + 0.0169355) / (0.3 + 1e-8)."""
    mu1, mu2 = 0.9 * (1 - 0.5 * 0.96**0.004), 0.9 * (1 - 0.5 * 0.96**0.008)
    c_m = mu2 / (1 - mu1 * mu2)
    assert (mu1, mu2) == (pytest.approx(0.45007347, rel=1e-7), pytest.approx(0.45014694, rel=1e-7))
    assert c_m == pytest.approx(0.56452, abs=1e-5)
    p, m, _ = run(uniopt.NAdam(lr=0.01), P0, [G1])[0]
    assert p[0] == pytest.approx(1 - 0.01 * (0.3 + c_m * 0.03) / (0.3 + 1e-8), rel=1e-14)
    assert p[3] == pytest.approx(0.0 - 0.01 * (0.2 + c_m * 0.02) / (0.2 + 1e-8), rel=1e-14)
    assert p[2] == 0.5  # a zero gradient and zero moments: no step
    np.testing.assert_allclose(m, [0.03, -0.01, 0.0, 0.02], rtol=1e-15)


def _torch_product(beta1: float, psi: float, t: int) -> float:
    """PyTorch's mu_product: a float32 tensor times the Python float mu each step (float32 product
    of the float32-rounded operands), read back as a Python float."""
    prod = F32(1.0)
    for i in range(1, t + 1):
        prod = F32(prod * F32(mu_schedule(beta1, psi, float(i))))
    return float(prod)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weight_decay": 0.1},
        {"weight_decay": 0.1, "decoupled_weight_decay": True},
        {"betas": (0.3, 0.999)},
        {"momentum_decay": math.inf, "maximize": True},
    ],
)
def test_torch_first_two_steps_by_hand(kwargs):
    """torch.optim.NAdam's formula with its float32 mu_product (mu_product *= mu), in float64."""
    b1, b2 = kwargs.get("betas", (0.9, 0.999))
    psi = kwargs.get("momentum_decay", 0.004)
    want = textbook(
        P0,
        [G1, G2],
        lr=0.01,
        b1=b1,
        b2=b2,
        eps=1e-8,
        wd=kwargs.get("weight_decay", 0.0),
        decoupled=kwargs.get("decoupled_weight_decay", False),
        mu=lambda t: mu_schedule(b1, psi, t),
        prod=lambda t: _torch_product(b1, psi, t),
        maximize=kwargs.get("maximize", False),
    )
    check(run(uniopt.NAdam(lr=0.01, convention="torch", **kwargs), P0, [G1, G2]), want)


def test_torch_large_lerp_weight_takes_one_minus_weight_in_the_dtype():
    """torch's lerp_ kernel with weight w = 1 - beta1 >= 0.5 computes end - (end - self) * (1 - w) with
    1 - w in the tensor's dtype (float32: 1 - float32(w), exact by Sterbenz), not float64's
    1 - (1 - beta1) rounded to float32: for beta1 = 0.4 the two differ by one float32 ulp."""
    b1 = 0.4
    w32 = F32(1 - b1)
    assert F32(1) - w32 != F32(1 - (1 - b1))  # the case tells the two apart
    (_, m1, _), (_, m2, _) = run(
        uniopt.NAdam(lr=0.01, betas=(b1, 0.999), convention="torch"), P0, [G1, G2], np.float32
    )
    c = F32(1) - w32
    m1_hand = np.asarray(G1, F32) - (np.asarray(G1, F32) - F32(0)) * c
    m2_hand = np.asarray(G2, F32) - (np.asarray(G2, F32) - m1_hand) * c
    np.testing.assert_array_equal(m1, m1_hand)
    np.testing.assert_array_equal(m2, m2_hand)


def test_torch_mu_product_is_a_float32_running_product():
    for beta1, psi in ((0.9, 0.004), (0.99, 0.004), (0.9, 0.5)):
        prod = F32(1.0)
        for t in range(1, 1201):
            prod = F32(prod * F32(mu_schedule(beta1, psi, float(t))))
            if t in (1, 2, 3, 50, 400, 1200):
                assert torch_mu_product(beta1, psi, t) == float(prod), (beta1, psi, t)
    # without the warm-up (momentum_decay = inf, mu = 0.9) the float32 product stops in the
    # subnormal range: 4 * 2**-149 * 0.9 rounds back to 4 * 2**-149, for ever
    prod = F32(1.0)
    for _ in range(2000):
        prod = F32(prod * F32(0.9))
    assert float(prod) == 4 * 2.0**-149 == torch_mu_product(0.9, math.inf, 2000)
    # the float32 product differs from the float64 one (here by more than float32's last bit)
    exact = math.prod(mu_schedule(0.9, 0.004, i) for i in range(1, 31))
    assert torch_mu_product(0.9, 0.004, 30) != exact
    assert torch_mu_product(0.9, 0.004, 30) == pytest.approx(exact, rel=1e-5)


def test_keras_first_two_steps_by_hand_float64():
    """keras.optimizers.Nadam in float64 variables: u_t = b1 (1 - 0.5 * 0.96^t) with b1 and 0.96
    cast through float32 in update_step, the variable _u_product with the exact Python constants,
    decoupled decay p - p*wd*lr first, eps on sqrt(v-hat)."""
    lr, wd = float(F32(0.01)), float(F32(0.1))
    b1, b2, d = float(F32(0.9)), float(F32(0.999)), float(F32(0.96))
    p, m, v = list(P0), [0.0] * 4, [0.0] * 4
    u_product = 1.0
    want = []
    for t, grad in enumerate((G1, G2), start=1):
        u_product = u_product * 0.9 * (1 - 0.5 * 0.96**t)
        u_t, u_next = b1 * (1 - 0.5 * d**t), b1 * (1 - 0.5 * d ** (t + 1))
        for i, g in enumerate(grad):
            p[i] = p[i] - p[i] * wd * lr
            m[i] = m[i] + (g - m[i]) * (1 - b1)
            v[i] = v[i] + (g * g - v[i]) * (1 - b2)
            m_hat = u_next * m[i] / (1 - u_product * u_next) + (1 - u_t) * g / (1 - u_product)
            p[i] = p[i] - m_hat * lr / (math.sqrt(v[i] / (1 - b2**t)) + 1e-7)
        want.append((list(p), list(m), list(v)))
    check(run(uniopt.NAdam(lr=0.01, weight_decay=0.1, convention="keras"), P0, [G1, G2]), want)


def test_keras_float32_op_sequence_is_bitwise():
    """Keras's source in NumPy float32, op for op (keras/src/optimizers/nadam.py), 30 steps."""
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(64).astype(F32)
    grads = [rng.standard_normal(64).astype(F32) for _ in range(30)]
    lr, wd, eps = F32(0.01), F32(0.1), F32(1e-7)
    b1, b2, d, one, half = F32(0.9), F32(0.999), F32(0.96), F32(1.0), F32(0.5)
    p, m, v, u_product = p0.copy(), np.zeros_like(p0), np.zeros_like(p0), F32(1.0)
    got = run(uniopt.NAdam(lr=0.01, weight_decay=0.1, convention="keras"), p0, grads, F32)
    for t, g in enumerate(grads, start=1):
        step, step_next = F32(t), F32(t + 1)
        p = p - p * wd * lr  # the base optimizer's weight decay, before the step
        u_product = (u_product * b1) * (one - half * d**step)  # _backend_update_step
        u_t = b1 * (one - half * d**step)
        u_t_1 = b1 * (one - half * d**step_next)
        u_product_t_1 = u_product * u_t_1
        m = m + (g - m) * (one - b1)
        v = v + (np.square(g) - v) * (one - b2)
        m_hat = (u_t_1 * m) / (one - u_product_t_1) + ((one - u_t) * g) / (one - u_product)
        v_hat = v / (one - b2**step)
        p = p - (m_hat * lr) / (np.sqrt(v_hat) + eps)
        np.testing.assert_array_equal(got[t - 1][0], p, err_msg=f"step {t}")
        np.testing.assert_array_equal(got[t - 1][1], m)
        np.testing.assert_array_equal(got[t - 1][2], v)


@pytest.mark.parametrize("nadamw", [False, True])
def test_optax_first_two_steps_by_hand(nadamw):
    """optax.nadam: no schedule, mu-hat = b1 m / (1 - b1^(t+1)) + (1 - b1) g / (1 - b1^t);
    optax.nadamw adds wd * p to the scaled update before -lr."""
    wd = 0.1 if nadamw else 0.0
    p, m, v = list(P0), [0.0] * 4, [0.0] * 4
    want = []
    for t, grad in enumerate((G1, G2), start=1):
        for i, g in enumerate(grad):
            m[i] = 0.1 * g + 0.9 * m[i]
            v[i] = 0.001 * g * g + 0.999 * v[i]
            m_hat = 0.9 * m[i] / (1 - 0.9 ** (t + 1)) + 0.1 * g / (1 - 0.9**t)
            u = m_hat / (math.sqrt(v[i] / (1 - 0.999**t)) + 1e-8) + wd * p[i]
            p[i] = p[i] - 0.01 * u
        want.append((list(p), list(m), list(v)))
    spec = uniopt.NAdam(lr=0.01, weight_decay=wd, decoupled_weight_decay=nadamw, convention="optax")
    check(run(spec, P0, [G1, G2]), want)


def test_optax_float32_op_sequence_is_bitwise():
    """optax.nadamw's transform in NumPy float32 at jax's default: float32 bias corrections
    1 - b^t, here multiplied by their reciprocals as the spec does (optax divides; eager jax
    rewrites the division by a scalar into that product, measured bitwise)."""
    rng = np.random.default_rng(4)
    p0 = rng.standard_normal(64).astype(F32)
    grads = [rng.standard_normal(64).astype(F32) for _ in range(30)]
    spec = uniopt.NAdam(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, convention="optax")
    got = run(spec, p0, grads, F32)
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, g in enumerate(grads, start=1):
        bc1 = F32(1) - F32(0.9) ** F32(t)
        bc1_next = F32(1) - F32(0.9) ** F32(t + 1)
        bc2 = F32(1) - F32(0.999) ** F32(t)
        m = F32(1 - 0.9) * g + F32(0.9) * m
        v = F32(1 - 0.999) * (g * g) + F32(0.999) * v
        m_hat = F32(0.9) * (m * F32(1 / float(bc1_next))) + F32(1 - 0.9) * (g * F32(1 / float(bc1)))
        u = m_hat / (np.sqrt(v * F32(1 / float(bc2))) + F32(1e-8))
        u = u + F32(0.1) * p
        p = p + u * F32(-0.01)
        np.testing.assert_array_equal(got[t - 1][0], p, err_msg=f"step {t}")
        np.testing.assert_array_equal(got[t - 1][1], m)


# -- the paper's algorithm box over many steps ------------------------------------------------------


def dozat_algorithm2(p0, grads, lr, beta1, beta2, eps, psi):
    """Dozat 2016, Algorithm 2, vectorised in float64, with mu_t = beta1 (1 - 0.5 0.96^(t psi))
    (the paper's psi = 1/250) and without the paper's extra beta2 factor on n-hat (see the module
    docstring): g-hat = g / (1 - prod_{i<=t} mu_i); m = beta1 m + (1-beta1) g;
    m-hat = m / (1 - prod_{i<=t+1} mu_i); n = beta2 n + (1-beta2) g^2; n-hat = n / (1 - beta2^t);
    m-bar = (1 - mu_t) g-hat + mu_{t+1} m-hat; theta -= lr m-bar / (sqrt(n-hat) + eps)."""
    theta = np.array(p0, np.float64)
    m = np.zeros_like(theta)
    n = np.zeros_like(theta)
    mus = [None] + [beta1 * (1 - 0.5 * 0.96 ** (i * psi)) for i in range(1, len(grads) + 2)]
    prod = 1.0
    for t, g in enumerate(grads, start=1):
        prod *= mus[t]
        g_hat = g / (1 - prod)
        m = beta1 * m + (1 - beta1) * g
        m_hat = m / (1 - prod * mus[t + 1])
        n = beta2 * n + (1 - beta2) * g**2
        n_hat = n / (1 - beta2**t)
        m_bar = (1 - mus[t]) * g_hat + mus[t + 1] * m_hat
        theta = theta - lr * m_bar / (np.sqrt(n_hat) + eps)
    return theta


@pytest.mark.parametrize("psi", [0.004, 0.1])
def test_uniopt_follows_dozat_algorithm2_over_150_steps(psi):
    rng = np.random.default_rng(7)
    p0 = rng.standard_normal(200)
    grads = [rng.standard_normal(200) * (1 + 0.01 * t) for t in range(150)]
    spec = uniopt.NAdam(lr=3e-3, betas=(0.9, 0.99), eps=1e-8, momentum_decay=psi)
    got = run(spec, p0, grads)[-1][0]
    want = dozat_algorithm2(p0, grads, 3e-3, 0.9, 0.99, 1e-8, psi)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_momentum_decay_inf_is_optax_formula():
    """mu_t = beta1 for every t (momentum_decay = inf) makes uniopt's formula optax's."""
    rng = np.random.default_rng(8)
    p0 = rng.standard_normal(50)
    grads = [rng.standard_normal(50) for _ in range(40)]
    a = run(uniopt.NAdam(lr=0.01, momentum_decay=math.inf), p0, grads)[-1][0]
    b = run(uniopt.NAdam(lr=0.01, convention="optax"), p0, grads)[-1][0]
    np.testing.assert_allclose(a, b, rtol=1e-12)


# -- scalars: memo, limit, convergence, affinity ---------------------------------------------------


def test_scalars_read_out_of_order_equal_a_fresh_computation():
    spec = uniopt.NAdam(lr=0.01, betas=(0.93, 0.999))
    late = spec.step_scalars(20000)
    early = spec.step_scalars(5)
    prod5 = math.prod(mu_schedule(0.93, 0.004, i) for i in range(1, 6))
    mu5, mu6 = mu_schedule(0.93, 0.004, 5), mu_schedule(0.93, 0.004, 6)
    assert early.grad_coef == pytest.approx((1 - mu5) / (1 - prod5), rel=1e-14)
    assert early.momentum_coef == pytest.approx(mu6 / (1 - prod5 * mu6), rel=1e-14)
    assert spec.step_scalars(20000) == late


@pytest.mark.parametrize("convention", ["uniopt", "torch", "keras", "optax"])
def test_limit_scalars_at_a_huge_step(convention):
    """At LIMIT_STEP mu_t = beta1 and the product is 0 (answered without iterating)."""
    spec = uniopt.NAdam(lr=0.01, convention=convention)
    sc = spec.step_scalars(LIMIT_STEP)
    if convention == "uniopt":
        assert (sc.grad_coef, sc.momentum_coef) == (1 - 0.9, 0.9)
    elif convention == "torch":
        assert (sc.grad_value, sc.momentum_value) == (-0.01 * (1 - 0.9), -0.01 * 0.9)
    elif convention == "keras":
        assert sc.u_next_64 == float(F32(0.9)) and sc.one_minus_u_product_64 == 1.0
        assert sc.u_next_32 == float(F32(0.9)) and sc.one_minus_u_product_32 == 1.0
    else:
        assert (sc.inv_bc1, sc.inv_bc1_next, sc.inv_bc2) == (1.0, 1.0, 1.0)


def test_scalars_converge_unless_the_schedule_is_too_slow():
    assert uniopt.NAdam().scalars_converge()
    assert uniopt.NAdam(convention="torch").scalars_converge()
    assert uniopt.NAdam(momentum_decay=0.0).scalars_converge()
    assert uniopt.NAdam(momentum_decay=math.inf).scalars_converge()
    assert not uniopt.NAdam(momentum_decay=1e-4).scalars_converge()
    assert not uniopt.NAdam(betas=(0.99999, 0.999), momentum_decay=1.0).scalars_converge()


def test_default_scalars_settle_where_the_schedule_does():
    """float64: 0.5 * 0.96^(0.004 t) falls below half an ulp of 1 near t = 225,000."""
    spec = uniopt.NAdam(lr=0.01)
    limit = spec.step_scalars(LIMIT_STEP)
    assert spec.step_scalars(230_000) == limit
    assert spec.step_scalars(200_000) != limit


@pytest.mark.parametrize("convention", ["uniopt", "torch", "keras", "optax"])
def test_scalars_are_affine_in_lr(convention):
    spec = uniopt.NAdam(convention=convention, weight_decay=0.1, decoupled_weight_decay=True)
    for t in (1, 2, 7, 300):
        a = np.array(spec.step_scalars(t, 0.0), np.float64)
        b = np.array(spec.step_scalars(t, 1.0), np.float64) - a
        for lr in (3e-3, 0.37, 11.0):
            want = np.array(spec.step_scalars(t, lr), np.float64)
            np.testing.assert_allclose(a + lr * b, want, rtol=1e-13, atol=1e-300)


# -- validation, defaults, state -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"momentum_decay": -0.1},
            r"NAdam: momentum_decay=-0\.1 is out of range; expected 0 <= momentum_decay",
        ),
        ({"momentum_decay": float("nan")}, r"NAdam: momentum_decay=nan is not finite"),
        ({"momentum_decay": -math.inf}, r"NAdam: momentum_decay=-inf is not finite"),
        ({"momentum_decay": "0.004"}, r"NAdam: momentum_decay='0\.004' is not a real number"),
        ({"eps": 0.0}, r"NAdam: eps=0\.0 is out of range; expected 0 < eps"),
        ({"betas": (0.9, 1.0)}, r"NAdam: betas\[1\]=1\.0 is out of range"),
        ({"weight_decay": -1.0}, r"NAdam: weight_decay=-1\.0 is out of range"),
        ({"decoupled_weight_decay": 1}, r"NAdam: decoupled_weight_decay=1 is not a bool"),
        (
            {"convention": "keras", "momentum_decay": 0.004},
            r"momentum_decay=0\.004 has no counterpart in convention='keras' .*expected momentum_decay=1\.0",
        ),
        (
            {"convention": "keras", "decoupled_weight_decay": False},
            r"decoupled_weight_decay=False has no counterpart in convention='keras'",
        ),
        (
            {"convention": "optax", "momentum_decay": 0.004},
            r"convention='optax' \(optax\.nadam has no schedule: mu_t = b1\); expected momentum_decay=inf",
        ),
        ({"convention": "optax", "weight_decay": 0.1}, r"optax\.nadam has no weight decay"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        uniopt.NAdam(**kwargs)


def test_defaults_per_convention():
    torch = uniopt.NAdam(convention="torch")
    assert (torch.lr, torch.betas, torch.eps, torch.weight_decay) == (2e-3, (0.9, 0.999), 1e-8, 0.0)
    assert (torch.momentum_decay, torch.decoupled_weight_decay) == (4e-3, False)
    assert uniopt.NAdam() == uniopt.NAdam(convention="uniopt")
    assert uniopt.NAdam().momentum_decay == 4e-3
    keras = uniopt.NAdam(convention="keras")
    assert (keras.lr, keras.eps, keras.weight_decay) == (float(F32(1e-3)), 1e-7, 0.0)
    assert (keras.momentum_decay, keras.decoupled_weight_decay) == (1.0, True)
    optax = uniopt.NAdam(convention="optax")
    assert (optax.eps, optax.weight_decay, optax.momentum_decay) == (1e-8, 0.0, math.inf)
    nadamw = uniopt.NAdam(convention="optax", decoupled_weight_decay=True)
    assert nadamw.weight_decay == 1e-4  # optax.nadamw's default
    assert uniopt.NAdam(decoupled_weight_decay=True).weight_decay == 0.0  # torch's NAdamW default


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("convention", ["uniopt", "torch", "keras", "optax"])
def test_state_shape_and_dtype(dtype, convention):
    spec = uniopt.NAdam(convention=convention)
    p = np.ones((3, 2), dtype)
    state = spec.init([p])
    assert state.step == 0 and set(state.slots[0]) == {"exp_avg", "exp_avg_sq"}
    params, state = spec.update([np.full((3, 2), 0.5, dtype)], state, [p])
    assert state.step == 1
    for arr in (params[0], *state.slots[0].values()):
        assert arr.shape == (3, 2) and arr.dtype == dtype


@pytest.mark.parametrize("convention", ["uniopt", "torch", "keras", "optax"])
def test_complex_parameters_are_refused(convention):
    spec = uniopt.NAdam(convention=convention)
    p = np.ones(2, np.complex64)
    with pytest.raises(ValueError, match="NAdam: complex parameters are not supported"):
        spec.update([p], spec.init([p]), [p])
