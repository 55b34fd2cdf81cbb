"""A task publishes through the broker; a subscriber of the same app gets it."""

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from faststream import ContextRepo, FastStream
from faststream.nats import NatsBroker

from grelmicro.task import TaskManager

broker = NatsBroker(os.environ.get("NATS_URL", "nats://localhost:4222"))
task = TaskManager(broker=broker)


# --8<-- [start:publish]
@task.interval(seconds=10, max_lock_seconds=60)
async def announce() -> None:
    await broker.publish({"at": time.time()}, "announcements")


@broker.subscriber("announcements", queue="workers")  # one worker handles each
async def on_announcement(message: dict[str, float]) -> None:
    print(f"announcement sent at {message['at']:.0f} received")


# --8<-- [end:publish]


@asynccontextmanager
async def lifespan(context: ContextRepo) -> AsyncIterator[None]:
    async with task:
        yield


app = FastStream(broker, lifespan=lifespan)

if __name__ == "__main__":
    asyncio.run(app.run())
