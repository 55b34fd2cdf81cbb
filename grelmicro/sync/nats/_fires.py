"""Cron fire claims on JetStream KV.

Per task name, one persistent *high-water* key (``<key>.fire``) holds the
latest claimed fire (ms since the epoch); a claim is a compare-and-set on its
sequence, so a fire is claimed once and an older fire never after a later
one. The sequence of that winning write is the claim's fencing token.

A leased claim (at-least-once) also writes one *lease* key per fire
(``<key>.fire.<ms>``) holding the claimant's token with a per-message TTL;
`keep_fire` extends it, `finish_fire` replaces it by a completed marker (an
empty value) kept `FIRE_DONE_RETENTION` seconds for watchers, and once the
lease expired unfinished, `retake_fire` creates it anew (compare-and-set on
"absent"), so one worker takes a lapsed fire over. Encoded lock keys never
contain a dot, so these keys never collide with a lock's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from grelmicro.sync.abc import FIRE_BEHIND, FireRetake
from grelmicro.sync.nats._codec import ttl_seconds
from grelmicro.sync.nats._jetstream import EXPECTED, FENCE, TTL
from grelmicro.sync.nats._locks import ATTEMPTS
from grelmicro.sync.nats.errors import NatsSyncBackendError

if TYPE_CHECKING:
    from nats.aio.client import Client

    from grelmicro.sync.nats._jetstream import Entry, JetStream
    from grelmicro.sync.nats._known import KnownKeys

#: Seconds a completed leased fire is remembered, so that a worker watching
#: it learns it completed (as the memory backend does).
FIRE_DONE_RETENTION: Final = 60

#: The value of a completed fire's lease key (no claimant has an empty token).
_DONE: Final = ""


def high_water_key(key: str) -> str:
    """The key holding the latest claimed fire of the task key `key`."""
    return f"{key}.fire"


def lease_key(key: str, fire: int) -> str:
    """The key holding the lease on one fire."""
    return f"{key}.fire.{fire}"


class Fires:
    """Fire claim operations on one bucket."""

    def __init__(self, jetstream: JetStream, known: KnownKeys) -> None:
        self.js = jetstream
        self.known = known

    async def _high_water(
        self, nc: Client, operation: str, name: str, key: str
    ) -> tuple[int, int | None]:
        """(sequence, latest claimed fire) of the high-water key, read now."""
        entry = await self.js.read(nc, key, operation, name)
        if entry is None:
            return 0, None
        fire = None if entry.token is None else _fire_value(entry, operation, name)
        self.known.remember(key, entry.seq, entry.token, entry.fence)
        return entry.seq, fire

    async def last_fire(self, nc: Client, name: str, key: str) -> int | None:
        """The latest fire claimed for `key`."""
        _, fire = await self._high_water(nc, "last_fire", name, high_water_key(key))
        return fire

    async def claim(
        self,
        nc: Client,
        name: str,
        key: str,
        fire: int,
        token: str,
        lease: float | None,
        after: int | None = None,
    ) -> int | None:
        """Claim `fire`; its fencing token, or None when it (or a later) was
        claimed, or `FIRE_BEHIND` when the latest claimed is older than `after`."""
        operation = "claim_fire"
        hw = high_water_key(key)
        known = self.known.get(hw)
        last: int | None
        # Whether `last` is the mark this process remembers (maybe stale).
        cached = False
        if known is not None and known.token is not None and known.token.isdigit():
            expected, last, cached = known.seq, int(known.token), True
        else:
            expected, last = await self._high_water(nc, operation, name, hw)
        for _ in range(ATTEMPTS):
            if last is not None and fire <= last:
                return None
            if last is not None and after is not None and last < after:
                if not cached:
                    return FIRE_BEHIND
                # The remembered mark may be stale: read it before answering.
                cached = False
                expected, last = await self._high_water(nc, operation, name, hw)
                continue
            value = str(fire)
            seq, _hint = await self.js.put(
                nc, hw, value.encode(), {EXPECTED: str(expected)}, operation, name
            )
            if seq:
                self.known.remember(hw, seq, value, seq)
                break
            cached = False
            expected, last = await self._high_water(nc, operation, name, hw)
        else:
            return None
        if lease is None:
            return seq
        # The lease key is created (never overwritten): if a worker retook
        # the fire in between (it saw the claim without a lease), it wins.
        lk = lease_key(key, fire)
        headers = {EXPECTED: "0", TTL: str(ttl_seconds(lease)), FENCE: str(seq)}
        held, _ = await self.js.put(nc, lk, token.encode(), headers, operation, name)
        if not held:
            return None
        self.known.remember(lk, held, token, seq)
        return seq

    async def _holding(
        self, nc: Client, operation: str, name: str, lk: str, token: str
    ) -> tuple[int, int] | None:
        """(sequence, fence) of the lease on `lk` when `token` holds it."""
        known = self.known.get(lk)
        if known is not None and known.token == token:
            return known.seq, known.fence
        entry = await self.js.read(nc, lk, operation, name)
        if entry is None or entry.token != token:
            return None
        return entry.seq, entry.fence

    async def _rewrite(
        self,
        nc: Client,
        operation: str,
        name: str,
        lk: str,
        token: str,
        value: str,
        ttl: int,
    ) -> bool:
        """Rewrite the lease held by `token` (compare-and-set on its sequence)."""
        for _ in range(2):
            holding = await self._holding(nc, operation, name, lk, token)
            if holding is None:
                return False
            seq, fence = holding
            headers = {EXPECTED: str(seq), TTL: str(ttl), FENCE: str(fence)}
            written, _ = await self.js.put(
                nc, lk, value.encode(), headers, operation, name
            )
            if written:
                self.known.remember(lk, written, value, fence)
                return True
            self.known.forget(lk)  # stale: read it once
        return False

    async def keep(
        self, nc: Client, name: str, key: str, fire: int, token: str, lease: float
    ) -> bool:
        """Extend the lease `token` holds on `fire`."""
        lk = lease_key(key, fire)
        ttl = ttl_seconds(lease)
        return await self._rewrite(nc, "keep_fire", name, lk, token, token, ttl)

    async def finish(
        self, nc: Client, name: str, key: str, fire: int, token: str
    ) -> bool:
        """Mark the fire completed: the lease key becomes the completed marker."""
        lk = lease_key(key, fire)
        return await self._rewrite(
            nc, "finish_fire", name, lk, token, _DONE, FIRE_DONE_RETENTION
        )

    async def retake(
        self, nc: Client, name: str, key: str, fire: int, token: str, lease: float
    ) -> FireRetake:
        """Take over a leased fire whose lease lapsed unfinished."""
        operation = "retake_fire"
        lk = lease_key(key, fire)
        entry = await self.js.read(nc, lk, operation, name)
        if entry is not None and entry.token is not None:
            return FireRetake(None, done=entry.token == _DONE)
        _, last = await self._high_water(nc, operation, name, high_water_key(key))
        if last is None or fire > last:
            return FireRetake(None, done=False)  # never claimed: not ours to run
        expected = 0 if entry is None else entry.seq
        headers = {EXPECTED: str(expected), TTL: str(ttl_seconds(lease))}
        seq, _ = await self.js.put(nc, lk, token.encode(), headers, operation, name)
        if not seq:
            return FireRetake(None, done=False)  # another worker was faster
        self.known.remember(lk, seq, token, seq)
        return FireRetake(seq, done=False)


def _fire_value(entry: Entry, operation: str, name: str) -> int:
    token = entry.token or ""
    if not token.isdigit():
        raise NatsSyncBackendError(
            operation=operation,
            name=name,
            detail=f"the fire claims key holds {token[:40]!r}, not a fire time",
        )
    return int(token)
