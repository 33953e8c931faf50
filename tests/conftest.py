"""Fixtures: the array namespaces the core must run on unchanged (both are test dependencies)."""

from __future__ import annotations

import pytest
from namespaces import NAMESPACES


@pytest.fixture(params=NAMESPACES)
def xp_name(request) -> str:
    return request.param
