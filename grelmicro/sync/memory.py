"""In-process synchronization backend, for tests and single-process services."""

from __future__ import annotations

import time
from typing import Annotated

import anyio
from typing_extensions import Doc

from grelmicro.sync._backends import RegisteredBackend, register_backend
from grelmicro.sync._fire_args import check_after
from grelmicro.sync.abc import FIRE_BEHIND, FencedAcquire, FireRetake

#: Seconds a completed leased fire is remembered, past its lease, so that a
#: worker watching it learns it completed (see `retake_fire`).
FIRE_DONE_RETENTION = 60.0


class _Hold:
    """One held lock: its token, its expiry (monotonic) and its fencing token."""

    __slots__ = ("expires", "fence", "token")

    def __init__(self, token: str, expires: float, fence: int) -> None:
        self.token = token
        self.expires = expires
        self.fence = fence


class MemorySyncBackend(RegisteredBackend):
    """A `SyncBackend` that keeps locks in this process's memory.

    It coordinates the tasks and threads of one process only. Expiry uses the
    process's monotonic clock. It implements every optional capability of
    `grelmicro.sync.abc`: fencing tokens (a counter per name, for the life of
    the backend), cron fire claims, remaining-time acquire and release watch.
    """

    def __init__(
        self,
        *,
        auto_register: Annotated[
            bool,
            Doc("Make this backend the default for primitives given no backend."),
        ] = True,
    ) -> None:
        self._locks: dict[str, _Hold] = {}
        self._fences: dict[str, int] = {}
        self._release_events: dict[str, anyio.Event] = {}
        self._fires: dict[str, int] = {}
        self._auto_register = auto_register
        if auto_register:
            register_backend(self)

    async def aclose(self) -> None:
        """Forget every lock (called when the backend exits).

        Fencing counters and claimed fires are kept: tokens never go back.
        """
        self._locks.clear()
        for event in self._release_events.values():
            event.set()
        self._release_events.clear()

    def _hold(self, name: str) -> _Hold | None:
        hold = self._locks.get(name)
        if hold is None:
            return None
        if hold.expires <= time.monotonic():
            del self._locks[name]
            self._freed(name)
            return None
        return hold

    def _freed(self, name: str) -> None:
        event = self._release_events.pop(name, None)
        if event is not None:
            event.set()

    def _next_fence(self, name: str) -> int:
        fence = self._fences.get(name, 0) + 1
        self._fences[name] = fence
        return fence

    def _remaining(self, name: str) -> float:
        hold = self._locks.get(name)
        return 0.0 if hold is None else max(0.0, hold.expires - time.monotonic())

    # SyncBackend ---------------------------------------------------------------

    async def acquire(self, *, name: str, token: str, duration: float) -> bool:
        """Take or extend the lock for `duration` seconds."""
        return self._acquire(name, token, duration).acquired

    def _acquire(self, name: str, token: str, duration: float) -> FencedAcquire:
        hold = self._hold(name)
        expires = time.monotonic() + duration
        if hold is None:
            fence = self._next_fence(name)
            self._locks[name] = _Hold(token, expires, fence)
            return FencedAcquire(fence, 0.0)
        if hold.token != token:
            return FencedAcquire(None, max(hold.expires - time.monotonic(), 1e-6))
        hold.expires = expires
        return FencedAcquire(hold.fence, 0.0)

    async def release(self, *, name: str, token: str) -> bool:
        """Release the lock if `token` holds it."""
        hold = self._hold(name)
        if hold is None or hold.token != token:
            return False
        del self._locks[name]
        self._freed(name)
        return True

    async def locked(self, *, name: str) -> bool:
        """Whether any token holds the lock."""
        return self._hold(name) is not None

    async def owned(self, *, name: str, token: str) -> bool:
        """Whether `token` holds the lock."""
        hold = self._hold(name)
        return hold is not None and hold.token == token

    # Capabilities ----------------------------------------------------------------

    # Subclasses that override `acquire` (to delay or fail it, in tests) see
    # the capabilities go through their override too.

    async def acquire_fenced(
        self, *, name: str, token: str, duration: float
    ) -> FencedAcquire:
        """Take or extend the lock; the fencing token of the holding."""
        if await self.acquire(name=name, token=token, duration=duration):
            hold = self._locks.get(name)
            fence = hold.fence if hold is not None and hold.token == token else None
            return FencedAcquire(fence, 0.0)
        return FencedAcquire(None, max(self._remaining(name), 1e-6))

    async def acquire_or_remaining(
        self, *, name: str, token: str, duration: float
    ) -> float:
        """Like `acquire`; returns 0.0 when acquired, else the holder's lease left."""
        if await self.acquire(name=name, token=token, duration=duration):
            return 0.0
        return max(self._remaining(name), 1e-6)

    async def wait_released(self, *, name: str) -> None:
        """Return once the lock is free: released by its holder, or expired."""
        hold = self._hold(name)
        if hold is None:
            return
        event = self._release_events.get(name)
        if event is None:
            event = self._release_events[name] = anyio.Event()
        with anyio.move_on_after(max(hold.expires - time.monotonic(), 0.0)):
            await event.wait()
        # Expired while waiting: forget the event (and wake the others).
        self._hold(name)

    # Cron fire claims ---------------------------------------------------------------

    def _fire_key(self, name: str, fire: int) -> str:
        return f"{name}@{fire}"

    async def last_fire(self, *, name: str) -> int | None:
        """The latest fire claimed for `name`."""
        return self._fires.get(name)

    async def claim_fire(
        self,
        *,
        name: str,
        fire: int,
        token: str,
        lease: float | None,
        after: int | None = None,
    ) -> int | None:
        """Claim `fire` when it is later than every fire claimed for `name`
        (and, with `after`, when `after` was claimed: else `FIRE_BEHIND`)."""
        check_after(after, fire)
        last = self._fires.get(name)
        if last is not None and fire <= last:
            return None
        if last is not None and after is not None and last < after:
            return FIRE_BEHIND
        self._fires[name] = fire
        fence = self._next_fence(name)
        if lease is not None:
            key = self._fire_key(name, fire)
            self._locks[key] = _Hold(token, time.monotonic() + lease, fence)
        return fence

    async def keep_fire(
        self, *, name: str, fire: int, token: str, lease: float
    ) -> bool:
        """Extend the lease on `fire` held by `token`."""
        hold = self._hold(self._fire_key(name, fire))
        if hold is None or hold.token != token:
            return False
        hold.expires = time.monotonic() + lease
        return True

    async def finish_fire(self, *, name: str, fire: int, token: str) -> bool:
        """Mark the leased fire completed (remembered for a while, then dropped)."""
        hold = self._hold(self._fire_key(name, fire))
        if hold is None or hold.token != token:
            return False
        hold.token = ""  # the completed marker: no claimant has an empty token
        hold.expires = time.monotonic() + FIRE_DONE_RETENTION
        return True

    async def retake_fire(
        self, *, name: str, fire: int, token: str, lease: float
    ) -> FireRetake:
        """Take over a leased fire whose lease lapsed unfinished."""
        key = self._fire_key(name, fire)
        hold = self._hold(key)
        if hold is not None:
            return FireRetake(None, done=hold.token == "")
        last = self._fires.get(name)
        if last is None or fire > last:
            return FireRetake(None, done=False)  # never claimed: not ours to run
        fence = self._next_fence(name)
        self._locks[key] = _Hold(token, time.monotonic() + lease, fence)
        return FireRetake(fence, done=False)


__all__ = ["FIRE_DONE_RETENTION", "MemorySyncBackend"]
