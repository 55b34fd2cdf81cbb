"""Where the backend's client comes from: a URL, a borrowed client, a provider.

A client built from the URL is the backend's own: it belongs to the event
loop it was created on, is replaced (and the old one closed) when the
backend is used from another loop, and is closed when the backend exits. A
borrowed client, or one returned by a provider, is never closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

logger = logging.getLogger("grelmicro.sync")

#: The clients the backend accepts: a single server (or a Sentinel-managed
#: primary from `Sentinel.master_for`), or a Redis Cluster.
RedisClient = Redis | RedisCluster

#: Seconds to open a connection / to wait for an answer, for clients built
#: from a URL: a dead or frozen server fails instead of hanging.
SOCKET_CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 2.0

#: Most connections a client built from a URL opens.
MAX_CONNECTIONS = 8

#: The running "close at loop end" tasks. The event loop keeps only weak
#: references to tasks: without these, a backend dropped without being closed
#: would take its task down with it (and its client's sockets, unclosed).
_GUARDIANS: set[asyncio.Task[None]] = set()


class _Lane:
    """One connection of the backend's own pool, kept for calls sent alone
    (`ClientSource.lane`), on one event loop.

    A guardian task gives the connection back to the pool when the lane is
    released (replaced, or the backend exits) or when its event loop ends.
    """

    __slots__ = ("base", "client", "done", "guardian", "loop")

    def __init__(self, base: Redis) -> None:
        self.base = base
        self.client = base.client()
        self.loop = asyncio.get_running_loop()
        self.done = asyncio.Event()
        self.guardian = self.loop.create_task(
            _release_when(self.done, self.client),
            name="grelmicro-redis-lane-release",
        )
        _GUARDIANS.add(self.guardian)
        self.guardian.add_done_callback(_GUARDIANS.discard)

    def release(self) -> asyncio.Task[None] | None:
        """Give the connection back; the releasing task, when on this loop."""
        if self.guardian.done():
            return None
        loop = self.loop
        if loop is asyncio.get_running_loop():
            self.done.set()
            return self.guardian
        if loop.is_running() and not loop.is_closed():
            loop.call_soon_threadsafe(self.done.set)
        return None


class ClientSource:
    """The backend's client, and the bound on its commands in flight."""

    __slots__ = (
        "_borrowed",
        "_concurrency",
        "_guardian",
        "_lane",
        "_limit",
        "_limit_loop",
        "_owned",
        "_owned_loop",
        "_provider",
        "_url",
    )

    def __init__(
        self,
        *,
        url: str | None = None,
        client: RedisClient | None = None,
        provider: Callable[[], Awaitable[RedisClient]] | None = None,
        concurrency: int | None = None,
    ) -> None:
        self._url = url
        self._borrowed = client
        self._provider = provider
        self._owned: RedisClient | None = None
        self._owned_loop: asyncio.AbstractEventLoop | None = None
        self._guardian: asyncio.Task[None] | None = None
        # Commands in flight at once: a URL client opens at most
        # MAX_CONNECTIONS (many tasks firing together wait for one of a few:
        # each call is ~0.1 ms); a provider's (a broker's) client is used one
        # command at a time. A semaphore costs nothing when uncontended,
        # unlike redis-py's BlockingConnectionPool.
        if concurrency is None and url is not None:
            concurrency = MAX_CONNECTIONS
        self._concurrency = concurrency
        self._limit: asyncio.Semaphore | None = None
        self._limit_loop: asyncio.AbstractEventLoop | None = None
        # The client for calls sent alone: one connection of the same pool,
        # kept (see `lane`).
        self._lane: _Lane | None = None

    @property
    def url(self) -> str | None:
        """The URL the backend builds its own client from."""
        return self._url

    @property
    def borrowed(self) -> RedisClient | None:
        """The client passed in, if any."""
        return self._borrowed

    async def client(self) -> RedisClient:
        """The client to run the next command on."""
        if self._borrowed is not None:
            return self._borrowed
        if self._provider is not None:
            return await self._provider()
        loop = asyncio.get_running_loop()
        if self._owned is None or self._owned_loop is not loop:
            await self._retire()
            # Connections belong to one event loop: a new loop gets a new client.
            assert self._url is not None
            self._owned = await _connect(self._url)
            self._owned_loop = loop
            self._guardian = guardian = loop.create_task(
                self._close_at_loop_end(self._owned),
                name="grelmicro-redis-close-at-loop-end",
            )
            _GUARDIANS.add(guardian)
            guardian.add_done_callback(_GUARDIANS.discard)
        return self._owned

    async def _close_at_loop_end(self, client: RedisClient) -> None:
        """Close `client` when its event loop ends (`asyncio.run` cancels this).

        An event loop's connections cannot be closed once the loop is closed:
        without this, a backend used lazily (never exited) from several
        `asyncio.run`/`anyio.run` calls would leave every earlier loop's
        connections open until garbage collection.
        """
        try:
            await asyncio.Event().wait()
        finally:
            if self._owned is client:
                self._owned = self._owned_loop = None
                self._guardian = None
            with contextlib.suppress(Exception):
                await client.aclose()

    async def client_and_limit(self) -> tuple[RedisClient, asyncio.Semaphore | None]:
        """`client()` and `limit()` in one call (the lock cycle's hot path)."""
        owned = self._owned
        if owned is not None:
            loop = asyncio.get_running_loop()
            if self._owned_loop is loop:
                limit = self._limit
                if limit is not None and self._limit_loop is loop:
                    return owned, limit
        return await self.client(), self.limit()

    def lane(self, client: RedisClient) -> RedisClient:
        """The client for a call sent alone, over `client`'s pool.

        A single-connection client on the same pool (``Redis.client()``): it
        keeps one of the pool's connections, so a call skips the pool's
        per-command checkout (its lock and its connection health check), the
        largest part of redis-py's cost per command. The backend sends such
        calls one at a time (concurrent ones go out in a pipeline, see
        `_batch`), and calls this right before sending one: a lane it
        replaces (a new client, another event loop) has nothing in flight.
        Only for the backend's own client (built from its URL): a borrowed
        client's pool (a broker's) is left as it is, every command checking
        a connection out and back in, so grelmicro holds none of its
        connections between commands (and never blocks a bounded pool).
        A cluster client has no single connection: it is used as is.
        """
        if self._url is None:
            return client
        lane = self._lane
        if (
            lane is not None
            and lane.base is client
            and lane.loop is asyncio.get_running_loop()
        ):
            return lane.client
        if isinstance(client, RedisCluster):
            return client
        self._release_lane()
        self._lane = lane = _Lane(client)
        return lane.client

    def _release_lane(self) -> asyncio.Task[None] | None:
        """Have the current lane's connection given back; its releasing task."""
        lane, self._lane = self._lane, None
        return None if lane is None else lane.release()

    def limit(self) -> asyncio.Semaphore | None:
        """The semaphore bounding commands in flight on this loop (None: no bound)."""
        if self._concurrency is None:
            return None
        loop = asyncio.get_running_loop()
        if self._limit is None or self._limit_loop is not loop:
            self._limit = asyncio.Semaphore(self._concurrency)
            self._limit_loop = loop
        return self._limit

    async def _retire(self) -> None:
        """Close the owned client of another event loop (it cannot serve this one).

        If that loop still runs (in another thread), the client is closed
        there. If it was closed, its connections are closed from here:
        redis-py then closes each socket (its transport cannot call back
        into the dead loop, which is what a failed close reports).
        """
        old, old_loop = self._owned, self._owned_loop
        self._owned = self._owned_loop = self._guardian = None
        if old is None or old_loop is None:
            return
        if old_loop.is_running() and not old_loop.is_closed():
            asyncio.run_coroutine_threadsafe(old.aclose(), old_loop)
            return
        with contextlib.suppress(Exception):
            await old.aclose()

    async def aclose(self) -> None:
        """Close the client built from the URL (a borrowed one stays open)."""
        releasing = self._release_lane()
        if releasing is not None:
            await asyncio.wait([releasing])
        client, self._owned, self._owned_loop = self._owned, None, None
        guardian, self._guardian = self._guardian, None
        self._limit = self._limit_loop = None
        if guardian is not None and not guardian.done():
            guardian_loop = guardian.get_loop()
            if guardian_loop is asyncio.get_running_loop():
                guardian.cancel()
            elif guardian_loop.is_running():
                guardian_loop.call_soon_threadsafe(guardian.cancel)
        if client is not None:
            await client.aclose()

    def describe(self) -> str:
        """What the client is, for repr()."""
        if self._url is not None:
            from grelmicro.sync.redis._config import redact

            return f"url={redact(self._url)!r}"
        if self._borrowed is not None:
            return f"client={self._borrowed!r}"
        return "client=<provider>"


async def _release_when(done: asyncio.Event, lane: Redis) -> None:
    """Give `lane`'s connection back (its pool stays open) once `done` is set.

    Also when the event loop ends (``asyncio.run`` cancels this task).
    """
    try:
        await done.wait()
    finally:
        with contextlib.suppress(Exception):
            await lane.aclose(close_connection_pool=False)


async def _connect(url: str) -> RedisClient:
    """A client for `url`: a `RedisCluster` when the server is a cluster node.

    One round trip (``INFO cluster``) tells; it is made once per client (per
    event loop). A failure raises: the next operation asks again.
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": SOCKET_CONNECT_TIMEOUT,
        "socket_timeout": SOCKET_TIMEOUT,
        "retry": Retry(
            ExponentialWithJitterBackoff(base=0.01, cap=0.1),
            retries=1,
            supported_errors=(RedisConnectionError,),
        ),
    }
    client = Redis.from_url(url, **options)
    try:
        info: Any = await client.info("cluster")
        cluster = bool(int(info.get("cluster_enabled", 0)))
    except ResponseError:
        # INFO refused (an ACL without it, a renamed command): not a cluster
        # as far as the backend can tell; a cluster user passes a client.
        return client
    except BaseException:
        await client.aclose()
        raise
    if not cluster:
        return client
    await client.aclose()
    return RedisCluster.from_url(
        url,
        socket_connect_timeout=SOCKET_CONNECT_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
    )
