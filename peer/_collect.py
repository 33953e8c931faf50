"""pytest plugin: every test's outcome in the peer suites, written as JSON for ``python -m peer report``.

Outcomes per test (setup, call and teardown taken together; a failing subtest fails its test):
``passed``, ``failed``, ``xfailed`` (an ``EXPECTED`` entry, with its reason), ``skipped`` (with the
suite's own skip reason) and ``deselected`` (the test exercises no optimizer uniopt substitutes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

import peer

_RESULTS: dict[str, dict[str, Any]] = {}
_DESELECTED: list[str] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--peer-out", default=None, help="write the outcomes to this JSON file")
    parser.addoption("--peer-framework", default="", help="the framework the suites belong to")


def suite_of(nodeid: str) -> str:
    """The test file of ``nodeid``, from the package root (``keras/src/optimizers/sgd_test.py``)."""
    path = nodeid.split("::", 1)[0]
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path.lstrip("./")


def pytest_deselected(items: list[pytest.Item]) -> None:
    _DESELECTED.extend(item.nodeid for item in items)


_RANK = {"passed": 0, "skipped": 1, "xfailed": 2, "failed": 3}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _RESULTS.setdefault(report.nodeid, {"outcome": "passed", "reason": "", "ran": False})
    if getattr(report, "context", None) is not None:  # a subtest's report
        outcome = "failed" if report.failed else "passed"
        entry["subtests_failed"] = entry.get("subtests_failed", 0) + (outcome == "failed")
        entry["subtests"] = entry.get("subtests", 0) + 1
        if outcome == "failed":
            entry["outcome"] = "failed"
        return
    if hasattr(report, "wasxfail"):
        outcome, reason = ("xfailed", report.wasxfail) if report.skipped else ("failed", "XPASS(strict)")
    elif report.failed:
        xpass = str(report.longrepr).startswith("[XPASS(strict)]")
        outcome, reason = "failed", "XPASS(strict): remove its EXPECTED entry" if xpass else report.when
    elif report.skipped:
        longrepr = report.longrepr
        outcome = "skipped"
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    else:
        outcome, reason = "passed", ""
    if report.when == "call" or outcome != "passed":
        entry["ran"] = True
    if _RANK[outcome] > _RANK[entry["outcome"]]:
        entry["outcome"], entry["reason"] = outcome, reason


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = session.config.getoption("--peer-out")
    if not out:
        return
    tests = [{"id": nodeid, "suite": suite_of(nodeid), **entry} for nodeid, entry in sorted(_RESULTS.items())]
    tests += [
        {"id": nodeid, "suite": suite_of(nodeid), "outcome": "deselected", "reason": ""}
        for nodeid in _DESELECTED
    ]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    framework = session.config.getoption("--peer-framework")
    plugin = sys.modules.get(f"peer.{framework}")
    payload = {
        "framework": framework,
        "versions": {
            name: getattr(sys.modules[name], "__version__", "?")
            for name in ("torch", "tensorflow", "keras", "jax", "optax", "numpy")
            if name in sys.modules
        },
        "expected": dict(getattr(plugin, "EXPECTED", {})),
        "deselect_reason": getattr(plugin, "DESELECT_REASON", ""),
        "stale": list(peer.STALE) if getattr(plugin, "EXPECTED", None) else [],
        "exitstatus": int(exitstatus),
        "tests": tests,
    }
    path.write_text(json.dumps(payload, indent=1))
