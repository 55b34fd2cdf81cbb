"""Cron tasks: declare them with decorators, run them with a TaskManager.

Runs for about three seconds on the in-process backend (swap in a
RedisSyncBackend or NatsSyncBackend, or give the manager a FastStream
broker, to coordinate several workers).
"""

import anyio

from grelmicro.sync.memory import MemorySyncBackend
from grelmicro.task import TaskManager, current_run

task = TaskManager()


@task.cron("* * * * * *")  # six fields: every second, on one worker per fire
async def every_second() -> None:
    run = current_run()
    print(f"fire {run.scheduled_at:%H:%M:%S} token {run.fencing_token}")


@task.cron("30 2 * * *", timezone="Europe/Zurich")  # 02:30 Zurich time, daily
async def nightly_report() -> None: ...


@task.cron(
    "@hourly", local=True
)  # every worker, every hour; sync code runs in a thread
def rotate_local_logs() -> None: ...


async def main() -> None:
    async with MemorySyncBackend():  # the default backend for the tasks
        with anyio.move_on_after(3):
            async with task:
                await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main)
