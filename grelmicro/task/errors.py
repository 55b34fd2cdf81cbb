"""Errors raised by the task scheduler."""

from __future__ import annotations

from grelmicro.errors import GrelmicroError


class TaskError(GrelmicroError, RuntimeError):
    """Root of the task scheduler errors."""


class TaskAddOperationError(TaskError):
    """A task or router was added after the manager (or router) started."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or (
                "Could not add the task: the task manager has already started. "
                "Add tasks and routers before entering the TaskManager"
            )
        )


class FunctionTypeError(TaskError, TypeError):
    """A task was given something that is not a callable."""

    def __init__(self, reference: object) -> None:
        super().__init__(f"A task needs a callable, got {reference!r}")
