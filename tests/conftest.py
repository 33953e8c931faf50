"""Fixtures: the array namespaces the core must run on unchanged (both are test dependencies).

Collection: each framework's suite (tests/<framework>_adapter, named so that no folder on sys.path
passes for the framework's own package) is skipped, with the reason in pytest's summary, where its
framework is not installed; ``pytest`` from the root then runs the core and the suite this venv can
run (nox gives each framework a venv of its own; where several are installed, one suite runs per
process and the others are skipped, saying how to run them).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from namespaces import NAMESPACES
from xdist_groups import pytest_collection_modifyitems  # noqa: F401 (a hook: see its module)

# Keras reads its backend at its first import and TensorFlow its log level at its first: the core
# tests are collected (and may import them) before tests/tf_adapter/conftest.py sets the same.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent

# folder -> (module, pip extra) pairs its tests import
FRAMEWORK_SUITES: dict[str, tuple[tuple[str, str], ...]] = {
    "torch_adapter": (("torch", "torch"),),
    "tf_adapter": (("tensorflow", "tf"), ("keras", "tf")),
    "jax_adapter": (("jax", "jax"), ("optax", "jax")),
    # uniopt.keras on the backend KERAS_BACKEND names (tensorflow by default): run once per backend
    "keras_adapter": (("keras", "keras"),),
}


def missing_framework(folder: str) -> str | None:
    """Why the suite in ``tests/<folder>`` cannot run here, or None."""
    for module, extra in FRAMEWORK_SUITES.get(folder, ()):
        if importlib.util.find_spec(module) is None:
            return f"tests/{folder}: {module} is not installed (pip install uniopt[{extra}])"
    return None


_SUITE = pytest.StashKey[str]()  # the framework suite this process runs


class UnavailableSuite(pytest.File):
    """A framework's suite that does not run here: one skip, with the reason. Not a directory
    collector, so the suite's conftest.py (process-wide settings) is not imported."""

    reason = ""

    def collect(self):
        raise pytest.skip.Exception(self.reason)


def _named_suite(config: pytest.Config) -> str | None:
    """The framework suite a command-line path points into (``pytest tests/keras_adapter/x.py``),
    which is then the suite this process runs, whichever folder pytest visits first."""
    for arg in config.args:
        parts = Path(str(arg).split("::", 1)[0]).resolve().parts
        for name in FRAMEWORK_SUITES:
            if (*HERE.parts, name) == parts[: len(HERE.parts) + 1]:
                return name
    return None


def pytest_collect_directory(path: Path, parent: pytest.Collector):
    if path.parent != HERE or path.name not in FRAMEWORK_SUITES:
        return None
    reason = missing_framework(path.name)
    if reason is None:
        # A venv with several frameworks: one suite per process. Each sets process-wide state (Keras's
        # backend, XLA's flags, jax's x64 flag) and the suites share module names (test_dropin.py).
        first = parent.config.stash.setdefault(_SUITE, _named_suite(parent.config) or path.name)
        if first != path.name:
            reason = (
                f"tests/{path.name}: one framework suite per process and this one runs tests/{first} "
                f"(run pytest tests/{path.name} on its own)"
            )
    if reason is None:
        return None
    suite = UnavailableSuite.from_parent(parent, path=path)
    suite.reason = reason
    return suite


@pytest.fixture(params=NAMESPACES)
def xp_name(request) -> str:
    return request.param
