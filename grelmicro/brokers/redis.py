"""FastStream `RedisBroker` integration: locks over the broker's own Redis pool.

```python
from faststream.redis import RedisBroker
from grelmicro.brokers.redis import redis_backend

broker = RedisBroker("redis://localhost:6379")
backend = redis_backend(broker)  # or grelmicro.brokers.backend_for(broker)
```

The backend runs its commands on the connection pool of the client the broker
gets from `await broker.connect()`: no second client, no second pool, no
second URL. redis-py's pool opens one more connection whenever one more
command is in flight at the same moment, so the backend sends its commands
one at a time: grelmicro never keeps more than one of the pool's connections
busy, and between two commands that connection is idle in the pool, where the
broker's own publishes reuse it (and grelmicro reuses theirs).
"""

from __future__ import annotations

import weakref
from typing import Annotated, Any

import anyio

from grelmicro.brokers._connection import BrokerConnection
from grelmicro.errors import DependencyNotFoundError
from grelmicro.sync.errors import SyncSettingsValidationError

try:
    from faststream.redis import RedisBroker
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise DependencyNotFoundError(module="faststream", extra="faststream") from exc

from redis.asyncio import Redis
from typing_extensions import Doc

from grelmicro.sync.redis import RedisSyncBackend


class _OneAtATimeClient(Redis):
    """A client over the broker's connection pool running one command at a time.

    It owns nothing: the pool (and so every connection) belongs to the
    broker's client, which closes it when the broker stops.
    """

    def __init__(self, pool: Any) -> None:
        super().__init__(connection_pool=pool)
        self._one_at_a_time = anyio.Lock()

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        async with self._one_at_a_time:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


class _RedisBrokerConnection(BrokerConnection):
    """The broker's client, seen through a one-command-at-a-time client."""

    __slots__ = ("_clients",)

    def __init__(self, broker: Any) -> None:
        super().__init__(broker)
        # One wrapper per broker client: a restarted broker has a new client.
        self._clients: weakref.WeakKeyDictionary[Any, _OneAtATimeClient] = (
            weakref.WeakKeyDictionary()
        )

    async def __call__(self) -> Redis:
        client = await super().__call__()
        wrapper = self._clients.get(client)
        if wrapper is None:
            wrapper = self._clients[client] = _OneAtATimeClient(client.connection_pool)
        return wrapper


def redis_backend(
    broker: Annotated[RedisBroker, Doc("The FastStream RedisBroker to borrow.")],
    *,
    prefix: Annotated[str, Doc("A prefix prepended to every lock key.")] = "",
) -> RedisSyncBackend:
    """A `RedisSyncBackend` over `broker`'s own Redis connection pool.

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
        _RedisBrokerConnection(broker), prefix=prefix, auto_register=False
    )


__all__ = ["redis_backend"]
