"""The matrix as a terminal table (rich), JSON (every cell), Markdown and a heat map PNG."""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

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
class _Row:
    """Aggregate of the cells sharing optimizer, case, backend, mode and dtype."""

    verdicts: list[str] = dataclasses.field(default_factory=list)
    ulp: int | None = None
    accuracy: float | None = None
    reasons: set[str] = dataclasses.field(default_factory=set)

    def add(self, r: CellResult) -> None:
        self.verdicts.append(r.verdict)
        if r.ulp is not None:
            self.ulp = max(self.ulp or 0, r.ulp)
        if r.rel_error_f64 is not None:
            self.accuracy = max(self.accuracy or 0.0, r.rel_error_f64)
        if r.reason:
            self.reasons.add(r.reason)

    @property
    def verdict(self) -> str:
        for v in ("FAIL", "pass", "reference"):
            if v in self.verdicts:
                return v
        return "skipped"

    def text(self) -> str:
        v = self.verdict
        if v == "reference":
            return "ref"
        if v == "skipped":
            return "skip"
        mark = "" if v == "pass" else " FAIL"
        partial = " (+skip)" if "skipped" in self.verdicts else ""
        return f"{_fmt_ulp(self.ulp)}{mark}{partial}"


class Matrix:
    """Cell results pivoted to rows ``optimizer/case`` and columns ``backend@mode dtype``."""

    def __init__(self, results: Sequence[CellResult]):
        self.results = list(results)
        self.rows: dict[tuple[str, str], dict[str, _Row]] = defaultdict(lambda: defaultdict(_Row))
        self.columns: list[str] = []
        for r in self.results:
            col = f"{r.backend}@{r.mode} {r.dtype}"
            if col not in self.columns:
                self.columns.append(col)
            self.rows[(r.optimizer, r.case)][col].add(r)
        self.columns.sort(key=lambda c: (not c.startswith("numpy@"), c))
        self.accuracy: dict[tuple[str, str], float | None] = {
            key: max((row.accuracy for row in cols.values() if row.accuracy is not None), default=None)
            for key, cols in self.rows.items()
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

    def cell_text(self, key: tuple[str, str], col: str) -> str:
        row = self.rows[key].get(col)
        return row.text() if row is not None else ""

    def summary(self) -> str:
        c = self.counts
        return (
            f"{c.get('pass', 0)} passed, {c.get('FAIL', 0)} failed, "
            f"{c.get('skipped', 0)} skipped, {c.get('reference', 0)} reference cells; "
            f"steps per cell: {', '.join(map(str, self.steps))}"
        )

    # -- renderers ------------------------------------------------------------------------------
    def rich_table(self):
        from rich.table import Table

        table = Table(
            title="uniopt conformance: worst ulp vs the NumPy reference of the same dtype",
            caption=self.summary(),
        )
        table.add_column("optimizer / case")
        for col in self.columns:
            table.add_column(col, justify="right")
        table.add_column("f32 rel. error\nvs f64", justify="right")
        for key in self.rows:
            cells = []
            for col in self.columns:
                text = self.cell_text(key, col)
                style = "red bold" if "FAIL" in text else "green" if text == "0" else ""
                cells.append(f"[{style}]{text}[/]" if style else text)
            table.add_row("/".join(key), *cells, _fmt_rel(self.accuracy[key]))
        return table

    def markdown(self) -> str:
        head = ["optimizer / case", *self.columns, "f32 rel. error vs f64"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for key in self.rows:
            cells = [self.cell_text(key, col) for col in self.columns]
            lines.append("| " + " | ".join(["/".join(key), *cells, _fmt_rel(self.accuracy[key])]) + " |")
        out = ["# uniopt conformance matrix", "", self.summary(), "", *lines]
        skipped = sorted(
            {
                (r.backend, r.mode, r.optimizer, r.dtype, r.reason)
                for r in self.results
                if r.verdict == "skipped"
            }
        )
        if skipped:
            out += ["", "## Skipped", ""]
            out += [f"- {b}@{m} {o} {d}: {why}" for b, m, o, d, why in skipped]
        if self.failed:
            out += ["", "## Failures", ""]
            out += [
                f"- {r.backend}@{r.mode} {r.optimizer}/{r.case}/{r.stream}/{r.dtype}: "
                f"{_fmt_ulp(r.ulp)} ulp > {r.tolerance} (first at step {r.first_step}) "
                f"{r.reason}"
                for r in self.failed
            ]
        return "\n".join(out) + "\n"

    def heatmap(self, path: Path) -> None:
        """Worst ulp per optimizer (rows) and backend-mode-dtype (columns), log colour scale."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        optimizers = list(dict.fromkeys(k[0] for k in self.rows))
        cols = [c for c in self.columns if not c.startswith("numpy@eager")]
        grid = np.full((len(optimizers), len(cols)), np.nan)
        for (opt, _case), per_col in self.rows.items():
            for j, col in enumerate(cols):
                row = per_col.get(col)
                if row is not None and row.ulp is not None:
                    i = optimizers.index(opt)
                    grid[i, j] = np.nanmax([grid[i, j], min(row.ulp, 2**40)])
        if not cols or not optimizers:
            cols, grid = ["(no backend compared)"], np.full((max(len(optimizers), 1), 1), np.nan)
            optimizers = optimizers or ["-"]
        fig, ax = plt.subplots(figsize=(1.6 + 1.3 * max(len(cols), 1), 1 + 0.45 * len(optimizers)))
        shown = np.log10(grid + 1)
        top = max(1.0, float(np.nanmax(shown))) if np.isfinite(shown).any() else 1.0
        image = ax.imshow(shown, cmap="viridis", vmin=0, vmax=top, aspect="auto")
        ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
        ax.set_yticks(range(len(optimizers)), optimizers)
        for i in range(len(optimizers)):
            for j in range(len(cols)):
                text = "skip" if np.isnan(grid[i, j]) else f"{int(grid[i, j])}"
                ax.text(j, i, text, ha="center", va="center", color="white", fontsize=8)
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
            {"summary": matrix.counts, "cells": [dataclasses.asdict(r) for r in matrix.results]}, indent=1
        )
    )
    md_path = out / "conformance.md"
    md_path.write_text(matrix.markdown())
    png_path = out / "conformance.png"
    matrix.heatmap(png_path)
    return [json_path, md_path, png_path]
