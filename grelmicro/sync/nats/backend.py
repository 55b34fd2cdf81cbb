"""`NatsSyncBackend`: the public class, composing the backend's parts.

- `_settings`: argument checks; `_connection`: where the client comes from;
- `_jetstream`: the JetStream calls and the bucket's provisioning;
- `_locks`: the lock algorithm; `_fires`: cron fire claims;
- `_watch`: the release watch; `_known`: what is known of each key;
- `_codec`: key encoding and TTLs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Annotated, Final, Self

from nats.aio.client import Client
from typing_extensions import Doc

from grelmicro.sync._backends import RegisteredBackend, register_backend
from grelmicro.sync._fire_args import check_after, check_fire
from grelmicro.sync.abc import FencedAcquire, FireRetake
from grelmicro.sync.errors import SyncSettingsValidationError
from grelmicro.sync.nats._codec import (
    KeyEncodingError,
    encode_key,
    ttl_seconds,
)
from grelmicro.sync.nats._connection import Connection
from grelmicro.sync.nats._fires import Fires
from grelmicro.sync.nats._jetstream import JetStream
from grelmicro.sync.nats._known import KnownKeys
from grelmicro.sync.nats._locks import Locks
from grelmicro.sync.nats._settings import (
    check_bucket,
    check_replicas,
    check_url,
    redact,
)
from grelmicro.sync.nats._watch import wait_released
from grelmicro.sync.nats.errors import NatsSyncBackendBucketError

#: Seconds to wait for each NATS request (a publish, a read): a dead or
#: frozen server fails instead of hanging.
REQUEST_TIMEOUT: Final = 3.0

_NS: Final = 1_000_000_000


class NatsSyncBackend(RegisteredBackend):
    """A `SyncBackend` storing locks in a NATS JetStream KV bucket.

    Give a URL (``nats://``, ``tls://``, ``ws://`` or ``wss://``; several
    servers comma-separated), or a connected `nats.aio.client.Client`, or
    nothing to read the URL from the ``NATS_URL`` environment variable. The
    connection is opened lazily on first use (primitives can be created at
    import time); a connection the backend opened itself is closed when the
    backend exits (``async with backend:``), or when its event loop ends; a
    client passed in is borrowed and never closed.

    The bucket is created on first use if absent: one value per key (history
    1), per-message TTL enabled, no bucket-wide max age, `replicas` copies on
    a NATS cluster (NATS server 2.11 or later). An existing bucket is used as
    it is when it allows per-message TTL and rollups; otherwise a
    `NatsSyncBackendBucketError` says what to change.

    Leases are whole seconds on the server (rounded up, at least one
    second); a fractional lease is honoured by the other workers, counted on
    their own clock (see the package documentation). Every NATS error is raised as a
    `NatsSyncBackendError` (a `SyncBackendError`) naming the operation and
    the lock name; each request gives up after `request_timeout` seconds.

    Besides `SyncBackend`, it implements every optional capability of
    `grelmicro.sync.abc`: fencing tokens (the stream sequence of the write
    that took the lock), cron fire claims, remaining-time acquire, release
    watch and name checks.
    """

    def __init__(
        self,
        url: Annotated[
            str | None,
            Doc(
                "The NATS URL (several servers comma-separated); NATS_URL when "
                "neither url nor client is given."
            ),
        ] = None,
        *,
        client: Annotated[
            Client | None,
            Doc("A connected nats.aio.client.Client to borrow, never closed."),
        ] = None,
        bucket: Annotated[
            str, Doc("The JetStream KV bucket holding the locks (created if absent).")
        ] = "grelmicro",
        replicas: Annotated[
            int, Doc("Copies of the bucket when it is created on a NATS cluster (1-5).")
        ] = 1,
        auto_register: Annotated[
            bool,
            Doc("Make this backend the default for primitives given no backend."),
        ] = True,
    ) -> None:
        if url is not None and client is not None:
            msg = (
                "NatsSyncBackend takes either url or client, not both: got "
                f"url={redact(url) if isinstance(url, str) else url!r} and "
                f"client={client!r}"
            )
            raise SyncSettingsValidationError(msg)
        servers: list[str] = []
        if client is None:
            source = "url"
            if url is None:
                url = os.environ.get("NATS_URL") or None
                source = "NATS_URL"
            if url is None:
                msg = (
                    "NatsSyncBackend needs a NATS server: pass url= (for example "
                    "'nats://localhost:4222'), pass client= (a connected "
                    "nats.aio.client.Client), or set the NATS_URL environment variable"
                )
                raise SyncSettingsValidationError(msg)
            servers = check_url(url, source)
        elif not isinstance(client, Client):
            msg = f"client must be a connected nats.aio.client.Client, got {client!r}"
            raise SyncSettingsValidationError(msg)
        self._setup(servers, client, None, bucket, replicas, auto_register)

    @classmethod
    def from_client_provider(
        cls,
        provider: Annotated[
            Callable[[], Awaitable[Client]],
            Doc("An async callable returning the connected client to use."),
        ],
        *,
        bucket: Annotated[
            str, Doc("The JetStream KV bucket holding the locks (created if absent).")
        ] = "grelmicro",
        replicas: Annotated[
            int, Doc("Copies of the bucket when it is created on a NATS cluster (1-5).")
        ] = 1,
        auto_register: Annotated[
            bool,
            Doc("Make this backend the default for primitives given no backend."),
        ] = False,
    ) -> Self:
        """Build a backend that gets its client from `provider` (for integrations).

        The provider is awaited before every operation (so it must be cheap,
        e.g. an idempotent ``connect()`` returning the current client), which
        lets the backend be created before the connection exists; the first
        call is made by one caller at a time. The client it returns is
        borrowed: the backend never closes it.
        """
        if not callable(provider):
            msg = f"provider must be an async callable, got {provider!r}"
            raise SyncSettingsValidationError(msg)
        backend = cls.__new__(cls)
        backend._setup([], None, provider, bucket, replicas, auto_register)
        return backend

    def _setup(
        self,
        servers: list[str],
        client: Client | None,
        provider: Callable[[], Awaitable[Client]] | None,
        bucket: object,
        replicas: object,
        auto_register: bool,
    ) -> None:
        self._bucket = check_bucket(bucket)
        self._replicas = check_replicas(replicas)
        self._known = KnownKeys()
        self._connection = Connection(
            servers=servers,
            client=client,
            provider=provider,
            prepare=self._prepare,
            forget=self._known.clear,
        )
        self._js = JetStream(self._connection, self._bucket, REQUEST_TIMEOUT)
        self._locks = Locks(self._js, self._known)
        self._fires = Fires(self._js, self._known)
        if auto_register:
            register_backend(self)

    async def _prepare(self, nc: Client, operation: str, name: str) -> None:
        await self._js.prepare(nc, operation, name, self._replicas)

    @property
    def bucket(self) -> str:
        """The JetStream KV bucket holding the locks."""
        return self._bucket

    @property
    def replicas(self) -> int:
        """Copies of the bucket when the backend creates it."""
        return self._replicas

    @property
    def request_timeout(self) -> float:
        """Seconds to wait for each NATS request before raising
        `NatsSyncBackendTimeoutError` (may be changed per instance)."""
        return self._js.timeout

    @request_timeout.setter
    def request_timeout(self, value: float) -> None:
        self._js.timeout = value

    def __repr__(self) -> str:
        return (
            f"NatsSyncBackend({self._connection.describe()}, "
            f"bucket={self._bucket!r}, replicas={self._replicas})"
        )

    async def aclose(self) -> None:
        """Close the connection the backend opened itself (a borrowed one stays open).

        The backend stays usable: the next operation connects again.
        """
        self._known.clear()
        await self._connection.aclose()

    # Arguments -----------------------------------------------------------------

    def check_name(self, name: Annotated[str, Doc("The lock key.")]) -> None:
        """Raise `SyncSettingsValidationError` (naming `name`) if it cannot be stored.

        A name is stored as a NATS KV key (see the package documentation):
        once encoded it must fit in a subject the server accepts.
        """
        self._key(name)

    def _key(self, name: str) -> str:
        if not isinstance(name, str):
            msg = f"a lock name must be a str, got {name!r}"
            raise SyncSettingsValidationError(msg)
        try:
            return encode_key(name)
        except KeyEncodingError as exc:
            raise SyncSettingsValidationError(str(exc)) from exc

    def _check_lease(self, ttl: int, operation: str, name: str) -> None:
        max_age = self._js.config.max_age_ns
        if max_age and ttl * _NS > max_age:
            raise NatsSyncBackendBucketError(
                operation=operation,
                name=name,
                detail=f"a lease of {ttl}s is longer than the bucket's max_age "
                f"({max_age / _NS:g}s), which would expire it early: use a "
                "bucket without max_age or a shorter lease",
            )

    # SyncBackend ---------------------------------------------------------------

    async def acquire(
        self,
        *,
        name: Annotated[str, Doc("The lock key.")],
        token: Annotated[str, Doc("The owner's token.")],
        duration: Annotated[
            float, Doc("The lease in seconds (whole seconds on the server, >= 1).")
        ],
    ) -> bool:
        """Take the lock for `duration` seconds, or extend it if `token` holds it.

        Returns False when another token holds the lock. The lease is rounded
        up to whole seconds, at least one second.
        """
        answer = await self._acquire("acquire", name, token, duration)
        return answer.fence is not None

    async def acquire_fenced(
        self,
        *,
        name: Annotated[str, Doc("The lock key.")],
        token: Annotated[str, Doc("The owner's token.")],
        duration: Annotated[
            float, Doc("The lease in seconds (whole seconds on the server, >= 1).")
        ],
    ) -> FencedAcquire:
        """Take or extend the lock, in one round trip; the holding's fencing token.

        The token is the stream sequence of the write that took the lock (so
        it grows with every write to the bucket, across all processes);
        extensions carry it unchanged.

        When another token holds the lock, `remaining` is how long its lease
        lasts. A loser that learns from the failed write alone that the lock
        changed hands since it last looked does not read the new entry: it
        answers the lease of the last holding it knew on that name (an
        estimate, exact when holders use the same lease, as task locks and
        elections do); the entry is read at the next attempt if still there.
        `acquire_or_remaining` always reads it.
        """
        return await self._acquire("acquire_fenced", name, token, duration)

    async def acquire_or_remaining(
        self,
        *,
        name: Annotated[str, Doc("The lock key.")],
        token: Annotated[str, Doc("The owner's token.")],
        duration: Annotated[
            float, Doc("The lease in seconds (whole seconds on the server, >= 1).")
        ],
    ) -> float:
        """Like `acquire`: 0.0 when acquired or extended.

        Otherwise at most how long the holder's lease lasts (> 0; `math.inf`
        when the holder's entry never expires): the holder's lease counted on
        this machine's monotonic clock from when this backend first received
        the holder's write, so it is never shorter than the truth.
        """
        answer = await self._acquire("acquire_or_remaining", name, token, duration)
        return answer.remaining

    async def _acquire(
        self, operation: str, name: str, token: str, duration: float
    ) -> FencedAcquire:
        key = self._key(name)
        ttl, lease_ms = _lease(duration)
        nc = await self._connection.client(operation, name)
        self._check_lease(ttl, operation, name)
        return await self._locks.acquire(
            nc,
            operation,
            name,
            key,
            token,
            ttl,
            lease_ms,
            exact=operation != "acquire_fenced",
        )

    async def release(
        self,
        *,
        name: Annotated[str, Doc("The lock key.")],
        token: Annotated[str, Doc("The owner's token.")],
    ) -> bool:
        """Release the lock if `token` holds it; False otherwise.

        The key is replaced by a purge marker (conditioned on the sequence
        `token` wrote), which reads as free and expires on its own.
        """
        key = self._key(name)
        nc = await self._connection.client("release", name)
        return await self._locks.release(nc, "release", name, key, token)

    async def locked(self, *, name: Annotated[str, Doc("The lock key.")]) -> bool:
        """Whether any token holds the lock (a lease seen to end is free)."""
        key = self._key(name)
        nc = await self._connection.client("locked", name)
        return await self._locks.holder(nc, "locked", name, key) is not None

    async def owned(
        self,
        *,
        name: Annotated[str, Doc("The lock key.")],
        token: Annotated[str, Doc("The owner's token.")],
    ) -> bool:
        """Whether `token` holds the lock."""
        key = self._key(name)
        nc = await self._connection.client("owned", name)
        return await self._locks.holder(nc, "owned", name, key) == token

    async def wait_released(
        self, *, name: Annotated[str, Doc("The lock key.")]
    ) -> None:
        """Return once the lock is seen free: released, deleted, or its lease ran out.

        A release is seen at once (a plain subscription to the key's subject);
        an expiry when the holder's lease, counted from when this backend
        first received its write, has run out. It may return early
        (callers check again by acquiring).
        """
        key = self._key(name)
        nc = await self._connection.client("wait_released", name)
        await wait_released(self._locks, nc, name, key)

    # Cron fire claims ----------------------------------------------------------

    async def last_fire(
        self, *, name: Annotated[str, Doc("The task key.")]
    ) -> int | None:
        """The latest fire claimed for `name`; None when none was ever claimed."""
        key = self._key(name)
        nc = await self._connection.client("last_fire", name)
        return await self._fires.last_fire(nc, name, key)

    async def claim_fire(
        self,
        *,
        name: Annotated[str, Doc("The task key.")],
        fire: Annotated[int, Doc("The fire time, ms since the Unix epoch.")],
        token: Annotated[str, Doc("The claimant's token.")],
        lease: Annotated[
            float | None,
            Doc("None: the claim is final; else a lease of that many seconds."),
        ],
        after: Annotated[
            int | None,
            Doc(
                "The fire before `fire` that must be claimed first (ms); "
                "None: `fire` may pass over unclaimed fires."
            ),
        ] = None,
    ) -> int | None:
        """Claim `fire` if it is later than every fire claimed before for `name`.

        Returns the claim's fencing token (the sequence of the winning write)
        or None when this fire or a later one was already claimed; with
        `after`, `FIRE_BEHIND` when the latest claimed fire is older than it.
        """
        key = self._key(name)
        check_fire(fire)
        checked_after = check_after(after, fire)
        if lease is not None:
            ttl_seconds_checked(lease, "lease")
        nc = await self._connection.client("claim_fire", name)
        return await self._fires.claim(nc, name, key, fire, token, lease, checked_after)

    async def keep_fire(
        self,
        *,
        name: Annotated[str, Doc("The task key.")],
        fire: Annotated[int, Doc("The fire time, ms since the Unix epoch.")],
        token: Annotated[str, Doc("The claimant's token.")],
        lease: Annotated[float, Doc("The new lease in seconds, from now.")],
    ) -> bool:
        """Extend the lease on `fire`; False when `token` no longer holds it."""
        key = self._key(name)
        check_fire(fire)
        ttl_seconds_checked(lease, "lease")
        nc = await self._connection.client("keep_fire", name)
        return await self._fires.keep(nc, name, key, fire, token, lease)

    async def finish_fire(
        self,
        *,
        name: Annotated[str, Doc("The task key.")],
        fire: Annotated[int, Doc("The fire time, ms since the Unix epoch.")],
        token: Annotated[str, Doc("The claimant's token.")],
    ) -> bool:
        """Mark a leased fire completed; False when `token` no longer holds it."""
        key = self._key(name)
        check_fire(fire)
        nc = await self._connection.client("finish_fire", name)
        return await self._fires.finish(nc, name, key, fire, token)

    async def retake_fire(
        self,
        *,
        name: Annotated[str, Doc("The task key.")],
        fire: Annotated[int, Doc("The fire time, ms since the Unix epoch.")],
        token: Annotated[str, Doc("The new claimant's token.")],
        lease: Annotated[float, Doc("The lease in seconds.")],
    ) -> FireRetake:
        """Take over a leased fire whose claimant's lease lapsed unfinished."""
        key = self._key(name)
        check_fire(fire)
        ttl_seconds_checked(lease, "lease")
        nc = await self._connection.client("retake_fire", name)
        return await self._fires.retake(nc, name, key, fire, token, lease)


def _lease(duration: object) -> tuple[int, int]:
    """(TTL in whole seconds, exact lease in ms) for `duration` seconds."""
    try:
        return _lease_cached(duration)
    except TypeError:  # unhashable: not a number anyway
        ttl_seconds_checked(duration)
        raise


@lru_cache(maxsize=1024, typed=True)
def _lease_cached(duration: object) -> tuple[int, int]:
    ttl = ttl_seconds_checked(duration)
    assert isinstance(duration, int | float)
    return ttl, max(1, math.ceil(round(duration * 1000, 3)))


def ttl_seconds_checked(duration: object, parameter: str = "duration") -> int:
    """`ttl_seconds(duration)`, raising `SyncSettingsValidationError` naming it."""
    try:
        return ttl_seconds(duration)  # type: ignore[arg-type]
    except ValueError as exc:
        message = str(exc).replace("duration", parameter, 1)
        raise SyncSettingsValidationError(message) from exc


__all__ = ["REQUEST_TIMEOUT", "NatsSyncBackend"]
