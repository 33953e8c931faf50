"""Which version of the code produced a trajectory file: a digest of the sources that shape its numbers.

``source_fingerprint()`` is the sha256 over the sorted paths (relative to the repository root, the
folder above this package) and the contents of every ``*.py`` under ``src/uniopt``, ``adapters`` and
``conformance``. ``run`` records it in each ``<backend>@<mode>.json``; ``compare`` leaves out, and
names, the files whose digest is not this checkout's. Standard library only: the noxfile loads this
file by its path to decide whether a reference must be rerun.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["ROOT", "SOURCES", "source_files", "source_fingerprint"]

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
    digest = hashlib.sha256()
    for path in source_files(root):
        data = path.read_bytes()
        digest.update(f"{path.relative_to(root).as_posix()}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()
