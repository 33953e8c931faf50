"""uniopt.jax across two processes: ``jax.distributed.initialize`` on 127.0.0.1 with jax's gloo CPU
collectives (``jax_cpu_collectives_implementation="gloo"``, jax 0.10's default), 2 host CPU
devices per process, against one process with 4 host devices running the same global computation
on a mesh of the same shape (``multiprocess_worker.py``: a data-parallel and a parameter-sharded
train step for Adam, LAMB, Adafactor and Schedule-Free AdamW: one of each kind of step).

Bitwise is expected, and not by luck: the SPMD partitioner turns the same jitted step and the same
mesh shape into the same per-device program in both runs, and the runs differ only in how the
collectives move data (gloo over TCP against XLA's in-process collectives). Gathers, permutes and
broadcasts move bits unchanged; the one operation whose result could depend on the implementation
is a floating-point sum over devices, and every such sum here adds exactly two partial sums (each
mesh axis has 2 devices, and the compiled programs are checked to have no floating-point
all-reduce or reduce-scatter over more devices), and ``a + b == b + a`` exactly. The spec's own
reductions (LAMB's norms, Adafactor's row and column means) are elementwise additions of slices
(``uniopt._math.sum_pairwise``), which the partitioner runs as data movement plus local adds.
Both sides run XLA's CPU code single-threaded (``--xla_cpu_multi_thread_eigen=false``) so that no
kernel splits a sum by the number of threads of its process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from processes import free_ports, run_workers

# one worker runs this module (pytest-xdist's loadgroup): its module fixture runs once
pytestmark = pytest.mark.xdist_group("test_multiprocess")

WORKER = Path(__file__).with_name("multiprocess_worker.py")
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240  # all three processes together, on a busy 2-core machine


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    flags = f"--xla_force_host_platform_device_count={devices} --xla_cpu_multi_thread_eigen=false"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
    """The three runs' results: ``"0"`` and ``"1"`` (the two processes), ``"single"``."""
    out = tmp_path_factory.mktemp("multiprocess")
    (port,) = free_ports(1)
    commands = {
        "0": ([sys.executable, str(WORKER), "--process-id", "0", "--port", str(port)], 2),
        "1": ([sys.executable, str(WORKER), "--process-id", "1", "--port", str(port)], 2),
        "single": ([sys.executable, str(WORKER), "--single"], 4),
    }
    stdout = run_workers(
        {label: [*cmd, "--out", str(out / f"{label}.npz")] for label, (cmd, _) in commands.items()},
        out,
        TIMEOUT_S,
        {label: _env(devices) for label, (_, devices) in commands.items()},
        per_worker_env=True,
    )
    for label, said in stdout.items():
        assert said.strip().endswith("OK"), f"{label}: {said[-3000:]}"
    return {label: dict(np.load(out / f"{label}.npz")) for label in commands}


def _differing(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[str]:
    assert a.keys() == b.keys()
    return [
        k
        for k in a
        if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or a[k].tobytes() != b[k].tobytes()
    ]


def test_both_runs_cover_every_optimizer_and_mode(runs):
    keys = runs["single"].keys()
    for mode in ("data", "sharded"):
        for name in ("adam", "lamb", "adafactor", "schedule_free_adamw"):
            assert f"{mode}/{name}/params/w1" in keys
            assert f"{mode}/{name}/loss" in keys
    assert "sharded/adafactor/slots/v_row/w1" in keys  # factored: a statistic not shaped like W1
    assert "data/schedule_free_adamw/history" in keys


def test_the_two_processes_hold_identical_values(runs):
    assert _differing(runs["0"], runs["1"]) == []


def _layout(run: dict[str, np.ndarray], *modes: str) -> dict[str, np.ndarray]:
    return {k: v for k, v in run.items() if k.split("/")[0] in modes}


def test_two_processes_equal_one_process_bitwise(runs):
    assert _differing(_layout(runs["0"], "data", "sharded"), _layout(runs["single"], "data", "sharded")) == []


def test_sums_over_four_devices_agree_across_processes_not_with_one_process(runs):
    """The batch sharded over all 4 devices: each gradient is a sum over 4 devices, which gloo and
    XLA's in-process collectives add in different orders. Both processes still hold the same bits
    (every process gets the one result of each all-reduce), and one process's run is a rounding
    away (measured: 12 of the 13 arrays differ, the parameters by at most 9e-8 after 8 steps, the
    losses by 1 ulp)."""
    wide = {label: _layout(run, "wide") for label, run in runs.items()}
    assert int(wide["single"]["wide/adam/group"]) == 4  # the premise of the bitwise tests fails here
    assert _differing(wide["0"], wide["1"]) == []
    for key, value in wide["single"].items():
        np.testing.assert_allclose(wide["0"][key], value, rtol=1e-5, atol=1e-7, err_msg=key)


def test_sharded_and_data_parallel_steps_agree(runs):
    """The two layouts compute the same math with different partial sums, so they agree to
    rounding (measured: the parameters and state the same bits, the losses within 2 ulp); the
    worker checks that every loss fell."""
    single = runs["single"]
    for key in single:
        if key.startswith("data/") and not key.endswith("/group"):
            np.testing.assert_allclose(
                single[key], single["sharded/" + key[5:]], rtol=1e-6, atol=1e-7, err_msg=key
            )


def test_every_cross_device_sum_adds_two_terms(runs):
    """The premise of the bitwise claim, read from the compiled programs: every floating-point
    all-reduce sums over 2 devices; the data-parallel step has at least one (the gradients)."""
    groups = {
        k: int(v) for k, v in _layout(runs["single"], "data", "sharded").items() if k.endswith("/group")
    }
    assert len(groups) == 8  # 4 optimizers x 2 layouts
    assert all(size == 2 for size in groups.values()), groups
