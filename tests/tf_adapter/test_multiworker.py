"""uniopt.tf under ``tf.distribute.MultiWorkerMirroredStrategy``: two worker processes on 127.0.0.1
(``TF_CONFIG``, ``CommunicationImplementation.RING``, one CPU replica each) train a small Keras
model through ``model.fit`` with RAdam, Adam and Schedule-Free AdamW (and Keras's own Adam as a
cross-check), against one process training the same two replicas under ``MirroredStrategy`` over
two logical CPU devices (``multiworker_worker.py``).

Bitwise is expected: each replica reads the same 16 rows of each global batch of 32 in both
layouts and runs the same program on them (one intra-op thread on both sides, so no kernel splits
a sum by its thread count), so the per-replica gradients are the same bits; Keras scales each
replica's loss by 1/2 (``scale_loss_for_distribution``: a power of two, exact) and the optimizer
sums the two replicas' gradients (``all_reduce(SUM)``: the ring across the workers, one addition
on one device in the single process), and a sum of two floats does not depend on the order. Every
replica then applies the same update to the same values. The losses ``fit`` reports are the mean
of the two replicas' (a sum of two, halved: exact too).

Keras 3.15's own ``fit`` does not run under two workers: the test records its two errors
(keras-team/keras#20585) and the worker replaces the two failing functions of Keras's TF trainer
(docstrings in the worker; they touch neither the gradients nor the optimizer).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from processes import free_ports, run_workers

import uniopt
import uniopt.tf

# one worker runs this module (pytest-xdist's loadgroup): its module fixture runs once
pytestmark = pytest.mark.xdist_group("test_multiworker")

WORKER = Path(__file__).with_name("multiworker_worker.py")
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300  # all three processes together, on a busy 2-core machine
STEPS = 10  # multiworker_worker: EPOCHS * STEPS
OPTIMIZERS = ("radam", "adam", "schedule_free_adamw", "keras_adam")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The three runs' results: ``"0"`` and ``"1"`` (the workers), ``"mirrored"``, and the path
    of the ``.keras`` file worker 0 saved."""
    out = tmp_path_factory.mktemp("multiworker")
    ports = ",".join(map(str, free_ports(2)))
    commands = {
        "0": ["--index", "0", "--ports", ports, "--save", str(out / "radam.keras")],
        "1": ["--index", "1", "--ports", ports],
        "mirrored": ["--mirrored"],
    }
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("TF_CONFIG", None)
    stdout = run_workers(
        {
            label: [sys.executable, str(WORKER), *args, "--out", str(out / f"{label}.npz")]
            for label, args in commands.items()
        },
        out,
        TIMEOUT_S,
        env,
    )
    for label, said in stdout.items():
        assert said.strip().endswith("OK"), f"{label}: {said[-3000:]}"
    results = {label: dict(np.load(out / f"{label}.npz")) for label in commands}
    results["saved"] = out / "radam.keras"
    return results


def _trained(run: dict) -> dict[str, np.ndarray]:
    return {k: v for k, v in run.items() if not k.startswith("keras_fit")}


def _differing(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[str]:
    assert a.keys() == b.keys()
    return [
        k
        for k in a
        if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or a[k].tobytes() != b[k].tobytes()
    ]


def test_keras_fit_fails_under_two_workers(runs):
    """Keras 3.15's ``fit`` under two workers: ``strategy.reduce`` of the first batch's ``(x, y)``
    nest, then (with that replaced) ``reduce("MEAN", loss, axis=0)`` of a 0-d loss. Under
    ``MirroredStrategy`` in one process, neither."""
    for worker in ("0", "1"):
        build, step = str(runs[worker]["keras_fit_error"]), str(runs[worker]["keras_fit_error_after_build"])
        assert build.startswith("ValueError: Attempt to convert a value (PerReplica:{"), build[:300]
        assert build.endswith(
            "with an unsupported type (<class 'tensorflow.python.distribute.values.PerReplica'>) to a Tensor."
        ), build[-300:]
        assert step.startswith("ValueError: Invalid reduction dimension 0 for input with 0 dimensions."), step
    assert str(runs["mirrored"]["keras_fit_error"]) == ""
    assert str(runs["mirrored"]["keras_fit_error_after_build"]) == ""


def test_every_optimizer_trained(runs):
    keys = _trained(runs["mirrored"])
    for name in OPTIMIZERS:
        assert f"{name}/loss" in keys and f"{name}/weights/00" in keys and f"{name}/optimizer/00" in keys
        assert len([k for k in keys if k.startswith(f"{name}/weights/")]) == 4  # two kernels, two biases
        assert int(keys[f"{name}/optimizer/00"]) == STEPS  # Keras's iterations
    # the workers checked that every loss fell and that each one's replicas agree


def test_the_two_workers_hold_identical_weights_and_state(runs):
    assert _differing(_trained(runs["0"]), _trained(runs["1"])) == []


def test_two_workers_equal_one_process_with_two_replicas_bitwise(runs):
    assert _differing(_trained(runs["0"]), _trained(runs["mirrored"])) == []


def test_schedule_free_keeps_one_history_per_worker(runs):
    """Each worker's host history advanced once per step (as the core's over 10 steps)."""
    spec = uniopt.ScheduleFreeAdamW(lr=2e-2, warmup_steps=3)
    want = spec.init_history()
    for t in range(1, STEPS + 1):
        want = spec.history_scalars(t, 2e-2, want)[1]
    for label in ("0", "1", "mirrored"):
        assert runs[label]["schedule_free_adamw/history"].tolist() == list(want)


def test_worker_zero_saves_the_optimizer_state(runs):
    """``model.save`` on worker 0 alone, loaded in this process without a strategy: RAdam and every
    one of its variables as worker 0 held them."""
    model = keras.models.load_model(runs["saved"])
    assert isinstance(model.optimizer, uniopt.tf.RAdam)
    saved = [np.asarray(v.numpy()) for v in model.optimizer.variables]
    held = [runs["0"][f"radam/optimizer/{i:02d}"] for i in range(len(saved))]
    assert f"radam/optimizer/{len(saved):02d}" not in runs["0"]
    assert _differing(dict(enumerate(saved)), dict(enumerate(held))) == []
    weights = [np.asarray(v.numpy()) for v in model.weights]
    assert (
        _differing(dict(enumerate(weights)), {i: runs["0"][f"radam/weights/{i:02d}"] for i in range(4)}) == []
    )
