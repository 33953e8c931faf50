"""Moving test data into and out of the array namespaces the core must run on unchanged."""

from __future__ import annotations

import numpy as np

NAMESPACES = ("numpy", "array_api_strict")


def to_namespace(name: str, array: np.ndarray):
    """``array`` as an array of namespace ``name``."""
    if name == "numpy":
        return array.copy()
    import array_api_strict

    return array_api_strict.asarray(array)


def to_numpy(array) -> np.ndarray:
    """A NumPy copy of an array of any supported namespace."""
    return array.copy() if isinstance(array, np.ndarray) else np.from_dlpack(array).copy()
