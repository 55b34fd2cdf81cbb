"""FastStream `NatsBroker` integration: locks over the broker's own NATS client.

```python
from faststream.nats import NatsBroker
from grelmicro.brokers.nats import nats_backend

broker = NatsBroker("nats://localhost:4222")
backend = nats_backend(broker)  # or grelmicro.brokers.backend_for(broker)
```

The backend borrows the `nats.aio.client.Client` the broker gets from
`await broker.connect()`; the JetStream KV bucket is reached over that same
connection (a JetStream context is a view of the client, not a connection).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, cast

from grelmicro.brokers._connection import BrokerConnection
from grelmicro.errors import DependencyNotFoundError
from grelmicro.sync.errors import SyncSettingsValidationError

try:
    from faststream.nats import NatsBroker
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise DependencyNotFoundError(module="faststream", extra="faststream") from exc

from typing_extensions import Doc

from grelmicro.sync.nats import NatsSyncBackend

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.client import Client


def nats_backend(
    broker: Annotated[NatsBroker, Doc("The FastStream NatsBroker to borrow.")],
    *,
    bucket: Annotated[
        str, Doc("The JetStream KV bucket holding the locks (created if absent).")
    ] = "grelmicro",
    replicas: Annotated[int, Doc("Copies of the bucket on a NATS cluster.")] = 1,
) -> NatsSyncBackend:
    """A `NatsSyncBackend` over `broker`'s own NATS connection.

    The client is obtained on first use, once the broker is connected (the
    FastStream lifespan runs before the broker connects). The backend is not
    registered as the default: entering it (`async with backend:`), or
    giving the broker to `TaskManager(broker=...)`, does that.
    """
    if not isinstance(broker, NatsBroker):
        msg = f"nats_backend() needs a faststream.nats.NatsBroker, got {broker!r}"
        raise TypeError(msg)
    if not isinstance(bucket, str) or not bucket:
        msg = f"bucket must be a non-empty str, got {bucket!r}"
        raise SyncSettingsValidationError(msg)
    provider = cast("Callable[[], Awaitable[Client]]", BrokerConnection(broker))
    return NatsSyncBackend.from_client_provider(
        provider, bucket=bucket, replicas=replicas, auto_register=False
    )


__all__ = ["nats_backend"]
