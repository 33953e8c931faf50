"""``convention=``: each framework's formulas and defaults, chosen by name, checked before use."""

from __future__ import annotations

import math

import numpy as np
import pytest

import uniopt
from uniopt.registry import TABLE

# Defaults from each framework's documentation (torch.optim, keras.optimizers, optax, the authors'
# radam.py); uniopt's own are PyTorch's except where its docs say otherwise.
DOCUMENTED_DEFAULTS = [
    (uniopt.RMSprop, "torch", {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8}),
    (uniopt.RMSprop, "keras", {"lr": 1e-3, "alpha": 0.9, "eps": 1e-7}),
    (uniopt.RMSprop, "optax", {"alpha": 0.9, "eps": 1e-8}),
    (uniopt.Adam, "torch", {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}),
    (uniopt.Adam, "keras", {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-7, "weight_decay": 0.0}),
    (uniopt.Adam, "optax", {"betas": (0.9, 0.999), "eps": 1e-8}),
    (uniopt.AdamW, "torch", {"eps": 1e-8, "weight_decay": 1e-2}),
    (uniopt.AdamW, "keras", {"eps": 1e-7, "weight_decay": 0.004}),
    (uniopt.AdamW, "optax", {"eps": 1e-8, "weight_decay": 1e-4}),
    (uniopt.RAdam, "torch", {"lr": 1e-3, "eps": 1e-8, "degenerated_to_sgd": True}),
    (uniopt.RAdam, "optax", {"eps": 1e-8, "degenerated_to_sgd": True}),
    (uniopt.RAdam, "official", {"lr": 1e-3, "eps": 1e-8, "weight_decay": 0.0, "degenerated_to_sgd": False}),
    (uniopt.SGD, "torch", {"lr": 1e-3, "momentum": 0.0, "dampening": 0.0}),
    (uniopt.SGD, "keras", {"lr": 1e-2, "momentum": 0.0, "nesterov": False}),
    (uniopt.SGD, "optax", {"momentum": 0.0, "nesterov": False}),
    (uniopt.Adagrad, "torch", {"lr": 1e-2, "eps": 1e-10, "initial_accumulator_value": 0.0}),
    (uniopt.Adagrad, "keras", {"lr": 1e-3, "eps": 1e-7, "initial_accumulator_value": 0.1}),
    (uniopt.Adagrad, "optax", {"eps": 1e-7, "initial_accumulator_value": 0.1}),
]


def test_every_optimizer_takes_a_convention_and_defaults_to_uniopt():
    for info in TABLE:
        assert info.spec().convention == "uniopt"
        assert "uniopt" in info.spec.conventions
        for framework in ("torch", "keras", "optax"):  # offered, or refused with the reason
            offered = framework in info.spec.conventions
            assert offered != bool(info.spec.unavailable_conventions.get(framework)), (info.name, framework)


@pytest.mark.parametrize(("spec", "convention", "defaults"), DOCUMENTED_DEFAULTS)
def test_a_convention_brings_its_framework_defaults(spec, convention, defaults):
    made = spec(convention=convention)
    assert made.convention == convention
    for name, value in defaults.items():
        if convention == "keras" and name in ("lr", "momentum", "initial_accumulator_value", "weight_decay"):
            value = float(np.float32(value))  # Keras keeps or casts these through float32
        assert getattr(made, name) == value, name


def test_explicit_arguments_win_over_the_convention_defaults():
    made = uniopt.RMSprop(convention="keras", lr=0.5, eps=1e-3)
    assert (made.lr, made.alpha, made.eps) == (0.5, 0.9, 1e-3)


@pytest.mark.parametrize(
    ("spec", "kwargs", "match"),
    [
        (
            uniopt.RAdam,
            {"convention": "keras"},
            r"RAdam: convention='keras' is not available \(Keras 3 has no RAdam",
        ),
        (
            uniopt.Adam,
            {"convention": "official"},
            r"Adam: convention='official' is not available; expected one of",
        ),
        (uniopt.SGD, {"convention": "pytorch"}, r"expected one of 'uniopt', 'torch'"),
        (uniopt.Adam, {"convention": "optax", "weight_decay": 0.1}, r"optax\.adam has no weight decay"),
        (uniopt.RMSprop, {"convention": "optax", "weight_decay": 0.1}, r"optax\.rmsprop has no weight decay"),
        (uniopt.SGD, {"convention": "optax", "weight_decay": 0.1}, r"optax\.sgd has no weight decay"),
        (
            uniopt.SGD,
            {"convention": "keras", "momentum": 0.9, "dampening": 0.1},
            r"SGD: dampening=0\.1 with convention='keras': keras\.optimizers\.SGD has no dampening",
        ),
        (uniopt.Adagrad, {"convention": "keras", "lr_decay": 0.01}, r"lr_decay=0\.01 .* no lr decay"),
        (uniopt.Adagrad, {"convention": "optax", "weight_decay": 0.1}, r"optax\.adagrad has no weight decay"),
        (
            uniopt.RAdam,
            {"convention": "torch", "degenerated_to_sgd": False},
            r"degenerated_to_sgd=False has no",
        ),
        (uniopt.RAdam, {"convention": "official", "decoupled_weight_decay": True}, r"decoupled_weight_decay"),
        (uniopt.Adam, {"convention": None}, r"Adam: convention=None is not available"),
    ],
)
def test_a_convention_a_framework_lacks_is_refused_by_name(spec, kwargs, match):
    with pytest.raises(ValueError, match=match):
        spec(**kwargs)


def test_keras_rounds_the_learning_rate_through_its_float32_variable():
    # Keras keeps learning_rate in a float32 variable, so a float64 model steps with float32(lr)
    p, g = [np.array([1.0])], [np.array([0.5])]
    keras_like = uniopt.RMSprop(lr=0.1, convention="keras")
    assert keras_like.lr == float(np.float32(0.1))
    new, _ = keras_like.update(g, keras_like.init(p), p)
    step = 1.0 - new[0][0]
    lr32 = float(np.float32(0.1))
    assert lr32 != 0.1
    expected = 0.5 * lr32 / np.sqrt(0.25 * (1 - 0.9) + 1e-7)
    np.testing.assert_allclose(step, expected, rtol=1e-13)
    assert abs(step - 0.5 * 0.1 / np.sqrt(0.25 * (1 - 0.9) + 1e-7)) > 1e-10 * step  # not the float64 lr


def test_radam_conventions_differ_only_where_their_frameworks_do():
    """From step 6 (the first rectified one for beta2=0.999) the eps placement separates torch and
    the official code (eps on sqrt(v)) from uniopt and optax (eps on sqrt(v_hat))."""
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(8) * 1e-3]
    grads = [[rng.standard_normal(8) * 1e-6] for _ in range(8)]
    runs = {}
    for convention in ("uniopt", "torch", "optax", "official"):
        # the official default skips steps 1 to 5; take the momentum step there, as the others do
        sgd = {"degenerated_to_sgd": True} if convention == "official" else {}
        spec = uniopt.RAdam(lr=0.01, eps=1e-6, convention=convention, **sgd)
        p, state, history = params, spec.init(params), []
        for g in grads:
            p, state = spec.update(g, state, p)
            history.append(p[0])
        runs[convention] = history
    for t in range(5):  # unrectified: the same momentum step everywhere
        assert len({runs[c][t].tobytes() for c in runs}) <= 2  # op order may differ by rounding
        np.testing.assert_allclose(runs["torch"][t], runs["uniopt"][t], rtol=1e-12)
    assert np.max(np.abs(runs["torch"][7] - runs["uniopt"][7])) > 1e-6 * np.max(np.abs(runs["uniopt"][7]))
    np.testing.assert_allclose(runs["optax"][7], runs["uniopt"][7], rtol=1e-12)
    np.testing.assert_allclose(runs["official"][7], runs["torch"][7], rtol=1e-12)


def _authors_radam(p, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, degenerated_to_sgd=False):
    """``RAdam.step`` of LiyuanLucasLiu/RAdam ``radam/radam.py`` at commit d9fd30a (2021-07-31),
    transcribed for one float64 scalar parameter; its defaults are the keyword defaults here."""
    beta1, beta2 = betas
    exp_avg = exp_avg_sq = 0.0
    history = []
    for step, grad in enumerate(grads, start=1):
        exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * grad * grad
        exp_avg = exp_avg * beta1 + (1 - beta1) * grad
        beta2_t = beta2**step
        n_sma_max = 2 / (1 - beta2) - 1
        n_sma = n_sma_max - 2 * step * beta2_t / (1 - beta2_t)
        if n_sma >= 5:
            rect = (1 - beta2_t) * (n_sma - 4) / (n_sma_max - 4) * (n_sma - 2) / n_sma
            step_size = math.sqrt(rect * n_sma_max / (n_sma_max - 2)) / (1 - beta1**step)
        elif degenerated_to_sgd:
            step_size = 1.0 / (1 - beta1**step)
        else:
            step_size = -1
        if n_sma >= 5:
            if weight_decay != 0:
                p = p + (-weight_decay * lr) * p
            p = p + (-step_size * lr) * exp_avg / (math.sqrt(exp_avg_sq) + eps)
        elif step_size > 0:
            if weight_decay != 0:
                p = p + (-weight_decay * lr) * p
            p = p + (-step_size * lr) * exp_avg
        history.append((p, exp_avg, exp_avg_sq))
    return history


def test_official_radam_defaults_to_skipping_unrectified_steps():
    """The authors' radam/radam.py defaults to degenerated_to_sgd=False (commit d9fd30a): with
    beta2=0.999 steps 1 to 5 leave the parameter as it is while the moments advance, and step 6 is
    the first rectified step. Under a constant gradient g, m_t = g(1-beta1^t), v_t = g^2(1-beta2^t),
    so step 6 moves the parameter by lr * r_6 * g sqrt(1-beta2^6) / (|g| sqrt(1-beta2^6) + eps)."""
    spec = uniopt.RAdam(lr=0.05, convention="official")
    assert spec.degenerated_to_sgd is False
    g, p0, lr, b2 = 0.5, 1.0, 0.05, 0.999
    params = [np.array([p0])]
    state = spec.init(params)
    expected = _authors_radam(p0, [g] * 8, lr)
    for t in range(1, 9):
        params, state = spec.update([np.array([g])], state, params)
        m, v = state.slots[0]["exp_avg"][0], state.slots[0]["exp_avg_sq"][0]
        np.testing.assert_allclose(m, g * (1 - 0.9**t), rtol=1e-14)
        np.testing.assert_allclose(v, g * g * (1 - b2**t), rtol=1e-13)
        if t <= 5:
            assert params[0][0] == p0  # skipped, bit for bit
            assert expected[t - 1][0] == p0
        np.testing.assert_allclose(params[0][0], expected[t - 1][0], rtol=1e-14)
    rho_inf = 2 / (1 - b2) - 1
    rho_6 = rho_inf - 2 * 6 * b2**6 / (1 - b2**6)
    r_6 = math.sqrt((rho_6 - 4) * (rho_6 - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_6))
    sqrt_bc2 = math.sqrt(1 - b2**6)
    p6 = p0 - lr * r_6 * g * sqrt_bc2 / (g * sqrt_bc2 + 1e-8)
    np.testing.assert_allclose(expected[5][0], p6, rtol=1e-14)  # the transcription, by closed form
    one = uniopt.RAdam(lr=lr, convention="official")
    p, s = [np.array([p0])], one.init([np.array([p0])])
    for _ in range(6):
        p, s = one.update([np.array([g])], s, p)
    np.testing.assert_allclose(p[0][0], p6, rtol=1e-14)
    # degenerated_to_sgd=True instead takes the momentum step p - lr * g from step 1
    sgd = uniopt.RAdam(lr=lr, convention="official", degenerated_to_sgd=True)
    p, _ = sgd.update([np.array([g])], sgd.init([np.array([p0])]), [np.array([p0])])
    np.testing.assert_allclose(p[0][0], p0 - lr * g, rtol=1e-15)
