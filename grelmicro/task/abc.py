"""The task protocol: anything a `TaskManager` can run."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus


@runtime_checkable
class Task(Protocol):
    """A long-running job started by a `TaskManager` in its task group.

    `__call__` runs until cancelled; it calls `task_status.started()` once it
    is running.
    """

    @property
    def name(self) -> str:
        """The task's unique name."""
        ...

    async def __call__(
        self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Run the task until cancelled."""
        ...


__all__ = ["Task"]
