"""Errors raised by the task scheduler."""

from __future__ import annotations

from grelmicro.errors import GrelmicroError
from grelmicro.sync.errors import SyncBackendError


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


class CronBackendError(SyncBackendError):
    """A backend call of a cron task failed (the message names the task's key)."""

    def __init__(self, *, key: str, operation: str) -> None:
        super().__init__(f"Cron fire claim failed: key={key!r}, {operation}")


class FireClaimUnsupportedError(TaskError, TypeError):
    """The backend of a coordinated cron task cannot claim fires."""

    def __init__(self, *, name: str, backend: object) -> None:
        super().__init__(
            f"Cron task {name!r} needs a backend that can claim fires "
            f"(grelmicro.sync.abc.FireClaimBackend), got {backend!r}: use "
            "MemorySyncBackend, RedisSyncBackend or NatsSyncBackend, or "
            "cron(..., local=True) to run every fire on every worker"
        )
