"""Run by test_multiprocess.py: one of two processes joined by ``jax.distributed.initialize``
(``--process-id 0|1 --port P``, 2 host CPU devices each, gloo collectives), or one process alone
(``--single``, 4 host CPU devices) running the same global computation on a mesh of the same shape.

The mesh is ``("data", "model")`` of shape (2, 2) over ``jax.devices()``: in the two-process run
the data axis crosses the processes (process 0 holds devices 0 and 1, process 1 devices 2048 and
2049), the model axis stays inside each. For every optimizer it trains a two-layer MLP for
``STEPS`` jitted steps twice:

* ``data``: the batch sharded over the data axis, parameters and optimizer state replicated;
* ``sharded``: parameters and optimizer state sharded over both axes (``PARAM_SPECS``), the batch
  sharded over the data axis (fully sharded data parallel);

and, for Adam only, ``wide``: the batch sharded over both axes (4 devices), parameters replicated,
so that the gradients are sums over 4 devices.

It writes every global value (``process_allgather``: the same whole arrays in every process) to
``--out`` (``.npz``) with the losses and, per step function, the largest number of devices any
all-reduce or reduce-scatter of its compiled program sums over; the test compares the files.
Exits non-zero on the first failed check; prints one line per check."""

from __future__ import annotations

import argparse
import os
import re
import sys

STEPS = 8
# One optimizer of each kind of step: elementwise (Adam; RAdam and AdamW are elementwise too, their
# steps shard as Adam's does), norms (LAMB), factored row and column sums (Adafactor), a host
# callback and a history in the state (Schedule-Free AdamW).
OPTIMIZERS = {
    "adam": lambda u: u.adam(1e-2),
    "lamb": lambda u: u.lamb(1e-2, weight_decay=0.01),
    "adafactor": lambda u: u.adafactor(5e-2, min_dim_size_to_factor=4),  # W1 and W2 factored
    "schedule_free_adamw": lambda u: u.schedule_free_adamw(1e-2, warmup_steps=3),  # a host callback
}
SHAPES = {"w1": (6, 8), "b1": (8,), "w2": (8, 4), "b2": (4,)}
BATCH = 32


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--port", type=int)
    parser.add_argument("--single", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.single == (args.process_id is not None):
        parser.error("give --single or --process-id with --port")
    return args


ARGS = parse()
os.environ["JAX_PLATFORMS"] = "cpu"
import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
if not ARGS.single:
    jax.distributed.initialize(
        f"127.0.0.1:{ARGS.port}", num_processes=2, process_id=ARGS.process_id, initialization_timeout=60
    )

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import uniopt.jax as ujax  # noqa: E402

PARAM_SPECS = {"w1": P("model", "data"), "b1": P("data"), "w2": P("data", "model"), "b2": P("model")}


def host_data() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    params = {k: (0.5 * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}
    x = rng.standard_normal((BATCH, 6)).astype(np.float32)
    y = rng.standard_normal((BATCH, 4)).astype(np.float32)
    return params, x, y


def loss_fn(p, x, y):
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    return 0.5 * jnp.mean((h @ p["w2"] + p["b2"] - y) ** 2)


def global_array(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """The global array ``host`` placed with ``sharding``: each process supplies its own shards."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def gathered(tree):
    """Every leaf as the whole global array on the host, in every process."""
    return jax.tree.map(lambda a: np.asarray(multihost_utils.process_allgather(a, tiled=True)), tree)


def largest_reduction_group(hlo: str) -> int:
    """The most devices one floating-point all-reduce or reduce-scatter of the compiled program
    sums over (0 for none). Integer all-reduces are left out: jax broadcasts a host callback's
    result from the device that ran it as an integer all-reduce of the bits there and zeros
    elsewhere, exact in any order. XLA writes the groups three ways: ``{{0,2},{1,3}}``,
    ``[2,2]<=[4]`` (groups, size) and ``mesh['axis_0'=2,'axis_1'=2] {'axis_0'}``."""
    largest = 0
    for line in hlo.splitlines():
        op = re.search(r"= (.+?) (all-reduce|all-reduce-start|reduce-scatter)\(", line)
        if op is None or not re.search(r"\b(bf16|f16|f32|f64|c64|c128)\[", op.group(1)):
            continue
        if explicit := re.search(r"replica_groups=\{\{([\d,]*)\}", line):
            size = len(explicit.group(1).split(","))
        elif iota := re.search(r"replica_groups=\[[\d,]*?(\d+)\]<=", line):
            size = int(iota.group(1))
        elif named := re.search(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", line):
            sizes = dict(re.findall(r"'(\w+)'=(\d+)", named.group(1)))
            size = int(np.prod([int(sizes[a]) for a in re.findall(r"'(\w+)'", named.group(2))]))
        else:  # no groups written: every device of the program
            size = len(jax.devices())
        largest = max(largest, size)
    return largest


def train(name: str, mode: str, mesh: Mesh) -> dict[str, np.ndarray]:
    tx = OPTIMIZERS[name](ujax)
    host_p, x, y = host_data()
    batch = NamedSharding(mesh, P(("data", "model")) if mode == "wide" else P("data"))
    specs = PARAM_SPECS if mode == "sharded" else dict.fromkeys(SHAPES, P())
    shardings = {k: NamedSharding(mesh, s) for k, s in specs.items()}
    params = {k: global_array(v, shardings[k]) for k, v in host_p.items()}
    xs, ys = global_array(x, batch), global_array(y, batch)
    state = tx.init(params)

    @jax.jit
    def step(p, s, xb, yb):
        value, g = jax.value_and_grad(loss_fn)(p, xb, yb)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, value

    group = largest_reduction_group(step.lower(params, state, xs, ys).compile().as_text())
    losses = []
    for _ in range(STEPS):
        params, state, value = step(params, state, xs, ys)
        losses.append(value)
    for k, v in params.items():  # the parameters kept their placement
        assert v.sharding.is_equivalent_to(shardings[k], v.ndim), (name, mode, k, v.sharding)
        if mode != "sharded":
            shards = [np.asarray(s.data) for s in v.addressable_shards]
            assert all(s.tobytes() == shards[0].tobytes() for s in shards), (name, k)
    if mode == "sharded":  # the parameter-shaped state is sharded like its parameter
        for slot, tree in state.slots.items():
            for k, v in tree.items():
                if v.shape == SHAPES[k]:
                    assert v.sharding.is_equivalent_to(shardings[k], v.ndim), (name, slot, k, v.sharding)
    out = {f"params/{k}": v for k, v in gathered(params).items()}
    for slot, tree in gathered(state.slots).items():
        out.update({f"slots/{slot}/{k}": v for k, v in tree.items()})
    if state.history is not None:
        out["history"] = gathered(state.history)
    out["loss"] = np.stack([gathered(v) for v in losses])
    out["group"] = np.asarray(group)
    assert out["loss"][-1] < out["loss"][0], (name, mode, out["loss"])
    return out


def main() -> None:
    devices = jax.devices()
    assert len(devices) == 4, devices
    assert jax.process_count() == (1 if ARGS.single else 2)
    assert len(jax.local_devices()) == (4 if ARGS.single else 2)
    mesh = Mesh(np.array(devices).reshape(2, 2), ("data", "model"))
    if not ARGS.single:  # the data axis crosses the processes, the model axis does not
        assert {d.process_index for d in mesh.devices[:, 0]} == {0, 1}
        assert {d.process_index for d in mesh.devices[0, :]} == {0}
    results = {}
    for mode, names in (("data", OPTIMIZERS), ("sharded", OPTIMIZERS), ("wide", ["adam"])):
        for name in names:
            out = train(name, mode, mesh)
            results.update({f"{mode}/{name}/{k}": v for k, v in out.items()})
            loss = out["loss"]
            print(f"{mode} {name}: loss {loss[0]:.4f} -> {loss[-1]:.4f}, largest reduction {out['group']}")
    np.savez(ARGS.out, **results)
    if not ARGS.single:
        jax.distributed.shutdown()
    print("OK")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
