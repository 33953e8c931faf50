"""Background conformance jobs: queued per backend mode, run to their end, failures reported."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from conformance import jobs
from conformance.__main__ import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _importable_from_jobs(monkeypatch):
    # jobs run `python -m conformance` in a fresh process: make the checkout's package importable
    monkeypatch.chdir(ROOT)
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    monkeypatch.setenv(jobs.LIMIT_VARIABLE, "1")  # queued jobs wait for a free slot


def test_queued_jobs_run_one_at_a_time_and_write_trajectories(tmp_path):
    args = ["--out", str(tmp_path), "enqueue", "--backend", "numpy", "array_api_strict"]
    assert main([*args, "--optimizers", "SGD", "--steps", "3", "--streams", "normal"]) == 0
    folders = sorted((tmp_path / "jobs").iterdir())
    assert [f.name for f in folders] == ["array_api_strict@eager", "numpy@eager"]
    # the limit is 1: the first job started at once, the second waits in the queue
    assert [(f / "started").exists() for f in folders] == [False, True]
    assert json.loads((folders[0] / "job.json").read_text())["argv"][0] == sys.executable

    assert jobs.wait(tmp_path, poll=0.05) == 0
    for folder in folders:
        assert (folder / "rc").read_text().strip() == "0"
        progress = json.loads((folder / "progress.json").read_text())
        assert progress["done"] == progress["total"] > 0
    written = sorted(p.name for p in (tmp_path / "trajectories").glob("*.json"))
    assert written == ["array_api_strict@eager.json", "numpy@eager.json"]


def test_a_selection_that_cannot_run_is_refused_before_anything_is_queued(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "enqueue", "--backend", "numpy", "--optimizers", "NoSuchOpt"]) == 2
    assert "unknown optimizer(s) NoSuchOpt" in capsys.readouterr().err
    assert not (tmp_path / "jobs").exists()


def test_a_failing_job_fails_the_wait_and_its_log_is_shown(tmp_path, capsys):
    args = ["--optimizers", "SGD", "--streams", "normal", "--steps", "2"]
    assert main(["--out", str(tmp_path), "enqueue", "--backend", "numpy", *args]) == 0
    folder = tmp_path / "jobs" / "numpy@eager"
    jobs.wait(tmp_path, poll=0.05)  # the real job; then the same folder holds one that fails
    for name in ("started", "rc", "log", "progress.json"):
        (folder / name).unlink(missing_ok=True)
    failing = [sys.executable, "-c", "import sys; print('boom: NoSuchOpt'); sys.exit(3)"]
    (folder / "job.json").write_text(json.dumps({"argv": failing, "enqueued": 0.0}))
    capsys.readouterr()
    assert jobs.wait(tmp_path, poll=0.05) == 1
    out = capsys.readouterr().out
    assert "numpy@eager failed" in out and "boom: NoSuchOpt" in out


def test_a_job_killed_before_writing_its_status_counts_as_failed(tmp_path):
    folder = tmp_path / "jobs" / "numpy@eager"
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps({"argv": ["true"], "enqueued": 0.0}))
    # a shell that is gone (pid far above any live one) and never wrote rc
    (folder / "started").write_text("0.0 4194303")
    assert jobs.wait(tmp_path, poll=0.05) == 1


def test_the_queue_drives_itself_without_a_waiter(tmp_path):
    # nox runs other sessions (the tests) between queueing and waiting: a finished job starts the next
    assert (
        main(
            [
                "--out",
                str(tmp_path),
                "enqueue",
                "--backend",
                "numpy",
                "array_api_strict",
                "--steps",
                "2",
                "--optimizers",
                "SGD",
                "--streams",
                "normal",
            ]
        )
        == 0
    )
    folders = sorted((tmp_path / "jobs").iterdir())
    deadline = time.time() + 120
    while not all((f / "rc").exists() for f in folders) and time.time() < deadline:
        time.sleep(0.1)
    assert [(f / "rc").read_text().strip() for f in folders] == ["0", "0"]


def test_each_backend_queues_its_slowest_modes_first():
    """The compiled modes, the run's longest jobs, are queued before the others (keeping the others'
    order), so that the two cores do not end the run with one long job alone."""
    from conformance import backends

    torch_modes = backends.get("torch").modes
    assert backends.get("torch").queue_order(torch_modes) == ["compile", "compiled", "eager", "loop", "flat"]
    assert backends.get("tf").queue_order(["eager", "function", "xla"]) == ["xla", "function", "eager"]
    assert backends.get("jax").queue_order(["eager", "optax"]) == ["optax", "eager"]
    assert backends.get("numpy").queue_order(["eager"]) == ["eager"]


def test_each_job_gets_its_share_of_the_cores_as_thread_pools(monkeypatch):
    monkeypatch.setattr(jobs.os, "cpu_count", lambda: 8)
    monkeypatch.setenv(jobs.LIMIT_VARIABLE, "4")
    env = jobs.thread_environment({"PATH": "/bin"})
    assert {name: env[name] for name in jobs.THREAD_VARIABLES} == dict.fromkeys(jobs.THREAD_VARIABLES, "2")
    assert "XLA_FLAGS" not in env  # two threads each: XLA keeps its thread pool
    monkeypatch.setenv(jobs.LIMIT_VARIABLE, "8")
    env = jobs.thread_environment({"OMP_NUM_THREADS": "3", "XLA_FLAGS": "--xla_dump_to=/tmp/x"})
    assert env["OMP_NUM_THREADS"] == "3"  # the user's setting is kept
    assert env["TF_NUM_INTRAOP_THREADS"] == "1"
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_cpu_multi_thread_eigen=false"
    given = "--xla_cpu_multi_thread_eigen=true"
    assert jobs.thread_environment({"XLA_FLAGS": given})["XLA_FLAGS"] == given


def test_a_launched_job_runs_with_the_thread_environment(tmp_path, monkeypatch):
    launched = []

    class Shell:
        pid = 12345

        def __init__(self, argv, stdin, env):
            launched.append(env)

    monkeypatch.setattr(jobs.subprocess, "Popen", Shell)
    monkeypatch.setattr(jobs.os, "cpu_count", lambda: 2)
    monkeypatch.setenv(jobs.LIMIT_VARIABLE, "2")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    jobs.enqueue(tmp_path, "numpy", ["eager"], ["--optimizers", "SGD"])
    assert len(launched) == 1 and launched[0]["OMP_NUM_THREADS"] == "1"
