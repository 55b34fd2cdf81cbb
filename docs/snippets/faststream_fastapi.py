"""FastAPI with FastStream's NATS router: the router starts and stops the broker."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from faststream.nats.fastapi import NatsRouter

from grelmicro.sync import LeaderElection, Lock
from grelmicro.task import TaskManager

# --8<-- [start:app]
router = NatsRouter(os.environ.get("NATS_URL", "nats://localhost:4222"))
task = TaskManager(broker=router.broker)
leader = LeaderElection("web-leader")
task.add_task(leader)
ledger = Lock("web-ledger")


@task.interval(seconds=5, max_lock_seconds=30, sync=ledger)
async def reconcile() -> None:
    print("reconciled by the task")


@router.get("/status")
async def status() -> dict[str, bool]:
    return {"leader": leader.is_leader()}


@router.post("/reconcile")
async def reconcile_now() -> dict[str, str]:
    async with ledger:  # waits for the task (on any worker) to finish
        print("reconciled by a request")
    return {"status": "done"}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with task:
        yield


app = FastAPI(lifespan=lifespan)
app.include_router(router)
# --8<-- [end:app]

if __name__ == "__main__":  # what `uvicorn module:app` does, briefly
    import anyio
    import httpx

    async def main() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://app"
            ) as client:
                await leader.wait_for_leader()
                print((await client.get("/status")).json())
                print((await client.post("/reconcile")).json())

    anyio.run(main)
