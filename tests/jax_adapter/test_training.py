"""A real training run: a small MLP on scikit-learn's digits, trained under jax.jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

import uniopt.jax as ujax

# one worker runs this module (pytest-xdist's loadgroup): its module fixture runs once
pytestmark = pytest.mark.xdist_group("test_training")

OPTIMIZERS = {
    "sgd": lambda: ujax.sgd(0.1, momentum=0.9, nesterov=True),
    "adagrad": lambda: ujax.adagrad(0.05),
    "rmsprop": lambda: ujax.rmsprop(1e-3),
    "adam": lambda: ujax.adam(3e-3),
    "adamw": lambda: ujax.adamw(optax.warmup_cosine_decay_schedule(0.0, 3e-3, 20, 300), weight_decay=1e-2),
    "radam": lambda: optax.chain(optax.clip_by_global_norm(1.0), ujax.radam(2e-2)),
}


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return (jnp.asarray(x[:1400]), jnp.asarray(y[:1400])), (jnp.asarray(x[1400:]), jnp.asarray(y[1400:]))


def _init(key):
    k1, k2 = jax.random.split(key)
    return {
        "hidden": {"w": jax.random.normal(k1, (64, 32)) * 0.2, "b": jnp.zeros(32)},
        "out": {"w": jax.random.normal(k2, (32, 10)) * 0.2, "b": jnp.zeros(10)},
    }


def _logits(params, x):
    h = jax.nn.relu(x @ params["hidden"]["w"] + params["hidden"]["b"])
    return h @ params["out"]["w"] + params["out"]["b"]


def _loss(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(_logits(params, x), y).mean()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_mlp_on_digits_learns(name, digits):
    (x, y), (x_test, y_test) = digits
    tx = OPTIMIZERS[name]()
    params = _init(jax.random.PRNGKey(0))
    state = tx.init(params)

    @jax.jit
    def train_step(p, s, xb, yb):
        value, grads = jax.value_and_grad(_loss)(p, xb, yb)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    losses = []
    for epoch in range(6):
        for i in range(0, 1400, 100):  # minibatches of 100: 84 steps in all
            params, state, value = train_step(params, state, x[i : i + 100], y[i : i + 100])
        losses.append(float(value))
        del epoch
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses
    accuracy = float(jnp.mean(jnp.argmax(_logits(params, x_test), axis=1) == y_test))
    assert accuracy > 0.85, (losses, accuracy)
