"""uniopt.tf: the uniopt spec as Keras 3 optimizers on TensorFlow.

>>> import keras, uniopt.tf
>>> model.compile(optimizer=uniopt.tf.RAdam(learning_rate=1e-3), loss="mse")  # doctest: +SKIP

One class per row of :data:`uniopt.registry.TABLE` (:data:`OPTIMIZERS`: ``SGD, Adagrad, RMSprop,
Adam, AdamW, RAdam, ...``, named as Keras names them, with the spec's name as an alias where it
differs: ``Nadam`` and ``NAdam``), each a ``keras.optimizers.Optimizer`` with Keras's argument names
(each class's ``KERAS_NAMES`` maps them to the spec's) and uniopt's defaults. The update is the
core's ``spec.rule`` executed through :mod:`uniopt.tf.xp`, a small TensorFlow array namespace; the
adapter holds no update math. The classes are :mod:`uniopt.keras`'s, which on TensorFlow are these
(``uniopt.tf.RAdam is uniopt.keras.RAdam``), run through this package's binding
(:mod:`uniopt.tf._binding`); so are the porting functions (``export_state``,
``import_state``, ``from_keras``, ``to_keras``: ``uniopt.tf.export_state is
uniopt.keras.export_state``). ``ScheduleFreeAdamW`` keeps its history in optimizer variables and has
train/eval modes (:class:`HistoryOptimizer`, :class:`EvalAtX`). See docs/tf.md.
"""

import keras as _keras

if _keras.backend.backend() != "tensorflow":  # before TensorFlow is imported: it may not be there
    raise ImportError(
        f"uniopt.tf needs Keras's TensorFlow backend (KERAS_BACKEND=tensorflow); this process runs "
        f"Keras on {_keras.backend.backend()!r}. Use uniopt.keras there (the same optimizers on every "
        "Keras backend), or uniopt.jax or uniopt.torch."
    )

import uniopt.keras as _keras_api

from . import optimizers, xla, xp  # noqa: F401 - uniopt.tf.optimizers, as before

# uniopt.keras's public names (the classes of the table's rows, SGD, ..., Nadam, NAdam, and the
# porting functions), but what tells one Keras backend from another
_SHARED = [name for name in _keras_api.__all__ if name not in ("BACKEND", "CONVENTION_DEFAULT")]
globals().update({name: getattr(_keras_api, name) for name in _SHARED})

__all__ = [*_SHARED, "xla", "xp"]
