"""The first steps of every optimizer case in the registry, worked out by hand.

Each expectation below is computed inside the test from the update formula in plain Python float64
scalars (``math`` only), one parameter element at a time, in the textbook form of the formula (for
example ``lr * m_hat / (sqrt(v_hat) + eps)``), never through uniopt's host scalars or op sequence.
uniopt's float64 NumPy result (the parameters and every state slot) must agree to ``rtol=1e-12``:
a few float64 roundings per step differ in order, which costs ~1e-15 relative, and the fixture
below has no catastrophic cancellation, so 1e-12 has ample room while any change of formula moves
values by many orders of magnitude more.

The defaults are written out here (the PyTorch defaults each module docstring documents), so the
library's own defaults are checked rather than trusted.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from cases import CASES as TABLE_CASES
from cases import COMBOS

import uniopt
from uniopt.registry import TABLE

OWN_FILE = {"Muon": ("test_muon.py", "test_matrix_steps_by_hand")}
"""Optimizers checked in their own file (file, test): Muon's uniopt and torch conventions take 2-D
parameters only, which the 1-D fixtures here are not."""
CASES = [c for c in TABLE_CASES if c.values[0].name not in OWN_FILE]

RTOL = 1e-12
ATOL = 1e-300  # effectively zero: a value expected to be exactly 0 must come out 0

P0 = (1.0, -2.0, 0.5)
# One gradient triple per step, with a negative and a zero in each. Element 0 drops from 0.5 to
# 0.01 and element 1 from -2.0 to 0.0, so AMSGrad's running maximum is what feeds the step 2 and 3
# denominators for them (v_t < v_{t-1} there), and a zero gradient meets a zero and a non-zero state.
GRADS = (
    (0.5, -1.5, 0.0),
    (0.01, -2.0, 0.3),
    (-0.4, 0.0, 0.25),
)

DEFAULTS: dict[str, dict[str, object]] = {
    "SGD": {
        "lr": 1e-3,
        "momentum": 0.0,
        "dampening": 0.0,
        "nesterov": False,
        "weight_decay": 0.0,
        "maximize": False,
        "convention": "uniopt",
    },
    "Adagrad": {
        "lr": 1e-2,
        "lr_decay": 0.0,
        "eps": 1e-10,
        "initial_accumulator_value": 0.0,
        "weight_decay": 0.0,
        "maximize": False,
        "convention": "uniopt",
    },
    "RMSprop": {
        "lr": 1e-2,
        "alpha": 0.99,
        "eps": 1e-8,
        "weight_decay": 0.0,
        "momentum": 0.0,
        "centered": False,
        "maximize": False,
        "convention": "uniopt",
    },
    "Adam": {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
        "amsgrad": False,
        "maximize": False,
        "convention": "uniopt",
    },
    "AdamW": {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 1e-2,
        "amsgrad": False,
        "maximize": False,
        "convention": "uniopt",
    },
    "RAdam": {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
        "decoupled_weight_decay": False,
        "degenerated_to_sgd": True,
        "maximize": False,
        "convention": "uniopt",
    },
    "Adamax": {
        "lr": 2e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
        "maximize": False,
        "convention": "uniopt",
    },
    "Adadelta": {
        "lr": 1.0,
        "rho": 0.9,
        "eps": 1e-6,
        "weight_decay": 0.0,
        "maximize": False,
        "convention": "uniopt",
    },
    "Lion": {
        "lr": 1e-4,
        "betas": (0.9, 0.99),
        "weight_decay": 0.0,
        "maximize": False,
        "convention": "uniopt",
    },
    "Lamb": {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-6,
        "weight_decay": 0.0,
        "maximize": False,
        "convention": "uniopt",
    },
    "NAdam": {
        "lr": 2e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
        "momentum_decay": 4e-3,
        "decoupled_weight_decay": False,
        "maximize": False,
        "convention": "uniopt",
    },
    # torch.optim.Adafactor(lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0);
    # optax.adafactor's own arguments at their neutral values (refused otherwise outside optax)
    "Adafactor": {
        "lr": 1e-2,
        "beta2_decay": -0.8,
        "eps": (None, 1e-3),
        "d": 1.0,
        "weight_decay": 0.0,
        "maximize": False,
        "momentum": 0.0,
        "decay_offset": 0,
        "min_dim_size_to_factor": None,
        "factored": True,
        "multiply_by_parameter_scale": True,
        "convention": "uniopt",
    },
    "ScheduleFreeAdamW": {
        "lr": 0.0025,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
        "warmup_steps": 0,
        "r": 0.0,
        "weight_lr_power": 2.0,
        "convention": "uniopt",
    },
}


# Each framework's own defaults (from its documentation) where they differ from uniopt's, for the
# cases that name a convention.
CONVENTION_DEFAULTS: dict[str, dict[str, dict[str, object]]] = {
    "SGD": {"keras": {"lr": 1e-2}},
    "Adagrad": {
        "keras": {"lr": 1e-3, "eps": 1e-7, "initial_accumulator_value": 0.1},
        "optax": {"eps": 1e-7, "initial_accumulator_value": 0.1},
    },
    "RMSprop": {"keras": {"lr": 1e-3, "alpha": 0.9, "eps": 1e-7}, "optax": {"alpha": 0.9}},
    "Adam": {"keras": {"eps": 1e-7}},
    "AdamW": {"keras": {"eps": 1e-7, "weight_decay": 0.004}, "optax": {"weight_decay": 1e-4}},
    # LiyuanLucasLiu/RAdam radam/radam.py at HEAD (d9fd30a): RAdam(..., degenerated_to_sgd=False)
    "RAdam": {"official": {"degenerated_to_sgd": False}},
    # keras.optimizers.Adamax(learning_rate=0.001, epsilon=1e-7)
    "Adamax": {"keras": {"lr": 1e-3, "eps": 1e-7}},
    "Adadelta": {"keras": {"lr": 1e-3, "rho": 0.95, "eps": 1e-7}},
    # keras.optimizers.Lion(learning_rate=0.001); optax.lion(weight_decay=1e-3)
    "Lion": {"keras": {"lr": 1e-3}, "optax": {"weight_decay": 1e-3}},
    # keras.optimizers.Lamb(epsilon=1e-7); optax.lamb(eps=1e-6) as uniopt's
    "Lamb": {"keras": {"eps": 1e-7}},
    # keras.optimizers.Adafactor(learning_rate=0.001, epsilon_1=1e-30, epsilon_2=1e-3);
    # optax.adafactor(learning_rate=None (no scaling), eps=1e-30, min_dim_size_to_factor=128)
    "Adafactor": {
        "keras": {"lr": 1e-3, "eps": (1e-30, 1e-3)},
        "optax": {"lr": 1.0, "eps": (1e-30, 1e-3), "min_dim_size_to_factor": 128},
    },
    # keras.optimizers.Nadam(learning_rate=0.001, epsilon=1e-7): u_t = b1 (1 - 0.5 * 0.96^t), decay
    # decoupled (Keras's base); optax.nadam: no schedule, mu_t = b1 (momentum_decay = inf)
    "NAdam": {
        "keras": {"lr": 1e-3, "eps": 1e-7, "momentum_decay": 1.0, "decoupled_weight_decay": True},
        "optax": {"momentum_decay": math.inf},
    },
    # keras.optimizers.ScheduleFreeAdamW averages uniformly (c = 1/t)
    "ScheduleFreeAdamW": {"keras": {"weight_lr_power": 0.0}},
}


# -- the formulas, one scalar element at a time ------------------------------------------------
# Each ``*_init(h)`` gives the slots before step 1; each ``*_step(h, s, p, g, t, lr)`` takes the
# previous slots ``s``, parameter ``p``, raw gradient ``g``, 1-based step ``t`` and learning rate,
# and returns the new ``(p, slots)``.


def sgd_init(h):
    return {"momentum_buffer": 0.0} if h["momentum"] != 0 else {}


def sgd_step(h, s, p, g, t, lr):
    if h["maximize"]:
        g = -g
    mu = h["momentum"]
    if h["convention"] == "keras":  # keras.optimizers.SGD's documented velocity form
        p = p - lr * h["weight_decay"] * p  # Keras's weight decay: decoupled, before the update
        if mu == 0:
            return p - lr * g, {}
        velocity = mu * s["momentum_buffer"] - lr * g
        if h["nesterov"]:
            return p + mu * velocity - lr * g, {"momentum_buffer": velocity}
        return p + velocity, {"momentum_buffer": velocity}
    g = g + h["weight_decay"] * p
    if mu == 0:
        return p - lr * g, {}
    # the first step seeds the buffer with the undampened gradient
    b = g if t == 1 else mu * s["momentum_buffer"] + (1.0 - h["dampening"]) * g
    d = g + mu * b if h["nesterov"] else b
    return p - lr * d, {"momentum_buffer": b}


def adagrad_init(h):
    return {"sum": float(h["initial_accumulator_value"])}


def adagrad_step(h, s, p, g, t, lr):
    if h["maximize"]:
        g = -g
    if h["convention"] in ("keras", "optax"):  # eps inside the root; no lr decay
        p = p - lr * h["weight_decay"] * p  # Keras's decoupled decay (optax has none: 0)
        total = s["sum"] + g * g
        if h["convention"] == "optax" and total <= 0:  # optax: where(s > 0, rsqrt(s + eps), 0) * g
            return p, {"sum": total}
        return p - lr * g / math.sqrt(total + h["eps"]), {"sum": total}
    g = g + h["weight_decay"] * p
    decayed_lr = lr / (1.0 + (t - 1) * h["lr_decay"])
    total = s["sum"] + g * g
    return p - decayed_lr * g / (math.sqrt(total) + h["eps"]), {"sum": total}


def rmsprop_init(h):
    s = {"square_avg": 0.0}
    if h["centered"]:
        s["grad_avg"] = 0.0
    if h["momentum"] != 0:
        s["momentum_buffer"] = 0.0
    return s


def _sqrt(x):
    return math.sqrt(x) if x >= 0 else math.nan


def rmsprop_step(h, s, p, g, t, lr):
    convention = h["convention"]
    if h["maximize"]:
        g = -g
    if convention == "keras":  # Keras's weight decay: decoupled, before the update
        p = p - p * h["weight_decay"] * lr
    else:
        g = g + h["weight_decay"] * p
    a = h["alpha"]
    new = {"square_avg": a * s["square_avg"] + (1.0 - a) * g * g}
    if h["centered"]:
        new["grad_avg"] = a * s["grad_avg"] + (1.0 - a) * g
        variance = new["square_avg"] - new["grad_avg"] ** 2
        if convention == "uniopt":
            variance = max(variance, 0.0)
    else:
        variance = new["square_avg"]
    if convention == "keras":  # eps inside the root, lr inside the momentum buffer
        direction = lr * g / _sqrt(variance + h["eps"])
    elif convention == "optax":  # eps inside the root; -lr applied before the momentum trace
        direction = -lr * g / _sqrt(variance + h["eps"])
    else:
        direction = g / (_sqrt(variance) + h["eps"])
    if h["momentum"] != 0:
        new["momentum_buffer"] = h["momentum"] * s["momentum_buffer"] + direction
        direction = new["momentum_buffer"]
    if convention == "optax":
        return p + direction, new
    return (p - direction if convention == "keras" else p - lr * direction), new


def adam_init(h):
    s = {"exp_avg": 0.0, "exp_avg_sq": 0.0}
    if h["amsgrad"]:
        s["max_exp_avg_sq"] = 0.0
    return s


def _adam_like_step(h, s, p, g, t, lr, *, decoupled):
    b1, b2 = h["betas"]
    wd = h["weight_decay"]
    convention = h["convention"]
    if h["maximize"]:
        g = -g
    p_old = p
    if convention == "keras":  # Keras's weight decay is always decoupled
        p = p - p * wd * lr
    elif convention == "optax":
        pass  # optax.adamw adds wd * p to the update below; optax.adam has none
    elif decoupled:
        p = p - lr * wd * p
    else:
        g = g + wd * p
    m = b1 * s["exp_avg"] + (1.0 - b1) * g
    v = b2 * s["exp_avg_sq"] + (1.0 - b2) * g * g
    new = {"exp_avg": m, "exp_avg_sq": v}
    m_hat = m / (1.0 - b1**t)
    if convention == "optax":  # AMSGrad on the bias-corrected v
        v_hat = v / (1.0 - b2**t)
        if h["amsgrad"]:
            v_hat = new["max_exp_avg_sq"] = max(s["max_exp_avg_sq"], v_hat)
        update = m_hat / (math.sqrt(v_hat) + h["eps"]) + (wd * p_old if decoupled else 0.0)
        return p - lr * update, new
    if h["amsgrad"]:
        v = new["max_exp_avg_sq"] = max(s["max_exp_avg_sq"], v)
    if convention == "keras":  # "epsilon hat": eps added to sqrt(v), not sqrt(v_hat)
        # keras/src/optimizers/adam.py: ops.power(ops.cast(beta, dtype), t), and ops.cast takes a
        # Python float through float32 (these formulas run in float64)
        b1_32, b2_32 = float(np.float32(b1)), float(np.float32(b2))
        alpha = lr * math.sqrt(1.0 - b2_32**t) / (1.0 - b1_32**t)
        return p - alpha * m / (math.sqrt(v) + h["eps"]), new
    v_hat = v / (1.0 - b2**t)
    return p - lr * m_hat / (math.sqrt(v_hat) + h["eps"]), new


def adam_step(h, s, p, g, t, lr):
    return _adam_like_step(h, s, p, g, t, lr, decoupled=False)


def adamw_step(h, s, p, g, t, lr):
    return _adam_like_step(h, s, p, g, t, lr, decoupled=True)


def radam_rho(beta2, t):
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    return rho_inf, rho_inf - 2.0 * t * beta2**t / (1.0 - beta2**t)


def radam_init(h):
    return {"exp_avg": 0.0, "exp_avg_sq": 0.0}


def radam_step(h, s, p, g, t, lr):
    convention = h["convention"]
    if convention != "uniopt":
        return _radam_convention_step(h, s, p, g, t, lr)
    b1, b2 = h["betas"]
    wd = h["weight_decay"]
    decoupled = h["decoupled_weight_decay"]
    if h["maximize"]:
        g = -g
    if not decoupled:
        g = g + wd * p
    m = b1 * s["exp_avg"] + (1.0 - b1) * g
    v = b2 * s["exp_avg_sq"] + (1.0 - b2) * g * g
    new = {"exp_avg": m, "exp_avg_sq": v}
    m_hat = m / (1.0 - b1**t)
    rho_inf, rho_t = radam_rho(b2, t)
    if rho_t > 5.0:
        r = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        v_hat = v / (1.0 - b2**t)
        update = lr * r * m_hat / (math.sqrt(v_hat) + h["eps"])
    elif h["degenerated_to_sgd"]:
        update = lr * m_hat
    else:
        return p, new  # skipped: not even the decoupled decay
    if decoupled:
        p = p - lr * wd * p
    return p - update, new


def _radam_convention_step(h, s, p, g, t, lr):
    """torch.optim.RAdam, optax.radam and the authors' radam.py, from their documented math."""
    b1, b2 = h["betas"]
    wd, convention = h["weight_decay"], h["convention"]
    if h["maximize"]:
        g = -g
    if convention == "torch" and not h["decoupled_weight_decay"]:
        g = g + wd * p
    m = b1 * s["exp_avg"] + (1.0 - b1) * g
    v = b2 * s["exp_avg_sq"] + (1.0 - b2) * g * g
    new = {"exp_avg": m, "exp_avg_sq": v}
    bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
    rho_inf, rho_t = radam_rho(b2, t)
    rectified = rho_t > 5.0 if convention == "torch" else rho_t >= 5.0
    r = (
        math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        if rectified
        else 0
    )
    if convention == "torch":  # decoupled decay on every step; eps added to sqrt(v)
        if h["decoupled_weight_decay"]:
            p = p * (1.0 - lr * wd)
        if rectified:
            return p - (m / bc1) * lr * r * math.sqrt(bc2) / (math.sqrt(v) + h["eps"]), new
        return p - (m / bc1) * lr, new
    if convention == "optax":  # eps added to sqrt(v_hat)
        if rectified:
            return p - lr * r * (m / bc1) / (math.sqrt(v / bc2) + h["eps"]), new
        return p - lr * (m / bc1), new
    # official: weight decay only on the steps that update; no update unless degenerated_to_sgd
    if rectified:
        p = p - wd * lr * p
        return p - lr * r * math.sqrt(bc2) / bc1 * m / (math.sqrt(v) + h["eps"]), new
    if h["degenerated_to_sgd"]:
        p = p - wd * lr * p
        return p - lr / bc1 * m, new
    return p, new


def adamax_init(h):
    return {"exp_avg": 0.0, "exp_inf": 0.0}


def adamax_step(h, s, p, g, t, lr):
    """Kingma and Ba 2015, Algorithm 2, with eps added to |g| inside the maximum (PyTorch, optax)
    or, for Keras, to u at the division; Keras's decay is decoupled and its bias correction
    1 - float32(beta_1)^t (ops.cast takes the Python float through float32)."""
    b1, b2 = h["betas"]
    wd, eps = h["weight_decay"], h["eps"]
    if h["maximize"]:
        g = -g
    if h["convention"] == "keras":
        p = p - p * wd * lr
        m = b1 * s["exp_avg"] + (1.0 - b1) * g
        u = max(b2 * s["exp_inf"], abs(g))
        bc1 = 1.0 - float(np.float32(b1)) ** t
        return p - lr / bc1 * m / (u + eps), {"exp_avg": m, "exp_inf": u}
    g = g + wd * p  # optax refuses weight_decay != 0
    m = b1 * s["exp_avg"] + (1.0 - b1) * g
    u = max(b2 * s["exp_inf"], abs(g) + eps)
    return p - lr / (1.0 - b1**t) * m / u, {"exp_avg": m, "exp_inf": u}


def adadelta_init(h):
    return {"square_avg": 0.0, "acc_delta": 0.0}


def adadelta_step(h, s, p, g, t, lr):
    """Zeiler 2012, Algorithm 1 with PyTorch's lr (every convention); Keras decays decoupled."""
    rho, eps, wd = h["rho"], h["eps"], h["weight_decay"]
    if h["maximize"]:
        g = -g
    if h["convention"] == "keras":
        p = p - lr * wd * p
    else:
        g = g + wd * p
    sq = rho * s["square_avg"] + (1.0 - rho) * g * g
    delta = math.sqrt(s["acc_delta"] + eps) / math.sqrt(sq + eps) * g
    acc = rho * s["acc_delta"] + (1.0 - rho) * delta * delta
    return p - lr * delta, {"square_avg": sq, "acc_delta": acc}


def lion_init(h):
    return {"exp_avg": 0.0}


def lion_step(h, s, p, g, t, lr):
    """Chen et al. 2023, Algorithm 2: theta -= lr * (sign(b1*m + (1-b1)*g) + wd*theta), then
    m = b2*m + (1-b2)*g; Keras takes its betas through float32 (ops.cast of a Python float)."""
    b1, b2 = h["betas"]
    if h["convention"] == "keras":
        b1, b2 = float(np.float32(b1)), float(np.float32(b2))
    if h["maximize"]:
        g = -g
    m = s["exp_avg"]
    c = b1 * m + (1.0 - b1) * g
    sign = float(c > 0) - float(c < 0)
    return p - lr * (sign + h["weight_decay"] * p), {"exp_avg": b2 * m + (1.0 - b2) * g}


def nadam_init(h):
    return {"exp_avg": 0.0, "exp_avg_sq": 0.0}


def _nadam_schedule(h):
    """``(mu(t), prod(t))``: Dozat's mu_t = b1 (1 - 0.5 * 0.96^(t * momentum_decay)) and the
    product of mu_1..mu_t as each framework keeps it: float64 (uniopt; optax's b1^t), a float32
    tensor multiplied by each float64 mu (torch.optim.NAdam's state mu_product), or Keras's
    variable _u_product (Python constants) read by u_t from float32-cast b1 and 0.96."""
    b1, psi, convention = h["betas"][0], h["momentum_decay"], h["convention"]
    if convention == "keras":
        b1_32, d32 = float(np.float32(b1)), float(np.float32(0.96))
        return (
            lambda t: b1_32 * (1 - 0.5 * d32**t),
            lambda t: math.prod(b1 * (1 - 0.5 * 0.96**i) for i in range(1, t + 1)),
        )

    def mu(t):
        return b1 * (1 - 0.5 * 0.96 ** (t * psi))

    if convention == "torch":

        def prod(t):
            value = np.float32(1.0)
            for i in range(1, t + 1):
                value = np.float32(value * np.float32(mu(i)))
            return float(value)

        return mu, prod
    return mu, lambda t: math.prod(mu(i) for i in range(1, t + 1))


def nadam_step(h, s, p, g, t, lr):
    """Dozat 2016, Algorithm 2 (without the extra b2 on n-hat, as every framework):
    m-bar = (1 - mu_t) g / (1 - prod_t) + mu_{t+1} m / (1 - prod_t mu_{t+1}),
    p -= lr m-bar / (sqrt(v / (1 - b2^t)) + eps); decay L2 or decoupled (optax adds wd*p to the
    update, the same real number); Keras's betas go through float32."""
    b1, b2 = h["betas"]
    if h["convention"] == "keras":  # update_step casts the betas to the variable dtype via float32
        b1, b2 = float(np.float32(b1)), float(np.float32(b2))
    wd, eps = h["weight_decay"], h["eps"]
    mu, prod = _nadam_schedule(h)
    if h["maximize"]:
        g = -g
    if wd and h["decoupled_weight_decay"]:
        p = p - lr * wd * p
    elif wd:
        g = g + wd * p
    m = b1 * s["exp_avg"] + (1 - b1) * g
    v = b2 * s["exp_avg_sq"] + (1 - b2) * g * g
    m_bar = (1 - mu(t)) * g / (1 - prod(t)) + mu(t + 1) * m / (1 - prod(t) * mu(t + 1))
    return p - lr * m_bar / (math.sqrt(v / (1 - b2**t)) + eps), {"exp_avg": m, "exp_avg_sq": v}


def lamb_init(h):
    return {"exp_avg": 0.0, "exp_avg_sq": 0.0}


def lamb_step(h, s, p, g, t, lr):
    """You et al. 2020, Algorithm 2, on the whole tensor (lists ``p``, ``g`` and slot lists):
    r = m-hat / (sqrt(v-hat) + eps), u = r + wd p, p -= lr (||p|| / ||u||) u, the ratio 1 where a
    norm is 0. Keras decays first, p -= lr wd p, outside the ratio, and takes its bias corrections
    from float32-cast betas (ops.cast of a Python float)."""
    b1, b2 = h["betas"]
    wd, eps, keras = h["weight_decay"], h["eps"], h["convention"] == "keras"
    c1, c2 = (float(np.float32(b1)), float(np.float32(b2))) if keras else (b1, b2)
    if h["maximize"]:
        g = [-x for x in g]
    if keras and wd:
        p = [x - lr * wd * x for x in p]
    m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(s["exp_avg"], g, strict=True)]
    v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(s["exp_avg_sq"], g, strict=True)]
    u = [(mi / (1 - c1**t)) / (math.sqrt(vi / (1 - c2**t)) + eps) for mi, vi in zip(m, v, strict=True)]
    if not keras:
        u = [ui + wd * x for ui, x in zip(u, p, strict=True)]
    p_norm, u_norm = math.sqrt(sum(x * x for x in p)), math.sqrt(sum(x * x for x in u))
    ratio = p_norm / u_norm if p_norm > 0 and u_norm > 0 else 1.0
    return [x - lr * ratio * ui for x, ui in zip(p, u, strict=True)], {"exp_avg": m, "exp_avg_sq": v}


def adafactor_init(h):
    """Per element: the second moment (0). The factored statistics are unused for a vector: the
    placeholders, 0-d zeros (optax: zeros of shape (1,), as optax.adafactor keeps them)."""
    convention = h["convention"]
    if convention == "keras":
        return {"r": np.zeros(()), "c": np.zeros(()), "v": 0.0}
    if convention == "optax":
        extra = {"momentum": 0.0} if h["momentum"] else {}
        return {"v_row": np.zeros((1,)), "v_col": np.zeros((1,)), "v": 0.0, **extra}
    return {"row_var": np.zeros(()), "col_var": np.zeros(()), "variance": 0.0}


def _rms(x):
    return math.sqrt(sum(e * e for e in x) / len(x))


def adafactor_step(h, s, p, g, t, lr):
    """Shazeer and Stern 2018, Algorithm 4 (a vector: V not factored) with update clipping, on the
    whole tensor (lists): beta2_t = 1 - t^c, rho_t = min(lr, 1/sqrt(t)),
    alpha = max(eps2, RMS(p)) rho_t, V = beta2_t V + (1 - beta2_t) g^2, U = g / sqrt(V),
    U /= max(1, RMS(U)/d), p -= alpha U. As each framework places eps1 and the decay:

    torch.optim.Adafactor (uniopt, torch): eps1 (None: the dtype's machine epsilon) bounds V,
    U = g / sqrt(max(V, eps1^2)); alpha from p before the decay p *= 1 - lr wd.
    keras.optimizers.Adafactor: p -= p wd lr first (Keras's base optimizer), then alpha from the
    decayed p; V from g^2 + eps1; epsilon_2 through a float32 tensor (ops.cast).
    optax.adafactor: beta2_t = 1 - float32(t - offset)^float32(c) in float32 (optax's
    _decay_rate_pow), V from g^2 + eps1, U = g V^-1/2, clipped (clipping_threshold = d, None: no
    clipping), times lr, times max(RMS(p), eps2) (multiply_by_parameter_scale), an EMA of
    momentum (m = (1 - mom) U + mom m, optax's float32 accumulator: mom m in float32, stored
    float32), + wd p, p -= U."""
    c, d, wd, convention = h["beta2_decay"], h["d"], h["weight_decay"], h["convention"]
    eps1, eps2 = h["eps"]
    if h["maximize"]:
        g = [-x for x in g]
    if convention == "optax":
        f32 = np.float32
        beta = float(f32(1) - f32(t - h["decay_offset"]) ** f32(c))
        v = [beta * vi + (1 - beta) * (gi * gi + eps1) for vi, gi in zip(s["v"], g, strict=True)]
        u = [gi / math.sqrt(vi) for gi, vi in zip(g, v, strict=True)]
        if d is not None:
            u = [ui / max(1.0, _rms(u) / d) for ui in u]
        u = [lr * ui for ui in u]
        if h["multiply_by_parameter_scale"]:
            u = [ui * max(_rms(p), eps2) for ui in u]
        out = {**s, "v": v}
        if h["momentum"]:
            mom = h["momentum"]
            u = [
                (1 - mom) * ui + float(f32(f32(mom) * f32(mi)))
                for ui, mi in zip(u, s["momentum"], strict=True)
            ]
            out["momentum"] = [float(f32(ui)) for ui in u]
        u = [ui + wd * x for ui, x in zip(u, p, strict=True)]
        return [x - ui for x, ui in zip(p, u, strict=True)], out
    w = t**c
    rho = min(lr, 1 / math.sqrt(t))
    if convention == "keras":
        if wd:
            p = [x - x * wd * lr for x in p]
        alpha = max(float(np.float32(eps2)), _rms(p)) * rho
        v = [(1 - w) * vi + w * (gi * gi + eps1) for vi, gi in zip(s["v"], g, strict=True)]
        u = [gi / math.sqrt(vi) for gi, vi in zip(g, v, strict=True)]
        out = {**s, "v": v}
    else:
        alpha = max(eps2, _rms(p)) * rho
        if wd:
            p = [x * (1 - lr * wd) for x in p]
        floor = (2.0**-52 if eps1 is None else eps1) ** 2  # float64's machine epsilon, squared
        v = [(1 - w) * vi + w * gi * gi for vi, gi in zip(s["variance"], g, strict=True)]
        u = [gi / math.sqrt(max(vi, floor)) for gi, vi in zip(g, v, strict=True)]
        out = {**s, "variance": v}
    clip = max(1.0, _rms(u) / d)
    return [x - alpha * ui / clip for x, ui in zip(p, u, strict=True)], out


def sfadamw_init(h, p):
    """z starts at the parameter; the history (``_`` keys, not slots) at nothing summed, the largest
    lr at -1 (the package) or 0 (optax); x (``_x``) at the parameter too."""
    start = 0.0 if h["convention"] == "optax" else -1.0
    return {"z": p, "exp_avg_sq": 0.0, "_x": p, "_weight_sum": 0.0, "_lr_max": start}


def _optax_linear_warmup(lr, count, warmup):
    """optax.linear_schedule(0, lr, warmup)(count): (-lr) (1 - count/W) + lr, in float32 (jax
    promotes the int32 count to float32, also with x64), then widened."""
    f = np.float32
    count = min(max(count, 0), warmup)
    return float(f(-lr) * (f(1) - f(count) / f(warmup)) + f(lr))


def sfadamw_step(h, s, p, g, t, lr):
    """Defazio et al. 2024, Algorithm 1 with the package's bias-corrected denominator, in x, y, z:
    the gradient is taken at y = p; v = b2 v + (1-b2) g^2; u = g / (sqrt(v / (1-b2^t)) + eps)
    (+ wd y); z' = z - lr_t u; x' = (1-c) x + c z'; y' = (1-b1) z' + b1 x'.

    uniopt (schedulefree.AdamWScheduleFree): lr_t = lr min(1, t/W); c = w_t / sum w_i with
    w_t = t^r lr_max^p. optax (contrib.schedule_free_adamw): the same with p = 2 and r = 0, lr_max
    from 0, the warmup read at t for the weight and at t-1 for the step (float32 schedule), x from
    (y - (1-b1) z) / b1. keras (ScheduleFreeAdamW): c = 1/t; y -= y wd lr (un-warmed) first and
    y only; x recovered from y and the *new* z (Keras reads the live variable after assign_sub)."""
    b1, b2 = h["betas"]
    wd, eps, warmup, convention = h["weight_decay"], h["eps"], h["warmup_steps"], h["convention"]
    v = b2 * s["exp_avg_sq"] + (1 - b2) * g * g
    d = math.sqrt(v / (1 - b2**t)) + eps
    if convention == "keras":
        if wd:
            p = p - p * wd * lr
        lr_t = lr * min(t / warmup, 1.0) if warmup else lr
        z = s["z"] - lr_t * g / d
        x = (p - (1 - b1) * z) / b1
        x = (1 - 1 / t) * x + (1 / t) * z
        return (1 - b1) * z + b1 * x, {**s, "z": z, "exp_avg_sq": v}
    if convention == "optax":
        lr_w = _optax_linear_warmup(lr, t, warmup) if warmup else lr
        lr_z = _optax_linear_warmup(lr, t - 1, warmup) if warmup else lr
    else:
        lr_w = lr_z = lr * min(t / warmup, 1.0) if warmup else lr
    lr_max = max(s["_lr_max"], lr_w)
    weight = t ** h["r"] * lr_max ** h["weight_lr_power"]
    weight_sum = s["_weight_sum"] + weight
    c = weight / weight_sum if weight_sum else 0.0
    u = g / d + wd * p
    z = s["z"] - lr_z * u
    x = (1 - c) * s["_x"] + c * z
    y = (1 - b1) * z + b1 * x
    return y, {"z": z, "exp_avg_sq": v, "_x": x, "_weight_sum": weight_sum, "_lr_max": lr_max}


HAND = {
    "SGD": (sgd_init, sgd_step),
    "Adagrad": (adagrad_init, adagrad_step),
    "RMSprop": (rmsprop_init, rmsprop_step),
    "Adam": (adam_init, adam_step),
    "AdamW": (adam_init, adamw_step),
    "RAdam": (radam_init, radam_step),
    "Adamax": (adamax_init, adamax_step),
    "Adadelta": (adadelta_init, adadelta_step),
    "Lion": (lion_init, lion_step),
    "Lamb": (lamb_init, lamb_step),
    "NAdam": (nadam_init, nadam_step),
    "ScheduleFreeAdamW": (sfadamw_init, sfadamw_step),
    "Adafactor": (adafactor_init, adafactor_step),
}
PARAM_INIT = {"ScheduleFreeAdamW"}
"""Optimizers whose ``*_init(h, p)`` reads the parameter (a slot that starts as its copy)."""


# -- drivers ---------------------------------------------------------------------------------


def hyperparameters(name, kwargs):
    unknown = set(kwargs) - set(DEFAULTS[name])
    assert not unknown, f"{name}: the hand formulas do not know {sorted(unknown)}"
    convention = kwargs.get("convention", "uniopt")
    h = {**DEFAULTS[name], **CONVENTION_DEFAULTS.get(name, {}).get(convention, {}), **kwargs}
    if convention == "keras":  # Keras keeps the learning rate in a float32 variable
        h["lr"] = float(np.float32(h["lr"]))
        if name == "ScheduleFreeAdamW":  # ops.cast of the Python floats, float32 tensors first
            h["eps"] = float(np.float32(h["eps"]))
            h["betas"] = tuple(float(np.float32(b)) for b in h["betas"])
        # and casts these Python floats to the parameter dtype through a float32 tensor
        cast = {"SGD": ("momentum",), "Adagrad": ("initial_accumulator_value",)}.get(name, ())
        for field in ("weight_decay", *cast):
            h[field] = float(np.float32(h[field]))
    if "betas" in h:
        h["betas"] = tuple(h["betas"])
    return h


VECTOR = {"Lamb", "Adafactor"}
"""Optimizers whose step reads the whole tensor (norms): their ``*_step`` takes lists. An initial
slot given as an array (Adafactor's placeholders) is that slot, not one value per element."""


def _vector_slots(init, n):
    return {k: v if isinstance(v, np.ndarray) else [v] * n for k, v in init.items()}


def hand_trajectory(name, h, p0, grads, lrs):
    """``[(params, slots)]`` after each step, as float64 arrays built from scalar hand work."""
    init, step = HAND[name]
    if name in VECTOR:
        p, s, out = list(p0), _vector_slots(init(h), len(p0)), []
        for t, (g, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
            p, s = step(h, s, p, list(g), t, lr)
            slots = {k: np.array(v, dtype=np.float64) for k, v in s.items()}
            out.append((np.array(p, dtype=np.float64), slots))
        return out
    per_element = []
    for j, p in enumerate(p0):
        s = init(h, p) if name in PARAM_INIT else init(h)
        history = []
        for t, (g, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
            p, s = step(h, s, p, g[j], t, lr)
            history.append((p, s))
        per_element.append(history)
    out = []
    for k in range(len(grads)):
        params = np.array([per_element[j][k][0] for j in range(len(p0))], dtype=np.float64)
        names = [n for n in per_element[0][k][1] if not n.startswith("_")]  # "_": the hand's own
        slots = {
            n: np.array([per_element[j][k][1][n] for j in range(len(p0))], dtype=np.float64) for n in names
        }
        out.append((params, slots))
    return out


def hand_initial_slots(name, h, p0):
    init, _ = HAND[name]
    if name in PARAM_INIT:
        per_element = [init(h, p) for p in p0]
        names = [n for n in per_element[0] if not n.startswith("_")]
        return {n: np.array([e[n] for e in per_element], dtype=np.float64) for n in names}
    return {k: np.asarray(v, dtype=np.float64) for k, v in _vector_slots(init(h), len(p0)).items()}


def assert_matches(actual, expected, what):
    assert isinstance(actual, np.ndarray), f"{what}: got {type(actual).__name__}"
    assert actual.dtype == np.float64, f"{what}: dtype {actual.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=what)


def check_against_hand(opt, name, h, p0, grads, lrs, overrides):
    """Run ``opt`` on ``grads`` (passing ``lr=`` where ``overrides``) and compare every step."""
    expected = hand_trajectory(name, h, p0, grads, lrs)
    params = [np.array(p0, dtype=np.float64)]
    state = opt.init(params)
    assert state.step == 0
    init_expected = hand_initial_slots(name, h, p0)
    assert set(state.slots[0]) == set(init_expected)
    for key, value in init_expected.items():
        assert_matches(state.slots[0][key], value, f"initial slot {key}")
    for t, (g, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
        grad_arrays = [np.array(g, dtype=np.float64)]
        inputs = (params[0].copy(), grad_arrays[0].copy(), {k: v.copy() for k, v in state.slots[0].items()})
        old_params, old_state = params, state
        kwargs = {"lr": lr} if overrides else {}
        params, state = opt.update(grad_arrays, old_state, old_params, **kwargs)
        # update is pure: nothing it was given changed
        np.testing.assert_array_equal(old_params[0], inputs[0])
        np.testing.assert_array_equal(grad_arrays[0], inputs[1])
        for key, value in inputs[2].items():
            np.testing.assert_array_equal(old_state.slots[0][key], value)
        assert state.step == t
        assert len(params) == 1 and len(state.slots) == 1
        exp_params, exp_slots = expected[t - 1]
        assert_matches(params[0], exp_params, f"params after step {t}")
        assert set(state.slots[0]) == set(exp_slots), f"slot names after step {t}"
        for key, value in exp_slots.items():
            assert_matches(state.slots[0][key], value, f"slot {key} after step {t}")
    return params, state


def test_every_optimizer_has_hand_formulas():
    assert {info.name for info in TABLE} == set(HAND) | set(OWN_FILE)
    here = Path(__file__).parent
    for file, test in OWN_FILE.values():
        assert f"def {test}(" in (here / file).read_text()


@pytest.mark.parametrize(("info", "case"), CASES + COMBOS)
def test_first_three_steps_by_hand(info, case):
    opt = info.make(case)
    h = hyperparameters(info.name, dict(case.kwargs))
    assert opt.hyperparameters == h
    lrs = [h["lr"]] * len(GRADS)
    check_against_hand(opt, info.name, h, P0, GRADS, lrs, overrides=False)


CONVENTION_CASES = [c for c in CASES if c.values[1].kwargs.get("convention", "uniopt") != "uniopt"]


@pytest.mark.parametrize(("info", "case"), CONVENTION_CASES)
def test_framework_conventions_by_hand_past_rectification(info, case):
    """Twelve steps (RAdam rectifies from step 5 or 6) against each framework's documented math."""
    assert {c.values[1].kwargs["convention"] for c in CONVENTION_CASES} == {
        "torch",
        "keras",
        "optax",
        "official",
    }
    opt = info.make(case)
    h = hyperparameters(info.name, dict(case.kwargs))
    assert opt.hyperparameters == h
    rng = np.random.default_rng(12)
    grads = [list(rng.standard_normal(len(P0))) for _ in range(12)]
    check_against_hand(opt, info.name, h, P0, grads, [h["lr"]] * len(grads), overrides=False)


@pytest.mark.parametrize(("info", "case"), CASES + COMBOS)
def test_per_step_lr_override_by_hand(info, case):
    """``update(..., lr=)`` (a scheduler) replaces ``lr`` in every place it appears that step."""
    opt = info.make(case)
    h = hyperparameters(info.name, dict(case.kwargs))
    lrs = [h["lr"] * 0.5, h["lr"] * 3.0, h["lr"] * 0.25]
    check_against_hand(opt, info.name, h, P0, GRADS, lrs, overrides=True)


# -- closed forms of the first step ----------------------------------------------------------


def _one_step(opt, g):
    params = [np.array(P0, dtype=np.float64)]
    new, state = opt.update([np.array(g, dtype=np.float64)], opt.init(params), params)
    return new[0], state.slots[0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0.02, "momentum": 0.9},
        {"lr": 0.02, "momentum": 0.9, "dampening": 0.3},
        {"lr": 0.02, "momentum": 0.9, "nesterov": True},
    ],
)
def test_sgd_first_buffer_is_the_gradient(kwargs):
    g = GRADS[0]
    p1, slots = _one_step(uniopt.SGD(**kwargs), g)
    np.testing.assert_array_equal(slots["momentum_buffer"], np.array(g))  # exactly, undampened
    factor = 1.0 + 0.9 if kwargs.get("nesterov") else 1.0
    expected = [p - 0.02 * factor * gi for p, gi in zip(P0, g, strict=True)]
    np.testing.assert_allclose(p1, expected, rtol=RTOL, atol=ATOL)


def test_adam_first_step_is_lr_times_sign():
    # m_hat_1 = g and v_hat_1 = g^2, so the first step is lr * g / (|g| + eps).
    g = GRADS[0]
    for opt in (uniopt.Adam(lr=0.01), uniopt.Adam(lr=0.01, amsgrad=True)):
        p1, _ = _one_step(opt, g)
        expected = [p - 0.01 * gi / (abs(gi) + 1e-8) for p, gi in zip(P0, g, strict=True)]
        np.testing.assert_allclose(p1, expected, rtol=RTOL, atol=ATOL)


def test_radam_first_step_is_plain_momentum_sgd():
    # rho_1 = 1, so step 1 is unrectified and m_hat_1 = g: p1 = p0 - lr * g.
    g = GRADS[0]
    p1, _ = _one_step(uniopt.RAdam(lr=0.01), g)
    np.testing.assert_allclose(p1, [p - 0.01 * gi for p, gi in zip(P0, g, strict=True)], rtol=RTOL)


def test_adagrad_first_step_from_zero_accumulator():
    g = GRADS[0]
    p1, slots = _one_step(uniopt.Adagrad(lr=0.1), g)
    np.testing.assert_allclose(
        p1, [p - 0.1 * gi / (abs(gi) + 1e-10) for p, gi in zip(P0, g, strict=True)], rtol=RTOL
    )
    np.testing.assert_allclose(slots["sum"], [gi * gi for gi in g], rtol=RTOL, atol=ATOL)


def test_rmsprop_first_step():
    # v_1 = (1 - alpha) g^2, so sigma_1 = sqrt(1 - alpha) |g| + eps.
    g = GRADS[0]
    p1, _ = _one_step(uniopt.RMSprop(lr=0.01), g)
    expected = [p - 0.01 * gi / (math.sqrt(0.01) * abs(gi) + 1e-8) for p, gi in zip(P0, g, strict=True)]
    np.testing.assert_allclose(p1, expected, rtol=RTOL, atol=ATOL)


def test_rmsprop_centered_variance_is_clamped_at_zero():
    """With alpha tiny and a constant gradient the centered variance v - gbar^2 at step 2 is about
    1e-18 g^2, below float64 resolution, and rounds to a negative number; uniopt clamps it to 0
    (sigma = eps) where PyTorch would take sqrt of a negative and produce NaN."""
    alpha, g, lr, eps = 1e-9, 2.315, 0.01, 1e-8
    opt = uniopt.RMSprop(lr=lr, alpha=alpha, centered=True)
    v = gbar = 0.0
    params = [np.array([1.0])]
    state = opt.init(params)
    for _ in (1, 2):
        v = alpha * v + (1.0 - alpha) * (g * g)
        gbar = alpha * gbar + (1.0 - alpha) * g
        before = params[0]
        params, state = opt.update([np.array([g])], state, params)
    raw_variance = v - gbar * gbar
    assert raw_variance < 0.0, "fixture no longer reaches a negative rounded variance"
    assert np.all(np.isfinite(params[0]))
    # Step 1's variance (about alpha g^2) is itself a 1e9-fold cancellation, so only step 2's
    # increment is compared: with the clamp it is exactly lr * g / (0 + eps).
    np.testing.assert_allclose(before - params[0], [lr * g / eps], rtol=RTOL)
    np.testing.assert_allclose(state.slots[0]["square_avg"], [v], rtol=RTOL)
    np.testing.assert_allclose(state.slots[0]["grad_avg"], [gbar], rtol=RTOL)


# -- RAdam's rectification schedule -----------------------------------------------------------

# Seven steps so that the first rectified step (6) and one after it are seen.
GRADS7 = (*GRADS, (0.2, -0.7, -0.1), (-0.3, 1.1, 0.05), (0.6, -0.9, 0.2), (0.1, 0.4, -0.35))
RECTIFIED = (False, False, False, False, False, True, True)  # for both beta2 = 0.999 and 0.99


def test_radam_rho_schedule_by_hand():
    rho5 = radam_rho(0.999, 5)[1]
    rho6 = radam_rho(0.999, 6)[1]
    # the module docstring's numbers
    assert abs(rho5 - 4.996) < 5e-4
    assert abs(rho6 - 5.994) < 5e-4
    for beta2 in (0.999, 0.99):
        assert tuple(radam_rho(beta2, t)[1] > 5.0 for t in range(1, 8)) == RECTIFIED


RADAM_CASES = [p for p in CASES + COMBOS if p.values[0].name == "RAdam"]


@pytest.mark.parametrize(("info", "case"), RADAM_CASES)
def test_radam_seven_steps_by_hand(info, case):
    opt = info.make(case)
    h = hyperparameters(info.name, dict(case.kwargs))
    assert tuple(radam_rho(h["betas"][1], t)[1] > 5.0 for t in range(1, 8)) == RECTIFIED
    lrs = [h["lr"]] * len(GRADS7)
    check_against_hand(opt, info.name, h, P0, GRADS7, lrs, overrides=False)


def test_radam_step_six_is_the_rectified_step():
    """Step 6 with betas (0.9, 0.999) by hand, written out without the shared helpers."""
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    params = [np.array(P0)]
    opt = uniopt.RAdam(lr=lr)
    state = opt.init(params)
    for g in GRADS7[:6]:
        before = params[0]
        params, state = opt.update([np.array(g)], state, params)
    t = 6
    m = [0.0, 0.0, 0.0]
    v = [0.0, 0.0, 0.0]
    for g in GRADS7[:6]:
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g, strict=True)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g, strict=True)]
    rho_inf = 2 / (1 - b2) - 1
    rho6 = rho_inf - 2 * 6 * b2**6 / (1 - b2**6)
    r6 = math.sqrt((rho6 - 4) * (rho6 - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho6))
    rectified = [
        p - lr * r6 * (mi / (1 - b1**t)) / (math.sqrt(vi / (1 - b2**t)) + eps)
        for p, mi, vi in zip(before, m, v, strict=True)
    ]
    sgd_like = [p - lr * mi / (1 - b1**t) for p, mi in zip(before, m, strict=True)]
    # the two branches are far apart, so agreeing with one of them says which branch ran
    assert max(abs(a - b) for a, b in zip(rectified, sgd_like, strict=True)) > 1e-4
    np.testing.assert_allclose(params[0], rectified, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(state.slots[0]["exp_avg"], m, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(state.slots[0]["exp_avg_sq"], v, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0.01, "degenerated_to_sgd": False},
        {"lr": 0.01, "degenerated_to_sgd": False, "weight_decay": 0.1},
        {"lr": 0.01, "degenerated_to_sgd": False, "weight_decay": 0.1, "decoupled_weight_decay": True},
    ],
    ids=["plain", "l2", "decoupled"],
)
def test_radam_skip_unrectified_holds_params_while_moments_advance(kwargs):
    opt = uniopt.RAdam(**kwargs)
    h = hyperparameters("RAdam", kwargs)
    expected = hand_trajectory("RAdam", h, P0, GRADS7, [0.01] * len(GRADS7))
    params = [np.array(P0)]
    state = opt.init(params)
    previous_m = state.slots[0]["exp_avg"]
    for t, g in enumerate(GRADS7, start=1):
        params, state = opt.update([np.array(g)], state, params)
        exp_params, exp_slots = expected[t - 1]
        m = state.slots[0]["exp_avg"]
        if t <= 5:
            # bit-for-bit unchanged (decoupled decay included), but the moments move
            np.testing.assert_array_equal(params[0], np.array(P0))
            assert not np.array_equal(m, previous_m)
        else:
            assert not np.array_equal(params[0], np.array(P0))
        np.testing.assert_allclose(params[0], exp_params, rtol=RTOL, atol=ATOL)
        for key, value in exp_slots.items():
            np.testing.assert_allclose(state.slots[0][key], value, rtol=RTOL, atol=ATOL)
        previous_m = m
