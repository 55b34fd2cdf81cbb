"""The current run: what a task function can know about the run it is in.

```python
from grelmicro.task import Run, current_run

@task.interval(seconds=5, max_lock_seconds=30)
async def sync_catalog() -> None:
    run = current_run()
    await store.write(data, fencing_token=run.fencing_token)
```

The run is kept in a `ContextVar` that is set only inside the run's own task
(each attempt runs in a task of its own, or sets and resets it within the same
task), never at import time. A sync function running in a worker thread sees
it too: anyio copies the context into the thread.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Annotated

import anyio
from typing_extensions import Doc

from grelmicro.errors import OutOfContextError

_current: ContextVar[Run | None] = ContextVar("grelmicro_current_run", default=None)


class Run:
    """One run of a task function.

    - `name`: the task's name.
    - `scheduled_at`: when the run was due (aware, UTC): the cron fire time,
      or the attempt's start for interval tasks.
    - `fencing_token`: the token of the run's `TaskLock` holding or cron
      claim (pass it to the storage you write to); None for local runs and
      on backends that cannot issue tokens.
    - `lost`: True once the run's task lock or leadership is known lost (a
      sync function cannot be cancelled: it should check this and stop).
    """

    __slots__ = (
        "_lost",
        "_lost_event",
        "_scheduled",
        "_scheduled_at",
        "fencing_token",
        "name",
    )

    def __init__(
        self,
        *,
        name: Annotated[str, Doc("The task's name.")],
        scheduled_at: Annotated[
            datetime | float,
            Doc("When the run was due: an aware datetime, or seconds since the epoch."),
        ],
        fencing_token: Annotated[
            int | None, Doc("The fencing token of the run's lock or claim.")
        ] = None,
    ) -> None:
        self.name = name
        if isinstance(scheduled_at, datetime):
            self._scheduled_at: datetime | None = scheduled_at.astimezone(UTC)
            self._scheduled = scheduled_at.timestamp()
        else:
            self._scheduled_at = None  # built on first read: most runs never ask
            self._scheduled = scheduled_at
        self.fencing_token = fencing_token
        self._lost = False
        self._lost_event: anyio.Event | None = None

    @property
    def scheduled_at(self) -> datetime:
        """When the run was due (aware, UTC): the cron fire time, or the
        attempt's start for interval tasks."""
        scheduled_at = self._scheduled_at
        if scheduled_at is None:
            scheduled_at = self._scheduled_at = datetime.fromtimestamp(
                self._scheduled, UTC
            )
        return scheduled_at

    @property
    def scheduled_timestamp(self) -> float:
        """`scheduled_at` in seconds since the epoch."""
        return self._scheduled

    @property
    def lost(self) -> bool:
        """Whether the run's task lock or leadership is known lost."""
        return self._lost

    def mark_lost(self) -> None:
        """Record that the run's lock or leadership is lost (called by the scheduler)."""
        self._lost = True
        if self._lost_event is not None:
            self._lost_event.set()

    async def wait_lost(self) -> None:
        """Wait until the run is marked lost."""
        if self._lost:
            return
        if self._lost_event is None:
            self._lost_event = anyio.Event()
        await self._lost_event.wait()

    def __repr__(self) -> str:
        return (
            f"Run(name={self.name!r}, scheduled_at={self.scheduled_at.isoformat()}, "
            f"fencing_token={self.fencing_token!r}, lost={self._lost!r})"
        )


def current_run() -> Run:
    """The run of the task function calling it.

    Works in async task functions and in sync ones (in their worker thread),
    and as a FastDepends dependency: `run: Run = Depends(current_run)`.
    Raises `OutOfContextError` outside a task run.
    """
    run = _current.get()
    if run is None:
        msg = (
            "current_run() was called outside a task run: call it from a task "
            "function (or inject it with Depends(current_run))"
        )
        raise OutOfContextError("grelmicro.task", "current_run", message=msg)
    return run


def set_current_run(run: Run | None) -> Token[Run | None]:
    """Make `run` the current run of this context (call it in the run's own
    task; reset the returned token in that same task, or never)."""
    return _current.set(run)


def reset_current_run(token: Token[Run | None]) -> None:
    """Undo `set_current_run` (in the task that set it)."""
    _current.reset(token)


def enter_local_run(name: str, scheduled_at: float) -> None:
    """Make a new uncoordinated run of `name`, due at `scheduled_at` (seconds
    since the epoch), the current run for the rest of this context's life.

    What `set_current_run(Run(name=..., scheduled_at=...))` does, at half the
    cost, for a run in a task of its own (its context dies with it: no reset).
    """
    run = _new_object(Run)
    run.name = name
    run._scheduled_at = None
    run._scheduled = scheduled_at
    run.fencing_token = None
    run._lost = False
    run._lost_event = None
    _current.set(run)


_new_object = object.__new__


__all__ = [
    "Run",
    "current_run",
    "enter_local_run",
    "reset_current_run",
    "set_current_run",
]
