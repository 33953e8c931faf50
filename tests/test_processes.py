"""The distributed tests' worker launcher (tests/processes.py) reports what its workers did."""

from __future__ import annotations

import os
import sys

import pytest
from processes import free_ports, run_workers


def test_free_ports_are_distinct():
    ports = free_ports(3)
    assert len(set(ports)) == 3 and all(0 < p < 65536 for p in ports)


def test_workers_run_at_once_and_their_output_comes_back(tmp_path):
    code = "import sys; print('worker', sys.argv[1])"
    out = run_workers(
        {str(i): [sys.executable, "-c", code, str(i)] for i in range(2)}, tmp_path, 60, os.environ
    )
    assert out == {"0": "worker 0\n", "1": "worker 1\n"}


def test_a_failing_worker_is_named_with_its_output(tmp_path):
    commands = {
        "good": [sys.executable, "-c", "print('fine')"],
        "bad": [sys.executable, "-c", "import sys; print('about to fail'); sys.exit(3)"],
    }
    with pytest.raises(AssertionError, match=r"(?s)worker bad exited with 3:.*about to fail"):
        run_workers(commands, tmp_path, 60, os.environ)


def test_a_worker_past_the_deadline_is_killed_and_reported(tmp_path):
    commands = {"slow": [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]}
    with pytest.raises(AssertionError, match=r"(?s)did not finish within 1 s; slow said:.*started"):
        run_workers(commands, tmp_path, 1, os.environ)
