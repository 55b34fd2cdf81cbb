"""Getting started: a FastStream service on NATS with every kind of task."""

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from faststream import ContextRepo, FastStream
from faststream.nats import NatsBroker

from grelmicro.sync import LeaderElection, Lock
from grelmicro.task import TaskManager, TaskRouter

broker = NatsBroker(os.environ.get("NATS_URL", "nats://localhost:4222"))
task = TaskManager(broker=broker)  # locks live in the JetStream KV bucket "grelmicro"

leader = LeaderElection("my-service-leader")
task.add_task(leader)


@task.interval(seconds=5)  # every worker, every 5 s
async def refresh_config() -> None:
    print("config refreshed")


@task.interval(seconds=5, max_lock_seconds=30)  # one worker per 5 s, fleet-wide
async def sync_products() -> None:
    print("products synced")


@task.interval(seconds=60, leader=leader)  # only on the leader
async def purge_sessions() -> None:
    print("sessions purged")


@task.interval(seconds=10, min_lock_seconds=60, max_lock_seconds=300)
async def rebuild_index() -> None:  # at most once a minute, even if quick
    print("index rebuilt")


ledger = Lock("ledger")  # also usable in subscribers and HTTP handlers


@task.interval(seconds=30, max_lock_seconds=120, sync=ledger)
async def reconcile() -> None:
    print("ledger reconciled")


reports = TaskRouter()  # tasks declared in another module


@reports.interval(seconds=3600, max_lock_seconds=3600)
async def hourly_report() -> None:
    print("report sent")


task.include_router(reports)


@asynccontextmanager
async def lifespan(context: ContextRepo) -> AsyncIterator[None]:
    async with task:
        yield


app = FastStream(broker, lifespan=lifespan)

if __name__ == "__main__":
    asyncio.run(app.run())
