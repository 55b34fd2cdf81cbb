"""A plain FastAPI app that starts its FastStream broker in its own lifespan."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from faststream.redis import RedisBroker

from grelmicro.task import TaskManager

broker = RedisBroker(os.environ.get("REDIS_URL", "redis://localhost:6379"))
task = TaskManager(broker=broker)


@task.interval(seconds=5, max_lock_seconds=30)
async def refresh_rates() -> None:
    print("rates refreshed")


# --8<-- [start:lifespan]
@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await broker.start()
    try:
        async with task:
            yield
    finally:
        await broker.stop()  # after the manager released what it holds


# --8<-- [end:lifespan]
app = FastAPI(lifespan=lifespan)

if __name__ == "__main__":  # what `uvicorn module:app` does, briefly
    import anyio

    async def main() -> None:
        async with app.router.lifespan_context(app):
            await anyio.sleep(1)

    anyio.run(main)
