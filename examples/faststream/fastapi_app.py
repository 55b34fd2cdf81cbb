"""FastAPI with FastStream's NATS router, and grelmicro tasks on its broker.

FastStream's FastAPI integration starts and stops the broker with the web
app; grelmicro runs the tasks in the FastAPI lifespan, over that broker's
connection, and stops them (releasing leadership and locks) right before the
router closes the broker.

    NATS_URL=nats://localhost:4222 uvicorn fastapi_app:app   # from this directory
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from faststream.nats.fastapi import NatsRouter

from grelmicro.sync import LeaderElection, Lock
from grelmicro.task import TaskManager

logger = logging.getLogger("examples.fastapi_app")
WORKER = os.environ.get("WORKER_NAME") or f"worker-{os.getpid()}"

router = NatsRouter(os.environ.get("NATS_URL", "nats://localhost:4222"))
task = TaskManager(broker=router.broker)

leader = LeaderElection("example-fastapi-leader")
task.add_task(leader)

# Shared by a task and a request handler: one holder at a time, cluster-wide.
report_lock = Lock("example-fastapi-report")
last_status: dict[str, str] = {}


@task.interval(seconds=1, leader=leader)
async def publish_status() -> None:
    """Only the leader publishes the cluster status."""
    await router.broker.publish({"leader": WORKER}, "example.fastapi.status")


@task.interval(seconds=1, max_lock_seconds=10, sync=report_lock)
async def build_report() -> None:
    logger.info("report built by the task on %s", WORKER)


@router.subscriber("example.fastapi.status")
async def on_status(message: dict[str, str]) -> None:
    last_status.update(message)


@router.get("/status")
async def status() -> dict[str, object]:
    """This worker's view: is it the leader, and the last status message."""
    return {"worker": WORKER, "is_leader": leader.is_leader(), "last": last_status}


@router.post("/report")
async def report() -> dict[str, str]:
    """Build the report now, waiting for the task (or another worker) if busy."""
    async with report_lock:
        logger.info("report built by a request on %s", WORKER)
    return {"built_by": WORKER}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with task:
        yield


app = FastAPI(lifespan=lifespan)
app.include_router(router)
