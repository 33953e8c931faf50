"""The torch binding of the uniopt Keras optimizers (:mod:`uniopt.keras._binding` says what a
binding provides), on uniopt.torch's namespace (:mod:`uniopt.torch._namespace`).

Keras's variables hold torch tensors; the rule runs on uniopt.torch's ``xp``
(``array_api_compat.torch`` with a correctly rounded ``sqrt`` on CPU, where torch's own is not, and
NumPy's ``sign``), so its steps are bitwise the NumPy reference's. The step's scalars are computed
on the host at every step (``iterations + 1`` and the learning rate read as Python numbers; float64,
rounded once to each variable's dtype, as the NumPy reference has them), as 0-d tensors; flags are
Python bools. A float learning rate is held in a float64 variable, as on TensorFlow. Under
``torch.compile`` (Keras's ``jit_compile=True`` on torch) that host work runs in functions excluded
from dynamo's tracing (``torch.compiler.disable``, as uniopt.torch's ``_prepare``): the graph
breaks there, and the compiled graphs receive the scalars as 0-d tensor inputs (and the flags as
Python bools, constant while they do not change), so they are not recompiled at every step; a
step count or learning rate traced symbolically would make the scalars' float64 arithmetic guards
of dynamo (docs/keras.md). No update math lives here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import torch
from keras.src.backend.torch.core import to_torch_dtype

from uniopt import Spec
from uniopt.scalar_table import rounded_scalars
from uniopt.torch._namespace import xp as _xp

from ._binding import assign_each, float64_history_variables, keras_dtype_name

EXACT_LR_DTYPE = "float64"
"""A float learning rate is held in a float64 variable (Keras's own is float32)."""
MODE_DTYPE = "int64"


def as_array(x: Any, dtype: Any = None) -> torch.Tensor:
    """``x`` (a Keras variable, a tensor, a sparse gradient densified) as a tensor outside autograd,
    cast to ``dtype``."""
    tensor = keras.ops.convert_to_tensor(x)
    if tensor.is_sparse:
        tensor = tensor.to_dense()
    if tensor.requires_grad:
        tensor = tensor.detach()
    if dtype is not None:
        dtype = dtype if isinstance(dtype, torch.dtype) else to_torch_dtype(dtype)
        if tensor.dtype != dtype:
            tensor = tensor.to(dtype)
    return tensor


def zeros(shape: Any, dtype: Any) -> torch.Tensor:
    return keras.ops.zeros(shape, dtype)


dtype_name = keras_dtype_name


def is_variable(value: Any) -> bool:
    return False


def namespace(optimizer: Any, array: Any) -> Any:
    return _xp


def slot_namespace() -> Any:
    return _xp


def eager() -> bool:
    return not torch.compiler.is_compiling()


def trace_key() -> Any:
    return None


def host_calls_refused() -> bool:
    return False


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _host_number(value: Any) -> float:
    return float(keras.ops.convert_to_numpy(value))


_OFF_GRAPH: dict[Callable[..., Any], Callable[..., Any]] = {}


def _host(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` itself eagerly; under ``torch.compile`` the same function excluded from dynamo's
    tracing (``torch.compiler.disable``, made on first use so that importing this module does not
    load torch._dynamo): it runs as plain Python at a graph break, so the step count and learning
    rate it reads are numbers, never symbols that dynamo would guard on."""
    if not torch.compiler.is_compiling():
        return function
    disabled = _OFF_GRAPH.get(function)
    if disabled is None:
        disabled = _OFF_GRAPH[function] = torch.compiler.disable(function)
    return disabled


def scalars(optimizer: Any, spec: Spec, dtype: str, learning_rate: Any, exact_lr: bool) -> Any:
    """The spec's scalars of this step in ``dtype``, from the host (cached for one ``apply``; within
    Keras's update loop those :func:`before_update_loop` computed). Under ``convention="keras"`` the
    learning rate goes through float32 first."""
    entries = optimizer._uniopt_cache.entries
    hit = entries.get(("torch", "loop", spec, dtype))
    if hit is not None:
        return hit[1]
    key = ("torch", spec, dtype, id(learning_rate))
    hit = entries.get(key)
    if hit is not None:
        return hit[1]
    result = _host(_host_scalars)(optimizer, spec, dtype, learning_rate)
    optimizer._uniopt_cache.entries[key] = (None, result)
    return result


SCALARS_BEFORE_THE_LOOP = True
_READY = ("torch", "loop", "ready")


def before_apply(optimizer: Any, variables: list[Any]) -> None:
    """When ``apply`` is called, before Keras's ``apply`` enters its name scope: the scalars of
    every spec and dtype of ``variables`` at the learning rate ``optimizer.learning_rate`` gives
    (what Keras's ``_backend_apply_gradients`` passes to the loop), in one host call. Under
    ``torch.compile`` the graph then breaks once per step, here, in uniopt's ``apply``, and dynamo
    traces Keras's ``apply`` after it whole. A break inside Keras's name scope (a context manager
    that dynamo cannot resume in) made dynamo skip the frames around it and run Keras's ``apply``
    and ``_backend_apply_gradients`` eagerly, the loop compiled on its own."""
    _host(_host_apply_scalars)(optimizer, variables)


def _host_apply_scalars(optimizer: Any, variables: list[Any]) -> None:
    # the optimizer's own variables only: Keras's apply refuses any other, with its own error
    known = optimizer._trainable_variables_indices
    variables = [v for v in variables if optimizer._var_key(v) in known]
    _host_loop_scalars(optimizer, variables, optimizer.learning_rate)
    optimizer._uniopt_cache.entries[_READY] = (None, None)


def before_update_loop(optimizer: Any, variables: list[Any], learning_rate: Any) -> None:
    """Before Keras's loop of ``update_step`` over ``variables`` (``_backend_update_step``, whose
    ``learning_rate`` every ``update_step`` of the loop receives): the scalars of every spec and
    dtype the loop needs, in one host call, unless :func:`before_apply` computed them. Computed in
    the first ``update_step`` instead, the break there made dynamo compile ``update_step`` once
    per variable shape, and a five-layer MLP passed its recompile limit (then ran ``update_step``
    eagerly, silently)."""
    if _READY not in optimizer._uniopt_cache.entries:
        _host(_host_loop_scalars)(optimizer, list(variables), learning_rate)


def _host_loop_scalars(optimizer: Any, variables: list[Any], learning_rate: Any) -> None:
    entries = optimizer._uniopt_cache.entries
    for variable in variables:
        key = ("torch", "loop", optimizer._spec_for(variable), dtype_name(variable.dtype))
        if key not in entries:
            entries[key] = (None, _host_scalars(optimizer, key[2], key[3], learning_rate))


def _host_scalars(optimizer: Any, spec: Spec, dtype: str, learning_rate: Any) -> Any:
    """The scalars of step ``iterations + 1`` at the learning rate's value, computed on the host
    (float64, each rounded once to ``dtype``): float fields as 0-d tensors, flags as bools."""
    step = int(keras.ops.convert_to_numpy(optimizer.iterations)) + 1
    lr = _host_number(learning_rate)
    if spec.convention == "keras":
        lr = float(np.float32(lr))
    values = rounded_scalars(spec, step, _np_dtype(dtype), lr)
    kind = type(spec.step_scalars(1))
    return kind(*_as_tensors(values, dtype))


def _as_tensors(values: Any, dtype: str) -> list[Any]:
    """Host scalars (floats already rounded to ``dtype``) as 0-d tensors of ``dtype`` on Keras's
    device; flags as Python bools."""
    torch_dtype = to_torch_dtype(dtype)
    device = keras.ops.convert_to_tensor(0.0).device
    return [
        v if isinstance(v, bool) else torch.tensor(float(v), dtype=torch_dtype, device=device) for v in values
    ]


def update_sparse(optimizer: Any, spec: Spec, gradient: Any, variable: Any, learning_rate: Any) -> bool:
    """A sparse torch gradient is densified by :func:`as_array` (the dense path)."""
    return False


def update_by_increment(
    optimizer: Any, spec: Spec, gradient: Any, variable: Any, slot_vars: dict[str, Any], learning_rate: Any
) -> bool:
    """The parameter is assigned its new value (``False``: no step by increment on this backend)."""
    return False


# -- a spec with a history (uniopt.keras._history) -----------------------------------------------


history_variables = float64_history_variables


def history_values(optimizer: Any) -> tuple[float, ...]:
    return tuple(_host_number(v) for v in optimizer._uniopt_history)


def history_assign(optimizer: Any, values: tuple[float, ...]) -> None:
    assign_each(optimizer._uniopt_history, values)


def history_step(
    optimizer: Any, compute: Callable[..., list[Any]], learning_rate: Any, types: list[str]
) -> tuple[list[Any], list[Any], Any]:
    """``compute(step, lr, history)`` on the host (outside ``torch.compile``'s graphs); the next
    history as 0-d float64 tensors, the scalars as 0-d tensors, and the cache key (``None``)."""
    return _host(_host_history_step)(optimizer, compute, learning_rate, types)


def _host_history_step(
    optimizer: Any, compute: Callable[..., list[Any]], learning_rate: Any, types: list[str]
) -> tuple[list[Any], list[Any], Any]:
    step = int(keras.ops.convert_to_numpy(optimizer.iterations)) + 1
    after, *out = compute(step, _host_number(learning_rate), history_values(optimizer))
    device = keras.ops.convert_to_tensor(0.0).device
    history = [torch.tensor(float(v), dtype=torch.float64, device=device) for v in after]
    scalars = [torch.tensor(float(v), dtype=to_torch_dtype(d)) for v, d in zip(out, types, strict=True)]
    return history, [s.to(device) for s in scalars], None


def history_guard(optimizer: Any, message: str, lr_message: str, apply: Callable[[], Any]) -> Any:
    """``apply()`` unless the optimizer is in eval mode (``RuntimeError``) or its learning rate is
    out of range (``ValueError``), both read on the host (outside ``torch.compile``'s graphs)."""
    _host(_check_history)(optimizer, message, lr_message)
    return apply()


def _check_history(optimizer: Any, message: str, lr_message: str) -> None:
    import math

    if int(keras.ops.convert_to_numpy(optimizer._uniopt_mode)) != 1:
        raise RuntimeError(message)
    value = _host_number(optimizer._get_current_learning_rate())
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{lr_message} {value!r}")
