"""`RedisSyncBackend`: locks, fencing tokens and cron fire claims in Redis."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, Self

import anyio
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoScriptError

from grelmicro.sync._backends import RegisteredBackend, register_backend
from grelmicro.sync.abc import FencedAcquire
from grelmicro.sync.errors import SyncBackendError, SyncSettingsValidationError
from grelmicro.sync.redis import _scripts as scripts
from grelmicro.sync.redis._batch import Batcher
from grelmicro.sync.redis._config import (
    check_url,
    check_wait_replicas,
    milliseconds,
)
from grelmicro.sync.redis._connection import ClientSource, RedisClient
from grelmicro.sync.redis._errors import (
    ReplicaAcknowledgementMissingError,
    Unacknowledged,
    wrap,
)
from grelmicro.sync.redis._fires import FireClaims
from grelmicro.sync.redis._keys import fence_key
from grelmicro.sync.redis._watch import (
    ReleaseWatch,
    WatchBrokenError,
    release_channel,
)

if TYPE_CHECKING:
    from typing_extensions import Doc

#: Seconds between two looks at a lock in `wait_released` when the backend
#: does not subscribe to releases (a borrowed client, a cluster).
RELEASE_POLL_INTERVAL = 0.25

#: Seconds between two looks at a lock in `wait_released` when subscribed to
#: releases: a safety net for a release missed while reconnecting.
WATCH_LOOK_INTERVAL = 5.0

#: Lock names whose keys a backend remembers (task and lock names: a few).
KEY_CACHE_SIZE = 4096

#: Default seconds to wait for replicas' acknowledgement (`wait_replicas`).
WAIT_TIMEOUT = 1.0


class RedisSyncBackend(FireClaims, RegisteredBackend):
    """A `SyncBackend` storing locks in Redis.

    Give a URL (`redis://`, `rediss://` or `unix://`), or a client, or nothing
    to read the URL from the `REDIS_URL` environment variable. The client may
    be a `redis.asyncio.Redis` (for Sentinel, the one returned by
    `Sentinel.master_for(...)`) or a `redis.asyncio.RedisCluster`: the keys one
    operation touches share a hash slot (see docs/redis-topologies.md). The
    connection is opened lazily on first use, so a backend and its primitives
    can be created at import time. A client built from the URL is closed when
    the backend exits (`async with backend:`) or when its event loop ends; a
    client passed in is borrowed and never closed.

    Each operation is a single round trip (an atomic server-side script), and
    the lock's expiry is enforced by the Redis server (`PX`, in milliseconds,
    rounded up). It implements every optional capability: fencing tokens,
    cron fire claims, remaining-time acquire and release watch. Every Redis
    error is raised as a `RedisSyncBackendError` (a `SyncBackendError`)
    naming the operation and the key.
    """

    def __init__(
        self,
        url: Annotated[
            str | None,
            Doc(
                "The Redis URL (redis://, rediss:// or unix://); REDIS_URL when "
                "neither url nor client is given."
            ),
        ] = None,
        *,
        client: Annotated[
            RedisClient | None,
            Doc(
                "A redis.asyncio.Redis (or RedisCluster) client to borrow, never "
                "closed by the backend."
            ),
        ] = None,
        prefix: Annotated[
            str, Doc("A prefix prepended to every key, e.g. 'myapp:'.")
        ] = "",
        auto_register: Annotated[
            bool,
            Doc("Make this backend the default for primitives given no backend."),
        ] = True,
        wait_replicas: Annotated[
            int,
            Doc(
                "Replicas that must acknowledge every acquisition and cron "
                "claim (Redis WAIT, in the same round trip) before it counts; "
                "0 (the default) does not wait. An acquisition not "
                "acknowledged in time is given back and raises "
                "RedisSyncBackendReplicationError."
            ),
        ] = 0,
        wait_timeout: Annotated[
            float, Doc("Seconds to wait for the replicas' acknowledgement.")
        ] = WAIT_TIMEOUT,
    ) -> None:
        if url is not None and client is not None:
            msg = (
                "RedisSyncBackend takes either url or client, not both: got "
                f"url={url!r} and client={client!r}"
            )
            raise SyncSettingsValidationError(msg)
        _check_prefix(prefix)
        wait_ms = check_wait_replicas(wait_replicas, wait_timeout)
        if client is None:
            if url is None:
                url = os.environ.get("REDIS_URL") or None
            if url is None:
                msg = (
                    "RedisSyncBackend needs a Redis server: pass url= (for example "
                    "'redis://localhost:6379/0'), pass client= (a "
                    "redis.asyncio.Redis), or set the REDIS_URL environment variable"
                )
                raise SyncSettingsValidationError(msg)
            check_url(url)
            source = ClientSource(url=url)
        elif isinstance(client, Redis | RedisCluster):
            source = ClientSource(client=client)
        else:
            msg = (
                "client must be a redis.asyncio.Redis or redis.asyncio.RedisCluster, "
                f"got {client!r}"
            )
            raise SyncSettingsValidationError(msg)
        self._setup(source, prefix, wait_replicas, wait_ms)
        if auto_register:
            register_backend(self)

    def _setup(
        self, source: ClientSource, prefix: str, wait_replicas: int, wait_ms: int
    ) -> None:
        self._source = source
        self._prefix = prefix
        self._wait_replicas = wait_replicas
        self._wait_ms = wait_ms
        self._key_cache: dict[str, tuple[str, str]] = {}
        self._batch = Batcher()
        self._channel = release_channel(prefix)
        self._watch: ReleaseWatch | None = None

    @classmethod
    def from_client_provider(
        cls,
        provider: Annotated[
            Callable[[], Awaitable[RedisClient]],
            Doc("An async callable returning the connected client to use."),
        ],
        *,
        prefix: Annotated[str, Doc("A prefix prepended to every key.")] = "",
        auto_register: Annotated[
            bool,
            Doc("Make this backend the default for primitives given no backend."),
        ] = False,
        concurrency: Annotated[
            int | None,
            Doc(
                "Most commands the backend has in flight at once on the "
                "provider's client (None: no bound). 1 keeps the backend on at "
                "most one of the client's pooled connections."
            ),
        ] = None,
        wait_replicas: Annotated[
            int, Doc("As for the constructor: replicas to wait for.")
        ] = 0,
        wait_timeout: Annotated[
            float, Doc("Seconds to wait for the replicas' acknowledgement.")
        ] = WAIT_TIMEOUT,
    ) -> Self:
        """Build a backend that gets its client from `provider` (for integrations).

        The provider is awaited before every operation (so it must be cheap,
        e.g. an idempotent `connect()` that returns the current client), which
        lets the backend be created before the connection exists. The client
        it returns is borrowed: the backend never closes it.
        """
        if not callable(provider):
            msg = f"provider must be an async callable, got {provider!r}"
            raise SyncSettingsValidationError(msg)
        _check_prefix(prefix)
        if concurrency is not None and (
            isinstance(concurrency, bool)
            or not isinstance(concurrency, int)
            or concurrency < 1
        ):
            msg = f"concurrency must be an int >= 1 or None, got {concurrency!r}"
            raise SyncSettingsValidationError(msg)
        wait_ms = check_wait_replicas(wait_replicas, wait_timeout)
        backend = cls.__new__(cls)
        source = ClientSource(provider=provider, concurrency=concurrency)
        backend._setup(source, prefix, wait_replicas, wait_ms)
        if auto_register:
            register_backend(backend)
        return backend

    @property
    def prefix(self) -> str:
        """The prefix prepended to every key."""
        return self._prefix

    @property
    def wait_replicas(self) -> int:
        """Replicas that must acknowledge each acquisition (0: none)."""
        return self._wait_replicas

    def __repr__(self) -> str:
        wait = f", wait_replicas={self._wait_replicas}" if self._wait_replicas else ""
        return (
            f"RedisSyncBackend({self._source.describe()}, "
            f"prefix={self._prefix!r}{wait})"
        )

    # Lifecycle ---------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the client the backend built from its URL (a borrowed one stays open).

        The backend stays usable: the next operation opens a new connection.
        """
        watch, self._watch = self._watch, None
        if watch is not None:
            await watch.aclose()
        try:
            await self._source.aclose()
        except Exception as exc:
            raise wrap("close", "", exc) from exc

    # Running commands --------------------------------------------------------

    async def _call(
        self, operation: str, name: str, send: Callable[[RedisClient], Awaitable[Any]]
    ) -> Any:
        """Run `send(client)` under the concurrency bound, wrapping every error."""
        try:
            client = await self._source.client()
            limit = self._source.limit()
            if limit is None:
                return await send(client)
            async with limit:
                return await send(client)
        except (SyncBackendError, Unacknowledged):
            raise
        except Exception as exc:
            raise wrap(operation, name, exc) from exc

    async def _eval(
        self,
        operation: str,
        name: str,
        script: scripts.Script,
        keys: tuple[str, ...],
        *args: str | int,
        replicated: bool = False,
    ) -> int:
        """Run `script`; with `replicated` and `wait_replicas`, WAIT in the same trip.

        A missing acknowledgement raises `Unacknowledged` for the caller to
        give the write back. The common path (no WAIT) is written out inline:
        it is the lock cycle's hot path.
        """
        if replicated and self._wait_replicas:
            answer: int = await self._call(
                operation,
                name,
                lambda client: self._eval_and_wait(client, script, keys, args),
            )
            return answer
        try:
            client, limit = await self._source.client_and_limit()
            loop = asyncio.get_running_loop()
            batch = self._batch
            if not batch.idle(loop) and not isinstance(client, RedisCluster):
                # Another call is in flight: join this turn's pipeline.
                return int(
                    await batch.submit(
                        loop, self._source.client_and_limit, script, keys, args
                    )
                )
            # Sent alone, on the lane (nothing awaited since the idle check).
            batch.enter()
            try:
                client = self._source.lane(client)
                if limit is None:
                    return int(await _evalsha(client, script, keys, args))
                async with limit:
                    return int(await _evalsha(client, script, keys, args))
            finally:
                batch.leave()
        except SyncBackendError:
            raise
        except Exception as exc:
            raise wrap(operation, name, exc) from exc

    async def _eval_and_wait(
        self,
        client: RedisClient,
        script: scripts.Script,
        keys: tuple[str, ...],
        args: tuple[str | int, ...],
    ) -> int:
        """EVALSHA then WAIT on the same connection (one pipeline, one round trip).

        Raises `Unacknowledged` (carrying the script's answer) when fewer than
        `wait_replicas` replicas acknowledged the write in `wait_timeout`.
        """
        wait = ("WAIT", self._wait_replicas, self._wait_ms)
        for use_sha in (True, False):
            pipe = client.pipeline(transaction=False)
            call = (("EVALSHA", script.sha) if use_sha else ("EVAL", script.source)) + (
                script.keys,
                *keys,
                *args,
            )
            if isinstance(client, RedisCluster):
                # Both on the node serving the keys' slot: WAIT counts the
                # replicas of the node the script ran on.
                node = client.get_node_from_key(keys[0])
                pipe.execute_command(*call, target_nodes=node)
                pipe.execute_command(*wait, target_nodes=node)
            else:
                pipe.execute_command(*call)
                pipe.execute_command(*wait)
            result, acks = await pipe.execute(raise_on_error=False)
            if use_sha and isinstance(result, NoScriptError):
                continue
            if isinstance(result, BaseException):
                raise result
            if isinstance(acks, BaseException):
                raise acks
            # The replicated scripts answer > 0 exactly when they wrote.
            if int(result) > 0 and int(acks) < self._wait_replicas:
                raise Unacknowledged(int(result), int(acks))
            return int(result)
        raise AssertionError  # pragma: no cover - the loop always returns

    def _keys(self, name: str) -> tuple[str, str]:
        """The lock key of `name` and its fencing hash (cached: a hot path)."""
        keys = self._key_cache.get(name)
        if keys is None:
            key = self._prefix + name
            keys = (key, fence_key(key, self._prefix))
            if len(self._key_cache) < KEY_CACHE_SIZE:
                self._key_cache[name] = keys
        return keys

    async def _acquire(
        self, operation: str, name: str, token: str, duration: float
    ) -> int:
        """The ACQUIRE script's answer: a fence (> 0), 0 or -(ms left)."""
        ms = milliseconds(duration)
        try:
            return await self._eval(
                operation,
                name,
                scripts.ACQUIRE_SCRIPT,
                self._keys(name),
                token,
                ms,
                replicated=True,
            )
        except Unacknowledged as exc:
            await self._give_back(exc, operation, name, token)
            raise  # pragma: no cover - _give_back raises

    async def _give_back(
        self, exc: Unacknowledged, operation: str, name: str, token: str
    ) -> None:
        """An unacknowledged acquisition: release it (best effort), then raise."""
        if exc.answer > 0:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(SyncBackendError):
                    await self.release(name=name, token=token)
        cause = ReplicaAcknowledgementMissingError(
            f"{exc.acks} of wait_replicas={self._wait_replicas} replicas "
            f"acknowledged the write within {self._wait_ms} ms"
        )
        raise wrap(operation, name, cause) from None

    # SyncBackend -------------------------------------------------------------

    async def acquire(
        self,
        *,
        name: Annotated[str, Doc("The lock key.")],
        token: Annotated[str, Doc("The owner's token.")],
        duration: Annotated[float, Doc("The lease in seconds.")],
    ) -> bool:
        """Take the lock for `duration` seconds, or extend it if `token` holds it.

        Returns False when another token holds the lock. A fresh acquisition
        consumes a fencing token (see `acquire_fenced`).
        """
        return await self._acquire("acquire", name, token, duration) > 0

    async def release(
        self,
        *,
        name: Annotated[str, Doc("The lock key.")],
        token: Annotated[str, Doc("The owner's token.")],
    ) -> bool:
        """Release the lock if `token` holds it; False otherwise."""
        key = self._prefix + name
        return (
            await self._eval(
                "release", name, scripts.RELEASE_SCRIPT, (key,), token, self._channel
            )
            == 1
        )

    async def locked(self, *, name: Annotated[str, Doc("The lock key.")]) -> bool:
        """Whether any token holds the lock."""
        key = self._prefix + name
        count = await self._call("locked", name, lambda client: client.exists(key))
        return int(count) > 0

    async def owned(
        self,
        *,
        name: Annotated[str, Doc("The lock key.")],
        token: Annotated[str, Doc("The owner's token.")],
    ) -> bool:
        """Whether `token` holds the lock."""
        key = self._prefix + name
        return await self._eval("owned", name, scripts.OWNED_SCRIPT, (key,), token) == 1

    # Capabilities --------------------------------------------------------------

    async def acquire_or_remaining(
        self,
        *,
        name: Annotated[str, Doc("The lock key.")],
        token: Annotated[str, Doc("The owner's token.")],
        duration: Annotated[float, Doc("The lease in seconds.")],
    ) -> float:
        """Like `acquire`, in one round trip: 0.0 when acquired or extended.

        Otherwise the seconds left on the holder's lease (> 0; `math.inf` when
        the key has no expiry).
        """
        answer = await self._acquire("acquire_or_remaining", name, token, duration)
        return _remaining(answer)

    async def acquire_fenced(
        self,
        *,
        name: Annotated[str, Doc("The lock key.")],
        token: Annotated[str, Doc("The owner's token.")],
        duration: Annotated[float, Doc("The lease in seconds.")],
    ) -> FencedAcquire:
        """Take or extend the lock, in one round trip; the fencing token of the holding.

        A fresh acquisition increments the name's persistent counter (in the
        same script); an extension answers the current holding's token.
        """
        answer = await self._acquire("acquire_fenced", name, token, duration)
        if answer > 0:
            return FencedAcquire(answer, 0.0)
        return FencedAcquire(None, _remaining(answer))

    async def wait_released(
        self, *, name: Annotated[str, Doc("The lock key.")]
    ) -> None:
        """Return once the lock is seen free (released, deleted or expired).

        A backend built from a URL (not on a cluster) subscribes to its
        prefix's release channel (one connection of its own pool, shared by
        all its waiters): a release by any `RedisSyncBackend` wakes it one
        round trip later, and the end of the lease it saw wakes it too.
        Otherwise (a borrowed client, a cluster, a broken subscription) it
        looks at the lock's lease every `RELEASE_POLL_INTERVAL` seconds
        (first after one interval) and wakes right when the lease ends.
        """
        key = self._prefix + name
        future: asyncio.Future[None] | None = None
        watch = await self._release_watch(name)
        if watch is not None:
            try:
                future = await watch.register(key)
            except WatchBrokenError:
                future = None
        if watch is None or future is None:
            await self._poll_released(name, key)
            return
        try:
            while True:
                left = await self._pttl(name, key)
                if left == -2:  # no key: released or expired
                    return
                # Also look again now and then: a release published while
                # the subscribed connection was reconnecting is not stored.
                # PTTL answers 0 in the lease's last millisecond: wake at
                # its end, not at the next look. -1: no expiry.
                wait = WATCH_LOOK_INTERVAL
                if left >= 0:
                    wait = min(wait, max(left, 1) / 1000)
                done, _ = await asyncio.wait({future}, timeout=wait)
                if done:
                    if future.exception() is None:
                        return
                    break  # the subscription broke: look at the lease
                # The lease seen has ended (or was extended), or it is time
                # to look again.
        finally:
            watch.unregister(key, future)
        await self._poll_released(name, key)

    async def _pttl(self, name: str, key: str) -> int:
        return int(await self._call("wait_released", name, lambda c: c.pttl(key)))

    async def _poll_released(self, name: str, key: str) -> None:
        while True:
            await anyio.sleep(RELEASE_POLL_INTERVAL)
            left = await self._pttl(name, key)
            if left == -2:  # no key: released or expired
                return
            if 0 <= left < RELEASE_POLL_INTERVAL * 1000:
                await anyio.sleep(max(left, 1) / 1000)
                if not await self.locked(name=name):
                    return

    async def _release_watch(self, name: str) -> ReleaseWatch | None:
        """The subscription for this loop, for a backend built from a URL."""
        if self._source.url is None:
            return None
        try:
            client = await self._source.client()
        except Exception as exc:
            raise wrap("wait_released", name, exc) from exc
        if not isinstance(client, Redis):
            return None  # a cluster: no subscription
        watch = self._watch
        loop = asyncio.get_running_loop()
        if (
            watch is None
            or watch.broken
            or watch.client is not client
            or (watch.loop is not loop)
        ):
            self._watch = watch = ReleaseWatch(client, self._channel)
        return watch


async def _evalsha(
    client: RedisClient,
    script: scripts.Script,
    keys: tuple[str, ...],
    args: tuple[str | int, ...],
) -> Any:
    """EVALSHA; EVAL when the server does not know the script (it caches it)."""
    try:
        return await client.evalsha(script.sha, script.keys, *keys, *args)
    except NoScriptError:
        return await client.eval(script.source, script.keys, *keys, *args)


def _remaining(answer: int) -> float:
    """Seconds left from an ACQUIRE answer (0.0 when acquired)."""
    if answer > 0:
        return 0.0
    if answer == 0:
        return math.inf
    return -answer / 1000


def _check_prefix(prefix: object) -> None:
    if not isinstance(prefix, str):
        msg = f"prefix must be a str, got {prefix!r}"
        raise SyncSettingsValidationError(msg)
