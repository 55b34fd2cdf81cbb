"""NATS JetStream KV synchronization backend.

```python
from grelmicro.sync.nats import NatsSyncBackend

backend = NatsSyncBackend("nats://localhost:4222")
```

Locks live in a JetStream KV bucket (``grelmicro`` by default, created if
absent). A lock is one key holding the owner's token; every write is a
compare-and-set on the key's last sequence (the
``Nats-Expected-Last-Subject-Sequence`` header) and carries a per-message TTL
(``Nats-TTL``), so the server expires abandoned locks.

**Expiry is the server's alone.** The server keeps per-message TTLs in whole
seconds (it truncates ``"1500ms"`` to one second) and rejects TTLs under one
second, so a lease of `duration` seconds is written with a TTL of
``ceil(duration)`` seconds, at least one second: a 0.2 s lease holds the key
for one second, a 1.5 s lease for two. A lease is never shorter than asked.
A key is held until the server removes it (within milliseconds of its TTL on
NATS server 2.11+); the backend never compares a server timestamp with any
clock, so a stream-leader change in a cluster (the next reading coming from
another machine's clock) cannot end a lease early. How long another holder's
lease lasts (`acquire_or_remaining`, `wait_released`) is an upper bound: its
TTL counted on this machine's monotonic clock from when the backend first
saw its write. In a bucket with limit markers (``subject_delete_marker_ttl``)
the server may keep a lease shorter than the marker TTL for the marker TTL.

**Fencing tokens.** The stream sequence of the write that took a lock is its
fencing token (`acquire_fenced`): sequences only grow, across all processes
and keys. Extensions carry it in a ``Grelmicro-Fence`` header, so the token
read back stays the same while the holding lasts without a gap.

**Keys.** NATS KV keys allow ``[-/_=.a-zA-Z0-9]``. A lock name is encoded
reversibly: ASCII letters, digits, ``-``, ``_`` and ``/`` are kept, every
other character becomes ``=XX`` per UTF-8 byte, so ``tasklock:my.module:func``
is stored under the key ``tasklock=3Amy=2Emodule=3Afunc``. Cron fire claims
use ``<key>.fire`` and ``<key>.fire.<ms>`` (an encoded name has no dot).

**Round trips.** Taking a free lock, extending it, and releasing a lock this
backend took are one JetStream publish each: the backend remembers the
sequence it last wrote (or the release marker it left) per key and
compare-and-sets on it. Only when that guess is wrong does it read the key.
"""

from __future__ import annotations

from grelmicro.errors import DependencyNotFoundError

try:
    import nats  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise DependencyNotFoundError(module="nats-py", extra="nats") from exc

from grelmicro.sync.nats._fires import FIRE_DONE_RETENTION
from grelmicro.sync.nats._locks import MARKER_TTL_SECONDS
from grelmicro.sync.nats.backend import REQUEST_TIMEOUT, NatsSyncBackend
from grelmicro.sync.nats.errors import (
    NatsSyncBackendBucketError,
    NatsSyncBackendConnectionError,
    NatsSyncBackendError,
    NatsSyncBackendTimeoutError,
)

__all__ = [
    "FIRE_DONE_RETENTION",
    "MARKER_TTL_SECONDS",
    "REQUEST_TIMEOUT",
    "NatsSyncBackend",
    "NatsSyncBackendBucketError",
    "NatsSyncBackendConnectionError",
    "NatsSyncBackendError",
    "NatsSyncBackendTimeoutError",
]
