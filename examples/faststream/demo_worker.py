"""One worker of the demo: a FastStream app with a locked task and a leader.

`demo.py` starts three of these processes and reads what they do from their
standard output, one JSON object per line. Run alone, it works like any
FastStream service:

    NATS_URL=nats://localhost:4222 python examples/faststream/demo_worker.py --name w1

Everything grelmicro needs is in the first lines of `build_app()`: the
broker the app already has, a `TaskManager(broker=broker)`, a
`LeaderElection`, and an interval task with `max_lock_seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from faststream import ContextRepo, FastStream

from grelmicro.sync import LeaderElection
from grelmicro.task import TaskManager


def emit(event: str, **fields: Any) -> None:
    """Tell the demo what just happened (a JSON line on stdout)."""
    line = json.dumps({"event": event, "time": time.time(), **fields})
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def make_broker(url: str) -> Any:
    """A NatsBroker or a RedisBroker, from the URL's scheme."""
    if url.startswith(("nats://", "tls://")):
        from faststream.nats import NatsBroker

        return NatsBroker(url, logger=None)
    from faststream.redis import RedisBroker

    return RedisBroker(url, logger=None)


def build_app(
    *,
    name: str,
    url: str,
    run_id: str,
    tick_seconds: float,
    lease_seconds: float,
) -> FastStream:
    """The worker's FastStream app."""
    broker = make_broker(url)
    task = TaskManager(broker=broker)  # locks and leadership over this broker

    leader = LeaderElection(
        f"demo-{run_id}",
        lease_duration=lease_seconds,  # how long a crashed leader blocks others
        renew_deadline=lease_seconds * 2 / 3,
        retry_interval=0.25,  # a released lease is taken within this
        backend_timeout=min(1.0, lease_seconds / 3),
    )
    task.add_task(leader)

    subject = f"demo-{run_id}-ticks"
    ticks = 0

    @task.interval(
        seconds=tick_seconds,
        max_lock_seconds=tick_seconds * 3,
        name=f"demo-{run_id}-tick",
    )
    async def tick() -> None:
        """The locked task: one worker runs each tick, whichever gets there first."""
        nonlocal ticks
        ticks += 1
        tick_id = f"{name}/{ticks}"
        emit("tick", worker=name, id=tick_id)
        # Tasks use the same broker: announce the tick to the app's subscriber.
        await publish(broker, {"id": tick_id, "worker": name}, subject)

    was_leader = False

    @task.interval(seconds=0.05)
    async def watch_leadership() -> None:
        """A local task on every worker: report leadership changes."""
        nonlocal was_leader
        is_leader = leader.is_leader()
        if is_leader != was_leader:
            was_leader = is_leader
            emit("leader" if is_leader else "follower", worker=name)

    async def on_tick(message: dict[str, str]) -> None:
        emit("handled", worker=name, id=message["id"])

    subscribe(broker, subject)(on_tick)

    @asynccontextmanager
    async def lifespan(context: ContextRepo) -> AsyncIterator[None]:
        async with task:
            yield

    app = FastStream(broker, lifespan=lifespan, logger=None)

    @app.after_startup
    async def ready() -> None:
        emit("ready", worker=name, pid=os.getpid())

    @app.after_shutdown
    async def stopped() -> None:
        emit("stopped", worker=name)

    return app


async def publish(broker: Any, message: dict[str, str], subject: str) -> None:
    """Publish to the demo's subject (a NATS subject, or a Redis list)."""
    if type(broker).__name__ == "NatsBroker":
        await broker.publish(message, subject)
    else:
        await broker.publish(message, list=subject)


def subscribe(broker: Any, subject: str) -> Any:
    """A subscriber decorator: one worker handles each message."""
    if type(broker).__name__ == "NatsBroker":
        return broker.subscriber(subject, queue="demo")
    return broker.subscriber(list=subject)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="this worker's name")
    parser.add_argument(
        "--url",
        default=os.environ.get("NATS_URL") or os.environ.get("REDIS_URL"),
        help="nats://... or redis://... (default: NATS_URL, then REDIS_URL)",
    )
    parser.add_argument("--run-id", default="local", help="namespace of the demo run")
    parser.add_argument("--tick", type=float, default=1.0, help="tick interval (s)")
    parser.add_argument("--lease", type=float, default=3.0, help="leader lease (s)")
    args = parser.parse_args()
    if not args.url:
        parser.error("give --url, or set NATS_URL or REDIS_URL")
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s {args.name} %(name)s %(levelname)s %(message)s",
    )
    app = build_app(
        name=args.name,
        url=args.url,
        run_id=args.run_id,
        tick_seconds=args.tick,
        lease_seconds=args.lease,
    )
    asyncio.run(app.run())


if __name__ == "__main__":
    main()
