"""Sessions: check (what CI runs), tests (core + one venv per framework), conformance (one venv per
backend, run side by side, then one comparison), peer (the frameworks' own optimizer tests against
uniopt), lint, bench, demo.

``nox -s check`` lints, starts every backend's conformance jobs in the background, runs the test
suites while they run and then compares the matrix. ``nox -s conformance`` runs the matrix alone;
``nox -s "conformance_run(backend='torch')"`` then ``nox -s conformance_compare`` runs one backend.
``nox -s tests`` runs the core tests and each framework's tests in that framework's own venv
(import order, ``KERAS_BACKEND`` and jax's x64 flag are process-global).
GPU users override the pinned CPU framework wheels through the UNIOPT_*_SPEC variables.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.options.sessions = ["check"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
OUT = "build/conformance"
ROOT = Path(__file__).parent

# Each framework's packages; the pinned torch is the CPU wheel (an unpinned torch is a CUDA build).
FRAMEWORK_DEPS: dict[str, list[str]] = {
    "torch": [os.environ.get("UNIOPT_TORCH_SPEC", "torch==2.13.0")],
    "tf": [os.environ.get("UNIOPT_TF_SPEC", "tensorflow-cpu>=2.16"), "keras>=3.3"],
    "jax": [os.environ.get("UNIOPT_JAX_SPEC", "jax>=0.4.30"), "optax>=0.2.3"],
}
# A framework joins the matrix once its conformance backend exists, and the tests once its tests do.
HARNESS_DEPS = ["rich", "ml-dtypes>=0.4"]  # ml_dtypes: the bfloat16 reference and its files
BACKEND_DEPS: dict[str, list[str]] = {
    "numpy": HARNESS_DEPS,
    "array_api_strict": ["array-api-strict>=2.0", *HARNESS_DEPS],
    **{
        name: [*deps, *HARNESS_DEPS]
        for name, deps in FRAMEWORK_DEPS.items()
        if (ROOT / "conformance" / f"backend_{name}.py").exists()
    },
}
# Each framework's tests: tests/<framework>_adapter (a folder named "jax" on sys.path would pass for jax).
SUITE_DIRS = {
    name: f"tests/{name}_adapter" for name in FRAMEWORK_DEPS if (ROOT / "tests" / f"{name}_adapter").is_dir()
}
TEST_SUITES = ["core", *SUITE_DIRS]


@nox.session(python=PYTHON)
@nox.parametrize("suite", TEST_SUITES)
def tests(session: nox.Session, suite: str) -> None:
    """Unit and integration tests: the core, or one framework's adapter in its own venv."""
    if suite == "core":
        session.install(".[test]")
        ignored = [f"--ignore={folder}" for folder in SUITE_DIRS.values()]
        session.run("pytest", *ignored, *session.posargs)
    else:
        session.install(".[test]", *FRAMEWORK_DEPS[suite])
        session.run("pytest", SUITE_DIRS[suite], *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


# What each venv runs: the framework's adapter rows and its native optimizers' parity rows.
RUNS_IN = {"torch": ["torch", "torch.optim"], "tf": ["tf", "keras"], "jax": ["jax", "optax"]}

# Backends in the order ``nox -s conformance`` queues them: the longest first.
LAUNCH_ORDER = ["tf", "jax", "torch", "array_api_strict", "numpy"]
_QUEUED = {"background": False}  # set by `conformance`: its backend sessions queue jobs


@nox.session(python=PYTHON)
@nox.parametrize("backend", list(BACKEND_DEPS))
def conformance_run(session: nox.Session, backend: str) -> None:
    """Write one backend's trajectories under build/conformance/trajectories.

    Run on its own, it runs in the foreground. Queued by ``conformance``, it starts one background
    job per mode in this venv (as many at once as there are cores) and returns, so the next venv
    installs while this one runs; ``conformance_compare`` waits for every job.
    """
    session.install(".", *BACKEND_DEPS[backend])
    command = "enqueue" if _QUEUED["background"] else "run"
    runs = RUNS_IN.get(backend, [backend])
    session.run("python", "-m", "conformance", "--out", OUT, command, "--backend", *runs, *session.posargs)


@nox.session(python=PYTHON)
def conformance(session: nox.Session) -> None:
    """The main job: every backend in its own venv, run side by side, then the matrix and reports."""
    for stale in ("trajectories", "jobs"):  # no files left from an earlier run
        shutil.rmtree(f"{OUT}/{stale}", ignore_errors=True)
    _QUEUED["background"] = True
    for backend in sorted(BACKEND_DEPS, key=LAUNCH_ORDER.index):
        session.notify(f"conformance_run(backend='{backend}')", session.posargs)
    session.notify("conformance_compare")


@nox.session(python=False)
def check(session: nox.Session) -> None:
    """What CI runs: lint, the conformance jobs started in the background, every test suite while
    they run, then the matrix (failing on any failed test, job or cell)."""
    for stale in ("trajectories", "jobs"):
        shutil.rmtree(f"{OUT}/{stale}", ignore_errors=True)
    _QUEUED["background"] = True
    session.notify("lint")
    for backend in sorted(BACKEND_DEPS, key=LAUNCH_ORDER.index):
        session.notify(f"conformance_run(backend='{backend}')")
    for suite in TEST_SUITES:
        session.notify(f"tests(suite='{suite}')")
    for framework in PEER_DEPS:
        session.notify(f"peer_run(framework='{framework}')")
    session.notify("peer_report")
    session.notify("conformance_compare")


@nox.session(python=PYTHON)
def conformance_compare(session: nox.Session) -> None:
    """Wait for queued backend jobs, then compare every trajectory file with the NumPy reference;
    fail on a failed job or on any cell over tolerance."""
    session.install(".", *HARNESS_DEPS, "matplotlib")
    session.run("python", "-m", "conformance", "--out", OUT, "wait")
    session.run("python", "-m", "conformance", "--out", OUT, "compare")


PEER_OUT = "build/peer"
# Each framework's own optimizer tests run in its own venv, with what those tests import.
PEER_DEPS: dict[str, list[str]] = {
    "keras": [*FRAMEWORK_DEPS["tf"]],
    "optax": [*FRAMEWORK_DEPS["jax"], "scikit-learn", "scipy"],
    "torch": [*FRAMEWORK_DEPS["torch"], "expecttest"],
}


@nox.session(python=PYTHON)
@nox.parametrize("framework", list(PEER_DEPS))
def peer_run(session: nox.Session, framework: str) -> None:
    """One framework's own optimizer tests (from its installed wheel; torch: the tests derived from its
    OptimizerInfo database) with uniopt's optimizers substituted; outcomes under build/peer."""
    session.install(".[test]", *PEER_DEPS[framework])
    session.run("python", "-m", "peer", "--out", PEER_OUT, "run", framework, *session.posargs)


@nox.session(python=PYTHON)
def peer_report(session: nox.Session) -> None:
    """Per-suite counts (passed / expected failures by reason / failed) and docs/peer.md."""
    session.run("python", "-m", "peer", "--out", PEER_OUT, "report")


@nox.session(python=False)
def peer(session: nox.Session) -> None:
    """The frameworks' own optimizer tests against uniopt, each framework in its own venv, then the
    report; fails on any failure outside the table of expected failures."""
    for framework in PEER_DEPS:
        session.notify(f"peer_run(framework='{framework}')", session.posargs)
    session.notify("peer_report")


PARITY_OUT = "build/parity"
# The native rows at each framework's default settings (docs/porting.md, "Native parity"); jax's x64
# flag is process-global, so optax is measured once with it off and once on (float64).
PARITY_RUNS: dict[str, list[list[str]]] = {
    "torch": [["--native", "torch.optim"]],
    "tf": [["--native", "keras"]],
    "jax": [
        ["--native", "optax", "--x64", "off"],
        ["--native", "optax", "--x64", "on", "--dtypes", "float64"],
    ],
}


@nox.session(python=PYTHON)
@nox.parametrize("framework", list(PARITY_RUNS))
def parity_measure(session: nox.Session, framework: str) -> None:
    """One framework's native rows: trajectory and one-step distances from uniopt's conventions."""
    session.install(".", *FRAMEWORK_DEPS[framework], *HARNESS_DEPS)
    env = {"KERAS_BACKEND": "tensorflow"} if framework == "tf" else {}
    for args in PARITY_RUNS[framework]:
        session.run("python", "-m", "conformance", "parity", "measure", *args, "--out", PARITY_OUT, env=env)


@nox.session(python=PYTHON)
def parity_render(session: nox.Session) -> None:
    """The native-parity table of docs/porting.md, from this run's measurements and the recorded
    measurements of the conventions before they took the frameworks' own scalar arithmetic
    (docs/parity/*-before.json)."""
    session.install(".", *HARNESS_DEPS)
    inputs = sorted(map(str, Path(PARITY_OUT).glob("*.json"))) + sorted(
        map(str, Path("docs/parity").glob("*-before.json"))
    )
    session.run("python", "-m", "conformance", "parity", "render", *inputs)


@nox.session(python=False)
def parity(session: nox.Session) -> None:
    """Native parity at the frameworks' defaults: every framework's rows, then the table."""
    shutil.rmtree(PARITY_OUT, ignore_errors=True)
    for framework in PARITY_RUNS:
        session.notify(f"parity_measure(framework='{framework}')")
    session.notify("parity_render")


BENCH_OUT = "build/bench"


@nox.session(python=PYTHON)
@nox.parametrize("framework", ["torch", "jax", "tf", "report"])
def bench(session: nox.Session, framework: str) -> None:
    """Step-time benchmark: each framework's variants in its own venv (interleaved, JSON under
    build/bench), then ``report``: the ratio table, docs/benchmarks.md and its chart. ``nox -s bench``
    runs all four in order; ``-- --quick`` or ``-- --all`` pass options to the framework runs, and
    ``-- --device gpu`` runs on the GPU (frameworks' GPU builds through the UNIOPT_*_SPEC variables)
    and writes docs/benchmarks-gpu.md."""
    if framework == "report":
        session.install(".", "rich", "matplotlib")
        args = list(session.posargs)
        device = args[args.index("--device") + 1] if "--device" in args[:-1] else "cpu"
        session.run("python", "-m", "bench", "--out", BENCH_OUT, "report", "--device", device)
        return
    session.install(".", *FRAMEWORK_DEPS[framework])
    session.run("python", "-m", "bench", "--out", BENCH_OUT, "run", framework, *session.posargs)


DEMO_OUT = "build/demo"


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Optimizer state moving between frameworks (docs/porting.md): each framework in its own venv
    (.nox/demo-<framework>); open-loop TF -> PyTorch -> JAX hops checked bit for bit against NumPy,
    then RAdam on digits hopping the same way beside single-framework runs (plot under build/demo)."""
    session.install(".", "scikit-learn", "matplotlib", "ml-dtypes>=0.4")
    env = {}
    for name, deps in FRAMEWORK_DEPS.items():
        venv = Path(session.virtualenv.location).parent / f"demo-{name}"
        python = venv / "bin" / "python"
        if not python.exists():
            session.run("python", "-m", "venv", str(venv))
        session.run(str(python), "-m", "pip", "install", "-q", ".", *deps, "ml-dtypes>=0.4", external=True)
        env[f"UNIOPT_DEMO_PYTHON_{name.upper()}"] = str(python)
    session.run("python", "-m", "demo", "all", "--out", DEMO_OUT, *session.posargs, env=env)
