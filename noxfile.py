"""Sessions: check (what CI runs), tests (core + one venv per framework), conformance (one venv per
backend, run side by side, then one comparison), peer (the frameworks' own optimizer tests against
uniopt), lint, bench, demo.

``nox -s check`` lints, queues every backend's conformance jobs in the background, runs the test
suites and the peer suites while they run (each framework's tests and its peer suites in the venv
of that framework's jobs, ``tests_and_peer``), then waits for the jobs and compares the matrix (in
the NumPy reference's venv). ``nox -s conformance`` runs
the matrix alone. The sessions that gather others (check, conformance, peer, parity) name them in
``requires=`` and run after them, so each reports success only once the work it stands for is done.
``nox -s "conformance_run(backend='torch')"`` then ``nox -s conformance_compare`` runs one backend
(with the NumPy reference where there is none from this version of the code).
``nox -s tests`` runs the core tests and each framework's tests in that framework's own venv
(import order, ``KERAS_BACKEND`` and jax's x64 flag are process-global), each followed by
uniopt.keras's tests (tests/keras_adapter) on that framework's Keras backend.
GPU users override the pinned CPU framework wheels through the UNIOPT_*_SPEC variables.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nox

nox.options.sessions = ["check"]
nox.options.reuse_existing_virtualenvs = True
# a missing python3.11 fails the run (skipped sessions would let `conformance` pass having run nothing)
nox.options.error_on_missing_interpreters = True

# TensorFlow's C++ INFO and WARNING lines stay off the screen in every session and in the background
# jobs (which inherit this environment). Not TF_ENABLE_ONEDNN_OPTS: that would change the numbers.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PYTHON = "3.11"
OUT = "build/conformance"
ROOT = Path(__file__).parent

# Each framework's packages; the pinned torch is the CPU wheel (an unpinned torch is a CUDA build).
# Keras in every framework's venv: uniopt.keras runs on Keras's tensorflow, jax and torch backends,
# each tested in that framework's venv (tests/keras_adapter, Keras's own tests through peer).
KERAS = os.environ.get("UNIOPT_KERAS_SPEC", "keras>=3.3")
FRAMEWORK_DEPS: dict[str, list[str]] = {
    # schedulefree: the authors' Schedule-Free AdamW for torch, uniopt's convention's native
    "torch": [os.environ.get("UNIOPT_TORCH_SPEC", "torch==2.13.0"), "schedulefree==1.4.1", KERAS],
    "tf": [os.environ.get("UNIOPT_TF_SPEC", "tensorflow-cpu>=2.16"), KERAS],
    "jax": [os.environ.get("UNIOPT_JAX_SPEC", "jax>=0.4.30"), "optax>=0.2.3", KERAS],
}
# The Keras backend each framework's venv runs uniopt.keras's tests on (KERAS_BACKEND).
KERAS_BACKEND_OF = {"torch": "torch", "tf": "tensorflow", "jax": "jax"}
KERAS_SUITE = "tests/keras_adapter"
# A framework joins the matrix once its conformance backend exists, and the tests once its tests do.
HARNESS_DEPS = ["rich", "ml-dtypes>=0.4"]  # ml_dtypes: the bfloat16 reference and its files
# What `python -m conformance compare` needs (matplotlib: the report's figure).
COMPARE_DEPS = [*HARNESS_DEPS, "matplotlib"]
BACKEND_DEPS: dict[str, list[str]] = {
    "numpy": COMPARE_DEPS,  # the reference's venv is the one ``conformance`` compares in
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
TEST_SESSIONS = [f"tests(suite='{suite}')" for suite in TEST_SUITES]
# Each pytest run's worker processes (pytest-xdist): the cores, at most 4 (each worker imports its
# framework); UNIOPT_TEST_WORKERS overrides (0 or 1: the tests run in pytest's own process). Tests
# go to whichever worker is free, but a module with a module-scoped fixture (processes it starts,
# a model it trains) is one xdist_group, run whole by one worker ("loadgroup").
TEST_WORKERS = os.environ.get("UNIOPT_TEST_WORKERS", str(min(4, os.cpu_count() or 1)))


def _workers() -> list[str]:
    """pytest's arguments for :data:`TEST_WORKERS`."""
    return ["-n", TEST_WORKERS, "--dist", "loadgroup"] if TEST_WORKERS not in ("0", "1") else []


@nox.session(python=PYTHON)
@nox.parametrize("suite", TEST_SUITES)
def tests(session: nox.Session, suite: str) -> None:
    """Unit and integration tests: the core, or one framework's adapter in its own venv."""
    if suite == "core":
        session.install(".[test]")
        ignored = [f"--ignore={folder}" for folder in [*SUITE_DIRS.values(), KERAS_SUITE]]
        session.run("pytest", *_workers(), *ignored, *session.posargs)
    else:
        session.install(".[test]", *FRAMEWORK_DEPS[suite])
        _framework_tests(session, suite, *session.posargs)


def _framework_tests(
    session: nox.Session, suite: str, *args: str, env: dict[str, str] | None = None, venv: Path | None = None
) -> None:
    """The framework's own suite, then uniopt.keras's on that framework's Keras backend (one pytest
    process each: Keras's backend and the suites' settings are process-wide); in ``venv`` where
    given, else in the session's own."""
    pytest, env = _in_venv("pytest", env, venv)
    session.run(pytest, *_workers(), SUITE_DIRS[suite], *args, env=env, external=True)
    if Path(KERAS_SUITE).is_dir():
        kind = "tests-suite" if venv is None else venv.name.rsplit("-", 1)[0]
        keras_env = {**env, "KERAS_BACKEND": KERAS_BACKEND_OF[suite], **_other_pythons(suite, kind)}
        session.run(pytest, *_workers(), KERAS_SUITE, *args, env=keras_env, external=True)


def _in_venv(program: str, env: dict[str, str] | None, venv: Path | None) -> tuple[str, dict[str, str]]:
    """``program`` of ``venv`` (a path) and ``env`` with that venv first on PATH, as if activated
    (the processes tests start find its Python); unchanged where ``venv`` is None."""
    if venv is None:
        return program, dict(env or {})
    bin_dir = venv / "bin"
    path = os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])
    return str(bin_dir / program), {**(env or {}), "VIRTUAL_ENV": str(venv), "PATH": path}


# tests/keras_adapter/test_moves.py moves optimizer state between frameworks, each in its own venv:
# the JAX run gets the interpreters of the torch and tf venvs this nox run has made (``tests`` and
# ``check`` make them before JAX's); a move whose venv is missing is skipped, naming the variable.
OTHER_PYTHONS = {"jax": {"UNIOPT_PYTHON_TF": "tf", "UNIOPT_PYTHON_TORCH": "torch"}}


def _other_pythons(suite: str, session_prefix: str) -> dict[str, str]:
    """``UNIOPT_PYTHON_<FW>`` -> the python of framework FW's venv of the same kind as this run's
    (``session_prefix``: tests-suite or conformance_run-backend), where it exists with the test
    packages in it (the moves' recipe trains on scikit-learn's digits)."""
    found = {}
    for variable, framework in OTHER_PYTHONS.get(suite, {}).items():
        bin_dir = ROOT / ".nox" / f"{session_prefix}-{framework}" / "bin"
        python = bin_dir / "python"
        if python.exists() and (bin_dir / "pytest").exists():
            found[variable] = str(python)
    return found


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


# What each venv runs: the framework's adapter rows and its native optimizers' parity rows.
# uniopt.keras on Keras's JAX and torch backends (keras_jax, keras_torch: Keras installed in those
# venvs, each job setting its KERAS_BACKEND) and Keras's own optimizers there run in the same venvs.
RUNS_IN = {
    "torch": ["torch", "torch.optim", "keras_torch"],
    "tf": ["tf", "keras"],
    "jax": ["jax", "optax", "keras_jax"],
}
REFERENCE = "numpy"  # conformance.backends.REFERENCE (nox's own Python has no numpy to import it)

# Backends in the order ``nox -s conformance`` queues them: the longest first (torch: its two compiled
# modes are the run's longest jobs; each backend queues its slowest modes first, Backend.slowest).
LAUNCH_ORDER = ["torch", "tf", "jax", "array_api_strict", "numpy"]
RUN_SESSIONS = [f"conformance_run(backend='{b}')" for b in sorted(BACKEND_DEPS, key=LAUNCH_ORDER.index)]

# What TensorFlow writes to stderr at its import whatever TF_CPP_MIN_LOG_LEVEL says (absl's lines
# before its initialisation: oneDNN's notice); dropped from the commands run by _run_quietly.
TF_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} [\d:.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on\..*"
)


def _run_quietly(session: nox.Session, *args: str) -> None:
    """A short command whose output is logged without TensorFlow's import notices (all of it, notices
    included, where it fails). Its output goes through a file, not a pipe: the background jobs it
    starts inherit the descriptor, and a pipe would hold nox until they end."""
    with tempfile.TemporaryFile("w+") as out:
        try:
            session.run(*args, stdout=out, stderr=subprocess.STDOUT)
        except BaseException:
            out.seek(0)
            for line in out.read().splitlines():
                session.log(line)
            raise
        out.seek(0)
        for line in out.read().splitlines():
            if line.strip() and not TF_NOISE.fullmatch(line.strip()):
                session.log(line)


def _stdlib_module(name: str):
    """``conformance.<name>`` of this checkout (standard library only, loaded by its path: nox's own
    Python has no numpy to import the package)."""
    spec = importlib.util.spec_from_file_location(f"_uniopt_{name}", ROOT / "conformance" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _source_fingerprint() -> str:
    """conformance.fingerprint.source_fingerprint() of this checkout."""
    return _stdlib_module("fingerprint").source_fingerprint()


def _beside_the_jobs() -> dict[str, str]:
    """The thread-pool sizes of a session that runs beside the background jobs: one job's share of
    the cores, as each job has (conformance.jobs.thread_environment)."""
    jobs = _stdlib_module("jobs")
    env = jobs.thread_environment()
    return {name: env[name] for name in (*jobs.THREAD_VARIABLES, "XLA_FLAGS") if name in env}


def _job_pending(folder: Path) -> bool:
    """Whether a job of conformance/jobs.py (a folder: ``job.json``, ``started`` holding "<time>
    <pid>", ``rc`` once it has ended) is queued or running."""
    if not (folder / "job.json").exists() or (folder / "rc").exists():
        return False
    started = (folder / "started").read_text().split() if (folder / "started").exists() else []
    if len(started) < 2:
        return True  # queued, or claimed a moment ago
    try:
        os.kill(int(started[1]), 0)
    except ProcessLookupError:
        return False  # killed before it wrote its exit status
    except (PermissionError, ValueError):
        return True
    return True


# The options (posargs) the noxfile last queued the reference with: a reference of this code that ran
# other cells (``-- --steps 3``) cannot stand for another selection.
REFERENCE_OPTIONS = Path(OUT) / "reference-options.json"


def _reference_wanted(session: nox.Session) -> str | None:
    """Why a backend's venv also runs the NumPy reference, or None: the reference there is from this
    version of the code (its source fingerprint) and ran with these options, or it is queued."""
    if _job_pending(Path(OUT) / "jobs" / f"{REFERENCE}@eager"):
        return None
    meta = Path(OUT) / "trajectories" / f"{REFERENCE}@eager.json"
    if not meta.exists():
        return f"there is none in {meta.parent}"
    try:
        found = json.loads(meta.read_text()).get("fingerprint")
    except (OSError, ValueError):
        found = None
    if not found:
        return f"{meta} has no source fingerprint (unknown provenance)"
    if found != _source_fingerprint():
        return f"{meta} is from another version of the code"
    try:
        options = json.loads(REFERENCE_OPTIONS.read_text())["posargs"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{meta} ran with options unknown here"
    if options != list(session.posargs):
        said = " ".join(options) or "none"
        return f"{meta} ran with other options ({said}; these: {' '.join(session.posargs) or 'none'})"
    return None


@nox.session(python=PYTHON)
@nox.parametrize("backend", list(BACKEND_DEPS))
def conformance_run(session: nox.Session, backend: str) -> None:
    """Queue one backend's conformance jobs (one per mode, run in the background with this venv's
    Python, as many at once as there are cores) and return, so the next venv installs while they run:
    its success means queued. ``conformance`` and ``check`` wait for the jobs and compare; run alone,
    follow it with ``nox -s conformance_compare``. A backend other than NumPy also queues the NumPy
    reference here when there is none from this version of the code run with the same options (the
    NumPy session queues it only then)."""
    session.install(".", *BACKEND_DEPS[backend])
    runs = RUNS_IN.get(backend, [backend])
    why = _reference_wanted(session)
    if backend == REFERENCE and why is None:
        session.log(
            f"the NumPy reference in {OUT} is queued, or this code's with these options: not queued again"
        )
        return
    if backend != REFERENCE and why is not None:
        session.log(f"the NumPy reference runs in this venv too: {why}")
        runs = [*runs, REFERENCE]
    # a job queued or running (this nox run's reference, or an earlier run's) is not queued again
    busy = [name for name in runs if any(map(_job_pending, Path(OUT, "jobs").glob(f"{name}@*")))]
    if busy:
        session.log(f"{', '.join(busy)}: queued or running already ({OUT}/jobs), not queued again")
        runs = [name for name in runs if name not in busy]
        if not runs:
            return
    _run_quietly(
        session, "python", "-m", "conformance", "--out", OUT, "enqueue", "--backend", *runs, *session.posargs
    )
    if REFERENCE in runs:
        REFERENCE_OPTIONS.parent.mkdir(parents=True, exist_ok=True)
        REFERENCE_OPTIONS.write_text(json.dumps({"posargs": list(session.posargs)}))
    session.log(
        f"queued {', '.join(runs)}: the jobs run in the background (logs: {OUT}/jobs/*/log); "
        "conformance, check or conformance_compare waits for them and compares"
    )


@nox.session(python=False)
def conformance_clean(session: nox.Session) -> None:
    """Remove an earlier run's trajectories, jobs and JAX compilation cache (``conformance`` and
    ``check`` start with it: the cache holds one run's programs, not every run's)."""
    stale_folders = ("trajectories", "jobs", _stdlib_module("jobs").XLA_CACHE)
    for stale in stale_folders:
        shutil.rmtree(f"{OUT}/{stale}", ignore_errors=True)
    REFERENCE_OPTIONS.unlink(missing_ok=True)
    session.log(f"removed {', '.join(f'{OUT}/{stale}' for stale in stale_folders)}")


def _wait_and_compare(session: nox.Session, python: str = "python") -> None:
    session.run(python, "-m", "conformance", "--out", OUT, "wait", external=True)
    session.run(python, "-m", "conformance", "--out", OUT, "compare", external=True)


def _conformance_venv(session: nox.Session, backend: str) -> Path:
    """The venv ``conformance_run(backend=...)`` made (absolute); a clear error where it is missing."""
    venv = (session.cache_dir.parent / f"conformance_run-backend-{backend}").resolve()
    if not (venv / "bin" / "python").exists():
        session.error(f"{venv} is missing: conformance_run(backend='{backend}') makes it (nox -s check)")
    return venv


@nox.session(python=False, requires=["conformance_clean", *RUN_SESSIONS])
def conformance(session: nox.Session) -> None:
    """The main job: every backend in its own venv (the required sessions queue their jobs, which run
    side by side), then this session waits for every job and compares: the matrix and reports. Fails
    on a failed job or on any cell over tolerance. It compares in the NumPy reference's venv
    (``conformance_run(backend='numpy')``, which installs the comparison's packages too): no venv of
    its own to make and fill after the last job."""
    _wait_and_compare(session, str(_conformance_venv(session, REFERENCE) / "bin" / "python"))


@nox.session(python=PYTHON)
def conformance_compare(session: nox.Session) -> None:
    """Wait for queued backend jobs, then compare every trajectory file with the NumPy reference;
    fail on a failed job or on any cell over tolerance."""
    session.install(".", *COMPARE_DEPS)
    _wait_and_compare(session)


PEER_OUT = "build/peer"
# Each framework's own optimizer tests run in its own venv, with what those tests import.
PEER_DEPS: dict[str, list[str]] = {
    "keras": [*FRAMEWORK_DEPS["tf"]],
    "optax": [*FRAMEWORK_DEPS["jax"], "scikit-learn", "scipy"],
    "torch": [*FRAMEWORK_DEPS["torch"], "expecttest"],
    # Keras's own optimizer tests again, on its JAX and torch backends (uniopt.keras there)
    "keras-jax": [*FRAMEWORK_DEPS["jax"]],
    "keras-torch": [*FRAMEWORK_DEPS["torch"]],
}
# peer run -> `python -m peer run` arguments
PEER_ARGS: dict[str, list[str]] = {
    "keras-jax": ["keras", "--backend", "jax"],
    "keras-torch": ["keras", "--backend", "torch"],
}


@nox.session(python=PYTHON)
@nox.parametrize("framework", list(PEER_DEPS))
def peer_run(session: nox.Session, framework: str) -> None:
    """One framework's own optimizer tests (from its installed wheel; torch: the tests derived from its
    OptimizerInfo database) with uniopt's optimizers substituted; outcomes under build/peer."""
    session.install(".[test]", *PEER_DEPS[framework])
    _peer_suite(session, framework, *session.posargs)


def _peer_args(framework: str, *args: str) -> list[str]:
    """Python's arguments for one peer run: ``-m peer --out build/peer run <framework> ...``."""
    return ["-m", "peer", "--out", PEER_OUT, "run", *PEER_ARGS.get(framework, [framework]), *args]


def _peer_suite(
    session: nox.Session,
    framework: str,
    *args: str,
    env: dict[str, str] | None = None,
    venv: Path | None = None,
) -> None:
    python, env = _in_venv("python", env, venv)
    session.run(python, *_peer_args(framework, *args), env=env, external=True)


@nox.session(python=PYTHON)
def peer_report(session: nox.Session) -> None:
    """Per-suite counts (passed / expected failures by reason / failed) and docs/peer.md."""
    session.run("python", "-m", "peer", "--out", PEER_OUT, "report")


PEER_SESSIONS = [*(f"peer_run(framework='{framework}')" for framework in PEER_DEPS), "peer_report"]


@nox.session(python=False, requires=PEER_SESSIONS)
def peer(session: nox.Session) -> None:
    """The frameworks' own optimizer tests against uniopt, each framework in its own venv, then the
    report (the required sessions); fails on any failure outside the table of expected failures."""
    session.log(f"peer: every suite within its expected failures ({PEER_OUT}, docs/peer.md)")


# Each framework's tests and the peer runs of that venv (its own optimizer tests, and Keras's on its
# Keras backend), for check, in the venv its conformance_run made: one install of the framework
# instead of two (each takes about a minute on 2 cores beside the matrix's jobs).
PEERS_OF_SUITE = {"torch": ["torch", "keras-torch"], "tf": ["keras"], "jax": ["optax", "keras-jax"]}
SUITES_WITH_PEER = [suite for suite in SUITE_DIRS if suite in PEERS_OF_SUITE and suite in BACKEND_DEPS]


def _test_extra() -> list[str]:
    """The requirements of uniopt's ``test`` extra (pyproject.toml)."""
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]


@nox.session(python=False)
@nox.parametrize("suite", SUITES_WITH_PEER)
def tests_and_peer(session: nox.Session, suite: str) -> None:
    """``tests`` for one framework with its ``peer_run`` runs beside them (each its own process), in
    the venv that ``conformance_run`` made for that framework (what ``check`` runs, after it;
    ``peer_report`` reads the outcomes). The test and peer packages are added to that venv with
    every package already there held at its version (pip constraints: no second copy of the
    framework, and nothing the matrix's jobs import changes under them; a conflict fails here). They
    run beside the jobs, with one job's share of the cores as their thread pools
    (:func:`_beside_the_jobs`), and read the scalar tables' host rows the jobs computed
    (``UNIOPT_SCALAR_CACHE``) and, in JAX's venv, share the jobs' persistent compilation cache."""
    venv = _conformance_venv(session, suite)
    python = venv / "bin" / "python"
    peers = PEERS_OF_SUITE[suite]
    wanted = [*_test_extra(), *(dep for peer in peers for dep in PEER_DEPS[peer])]
    frozen = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--exclude", "uniopt"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    constraints = venv / "installed-constraints.txt"
    constraints.write_text("".join(f"{line}\n" for line in frozen if "==" in line and " @ " not in line))
    session.run(
        str(python), "-m", "pip", "install", "-c", str(constraints), *dict.fromkeys(wanted), external=True
    )
    # the scalar tables' host rows the matrix's jobs computed (conformance/__main__.py), read by
    # the tests and peer runs where they build the same specs' tables instead of computing them again
    # (the variable is uniopt.scalar_table.CACHE_VARIABLE, which nox's own Python cannot import)
    jobs = _stdlib_module("jobs")
    cache = ROOT / OUT / jobs.SCALAR_CACHE
    # and the programs XLA compiled for them, where JAX runs (conformance.jobs.xla_cache_environment)
    xla = {} if suite != "jax" else jobs.xla_cache_environment(ROOT / OUT / jobs.XLA_CACHE)
    env = {**_beside_the_jobs(), "UNIOPT_SCALAR_CACHE": str(cache), **xla}
    with _peer_suites_beside(session, peers, env=env, venv=venv):
        _framework_tests(session, suite, env=env, venv=venv)


@contextlib.contextmanager
def _peer_suites_beside(
    session: nox.Session, peers: list[str], env: dict[str, str], venv: Path
) -> Iterator[None]:
    """Each peer run of one venv as a process of its own, started on entering and running beside the
    body (that venv's own tests) and each other; on leaving, their outputs are logged one after the
    other as each ends, and any failure fails the session, naming the run. Where the body fails, the
    peer runs are stopped. (Run after the tests, the last session's two peer runs ended about a
    minute apart with a core idle; run beside them, that session took as long, 777 s against 773 s
    on the 2-core machine: the tests slowed by what the peer runs took.)"""
    python, env = _in_venv("python", env, venv)
    process_env = {**os.environ, **env}
    failed = []
    with contextlib.ExitStack() as stack:
        running = []
        for peer in peers:
            args = _peer_args(peer)
            session.log(" ".join(["python", *args]) + "  (in the background, beside this venv's tests)")
            out = stack.enter_context(tempfile.TemporaryFile("w+"))
            process = subprocess.Popen([python, *args], stdout=out, stderr=subprocess.STDOUT, env=process_env)
            stack.callback(process.kill)  # where the body fails or this session is interrupted
            running.append((peer, out, process))
        yield
        for peer, out, process in running:
            code = process.wait()
            out.seek(0)
            for line in out.read().splitlines():
                session.log(f"[{peer}] {line}")
            if code != 0:
                failed.append(f"{peer} (exit status {code})")
    if failed:
        session.error(f"peer runs failed: {', '.join(failed)}")


CHECK_SESSIONS = [
    "lint",
    "conformance_clean",
    *RUN_SESSIONS,
    *(f"tests(suite='{suite}')" for suite in TEST_SUITES if suite not in SUITES_WITH_PEER),
    *(f"tests_and_peer(suite='{suite}')" for suite in SUITES_WITH_PEER),
    *(f"peer_run(framework='{fw}')" for fw in PEER_DEPS if all(fw not in p for p in PEERS_OF_SUITE.values())),
    "peer_report",
    "conformance",
]


@nox.session(python=False, requires=CHECK_SESSIONS)
def check(session: nox.Session) -> None:
    """What CI runs, as required sessions in this order: lint, every backend's conformance jobs queued
    in the background, the core tests, then each framework's tests and its peer suite in one venv
    while the jobs run, the peer report, then ``conformance`` (waits for the jobs and compares the
    matrix). Passes only once every one of them has passed."""
    session.log("check: lint, the test suites, the peer suites and the conformance matrix passed")


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
def parity_clean(session: nox.Session) -> None:
    """Remove an earlier run's measurements (``parity`` starts with it)."""
    shutil.rmtree(PARITY_OUT, ignore_errors=True)
    session.log(f"removed {PARITY_OUT}")


@nox.session(
    python=False,
    requires=["parity_clean", *(f"parity_measure(framework='{f}')" for f in PARITY_RUNS), "parity_render"],
)
def parity(session: nox.Session) -> None:
    """Native parity at the frameworks' defaults: every framework's rows, then the table (the required
    sessions)."""
    session.log("parity: every framework measured, the table rendered")


BENCH_OUT = "bench/results"


@nox.session(python=PYTHON)
@nox.parametrize("framework", ["torch", "jax", "tf", "report"])
def bench(session: nox.Session, framework: str) -> None:
    """Step-time benchmark: each framework's variants in its own venv (interleaved, JSON under
    bench/results, kept in the repository), then ``report``: the ratio table, docs/benchmarks.md and
    its chart. ``nox -s bench`` runs all four in order; ``-- --quick`` or ``-- --all`` pass options
    to the framework runs, and ``-- --device gpu`` runs on the GPU (frameworks' GPU builds through
    the UNIOPT_*_SPEC variables) and writes docs/benchmarks-gpu.md."""
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
