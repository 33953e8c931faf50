"""The TensorFlow backend: the real ``uniopt.tf`` Keras optimizers, driven by ``apply_gradients``.

Modes: ``eager``; ``function`` (the step inside ``tf.function``, where every group of variables
uniopt.tf steps stacked is stacked, ``uniopt.tf._binding.GROUP_MIN_VARIABLES = 1`` and no
``GROUP_MAX_ELEMENTS``); ``xla``
(``tf.function(jit_compile=True)``). TensorFlow is imported only when a runner is made.

XLA on CPU contracts ``a*b + c*d`` into FMA and lowers ``max`` without NaN propagation by default,
so the runner sets ``uniopt.tf.xla.XLA_BITWISE_FLAGS`` in ``XLA_FLAGS`` before the process's first XLA
compilation (XLA reads the flags then) and checks that they took effect. ``UNIOPT_TF_XLA_FLAGS``
replaces them (an empty value measures XLA's defaults); see docs/tf.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np

from .backends import (
    REDUCING_STREAMS,
    Backend,
    Member,
    Runner,
    Snapshot,
    float32_every_case,
    keras_optimizers,
    parity_for_natives,
    per_convention_only,
    reduced_elsewhere,
    requested_device,
    snapshots_of,
    split_flat,
    training_dtypes_only,
    unit_arrays,
    units_of,
)
from .streams import dtype_of

__all__ = ["BACKEND"]

_checked: list[bool] = []


def _xla_flags() -> str:
    """Request the bitwise XLA flags (or ``UNIOPT_TF_XLA_FLAGS``) before any XLA compilation."""
    from uniopt.tf.xla import XLA_BITWISE_FLAGS, request_bitwise_xla

    wanted = os.environ.get("UNIOPT_TF_XLA_FLAGS", XLA_BITWISE_FLAGS)
    request_bitwise_xla(wanted)
    return wanted


def _check_xla_flags(wanted: str) -> None:
    """Fail loudly if XLA was initialised before the flags were set (they would be ignored)."""
    from uniopt.tf.xla import XLA_BITWISE_FLAGS, xla_is_bitwise

    if wanted == XLA_BITWISE_FLAGS and not _checked:
        if not xla_is_bitwise():
            raise RuntimeError(
                f"XLA_FLAGS={os.environ.get('XLA_FLAGS')!r} did not take effect: XLA was already "
                "initialised in this process; set XLA_FLAGS before the first XLA compilation"
            )
        _checked.append(True)


def _make_runner(mode: str) -> Runner:
    wanted = _xla_flags()
    device = "/GPU:0" if requested_device() == "gpu" else "/CPU:0"

    def run(batch: Sequence[Member], steps: int) -> Iterator[list[Snapshot]]:
        import tensorflow as tf

        if device == "/GPU:0" and not tf.config.list_physical_devices("GPU"):
            raise RuntimeError("--device gpu: TensorFlow sees no GPU")
        if mode == "xla":
            _check_xla_flags(wanted)
        if mode == "function":
            # every group of variables that uniopt.tf steps stacked in tf.function is stacked here,
            # however few and large its variables (a unit holds a few, of different shapes), so that this
            # mode's cells prove the stacked step; SGD without momentum and the specs that are
            # not elementwise keep the per-variable step, as do tf@eager and tf@xla
            from uniopt.tf import _binding

            _binding.GROUP_MIN_VARIABLES = 1
            _binding.GROUP_MAX_ELEMENTS = None
        units = units_of(batch)
        with tf.device(device):
            # one Keras optimizer per unit over its members' variables; one training step applies
            # them all (in function and xla modes one traced, and compiled, program per batch)
            variables = [[tf.Variable(p) for p in unit.params0] for unit in units]
            opts = keras_optimizers(units, variables)

            def step_all(grads: list) -> None:
                for opt, vs, gs in zip(opts, variables, grads, strict=True):
                    opt.apply_gradients(zip(gs, vs, strict=True))

            if mode == "function":
                step_all = tf.function(step_all)
            elif mode == "xla":
                step_all = tf.function(step_all, jit_compile=True)
            arrays = [
                unit_arrays(vs, [_slots_of(opt, v) for v in vs], unit.spec.slot_names())
                for unit, opt, vs in zip(units, opts, variables, strict=True)
            ]
            shapes = [[tuple(a.shape) for a in unit] for unit in arrays]
            dtypes = [[tf.as_dtype(a.dtype) for a in unit] for unit in arrays]
            # one call reads every parameter and slot, concatenated (a copy: no bits change; a slot
            # stored narrower, state_dtypes, widens exactly to the first array's dtype and is
            # narrowed back exactly)
            read = tf.function(
                lambda: [
                    tf.concat([tf.reshape(tf.cast(a, ds[0]), [-1]) for a in unit], 0)
                    if unit
                    else tf.zeros([0])
                    for unit, ds in zip(arrays, dtypes, strict=True)
                ]
            )
            stored = [[_to_numpy(tf.zeros([0], d)).dtype for d in ds] for ds in dtypes]

            def snapshot(read_out: list | None = None) -> list[Snapshot]:
                read_out = read() if read_out is None else read_out
                flat = [split_flat(_to_numpy(f), s) for f, s in zip(read_out, shapes, strict=True)]
                flat = [
                    [a if a.dtype == d else a.astype(d) for a, d in zip(unit, ds, strict=True)]
                    for unit, ds in zip(flat, stored, strict=True)
                ]
                return snapshots_of(batch, units, flat)

            if mode == "function":
                # the step and the read in one traced call: half the calls of a long stream (20000
                # steps), each a Python-to-graph dispatch; the read follows the step's assignments
                # (tf.function's automatic control dependencies), as a separate call would
                advance = tf.function(lambda grads: (step_all(grads), read())[1])
            else:

                def advance(grads: list) -> None:  # the step; snapshot() reads after it
                    step_all(grads)

            yield snapshot()
            for t in range(1, steps + 1):
                yield snapshot(advance([[tf.constant(g) for g in unit.grads(batch, t)] for unit in units]))

    return run


def _slots_of(opt, variable) -> dict:
    """The optimizer's slot variables of ``variable``; a slot it keeps no variable for (Muon's
    ``velocity`` of a variable its Muon step takes, as Keras keeps none) is the spec's initial
    value, zeros, which the rule passes through unchanged."""
    import tensorflow as tf

    return {name: tf.zeros_like(variable) if v is None else v for name, v in opt.slots(variable).items()}


def _to_numpy(tensor) -> np.ndarray:
    value = tensor.numpy()
    return value.view(dtype_of("bfloat16")) if value.dtype.name == "bfloat16" else np.array(value, copy=True)


_REDUCED = reduced_elsewhere("tf@function")

_REDUCED_XLA = reduced_elsewhere("tf@function", streams=(*REDUCING_STREAMS, "large"))
"""tf@xla's cells of an optimizer that is not elementwise: those of :data:`_REDUCED` and the
``large`` stream (Adafactor and LAMB there), whose arrays are the ones whose pairwise sums uniopt.tf
halves by gathering under XLA (``uniopt.tf.xp.uniopt_odd_halving``: 32,768 elements or more, or
padding that would reach a page past an array's end); a few seconds."""

BACKEND = Backend(
    "tf",
    "tensorflow",
    modes=("eager", "function", "xla"),
    dtypes=("float32", "float64", "float16", "bfloat16"),
    make_runner=_make_runner,
    default_cells={
        "eager": per_convention_only(_REDUCED, "tf@function"),
        "function": float32_every_case(
            parity_for_natives("tf@function"), "torch@eager, torch@loop and the NumPy reference"
        ),
        # XLA compiles every case in jax@jit; uniopt.tf's ops run every case in tf@function
        "xla": per_convention_only(
            training_dtypes_only(_REDUCED_XLA, "tf@eager and tf@function"), "tf@function and jax@jit"
        ),
    },
    slowest=("xla", "function"),
    slot_dtypes=True,
)
"""Adagrad's weight_decay/zeros cells pass through subnormal numbers, which TensorFlow's CPU kernels
flush to zero in every mode: they carry the registry's stated bound (``tf:weight_decay/zeros``)."""
