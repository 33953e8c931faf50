"""The Keras-on-JAX backend: ``uniopt.keras``'s optimizers (``uniopt.keras.from_spec``) on Keras's JAX
backend, as a Keras user runs them, and Keras's own optimizers beside them. Modes:

- ``eager``: ``optimizer.apply(grads, variables)`` on Keras variables, each op of the rule run on its
  own (uniopt.jax's op-by-op namespace, as ``jax@eager``);
- ``jit``: ``jax.jit`` of ``optimizer.stateless_apply`` (what Keras's JAX trainer compiles in
  ``fit(jit_compile=True)``, its default there), one compiled program per batch stepping every
  optimizer of the batch; the rule runs on uniopt.jax's unfused namespace, as ``jax@jit``;
- ``native``: ``keras.optimizers.<Name>`` on the keras-convention cases, ``jax.jit`` of its
  ``stateless_apply`` (:func:`conformance.native.keras_jax_native_runner`).

The process runs Keras on JAX (``KERAS_BACKEND=jax``, set before Keras's first import: the backend
is process-global) at jax's defaults: Keras sets none of jax's configuration, and without
``jax_enable_x64`` jax has no float64, so this backend has no float64 cells (``jax@eager`` and
``jax@jit`` run them, with x64 on). uniopt.keras keeps the spec's learning rate exact there through
a float32 variable and Schedule-Free AdamW's float64 history as bits (docs/keras.md): the paths
these cells exercise. The rule runs on uniopt.jax's namespaces, the kernels of ``jax@eager`` and
``jax@jit``, whose bounds in the table (XLA's flush of subnormals, Muon's matrix products) these
modes take (:attr:`Backend.bounds_from`). ``--device gpu`` runs on jax's first GPU.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .backends import (
    Backend,
    Member,
    Runner,
    Snapshot,
    jax_device,
    keras_units,
    parity_in,
    per_convention_only,
    reduced_elsewhere,
    snapshots_of,
    split_flat,
    unit_arrays,
    units_of,
)
from .cells import Cell
from .native import import_keras, keras_jax_native_runner, keras_native_supports, keras_on

__all__ = ["BACKEND"]

KERAS_BACKEND = "jax"


def _prepare() -> str | None:
    """Keras on JAX in this process, at jax's defaults (x64 off, as Keras leaves it)."""
    import sys

    if "jax" in sys.modules and sys.modules["jax"].config.jax_enable_x64:
        return (
            "jax_enable_x64 is on in this process (the jax backend turns it on); Keras on JAX runs "
            "at jax's defaults: run keras_jax in a process of its own"
        )
    return keras_on(KERAS_BACKEND)()


NO_FLOAT64 = (
    "Keras on JAX runs at jax's defaults (Keras sets none of jax's configuration): without "
    "jax_enable_x64 jax has no float64; jax@eager and jax@jit run these cells, with x64 on"
)


def _supports(cell: Cell) -> str | None:
    return NO_FLOAT64 if cell.dtype == "float64" else None


def _make_runner(mode: str) -> Runner:
    if mode == "native":
        return keras_jax_native_runner()
    if mode not in ("eager", "jit"):
        raise ValueError(f"keras_jax backend has no mode {mode!r}")
    keras = import_keras(KERAS_BACKEND)
    import jax
    import jax.numpy as jnp

    if jax.config.jax_enable_x64:
        raise RuntimeError(_prepare())
    device = jax_device()

    def run(batch: Sequence[Member], steps: int) -> Iterator[list[Snapshot]]:
        units = units_of(batch)
        with jax.default_device(device):
            variables, opts = keras_units(keras, units, lambda p: p)
            # the values the step runs on: the variables' own (eager), or held out of them and
            # passed through stateless_apply, as Keras's JAX trainer holds them (jit)
            values = [[v.value for v in vs] for vs in variables]
            states = [[v.value for v in opt.variables] for opt in opts]
        where = [{id(v): i for i, v in enumerate(opt.variables)} for opt in opts]

        def step_all(states: list, grads: list, values: list) -> tuple[list, list]:
            new_values, new_states = [], []
            for opt, s, g, v in zip(opts, states, grads, values, strict=True):
                v, s = opt.stateless_apply(s, g, v)
                new_values.append(v)
                new_states.append(s)
            return new_values, new_states

        step = jax.jit(step_all)

        def arrays_of(values: list, states: list) -> list[list[Any]]:
            """Each unit's parameters and slots (the values of its slot variables; zeros for a slot
            kept in no variable, which the rule passes through: Muon's velocity of a Muon step)."""
            out = []
            for unit, opt, vs, ps, s, index in zip(
                units, opts, variables, values, states, where, strict=True
            ):
                slots = [
                    {
                        name: jnp.zeros_like(p) if var is None else s[index[id(var)]]
                        for name, var in opt.slots(v).items()
                    }
                    for v, p in zip(vs, ps, strict=True)
                ]
                out.append(unit_arrays(ps, slots, unit.spec.slot_names()))
            return out

        # one transfer per step: every array of the batch concatenated (a copy: no bits change; a
        # slot stored narrower widens exactly and is narrowed back exactly after the transfer)
        pack = jax.jit(
            lambda values, states: [
                jnp.concatenate([a.reshape(-1) for a in unit]) if unit else jnp.zeros(0)
                for unit in arrays_of(values, states)
            ]
        )
        shapes = [[tuple(a.shape) for a in unit] for unit in arrays_of(values, states)]
        dtypes = [[np.dtype(a.dtype) for a in unit] for unit in arrays_of(values, states)]

        def snapshot() -> list[Snapshot]:
            if mode == "eager":
                current = (
                    [[v.value for v in vs] for vs in variables],
                    [[v.value for v in opt.variables] for opt in opts],
                )
            else:
                current = values, states
            flat = jax.device_get(pack(*current))
            split = [split_flat(np.asarray(f), s) for f, s in zip(flat, shapes, strict=True)]
            split = [
                [a if a.dtype == d else a.astype(d) for a, d in zip(unit, ds, strict=True)]
                for unit, ds in zip(split, dtypes, strict=True)
            ]
            return snapshots_of(batch, units, split)

        yield snapshot()
        for t in range(1, steps + 1):
            grads = [jax.device_put(unit.grads(batch, t), device) for unit in units]
            with jax.default_device(device):
                if mode == "eager":
                    for opt, vs, gs in zip(opts, variables, grads, strict=True):
                        opt.apply(gs, vs)
                else:
                    values, states = step(states, grads, values)
            yield snapshot()

    return run


_REDUCED = reduced_elsewhere("jax@jit")

BACKEND = Backend(
    "keras_jax",
    "keras",
    modes=("eager", "jit", "native"),
    dtypes=("float32", "float64", "float16", "bfloat16"),
    make_runner=_make_runner,
    default_cells={
        # the rule's ops are uniopt.jax's, which jax@eager and jax@jit run on every case: here each
        # convention's first case proves Keras's path (variables, scalars, state) per mode
        "eager": per_convention_only(_REDUCED, "jax@eager and jax@jit"),
        "jit": per_convention_only(_REDUCED, "jax@jit"),
        "native": parity_in("keras@native (Keras's same optimizers on TensorFlow)"),
    },
    supports=_supports,
    supports_in={"native": keras_native_supports(KERAS_BACKEND)},
    bounds_from={"eager": ("jax", "eager"), "jit": ("jax", "jit")},
    prepare=_prepare,
    slowest=("jit", "eager"),
    slot_dtypes=True,
)
