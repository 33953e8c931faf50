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

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from uniopt import Spec
from uniopt.registry import get as get_info

from .backends import (
    Backend,
    Member,
    Runner,
    Snapshot,
    float32_every_case,
    jax_device,
    parity_for_natives,
    per_convention_only,
    reduced_elsewhere,
    snapshots_of,
    split_flat,
    training_dtypes_only,
    unit_arrays,
    units_of,
)

__all__ = ["BACKEND"]


def _elementwise(spec: Spec) -> bool:
    """Whether the table says ``spec``'s optimizer is elementwise (a spec outside it: not)."""
    try:
        return get_info(spec.name).elementwise
    except KeyError:
        return False


def _make_runner(mode: str) -> Runner:
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 cells; float32 arrays stay float32
    import jax.numpy as jnp
    import optax

    import uniopt.jax as ujax

    if mode not in ("eager", "jit", "optax"):
        raise ValueError(f"jax backend has no mode {mode!r}")
    device = jax_device()

    def transformation(spec: Spec, slot_dtypes: dict[str, str]) -> Any:
        name, kwargs = ujax.optax_arguments(spec)
        if slot_dtypes:  # optax's mu_dtype / accumulator_dtype: one dtype for the spec's narrow slots
            (dtype,) = set(slot_dtypes.values())
            arg = next(a for a in ujax.POSITIONAL[name] if a in ("mu_dtype", "accumulator_dtype"))
            kwargs[arg] = dtype
        return getattr(ujax, name)(**kwargs)

    compiled: dict[Any, Any] = {}  # (spec, slot dtypes) -> its transformation and jitted step

    def step_of(tx: Any) -> Callable[[list, Any, list], tuple[list, Any]]:
        def step_one(p: list, s: Any, g: list) -> tuple[list, Any]:
            if mode == "optax":
                updates, s = tx.update(g, s, p)
                return optax.apply_updates(p, updates), s
            return tx.step(g, s, p)

        return step_one

    def alone(spec: Spec, slot_dtypes: dict[str, str]) -> tuple[Any, Any]:
        """The transformation of a spec that is not elementwise and its step, compiled once per
        shapes and reused by every member (and batch) with them."""
        key = (spec, tuple(sorted(slot_dtypes.items())))
        if key not in compiled:
            tx = transformation(spec, slot_dtypes)
            compiled[key] = tx, (step_of(tx) if mode == "eager" else jax.jit(step_of(tx)))
        return compiled[key]

    def run(batch: Sequence[Member], steps: int) -> Iterator[list[Snapshot]]:
        # an elementwise optimizer's members stacked per spec, all in one compiled program; one that
        # is not elementwise a unit per member, each spec and shapes its own program
        units = units_of(batch, per_member=True)
        together = [i for i, unit in enumerate(units) if _elementwise(unit.spec)]
        txs, steps_alone = [], {}
        for i, unit in enumerate(units):
            if i in together:
                txs.append(transformation(unit.spec, unit.slot_dtypes))
            else:
                tx, steps_alone[i] = alone(unit.spec, unit.slot_dtypes)
                txs.append(tx)
        one_step = [step_of(txs[i]) for i in together]

        def step_together(params: list, states: list, grads: list) -> list:
            return [fn(p, s, g) for fn, p, s, g in zip(one_step, params, states, grads, strict=True)]

        compiled_together = step_together if mode == "eager" else jax.jit(step_together)

        def step(params: list, states: list, grads: list) -> tuple[list, list]:
            out = dict(
                zip(
                    together,
                    compiled_together(*([x[i] for i in together] for x in (params, states, grads))),
                    strict=True,
                )
            )
            for i, fn in steps_alone.items():
                out[i] = fn(params[i], states[i], grads[i])
            return [out[i][0] for i in range(len(units))], [out[i][1] for i in range(len(units))]

        params = [jax.device_put(list(unit.params0), device) for unit in units]
        with jax.default_device(device):  # the transformations' tables and constants too
            states = [tx.init(p) for tx, p in zip(txs, params, strict=True)]

        def arrays_of(params: list, states: list) -> list[list]:
            return [
                unit_arrays(
                    p,
                    [{n: s.slots[n][i] for n in unit.spec.slot_names()} for i in range(len(p))],
                    unit.spec.slot_names(),
                )
                for unit, p, s in zip(units, params, states, strict=True)
            ]

        # one transfer per step: every array of the batch concatenated (a copy: no bits change; a
        # slot stored narrower widens exactly and is narrowed back exactly after the transfer)
        pack = jax.jit(
            lambda params, states: [
                jnp.concatenate([a.reshape(-1) for a in unit]) if unit else jnp.zeros(0)
                for unit in arrays_of(params, states)
            ]
        )
        shapes = [[tuple(a.shape) for a in unit] for unit in arrays_of(params, states)]
        dtypes = [[np.dtype(a.dtype) for a in unit] for unit in arrays_of(params, states)]

        def snapshot() -> list[Snapshot]:
            flat = jax.device_get(pack(params, states))
            split = [split_flat(np.asarray(f), s) for f, s in zip(flat, shapes, strict=False)]
            split = [
                [a if a.dtype == d else a.astype(d) for a, d in zip(unit, ds, strict=True)]
                for unit, ds in zip(split, dtypes, strict=False)
            ]
            return snapshots_of(batch, units, split)

        yield snapshot()
        for t in range(1, steps + 1):
            grads = [jax.device_put(unit.grads(batch, t), device) for unit in units]
            with jax.default_device(device):
                params, states = step(params, states, grads)
            yield snapshot()

    return run


_REDUCED = reduced_elsewhere("jax@jit")

BACKEND = Backend(
    "jax",
    "jax",
    modes=("eager", "jit", "optax"),
    dtypes=("float32", "float64", "float16", "bfloat16"),
    make_runner=_make_runner,
    default_cells={
        "eager": per_convention_only(_REDUCED, "jax@jit"),
        "jit": float32_every_case(
            parity_for_natives("jax@jit"), "torch@eager, torch@loop and the NumPy reference"
        ),
        "optax": per_convention_only(training_dtypes_only(_REDUCED, "jax@eager and jax@jit"), "jax@jit"),
    },
    slowest=("jit", "optax"),
    slot_dtypes=True,
)
