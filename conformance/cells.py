"""The matrix's cells: optimizer x case x stream x dtype, all drawn from the registry table."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from uniopt.registry import TABLE

from .streams import STREAMS

__all__ = [
    "ALL_DTYPES",
    "CONVENTION_DTYPES",
    "CONVENTION_STREAMS",
    "DEFAULT_STEPS",
    "LARGE_CASES",
    "LARGE_STEPS",
    "LONG_OPTIMIZERS",
    "LONG_STEPS",
    "PARITY_STEPS",
    "Cell",
    "cells",
    "convention_of",
]

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

LARGE_CASES: dict[str, tuple[str, ...]] = {
    "Adam": ("default",),
    "RAdam": ("default",),
    "ScheduleFreeAdamW": ("default",),
    "Muon": ("torch",),
    "Adafactor": ("default",),
    "Lamb": ("default",),
}
"""The optimizers the ``large`` stream runs, and their cases, in float32: those whose fast paths
change with a parameter's size (the torch CPU kernel's tiles; uniopt.tf's XLA scheduling hints,
which Schedule-Free AdamW's rule takes from 32,768 elements; uniopt.torch's bfloat16 matrix kernels
for Muon's torch convention, from ``128**3`` multiply-adds in an iteration's Gram product;
uniopt.tf's gathered halvings of pairwise sums under XLA, in arrays of 32,768 elements or more
and where padding would reach a page past an array's end, which Adafactor's and LAMB's norms,
means and RMS take on these shapes)."""

LARGE_STEPS = 8
"""Steps of the ``large`` stream: past RAdam's first rectified step (6), few
because each step is 74,571 elements."""


CONVENTION_STREAMS = ("normal", "huge", "nonfinite", "parity")
"""The streams of a case with a framework convention (``convention`` other than ``"uniopt"``);
``parity`` runs only those cases."""

CONVENTION_DTYPES = ("float32", "float64")

PARITY_STEPS = 1000
"""Steps of the ``parity`` stream, long enough for a native optimizer's drift to show."""


def convention_of(optimizer: str, case: str) -> str:
    """The ``convention`` of a registry case (``"uniopt"`` unless the case names one)."""
    for info in TABLE:
        if info.name == optimizer:
            return info.case(case).kwargs.get("convention", "uniopt")
    raise KeyError(optimizer)


def _runs(convention: str, stream: str, dtype: str) -> bool:
    if stream == "large":  # its cases are listed (LARGE_CASES)
        return True
    if convention == "uniopt":
        return stream != "parity"
    return stream in CONVENTION_STREAMS and dtype in CONVENTION_DTYPES


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
    :data:`LONG_STEPS` steps (or ``steps``, if that is longer); the ``large`` stream only the cases
    of :data:`LARGE_CASES`, for :data:`LARGE_STEPS` steps. Cases with a
    framework convention run :data:`CONVENTION_STREAMS` in :data:`CONVENTION_DTYPES`, the
    ``parity`` stream for :data:`PARITY_STEPS` steps.
    """
    wanted = set(optimizers) if optimizers is not None else None
    unknown = sorted(wanted - {info.name for info in TABLE}) if wanted is not None else []
    if unknown:
        raise ValueError(
            f"unknown optimizer(s) {', '.join(unknown)}; the table has {', '.join(i.name for i in TABLE)}"
        )
    stream_names = list(streams) if streams is not None else list(STREAMS)
    lengths = {"long": max(steps, LONG_STEPS), "parity": max(steps, PARITY_STEPS), "large": LARGE_STEPS}
    long_cases = {name: ("default",) for name in LONG_OPTIMIZERS}
    only = {"long": long_cases, "large": LARGE_CASES}
    return [
        Cell(info.name, case.desc, stream, dtype, lengths.get(stream, steps))
        for info in TABLE
        if wanted is None or info.name in wanted
        for case in info.all_cases
        for stream in stream_names
        for few in [only.get(stream)]
        if few is None or case.desc in few.get(info.name, ())
        for dtype in dtypes
        if few is None or dtype == "float32"
        if _runs(case.kwargs.get("convention", "uniopt"), stream, dtype)
    ]
