"""Compare every backend's trajectories with the NumPy reference of the same dtype, in ulp.

Each cell's verdict: ``pass`` (worst ulp within the table's tolerance, or, where the row states a
relative bound for the cell (``OptimizerInfo.relative_tolerance``: a backend's matrix products),
the normwise relative distance within it), ``FAIL`` (over it, or a
recorded array missing or of another shape), ``skipped`` (the cell cannot exist there: a dtype the
backend lacks, a hyperparameter that rounds to 0, a native framework without the optimizer or
convention; with the reason), ``deferred`` (left to ``--full`` for time; with the reason) or
``reference`` (the NumPy run itself). Beside the ulp distance every cell reports its accuracy: the
normwise relative error of its float32 trajectory against the NumPy float64 run of the same cell
(per array and step ``max|x32 - x64|`` over the largest ``|x64|`` the array has had so far, worst
over all), so the cost of float32 is visible
beside the bitwise verdict.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from uniopt.registry import get as get_info

from .backends import REFERENCE, bounds_of
from .cells import Cell
from .streams import dtype_of
from .ulp import ulp_distance

__all__ = ["CellResult", "compare_dir", "stale_runs", "stale_warning"]


@dataclasses.dataclass(frozen=True)
class CellResult:
    backend: str
    mode: str
    optimizer: str
    case: str
    stream: str
    dtype: str
    steps: int
    verdict: str  # pass | FAIL | skipped (cannot exist) | deferred (left to --full) | reference
    ulp: int | None = None  # worst distance to the reference over all steps and arrays
    first_step: int | None = None  # first step with a nonzero distance
    tolerance: int | None = None
    rel_tolerance: float | None = None  # the row's relative bound, where it has one for this cell
    rel_error_f64: float | None = None  # below float64: normwise relative error vs float64
    rel_diff: float | None = None  # relative distance to the reference of the same dtype
    reason: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict == "FAIL"


class _Trajectories:
    """Lazy access to one ``<backend>@<mode>`` output; with ``keep``, each cell read is kept (the
    reference's: every backend's cell reads its cell and its float64 cell, about ten reads each from
    the compressed file otherwise; at most the file's uncompressed size, 226 MB for 13,934 cells)."""

    def __init__(self, meta_path: Path, keep: bool = False):
        self._kept: dict[str, dict[str, np.ndarray]] | None = {} if keep else None
        self.meta = json.loads(meta_path.read_text())
        self.npz = np.load(meta_path.parent / (meta_path.name.removesuffix(".json") + ".npz"))
        self.index: dict[str, list[str]] = {}
        for entry in self.npz.files:
            key, name = entry.split("::")
            self.index.setdefault(key, []).append(name)

    def cell(self, key: str) -> dict[str, np.ndarray]:
        if self._kept is not None and key in self._kept:
            return self._kept[key]
        dtype = dtype_of(Cell.from_key(key).dtype)
        arrays = {name: _restored(self.npz[f"{key}::{name}"], dtype) for name in self.index.get(key, [])}
        if self._kept is not None:
            self._kept[key] = arrays
        return arrays


def _restored(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """An array as the run held it: npz keeps extension dtypes (bfloat16) as raw bytes, viewed back
    here as the cell's dtype, or, for 2 bytes beside wider parameters, as bfloat16 (a slot stored in
    bfloat16, ``registry.Case.slot_dtypes``; NumPy's own float16 comes back as itself)."""
    if array.dtype == dtype or array.dtype.kind != "V":
        return array
    if array.dtype.itemsize == dtype.itemsize:
        return array.view(dtype)
    if array.dtype.itemsize == 2:
        return array.view(dtype_of("bfloat16"))
    raise ValueError(f"an array of {array.dtype.itemsize}-byte raw values in a {dtype} cell")


def _distance(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> tuple[int, int | None]:
    """Worst ulp over every array and step, and the first step where any distance is nonzero."""
    worst, first = 0, None
    for name, expected in want.items():
        per_step = ulp_distance(got[name], expected).reshape(expected.shape[0], -1)
        step_max = per_step.max(axis=1) if per_step.shape[1] else np.zeros(len(per_step), np.uint64)
        worst = max(worst, int(step_max.max()))
        nonzero = np.flatnonzero(step_max)
        if nonzero.size and (first is None or nonzero[0] < first):
            first = int(nonzero[0])
    return worst, first


def _relative_error(got: np.ndarray, exact: np.ndarray) -> float:
    """Worst per-step normwise relative error; ``inf`` where finiteness differs."""
    g = got.astype(np.float64).reshape(got.shape[0], -1)
    e = exact.reshape(exact.shape[0], -1)
    if g.shape[1] == 0:
        return 0.0
    finite = np.isfinite(g) & np.isfinite(e)
    agree = (np.isnan(g) & np.isnan(e)) | (np.isinf(g) & (g == e))
    if np.any(~finite & ~agree):
        return float("inf")
    with np.errstate(invalid="ignore"):  # inf - inf where both are the same infinity
        diff = np.where(finite, np.abs(g - e), 0.0).max(axis=1)
    # the envelope: the largest magnitude the array has had so far (a value crossing zero keeps the
    # absolute error of the terms that built it)
    scale = np.maximum.accumulate(np.where(finite, np.abs(e), 0.0).max(axis=1))
    return float((diff / np.where(scale > 0, scale, 1.0)).max())


def _accuracy(got: dict[str, np.ndarray], exact: dict[str, np.ndarray] | None) -> float | None:
    if exact is None:
        return None
    return max((_relative_error(got[name], value) for name, value in exact.items()), default=0.0)


STALE_HINT = "rerun them or delete {traj_dir}"


def _run_files(traj_dir: Path) -> list[Path]:
    return sorted(Path(traj_dir).glob("*@*.json"))


def _staleness(traj_dir: Path, current: str | None = None) -> dict[str, str]:
    """``{"<backend>@<mode>.json": why}`` for every trajectory file not made by this version of the code:
    its ``fingerprint`` (:func:`conformance.fingerprint.source_fingerprint` when it ran) differs from
    this checkout's or from the reference's, or it has none (unknown provenance)."""
    from .fingerprint import source_fingerprint

    current = source_fingerprint() if current is None else current
    prints = {p.name: json.loads(p.read_text()).get("fingerprint") for p in _run_files(traj_dir)}
    reference = prints.get(f"{REFERENCE}@eager.json")
    stale = {}
    for name, found in prints.items():
        if not found:
            stale[name] = "no fingerprint: unknown provenance"
        elif found != current:
            stale[name] = f"fingerprint {found[:12]}, this code's is {current[:12]}"
        elif reference and found != reference:
            stale[name] = f"fingerprint {found[:12]}, the reference's is {reference[:12]}"
    return stale


def stale_runs(traj_dir: Path, current: str | None = None) -> list[str]:
    """The trajectory files :func:`compare_dir` leaves out, each as ``"<file> (why)"``: made by
    another version of the code (their source fingerprint is not this checkout's or the reference's)
    or of unknown provenance (no fingerprint)."""
    return [f"{name} ({why})" for name, why in _staleness(traj_dir, current).items()]


def stale_warning(traj_dir: Path, current: str | None = None) -> str | None:
    """The line to print when :func:`compare_dir` left files out (None when it left none)."""
    stale = stale_runs(traj_dir, current)
    if not stale:
        return None
    files = "file is" if len(stale) == 1 else "files are"
    hint = STALE_HINT.format(traj_dir=traj_dir)
    return (
        f"{len(stale)} trajectory {files} from another version of the code, left out of the comparison: "
        f"{'; '.join(stale)}. {hint[0].upper()}{hint[1:]}."
    )


def compare_dir(traj_dir: Path, current: str | None = None) -> list[CellResult]:
    """Every cell of every ``<backend>@<mode>.json`` in ``traj_dir`` against the reference.

    Files from another version of the code or of unknown provenance (see :func:`stale_runs`, which
    names them for the caller to print) are left out: none of their cells is counted. ``current``
    is the source fingerprint to hold them to (default: this checkout's).
    """
    stale = _staleness(traj_dir, current)
    ref_key = f"{REFERENCE}@eager"
    if f"{ref_key}.json" in stale:
        hint = STALE_HINT.format(traj_dir=traj_dir)
        raise FileNotFoundError(
            f"no reference trajectories from this version of the code in {traj_dir}: {ref_key}.json has "
            f"{stale[f'{ref_key}.json']} ({hint}; python -m conformance run --backend {REFERENCE} "
            f"writes the reference)"
        )
    runs = {
        p.name.removesuffix(".json"): _Trajectories(p, keep=p.name == f"{ref_key}.json")
        for p in _run_files(traj_dir)
        if p.name not in stale
    }
    if ref_key not in runs:
        raise FileNotFoundError(f"no reference trajectories ({ref_key}.json) in {traj_dir}")
    reference = runs[ref_key]
    results: list[CellResult] = []
    for run in runs.values():
        backend, mode = run.meta["backend"], run.meta["mode"]
        for verdict, field in (("skipped", "skipped"), ("deferred", "deferred")):
            for key, reason in run.meta.get(field, {}).items():
                c = Cell.from_key(key)
                results.append(
                    CellResult(
                        backend, mode, c.optimizer, c.case, c.stream, c.dtype, c.steps, verdict, reason=reason
                    )
                )
        for key in run.meta["cells"]:
            results.append(_compare_cell(run, reference, key, backend, mode))
    return results


def _compare_cell(
    run: _Trajectories, reference: _Trajectories, key: str, backend: str, mode: str
) -> CellResult:
    c = Cell.from_key(key)
    got = run.cell(key)
    exact = None
    if c.dtype != "float64":
        exact_key = dataclasses.replace(c, dtype="float64").key
        exact = reference.cell(exact_key) or None
    base = dict(
        backend=backend,
        mode=mode,
        optimizer=c.optimizer,
        case=c.case,
        stream=c.stream,
        dtype=c.dtype,
        steps=c.steps,
    )
    if backend == REFERENCE and mode == "eager":
        return CellResult(**base, verdict="reference", rel_error_f64=_accuracy(got, exact))
    want = reference.cell(key)
    same_as = bounds_of(backend, mode)  # a mode that runs another backend's kernels takes its bounds
    tolerance = get_info(c.optimizer).tolerance(backend, mode, c.case, c.stream, same_as)
    if not want:
        return CellResult(
            **base,
            verdict="FAIL",
            tolerance=tolerance,
            reason="the reference has no trajectory for this cell",
        )
    if set(got) != set(want) or any(got[n].shape != want[n].shape for n in want):
        return CellResult(
            **base,
            verdict="FAIL",
            tolerance=tolerance,
            reason=f"recorded arrays differ: {sorted(got)} vs {sorted(want)}",
        )
    worst, first = _distance(got, want)
    rel_diff = _accuracy(got, want) if worst else 0.0
    relative = get_info(c.optimizer).relative_bound(backend, mode, c.case, c.stream, same_as)
    within = worst <= tolerance or (relative is not None and rel_diff is not None and rel_diff <= relative[0])
    return CellResult(
        **base,
        verdict="pass" if within else "FAIL",
        ulp=worst,
        rel_diff=rel_diff,
        first_step=first,
        tolerance=tolerance,
        rel_tolerance=relative[0] if relative is not None else None,
        rel_error_f64=_accuracy(got, exact),
        reason=f"relative distance {rel_diff:.2g} within {relative[0]:g}: {relative[1]}"
        if worst > tolerance and within and relative is not None
        else "",
    )
