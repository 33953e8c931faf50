"""uniopt.keras: the uniopt spec as Keras 3 optimizers on every Keras backend (TensorFlow, JAX, torch).

>>> import keras, uniopt.keras
>>> model.compile(optimizer=uniopt.keras.RAdam(learning_rate=1e-3), loss="mse")  # doctest: +SKIP

One class per row of :data:`uniopt.registry.TABLE` with Keras names (:data:`OPTIMIZERS`: ``SGD,
Adagrad, RMSprop, Adam, AdamW, RAdam, ...``, named as Keras names them, with the spec's name as an
alias where it differs: ``Nadam`` and ``NAdam``), each a ``keras.optimizers.Optimizer`` with
Keras's argument names and uniopt's defaults (``convention="keras"``: Keras's). The classes hold no
backend code and no update math (:mod:`uniopt.keras.optimizers`); the spec's ``rule`` runs
through the binding of the process's Keras backend (:mod:`uniopt.keras._binding`): on TensorFlow
uniopt.tf's (the classes are uniopt.tf's: ``uniopt.keras.RAdam is uniopt.tf.RAdam``), on JAX
uniopt.jax's namespaces and scalar tables (``jax`` and ``optax`` installed: ``uniopt[jax]``), on
torch uniopt.torch's namespace. The state moves to and from a :class:`uniopt.PortableState` on every
backend (:func:`export_state`, :func:`import_state`; Keras's own optimizers: :func:`from_keras`,
:func:`to_keras`; on TensorFlow these are uniopt.tf's). See docs/keras.md; the classes
themselves: docs/tf.md.
"""

from __future__ import annotations

from ._binding import BACKEND as _BACKEND

if _BACKEND not in ("tensorflow", "jax", "torch"):
    raise ImportError(
        f"uniopt.keras runs on Keras's tensorflow, jax and torch backends; this process runs Keras on "
        f"{_BACKEND!r}"
    )

from . import optimizers as _optimizers
from ._history import EvalAtX, HistoryOptimizer
from ._porting import export_state, from_keras, import_state, to_keras
from .optimizers import (
    CONVENTION_DEFAULT,
    KERAS_NAMES,
    OPTIMIZERS,
    UnioptOptimizer,
    from_spec,
    to_keras_kwargs,
    to_spec_kwargs,
)

# the generated classes (and aliases) of the table's rows: SGD, Adagrad, ..., Nadam, NAdam
globals().update({name: getattr(_optimizers, name) for name in _optimizers._BY_NAME})

BACKEND: str = _BACKEND
"""The Keras backend these optimizers run on in this process (``keras.backend.backend()``)."""

__all__ = [
    "BACKEND",
    "CONVENTION_DEFAULT",
    "EvalAtX",
    "HistoryOptimizer",
    "KERAS_NAMES",
    "OPTIMIZERS",
    "UnioptOptimizer",
    "export_state",
    "from_keras",
    "from_spec",
    "import_state",
    "to_keras",
    "to_keras_kwargs",
    "to_spec_kwargs",
    *sorted(_optimizers._BY_NAME),
]
