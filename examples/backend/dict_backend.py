"""A third-party synchronization backend in a few lines: the four methods only.

grelmicro's primitives need nothing more than `grelmicro.sync.abc.SyncBackend`:
`acquire` (take or extend), `release`, `locked` and `owned`, all keyword-only,
each answering with a bool, plus `async with` to open and close. This one
keeps locks in a dict with monotonic expiry, so it coordinates one process
only; a real backend would talk to a server that enforces the expiry itself.

Optional capabilities (fencing tokens, cron fire claims, remaining-time
acquire, release watch, name checks) are separate small protocols in
`grelmicro.sync.abc`: a backend without them keeps working (fencing tokens
are then None and waiters poll). It passes grelmicro's conformance suite
(tests/integration/test_third_party_backend.py).

    python examples/backend/dict_backend.py
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Self

import anyio

from grelmicro.sync import Lock
from grelmicro.sync.abc import SyncBackend


# --8<-- [start:backend]
class DictSyncBackend:
    """Locks in a dict: `{name: (token, monotonic expiry)}`."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[str, float]] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._locks.clear()

    def _holder(self, name: str) -> str | None:
        entry = self._locks.get(name)
        if entry is None or entry[1] <= time.monotonic():
            self._locks.pop(name, None)
            return None
        return entry[0]

    async def acquire(self, *, name: str, token: str, duration: float) -> bool:
        holder = self._holder(name)
        if holder is not None and holder != token:
            return False
        self._locks[name] = (token, time.monotonic() + duration)
        return True

    async def release(self, *, name: str, token: str) -> bool:
        if self._holder(name) != token:
            return False
        del self._locks[name]
        return True

    async def locked(self, *, name: str) -> bool:
        return self._holder(name) is not None

    async def owned(self, *, name: str, token: str) -> bool:
        return self._holder(name) == token


# --8<-- [end:backend]


async def main() -> None:
    backend = DictSyncBackend()
    assert isinstance(backend, SyncBackend)  # the protocol is runtime-checkable
    lock = Lock("report", backend=backend)
    async with backend, lock:
        print("held:", await lock.owned(), "fencing token:", lock.fencing_token)
    print("released:", not await lock.locked())


if __name__ == "__main__":
    anyio.run(main)
