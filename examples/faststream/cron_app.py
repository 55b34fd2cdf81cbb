"""A FastStream service with cron tasks next to interval tasks.

Run several copies side by side: each cron fire runs on exactly one of them,
claimed through the broker's own connection (Redis, or NATS when `NATS_URL`
is set):

    REDIS_URL=redis://localhost:6379 python examples/faststream/cron_app.py
    NATS_URL=nats://localhost:4222 python examples/faststream/cron_app.py
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fast_depends import Depends
from faststream import ContextRepo, FastStream
from faststream.nats import NatsBroker
from faststream.redis import RedisBroker

from grelmicro.sync import Lock
from grelmicro.task import Run, TaskManager, current_run

logger = logging.getLogger("examples.cron_app")
WORKER = os.environ.get("WORKER_NAME") or f"worker-{os.getpid()}"


def make_broker() -> RedisBroker | NatsBroker:
    """A NATS broker when NATS_URL is set, else a Redis broker."""
    if os.environ.get("NATS_URL"):
        return NatsBroker(os.environ["NATS_URL"])
    return RedisBroker(os.environ.get("REDIS_URL", "redis://localhost:6379"))


broker = make_broker()
task = TaskManager(broker=broker)


# Interval tasks: every worker every 5 s, and at most once per minute fleet-wide.
@task.interval(seconds=5)
async def heartbeat() -> None:
    logger.debug("heartbeat from %s", WORKER)


@task.interval(seconds=60, max_lock_seconds=120)
async def refresh_cache() -> None:
    logger.info("cache refreshed on %s", WORKER)


# 1. Six fields (leading seconds): every 2 seconds, on one worker per fire.
#    The run knows its fire time; a subscriber of the app receives the tick.
@task.cron("*/2 * * * * *", name="tick")
async def tick(run: Run = Depends(current_run)) -> None:  # noqa: B008
    await broker.publish(
        {"fire": run.scheduled_at.isoformat(), "from": WORKER}, "example.ticks"
    )


async def on_tick(message: dict[str, str]) -> None:
    logger.info("tick of %s published by %s", message["fire"], message["from"])


broker.subscriber("example.ticks")(on_tick)  # one subscriber per worker


# 2. Wall-clock time in a time zone: 02:30 in Zurich, once per day; on the
#    spring-forward day it runs at 03:00, on the fall-back day once.
@task.cron("30 2 * * *", timezone="Europe/Zurich")
async def nightly_report() -> None:
    logger.info("nightly report built on %s", WORKER)


# 3. At least once: if the worker running it dies, another one runs that fire
#    again within lease_seconds (plus one retry). Pass the fencing token to
#    the storage you write to, so a stale run's late write is rejected.
@task.cron("*/5 * * * *", at_least_once=True, lease_seconds=120)
async def export_invoices() -> None:
    run = current_run()
    logger.info("invoices exported on %s (token %s)", WORKER, run.fencing_token)


# 4. Missed fires: when every worker was down at 06:00, the first worker up
#    runs it, but only until 08:00 (misfire_grace_seconds).
@task.cron("0 6 * * MON-FRI", misfire_grace_seconds=2 * 3600)
async def morning_digest() -> None:
    logger.info("morning digest sent from %s", WORKER)


# 5. A resource lock shared with other code: the fire is skipped when busy.
ledger = Lock("ledger")


@task.cron("@hourly", sync=ledger)
async def reconcile_ledger() -> None:
    logger.info("ledger reconciled on %s", WORKER)


# 6. Every worker, every fire (no backend): a sync function runs in a thread.
@task.cron("0 * * * *", local=True)
def rotate_local_files() -> None:
    logger.info("local files rotated on %s", WORKER)


@asynccontextmanager
async def lifespan(context: ContextRepo) -> AsyncIterator[None]:
    async with task:  # starts the tasks; stops them before the broker closes
        yield


app = FastStream(broker, lifespan=lifespan)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(app.run())
