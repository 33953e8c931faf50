"""Lion (``uniopt.Lion``) against arithmetic written out here, not computed by the spec.

* the first two steps of each convention: uniopt's as literal numbers worked out by hand, Keras's
  and optax's as their source code's op sequence in NumPy (``keras/src/optimizers/lion.py`` with
  the base optimizer's weight decay; ``optax/_src/alias.py`` ``lion``), bitwise in float32 and
  float64;
* a float64 transcription of the paper's Algorithm 2 (Chen et al. 2023, arXiv 2302.06675) over
  200 steps against ``convention="uniopt"``;
* validation, defaults per convention, state shape and dtype, complex parameters, the namespaces.
"""

from __future__ import annotations

import numpy as np
import pytest
from namespaces import NAMESPACES, to_namespace, to_numpy

import uniopt

P0 = np.array([1.0, -2.0, 0.5, 0.0])
G1 = np.array([0.3, -0.1, 0.0, 0.2])
G2 = np.array([-0.5, -0.1, 0.2, 0.0])


def run(
    spec: uniopt.Lion, p0: np.ndarray, grads: list[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Parameters and momentum after every step."""
    params, state = [p0.copy()], spec.init([p0])
    ps, ms = [], []
    for g in grads:
        params, state = spec.update([g], state, params)
        ps.append(params[0])
        ms.append(state.slots[0]["exp_avg"])
    return ps, ms


# -- the first two steps by hand ---------------------------------------------------------------------


def test_uniopt_first_two_steps_by_hand():
    """lr=0.01, weight_decay=0.1 (decay factor 1 - 0.001 = 0.999), betas (0.9, 0.99).

    Step 1, m = 0: c = 0.1*g1 = (0.03, -0.01, 0, 0.02), sign (1, -1, 0, 1);
    p = 0.999*p0 - 0.01*sign = (0.989, -1.988, 0.4995, -0.01); m = 0.01*g1 = (0.003, -0.001, 0, 0.002).
    Step 2: c = 0.9*m + 0.1*g2 = (-0.0473, -0.0109, 0.02, 0.0018), sign (-1, -1, 1, 1);
    p = 0.999*p - 0.01*sign = (0.998011, -1.976012, 0.4890005, -0.01999);
    m = 0.99*m + 0.01*g2 = (-0.00203, -0.00199, 0.002, 0.00198).
    The third entry shows sign(0) = 0: at step 1 it only decays."""
    ps, ms = run(uniopt.Lion(lr=0.01, weight_decay=0.1), P0, [G1, G2])
    np.testing.assert_allclose(ps[0], [0.989, -1.988, 0.4995, -0.01], rtol=1e-15)
    np.testing.assert_allclose(ms[0], [0.003, -0.001, 0.0, 0.002], rtol=1e-15)
    np.testing.assert_allclose(ps[1], [0.998011, -1.976012, 0.4890005, -0.01999], rtol=1e-15)
    np.testing.assert_allclose(ms[1], [-0.00203, -0.00199, 0.002, 0.00198], rtol=1e-14)


def test_uniopt_sign_sgd_and_maximize_by_hand():
    """beta1 = 0: c = g, so the step is -lr*sign(g); maximize flips it. No decay."""
    ps, ms = run(uniopt.Lion(lr=0.5, betas=(0.0, 0.5)), P0, [G1, G2])
    np.testing.assert_array_equal(ps[0], [0.5, -1.5, 0.5, -0.5])
    np.testing.assert_array_equal(ms[0], [0.15, -0.05, 0.0, 0.1])
    np.testing.assert_array_equal(ps[1], [1.0, -1.0, 0.0, -0.5])
    ps, ms = run(uniopt.Lion(lr=0.5, betas=(0.0, 0.5), maximize=True), P0, [G1])
    np.testing.assert_array_equal(ps[0], [1.5, -2.5, 0.5, 0.5])
    np.testing.assert_array_equal(ms[0], [-0.15, 0.05, 0.0, -0.1])


def keras_lion(p, grads, lr, b1, b2, wd, dtype):
    """``keras.optimizers.Lion`` written out from its source in ``dtype``: the learning rate is a
    float32 variable and ``ops.cast`` turns Python floats into float32 first, then into the
    variable's dtype; ``1.0 - beta`` is computed in that dtype; weight decay
    ``variable - variable * wd * lr`` (base optimizer) runs before ``update_step``."""
    t = np.dtype(dtype).type
    cast = lambda x: t(np.float32(x))  # noqa: E731
    lr, b1, b2, wd = cast(lr), cast(b1), cast(b2), cast(wd)
    p, m = p.astype(dtype), np.zeros_like(p, dtype=dtype)
    out = []
    for g in grads:
        g = g.astype(dtype)
        if wd != 0:
            p = p - p * wd * lr
        p = p - lr * np.sign(m * b1 + g * (t(1.0) - b1))
        m = m * b2 + g * (t(1.0) - b2)
        out.append((p, m))
    return out


def optax_lion(p, grads, lr, b1, b2, wd, dtype):
    """``optax.lion`` written out from its source in ``dtype``: ``scale_by_lion``
    (``(1 - b1) * g + b1 * m``, Python-float coefficients rounded to the dtype),
    ``add_decayed_weights`` (``u + wd * p``, skipped for a zero constant),
    ``scale_by_learning_rate`` (``-lr * u``) and ``apply_updates`` (``p + u``)."""
    t = np.dtype(dtype).type
    p, m = p.astype(dtype), np.zeros_like(p, dtype=dtype)
    out = []
    for g in grads:
        g = g.astype(dtype)
        u = np.sign(t(1.0 - b1) * g + t(b1) * m)
        if wd != 0:
            u = u + t(wd) * p
        p = p + t(-lr) * u
        m = t(1.0 - b2) * g + t(b2) * m
        out.append((p, m))
    return out


GRADS = [G1, G2, np.array([0.0, 0.0, -0.02, 0.7]), np.array([1e-3, -2.0, 0.1, -0.3])]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("kwargs", "native"),
    [
        ({"lr": 0.01, "weight_decay": 0.1}, (0.01, 0.9, 0.99, 0.1)),
        ({"lr": 0.03, "betas": (0.7, 0.95)}, (0.03, 0.7, 0.95, 0.0)),
        ({}, (1e-3, 0.9, 0.99, 0.0)),  # Keras's defaults
    ],
    ids=["decay", "betas", "defaults"],
)
def test_keras_convention_is_keras_source_op_for_op(kwargs, native, dtype):
    spec = uniopt.Lion(**kwargs, convention="keras")
    ps, ms = run(spec, P0.astype(dtype), [g.astype(dtype) for g in GRADS])
    want = keras_lion(P0, GRADS, *native, dtype)
    for (p, m), p_ours, m_ours in zip(want, ps, ms, strict=True):
        assert p_ours.dtype == dtype
        np.testing.assert_array_equal(p_ours, p)
        np.testing.assert_array_equal(m_ours, m)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("kwargs", "native"),
    [
        ({"lr": 0.01}, (0.01, 0.9, 0.99, 1e-3)),  # optax's default weight decay
        ({"lr": 0.01, "weight_decay": 0.0}, (0.01, 0.9, 0.99, 0.0)),
        ({"lr": 0.05, "weight_decay": 0.5, "betas": (0.95, 0.98)}, (0.05, 0.95, 0.98, 0.5)),
    ],
    ids=["default_decay", "no_decay", "strong"],
)
def test_optax_convention_is_optax_source_op_for_op(kwargs, native, dtype):
    spec = uniopt.Lion(**kwargs, convention="optax")
    ps, ms = run(spec, P0.astype(dtype), [g.astype(dtype) for g in GRADS])
    want = optax_lion(P0, GRADS, *native, dtype)
    for (p, m), p_ours, m_ours in zip(want, ps, ms, strict=True):
        np.testing.assert_array_equal(p_ours, p)
        np.testing.assert_array_equal(m_ours, m)


def test_keras_betas_go_through_float32():
    """With float64 parameters, Keras's 1 - beta_2 is 1 - float32(0.99) = 1 - 0.9900000095367432
    = 0.0099999904632568359375, not 0.01: the first step's momentum shows it."""
    _, ms = run(uniopt.Lion(lr=0.01, convention="keras"), np.zeros(1), [np.ones(1)])
    assert ms[0][0] == 0.0099999904632568359375
    _, ms = run(uniopt.Lion(lr=0.01), np.zeros(1), [np.ones(1)])
    assert ms[0][0] == 1.0 - 0.99


# -- the paper's algorithm box -------------------------------------------------------------------


def paper_lion(p, grads, lr, b1, b2, wd, maximize=False, decay_times_lr=True):
    """Algorithm 2 of the paper, float64: c = b1*m + (1-b1)*g; theta = theta - lr*(sign(c) +
    wd*theta); m = b2*m + (1-b2)*g. ``decay_times_lr=False`` is a wrong variant (decay not
    scaled by the learning rate) the tolerance must reject."""
    p, m = p.astype(np.float64), np.zeros_like(p, dtype=np.float64)
    out = []
    for g in grads:
        g = -g if maximize else g
        c = b1 * m + (1 - b1) * g
        p = p - lr * (np.sign(c) + wd * p) if decay_times_lr else p - lr * np.sign(c) - wd * p
        m = b2 * m + (1 - b2) * g
        out.append((p, m))
    return out


PAPER_CASES = {
    "defaults": ({}, (1e-4, 0.9, 0.99, 0.0)),
    "decay": ({"lr": 0.01, "weight_decay": 0.5}, (0.01, 0.9, 0.99, 0.5)),
    "betas": ({"lr": 0.003, "betas": (0.95, 0.98), "weight_decay": 0.1}, (0.003, 0.95, 0.98, 0.1)),
    "sign_sgd": ({"lr": 0.01, "betas": (0.0, 0.99)}, (0.01, 0.0, 0.99, 0.0)),
    "maximize": ({"lr": 0.01, "maximize": True, "weight_decay": 0.2}, (0.01, 0.9, 0.99, 0.2)),
}


def _stream(steps=200, shape=(7, 5)):
    rng = np.random.default_rng(20230213)
    grads = [rng.standard_normal(shape) for _ in range(steps)]
    grads[min(5, steps - 1)][0, :] = 0.0  # zeros with a nonzero momentum
    return rng.standard_normal(shape), grads


@pytest.mark.parametrize("case", PAPER_CASES)
def test_uniopt_matches_paper_algorithm_2(case):
    """Both sides round the same momentum ops identically, so the signs agree and the parameters
    differ only by the roundings of the decay: at most ~2 ulp a step, added over 200 steps, far
    inside 1e-12 of the largest magnitude the parameter has had."""
    kwargs, (lr, b1, b2, wd) = PAPER_CASES[case]
    p0, grads = _stream()
    ps, ms = run(uniopt.Lion(**kwargs), p0, grads)
    want = paper_lion(p0, grads, lr, b1, b2, wd, maximize=kwargs.get("maximize", False))
    envelope = np.zeros_like(p0)
    for (p, m), p_ours, m_ours in zip(want, ps, ms, strict=True):
        envelope = np.maximum(envelope, np.abs(p))
        assert np.all(np.abs(p_ours - p) <= 1e-12 * envelope)
        np.testing.assert_array_equal(m_ours, m)


def test_paper_tolerance_rejects_decay_not_scaled_by_lr():
    p0, grads = _stream(steps=20)
    ps, _ = run(uniopt.Lion(lr=0.01, weight_decay=0.5), p0, grads)
    wrong = paper_lion(p0, grads, 0.01, 0.9, 0.99, 0.5, decay_times_lr=False)
    assert np.max(np.abs(ps[-1] - wrong[-1][0])) > 1e-12 * np.max(np.abs(wrong[-1][0]))


# -- hyperparameters, conventions, validation ---------------------------------------------------------


def test_defaults_per_convention():
    assert uniopt.Lion().hyperparameters == {
        "lr": 1e-4,
        "betas": (0.9, 0.99),
        "weight_decay": 0.0,
        "maximize": False,
        "convention": "uniopt",
    }
    keras = uniopt.Lion(convention="keras")
    assert keras.lr == float(np.float32(1e-3)) and keras.weight_decay == 0.0
    optax = uniopt.Lion(convention="optax")
    assert optax.lr == 1e-4 and optax.weight_decay == 1e-3 and optax.betas == (0.9, 0.99)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"betas": (1.5, 0.99)}, r"Lion: betas\[0\]=1\.5 is out of range; expected 0 <= betas\[0\] <= 1"),
        ({"betas": (0.9, 1.01)}, r"Lion: betas\[1\]=1\.01 is out of range; expected 0 <= betas\[1\] <= 1"),
        ({"betas": (-0.1, 0.99)}, r"Lion: betas\[0\]=-0\.1 is out of range"),
        ({"betas": (0.9,)}, r"Lion: betas=\(0\.9,\) is not a pair; expected \(beta1, beta2\)"),
        ({"betas": (0.9, "0.99")}, r"Lion: betas\[1\]='0\.99' is not a real number"),
        ({"weight_decay": -1e-3}, r"Lion: weight_decay=-0\.001 is out of range; expected 0 <= weight_decay"),
        ({"weight_decay": float("inf")}, r"Lion: weight_decay=inf is not finite"),
        ({"lr": -1.0}, r"Lion: lr=-1\.0 is out of range; expected 0 <= lr"),
        ({"maximize": "no"}, r"Lion: maximize='no' is not a bool"),
        (
            {"betas": (0.0, 0.99), "convention": "keras"},
            r"Lion: betas\[0\]=0\.0 is out of range with convention='keras'; expected 0 < betas\[0\] <= 1",
        ),
        ({"convention": "torch"}, r"Lion: convention='torch' is not available \(torch\.optim has no Lion"),
        ({"convention": "paper"}, r"Lion: convention='paper' is not available; expected one of 'uniopt'"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        uniopt.Lion(**kwargs)


def test_betas_edges_are_accepted():
    assert uniopt.Lion(betas=(0.0, 1.0)).betas == (0.0, 1.0)
    assert uniopt.Lion(betas=[1, 0], convention="keras").betas == (1.0, 0.0)


def test_scalars_do_not_depend_on_the_step_and_are_affine_in_lr():
    spec = uniopt.Lion(lr=0.01, weight_decay=0.3)
    assert spec.step_scalars(1) == spec.step_scalars(10**6)
    at0, at1, at = (spec.step_scalars(1, lr) for lr in (0.0, 1.0, 0.25))
    for a, b, c in zip(at0, at1, at, strict=True):
        assert c == pytest.approx(a + 0.25 * (b - a), abs=1e-15)


def test_complex_parameters_are_refused():
    spec = uniopt.Lion(lr=0.01)
    p = [np.ones(3, np.complex128)]
    with pytest.raises(ValueError, match="Lion: complex parameters are not supported"):
        spec.update([np.ones(3, np.complex128)], spec.init(p), p)


# -- state and namespaces ----------------------------------------------------------------------------


def _np(array) -> np.ndarray:
    """``to_numpy``, also for the NumPy scalars that NumPy's ops return for 0-d arrays."""
    return to_numpy(np.asarray(array) if isinstance(array, np.generic) else array)


@pytest.mark.parametrize("namespace", NAMESPACES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_shape_dtype_and_namespaces(namespace, dtype):
    rng = np.random.default_rng(3)
    shapes = [(), (4,), (2, 3), (0, 5)]
    p_np = [np.asarray(rng.standard_normal(s), dtype=dtype) for s in shapes]
    g_np = [np.asarray(rng.standard_normal(s), dtype=dtype) for s in shapes]
    spec = uniopt.Lion(lr=0.01, weight_decay=0.1)
    params = [to_namespace(namespace, p) for p in p_np]
    state = spec.init(params)
    assert state.step == 0 and all(set(s) == {"exp_avg"} for s in state.slots)
    for s, p in zip(state.slots, p_np, strict=True):
        m = _np(s["exp_avg"])
        assert m.shape == p.shape and m.dtype == dtype and not m.any()
    new, state = spec.update([to_namespace(namespace, g) for g in g_np], state, params)
    assert state.step == 1
    want, want_state = spec.update(g_np, spec.init(p_np), p_np)
    for ours, theirs, s, ts in zip(new, want, state.slots, want_state.slots, strict=True):
        assert _np(ours).dtype == dtype and _np(ours).shape == theirs.shape
        np.testing.assert_array_equal(_np(ours), theirs)
        np.testing.assert_array_equal(_np(s["exp_avg"]), ts["exp_avg"])


def test_every_element_moves_by_exactly_lr_without_decay():
    p0, grads = _stream(steps=3)
    p0 = np.round(p0 * 1024) / 1024  # on a grid where p +- lr is exact
    lr = 2.0**-7
    ps, _ = run(uniopt.Lion(lr=lr), p0, grads)
    steps = np.abs(np.diff(np.stack([p0, *ps]), axis=0))
    assert set(np.unique(steps)) <= {0.0, lr}
