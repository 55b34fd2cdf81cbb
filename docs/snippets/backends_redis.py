"""Ways to build a RedisSyncBackend (connections open on first use)."""

import os

import anyio
import redis.asyncio

from grelmicro.sync import Lock
from grelmicro.sync.redis import RedisSyncBackend

url = os.environ.get("REDIS_URL", "redis://localhost:6379/0")


async def main() -> None:
    # --8<-- [start:build]
    backend = RedisSyncBackend("redis://localhost:6379/0")  # or rediss://, unix://
    backend = RedisSyncBackend()  # URL from the REDIS_URL variable
    backend = RedisSyncBackend(client=redis.asyncio.Redis.from_url(url))  # borrowed
    backend = RedisSyncBackend(url, prefix="billing:")  # key prefix
    # --8<-- [end:build]
    async with backend, Lock("invoices", backend=backend):
        print("held billing:lock:invoices")


if __name__ == "__main__":
    anyio.run(main)
