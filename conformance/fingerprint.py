"""Which version of the code produced a trajectory file: a digest of the sources that shape its numbers.

``source_fingerprint()`` is the sha256 over the sorted paths (relative to the repository root, the
folder above this package) and the contents of every ``*.py`` under ``src/uniopt``, ``adapters`` and
``conformance``. ``run`` records it in each ``<backend>@<mode>.json``; ``compare`` leaves out, and
names, the files whose digest is not this checkout's. Standard library only: the noxfile loads this
file by its path to decide whether a reference must be rerun.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

__all__ = ["ROOT", "SOURCES", "imported_fingerprint", "source_files", "source_fingerprint"]

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("src/uniopt", "adapters", "conformance")


def source_files(root: Path = ROOT) -> list[Path]:
    """Every ``*.py`` under :data:`SOURCES` of ``root``, sorted by relative path."""
    found = [path for folder in SOURCES for path in (root / folder).rglob("*.py") if path.is_file()]
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


def source_fingerprint(root: Path | None = None) -> str:
    """The hex sha256 of the sources under ``root`` (default: this checkout): each file's relative
    path, its length and its bytes, in path order."""
    root = ROOT if root is None else Path(root).resolve()
    return _digest((path.relative_to(root).as_posix(), path) for path in source_files(root))


def _digest(files: Iterable[tuple[str, Path]]) -> str:
    digest = hashlib.sha256()
    for name, path in sorted(files):
        data = path.read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


ADAPTERS = ("torch", "tf", "jax", "keras")


def imported_fingerprint() -> str:
    """:func:`source_fingerprint` of the code this process runs: the ``uniopt`` package and its
    adapters where Python imports them from (a venv's installed copy, or the checkout in an editable
    install), and this ``conformance`` package, each file named by its place in the checkout
    (``uniopt/torch/x.py`` as ``adapters/torch/x.py``). Equal to the checkout's fingerprint exactly
    when the code that ran is the checkout's, so a job run by a copy installed before an edit is
    recognised as another version."""
    import importlib.util

    import uniopt

    files = [(f"src/uniopt/{rel}", path) for rel, path in _package_files(Path(uniopt.__file__).parent)]
    files = [f for f in files if f[0].split("/")[2] not in ADAPTERS]  # installed adapters nest here
    for name in ADAPTERS:
        spec = importlib.util.find_spec(f"uniopt.{name}")
        if spec is not None and spec.submodule_search_locations:
            folder = Path(next(iter(spec.submodule_search_locations)))
            files += [(f"adapters/{name}/{rel}", path) for rel, path in _package_files(folder)]
    files += [(f"conformance/{rel}", path) for rel, path in _package_files(Path(__file__).parent)]
    return _digest(files)


def _package_files(folder: Path) -> list[tuple[str, Path]]:
    return [(path.relative_to(folder).as_posix(), path) for path in folder.rglob("*.py") if path.is_file()]
