"""What the multi-process workers (load, takeover) share: backends and counters.

Imported by worker scripts running in either the project's ``.venv`` or the
grelmicro 0.6.0 peer environment; ``grelmicro`` resolves to whichever is
installed there.
"""

from __future__ import annotations

from typing import Any

#: Client-side counters, filled by `install_counters()`: round trips (socket
#: writes), commands (Redis commands, NATS requests), messages published
#: (NATS, Redis pub/sub), connections opened.
COUNTS: dict[str, int] = {
    "round_trips": 0,
    "commands": 0,
    "messages_out": 0,
    "connections": 0,
}


#: Commands by kind: Redis command name, or NATS subject kind.
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


def _count_writes() -> None:
    """Count socket writes: one per round trip, however many commands it carries.

    Both drivers write through `asyncio.StreamWriter`: redis-py one
    ``writelines`` per command or per pipeline, nats-py one per flush of its
    pending buffer (every request made in one event-loop turn). A worker
    process has no other stream than its driver's connections.
    """
    import asyncio

    for method in ("write", "writelines"):
        original = getattr(asyncio.StreamWriter, method)

        def counted(self: Any, data: Any, _original: Any = original) -> Any:
            COUNTS["round_trips"] += 1
            return _original(self, data)

        setattr(asyncio.StreamWriter, method, counted)


def _count_pipelines(cls: Any) -> None:
    """Count a pipeline's commands (each by name) when it is sent."""
    original = cls.execute

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        for command in self.command_stack:
            COUNTS["commands"] += 1
            # redis-py keeps (args, options) pairs (older versions objects).
            sent = command[0] if isinstance(command, tuple) else command.args
            kind = _kind(sent, False)
            KINDS[kind] = KINDS.get(kind, 0) + 1
        return await original(self, *args, **kwargs)

    cls.execute = counted


def install_counters(kind: str) -> None:
    """Count the client's round trips and commands by wrapping the driver.

    Round trips: socket writes (see `_count_writes`). Commands: Redis, every
    command a client executes (``Redis.execute_command``) and every command
    of a pipeline; NATS, every request (JetStream API calls and KV
    publishes with an ack are requests). Pub/sub commands (Redis) and
    messages published (NATS) go to ``messages_out``; connections opened
    (with their handshake) to ``connections``.
    """
    _count_writes()
    if kind == "redis":
        from redis.asyncio.client import Pipeline, PubSub, Redis
        from redis.asyncio.connection import AbstractConnection

        _count(Redis, "execute_command", "commands", kinds="redis")
        _count_pipelines(Pipeline)
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

    _count(Client, "request", "commands", kinds="nats")
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
