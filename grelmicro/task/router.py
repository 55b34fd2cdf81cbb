"""Task router: collect tasks with decorators, then include them in a manager."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from datetime import tzinfo
from typing import Annotated, Any, TypeVar
from uuid import UUID

from typing_extensions import Doc

from grelmicro._validate import (
    SettingsValidationError,
    less_than,
    non_empty_str,
    number,
)
from grelmicro.sync._primitive import check_backend
from grelmicro.sync.abc import SyncBackend, Synchronization
from grelmicro.sync.leaderelection import LeaderElection
from grelmicro.sync.lock import Lock
from grelmicro.sync.tasklock import TaskLock
from grelmicro.task._interval import IntervalTask, default_task_name
from grelmicro.task.abc import Task
from grelmicro.task.errors import FunctionTypeError, TaskAddOperationError

F = TypeVar("F", bound=Callable[..., Any])


class TaskRouter:
    """A group of tasks, declared with decorators and included in a `TaskManager`.

    ```python
    router = TaskRouter()

    @router.interval(seconds=5)
    async def heartbeat() -> None: ...

    manager.include_router(router)
    ```
    """

    def __init__(
        self,
        *,
        tasks: Annotated[
            list[Task] | None, Doc("Tasks to start with the manager.")
        ] = None,
    ) -> None:
        self._tasks: list[Task] = []
        self._routers: list[TaskRouter] = []
        self._started = False
        for task in tasks or []:
            self.add_task(task)

    @property
    def tasks(self) -> list[Task]:
        """Every task of this router and of the included routers, flattened."""
        result = list(self._tasks)
        for router in self._routers:
            result.extend(router.tasks)
        return result

    @property
    def started(self) -> bool:
        """Whether the manager this router belongs to has started."""
        return self._started

    def do_mark_as_started(self) -> None:
        """Freeze this router and the included ones (called by the manager)."""
        self._started = True
        for router in self._routers:
            router.do_mark_as_started()

    def add_task(self, task: Annotated[Task, Doc("The task to add.")]) -> None:
        """Add a task; raises `TaskAddOperationError` once started."""
        if self._started:
            raise TaskAddOperationError
        if not isinstance(task, IntervalTask | LeaderElection) and not isinstance(
            task, Task
        ):
            msg = (
                "task must implement grelmicro.task.abc.Task (a name and an async "
                f"__call__), got {task!r}"
            )
            raise TypeError(msg)
        self._tasks.append(task)

    def _add(self, task: Task) -> None:
        if self._started:
            raise TaskAddOperationError
        self._tasks.append(task)

    def include_router(
        self, router: Annotated[TaskRouter, Doc("The router to include.")]
    ) -> None:
        """Include the tasks of another router; raises once either has started."""
        if self._started or router.started:
            raise TaskAddOperationError
        if not isinstance(router, TaskRouter):
            msg = f"router must be a TaskRouter, got {router!r}"
            raise TypeError(msg)
        if router is self:
            msg = "a router cannot include itself"
            raise ValueError(msg)
        self._routers.append(router)

    def interval(
        self,
        *,
        seconds: Annotated[
            float,
            Doc("Seconds to wait between the end of one attempt and the next (> 0)."),
        ],
        name: Annotated[
            str | None,
            Doc('The task name; "<module>:<qualname>" of the function when None.'),
        ] = None,
        max_lock_seconds: Annotated[
            float | None,
            Doc(
                "Run at most once per interval across workers, holding a task "
                "lock at most this long (>= seconds). Defaults to seconds * 5 "
                "when leader is set."
            ),
        ] = None,
        min_lock_seconds: Annotated[
            float | None,
            Doc("Hold the task lock at least this long (defaults to seconds)."),
        ] = None,
        leader: Annotated[
            LeaderElection | None,
            Doc("Run only on the worker that leads this election."),
        ] = None,
        sync: Annotated[
            Synchronization | None,
            Doc(
                "A resource `Lock` taken (without waiting) after the task lock. "
                "A TaskLock or LeaderElection here is deprecated."
            ),
        ] = None,
        backend: Annotated[
            SyncBackend | None,
            Doc("Backend of the task lock; the default backend when None."),
        ] = None,
        worker: Annotated[
            str | UUID | None,
            Doc("Worker identity for the task lock; random when None."),
        ] = None,
        cancel_on_loss: Annotated[
            bool,
            Doc(
                "Cancel a coordinated run when its task lock cannot be kept "
                "(or max_lock_seconds is reached) or leadership is lost; with "
                "False the run goes on and only a WARNING is logged."
            ),
        ] = True,
    ) -> Callable[[F], F]:
        """Run the decorated function every `seconds` seconds.

        Without `max_lock_seconds` and `leader` it runs on every worker. With
        either, a `TaskLock` named after the task makes it run at most once
        per interval across all workers. Returns the function unchanged.

        A coordinated run is supervised: its task lock is extended while it
        lasts (up to `max_lock_seconds`) and, with `leader`, leadership is
        watched. When either is lost, the run is cancelled before the lock
        can expire on the server (`cancel_on_loss=True`; a sync function
        cannot be interrupted and sees `current_run().lost` turn True) and a
        WARNING names the task.
        """
        interval = number("seconds", seconds)
        if not isinstance(cancel_on_loss, bool):
            msg = f"cancel_on_loss must be a bool, got {cancel_on_loss!r}"
            raise SettingsValidationError(msg)
        task_lock_settings = _lock_settings(
            interval, max_lock_seconds, min_lock_seconds, leader, sync
        )
        check_backend(backend)
        if name is not None:
            non_empty_str("name", name)
        guard_leader = leader
        resource = sync
        task_lock: TaskLock | None = None
        if isinstance(sync, TaskLock):
            warnings.warn(
                "interval(sync=TaskLock(...)) is deprecated: use "
                "interval(max_lock_seconds=..., min_lock_seconds=...) instead",
                DeprecationWarning,
                stacklevel=2,
            )
            task_lock, resource = sync, None
        elif isinstance(sync, LeaderElection):
            warnings.warn(
                "interval(sync=LeaderElection(...)) is deprecated: use "
                "interval(leader=...) instead",
                DeprecationWarning,
                stacklevel=2,
            )
            guard_leader, resource = sync, None

        def decorator(function: F) -> F:
            if not callable(function):
                raise FunctionTypeError(function)
            task_name = name or default_task_name(function)
            lock = task_lock
            if task_lock_settings is not None:
                max_lock, min_lock = task_lock_settings
                lock = TaskLock(
                    task_name,
                    backend=backend,
                    worker=worker,
                    min_lock_seconds=min_lock,
                    max_lock_seconds=max_lock,
                )
            self._add(
                IntervalTask(
                    function=function,
                    name=task_name,
                    interval=interval,
                    task_lock=lock,
                    leader=guard_leader,
                    sync=resource,
                    cancel_on_loss=cancel_on_loss,
                )
            )
            return function

        return decorator

    def scheduled(
        self,
        *,
        seconds: Annotated[float, Doc("Seconds between two runs (> 0).")],
        name: Annotated[str | None, Doc("The task name.")] = None,
        max_lock_seconds: Annotated[
            float | None, Doc("Maximum lock hold; seconds * 5 when None.")
        ] = None,
        leader: Annotated[LeaderElection | None, Doc("Run only on the leader.")] = None,
        backend: Annotated[SyncBackend | None, Doc("Task lock backend.")] = None,
        worker: Annotated[str | UUID | None, Doc("Worker identity.")] = None,
    ) -> Callable[[F], F]:
        """Deprecated: use `interval(seconds=..., max_lock_seconds=...)`.

        Equivalent to `interval(seconds=N, max_lock_seconds=N*5 (or the given
        value), min_lock_seconds=N, leader=...)`: always distributed.
        """
        warnings.warn(
            "TaskRouter.scheduled() is deprecated: use "
            "interval(seconds=..., max_lock_seconds=..., min_lock_seconds=...) "
            "instead",
            DeprecationWarning,
            stacklevel=2,
        )
        interval = number("seconds", seconds)
        return self.interval(
            seconds=interval,
            name=name,
            max_lock_seconds=(
                max_lock_seconds if max_lock_seconds is not None else interval * 5
            ),
            min_lock_seconds=interval,
            leader=leader,
            backend=backend,
            worker=worker,
        )

    def cron(
        self,
        expression: Annotated[
            str,
            Doc(
                "Five fields (minute hour day-of-month month day-of-week), six "
                "with a leading seconds field, or @yearly, @monthly, @weekly, "
                "@daily, @hourly."
            ),
        ],
        *,
        name: Annotated[
            str | None,
            Doc('The task name; "<module>:<qualname>" of the function when None.'),
        ] = None,
        timezone: Annotated[
            str | tzinfo,
            Doc("The time zone of the wall-clock times: an IANA name or a tzinfo."),
        ] = "UTC",
        local: Annotated[
            bool,
            Doc("Run every fire on every worker, with no backend."),
        ] = False,
        misfire_grace_seconds: Annotated[
            float | None,
            Doc(
                "At start, run the latest fire missed while no worker was up only "
                "if it is at most this many seconds old (None: no bound)."
            ),
        ] = None,
        at_least_once: Annotated[
            bool,
            Doc(
                "Hold each fire as a lease, kept while the run lasts: if the "
                "worker running it dies, another worker runs it again."
            ),
        ] = False,
        lease_seconds: Annotated[
            float,
            Doc("The lease on a fire with at_least_once (> 0), kept while running."),
        ] = 60,
        sync: Annotated[
            Lock | None,
            Doc("A resource `Lock` taken (without waiting) after the claim."),
        ] = None,
        backend: Annotated[
            SyncBackend | None,
            Doc("Backend of the fire claims; the default backend when None."),
        ] = None,
        worker: Annotated[
            str | UUID | None,
            Doc("Worker identity of the claims; random when None."),
        ] = None,
        cancel_on_loss: Annotated[
            bool,
            Doc(
                "With at_least_once, cancel a run whose lease cannot be kept "
                "(else only log a WARNING)."
            ),
        ] = True,
    ) -> Callable[[F], F]:
        """Run the decorated function at each fire of a cron `expression`.

        By default each fire runs on exactly one worker of the fleet (claimed
        on the backend under `cron:<name>`); `local=True` runs it on every
        worker. Invalid arguments raise `SettingsValidationError` here.
        Returns the function unchanged.
        """
        from grelmicro.task._cron import build_cron_task, check_cron_args

        schedule, grace, lease, worker_name = check_cron_args(
            expression,
            name=name,
            timezone=timezone,
            local=local,
            misfire_grace_seconds=misfire_grace_seconds,
            at_least_once=at_least_once,
            lease_seconds=lease_seconds,
            sync=sync,
            backend=backend,
            worker=worker,
            cancel_on_loss=cancel_on_loss,
        )

        def decorator(function: F) -> F:
            self._add(
                build_cron_task(
                    function,
                    schedule=schedule,
                    name=name,
                    local=local,
                    misfire_grace_seconds=grace,
                    at_least_once=at_least_once,
                    lease_seconds=lease,
                    sync=sync,
                    backend=backend,
                    worker=worker_name,
                    cancel_on_loss=cancel_on_loss,
                )
            )
            return function

        return decorator


def _lock_settings(
    seconds: float,
    max_lock_seconds: float | None,
    min_lock_seconds: float | None,
    leader: LeaderElection | None,
    sync: Synchronization | None,
) -> tuple[float, float] | None:
    """Validate the lock arguments of `interval`; (max, min) or None for local."""
    if leader is not None and not isinstance(leader, LeaderElection):
        msg = f"leader must be a LeaderElection, got {leader!r}"
        raise SettingsValidationError(msg)
    if sync is not None and not isinstance(sync, Synchronization):
        msg = (
            "sync must be a Lock (or another async context manager "
            f"synchronization), got {sync!r}"
        )
        raise SettingsValidationError(msg)
    if isinstance(sync, TaskLock | LeaderElection):
        given = [
            param
            for param, value in (
                ("max_lock_seconds", max_lock_seconds),
                ("min_lock_seconds", min_lock_seconds),
                ("leader", leader),
            )
            if value is not None
        ]
        if given:
            msg = (
                f"sync={type(sync).__name__}(...) (deprecated) cannot be combined "
                f"with {', '.join(given)}: use max_lock_seconds/min_lock_seconds/"
                "leader alone"
            )
            raise SettingsValidationError(msg)
    if max_lock_seconds is None and leader is None:
        if min_lock_seconds is not None:
            msg = (
                f"min_lock_seconds ({min_lock_seconds!r}) needs max_lock_seconds or "
                "leader: without them the task runs on every worker, unlocked"
            )
            raise SettingsValidationError(msg)
        return None
    max_lock = (
        seconds * 5
        if max_lock_seconds is None
        else number("max_lock_seconds", max_lock_seconds)
    )
    less_than("seconds", seconds, "max_lock_seconds", max_lock, equal=True)
    min_lock = (
        seconds
        if min_lock_seconds is None
        else number("min_lock_seconds", min_lock_seconds)
    )
    less_than("min_lock_seconds", min_lock, "max_lock_seconds", max_lock, equal=True)
    return max_lock, min_lock
