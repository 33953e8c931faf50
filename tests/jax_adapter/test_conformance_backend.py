"""The jax conformance backend: declared as the harness expects, and bitwise on a small matrix
run through the real command line (its own process, as nox runs it: the runner turns on x64)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conformance.backends import get
from conformance.cells import Cell, cells, convention_of
from conformance.compare import compare_dir

BACKEND = get("jax")

ROOT = Path(__file__).resolve().parents[2]


def test_backend_declaration():
    assert BACKEND.name == "jax" and BACKEND.module == "jax"
    assert BACKEND.modes == ("eager", "jit", "optax")
    assert {"float32", "float64"} <= set(BACKEND.dtypes)
    long_cell = Cell("Adam", "default", "long", "float32", 20_000)
    assert BACKEND.skip_by_default("eager", long_cell) is not None
    assert BACKEND.skip_by_default("jit", long_cell) is None
    for mode in BACKEND.modes:  # every short cell of the training dtypes runs by default
        for dtype in ("float32", "bfloat16"):
            assert BACKEND.skip_by_default(mode, Cell("Adam", "default", "normal", dtype, 50)) is None
    for dtype in ("float64", "float16"):  # the optax contract's compiled mode leaves them to jax@eager/jit
        cell = Cell("Adam", "default", "normal", dtype, 50)
        assert [m for m in BACKEND.modes if BACKEND.skip_by_default(m, cell) is None] == ["eager", "jit"]


def test_small_matrix_is_bitwise_in_every_mode(tmp_path):
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    args = [
        *("--out", str(tmp_path), "run", "--backend", "numpy", "jax"),
        # short scalar tables (and Adagrad's host-callback case) keep this quick; the full matrix
        # is `nox -s conformance`
        # (eager compiles every op once per shape and dtype: few of each, too)
        *("--optimizers", "SGD", "Adagrad", "--streams", "nonfinite"),
        *("--dtypes", "float64", "bfloat16", "--steps", "10", "--full"),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "conformance", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = [r for r in compare_dir(tmp_path / "trajectories") if r.backend == "jax"]
    ran = [r for r in results if r.verdict != "skipped"]
    assert {r.mode for r in ran} == {"eager", "jit", "optax"}
    assert {r.dtype for r in ran} == {"float64", "bfloat16"}
    expected = cells(["float64", "bfloat16"], 10, ["SGD", "Adagrad"], ["nonfinite"])
    # every case, every mode (framework-convention cases run float64 only of these two dtypes)
    assert len(ran) == 3 * len(expected) and len(expected) >= (6 + 5) * 2
    # bitwise, except the optax row on the keras cases: Keras's decoupled decay moves a parameter out
    # of its binade, where no float u gives p + u == new p (the registry's measured "jax:optax" bound)
    additive = [r for r in ran if r.mode == "optax" and convention_of(r.optimizer, r.case) == "keras"]
    assert [
        (r.mode, r.optimizer, r.case, r.stream, r.dtype, r.ulp)
        for r in ran
        if r.ulp != 0 and r not in additive
    ] == []
    assert all(r.verdict == "pass" for r in ran)
