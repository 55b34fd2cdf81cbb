"""What a backend last learned about each key, so the common path is one write.

Facts about one sequence never change, so a stale entry only costs a retry:
every write is a compare-and-set on the sequence remembered here.
"""

from __future__ import annotations

import time
from typing import Final

#: Known key states kept per backend (the oldest are forgotten first).
MAX_KNOWN: Final = 10_000


class Known:
    """One key: its last sequence, holder, fencing token, and end of lease.

    ``token`` is the holder's token, or None for a release/delete marker (a
    free key). ``late`` (this machine's monotonic seconds) is when the lease
    surely ended: for another token's entry, its lease counted from when this
    backend first received it; for this backend's own write, its lease
    counted from before the write was sent (None: never, or not known). Only
    this machine's own clock is used: no server timestamp is compared with
    any clock.
    """

    __slots__ = ("fence", "late", "seq", "token")

    def __init__(
        self, seq: int, token: str | None, fence: int, late: float | None
    ) -> None:
        self.seq = seq
        self.token = token
        self.fence = fence
        self.late = late


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
    ) -> None:
        """Record `key`'s last entry."""
        keys = self._keys
        known = keys.get(key)
        if known is not None:
            known.seq, known.token, known.fence, known.late = seq, token, fence, late
            return
        if len(keys) >= MAX_KNOWN:
            del keys[next(iter(keys))]
        keys[key] = Known(seq, token, fence, late)

    def observed(
        self, key: str, seq: int, token: str | None, fence: int, lease: float | None
    ) -> Known:
        """Record an entry held by another token, read now, whose lease lasts
        `lease` seconds from its write (None: forever).

        The end of its lease is counted from the first time this sequence
        was seen: reading it again does not push the end later.
        """
        known = self._keys.get(key)
        if (
            known is not None
            and known.seq == seq
            and known.token == token
            and (known.late is not None or lease is None)
        ):
            return known
        late = None if lease is None else time.monotonic() + lease
        self.remember(key, seq, token, fence, late)
        return self._keys[key]

    def forget(self, key: str) -> None:
        """Forget `key`."""
        self._keys.pop(key, None)

    def clear(self) -> None:
        """Forget every key (the server may have lost its storage)."""
        self._keys.clear()
