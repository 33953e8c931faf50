"""What nox's parallel test runs rely on (noxfile.TEST_WORKERS: pytest-xdist, ``--dist loadgroup``):
a module with a module- or session-scoped fixture is one ``xdist_group`` named after it, so one
worker runs it whole and its fixture (processes it starts, a model it trains) runs once."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SHARED_FIXTURE = re.compile(r"""@pytest\.fixture\([^)]*scope=["'](module|session|package)["']""")


def test_every_module_with_a_shared_fixture_is_one_xdist_group():
    modules = [p for p in sorted(TESTS.rglob("test_*.py")) if SHARED_FIXTURE.search(p.read_text())]
    assert modules, "no module with a module-scoped fixture found: the pattern is stale"
    for path in modules:
        assert f'pytestmark = pytest.mark.xdist_group("{path.stem}")' in path.read_text(), path


def test_loadgroup_keeps_a_group_on_one_worker(tmp_path):
    """Six grouped and six ungrouped tests over two workers: ``load`` alone would split both sets
    between the workers, ``loadgroup`` (with tests/xdist_groups.py under pytest 9.2) runs the
    grouped six on one."""
    pytest.importorskip("xdist")
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
        "from xdist_groups import pytest_collection_modifyitems  # noqa: F401\n"
    )
    body = (
        "import os, pathlib, pytest\n"
        "{mark}"
        "@pytest.mark.parametrize('i', range(6))\n"
        "def test_{name}(i):\n"
        "    with open(pathlib.Path(__file__).with_suffix('.log'), 'a') as f:\n"
        "        f.write(os.environ['PYTEST_XDIST_WORKER'] + '\\n')\n"
    )
    mark = "pytestmark = pytest.mark.xdist_group('grp')\n"
    (tmp_path / "test_grouped.py").write_text(body.format(mark=mark, name="grouped"))
    (tmp_path / "test_free.py").write_text(body.format(mark="", name="free"))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    command += ["-n", "2", "--dist", "loadgroup", str(tmp_path)]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    grouped = (tmp_path / "test_grouped.log").read_text().split()
    free = (tmp_path / "test_free.log").read_text().split()
    assert len(grouped) == len(free) == 6
    assert len(set(grouped)) == 1, grouped
    assert set(grouped + free) == {"gw0", "gw1"}, grouped + free  # both workers did run tests
