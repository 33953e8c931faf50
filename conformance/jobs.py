"""Background jobs: one process per backend and mode, run side by side on the machine's cores.

``nox -s conformance`` installs each backend's virtualenv in turn. Instead of running the backend
there and then, each venv *enqueues* one job per mode (a ``run`` command with that venv's Python, in
a process of its own) and starts it at once if a core is free, so the backends run while the next
venv installs. A job that ends starts the next queued one (``launch``), so the queue keeps going
while nox runs other sessions; ``wait`` does the same, draws one progress bar per job (on a terminal;
elsewhere it prints a plain progress line every 30 seconds) and fails if any job failed, printing the
end of its log. A job is a folder of small files under
``<out>/jobs/<backend>@<mode>/``: ``job.json`` (the command), ``started``, ``progress.json``,
``log`` and, once it has ended, ``rc`` (its exit status).

Each job gets its share of the cores as its frameworks' thread pools (:func:`thread_environment`):
with one job per core, one thread each. Two jobs of two OpenMP threads each, beside a test suite, on
two cores, made torch's bfloat16 ``x @ x.mT`` take 24 ms a call (OpenMP threads waiting for a core)
where one thread takes 4 us: ``torch.optim.Muon``'s step on the suite's three small matrices took
272 ms, 4.2 ms with one thread (measured on the 2-core machine under that load).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "THREAD_VARIABLES",
    "enqueue",
    "job_limit",
    "launch_ready",
    "progress_line",
    "thread_environment",
    "wait",
    "write_progress",
    "xla_cache_environment",
]

JOBS = "jobs"
SCALAR_CACHE = "scalar-cache"
"""The folder under the output directory where a run's processes share the scalar tables' host rows
(``uniopt.scalar_table.CACHE_VARIABLE``): the jobs, and ``check``'s test sessions beside them."""
XLA_CACHE = "xla-cache"
"""The folder under the output directory holding JAX's persistent compilation cache for a run's
processes (:func:`xla_cache_environment`): the JAX jobs, and ``check``'s test sessions beside them."""
LIMIT_VARIABLE = "UNIOPT_CONFORMANCE_JOBS"
"""How many jobs run at once (default: the number of CPU cores)."""


def job_limit() -> int:
    return max(1, int(os.environ.get(LIMIT_VARIABLE, 0) or os.cpu_count() or 1))


THREAD_VARIABLES = (
    "OMP_NUM_THREADS",  # torch's CPU kernels (OpenMP)
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",  # NumPy's BLAS
    "TF_NUM_INTRAOP_THREADS",  # TensorFlow (tensorflow/core/common_runtime/process_util.h)
    "TF_NUM_INTEROP_THREADS",
)
"""Thread-pool sizes a job is given (:func:`thread_environment`), unless already set."""


def thread_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default ``os.environ``) with each :data:`THREAD_VARIABLES` set to the job's share
    of the cores, ``cores // job_limit()`` (at least 1), where it is not set already; with one thread
    each, XLA's CPU runtime also runs single-threaded (``--xla_cpu_multi_thread_eigen=false`` added
    to ``XLA_FLAGS`` unless that flag is there). Thread counts change no bits the spec fixes
    (elementwise ops, the spec's own reductions); a backend's matrix products (Muon's
    ``matmul="backend"``) may sum in another order with another thread count, within their stated
    bounds (measured, Muon torch@eager and torch@loop: float32 at most 1,024 ulp with one thread,
    29,696 with two; bound 211,456; the bitwise cells stayed bitwise)."""
    env = dict(os.environ if environ is None else environ)
    threads = max(1, (os.cpu_count() or 1) // job_limit())
    for name in THREAD_VARIABLES:
        env.setdefault(name, str(threads))
    flags = env.get("XLA_FLAGS", "")
    if threads == 1 and "xla_cpu_multi_thread_eigen" not in flags:
        env["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()
    return env


def xla_cache_environment(folder: Path) -> dict[str, str]:
    """The environment variables that give every JAX process started with them one persistent
    compilation cache, ``folder``, with every compiled program written to it (JAX writes only those
    that took a second or more to compile by default; here almost every one takes less). A process
    then loads a program another process compiled instead of compiling it again: the same
    executable, so the same numbers. Measured on the 2-core machine: tests/jax_adapter on two
    pytest-xdist workers 412 s without it, 371 s with an empty cache (one worker loads what the
    other compiled), and test_numerics.py alone 93 s, then 52 s reading a cache it had filled.
    JAX keys each program by its HLO, the compile options, the backend and the jax and jaxlib
    versions, so an older entry is never taken for another program. JAX does not prune it;
    ``nox -s conformance`` and ``check`` remove it first (``conformance_clean``), so it holds one
    run's programs: a check run wrote 6,752 entries, 170 MB."""
    return {
        "JAX_COMPILATION_CACHE_DIR": str(folder),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def write_progress(path: Path, done: int, total: int, current: str) -> None:
    """Atomically record a job's progress (read by :func:`wait` in another process)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"done": done, "total": total, "current": current}))
    os.replace(tmp, path)


def enqueue(out: Path, backend: str, modes: Sequence[str], run_args: Sequence[str]) -> list[Path]:
    """One job per mode of ``backend``: ``python -m conformance --out <out> run --backend <backend>
    --modes <mode> <run_args>`` with this interpreter; starts those a free core can take."""
    folders = []
    for mode in modes:
        folder = out / JOBS / f"{backend}@{mode}"
        folder.mkdir(parents=True, exist_ok=True)
        for stale in ("started", "rc", "progress.json", "log"):
            (folder / stale).unlink(missing_ok=True)
        argv = [
            *(sys.executable, "-m", "conformance", "--out", str(out), "run"),
            *("--backend", backend, "--modes", mode, "--progress-file", str(folder / "progress.json")),
            *run_args,
        ]
        (folder / "job.json").write_text(json.dumps({"argv": argv, "enqueued": time.time()}))
        folders.append(folder)
    launch_ready(out)
    return folders


def _jobs(out: Path) -> list[Path]:
    root = out / JOBS
    if not root.is_dir():
        return []
    found = [f for f in root.iterdir() if (f / "job.json").exists()]
    return sorted(found, key=lambda f: json.loads((f / "job.json").read_text())["enqueued"])


def _running(folder: Path) -> bool:
    return (folder / "started").exists() and not _ended(folder)


_CHILDREN: dict[Path, subprocess.Popen] = {}


def launch_ready(out: Path) -> None:
    """Start queued jobs, oldest first, while fewer than :func:`job_limit` are running."""
    jobs = _jobs(out)
    free = job_limit() - sum(_running(f) for f in jobs)
    for folder in jobs:
        if free <= 0:
            break
        if (folder / "started").exists():
            continue
        try:  # claim the job: of two launchers racing, one wins
            claim = os.open(folder / "started", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        argv = json.loads((folder / "job.json").read_text())["argv"]
        # the shell records the exit status once the command ends, then starts the next queued job
        # itself (the queue drives itself while nox runs other sessions)
        log, rc, tmp = (shlex.quote(str(folder / name)) for name in ("log", "rc", "rc.tmp"))
        relaunch = shlex.join([argv[0], "-m", "conformance", "--out", str(out), "launch"])
        script = f"{shlex.join(argv)} >{log} 2>&1; echo $? >{tmp}; mv {tmp} {rc}; {relaunch} >/dev/null 2>&1"
        started = time.time()
        shell = subprocess.Popen(["sh", "-c", script], stdin=subprocess.DEVNULL, env=thread_environment())
        _CHILDREN[folder] = shell
        os.write(claim, f"{started} {shell.pid}".encode())
        os.close(claim)
        free -= 1


def _ended(folder: Path) -> bool:
    """The job wrote its exit status, or its shell is gone without writing one (killed)."""
    if (folder / "rc").exists():
        return True
    if folder in _CHILDREN:  # started by this process: poll() also reaps it
        return _CHILDREN[folder].poll() is not None and not (folder / "rc").exists()
    if not (folder / "started").exists():
        return False
    fields = (folder / "started").read_text().split()
    if len(fields) < 2:  # claimed a moment ago, not yet launched
        return False
    try:
        os.kill(int(fields[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def wait(out: Path, poll: float = 0.5, report_every: float = 30.0) -> int:
    """Run the queue to its end; 0 if every job succeeded.

    On a terminal, a progress bar per job; elsewhere (CI, nohup, a pipe) a plain progress line (see
    :func:`progress_line`) at the start, every ``report_every`` seconds and at the end.
    """
    from rich.console import Console

    jobs = _jobs(out)
    if not jobs:
        return 0
    console = Console()
    if console.is_terminal:
        _wait_with_bars(out, jobs, console, poll)
    else:
        _wait_with_lines(out, jobs, poll, report_every)
    failed = [f for f in jobs if _rc(f) != 0]
    for folder in jobs:
        ended = (folder / "rc").stat().st_mtime if (folder / "rc").exists() else time.time()
        if not (folder / "started").read_text().split():
            continue
        seconds = ended - float((folder / "started").read_text().split()[0])
        console.print(f"{folder.name}: {'ok' if _rc(folder) == 0 else 'FAILED'} in {seconds:.0f} s")
    for folder in failed:
        log = folder / "log"
        tail = log.read_text(errors="replace").splitlines()[-30:] if log.exists() else ["(no log)"]
        console.print(f"[red]{folder.name} failed (exit {_rc(folder)}); the end of its log:[/]")
        console.print("\n".join(tail), markup=False, highlight=False)
    return 1 if failed else 0


def _wait_with_bars(out: Path, jobs: list[Path], console, poll: float) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.fields[job]:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, console=console) as progress:
        tasks = {f: progress.add_task("queued", total=None, job=f.name) for f in jobs}
        while True:
            launch_ready(out)
            for folder, task in tasks.items():
                state = _progress_of(folder)
                if state is not None:
                    progress.update(task, completed=state["done"], total=state["total"])
                    progress.update(task, description=state["current"][:50])
                if _ended(folder):
                    progress.update(task, description="done" if _rc(folder) == 0 else "[red]failed")
                    progress.stop_task(task)
            if all(_ended(f) for f in jobs):
                break
            time.sleep(poll)


def _wait_with_lines(out: Path, jobs: list[Path], poll: float, report_every: float) -> None:
    start = last = time.monotonic()
    print(progress_line(jobs, 0.0), flush=True)
    while True:
        launch_ready(out)
        if all(_ended(f) for f in jobs):
            break
        time.sleep(poll)
        if time.monotonic() - last >= report_every:
            last = time.monotonic()
            print(progress_line(jobs, last - start), flush=True)
    print(progress_line(jobs, time.monotonic() - start), flush=True)


def progress_line(jobs: Sequence[Path], elapsed: float) -> str:
    """``conformance: 3/14 jobs done (1 failed); running tf@xla 120/400 cells, jax@jit 5/200 cells;
    9 queued; elapsed 2:10``: the queue's state in one plain line (for logs)."""
    ended = [f for f in jobs if _ended(f)]
    failed = sum(_rc(f) != 0 for f in ended)
    running, queued = [], 0
    for folder in jobs:
        if folder in ended:
            continue
        if not (folder / "started").exists():
            queued += 1
            continue
        state = _progress_of(folder)
        cells = f"{state['done']}/{state['total']} cells" if state else "starting"
        running.append(f"{folder.name} {cells}")
    minutes, seconds = divmod(int(elapsed), 60)
    parts = [f"conformance: {len(ended)}/{len(jobs)} jobs done" + (f" ({failed} failed)" if failed else "")]
    if running:
        parts.append("running " + ", ".join(running))
    if queued:
        parts.append(f"{queued} queued")
    parts.append(f"elapsed {minutes}:{seconds:02d}")
    return "; ".join(parts)


def _progress_of(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "progress.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _rc(folder: Path) -> int:
    try:
        return int((folder / "rc").read_text().strip())
    except (FileNotFoundError, ValueError):
        return -1
