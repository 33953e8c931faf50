"""Distance in units in the last place between two float arrays of the same dtype.

Floats are mapped to integers that are ordered like the floats they encode, so the distance between
``x`` and ``nextafter(x, inf)`` is 1, ``+0`` and ``-0`` coincide, and a distance across zero counts
the floats in between. Two NaNs (any payload) are 0 apart; NaN against a number is :data:`NAN_MISMATCH`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NAN_MISMATCH", "max_ulp", "ulp_distance"]

NAN_MISMATCH = 2**64 - 1
"""Distance reported when exactly one side is NaN."""

_INT_OF = {2: np.int16, 4: np.int32, 8: np.int64}


def _ordinal(x: np.ndarray) -> np.ndarray:
    """Signed integers whose order is the order of the floats (``-0`` and ``+0`` map to 0)."""
    ints = x.view(_INT_OF[x.dtype.itemsize]).astype(np.int64)
    sign_bit = np.int64(np.iinfo(_INT_OF[x.dtype.itemsize]).min)
    # negative floats: flip so that more negative floats get smaller integers
    return np.where(ints < 0, sign_bit - ints, ints)


def _isnan(x: np.ndarray) -> np.ndarray:
    # bfloat16 (ml_dtypes) widens to float32 exactly; NumPy's own floats test directly
    return np.isnan(x if x.dtype.kind == "f" else x.astype(np.float32))


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise ulp distance as ``uint64``; ``a`` and ``b`` must share dtype and shape."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        raise ValueError(f"cannot compare {a.dtype}{a.shape} with {b.dtype}{b.shape}")
    if a.dtype.kind != "f" and a.dtype.name != "bfloat16":
        raise ValueError(f"ulp distance needs floats, got {a.dtype}")
    oa, ob = _ordinal(a), _ordinal(b)
    # |oa - ob| without overflow: split by sign, adding magnitudes in uint64
    same_sign = (oa >= 0) == (ob >= 0)
    mag_a = np.abs(oa).astype(np.uint64)
    mag_b = np.abs(ob).astype(np.uint64)
    dist = np.where(same_sign, np.maximum(mag_a, mag_b) - np.minimum(mag_a, mag_b), mag_a + mag_b).astype(
        np.uint64
    )
    nan_a, nan_b = _isnan(a), _isnan(b)
    dist = np.where(nan_a & nan_b, np.uint64(0), dist)
    return np.where(nan_a ^ nan_b, np.uint64(NAN_MISMATCH), dist).astype(np.uint64)


def max_ulp(a: np.ndarray, b: np.ndarray) -> int:
    """Largest elementwise ulp distance (0 for empty arrays)."""
    dist = ulp_distance(a, b)
    return int(dist.max()) if dist.size else 0
