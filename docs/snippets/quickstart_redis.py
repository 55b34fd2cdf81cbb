"""A FastStream service on Redis: run several copies (REDIS_URL, or localhost)."""

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from faststream import ContextRepo, FastStream
from faststream.redis import RedisBroker

from grelmicro.sync import LeaderElection
from grelmicro.task import TaskManager

broker = RedisBroker(os.environ.get("REDIS_URL", "redis://localhost:6379"))
task = TaskManager(
    broker=broker
)  # locks are Redis keys: "leader:<name>", "tasklock:<task>"
leader = LeaderElection("quickstart-leader")
task.add_task(leader)


@task.interval(seconds=5)  # every replica
async def heartbeat() -> None:
    print("alive")


@task.interval(seconds=5, max_lock_seconds=30)  # once per 5 s across replicas
async def sync_catalog() -> None:
    print("catalog synced")


@task.interval(seconds=60, leader=leader)  # only on the leader
async def cleanup() -> None:
    print("cleanup done by the leader")


@asynccontextmanager
async def lifespan(context: ContextRepo) -> AsyncIterator[None]:
    async with task:
        yield


app = FastStream(broker, lifespan=lifespan)

if __name__ == "__main__":
    asyncio.run(app.run())  # stops on SIGINT / SIGTERM, releasing what it holds
