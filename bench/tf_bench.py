"""uniopt.tf against Keras 3 (TensorFlow backend): ``tf.function`` and ``tf.function(jit_compile=True)``.

Keras has no RAdam; uniopt.tf.RAdam is compared with Keras's Adam, the closest native step (likewise
any optimizer Keras lacks)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .common import NOT_MEASURED, Copy, ParamSet, PeakProbe, Variant, bench_hyperparameters

FRAMEWORK = "tf"


def _optimizers() -> dict[str, tuple[str, dict[str, Any]]]:
    """optimizer -> (Keras class standing in as the native: the table's ``KerasNames.native``, or
    Keras's Adam where Keras has none; keyword arguments both accept, by Keras name)."""
    from uniopt.registry import get

    out = {}
    for name, hyper in bench_hyperparameters().items():
        if get(name).skip_reason("tf") is not None:  # uniopt.tf does not run it (yet)
            continue
        keras_names = get(name).keras
        native = (keras_names.native if keras_names is not None else None) or "Adam"
        out[name] = (native, {("learning_rate" if k == "lr" else k): v for k, v in hyper.items()})
    return out


OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = _optimizers()


def unavailable(device: str) -> str:
    """Why the benchmark cannot run on ``device`` (empty: it can)."""
    import tensorflow as tf

    if device == "gpu" and not tf.config.list_physical_devices("GPU"):
        return "TensorFlow sees no GPU (nox installs tensorflow-cpu; set UNIOPT_TF_SPEC for a GPU build)"
    return ""


def versions(device: str = "cpu") -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }


def peak_probe(device: str) -> PeakProbe:
    """Not measured on the GPU."""
    return NOT_MEASURED


def device_sync(device: str) -> Callable[[], None]:
    """The bound's copies are NumPy's (synchronous)."""
    return lambda: None


def _refuses_xla(exc: Exception) -> bool:
    """uniopt.tf's refusal of ``jit_compile`` (per-step scalars from the host; docs/tf.md)."""
    return isinstance(exc, ValueError) and "jit_compile" in str(exc)


LOWER_PRECISION_STATE: dict[str, dict[str, str]] = {"Adam": {"exp_avg": "bfloat16"}}
"""Optimizers also timed with a lower-precision state: their ``state_dtypes``. Keras has no Adam
with a bfloat16 first moment, so these rows have no native of their own."""

NATIVES_CONVENTION: dict[str, str] = {"ScheduleFreeAdamW": "keras"}
"""Optimizers whose uniopt default runs another algorithm than the Keras native (Schedule-Free
AdamW: the authors' weighting of the average, against Keras's uniform one), also timed with the
convention that runs the native's own algorithm."""

TRACE_LIMIT_TENSORS = 64
"""Above this many tensors the non-elementwise optimizers (Adafactor, LAMB, Muon) are not traced,
uniopt.tf's or Keras's. uniopt.tf's fixed-order reductions are a split and an addition per halving
in the graph: measured at 200 float32 tensors of 20x25 (TensorFlow 2.21, one ``tf.function``
step), Adafactor 369 ops, 5.1 MB of memory and 0.26 s of tracing per tensor (Keras's Adafactor 79
ops, 1.1 MB, 0.07 s), LAMB 153 ops, 2.1 MB and 0.08 s (Keras's 63, 0.9 MB, 0.03 s); when each
halving was two slices, Adafactor 562 ops, 8.6 MB and 0.39 s, LAMB 259 ops, 4.0 MB and 0.15 s. On
the 2000-tensor set, then, the benchmark process ran the 24 GiB machine out of memory twice:
tracing uniopt.tf's Adafactor, and compiling Keras's LAMB under ``jit_compile`` after Keras's
Adafactor (every variant of a run lives in one process)."""


def _variable_bytes(opt: Any) -> int:
    """Bytes of an optimizer's variables, by each one's dtype (bfloat16 slots count 2 bytes)."""
    import tensorflow as tf

    return sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in opt.variables)


def _variant(
    name: str, kind: str, make: Callable[[], Any], jit: bool, skip: str = "", note: str = ""
) -> Variant:
    holder: dict[str, Any] = {}

    def build(params: list[np.ndarray], grads: list[np.ndarray]) -> Callable[[], None]:
        import keras
        import tensorflow as tf

        opt = holder["opt"] = make()
        variables = holder["vars"] = [keras.Variable(a) for a in params]
        gs = [tf.constant(g) for g in grads]
        opt.build(variables)

        @tf.function(jit_compile=jit)
        def apply() -> None:
            opt.apply(gs, variables)

        return lambda: apply()

    def state_bytes() -> int:
        return _variable_bytes(holder["opt"])

    def sync() -> None:
        holder["vars"][0].numpy()  # tf runs ops synchronously on CPU; this is a cheap barrier

    refusal = _refuses_xla if jit else (lambda exc: False)
    return Variant(
        name, kind, build, state_bytes=state_bytes, sync=sync, refusal=refusal, skip=skip, note=note
    )


def variants(optimizer: str, pset: ParamSet, options: dict[str, Any]) -> list[Variant]:
    import keras

    import uniopt.tf as utf

    native, kwargs = OPTIMIZERS[optimizer]
    ours = getattr(utf, optimizer)
    theirs = getattr(keras.optimizers, native)
    skip = ""
    if not ours.spec_class.elementwise and len(pset.shapes) > TRACE_LIMIT_TENSORS:
        skip = (
            f"not run on {len(pset.shapes)} tensors: traced per tensor, uniopt.tf's fixed-order "
            "reductions took 2 to 5 MB of memory each (150 to 370 graph ops), and the process ran "
            "24 GiB out of memory there"
        )
    narrow = LOWER_PRECISION_STATE.get(optimizer, {})
    shown = ", ".join(f"{slot!r}: {dtype!r}" for slot, dtype in narrow.items())
    out = []
    for jit, label in ((False, "tf.function"), (True, "jit_compile")):
        out.append(
            _variant(
                f"uniopt.tf.{optimizer} ({label})",
                "uniopt" if jit else "uniopt-mode",
                lambda: ours(**kwargs),
                jit,
                skip,
            )
        )
        out.append(
            _variant(f"keras.optimizers.{native} ({label})", "native", lambda: theirs(**kwargs), jit, skip)
        )
        if optimizer in NATIVES_CONVENTION:  # the native's algorithm, side by side with it
            convention = NATIVES_CONVENTION[optimizer]
            out.append(
                _variant(
                    f"uniopt.tf.{optimizer}(convention={convention!r}) ({label})",
                    "uniopt-mode",
                    functools.partial(ours, convention=convention, **kwargs),
                    jit,
                    skip,
                )
            )
        if narrow:  # the state bytes a bfloat16 first moment saves, and what it costs a step
            out.append(
                _variant(
                    f"uniopt.tf.{optimizer}(state_dtypes={{{shown}}}) ({label})",
                    "uniopt-mode",
                    lambda: ours(state_dtypes=narrow, **kwargs),
                    jit,
                    skip,
                    note="lower-precision state; Keras has none",
                )
            )
    return out


SPARSE_OPTIMIZERS: dict[str, dict[str, Any]] = {
    "SGD": {"learning_rate": 1e-2},
    "Adagrad": {"learning_rate": 1e-3},
}
"""The sparse set's optimizers (those Keras and uniopt.tf update by scatter from an
``IndexedSlices`` gradient) with Keras's default learning rates, for both; uniopt.tf under the keras
convention."""


def sparse_variants(optimizer: str, options: dict[str, Any]) -> list[Variant]:
    """uniopt.tf (keras convention) against Keras on the sparse set: the same ``IndexedSlices``
    gradient each step, applied in ``tf.function`` and eagerly."""
    import keras
    import tensorflow as tf

    import uniopt.tf as utf

    kwargs = SPARSE_OPTIMIZERS[optimizer]

    def variant(name: str, kind: str, make: Callable[[], Any], function: bool) -> Variant:
        holder: dict[str, Any] = {}

        def build(params: list[np.ndarray], grads: list[Any]) -> Callable[[], None]:
            indices, values = grads[0]
            opt = holder["opt"] = make()
            var = keras.Variable(params[0])
            grad = tf.IndexedSlices(tf.constant(values), tf.constant(indices), tf.constant(params[0].shape))
            opt.build([var])

            def apply() -> None:
                opt.apply([grad], [var])

            return tf.function(apply) if function else apply

        def state_bytes() -> int:
            return _variable_bytes(holder["opt"])

        return Variant(name, kind, build, state_bytes=state_bytes)

    out = []
    for function, label in ((True, "tf.function"), (False, "eager")):
        out.append(
            variant(
                f"uniopt.tf.{optimizer} ({label})",
                "uniopt" if function else "uniopt-mode",
                lambda: getattr(utf, optimizer)(convention="keras", **kwargs),
                function,
            )
        )
        out.append(
            variant(
                f"keras.optimizers.{optimizer} ({label})",
                "native",
                lambda: getattr(keras.optimizers, optimizer)(**kwargs),
                function,
            )
        )
    return out


def copies(device: str = "cpu") -> dict[str, Copy]:
    """NumPy's copy on the CPU; no bound is measured for a GPU run (a host copy is no GPU bound)."""
    from .common import numpy_copy

    return {"numpy copyto": numpy_copy} if device == "cpu" else {}
