"""The lock algorithm: take, extend and release a key by compare-and-set.

A lock is one key holding its owner's token. Every write is conditioned on
the key's last sequence and carries a per-message TTL in whole seconds (the
server's unit, at least one second), so the server removes an abandoned
lock. A lease that is not a whole number of seconds is also written exactly
(header ``Grelmicro-Lease-Ms``).

**No clock but this machine's monotonic clock.** A worker that sees another
token's entry counts its lease from the moment it *received* that entry
(``late = seen + lease``): the entry was written before, so the lease surely
ended by then, whichever server stamped it and whatever its clock says.
Once ``late`` passes, the worker takes the lock over with a compare-and-set
on the sequence it saw (a holder that extended meanwhile changed the
sequence, so the takeover fails). A holder counts its own lease from before
it sent the write, so it gives the lease up before any other worker can
take it. No server timestamp is compared with any clock: a stream-leader
change in a cluster (the next server's clock) cannot shorten a lease.

**A loser learns it lost from its failed write.** The failure names the
key's last sequence. When it is newer than any this backend saw, and the
last holding it knew had ended, another worker took the key:
`acquire_fenced` answers busy with that holding's lease as the estimate,
without reading the entry (an *unread* entry, `Known.seen`). The entry is
read only if it is still there at the next attempt (it may be held longer,
or be a release marker), except just past its estimated end, where the
server's TTL is left to remove it (`EXPIRY_LAG`). A takeover is never
based on an estimate: only on a lease read from the entry.

The sequence of the write that took the lock is its fencing token; an
extension carries it in the ``Grelmicro-Fence`` header, so a holder reads
back the same token as long as its holding lasts without a gap.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Final

from grelmicro.sync.abc import FencedAcquire
from grelmicro.sync.nats._jetstream import (
    EXPECTED,
    FENCE,
    KV_OPERATION,
    LEASE_MS,
    ROLLUP,
    TTL,
)

if TYPE_CHECKING:
    from nats.aio.client import Client

    from grelmicro.sync.nats._jetstream import Entry, JetStream
    from grelmicro.sync.nats._known import Known, KnownKeys

#: Seconds a release marker (an empty purge entry) stays in the bucket before
#: the server removes it, so buckets with many short-lived lock names do not
#: grow forever.
MARKER_TTL_SECONDS: Final = 60

#: Seconds an entry whose lease ended may stay on the server before its TTL
#: removes it (measured: 1-7 ms on an idle server; more under load). An
#: unread entry still there within this delay is waited for, not read.
EXPIRY_LAG: Final = 0.05

#: How many compare-and-set attempts one call makes before giving up a race.
ATTEMPTS: Final = 5

_NS: Final = 1_000_000_000


def _ended(known: Known, lease: float) -> float:
    """When the holding `known` surely ended (its own lease, or, for an
    unread entry, `lease` counted from when it was seen)."""
    if known.seen is not None:
        return known.seen + lease
    return math.inf if known.late is None else known.late


class Locks:
    """Lock operations on one bucket."""

    def __init__(self, jetstream: JetStream, known: KnownKeys) -> None:
        self.js = jetstream
        self.known = known

    def lease_of(self, entry: Entry) -> float | None:
        """Seconds `entry`'s lease lasts from its write (None: forever)."""
        max_age = self.js.config.max_age_ns / _NS
        lease = entry.lease
        if lease is None:
            return None  # "never": not even the bucket's max_age removes it
        if lease <= 0:
            return max_age or None
        return min(lease, max_age) if max_age else lease

    def _seen(self, key: str, entry: Entry) -> Known:
        """Record another token's entry, received now."""
        return self.known.observed(
            key, entry.seq, entry.token, entry.fence, self.lease_of(entry)
        )

    async def acquire(
        self,
        nc: Client,
        operation: str,
        name: str,
        key: str,
        token: str,
        ttl: int,
        lease_ms: int,
        *,
        exact: bool = True,
    ) -> FencedAcquire:
        """Take or extend `key`: one write on the common path.

        The lease is `lease_ms` milliseconds, kept `ttl` whole seconds on the
        server. When another token holds the key, `remaining` is at most how
        long its lease lasts, read if needed. Without `exact`, a write failing
        on an entry newer than any seen is not read: `remaining` is then the
        lease of the last holding known on the key (an estimate; the entry is
        read at the next attempt if it is still there).
        """
        sent = time.monotonic()
        payload = token.encode()
        base = {TTL: str(ttl)}
        if lease_ms != ttl * 1000 or self.js.config.always_lease_ms:
            base[LEASE_MS] = str(lease_ms)
        known = self.known.get(key)
        # The fencing token to carry when extending a holding without a gap.
        fence: int | None = None
        if known is None or known.seen is not None:
            expected = 0  # unknown or unread: the answer tells whether it is held
        elif known.token is None:
            expected = known.seq  # free marker: re-take it
        elif known.token == token:
            expected = known.seq  # ours: extend it, unless it lapsed
            if known.late is None or sent < known.late:
                fence = known.fence
        elif known.late is not None and sent >= known.late:
            expected = known.seq  # another token's lease surely ended
        else:
            expected = 0  # held: the answer tells us whether it still is
        for _ in range(ATTEMPTS):
            headers = {EXPECTED: str(expected), **base}
            if fence is not None:
                headers[FENCE] = str(fence)
            seq, last = await self.js.put(nc, key, payload, headers, operation, name)
            if seq:
                fence = seq if fence is None else fence
                lease = lease_ms / 1000
                self.known.remember(key, seq, token, fence, sent + lease, lease)
                return FencedAcquire(fence, 0.0)
            fence = None
            if last == 0:
                expected = 0  # the key is gone (expired): create it
                continue
            known = self.known.get(key)
            if last is not None and known is not None:
                if known.seq == last:
                    if known.seen is not None:
                        estimate = known.lease
                        if not exact and estimate is not None:
                            # Still there just after it would end if its lease
                            # is the last holding's: the server removes it
                            # (whole seconds) in a moment. Otherwise (it may
                            # be held longer, or be a release marker) read it.
                            ends = known.seen + estimate
                            now = time.monotonic()
                            if ends <= now < ends + EXPIRY_LAG:
                                return FencedAcquire(None, ends + EXPIRY_LAG - now)
                    elif known.token is None:
                        expected = last
                        continue
                    elif known.token != token and known.late is not None:
                        left = known.late - time.monotonic()
                        if left > 0:
                            return FencedAcquire(None, left)
                        expected = last  # its lease ended: take it over
                        continue
                elif (
                    not exact
                    and last > known.seq
                    and known.token is not None
                    and known.lease is not None
                    and time.monotonic() >= _ended(known, known.lease)
                ):
                    # A newer write than any seen, after the last holding
                    # known had ended: another worker took the key. A loser
                    # only needs to know it lost: no read. The new holding's
                    # lease is taken to be the last one's; the entry is read
                    # if it is still there at the next attempt (were it a
                    # release marker, that attempt takes the key).
                    self.known.unread(key, last, time.monotonic())
                    return FencedAcquire(None, known.lease)
            entry = await self.js.read(nc, key, operation, name)
            if entry is None:
                expected = 0
                continue
            expected = entry.seq
            if entry.token is None:
                self.known.remember(key, entry.seq, None, entry.fence)
                continue
            if entry.token == token:
                # Ours (an answer that was lost, or another backend object
                # with the same token): extend it, with its fencing token.
                self.known.remember(
                    key, entry.seq, token, entry.fence, None, self.lease_of(entry)
                )
                fence = entry.fence
                continue
            seen = self._seen(key, entry)
            if seen.late is not None:
                left = seen.late - time.monotonic()
                if left > 0:
                    return FencedAcquire(None, left)
                continue  # its lease ended: take it over
            return FencedAcquire(None, math.inf)
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
                if entry.token != token:
                    if entry.token is not None:
                        self._seen(key, entry)
                    return False
                self.known.remember(
                    key, entry.seq, token, entry.fence, None, self.lease_of(entry)
                )
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

    async def read(
        self, nc: Client, operation: str, name: str, key: str
    ) -> Entry | None:
        """Read `key`'s last entry, remembering a release marker or its absence."""
        entry = await self.js.read(nc, key, operation, name)
        if entry is None:
            self.known.forget(key)
        elif entry.token is None:
            self.known.remember(key, entry.seq, None, entry.fence)
        return entry

    async def holder(
        self, nc: Client, operation: str, name: str, key: str
    ) -> str | None:
        """The token holding `key`; None when free.

        A lease this backend saw end (by its own clock, see the module
        documentation) is free even before the server removes the key.
        """
        entry = await self.read(nc, operation, name, key)
        if entry is None or entry.token is None:
            return None
        known = self.known.get(key)
        if known is None or known.seq != entry.seq or known.token != entry.token:
            known = self._seen(key, entry)
        if known.late is not None and time.monotonic() >= known.late:
            return None
        return entry.token

    async def time_left(self, nc: Client, operation: str, name: str, key: str) -> float:
        """At most how long `key` stays held (0.0 when free), by this machine's clock."""
        entry = await self.read(nc, operation, name, key)
        if entry is None or entry.token is None:
            return 0.0
        known = self.known.get(key)
        if known is None or known.seq != entry.seq or known.token != entry.token:
            known = self._seen(key, entry)
        if known.late is None:
            return math.inf
        return max(0.0, known.late - time.monotonic())
