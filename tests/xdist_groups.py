"""``--dist loadgroup`` under pytest 9.2: keep each ``xdist_group`` on one worker.

pytest-xdist (3.8.0, the newest release) marks a test's group by appending ``@<group>`` to
``item._nodeid`` on each worker, and the controller sends every test whose node id ends in the same
suffix to one worker. pytest 9.2 derives ``Node.nodeid`` from ``Node._id`` instead, so that
assignment changes nothing: the tests of one group are spread over the workers and a module-scoped
fixture (processes a test starts, a model it trains) runs once on each of them. This hook appends the
same suffix where it is missing, through ``_id``; where xdist's own suffix took (pytest 8, or a later
xdist) it does nothing. tests/conftest.py imports it; tests/test_suite_layout.py runs it on a toy
suite.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not getattr(config.option, "loadgroup", False):  # set on xdist's workers only
        return
    for item in items:
        names = sorted(
            {
                str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                for mark in item.iter_markers("xdist_group")
            }
        )
        suffix = "@" + "_".join(names)
        if not names or item.nodeid.endswith(suffix) or not hasattr(item, "_id"):
            continue
        from _pytest.nodeid import NodeId  # pytest >= 9.2, where ``_id`` exists

        item._id = NodeId.parse(item.nodeid + suffix)
