"""Under jax.jit: compiled once, donated buffers reused, eager and compiled numbers identical."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ujax_helpers import same_bits

import uniopt.jax as ujax

FACTORIES = {
    "sgd": lambda: ujax.sgd(0.05, momentum=0.9, nesterov=True),
    "adagrad": lambda: ujax.adagrad(0.1, lr_decay=0.01),  # host-callback scalars
    "rmsprop": lambda: ujax.rmsprop(0.01, centered=True),
    "adam": lambda: ujax.adam(0.01, amsgrad=True),
    "adamw": lambda: ujax.adamw(0.01),
    "radam": lambda: ujax.radam(0.01),
    "radam_schedule": lambda: ujax.radam(optax.cosine_decay_schedule(0.01, 100)),
}


def _problem():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal((8, 4)), jnp.float32), "b": jnp.zeros(4, jnp.float32)}
    x = jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((16, 4)), jnp.float32)

    def loss(p):
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    return params, loss


@pytest.mark.parametrize("name", list(FACTORIES))
def test_compiled_once_with_donated_buffers(name):
    tx = FACTORIES[name]()
    params, loss = _problem()
    state = tx.init(params)

    def train_step(p, s):
        value, grads = jax.value_and_grad(loss)(p)
        u, s = tx.update(grads, s, p)
        return optax.apply_updates(p, u), s, value

    step = jax.jit(train_step, donate_argnums=(0, 1))
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Some donated buffers were not usable" would fail here
        for _ in range(5):
            old = jax.tree.leaves((params, state))
            params, state, value = step(params, state)
            assert all(x.is_deleted() for x in old)  # donated: the inputs' buffers were taken
            losses.append(float(value))
    assert step._cache_size() == 1  # the second and later calls reuse the first compilation
    assert int(state.count) == 5
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", list(FACTORIES))
def test_eager_and_jit_are_identical(name):
    tx = FACTORIES[name]()
    params, loss = _problem()

    def opt_step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    # the gradients are taken eagerly in both runs: XLA may compile the loss's own arithmetic
    # differently under jit, which is not the optimizer's business
    grad = jax.grad(loss)
    results = []
    for step in (opt_step, jax.jit(opt_step)):
        p, s = params, tx.init(params)
        for _ in range(6):
            p, s = step(p, s, grad(p))
        results.append(jax.tree.leaves((p, s)))
    for a, b in zip(*results, strict=True):
        assert same_bits(a, b)


def test_gradients_flow_through_an_update():
    """The rounded-product no-op differentiates as the identity (meta-gradients keep working)."""
    p = [jnp.asarray([1.0, -2.0, 3.0])]
    g = [jnp.asarray([0.5, 0.25, -1.0])]

    def after_one_step(lr, params):
        tx = ujax.sgd(lr, momentum=0.9)
        return jnp.sum(tx.step(g, tx.init(params), params)[0][0])

    d_lr, d_params = jax.jit(jax.grad(after_one_step, argnums=(0, 1)))(jnp.asarray(0.1), p)
    assert float(d_lr) == -float(jnp.sum(g[0]))
    np.testing.assert_array_equal(d_params[0], np.ones(3, np.float32))


def test_disable_jit_gives_the_same_numbers():
    tx = ujax.radam(0.01, weight_decay=0.1)
    params, loss = _problem()
    grad = jax.grad(loss)

    def run():
        p, s = params, tx.init(params)
        for _ in range(3):
            u, s = tx.update(grad(p), s, p)
            p = optax.apply_updates(p, u)
        return jax.tree.leaves((p, s))

    fast = run()
    with jax.disable_jit():
        slow = run()
    for a, b in zip(fast, slow, strict=True):
        assert same_bits(a, b)
