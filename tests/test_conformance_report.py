"""The conformance report: counts by category, an 80-column terminal report, the heat map, the
published docs block and the job progress lines. Expected values are counted by hand from small
synthetic results."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from conformance import jobs
from conformance.__main__ import main
from conformance.compare import CellResult
from conformance.report import BEGIN, COLOURS, END, Matrix, fmt_ulp, load, publish, write_reports
from conformance.ulp import NAN_MISMATCH

ROOT = Path(__file__).resolve().parents[1]
LONG_REASON = (
    "left to --full: eager runs the normal and nonfinite streams in float32 by default (Keras's eager "
    "apply costs about 12 ms a step here; function runs every stream in float32 and float64); and "
    "cells whose reference passes through subnormals, which TensorFlow flushes to zero on CPU"
)
EPS = "eps=1e-08 rounds to 0 in float16"


def cell(backend, mode, dtype, verdict, ulp=None, tolerance=None, reason="", case="plain", first=None):
    return CellResult(
        backend, mode, "SGD", case, "normal", dtype, 50, verdict, ulp, first, tolerance, reason=reason
    )


def sample() -> list[CellResult]:
    """2 reference, 2 bitwise, 2 within a bound, 1 failed, 3 not applicable, 2 left to --full."""
    return [
        cell("numpy", "eager", "float32", "reference"),
        cell("numpy", "eager", "float64", "reference"),
        cell("numpy", "eager", "float16", "skipped", reason=EPS),
        cell("torch", "eager", "float32", "pass", 0, 0),
        cell("torch", "eager", "float64", "pass", 0, 0),
        cell("torch", "eager", "float16", "skipped", reason=EPS),
        cell("jax", "optax", "float32", "pass", 8, 8, case="keras", first=2),
        cell("jax", "optax", "float64", "deferred", reason="left to --full: the optax row runs float32"),
        cell("array_api_strict", "eager", "float32", "FAIL", 3, 0, first=4),
        cell("array_api_strict", "eager", "float64", "deferred", reason=LONG_REASON),
        cell("torch.optim", "native", "float32", "pass", 7283, 40392, case="torch", first=1),
        cell("torch.optim", "native", "float16", "skipped", reason="native rows compare float32 and float64"),
    ]


RUN = {"date": "2026-11-30 12:00 UTC", "commit": "abc1234", "versions": {"torch": ["2.13.0"]}, "seconds": {}}


def render(matrix: Matrix, width: int = 80) -> list[str]:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=False, color_system=None)
    matrix.print_report(console)
    return buffer.getvalue().splitlines()


def count_line(lines: list[str], words: str) -> int:
    """The number that starts the headline line holding ``words``."""
    (line,) = [line for line in lines if words in line]
    return int(line.split()[0])


def test_each_category_is_counted_apart():
    m = Matrix(sample())
    assert m.tally == {"bitwise": 2, "bound": 2, "failed": 1, "n/a": 3, "deferred": 2, "reference": 2}
    assert m.counts == {"reference": 2, "skipped": 3, "pass": 4, "deferred": 2, "FAIL": 1}
    assert m.summary().startswith(
        "2 bitwise, 2 within a stated bound, 1 failed, 3 not applicable, 2 left to --full, 2 reference"
    )


def test_the_first_lines_say_what_was_proved():
    lines = render(Matrix(sample(), RUN))
    assert lines[0].startswith("uniopt conformance: 5 cells compared, 1 FAILED")
    head = lines[:10]
    assert count_line(head, "bitwise identical to the NumPy reference at every step") == 2
    assert any("every parameter and state slot" in line for line in head)
    assert count_line(head, "within a stated bound") == 2
    assert count_line(head, "failed") == 1
    assert count_line(head, "not applicable") == 3
    assert count_line(head, "left to --full for time") == 2
    assert any(
        "from the run of 2026-11-30 12:00 UTC at commit abc1234, with torch 2.13.0" in line for line in head
    )


def test_the_terminal_report_fits_80_columns_failures_first():
    lines = render(Matrix(sample(), RUN))
    assert max(map(len, lines)) <= 80
    text = " ".join(" ".join(lines).split())  # wrapped lines joined again
    failure = "FAIL array_api_strict@eager SGD/plain/normal/float32: 3 ulp > 0 (first at step 4)"
    assert failure in text
    assert text.index(failure) < text.index("backend@mode run bitwise bound worst≤bound failed n/a full")


def test_one_line_per_backend_mode_with_its_counts():
    lines = render(Matrix(sample()))
    rows = {line.split()[0]: line.split()[1:] for line in lines if "@" in line.split(" ")[0]}
    # run, bitwise, bound, worst≤bound, failed, n/a, full
    assert rows["torch@eager"] == ["2", "2", "0", "-", "0", "1", "0"]
    assert rows["jax@optax"] == ["1", "0", "1", "8≤8", "0", "0", "1"]
    assert rows["array_api_strict@eager"] == ["1", "0", "0", "-", "1", "0", "1"]
    assert rows["torch.optim@native"] == ["1", "0", "1", "7283≤40392", "0", "1", "0"]
    assert rows["numpy@eager"] == ["(ref)", "2", "ref", "-", "-", "-", "1", "0"]


def test_reasons_and_bounds_are_summarised_on_screen():
    lines = render(Matrix(sample()))
    text = "\n".join(lines)
    # not applicable: grouped by reason, with the number of cells and where
    assert re.search(r"Not applicable \(3 cells\), by reason:\n\s+2  eps=1e-08 rounds to 0 in float16", text)
    assert "numpy@eager, torch@eager" in text
    assert re.search(r"Left to --full for time \(2 cells\), by reason:", text)
    assert "1  left to --full: the optax row runs float32 [jax@optax]" in text
    assert "…" in text  # the long reason is shortened on screen
    # the native row: the framework's own optimizer, its bound and where the bound comes from
    assert "torch.optim.SGD" in text and "NATIVE_TOLERANCES" in text
    assert re.search(r"torch\.optim@native: SGD 7283/40392: torch\.optim's CPU kernels fuse", text)
    # a bound of a uniopt backend names its key in the table
    assert "jax@optax: SGD 8/8 (1); SGD ulp_tolerance['jax:optax']" in text


def test_big_numbers_are_abbreviated():
    assert [fmt_ulp(v) for v in (0, 1024, 99_999, 100_000, 49_472_240, NAN_MISMATCH, None)] == [
        "0",
        "1024",
        "99999",
        "1.0e5",
        "4.9e7",
        "NaN≠",
        "-",
    ]


def test_the_heat_map_has_every_verdict_colour(tmp_path):
    import matplotlib.image

    path = tmp_path / "map.png"
    drawn = Matrix(sample()).heatmap(path)
    # columns torch@eager, jax@optax, array_api_strict@eager, torch.optim@native; rows SGD per dtype
    # float32: bitwise, bound, failed, bound; float64: bitwise, deferred, deferred, none;
    # float16: n/a, none, none, n/a (a square without cells is not applicable)
    assert drawn == {"bitwise": 2, "bound": 2, "failed": 1, "deferred": 2, "n/a": 5}
    pixels = (matplotlib.image.imread(path)[..., :3] * 255).round().astype(int).reshape(-1, 3)
    for name, colour in COLOURS.items():
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(pixels - rgb).max(axis=1) <= 2).sum() > 200, name
    width, height = matplotlib.image.imread(path).shape[1::-1]
    assert 400 < width < 1600 and 200 < height < 1600  # readable at its natural size


def test_reports_keep_the_verdict_summary_and_the_run(tmp_path):
    m = Matrix(sample(), RUN)
    paths = write_reports(m, tmp_path)
    assert [p.name for p in paths] == ["conformance.json", "conformance.md", "conformance.png"]
    data = json.loads((tmp_path / "conformance.json").read_text())
    assert data["summary"] == m.counts and data["tally"]["deferred"] == 2 and data["run"] == RUN
    again = load(tmp_path / "conformance.json")
    assert again.results == m.results and again.run == RUN
    md = (tmp_path / "conformance.md").read_text()
    assert md.startswith("# uniopt conformance matrix")
    assert "- FAIL array_api_strict@eager SGD/plain/normal/float32: 3 ulp > 0 (first at step 4)" in md
    assert "- 2 cells (numpy@eager, torch@eager): eps=1e-08 rounds to 0 in float16" in md
    assert f"- 1 cells (array_api_strict@eager): {LONG_REASON}" in md  # in full in the file


def test_publish_replaces_only_the_marked_block(tmp_path):
    before = "# Title\n\n## The latest matrix\n\nIntro kept.\n\n"
    after = "\n\n## After\n\nKept too.\n"
    page = tmp_path / "page.md"
    page.write_text(before + "<!-- matrix:begin -->\nold hand-kept table\n" + END + after)
    write_reports(Matrix(sample(), RUN), tmp_path / "failing")  # one FAIL cell: not published
    assert main(["--out", str(tmp_path / "failing"), "publish", str(page)]) == 1
    assert "old hand-kept table" in page.read_text()
    write_reports(Matrix([r for r in sample() if r.verdict != "FAIL"], RUN), tmp_path / "out")
    assert main(["--out", str(tmp_path / "out"), "publish", str(page)]) == 0
    text = page.read_text()
    assert text.startswith(before + BEGIN) and text.endswith(END + after)
    assert "old hand-kept table" not in text
    assert "Results from the run of 2026-11-30 12:00 UTC at commit abc1234, with torch 2.13.0." in text
    assert "     2 bitwise identical to the NumPy reference" in text and "### Matrix" in text
    publish(load(tmp_path / "out" / "conformance.json"), page)
    assert page.read_text() == text  # filling it again changes nothing

    page.write_text("no markers here\n")
    with pytest.raises(ValueError, match="no <!-- matrix:begin"):
        publish(Matrix(sample()), page)


def test_merge_never_replaces_a_compared_cell_with_one_not_run(tmp_path):
    compared = cell("torch", "eager", "float32", "pass", 0, 0)
    later = [
        cell("torch", "eager", "float32", "deferred", reason="x"),
        cell("numpy", "eager", "float32", "reference"),
    ]
    first, second = tmp_path / "a", tmp_path / "b"
    write_reports(Matrix([compared], {**RUN, "seconds": {"torch@eager": 3}}), first)
    write_reports(Matrix(later, {**RUN, "commit": "def5678"}), second)
    out = tmp_path / "merged"
    main(["--out", str(out), "merge", str(first / "conformance.json"), str(second / "conformance.json")])
    data = json.loads((out / "conformance.json").read_text())
    assert data["summary"] == {"pass": 1, "reference": 1}
    assert data["run"]["commit"] == "abc1234 + def5678" and data["run"]["seconds"] == {"torch@eager": 3}


def test_compare_prints_the_wide_matrix_only_where_it_fits(tmp_path, monkeypatch, capsys):
    from conformance import backends
    from conformance.cells import cells
    from conformance.run import run_backend

    selected = cells(
        ["float32", "float64", "float16", "bfloat16"], steps=3, optimizers=["SGD"], streams=["normal"]
    )
    for name in ("numpy", "array_api_strict"):
        run_backend(backends.get(name), selected, tmp_path / "trajectories")
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["--out", str(tmp_path), "compare"]) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 80
    assert "cells run" not in out  # the wide matrix needs more than 80 columns
    from uniopt.registry import get

    # array_api_strict's dtypes, and no lower-precision state (Case.slot_dtypes: NumPy and jax only)
    compared = [
        c
        for c in selected
        if c.dtype in ("float32", "float64") and not get(c.optimizer).case(c.case).slot_dtypes
    ]
    assert f"{len(compared):>6} bitwise identical" in out
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["--out", str(tmp_path), "compare"]) == 0
    assert "cells run" in capsys.readouterr().out


# -- progress of the background jobs -------------------------------------------------------------
def fake_job(out: Path, name: str, enqueued: float, argv: list[str] | None = None) -> Path:
    folder = out / jobs.JOBS / name
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps({"argv": argv or ["true"], "enqueued": enqueued}))
    return folder


def test_the_progress_line_names_running_jobs_and_counts_the_rest(tmp_path):
    done = fake_job(tmp_path, "numpy@eager", 0)
    (done / "started").write_text(f"0.0 {os.getpid()}")
    (done / "rc").write_text("0\n")
    failed = fake_job(tmp_path, "tf@eager", 1)
    (failed / "started").write_text(f"0.0 {os.getpid()}")
    (failed / "rc").write_text("1\n")
    running = fake_job(tmp_path, "tf@xla", 2)
    (running / "started").write_text(f"0.0 {os.getpid()}")  # this process: alive
    jobs.write_progress(running / "progress.json", 120, 400, "Adam/default/normal/float32")
    starting = fake_job(tmp_path, "jax@jit", 3)
    (starting / "started").write_text(f"0.0 {os.getpid()}")
    fake_job(tmp_path, "jax@eager", 4)  # queued
    line = jobs.progress_line(jobs._jobs(tmp_path), elapsed=130)
    assert line == (
        "conformance: 2/5 jobs done (1 failed); running tf@xla 120/400 cells, jax@jit starting; "
        "1 queued; elapsed 2:10"
    )


def test_wait_prints_plain_progress_lines_when_not_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the finished job's shell relaunches the queue with `-m conformance`
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    folder = fake_job(tmp_path, "numpy@eager", 0, [sys.executable, "-c", "import time; time.sleep(1.5)"])
    jobs.write_progress(folder / "progress.json", 3, 7, "SGD")
    start = time.monotonic()
    assert jobs.wait(tmp_path, poll=0.05, report_every=0.3) == 0
    elapsed = time.monotonic() - start
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("conformance:")]
    assert lines[0] == "conformance: 0/1 jobs done; 1 queued; elapsed 0:00"
    running = [line for line in lines if "running numpy@eager 3/7 cells" in line]
    # a line at the start, every 0.3 s while it runs, and at the end
    assert len(running) >= 3 and len(lines) >= max(4, int(elapsed / 0.3) - 1)
    assert lines[-1].startswith("conformance: 1/1 jobs done; elapsed 0:0")


def test_the_reference_accuracy_leaves_out_cases_with_a_lower_precision_state():
    """The headline accuracy is the float32 rule's: a state case (a bfloat16 moment) measures the
    narrow state's rounding, so its larger error is not the optimizer's."""
    from uniopt.registry import get

    (narrow, *_) = get("SGD").state_cases

    def reference(case: str, error: float) -> CellResult:
        return CellResult(
            "numpy", "eager", "SGD", case, "normal", "float32", 50, "reference", rel_error_f64=error
        )

    m = Matrix([reference("plain", 1e-6), reference("momentum", 2e-6), reference(narrow.desc, 3e-3)])
    assert m.accuracy == {"SGD": 2e-6}
