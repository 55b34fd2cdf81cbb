"""Routers group tasks in their own module; the manager includes them."""

# --8<-- [start:router]
from grelmicro.task import TaskManager, TaskRouter

router = TaskRouter()


@router.interval(seconds=5)
async def job() -> None:
    print("job ran")


task = TaskManager()
task.include_router(router)
# --8<-- [end:router]


async def main() -> None:  # run briefly: python docs/snippets/tasks_router.py
    import anyio

    async with task:
        await anyio.sleep(0.5)
    print(f"{len(task.tasks)} task(s) in the manager")


if __name__ == "__main__":
    import anyio

    anyio.run(main)
