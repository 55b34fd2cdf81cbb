"""grelmicro in any anyio program, with a backend of its own."""

# --8<-- [start:example]
import anyio

from grelmicro.sync.redis import RedisSyncBackend
from grelmicro.task import TaskManager

backend = RedisSyncBackend()  # REDIS_URL, or a URL, or client=redis.asyncio.Redis()
task = TaskManager()


@task.interval(seconds=10, max_lock_seconds=60)
def nightly_report() -> None:  # sync functions run in a worker thread
    print("report built")


async def main() -> None:
    async with backend, task:
        await anyio.sleep_forever()  # serve


# --8<-- [end:example]


async def serve_briefly() -> None:  # the docs tests run it for two seconds
    with anyio.move_on_after(2):
        await main()


if __name__ == "__main__":
    anyio.run(serve_briefly)
