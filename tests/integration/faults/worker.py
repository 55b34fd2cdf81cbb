"""A grelmicro worker process for the fault-injection tests.

A plain anyio program: one `TaskManager` with a `LeaderElection`, a
leader-gated interval task and, on request, a distributed (TaskLock) task, a
local task and a backend probe. SIGTERM (or SIGINT) is a graceful shutdown:
the manager is left, so its tasks are cancelled and the lease and locks are
released, then the backend is closed and the process exits 0.

Everything observable goes to files in ``--dir`` (wall-clock seconds, so the
parent can compare processes on the same machine):

- ``<worker>.events``: ``<time> <event> [detail]`` lines: ``ready``,
  ``run <task>`` when a task function starts, ``leader 1``/``leader 0`` when
  `is_leader()` changes (polled every 10 ms), ``probe ok``/``probe fail``,
  ``reconnected <url>`` (NATS), ``exit``.
- ``<worker>.log``: the ``grelmicro`` (and driver) log records,
  ``<time> <LEVEL> <logger> <message>``.

    python -m tests.integration.faults.worker --backend redis --url URL \\
        --namespace NS --worker w0 --dir DIR [--lease 2 --renew 1.5 ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from anyio import CancelScope

from grelmicro.sync import LeaderElection
from grelmicro.sync.abc import SyncBackend
from grelmicro.task import TaskManager

LEADER_TASK = "leader-job"
LOCKED_TASK = "locked-job"
LOCAL_TASK = "local-job"
ELECTION = "election"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["redis", "nats"], required=True)
    parser.add_argument("--url", required=True, help="comma-separated for NATS")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument(
        "--own-client",
        action="store_true",
        help="NATS: connect to the URLs in the given order, reconnect quickly",
    )
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--renew", type=float, default=1.5)
    parser.add_argument("--retry", type=float, default=0.2)
    parser.add_argument("--backend-timeout", type=float, default=1.0)
    parser.add_argument("--error-interval", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--work", type=float, default=0.0)
    parser.add_argument("--locked", action="store_true")
    parser.add_argument("--max-lock", type=float, default=1.0)
    parser.add_argument("--local", action="store_true")
    parser.add_argument("--probe", action="store_true")
    parser.add_argument(
        "--trace", action="store_true", help="record every backend call as an event"
    )
    return parser.parse_args(argv)


class Events:
    """Append-only event file; one `os.write` per line (atomic with O_APPEND)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, event: str, detail: str = "") -> None:
        """Record `event` now."""
        line = f"{time.time():.6f} {event} {detail}".rstrip() + "\n"
        os.write(self._fd, line.encode())

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)


def setup_logging(path: Path) -> None:
    """grelmicro at INFO (and everything at WARNING) to `path`."""
    handler = logging.FileHandler(path)
    handler.setFormatter(
        logging.Formatter("%(created).6f %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("grelmicro").setLevel(logging.INFO)


async def make_backend(
    args: argparse.Namespace, events: Events
) -> tuple[SyncBackend, Any]:
    """The backend under test, and the client to close at exit (if we own one)."""
    if args.backend == "redis":
        from grelmicro.sync.redis import RedisSyncBackend

        return RedisSyncBackend(
            args.url, prefix=args.namespace, auto_register=False
        ), None
    from grelmicro.sync.nats import NatsSyncBackend  # type: ignore[import-not-found,unused-ignore]

    if not args.own_client:
        backend: SyncBackend = NatsSyncBackend(
            args.url,
            bucket=args.namespace,
            replicas=args.replicas,
            auto_register=False,
        )
        return backend, None
    import nats

    async def reconnected() -> None:
        events.write("reconnected", str(client.connected_url.netloc))

    async def disconnected() -> None:
        events.write("disconnected")

    async def error(exc: Exception) -> None:
        events.write("nats-error", type(exc).__name__)

    client = await nats.connect(
        servers=args.url.split(","),
        dont_randomize=True,
        reconnect_time_wait=0.1,
        max_reconnect_attempts=-1,
        connect_timeout=1,
        reconnected_cb=reconnected,
        disconnected_cb=disconnected,
        error_cb=error,
    )
    events.write("connected", str(client.connected_url.netloc))
    backend = NatsSyncBackend(
        client=client,
        bucket=args.namespace,
        replicas=args.replicas,
        auto_register=False,
    )
    return backend, client


class TracingBackend:
    """Delegates to a backend and records each call (``call <op> <name> <result>``)."""

    def __init__(self, inner: SyncBackend, events: Events) -> None:
        self.inner = inner
        self.events = events
        fast = getattr(inner, "acquire_or_remaining", None)
        if fast is not None:

            async def acquire_or_remaining(
                *, name: str, token: str, duration: float
            ) -> float:
                result: float = await self._trace(
                    "acquire_or_remaining",
                    name,
                    fast(name=name, token=token, duration=duration),
                )
                return result

            self.acquire_or_remaining = acquire_or_remaining
        for optional in ("extend", "wait_released"):
            if hasattr(inner, optional):
                setattr(self, optional, getattr(inner, optional))

    async def _trace(self, operation: str, name: str, call: Any) -> Any:
        start = time.time()
        result: Any = "cancelled"
        try:
            result = await call
            return result
        except Exception as exc:
            result = type(exc).__name__
            raise
        finally:
            self.events.write(
                "call", f"{operation} {name} {result} {time.time() - start:.3f}"
            )

    async def __aenter__(self) -> TracingBackend:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.inner.__aexit__(*exc_info)

    async def acquire(self, *, name: str, token: str, duration: float) -> bool:
        result: bool = await self._trace(
            "acquire",
            name,
            self.inner.acquire(name=name, token=token, duration=duration),
        )
        return result

    async def release(self, *, name: str, token: str) -> bool:
        result: bool = await self._trace(
            "release", name, self.inner.release(name=name, token=token)
        )
        return result

    async def locked(self, *, name: str) -> bool:
        result: bool = await self._trace("locked", name, self.inner.locked(name=name))
        return result

    async def owned(self, *, name: str, token: str) -> bool:
        result: bool = await self._trace(
            "owned", name, self.inner.owned(name=name, token=token)
        )
        return result


async def warm_up(backend: SyncBackend, events: Events) -> None:
    """Connect (and create the bucket) before starting the tasks.

    Retried for a few seconds: right after a replicated NATS bucket is
    created, its stream may not answer on every node yet.
    """
    with anyio.fail_after(10):
        while True:
            try:
                await backend.locked(name="warm-up")
            except Exception as exc:
                events.write("warm-up", f"retry {type(exc).__name__}")
                await anyio.sleep(0.1)
            else:
                return


def build_manager(
    args: argparse.Namespace, backend: SyncBackend, events: Events
) -> tuple[TaskManager, LeaderElection]:
    """The manager, its election and its tasks."""
    manager = TaskManager()
    leader = LeaderElection(
        ELECTION,
        backend=backend,
        worker=args.worker,
        lease_duration=args.lease,
        renew_deadline=args.renew,
        retry_interval=args.retry,
        backend_timeout=args.backend_timeout,
        error_interval=args.error_interval,
    )
    manager.add_task(leader)

    @manager.interval(
        seconds=args.interval,
        name=LEADER_TASK,
        leader=leader,
        backend=backend,
        worker=args.worker,
    )
    async def leader_job() -> None:
        events.write("run", LEADER_TASK)
        if args.work:
            await anyio.sleep(args.work)
            events.write("end", LEADER_TASK)

    if args.locked:

        @manager.interval(
            seconds=args.interval,
            name=LOCKED_TASK,
            max_lock_seconds=args.max_lock,
            backend=backend,
            worker=args.worker,
        )
        async def locked_job() -> None:
            events.write("run", LOCKED_TASK)

    if args.local:

        @manager.interval(seconds=args.interval, name=LOCAL_TASK)
        async def local_job() -> None:
            events.write("run", LOCAL_TASK)

    if args.probe:

        @manager.interval(seconds=args.interval, name="probe")
        async def probe() -> None:
            try:
                with anyio.fail_after(args.backend_timeout):
                    await backend.locked(name="probe")
            except Exception as exc:
                events.write("probe", f"fail {type(exc).__name__}")
            else:
                events.write("probe", "ok")

    return manager, leader


async def watch_leader(leader: LeaderElection, events: Events) -> None:
    """Record every change of `is_leader()` (what gates the leader task)."""
    state = False
    while True:
        now = leader.is_leader()
        if now != state:
            state = now
            events.write("leader", "1" if now else "0")
        await anyio.sleep(0.01)


async def watch_signals(scope: CancelScope, events: Events) -> None:
    """Cancel `scope` on SIGTERM or SIGINT (the app's normal shutdown)."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            events.write("signal", signal.Signals(signum).name)
            scope.cancel()
            return


async def run(args: argparse.Namespace) -> None:
    """Connect, run the manager until SIGTERM, leave it, close the backend."""
    args.dir.mkdir(parents=True, exist_ok=True)
    setup_logging(args.dir / f"{args.worker}.log")
    events = Events(args.dir / f"{args.worker}.events")
    backend, client = await make_backend(args, events)
    if args.trace:
        backend = TracingBackend(backend, events)
    manager, leader = build_manager(args, backend, events)
    try:
        async with backend:
            await warm_up(backend, events)
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch_signals, tg.cancel_scope, events)
                tg.start_soon(watch_leader, leader, events)
                async with manager:
                    events.write("ready")
                    print("ready", flush=True)
                    await anyio.sleep_forever()
        events.write("leader", "1" if leader.is_leader() else "0")
    finally:
        if client is not None:
            with anyio.CancelScope(shield=True):
                await client.close()
        events.write("exit")
        events.close()


def main() -> None:
    """Entry point."""
    anyio.run(run, parse_args())


if __name__ == "__main__":
    sys.exit(main())
