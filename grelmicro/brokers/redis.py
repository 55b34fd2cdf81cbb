"""FastStream `RedisBroker` integration: locks over the broker's own Redis client.

```python
from faststream.redis import RedisBroker
from grelmicro.brokers.redis import redis_backend

broker = RedisBroker("redis://localhost:6379")
backend = redis_backend(broker)  # or grelmicro.brokers.backend_for(broker)
```

The backend runs its commands on the client the broker gets from
`await broker.connect()`: no second client, no second pool, no second URL.
redis-py's pool opens one more connection whenever one more command is in
flight at the same moment, so the backend sends its commands one at a time
(its own concurrency bound, `concurrency=1`): grelmicro never keeps more
than one of the pool's connections busy, and between two commands that
connection is idle in the pool, where the broker's own publishes reuse it
(and grelmicro reuses theirs).
"""

from __future__ import annotations

from typing import Annotated

from grelmicro.brokers._connection import BrokerConnection
from grelmicro.errors import DependencyNotFoundError
from grelmicro.sync.errors import SyncSettingsValidationError

try:
    from faststream.redis import RedisBroker
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise DependencyNotFoundError(module="faststream", extra="faststream") from exc

from typing_extensions import Doc

from grelmicro.sync.redis import RedisSyncBackend


def redis_backend(
    broker: Annotated[RedisBroker, Doc("The FastStream RedisBroker to borrow.")],
    *,
    prefix: Annotated[str, Doc("A prefix prepended to every lock key.")] = "",
) -> RedisSyncBackend:
    """A `RedisSyncBackend` over `broker`'s own Redis client.

    The client is obtained on first use, once the broker is connected (the
    FastStream lifespan runs before the broker connects). The backend is not
    registered as the default: entering it (`async with backend:`), or
    giving the broker to `TaskManager(broker=...)`, does that.
    """
    if not isinstance(broker, RedisBroker):
        msg = f"redis_backend() needs a faststream.redis.RedisBroker, got {broker!r}"
        raise TypeError(msg)
    if not isinstance(prefix, str):
        msg = f"prefix must be a str, got {prefix!r}"
        raise SyncSettingsValidationError(msg)
    return RedisSyncBackend.from_client_provider(
        BrokerConnection(broker), prefix=prefix, auto_register=False, concurrency=1
    )


__all__ = ["redis_backend"]
