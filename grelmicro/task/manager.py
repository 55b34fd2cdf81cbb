"""Task manager: runs the tasks of its routers inside the application lifespan."""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Any, Self

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskGroup, TaskStatus
from typing_extensions import Doc

from grelmicro import _metrics
from grelmicro.errors import OutOfContextError
from grelmicro.sync._backends import (
    loaded_backends,
    reset_scoped_backend,
    scoped_backend,
    set_scoped_backend,
)
from grelmicro.sync._primitive import Primitive
from grelmicro.sync.errors import BackendNotLoadedError
from grelmicro.sync.leaderelection import LeaderElection
from grelmicro.task._interval import IntervalTask
from grelmicro.task._scheduler import IntervalScheduler
from grelmicro.task.abc import Task
from grelmicro.task.errors import TaskAddOperationError, TaskError
from grelmicro.task.router import TaskRouter

if TYPE_CHECKING:
    from grelmicro.sync.abc import SyncBackend
    from grelmicro.task._cron import CronTask

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

    `async with task:` returns once every task has started (called
    `task_status.started()`). With `broker=` (a FastStream `RedisBroker` or
    `NatsBroker`), every primitive given no `backend=` uses that broker's
    connection while the manager is entered. `await task.stop()` (or the
    exit) cancels the tasks, waits for them and releases what they hold
    (leadership, locks); in a FastStream app this happens before the broker
    closes.
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
        self._runner: _Runner | None = None
        self._running = False

    @property
    def broker(self) -> Any:
        """The FastStream broker given at construction, if any."""
        return self._broker

    @property
    def backend(self) -> SyncBackend | None:
        """The backend built for `broker`, if any."""
        return self._broker_backend

    @property
    def running(self) -> bool:
        """Whether the tasks are started and not stopped."""
        return self._running

    async def __aenter__(self) -> Self:
        """Enter the task group and, when `auto_start`, start every task.

        Returns once every task has started.
        """
        if self._task_group is not None:
            msg = "TaskManager is already entered"
            raise TaskError(msg)
        _metrics.refresh()  # a provider configured just before start counts
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        try:
            if self._broker_backend is not None:
                await self._broker_backend.__aenter__()
                from grelmicro.brokers import hook_shutdown

                hook_shutdown(self)
            runner = _Runner()
            await task_group.start(runner.run)
            self._runner = runner
            if self._auto_start:
                await self.start()
        except BaseException:
            # Undo the entry (cancel what started) and raise the error itself,
            # not wrapped in the task group's ExceptionGroup.
            await self.__aexit__(None, None, None)
            raise
        return self

    async def start(self) -> None:
        """Start every task and wait until each has started.

        Raises `OutOfContextError` outside `async with`, and
        `TaskAddOperationError` when the tasks were already started.
        """
        runner = self._runner
        if self._task_group is None or runner is None:
            raise OutOfContextError(self, "start")
        if self._running or runner.stopped:
            msg = (
                "Could not start the tasks: this TaskManager has already started "
                "them (start() is called once per 'async with')"
            )
            raise TaskAddOperationError(msg)
        tasks = self.tasks
        for leader in _missing_leaders(tasks):
            logger.debug("Starting leader election used by a task: %s", leader.name)
            tasks.append(leader)
        self._running = True
        self.do_mark_as_started()
        # Tasks started here see the broker's backend as their default, even
        # if another manager (another broker) was entered later: the tasks
        # copy this context when they are created.
        token = (
            set_scoped_backend(self._broker_backend)
            if self._broker_backend is not None
            else None
        )
        try:
            _check_backends(tasks)
            await _start_all(runner.group, tasks, ready=self._broker_ready())
        except BaseException:
            self._running = False
            raise
        finally:
            if token is not None:
                reset_scoped_backend(token)
        logger.debug("Task manager started %d tasks", len(tasks))

    def _broker_ready(self) -> Callable[[], Awaitable[None]] | None:
        broker = self._broker
        if broker is None:
            return None
        from grelmicro.brokers import wait_connected

        return partial(wait_connected, broker)

    async def stop(self) -> None:
        """Stop the tasks now and wait until they released what they hold.

        Leadership and locks are released (a task lock keeps only what is
        left of its `min_lock_seconds`), so another worker takes over at
        once. Idempotent; the manager stays entered until its exit. A
        FastStream app calls it before it closes the broker.
        """
        runner = self._runner
        self._running = False
        if runner is not None:
            await runner.stop()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        """Stop the tasks, wait for them and release what they hold."""
        task_group = self._task_group
        if task_group is None:
            raise OutOfContextError(self, "__aexit__")
        try:
            with anyio.CancelScope(shield=True):
                await self.stop()
            task_group.cancel_scope.cancel()
            return await task_group.__aexit__(exc_type, exc_value, traceback)
        finally:
            self._task_group = None
            self._runner = None
            self._running = False
            if self._broker_backend is not None:
                with anyio.CancelScope(shield=True):
                    await self._broker_backend.__aexit__(None, None, None)


class _Runner:
    """Hosts the task group the tasks run in, so `stop()` can end them from
    any task and wait until they released what they hold."""

    def __init__(self) -> None:
        self._group: TaskGroup | None = None
        self._done = anyio.Event()
        self.stopped = False

    @property
    def group(self) -> TaskGroup:
        group = self._group
        if group is None:
            raise OutOfContextError("TaskManager", "start")
        return group

    async def run(self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._group = None
            self._done.set()

    async def stop(self) -> None:
        self.stopped = True
        group = self._group
        if group is not None:
            group.cancel_scope.cancel()
        with anyio.move_on_after(STOP_TIMEOUT) as scope:
            await self._done.wait()
        if scope.cancelled_caught:
            logger.warning(
                "Tasks did not stop within %ss (a backend call or a task ignores "
                "cancellation)",
                STOP_TIMEOUT,
            )


#: Upper bound, in seconds, on how long `stop()` waits for the tasks to end
#: and release what they hold (each release is bounded by its own timeout;
#: sync functions in threads by `SYNC_STOP_TIMEOUT`).
STOP_TIMEOUT = 15.0


def _missing_leaders(tasks: list[Task]) -> list[LeaderElection]:
    """Leader elections used by interval tasks but neither added nor running."""
    leaders = [
        task.leader
        for task in tasks
        if isinstance(task, IntervalTask) and task.leader is not None
    ]
    if not leaders:
        return []
    present = {id(task) for task in tasks}
    missing: list[LeaderElection] = []
    for leader in leaders:
        if id(leader) not in present and not leader.running:
            present.add(id(leader))
            missing.append(leader)
    return missing


def _primitives_of(task: Task) -> list[Primitive]:
    if isinstance(task, Primitive):
        return [task]
    if isinstance(task, IntervalTask):
        used: tuple[object, ...] = (task.leader, task.task_lock, task.sync)
        return [p for p in used if isinstance(p, Primitive)]
    resource = getattr(task, "resource_lock", None)
    return [resource] if isinstance(resource, Primitive) else []


def _check_backends(tasks: list[Task]) -> None:
    """Fail before any task starts if a primitive would have no backend, or
    has a name its backend cannot store.

    A primitive given no `backend=` uses the default backend; when none is
    loaded, starting would only log errors forever (or crash a leader
    election), so raise `BackendNotLoadedError` now, naming the primitive.
    """
    loaded = bool(loaded_backends()) or scoped_backend() is not None
    for task in tasks:
        if isinstance(task, IntervalTask) and task.local:
            continue  # no primitive, no backend
        if getattr(task, "needs_default_backend", False) and not loaded:
            raise BackendNotLoadedError(f"task {task.name!r}")
        for primitive in _primitives_of(task):
            if primitive.explicit_backend is None and not loaded:
                raise BackendNotLoadedError(f"{primitive!r} (task {task.name!r})")
            primitive.bind()


async def _start_all(
    group: TaskGroup,
    tasks: list[Task],
    *,
    ready: Callable[[], Awaitable[None]] | None,
) -> None:
    """Start the interval tasks on one shared scheduler, the local cron tasks
    on another, the others on their own; return once each has called
    `task_status.started()`.

    The others start first: the leader elections the interval tasks use are
    running (they wait for the first answer) when the first attempts come.
    """
    others = [task for task in tasks if type(task) is not IntervalTask]
    cron_tasks: list[CronTask] = []
    # A cron task exists only once its module is loaded: a manager without
    # cron tasks does not load cronsim.
    if "grelmicro.task._cron" in sys.modules:
        from grelmicro.task._cron_scheduler import local_cron_task

        cron_tasks = [c for t in others if (c := local_cron_task(t)) is not None]
    on_cron_scheduler = {id(task) for task in cron_tasks}
    for task in others:
        if id(task) not in on_cron_scheduler:
            await group.start(task, name=f"grelmicro-task:{task.name}")
    interval_tasks = [task for task in tasks if type(task) is IntervalTask]
    if cron_tasks:
        from grelmicro.task._cron_scheduler import CronScheduler

        cron_scheduler = CronScheduler(cron_tasks)
        await group.start(cron_scheduler, name=cron_scheduler.name)
    if interval_tasks:
        scheduler = IntervalScheduler(interval_tasks, ready=ready)
        await group.start(scheduler, name=scheduler.name)
