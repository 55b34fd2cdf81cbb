"""Unit-test fixtures: isolate the default-backend registry between tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from grelmicro.sync import _backends
from grelmicro.sync.memory import MemorySyncBackend


@pytest.fixture(autouse=True)
def _isolated_registry() -> Iterator[None]:
    saved = list(_backends._loaded)
    _backends._loaded.clear()
    yield
    _backends._loaded[:] = saved


class CountingBackend(MemorySyncBackend):
    """A real memory backend that records every call made to it."""

    def __init__(self, *, auto_register: bool = False) -> None:
        super().__init__(auto_register=auto_register)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def acquire(self, *, name: str, token: str, duration: float) -> bool:
        self.calls.append(("acquire", {"name": name, "token": token}))
        return await super().acquire(name=name, token=token, duration=duration)

    async def release(self, *, name: str, token: str) -> bool:
        self.calls.append(("release", {"name": name, "token": token}))
        return await super().release(name=name, token=token)

    async def locked(self, *, name: str) -> bool:
        self.calls.append(("locked", {"name": name}))
        return await super().locked(name=name)

    async def owned(self, *, name: str, token: str) -> bool:
        self.calls.append(("owned", {"name": name, "token": token}))
        return await super().owned(name=name, token=token)

    def names(self) -> set[str]:
        return {kwargs["name"] for _, kwargs in self.calls}


class FailingBackend(MemorySyncBackend):
    """A backend whose calls fail while `failing` is set (a driver error)."""

    def __init__(self) -> None:
        super().__init__(auto_register=False)
        self.failing = False

    def _check(self) -> None:
        if self.failing:
            msg = "connection refused"
            raise ConnectionError(msg)

    async def acquire(self, *, name: str, token: str, duration: float) -> bool:
        self._check()
        return await super().acquire(name=name, token=token, duration=duration)

    async def release(self, *, name: str, token: str) -> bool:
        self._check()
        return await super().release(name=name, token=token)

    async def locked(self, *, name: str) -> bool:
        self._check()
        return await super().locked(name=name)

    async def owned(self, *, name: str, token: str) -> bool:
        self._check()
        return await super().owned(name=name, token=token)


@pytest.fixture
def counting_backend() -> CountingBackend:
    return CountingBackend()


@pytest.fixture
def failing_backend() -> FailingBackend:
    return FailingBackend()
