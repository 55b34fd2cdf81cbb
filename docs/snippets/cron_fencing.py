"""At-least-once cron fires, and the fencing token that keeps writes safe.

A store remembers the highest token it has seen and rejects writes that
carry a lower one: a run that was paused past its lease (and whose fire
another worker took over) cannot overwrite the newer run's result.
Runs for about three seconds on the in-process backend.
"""

import anyio

from grelmicro.sync.memory import MemorySyncBackend
from grelmicro.task import TaskManager, current_run


class Store:
    """A storage that rejects writes fenced by an older token."""

    def __init__(self) -> None:
        self.highest = 0
        self.rows: dict[str, str] = {}

    def write(self, key: str, value: str, *, token: int) -> None:
        if token < self.highest:
            msg = f"stale write rejected: token {token} < {self.highest}"
            raise PermissionError(msg)
        self.highest = token
        self.rows[key] = value


store = Store()
task = TaskManager()


@task.cron("* * * * * *", at_least_once=True, lease_seconds=30)
async def export() -> None:
    run = current_run()
    assert run.fencing_token is not None  # a claimed fire always has one
    store.write("last-export", run.scheduled_at.isoformat(), token=run.fencing_token)
    print(f"exported fire {run.scheduled_at:%H:%M:%S} with token {run.fencing_token}")


async def main() -> None:
    async with MemorySyncBackend():
        with anyio.move_on_after(3):
            async with task:
                await anyio.sleep_forever()
    print(store.rows)


if __name__ == "__main__":
    anyio.run(main)
