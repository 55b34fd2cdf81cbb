"""Redis synchronization backend.

```python
from grelmicro.sync.redis import RedisSyncBackend

backend = RedisSyncBackend("redis://localhost:6379/0")
```

Every operation is one round trip: a server-side Lua script (EVALSHA, with
EVAL when the server does not know the script yet) or a single command. Locks
are plain string keys (`prefix + name`) holding the owner's token, with a
millisecond expiry (`PX`) enforced by the Redis server. Fencing tokens and
cron claims live in one persistent hash per name, in the lock key's hash slot
(see `grelmicro.sync.redis._keys` and docs/redis-topologies.md).

The package's parts: `_backend` (the backend and its operations), `_scripts`
(the Lua scripts), `_keys` (the key layout, hash-slot aware), `_connection`
(where the client comes from), `_config` (argument checks), `_errors`.
"""

from __future__ import annotations

from grelmicro.errors import DependencyNotFoundError

try:
    import redis.asyncio  # noqa: F401 - the extra is checked before the rest loads
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise DependencyNotFoundError(module="redis", extra="redis") from exc

from grelmicro.sync.redis._backend import RedisSyncBackend
from grelmicro.sync.redis._config import milliseconds as _milliseconds
from grelmicro.sync.redis._connection import (
    MAX_CONNECTIONS,
    SOCKET_CONNECT_TIMEOUT,
    SOCKET_TIMEOUT,
    RedisClient,
)
from grelmicro.sync.redis._errors import (
    RedisSyncBackendConnectionError,
    RedisSyncBackendError,
    RedisSyncBackendReplicationError,
    RedisSyncBackendTimeoutError,
)
from grelmicro.sync.redis._fires import FIRE_DONE_RETENTION

__all__ = [
    "FIRE_DONE_RETENTION",
    "MAX_CONNECTIONS",
    "SOCKET_CONNECT_TIMEOUT",
    "SOCKET_TIMEOUT",
    "RedisClient",
    "RedisSyncBackend",
    "RedisSyncBackendConnectionError",
    "RedisSyncBackendError",
    "RedisSyncBackendReplicationError",
    "RedisSyncBackendTimeoutError",
    "_milliseconds",
]
