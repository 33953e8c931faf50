"""Which backend binding the uniopt Keras optimizers run on, and what a binding provides.

Keras runs one backend per process (``KERAS_BACKEND``, read at Keras's first import). The
optimizers (:mod:`uniopt.keras.optimizers`) hold no backend code; what depends on the backend is
one module per backend, the *binding*, imported at the first use (so that ``import uniopt.keras``
imports no framework beyond Keras and its backend):

* ``tensorflow``: :mod:`uniopt.tf._binding` (uniopt.tf provides it; the namespace
  :mod:`uniopt.tf.xp`, the scalars of :mod:`uniopt.tf._scalars`, ``tf.IndexedSlices``);
* ``jax``: :mod:`uniopt.keras._jax` (uniopt.jax's namespaces and scalar tables);
* ``torch``: :mod:`uniopt.keras._torch` (uniopt.torch's namespace, scalars from the host).

A binding defines (each module documents its own):

* ``as_array(x, dtype=None)``: a variable, gradient or value as the backend's array (cast to
  ``dtype``); ``zeros(shape, dtype)``; ``dtype_name(dtype)``: the dtype's name (``"float32"``)
  or ``None`` where it is no dtype;
* ``namespace(optimizer, array)``: the array namespace the spec's ``rule`` runs on for this step
  (eager or traced); ``slot_namespace()``: the one ``init_slot`` runs on;
* ``scalars(optimizer, spec, dtype, learning_rate, exact_lr)``: the spec's scalars of this step
  (``optimizer.iterations + 1``) in ``dtype`` (a name), each rounded once, as the NumPy
  reference has them; ``exact_lr`` says ``learning_rate`` is the optimizer's own float variable;
* ``EXACT_LR_DTYPE``: the dtype of the variable holding a float learning rate (``"float64"`` where
  the backend has it); ``eager()``: whether this code runs eagerly (not traced);
* ``SCALARS_BEFORE_THE_LOOP``: whether ``before_apply(optimizer, variables)`` runs when ``apply``
  is called, before Keras's ``apply`` enters its name scope, and ``before_update_loop(optimizer,
  variables, learning_rate)`` before Keras's loop of ``update_step`` (torch: the scalars of every
  spec and dtype in one host call, so that ``torch.compile`` traces Keras's ``apply`` whole);
* ``update_sparse(optimizer, spec, gradient, variable, learning_rate)``: apply a sparse gradient
  itself and return ``True``, or ``False`` to let the dense path run;
* ``update_by_increment(optimizer, spec, gradient, variable, slot_vars, learning_rate)``: apply a
  dense gradient itself, the parameter updated in place by the rule's increment, and return
  ``True``, or ``False`` to let the shared path run (TensorFlow in ``tf.function``: see
  :func:`uniopt.tf._binding.update_by_increment`);
* TensorFlow only: ``update_groups(optimizer, distribution, grads_and_vars, learning_rate)``:
  step the variables it runs together and return the pairs left to Keras's loop;
* ``history_step(optimizer, compute, step, lr, bits, types)``, ``history_guard(...)``: the host
  call of a spec with a history (Schedule-Free AdamW), see :mod:`uniopt.keras._history`; where
  ``host_calls_refused()``, ``history_in_graph(optimizer, specs, dtypes, learning_rate)`` computes
  it in-graph instead (``None`` where a spec has no in-graph formula).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import keras

__all__ = [
    "PACKAGE",
    "assign_each",
    "binding",
    "dtype_name",
    "float64_history_variables",
    "keras_dtype_name",
]

BACKEND: str = keras.backend.backend()
"""The Keras backend of this process."""

PACKAGE: str = "uniopt.tf" if BACKEND == "tensorflow" else "uniopt.keras"
"""How the optimizers name themselves in messages: on TensorFlow they are uniopt.tf's classes."""

_BINDINGS = {"tensorflow": "uniopt.tf._binding", "jax": "uniopt.keras._jax", "torch": "uniopt.keras._torch"}


_LOADED: list[ModuleType] = []


def binding() -> ModuleType:
    """The binding module of this process's Keras backend (``ImportError`` for another backend).
    Imported once, at the first call (a plain list, not ``functools.cache``: torch.compile traces
    through this call)."""
    if _LOADED:
        return _LOADED[0]
    try:
        name = _BINDINGS[BACKEND]
    except KeyError:
        raise ImportError(
            f"uniopt.keras runs on Keras's tensorflow, jax and torch backends; this process runs Keras "
            f"on {BACKEND!r}"
        ) from None
    _LOADED.append(importlib.import_module(name))
    return _LOADED[0]


def dtype_name(dtype: Any) -> str:
    """The name of a variable's dtype (``"float32"``), as the backend's binding reads it."""
    name = binding().dtype_name(dtype)
    if name is None:  # pragma: no cover - a variable always has a dtype
        raise TypeError(f"not a dtype: {dtype!r}")
    return name


# -- pieces several bindings share ----------------------------------------------------------------


def keras_dtype_name(dtype: Any) -> str | None:
    """Keras's name of ``dtype`` (``keras.backend.standardize_dtype``: a name, a NumPy, jax or torch
    dtype); ``None`` where it is none (``None`` included, which Keras reads as ``floatx``)."""
    if dtype is None:
        return None
    try:
        return keras.backend.standardize_dtype(dtype)
    except (ValueError, TypeError):
        return None


def float64_history_variables(optimizer: Any, start: Any) -> list[Any]:
    """One float64 scalar variable per field of the spec's history ``start``, initialised to it."""
    return [
        optimizer.add_variable(
            (),
            initializer=keras.initializers.Constant(value),
            dtype="float64",
            aggregation="only_first_replica",
            name=field,
        )
        for field, value in start._asdict().items()
    ]


def assign_each(variables: list[Any], values: Any) -> None:
    """``variable.assign(value)`` pairwise (the history's variables and their new values)."""
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)
