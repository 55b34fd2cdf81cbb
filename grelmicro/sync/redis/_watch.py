"""Release notifications over Redis pub/sub, for the backend's own client.

Every release by a `RedisSyncBackend` (not on a cluster) publishes the lock
key on one channel per prefix, from the release script itself. A backend
built from a URL that has a waiter (`wait_released`) subscribes to that
channel on one connection of its own pool, shared by all its waiters, and
wakes the waiters of a key when its release is published: a follower takes
over a gracefully released lock one round trip after the release instead of
at its next look.

A backend on a borrowed client (a broker's) does not subscribe: a
subscribed connection takes a connection of the pool for itself, one the
broker does not have; it looks at the lease instead (see
`RedisSyncBackend.wait_released`). Messages are not stored by Redis: a
release published while the connection is down is missed, so a waiter also
wakes when the lease it saw ends, and when the subscription breaks it falls
back to looking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.asyncio import Redis

logger = logging.getLogger("grelmicro.sync")

#: Seconds a read on the subscribed connection waits before looping (a
#: client's socket timeout would end a longer blocking read).
READ_WAIT = 1.0

#: The running readers (the loop keeps only weak references to tasks).
_READERS: set[asyncio.Task[None]] = set()


class WatchBrokenError(Exception):
    """The subscription ended (connection lost): look at the lease instead."""


def release_channel(prefix: str) -> str:
    """The channel releases of keys with `prefix` are published on."""
    return f"{prefix}grelmicro:released"


class ReleaseWatch:
    """One subscription shared by every waiter of one backend, on one loop."""

    def __init__(self, client: Redis, channel: str) -> None:
        self.client = client
        self.channel = channel
        self.loop = asyncio.get_running_loop()
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._ready: asyncio.Future[None] = self.loop.create_future()
        self._reader = self.loop.create_task(
            self._read(), name="grelmicro-redis-release-watch"
        )
        _READERS.add(self._reader)
        self._reader.add_done_callback(_READERS.discard)

    @property
    def broken(self) -> bool:
        """Whether the subscription ended (a new watch is needed)."""
        return self._reader.done()

    async def register(self, key: str) -> asyncio.Future[None]:
        """A future set when `key` is released, once the subscription is live.

        Raises `WatchBrokenError` when the subscription cannot be made.
        """
        await asyncio.shield(self._ready)
        future: asyncio.Future[None] = self.loop.create_future()
        self._waiters.setdefault(key, set()).add(future)
        return future

    def unregister(self, key: str, future: asyncio.Future[None]) -> None:
        """Forget a waiter (woken or not)."""
        waiters = self._waiters.get(key)
        if waiters is not None:
            waiters.discard(future)
            if not waiters:
                del self._waiters[key]
        if not future.done():
            future.cancel()

    async def _read(self) -> None:
        pubsub: Any = self.client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            while True:
                message = await pubsub.get_message(timeout=READ_WAIT)
                if message is None:
                    continue
                kind = message.get("type")
                if kind == "subscribe" and not self._ready.done():
                    self._ready.set_result(None)
                elif kind == "message":
                    data = message.get("data")
                    key = data.decode() if isinstance(data, bytes) else str(data)
                    for future in self._waiters.pop(key, ()):
                        if not future.done():
                            future.set_result(None)
        except asyncio.CancelledError:
            self._fail(WatchBrokenError("the release watch was closed"))
            raise
        except Exception as exc:
            logger.debug("Redis release watch ended: %s", exc, exc_info=True)
            self._fail(WatchBrokenError(f"{type(exc).__name__}: {exc}"))
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def _fail(self, exc: WatchBrokenError) -> None:
        if not self._ready.done():
            self._ready.set_exception(exc)
            self._ready.exception()  # retrieved: no "never retrieved" warning
        waiters, self._waiters = self._waiters, {}
        for futures in waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
                    future.exception()

    async def aclose(self) -> None:
        """End the subscription (waiters fall back to looking at the lease)."""
        if self._reader.get_loop() is asyncio.get_running_loop():
            self._reader.cancel()
            await asyncio.wait([self._reader])
        elif not self._reader.get_loop().is_closed():
            self._reader.get_loop().call_soon_threadsafe(self._reader.cancel)
