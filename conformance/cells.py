"""The matrix's cells: optimizer x case x stream x dtype, all drawn from the registry table."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from uniopt.registry import TABLE

from .streams import STREAMS

__all__ = ["ALL_DTYPES", "DEFAULT_STEPS", "LONG_OPTIMIZERS", "LONG_STEPS", "Cell", "cells"]

ALL_DTYPES = ("float32", "float64", "float16", "bfloat16")
"""Every dtype of the matrix; a backend without one shows its cells as skipped."""

DEFAULT_STEPS = 50
"""Steps per cell by default: past RAdam's first rectified step (6) with room to spare."""

LONG_STEPS = 20_000
"""Steps of the ``long`` stream: past the step where ``1 - 0.999**t`` rounds to 1 in float32
(about 17k), so bias corrections and RAdam's rectification reach their float32 limits."""

LONG_OPTIMIZERS = ("Adam", "RAdam")
"""The optimizers the ``long`` stream runs (their default case), in float32: the dtype whose
bias corrections saturate within the run."""


@dataclasses.dataclass(frozen=True, order=True)
class Cell:
    optimizer: str
    case: str
    stream: str
    dtype: str
    steps: int

    @property
    def key(self) -> str:
        return f"{self.optimizer}/{self.case}/{self.stream}/{self.dtype}/{self.steps}"

    @classmethod
    def from_key(cls, key: str) -> Cell:
        optimizer, case, stream, dtype, steps = key.split("/")
        return cls(optimizer, case, stream, dtype, int(steps))


def cells(
    dtypes: Iterable[str],
    steps: int = DEFAULT_STEPS,
    optimizers: Iterable[str] | None = None,
    streams: Iterable[str] | None = None,
) -> list[Cell]:
    """Every (optimizer, case, stream, dtype) of the table, optionally filtered.

    The ``long`` stream runs only :data:`LONG_OPTIMIZERS` in their default case, for
    :data:`LONG_STEPS` steps (or ``steps``, if that is longer).
    """
    wanted = set(optimizers) if optimizers is not None else None
    unknown = sorted(wanted - {info.name for info in TABLE}) if wanted is not None else []
    if unknown:
        raise ValueError(
            f"unknown optimizer(s) {', '.join(unknown)}; the table has {', '.join(i.name for i in TABLE)}"
        )
    stream_names = list(streams) if streams is not None else list(STREAMS)
    return [
        Cell(info.name, case.desc, stream, dtype, max(steps, LONG_STEPS) if long else steps)
        for info in TABLE
        if wanted is None or info.name in wanted
        for case in info.cases
        for stream in stream_names
        for long in [stream == "long"]
        if not long or (info.name in LONG_OPTIMIZERS and case.desc == "default")
        for dtype in dtypes
        if not long or dtype == "float32"
    ]
