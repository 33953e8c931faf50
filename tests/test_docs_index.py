"""The docs index lists every optimizer of the table, each with its own page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from uniopt.registry import TABLE

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("info", TABLE, ids=lambda info: info.name)
def test_every_optimizer_has_a_page_and_an_index_row(info):
    module = info.spec.__module__.rsplit(".", 1)[-1]
    page = DOCS / "optimizers" / f"{module}.md"
    assert page.is_file(), f"{info.name}: no page {page.relative_to(DOCS.parent)}"
    assert info.name in page.read_text(), f"{page.name} never names {info.name}"
    index = (DOCS / "index.md").read_text()
    row = re.search(rf"^\| `uniopt\.{info.name}`.*\(optimizers/{module}\.md\) \|$", index, re.MULTILINE)
    assert row, f"docs/index.md has no row linking uniopt.{info.name} to optimizers/{module}.md"
