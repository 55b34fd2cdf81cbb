"""What the multi-process workers (load, takeover) share: backends and counters.

Imported by worker scripts running in either the project's ``.venv`` or the
grelmicro 0.6.0 peer environment; ``grelmicro`` resolves to whichever is
installed there.
"""

from __future__ import annotations

from typing import Any

#: Client-side call counters, filled by `install_counters()`.
COUNTS: dict[str, int] = {"round_trips": 0, "messages_out": 0}


def install_counters(kind: str) -> None:
    """Count the client's round trips by wrapping the driver (not this project).

    Redis: every response read by redis-py's asyncio connection is one round
    trip (nothing here pipelines). NATS: every request (JetStream API calls
    and KV publishes with an ack are requests) is one round trip; every
    message the client publishes is counted in ``messages_out``.
    """
    if kind == "redis":
        from redis.asyncio.connection import AbstractConnection

        read_response = AbstractConnection.read_response

        async def counted_read_response(self: Any, *args: Any, **kwargs: Any) -> Any:
            COUNTS["round_trips"] += 1
            return await read_response(self, *args, **kwargs)

        AbstractConnection.read_response = counted_read_response  # type: ignore[method-assign]
        return
    from nats.aio.client import Client

    request = Client.request
    publish = Client.publish

    async def counted_request(self: Any, *args: Any, **kwargs: Any) -> Any:
        COUNTS["round_trips"] += 1
        return await request(self, *args, **kwargs)

    async def counted_publish(self: Any, *args: Any, **kwargs: Any) -> Any:
        COUNTS["messages_out"] += 1
        return await publish(self, *args, **kwargs)

    Client.request = counted_request  # type: ignore[method-assign]
    Client.publish = counted_publish  # type: ignore[method-assign]


def make_backend(target: str, url: str, namespace: str) -> Any:
    """The sync backend for `target` (``grelmicro-redis``, ``grelmicro-nats``,
    ``grelmicro060-redis``), isolated by `namespace`."""
    if target.endswith("-redis"):
        from grelmicro.sync.redis import RedisSyncBackend

        return RedisSyncBackend(url, prefix=f"{namespace}:")
    from grelmicro.sync.nats import NatsSyncBackend

    return NatsSyncBackend(url, bucket=namespace)
