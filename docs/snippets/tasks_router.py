"""Routers group tasks in their own module; the manager includes them."""

import anyio

from grelmicro.task import TaskManager, TaskRouter

# --8<-- [start:router]
router = TaskRouter()


@router.interval(seconds=5)
async def job() -> None:
    print("job ran")


task = TaskManager()
task.include_router(router)
# --8<-- [end:router]


async def main() -> None:
    async with task:
        await anyio.sleep(0.5)
    print(f"{len(task.tasks)} task(s) in the manager")


if __name__ == "__main__":
    anyio.run(main)
