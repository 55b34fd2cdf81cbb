"""A TaskLock: at most once per min_lock_seconds across workers, no waiting."""

import anyio

from grelmicro.sync import TaskLock
from grelmicro.sync.memory import MemorySyncBackend


async def main() -> None:
    async with MemorySyncBackend():
        # --8<-- [start:tasklock]
        nightly = TaskLock("nightly-export", min_lock_seconds=60, max_lock_seconds=600)

        try:
            async with nightly:  # never waits
                print("exporting")
        except anyio.WouldBlock:
            print("skipped: exported less than 60 s ago")

        try:
            async with nightly:  # still held: kept 60 s after acquisition
                print("exporting again")
        except anyio.WouldBlock:
            print("skipped: exported less than 60 s ago")
        # --8<-- [end:tasklock]


if __name__ == "__main__":
    anyio.run(main)
