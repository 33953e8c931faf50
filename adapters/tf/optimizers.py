"""uniopt.tf's Keras optimizers: the classes of :mod:`uniopt.keras.optimizers` (one per row of the
table), which on Keras's TensorFlow backend are uniopt.tf's (``uniopt.tf.RAdam is
uniopt.keras.RAdam``) and run through the TensorFlow binding :mod:`uniopt.tf._binding`
(:mod:`uniopt.tf.xp`, :mod:`uniopt.tf._scalars`, ``IndexedSlices``). This module keeps the names
uniopt.tf has always had here; the code, and its documentation, is in :mod:`uniopt.keras.optimizers`.
"""

from __future__ import annotations

from uniopt.keras import optimizers as _neutral
from uniopt.keras.optimizers import (  # noqa: F401 - the module's names, as before
    _ALIASES,
    _BY_NAME,
    _BY_SPEC,
    _CLASSES,
    CONVENTION_DEFAULT,
    KERAS_NAMES,
    OPTIMIZERS,
    UnioptOptimizer,
    _make_class,
    from_spec,
    to_keras_kwargs,
    to_spec_kwargs,
)

globals().update(_neutral._BY_NAME)

__all__ = list(_neutral.__all__)
