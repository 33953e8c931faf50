"""Optimizer state moving between Keras on JAX and Keras on TensorFlow and torch, plain uniopt.torch
and plain uniopt.jax, through state files: each segment of a run is a process of its own
(port_worker.py, started with the interpreter of its framework's venv and the right
``KERAS_BACKEND``), fed the same explicit gradient arrays, so the runs of every framework are
comparable. A run continued after a move ends with the parameters, slots and step of the
uninterrupted Keras-on-JAX run, bit for bit, and that run with the NumPy reference's.

Each framework runs in its own venv. A segment's interpreter is the one the environment variable
of its framework names (``UNIOPT_PYTHON_JAX``, ``UNIOPT_PYTHON_TF``, ``UNIOPT_PYTHON_TORCH``: a
python with uniopt, numpy, ml_dtypes and that framework, keras too for a Keras segment), else this
process's interpreter where that framework is importable here; a move whose interpreters neither
gives is skipped, saying which variable to set. The same moves within one process:
test_porting.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from porting_cases import assert_bitwise, assert_state_bitwise, bits, stream
from processes import run_workers

import uniopt

# one worker runs this module (pytest-xdist's loadgroup): its module fixture runs once
pytestmark = pytest.mark.xdist_group("test_moves")

WORKER = Path(__file__).resolve().parent / "port_worker.py"
TIMEOUT_S = 600
# framework -> (the variable naming its interpreter, the modules a segment imports there)
FRAMEWORKS = {
    "jax": ("UNIOPT_PYTHON_JAX", ("jax", "optax", "keras", "ml_dtypes")),
    "tensorflow": ("UNIOPT_PYTHON_TF", ("tensorflow", "keras", "ml_dtypes")),
    "torch": ("UNIOPT_PYTHON_TORCH", ("torch", "keras", "ml_dtypes")),
}
STEPS, SPLIT = 9, 4  # RAdam (betas[1]=0.999) is rectified from step 6 on: a move before, steps after
RADAM = uniopt.RAdam(lr=1e-2, weight_decay=0.1)
ADAM = uniopt.Adam(lr=1e-2, weight_decay=0.05)
BF16 = {"exp_avg": "bfloat16"}


def interpreter(framework: str) -> str | None:
    """The python that runs ``framework``'s segments, or ``None`` where none is known."""
    variable, modules = FRAMEWORKS[framework]
    if os.environ.get(variable):
        return os.environ[variable]
    if all(importlib.util.find_spec(m) is not None for m in modules):
        return sys.executable
    return None


class Segment(NamedTuple):
    """Steps ``start..stop`` of one run in one process: ``runner`` ``keras`` (on ``backend``, through
    ``api``), ``torch`` or ``jax``; ``after`` the label of the segment whose state it starts from."""

    runner: str
    backend: str
    spec: uniopt.Spec
    start: int
    stop: int
    after: str | None = None
    state_dtypes: dict[str, str] | None = None
    api: str = "uniopt.keras"


SOURCES = {  # the first segments and the uninterrupted runs
    "keras-jax RAdam 0-9": Segment("keras", "jax", RADAM, 0, STEPS),
    "keras-jax RAdam 0-4": Segment("keras", "jax", RADAM, 0, SPLIT),
    "torch RAdam 0-4": Segment("torch", "torch", RADAM, 0, SPLIT),
    "keras-jax Adam-bf16 0-9": Segment("keras", "jax", ADAM, 0, STEPS, state_dtypes=BF16),
    "keras-jax Adam-bf16 0-4": Segment("keras", "jax", ADAM, 0, SPLIT, state_dtypes=BF16),
}
MOVES = {  # the continued segments: label -> (segment, the uninterrupted run it must equal)
    "keras-jax -> keras-tf (uniopt.tf.RAdam)": (
        Segment("keras", "tensorflow", RADAM, SPLIT, STEPS, "keras-jax RAdam 0-4", api="uniopt.tf"),
        "keras-jax RAdam 0-9",
    ),
    "keras-jax -> keras-tf (uniopt.keras.RAdam)": (
        Segment("keras", "tensorflow", RADAM, SPLIT, STEPS, "keras-jax RAdam 0-4"),
        "keras-jax RAdam 0-9",
    ),
    "keras-jax -> keras-torch": (
        Segment("keras", "torch", RADAM, SPLIT, STEPS, "keras-jax RAdam 0-4"),
        "keras-jax RAdam 0-9",
    ),
    "keras-jax -> torch": (
        Segment("torch", "torch", RADAM, SPLIT, STEPS, "keras-jax RAdam 0-4"),
        "keras-jax RAdam 0-9",
    ),
    "keras-jax -> jax": (
        Segment("jax", "jax", RADAM, SPLIT, STEPS, "keras-jax RAdam 0-4"),
        "keras-jax RAdam 0-9",
    ),
    "torch -> keras-jax": (
        Segment("keras", "jax", RADAM, SPLIT, STEPS, "torch RAdam 0-4"),
        "keras-jax RAdam 0-9",
    ),
    "keras-jax -> torch (Adam, bfloat16 exp_avg)": (
        Segment("torch", "torch", ADAM, SPLIT, STEPS, "keras-jax Adam-bf16 0-4", BF16),
        "keras-jax Adam-bf16 0-9",
    ),
    "keras-jax -> keras-tf (Adam, bfloat16 exp_avg)": (
        Segment("keras", "tensorflow", ADAM, SPLIT, STEPS, "keras-jax Adam-bf16 0-4", BF16),
        "keras-jax Adam-bf16 0-9",
    ),
}


def _missing(labels: list[str]) -> list[str]:
    """The variables to set for the segments of ``labels`` (and those they start from)."""
    segments = [SOURCES.get(label) or MOVES[label][0] for label in labels]
    segments += [SOURCES[s.after] for s in segments if s.after]
    return sorted({FRAMEWORKS[s.backend][0] for s in segments if interpreter(s.backend) is None})


def _job(label: str, segment: Segment, folder: Path) -> list[str]:
    """Write the job of ``segment`` (port_worker.py) and return its command line."""
    slug = _slug(label)
    job = {
        "runner": segment.runner,
        "api": segment.api,
        "optimizer": segment.spec.name,
        "hyperparameters": segment.spec.hyperparameters,
        "state_dtypes": segment.state_dtypes,
        "grads": str(folder / "grads.npz"),
        "weights": str(
            folder / "weights0.npz"
            if segment.after is None
            else folder / _slug(segment.after) / "weights.npz"
        ),
        "state": None if segment.after is None else str(folder / _slug(segment.after) / "state.npz"),
        "start": segment.start,
        "stop": segment.stop,
        "out": str(folder / slug),
    }
    path = folder / f"{slug}.json"
    path.write_text(json.dumps(job))
    return [interpreter(segment.backend), str(WORKER), str(path)]


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label)


def _env(backend: str) -> dict[str, str]:
    # every framework on the CPU, as the NumPy reference
    return {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Run every segment whose interpreters are known: the sources at once, then the moves at once.
    Returns the folder of their outputs (``<slug>/weights.npz``, ``<slug>/state.npz``)."""
    folder = tmp_path_factory.mktemp("moves")
    params0, grads = stream("float32", steps=STEPS)
    np.savez(folder / "weights0.npz", **{f"p{i}": p for i, p in enumerate(params0)})
    np.savez(folder / "grads.npz", **{f"g{t}_{i}": g for t, gs in enumerate(grads) for i, g in enumerate(gs)})
    sources = {label: s for label, s in SOURCES.items() if not _missing([label])}
    moves = {label: m for label, (m, _) in MOVES.items() if not _missing([label])}
    for phase in (sources, moves):
        if phase:
            run_workers(
                {_slug(label): _job(label, s, folder) for label, s in phase.items()},
                folder,
                TIMEOUT_S,
                {_slug(label): _env(s.backend) for label, s in phase.items()},
                per_worker_env=True,
            )
    return folder


def _load(folder: Path, label: str) -> tuple[list[np.ndarray], uniopt.PortableState]:
    with np.load(folder / _slug(label) / "weights.npz", allow_pickle=False) as f:
        weights = [f[f"p{i}"] for i in range(len(f.files))]
    return weights, uniopt.load_state(folder / _slug(label) / "state.npz")


@pytest.mark.parametrize("label", ["keras-jax RAdam 0-9", "keras-jax Adam-bf16 0-9"])
def test_the_uninterrupted_keras_jax_run_is_the_numpy_reference(runs, label):
    if _missing([label]):
        pytest.skip(f"set {', '.join(_missing([label]))} to a python with Keras, jax and optax")
    segment = SOURCES[label]
    params0, grads = stream("float32", steps=STEPS)
    params, state = [p.copy() for p in params0], segment.spec.init(params0, slot_dtypes=segment.state_dtypes)
    for g in grads:
        params, state = segment.spec.update(g, state, params)
    weights, record = _load(runs, label)
    assert_bitwise(weights, params, "params")
    assert_state_bitwise(record.slots, state, STEPS, record.step)


@pytest.mark.parametrize("label", list(MOVES))
def test_a_moved_run_continues_bitwise(runs, label):
    """Steps 1-4 in one framework, the state saved there and loaded in another, steps 5-9 there:
    parameters, slots (their dtypes included) and step equal the uninterrupted Keras-on-JAX run's."""
    missing = _missing([label])
    if missing:
        pytest.skip(f"set {', '.join(missing)} to the python of that framework's venv (uniopt installed)")
    segment, uninterrupted = MOVES[label]
    weights, record = _load(runs, label)
    want_weights, want = _load(runs, uninterrupted)
    assert record.step == want.step == STEPS
    assert record.optimizer == want.optimizer and record.hyperparameters == want.hyperparameters
    assert record.slot_dtypes == want.slot_dtypes == tuple(segment.state_dtypes or {} for _ in weights)
    assert_bitwise(weights, want_weights, "params")
    for i, (mine, theirs) in enumerate(zip(record.slots, want.slots, strict=True)):
        assert set(mine) == set(theirs)
        for name in theirs:
            np.testing.assert_array_equal(bits(mine[name]), bits(theirs[name]), err_msg=f"param {i} {name}")


DOC = Path(__file__).resolve().parents[2] / "docs" / "keras.md"


def test_the_moving_state_recipe_runs_as_written(tmp_path):
    """docs/keras.md's "Moving state": its first Python block (Keras on JAX, which sets
    ``KERAS_BACKEND`` itself) and then its second (plain PyTorch), each in a fresh process with its
    framework's interpreter, in one folder; the second continues at the step the first left."""
    missing = sorted({FRAMEWORKS[f][0] for f in ("jax", "torch") if interpreter(f) is None})
    if missing:
        pytest.skip(f"set {', '.join(missing)} to the python of that framework's venv (uniopt installed)")
    section = DOC.read_text().split("## Moving state", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) >= 2, "docs/keras.md's Moving state has no two Python blocks"
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"})
    said = []
    for framework, block in zip(("jax", "torch"), blocks[:2], strict=True):
        done = subprocess.run(
            [interpreter(framework), "-c", block],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        assert done.returncode == 0, f"{framework}: {done.stderr[-3000:]}"
        said.append(done.stdout)
    saved = uniopt.load_state(tmp_path / "radam.npz")
    assert (saved.optimizer, saved.step, saved.hyperparameters["lr"]) == ("RAdam", 2 * 29, 0.01)
    assert re.search(r"^step 87$", said[1], re.MULTILINE), said[1]
