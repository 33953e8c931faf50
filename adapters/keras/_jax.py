"""The JAX binding of the uniopt Keras optimizers (:mod:`uniopt.keras._binding` says what a binding
provides), on uniopt.jax's numerics (:mod:`uniopt.jax._transform`).

Keras's JAX trainer calls ``optimizer.stateless_apply`` inside ``jax.jit``: the variables, the step
count (``iterations``) and the learning rate are tracers there. The rule runs on uniopt.jax's
namespaces: eagerly each op compiled on its own (``_OpByOp``), and ``_Unfused`` whenever jax traces,
whatever the arrays at hand (every product rounded on its own behind an integer no-op that XLA
cannot fold, so that it cannot contract ``a*b + c`` into a fused multiply-add; roots kept roots;
NumPy's ``sign``), so the steps are bitwise the NumPy reference's. The no-op's zero comes from the
traced step count; where the step count is a constant of the traced program (a ``jax.jit`` closing
over the optimizer's variables, ``lax.cond`` of eager code as Keras's ``LossScaleOptimizer`` runs
it) from the host, in one ``jax.pure_callback``. Slots are made by ``init_slot`` on ``_SLOT_XP``.

The step's scalars (the spec's ``step_scalars`` rounded once to the variable's dtype, as the NumPy
reference has them):

* eagerly, computed on the host for ``iterations + 1`` and the learning rate's value; so too while
  jax traces with a concrete step count and learning rate, each value then passed through the
  no-op (a constant would let XLA turn a division by it into a product by its reciprocal);
* traced, at the spec's own learning rate: row ``min(t, T)`` of
  :func:`uniopt.scalar_table.scalar_table` gathered by the traced step count; at any other (a
  schedule's, one set with ``optimizer.learning_rate = x``) or for scalars without a limit
  (Adagrad's ``lr_decay``), the host's in one ``jax.pure_callback`` per step, dtype and spec
  (``lax.cond`` picks which at run time; flags always come from the table where it exists).

Keras sets nothing of jax's configuration: without ``jax_enable_x64`` there is no float64, so a
float learning rate is held in a float32 variable (Keras's own dtype there) and read as the spec's
``lr`` (exactly, float64) while that variable holds ``float32(spec.lr)``; a learning rate set
later is the float32 value the variable holds. Schedule-Free AdamW's history (float64 fields) is
kept as each field's 64 bits in a ``uint32`` pair. With ``jax_enable_x64`` both are float64, as
on TensorFlow. No update math lives here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import keras
import numpy as np
from jax import lax
from keras.src.backend.common.stateless_scope import in_stateless_scope

from uniopt import Spec
from uniopt.jax._transform import (
    _OP_BY_OP,
    _SLOT_XP,
    _constant_lr_columns,
    _packed,
    _packed_shapes,
    _Unfused,
    _unpacked,
    hidden,
    host_zero,
    under_trace,
)
from uniopt.scalar_table import NotConvergentError

from ._binding import assign_each, float64_history_variables, keras_dtype_name

_X64 = bool(jax.config.jax_enable_x64)

EXACT_LR_DTYPE = "float64" if _X64 else "float32"
"""The dtype of the variable holding a float learning rate: float64 only with ``jax_enable_x64``
(see the module docstring for how the spec's ``lr`` is kept exact without it)."""
MODE_DTYPE = "int64" if _X64 else "int32"
SCALARS_BEFORE_THE_LOOP = False  # each update_step takes its scalars (no before_update_loop)


def as_array(x: Any, dtype: Any = None) -> jax.Array:
    """``x`` (a Keras variable, read in the current stateless scope, an array, a BCOO gradient
    densified) as a jax array, cast to ``dtype``."""
    if isinstance(x, jax.experimental.sparse.BCOO):
        x = x.todense()
    array = keras.ops.convert_to_tensor(x)
    if dtype is not None and jnp.dtype(array.dtype) != jnp.dtype(dtype):
        array = array.astype(dtype)
    return array


def zeros(shape: Any, dtype: Any) -> jax.Array:
    return jnp.zeros(shape, dtype)


dtype_name = keras_dtype_name


def is_variable(value: Any) -> bool:
    return False


def _tracing(*values: Any) -> bool:
    return any(isinstance(v, jax.core.Tracer) for v in values)


def namespace(optimizer: Any, array: Any) -> Any:
    """``_Unfused`` while jax traces (``array`` a tracer, or any trace active: a ``lax.cond``
    branch of eager code, a ``jax.jit`` closing over concrete arrays), else ``_OpByOp``."""
    if not (_tracing(array) or under_trace()):
        return _OP_BY_OP
    return _Unfused(_traced_zero(optimizer))


def _traced_zero(optimizer: Any) -> jax.Array:
    """The integer no-op of ``_Unfused``: a 0 that XLA cannot see. From a traced step count, its
    minimum with 0 (the count is ``>= 0``). A step count that is a constant of the traced program
    (the optimizer's variables closed over, as in ``lax.cond`` of eager code) would let XLA fold
    that away, so the zero comes from the host instead (``host_zero``), once per traced program
    and ``apply``."""
    count = as_array(optimizer.iterations)
    if _tracing(count):
        return jnp.minimum(count, 0).astype(jnp.int32)
    state = jax.extend.core.get_opaque_trace_state()
    hit = optimizer._uniopt_cache.entries.get(("jax", "zero"))
    if hit is not None and hit[0] == state:
        return hit[1]
    zero = host_zero()
    optimizer._uniopt_cache.entries[("jax", "zero")] = (state, zero)
    return zero


def slot_namespace() -> Any:
    return _SLOT_XP


def eager() -> bool:
    """Outside a Keras stateless scope (``stateless_apply``, the JAX trainer's steps)."""
    return not in_stateless_scope()


def trace_key() -> Any:
    return None  # the cache lives for one apply (one trace)


def host_calls_refused() -> bool:
    return False  # jax.pure_callback runs under jax.jit


def _host_lr(value: float, spec: Spec, exact_lr: bool, lr_dtype: Any) -> float:
    """The learning rate the host computes the scalars at, from the value read: through float32
    under ``convention="keras"`` (as Keras holds it); the spec's own ``lr`` where the optimizer's
    float32 variable holds ``float32(spec.lr)``; else the value."""
    if spec.convention == "keras":
        return float(np.float32(value))
    if exact_lr and np.dtype(lr_dtype) == np.float32 and np.float32(value) == np.float32(spec.lr):
        return float(spec.lr)
    return float(value)


def _at_spec_lr(lr: jax.Array, spec: Spec, exact_lr: bool) -> Any:
    """In-graph: whether :func:`_host_lr` of ``lr`` is ``spec.lr`` (a bool array, or ``False``)."""
    if spec.convention == "keras":
        representable = float(np.float32(spec.lr)) == float(spec.lr)
        return (lr.astype(jnp.float32) == np.float32(spec.lr)) if representable else False
    if jnp.dtype(lr.dtype) == jnp.float32:
        if exact_lr or float(np.float32(spec.lr)) == float(spec.lr):
            return lr == np.float32(spec.lr)
        return False
    return lr == jnp.asarray(spec.lr, lr.dtype)


def scalars(optimizer: Any, spec: Spec, dtype: str, learning_rate: Any, exact_lr: bool) -> Any:
    """The spec's scalars of this step in ``dtype`` (see the module docstring)."""
    count = as_array(optimizer.iterations)
    lr = as_array(learning_rate)
    np_dtype = jnp.dtype(dtype)
    first = spec.step_scalars(1)
    kind, flags = type(first), tuple(isinstance(v, bool) for v in first)
    if not _tracing(count, lr):
        value = _host_lr(float(np.asarray(lr)), spec, exact_lr, lr.dtype)
        host = spec.step_scalars(int(np.asarray(count)) + 1, value)
        return kind(*_hidden(optimizer, _unpacked(*_packed(host, flags, np_dtype), flags, np_dtype)))
    key = ("jax", spec, dtype, id(learning_rate))
    hit = optimizer._uniopt_cache.entries.get(key)
    if hit is not None:
        return hit[1]
    lr_dtype = lr.dtype

    def compute(count_value: Any, lr_value: Any) -> tuple[np.ndarray, np.ndarray]:
        value = _host_lr(float(np.asarray(lr_value)), spec, exact_lr, lr_dtype)
        return _packed(spec.step_scalars(int(count_value) + 1, value), flags, np_dtype)

    def from_host() -> list[Any]:
        shapes = _packed_shapes(flags, np_dtype)
        out = jax.pure_callback(compute, shapes, count, lr, vmap_method="sequential")
        return _unpacked(*out, flags, np_dtype)

    table = None
    if spec.scalars_converge():
        try:
            table = _constant_lr_columns(spec, np.dtype(np_dtype)).traced(count)
        except NotConvergentError:
            table = None
    if table is None:
        values = from_host()
    else:
        pred = _at_spec_lr(lr, spec, exact_lr)
        floats = [jnp.asarray(v, np_dtype) for v, f in zip(table, flags, strict=True) if not f]
        if pred is False:
            host_floats = [v for v, f in zip(from_host(), flags, strict=True) if not f]
        else:
            host_floats = lax.cond(
                pred,
                lambda: floats,
                lambda: [v for v, f in zip(from_host(), flags, strict=True) if not f],
            )
        host_floats.reverse()
        # flags depend on the step alone (the table's); the floats on the learning rate too
        values = [v if f else host_floats.pop() for v, f in zip(table, flags, strict=True)]
    if not _tracing(count):  # the table's row of a constant step count: a constant too
        values = _hidden(optimizer, values)
    result = kind(*values)
    optimizer._uniopt_cache.entries[key] = (None, result)
    return result


def _hidden(optimizer: Any, values: list[Any]) -> list[Any]:
    """Host scalars as the rule receives them: unchanged eagerly; while jax traces (a ``lax.cond``
    branch of eager code, a ``jax.jit`` closing over the optimizer's variables) each float passes
    through the integer no-op of :func:`_traced_zero`, so that it is no constant of the traced
    program (XLA turns a division by a constant into a product by its rounded reciprocal, and folds
    constants into fused multiply-adds); flags stay Python bools."""
    if not under_trace():
        return values
    return hidden(values, _traced_zero(optimizer))


def update_sparse(optimizer: Any, spec: Spec, gradient: Any, variable: Any, learning_rate: Any) -> bool:
    """Keras's JAX backend gives dense gradients (a BCOO one is densified by :func:`as_array`)."""
    return False


def update_by_increment(
    optimizer: Any, spec: Spec, gradient: Any, variable: Any, slot_vars: dict[str, Any], learning_rate: Any
) -> bool:
    """The parameter is assigned its new value (``False``: no step by increment on this backend)."""
    return False


# -- a spec with a history (uniopt.keras._history) -----------------------------------------------


def _bits(values: Any) -> np.ndarray:
    """float64 values as their bits, a ``uint32`` array of shape ``(n, 2)``."""
    return np.asarray(values, np.float64).reshape(-1).view(np.uint32).reshape(-1, 2)


def _bits_initializer(value: float) -> Callable[..., jax.Array]:
    bits = _bits([value])[0]
    return lambda shape, dtype: jnp.asarray(bits, dtype)


def history_variables(optimizer: Any, start: Any) -> list[Any]:
    """One variable per field of the spec's history: a float64 scalar with ``jax_enable_x64``, else
    the field's 64 bits as a ``uint32`` pair."""
    if _X64:
        return float64_history_variables(optimizer, start)
    return [
        optimizer.add_variable(
            (2,),
            initializer=_bits_initializer(value),
            dtype="uint32",
            aggregation="only_first_replica",
            name=field,
        )
        for field, value in start._asdict().items()
    ]


def _decode(values: Any) -> tuple[float, ...]:
    array = np.asarray(values)
    if _X64:
        return tuple(float(v) for v in array.reshape(-1))
    return tuple(float(v) for v in np.ascontiguousarray(array, np.uint32).reshape(-1).view(np.float64))


def history_values(optimizer: Any) -> tuple[float, ...]:
    return _decode(np.stack([np.asarray(keras.ops.convert_to_numpy(v)) for v in optimizer._uniopt_history]))


def history_assign(optimizer: Any, values: tuple[float, ...]) -> None:
    assign_each(optimizer._uniopt_history, np.asarray(values, np.float64) if _X64 else _bits(values))


def history_step(
    optimizer: Any, compute: Callable[..., list[Any]], learning_rate: Any, types: list[str]
) -> tuple[list[Any], list[Any], Any]:
    """``compute(step, lr, history)`` on the host: eagerly directly, traced in one
    ``jax.pure_callback``; returns the next history (the variables' encoding), the scalars and the
    cache key (``None``)."""
    count = as_array(optimizer.iterations)
    lr = as_array(learning_rate)
    stored = jnp.stack([as_array(v) for v in optimizer._uniopt_history])
    spec, exact = optimizer._spec, not optimizer._dynamic_learning_rate()
    lr_dtype = lr.dtype

    def call(count_value: Any, lr_value: Any, history: Any) -> list[np.ndarray]:
        value = _host_lr(float(np.asarray(lr_value)), spec, exact, lr_dtype)
        after, *out = compute(int(count_value) + 1, value, _decode(history))
        encoded = np.asarray(after, np.float64) if _X64 else _bits(after)
        return [encoded, *(np.asarray(v, dtype) for v, dtype in zip(out, types, strict=True))]

    if not _tracing(count, lr, stored):
        history, *values = call(np.asarray(count), np.asarray(lr), np.asarray(stored))
        results = [jnp.asarray(history), *_hidden(optimizer, [jnp.asarray(v) for v in values])]
    else:
        shapes = [jax.ShapeDtypeStruct(stored.shape, stored.dtype)]
        shapes += [jax.ShapeDtypeStruct((), jnp.dtype(d)) for d in types]
        results = list(jax.pure_callback(call, shapes, count, lr, stored, vmap_method="sequential"))
    after = [results[0][i] for i in range(len(optimizer._uniopt_history))]
    return after, results[1:], None


def history_guard(optimizer: Any, message: str, lr_message: str, apply: Callable[[], Any]) -> Any:
    """``apply()`` unless the optimizer is in eval mode (``RuntimeError``) or a learning rate read
    on the host is out of range (``ValueError``). The mode is read where it is concrete: eagerly,
    and in a traced step as the variable held it when the step was traced (``train()`` and
    ``eval()`` run eagerly), except inside the JAX trainer's ``fit``, which holds the variables'
    values itself (call ``train()`` before ``fit``); a traced learning rate is not checked."""
    import math

    mode = as_array(optimizer._uniopt_mode)
    if _tracing(mode):  # the variable's own value, which the JAX trainer empties during fit
        mode = optimizer._uniopt_mode._value
    if mode is not None and int(np.asarray(mode)) != 1:
        raise RuntimeError(message)
    lr = as_array(optimizer._get_current_learning_rate())
    if not _tracing(lr):
        value = float(np.asarray(lr))
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{lr_message} {value!r}")
    return apply()
