"""The matrix's cells: optimizer x case x stream x dtype, all drawn from the registry table."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from uniopt.registry import TABLE

from .streams import STREAMS

__all__ = ["DEFAULT_STEPS", "Cell", "cells"]

DEFAULT_STEPS = 50
"""Steps per cell by default: past RAdam's first rectified step (6) with room to spare."""


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
    """Every (optimizer, case, stream, dtype) of the table, optionally filtered."""
    wanted = set(optimizers) if optimizers is not None else None
    stream_names = list(streams) if streams is not None else list(STREAMS)
    return [
        Cell(info.name, case.desc, stream, dtype, steps)
        for info in TABLE
        if wanted is None or info.name in wanted
        for case in info.cases
        for stream in stream_names
        for dtype in dtypes
    ]
