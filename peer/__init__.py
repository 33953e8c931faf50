"""The frameworks' own optimizer test suites, run against uniopt (``nox -s peer``).

Each framework has one pytest plugin module here (:mod:`peer.keras`, :mod:`peer.optax`,
:mod:`peer.torch`) that substitutes uniopt's optimizers, with that framework's ``convention``, for the
framework's own, in every namespace its tests read them from, and leaves the test bodies unchanged.
Each plugin declares

* ``SUITES``: the test files it runs (from the installed wheel; for torch, the tests torch's own suite
  derives from its OptimizerInfo database, written out in :mod:`peer.torch_optiminfo`);
* ``EXPECTED``: the expected failures, ``fnmatch`` pattern on the test id (after the file name) ->
  a short category reason; each is marked ``xfail(strict=True)``, so one that starts passing fails the
  run until its entry is removed.

:mod:`peer._collect` records every test's outcome; ``python -m peer report`` prints the per-suite
counts (passed / expected failures by reason / failed) and writes ``docs/peer.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from typing import Any

FRAMEWORKS = ("keras", "optax", "torch")
"""Plugin module names, one per framework (each run in its framework's own environment)."""

RUNS = ("keras", "keras-jax", "keras-torch", "optax", "torch")
"""The runs the report reads (``<run>.json``): each framework's, and Keras's tests again on its JAX
and torch backends (``python -m peer run keras --backend jax|torch``)."""

STALE: list[str] = []
"""``EXPECTED`` patterns that matched no collected test in this run (filled by :func:`select_and_mark`)."""


def test_id(nodeid: str) -> str:
    """The part of a pytest node id after the file name (``SGDTest::test_clip_norm``)."""
    return nodeid.split("::", 1)[1] if "::" in nodeid else nodeid


def select_and_mark(
    config: Any,
    items: list[Any],
    expected: Mapping[str, str],
    exercised: Callable[[Any], bool] = lambda item: True,
) -> None:
    """What the plugins' ``pytest_collection_modifyitems`` does: deselect the items ``exercised``
    rejects (tests of optimizers uniopt does not implement), and mark each remaining item whose id
    matches an ``expected`` pattern ``xfail(strict=True)`` with that pattern's reason. Patterns that
    match nothing are kept in :data:`STALE`; the report fails on them."""
    import pytest

    kept, dropped = [], []
    for item in items:
        (kept if exercised(item) else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    used: set[str] = set()
    for item in items:
        name = test_id(item.nodeid)
        for pattern, reason in expected.items():
            if fnmatchcase(name, pattern):
                item.add_marker(pytest.mark.xfail(strict=True, reason=reason))
                used.add(pattern)
                break
    STALE[:] = [pattern for pattern in expected if pattern not in used]
