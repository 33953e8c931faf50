"""The matrix as a terminal table (rich), JSON (every cell), Markdown and a heat map PNG.

Rows are optimizer x backend@mode, columns the dtypes: each entry is the worst ulp distance over the
optimizer's cases and streams in that dtype. ``conformance.json`` keeps every cell.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from uniopt.registry import TABLE

from .cells import ALL_DTYPES
from .compare import CellResult
from .ulp import NAN_MISMATCH

__all__ = ["Matrix", "write_reports"]


def _fmt_rel(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def _fmt_ulp(value: int | None) -> str:
    if value is None:
        return "-"
    return "NaN≠" if value == NAN_MISMATCH else str(value)


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
        for v in ("FAIL", "pass", "reference"):
            if v in self.verdicts:
                return v
        return "skipped"

    def text(self) -> str:
        v = self.verdict
        if v in ("reference", "skipped"):
            return {"reference": "ref", "skipped": "skip"}[v]
        mark = " FAIL" if v == "FAIL" else ""
        bound = f" (≤{self.tolerance})" if self.tolerance else ""
        partial = "*" if "skipped" in self.verdicts else ""
        return f"{_fmt_ulp(self.ulp)}{partial}{bound}{mark}"


class Matrix:
    """Cell results grouped into rows ``(optimizer, backend, mode)`` and dtype columns."""

    def __init__(self, results: Sequence[CellResult]):
        self.results = list(results)
        self.rows: dict[tuple[str, str, str], dict[str, _Group]] = defaultdict(lambda: defaultdict(_Group))
        for r in self.results:
            self.rows[(r.optimizer, r.backend, r.mode)][r.dtype].add(r)
        present = {r.dtype for r in self.results}
        self.dtypes = [d for d in ALL_DTYPES if d in present]
        names = [info.name for info in TABLE]
        names += sorted({r.optimizer for r in self.results} - set(names))
        order = {name: i for i, name in enumerate(names) if any(r.optimizer == name for r in self.results)}
        self.keys = sorted(self.rows, key=lambda k: (order[k[0]], k[1] != "numpy", k[1], k[2]))
        self.accuracy = {
            opt: max(
                (
                    r.rel_error_f64
                    for r in self.results
                    if r.optimizer == opt and r.dtype == "float32" and r.rel_error_f64 is not None
                ),
                default=None,
            )
            for opt in order
        }

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for r in self.results:
            out[r.verdict] += 1
        return dict(out)

    @property
    def failed(self) -> list[CellResult]:
        return [r for r in self.results if r.failed]

    @property
    def steps(self) -> list[int]:
        return sorted({r.steps for r in self.results})

    def summary(self) -> str:
        c = self.counts
        return (
            f"{c.get('pass', 0)} passed, {c.get('FAIL', 0)} failed, "
            f"{c.get('skipped', 0)} skipped, {c.get('reference', 0)} reference cells; "
            f"steps per cell: {', '.join(map(str, self.steps))}"
        )

    def _row(self, key: tuple[str, str, str]) -> tuple[list[str], str, str]:
        groups = self.rows[key]
        cells = sum(len(g.verdicts) for g in groups.values())
        ran = sum(v in ("pass", "FAIL", "reference") for g in groups.values() for v in g.verdicts)
        verdicts = {g.verdict for g in groups.values()}
        verdict = next((v for v in ("FAIL", "pass", "reference") if v in verdicts), "skipped")
        texts = [groups[d].text() if d in groups else "" for d in self.dtypes]
        return texts, f"{ran}/{cells}", verdict

    # -- renderers ------------------------------------------------------------------------------
    def rich_table(self):
        from rich.table import Table

        table = Table(
            title="uniopt conformance: worst ulp vs the NumPy reference of the same dtype",
            caption=self.summary() + "; * = some cells skipped; (≤n) = the table's bound for the cells "
            "that are not bitwise",
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
                key[0],
                f"{key[1]}@{key[2]}",
                *texts,
                ran,
                f"[{style}]{verdict}[/]" if style else verdict,
            )
        return table

    def markdown(self) -> str:
        head = ["optimizer", "backend@mode", *self.dtypes, "cells run", "verdict"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for key in self.keys:
            texts, ran, verdict = self._row(key)
            lines.append("| " + " | ".join([key[0], f"{key[1]}@{key[2]}", *texts, ran, verdict]) + " |")
        out = ["# uniopt conformance matrix", "", self.summary(), "", *lines]
        out += [
            "",
            "float32 accuracy of the reference (normwise relative error vs float64): "
            + ", ".join(f"{o} {_fmt_rel(a)}" for o, a in self.accuracy.items()),
        ]
        nonzero = sorted(
            {
                (r.backend, r.mode, r.optimizer, r.case, r.dtype, r.ulp)
                for r in self.results
                if r.ulp and not r.failed
            }
        )
        if nonzero:
            out += ["", "## Cells within a stated bound", ""]
            out += [f"- {b}@{m} {o}/{c} {d}: {_fmt_ulp(u)} ulp" for b, m, o, c, d, u in nonzero]
        skipped = sorted(
            {(r.backend, r.mode, r.dtype, r.reason) for r in self.results if r.verdict == "skipped"}
        )
        if skipped:
            out += ["", "## Skipped", ""]
            reasons: dict[tuple[str, str, str], list[str]] = defaultdict(list)
            for b, m, d, why in skipped:
                reasons[(b, m, why)].append(d)
            out += [f"- {b}@{m} ({', '.join(ds)}): {why}" for (b, m, why), ds in reasons.items()]
        if self.failed:
            out += ["", "## Failures", ""]
            out += [
                f"- {r.backend}@{r.mode} {r.optimizer}/{r.case}/{r.stream}/{r.dtype}: "
                f"{_fmt_ulp(r.ulp)} ulp > {r.tolerance} (first at step {r.first_step}) {r.reason}"
                for r in self.failed
            ]
        return "\n".join(out) + "\n"

    def heatmap(self, path: Path) -> None:
        """Worst ulp per optimizer (rows) and backend@mode dtype (columns), log colour scale."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        optimizers = list(self.accuracy)
        cols = sorted({(b, m, d) for (_, b, m), groups in self.rows.items() for d in groups if b != "numpy"})
        grid = np.full((max(len(optimizers), 1), max(len(cols), 1)), np.nan)
        for (opt, b, m), groups in self.rows.items():
            for d, group in groups.items():
                if (b, m, d) in cols and group.ulp is not None:
                    i, j = optimizers.index(opt), cols.index((b, m, d))
                    grid[i, j] = np.nanmax([grid[i, j], min(group.ulp, 2**40)])
        labels = [f"{b}@{m} {d}" for b, m, d in cols] or ["(no backend compared)"]
        fig, ax = plt.subplots(figsize=(2 + 0.5 * len(labels), 1.2 + 0.45 * len(optimizers)))
        shown = np.log10(grid + 1)
        top = max(1.0, float(np.nanmax(shown))) if np.isfinite(shown).any() else 1.0
        image = ax.imshow(shown, cmap="viridis", vmin=0, vmax=top, aspect="auto")
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(optimizers or ["-"])), optimizers or ["-"])
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                text = "skip" if np.isnan(grid[i, j]) else f"{int(grid[i, j])}"
                ax.text(j, i, text, ha="center", va="center", color="white", fontsize=6)
        fig.colorbar(image, ax=ax, label="log10(1 + worst ulp)")
        ax.set_title("worst ulp vs the NumPy reference")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)


def write_reports(matrix: Matrix, out: Path) -> list[Path]:
    """``conformance.json`` (every cell), ``conformance.md`` and ``conformance.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "conformance.json"
    json_path.write_text(
        json.dumps(
            {"summary": matrix.counts, "cells": [dataclasses.asdict(r) for r in matrix.results]},
            indent=1,
        )
    )
    md_path = out / "conformance.md"
    md_path.write_text(matrix.markdown())
    png_path = out / "conformance.png"
    matrix.heatmap(png_path)
    return [json_path, md_path, png_path]
