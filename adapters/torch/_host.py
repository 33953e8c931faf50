"""The host work of a flat step in C++ (``_host.cpp``): the per-tensor loops that remain in CPython.

A flat step over many small tensors spends most of its time outside the kernel, in loops over the
parameters: reading each ``.grad`` and checking its layout, dtype and shape; checking that each
parameter's state entries and storage are the ones the bucket holds; writing each gradient's address
into the kernel's table; and advancing each parameter's autograd version counter. In CPython each of
those passes costs 30 to 500 us for 2000 tensors (docs/torch.md, "Host work"). ``_host.cpp`` does
them in C++ over the same objects. Bookkeeping only: no update math, and every function answers
"not here" for anything but the plain case, where the Python code runs as before, so both paths
accept, refuse and compute the same (tests/torch_adapter/test_host.py runs both).

The extension is compiled against the running torch's headers with the system C++ compiler
(``$CXX``, split as a shell splits it, else ``c++``, ``g++`` or ``clang++``; about 15 s on two
cores) and cached on disk as the C kernels are (:func:`._native.shared_library`'s folder), once per
torch build and Python. The first process
that needs it builds it in a background thread and steps with the Python code until it is there, so
no step waits for a compiler. Where there is no compiler, no ``Python.h`` or the build fails, the
Python code is all there is; ``UNIOPT_TORCH_HOST=0`` turns the extension off.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import subprocess
import sysconfig
import tempfile
import threading
from pathlib import Path
from types import ModuleType

import torch

from ._native import compiler_command

__all__ = ["module", "wait"]

_SOURCE = Path(__file__).with_name("_host.cpp")
_lock = threading.Lock()
_loaded: ModuleType | None = None
_failed = False  # built or loaded without success in this process: not tried again
_builder: threading.Thread | None = None


def _compiler() -> tuple[str, ...] | None:
    """The C++ compiler command (:func:`._native.compiler_command`): ``$CXX`` split as a shell
    splits it (``CXX="ccache g++"``), else ``c++``, ``g++`` or ``clang++`` on the ``PATH``."""
    return compiler_command("CXX", ("c++", "g++", "clang++"))


def _target(compiler: tuple[str, ...], source: str) -> tuple[Path, list[str]]:
    """The cached library's path and the compile command (run in a folder holding ``host.cpp``)."""
    from torch.utils import cpp_extension

    torch_lib = Path(torch.__file__).parent / "lib"
    paths = sysconfig.get_paths()
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True))
    flags = ["-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    includes = [f"-I{p}" for p in (*cpp_extension.include_paths(), paths["include"], paths["platinclude"])]
    libs = [f"-L{torch_lib}", f"-Wl,-rpath,{torch_lib}", "-lc10", "-ltorch_cpu", "-ltorch_python"]
    # the digest names the build: source, compiler, flags, torch's build and the Python ABI (not the
    # paths, which differ between virtualenvs holding the same torch)
    identity = (
        source,
        *compiler,
        *flags,
        torch.__version__,
        str(torch.version.git_version),
        str(sysconfig.get_config_var("EXT_SUFFIX")),
    )
    digest = hashlib.sha256("\0".join(identity).encode()).hexdigest()[:20]
    folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "uniopt"
    command = [*compiler, *flags, *includes, "host.cpp", "-o", "host.so", *libs]
    return folder / f"host-{digest}.so", command


def _build(library: Path, command: list[str], source: str) -> None:
    """Compile into a temporary folder and move the library into place atomically (concurrent
    processes each see a whole file); failures leave no file. One build at a time per machine: a
    process that finds another building waits for it (in this background thread) and uses its
    library, so parallel test or conformance processes do not each run the compiler."""
    import fcntl

    try:
        library.parent.mkdir(parents=True, exist_ok=True)
        with open(library.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if library.exists():
                return
            with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
                (Path(tmp) / "host.cpp").write_text(source)
                subprocess.run(command, cwd=tmp, check=True, capture_output=True, timeout=600)
                os.replace(Path(tmp) / "host.so", library)
    except (OSError, subprocess.SubprocessError):
        pass


def _load(library: Path) -> ModuleType | None:
    try:
        loader = importlib.machinery.ExtensionFileLoader("uniopt_host", str(library))
        spec = importlib.util.spec_from_file_location("uniopt_host", str(library), loader=loader)
        if spec is None:
            return None
        made = importlib.util.module_from_spec(spec)
        loader.exec_module(made)
        return made
    except (ImportError, OSError):
        return None


def module(start: bool = True) -> ModuleType | None:
    """The loaded extension, or ``None`` while it is not (yet) there. Loads it from the cache if it
    was built; otherwise, if ``start``, begins the build in a background thread (once per process)."""
    global _loaded, _failed, _builder
    if _loaded is not None or _failed:
        return _loaded
    building = _builder
    if building is not None and building.is_alive():  # every step until the build ends: no work
        return None
    with _lock:
        if _loaded is not None or _failed:
            return _loaded
        if os.environ.get("UNIOPT_TORCH_HOST", "1") == "0":
            _failed = True
            return None
        compiler = _compiler()
        if compiler is None or os.name != "posix" or not _SOURCE.exists():
            _failed = True
            return None
        source = _SOURCE.read_text()
        library, command = _target(compiler, source)
        if library.exists():
            _loaded = _load(library)
            _failed = _loaded is None
            return _loaded
        if _builder is None:
            if not start:
                return None
            _builder = threading.Thread(
                target=_build, args=(library, command, source), name="uniopt-host-build", daemon=True
            )
            _builder.start()
            return None
        if _builder.is_alive():
            return None
        # the build ended without a library: no second try in this process
        _failed = True
        return None


def wait() -> ModuleType | None:
    """The extension, building it now if needed and waiting for the build (tests and benchmarks,
    which time the steady state); ``None`` where it cannot be built here."""
    module()
    builder = _builder
    if builder is not None:
        builder.join()
    return module(start=False)
