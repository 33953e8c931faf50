"""uniopt.tf: the uniopt spec as Keras 3 optimizers on TensorFlow.

>>> import keras, uniopt.tf
>>> model.compile(optimizer=uniopt.tf.RAdam(learning_rate=1e-3), loss="mse")  # doctest: +SKIP

``SGD, Adagrad, RMSprop, Adam, AdamW, RAdam`` subclass ``keras.optimizers.Optimizer`` with Keras
argument names (:data:`KERAS_NAMES` maps them to the spec's) and uniopt's defaults. The update is
the core's ``spec.rule`` executed through :mod:`uniopt.tf.xp`, a small TensorFlow array namespace;
the adapter holds no update math. See docs/tf.md.
"""

import keras as _keras

if _keras.backend.backend() != "tensorflow":  # before TensorFlow is imported: it may not be there
    raise ImportError(
        f"uniopt.tf needs Keras's TensorFlow backend (KERAS_BACKEND=tensorflow); this process runs "
        f"Keras on {_keras.backend.backend()!r}. Use uniopt.jax or uniopt.torch there."
    )

from . import xla, xp
from ._porting import export_state, from_keras, import_state, to_keras
from .optimizers import (
    KERAS_NAMES,
    SGD,
    Adagrad,
    Adam,
    AdamW,
    RAdam,
    RMSprop,
    UnioptOptimizer,
    from_spec,
    to_keras_kwargs,
    to_spec_kwargs,
)

__all__ = [
    "KERAS_NAMES",
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "RAdam",
    "RMSprop",
    "UnioptOptimizer",
    "export_state",
    "from_keras",
    "from_spec",
    "import_state",
    "to_keras",
    "to_keras_kwargs",
    "to_spec_kwargs",
    "xla",
    "xp",
]
