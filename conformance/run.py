"""Run one backend over the matrix and write its trajectories.

Output, per mode: ``<out>/<backend>@<mode>.npz`` with one entry per recorded array, keyed
``<cell key>::param<i>`` / ``<cell key>::<slot><i>``, each stacked over steps (index 0 is the state
before the first step), and ``<backend>@<mode>.json`` with the cells run, the cells skipped and why,
library versions and timing.
"""

from __future__ import annotations

import contextlib
import json
import platform
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

from uniopt.registry import get as get_info

from .backends import REFERENCE, Backend, Runner
from .cells import Cell
from .streams import STREAMS, dtype_of, gradients, initial_params

__all__ = ["run_backend", "run_cell"]


def run_cell(runner: Runner, cell: Cell) -> dict[str, np.ndarray]:
    """The trajectory of one cell: every parameter and slot at steps ``0..cell.steps``."""
    info = get_info(cell.optimizer)
    spec = info.make(info.case(cell.case))
    stream = STREAMS[cell.stream]
    params0 = initial_params(stream.param_set, cell.dtype)
    with np.errstate(all="ignore"):  # the nonfinite stream divides by inf and NaN on purpose
        snapshots = list(runner(spec, params0, lambda step: gradients(stream, step, cell.dtype), cell.steps))
    record: dict[str, list[np.ndarray]] = {}
    for params, slots in snapshots:
        for i, p in enumerate(params):
            record.setdefault(f"param{i}", []).append(p)
        for i, named in enumerate(slots):
            for name, value in named.items():
                record.setdefault(f"{name}{i}", []).append(value)
    return {name: np.stack(values) for name, values in record.items()}


PARITY_DEFAULT = (
    "left to --full: the 1000-step parity stream runs in the reference and the native rows by "
    "default (the other rows prove the convention on the 50-step streams)"
)


def _compares_spec(backend: Backend, mode: str) -> bool:
    """A row that executes the uniopt spec (not the reference, not a native optimizer)."""
    return backend.name != REFERENCE and mode != "native"


def _vanishing(info, cell: Cell) -> str | None:
    """Why a cell cannot run in its dtype: a hyperparameter that rounds to 0 there."""
    dtype = dtype_of(cell.dtype)
    gone = info.make(info.case(cell.case)).underflowing(lambda v: float(np.asarray(v, dtype)))
    return f"{', '.join(gone)} rounds to 0 in {cell.dtype}" if gone else None


def _versions(backend: Backend) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in ("numpy", "uniopt", "array-api-compat", backend.module.replace("_", "-")):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[dist] = metadata.version(dist)
    return found


def run_backend(
    backend: Backend,
    cells: Sequence[Cell],
    out: Path,
    modes: Sequence[str] | None = None,
    progress: Callable[[int, str], None] | None = None,
    full: bool = False,
) -> list[Path]:
    """Run ``cells`` on every mode of ``backend``; returns the metadata files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for mode in modes or backend.modes:
        runner = backend.make_runner(mode)
        arrays: dict[str, np.ndarray] = {}
        ran, skipped = [], {}
        start = time.perf_counter()
        for cell in cells:
            info = get_info(cell.optimizer)
            reason = backend.supports(cell) if backend.supports is not None else None
            reason = reason or info.skip_reason(backend.name, mode) or _vanishing(info, cell)
            if reason is None and not full and cell.stream == "parity" and _compares_spec(backend, mode):
                reason = PARITY_DEFAULT
            if reason is None and cell.dtype not in backend.dtypes:
                reason = f"{backend.name} does not support {cell.dtype}"
            if reason is None and not full:
                reason = backend.skip_by_default(mode, cell)
            if reason is not None:
                skipped[cell.key] = reason
            else:
                for name, value in run_cell(runner, cell).items():
                    arrays[f"{cell.key}::{name}"] = value
                ran.append(cell.key)
            if progress is not None:
                progress(1, f"{backend.name}@{mode} {cell.key}")
        stem = f"{backend.name}@{mode}"  # may contain dots (torch.optim): no with_suffix
        np.savez_compressed(out / f"{stem}.npz", **arrays)
        meta = {
            "backend": backend.name,
            "mode": mode,
            "cells": ran,
            "skipped": skipped,
            "versions": _versions(backend),
            "seconds": round(time.perf_counter() - start, 3),
        }
        (out / f"{stem}.json").write_text(json.dumps(meta, indent=1))
        written.append(out / f"{stem}.json")
    return written
