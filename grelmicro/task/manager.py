"""Task manager: runs the tasks of its routers inside the application lifespan."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Any, Self

import anyio
from anyio.abc import TaskGroup

from grelmicro.errors import OutOfContextError
from grelmicro.sync._backends import loaded_backends, run_with_backend
from grelmicro.sync._primitive import Primitive
from grelmicro.sync.errors import BackendNotLoadedError
from grelmicro.sync.leaderelection import LeaderElection
from grelmicro.task._interval import IntervalScheduler, IntervalTask
from grelmicro.task.abc import Task
from grelmicro.task.router import TaskRouter

if TYPE_CHECKING:
    from typing_extensions import Doc

    from grelmicro.sync.abc import SyncBackend

logger = logging.getLogger("grelmicro.task")


class TaskManager(TaskRouter):
    """Runs tasks in an anyio task group while it is entered.

    ```python
    task = TaskManager()

    @task.interval(seconds=5)
    async def heartbeat() -> None: ...

    async with task:  # in the application lifespan
        ...
    ```

    With `broker=` (a FastStream `RedisBroker` or `NatsBroker`), every
    primitive given no `backend=` uses that broker's connection while the
    manager is entered. On exit the tasks are cancelled and awaited, and what
    they hold (leadership, locks) is released.
    """

    def __init__(
        self,
        *,
        auto_start: Annotated[
            bool, Doc("Start the tasks when the manager is entered.")
        ] = True,
        tasks: Annotated[list[Task] | None, Doc("Tasks to run.")] = None,
        broker: Annotated[
            Any,
            Doc(
                "A FastStream RedisBroker or NatsBroker: its connection becomes "
                "the default synchronization backend while the manager is entered."
            ),
        ] = None,
    ) -> None:
        super().__init__(tasks=tasks)
        self._auto_start = auto_start
        self._broker = broker
        self._broker_backend: SyncBackend | None = None
        if broker is not None:
            from grelmicro.brokers import backend_for

            self._broker_backend = backend_for(broker)
        self._task_group: TaskGroup | None = None
        self._tasks_group: TaskGroup | None = None  # where tasks start (brokers.attach)
        self._running = False

    @property
    def broker(self) -> Any:
        """The FastStream broker given at construction, if any."""
        return self._broker

    @property
    def backend(self) -> SyncBackend | None:
        """The backend built for `broker`, if any."""
        return self._broker_backend

    async def __aenter__(self) -> Self:
        """Enter the task group and, when `auto_start`, start every task."""
        if self._task_group is not None:
            msg = "TaskManager is already entered"
            raise RuntimeError(msg)
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        try:
            if self._broker_backend is not None:
                await self._broker_backend.__aenter__()
                from grelmicro.brokers import attach

                self._tasks_group = await attach(self, task_group)
            if self._auto_start:
                await self.start()
        except BaseException:
            # Undo the entry (cancel what started) and raise the error itself,
            # not wrapped in the task group's ExceptionGroup.
            await self.__aexit__(None, None, None)
            raise
        return self

    async def start(self) -> None:
        """Start every task; raises `OutOfContextError` outside `async with`."""
        task_group = self._task_group
        if task_group is None:
            raise OutOfContextError(self, "start")
        if self._running:
            return
        tasks = self.tasks
        _check_backends(tasks)
        self.do_mark_as_started()
        task_group = self._tasks_group or task_group
        self._running = True
        for leader in _missing_leaders(tasks):
            logger.debug("Starting leader election used by a task: %s", leader.name)
            tasks.append(leader)
        if self._broker_backend is not None:
            # Tasks started here see the broker's backend as their default,
            # even if another manager (another broker) was entered later.
            run_with_backend(self._broker_backend, _start_all, task_group, tasks)
        else:
            _start_all(task_group, tasks)
        logger.debug("Task manager started %d tasks", len(tasks))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        """Cancel the tasks, wait for them and release what they hold."""
        task_group = self._task_group
        if task_group is None:
            return None
        try:
            task_group.cancel_scope.cancel()
            return await task_group.__aexit__(exc_type, exc_value, traceback)
        finally:
            self._task_group = None
            self._tasks_group = None
            self._running = False
            if self._broker_backend is not None:
                with anyio.CancelScope(shield=True):
                    await self._broker_backend.__aexit__(None, None, None)


def _missing_leaders(tasks: list[Task]) -> list[LeaderElection]:
    """Leader elections used by interval tasks but neither added nor running."""
    present = {id(task) for task in tasks}
    missing: list[LeaderElection] = []
    for task in tasks:
        leader = task.leader if isinstance(task, IntervalTask) else None
        if leader is not None and id(leader) not in present and not leader.running:
            present.add(id(leader))
            missing.append(leader)
    return missing


def _check_backends(tasks: list[Task]) -> None:
    """Fail before any task starts if a primitive would have no backend.

    A primitive given no `backend=` uses the default backend; when none is
    loaded, starting would only log errors forever (or crash a leader
    election), so raise `BackendNotLoadedError` now, naming the primitive.
    """
    if loaded_backends():
        return
    for task in tasks:
        primitives: list[Primitive] = []
        if isinstance(task, Primitive):
            primitives.append(task)
        elif isinstance(task, IntervalTask):
            for used in (task.leader, task.task_lock, task.sync):
                if isinstance(used, Primitive):
                    primitives.append(used)
        for primitive in primitives:
            if primitive.explicit_backend is None:
                raise BackendNotLoadedError(f"{primitive!r} (task {task.name!r})")


def _start_all(task_group: TaskGroup, tasks: list[Task]) -> None:
    """Start the interval tasks on one shared scheduler, the others on their own."""
    interval_tasks = [task for task in tasks if type(task) is IntervalTask]
    if interval_tasks:
        scheduler = IntervalScheduler(interval_tasks)
        task_group.start_soon(scheduler, name=scheduler.name)
    for task in tasks:
        if type(task) is not IntervalTask:
            task_group.start_soon(task, name=f"grelmicro-task:{task.name}")
