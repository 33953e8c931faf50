"""The Keras-on-torch backend: ``uniopt.keras``'s optimizers (``uniopt.keras.from_spec``) on Keras's
torch backend, as a Keras user runs them, and Keras's own optimizers beside them. Modes:

- ``eager``: ``optimizer.apply(grads, variables)`` under ``torch.no_grad()``, as Keras's torch
  trainer calls it (``fit``'s default there: ``jit_compile="auto"`` is eager on torch); the rule
  runs per variable on uniopt.torch's namespace, the per-tensor rule of ``torch@loop``;
- ``native``: ``keras.optimizers.<Name>`` on the keras-convention cases, ``apply`` under
  ``torch.no_grad()`` (:func:`conformance.native.keras_torch_native_runner`).

No compiled mode (``torch.compile`` of the step, what Keras's torch trainer runs with
``jit_compile=True``): there dynamo traces the binding's host computation of the step's scalars
(``uniopt.keras._torch.scalars``) and specialises it on the step count, so every step recompiles
(measured: Adam's two float32 cells of 50 steps took 64 s, against 1.5 s for all 39 of Adam's eager
cells; past dynamo's recompile limit, 8 by default, ``fit`` falls back to running that code
eagerly), and a bfloat16 variable fails to trace (dynamo's NumPy has no bfloat16).
``fit(jit_compile=True)`` on torch is checked bitwise for 7 float32 steps of every row in
``tests/keras_adapter/test_rows.py``.

The process runs Keras on torch (``KERAS_BACKEND=torch``, set before Keras's first import: the
backend is process-global). The rule runs on uniopt.torch's namespace, the kernels of
``torch@loop``, whose bounds in the table (Muon's matrix products) this mode takes
(:attr:`Backend.bounds_from`). ``--device gpu`` runs on torch's CUDA device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from .backend_torch import _gather, to_torch
from .backends import (
    Backend,
    Member,
    Runner,
    Snapshot,
    keras_units,
    parity_in,
    per_convention_only,
    reduced_elsewhere,
    snapshots_of,
    torch_device,
    unit_arrays,
    units_of,
)
from .native import import_keras, keras_native_supports, keras_on, keras_torch_native_runner

__all__ = ["BACKEND"]

KERAS_BACKEND = "torch"


def _make_runner(mode: str) -> Runner:
    if mode == "native":
        return keras_torch_native_runner()
    if mode != "eager":
        raise ValueError(f"keras_torch backend has no mode {mode!r}")
    keras = import_keras(KERAS_BACKEND)
    import torch

    device = torch_device()

    def run(batch: Sequence[Member], steps: int) -> Iterator[list[Snapshot]]:
        units = units_of(batch)
        with keras.device(device):
            variables, opts = keras_units(keras, units, to_torch)

        def snapshot() -> list[Snapshot]:
            arrays = []
            for unit, opt, vs in zip(units, opts, variables, strict=True):
                # a slot kept in no variable (Muon's velocity of a Muon step) is the zeros the rule
                # passes through
                slots = [
                    {
                        name: torch.zeros_like(v.value) if s is None else s.value
                        for name, s in opt.slots(v).items()
                    }
                    for v in vs
                ]
                arrays.append(_gather(unit_arrays([v.value for v in vs], slots, unit.spec.slot_names())))
            return snapshots_of(batch, units, arrays)

        with keras.device(device):
            yield snapshot()
            for t in range(1, steps + 1):
                grads = [[to_torch(g).to(device) for g in unit.grads(batch, t)] for unit in units]
                with torch.no_grad():  # as Keras's torch trainer applies the gradients
                    for opt, vs, gs in zip(opts, variables, grads, strict=True):
                        opt.apply(gs, vs)
                yield snapshot()

    return run


BACKEND = Backend(
    "keras_torch",
    "keras",
    modes=("eager", "native"),
    dtypes=("float32", "float64", "float16", "bfloat16"),
    make_runner=_make_runner,
    default_cells={
        # the rule's ops are uniopt.torch's, which torch@loop runs on every case: here each
        # convention's first case proves Keras's path (variables, scalars, state)
        "eager": per_convention_only(reduced_elsewhere("torch@loop"), "torch@loop"),
        "native": parity_in("keras@native (Keras's same optimizers on TensorFlow)"),
    },
    supports_in={"native": keras_native_supports(KERAS_BACKEND)},
    bounds_from={"eager": ("torch", "loop")},
    prepare=keras_on(KERAS_BACKEND),
    slot_dtypes=True,
)
