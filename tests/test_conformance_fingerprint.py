"""Which version of the code made a trajectory file: the source fingerprint, and compare leaving out (and
naming) files from another version or of unknown provenance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conformance.cells import cells
from conformance.compare import compare_dir, stale_runs, stale_warning
from conformance.fingerprint import ROOT, SOURCES, source_files, source_fingerprint


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A copy of this checkout's fingerprinted sources."""
    for folder in SOURCES:
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_fingerprint_is_the_sources_not_where_they_lie(checkout):
    assert Path(__file__).resolve().parents[1] == ROOT
    assert len(source_fingerprint()) == 64 and int(source_fingerprint(), 16) >= 0
    assert source_fingerprint(checkout) == source_fingerprint()
    assert {p.relative_to(checkout) for p in source_files(checkout)} == {
        p.relative_to(ROOT) for p in source_files()
    }


def test_the_fingerprint_changes_with_any_source_file(checkout):
    before = source_fingerprint(checkout)
    sgd = checkout / "src" / "uniopt" / "sgd.py"
    sgd.write_text(sgd.read_text() + "\n# a comment is a change\n")
    edited = source_fingerprint(checkout)
    assert edited != before
    (checkout / "adapters" / "extra.py").write_text("X = 1\n")  # a new file
    assert source_fingerprint(checkout) != edited
    (checkout / "adapters" / "extra.py").unlink()
    assert source_fingerprint(checkout) == edited
    (checkout / "conformance" / "notes.txt").write_text("not a source")  # only *.py counts
    (checkout / "tests").mkdir()
    (checkout / "tests" / "test_x.py").write_text(
        ""
    )  # nor a folder outside src/uniopt, adapters, conformance
    assert source_fingerprint(checkout) == edited
    # a file moved is another tree, even with the same bytes
    (checkout / "conformance" / "cells.py").rename(checkout / "conformance" / "cells2.py")
    assert source_fingerprint(checkout) != edited


CELL = cells(["float32"], steps=2, optimizers=["SGD"], streams=["normal"])[0]
TRAJECTORY = np.arange(12, dtype=np.float32).reshape(3, 4) / 7  # steps 0..2 of one parameter


def write_run(traj: Path, backend: str, mode: str, fingerprint: str | None, nudge: bool = False) -> None:
    """One ``<backend>@<mode>`` output written by hand: one cell, one parameter."""
    traj.mkdir(parents=True, exist_ok=True)
    values = TRAJECTORY.copy()
    if nudge:
        values[2, 0] = np.nextafter(values[2, 0], np.float32(np.inf))
    np.savez_compressed(traj / f"{backend}@{mode}.npz", **{f"{CELL.key}::param0": values})
    meta = {
        "backend": backend,
        "mode": mode,
        "cells": [CELL.key],
        "skipped": {},
        "versions": {},
        "seconds": 0,
    }
    if fingerprint != "absent":
        meta["fingerprint"] = fingerprint
    (traj / f"{backend}@{mode}.json").write_text(json.dumps(meta))


def test_compare_leaves_out_and_names_runs_of_another_version(tmp_path):
    traj = tmp_path / "trajectories"
    current, other = source_fingerprint(), "0" * 64
    write_run(traj, "numpy", "eager", current)
    write_run(traj, "array_api_strict", "eager", current)
    write_run(traj, "torch", "eager", other, nudge=True)  # would FAIL if it were compared
    write_run(traj, "jax", "jit", "absent", nudge=True)
    write_run(traj, "torch", "compile", None, nudge=True)  # run.py without conformance.fingerprint

    results = compare_dir(traj)
    assert {(r.backend, r.mode, r.verdict) for r in results} == {
        ("numpy", "eager", "reference"),
        ("array_api_strict", "eager", "pass"),
    }
    stale = stale_runs(traj)
    assert stale == [
        "jax@jit.json (no fingerprint: unknown provenance)",
        "torch@compile.json (no fingerprint: unknown provenance)",
        f"torch@eager.json (fingerprint {other[:12]}, this code's is {current[:12]})",
    ]
    warning = stale_warning(traj)
    assert warning.startswith("3 trajectory files are from another version of the code")
    assert all(entry in warning for entry in stale) and warning.endswith(f"Rerun them or delete {traj}.")

    # held to the fingerprint of the code that made torch@eager, the reference is the stale one
    with pytest.raises(FileNotFoundError, match="no reference trajectories from this version"):
        compare_dir(traj, current=other)


def test_nothing_is_left_out_when_every_file_is_current(tmp_path):
    traj = tmp_path / "trajectories"
    write_run(traj, "numpy", "eager", source_fingerprint())
    write_run(traj, "torch", "eager", source_fingerprint(), nudge=True)
    assert stale_runs(traj) == [] and stale_warning(traj) is None
    assert {r.verdict for r in compare_dir(traj) if r.backend == "torch"} == {"FAIL"}


def test_a_reference_of_another_version_is_refused_with_what_to_do(tmp_path):
    traj = tmp_path / "trajectories"
    current, old = source_fingerprint(), "f" * 64
    write_run(traj, "numpy", "eager", old)
    write_run(traj, "array_api_strict", "eager", current)
    with pytest.raises(FileNotFoundError, match=r"numpy@eager.json has fingerprint f{12}.*rerun them"):
        compare_dir(traj)
    # the backend is this code's but not the reference's: the two cannot be compared either
    assert stale_runs(traj) == [
        f"array_api_strict@eager.json (fingerprint {current[:12]}, the reference's is {old[:12]})",
        f"numpy@eager.json (fingerprint {old[:12]}, this code's is {current[:12]})",
    ]


def test_a_missing_reference_is_still_said_as_before(tmp_path):
    traj = tmp_path / "trajectories"
    write_run(traj, "array_api_strict", "eager", source_fingerprint())
    with pytest.raises(FileNotFoundError, match=r"no reference trajectories \(numpy@eager.json\)"):
        compare_dir(traj)


def test_the_code_this_process_imported_has_the_checkouts_fingerprint():
    """run.py records the fingerprint of the code it imported (a venv's installed copy, named by its
    place in the checkout): here the same code as the checkout, installed or editable."""
    from conformance.fingerprint import imported_fingerprint

    assert imported_fingerprint() == source_fingerprint()
