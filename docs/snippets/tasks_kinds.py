"""Interval tasks: local, task-locked, leader-gated, and with a resource lock."""

# --8<-- [start:kinds]
from grelmicro.sync import LeaderElection, Lock
from grelmicro.task import TaskManager

task = TaskManager()
leader = LeaderElection("my-service")
task.add_task(leader)


@task.interval(seconds=5)
async def refresh_cache() -> None:
    """Local: runs on every worker."""
    print("cache refreshed")


@task.interval(seconds=5, max_lock_seconds=30)
async def sync_catalog() -> None:
    """Task-locked: at most once per 5 s across all workers."""
    print("catalog synced")


@task.interval(seconds=60, leader=leader)
async def cleanup() -> None:
    """Leader-gated: only on the elected leader (and task-locked too)."""
    print("cleaned up")


@task.interval(seconds=10, max_lock_seconds=60, sync=Lock("reports-table"))
def rebuild_reports() -> None:
    """Also takes a resource lock shared with other code; sync code runs in a thread."""
    print("reports rebuilt")


# --8<-- [end:kinds]


async def main() -> None:  # run briefly: python docs/snippets/tasks_kinds.py
    import anyio

    from grelmicro.sync.memory import MemorySyncBackend

    # One process: the in-memory backend. A fleet uses Redis or NATS instead.
    async with MemorySyncBackend(), task:
        await anyio.sleep(1)


if __name__ == "__main__":
    import anyio

    anyio.run(main)
