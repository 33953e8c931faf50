"""The JAX backend: the real ``uniopt.jax`` transformation under optax's contract.

Each cell builds the transformation through the public factory (``uniopt.jax.<name>(**optax-style
arguments)``, the name mapping read backwards from the spec). Modes:

- ``eager``: ``params, state = tx.step(grads, state, params)`` without ``jax.jit``: every op of the
  rule runs as its own XLA computation (``jax.disable_jit()`` gives the same numbers about 150 times
  slower);
- ``jit``: the same ``tx.step`` compiled whole, with default XLA flags, once per spec, dtype and
  parameter shapes;
- ``optax``: optax's additive contract, ``updates, state = tx.update(grads, state, params)`` then
  ``params = optax.apply_updates(params, updates)``, under ``jax.jit``. Where a step changes a
  parameter's sign no float ``u`` gives ``p + u == new p``, so this row carries a measured bound.
float64 needs ``jax_enable_x64``, which the runner turns on in its own process (every backend runs
in a process of its own). jax is imported only inside the runner. ``--device gpu`` runs on jax's
first GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from uniopt import Spec

from .backends import WIDE, Backend, GradsAt, Runner, Snapshot, jax_device, selection

__all__ = ["BACKEND"]


def _make_runner(mode: str) -> Runner:
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 cells; float32 arrays stay float32
    import optax

    import uniopt.jax as ujax

    if mode not in ("eager", "jit", "optax"):
        raise ValueError(f"jax backend has no mode {mode!r}")
    device = jax_device()

    steps_of: dict[Spec, tuple[Any, Callable]] = {}  # one transformation and step per spec

    def make_step(spec: Spec) -> tuple[Any, Callable]:
        name, kwargs = ujax.optax_arguments(spec)
        tx = getattr(ujax, name)(**kwargs)

        def additive_step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        def step(params, state, grads):
            return tx.step(grads, state, params)

        if mode == "eager":
            return tx, step
        # jit compiles once per spec, dtype and parameter shapes (streams share them)
        return tx, jax.jit(additive_step if mode == "optax" else step)

    def run(spec: Spec, params0: list[np.ndarray], grads_at: GradsAt, steps: int) -> Iterator[Snapshot]:
        if spec not in steps_of:
            steps_of[spec] = make_step(spec)
        tx, step = steps_of[spec]
        params = jax.device_put(params0, device)
        with jax.default_device(device):  # the transformation's tables and constants too
            state = tx.init(params)
        names = spec.slot_names()

        def snapshot() -> Snapshot:
            return (
                [np.array(p, copy=True) for p in params],
                [{n: np.array(state.slots[n][i], copy=True) for n in names} for i in range(len(params))],
            )

        yield snapshot()
        for t in range(1, steps + 1):
            grads = jax.device_put(grads_at(t), device)
            with jax.default_device(device):
                params, state = step(params, state, grads)
            yield snapshot()

    return run


_EAGER_STREAMS = ("normal", "huge", "zeros", "nonfinite", "mixed_shapes")
_ALL_BUT_LONG = ("normal", "tiny", "huge", "zeros", "sparse", "mixed_shapes", "nonfinite")

BACKEND = Backend(
    "jax",
    "jax",
    modes=("eager", "jit", "optax"),
    dtypes=("float32", "float64", "float16", "bfloat16"),
    make_runner=_make_runner,
    default_cells={
        "eager": (
            selection(
                ("normal", "huge", "zeros", "nonfinite", "mixed_shapes"), WIDE, half_streams=("normal",)
            ),
            "left to --full: eager runs the normal, huge, zeros, nonfinite and mixed_shapes streams "
            "in float32 and float64 and the normal stream in float16 and bfloat16 (op by op, about "
            "5 ms a step here); jit runs every stream",
        ),
        "jit": (
            selection(
                ("normal", "tiny", "huge", "zeros", "sparse", "mixed_shapes", "nonfinite", "long"), WIDE
            ),
            "jit compiles once per case, dtype and parameter set: float16 and bfloat16 are left to "
            "--full (eager runs them by default)",
        ),
        "optax": (
            selection(("normal", "huge", "nonfinite"), ("float32",)),
            "the optax row (apply_updates) covers the normal, huge and nonfinite streams in float32 "
            "by default; --full runs the rest (float64: at most 2 ulp, measured)",
        ),
    },
)
