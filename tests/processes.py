"""Worker processes of the distributed tests: free local ports, start every worker at once, wait for
them under one deadline, kill what is left, and fail naming the worker with the end of its output.

The tests that use it (torch DDP and FSDP2 over gloo, JAX across processes, TensorFlow's
MultiWorkerMirroredStrategy) start their own processes on 127.0.0.1 only.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that were free a moment ago (held open together while
    they are picked, so that the system hands out different ones)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def run_workers(
    commands: Mapping[str, Sequence[str]],
    out: Path,
    timeout_s: float,
    env: Mapping[str, str] | Mapping[str, Mapping[str, str]],
    per_worker_env: bool = False,
) -> dict[str, str]:
    """Run every command of ``commands`` (label -> argv) at once, each writing its stdout and stderr
    to ``out/<label>.out`` and ``out/<label>.err``; wait at most ``timeout_s`` for all of them
    together, then kill what is left. ``env``: one environment for all, or (``per_worker_env``)
    label -> environment. Fails (``AssertionError``) naming the worker and ending with its last
    output where one timed out or exited non-zero; returns label -> its stdout."""
    procs = {}
    for label, command in commands.items():
        with open(out / f"{label}.out", "w") as stdout, open(out / f"{label}.err", "w") as stderr:
            environment = env[label] if per_worker_env else env
            procs[label] = subprocess.Popen(
                list(command), stdout=stdout, stderr=stderr, env=dict(environment)
            )
    deadline = time.monotonic() + timeout_s
    timed_out = False
    try:
        for proc in procs.values():
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outputs = {}
    for label, proc in procs.items():
        stdout, stderr = (out / f"{label}.out").read_text(), (out / f"{label}.err").read_text()
        said = f"{stdout[-3000:]}\n{stderr[-6000:]}"
        assert not timed_out, f"the workers did not finish within {timeout_s} s; {label} said:\n{said}"
        assert proc.returncode == 0, f"worker {label} exited with {proc.returncode}:\n{said}"
        outputs[label] = stdout
    return outputs
