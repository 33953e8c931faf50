"""What nox's parallel test runs rely on (noxfile.TEST_WORKERS: pytest-xdist, ``--dist loadgroup``):
a module with a module- or session-scoped fixture is one ``xdist_group`` named after it, so one
worker runs it whole and its fixture (processes it starts, a model it trains) runs once."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SHARED_FIXTURE = re.compile(r"""@pytest\.fixture\([^)]*scope=["'](module|session|package)["']""")


def test_every_module_with_a_shared_fixture_is_one_xdist_group():
    modules = [p for p in sorted(TESTS.rglob("test_*.py")) if SHARED_FIXTURE.search(p.read_text())]
    assert modules, "no module with a module-scoped fixture found: the pattern is stale"
    for path in modules:
        assert f'pytestmark = pytest.mark.xdist_group("{path.stem}")' in path.read_text(), path
