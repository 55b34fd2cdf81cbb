"""In-process synchronization backend, for tests and single-process services."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import anyio

from grelmicro.sync._backends import RegisteredBackend, register_backend

if TYPE_CHECKING:
    from typing_extensions import Doc


class MemorySyncBackend(RegisteredBackend):
    """A `SyncBackend` that keeps locks in this process's memory.

    It coordinates the tasks and threads of one process only. Expiry uses the
    process's monotonic clock.
    """

    def __init__(
        self,
        *,
        auto_register: Annotated[
            bool,
            Doc("Make this backend the default for primitives given no backend."),
        ] = True,
    ) -> None:
        self._locks: dict[str, tuple[str, float]] = {}
        self._release_events: dict[str, anyio.Event] = {}
        self._auto_register = auto_register
        if auto_register:
            register_backend(self)

    async def aclose(self) -> None:
        """Forget every lock (called when the backend exits)."""
        self._locks.clear()

    def _holder(self, name: str) -> str | None:
        entry = self._locks.get(name)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._locks[name]
            return None
        return entry[0]

    def _remaining(self, name: str) -> float:
        entry = self._locks.get(name)
        return 0.0 if entry is None else max(0.0, entry[1] - time.monotonic())

    async def acquire(self, *, name: str, token: str, duration: float) -> bool:
        """Take or extend the lock for `duration` seconds."""
        holder = self._holder(name)
        if holder is not None and holder != token:
            return False
        self._locks[name] = (token, time.monotonic() + duration)
        return True

    async def acquire_or_remaining(
        self, *, name: str, token: str, duration: float
    ) -> float:
        """Like `acquire`; returns 0.0 when acquired, else the holder's lease left."""
        if await self.acquire(name=name, token=token, duration=duration):
            return 0.0
        return max(self._remaining(name), 1e-6)

    async def release(self, *, name: str, token: str) -> bool:
        """Release the lock if `token` holds it."""
        if self._holder(name) != token:
            return False
        del self._locks[name]
        event = self._release_events.pop(name, None)
        if event is not None:
            event.set()
        return True

    async def wait_released(self, *, name: str) -> None:
        """Return once the lock is free: released by its holder, or expired."""
        if self._holder(name) is None:
            return
        event = self._release_events.get(name)
        if event is None:
            event = self._release_events[name] = anyio.Event()
        with anyio.move_on_after(self._remaining(name)):
            await event.wait()

    async def locked(self, *, name: str) -> bool:
        """Whether any token holds the lock."""
        return self._holder(name) is not None

    async def owned(self, *, name: str, token: str) -> bool:
        """Whether `token` holds the lock."""
        return self._holder(name) == token
