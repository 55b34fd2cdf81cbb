"""Redis synchronization backend.

```python
from grelmicro.sync.redis import RedisSyncBackend

backend = RedisSyncBackend("redis://localhost:6379/0")
```

Every operation is one round trip: a server-side Lua script (EVALSHA, with
EVAL when the server does not know the script yet) or a single command. Locks
are plain string keys (`prefix + name`) holding the owner's token, with a
millisecond expiry (`PX`) enforced by the Redis server.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, Self
from urllib.parse import urlparse

from grelmicro.errors import DependencyNotFoundError
from grelmicro.sync._backends import RegisteredBackend, register_backend
from grelmicro.sync.errors import (
    SyncBackendError,
    SyncBackendTimeoutError,
    SyncSettingsValidationError,
)

try:
    from redis.asyncio import Redis, RedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoScriptError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise DependencyNotFoundError(module="redis", extra="redis") from exc

if TYPE_CHECKING:
    from typing_extensions import Doc

#: The clients the backend accepts: a single server (or a Sentinel-managed
#: primary from `Sentinel.master_for`), or a Redis Cluster.
RedisClient = Redis | RedisCluster

#: Seconds to open a connection / to wait for an answer, for clients built
#: from a URL: a dead or frozen server fails instead of hanging.
SOCKET_CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 2.0

#: Most connections a client built from a URL opens.
MAX_CONNECTIONS = 8

_URL_SCHEMES = ("redis", "rediss", "unix")

# KEYS[1] = lock key, ARGV[1] = token, ARGV[2] = lease in milliseconds.
# 1 when taken or extended, 0 when another token holds it.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if not holder then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
return 0
"""

# Like _ACQUIRE, but 0 when taken or extended, else the holder's lease left in
# milliseconds (>= 1), or -1 when the key has no expiry.
_ACQUIRE_OR_REMAINING = """
local holder = redis.call('GET', KEYS[1])
if not holder then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 0
end
if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 0
end
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
    return -1
end
if left == 0 then
    return 1
end
return left
"""

# KEYS[1] = lock key, ARGV[1] = token. 1 when released, 0 otherwise.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    return 1
end
return 0
"""

# KEYS[1] = lock key, ARGV[1] = token. 1 when the token holds the lock.
_OWNED = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return 1
end
return 0
"""


class RedisSyncBackendError(SyncBackendError):
    """A Redis command failed (server error, wrong key type, script error...)."""

    def __init__(self, *, operation: str, name: str, cause: BaseException) -> None:
        super().__init__(
            f"Redis sync backend failed: operation={operation}, name={name!r} "
            f"({type(cause).__name__}: {cause})"
        )
        self.operation = operation
        self.name = name


class RedisSyncBackendConnectionError(RedisSyncBackendError):
    """The Redis server could not be reached (refused, reset, closed)."""


class RedisSyncBackendTimeoutError(
    RedisSyncBackendConnectionError, SyncBackendTimeoutError
):
    """The Redis server did not answer in time."""


class _Script:
    """A Lua script run with EVALSHA, falling back to EVAL on NOSCRIPT."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, client: RedisClient, key: str, *args: str | int) -> int:
        try:
            result: Any = await client.evalsha(self.sha, 1, key, *args)
        except NoScriptError:
            # EVAL runs it in the same round trip and caches it on the server.
            result = await client.eval(self.source, 1, key, *args)
        return int(result)


class RedisSyncBackend(RegisteredBackend):
    """A `SyncBackend` storing locks in Redis.

    Give a URL (`redis://`, `rediss://` or `unix://`), or a client, or nothing
    to read the URL from the `REDIS_URL` environment variable. The client may
    be a `redis.asyncio.Redis` (for Sentinel, the one returned by
    `Sentinel.master_for(...)`) or a `redis.asyncio.RedisCluster`: every
    operation touches a single key. The connection is opened lazily on first use, so a backend and
    its primitives can be created at import time. A client built from the URL
    is closed when the backend exits (`async with backend:`); a client passed
    in is borrowed and never closed.

    Each operation is a single round trip (an atomic server-side script), and
    the lock's expiry is enforced by the Redis server (`PX`, in milliseconds,
    rounded up). Every Redis error is raised as a `RedisSyncBackendError`
    (a `SyncBackendError`) naming the operation and the key.
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
    ) -> None:
        if url is not None and client is not None:
            msg = (
                "RedisSyncBackend takes either url or client, not both: got "
                f"url={url!r} and client={client!r}"
            )
            raise SyncSettingsValidationError(msg)
        if not isinstance(prefix, str):
            msg = f"prefix must be a str, got {prefix!r}"
            raise SyncSettingsValidationError(msg)
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
            _check_url(url)
        elif not isinstance(client, Redis | RedisCluster):
            msg = (
                "client must be a redis.asyncio.Redis or redis.asyncio.RedisCluster, "
                f"got {client!r}"
            )
            raise SyncSettingsValidationError(msg)
        self._url = url if client is None else None
        self._borrowed = client
        self._provider: Callable[[], Awaitable[RedisClient]] | None = None
        self._owned: Redis | None = None
        self._owned_loop: asyncio.AbstractEventLoop | None = None
        self._limit: asyncio.Semaphore | None = None
        self._prefix = prefix
        if auto_register:
            register_backend(self)

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
        backend = cls.__new__(cls)
        backend._url = None
        backend._borrowed = None
        backend._provider = provider
        backend._owned = None
        backend._owned_loop = None
        backend._limit = None
        if not isinstance(prefix, str):
            msg = f"prefix must be a str, got {prefix!r}"
            raise SyncSettingsValidationError(msg)
        backend._prefix = prefix
        if auto_register:
            register_backend(backend)
        return backend

    @property
    def prefix(self) -> str:
        """The prefix prepended to every key."""
        return self._prefix

    def __repr__(self) -> str:
        if self._url is not None:
            source = f"url={_redact(self._url)!r}"
        elif self._borrowed is not None:
            source = f"client={self._borrowed!r}"
        else:
            source = "client=<provider>"
        return f"RedisSyncBackend({source}, prefix={self._prefix!r})"

    # Lifecycle ---------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the client the backend built from its URL (a borrowed one stays open).

        The backend stays usable: the next operation opens a new connection.
        """
        client, self._owned, self._owned_loop = self._owned, None, None
        self._limit = None
        if client is not None:
            try:
                await client.aclose()
            except Exception as exc:
                raise _wrap("close", "", exc) from exc

    async def _client(self) -> RedisClient:
        if self._borrowed is not None:
            return self._borrowed
        if self._provider is not None:
            return await self._provider()
        loop = asyncio.get_running_loop()
        if self._owned is None or self._owned_loop is not loop:
            # Connections belong to one event loop: a new loop gets a new client.
            assert self._url is not None
            self._owned = Redis.from_url(
                self._url,
                socket_connect_timeout=SOCKET_CONNECT_TIMEOUT,
                socket_timeout=SOCKET_TIMEOUT,
                retry=Retry(
                    ExponentialWithJitterBackoff(base=0.01, cap=0.1),
                    retries=1,
                    supported_errors=(RedisConnectionError,),
                ),
            )
            # Bound the connections: many tasks firing at once wait for one
            # of a few (each call is ~0.1 ms) instead of opening one each. A
            # semaphore costs nothing when uncontended, unlike redis-py's
            # BlockingConnectionPool.
            self._limit = asyncio.Semaphore(MAX_CONNECTIONS)
            self._owned_loop = loop
        return self._owned

    async def _script(
        self, operation: str, script: _Script, name: str, *args: str | int
    ) -> int:
        try:
            client = await self._client()
            limit = self._limit
            if limit is None:
                return await script(client, self._prefix + name, *args)
            async with limit:
                return await script(client, self._prefix + name, *args)
        except SyncBackendError:
            raise
        except Exception as exc:
            raise _wrap(operation, name, exc) from exc

    # SyncBackend -------------------------------------------------------------

    async def acquire(
        self,
        *,
        name: Annotated[str, Doc("The lock key.")],
        token: Annotated[str, Doc("The owner's token.")],
        duration: Annotated[float, Doc("The lease in seconds.")],
    ) -> bool:
        """Take the lock for `duration` seconds, or extend it if `token` holds it.

        Returns False when another token holds the lock.
        """
        ms = _milliseconds(duration)
        return await self._script("acquire", _ACQUIRE_SCRIPT, name, token, ms) == 1

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
        ms = _milliseconds(duration)
        left = await self._script(
            "acquire_or_remaining", _ACQUIRE_OR_REMAINING_SCRIPT, name, token, ms
        )
        if left == 0:
            return 0.0
        if left < 0:
            return math.inf
        return left / 1000

    async def release(
        self,
        *,
        name: Annotated[str, Doc("The lock key.")],
        token: Annotated[str, Doc("The owner's token.")],
    ) -> bool:
        """Release the lock if `token` holds it; False otherwise."""
        return await self._script("release", _RELEASE_SCRIPT, name, token) == 1

    async def locked(self, *, name: Annotated[str, Doc("The lock key.")]) -> bool:
        """Whether any token holds the lock."""
        try:
            client = await self._client()
            count: Any = await client.exists(self._prefix + name)
        except SyncBackendError:
            raise
        except Exception as exc:
            raise _wrap("locked", name, exc) from exc
        return int(count) > 0

    async def owned(
        self,
        *,
        name: Annotated[str, Doc("The lock key.")],
        token: Annotated[str, Doc("The owner's token.")],
    ) -> bool:
        """Whether `token` holds the lock."""
        return await self._script("owned", _OWNED_SCRIPT, name, token) == 1


_ACQUIRE_SCRIPT = _Script(_ACQUIRE)
_ACQUIRE_OR_REMAINING_SCRIPT = _Script(_ACQUIRE_OR_REMAINING)
_RELEASE_SCRIPT = _Script(_RELEASE)
_OWNED_SCRIPT = _Script(_OWNED)


def _milliseconds(duration: float) -> int:
    """`duration` seconds in whole milliseconds, rounded up, at least 1."""
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        msg = f"duration must be a number of seconds, got {duration!r}"
        raise SyncSettingsValidationError(msg)
    if not math.isfinite(duration):
        msg = f"duration must be finite, got {duration!r}"
        raise SyncSettingsValidationError(msg)
    # Round away float noise first (0.1 * 1000 == 100.00000000000001).
    return max(1, math.ceil(round(duration * 1000, 6)))


def _wrap(operation: str, name: str, exc: BaseException) -> RedisSyncBackendError:
    if isinstance(exc, RedisTimeoutError | TimeoutError):
        return RedisSyncBackendTimeoutError(operation=operation, name=name, cause=exc)
    if isinstance(exc, RedisConnectionError | OSError):
        return RedisSyncBackendConnectionError(
            operation=operation, name=name, cause=exc
        )
    return RedisSyncBackendError(operation=operation, name=name, cause=exc)


def _check_url(url: object) -> None:
    if not isinstance(url, str) or not url:
        msg = f"url must be a non-empty Redis URL string, got {url!r}"
        raise SyncSettingsValidationError(msg)
    try:
        parsed = urlparse(url)
        _ = parsed.port  # raises ValueError on a non-numeric port
    except ValueError as exc:
        msg = f"Invalid Redis URL {_redact(url)!r}: {exc}"
        raise SyncSettingsValidationError(msg) from exc
    if parsed.scheme not in _URL_SCHEMES:
        msg = (
            f"Invalid Redis URL {_redact(url)!r}: the scheme must be redis://, "
            f"rediss:// or unix://, got {parsed.scheme + '://' if parsed.scheme else 'none'}"
        )
        raise SyncSettingsValidationError(msg)


def _redact(url: str) -> str:
    """`url` without its password."""
    try:
        parsed = urlparse(url)
        if parsed.password is None:
            return url
        netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
        return parsed._replace(netloc=netloc).geturl()
    except ValueError:
        return "<invalid url>"


__all__ = [
    "RedisSyncBackend",
    "RedisSyncBackendConnectionError",
    "RedisSyncBackendError",
    "RedisSyncBackendTimeoutError",
]
