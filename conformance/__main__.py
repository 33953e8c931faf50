"""Command line: ``python -m conformance {run,compare,all} ...``; ``--help`` on each."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from uniopt.scalar_table import CACHE_VARIABLE

from . import backends
from .cells import ALL_DTYPES, DEFAULT_STEPS, cells
from .compare import compare_dir, stale_warning
from .jobs import SCALAR_CACHE, XLA_CACHE, enqueue, launch_ready, wait, write_progress, xla_cache_environment
from .report import Matrix, write_reports
from .run import run_backend
from .streams import STREAMS

STARTED = time.perf_counter()
"""When this process started (``run --deadline`` counts from here)."""

DEFAULT_OUT = Path("build/conformance")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"--steps must be at least 1, got {value}")
    return value


def _check_selection(args: argparse.Namespace) -> str | None:
    """Why the cell selection or the modes asked for cannot run, or ``None`` (checked before any job
    is queued or run)."""
    try:
        cells(args.dtypes or ALL_DTYPES, args.steps, args.optimizers, args.streams)
    except ValueError as exc:
        return str(exc)
    known = {m for name in args.backend for m in backends.get(name).modes}
    unknown = sorted(set(args.modes or ()) - known)
    if unknown:
        return (
            f"no backend asked for has mode(s) {', '.join(unknown)}; their modes: {', '.join(sorted(known))}"
        )
    return None


def _run(args: argparse.Namespace) -> int:
    os.environ[backends.DEVICE_VARIABLE] = args.device
    problem = _check_selection(args)
    if problem is not None:
        print(f"python -m conformance: {problem}", file=sys.stderr)
        return 2
    # the TensorFlow and JAX adapters tabulate every spec's per-step scalars (about a second each);
    # the jobs of one run share them through files (uniopt.scalar_table.CACHE_VARIABLE)
    os.environ.setdefault(CACHE_VARIABLE, str(args.out / SCALAR_CACHE))
    # and the programs XLA compiled for the JAX backends (before any runner imports jax)
    for name, value in xla_cache_environment((args.out / XLA_CACHE).resolve()).items():
        os.environ.setdefault(name, value)
    for name in args.backend:
        backend = backends.get(name)
        reason = backend.unavailable()
        if reason is not None:
            print(f"backend {name} cannot run here: {reason}", file=sys.stderr)
            return 2
        _run_one(backend, args)
    return 0


def _run_one(backend: backends.Backend, args: argparse.Namespace) -> None:
    from rich.progress import Progress

    selected = cells(args.dtypes or ALL_DTYPES, args.steps, args.optimizers, args.streams)
    # modes the backend lacks are not run; the reference keeps its eager mode whatever is asked
    modes = [m for m in (args.modes or backend.modes) if m in backend.modes] or [backend.modes[0]]
    with Progress(transient=not sys.stdout.isatty()) as progress:
        task = progress.add_task(backend.name, total=len(selected) * len(modes))

        done = 0

        def advance(n: int, desc: str) -> None:
            nonlocal done
            done += n
            progress.update(task, advance=n, description=desc[:60])
            if args.progress_file is not None:
                write_progress(args.progress_file, done, len(selected) * len(modes), desc)

        deadline = None if args.deadline is None else STARTED + args.deadline
        traj = args.out / "trajectories"
        run_backend(backend, selected, traj, modes, advance, full=args.full, deadline=deadline)
    print(f"{backend.name}: {len(selected)} cells x {len(modes)} mode(s) -> {traj}")


def _enqueue(args: argparse.Namespace) -> int:
    """One background job per mode of each backend (see :mod:`conformance.jobs`)."""
    problem = _check_selection(args)
    if problem is not None:
        print(f"python -m conformance: {problem}", file=sys.stderr)
        return 2
    run_args = ["--steps", str(args.steps), "--device", args.device]
    for flag in ("dtypes", "optimizers", "streams"):
        if getattr(args, flag):
            run_args += [f"--{flag}", *getattr(args, flag)]
    if args.full:
        run_args.append("--full")
    for name in args.backend:
        backend = backends.get(name)
        reason = backend.unavailable()
        if reason is not None:
            print(f"backend {name} cannot run here: {reason}", file=sys.stderr)
            return 2
        modes = [m for m in (args.modes or backend.modes) if m in backend.modes] or [backend.modes[0]]
        for folder in enqueue(args.out, name, backend.queue_order(modes), run_args):
            print(f"queued {folder.name} (log: {folder / 'log'})")
    return 0


def _compare(args: argparse.Namespace) -> int:
    """Compare, print the 80-column report (the wide matrix too where the terminal fits it), write
    ``conformance.{json,md,png}``."""
    from rich.console import Console

    from .report import run_info

    console = Console()
    traj = args.out / "trajectories"
    try:
        results = compare_dir(traj)
    except FileNotFoundError as exc:  # no reference, or one from another version of the code
        console.print(f"[red]{exc}[/]")
        return 1
    stale = stale_warning(traj)  # files of another version of the code: left out, and said so
    if stale:
        console.print(f"[red]{stale}[/]")
    matrix = Matrix(results, run_info(traj))
    matrix.print_report(console)
    wide = matrix.rich_table()
    if console.measure(wide, options=console.options.update_width(10_000)).maximum <= console.width:
        console.print(wide)
    paths = write_reports(matrix, args.out)
    console.print(f"reports in {args.out}: " + ", ".join(p.name for p in paths))
    compared = [r for r in results if r.verdict in ("pass", "FAIL")]
    if not compared:
        console.print("[red]no backend besides the reference was compared[/]")
        return 1
    console.print(f"conformance: {matrix.summary()}")
    if stale:
        console.print(f"[red]{stale}[/]")
    return 1 if matrix.failed else 0


def _merge(args: argparse.Namespace) -> int:
    """One matrix from several runs' ``conformance.json`` (a run split across machines or dtypes): a
    later file's cell replaces an earlier one's, except that a cell not run (not applicable, or left
    to ``--full``) never replaces a compared one. The runs' details are joined."""
    import json

    from rich.console import Console

    from .compare import CellResult

    cells: dict[tuple, CellResult] = {}
    run: dict = {"date": "", "commit": "", "versions": {}, "seconds": {}}
    for path in args.inputs:
        data = json.loads(path.read_text())
        for entry in data["cells"]:
            cell = CellResult(**entry)
            key = (cell.backend, cell.mode, cell.optimizer, cell.case, cell.stream, cell.dtype, cell.steps)
            if cell.verdict not in ("skipped", "deferred") or key not in cells:
                cells[key] = cell
        info = data.get("run") or {}
        for field in ("date", "commit"):
            if info.get(field) and info[field] not in run[field].split(" + "):
                run[field] = " + ".join(filter(None, [run[field], info[field]]))
        for name, versions in (info.get("versions") or {}).items():
            run["versions"][name] = sorted({*run["versions"].get(name, []), *versions})
        run["seconds"].update(info.get("seconds") or {})
    matrix = Matrix(list(cells.values()), run)
    paths = write_reports(matrix, args.out)
    console = Console()
    console.print(f"reports in {args.out}: " + ", ".join(p.name for p in paths))
    console.print(f"conformance: {matrix.summary()}")
    return 1 if matrix.failed else 0


def _publish(args: argparse.Namespace) -> int:
    """Fill the generated block of a Markdown page from ``<out>/conformance.json``."""
    from .report import load, publish

    matrix = load(args.out / "conformance.json")
    if matrix.failed:  # the page shows the project's evidence: a failing run is not published
        print(
            f"{args.out / 'conformance.json'} has {len(matrix.failed)} failed cell(s): not published "
            f"(fix them or publish a passing run); {args.page} is unchanged",
            file=sys.stderr,
        )
        return 1
    publish(matrix, args.page)
    print(f"{args.page}: matrix block from {args.out / 'conformance.json'} ({matrix.summary()})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="build folder")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run backends and write their trajectories")
    every = sub.add_parser("all", help="run the backends, then compare")
    queue = sub.add_parser(
        "enqueue", help="queue one background job per backend mode, starting those a free core can take"
    )
    sub.add_parser("wait", help="run the queued jobs to their end, with progress; fail if one failed")
    sub.add_parser("launch", help="start queued jobs while fewer than the limit are running")
    run.add_argument("--progress-file", type=Path, help="where to record progress (for `wait`)")
    run.add_argument(
        "--deadline",
        type=float,
        help="seconds after the start past which no further batch of cells starts (the cells not "
        "reached are recorded as deferred; for a lent machine's short lease)",
    )
    every.set_defaults(progress_file=None, deadline=None)
    for p in (run, every, queue):
        p.add_argument("--backend", nargs="+", choices=backends.names(), default=list(backends.names()))
        p.add_argument("--modes", nargs="+", help="modes to run (default: all of the backend's)")
        p.add_argument(
            "--dtypes", nargs="+", choices=ALL_DTYPES, help="dtypes (default: all of the backend's)"
        )
        p.add_argument(
            "--steps",
            type=_positive,
            default=DEFAULT_STEPS,
            help=f"steps of the short streams (default {DEFAULT_STEPS}; the long and parity streams keep "
            "their own lengths, or this one if it is longer)",
        )
        p.add_argument("--optimizers", nargs="+", help="names from uniopt.registry.TABLE")
        p.add_argument("--streams", nargs="+", choices=list(STREAMS))
        p.add_argument("--full", action="store_true", help="also the cells a backend leaves out by default")
        p.add_argument(
            "--device",
            choices=("cpu", "gpu"),
            default="cpu",
            help="where framework backends run (the NumPy reference always runs on the CPU)",
        )
    sub.add_parser("compare", help="compare every trajectory file with the reference")
    sub.add_parser(
        "parity",
        help="native parity at the frameworks' defaults: `parity measure --native ROW`, `parity render`",
        add_help=False,
    )
    merge = sub.add_parser("merge", help="one report (in --out) from several runs' conformance.json")
    merge.add_argument("inputs", nargs="+", type=Path, help="conformance.json files, later ones win")
    publish = sub.add_parser(
        "publish", help="fill a page's <!-- matrix:begin/end --> block from --out's results"
    )
    publish.add_argument("page", type=Path, help="the Markdown page, e.g. docs/conformance.md")
    argv = sys.argv[1:] if argv is None else argv
    command_at = 2 if argv[:1] == ["--out"] else 1 if argv[:1] and argv[0].startswith("--out=") else 0
    if argv[command_at : command_at + 1] == ["parity"]:  # its own options (see conformance/parity.py)
        from . import parity

        return parity.main(argv[command_at + 1 :])
    args = parser.parse_args(argv)
    if args.command == "merge":
        return _merge(args)
    if args.command == "publish":
        return _publish(args)
    if args.command == "run":
        return _run(args)
    if args.command == "compare":
        return _compare(args)
    if args.command == "enqueue":
        return _enqueue(args)
    if args.command == "wait":
        return wait(args.out)
    if args.command == "launch":
        launch_ready(args.out)
        return 0
    if backends.REFERENCE not in args.backend:
        args.backend = [backends.REFERENCE, *args.backend]
    return _run(args) or _compare(args)


if __name__ == "__main__":
    sys.exit(main())
