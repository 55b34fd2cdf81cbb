"""A FastStream service on Redis with distributed interval tasks.

Run several copies side by side; they coordinate through the broker's own
Redis connection (no second client, no extra URL):

    REDIS_URL=redis://localhost:6379 python examples/faststream/redis_app.py

or with the FastStream CLI, from this directory: `faststream run redis_app:app`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from faststream import ContextRepo, FastStream
from faststream.redis import RedisBroker

from grelmicro.sync import LeaderElection, Lock
from grelmicro.task import TaskManager, TaskRouter

logger = logging.getLogger("examples.redis_app")
WORKER = os.environ.get("WORKER_NAME") or f"worker-{os.getpid()}"

broker = RedisBroker(os.environ.get("REDIS_URL", "redis://localhost:6379"))
task = TaskManager(broker=broker)  # locks live on the broker's connection

# Leader election: one worker at a time leads; a task given `leader=` runs
# only there. The manager runs the election (it is a task, too).
leader = LeaderElection("example-redis-leader")
task.add_task(leader)


# 1. Every worker, every second: no lock (local mode).
@task.interval(seconds=1)
async def heartbeat() -> None:
    logger.debug("heartbeat from %s", WORKER)


# 2. Distributed lock: at most once per interval across all workers.
@task.interval(seconds=1, max_lock_seconds=10)
async def cleanup() -> None:
    logger.info("cleanup ran on %s", WORKER)


# 3. Leader gating: only the leader runs it (and at most once per interval).
@task.interval(seconds=1, leader=leader)
async def leader_report() -> None:
    logger.info("leader report from %s", WORKER)


# 4. Custom lock timing: at most once per 2 s, even if it ends sooner; if the
#    worker dies while running it, the lock frees itself after 10 s.
@task.interval(seconds=1, min_lock_seconds=2, max_lock_seconds=10)
async def rebuild_cache() -> None:
    logger.info("cache rebuilt on %s", WORKER)


# 5. Resource lock: also take `Lock("ledger")`, shared with request handlers
#    or other tasks that touch the same resource.
ledger_lock = Lock("ledger")


@task.interval(seconds=1, max_lock_seconds=10, sync=ledger_lock)
async def reconcile_ledger() -> None:
    logger.info("ledger reconciled on %s", WORKER)


# 6. A router groups tasks in their own module, then joins the manager.
reports = TaskRouter()


@reports.interval(seconds=1, max_lock_seconds=10)
async def daily_digest() -> None:
    logger.info("digest built on %s", WORKER)


task.include_router(reports)


# 7. A task publishes through the broker; a subscriber of the same app (on
#    whichever worker pops it from the list) receives it.
@task.interval(seconds=1, max_lock_seconds=10)
async def announce() -> None:
    await broker.publish({"from": WORKER}, list="example-announcements")


@broker.subscriber(list="example-announcements")
async def on_announcement(message: dict[str, str]) -> None:
    logger.info("announcement from %s handled on %s", message["from"], WORKER)


@asynccontextmanager
async def lifespan(context: ContextRepo) -> AsyncIterator[None]:
    async with task:  # starts the tasks; stops them before the broker closes
        yield


app = FastStream(broker, lifespan=lifespan)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(app.run())
