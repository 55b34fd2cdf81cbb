"""FastStream integration: coordinate over the broker's own connection.

```python
from faststream.nats import NatsBroker
from grelmicro.brokers import backend_for

broker = NatsBroker()
backend = backend_for(broker)  # NatsSyncBackend over the broker's connection
```

Usually you do not call `backend_for` yourself: `TaskManager(broker=broker)`
does, and makes that backend the default for every primitive given no
`backend=` while the manager is entered.

- `faststream.redis.RedisBroker` -> `RedisSyncBackend` borrowing the broker's
  Redis client (and its connection pool); keys without prefix by default.
- `faststream.nats.NatsBroker` -> `NatsSyncBackend` borrowing the broker's
  NATS client; locks in the JetStream KV bucket `"grelmicro"` by default.

No second connection is opened: the backend waits for the broker to be
connected by its application (the FastStream lifespan runs before the broker
connects) and then uses `await broker.connect()`, which returns the client
the broker already holds. At shutdown, the application's own hook calls the
manager's `stop()`, releasing leadership and locks, before it closes the
broker (see `hook_shutdown`). FastStream is imported only when a broker is
given.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Annotated, Any

from typing_extensions import Doc

from grelmicro.brokers._connection import (
    BrokerConnection,
    BrokerNotConnectedError,
    wait_connected,
)
from grelmicro.brokers._shutdown import hook_shutdown, stop_tasks
from grelmicro.sync.abc import SyncBackend
from grelmicro.sync.errors import SyncSettingsValidationError

SUPPORTED_BROKERS = ("faststream.redis.RedisBroker", "faststream.nats.NatsBroker")


def backend_for(
    broker: Annotated[Any, Doc("A FastStream RedisBroker or NatsBroker.")],
    *,
    prefix: Annotated[
        str | None,
        Doc('RedisBroker only: a prefix prepended to every lock key (default "").'),
    ] = None,
    bucket: Annotated[
        str | None,
        Doc('NatsBroker only: the JetStream KV bucket (default "grelmicro").'),
    ] = None,
) -> SyncBackend:
    """Return the synchronization backend that shares `broker`'s connection.

    Raises `TypeError` for any other broker type (naming the supported ones),
    and `SyncSettingsValidationError` (a `ValueError`) for `prefix=` with a
    NATS broker or `bucket=` with a Redis broker. The backend is not
    registered as the default until it is entered.
    """
    kind = _broker_kind(broker)
    if kind == "redis":
        if bucket is not None:
            msg = (
                f"bucket={bucket!r} applies to a NatsBroker (the JetStream KV "
                "bucket); a RedisBroker takes prefix= to namespace its keys"
            )
            raise SyncSettingsValidationError(msg)
        from grelmicro.brokers.redis import redis_backend

        return redis_backend(broker, prefix="" if prefix is None else prefix)
    if prefix is not None:
        msg = (
            f"prefix={prefix!r} applies to a RedisBroker (a key prefix); a "
            "NatsBroker takes bucket= to choose its JetStream KV bucket"
        )
        raise SyncSettingsValidationError(msg)
    from grelmicro.brokers.nats import nats_backend

    return nats_backend(broker, bucket="grelmicro" if bucket is None else bucket)


def _broker_kind(broker: Any) -> str:
    """`"redis"` or `"nats"`, else `TypeError`.

    A broker's class is defined in an imported module, so looking at
    `sys.modules` is enough: nothing is imported for the check, and a NATS
    user never imports FastStream's Redis module (nor needs redis-py).
    """
    for kind, module_name, class_name in (
        ("redis", "faststream.redis", "RedisBroker"),
        ("nats", "faststream.nats", "NatsBroker"),
    ):
        module = sys.modules.get(module_name)
        broker_class = getattr(module, class_name, None)
        if isinstance(broker_class, type) and isinstance(broker, broker_class):
            return kind
    msg = (
        f"backend_for() supports {' and '.join(SUPPORTED_BROKERS)}, got "
        f"{type(broker).__module__}.{type(broker).__qualname__}"
    )
    if importlib.util.find_spec("faststream") is None:
        msg += " (FastStream is not installed: pip install 'grelmicro[faststream]')"
    raise TypeError(msg)


__all__ = [
    "SUPPORTED_BROKERS",
    "BrokerConnection",
    "BrokerNotConnectedError",
    "backend_for",
    "hook_shutdown",
    "stop_tasks",
    "wait_connected",
]
