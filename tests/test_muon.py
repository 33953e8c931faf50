"""Muon against hand-computed steps, exact rationals and a float64 textbook Muon.

Muon's uniopt and torch conventions take 2-D parameters only, so it has its own fixtures here instead
of the 1-D ones of tests/test_hand_steps.py and tests/test_paper_reference.py (which name this file
for Muon). The expectations are computed independently of uniopt's op sequence and host scalars:

* by hand, one element at a time in Python floats, for a row or column matrix, whose Gram matrix
  is the 1x1 ``|x|^2``, so that the Newton-Schulz iteration is the scalar polynomial
  ``x <- x (a + b s + c s^2)``, ``s = |x|^2`` (every convention but ``torch``, whose bfloat16
  rounding is checked against torch.optim.Muon itself in tests/torch_adapter/test_muon_torch.py);
* in exact rational arithmetic (``fractions.Fraction``) for a 2x3 matrix with a rational norm;
* by a float64 transcription of the algorithm (Jordan et al. 2024, torch.optim.Muon's algorithm, and
  Liu et al. 2025 for the ``match_rms_adamw`` scaling) over 150 steps, with NumPy's ``@``.
"""

from __future__ import annotations

import math
import re
import zlib
from fractions import Fraction

import array_api_compat.numpy as npx
import numpy as np
import pytest
from namespaces import NAMESPACES, to_namespace, to_numpy

import uniopt
from uniopt._math import sum_pairwise
from uniopt.muon import matmul_exact
from uniopt.registry import get

INFO = get("Muon")
NS = (3.4445, -4.7750, 2.0315)

# -- by hand: row and column matrices ---------------------------------------------------------------

P0 = (1.0, -2.0, 0.5)
GRADS = ((0.5, -1.5, 0.0), (0.01, -2.0, 0.3), (-0.4, 0.0, 0.25))


def _ns_scalar(x, steps, coefficients):
    """Newton-Schulz on a row (or column) vector: its Gram matrix is the scalar ``|x|^2``."""
    a, b, c = coefficients
    for _ in range(steps):
        s = sum(v * v for v in x)
        x = [v * (a + b * s + c * s * s) for v in x]
    return x


def hand_uniopt(h, p, m, g, shape):
    """torch.optim.Muon's algorithm in float64 (no bfloat16): EMA momentum, Nesterov, x / max(|x|,
    eps), Newton-Schulz, decoupled decay by lr, the step scaled by the shape."""
    mu = h["momentum"]
    m = [mu * mi + (1 - mu) * gi for mi, gi in zip(m, g, strict=True)]
    u = [mu * mi + (1 - mu) * gi for mi, gi in zip(m, g, strict=True)] if h["nesterov"] else m
    norm = math.sqrt(sum(v * v for v in u))
    x = _ns_scalar([v / max(norm, h["eps"]) for v in u], h["ns_steps"], h["ns_coefficients"])
    rows, cols = shape
    scale = {
        "original": math.sqrt(max(1.0, rows / cols)),
        "match_rms_adamw": h["rms_rate"] * math.sqrt(max(rows, cols)),
        "none": 1.0,
    }[h["adjust_lr_fn"]]
    p = [pi * (1 - h["lr"] * h["weight_decay"]) - h["lr"] * scale * xi for pi, xi in zip(p, x, strict=True)]
    return p, m


def hand_keras(h, p, m, g, shape):
    """keras.optimizers.Muon._muon_update_step after its _apply_weight_decay (keras/src/optimizers/
    muon.py): the momentum is a sum, the norm has 1e-7 added, lr_adjust is sqrt(max(A, B)) * rms."""
    lr, wd, mu = h["lr"], h["weight_decay"], h["momentum"]
    p = [pi - pi * wd * lr for pi in p]
    m = [mi + (gi + mi * (mu - 1)) for mi, gi in zip(m, g, strict=True)]
    u = [gi + mu * mi for mi, gi in zip(m, g, strict=True)] if h["nesterov"] else m
    norm = math.sqrt(sum(v * v for v in u))
    x = _ns_scalar([v / (norm + 1e-7) for v in u], h["ns_steps"], h["ns_coefficients"])
    scale = 1.0
    if h["adjust_lr_fn"] == "match_rms_adamw":  # ops.sqrt of an int is float32 in Keras
        scale = float(np.float32(math.sqrt(max(shape)))) * h["rms_rate"]
    return [pi - lr * xi * scale for pi, xi in zip(p, x, strict=True)], m


def hand_optax(h, p, m, g, shape, t):
    """optax.contrib.muon's 'muon' chain (optax/contrib/_muon.py): EMA momentum with bias
    corrections, x / (|x| + eps), Newton-Schulz, scale_by_shape with fan_in = shape[0],
    add_decayed_weights, -lr."""
    mu = h["momentum"]
    m = [(1 - mu) * gi + mu * mi for mi, gi in zip(m, g, strict=True)]
    if h["nesterov"]:
        u = [
            mu * (mi / (1 - mu ** (t + 1))) + (1 - mu) * (gi / (1 - mu**t))
            for mi, gi in zip(m, g, strict=True)
        ]
    else:
        u = [mi / (1 - mu**t) for mi in m]
    norm = math.sqrt(sum(v * v for v in u))
    x = _ns_scalar([v / (norm + h["eps"]) for v in u], h["ns_steps"], h["ns_coefficients"])
    fan_in, fan_out = shape
    if h["adjust_lr_fn"] == "original":
        scale = math.sqrt(max(1.0, fan_out / fan_in))
    else:
        scale = math.sqrt(max(fan_in, fan_out)) * h["rms_rate"]
    u = [xi * scale + h["weight_decay"] * pi for xi, pi in zip(x, p, strict=True)]
    return [pi - h["lr"] * ui for pi, ui in zip(p, u, strict=True)], m


def hand_keras_adam(h, p, m, v, g, t):
    """keras.optimizers.Muon._adamw_update_step for a vector, after the weight decay with
    adam_weight_decay (at the learning rate itself): Keras's betas are cast through float32
    (``ops.cast``), and its Adam learning rate is ``learning_rate * adam_lr_ratio``, a float32
    product (its learning rate is a float32 variable), cast to the variable's dtype."""
    b1, b2 = h["adam_betas"]
    lr = h["lr"]
    p = [pi - pi * h["adam_weight_decay"] * lr for pi in p]
    adam_lr = float(np.float32(lr) * np.float32(h["adam_lr_ratio"]))
    alpha = adam_lr * math.sqrt(1 - float(np.float32(b2)) ** t) / (1 - float(np.float32(b1)) ** t)
    m = [mi + (gi - mi) * (1 - b1) for mi, gi in zip(m, g, strict=True)]
    v = [vi + (gi * gi - vi) * (1 - b2) for vi, gi in zip(v, g, strict=True)]
    p = [pi - (mi * alpha) / (math.sqrt(vi) + h["adam_eps"]) for pi, mi, vi in zip(p, m, v, strict=True)]
    return p, m, v


def hand_optax_adam(h, p, m, v, g, t):
    """optax.adamw(b1, b2, eps, weight_decay=adam_weight_decay, nesterov=nesterov) for a vector (the
    'adam' partition of optax.contrib.muon), float64."""
    b1, b2 = h["adam_betas"]
    m = [(1 - b1) * gi + b1 * mi for mi, gi in zip(m, g, strict=True)]
    v = [(1 - b2) * gi * gi + b2 * vi for vi, gi in zip(v, g, strict=True)]
    if h["nesterov"]:
        m_hat = [
            b1 * mi / (1 - b1 ** (t + 1)) + (1 - b1) * gi / (1 - b1**t) for mi, gi in zip(m, g, strict=True)
        ]
    else:
        m_hat = [mi / (1 - b1**t) for mi in m]
    u = [mh / (math.sqrt(vi / (1 - b2**t)) + h["eps"]) for mh, vi in zip(m_hat, v, strict=True)]
    u = [ui + h["adam_weight_decay"] * pi for ui, pi in zip(u, p, strict=True)]
    return [pi - h["lr"] * ui for pi, ui in zip(p, u, strict=True)], m, v


HAND_CASES = [
    pytest.param(case, id=case.desc)
    for case in INFO.cases
    if case.kwargs.get("convention", "uniopt") in ("uniopt", "keras", "optax")
]


@pytest.mark.parametrize("orientation", [(1, 3), (3, 1)], ids=["row", "column"])
@pytest.mark.parametrize("case", HAND_CASES)
def test_matrix_steps_by_hand(case, orientation):
    """Three steps of a 1x3 and a 3x1 parameter (the column is iterated transposed) against the
    framework's formula, to 1e-12 relative; with ``adam_2d`` (Keras's exclude_layers) Keras's Adam
    step."""
    spec = INFO.make(case)
    h = spec.hyperparameters
    assert h["ns_coefficients"] == tuple(case.kwargs.get("ns_coefficients", NS))
    params = [np.array(P0, dtype=np.float64).reshape(orientation)]
    state = spec.init(params)
    p, m, v = list(P0), [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
    for t, g in enumerate(GRADS, start=1):
        params, state = spec.update([np.array(g).reshape(orientation)], state, params)
        if h["adam_2d"]:
            p, m, v = hand_keras_adam(h, p, m, v, g, t)
            np.testing.assert_allclose(state.slots[0]["exp_avg_sq"].reshape(-1), v, rtol=1e-12, atol=0)
        elif spec.convention == "keras":
            p, m = hand_keras(h, p, m, g, orientation)
        elif spec.convention == "optax":
            p, m = hand_optax(h, p, m, g, orientation, t)
        else:
            p, m = hand_uniopt(h, p, m, g, orientation)
        np.testing.assert_allclose(params[0].reshape(-1), p, rtol=1e-12, atol=0, err_msg=f"step {t}")
        np.testing.assert_allclose(
            state.slots[0]["momentum_buffer"].reshape(-1), m, rtol=1e-12, atol=0, err_msg=f"step {t}"
        )


@pytest.mark.parametrize("shape", [(3,), ()], ids=["vector", "scalar"])
@pytest.mark.parametrize(
    "case", [c for c in HAND_CASES if c.values[0].kwargs.get("convention") in ("keras", "optax")]
)
def test_keras_and_optax_step_other_parameters_with_adam_by_hand(case, shape):
    """Parameters that are not 2-D: Keras's AdamW step and optax's NAdamW (or AdamW), 12 steps."""
    spec = INFO.make(case)
    h = spec.hyperparameters
    size = math.prod(shape)
    rng = np.random.default_rng(3)
    grads = [list(rng.standard_normal(size)) for _ in range(12)]
    params = [np.array(P0[:size], dtype=np.float64).reshape(shape)]
    state = spec.init(params)
    p, m, v = list(P0[:size]), [0.0] * size, [0.0] * size
    for t, g in enumerate(grads, start=1):
        params, state = spec.update([np.array(g).reshape(shape)], state, params)
        step = hand_keras_adam if spec.convention == "keras" else hand_optax_adam
        p, m, v = step(h, p, m, v, g, t)
        np.testing.assert_allclose(params[0].reshape(-1), p, rtol=1e-12, atol=0, err_msg=f"step {t}")
        np.testing.assert_allclose(state.slots[0]["momentum_buffer"].reshape(-1), m, rtol=1e-12, atol=0)
        np.testing.assert_allclose(state.slots[0]["exp_avg_sq"].reshape(-1), v, rtol=1e-12, atol=0)


def test_defaults_are_each_frameworks():
    """torch.optim.Muon's, keras.optimizers.Muon's and optax.contrib.muon's defaults, written out."""
    torch_defaults = dict(
        lr=1e-3,
        weight_decay=0.1,
        momentum=0.95,
        nesterov=True,
        ns_coefficients=NS,
        eps=1e-7,
        ns_steps=5,
        adjust_lr_fn="original",
    )
    for convention in ("uniopt", "torch"):
        h = uniopt.Muon(convention=convention).hyperparameters
        assert {k: h[k] for k in torch_defaults} == torch_defaults
    keras = uniopt.Muon(convention="keras").hyperparameters
    assert keras["lr"] == float(np.float32(1e-3)) and keras["weight_decay"] == float(np.float32(0.004))
    assert keras["adam_weight_decay"] == float(np.float32(0.004)) and keras["adam_eps"] == 1e-7
    assert keras["adjust_lr_fn"] == "match_rms_adamw" and keras["rms_rate"] == 0.2 and keras["eps"] == 1e-7
    optax = uniopt.Muon(convention="optax").hyperparameters
    assert optax["weight_decay"] == 0.0 and optax["eps"] == 1e-8 and optax["adam_eps"] == 1e-8
    assert optax["adjust_lr_fn"] == "original" and optax["adam_weight_decay"] == 0.0
    assert uniopt.Muon(convention="optax", eps=1e-6).adam_eps == 1e-6  # optax has one eps
    assert uniopt.Muon().matmul == "backend"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("convention", ["keras", "optax"])
def test_adam_2d_steps_a_matrix_with_the_adam_step_by_hand(convention, dtype):
    """adam_2d=True (Keras's exclude_layers, optax's None dimension numbers for one matrix): a 2x3
    matrix takes the convention's Adam step, elementwise: the same bits as the vector of its values
    (which takes that step by its shape), and Keras's or optax's Adam written out by hand (float64,
    1e-12); without it the same matrix takes the Muon step (another trajectory), and exp_avg_sq
    stays zeros there."""
    kwargs = {"lr": 0.02, "convention": convention, "adam_betas": (0.8, 0.99)}
    if convention == "keras":
        kwargs["adam_lr_ratio"] = 0.3
    routed, plain = uniopt.Muon(adam_2d=True, **kwargs), uniopt.Muon(**kwargs)
    assert routed.adam_routed((2, 3)) and not plain.adam_routed((2, 3)) and plain.adam_routed((6,))
    assert not uniopt.Muon().adam_routed((2, 3)) and not uniopt.Muon().adam_routed((6,))
    rng = np.random.default_rng(21)
    p0 = rng.standard_normal((2, 3)).astype(dtype)
    grads = [rng.standard_normal((2, 3)).astype(dtype) for _ in range(10)]
    matrix, flat, muon = [p0.copy()], [p0.reshape(-1).copy()], [p0.copy()]
    states = routed.init(matrix), routed.init(flat), plain.init(muon)
    h = routed.hyperparameters
    p, m, v = list(p0.reshape(-1).astype(float)), [0.0] * 6, [0.0] * 6
    for t, g in enumerate(grads, start=1):
        matrix, s0 = routed.update([g], states[0], matrix)
        flat, s1 = routed.update([g.reshape(-1)], states[1], flat)
        muon, s2 = plain.update([g], states[2], muon)
        states = s0, s1, s2
        assert np.array_equal(matrix[0].reshape(-1), flat[0])
        for name in ("momentum_buffer", "exp_avg_sq"):
            assert np.array_equal(s0.slots[0][name].reshape(-1), s1.slots[0][name])
        assert not np.any(s2.slots[0]["exp_avg_sq"])
        step = hand_keras_adam if convention == "keras" else hand_optax_adam
        p, m, v = step(h, p, m, v, list(g.reshape(-1).astype(float)), t)
        if dtype == np.float64:
            np.testing.assert_allclose(matrix[0].reshape(-1), p, rtol=1e-12, atol=0, err_msg=f"step {t}")
            np.testing.assert_allclose(s0.slots[0]["exp_avg_sq"].reshape(-1), v, rtol=1e-12, atol=0)
    assert not np.allclose(matrix[0], muon[0], rtol=1e-3)


def test_adam_lr_ratio_scales_only_the_adam_steps_learning_rate():
    """Keras's adam_lr_ratio: the Adam step of a vector at lr * ratio, its weight decay at lr (the
    hand formula checks both); a matrix's Muon step does not read it (the same bits)."""
    vec0, mat0 = np.array([1.0, -2.0, 0.5]), np.array([[1.0, -2.0], [0.5, 0.25]])
    g_vec, g_mat = np.array([0.3, -0.1, 0.2]), np.array([[0.1, 0.4], [-0.3, 0.2]])
    out = {}
    for ratio in (1.0, 0.3):
        spec = uniopt.Muon(lr=0.02, adam_lr_ratio=ratio, adam_weight_decay=0.5, convention="keras")
        params = [vec0.copy(), mat0.copy()]
        params, _ = spec.update([g_vec, g_mat], spec.init(params), params)
        out[ratio] = params
        p, _, _ = hand_keras_adam(spec.hyperparameters, list(vec0), [0.0] * 3, [0.0] * 3, list(g_vec), 1)
        np.testing.assert_allclose(params[0], p, rtol=1e-12, atol=0)
    assert np.array_equal(out[1.0][1], out[0.3][1])
    assert not np.allclose(out[1.0][0], out[0.3][0], rtol=1e-6)


def test_two_d_only_conventions_refuse_other_parameters_before_any_state():
    for convention in ("uniopt", "torch"):
        spec = uniopt.Muon(convention=convention)
        for shape in [(3,), (), (2, 3, 4)]:
            with pytest.raises(
                ValueError, match=rf"Muon: a parameter of shape {re.escape(str(shape))} with "
            ):
                spec.init([np.zeros((2, 2)), np.zeros(shape)])
    with pytest.raises(ValueError, match="Muon: complex parameters are not supported"):
        uniopt.Muon(convention="keras").init([np.zeros((2, 2), np.complex128)])


# -- exact rationals: Newton-Schulz of a 2x3 matrix ------------------------------------------------------


def _fraction_ns(u, steps, coefficients):
    """Newton-Schulz in exact rational arithmetic; ``u`` is a list of rows with a rational norm."""
    a, b, c = (Fraction(v) for v in coefficients)  # the coefficients' exact binary values
    rows, cols = len(u), len(u[0])
    norm_sq = sum(v * v for row in u for v in row)
    norm = Fraction(math.isqrt(norm_sq.numerator), math.isqrt(norm_sq.denominator))
    assert norm * norm == norm_sq
    x = [[v / norm for v in row] for row in u]

    def mul(p, q):
        return [
            [sum(p[i][k] * q[k][j] for k in range(len(q))) for j in range(len(q[0]))] for i in range(len(p))
        ]

    for _ in range(steps):
        gram = mul(x, [list(col) for col in zip(*x, strict=True)])
        gram2 = mul(gram, gram)
        poly = [[b * gram[i][j] + c * gram2[i][j] for j in range(rows)] for i in range(rows)]
        px = mul(poly, x)
        x = [[a * x[i][j] + px[i][j] for j in range(cols)] for i in range(rows)]
    return x


@pytest.mark.parametrize("matmul", ["backend", "exact"])
@pytest.mark.parametrize("transpose", [False, True], ids=["wide", "tall"])
def test_newton_schulz_against_exact_rationals(matmul, transpose):
    """One step from zero momentum with lr 1, no decay and no scaling: the parameter moves by minus
    the Newton-Schulz output of the gradient (the normalisation removes the momentum's factor).
    [[2, 0, 1], [2, 4, 0]] has norm 5, so the iteration is exact in rationals."""
    u = [[Fraction(2), Fraction(0), Fraction(1)], [Fraction(2), Fraction(4), Fraction(0)]]
    exact = np.array([[float(v) for v in row] for row in _fraction_ns(u, 5, NS)])
    g = np.array([[2.0, 0.0, 1.0], [2.0, 4.0, 0.0]])
    if transpose:
        g, exact = g.T.copy(), exact.T.copy()
    spec = uniopt.Muon(lr=1.0, weight_decay=0.0, adjust_lr_fn="none", matmul=matmul)
    params = [np.zeros_like(g)]
    params, _ = spec.update([g], spec.init(params), params)
    # float64: a few roundings per op, 5 iterations of a polynomial with coefficients below 5
    np.testing.assert_allclose(-params[0], exact, rtol=0, atol=1e-13)
    assert np.max(np.abs(exact)) > 0.5  # the fixture is not degenerate
    # float32: the same to float32 accuracy
    params32 = [np.zeros_like(g, dtype=np.float32)]
    params32, _ = spec.update([g.astype(np.float32)], spec.init(params32), params32)
    np.testing.assert_allclose(-params32[0], exact, rtol=0, atol=2e-5)


# -- the exact product -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 2), (7, 33, 6), (4, 64, 4), (2, 0, 3)])
def test_matmul_exact_is_the_pairwise_sum_of_the_products(shape):
    """Each entry is sum_pairwise of its k products (the definition), bitwise, and within the
    pairwise error bound of the exact rational value."""
    m, k, n = shape
    rng = np.random.default_rng(zlib.crc32(repr(shape).encode()))
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c = matmul_exact(a, b, npx)
    assert c.dtype == np.float32 and c.shape == (m, n)
    for i in range(m):
        for j in range(n):
            expected = sum_pairwise(a[i, :] * b[:, j], npx) if k else np.float32(0)
            assert c[i, j] == expected, (i, j)
            true = sum(Fraction(float(a[i, q])) * Fraction(float(b[q, j])) for q in range(k))
            bound = (
                (math.ceil(math.log2(max(k, 1))) + 1) * 2.0**-24 * float(np.sum(np.abs(a[i, :] * b[:, j])))
            )
            assert abs(Fraction(float(c[i, j])) - true) <= Fraction(bound) * (1 + 2**-20)


def test_matmul_exact_blocks_do_not_change_any_sum(monkeypatch):
    import uniopt.muon as module

    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((9, 20)), rng.standard_normal((20, 4))
    whole = matmul_exact(a, b, npx)
    monkeypatch.setattr(module, "EXACT_BLOCK", 20 * 4 * 2)  # two rows a block: five blocks
    np.testing.assert_array_equal(matmul_exact(a, b, npx), whole)


@pytest.mark.parametrize("xp_name", NAMESPACES)
def test_matmul_exact_is_the_same_bits_on_every_namespace(xp_name):
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((17, 40)).astype(np.float32), rng.standard_normal((40, 9)).astype(np.float32)
    xp = npx if xp_name == "numpy" else __import__("array_api_strict")
    got = to_numpy(matmul_exact(to_namespace(xp_name, a), to_namespace(xp_name, b), xp))
    np.testing.assert_array_equal(got, matmul_exact(a, b, npx))


def test_torch_convention_refuses_a_namespace_without_bfloat16():
    import array_api_strict

    spec = uniopt.Muon(convention="torch")
    params = [array_api_strict.asarray(np.ones((2, 3), np.float32))]
    with pytest.raises(ValueError, match=r"namespace array_api_strict has no bfloat16 dtype"):
        spec.update([array_api_strict.asarray(np.ones((2, 3), np.float32))], spec.init(params), params)


def test_torch_convention_orthogonalizes_in_bfloat16():
    """The torch convention's Newton-Schulz output is bfloat16 values (torch.optim.Muon returns a
    bfloat16 tensor): with lr 1, no decay, a zero parameter and a wide matrix ("original" scales it
    by 1), the step is minus that output. The uniopt convention's is not."""
    import ml_dtypes

    rng = np.random.default_rng(8)
    for dtype in (np.float32, np.float64):
        g = rng.standard_normal((4, 6)).astype(dtype)
        for convention, bfloat16 in (("torch", True), ("uniopt", False)):
            spec = uniopt.Muon(lr=1.0, weight_decay=0.0, convention=convention)
            params = [np.zeros_like(g)]
            params, _ = spec.update([g], spec.init(params), params)
            step = -params[0]
            rounded = step.astype(ml_dtypes.bfloat16).astype(dtype)
            assert np.array_equal(rounded, step) == bfloat16, (dtype, convention)
            assert 0.2 < np.max(np.abs(step)) < 2.0


# -- a float64 textbook Muon over 150 steps ----------------------------------------------------------

N_STEPS = 150
RTOL = 1e-10
SHAPES = ((5, 3), (3, 5), (4, 4))
SCALES = (1.0, 10.0, 1e-6)  # the last: gradient norms near eps


def textbook(h, variant=None):
    """A straightforward Muon in NumPy float64 (Jordan et al. 2024's algorithm with
    torch.optim.Muon's EMA momentum and clamp), one parameter at a time; ``variant`` changes one
    documented choice (see test_tolerance_rejects_other_frameworks_choices)."""
    a, b, c = h["ns_coefficients"]
    mu, lr, wd, eps = h["momentum"], h["lr"], h["weight_decay"], h["eps"]

    def step(theta, m, g, t):
        m = mu * m + (1 - mu) * g
        u = mu * m + (1 - mu) * g if h["nesterov"] else m
        if variant == "bias_corrected":  # optax's
            u = (
                mu * m / (1 - mu ** (t + 1)) + (1 - mu) * g / (1 - mu**t)
                if h["nesterov"]
                else m / (1 - mu**t)
            )
        rows, cols = theta.shape
        x = u.T if rows > cols else u
        norm = np.sqrt(np.sum(x * x))
        x = x / (norm + eps) if variant == "norm_plus_eps" else x / max(norm, eps)
        for _ in range(h["ns_steps"]):
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
        x = x.T if rows > cols else x
        if h["adjust_lr_fn"] == "original":
            ratio = cols / rows if variant == "fan_in_rows" else rows / cols  # optax's is cols / rows
            scale = math.sqrt(max(1.0, ratio))
        elif h["adjust_lr_fn"] == "match_rms_adamw":
            scale = h["rms_rate"] * math.sqrt(max(rows, cols))
        else:
            scale = 1.0
        return theta * (1 - lr * wd) - lr * scale * x, m

    return step


def _stream(seed):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(shape) for shape in SHAPES]
    bias = [rng.normal(0.0, 0.5, size=shape) for shape in SHAPES]
    grads = []
    for _ in range(N_STEPS):
        step = []
        for scale, b0, shape in zip(SCALES, bias, SHAPES, strict=True):
            g = scale * (b0 + rng.standard_normal(shape))
            g[rng.random(shape) < 0.1] = 0.0
            step.append(g)
        grads.append(step)
    return params, grads


def worst_ratio(case, variant=None):
    """Largest ``|uniopt - textbook| / (RTOL * envelope)`` over every step, parameter and momentum
    (the envelope: the largest |textbook value| the element has had)."""
    spec = INFO.make(case)
    step = textbook(spec.hyperparameters, variant)
    params0, grads = _stream(zlib.crc32(f"Muon-{case.desc}".encode()))
    params, state = [p.copy() for p in params0], spec.init(params0)
    ref = [(p.copy(), np.zeros_like(p)) for p in params0]
    envelopes, worst = {}, (0.0, "")
    for t, gs in enumerate(grads, start=1):
        params, state = spec.update([g.copy() for g in gs], state, params)
        ref = [step(p, m, g, t) for (p, m), g in zip(ref, gs, strict=True)]
        for i, (p_ref, m_ref) in enumerate(ref):
            pairs = [("param", params[i], p_ref)]
            if variant is None:
                pairs.append(("momentum_buffer", state.slots[i]["momentum_buffer"], m_ref))
            for what, actual, expected in pairs:
                env = np.maximum(envelopes.get((i, what), 0.0), np.abs(expected))
                envelopes[i, what] = env
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = np.where(actual == expected, 0.0, np.abs(actual - expected) / (RTOL * env))
                k = int(np.argmax(ratio))
                if ratio.flat[k] > worst[0]:
                    worst = (float(ratio.flat[k]), f"{what} {i} element {k} step {t}")
    return worst


UNIOPT_CASES = [
    pytest.param(c, id=c.desc) for c in INFO.cases if c.kwargs.get("convention", "uniopt") == "uniopt"
]


@pytest.mark.parametrize("case", UNIOPT_CASES)
def test_matches_a_float64_textbook_muon_over_150_steps(case):
    ratio, where = worst_ratio(case)
    assert ratio <= 1.0, f"beyond rtol={RTOL} of the envelope by {ratio:.3g}x at {where}"


@pytest.mark.parametrize("variant", ["norm_plus_eps", "fan_in_rows", "bias_corrected"])
def test_tolerance_rejects_other_frameworks_choices(variant):
    """The bound tells the uniopt convention from Jordan's repository's ``norm + eps`` and from
    optax's shape factor and bias correction by the parameters alone."""
    ratio, where = worst_ratio(INFO.case("default"), variant)
    assert ratio > 100.0, f"{variant} is within {ratio:.3g}x of the bound at {where}"


# -- the exact product across namespaces -------------------------------------------------------------


@pytest.mark.parametrize("convention", ["uniopt", "keras", "optax"])
def test_exact_matmul_is_bitwise_between_numpy_and_array_api_strict(convention):
    import array_api_strict

    spec = uniopt.Muon(lr=0.02, convention=convention, matmul="exact")
    rng = np.random.default_rng(9)
    shapes = [(6, 4), (4, 6), *([(5,)] if convention != "uniopt" else [])]
    for dtype in (np.float32, np.float64):
        a = [rng.standard_normal(s).astype(dtype) for s in shapes]
        b = [array_api_strict.asarray(x) for x in a]
        sa, sb = spec.init(a), spec.init(b)
        for _ in range(10):
            g = [rng.standard_normal(s).astype(dtype) for s in shapes]
            a, sa = spec.update(g, sa, a)
            b, sb = spec.update([array_api_strict.asarray(x) for x in g], sb, b)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, to_numpy(y))


@pytest.mark.parametrize("case", [pytest.param(c, id=c.desc) for c in INFO.cases])
def test_a_per_step_lr_is_the_spec_with_that_lr(case):
    """``update(..., lr=)`` (a scheduler) equals a spec built with that lr, bit for bit, in every
    place lr enters (decay, the scaled step; Keras's weight decay and Adam's alpha)."""
    spec = INFO.make(case)
    rng = np.random.default_rng(10)
    shapes = [(5, 3), (3, 5)] + ([(4,)] if spec.param_refusal((4,)) is None else [])
    params = [rng.standard_normal(s) for s in shapes]
    state = spec.init(params)
    for k, lr in enumerate([0.5 * spec.lr, 3.0 * spec.lr, 0.25 * spec.lr]):
        grads = [rng.standard_normal(s) for s in shapes]
        lr_value = float(np.float32(lr)) if spec.convention == "keras" else lr  # Keras's float32 variable
        a, state_a = spec.update(grads, state, params, lr=lr_value)
        b, _ = spec.replace(lr=lr_value).update(grads, state, params)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y, err_msg=f"step {k + 1}")
        params, state = a, state_a
