"""Run by test_sharding.py in a process of its own, with 8 host CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8`` is process-global, so it cannot be set
inside the pytest process). Exits non-zero on the first failed check; prints one line per check."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import uniopt.jax as ujax


def same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.all(a.view(np.uint32) == b.view(np.uint32)))


def check_state_and_params_keep_their_sharding() -> None:
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    specs = {"w": P("data", "model"), "b": P("model"), "s": P()}
    rng = np.random.default_rng(0)
    host = {"w": rng.standard_normal((16, 8)), "b": rng.standard_normal(8), "s": rng.standard_normal(())}
    host = {k: v.astype(np.float32) for k, v in host.items()}
    shardings = {k: NamedSharding(mesh, s) for k, s in specs.items()}
    params = {k: jax.device_put(v, shardings[k]) for k, v in host.items()}
    tx = ujax.adamw(0.01, weight_decay=0.1)
    state = tx.init(params)
    for name in tx.spec.slot_names():
        for k in params:
            got = state.slots[name][k].sharding
            assert got.is_equivalent_to(shardings[k], params[k].ndim), (name, k, got)

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    grads = {
        k: jax.device_put(np.full_like(v, 0.25) * (1 + np.arange(v.size).reshape(v.shape) % 3), shardings[k])
        for k, v in host.items()
    }
    sharded_p, sharded_s = params, state
    single_p = jax.device_put(host, jax.devices()[0])
    single_s = tx.init(single_p)
    single_g = jax.device_put(jax.tree.map(np.asarray, grads), jax.devices()[0])
    for _ in range(3):
        sharded_p, sharded_s = step(sharded_p, sharded_s, grads)
        single_p, single_s = step(single_p, single_s, single_g)
    for k in params:
        assert sharded_p[k].sharding.is_equivalent_to(shardings[k], params[k].ndim), k
        for name in tx.spec.slot_names():
            assert sharded_s.slots[name][k].sharding.is_equivalent_to(shardings[k], params[k].ndim)
        assert same_bits(sharded_p[k], single_p[k]), k
        for name in tx.spec.slot_names():
            assert same_bits(sharded_s.slots[name][k], single_s.slots[name][k]), (name, k)
    print("sharded params and state keep their sharding; values equal the single-device run")


def check_data_parallel_training_matches_one_device() -> None:
    """A batch sharded over 8 devices, replicated parameters. Each input row is one-hot with its
    own hot index, so every weight's gradient has exactly one nonzero term and the cross-device
    sum is exact in any order: any difference would be the optimizer's."""
    mesh = Mesh(np.array(jax.devices()), ("data",))
    n = 64
    rng = np.random.default_rng(1)
    x = np.eye(n, dtype=np.float32)[rng.permutation(n)]
    y = rng.standard_normal((n, 3)).astype(np.float32)
    w0 = {"w": rng.standard_normal((n, 3)).astype(np.float32)}
    tx = ujax.radam(0.05)

    def loss(p, xb, yb):
        return 0.5 * jnp.mean(jnp.sum((xb @ p["w"] - yb) ** 2, axis=1))

    @jax.jit
    def train_step(p, s, xb, yb):
        value, g = jax.value_and_grad(loss)(p, xb, yb)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, value

    batch = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())
    runs = {}
    for label, (xs, ys, ps) in {
        "data-parallel": (jax.device_put(x, batch), jax.device_put(y, batch), jax.device_put(w0, replicated)),
        "one device": tuple(jax.device_put(v, jax.devices()[0]) for v in (x, y, w0)),
    }.items():
        state = tx.init(ps)
        losses = []
        for _ in range(12):
            ps, state, value = train_step(ps, state, xs, ys)
            losses.append(float(value))
        runs[label] = (ps, state, losses)
    (pd, sd, ld), (p1, s1, _) = runs["data-parallel"], runs["one device"]
    assert len(pd["w"].sharding.device_set) == 8  # really ran over the mesh
    assert ld[-1] < ld[0]
    assert same_bits(pd["w"], p1["w"])
    for name in tx.spec.slot_names():
        assert same_bits(sd.slots[name]["w"], s1.slots[name]["w"])
    print(f"data-parallel training equals one device bitwise; loss {ld[0]:.4f} -> {ld[-1]:.4f}")


if __name__ == "__main__":
    assert len(jax.devices()) == 8, jax.devices()
    check_state_and_params_keep_their_sharding()
    check_data_parallel_training_matches_one_device()
    print("OK")
