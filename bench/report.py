"""The ratio table from ``bench/results/*.json`` (kept in the repository): printed with rich, written
to docs/benchmarks.md with a bar chart (PNG next to it)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

FRAMEWORKS = ("torch", "jax", "tf")
COLORS = {
    "uniopt": "#1f77b4",
    "uniopt-mode": "#9ecae1",
    "native": "#ff7f0e",
    "reference": "#fdae6b",
    "bound": "#2ca02c",
}


def load(out: Path, device: str = "cpu") -> dict[str, dict[str, Any]]:
    """Each framework's results on ``device`` that runs wrote under ``out``, :func:`prepared`."""
    from .common import results_name

    paths = {fw: out / results_name(fw, device) for fw in FRAMEWORKS}
    return {fw: prepared(json.loads(path.read_text())) for fw, path in paths.items() if path.exists()}


def prepared(payload: dict[str, Any]) -> dict[str, Any]:
    """A results file's JSON with its ``runs`` (a file without them reads as one run,
    :func:`bench.common.with_runs`) and each row marked with the ``run`` of its entry, so that
    :func:`_ratio` can check that the two rows it divides come from one run."""
    from .common import with_runs

    data = with_runs(payload)
    for sets in data["results"].values():
        for entry in sets.values():
            for r in entry["rows"]:
                r["run"] = entry["run"]
    return data


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> float:
    """``a``'s step time over ``b``'s. Raises ``AssertionError`` where the two rows come from
    different runs: a ratio is only ever formed within one run (rows timed in the same rounds)."""
    if a.get("run") != b.get("run"):
        raise AssertionError(
            f"{a['name']} (run {a.get('run')}) and {b['name']} (run {b.get('run')}) come from different "
            "runs: a ratio is formed within one run only"
        )
    return a["ms"] / b["ms"]


def _rows(data: dict[str, Any], optimizer: str, set_name: str) -> list[dict[str, Any]]:
    return data["results"].get(optimizer, {}).get(set_name, {}).get("rows", [])


def _find(rows: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["name"] == name and r["ms"] is not None), None)


def _fastest(rows: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    timed = [r for r in rows if r["kind"] == kind and r["ms"] is not None]
    return min(timed, key=lambda r: r["ms"]) if timed else None


LOWER_PRECISION = re.compile(r"\([^()]*bfloat16[^()]*\)")
"""The option of a lower-precision-state row in its name (``(state_dtypes={'exp_avg': torch.bfloat16})``,
``(mu_dtype=bfloat16)``); the name without it is the float32 row the row is compared with."""


def _lower_precision(r: dict[str, Any]) -> bool:
    return LOWER_PRECISION.search(r["name"]) is not None


def _headline(rows: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """uniopt's default step (the fastest other mode where that was refused) and the fastest uniopt
    row of another mode or convention; lower-precision-state rows (other work: a narrower state)
    are neither."""
    same_state = [r for r in rows if not _lower_precision(r)]
    other = _fastest(same_state, "uniopt-mode")
    return _fastest(same_state, "uniopt") or other, other


def _ms(value: float) -> str:
    """Milliseconds to two decimals, or three significant digits below 1 ms (the sparse set's steps
    take a few hundredths of a millisecond)."""
    return f"{value:.2f}" if value >= 1 else f"{value:.3g}"


def _times(ratio: float) -> str:
    """A ratio to two decimals, or two significant digits below 0.1 (uniopt's sparse step against a
    native's that steps the whole table)."""
    return f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}"


def _mb(value: int | None) -> str:
    return "" if value is None else f"{value / 2**20:.1f}"


def table_rows(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row per variant: framework, optimizer, set, variant, ms, x fastest native, x bound, state
    MiB, peak step MiB, first step s."""
    out = []
    for fw, data in results.items():
        for optimizer, sets in data["results"].items():
            for entry in sets.values():
                rows = entry["rows"]
                native = _fastest(rows, "native")
                bound = _fastest(rows, "bound")
                for r in rows:
                    if r["ms"] is None:
                        out.append(
                            [fw, optimizer, entry["label"], r["name"], "skipped", "", "", "", "", r["skip"]]
                        )
                        continue
                    vs_native = _times(_ratio(r, native)) if native and r["kind"] != "bound" else ""
                    vs_bound = _times(_ratio(r, bound)) if bound else ""
                    first = "" if r["first_step_s"] is None else f"{r['first_step_s']:.2f}"
                    out.append(
                        [
                            fw,
                            optimizer,
                            entry["label"],
                            r["name"],
                            _ms(r["ms"]),
                            vs_native,
                            vs_bound,
                            _mb(r["state_bytes"]),
                            _mb(r["peak_step_bytes"]),
                            first or r["note"],
                        ]
                    )
    return out


HEADER = [
    "framework",
    "optimizer",
    "set",
    "variant",
    "ms/step",
    "x fastest native",
    "x bound",
    "state MiB",
    "peak step MiB",
    "first step s / note",
]


IN_PLACE_BOUND = "memory-bandwidth bound (in-place C loop)"
"""The CPU's tight bound row (bench.common.in_place_bound): the step's arrays read and written once."""

FUSED_TARGET = {"large": 0.9, "many_small": 0.3}
"""uniopt.torch.RAdam's step over torch.optim.Adam(fused=True)'s, per set: RAdam does more work per
element than Adam, and the fused kernel is torch's fastest step."""


def targets(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """``(target, measured, verdict)`` for each target, from the same run's rows."""
    out: list[tuple[str, str, str]] = []
    torch_data = results.get("torch")
    if torch_data:
        for set_name in ("large", "many_small"):
            rows = _rows(torch_data, "RAdam", set_name)
            ours = _find(rows, "uniopt.torch.RAdam")
            # fused Adam timed in the same rounds as uniopt's RAdam (a "reference" row) when present,
            # else the Adam entry's where the same run measured it
            beside = fused = _find(rows, "torch.optim.Adam(fused=True)")
            if fused is None and ours is not None:
                fused = _find(_rows(torch_data, "Adam", set_name), "torch.optim.Adam(fused=True)")
                fused = fused if fused is not None and fused["run"] == ours["run"] else None
            if ours and fused:
                ratio, limit = _ratio(ours, fused), FUSED_TARGET[set_name]
                out.append(
                    (
                        f"uniopt.torch.RAdam ≤ {limit:g}x torch.optim.Adam(fused=True), {set_name}",
                        f"{ours['ms']:.2f} / {fused['ms']:.2f} ms = {ratio:.2f}",
                        _verdict(ratio <= limit),
                    )
                )
            # whether any step that reads and writes those arrays can meet the target at all: fused
            # Adam and the in-place bound timed in the same rounds
            floor = _find(rows, IN_PLACE_BOUND)
            if set_name == "large" and beside and floor:
                ratio, limit = _ratio(beside, floor), FUSED_TARGET[set_name]
                out.append(
                    (
                        f"(whether {limit:g}x fused Adam is reachable) torch.optim.Adam(fused=True) ≥ "
                        f"{1 / limit:.2f}x the in-place bound, {set_name}",
                        f"{beside['ms']:.2f} / {floor['ms']:.2f} ms = {ratio:.2f}",
                        "reachable"
                        if ratio * limit >= 1.0
                        else "below the bound: no step moving those bytes meets it",
                    )
                )
        rows = _rows(torch_data, "RAdam", "large")
        ours, foreach = _find(rows, "uniopt.torch.RAdam"), _find(rows, "torch.optim.RAdam(foreach=True)")
        if ours and foreach:
            speedup = _ratio(foreach, ours)
            out.append(
                (
                    "uniopt.torch.RAdam ≥ 5x faster than torch.optim.RAdam(foreach=True), large",
                    f"{speedup:.1f}x",
                    _verdict(speedup >= 5.0),
                )
            )
        ours = _find(_rows(torch_data, "RAdam", "many_small"), "uniopt.torch.RAdam")
        if ours:
            out.append(
                ("uniopt.torch.RAdam < 5 ms, many_small", f"{ours['ms']:.2f} ms", _verdict(ours["ms"] < 5.0))
            )
        rows = _rows(torch_data, "RAdam", "large")
        ours, bound = _find(rows, "uniopt.torch.RAdam"), _fastest(rows, "bound")
        if ours and bound:
            ratio = _ratio(ours, bound)
            out.append(
                (
                    "uniopt.torch.RAdam ≤ 1.3x memory-bandwidth bound, large",
                    f"{ours['ms']:.2f} / {bound['ms']:.2f} ms = {ratio:.2f}",
                    _verdict(ratio <= 1.3),
                )
            )
    jax_data = results.get("jax")
    if jax_data:
        for set_name in ("large", "many_small"):
            rows = _rows(jax_data, "RAdam", set_name)
            ours, theirs = (
                _find(rows, "uniopt.jax.radam (jit, donated)"),
                _find(rows, "optax.radam (jit, donated)"),
            )
            if ours and theirs:
                ratio = _ratio(ours, theirs)
                out.append(
                    (
                        f"uniopt.jax.radam ≤ optax.radam (jit), {set_name}",
                        f"{ours['ms']:.2f} / {theirs['ms']:.2f} ms = {ratio:.2f}",
                        _verdict(ratio <= 1.0),
                    )
                )
    tf_data = results.get("tf")
    if tf_data:
        for set_name in ("large", "many_small"):
            rows = _rows(tf_data, "RAdam", set_name)
            ours = _fastest([r for r in rows if r["name"].startswith("uniopt.tf.")], "uniopt") or _fastest(
                rows, "uniopt-mode"
            )
            theirs = _find(rows, "keras.optimizers.Adam (jit_compile)")
            if ours and theirs:
                ratio = _ratio(ours, theirs)
                out.append(
                    (
                        f"uniopt.tf.RAdam (jit_compile) ≤ keras Adam (jit_compile), {set_name}",
                        f"{ours['ms']:.2f} / {theirs['ms']:.2f} ms = {ratio:.2f}",
                        _verdict(ratio <= 1.0),
                    )
                )
    out += sparse_targets(results)
    return out


SPARSE_TARGET = 1.5
"""uniopt's sparse step within this factor of the native sparse step (the fastest native row)."""


def sparse_targets(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """``(target, measured, verdict)`` per framework and optimizer of the sparse set: uniopt's
    headline row within :data:`SPARSE_TARGET` times the fastest native sparse step of the same run."""
    out = []
    for fw, data in results.items():
        for optimizer, sets in data["results"].items():
            rows = sets.get("sparse", {}).get("rows", [])
            ours, native = _headline(rows)[0], _fastest(rows, "native")
            if ours and native:
                ratio = _ratio(ours, native)
                out.append(
                    (
                        f"uniopt.{fw}.{optimizer} within {SPARSE_TARGET}x of the native sparse step, sparse",
                        f"{ours['name']} {_ms(ours['ms'])} / {native['name']} {_ms(native['ms'])} ms "
                        f"= {_times(ratio)}",
                        _verdict(ratio <= SPARSE_TARGET),
                    )
                )
    return out


def against_natives(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row per framework, optimizer and set: uniopt's default step (the fastest other mode where
    that was refused), the fastest native, their ratio, and the fastest uniopt row of another mode
    or convention where it is faster than the default. Rows without a native say so (torch.optim
    has no LAMB)."""
    out = []
    for fw, data in results.items():
        for optimizer, sets in data["results"].items():
            for entry in sets.values():
                rows = entry["rows"]
                # the default step, or where it was refused (uniopt.tf's XLA) the fastest other mode
                ours, other = _headline(rows)
                if ours is None:
                    continue
                native = _fastest(rows, "native")
                faster = (
                    f"{other['name']}: {_ms(other['ms'])} ms" if other and other["ms"] < ours["ms"] else ""
                )
                out.append(
                    [
                        fw,
                        optimizer,
                        entry["label"],
                        f"{ours['name']}: {_ms(ours['ms'])} ms",
                        f"{native['name']}: {_ms(native['ms'])} ms" if native else "none",
                        _times(_ratio(ours, native)) if native else "",
                        faster,
                    ]
                )
    return out


AGAINST_HEADER = ["framework", "optimizer", "set", "uniopt", "fastest native", "ratio", "faster uniopt row"]


def lower_precision(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row per lower-precision-state row (a bfloat16 first moment) and the float32 row of the
    same variant (its name without the option), both timed: framework, optimizer, set, variant,
    state MiB of both, step ms of both, and their ratio. The two come from one entry, so one run."""
    out = []
    for fw, data in results.items():
        for optimizer, sets in data["results"].items():
            for entry in sets.values():
                for narrow in entry["rows"]:
                    if narrow["ms"] is None or not _lower_precision(narrow):
                        continue
                    wide = _find(entry["rows"], LOWER_PRECISION.sub("", narrow["name"], count=1))
                    if wide is None:
                        continue
                    out.append(
                        [
                            fw,
                            optimizer,
                            entry["label"],
                            wide["name"],
                            _mb(wide["state_bytes"]),
                            _mb(narrow["state_bytes"]),
                            _ms(wide["ms"]),
                            _ms(narrow["ms"]),
                            _times(_ratio(narrow, wide)),
                        ]
                    )
    return out


LOWER_HEADER = [
    "framework",
    "optimizer",
    "set",
    "variant",
    "state MiB, float32",
    "state MiB, bfloat16 first moment",
    "ms/step, float32",
    "ms/step, bfloat16 first moment",
    "x step time (bfloat16 / float32)",
]


def _covered(data: dict[str, Any], run_id: int) -> str:
    """The entries of ``data`` that run ``run_id`` measured, by set: ``large (label): Adam, RAdam; ...``."""
    by_set: dict[str, tuple[str, list[str]]] = {}
    for optimizer, sets in data["results"].items():
        for set_name, entry in sets.items():
            if entry["run"] == run_id:
                by_set.setdefault(set_name, (entry["label"], []))[1].append(optimizer)
    parts = [f"{name} ({label}): {', '.join(names)}" for name, (label, names) in by_set.items()]
    return "; ".join(parts) or "none"


def run_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """One Markdown list item per run of each framework: its start (UTC), versions, machine and load
    average, options, and the rows it measured (optimizers by set)."""
    lines = []
    for fw, data in results.items():
        for run in data["runs"]:
            started = (
                run["started"].replace("T", " ").replace("Z", " UTC")
                if run["started"]
                else "date not recorded"
            )
            head = f"* {fw}, run {run['id']} ({started})"
            options = run["options"]
            if options.get("not_run"):
                lines.append(f"{head}: not run on this device: {options['not_run']}.")
                continue
            v = ", ".join(f"{k} {val}" for k, val in run["versions"].items() if val)
            m = run["machine"]
            load = f"load average {m['load_before']:.2f} before the run"
            if m.get("load_after") is not None:
                load += f", {m['load_after']:.2f} after"
            quick = " (--quick)" if options.get("quick") else ""
            threads = options.get("sparse_threads")
            sparse = f"; the sparse set with {threads} intra-op thread(s)" if threads else ""
            lines.append(
                f"{head}: {v}; {m['cpu']}, {m['cores']} cores, {load}; {options['rounds']} rounds x "
                f"{options['steps']} steps after {options['warmup']} warm-up steps{quick}{sparse}; "
                f"rows: {_covered(data, run['id'])}."
            )
    return lines


def _verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def chart(results: dict[str, dict[str, Any]], path: Path) -> None:
    """Horizontal bars, log scale: one panel per (optimizer, set), every timed variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, str, str]] = []
    for data in results.values():
        for optimizer, sets in data["results"].items():
            for set_name, entry in sets.items():
                key = (optimizer, set_name, entry["label"])
                if key not in panels:
                    panels.append(key)
    if not panels:
        return
    heights = []
    for optimizer, set_name, _ in panels:
        heights.append(
            sum(
                len([r for r in _rows(d, optimizer, set_name) if r["ms"] is not None])
                for d in results.values()
            )
        )
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(9, 0.28 * sum(heights) + 1.2 * len(panels)),
        gridspec_kw={"height_ratios": [max(h, 1) for h in heights]},
        squeeze=False,
    )
    for ax, (optimizer, set_name, label) in zip(axes[:, 0], panels, strict=True):
        names, values, colors = [], [], []
        for fw, data in results.items():
            for r in _rows(data, optimizer, set_name):
                if r["ms"] is not None:
                    names.append(r["name"] if r["kind"] != "bound" else f"{r['name']} [{fw}]")
                    values.append(r["ms"])
                    colors.append(COLORS.get(r["kind"], "grey"))
        ax.barh(range(len(values)), values, color=colors)
        ax.set_yticks(range(len(values)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_title(f"{optimizer}, {label}", fontsize=9)
        for i, v in enumerate(values):
            ax.text(v, i, f" {_ms(v)}", va="center", fontsize=6)
    axes[-1, 0].set_xlabel("median step time, ms (log scale; shorter is faster)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


NOTES = """\
How to read the targets, and what limits each one:

* **uniopt.torch on the large set** runs the spec's rule as one C kernel over all 16 tensors, in
  place (docs/torch.md, "The CPU kernel"): the rule traced once into C, one statement per op,
  vectorised without fused multiply-adds or fast-math (bitwise with the reference), its scalars
  passed as arguments, tiles of 32768 elements shared over torch's OpenMP threads. It reads
  parameter, gradient and both moments and writes parameter and moments once, the bound's 28 bytes
  per parameter, as torch.optim.Adam(fused=True) does in its single pass: the two are within a few
  percent of each other and of the in-place bound (run 14: RAdam 1.06x the bound, fused Adam 1.09x).
  Before this kernel, inductor's loop per tensor took 15.9 to 16.7 ms on the same arrays against
  ATen's 13.8 ms (Intel Xeon); its C++ reloads every 0-d scalar in each iteration, and each
  compiled call cost the host about 44 us.
* **uniopt.torch on many small tensors** runs the same kernel over every tensor where it lives: no
  gather, no scatter, one call for all 2000 tensors. What remains is host work that grows with the
  number of tensors and not with their size: reading each `p.grad`, checking each gradient's dtype,
  shape and contiguity, checking that each parameter's state and storage are the ones the flat
  buffers hold, writing the gradients' addresses into the kernel's table, and bumping each
  parameter's autograd version counter. In CPython that was about a microsecond per tensor, 2 ms
  of a 3 ms step for 2000 tensors; a C++ extension built on first use does those loops now
  (docs/torch.md, "Host work"), about 0.5 ms, and the Python code runs where it cannot be built.
  The kernel hands its threads runs of small tensors of about 32768 elements, not one tensor at a
  time (that had cost 0.6 ms of contended hand-outs). In one process, alone, the step takes 0.7
  ms; in the benchmark's interleaved rounds, where the other variants evict its arrays from the
  caches between steps, about 1.7 ms.
* **RAdam at 0.9x fused Adam on the large set is below what the memory allows**: RAdam and Adam
  read and write the same 28 bytes per parameter with one square root and one division each (the
  C source of both rules has the same 13 operations), and fused Adam's pass is already close to
  the memory's speed. Since 2026-12-07 the benchmark times the tight bound beside them, a C loop
  that reads the four arrays and writes three in place with one addition each (`in-place C loop`):
  in run 14 (AMD EPYC, Zen 3, AVX2) fused Adam took 1.09x that loop's time, so 0.9x of fused Adam
  would be 0.98x the bound, faster than moving the bytes with no arithmetic at all; the row
  "(whether 0.9x fused Adam is reachable)" above says so from each run's own rows. Measured the
  same day in one process, interleaved in random order (35 rounds, the same 16 tensors), the loop
  without arithmetic over uniopt's own segment table took 0.86x, 0.89x and 0.92x fused Adam's step
  in three runs, where uniopt's RAdam took 0.91x, 0.97x and 0.98x. Fused Adam took between 8.5
  and 14.8 ms within minutes on the shared Intel Xeon, and ratios of 0.94 to 1.16 were measured
  over runs there; neither software prefetching (slower, 13.8 to 17.8 ms against 12.5 to 13.4) nor
  512-bit vectors (no difference beyond the noise) moved it.
* **uniopt.jax and uniopt.tf** run under XLA like their natives; XLA fuses the rule as it fuses
  optax's and Keras's, so the figures are close to each other. uniopt.jax guards each product so
  that XLA cannot contract `a*b + c` into a fused multiply-add, which would break bitwise equality
  with the reference. Until 2026-12-06 the guard was an integer no-op, which moved each product
  to the integer unit and back: about 10% of Adam's large-set step on the Intel Xeon (one process,
  jitted update and apply_updates, donated: 29.17 ms with it, 26.85 ms with plain products and
  FMAs). Since then it is the addition of a `-0.0` the compiler cannot see (26.68 ms; docs/jax.md).
  The same day `update` began handing `optax.apply_updates` the rule's own increment (`-d` of `p -
  d`), not the parameter's change `new - p` with a comparison and a select per element: plain
  SGD went from 1.15x optax's step to 1.01x (one process). Run 7 (jax, Intel Xeon) has both and
  left Adam at 1.05x, AdamW 1.08x and NAdam 1.06x on the large set (the `.step` rows, which skip
  the update, 1.03x to 1.05x); run 8 (AMD EPYC, 2026-12-07) has RAdam at 1.00x and Adam at 1.00x
  (38.63 against 38.68 ms, 41.49 against 41.40). Traced that day in the compiled programs
  (`jax.jit(...).lower(...).compile().as_text()`, Adam, the large set): uniopt's and optax's are
  the same three loops per tensor, XLA's CPU backend having no multi-output fusion: one per moment
  (reading the gradient and the moment, writing the moment) and one for the parameter (reading it
  and both new moments), 40 bytes a parameter where one pass would move 28. So both take 1.6x to
  1.7x the in-place bound (run 8: 38.63 and 41.49 ms against 22.41 and 25.93); per element
  uniopt's parameter loop has one division where optax's has two, and the `-0.0` guards, which
  the memory traffic hides there. Not on the Intel Xeon (AVX-512) on 2026-12-07: the benchmark's
  jax rows (not merged) had Adam at 1.08x optax's step, AdamW 1.15x and NAdam 1.08x on the large
  set, the `.step` rows 1.04x to 1.05x; one process, Adam interleaved with optax.adam over 15
  rounds, took 1.06x to 1.09x optax's step with the guards and 1.02x to 1.04x with the products'
  guards taken out (an experiment: not bitwise, XLA's CPU compiler always lets LLVM form FMAs),
  and the root's integer no-op made no difference (an integer add, a `-0.0` add or none). Adam's
  guards are seven vector additions per element, which a core whose loops are not wholly waiting
  on memory pays; bitwise equality with the reference needs each product rounded on its own.
  uniopt.tf under XLA is bitwise only with `XLA_FLAGS="--xla_cpu_max_isa=AVX
  --xla_cpu_enable_fast_min_max=false"` (docs/tf.md); the benchmark runs with XLA's defaults (the
  flags are process-wide and would slow the Keras natives timed beside it), so its `jit_compile` rows
  are XLA's speed, not the bitwise mode's.
* **uniopt.tf on many small tensors** (2000 tensors of 500 elements) pays TensorFlow's cost per
  tensor and per variable, which dwarfs the arithmetic (the bandwidth bound is about 1.3 ms).
  Measured in one process (TensorFlow 2.21, a hand-written Adam step, interleaved): a step that
  only takes the 2000 gradients as arguments of its `tf.function` costs 40 to 46 ms, XLA or not,
  for uniopt and Keras alike; the Adam step over 6000 variables (each parameter and its two
  moments) 125 to 134 ms under XLA and 96 to 98 ms in `tf.function`, like Keras's and uniopt.tf's
  rows; the same step with each moment kept in one flat variable for all 2000 tensors (2002
  variables) 69 to 78 ms under XLA. So the XLA rows are slower than the `tf.function` ones here.
  Since 2026-12-06 uniopt.tf's `tf.function` step runs the rule once per group of like variables
  (same spec, dtype, shape and slot dtypes), stacked, and assigns each variable its part
  (docs/tf.md, "Many small variables"; the same bits, the conformance matrix's `tf@function`
  cells): per variable only the reads and assignments of the parameter and its slots remain,
  where the per-variable step paid each op of the rule too (Lion's bit-level `sign` alone is 10
  ops, Keras's `tf.sign` one). Only variables of at most 2048 elements are stacked (since
  2026-12-07; above, stacking was slower: the large set's `tf.function` step, stacked, had taken
  438.7 ms for Adam and 666.8 for RAdam that morning, against 103.8 and 125.9 for Keras's Adam
  timed beside each).
  Runs 13 and 15 (Intel Xeon) had it: against Keras's `tf.function` step Adam 0.94x, RAdam 0.91x
  (against Keras's Adam), AdamW 0.87x, Adamax 0.96x, NAdam 0.73x, Lion 0.99x, Adadelta 1.01x,
  RMSprop 1.05x, Adagrad 1.20x (a rule of 10 ops: little to save); SGD without momentum (2 ops)
  is stepped per variable, 1.34x: Keras's step is a product and an in-place
  `AssignSubVariableOp`. Since 2026-12-07 uniopt.tf steps such a parameter the same way, by an
  `assign_sub` of its rule's increment, stacked or not (docs/tf.md, "The parameter stepped by its
  increment"; the same bits): in one `python -m bench run tf --optimizers SGD RAdam --sets
  many_small` that day (AMD EPYC, a slow day: Keras's SGD step took 80.13 ms), SGD 1.03x Keras's
  `tf.function` step (82.56 ms), RAdam 0.96x Keras's Adam (107.52 against 112.17 ms), and under
  XLA 0.98x and 0.97x Keras's XLA rows; that run is not merged into the tables. Two runs on the
  Intel Xeon that evening do not bear it out for the `tf.function` rows. Run 21 had SGD, Adagrad
  and RMSprop at 94.57, 72.00 and 81.44 ms against Keras's 71.05, 49.88 and 67.23 (1.33x, 1.44x,
  1.21x); run 22, twenty minutes later and in the tables, at 51.72, 75.21 and 72.73 against 47.03,
  55.46 and 58.93 (1.10x, 1.36x, 1.23x). The XLA rows were 0.94x to 1.02x in both. Timed outside
  the benchmark in one process between the two runs, uniopt.tf's and Keras's SGD `tf.function`
  steps (2000 tensors, interleaved with their XLA steps, 7 rounds) took 24.50 and 26.31 ms (0.93x;
  2000 `AssignSubVariableOp`s in each graph), and alone 46.58 and 45.41 ms (1.03x); Adagrad the
  same way 48.73 against 47.78 ms (1.02x), and 55.37 against 52.52 (1.05x) with a 64 MB copy
  before each step to sweep the caches. So the benchmark's rounds cost uniopt.tf's stacked step
  more than Keras's per-variable one; neither the cache sweep nor the set's alternating 2-D and
  1-D shapes account for it (with them, that process had Adagrad at 0.98x and SGD at 0.97x); what
  does was not traced. On 2026-12-08 (AMD EPYC) the same benchmark did not show it: a run of SGD
  and Adagrad on the set (not merged) had their `tf.function` steps at 1.02x (56.04 against 54.76
  ms) and 0.97x (39.98 against 41.37) Keras's, with no page faults in any step (counted by
  `getrusage` in a copy of the benchmark's loop: 0 a step for every row); run 23, in the tables,
  has RAdam at 0.75x Keras's Adam and Adam at 0.94x (96.19 against 102.44 ms; run 19, before the
  parameter was stepped by its increment, 1.20x), and three processes timing Adam's two
  `tf.function` steps alone the same way 0.80x to 0.84x. The spread between runs (0.97x to 1.44x
  for Adagrad) is larger than any change measured here; the rows of SGD, Adagrad and RMSprop in
  the tables are run 22's.
  Run 18 (AMD EPYC) adds Schedule-Free AdamW: 0.78x Keras's
  `tf.function` step (58.96 against 75.75 ms; 1.12x in run 5, per variable), its `keras`
  convention 0.79x; its XLA rows (where a run with other optimizers had died silently while
  compiling, on the Intel Xeon) took 176 to 195 s to compile here. Measured alone, in one
  process, before and after (uniopt.tf per variable, stacked, Keras): Lion 55.7, 37.5, 34.6
  ms; Adam 51.1, 41.3, 45.0. Tracing the step took 13.4 s for uniopt.tf's Adam against
  Keras's 46.5 s (the first step column). Under XLA
  stacking was slower (Adam 75.7 to 84.9 ms, Lion 46.1 to 52.6, SGD 20.6 to 24.7) and is not done;
  there uniopt.tf's rows are below Keras's XLA rows and above its `tf.function` ones.
  Fewer ops per variable would need the state in flat variables (a different Keras variable
  layout: checkpoints, `optimizer.variables`); not done.
* **uniopt.torch.SGD on the sparse set** misses 1.5x by construction: torch.optim.SGD adds the
  uncoalesced gradient into the parameter in one kernel (repeated rows added one by one), while
  uniopt's rule sees the gradient's value, so it sums repeated rows first (`coalesce()`), gathers
  the rows, runs the rule's two ops and writes them back. Those five torch ops alone took 13 us
  (measured one by one, one thread), about torch.optim's whole step (14 us, of which about 8 us
  is torch.optim.Optimizer's step wrapper, which uniopt's step runs too); the rest of uniopt's
  step is its per-step bookkeeping in Python. Adagrad and SparseAdam, whose torch.optim steps
  coalesce too, are within 1.5x. Running the touched rows through the C kernel instead (one
  segment per row, the addresses computed by NumPy from the row indices: no gather, no write-back,
  no torch op for the rule) was tried on 2026-12-07 and was slower, 304 against 174 us a step (one
  process, one thread, 32 rows of a 1,000,000 x 64 embedding): building the table cost more than
  the four torch ops it replaced. Sampled by py-spy (the torch-op path, as shares of the step): the
  coalesce 15%, torch.optim's step wrapper and its profiler record 17%, the rows' gather, rule
  and write-back 26%, the rest Python bookkeeping spread over many lines, none of them above 6%.
* **The other elementwise optimizers** (SGD, Adagrad, RMSprop, AdamW, Adamax, Adadelta, Lion,
  NAdam) were first timed on all three frameworks on 2026-12-05 (the runs listed above).
  uniopt.torch's Lion then took 112.5 ms on the large set, 7x fused Adam's step although it moves
  20 bytes per parameter to Adam's 28: the C kernel's `sign`, a nested select (`x > 0 ? 1 : (x <
  0 ? -1 : ...)`), left GCC's loop scalar with a branch per element ("not vectorized: control flow
  in loop"), and random signs mispredict half of them. Written as selects of constants and one
  subtraction (`(x > 0 ? 1 : 0) - (x < 0 ? 1 : 0)`, NaN kept; the same bits, +0 for either zero),
  the loop vectorises: 11.2 ms on the large set and 1.69 ms on the many-small one (from 5.98).
  tests/torch_adapter/test_native.py now compiles every elementwise case's float32 kernel and
  requires GCC's report to show its inner loop vectorised. torch.optim has no Lion, so the row
  has no native to divide by; fused Adam's row is timed beside it.
* **Those eight on jax and tf**: uniopt.jax (run 7, Intel Xeon, for all but Adadelta and Lion) is
  0.84x (Adagrad) to 1.08x (AdamW) optax's step on the large set (SGD 1.03, RMSprop 0.96, Adamax
  1.02, NAdam 1.06; Adadelta 0.63 and Lion 0.95 in run 5 on the AMD EPYC) and 0.94x to 1.04x on
  the many-small set, where in run 5 (AMD EPYC) it was 0.90x to 0.95x; uniopt.tf under XLA within
  1.13x of Keras's fastest row on the large set
  (Adamax 1.13, Lion 1.07, the rest 0.93 to 1.04); measured again on the Intel Xeon on
  2026-12-07 (one process, the XLA rows interleaved, 11 to 15 rounds) Adamax took 28.38 against
  28.04 ms (1.01x), Lion 32.56 against 32.70 (1.00x), NAdam 0.96x, RAdam 0.97x Keras's Adam and
  Adafactor 0.77x. Lion is slow under XLA for everyone (optax 54 ms,
  Keras 52 to 54 ms, against 13 to 18 ms for SGD), and so is Keras's Adadelta (133 ms under XLA,
  70 in `tf.function`); not traced further. On the many-small set uniopt.tf's `tf.function` row,
  its faster one there, was 1.03x (Adamax) to 1.54x (Lion) Keras's `tf.function` step, NAdam and
  AdamW 0.83x and 0.95x, in the AMD EPYC runs of 2026-12-05: TensorFlow's cost per variable and
  op; see "uniopt.tf on many small tensors" above for the stacked step since.
  Writing a result `p - d` with `assign_sub(d)` instead of `assign(p - d)` (the same bits, no
  result buffer) was tried on 2026-12-05 and reverted: in interleaved rounds of one process, in
  random order, it changed a 2000-tensor step by -4% (SGD) and -1% (Adam), and a 16-tensor one
  by -13% (SGD), +9% and -10% (Adam, two runs) and +21% (Adagrad); a fixed order had shown -9%
  for SGD and +7% and +9% for Adam. No benefit beyond this machine's noise was shown.
* Every figure is a median over interleaved rounds on a shared 2-core machine; compare ratios within
  one framework's rows, not across runs.
"""


NON_ELEMENTWISE_NOTES = """\
What separates the non-elementwise optimizers (and Schedule-Free AdamW) from their natives:

* **Adafactor and LAMB outside XLA** (uniopt.tf's `tf.function`, and uniopt.torch before the
  per-shape kernels below): every norm, row sum and column sum is summed in the spec's fixed
  order, pairwise halving in ceil(log2 n) elementwise additions of slices, each its own kernel,
  where a native makes one fused reduction; Adafactor's divisions by broadcast statistics are
  full-size exact divisions; and each tensor is stepped on its own (over a concatenation a norm
  would span several tensors). The fixed order is what makes these optimizers bitwise across
  backends and modes (docs/conformance.md, "Reductions"). On the large set uniopt.torch compiles
  the rule once per parameter shape with inductor (docs/torch.md, "Speed"; bitwise the per-tensor
  step), which fuses the slices, divisions and square roots into a few loops per parameter:
  Adafactor went from 115.77 ms (2.92x `torch.compile(torch.optim.Adafactor.step)`, the run at
  2026-12-03) to the figure above, LAMB from 118.63 ms; the first step pays the compiles (the
  first step column). On many small tensors, where the per-kernel cost would dominate,
  uniopt.torch stacks the parameters of one shape and runs the rule once per stack under
  `torch.func.vmap` (bitwise the per-tensor step): Adafactor went from 499 ms (9.25x torch.optim's
  foreach step, two runs before) to 66 ms (0.93x), LAMB from 310 to 57 ms. Under XLA (uniopt.jax,
  uniopt.tf with `jit_compile`) the slices fuse. Since 2026-12-05 each halving of an odd length adds
  `-0` to the slices it keeps (`x + (-0)` is `x`, bit for bit) rather than concatenating them after
  the addition; the concatenation read the summed array's producer twice, so XLA stored that array
  (Adafactor's `u`) and read it back: uniopt.jax's large-set Adafactor went from 1.19x optax's (the
  run of 2026-12-04) to the figure above, the same bits; its many-small row from 1.12x (the run of
  2026-12-04 on an AMD EPYC) to 0.78x (run 6, 2026-12-06, on an Intel Xeon: another machine, so
  not a measure of the change alone).
* **Compilation grows with those slices**: XLA compiles uniopt.jax's 2000-tensor Adafactor, LAMB
  and Schedule-Free steps and its 1000-matrix Muon step in about twice optax's time or more (the
  first step column; run 6: Adafactor 178 s against 79 s, LAMB 191 s against 103 s), and a
  `tf.function` of uniopt.tf's non-elementwise steps held 250 to 560 graph ops per tensor when the
  many-tensor set was last tried (the skipped rows say what happened), 150 to 370 since 2026-12-06,
  when each halving became one `Split` op instead of two slices (LAMB 259 to 153 ops, 4.0 to 2.1 MB
  of memory and 0.15 to 0.08 s of tracing per 20x25 tensor; Adafactor 562 to 369 ops, 8.6 to 5.1 MB,
  0.39 to 0.26 s; Keras's 63 and 79 ops: docs/tf.md, "Graph size"). The set is still not traced
  there (`TRACE_LIMIT_TENSORS` in bench/tf_bench.py).
* **Muon**: a step is its Newton-Schulz products, 15 per matrix at 5 iterations. torch.optim.Muon
  runs them in bfloat16, on the CPU's bfloat16 matrix instructions (the Intel Xeon of run 11 has AMX
  tiles: a 1250x1260 bfloat16 product took 3.8 ms there, the float32 one 14.3 ms).
  uniopt.torch.Muon's default convention runs them in float32, four times the work and more: it is
  the row the headline divides on the large set, and its ratio shows the precision, not the code.
  `convention="torch"` does torch.optim.Muon's work: since 2026-12-06 the products of a matrix whose
  Gram product has at least `128**3` multiply-adds run torch's own bfloat16 `mm` and `addmm` (the
  kernels torch.optim.Muon calls; the iteration is then torch's bit for bit,
  tests/torch_adapter/test_muon_torch.py), where they had been float32 products of bfloat16 values
  rounded once: on the large set 1962 ms against torch.optim.Muon's 367 ms before (5.4x, one
  process, this Xeon), 1.53x in that morning's benchmark run. Run 11 has two more changes of that
  day: the iterates stay bfloat16 between the products (they had been converted to float32 and back
  at each one: 1.59x to 1.38x of torch.optim.Muon's eager step, one process), and under `"auto"`
  such a matrix of at least `AUTO_COMPILE_MIN` elements steps compiled per shape, the products
  staying torch's kernels (a custom operator inductor calls as it is) and the elementwise work
  around them (the momentum, the roundings to bfloat16, the norm, the division, the update) fused by
  inductor (1.38x to 1.11x; bitwise the eager loop; the first step pays about 13 s of compilation
  per shape, the first step column). Run 15 (2026-12-07, the same Xeon) has one more: the compiled
  step had summed the norm's squares of a tall matrix in its transposed order, reading it down the
  columns in scalar code with an integer division per element; the torch convention now sums them
  in the matrix's own order before transposing (as torch's norm reads a transposed view; no
  conformance bit moved, docs/optimizers/muon.md). One process, beside torch.optim.Muon: 474 ms a
  step against its 404 before, 372 against 392 after. In run 15 the torch convention takes 407.36
  ms on the large set against torch.optim.Muon's 413.19 (0.99x its eager step) and
  torch.compile's 365.76 (1.11x): the products, timed alone on one matrix (five iterations, 42 to
  44 ms through either torch's ops or the custom operator, compiled or not, the same bits), are the
  same work, and the gap is the rest. With `ns_steps=0` (no products; one process, interleaved,
  two runs) uniopt's step took 41.4 and 31.8 ms against torch.compile's 22.3 and 16.6 and
  torch.optim's eager 49.7 and 42.8: torch.compile makes the whole step one graph (the 8 norms in
  one kernel, each update fused with the next matrix's prologue), where uniopt's compiled step is
  one call per matrix, and the spec's fixed-order norm (pairwise halving, the same bits on every
  backend) writes and reads back 2^20 partial sums per matrix (4 MB) where a single-pass reduction
  keeps them in registers; how the 15 to 19 ms divide between the two was not measured.
  On the many-small set the 1000 matrices of 20x25 are
  stepped stacked since run 11, one rule call for all under `torch.func.vmap`, each product still
  formed per matrix by `torch.matmul` (torch's batched product, `bmm`, sums differently from `mm`
  below 400 multiply-adds and, with two threads, for long shared sides; with it the step took about
  30 ms, not bitwise the per-tensor loop), in both conventions: 621 and 386 ms a step in the
  morning's run 11 (torch and uniopt conventions), 157.31 and 160.76 in run 15, 0.26x
  torch.optim.Muon's 609.50; the 15,000 products per step are most of what remains. Keras and optax,
  like uniopt.tf and uniopt.jax, multiply in float32.
* **Schedule-Free AdamW under XLA**: uniopt.tf computes the step's scalars and the history of
  learning rates in-graph there (docs/tf.md, "Schedule-Free AdamW"). Its default convention, the
  authors' algorithm, steps `y` from the old `z` and the normalised gradient `u`, which the step
  of `z` reads too. XLA's CPU compiler makes each output its own loop (no multi-output fusion): left
  alone it stored `u` and read it back, and uniopt.tf's XLA copied each `z` before updating it in
  place (five passes, about 60 bytes per parameter). Since 2026-12-05 the rule tells XLA otherwise
  through two hints that change no value (`uniopt._math.recomputed` and `after`; the conformance
  matrix's `large` stream runs them): `y`'s loop recomputes `u` from `v`, and `z`'s loop follows
  it in place (three loops, 48 bytes per parameter; Keras's algorithm, which steps `y` from the new
  `z`, needs 40). uniopt.tf's large-set step went from 1.75x to about 1.1x Keras's; uniopt.jax's
  from 1.09x optax's (the run of 2026-12-04) to the 0.64x above (hint from 2^20 elements per
  array, where an array no longer stays in this CPU's caches between loops). The
  many-small set's tensors are below both thresholds. `uniopt.tf.ScheduleFreeAdamW(convention=
  'keras')`, Keras's algorithm run by the spec, is timed beside it. On the Intel Xeon on
  2026-12-07 (one process, the two XLA steps interleaved, two runs) uniopt.tf's took 35.87 and
  35.54 ms against Keras's 30.27 and 29.40 (1.19x, 1.21x); their optimised HLO (the large set)
  still has those three loops per tensor, 12 array passes against Keras's 10: the algorithm's
  cost under one loop per output, not the code's.
* **Adafactor under XLA on TensorFlow**: its scalars never reach a limit (the relative step size),
  and uniopt.tf computes them in-graph there (docs/tf.md, "How a step runs"; until 2026-12-04 it
  refused `jit_compile`, and its `tf.function` step was the row compared). Keras's own Adafactor
  is faster in `tf.function` than under XLA on this CPU (its reductions are TensorFlow's fused
  kernels there), so that is the fastest native. Since 2026-12-07 uniopt.tf forms under XLA the
  halvings of its fixed-order sums whose length is not a power of two by a gather at clamped
  indices, where it had padded them with `-0` (docs/tf.md, "Sums under XLA: gathered, not
  padded"; the same bits): XLA's CPU compiler loads the padding with masked vector loads aimed
  past the array's end, each an assist over unmapped pages (the first halving of a sum of
  squares of 1,575,000 float32 took 8.3 ms padded there, 0.7 gathered, on the AMD EPYC). Run 17
  (tf, AMD EPYC) has it: Adafactor 43.66 ms under XLA (1.12x Keras's `tf.function` step, 1.40x in
  run 4), LAMB 43.29 ms (0.78x, 0.87x in run 1); the peak step memory of Adafactor's XLA step
  went from 106 MiB to none (the padded slices were written out). What remains of Adafactor's
  gap is not traced further (computing `u` again in the update's loop rather than storing it,
  as Schedule-Free AdamW's hint does, made the step slower: 49.6 against 41.6 ms). uniopt.jax
  pads as before: the same gather made its Adafactor step 10% slower under `jax.jit` and its
  LAMB step 11% faster (one process, interleaved), and a `dynamic_update_slice` of the paired
  slices was slower still.
* **Rows marked refused**: uniopt.tf refuses `jit_compile` where a step's scalars need the host
  (Schedule-Free AdamW's optax convention, a float32 history), with the message shown; there the
  `tf.function` row is uniopt.tf's step, and the fastest native may be Keras's under XLA.
"""


LOWER_PRECISION_NOTES = """\
Adam with its first moment stored in bfloat16 (`state_dtypes={"exp_avg": torch.bfloat16}` on
uniopt.torch, `state_dtypes={"exp_avg": "bfloat16"}` on uniopt.tf, `mu_dtype=jnp.bfloat16` on
uniopt.jax and optax) beside the same variant with a float32 state, both timed in the same rounds of
one run: the state it saves (a quarter of Adam's two float32 moments) and what it costs a step.
torch.optim and Keras have no Adam with a bfloat16 first moment, so the torch and tf rows have no
native to compare with (none is made up); optax's `mu_dtype` is jax's. uniopt.torch keeps the
narrower slot in flat buffers of its dtype; on the CPU the C kernel that runs its float32 row runs
this one too, converting the bfloat16 slot itself (docs/torch.md, "The CPU kernel"; until
2026-12-06 inductor's compiled rule ran it, 1.8x to 2.2x the float32 step).
"""


GPU_NOTES = """\
This is a GPU run (`nox -s bench -- --device gpu`): parameters, gradients and optimizer state live on
the GPU, every timed round ends with a device synchronisation, `peak step MiB` is the CUDA memory a
step allocates above what is allocated before it (torch; not measured for jax), `state MiB` includes
buffers an optimizer keeps besides its state (uniopt.torch's gather buffers, `opt.scratch_bytes()`),
and the bound is a device copy. The targets above were set for the 2-core CPU machines
(docs/benchmarks.md); they are applied here as they stand, for comparison.
"""


def _markdown_rows(rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]


def markdown(results: dict[str, dict[str, Any]], png_name: str, device: str = "cpu") -> str:
    title = "# Benchmarks" if device == "cpu" else f"# Benchmarks on the {device.upper()}"
    lines = [
        title,
        "",
        "Median optimizer step time after warm-up, measured by `nox -s bench` (each framework in its own "
        "virtualenv and process; within a process every variant is timed interleaved with the others, "
        "so ratios are from one run). `x fastest native` divides by the fastest native variant of the "
        "same framework, optimizer and set; `x bound` by the fastest memory-bandwidth bound measured in "
        "the same process. An Adam-type step reads parameter, gradient and two moments and writes three "
        "of them, 28 bytes per float32 parameter. On the CPU the tight bound is a C loop that does "
        "exactly that in place, with one addition per array (`in-place C loop`, built with the system "
        "compiler, `-O3 -march=native`, on every core): no step that keeps those arrays moves less. The "
        "copies of 28 bytes per parameter beside it are loose bounds: a copy's destination is read "
        "before it is written (write-allocate), which an in-place update does not pay. `state MiB` "
        "counts the optimizer's state; "
        "`peak step MiB` is the resident memory one step adds above the steady state (temporaries). "
        "The torch process compiles into an empty inductor cache of its own (unless "
        "`TORCHINDUCTOR_CACHE_DIR` is set), so no kernel built by an earlier process is timed and "
        "`first step s` includes the compile.",
        "",
        "A framework's rows may come from several runs: `python -m bench run <framework> --merge` "
        "replaces the optimizers and sets it measures and keeps the others. Each run is listed below "
        "with the rows it measured; every ratio divides two rows of one run.",
        "",
    ]
    lines += run_lines(results)
    lines += ["", "## Targets", "", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {v} |" for t, m, v in targets(results)]
    lines += ["", NOTES if device == "cpu" else GPU_NOTES]
    lines += [
        "## uniopt against the fastest native",
        "",
        "uniopt's headline row (uniopt.torch's default step, uniopt.jax's jitted `update`, uniopt.tf "
        "under `jit_compile`; where that is refused, the fastest other uniopt row) over the fastest "
        "native variant timed in the same rounds; below 1 is faster.",
        "",
        "| " + " | ".join(AGAINST_HEADER) + " |",
        "|" + "---|" * len(AGAINST_HEADER),
    ]
    lines += _markdown_rows(against_natives(results))
    lines += ["", NON_ELEMENTWISE_NOTES if device == "cpu" else "", ""]
    lines += ["## Lower-precision state", "", LOWER_PRECISION_NOTES]
    narrow = lower_precision(results)
    if narrow:
        lines += ["| " + " | ".join(LOWER_HEADER) + " |", "|" + "---|" * len(LOWER_HEADER)]
        lines += _markdown_rows(narrow)
    else:
        lines.append("No run listed above measured a lower-precision state.")
    lines += [""]
    lines += [
        f"![step times]({png_name})",
        "",
        "## All variants",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += _markdown_rows(table_rows(results))
    return "\n".join(lines) + "\n"


def report(out: Path, docs: str, device: str = "cpu") -> int:
    from rich.console import Console
    from rich.table import Table

    results = load(out, device)
    if not results:
        print(f"no {device} results under {out}; run `python -m bench run torch` (or nox -s bench) first")
        return 1
    console = Console(width=200)
    table = Table(*HEADER, title="uniopt step time vs native optimizers")
    for row in table_rows(results):
        table.add_row(*row)
    console.print(table)
    against = Table(*AGAINST_HEADER, title="uniopt against the fastest native")
    for row in against_natives(results):
        against.add_row(*row)
    console.print(against)
    narrow = Table(*LOWER_HEADER, title="lower-precision state")
    for row in lower_precision(results):
        narrow.add_row(*row)
    console.print(narrow)
    for line in run_lines(results):
        console.print(line, markup=False)
    goals = Table("target", "measured", "", title="targets")
    for t, m, v in targets(results):
        goals.add_row(t, m, f"[green]{v}[/]" if v == "met" else f"[red]{v}[/]")
    console.print(goals)
    if docs:
        md = Path(docs)
        png = md.with_suffix(".png")
        chart(results, png)
        md.write_text(markdown(results, png.name, device))
        print(f"wrote {md} and {png}")
    return 0
