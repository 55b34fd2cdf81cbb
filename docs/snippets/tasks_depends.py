"""Task parameters are resolved with FastDepends."""

# --8<-- [start:depends]
from dataclasses import dataclass
from typing import Annotated

from fast_depends import Depends

from grelmicro.task import TaskManager

task = TaskManager()


@dataclass
class Settings:
    endpoint: str = "https://example.invalid/feed"


def get_settings() -> Settings:
    return Settings()


@task.interval(seconds=30)
async def poll(settings: Annotated[Settings, Depends(get_settings)]) -> None:
    print(f"polling {settings.endpoint}")


# --8<-- [end:depends]


async def main() -> None:  # run briefly: python docs/snippets/tasks_depends.py
    import anyio

    async with task:  # local tasks need no backend
        await anyio.sleep(0.5)


if __name__ == "__main__":
    import anyio

    anyio.run(main)
