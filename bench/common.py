"""What every framework's benchmark shares: the parameter sets, interleaved timing, memory probes
and the memory-bandwidth bound, and the JSON the report reads.

Timing: every variant is built and warmed up (compilation and RAdam's unrectified first steps happen
there), then ``rounds`` rounds each time ``steps`` consecutive steps of every variant in turn, so
that load from other processes hits all variants alike. A variant's figure is the median over
rounds of the mean step time in a round.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "NOT_MEASURED",
    "SETS",
    "SPARSE_ROWS",
    "SPARSE_SHAPE",
    "Copy",
    "Measured",
    "ParamSet",
    "PeakProbe",
    "Variant",
    "bound_variants",
    "in_place_bound",
    "machine",
    "measure",
    "merged",
    "new_run",
    "param_set",
    "read_results",
    "results_name",
    "rss_probe",
    "sparse_gradient",
    "with_runs",
    "write_results",
]

BENCH_OVERRIDES: dict[str, dict[str, Any]] = {
    # hyperparameters beyond the spec's default learning rate, where the default step is not the one
    # people time: SGD without momentum is a plain axpy
    "SGD": {"lr": 1e-3, "momentum": 0.9},
}


def bench_hyperparameters() -> dict[str, dict[str, Any]]:
    """Every optimizer of the table -> the spec-named hyperparameters both uniopt and the native
    take in the benchmark: the spec's default ``lr`` (the uniopt convention's), or
    :data:`BENCH_OVERRIDES`."""
    from uniopt.registry import TABLE

    out = {}
    for info in TABLE:
        out[info.name] = dict(BENCH_OVERRIDES.get(info.name) or {"lr": float(info.spec().lr)})
    return out


BYTES_PER_PARAM = 28
"""Bytes an Adam-type step must move per float32 parameter: read param, grad and two moments (16),
write param and two moments (12)."""


@dataclasses.dataclass(frozen=True)
class ParamSet:
    """A parameter set: ``count`` tensors; the shapes alternate between 2-D and 1-D."""

    name: str
    shapes: tuple[tuple[int, ...], ...]

    @property
    def size(self) -> int:
        return int(sum(np.prod(s) for s in self.shapes))

    @property
    def label(self) -> str:
        return f"{self.size / 1e6:.1f}M params in {len(self.shapes)} tensors"


def _alternating(count: int, two_d: tuple[int, int]) -> tuple[tuple[int, ...], ...]:
    one_d = (two_d[0] * two_d[1],)
    return tuple(two_d if i % 2 == 0 else one_d for i in range(count))


SETS: dict[str, ParamSet] = {
    "large": ParamSet("large", _alternating(16, (1260, 1250))),  # 25.2M params in 16 tensors
    "many_small": ParamSet("many_small", _alternating(2000, (20, 25))),  # 1.0M params in 2000 tensors
}
QUICK_SETS: dict[str, ParamSet] = {
    "large": ParamSet("large", _alternating(16, (630, 625))),  # 6.3M params in 16 tensors
    "many_small": ParamSet("many_small", _alternating(500, (20, 25))),  # 0.25M params in 500 tensors
}


SPARSE_SHAPE = (1_000_000, 64)
"""The sparse set: one embedding table of this shape (float32, standard normal times 0.01)."""
SPARSE_ROWS = 32
"""Rows of it a step's sparse gradient touches (distinct indices)."""


def sparse_gradient(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The sparse set's gradient: :data:`SPARSE_ROWS` distinct row indices (int64) and their rows
    (float32, standard normal times 0.01)."""
    rng = np.random.default_rng(seed)
    indices = rng.choice(SPARSE_SHAPE[0], size=SPARSE_ROWS, replace=False).astype(np.int64)
    values = rng.standard_normal((SPARSE_ROWS, SPARSE_SHAPE[1]), dtype=np.float32) * np.float32(0.01)
    return indices, values


def param_set(name: str, quick: bool) -> ParamSet:
    return (QUICK_SETS if quick else SETS)[name]


def accepted_shapes(pset: ParamSet, optimizer: str) -> ParamSet:
    """``pset`` without the shapes ``optimizer``'s spec (default hyperparameters) refuses
    (:meth:`uniopt.Spec.param_refusal`): Muon, like torch.optim.Muon, takes 2-D parameters only, so
    it is timed on the set's 2-D tensors, natives and yardstick alike."""
    from uniopt.registry import get

    spec = get(optimizer).spec()
    shapes = tuple(s for s in pset.shapes if spec.param_refusal(s) is None)
    return pset if len(shapes) == len(pset.shapes) else ParamSet(pset.name, shapes)


def arrays(pset: ParamSet, seed: int) -> list[np.ndarray]:
    """float32 arrays of the set's shapes, standard normal times 0.01."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s, dtype=np.float32) * np.float32(0.01)) for s in pset.shapes]


@dataclasses.dataclass
class Variant:
    """One way to take a step: ``build(params, grads)`` returns the step function; ``state_bytes``
    (called after warm-up) counts the optimizer's state; ``sync`` waits for queued work.
    ``refusal(exc)`` says whether an exception raised by the build or the first step is the
    library's documented refusal of this variant (uniopt.tf refusing XLA where its per-step scalars
    come from the host): the row is then recorded as not run, with the message."""

    name: str
    kind: str  # "uniopt", "uniopt-mode" (another mode), "native", "reference" (a yardstick) or "bound"
    build: Callable[[list[np.ndarray], list[np.ndarray]], Callable[[], None]]
    state_bytes: Callable[[], int] = lambda: 0
    sync: Callable[[], None] = lambda: None
    note: str = ""
    skip: str = ""  # non-empty: not run, and why
    refusal: Callable[[Exception], bool] = lambda exc: False


@dataclasses.dataclass
class Measured:
    name: str
    kind: str
    ms: float | None
    spread: float | None  # interquartile range of the per-round times, ms
    first_step_s: float | None  # the first step, compilation included
    state_bytes: int | None
    peak_step_bytes: int | None  # resident memory a step adds above the steady state
    note: str = ""
    skip: str = ""


def _rss(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the process's peak resident size (Linux ``clear_refs`` 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class PeakProbe:
    """Memory a step adds above the steady state: ``start()`` resets the peak and returns the bytes in
    use (``None`` where it cannot), ``peak()`` returns the peak since."""

    start: Callable[[], int | None]
    peak: Callable[[], int | None]


NOT_MEASURED = PeakProbe(lambda: None, lambda: None)
"""A probe for a device whose peak memory a framework cannot reset and read."""


def rss_probe() -> PeakProbe:
    """The process's resident memory (host steps)."""
    return PeakProbe(lambda: _rss("VmRSS") if _reset_peak() else None, lambda: _rss("VmHWM"))


def measure(
    variants: list[Variant],
    params: list[np.ndarray],
    grads: list[np.ndarray],
    *,
    warmup: int,
    rounds: int,
    steps: int,
    log: Callable[[str], None] = print,
    probe: PeakProbe | None = None,
) -> list[Measured]:
    """Build and warm up every variant, then time them interleaved (see the module docstring).
    ``probe`` measures a step's peak memory (default: the process's resident memory)."""
    probe = probe or rss_probe()
    live: list[tuple[Variant, Callable[[], None], float]] = []
    results: dict[str, Measured] = {}
    for v in variants:
        if v.skip:
            results[v.name] = Measured(v.name, v.kind, None, None, None, None, None, v.note, v.skip)
            continue
        try:
            step = v.build(params, grads)
            start = time.perf_counter()
            step()
            v.sync()
        except Exception as exc:
            if not v.refusal(exc):
                raise
            # the refusal's own words: TensorFlow prefixes the traced frames to the message
            words = " ".join(str(exc).split())
            reason = f"refused: {words.rpartition(f'{type(exc).__name__}: ')[2]}"
            results[v.name] = Measured(v.name, v.kind, None, None, None, None, None, v.note, reason)
            log(f"  {v.name}: {reason}")
            continue
        first = time.perf_counter() - start
        for _ in range(warmup - 1):
            step()
        v.sync()
        live.append((v, step, first))
        log(f"  built {v.name} (first step {first:.2f} s)")
    times: dict[str, list[float]] = {v.name: [] for v, _, _ in live}
    peaks: dict[str, int | None] = {}
    for v, step, _ in live:  # peak memory of one step above the steady state
        v.sync()
        before = probe.start()
        step()
        v.sync()
        after = probe.peak()
        peaks[v.name] = max(0, after - before) if before is not None and after is not None else None
    for _ in range(rounds):
        for v, step, _ in live:
            v.sync()
            start = time.perf_counter()
            for _ in range(steps):
                step()
            v.sync()
            times[v.name].append((time.perf_counter() - start) / steps * 1e3)
    for v, _, first in live:
        t = sorted(times[v.name])
        q1, q3 = np.percentile(t, [25, 75]) if len(t) > 1 else (t[0], t[0])
        results[v.name] = Measured(
            v.name,
            v.kind,
            statistics.median(t),
            float(q3 - q1),
            first,
            int(v.state_bytes()),
            peaks[v.name],
            v.note,
        )
    return [results[v.name] for v in variants]


Copy = Callable[[int], Callable[[], None]]
"""``make(elements)``: a function that copies ``elements`` float32 values from one buffer to another."""


def bound_variants(
    size: int, copies: dict[str, Copy], sync: Callable[[], None] = lambda: None, in_place: bool = False
) -> list[Variant]:
    """The memory-bandwidth bound of an Adam-type step on ``size`` float32 params, timed with the
    optimizers (interleaved): copying ``BYTES_PER_PARAM * size`` bytes, half read and half written,
    with each copy offered (the report takes the fastest); with ``in_place`` (the CPU) also the
    in-place read-modify-write of the step's four arrays (:func:`in_place_bound`), where a C
    compiler builds it. ``sync`` waits for queued copies (GPU)."""
    elements = BYTES_PER_PARAM * size // 8  # float32 elements per buffer: 14 B read + 14 B written

    def build(make: Copy) -> Callable[[list, list], Callable[[], None]]:
        return lambda params, grads: make(elements)

    out = [
        Variant(
            f"memory-bandwidth bound ({name})",
            "bound",
            build(make),
            sync=sync,
            note=f"copy of {BYTES_PER_PARAM} B/param",
        )
        for name, make in copies.items()
    ]
    if in_place:

        def build_in_place(params: list, grads: list) -> Callable[[], None]:
            step = in_place_bound(size)
            if step is None:
                raise RuntimeError("no C compiler built the in-place bound")
            return step

        out.append(
            Variant(
                "memory-bandwidth bound (in-place C loop)",
                "bound",
                build_in_place,
                refusal=lambda exc: isinstance(exc, RuntimeError) and "in-place bound" in str(exc),
                note=f"reads p, g, m, v and writes p, m, v in place: {BYTES_PER_PARAM} B/param",
            )
        )
    return out


IN_PLACE_SOURCE = r"""
#include <stdint.h>
void uniopt_bound(int64_t n, float *restrict p, const float *restrict g, float *restrict m,
                  float *restrict v, int threads) {
  const int64_t tiles = (n + 32767) / 32768;
  #pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t hi = (t + 1) * 32768 < n ? (t + 1) * 32768 : n;
    for (int64_t i = t * 32768; i < hi; ++i) {
      const float d = g[i];
      p[i] = p[i] + d;
      m[i] = m[i] + d;
      v[i] = v[i] + d;
    }
  }
}
"""
"""The in-place bound's loop (:func:`in_place_bound`): one pass over tiles of 32768 elements shared
over OpenMP threads, as uniopt.torch's CPU kernel shares its segments, reading ``p, g, m, v`` and
writing ``p, m, v`` once, with one addition each (no arithmetic to wait for)."""


def in_place_bound(
    size: int, threads: int | None = None, arrays: tuple[np.ndarray, ...] | None = None
) -> Callable[[], None] | None:
    """The tight CPU bound of an Adam-type step on ``size`` float32 params: one loop, compiled with
    the system C compiler (``$CC``, split as a shell would, else ``cc``, ``gcc`` or ``clang``;
    ``-O3 -march=native -fopenmp``), that reads a parameter, a gradient and two moments and writes
    the parameter and both moments in place, :data:`BYTES_PER_PARAM` bytes per parameter and
    nothing else (no write-allocate, unlike a copy), on ``threads`` OpenMP threads (``None``:
    ``os.cpu_count()``, the bench's machines' every core). No step that keeps those arrays can move
    less memory, so an optimizer's ratio to it is what its arithmetic and its host work cost
    beyond the bytes; on a loaded machine it is as noisy as any row. ``arrays``: the ``p, g, m,
    v`` it updates (contiguous float32 NumPy arrays of ``size`` elements, ``p, m, v`` writeable,
    none sharing memory with another; default: new ones). ``ValueError``, before anything is
    built, for other ``arrays`` or a ``threads`` that is not a whole number >= 1; ``None`` where no
    compiler builds it (or not on POSIX)."""
    import ctypes
    import shlex
    import shutil

    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads: expected a whole number >= 1 or None (every core), got {threads!r}")
    if arrays is None:
        rng = np.random.default_rng(0)
        # small increments: 1e-3 a step keeps every value far from overflow and from subnormals
        arrays = tuple(rng.standard_normal(size).astype(np.float32) * 1e-3 for _ in range(4))
    arrays = tuple(arrays)
    if (
        len(arrays) != 4
        or not all(isinstance(a, np.ndarray) for a in arrays)
        or any(a.dtype != np.float32 or a.shape != (size,) or not a.flags.c_contiguous for a in arrays)
        or not all(a.flags.writeable for a in (arrays[0], *arrays[2:]))
        or any(np.shares_memory(a, b) for i, a in enumerate(arrays) for b in arrays[i + 1 :])
    ):
        raise ValueError(
            f"arrays: expected p, g, m, v as contiguous float32 NumPy arrays of shape ({size},), "
            "p, m and v writeable, no two sharing memory"
        )
    command = shlex.split(os.environ.get("CC", ""))  # $CC may carry arguments ("ccache gcc")
    if not command:
        found = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        command = [found] if found else []
    if not command or os.name != "posix":
        return None
    lib = _in_place_library(tuple(command))
    if lib is None:
        return None
    fn = lib.uniopt_bound
    fn.argtypes = [ctypes.c_int64, *(ctypes.c_void_p,) * 4, ctypes.c_int]
    fn.restype = None
    p, g, m, v = arrays
    count = threads or os.cpu_count() or 1
    return lambda: fn(size, p.ctypes.data, g.ctypes.data, m.ctypes.data, v.ctypes.data, count)


_IN_PLACE_LIBRARIES: dict[tuple[str, ...], Any] = {}


def _in_place_library(command: tuple[str, ...]) -> Any:
    """:data:`IN_PLACE_SOURCE` built with ``command`` and loaded (``ctypes.CDLL``), once per process
    and compiler (a benchmark run times the bound beside every optimizer and set); ``None`` where it
    does not build."""
    import ctypes
    import subprocess
    import tempfile

    if command not in _IN_PLACE_LIBRARIES:
        lib = None
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "bound.c").write_text(IN_PLACE_SOURCE)
            for arch in (("-march=native",), ()):
                argv = [*command, "-O3", *arch, "-fopenmp", "-shared", "-fPIC", "bound.c", "-o", "bound.so"]
                try:
                    subprocess.run(argv, cwd=tmp, check=True, capture_output=True, timeout=120)
                    lib = ctypes.CDLL(str(Path(tmp) / "bound.so"))  # loaded: the file may go
                    break
                except (OSError, subprocess.SubprocessError):
                    continue
        _IN_PLACE_LIBRARIES[command] = lib
    return _IN_PLACE_LIBRARIES[command]


def numpy_copy(elements: int) -> Callable[[], None]:
    src = np.ones(elements, np.float32)
    dst = np.empty_like(src)
    return lambda: np.copyto(dst, src)


def machine() -> dict[str, Any]:
    """The machine a run measures on: CPU model, cores, Python, and the 1-minute load average before
    the run (``load_before``; :func:`write_results` adds ``load_after`` at each write)."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_before": _load(),
    }


def _load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def results_name(framework: str, device: str) -> str:
    """``<framework>.json`` for CPU runs, ``<framework>-gpu.json`` for GPU runs."""
    return f"{framework}.json" if device == "cpu" else f"{framework}-{device}.json"


def new_run(versions: dict[str, str], options: dict[str, Any]) -> dict[str, Any]:
    """The record of a run about to start: ``started`` (UTC, ISO 8601), the framework's ``versions``,
    the :func:`machine` and the run's ``options`` (kept by reference: the caller may add to them,
    ``seconds`` for one, before each :func:`write_results`). Its ``id`` is given on writing."""
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"id": None, "started": started, "versions": versions, "machine": machine(), "options": options}


def with_runs(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` (a results file's JSON) in the current form: a ``runs`` list, each entry of
    ``results`` naming its run by ``id``. A file written before runs were recorded (``versions``,
    ``machine`` and ``options`` at the top) reads as one run, id 1, with no start time, that measured
    every entry. Returns a new dict; ``payload`` is not changed."""
    payload = copy.deepcopy(payload)
    if "runs" not in payload:
        legacy = {
            "id": 1,
            "started": None,
            "versions": payload.pop("versions", {}),
            "machine": payload.pop("machine", {}),
            "options": payload.pop("options", {}),
        }
        payload["runs"] = [legacy]
        for sets in payload.get("results", {}).values():
            for entry in sets.values():
                entry.setdefault("run", 1)
    ids = {run["id"] for run in payload["runs"]}
    for optimizer, sets in payload.get("results", {}).items():
        for set_name, entry in sets.items():
            if entry.get("run") not in ids:
                raise ValueError(
                    f"results of {optimizer} on {set_name} name run {entry.get('run')!r}, which the file's "
                    f"runs ({sorted(ids)}) do not hold"
                )
    return payload


def read_results(path: Path) -> dict[str, Any] | None:
    """The results file at ``path`` in the current form (:func:`with_runs`), ``None`` if there is none."""
    return with_runs(json.loads(path.read_text())) if path.exists() else None


def merged(
    base: dict[str, Any] | None,
    framework: str,
    run: dict[str, Any],
    table: dict[str, dict[str, dict[str, Any]]],
) -> dict[str, Any]:
    """The results file after ``run``, which measured ``table`` (optimizer -> set -> entry), on top
    of ``base`` (a file in the :func:`with_runs` form, or ``None`` to replace it): ``base``'s entries
    that ``run`` did not measure are kept, the ones it did are replaced; the runs whose entries are
    all replaced are dropped, and ``run`` (always listed, even where it measured nothing) gets the
    next id. ``run["id"]`` is set (so the entries of later writes of the same run carry it)."""
    if base is not None and base.get("framework") != framework:
        raise ValueError(f"cannot merge {framework} results into a file of {base.get('framework')!r} results")
    kept: dict[str, dict[str, dict[str, Any]]] = copy.deepcopy(base["results"]) if base else {}
    if run["id"] is None:
        run["id"] = max((r["id"] for r in base["runs"]), default=0) + 1 if base else 1
    for optimizer, sets in table.items():
        for set_name, entry in sets.items():
            kept.setdefault(optimizer, {})[set_name] = {**entry, "run": run["id"]}
    used = {entry["run"] for sets in kept.values() for entry in sets.values()}
    earlier = [r for r in (base["runs"] if base else []) if r["id"] in used and r["id"] != run["id"]]
    return {"framework": framework, "runs": [*earlier, run], "results": kept}


def write_results(
    out: Path,
    framework: str,
    run: dict[str, Any],
    table: dict[str, dict[str, dict[str, Any]]],
    base: dict[str, Any] | None = None,
) -> Path:
    """``out/<framework>.json`` (``-gpu`` before ``.json`` for ``run["options"]["device"] == "gpu"``):
    ``{"framework", "runs": [{"id", "started", "versions", "machine", "options"}, ...],
    "results": {optimizer: {set: {"label", "size", "tensors", "rows", "run"}}}}``, ``run`` (see
    :func:`new_run`) merged onto ``base`` (:func:`merged`; ``None``: the file is replaced). Records
    the load average now as the run's ``machine["load_after"]``."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / results_name(framework, run["options"].get("device", "cpu"))
    run["machine"]["load_after"] = _load()
    payload = merged(base, framework, run, table)
    path.write_text(json.dumps(payload, indent=1, default=lambda o: dataclasses.asdict(o)))
    return path
