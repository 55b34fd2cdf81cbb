"""What a backend last learned about each key, so the common path is one write.

Facts about one sequence never change, so a stale entry only costs a retry:
every write is a compare-and-set on the sequence remembered here.
"""

from __future__ import annotations

import time
from typing import Final

#: Known key states kept per backend (the oldest are forgotten first).
MAX_KNOWN: Final = 10_000


#: The token of an entry known only by its sequence (see `Known.seen`): no
#: real token is compared equal to it, and it is not None (not free).
UNREAD: Final = "\x00unread"


class Known:
    """One key: its last sequence, holder, fencing token, and end of lease.

    ``token`` is the holder's token, or None for a release/delete marker (a
    free key). ``late`` (this machine's monotonic seconds) is when the lease
    surely ended: for another token's entry, its lease counted from when this
    backend first received it; for this backend's own write, its lease
    counted from before the write was sent (None: never, or not known). Only
    this machine's own clock is used: no server timestamp is compared with
    any clock.

    ``lease`` is the lease in seconds of the last holding known on the key
    (this backend's or another token's; kept across release markers and
    unread entries): the estimate of the next holding's lease.

    ``seen`` is set for an *unread* entry: its sequence was learned from a
    failed write's answer alone (at that monotonic time), its token, fencing
    token and lease are not known (``token`` is `UNREAD`, ``late`` None). It
    is read only if it is still there when it matters; its lease then counts
    from ``seen`` (it existed by then).
    """

    __slots__ = ("fence", "late", "lease", "seen", "seq", "token")

    def __init__(
        self,
        seq: int,
        token: str | None,
        fence: int,
        late: float | None,
        lease: float | None = None,
        seen: float | None = None,
    ) -> None:
        self.seq = seq
        self.token = token
        self.fence = fence
        self.late = late
        self.lease = lease
        self.seen = seen


class KnownKeys:
    """Known key states, bounded."""

    def __init__(self) -> None:
        self._keys: dict[str, Known] = {}

    def get(self, key: str) -> Known | None:
        """What is known of `key`."""
        return self._keys.get(key)

    def remember(
        self,
        key: str,
        seq: int,
        token: str | None,
        fence: int,
        late: float | None = None,
        lease: float | None = None,
    ) -> None:
        """Record `key`'s last entry (`lease`: its lease, when a holding)."""
        keys = self._keys
        known = keys.get(key)
        if known is not None:
            known.seq, known.token, known.fence, known.late = seq, token, fence, late
            if lease is not None or token is not None:
                known.lease = lease  # a marker keeps the last holding's lease
            known.seen = None
            return
        if len(keys) >= MAX_KNOWN:
            del keys[next(iter(keys))]
        keys[key] = Known(seq, token, fence, late, lease)

    def unread(self, key: str, seq: int, seen: float) -> Known:
        """Record that `key`'s last sequence is `seq`, learned at `seen` from a
        failed write's answer (holder and lease not read; the last holding's
        lease is kept as the estimate)."""
        known = self._keys.get(key)
        if known is None:
            known = Known(seq, UNREAD, seq, None, None, seen)
            if len(self._keys) >= MAX_KNOWN:
                del self._keys[next(iter(self._keys))]
            self._keys[key] = known
            return known
        known.seq, known.token, known.fence, known.late = seq, UNREAD, seq, None
        known.seen = seen
        return known

    def observed(
        self, key: str, seq: int, token: str | None, fence: int, lease: float | None
    ) -> Known:
        """Record an entry held by another token, read now, whose lease lasts
        `lease` seconds from its write (None: forever).

        The end of its lease is counted from the first time this sequence
        was seen (read, or learned from a failed write's answer): reading it
        again does not push the end later.
        """
        known = self._keys.get(key)
        since = time.monotonic()
        if known is not None and known.seq == seq:
            if known.seen is not None:
                since = known.seen
            elif known.token == token and (known.late is not None or lease is None):
                return known
        late = None if lease is None else since + lease
        self.remember(key, seq, token, fence, late, lease)
        return self._keys[key]

    def forget(self, key: str) -> None:
        """Forget `key`."""
        self._keys.pop(key, None)

    def clear(self) -> None:
        """Forget every key (the server may have lost its storage)."""
        self._keys.clear()
