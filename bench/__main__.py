"""``python -m bench run {torch,jax,tf} [--quick] [--all] [--optimizers ...] [--sets ...] [--merge]
[--device gpu]`` and ``python -m bench report [--device gpu]``."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    SPARSE_ROWS,
    SPARSE_SHAPE,
    accepted_shapes,
    arrays,
    bound_variants,
    measure,
    new_run,
    param_set,
    read_results,
    results_name,
    rss_probe,
    sparse_gradient,
    write_results,
)

SPARSE_STEPS = 20
"""Consecutive steps per variant and round on the sparse set: uniopt's steps take well under a
millisecond (two would time mostly the clock), Keras's Adagrad computes a dense root of its
accumulator (0.3 s a step here), which bounds the count above."""
SET_NAMES = ("large", "many_small", "sparse")
DEFAULT_OPTIMIZERS = ("RAdam", "Adam", "Adafactor", "Lamb", "Muon", "ScheduleFreeAdamW")
DOCS = {"cpu": "docs/benchmarks.md", "gpu": "docs/benchmarks-gpu.md"}


def fresh_inductor_cache() -> str | None:
    """Point inductor at an empty cache directory of this process's own (removed at exit), unless
    ``TORCHINDUCTOR_CACHE_DIR`` is set; returns it. A kernel cached by an earlier process (another
    torch, another thread count, another benchmark) would time that process's build, and the
    first-step column is then a first step's compile on a fresh machine."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return None
    cache = tempfile.mkdtemp(prefix="uniopt-bench-inductor-")
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    return cache


def run(args: argparse.Namespace) -> int:
    if args.framework == "jax":  # jax picks its platform once, at its first use; on the GPU the
        # CPU stays listed: uniopt.jax's host callbacks (Adafactor's and Schedule-Free AdamW's
        # scalars, Adagrad's lr_decay) run there, and jax.pure_callback needs a CPU device
        os.environ["JAX_PLATFORMS"] = "cuda,cpu" if args.device == "gpu" else "cpu"
    if args.framework == "torch":
        fresh_inductor_cache()
    mod = importlib.import_module(f"bench.{args.framework}_bench")
    sparse_names = tuple(getattr(mod, "SPARSE_OPTIMIZERS", ()))
    if args.optimizers:
        unknown = [n for n in args.optimizers if n not in mod.OPTIMIZERS and n not in sparse_names]
        if unknown:
            raise SystemExit(
                f"--optimizers: {', '.join(unknown)} not in the {args.framework} benchmark; accepted: "
                f"{', '.join(sorted({*mod.OPTIMIZERS, *sparse_names}))}"
            )
    if args.all:
        optimizers = list(mod.OPTIMIZERS)
    else:
        optimizers = [n for n in args.optimizers or DEFAULT_OPTIMIZERS if n in mod.OPTIMIZERS]
        dense = [s for s in args.sets if s != "sparse"]
        for n in args.optimizers or DEFAULT_OPTIMIZERS:
            if n not in mod.OPTIMIZERS and dense:
                why = "only on the sparse set" if n in sparse_names else "not in this benchmark"
                print(f"{args.framework}: {n} not run on {', '.join(dense)} ({why})")
    if args.optimizers and not args.all:  # --optimizers chooses the sparse set's optimizers too
        sparse_names = tuple(n for n in sparse_names if n in args.optimizers)
    rounds, steps, warmup = (5, 2, 7) if args.quick else (args.rounds, args.steps, 7)
    options = {
        "quick": args.quick,
        "all": args.all,
        "implementations": args.all or args.implementations,
        "rounds": rounds,
        "steps": steps,
        "warmup": warmup,
        "compile_all": args.compile_all,
        "device": args.device,
        "optimizers": optimizers if any(s != "sparse" for s in args.sets) else [],
        "sets": list(args.sets),
        "sparse_optimizers": list(sparse_names) if "sparse" in args.sets else [],
        "merge": args.merge,
    }
    out = Path(args.out)
    base = read_results(out / results_name(args.framework, args.device)) if args.merge else None
    if base is not None:
        print(f"merging into {out / results_name(args.framework, args.device)}: {len(base['runs'])} run(s)")
        if any(bool(r["options"].get("quick")) != args.quick for r in base["runs"]):
            print("  note: --quick differs from a run kept there (the report lists each run's options)")
    missing = mod.unavailable(args.device)
    if missing:  # recorded, so the report says what was not measured and why
        print(f"{args.framework}: not run on {args.device}: {missing}")
        options["not_run"] = missing
        write_results(out, args.framework, new_run({}, options), {}, base)
        return 0
    record = new_run(mod.versions(args.device), options)
    probe = mod.peak_probe(args.device) if args.device != "cpu" else rss_probe()
    sync, copies = mod.device_sync(args.device), mod.copies(args.device)
    table: dict[str, dict[str, dict]] = {}
    started = time.time()
    for set_name in args.sets:
        if set_name == "sparse":
            _run_sparse(args, mod, sparse_names, record, table, base, started, probe)
            continue
        full = param_set(set_name, args.quick)
        for name in optimizers:
            pset = accepted_shapes(full, name)
            params, grads = arrays(pset, 0), arrays(pset, 1)
            print(f"{args.framework} {name} on {pset.label}", flush=True)
            rows = measure(
                [
                    *mod.variants(name, pset, options),
                    *bound_variants(pset.size, copies, sync, in_place=args.device == "cpu"),
                ],
                params,
                grads,
                warmup=warmup,
                rounds=rounds,
                steps=steps,
                log=lambda s: print(s, flush=True),
                probe=probe,
            )
            for r in rows:
                shown = "skipped" if r.ms is None else f"{r.ms:9.2f} ms"
                print(f"  {r.name:60s} {shown}", flush=True)
            table.setdefault(name, {})[set_name] = {
                "label": pset.label,
                "size": pset.size,
                "tensors": len(pset.shapes),
                "rows": rows,
            }
            # written after every set, so a run cut short still leaves what it measured
            options["seconds"] = round(time.time() - started, 1)
            write_results(out, args.framework, record, table, base)
    options["seconds"] = round(time.time() - started, 1)
    print(f"wrote {write_results(out, args.framework, record, table, base)}")
    return 0


def _run_sparse(
    args: argparse.Namespace,
    mod: Any,
    names: tuple[str, ...],
    record: dict[str, Any],
    table: dict,
    base: dict[str, Any] | None,
    started: float,
    probe: Any,
) -> None:
    """The sparse set: a :data:`SPARSE_SHAPE` embedding whose gradient touches :data:`SPARSE_ROWS`
    rows, for ``names`` (the framework's optimizers that take sparse gradients, its
    ``SPARSE_OPTIMIZERS``, or those of them ``--optimizers`` names), uniopt against the native sparse
    step; no bandwidth bound (the step moves a few rows)."""
    options = record["options"]
    label = f"{SPARSE_SHAPE[0]:,} x {SPARSE_SHAPE[1]} embedding, {SPARSE_ROWS} rows touched"
    table_rng = np.random.default_rng(0)
    params = [table_rng.standard_normal(SPARSE_SHAPE, dtype=np.float32) * np.float32(0.01)]
    grads = [sparse_gradient(1)]
    if not getattr(mod, "SPARSE_OPTIMIZERS", ()):
        print(f"{args.framework}: no sparse set (no optimizer here takes sparse gradients)", flush=True)
    elif not names:
        print(f"{args.framework}: no sparse set (--optimizers names none of the sparse set's)", flush=True)
    threads = getattr(mod, "sparse_threads", contextlib.nullcontext)
    for name in names:
        print(f"{args.framework} {name} on {label}", flush=True)
        with threads(options):
            rows = _measure_sparse(mod, name, options, params, grads, probe)
        for r in rows:
            shown = "skipped" if r.ms is None else f"{r.ms:9.3f} ms"
            print(f"  {r.name:60s} {shown}", flush=True)
        size = SPARSE_SHAPE[0] * SPARSE_SHAPE[1]
        table.setdefault(name, {})["sparse"] = {"label": label, "size": size, "tensors": 1, "rows": rows}
        options["seconds"] = round(time.time() - started, 1)
        write_results(Path(args.out), args.framework, record, table, base)


def _measure_sparse(
    mod: Any, name: str, options: dict[str, Any], params: list, grads: list, probe: Any
) -> list:
    return measure(
        mod.sparse_variants(name, options),
        params,
        grads,
        warmup=options["warmup"],
        rounds=options["rounds"],
        steps=SPARSE_STEPS,
        log=lambda s: print(s, flush=True),
        probe=probe,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--out", default="bench/results", help="folder of the JSON results (kept in the repository)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="time one framework's variants (interleaved) and write <out>/<fw>.json")
    r.add_argument("framework", choices=("torch", "jax", "tf"))
    r.add_argument("--quick", action="store_true", help="smaller sets and fewer rounds (development)")
    r.add_argument(
        "--all",
        action="store_true",
        help="every optimizer, not only the default ones, and every uniopt.torch implementation",
    )
    r.add_argument(
        "--implementations",
        action="store_true",
        help="also every other implementation of the uniopt optimizers (implied by --all)",
    )
    r.add_argument("--optimizers", nargs="+", help=f"a subset (default: {' '.join(DEFAULT_OPTIMIZERS)})")
    r.add_argument(
        "--sets",
        nargs="+",
        default=list(SET_NAMES),
        choices=SET_NAMES,
        help="parameter sets (default: all; sparse: an embedding with a sparse gradient, the framework's "
        "optimizers that take one, those of them --optimizers names where given)",
    )
    r.add_argument(
        "--merge",
        action="store_true",
        help="keep the entries of the existing <out>/<fw>.json this run does not measure (by optimizer "
        "and set) and replace those it does; without it the file is replaced",
    )
    r.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median over them)")
    r.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    r.add_argument(
        "--compile-all",
        action="store_true",
        help="also torch.compile torch.optim's step on the 2000-tensor set (many minutes)",
    )
    p = sub.add_parser("report", help="print the ratio table; write docs/benchmarks.md and its chart")
    p.add_argument(
        "--docs", help="Markdown file to write ('' for none; default docs/benchmarks.md, -gpu.md for GPU)"
    )
    for q in (r, p):
        q.add_argument(
            "--device", choices=("cpu", "gpu"), default="cpu", help="where the optimizers run (CUDA for gpu)"
        )
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args)
    from .report import report

    docs = args.docs if args.docs is not None else DOCS[args.device]
    return report(Path(args.out), docs, args.device)


if __name__ == "__main__":
    sys.exit(main())
