"""Run one backend over the matrix and write its trajectories.

Cells run in batches (:func:`batches`): every cell of one optimizer, dtype and step count goes to
the mode's runner in one call, which steps them all at once (see ``conformance.backends.Runner``:
one optimizer per case over its cells' parameters, same-shape parameters of an elementwise
optimizer stacked, one traced program per batch in the compiled modes). Each cell's trajectory is
still recorded and compared on its own; the harness tests show that a batch gives every cell the
numbers it gets alone, and that a 1-ulp change in one cell of a batch fails that cell and no other.

Output, per mode: ``<out>/<backend>@<mode>.npz`` with one entry per recorded array, keyed
``<cell key>::param<i>`` / ``<cell key>::<slot><i>``, each stacked over steps (index 0 is the state
before the first step), and ``<backend>@<mode>.json`` with the cells run, the cells that cannot
exist there (``skipped``) and those left to ``--full`` (``deferred``), each with its reason, library
versions, the source fingerprint, and the time of the whole mode and of each batch.
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

from .backends import Backend, Member, Runner
from .cells import Cell
from .streams import STREAMS, dtype_of, gradients, initial_params, param_set_for

__all__ = ["batches", "member_of", "run_backend", "run_batch", "run_cell"]


def member_of(cell: Cell) -> Member:
    """A cell's spec, starting parameters and gradient stream."""
    info = get_info(cell.optimizer)
    stream = STREAMS[cell.stream]
    case = info.case(cell.case)
    spec = info.make(case)
    param_set = param_set_for(spec, stream)
    return Member(
        spec,
        initial_params(param_set, cell.dtype),
        lambda step: gradients(stream, step, cell.dtype, param_set),
        dict(case.slot_dtypes),
    )


def run_batch(runner: Runner, batch: Sequence[Cell]) -> dict[Cell, dict[str, np.ndarray]]:
    """The trajectories of cells that run together (same step count): per cell, every parameter and
    slot at steps ``0..steps``, keyed ``param<i>`` / ``<slot><i>``."""
    steps = {cell.steps for cell in batch}
    if len(steps) != 1:
        raise ValueError(f"a batch runs one step count, got {sorted(steps)}")
    record: list[dict[str, list[np.ndarray]]] = [{} for _ in batch]
    with np.errstate(all="ignore"):  # the nonfinite stream divides by inf and NaN on purpose
        for snapshots in runner([member_of(cell) for cell in batch], steps.pop()):
            for rec, (params, slots) in zip(record, snapshots, strict=True):
                for i, p in enumerate(params):
                    rec.setdefault(f"param{i}", []).append(p)
                for i, named in enumerate(slots):
                    for name, value in named.items():
                        rec.setdefault(f"{name}{i}", []).append(value)
    return {
        cell: {name: np.stack(values) for name, values in rec.items()}
        for cell, rec in zip(batch, record, strict=True)
    }


def run_cell(runner: Runner, cell: Cell) -> dict[str, np.ndarray]:
    """The trajectory of one cell (a batch of one)."""
    return run_batch(runner, [cell])[cell]


def batches(cells: Sequence[Cell]) -> list[list[Cell]]:
    """Cells that run in one call: same optimizer, dtype and step count (one compiled program per
    batch in the jit modes), in the order first seen."""
    found: dict[tuple[str, str, int], list[Cell]] = {}
    for cell in cells:
        found.setdefault((cell.optimizer, cell.dtype, cell.steps), []).append(cell)
    return list(found.values())


def _slot_dtypes_refused(backend: Backend, info, cell: Cell) -> str | None:
    """Why a case with lower-precision slots (``registry.Case.slot_dtypes``) does not run here: the
    backend does not store them, or the cell's parameter dtype does not take them."""
    case = info.case(cell.case)
    if not case.slot_dtypes:
        return None
    if not backend.slot_dtypes:
        return (
            f"{backend.name} runs no lower-precision state (slot_dtypes): the core on NumPy, uniopt.jax, "
            "uniopt.torch and uniopt.tf do"
        )
    spec = info.make(case)
    for name, dtype in case.slot_dtypes.items():
        why = spec.slot_dtype_refusal(name, dtype, cell.dtype)
        if why is not None:
            return f"slot_dtypes {name}={dtype} beside {cell.dtype} parameters: {why}"
    return None


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


def _why_not(backend: Backend, mode: str, cell: Cell, full: bool) -> tuple[str, str] | None:
    """``("skipped", why)`` for a cell that cannot exist in this row, ``("deferred", why)`` for one
    left to ``--full`` for time, ``None`` for a cell to run."""
    info = get_info(cell.optimizer)
    reason = backend.unsupported(mode, cell)
    reason = reason or _slot_dtypes_refused(backend, info, cell)
    reason = reason or info.skip_reason(backend.name, mode, cell.case) or _vanishing(info, cell)
    if reason is None and cell.dtype not in backend.dtypes:
        reason = f"{backend.name} does not support {cell.dtype}"
    if reason is not None:
        return "skipped", reason
    if full:
        return None
    reason = backend.skip_by_default(mode, cell)
    return None if reason is None else ("deferred", reason)


def run_backend(
    backend: Backend,
    cells: Sequence[Cell],
    out: Path,
    modes: Sequence[str] | None = None,
    progress: Callable[[int, str], None] | None = None,
    full: bool = False,
    deadline: float | None = None,
) -> list[Path]:
    """Run ``cells`` on every mode of ``backend``; returns the metadata files written.

    ``deadline`` (a ``time.perf_counter()`` value; for a lent machine's short lease): no batch
    starts after it; the cells not reached are recorded as deferred, with that reason, and the
    file is written as usual."""
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint()  # of the code this process imported, taken before it runs
    written = []
    for mode in modes or backend.modes:
        runner = backend.make_runner(mode)
        arrays: dict[str, np.ndarray] = {}
        ran: list[str] = []
        not_run: dict[str, dict[str, str]] = {"skipped": {}, "deferred": {}}
        to_run: list[Cell] = []
        for cell in cells:
            why = _why_not(backend, mode, cell, full)
            if why is None:
                to_run.append(cell)
            else:
                not_run[why[0]][cell.key] = why[1]
        if progress is not None and len(to_run) < len(cells):
            progress(len(cells) - len(to_run), f"{backend.name}@{mode}: cells not run here")
        start = time.perf_counter()
        timings = []
        for batch in batches(to_run):
            began = time.perf_counter()
            if deadline is not None and began > deadline:
                for cell in batch:
                    not_run["deferred"][cell.key] = "not reached before the run's --deadline"
                continue
            for cell, trajectory in run_batch(runner, batch).items():
                for name, value in trajectory.items():
                    arrays[f"{cell.key}::{name}"] = value
                ran.append(cell.key)
            first = batch[0]
            label = f"{first.optimizer}/{first.dtype}/{first.steps}"
            timings.append([label, len(batch), round(time.perf_counter() - began, 3)])
            if progress is not None:
                progress(len(batch), f"{backend.name}@{mode} {label}")
        stem = f"{backend.name}@{mode}"  # may contain dots (torch.optim): no with_suffix
        np.savez_compressed(out / f"{stem}.npz", **arrays)
        meta = {
            "backend": backend.name,
            "mode": mode,
            "full": full,
            "cells": ran,
            "skipped": not_run["skipped"],
            "deferred": not_run["deferred"],
            "versions": _versions(backend),
            "seconds": round(time.perf_counter() - start, 3),
            "batches": timings,
            "fingerprint": fingerprint,
            "finished": time.time(),
        }
        (out / f"{stem}.json").write_text(json.dumps(meta, indent=1))
        written.append(out / f"{stem}.json")
    return written


def _fingerprint() -> str:
    """The digest of the sources that make these numbers: those this process imported (a venv's
    installed uniopt may predate an edit of the checkout; see :mod:`conformance.fingerprint`)."""
    from .fingerprint import imported_fingerprint

    return imported_fingerprint()
