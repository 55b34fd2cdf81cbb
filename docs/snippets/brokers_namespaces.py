"""Another namespace over the broker's own connection: backend_for(prefix=/bucket=)."""

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from faststream import ContextRepo, FastStream
from faststream.redis import RedisBroker

from grelmicro.brokers import backend_for
from grelmicro.sync import LeaderElection
from grelmicro.task import TaskManager

# --8<-- [start:namespaces]
broker = RedisBroker(os.environ.get("REDIS_URL", "redis://localhost:6379"))
task = TaskManager(broker=broker)  # still given: it waits for the connection
billing = backend_for(broker, prefix="billing:")  # keys "billing:tasklock:..."
# NATS: backend_for(nats_broker, bucket="billing-locks")

leader = LeaderElection("billing-leader", backend=billing)
task.add_task(leader)


@task.interval(seconds=5, max_lock_seconds=30, backend=billing)
async def invoice_run() -> None:
    print("invoices sent")


# --8<-- [end:namespaces]


@asynccontextmanager
async def lifespan(context: ContextRepo) -> AsyncIterator[None]:
    async with task:
        yield


app = FastStream(broker, lifespan=lifespan)

if __name__ == "__main__":
    asyncio.run(app.run())
