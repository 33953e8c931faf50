"""Sessions: tests, conformance (one venv per backend, then one comparison), lint.

``nox -s conformance`` runs every backend, each in its own virtualenv, and compares them;
``nox -s "conformance_run(backend='numpy')"`` runs one backend's trajectories only.
GPU users override the pinned framework wheels through UNIOPT_TORCH_SPEC and friends.
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["lint", "tests", "conformance"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
TORCH_SPEC = os.environ.get("UNIOPT_TORCH_SPEC", "torch==2.13.0")  # the CPU wheel; see README
OUT = "build/conformance"

# backend -> the extra packages its venv needs (the core's own deps come with `.`)
BACKEND_DEPS: dict[str, list[str]] = {
    "numpy": ["rich"],
    "array_api_strict": ["array-api-strict>=2.0", "rich"],
}


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit and integration tests of the public API (and a small conformance run)."""
    session.install(".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
@nox.parametrize("backend", list(BACKEND_DEPS))
def conformance_run(session: nox.Session, backend: str) -> None:
    """Write one backend's trajectories under build/conformance/trajectories."""
    session.install(".", *BACKEND_DEPS[backend])
    session.run("python", "-m", "conformance", "--out", OUT, "run", "--backend", backend, *session.posargs)


@nox.session(python=PYTHON)
def conformance(session: nox.Session) -> None:
    """The main job: every backend in its own venv, then the matrix and its reports."""
    shutil.rmtree(f"{OUT}/trajectories", ignore_errors=True)  # no stale backend files
    for backend in BACKEND_DEPS:
        session.notify(f"conformance_run(backend='{backend}')", session.posargs)
    session.notify("conformance_compare")


@nox.session(python=PYTHON)
def conformance_compare(session: nox.Session) -> None:
    """Compare every trajectory file with the NumPy reference; fail on any cell over tolerance."""
    session.install(".", "rich", "matplotlib")
    session.run("python", "-m", "conformance", "--out", OUT, "compare")
