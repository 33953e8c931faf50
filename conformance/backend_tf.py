"""The TensorFlow backend: the real ``uniopt.tf`` Keras optimizers, driven by ``apply_gradients``.

Modes: ``eager``; ``function`` (the step inside ``tf.function``); ``xla``
(``tf.function(jit_compile=True)``). TensorFlow is imported only when a runner is made.

XLA on CPU contracts ``a*b + c*d`` into FMA and lowers ``max`` without NaN propagation by default,
so the runner sets ``uniopt.tf.xla.XLA_BITWISE_FLAGS`` in ``XLA_FLAGS`` before the process's first XLA
compilation (XLA reads the flags then) and checks that they took effect. ``UNIOPT_TF_XLA_FLAGS``
replaces them (an empty value measures XLA's defaults); see docs/tf.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from uniopt import Spec

from .backends import Backend, GradsAt, Runner, Snapshot, requested_device, selection
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
    # One optimizer, its variables and its compiled step per (spec, dtype, shapes), shared by the
    # streams over the same parameter set: every cell starts from fresh values (the spec's initial
    # slots, step 0), so tracing and XLA compilation happen once per group rather than per cell.
    prepared: dict[tuple, tuple] = {}

    def prepare(spec: Spec, params0: list[np.ndarray]) -> tuple:
        import tensorflow as tf

        import uniopt.tf

        key = (spec, tuple((p.dtype.str, p.shape) for p in params0))
        if key not in prepared:
            variables = [tf.Variable(p) for p in params0]
            opt = uniopt.tf.from_spec(spec)
            opt.build(variables)

            def step(grads: list) -> None:
                opt.apply_gradients(zip(grads, variables, strict=True))

            if mode == "function":
                step = tf.function(step)
            elif mode == "xla":
                step = tf.function(step, jit_compile=True)
            state = [(v, opt.slots(v)) for v in variables]
            # one call reads every parameter and slot (snapshots are taken after every step)
            read = tf.function(
                lambda: [
                    [tf.convert_to_tensor(v), [tf.convert_to_tensor(s) for s in slots.values()]]
                    for v, slots in state
                ]
            )
            prepared[key] = (opt, variables, step, read)
        opt, variables, step, read = prepared[key]
        for v, p in zip(variables, params0, strict=True):
            v.assign(p)
            for name, slot in opt.slots(v).items():
                slot.assign(spec.init_slot(name, tf.zeros_like(v), uniopt.tf.xp))
        opt.iterations.assign(0)
        return step, read

    def run(spec: Spec, params0: list[np.ndarray], grads_at: GradsAt, steps: int) -> Iterator[Snapshot]:
        import tensorflow as tf

        if device == "/GPU:0" and not tf.config.list_physical_devices("GPU"):
            raise RuntimeError("--device gpu: TensorFlow sees no GPU")
        if mode == "xla":
            _check_xla_flags(wanted)
        names = spec.slot_names()
        with tf.device(device):
            step, read = prepare(spec, params0)

            def snapshot() -> Snapshot:
                values = read()
                return (
                    [_to_numpy(p) for p, _ in values],
                    [dict(zip(names, (_to_numpy(s) for s in slots), strict=True)) for _, slots in values],
                )

            yield snapshot()
            for t in range(1, steps + 1):
                step([tf.constant(g) for g in grads_at(t)])
                yield snapshot()

    return run


def _to_numpy(tensor) -> np.ndarray:
    value = tensor.numpy()
    return value.view(dtype_of("bfloat16")) if value.dtype.name == "bfloat16" else np.array(value, copy=True)


SUBNORMAL_CELLS = {
    ("Adagrad", "weight_decay", "zeros", "float32"),
    ("Adagrad", "weight_decay", "zeros", "bfloat16"),
}
"""Cells whose reference passes through subnormal numbers, which TensorFlow's CPU kernels flush to
zero (FTZ/DAZ, in every mode, with no switch): measured 49472240 ulp (float32) and 672 ulp
(bfloat16), from step 24 and 23. Left to ``--full``, where they show as FAIL."""

_FTZ = (
    "; and cells whose reference passes through subnormals, which TensorFlow flushes to zero on CPU "
    "(FTZ/DAZ, no switch): Adagrad/weight_decay/zeros float32 (49472240 ulp) and bfloat16 (672)"
)


_WIDE = ("float32", "float64")


def _selects(
    streams: tuple[str, ...] | None, dtypes: tuple[str, ...] | None = None, half: tuple[str, ...] = ()
):
    chosen = selection(streams, dtypes, half)

    def selects(cell) -> bool:
        if (cell.optimizer, cell.case, cell.stream, cell.dtype) in SUBNORMAL_CELLS:
            return False
        return chosen(cell)

    return selects


_QUICK = ("normal", "nonfinite", "mixed_shapes")

BACKEND = Backend(
    "tf",
    "tensorflow",
    modes=("eager", "function", "xla"),
    dtypes=("float32", "float64", "float16", "bfloat16"),
    make_runner=_make_runner,
    default_cells={
        "eager": (
            _selects(("normal", "nonfinite"), ("float32",), half=("normal",)),
            "left to --full: eager runs the normal and nonfinite streams in float32 and the normal "
            "stream in float16 and bfloat16 by default (Keras's eager apply costs about 12 ms a step "
            "here; function runs every stream in float32 and float64)" + _FTZ,
        ),
        "function": (
            _selects(None, _WIDE),
            "left to --full: float16, bfloat16 and the 20k-step long stream (a graph per case, dtype "
            "and parameter set; the long stream about 2 min here)" + _FTZ,
        ),
        "xla": (
            _selects(("normal", "nonfinite"), ("float32",)),
            "left to --full: xla runs the normal and nonfinite streams in float32 by default (an XLA "
            "compilation per case, dtype and parameter set, about 2 s each here)" + _FTZ,
        ),
    },
)
