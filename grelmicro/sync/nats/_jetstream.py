"""The JetStream calls of the backend, over nats-py's public API.

Three calls: a compare-and-set write (a publish with the
``Nats-Expected-Last-Subject-Sequence`` header), a read of a key's last entry
(`get_msg`, direct when the bucket allows it), and the bucket's provisioning
(`stream_info` / `add_stream`). Every nats-py error is turned into a
`NatsSyncBackendError` naming the operation and the lock name.

One exception, measured: the write is a plain request whose usual ack is
read with a regular expression (see `_ACK_SEQ` for the figures); its errors
still go through nats-py's typed `APIError`.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Final

import nats.errors
import nats.js.errors
from nats.js import api

from grelmicro.sync.nats._codec import parse_ttl, wrong_last_sequence
from grelmicro.sync.nats.errors import (
    MALFORMED_REPLY_ERRORS,
    NatsSyncBackendBucketError,
    NatsSyncBackendConnectionError,
    NatsSyncBackendError,
    wrap,
)

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

    from grelmicro.sync.nats._connection import Connection

EXPECTED: Final = "Nats-Expected-Last-Subject-Sequence"
TTL: Final = "Nats-TTL"
ROLLUP: Final = "Nats-Rollup"
KV_OPERATION: Final = "KV-Operation"
MARKER_REASON: Final = "Nats-Marker-Reason"
#: On an extension: the fencing token of the holding (the sequence of the
#: write that took the lock), carried from write to write.
FENCE: Final = "Grelmicro-Fence"
#: The exact lease in milliseconds, when it is not a whole number of seconds
#: (the server keeps whole seconds, rounded up).
LEASE_MS: Final = "Grelmicro-Lease-Ms"
_FREE_OPERATIONS: Final = ("DEL", "PURGE")

#: JetStream error codes: wrong last (subject) sequence, stream in use,
#: stream not found.
_WRONG_LAST_CODES: Final = (10071, 10164)
_STREAM_IN_USE: Final = 10058
_STREAM_NOT_FOUND: Final = 10059
_NS: Final = 1_000_000_000

#: The usual ack, ``{"stream":"KV_x","seq":42}``, read without JSON decoding.
#: The write is the whole common path (taking a free lock, extending it,
#: releasing it: one write each), so it stays a plain request. Measured on
#: the lock cycle (acquire + release, 16 concurrent lockers, best of 7 runs,
#: nats-server 2.15, 2 shared cores): `JetStreamContext.publish` (a JSON
#: decoding and a `PubAck` dataclass per write) costs 140-149 us of CPU per
#: cycle against 112-126 us here, and 5120-5333 cycles/s against 5938-6703,
#: past the 5% budget. Errors still go through nats-py's typed `APIError`.
_ACK_SEQ: Final = re.compile(rb'\{"stream":"[^"]*",\s*"seq":\s*(\d+)')


class Entry:
    """A key's last entry, as read from the server."""

    __slots__ = ("fence", "lease", "seq", "token")

    def __init__(
        self, seq: int, token: str | None, lease: float | None, fence: int
    ) -> None:
        self.seq = seq
        #: The holder's token; None for a release or delete marker (free).
        self.token = token
        #: Seconds its lease lasts from its write: the exact lease when
        #: written, else the server's TTL (0: no TTL, only the bucket's
        #: max_age ends it; None: it never expires).
        self.lease = lease
        #: The fencing token of the holding: the sequence of the write that
        #: took the lock (carried by extensions in a header).
        self.fence = fence


class BucketConfig:
    """What the backend must know of an existing bucket's configuration."""

    __slots__ = ("always_lease_ms", "direct", "max_age_ns", "rollup")

    def __init__(self) -> None:
        self.direct = True
        #: With history > 1, older values would come back when the newest
        #: expires: every write then rolls the key's history up.
        self.rollup = False
        self.max_age_ns = 0
        #: With limit markers, the server raises short TTLs to the marker
        #: TTL: the exact lease is then always written for readers.
        self.always_lease_ms = False


class JetStream:
    """The JetStream calls on one bucket, over the connection's client."""

    def __init__(self, connection: Connection, bucket: str, timeout: float) -> None:
        self.connection = connection
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self.prefix = f"$KV.{bucket}."
        self.timeout = timeout
        self.config = BucketConfig()
        self.created: object = None
        self._js: JetStreamContext | None = None
        self._js_of: tuple[Client, float] | None = None

    def context(self, nc: Client) -> JetStreamContext:
        """nats-py's JetStream context for `nc` (one per client and timeout)."""
        js = self._js
        if js is None or self._js_of != (nc, self.timeout):
            js = self._js = nc.jetstream(timeout=self.timeout)
            self._js_of = (nc, self.timeout)
        return js

    def _check_connected(self, nc: Client, operation: str, name: str) -> None:
        if not nc.is_connected:
            # Not buffered for later: a request sent after reconnecting could
            # take a lock long after its caller gave up on it.
            raise NatsSyncBackendConnectionError(
                operation=operation,
                name=name,
                detail="the NATS connection is down (reconnecting or closed); "
                "nothing was sent",
            )

    def _no_stream(self, operation: str, name: str) -> NatsSyncBackendError:
        # Nothing answers for the bucket's stream: it was deleted (it is
        # created again on next use) or JetStream is not enabled.
        self.connection.invalidate()
        return NatsSyncBackendConnectionError(
            operation=operation,
            name=name,
            detail=f"no JetStream answer for the KV bucket {self.bucket!r}: the "
            "bucket was deleted (it is created again on next use) or the server "
            "does not run JetStream (nats-server -js)",
        )

    async def put(
        self,
        nc: Client,
        key: str,
        payload: bytes,
        headers: dict[str, str],
        operation: str,
        name: str,
    ) -> tuple[int, int | None]:
        """Write one entry, conditioned on the key's last sequence (in `headers`).

        ``(seq, None)`` when stored; ``(0, last)`` when the key's last sequence
        was not the expected one (`last` is the actual one when the server
        says it: a hint that may save a read, never relied upon).
        """
        self._check_connected(nc, operation, name)
        if self.config.rollup:
            headers[ROLLUP] = "sub"
        try:
            # A plain request, not `JetStreamContext.publish`: see _ACK_SEQ.
            msg = await nc.request(
                self.prefix + key, payload, timeout=self.timeout, headers=headers
            )
        except nats.errors.NoRespondersError as exc:
            raise self._no_stream(operation, name) from exc
        except Exception as exc:
            raise wrap(operation, name, exc) from exc
        data: bytes = msg.data
        if b'"error"' not in data:
            match = _ACK_SEQ.match(data)
            if match is not None:
                return int(match.group(1)), None
        try:
            reply = json.loads(data)
            if "error" not in reply:
                return int(reply["seq"]), None
            # nats-py's typed error: its err_code, never its English text.
            nats.js.errors.APIError.from_error(reply["error"])
        except nats.js.errors.APIError as exc:
            if exc.err_code in _WRONG_LAST_CODES:
                return 0, wrong_last_sequence(exc.description or "")
            if exc.err_code == _STREAM_NOT_FOUND:
                self.connection.invalidate()
            raise wrap(operation, name, exc) from exc
        except Exception as exc:
            raise wrap(operation, name, exc) from exc
        raise wrap(operation, name, ValueError(f"unexpected ack {data[:200]!r}"))

    async def read(
        self, nc: Client, key: str, operation: str, name: str
    ) -> Entry | None:
        """The key's last entry; None when the key has none (never set, expired)."""
        self._check_connected(nc, operation, name)
        try:
            msg = await self.context(nc).get_msg(
                self.stream, subject=self.prefix + key, direct=self.config.direct
            )
            headers = msg.headers or {}
            free = (
                headers.get(KV_OPERATION) in _FREE_OPERATIONS
                or MARKER_REASON in headers
            )
            seq = int(msg.seq)  # type: ignore[arg-type]
            data = msg.data or b""
            fence = headers.get(FENCE)
            lease: float | None = parse_ttl(headers.get(TTL))
            lease_ms = headers.get(LEASE_MS)
            if lease and lease_ms is not None:
                lease = min(lease, int(lease_ms) / 1000)
            return Entry(
                seq,
                None if free else data.decode("utf-8", "replace"),
                lease,
                int(fence) if fence is not None else seq,
            )
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code == _STREAM_NOT_FOUND:
                raise self._no_stream(operation, name) from exc
            return None
        except (
            nats.errors.NoRespondersError,
            nats.js.errors.ServiceUnavailableError,
        ) as exc:
            raise self._no_stream(operation, name) from exc
        except Exception as exc:
            raise wrap(operation, name, exc) from exc

    # Provisioning ----------------------------------------------------------------

    async def prepare(
        self, nc: Client, operation: str, name: str, replicas: int
    ) -> None:
        """Find or create the bucket and check that it can hold locks."""
        js = self.context(nc)
        try:
            try:
                info = await js.stream_info(self.stream)
            except nats.js.errors.NotFoundError:
                try:
                    info = await js.add_stream(self._stream_config(replicas))
                except nats.js.errors.APIError as exc:
                    if exc.err_code != _STREAM_IN_USE:
                        raise
                    # Created meanwhile by another worker, with another config.
                    info = await js.stream_info(self.stream)
        except nats.js.errors.APIError as exc:
            if isinstance(exc, nats.js.errors.ServiceUnavailableError):
                raise self._no_stream(operation, name) from exc
            raise NatsSyncBackendBucketError(
                operation=operation,
                name=name,
                detail=f"cannot find or create the KV bucket {self.bucket!r}: "
                f"{exc.description} (code {exc.err_code})",
            ) from exc
        except Exception as exc:
            raise wrap(operation, name, exc) from exc
        try:
            self._check_config(info.config, operation, name)
        except MALFORMED_REPLY_ERRORS as exc:
            raise wrap(operation, name, exc) from exc
        if info.created != self.created:
            self.created = info.created
            self.connection.forget()

    def _stream_config(self, replicas: int) -> api.StreamConfig:
        return api.StreamConfig(
            name=self.stream,
            description="grelmicro locks (NatsSyncBackend)",
            subjects=[f"{self.prefix}>"],
            retention=api.RetentionPolicy.LIMITS,
            max_consumers=-1,
            max_msgs=-1,
            max_bytes=-1,
            max_age=0,
            max_msgs_per_subject=1,
            max_msg_size=-1,
            discard=api.DiscardPolicy.NEW,
            storage=api.StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=120,
            allow_direct=True,
            allow_rollup_hdrs=True,
            deny_delete=True,
            allow_msg_ttl=True,
        )

    def _check_config(
        self, config: api.StreamConfig, operation: str, name: str
    ) -> None:
        stream = self.stream

        def fail(why: str) -> NatsSyncBackendBucketError:
            return NatsSyncBackendBucketError(
                operation=operation,
                name=name,
                detail=f"the existing KV bucket {self.bucket!r} (stream {stream!r}) "
                f"cannot hold locks: {why}",
            )

        if not config.allow_msg_ttl:
            raise fail(
                "it does not allow per-message TTL, which the locks need so the "
                "server expires them. Enable it (NATS server 2.11+; it cannot be "
                f"turned off again): 'nats stream edit {stream} --allow-msg-ttl', "
                "or pass another bucket= and let NatsSyncBackend create it"
            )
        if not config.allow_rollup_hdrs:
            raise fail(
                "it does not allow rollup headers, which releasing a lock uses. "
                f"Enable them: 'nats stream edit {stream} --allow-rollup', or pass "
                "another bucket="
            )
        if config.sealed:
            raise fail("it is sealed (read-only); pass another bucket=")
        if config.mirror:
            raise fail("it is a mirror (read-only); pass another bucket=")
        if f"{self.prefix}>" not in (config.subjects or []):
            raise fail(
                f"its stream does not take the subjects '{self.prefix}>' (it is "
                "not a KV bucket); pass another bucket="
            )
        if config.discard == api.DiscardPolicy.NEW and config.discard_new_per_subject:
            raise fail(
                "it discards new messages per subject, so a lock could never be "
                "rewritten; pass another bucket="
            )
        self.config.direct = bool(config.allow_direct)
        self.config.rollup = config.max_msgs_per_subject != 1
        self.config.max_age_ns = int((config.max_age or 0) * _NS)
        self.config.always_lease_ms = bool(config.subject_delete_marker_ttl)
