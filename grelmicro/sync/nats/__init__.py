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

**Leases.** The server keeps per-message TTLs in whole seconds (it
truncates ``"1500ms"`` to one second) and rejects TTLs under one second, so
a lease of `duration` seconds is written with a TTL of ``ceil(duration)``
seconds, at least one second; when the lease is not a whole number of
seconds it is also written exactly (header ``Grelmicro-Lease-Ms``). A lease
is never shorter than asked.

**No clock comparison.** A worker that receives another token's entry
counts that lease on its own monotonic clock from the moment it received
it: the entry was written before, so the lease surely ended by then. It then
takes the lock over with a compare-and-set on the sequence it saw (an
extension meanwhile changed it). The server's timestamps are never compared
with any clock, so a stream-leader change in a cluster (whose next reading
would come from another machine's clock) cannot end a lease early. A worker
that first sees an entry late in its lease waits longer than needed (at
most one lease); the server removes an abandoned key at its whole-second
TTL anyway. How long another holder's lease lasts (`acquire_or_remaining`,
`wait_released`) is that same upper bound.

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
