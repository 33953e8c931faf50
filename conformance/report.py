"""The matrix in words, as tables (terminal, Markdown), JSON (every cell) and a heat map PNG.

Every cell falls in one category: ``bitwise`` (0 ulp from the NumPy reference at every step, for
every parameter and state slot), ``bound`` (over 0 but within the table's stated bound), ``failed``,
``n/a`` (the cell cannot exist there), ``deferred`` (left to ``--full`` for time) or ``reference``
(the NumPy run itself). The terminal report fits 80 columns: what was proved, the failures, one line
per backend@mode, the bounds and the reasons, grouped; the wide matrix (rows optimizer x
backend@mode, columns dtypes) goes to the files, and to the screen only when it fits.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from uniopt.registry import MODE_TOLERANCES, NATIVE_TOLERANCES, TABLE, bound_keys

from .backends import bounds_of
from .cells import ALL_DTYPES
from .compare import CellResult
from .ulp import NAN_MISMATCH

__all__ = [
    "BEGIN",
    "CATEGORIES",
    "COLOURS",
    "END",
    "Matrix",
    "category",
    "fmt_ulp",
    "load",
    "publish",
    "run_info",
    "write_reports",
]

CATEGORIES = ("bitwise", "bound", "failed", "n/a", "deferred")
"""Verdict categories of a compared backend's cell, in the order the report gives them."""
LABELS = {
    "bitwise": "bitwise identical",
    "bound": "within a stated bound",
    "failed": "failed",
    "n/a": "not applicable",
    "deferred": "left to --full",
}
COLOURS = {
    "bitwise": "#1a9850",
    "bound": "#fdd835",
    "failed": "#d73027",
    "n/a": "#e0e0e0",
    "deferred": "#9ecae1",
}
"""Heat map colour of each category (hex RGB)."""
NATIVE = {
    "torch.optim": "torch.optim.{}",
    "keras": "keras.optimizers.{}",
    "optax": "optax.{}",
    "keras_jax": "keras.optimizers.{} (JAX)",
    "keras_torch": "keras.optimizers.{} (torch)",
}
"""Native rows (mode ``native``): the framework's own optimizer, as it is spelled there (Keras's
on TensorFlow, ``keras@native``, and on Keras's JAX and torch backends)."""
REASON_WIDTH = 110
BACKEND_COLUMNS = ("backend@mode", "run", "bitwise", "bound", "worst≤bound", "failed", "n/a", "full")


def category(r: CellResult) -> str:
    """The category of one cell (see the module docstring)."""
    if r.verdict == "pass":
        return "bound" if r.ulp else "bitwise"
    return {"FAIL": "failed", "skipped": "n/a", "deferred": "deferred"}.get(r.verdict, r.verdict)


def fmt_ulp(value: int | None) -> str:
    """An ulp count, short: ``0``, ``1024``, ``4.9e7``; ``NaN≠`` where one side alone was NaN."""
    if value is None:
        return "-"
    if value == NAN_MISMATCH:
        return "NaN≠"
    if value < 100_000:
        return str(value)
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _fmt_rel(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def _short(text: str, width: int = REASON_WIDTH) -> str:
    return textwrap.shorten(text, width, placeholder=" …")


def _native_name(backend: str, optimizer: str) -> str:
    from .native import PACKAGE_NATIVES

    if backend == "torch.optim" and optimizer in PACKAGE_NATIVES:
        return ".".join(PACKAGE_NATIVES[optimizer])
    if backend == "optax":  # the row's optax function: optax.adam, optax.contrib.muon
        names = next((n for i in TABLE if i.name == optimizer for n in i.optax if n.native), None)
        if names is not None:
            return f"{names.module}.{names.alias}"
    spelled = NATIVE.get(backend, backend + ".{}")
    return spelled.format(optimizer.lower() if backend == "optax" else optimizer)


def _bound_source(r: CellResult) -> tuple[str, str]:
    """Where a bound comes from in ``uniopt.registry`` and, where the table keeps one, its reason."""
    info = next((i for i in TABLE if i.name == r.optimizer), None)
    same_as = bounds_of(r.backend, r.mode)  # a mode that runs another backend's kernels takes its bounds
    if info is not None and r.rel_tolerance is not None and (r.ulp or 0) > (r.tolerance or 0):
        relative = info.relative_bound(r.backend, r.mode, r.case, r.stream, same_as)
        if relative is not None:  # admitted by the relative bound, beyond the ulp one
            return f"{r.optimizer} relative_tolerance (relative distance <= {relative[0]:g})", relative[1]
    if r.mode == "native":
        why = NATIVE_TOLERANCES.get(r.optimizer, {}).get(r.backend, (0, ""))[1]
        return f"NATIVE_TOLERANCES[{r.optimizer!r}][{r.backend!r}]", why
    if info is not None:
        for key in bound_keys(r.backend, r.mode, r.case, r.stream, same_as):
            if key in info.ulp_tolerance:
                return f"{r.optimizer} ulp_tolerance[{key!r}]", ""
    for backend, mode in ((r.backend, r.mode), *([same_as] if same_as else [])):
        mode_key = f"{backend}:{mode}"
        if mode_key in MODE_TOLERANCES:
            return f"MODE_TOLERANCES[{mode_key!r}]", MODE_TOLERANCES[mode_key][1]
    return "the recorded tolerance", ""


@dataclasses.dataclass
class _Group:
    """Aggregate of cells that share a row and a column."""

    verdicts: list[str] = dataclasses.field(default_factory=list)
    ulp: int | None = None
    tolerance: int = 0

    def add(self, r: CellResult) -> None:
        self.verdicts.append(r.verdict)
        if r.ulp is not None:
            self.ulp = max(self.ulp or 0, r.ulp)
        if r.tolerance and r.ulp:  # the bound that admitted a nonzero distance
            self.tolerance = max(self.tolerance, r.tolerance)

    @property
    def verdict(self) -> str:
        for v in ("FAIL", "pass", "reference", "deferred"):
            if v in self.verdicts:
                return v
        return "skipped"

    @property
    def category(self) -> str:
        """The heat map's colour: failed over bound over bitwise over deferred over n/a."""
        v = self.verdict
        if v == "pass":
            return "bound" if self.ulp else "bitwise"
        return {"FAIL": "failed", "deferred": "deferred", "skipped": "n/a"}.get(v, v)

    def text(self) -> str:
        v = self.verdict
        if v in ("reference", "skipped", "deferred"):
            return {"reference": "ref", "skipped": "skip", "deferred": "--full"}[v]
        mark = " FAIL" if v == "FAIL" else ""
        bound = f" (≤{fmt_ulp(self.tolerance)})" if self.tolerance else ""
        partial = "*" if {"skipped", "deferred"} & set(self.verdicts) else ""
        return f"{fmt_ulp(self.ulp)}{partial}{bound}{mark}"


@dataclasses.dataclass
class BackendLine:
    """One backend@mode's cells by category, and its worst distance among the passing cells."""

    name: str
    native: bool
    counts: Counter
    worst: int | None
    bound: int | None

    @property
    def reference(self) -> bool:
        return self.counts["reference"] > 0

    @property
    def run(self) -> int:
        return sum(self.counts[c] for c in ("bitwise", "bound", "failed", "reference"))

    def cells(self) -> list[str]:
        """The row's columns as text: name, run, bitwise, bound, worst≤bound, failed, n/a, full."""
        c = self.counts
        if self.reference:
            return [
                f"{self.name} (ref)",
                str(self.run),
                "ref",
                "-",
                "-",
                "-",
                str(c["n/a"]),
                str(c["deferred"]),
            ]
        worst = "-" if self.worst is None else f"{fmt_ulp(self.worst)}≤{fmt_ulp(self.bound)}"
        counts = [c[k] for k in ("bitwise", "bound")]
        return [
            self.name,
            str(self.run),
            *map(str, counts),
            worst,
            *(str(c[k]) for k in ("failed", "n/a", "deferred")),
        ]


class Matrix:
    """Cell results grouped into rows ``(optimizer, backend, mode)`` and dtype columns.

    ``run`` describes where the results came from (``date``, ``commit``, ``versions``, ``seconds``
    per job), as :func:`write_reports` stores it in ``conformance.json``.
    """

    def __init__(self, results: Sequence[CellResult], run: dict[str, Any] | None = None):
        self.results = list(results)
        self.run = dict(run or {})
        self.rows: dict[tuple[str, str, str], dict[str, _Group]] = defaultdict(lambda: defaultdict(_Group))
        for r in self.results:
            self.rows[(r.optimizer, r.backend, r.mode)][r.dtype].add(r)
        present = {r.dtype for r in self.results}
        self.dtypes = [d for d in ALL_DTYPES if d in present] + sorted(present - set(ALL_DTYPES))
        names = [info.name for info in TABLE]
        names += sorted({r.optimizer for r in self.results} - set(names))
        order = {name: i for i, name in enumerate(names) if any(r.optimizer == name for r in self.results)}
        self.optimizers = list(order)
        self.keys = sorted(
            self.rows, key=lambda k: (order[k[0]], k[1] != "numpy", k[2] == "native", k[1], k[2])
        )
        # the float32 rule's accuracy: cases whose state is stored narrower (state_cases) measure the
        # narrow state's rounding instead, and are left out
        narrow = {(info.name, case.desc) for info in TABLE for case in info.state_cases}
        self.accuracy = {
            opt: max(
                (
                    r.rel_error_f64
                    for r in self.results
                    if r.optimizer == opt
                    and r.dtype == "float32"
                    and r.rel_error_f64 is not None
                    and (opt, r.case) not in narrow
                ),
                default=None,
            )
            for opt in order
        }

    # -- counts -----------------------------------------------------------------------------------
    @property
    def counts(self) -> dict[str, int]:
        """Cells per verdict (``pass``, ``FAIL``, ``skipped``, ``deferred``, ``reference``)."""
        return dict(Counter(r.verdict for r in self.results))

    @property
    def tally(self) -> dict[str, int]:
        """Cells per category, every category present (``reference`` last)."""
        found = Counter(category(r) for r in self.results)
        return {c: found[c] for c in (*CATEGORIES, "reference")}

    @property
    def failed(self) -> list[CellResult]:
        return [r for r in self.results if r.failed]

    @property
    def steps(self) -> list[int]:
        return sorted({r.steps for r in self.results})

    def summary(self) -> str:
        """One line: the categories' counts and the steps per cell."""
        t = self.tally
        return (
            f"{t['bitwise']} bitwise, {t['bound']} within a stated bound, {t['failed']} failed, "
            f"{t['n/a']} not applicable, {t['deferred']} left to --full, {t['reference']} reference "
            f"cells; steps per cell: {', '.join(map(str, self.steps)) or '-'}"
        )

    def headline(self) -> list[str]:
        """What the run proved, in words: one line per category."""
        t = self.tally
        compared = t["bitwise"] + t["bound"] + t["failed"]
        verdict = f"{t['failed']} FAILED" if t["failed"] else "all passed" if compared else "nothing compared"
        steps = ", ".join(map(str, self.steps)) or "-"
        return [
            f"uniopt conformance: {compared} cells compared, {verdict} (steps per cell: {steps})",
            f"{t['bitwise']:>6} bitwise identical to the NumPy reference at every step,",
            "       for every parameter and state slot",
            f"{t['bound']:>6} within a stated bound (bounds and reasons below)",
            f"{t['failed']:>6} failed" + (" (listed below)" if t["failed"] else ""),
            f"{t['n/a']:>6} not applicable: the cell cannot exist there (reasons below)",
            f"{t['deferred']:>6} left to --full for time" + (" (reasons below)" if t["deferred"] else ""),
            f"{t['reference']:>6} cells of the NumPy reference run itself",
        ]

    def backend_lines(self) -> list[BackendLine]:
        """One line per backend@mode: the reference first, native rows last."""
        cells: dict[tuple[str, str], list[CellResult]] = defaultdict(list)
        for r in self.results:
            cells[(r.backend, r.mode)].append(r)

        def order(kv):
            rs = kv[1]
            return (not any(r.verdict == "reference" for r in rs), kv[0][1] == "native", kv[0])

        lines = []
        for (backend, mode), rs in sorted(cells.items(), key=order):
            bounded = [r for r in rs if category(r) == "bound"]
            worst = max(bounded, key=lambda r: r.ulp or 0, default=None)
            lines.append(
                BackendLine(
                    f"{backend}@{mode}",
                    mode == "native",
                    Counter(category(r) for r in rs),
                    worst.ulp if worst else None,
                    worst.tolerance if worst else None,
                )
            )
        return lines

    def reasons(self, kind: str) -> list[tuple[int, str, list[str]]]:
        """``(cells, reason, backend@modes)`` for the ``n/a`` or ``deferred`` cells, most cells first."""
        count: Counter = Counter()
        rows: dict[str, set[str]] = defaultdict(set)
        for r in self.results:
            if category(r) == kind:
                why = r.reason or "(no reason recorded)"
                count[why] += 1
                rows[why].add(f"{r.backend}@{r.mode}")
        return [(n, why, sorted(rows[why])) for why, n in count.most_common()]

    def bound_groups(self) -> list[tuple[str, str, str, list[tuple[str, int, int, int]]]]:
        """The cells within a stated bound, grouped by backend@mode and where the bound comes from:
        ``(backend@mode, source, reason, [(optimizer, worst ulp, bound, cells)])``."""
        groups: dict[tuple[str, str, str], dict[str, list[CellResult]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for r in self.results:
            if category(r) == "bound":
                source, why = _bound_source(r)
                groups[(f"{r.backend}@{r.mode}", source, why)][r.optimizer].append(r)
        out = []
        for (row, source, why), by_opt in sorted(groups.items()):
            entries = [
                (opt, max(r.ulp or 0 for r in rs), max(r.tolerance or 0 for r in rs), len(rs))
                for opt, rs in sorted(by_opt.items(), key=lambda kv: self.optimizers.index(kv[0]))
            ]
            out.append((row, source, why, entries))
        return out

    def native_notes(self) -> list[tuple[str, str, list[tuple[str, int | None, int]]]]:
        """Per native row and reason: ``(backend@native, reason, [(optimizer, worst ulp, bound)])``."""
        notes: dict[tuple[str, str], list[tuple[str, int | None, int]]] = defaultdict(list)
        for opt in self.optimizers:
            for backend in sorted({r.backend for r in self.results if r.mode == "native"}):
                ran = [
                    r for r in self.results if (r.optimizer, r.backend, r.mode) == (opt, backend, "native")
                ]
                ran = [r for r in ran if r.ulp is not None]
                if not ran:
                    continue
                bound, why = NATIVE_TOLERANCES.get(opt, {}).get(backend, (0, ""))
                bound = max([bound, *(r.tolerance or 0 for r in ran)])
                why = why or "no bound in the table: bitwise expected"
                relative = [
                    r for r in ran if r.rel_tolerance is not None and (r.ulp or 0) > (r.tolerance or 0)
                ]
                if relative:  # admitted by the row's relative bound (values crossing 0)
                    why += (
                        f"; {len(relative)} cell(s) beyond the ulp bound are within the row's relative "
                        f"bound {relative[0].rel_tolerance:g} (normwise, relative_tolerance)"
                    )
                notes[(f"{backend}@native", why)].append((opt, max(r.ulp or 0 for r in ran), bound))
        return [(row, why, entries) for (row, why), entries in notes.items()]

    def _native_examples(self) -> str:
        backends = sorted({r.backend for r in self.results if r.mode == "native"})
        return ", ".join(_native_name(b, self.optimizers[0]) for b in backends)

    def _row(self, key: tuple[str, str, str]) -> tuple[list[str], str, str]:
        groups = self.rows[key]
        cells = sum(len(g.verdicts) for g in groups.values())
        ran = sum(v in ("pass", "FAIL", "reference") for g in groups.values() for v in g.verdicts)
        verdicts = {g.verdict for g in groups.values()}
        verdict = next((v for v in ("FAIL", "pass", "reference", "deferred") if v in verdicts), "skipped")
        texts = [groups[d].text() if d in groups else "" for d in self.dtypes]
        return texts, f"{ran}/{cells}", verdict

    def provenance(self) -> str:
        """Where the results came from: ``the run of <date> at commit <c>, with <versions>``."""
        date, commit = self.run.get("date"), self.run.get("commit")
        if not date and not commit:
            return "a run whose details were not recorded"
        text = "the run of " + " at commit ".join(filter(None, [date, commit]))
        versions = self.run.get("versions") or {}
        if versions:
            text += ", with " + ", ".join(f"{k} {'/'.join(v)}" for k, v in sorted(versions.items()))
        return text

    # -- renderers --------------------------------------------------------------------------------
    def rich_table(self):
        """The wide matrix: optimizer x backend@mode rows, dtype columns."""
        from rich.table import Table

        table = Table(
            title="uniopt conformance: worst ulp vs the NumPy reference of the same dtype",
            caption=self.summary() + "; * = some cells not applicable or left to --full; (≤n) = the "
            "table's bound for the cells that are not bitwise",
        )
        for name, justify in (("optimizer", "left"), ("backend@mode", "left")):
            table.add_column(name, justify=justify)
        for d in self.dtypes:
            table.add_column(d, justify="right")
        table.add_column("cells run", justify="right")
        table.add_column("verdict")
        for key in self.keys:
            texts, ran, verdict = self._row(key)
            style = {"FAIL": "red bold", "pass": "green"}.get(verdict, "")
            table.add_row(
                key[0], f"{key[1]}@{key[2]}", *texts, ran, f"[{style}]{verdict}[/]" if style else verdict
            )
        return table

    def backend_table(self):
        """One row per backend@mode, 80 columns wide at most."""
        from rich import box
        from rich.table import Table

        table = Table(
            box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, pad_edge=False, show_edge=False
        )
        for name in BACKEND_COLUMNS:
            table.add_column(name, justify="left" if name == "backend@mode" else "right", no_wrap=True)
        lines = self.backend_lines()
        for i, line in enumerate(lines):
            if i and (line.native != lines[i - 1].native or lines[i - 1].reference):
                table.add_section()
            style = "red bold" if line.counts["failed"] else ""
            table.add_row(*line.cells(), style=style)
        return table

    def print_report(self, console) -> None:
        """The terminal report (80 columns): proved, failures, per backend@mode, bounds, reasons."""
        from rich.text import Text

        def plain(text: str, style: str = "", indent: int = 0, hang: int = 2) -> None:
            width = max(40, min(console.width - 1, 100))
            pad = " " * indent
            wrapped = textwrap.wrap(text, width, initial_indent=pad, subsequent_indent=pad + " " * hang)
            for line in wrapped or [""]:
                console.print(Text(line, style=style), soft_wrap=False)

        lines = self.headline()
        plain(lines[0], "bold red" if self.failed else "bold green")
        for line in lines[1:]:
            console.print(Text(line), soft_wrap=False)
        plain(f"from {self.provenance()}", "dim")
        if self.failed:
            console.print()
            plain(f"FAILED cells ({len(self.failed)}; all in conformance.md):", "bold red")
            for r in self.failed[:20]:
                plain("FAIL " + _failure_text(r), "red")
            if len(self.failed) > 20:
                plain(f"... and {len(self.failed) - 20} more", indent=2)
        console.print()
        console.print(self.backend_table())
        plain(
            "run = cells compared (bitwise + bound + failed); worst≤bound = the largest distance "
            "among the cells within a bound, and the bound that admitted it; n/a = cannot exist there; "
            "full = left to --full for time.",
            "dim",
        )
        natives = self.native_notes()
        if natives:
            console.print()
            plain(
                f"@native rows: the frameworks' OWN optimizers ({self._native_examples()}) against "
                "uniopt's reference run with that framework's convention=; not bitwise by design. "
                "Worst/bound ulp; bounds are 4x measured (uniopt.registry.NATIVE_TOLERANCES):",
                "bold",
            )
            for row, why, entries in natives:
                plain(f"{row}: {_native_spans(entries)}: {_short(why)}", indent=2, hang=4)
        bounded = [g for g in self.bound_groups() if not g[0].endswith("@native")]
        if bounded:
            console.print()
            plain(
                "Within a stated bound (worst/bound ulp, cells; reasons in src/uniopt/registry.py):", "bold"
            )
            for row, source, why, entries in bounded:
                spans = ", ".join(f"{o} {fmt_ulp(w)}/{fmt_ulp(b)} ({n})" for o, w, b, n in entries)
                plain(f"{row}: {spans}; {source}" + (f": {_short(why)}" if why else ""), indent=2, hang=4)
        for kind, title in (("n/a", "Not applicable"), ("deferred", "Left to --full for time")):
            groups = self.reasons(kind)
            if groups:
                console.print()
                plain(f"{title} ({sum(n for n, _, _ in groups)} cells), by reason:", "bold")
                for n, why, rows in groups[:12]:
                    where = ", ".join(rows) if len(rows) <= 3 else f"{len(rows)} backend@modes"
                    plain(f"{n:>5}  {_short(why)} [{where}]", indent=1, hang=7)
                if len(groups) > 12:
                    plain(f"... {len(groups) - 12} more reasons in conformance.md", indent=1)

    def markdown_body(self, level: int = 2) -> str:
        """The report in Markdown under headings of ``level`` (for the docs' generated block)."""
        h = "#" * level
        out = [f"Results from {self.provenance()}.", ""]
        seconds = self.run.get("seconds") or {}
        if seconds:
            jobs = ", ".join(f"{name} {value:.0f}" for name, value in sorted(seconds.items()))
            out[-1:] = ["", f"Seconds per job: {jobs}.", ""]
        out += ["```", *self.headline(), "```"]
        if self.failed:
            out += ["", f"{h} Failures", ""]
            out += [f"- FAIL {_failure_text(r)}" for r in self.failed]
        out += ["", f"{h} Per backend@mode", ""]
        head = ["backend@mode", "run", "bitwise", "within bound", "worst≤bound", "failed", "n/a", "--full"]
        out += ["| " + " | ".join(head) + " |", "|---|" + "--:|" * (len(head) - 1)]
        for line in self.backend_lines():
            out.append("| " + " | ".join(line.cells()) + " |")
        natives = self.native_notes()
        if natives:
            out += [
                "",
                f"`@native` rows compare the frameworks' own optimizers ({self._native_examples()}) with "
                "uniopt's reference run under that framework's `convention=`; they are not bitwise by "
                "design. Worst/bound ulp; bounds are 4x measured (`uniopt.registry.NATIVE_TOLERANCES`):",
                "",
            ]
            for row, why, entries in natives:
                out.append(f"- {row}: {_native_spans(entries)}: {why}")
        out += ["", f"{h} Matrix", ""]
        head = ["optimizer", "backend@mode", *self.dtypes, "cells run", "verdict"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for key in self.keys:
            texts, ran, verdict = self._row(key)
            out.append("| " + " | ".join([key[0], f"{key[1]}@{key[2]}", *texts, ran, verdict]) + " |")
        out += [
            "",
            "A number: the worst ulp over the group's cells (`0`: bitwise); `(≤n)`: the table's bound for "
            "the cells that are not bitwise; `*`: some cells not applicable or left to `--full`; `skip`: "
            "none applies; `--full`: all left to `--full`.",
            "",
            "float32 accuracy of the reference (normwise relative error vs float64; cases with a "
            "lower-precision state left out): "
            + ", ".join(f"{o} {_fmt_rel(a)}" for o, a in self.accuracy.items()),
        ]
        bounded = [g for g in self.bound_groups() if not g[0].endswith("@native")]
        if bounded:
            out += ["", f"{h} Within a stated bound", "", "Worst/bound ulp (cells); the reasons are beside "]
            out[-1] += "each bound in `src/uniopt/registry.py`:"
            out.append("")
            for row, source, why, entries in bounded:
                spans = ", ".join(f"{o} {fmt_ulp(w)}/{fmt_ulp(b)} ({n})" for o, w, b, n in entries)
                out.append(f"- {row}: {spans}; `{source}`" + (f": {why}" if why else ""))
        for kind, title in (("n/a", "Not applicable"), ("deferred", "Left to --full for time")):
            groups = self.reasons(kind)
            if groups:
                out += ["", f"{h} {title}", ""]
                out += [f"- {n} cells ({', '.join(rows)}): {why}" for n, why, rows in groups]
        return "\n".join(out) + "\n"

    def markdown(self) -> str:
        """``conformance.md``: the report and every cell within a bound."""
        out = ["# uniopt conformance matrix", "", self.summary(), "", self.markdown_body()]
        nonzero = sorted(
            {
                (r.backend, r.mode, r.optimizer, r.case, r.stream, r.dtype, r.ulp)
                for r in self.results
                if r.ulp and not r.failed
            }
        )
        if nonzero:
            out += ["## Every cell within a stated bound", ""]
            out += [f"- {b}@{m} {o}/{c}/{s} {d}: {fmt_ulp(u)} ulp" for b, m, o, c, s, d, u in nonzero]
        return "\n".join(out) + "\n"

    def heatmap(self, path: Path) -> dict[str, int]:
        """The picture: see :func:`draw_heatmap`; returns the count of drawn squares per category."""
        return draw_heatmap(self, path)


def _native_spans(entries: list[tuple[str, int | None, int]]) -> str:
    return ", ".join(f"{o} {fmt_ulp(w)}/{fmt_ulp(b)}" if b else f"{o} {fmt_ulp(w)}" for o, w, b in entries)


def _failure_text(r: CellResult) -> str:
    first = "-" if r.first_step is None else r.first_step
    text = (
        f"{r.backend}@{r.mode} {r.optimizer}/{r.case}/{r.stream}/{r.dtype}: {fmt_ulp(r.ulp)} ulp > "
        f"{r.tolerance} (first at step {first})"
    )
    return f"{text} {r.reason}" if r.reason else text


def draw_heatmap(matrix: Matrix, path: Path) -> dict[str, int]:
    """One panel per dtype: rows the optimizers, columns the compared backend@modes (native rows last),
    each square coloured by category (failed over bound over bitwise over deferred over n/a) and
    labelled with its worst ulp. Returns how many squares of each category were drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    lines = [line for line in matrix.backend_lines() if not line.reference]
    columns = [line.name for line in lines] or ["(no backend compared)"]
    n_native = sum(line.native for line in lines)
    optimizers = matrix.optimizers or ["-"]
    dtypes = matrix.dtypes or ["-"]
    codes = {c: i for i, c in enumerate(CATEGORIES)}
    cmap = ListedColormap([COLOURS[c] for c in CATEGORIES])
    drawn: Counter = Counter()
    cell_w, cell_h, label_w = 0.68, 0.34, 2.0
    # at least as wide as the title and the one-row legend, however few columns there are
    width = max(label_w + cell_w * len(columns) + 0.4, 11.0)
    panel_h = cell_h * len(optimizers) + 0.42
    height = 1.9 + panel_h * len(dtypes) + 0.5
    fig, axes = plt.subplots(
        len(dtypes),
        1,
        figsize=(width, height),
        squeeze=False,
        gridspec_kw={"height_ratios": [len(optimizers)] * len(dtypes)},
    )
    for ax, dtype in zip(axes[:, 0], dtypes, strict=True):
        grid = np.full((len(optimizers), len(columns)), codes["n/a"])
        for i, opt in enumerate(optimizers):
            for j, col in enumerate(columns):
                backend, _, mode = col.rpartition("@")
                group = matrix.rows.get((opt, backend, mode), {}).get(dtype)
                cat = group.category if group is not None else "n/a"
                grid[i, j] = codes[cat]
                drawn[cat] += 1
                label = {"n/a": "n/a", "deferred": "full"}.get(cat) or fmt_ulp(group.ulp)
                dark = cat in ("failed", "bitwise")
                ax.text(j, i, label, ha="center", va="center", fontsize=8, color="white" if dark else "black")
        ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=len(CATEGORIES) - 0.5, aspect="auto", interpolation="none")
        ax.set_xticks(np.arange(len(columns) + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(len(optimizers) + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="white", linewidth=1.5)
        ax.tick_params(which="minor", length=0)
        ax.set_yticks(range(len(optimizers)), optimizers, fontsize=9)
        ax.set_xticks(range(len(columns)), [])
        ax.tick_params(axis="x", length=0)
        ax.set_ylabel(dtype, fontsize=11, fontweight="bold", rotation=0, ha="right", va="center", labelpad=8)
        if n_native:
            ax.axvline(len(columns) - n_native - 0.5, color="black", linewidth=1.5)
    top = axes[0, 0]
    top.xaxis.tick_top()
    top.set_xticks(range(len(columns)), columns, rotation=40, ha="left", fontsize=9)
    t = matrix.tally
    legend = [
        Patch(facecolor=COLOURS[c], edgecolor="grey", label=f"{LABELS[c]} ({t[c]} cells)") for c in CATEGORIES
    ]
    fig.suptitle(
        "uniopt conformance: worst ulp of each optimizer's cells vs the NumPy reference of the same dtype"
        + (
            "\nright of the black line: the frameworks' own optimizers (bounds in uniopt.registry)"
            if n_native
            else ""
        ),
        fontsize=10,
        y=0.995,
    )
    fig.legend(handles=legend, loc="lower center", ncol=len(CATEGORIES), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.45 / height, 1, 1 - 0.4 / height))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return dict(drawn)


def write_reports(matrix: Matrix, out: Path) -> list[Path]:
    """``conformance.json`` (every cell, the run's details), ``conformance.md`` and ``conformance.png``."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "conformance.json"
    payload = {
        "summary": matrix.counts,
        "tally": matrix.tally,
        "run": matrix.run,
        "cells": [dataclasses.asdict(r) for r in matrix.results],
    }
    json_path.write_text(json.dumps(payload, indent=1))
    md_path = out / "conformance.md"
    md_path.write_text(matrix.markdown())
    png_path = out / "conformance.png"
    try:
        import matplotlib  # noqa: F401  (the picture's only dependency)
    except ImportError:
        print("conformance.png not drawn: matplotlib is not installed here (pip install matplotlib)")
        return [json_path, md_path]
    matrix.heatmap(png_path)
    return [json_path, md_path, png_path]


def run_info(traj_dir: Path) -> dict[str, Any]:
    """Where a comparison's results come from: the date (UTC), the checkout's commit, the library
    versions the jobs recorded (every version seen per library) and each job's seconds."""
    import datetime
    import subprocess

    versions: dict[str, set[str]] = defaultdict(set)
    seconds = {}
    for meta_path in sorted(traj_dir.glob("*@*.json")):
        meta = json.loads(meta_path.read_text())
        for name, version in (meta.get("versions") or {}).items():
            versions[name].add(str(version))
        if "seconds" in meta:
            seconds[meta_path.name.removesuffix(".json")] = meta["seconds"]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "versions": {name: sorted(v) for name, v in sorted(versions.items())},
        "seconds": seconds,
    }


def load(json_path: Path) -> Matrix:
    """The matrix a ``conformance.json`` holds (its cells and the run's details)."""
    data = json.loads(json_path.read_text())
    return Matrix([CellResult(**entry) for entry in data["cells"]], data.get("run"))


BEGIN = "<!-- matrix:begin (generated by `python -m conformance --out DIR publish PATH`; do not edit) -->"
END = "<!-- matrix:end -->"


def publish(matrix: Matrix, doc: Path) -> None:
    """Replace the block between :data:`BEGIN` and :data:`END` in ``doc`` by the matrix's report
    (headings one level below the section's); everything outside the markers is kept as it is."""
    text = doc.read_text()
    begin, end = text.find(BEGIN[: BEGIN.index(" (")]), text.find(END)
    if begin < 0 or end < begin:
        raise ValueError(f"{doc} has no {BEGIN[: BEGIN.index(' (')]} ... {END} block")
    body = matrix.markdown_body(level=3)
    doc.write_text(text[:begin] + BEGIN + "\n\n" + body + "\n" + text[end:])
