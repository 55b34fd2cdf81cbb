"""Shared fixtures: the anyio backend (asyncio) for every async test."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Run async tests on asyncio (the only backend grelmicro supports)."""
    return "asyncio"
