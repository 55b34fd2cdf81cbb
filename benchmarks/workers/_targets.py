"""What the multi-process workers (load, takeover) share: backends and counters.

Imported by worker scripts running in either the project's ``.venv`` or the
grelmicro 0.6.0 peer environment; ``grelmicro`` resolves to whichever is
installed there.
"""

from __future__ import annotations

from typing import Any

#: Client-side call counters, filled by `install_counters()`.
COUNTS: dict[str, int] = {"round_trips": 0, "messages_out": 0, "connections": 0}


#: Round trips by kind: Redis command name, or NATS subject kind.
KINDS: dict[str, int] = {}

_NATS_KINDS = (
    ("$JS.API.DIRECT.GET.", "direct get"),
    ("$JS.API.STREAM.INFO.", "stream info"),
    ("$JS.API.STREAM.MSG.GET.", "msg get"),
    ("$JS.API.", "other JetStream API"),
    ("$KV.", "KV publish"),
)


def _kind(args: tuple[Any, ...], nats: bool) -> str:
    if not args:
        return "?"
    first = args[0]
    if isinstance(first, bytes):
        first = first.decode(errors="replace")
    first = str(first)
    if not nats:
        return first.upper()
    for prefix, kind in _NATS_KINDS:
        if first.startswith(prefix):
            return kind
    return "other"


def _count(cls: Any, method: str, counter: str, kinds: str | None = None) -> None:
    original = getattr(cls, method)
    nats = kinds == "nats"

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        COUNTS[counter] += 1
        if kinds is not None:
            kind = _kind(args, nats)
            KINDS[kind] = KINDS.get(kind, 0) + 1
        return await original(self, *args, **kwargs)

    setattr(cls, method, counted)


def install_counters(kind: str) -> None:
    """Count the client's round trips by wrapping the driver (not this project).

    Redis: every command a client executes (``Redis.execute_command``) and
    every pipeline sent (``Pipeline.execute``) is one round trip; pub/sub
    commands go to ``messages_out``; connections opened (with their HELLO
    handshake) to ``connections``. NATS: every request (JetStream API calls
    and KV publishes with an ack are requests) is one round trip; every
    message the client publishes is counted in ``messages_out``.
    """
    if kind == "redis":
        from redis.asyncio.client import Pipeline, PubSub, Redis
        from redis.asyncio.connection import AbstractConnection

        _count(Redis, "execute_command", "round_trips", kinds="redis")
        _count(Pipeline, "execute", "round_trips")
        _count(PubSub, "execute_command", "messages_out")
        # redis-py 8 runs the handshake in on_connect_check_health (older
        # versions in on_connect): count whichever the driver has.
        handshake = (
            "on_connect_check_health"
            if hasattr(AbstractConnection, "on_connect_check_health")
            else "on_connect"
        )
        _count(AbstractConnection, handshake, "connections")
        return
    from nats.aio.client import Client

    _count(Client, "request", "round_trips", kinds="nats")
    _count(Client, "publish", "messages_out")
    _count(Client, "connect", "connections")


def make_backend(target: str, url: str, namespace: str) -> Any:
    """The sync backend for `target` (``grelmicro-redis``, ``grelmicro-nats``,
    ``grelmicro060-redis``), isolated by `namespace`."""
    if target.endswith("-redis"):
        from grelmicro.sync.redis import RedisSyncBackend

        return RedisSyncBackend(url, prefix=f"{namespace}:")
    from grelmicro.sync.nats import NatsSyncBackend

    return NatsSyncBackend(url, bucket=namespace)
