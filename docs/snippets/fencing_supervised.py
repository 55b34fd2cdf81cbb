"""Supervised runs: a run whose lock cannot be kept is stopped (memory backend).

Both tasks run longer than `max_lock_seconds`: the async one is cancelled,
the sync one (in a worker thread, which cannot be interrupted) sees
`current_run().lost` turn True and stops by itself. Each loss is logged as a
WARNING naming the task.
"""

import logging
import time

import anyio

from grelmicro.sync.memory import MemorySyncBackend
from grelmicro.task import TaskManager, current_run

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
MemorySyncBackend()  # the default backend (use Redis or NATS across processes)
task = TaskManager()


# --8<-- [start:supervised]
@task.interval(seconds=1, max_lock_seconds=1)
async def export() -> None:
    try:
        await anyio.sleep(10)  # longer than max_lock_seconds
    except anyio.get_cancelled_exc_class():
        print("export cancelled: its lock could not be kept any longer")
        raise


@task.interval(seconds=1, max_lock_seconds=1)
def rebuild() -> None:  # sync: runs in a worker thread
    run = current_run()
    while not run.lost:  # check between two steps of work
        time.sleep(0.05)
    print("rebuild stopped: current_run().lost is True")


# --8<-- [end:supervised]


async def main() -> None:
    async with task:
        await anyio.sleep(1.5)


if __name__ == "__main__":
    anyio.run(main)
