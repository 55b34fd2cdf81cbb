"""The SyncBackend protocol: four methods make a backend the primitives accept.

A third-party backend with only these methods works with `Lock`, `TaskLock`
and `LeaderElection` (with no fencing tokens). This one keeps its locks in a
dict, so it coordinates one process; a real one would talk to a server that
expires the leases itself.
"""

import time
from types import TracebackType
from typing import Self

import anyio

from grelmicro.sync import Lock


# --8<-- [start:backend]
class DictSyncBackend:
    """Locks in a dict: `name -> (token, expiry on the monotonic clock)`."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[str, float]] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._locks.clear()

    def _holder(self, name: str) -> str | None:
        entry = self._locks.get(name)
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    async def acquire(self, *, name: str, token: str, duration: float) -> bool:
        """Take the lock for `duration` s, or extend it if `token` holds it."""
        if self._holder(name) not in (None, token):
            return False
        self._locks[name] = (token, time.monotonic() + duration)
        return True

    async def release(self, *, name: str, token: str) -> bool:
        """Release only if `token` holds it."""
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
    async with backend:
        lock = Lock("reports", backend=backend)
        async with lock:
            print("held through the custom backend:", await lock.owned())
        print("released:", not await lock.locked())


if __name__ == "__main__":
    anyio.run(main)
