"""NATS JetStream KV synchronization backend.

```python
from grelmicro.sync.nats import NatsSyncBackend

backend = NatsSyncBackend("nats://localhost:4222")
```

Locks live in a JetStream KV bucket (``grelmicro`` by default, created if
absent). A lock is one key holding the owner's token; every write is a
compare-and-set on the key's last sequence (the
``Nats-Expected-Last-Subject-Sequence`` header) and carries a per-message TTL
(``Nats-TTL``), so the server expires abandoned locks and no two machines'
clocks are ever compared.

**TTL floor.** The server keeps per-message TTLs in whole seconds (it
truncates ``"1500ms"`` to one second) and rejects TTLs under one second, so a
lease of `duration` seconds is written with a TTL of ``ceil(duration)``
seconds, at least one second: the server keeps a 0.2 s lease's key for one
second, a 1.5 s lease's for two. When the lease is not a whole number of
seconds, it is also written exactly (header ``Grelmicro-Lease-Ms``) and
grelmicro honours it: every backend treats the key as free once the lease
ran out by the server's clock (the entry's server timestamp against the
server's current time, never this machine's wall clock) and takes it over
with a compare-and-set on its sequence, without waiting for the server's
removal sweep (which runs up to a second late). A lease is never shorter than
asked.

**Keys.** NATS KV keys allow ``[-/_=.a-zA-Z0-9]``. A lock name is encoded
reversibly: ASCII letters, digits, ``-``, ``_`` and ``/`` are kept, every
other character becomes ``=XX`` per UTF-8 byte, so ``tasklock:my.module:func``
is stored under the key ``tasklock=3Amy=2Emodule=3Afunc``.

**Round trips.** Taking a free lock, extending it, and releasing a lock this
backend took are one JetStream publish each: the backend remembers the
sequence it last wrote (or the release marker it left) per key and
compare-and-sets on it. Only when that guess is wrong does it read the key
(and, when another token holds it, ask the server for its current time).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, Final, Self
from urllib.parse import urlparse

import anyio

from grelmicro.errors import DependencyNotFoundError
from grelmicro.sync._backends import RegisteredBackend, register_backend
from grelmicro.sync._nats_codec import (
    KeyEncodingError,
    encode_key,
    parse_headers,
    parse_timestamp_ns,
    parse_ttl,
    ttl_seconds,
    wrong_last_sequence,
)
from grelmicro.sync.errors import (
    SyncBackendError,
    SyncBackendTimeoutError,
    SyncSettingsValidationError,
)

try:
    import nats.errors
    from nats.aio.client import Client
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise DependencyNotFoundError(module="nats-py", extra="nats") from exc

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from typing_extensions import Doc

logger = logging.getLogger("grelmicro.sync")

#: Seconds to wait for each NATS request (a publish, a read): a dead or
#: frozen server fails instead of hanging.
REQUEST_TIMEOUT: Final = 3.0

#: Seconds to open the backend's own connection (built from a URL).
CONNECT_TIMEOUT: Final = 5.0

#: Seconds a release marker (an empty purge entry) stays in the bucket before
#: the server removes it, so buckets with many short-lived lock names do not
#: grow forever.
MARKER_TTL_SECONDS: Final = 60

_URL_SCHEMES: Final = ("nats", "tls", "ws", "wss")
_BUCKET_RE: Final = re.compile(r"[A-Za-z0-9_-]+")
#: Stream names become directory names on the server's disk.
_MAX_BUCKET_LENGTH: Final = 200
_MAX_REPLICAS: Final = 5

_API: Final = "$JS.API."
_EXPECTED: Final = "Nats-Expected-Last-Subject-Sequence"
_TTL: Final = "Nats-TTL"
_KV_OPERATION: Final = "KV-Operation"
_MARKER_REASON: Final = "Nats-Marker-Reason"
#: The exact lease in milliseconds, when it is not a whole number of seconds.
_LEASE_MS: Final = "Grelmicro-Lease-Ms"
_FREE_OPERATIONS: Final = ("DEL", "PURGE")
#: JetStream error codes: wrong last (subject) sequence, stream in use.
_WRONG_LAST_CODES: Final = (10071, 10164)
_STREAM_IN_USE: Final = 10058
_STREAM_NOT_FOUND: Final = 10059
_NO_MESSAGE: Final = 10037
#: How many compare-and-set attempts one call makes before giving up a race.
_ATTEMPTS: Final = 5
#: Known key states kept per backend (the oldest are forgotten first).
_MAX_KNOWN: Final = 10_000
_NS: Final = 1_000_000_000


class NatsSyncBackendError(SyncBackendError):
    """A NATS request failed (JetStream API error, unexpected reply...)."""

    def __init__(self, *, operation: str, name: str, detail: str) -> None:
        super().__init__(
            f"NATS sync backend failed: operation={operation}, name={name!r} ({detail})"
        )
        self.operation = operation
        self.name = name


class NatsSyncBackendConnectionError(NatsSyncBackendError):
    """The NATS server could not be reached (refused, closed, no JetStream)."""


class NatsSyncBackendTimeoutError(
    NatsSyncBackendConnectionError, SyncBackendTimeoutError
):
    """The NATS server did not answer in time."""


class NatsSyncBackendBucketError(NatsSyncBackendError):
    """The KV bucket cannot be created or used as it is configured."""


#: How long a reading of the server's clock is reused for skip decisions.
_SERVER_CLOCK_TTL_NS = 5 * 1_000_000_000
#: Below this much lease left, ask the server for its time before deciding.
_SKIP_MARGIN_NS = 50_000_000


class _Known:
    """What the backend last learned about one key.

    ``token`` is the holder's token, or None for a release/delete marker (a
    free key). ``late`` (monotonic seconds) is when another token's lease has
    surely expired on the server (``math.inf``: never); None when not worked
    out. Facts about one sequence never change, so a stale entry only costs a
    retry.
    """

    __slots__ = ("late", "seq", "token")

    def __init__(self, seq: int, token: str | None, late: float | None = None) -> None:
        self.seq = seq
        self.token = token
        self.late = late


class _Entry:
    """A key as read from the server."""

    __slots__ = ("expiry_ns", "seq", "token")

    def __init__(self, seq: int, token: str | None, expiry_ns: int | None) -> None:
        self.seq = seq
        self.token = token
        #: Server time (ns) at which the server expires it; None: never.
        self.expiry_ns = expiry_ns


class NatsSyncBackend(RegisteredBackend):
    """A `SyncBackend` storing locks in a NATS JetStream KV bucket.

    Give a URL (``nats://``, ``tls://``, ``ws://`` or ``wss://``; several
    servers comma-separated), or a connected `nats.aio.client.Client`, or
    nothing to read the URL from the ``NATS_URL`` environment variable. The
    connection is opened lazily on first use (primitives can be created at
    import time); a connection the backend opened itself is closed when the
    backend exits (``async with backend:``), a client passed in is borrowed
    and never closed.

    The bucket is created on first use if absent: one value per key (history
    1), per-message TTL enabled, no bucket-wide max age, `replicas` copies on
    a NATS cluster (NATS server 2.11 or later). An existing bucket is used as
    it is when it allows per-message TTL and rollups; otherwise a
    `NatsSyncBackendBucketError` says what to change.

    Leases are whole seconds on the server: a lease is rounded up to whole
    seconds, with a floor of one second (see the module documentation). Every
    NATS error is raised as a `NatsSyncBackendError` (a `SyncBackendError`)
    naming the operation and the lock name; each request gives up after
    `request_timeout` seconds.
    """

    #: Seconds to wait for each NATS request before raising
    #: `NatsSyncBackendTimeoutError` (may be changed per instance).
    request_timeout: float = REQUEST_TIMEOUT

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
                f"url={_redact(url) if isinstance(url, str) else url!r} and "
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
            servers = _check_url(url, source)
        elif not isinstance(client, Client):
            msg = f"client must be a connected nats.aio.client.Client, got {client!r}"
            raise SyncSettingsValidationError(msg)
        self._setup(
            servers=servers,
            client=client,
            provider=None,
            bucket=bucket,
            replicas=replicas,
            auto_register=auto_register,
        )

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
        backend._setup(
            servers=[],
            client=None,
            provider=provider,
            bucket=bucket,
            replicas=replicas,
            auto_register=auto_register,
        )
        return backend

    def _setup(
        self,
        *,
        servers: list[str],
        client: Client | None,
        provider: Callable[[], Awaitable[Client]] | None,
        bucket: str,
        replicas: int,
        auto_register: bool,
    ) -> None:
        if not isinstance(bucket, str) or not _BUCKET_RE.fullmatch(bucket):
            msg = (
                "bucket must be a NATS KV bucket name (letters, digits, '-' and "
                f"'_'), got {bucket!r}"
            )
            raise SyncSettingsValidationError(msg)
        if len(bucket) > _MAX_BUCKET_LENGTH:
            msg = (
                f"bucket must be at most {_MAX_BUCKET_LENGTH} characters, got "
                f"{len(bucket)} ({bucket[:40]!r}...)"
            )
            raise SyncSettingsValidationError(msg)
        if (
            isinstance(replicas, bool)
            or not isinstance(replicas, int)
            or not 1 <= replicas <= _MAX_REPLICAS
        ):
            msg = f"replicas must be an int from 1 to {_MAX_REPLICAS}, got {replicas!r}"
            raise SyncSettingsValidationError(msg)
        self._servers = servers
        self._borrowed = client
        self._provider = provider
        self._bucket = bucket
        self._replicas = replicas
        self._stream = f"KV_{bucket}"
        self._prefix = f"$KV.{bucket}."
        self._direct_prefix = f"{_API}DIRECT.GET.{self._stream}.{self._prefix}"
        # The client in use, whether the bucket was checked over it, and the
        # event loop both belong to (a connection serves one loop).
        self._nc: Client | None = client
        self._owned: Client | None = None
        self._ready = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._reconnects = 0
        # The bucket's configuration, read when it is checked.
        self._direct = True
        self._rollup = False
        self._max_age_ns = 0
        self._always_lease_ms = False
        self._created: str | None = None
        self._known: dict[str, _Known] = {}
        #: (server time ns, local monotonic ns) of the last server clock reading.
        self._server_clock: tuple[int, int] | None = None
        if auto_register:
            register_backend(self)

    @property
    def bucket(self) -> str:
        """The JetStream KV bucket holding the locks."""
        return self._bucket

    @property
    def replicas(self) -> int:
        """Copies of the bucket when the backend creates it."""
        return self._replicas

    def __repr__(self) -> str:
        if self._servers:
            source = f"url={_redact(','.join(self._servers))!r}"
        elif self._borrowed is not None:
            source = f"client={self._borrowed!r}"
        else:
            source = "client=<provider>"
        return (
            f"NatsSyncBackend({source}, bucket={self._bucket!r}, "
            f"replicas={self._replicas})"
        )

    # Lifecycle ---------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connection the backend opened itself (a borrowed one stays open).

        The backend stays usable: the next operation connects again.
        """
        owned, self._owned = self._owned, None
        if self._borrowed is None:
            self._nc = None
        self._ready = False
        self._known.clear()
        if owned is None or owned.is_closed:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(CONNECT_TIMEOUT):
            try:
                await owned.close()
            except Exception as exc:
                logger.debug("Closing the NATS connection failed: %s", exc)

    # Connection --------------------------------------------------------------

    async def _client(self, operation: str, name: str) -> Client:
        """The client to use, connected, with the bucket checked over it."""
        if self._provider is not None:
            return await self._provided(operation, name)
        nc = self._nc
        if (
            nc is not None
            and self._ready
            and self._loop is asyncio.get_running_loop()
            and not nc.is_closed
        ):
            if nc.stats["reconnects"] != self._reconnects:
                self._reconnected(nc)
            return nc
        return await self._connect(operation, name)

    def _setup_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            # A new event loop (tests run one per test): an own connection of
            # the old loop is unusable here, so the next use opens a new one.
            self._lock = asyncio.Lock()
            self._loop = loop
            if self._owned is not None:
                self._owned = None
                self._nc = None
            self._ready = False
        return self._lock

    async def _connect(self, operation: str, name: str) -> Client:
        async with self._setup_lock():
            nc = self._nc
            if nc is None or nc.is_closed:
                if self._borrowed is not None:
                    raise NatsSyncBackendConnectionError(
                        operation=operation,
                        name=name,
                        detail="the NATS client given to NatsSyncBackend is closed",
                    )
                nc = await self._open(operation, name)
                self._nc = self._owned = nc
                self._ready = False
            if not self._ready:
                await self._prepare(nc, operation, name)
            return nc

    async def _provided(self, operation: str, name: str) -> Client:
        assert self._provider is not None
        if self._nc is None or not self._ready:
            async with self._setup_lock():
                nc = await self._call_provider(operation, name)
                if nc is not self._nc or not self._ready:
                    self._nc = nc
                    await self._prepare(nc, operation, name)
                return nc
        nc = await self._call_provider(operation, name)
        if nc is not self._nc:
            async with self._setup_lock():
                self._nc = nc
                await self._prepare(nc, operation, name)
        elif nc.stats["reconnects"] != self._reconnects:
            self._reconnected(nc)
        return nc

    async def _call_provider(self, operation: str, name: str) -> Client:
        assert self._provider is not None
        try:
            nc = await self._provider()
        except SyncBackendError:
            raise
        except TimeoutError as exc:
            raise _wrap(operation, name, exc) from exc
        except Exception as exc:
            raise NatsSyncBackendConnectionError(
                operation=operation,
                name=name,
                detail=f"the client provider failed: {type(exc).__name__}: {exc}",
            ) from exc
        if not isinstance(nc, Client):
            raise NatsSyncBackendConnectionError(
                operation=operation,
                name=name,
                detail=f"the client provider returned {nc!r}, not a nats Client",
            )
        return nc

    def _reconnected(self, nc: Client) -> None:
        # The server may have restarted without its storage (the bucket was
        # re-created, sequences restarted): forget every sequence we knew.
        self._reconnects = nc.stats["reconnects"]
        self._known.clear()
        self._server_clock = None  # maybe another server, another clock

    async def _open(self, operation: str, name: str) -> Client:
        nc = Client()
        errors: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            errors.append(exc)
            logger.debug("NATS connection error: %s: %s", type(exc).__name__, exc)

        try:
            with anyio.fail_after(CONNECT_TIMEOUT):
                # Two attempts per server at first, so an unreachable server
                # fails fast; then reconnect forever (set below).
                await nc.connect(
                    servers=self._servers,
                    error_cb=on_error,
                    disconnected_cb=self._on_disconnected,
                    max_reconnect_attempts=1,
                    **_CONNECT_OPTIONS,
                )
            nc.options["max_reconnect_attempts"] = -1
        except BaseException as exc:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                try:
                    await nc.close()
                except Exception:
                    logger.debug("Closing a failed NATS connection failed")
            if isinstance(exc, Exception):
                servers = _redact(",".join(self._servers))
                cause = errors[-1] if errors else exc
                raise NatsSyncBackendConnectionError(
                    operation=operation,
                    name=name,
                    detail=f"cannot connect to NATS at {servers}: "
                    f"{type(cause).__name__}: {cause}",
                ) from exc
            raise
        return nc

    async def _on_disconnected(self) -> None:
        if self._owned is not None and not self._owned.is_closed:
            logger.warning("NATS sync backend disconnected; reconnecting")

    async def _prepare(self, nc: Client, operation: str, name: str) -> None:
        """Find or create the bucket and check that it can hold locks."""
        self._ready = False
        info = await self._api(nc, f"STREAM.INFO.{self._stream}", None, operation, name)
        error = info.get("error")
        if error is not None and error.get("err_code") == _STREAM_NOT_FOUND:
            info = await self._api(
                nc,
                f"STREAM.CREATE.{self._stream}",
                self._stream_config(),
                operation,
                name,
            )
            error = info.get("error")
            if error is not None and error.get("err_code") == _STREAM_IN_USE:
                # Created meanwhile by another worker, with another config.
                info = await self._api(
                    nc, f"STREAM.INFO.{self._stream}", None, operation, name
                )
                error = info.get("error")
        if error is not None:
            raise NatsSyncBackendBucketError(
                operation=operation,
                name=name,
                detail=f"cannot find or create the KV bucket {self._bucket!r}: "
                f"{error.get('description')} (code {error.get('err_code')})",
            )
        self._check_config(info.get("config") or {}, operation, name)
        created = info.get("created")
        if created != self._created:
            self._created = created
            self._known.clear()
        self._reconnects = nc.stats["reconnects"]
        self._ready = True

    def _stream_config(self) -> dict[str, Any]:
        return {
            "name": self._stream,
            "description": "grelmicro locks (NatsSyncBackend)",
            "subjects": [f"{self._prefix}>"],
            "retention": "limits",
            "max_consumers": -1,
            "max_msgs": -1,
            "max_bytes": -1,
            "max_age": 0,
            "max_msgs_per_subject": 1,
            "max_msg_size": -1,
            "discard": "new",
            "storage": "file",
            "num_replicas": self._replicas,
            "duplicate_window": 120 * _NS,
            "allow_direct": True,
            "allow_rollup_hdrs": True,
            "deny_delete": True,
            "allow_msg_ttl": True,
        }

    def _check_config(self, config: dict[str, Any], operation: str, name: str) -> None:
        stream = self._stream

        def fail(why: str) -> NatsSyncBackendBucketError:
            return NatsSyncBackendBucketError(
                operation=operation,
                name=name,
                detail=f"the existing KV bucket {self._bucket!r} (stream {stream!r}) "
                f"cannot hold locks: {why}",
            )

        if not config.get("allow_msg_ttl"):
            raise fail(
                "it does not allow per-message TTL, which the locks need so the "
                "server expires them. Enable it (NATS server 2.11+; it cannot be "
                f"turned off again): 'nats stream edit {stream} --allow-msg-ttl', "
                "or pass another bucket= and let NatsSyncBackend create it"
            )
        if not config.get("allow_rollup_hdrs"):
            raise fail(
                "it does not allow rollup headers, which releasing a lock uses. "
                f"Enable them: 'nats stream edit {stream} --allow-rollup', or pass "
                "another bucket="
            )
        if config.get("sealed"):
            raise fail("it is sealed (read-only); pass another bucket=")
        if config.get("mirror"):
            raise fail("it is a mirror (read-only); pass another bucket=")
        if f"{self._prefix}>" not in (config.get("subjects") or []):
            raise fail(
                f"its stream does not take the subjects '{self._prefix}>' (it is "
                "not a KV bucket); pass another bucket="
            )
        if config.get("discard") == "new" and config.get("discard_new_per_subject"):
            raise fail(
                "it discards new messages per subject, so a lock could never be "
                "rewritten; pass another bucket="
            )
        self._direct = bool(config.get("allow_direct"))
        # With history > 1, older values would come back when the newest
        # expires: every write then rolls the key's history up.
        self._rollup = config.get("max_msgs_per_subject") != 1
        self._max_age_ns = int(config.get("max_age") or 0)
        # With limit markers, the server raises short TTLs to the marker TTL:
        # the exact lease is then always written for readers to honour.
        self._always_lease_ms = bool(config.get("subject_delete_marker_ttl"))

    # Requests ----------------------------------------------------------------

    async def _request(
        self,
        nc: Client,
        subject: str,
        payload: bytes,
        headers: dict[str, str] | None,
        operation: str,
        name: str,
    ) -> Msg:
        if not nc.is_connected:
            # Not buffered for later: a request sent after reconnecting could
            # take a lock long after its caller gave up on it.
            raise NatsSyncBackendConnectionError(
                operation=operation,
                name=name,
                detail="the NATS connection is down (reconnecting or closed); "
                "nothing was sent",
            )
        try:
            return await nc.request(
                subject, payload, timeout=self.request_timeout, headers=headers
            )
        except nats.errors.NoRespondersError as exc:
            # Nothing answers for the bucket's stream: it was deleted (it is
            # created again on next use) or JetStream is not enabled.
            self._ready = False
            raise NatsSyncBackendConnectionError(
                operation=operation,
                name=name,
                detail=f"no JetStream answer for the KV bucket {self._bucket!r}: "
                "the bucket was deleted (it is created again on next use) or the "
                "server does not run JetStream (nats-server -js)",
            ) from exc
        except Exception as exc:
            raise _wrap(operation, name, exc) from exc

    async def _api(
        self,
        nc: Client,
        endpoint: str,
        body: dict[str, Any] | None,
        operation: str,
        name: str,
    ) -> dict[str, Any]:
        payload = b"" if body is None else json.dumps(body).encode()
        msg = await self._request(nc, _API + endpoint, payload, None, operation, name)
        return _json(msg.data, operation, name)

    async def _cas(
        self,
        nc: Client,
        key: str,
        payload: bytes,
        headers: dict[str, str],
        operation: str,
        name: str,
    ) -> tuple[int, int | None]:
        """Publish one compare-and-set.

        ``(seq, None)`` when stored; ``(0, last)`` when the key's last sequence
        was not the expected one (`last` is the actual one, when known).
        """
        msg = await self._request(
            nc, self._prefix + key, payload, headers, operation, name
        )
        data: bytes = msg.data
        if b'"error"' not in data:
            # The usual answer, {"stream":"KV_x","seq":42}: no JSON decoding.
            match = _ACK_SEQ.search(data)
            if match is not None:
                return int(match.group(1)), None
        reply = _json(data, operation, name)
        error = reply.get("error")
        if error is None:
            return int(reply["seq"]), None
        if error.get("err_code") in _WRONG_LAST_CODES:
            return 0, wrong_last_sequence(str(error.get("description", "")))
        if error.get("err_code") == _STREAM_NOT_FOUND:
            self._ready = False
        raise NatsSyncBackendError(
            operation=operation,
            name=name,
            detail=f"JetStream refused the write: {error.get('description')} "
            f"(code {error.get('err_code')})",
        )

    async def _read(
        self, nc: Client, key: str, operation: str, name: str
    ) -> _Entry | None:
        """The key's last entry; None when the key has none (never set, expired)."""
        if self._direct:
            msg = await self._request(
                nc, self._direct_prefix + key, b"", None, operation, name
            )
            headers: dict[str, str] = msg.headers or {}
            status = headers.get("Status")
            if status is not None and not msg.data:
                if status == "404":
                    return None
                raise NatsSyncBackendError(
                    operation=operation,
                    name=name,
                    detail=f"reading the key failed: {status} "
                    f"{headers.get('Description', '')}".strip(),
                )
            try:
                seq = int(headers["Nats-Sequence"])
                stamp = headers["Nats-Time-Stamp"]
            except (KeyError, ValueError) as exc:
                raise NatsSyncBackendError(
                    operation=operation,
                    name=name,
                    detail=f"unexpected direct get answer: headers={headers!r}",
                ) from exc
            data = msg.data
        else:
            reply = await self._api(
                nc,
                f"STREAM.MSG.GET.{self._stream}",
                {"last_by_subj": self._prefix + key},
                operation,
                name,
            )
            error = reply.get("error")
            if error is not None:
                if error.get("err_code") == _NO_MESSAGE or error.get("code") == 404:
                    return None
                raise NatsSyncBackendError(
                    operation=operation,
                    name=name,
                    detail=f"reading the key failed: {error.get('description')} "
                    f"(code {error.get('err_code')})",
                )
            message = reply.get("message") or {}
            seq = int(message["seq"])
            stamp = str(message["time"])
            raw_headers = message.get("hdrs")
            headers = (
                parse_headers(base64.b64decode(raw_headers)) if raw_headers else {}
            )
            data = base64.b64decode(message.get("data") or "")
        return self._entry(seq, stamp, headers, data)

    def _entry(
        self, seq: int, stamp: str, headers: dict[str, str], data: bytes
    ) -> _Entry:
        free = (
            headers.get(_KV_OPERATION) in _FREE_OPERATIONS or _MARKER_REASON in headers
        )
        token = None if free else data.decode("utf-8", "replace")
        ttl = parse_ttl(headers.get(_TTL))
        if ttl is None:  # "never": not even the bucket's max age removes it
            return _Entry(seq, token, None)
        written = parse_timestamp_ns(stamp)
        limits = [written + ttl * _NS] if ttl > 0 else []
        lease_ms = headers.get(_LEASE_MS)
        if lease_ms is not None and lease_ms.isdigit():
            # A lease shorter than the server's whole seconds: honour it.
            limits.append(written + int(lease_ms) * 1_000_000)
        if self._max_age_ns:
            limits.append(written + self._max_age_ns)
        return _Entry(seq, token, min(limits) if limits else None)

    def _estimated_server_now(self) -> int | None:
        """The server's time (ns) from the last `_server_now`, if recent.

        Counted on the local monotonic clock from a reading taken *after* the
        server's answer arrived, so it is never ahead of the server's clock:
        a remaining lease worked out from it is never too short.
        """
        clock = self._server_clock
        if clock is None:
            return None
        server_ns, local_ns = clock
        elapsed = time.monotonic_ns() - local_ns
        if elapsed > _SERVER_CLOCK_TTL_NS:
            return None
        return server_ns + elapsed

    async def _server_now(self, nc: Client, operation: str, name: str) -> int:
        """The server's current time (ns), from the bucket's stream info."""
        info = await self._api(nc, f"STREAM.INFO.{self._stream}", None, operation, name)
        local_ns = time.monotonic_ns()
        stamp = info.get("ts")
        if not isinstance(stamp, str):
            error = info.get("error") or {}
            raise NatsSyncBackendError(
                operation=operation,
                name=name,
                detail="the server did not give its time (stream info 'ts'): "
                f"{error.get('description', 'NATS server 2.11+ is needed')}",
            )
        server_ns = parse_timestamp_ns(stamp)
        self._server_clock = (server_ns, local_ns)
        return server_ns

    def _remember(
        self, key: str, seq: int, token: str | None, late: float | None = None
    ) -> None:
        knowns = self._known
        known = knowns.get(key)
        if known is not None:
            known.seq, known.token, known.late = seq, token, late
            return
        if len(knowns) >= _MAX_KNOWN:
            del knowns[next(iter(knowns))]
        knowns[key] = _Known(seq, token, late)

    def _key(self, name: str) -> str:
        try:
            return encode_key(name)
        except KeyEncodingError as exc:
            raise SyncSettingsValidationError(str(exc)) from exc

    # SyncBackend -------------------------------------------------------------

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
        return await self._acquire("acquire", name, token, duration) == 0.0

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

        Otherwise the seconds left on the holder's lease (> 0; `math.inf` when
        the holder's entry never expires). The time left is computed from the
        server's own clock (the entry's timestamp and the server's current
        time) and counted down on this machine's monotonic clock: no wall
        clocks of different machines are compared.
        """
        return await self._acquire("acquire_or_remaining", name, token, duration)

    async def _acquire(
        self, operation: str, name: str, token: str, duration: float
    ) -> float:
        key = self._key(name)
        try:
            ttl, lease_ms = _lease(duration)
        except ValueError as exc:
            raise SyncSettingsValidationError(str(exc)) from exc
        except TypeError as exc:  # unhashable
            msg = f"duration must be a number of seconds, got {duration!r}"
            raise SyncSettingsValidationError(msg) from exc
        nc = await self._client(operation, name)
        if self._max_age_ns and ttl * _NS > self._max_age_ns:
            raise NatsSyncBackendBucketError(
                operation=operation,
                name=name,
                detail=f"a lease of {ttl}s is longer than the bucket's max_age "
                f"({self._max_age_ns / _NS:g}s), which would expire it early: use a "
                "bucket without max_age or a shorter lease",
            )
        payload = token.encode()
        ttl_header = str(ttl)
        # The server only keeps whole seconds: a shorter or fractional lease
        # is also written in milliseconds, for readers to honour exactly.
        exact = self._always_lease_ms or lease_ms != ttl * 1000
        lease_header = str(lease_ms) if exact else None
        known = self._known.get(key)
        if known is None:
            expected = 0
        elif known.token is None or known.token == token:
            expected = known.seq  # free marker: re-take it; ours: extend it
        elif known.late is not None and time.monotonic() >= known.late:
            expected = known.seq  # another token's lease surely expired
        else:
            expected = 0  # held: the answer tells us whether it still is
        for _ in range(_ATTEMPTS):
            headers = {_EXPECTED: str(expected), _TTL: ttl_header}
            if lease_header is not None:
                headers[_LEASE_MS] = lease_header
            if self._rollup:
                headers["Nats-Rollup"] = "sub"
            seq, last = await self._cas(nc, key, payload, headers, operation, name)
            if seq:
                self._remember(key, seq, token)
                return 0.0
            if last == 0:
                expected = 0  # the key is gone (expired, swept): create it
                continue
            known = self._known.get(key)
            if last is not None and known is not None and known.seq == last:
                if known.token is None or known.token == token:
                    expected = last
                    continue
                if known.late is not None:
                    left = known.late - time.monotonic()
                    if left > 0:
                        return left
                    expected = last
                    continue
            entry = await self._read(nc, key, operation, name)
            if entry is None:
                expected = 0
                continue
            if entry.token is None or entry.token == token:
                self._remember(key, entry.seq, entry.token)
                expected = entry.seq
                continue
            # Another token holds it: has its lease run out on the server?
            if entry.expiry_ns is None:
                self._remember(key, entry.seq, entry.token, math.inf)
                return math.inf
            estimate = self._estimated_server_now()
            if estimate is not None and entry.expiry_ns - estimate > _SKIP_MARGIN_NS:
                # Surely still held: answer without asking the server for
                # its time. Only the answer uses the estimate (callers merely
                # wait on it); a takeover is always decided on a fresh
                # reading of the server's clock.
                self._remember(key, entry.seq, entry.token)
                return (entry.expiry_ns - estimate) / _NS
            now = await self._server_now(nc, operation, name)
            left_ns = entry.expiry_ns - now
            late = time.monotonic() + left_ns / _NS
            self._remember(key, entry.seq, entry.token, late)
            if left_ns > 0:
                return left_ns / _NS
            expected = entry.seq  # expired, not swept yet: take it over
        # Lost every race: other workers keep changing the key.
        return 1e-6

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
        nc = await self._client("release", name)
        known = self._known.get(key)
        expected = known.seq if known is not None and known.token == token else None
        for _ in range(_ATTEMPTS):
            if expected is None:
                entry = await self._read(nc, key, "release", name)
                if entry is None:
                    self._known.pop(key, None)
                    return False
                self._remember(key, entry.seq, entry.token)
                if entry.token != token:
                    return False
                expected = entry.seq
            headers = {
                _KV_OPERATION: "PURGE",
                "Nats-Rollup": "sub",
                _EXPECTED: str(expected),
                _TTL: str(MARKER_TTL_SECONDS),
            }
            seq, last = await self._cas(nc, key, b"", headers, "release", name)
            if seq:
                self._remember(key, seq, None)
                return True
            if last == 0:  # expired and removed meanwhile
                self._known.pop(key, None)
                return False
            expected = None
        return False

    async def locked(self, *, name: Annotated[str, Doc("The lock key.")]) -> bool:
        """Whether any token holds the lock (an expired lease is free)."""
        return await self._holder("locked", name) is not None

    async def owned(
        self,
        *,
        name: Annotated[str, Doc("The lock key.")],
        token: Annotated[str, Doc("The owner's token.")],
    ) -> bool:
        """Whether `token` holds the lock (an expired lease is not held)."""
        return await self._holder("owned", name) == token

    async def _holder(self, operation: str, name: str) -> str | None:
        key = self._key(name)
        nc = await self._client(operation, name)
        entry = await self._read(nc, key, operation, name)
        if entry is None or entry.token is None:
            return None
        if entry.expiry_ns is not None:
            now = await self._server_now(nc, operation, name)
            if now >= entry.expiry_ns:
                return None
        return entry.token

    async def wait_released(
        self, *, name: Annotated[str, Doc("The lock key.")]
    ) -> None:
        """Return once the lock is seen free: released, deleted, or its lease ran out.

        It listens to the key's subject (a plain NATS subscription, no
        JetStream consumer) and returns on the release marker, so a waiter
        can retry at once after a graceful release, and returns when the
        holder's lease runs out by the server's clock. It may return early
        (callers check again by acquiring).
        """
        key = self._key(name)
        nc = await self._client("wait_released", name)
        released = asyncio.Event()

        async def on_message(msg: Msg) -> None:
            headers = msg.headers or {}
            if (
                headers.get(_KV_OPERATION) in _FREE_OPERATIONS
                or _MARKER_REASON in headers
            ):
                released.set()

        try:
            subscription = await nc.subscribe(self._prefix + key, cb=on_message)
        except Exception as exc:
            raise _wrap("wait_released", name, exc) from exc
        try:
            # The subscription is in place before this read is answered (one
            # connection keeps its order): a release after it is not missed.
            entry = await self._read(nc, key, "wait_released", name)
            if entry is None or entry.token is None:
                return
            known = self._known.get(key)
            if known is not None and known.seq == entry.seq and known.late is not None:
                wait = known.late - time.monotonic()
            elif entry.expiry_ns is None:
                wait = math.inf
            else:
                now = await self._server_now(nc, "wait_released", name)
                wait = (entry.expiry_ns - now) / _NS
            if wait <= 0:
                return
            with anyio.move_on_after(wait):
                await released.wait()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await subscription.unsubscribe()
                except Exception:
                    logger.debug("Unsubscribing from %s failed", key, exc_info=True)


async def _on_reconnected() -> None:
    logger.info("NATS sync backend reconnected")


#: Options of the connection the backend opens from its URL: two seconds per
#: attempt; once connected it reconnects forever, every half second (a
#: backend outlives server restarts; its requests fail fast meanwhile).
_CONNECT_OPTIONS: Final[dict[str, Any]] = {
    "name": "grelmicro",
    "connect_timeout": 2,
    "reconnect_time_wait": 0.5,
    "reconnected_cb": _on_reconnected,
}


_ACK_SEQ: Final = re.compile(rb'"seq":\s*(\d+)')


@lru_cache(maxsize=1024, typed=True)
def _lease(duration: float) -> tuple[int, int]:
    """(TTL in whole seconds, lease in milliseconds) for `duration` seconds."""
    ttl = ttl_seconds(duration)
    return ttl, max(1, math.ceil(round(duration * 1000, 3)))


def _json(data: bytes, operation: str, name: str) -> dict[str, Any]:
    try:
        reply = json.loads(data)
    except ValueError as exc:
        raise NatsSyncBackendError(
            operation=operation,
            name=name,
            detail=f"unreadable JetStream reply {data[:200]!r}",
        ) from exc
    if not isinstance(reply, dict):
        raise NatsSyncBackendError(
            operation=operation,
            name=name,
            detail=f"unexpected JetStream reply {data[:200]!r}",
        )
    return reply


def _wrap(operation: str, name: str, exc: BaseException) -> NatsSyncBackendError:
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, TimeoutError):  # nats.errors.TimeoutError included
        return NatsSyncBackendTimeoutError(
            operation=operation, name=name, detail=f"no answer in time ({detail})"
        )
    if isinstance(
        exc,
        nats.errors.ConnectionClosedError
        | nats.errors.ConnectionDrainingError
        | nats.errors.ConnectionReconnectingError
        | nats.errors.StaleConnectionError
        | nats.errors.NoServersError
        | nats.errors.OutboundBufferLimitError
        | OSError,
    ):
        return NatsSyncBackendConnectionError(
            operation=operation, name=name, detail=detail
        )
    return NatsSyncBackendError(operation=operation, name=name, detail=detail)


def _check_url(url: object, source: str) -> list[str]:
    """The server URLs in `url` (comma-separated), each checked."""
    if not isinstance(url, str) or not url.strip():
        msg = f"{source} must be a non-empty NATS URL string, got {url!r}"
        raise SyncSettingsValidationError(msg)
    servers: list[str] = []
    for part in url.split(","):
        server = part.strip()
        full = server if "://" in server else f"nats://{server}"
        try:
            parsed = urlparse(full)
            _ = parsed.port  # raises ValueError on a bad port
        except ValueError as exc:
            msg = f"Invalid NATS URL {_redact(url)!r} (from {source}): {exc}"
            raise SyncSettingsValidationError(msg) from exc
        if parsed.scheme not in _URL_SCHEMES:
            msg = (
                f"Invalid NATS URL {_redact(url)!r} (from {source}): the scheme "
                f"must be nats://, tls://, ws:// or wss://, got {parsed.scheme}://"
            )
            raise SyncSettingsValidationError(msg)
        if not parsed.hostname:
            msg = f"Invalid NATS URL {_redact(url)!r} (from {source}): no host"
            raise SyncSettingsValidationError(msg)
        servers.append(full)
    return servers


def _redact(url: str) -> str:
    """`url` (possibly comma-separated) without passwords."""
    parts = []
    for part in url.split(","):
        try:
            parsed = urlparse(part.strip())
            password = parsed.password
        except ValueError:
            parts.append("<invalid url>")
            continue
        if password is None:
            parts.append(part.strip())
        else:
            netloc = parsed.netloc.replace(f":{password}@", ":***@", 1)
            parts.append(parsed._replace(netloc=netloc).geturl())
    return ",".join(parts)


__all__ = [
    "MARKER_TTL_SECONDS",
    "NatsSyncBackend",
    "NatsSyncBackendBucketError",
    "NatsSyncBackendConnectionError",
    "NatsSyncBackendError",
    "NatsSyncBackendTimeoutError",
]
