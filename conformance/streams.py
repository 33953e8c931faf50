"""Seeded gradient streams and parameter sets.

Every value is drawn in float64 from ``numpy.random.default_rng`` seeded by (stream, parameter set,
step, parameter index) and then rounded once to the cell's dtype, so each backend process regenerates
exactly the same inputs without exchanging them.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "MATRIX_SETS",
    "PARAM_SETS",
    "STREAMS",
    "Stream",
    "dtype_of",
    "gradients",
    "initial_params",
    "param_set_for",
]

PARAM_SETS: dict[str, tuple[tuple[int, ...], ...]] = {
    "standard": ((16,), (4, 8)),
    # 0-d, empty and higher-rank arrays side by side
    "mixed": ((), (0,), (3, 1, 5), (2, 0, 3), (7,)),
    # for the long cases (tens of thousands of steps)
    "small": ((3,), (2, 2)),
    # past 32,768 elements: uniopt.tf's scheduling hints under XLA (xp.HINT_MIN_SIZE) and more than
    # one of the torch CPU kernel's 32,768-element tiles, an odd matrix and a vector
    "large": ((181, 191), (40000,)),
    # the sets above for an optimizer that takes matrices only (MATRIX_SETS)
    # two (16, 8): uniopt.torch steps a group's small matrices of one shape stacked
    "matrices": ((16, 8), (4, 8), (5, 5), (16, 8)),
    "matrices_mixed": ((1, 1), (0, 3), (3, 0), (1, 7), (7, 1)),
    "matrices_small": ((3, 2), (2, 2)),
    # products of 181 * 191 * 181 multiply-adds and more (uniopt.torch's bfloat16 kernels for
    # Muon's torch convention), a wide matrix and a tall one
    "matrices_large": ((181, 191), (191, 181)),
}

MATRIX_SETS: dict[str, str] = {
    "standard": "matrices",
    "mixed": "matrices_mixed",
    "small": "matrices_small",
    "large": "matrices_large",
}
"""The set a stream runs for a spec that refuses a shape of its own set (``Spec.param_refusal``:
Muon's uniopt and torch conventions take 2-D parameters only): matrices of the same kinds, tall,
wide and square in place of vectors, and 1x1, empty, row and column matrices in place of the 0-d,
empty and 3-d arrays of ``mixed``."""


def param_set_for(spec: Any, stream: Stream) -> str:
    """The parameter set ``spec`` runs ``stream`` over: the stream's own, or its
    :data:`MATRIX_SETS` counterpart where the spec refuses one of its shapes."""
    own = stream.param_set
    if any(spec.param_refusal(shape) is not None for shape in PARAM_SETS[own]):
        return MATRIX_SETS[own]
    return own


def dtype_of(name: str) -> np.dtype:
    """The NumPy dtype named ``name``; ``bfloat16`` comes from ml_dtypes."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


_Draw = Callable[[np.random.Generator, tuple[int, ...], int], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Stream:
    """A named gradient stream over a parameter set."""

    name: str
    param_set: str
    draw: _Draw
    doc: str


def _normal(scale: float) -> _Draw:
    return lambda rng, shape, step: scale * rng.standard_normal(shape)


def _zeros(rng: np.random.Generator, shape: tuple[int, ...], step: int) -> np.ndarray:
    return np.zeros(shape)


def _sparse(rng: np.random.Generator, shape: tuple[int, ...], step: int) -> np.ndarray:
    values = rng.standard_normal(shape)
    return np.where(rng.random(shape) < 0.5, 0.0, values)


NONFINITE_STEP = 7
"""The step at which the ``nonfinite`` stream injects NaN, +Inf and -Inf."""


def _nonfinite(rng: np.random.Generator, shape: tuple[int, ...], step: int) -> np.ndarray:
    values = rng.standard_normal(shape)
    if step == NONFINITE_STEP and values.size >= 3:
        flat = values.reshape(-1)
        flat[0], flat[1], flat[2] = np.nan, np.inf, -np.inf
    return values


STREAMS: dict[str, Stream] = {
    s.name: s
    for s in (
        Stream("normal", "standard", _normal(1.0), "standard normal"),
        Stream("tiny", "standard", _normal(1e-8), "normal scaled by 1e-8"),
        Stream("huge", "standard", _normal(1e4), "normal scaled by 1e4"),
        Stream("zeros", "standard", _zeros, "all exact zeros"),
        Stream("sparse", "standard", _sparse, "normal with about half the entries exactly 0"),
        Stream("mixed_shapes", "mixed", _normal(1.0), "normal over 0-d, empty and 3-d params"),
        Stream("long", "small", _normal(1.0), "standard normal over a small set, for long runs"),
        Stream(
            "large",
            "large",
            _normal(1.0),
            "standard normal over 34,571 and 40,000 elements (a matrix-only spec: 181x191 and 191x181)",
        ),
        Stream(
            "parity",
            "standard",
            _normal(1.0),
            "standard normal for 1000 steps: convention cases against the native optimizers",
        ),
        Stream(
            "nonfinite",
            "standard",
            _nonfinite,
            f"normal with NaN, +Inf and -Inf in three entries at step {NONFINITE_STEP}",
        ),
    )
}


def _rng(*key: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _read_only(arrays: list[np.ndarray]) -> list[np.ndarray]:
    for a in arrays:
        a.setflags(write=False)
    return arrays


@functools.cache
def initial_params(param_set: str, dtype: str) -> list[np.ndarray]:
    """Starting parameters: standard normal, rounded to ``dtype`` (cached, read-only: copy them)."""
    return _read_only(
        [
            _rng("init", param_set, i).standard_normal(shape).astype(dtype_of(dtype))
            for i, shape in enumerate(PARAM_SETS[param_set])
        ]
    )


@functools.cache
def gradients(stream: Stream, step: int, dtype: str, param_set: str | None = None) -> list[np.ndarray]:
    """The gradients of 1-based ``step``, rounded to ``dtype`` (cached for the process, as every mode
    and case of a backend reads the same streams; read-only: copy them), over ``param_set`` (the
    stream's own by default; see :func:`param_set_for`)."""
    shapes = PARAM_SETS[param_set or stream.param_set]
    return _read_only(
        [
            np.asarray(stream.draw(_rng(stream.name, step, i), shape, step)).astype(dtype_of(dtype))
            for i, shape in enumerate(shapes)
        ]
    )
