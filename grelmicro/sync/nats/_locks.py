"""The lock algorithm: take, extend and release a key by compare-and-set.

A lock is one key holding its owner's token. Every write is conditioned on
the key's last sequence and carries a per-message TTL in whole seconds: the
server expires an abandoned lock, and it is the only judge of expiry. No
timestamp of the server is ever compared with another clock (after a
stream-leader change, the entry's timestamp and a later reading of "now"
would come from different machines).

The sequence of the write that took the lock is its fencing token; an
extension carries it in the ``Grelmicro-Fence`` header, so a holder reads
back the same token as long as its holding lasts without a gap.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Final

from grelmicro.sync.abc import FencedAcquire
from grelmicro.sync.nats._jetstream import EXPECTED, FENCE, KV_OPERATION, ROLLUP, TTL

if TYPE_CHECKING:
    from nats.aio.client import Client

    from grelmicro.sync.nats._jetstream import Entry, JetStream
    from grelmicro.sync.nats._known import KnownKeys

#: Seconds a release marker (an empty purge entry) stays in the bucket before
#: the server removes it, so buckets with many short-lived lock names do not
#: grow forever.
MARKER_TTL_SECONDS: Final = 60

#: How many compare-and-set attempts one call makes before giving up a race.
ATTEMPTS: Final = 5

#: The answer when a lease should have ended but the server has not removed
#: the key yet (it removes expired keys within milliseconds): ask again soon.
_ALMOST: Final = 0.01

_NS: Final = 1_000_000_000


class Locks:
    """Lock operations on one bucket."""

    def __init__(self, jetstream: JetStream, known: KnownKeys) -> None:
        self.js = jetstream
        self.known = known

    def lease_ttl(self, entry: Entry) -> int | None:
        """Whole seconds `entry` can live at most (None: forever)."""
        ttl = entry.ttl
        max_age = self.js.config.max_age_ns
        if ttl is None:
            return None
        if ttl == 0:
            return math.ceil(max_age / _NS) if max_age else None
        return min(ttl, math.ceil(max_age / _NS)) if max_age else ttl

    def _busy(self, key: str, entry: Entry) -> FencedAcquire:
        known = self.known.observed(
            key, entry.seq, entry.token, entry.fence, self.lease_ttl(entry)
        )
        assert known.late is not None
        left = known.late - time.monotonic()
        return FencedAcquire(None, left if left > 0 else _ALMOST)

    async def acquire(
        self,
        nc: Client,
        operation: str,
        name: str,
        key: str,
        token: str,
        ttl: int,
    ) -> FencedAcquire:
        """Take or extend `key` for `ttl` seconds: one write on the common path."""
        payload = token.encode()
        ttl_header = str(ttl)
        known = self.known.get(key)
        # The fencing token to carry when extending a holding without a gap.
        fence: int | None = None
        if known is None:
            expected = 0
        elif known.token is None:
            expected = known.seq  # free marker: re-take it
        elif known.token == token:
            expected, fence = known.seq, known.fence  # ours: extend it
        elif known.late is not None and time.monotonic() >= known.late:
            expected = 0  # another token's lease ended: the key is gone
        else:
            expected = 0  # held: the answer tells us whether it still is
        for _ in range(ATTEMPTS):
            headers = {EXPECTED: str(expected), TTL: ttl_header}
            if fence is not None:
                headers[FENCE] = str(fence)
            seq, last = await self.js.put(nc, key, payload, headers, operation, name)
            if seq:
                fence = seq if fence is None else fence
                self.known.remember(key, seq, token, fence)
                return FencedAcquire(fence, 0.0)
            fence = None
            if last == 0:
                expected = 0  # the key is gone (expired): create it
                continue
            known = self.known.get(key)
            if last is not None and known is not None and known.seq == last:
                if known.token is None:
                    expected = last
                    continue
                if known.token == token:
                    expected, fence = last, known.fence
                    continue
                if known.late is not None:
                    left = known.late - time.monotonic()
                    return FencedAcquire(None, left if left > 0 else _ALMOST)
            entry = await self.js.read(nc, key, operation, name)
            if entry is None:
                expected = 0
                continue
            if entry.token is None or entry.token == token:
                self.known.remember(key, entry.seq, entry.token, entry.fence)
                expected = entry.seq
                fence = entry.fence if entry.token == token else None
                continue
            return self._busy(key, entry)
        # Lost every race: other workers keep changing the key.
        return FencedAcquire(None, 1e-6)

    async def release(
        self, nc: Client, operation: str, name: str, key: str, token: str
    ) -> bool:
        """Replace `key` by a purge marker if `token` holds it."""
        known = self.known.get(key)
        expected = known.seq if known is not None and known.token == token else None
        for _ in range(ATTEMPTS):
            if expected is None:
                entry = await self.js.read(nc, key, operation, name)
                if entry is None:
                    self.known.forget(key)
                    return False
                self.known.remember(key, entry.seq, entry.token, entry.fence)
                if entry.token != token:
                    return False
                expected = entry.seq
            headers = {
                KV_OPERATION: "PURGE",
                ROLLUP: "sub",
                EXPECTED: str(expected),
                TTL: str(MARKER_TTL_SECONDS),
            }
            seq, last = await self.js.put(nc, key, b"", headers, operation, name)
            if seq:
                self.known.remember(key, seq, None, seq)
                return True
            if last == 0:  # expired and removed meanwhile
                self.known.forget(key)
                return False
            expected = None
        return False

    async def holder(
        self, nc: Client, operation: str, name: str, key: str
    ) -> str | None:
        """The token holding `key`, None when free (the server removes expired keys)."""
        entry = await self.js.read(nc, key, operation, name)
        if entry is None or entry.token is None:
            return None
        return entry.token

    async def time_left(self, nc: Client, operation: str, name: str, key: str) -> float:
        """At most how long `key` stays held (0.0 when free), by this machine's clock."""
        entry = await self.js.read(nc, key, operation, name)
        if entry is None or entry.token is None:
            return 0.0
        return self._busy(key, entry).remaining
