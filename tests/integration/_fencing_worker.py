"""A worker process for the fencing tests (tests/integration/test_fencing.py).

Two modes, both real OS processes on a real server:

``commands`` (default): the process connects, prints ``ready``, then runs the
commands it reads on stdin, one at a time, and answers on stdout with lines
``<event> <fields...>`` (wall-clock seconds, comparable across processes on
one machine):

- ``contend LOCK COUNT LEASE OUT``: take `Lock(LOCK)` COUNT times, appending
  ``<acquired> <releasing> <token> <worker>`` per holding to the file OUT;
  answers ``done``.
- ``hold LOCK KEY LEASE [EVERY]``: take the lock, answer ``held <token>
  <time>``, then write to the fenced store KEY with that token every EVERY
  seconds (default 0.05; ``write <start> <end> <token> ok|rejected
  <highest>``) until a write is rejected (or 30 s), never checking the lock:
  a holder that does not know it was paused. Answers ``done``.
- ``take LOCK KEY LEASE``: wait for the lock, answer ``acquired <token>
  <time>``, write once, release (``released <time>``), answer ``done``.

``tasks``: a `TaskManager` with one coordinated interval task whose runs last
``--work`` seconds (``--leader``: gated by a `LeaderElection`; else a task
lock only). It appends events to ``<dir>/<worker>.events``: ``run-start
<token>``, ``run-end finished|cancelled|lost``, ``leader 1|0`` (is_leader()
polled every 10 ms), ``log <LEVEL> <message>`` for grelmicro WARNINGs and
ERRORs. SIGTERM is a graceful stop.

The parent side (`CommandWorker`) is here too.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from grelmicro.sync import LeaderElection, Lock
from grelmicro.sync.abc import SyncBackend
from grelmicro.sync.errors import LockNotOwnedError
from grelmicro.task import TaskManager, current_run

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fencing"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))

from fenced_store import FencedStore, StaleTokenError  # noqa: E402

#: Seconds a worker gets to start (interpreter + imports take ~1 s on 2 cores).
START_TIMEOUT = 20.0
TASK = "fenced-job"
ELECTION = "fenced-election"


def make_backend(kind: str, url: str, namespace: str) -> SyncBackend:
    """A backend of `kind` on `namespace`, not registered as the default."""
    if kind == "redis":
        from grelmicro.sync.redis import RedisSyncBackend

        return RedisSyncBackend(url, prefix=namespace, auto_register=False)
    from grelmicro.sync.nats import NatsSyncBackend

    return NatsSyncBackend(url, bucket=namespace, auto_register=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=["commands", "tasks"], default="commands")
    parser.add_argument("--backend", choices=["redis", "nats"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--store-url", help="Redis URL of the fenced store")
    parser.add_argument("--dir", type=Path, help="tasks mode: where events go")
    parser.add_argument("--leader", action="store_true")
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--max-lock", type=float, default=4.0)
    parser.add_argument("--work", type=float, default=3.0)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--renew", type=float, default=1.2)
    parser.add_argument("--retry", type=float, default=0.2)
    parser.add_argument("--backend-timeout", type=float, default=0.5)
    return parser.parse_args(argv)


def say(*fields: object) -> None:
    """One answer line on stdout."""
    sys.stdout.write(" ".join(str(f) for f in fields) + "\n")
    sys.stdout.flush()


# Commands mode ------------------------------------------------------------------


async def contend(
    backend: SyncBackend, worker: str, lock: str, count: int, lease: float, out: str
) -> None:
    """Take the lock `count` times; one record per holding."""
    primitive = Lock(
        lock, backend=backend, worker=worker, lease_duration=lease, retry_interval=0.005
    )
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for _ in range(count):
            async with primitive:
                acquired = time.time()
                token = primitive.fencing_token
                await anyio.sleep(0.001)
                releasing = time.time()
            line = f"{acquired!r} {releasing!r} {token} {worker}\n"
            os.write(fd, line.encode())
            # Let the others in (they poll or wait for the release).
            await anyio.sleep(random.uniform(0, 0.004))
    finally:
        os.close(fd)


async def hold(
    backend: SyncBackend,
    store: FencedStore,
    worker: str,
    lock: str,
    lease: float,
    every: float = 0.05,
) -> None:
    """Take the lock, then write with its token until a write is rejected."""
    primitive = Lock(lock, backend=backend, worker=worker, lease_duration=lease)
    await primitive.acquire()
    token = primitive.fencing_token
    say("held", token, time.time())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        start = time.time()
        try:
            await store.write(f"{worker}:{token}", fencing_token=token)
        except StaleTokenError as exc:
            say("write", start, time.time(), token, "rejected", exc.highest)
            break
        say("write", start, time.time(), token, "ok", token)
        await anyio.sleep(every)
    try:
        await primitive.release()
    except LockNotOwnedError:
        say("release", "not-owned")
    else:
        say("release", "ok")


async def take(
    backend: SyncBackend, store: FencedStore, worker: str, lock: str, lease: float
) -> None:
    """Wait for the lock, write once with its token, release."""
    primitive = Lock(
        lock, backend=backend, worker=worker, lease_duration=lease, retry_interval=0.02
    )
    async with primitive:
        token = primitive.fencing_token
        say("acquired", token, time.time())
        start = time.time()
        try:
            await store.write(f"{worker}:{token}", fencing_token=token)
        except StaleTokenError as exc:
            say("write", start, time.time(), token, "rejected", exc.highest)
        else:
            say("write", start, time.time(), token, "ok", token)
    say("released", time.time())


async def run_commands(args: argparse.Namespace) -> None:
    """Connect, answer ``ready``, run the commands read on stdin until EOF."""
    from redis.asyncio import Redis

    backend = make_backend(args.backend, args.url, args.namespace)
    client = Redis.from_url(args.store_url) if args.store_url else None
    async with backend:
        await backend.locked(name="warm-up")
        if client is not None:
            await client.ping()
        say("ready")
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                break
            command, *rest = line.split()
            try:
                if command == "contend":
                    lock, count, lease, out = rest
                    await contend(
                        backend, args.worker, lock, int(count), float(lease), out
                    )
                elif command == "hold":
                    assert client is not None, "--store-url is needed"
                    lock, key, lease, *every = rest
                    store = FencedStore(client, key)
                    await hold(
                        backend,
                        store,
                        args.worker,
                        lock,
                        float(lease),
                        *(float(e) for e in every),
                    )
                elif command == "take":
                    assert client is not None, "--store-url is needed"
                    lock, key, lease = rest
                    store = FencedStore(client, key)
                    await take(backend, store, args.worker, lock, float(lease))
                else:
                    say("error", "unknown-command", command)
                    continue
            except Exception as exc:
                say("error", type(exc).__name__, str(exc).replace("\n", " "))
                continue
            say("done")
    if client is not None:
        await client.aclose()


# Tasks mode ---------------------------------------------------------------------


class Events:
    """Append-only event file; one `os.write` per line (atomic with O_APPEND)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, event: str, detail: object = "") -> None:
        """Record `event` now."""
        line = f"{time.time():.6f} {event} {detail}".rstrip() + "\n"
        os.write(self._fd, line.encode())

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)


class EventLog(logging.Handler):
    """grelmicro WARNINGs and ERRORs as ``log`` events."""

    def __init__(self, events: Events) -> None:
        super().__init__(logging.WARNING)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().replace("\n", " ")
        self.events.write("log", f"{record.levelname} {message}")


async def run_tasks(args: argparse.Namespace) -> None:
    """Run the manager until SIGTERM."""
    directory: Path = args.dir
    events = Events(directory / f"{args.worker}.events")
    grelmicro_logger = logging.getLogger("grelmicro")
    grelmicro_logger.setLevel(logging.WARNING)
    grelmicro_logger.addHandler(EventLog(events))
    backend = make_backend(args.backend, args.url, args.namespace)
    manager = TaskManager()
    election: LeaderElection | None = None
    options: dict[str, Any] = {}
    if args.leader:
        election = LeaderElection(
            ELECTION,
            backend=backend,
            worker=args.worker,
            lease_duration=args.lease,
            renew_deadline=args.renew,
            retry_interval=args.retry,
            backend_timeout=args.backend_timeout,
        )
        manager.add_task(election)
        options["leader"] = election

    @manager.interval(
        seconds=args.interval,
        name=TASK,
        max_lock_seconds=args.max_lock,
        backend=backend,
        worker=args.worker,
        **options,
    )
    async def job() -> None:
        events.write("run-start", current_run().fencing_token)
        try:
            await anyio.sleep(args.work)
        except anyio.get_cancelled_exc_class():
            events.write("run-end", "lost" if current_run().lost else "cancelled")
            raise
        events.write("run-end", "finished")

    async def watch_leader() -> None:
        state = False
        while election is not None:
            now = election.is_leader()
            if now != state:
                state = now
                events.write("leader", "1" if now else "0")
            await anyio.sleep(0.01)

    async def watch_signals(scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                scope.cancel()
                return

    try:
        async with backend:
            await backend.locked(name="warm-up")
            async with anyio.create_task_group() as group:
                group.start_soon(watch_signals, group.cancel_scope)
                group.start_soon(watch_leader)
                async with manager:
                    events.write("ready")
                    say("ready")
                    await anyio.sleep_forever()
    finally:
        events.write("exit")
        events.close()


def main() -> None:
    """Entry point."""
    args = parse_args()
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    if args.mode == "commands":
        anyio.run(run_commands, args)
    else:
        anyio.run(run_tasks, args)


# Parent side --------------------------------------------------------------------


def spawn(argv: list[str], stderr_path: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m tests.integration._fencing_worker ARGV`` from the root."""
    with stderr_path.open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.integration._fencing_worker", *argv],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )


class CommandWorker:
    """A worker process in ``commands`` (or ``tasks``) mode, seen from the parent."""

    def __init__(self, name: str, argv: list[str], directory: Path) -> None:
        self.name = name
        self.stderr_path = directory / f"{name}.stderr"
        self.process = spawn([*argv, "--worker", name], self.stderr_path)
        #: A ``tasks`` worker stops on SIGTERM (a ``commands`` one at stdin EOF).
        self.tasks_mode = "tasks" in argv
        self._buffer = b""

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def stderr(self) -> str:
        """What the process wrote on stderr."""
        return self.stderr_path.read_text(errors="replace")

    def send(self, *fields: object) -> None:
        """Send one command line."""
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write((" ".join(str(f) for f in fields) + "\n").encode())
        stdin.flush()

    def read(self, timeout: float) -> list[str]:
        """The next answer line's fields; AssertionError after `timeout` seconds."""
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or self.process.poll() is not None:
                msg = (
                    f"{self.name}: no answer within {timeout}s (exit code "
                    f"{self.process.poll()}); stderr:\n{self.stderr()[-3000:]}"
                )
                raise AssertionError(msg)
            ready, _, _ = select.select([stdout], [], [], min(left, 0.2))
            if ready:
                chunk = os.read(stdout.fileno(), 65536)
                if not chunk and self.process.poll() is not None:
                    continue
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode().split()

    def expect(self, event: str, timeout: float) -> list[str]:
        """Read lines until one starting with `event`; fail on ``error``."""
        while True:
            fields = self.read(timeout)
            if fields and fields[0] == "error":
                msg = f"{self.name} failed: {' '.join(fields[1:])}"
                raise AssertionError(msg)
            if fields and fields[0] == event:
                return fields

    def signal(self, sig: signal.Signals) -> float:
        """Send `sig`; the wall-clock time it was sent."""
        now = time.time()
        os.kill(self.pid, sig)
        return now

    def close(self, timeout: float = 10.0) -> int | None:
        """SIGCONT, close stdin (the worker exits), else SIGTERM, else SIGKILL."""
        process = self.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
        with contextlib.suppress(OSError):
            if process.stdin is not None:
                process.stdin.close()
        code = None
        first = signal.SIGTERM if self.tasks_mode else None
        for sig in (first, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, sig)
            try:
                code = process.wait(timeout / 2)
                break
            except subprocess.TimeoutExpired:
                continue
        if process.stdout is not None:
            process.stdout.close()
        return code

    def wait_ready(self) -> None:
        """Wait for ``ready``."""
        self.expect("ready", START_TIMEOUT)


if __name__ == "__main__":
    main()
