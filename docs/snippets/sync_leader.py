"""Leader election outside interval tasks: wait for leadership, guard code."""

import anyio

from grelmicro.sync import LeaderElection
from grelmicro.sync.memory import MemorySyncBackend
from grelmicro.task import TaskManager


async def main() -> None:
    # --8<-- [start:leader]
    leader = LeaderElection("billing", lease_duration=15, renew_deadline=10)
    task = TaskManager()
    task.add_task(leader)  # the manager runs the election

    async with MemorySyncBackend(), task:
        await leader.wait_for_leader()
        print("leader:", leader.is_leader())
        async with leader:  # enters only while leader, else anyio.WouldBlock
            print("doing leader-only work")
    print("after exit, leader:", leader.is_leader())  # released on the way out
    # --8<-- [end:leader]


if __name__ == "__main__":
    anyio.run(main)
