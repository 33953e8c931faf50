"""``python -m bench run {torch,jax,tf} [--quick] [--all] [--device gpu]`` and ``python -m bench report
[--device gpu]``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

from .common import (
    accepted_shapes,
    arrays,
    bound_variants,
    measure,
    param_set,
    rss_probe,
    write_results,
)

DEFAULT_OPTIMIZERS = ("RAdam", "Adam", "Adafactor", "Lamb", "Muon", "ScheduleFreeAdamW")
DOCS = {"cpu": "docs/benchmarks.md", "gpu": "docs/benchmarks-gpu.md"}


def run(args: argparse.Namespace) -> int:
    if args.framework == "jax":  # jax picks its platform once, at its first use
        os.environ["JAX_PLATFORMS"] = "cuda" if args.device == "gpu" else "cpu"
    mod = importlib.import_module(f"bench.{args.framework}_bench")
    optimizers = list(mod.OPTIMIZERS) if args.all else list(args.optimizers or DEFAULT_OPTIMIZERS)
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
    }
    missing = mod.unavailable(args.device)
    if missing:  # recorded, so the report says what was not measured and why
        print(f"{args.framework}: not run on {args.device}: {missing}")
        options["not_run"] = missing
        write_results(Path(args.out), args.framework, {}, options, {})
        return 0
    probe = mod.peak_probe(args.device) if args.device != "cpu" else rss_probe()
    sync, copies = mod.device_sync(args.device), mod.copies(args.device)
    table: dict[str, dict[str, dict]] = {}
    started = time.time()
    for set_name in args.sets:
        full = param_set(set_name, args.quick)
        for name in optimizers:
            pset = accepted_shapes(full, name)
            params, grads = arrays(pset, 0), arrays(pset, 1)
            print(f"{args.framework} {name} on {pset.label}", flush=True)
            rows = measure(
                [*mod.variants(name, pset, options), *bound_variants(pset.size, copies, sync)],
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
            path = write_results(Path(args.out), args.framework, mod.versions(args.device), options, table)
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--out", default="build/bench", help="folder of the JSON results")
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
    r.add_argument("--sets", nargs="+", default=["large", "many_small"], choices=("large", "many_small"))
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
