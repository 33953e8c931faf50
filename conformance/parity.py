"""Native parity at each framework's default settings: what porting from a native optimizer costs.

``python -m conformance parity measure --native <row>`` runs one native row (``torch.optim``,
``keras`` or ``optax``, see :mod:`conformance.native`) on every registry case whose ``convention``
names that framework, in the framework's own environment and at its defaults:

- ``optax``: jax as users run it, ``jax_enable_x64`` off, for float32, float16 and bfloat16; a
  float64 parameter needs ``jax_enable_x64`` on, which is process-global, so float64 is a separate
  run (``--x64 on``);
- ``keras``: ``optimizer.apply`` inside a ``tf.function`` on TensorFlow, as ``model.fit`` runs it on
  a CPU (Keras 3 turns XLA off on CPU-only machines);
- ``torch.optim``: ``torch.optim.<Name>(foreach=False)``; the official RAdam is the authors' step.

Per row, case and dtype it records two figures against the uniopt spec with that convention, run on
the NumPy reference (every uniopt backend runs it bit for bit):

- **trajectory rel.**: over steps ``t``, the worst ``max|p_native(t) - p_uniopt(t)|`` over
  ``max|p_uniopt(t) - p(0)|``, the distance from uniopt's trajectory relative to the distance the
  parameters have travelled; both start from the same parameters and see the same gradients;
- **one-step ulp**: the native optimizer's own state after ``k`` steps (parameters and slots, step
  count ``k``), one native step and one uniopt step from it with the same gradient; the worst ulp
  distance of the new parameters over elements and over ``k``. This is the cost per step, free of
  the drift that the trajectory accumulates;
- **one-step rel.**: from the same states, the worst ``max|p_native - p_uniopt|`` over the size of
  uniopt's step ``max|p_uniopt - p(k)|``: how far a single step's update differs, relatively (large
  ulp counts come from parameters passing near zero, where ulps are tiny).

Each run writes ``<out>/<row>[-x64<on|off>].json``; ``python -m conformance parity render`` turns
every such file into the table of ``docs/porting.md`` (between the ``parity-table`` markers).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from uniopt import State
from uniopt.registry import TABLE

from .backends import one_cell
from .cells import Cell, convention_of
from .native import _keras_runner, _optax_runner, _torch_runner
from .streams import STREAMS, dtype_of, gradients, initial_params, param_set_for
from .ulp import ulp_distance

__all__ = ["main", "measure", "render"]

STREAM = "parity"
"""The gradient stream (standard normal over the ``standard`` parameter set)."""

DEFAULT_STEPS = 200
"""Steps per cell: past RAdam's rectification (step 6) and the early bias corrections."""

NATIVE_CONVENTIONS = {"torch.optim": ("torch", "official"), "keras": ("keras",), "optax": ("optax",)}
DEFAULT_DTYPES = {
    "torch.optim": ("float32", "float64"),
    "keras": ("float32", "float64"),
    "optax": ("float32", "float16", "bfloat16"),  # with x64 off; float64 with --x64 on
}
BEGIN, END = "<!-- parity-table:begin -->", "<!-- parity-table:end -->"


def _runner(native: str, x64: bool | None):
    if native == "torch.optim":
        return one_cell(_torch_runner("native"))
    if native == "keras":
        return one_cell(_keras_runner("graph"))
    return one_cell(_optax_runner("native", x64=bool(x64)))  # one setting for the whole process


def _reference_step(spec: Any, params: list[np.ndarray], slots: list[dict], grads: list[np.ndarray], k: int):
    """One uniopt step (NumPy reference) from the state ``(params, slots)`` after ``k`` steps."""
    import array_api_compat.numpy as xp

    state = State(k, tuple({n: np.array(v, copy=True) for n, v in s.items()} for s in slots))
    new, _ = spec.update([g.copy() for g in grads], state, [p.copy() for p in params], xp)
    return [np.asarray(p) for p in new]


def _reference_trajectory(spec: Any, params0: list[np.ndarray], grads_at: Any, steps: int):
    import array_api_compat.numpy as xp

    params, state = [p.copy() for p in params0], spec.init([p.copy() for p in params0], xp)
    out = [params]
    for t in range(1, steps + 1):
        params, state = spec.update(grads_at(t), state, params, xp)
        out.append([np.asarray(p) for p in params])
    return out


def _amax(a: np.ndarray, b: np.ndarray) -> float:
    """``max|a - b|`` in float64 (0 for empty arrays)."""
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(d.max()) if d.size else 0.0


def measure_cell(native: str, runner: Any, cell: Cell) -> dict[str, Any]:
    """The two figures of one cell (see the module docstring)."""
    info = next(i for i in TABLE if i.name == cell.optimizer)
    spec = info.make(info.case(cell.case))
    stream = STREAMS[cell.stream]
    param_set = param_set_for(spec, stream)
    params0 = initial_params(param_set, cell.dtype)

    def grads_at(step: int) -> list[np.ndarray]:
        return gradients(stream, step, cell.dtype, param_set)

    with np.errstate(all="ignore"):
        snaps = list(runner(spec, params0, grads_at, cell.steps))
        reference = _reference_trajectory(spec, params0, grads_at, cell.steps)
        worst_rel, worst_rel_step = 0.0, 0
        worst_ulp, worst_ulp_step, bitwise_steps = 0, 0, 0
        worst_step_rel, worst_step_rel_step = 0.0, 0
        for t in range(1, cell.steps + 1):
            nat, ref = snaps[t][0], reference[t]
            diff = max(_amax(a, b) for a, b in zip(nat, ref, strict=True))
            moved = max(_amax(b, p) for b, p in zip(ref, params0, strict=True))
            rel = diff / moved if moved > 0 else (0.0 if diff == 0 else float("inf"))
            if rel > worst_rel:
                worst_rel, worst_rel_step = rel, t
            before_params, before_slots = snaps[t - 1]
            one = _reference_step(spec, before_params, before_slots, grads_at(t), t - 1)
            ulp = max(int(ulp_distance(a, b).max()) for a, b in zip(nat, one, strict=True))
            step_diff = max(_amax(a, b) for a, b in zip(nat, one, strict=True))
            step_size = max(_amax(b, p) for b, p in zip(one, before_params, strict=True))
            step_rel = step_diff / step_size if step_size > 0 else (0.0 if step_diff == 0 else float("inf"))
            if step_rel > worst_step_rel:
                worst_step_rel, worst_step_rel_step = step_rel, t
            bitwise_steps += ulp == 0
            if ulp > worst_ulp:
                worst_ulp, worst_ulp_step = ulp, t
    return {
        "optimizer": cell.optimizer,
        "case": cell.case,
        "dtype": cell.dtype,
        "steps": cell.steps,
        "trajectory_rel": worst_rel,
        "trajectory_rel_step": worst_rel_step,
        "one_step_ulp": worst_ulp,
        "one_step_rel": worst_step_rel,
        "one_step_rel_step": worst_step_rel_step,
        "one_step_ulp_step": worst_ulp_step,
        "bitwise_steps": bitwise_steps,
    }


def _cells(native: str, dtypes: list[str], steps: int, optimizers: list[str] | None) -> list[Cell]:
    out = []
    for info in TABLE:
        if optimizers and info.name not in optimizers:
            continue
        for case in info.cases:
            if convention_of(info.name, case.desc) not in NATIVE_CONVENTIONS[native]:
                continue
            for dtype in dtypes:
                out.append(Cell(info.name, case.desc, STREAM, dtype, steps))
    return out


def _skip_reason(native: str, cell: Cell) -> str | None:
    info = next(i for i in TABLE if i.name == cell.optimizer)
    gone = info.make(info.case(cell.case)).underflowing(lambda v: float(np.asarray(v, dtype_of(cell.dtype))))
    if gone:
        return f"{', '.join(gone)} rounds to 0 in {cell.dtype}"
    del native
    return None


def _git_head() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src/uniopt"], capture_output=True, text=True
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def measure(
    native: str,
    out: Path,
    dtypes: list[str] | None = None,
    steps: int = DEFAULT_STEPS,
    optimizers: list[str] | None = None,
    x64: bool | None = None,
    label: str = "",
) -> Path:
    """Measure one native row; writes and returns ``<out>/<native>[-x64on|off][-label].json``."""
    if native == "optax" and x64 is None:
        x64 = dtypes is not None and "float64" in dtypes
    if native == "optax" and dtypes is None:
        dtypes = ["float64"] if x64 else list(DEFAULT_DTYPES["optax"])
    dtypes = list(dtypes or DEFAULT_DTYPES[native])
    if native == "optax" and x64 is False and "float64" in dtypes:
        raise ValueError("optax float64 parameters need jax_enable_x64: measure them with --x64 on")
    runner = _runner(native, x64)
    rows, skipped = [], {}
    for cell in _cells(native, dtypes, steps, optimizers):
        reason = _skip_reason(native, cell)
        if reason is None:
            try:
                rows.append(measure_cell(native, runner, cell))
                row = rows[-1]
                print(
                    f"{native} {cell.key}: trajectory {row['trajectory_rel']:.3g}, one step "
                    f"{row['one_step_ulp']} ulp / {row['one_step_rel']:.3g}"
                )
                continue
            except (TypeError, ValueError, RuntimeError, NotImplementedError) as exc:
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        skipped[cell.key] = reason
        print(f"{native} {cell.key}: skipped ({reason})")
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for dist in ("torch", "tensorflow", "tensorflow-cpu", "keras", "jax", "jaxlib", "optax"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    settings = {"torch.optim": "foreach=False", "keras": "apply in tf.function", "optax": "jit"}[native]
    if native == "optax":
        settings += f", jax_enable_x64={'on' if x64 else 'off'}"
    stem = (
        native
        + (f"-x64{'on' if x64 else 'off'}" if native == "optax" else "")
        + (f"-{label}" if label else "")
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.json"
    record = {
        "native": native,
        "settings": settings,
        "label": label,
        "uniopt": _git_head(),
        "stream": STREAM,
        "versions": versions,
        "rows": rows,
        "skipped": skipped,
    }
    path.write_text(json.dumps(record, indent=1))
    return path


def _fmt_rel(x: float) -> str:
    return "0" if x == 0 else f"{x:.1e}"


def render(inputs: list[Path], doc: Path) -> str:
    """The markdown table of every measurement in ``inputs``, written into ``doc`` between the
    markers. Files labelled ``before`` give the before columns of the rows they share."""
    records = [json.loads(p.read_text()) for p in sorted(inputs)]
    before: dict[tuple, dict] = {}
    after: dict[tuple, tuple[dict, dict]] = {}
    for rec in records:
        for row in rec["rows"]:
            key = (rec["native"], row["optimizer"], row["case"], row["dtype"])
            if rec["label"] == "before":
                before[key] = row
            else:
                after[key] = (rec, row)
    order = {name: i for i, name in enumerate(("torch.optim", "keras", "optax"))}
    dorder = {d: i for i, d in enumerate(("float32", "float16", "bfloat16", "float64"))}
    names = [i.name for i in TABLE]
    keys = sorted(after, key=lambda k: (order[k[0]], names.index(k[1]), k[2], dorder[k[3]]))
    has_before = bool(before)
    figures = ("trajectory rel.", "one-step ulp", "one-step rel.")
    head = ["native", "settings", "optimizer/case", "dtype"]
    if has_before:
        head += [f"{f} before" for f in figures]
    head += [*figures, "bitwise steps"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def three(row: dict) -> list[str]:
        return [_fmt_rel(row["trajectory_rel"]), str(row["one_step_ulp"]), _fmt_rel(row["one_step_rel"])]

    for key in keys:
        rec, row = after[key]
        cells = [key[0], rec["settings"], f"{key[1]}/{key[2]}", key[3]]
        if has_before:
            cells += three(before[key]) if key in before else ["", "", ""]
        cells += [*three(row), f"{row['bitwise_steps']} of {row['steps']}"]
        lines.append("| " + " | ".join(cells) + " |")
    versions = sorted({f"{k} {v}" for rec in records for k, v in rec["versions"].items() if k != "python"})
    steps = sorted({row["steps"] for rec in records for row in rec["rows"]})
    lines.append("")
    commits = sorted({rec["uniopt"] for rec in records if rec["label"] != "before"})
    earlier = sorted({rec["uniopt"] for rec in records if rec["label"] == "before"})
    lines.append(
        f"Stream `{STREAM}` (standard normal), {', '.join(map(str, steps))} steps; uniopt at "
        + ", ".join(commits)
        + (f" (before: {', '.join(earlier)})" if earlier else "")
        + "; measured with "
        + ", ".join(versions)
        + "."
    )
    table = "\n".join(lines)
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{doc} has no {BEGIN} ... {END} markers")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    doc.write_text(text[:start] + "\n" + table + "\n" + text[end:])
    return table


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance parity", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="measure one native row in this framework's environment")
    m.add_argument("--native", required=True, choices=list(NATIVE_CONVENTIONS))
    m.add_argument("--dtypes", nargs="+")
    m.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    m.add_argument("--optimizers", nargs="+")
    m.add_argument(
        "--x64", choices=("on", "off"), help="optax only: jax_enable_x64 (default: on for float64)"
    )
    m.add_argument("--label", default="", help="'before' marks a measurement of the previous conventions")
    m.add_argument("--out", type=Path, default=Path("build/parity"))
    r = sub.add_parser("render", help="write the table of every measurement into docs/porting.md")
    r.add_argument("inputs", nargs="*", type=Path)
    r.add_argument("--out", type=Path, default=Path("build/parity"))
    r.add_argument("--doc", type=Path, default=Path("docs/porting.md"))
    args = parser.parse_args(argv)
    if args.command == "measure":
        x64 = None if args.x64 is None else args.x64 == "on"
        print(measure(args.native, args.out, args.dtypes, args.steps, args.optimizers, x64, args.label))
        return 0
    inputs = args.inputs or sorted(args.out.glob("*.json"))
    print(render(inputs, args.doc))
    return 0
