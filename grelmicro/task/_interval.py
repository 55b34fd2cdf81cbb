"""Interval tasks: run a function every `interval` seconds, optionally coordinated."""

from __future__ import annotations

import asyncio
import heapq
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from types import FunctionType
from typing import Any, cast

import anyio
import anyio.to_thread
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from grelmicro.sync.abc import Synchronization
from grelmicro.sync.errors import SyncBackendError
from grelmicro.sync.leaderelection import LeaderElection
from grelmicro.sync.lock import Lock
from grelmicro.sync.tasklock import TaskLock

logger = logging.getLogger("grelmicro.task")

#: Minimum seconds between two ERROR logs of the same task's backend errors.
SYNC_ERROR_LOG_INTERVAL = 30.0


def is_async_callable(function: Callable[..., Any]) -> bool:
    """Whether calling `function` returns an awaitable (functions and callables)."""
    if type(function) is FunctionType:  # the common case, without inspect
        return bool(function.__code__.co_flags & inspect.CO_COROUTINE)
    while isinstance(function, partial):
        function = function.func
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004
    )


def default_task_name(function: Callable[..., Any]) -> str:
    """`"<module>:<qualname>"` of `function` (or of its class for other callables)."""
    target: Any = function
    while isinstance(target, partial):
        target = target.func
    module = getattr(target, "__module__", None) or type(target).__module__
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}:{qualname}"


def prepare_call(function: Callable[..., Any]) -> Callable[[], Awaitable[Any]]:
    """Build a no-argument async callable that runs `function`.

    Parameters are resolved by FastDepends (`Depends(...)`); a sync function
    runs in a worker thread so it never blocks the event loop.
    """
    target: Callable[..., Any] = function
    if _has_parameters(function):
        from fast_depends import inject  # imported on first use: it is heavy

        target = inject(function)
    if is_async_callable(function):
        return cast("Callable[[], Awaitable[Any]]", target)

    async def run_in_thread() -> Any:
        return await anyio.to_thread.run_sync(target)

    return run_in_thread


_VARIADIC = inspect.CO_VARARGS | inspect.CO_VARKEYWORDS


def _has_parameters(function: Callable[..., Any]) -> bool:
    code = getattr(function, "__code__", None)
    if code is not None and not inspect.ismethod(function):
        return bool(
            code.co_argcount or code.co_kwonlyargcount or code.co_flags & _VARIADIC
        )
    try:
        return bool(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # builtins without a signature
        return False


class IntervalTask:
    """Runs a function every `interval` seconds until cancelled.

    The wait is between the end of one attempt and the start of the next. An
    attempt checks, in order and each only if the previous succeeded: the
    leader election (no backend call), the task lock, the resource lock.
    """

    def __init__(
        self,
        *,
        function: Callable[..., Any],
        name: str,
        interval: float,
        task_lock: TaskLock | None = None,
        leader: LeaderElection | None = None,
        sync: Synchronization | None = None,
    ) -> None:
        self._name = name
        self.function = function
        self.interval = interval
        self.task_lock = task_lock
        self.leader = leader
        self.sync = sync
        self._call = prepare_call(function)
        self._last_sync_error_log = -float("inf")
        self._sync_errors_suppressed = 0
        self.local = task_lock is None and leader is None and sync is None
        #: One attempt for the scheduler: the bare call for local tasks (the
        #: scheduler logs their exceptions), else the guarded attempt.
        self.attempt_once: Callable[[], Awaitable[Any]] = (
            self._call if self.local else self.attempt
        )

    @property
    def name(self) -> str:
        """The task's name."""
        return self._name

    def __repr__(self) -> str:
        return f"IntervalTask(name={self._name!r}, interval={self.interval!r})"

    async def __call__(
        self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Run the loop until cancelled."""
        task_status.started()
        attempt = self._run if self.local else self.attempt
        while True:
            await attempt()
            await anyio.sleep(self.interval)

    async def _run(self) -> None:
        try:
            await self._call()
        except Exception:
            logger.exception("Task execution error: %s", self._name)

    async def attempt(self) -> None:
        """One attempt: pass the guards in order, then run the function."""
        leader = self.leader
        if leader is not None and not leader.is_leader():
            logger.debug("Task skipped: %s", self._name)
            return
        try:
            if self.task_lock is None:
                await self._run_with_resource()
                return
            task_lock = self.task_lock
            # Take the lock for its minimum hold only: a quick run then costs
            # one round trip, the server expiring the hold by itself. A run
            # still going halfway through the hold extends it to max.
            if not await task_lock.try_acquire(hold=task_lock.min_lock_seconds):
                logger.debug("Task skipped: %s", self._name)
                return
            started = time.monotonic()
            try:
                if task_lock.min_lock_seconds < task_lock.max_lock_seconds:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._extend_when_long, task_lock)
                        try:
                            await self._run_with_resource()
                        finally:
                            tg.cancel_scope.cancel()
                else:
                    await self._run_with_resource()
            finally:
                elapsed = time.monotonic() - started
                if elapsed > task_lock.max_lock_seconds:
                    logger.warning(
                        "Task ran longer than max_lock_seconds: %s took %.3fs, "
                        "max_lock_seconds=%s; another worker may have run it "
                        "meanwhile",
                        self._name,
                        elapsed,
                        task_lock.max_lock_seconds,
                    )
                with anyio.CancelScope(shield=True):
                    await task_lock.release()
        except SyncBackendError as exc:
            self._log_sync_error(exc)
        else:
            self._sync_recovered()

    async def _extend_when_long(self, task_lock: TaskLock) -> None:
        """Extend the task lock to `max_lock_seconds` if the run lasts.

        It extends halfway through the hold the server surely keeps.
        """
        halfway = task_lock.hold_until - task_lock.min_lock_seconds / 2
        await anyio.sleep(max(halfway - time.monotonic(), 0.0))
        try:
            extended = await task_lock.extend()
        except SyncBackendError as exc:
            self._log_sync_error(exc)
            return
        if not extended:
            logger.warning(
                "Task lock lost while running: %s (the lock expired before it "
                "could be extended; another worker may run the task meanwhile)",
                self._name,
            )

    async def _run_with_resource(self) -> None:
        sync = self.sync
        if sync is None:
            await self._run_if_still_leader()
            return
        if isinstance(sync, Lock):
            try:
                await sync.acquire_nowait()
            except anyio.WouldBlock:
                logger.debug("Task skipped: %s", self._name)
                return
            try:
                await self._run_if_still_leader()
            finally:
                with anyio.CancelScope(shield=True):
                    await sync.release()
            return
        try:
            await sync.__aenter__()
        except anyio.WouldBlock:
            logger.debug("Task skipped: %s", self._name)
            return
        try:
            await self._run_if_still_leader()
        finally:
            with anyio.CancelScope(shield=True):
                await sync.__aexit__(None, None, None)

    async def _run_if_still_leader(self) -> None:
        """Run, unless leadership was lost while the locks were being taken.

        A lock call may answer late (a slow or frozen server): by then this
        worker may have passed its renew deadline and another may lead.
        """
        leader = self.leader
        if leader is not None and not leader.is_leader():
            logger.debug("Task skipped: %s", self._name)
            return
        await self._run()

    def _log_sync_error(self, exc: SyncBackendError) -> None:
        now = time.monotonic()
        if now - self._last_sync_error_log >= SYNC_ERROR_LOG_INTERVAL:
            suppressed = self._sync_errors_suppressed
            extra = f" ({suppressed} similar errors not logged)" if suppressed else ""
            logger.error(
                "Task synchronization error: %s%s", self._name, extra, exc_info=exc
            )
            self._last_sync_error_log = now
            self._sync_errors_suppressed = 0
        else:
            self._sync_errors_suppressed += 1
            logger.debug("Task synchronization error: %s: %r", self._name, exc)

    def _sync_recovered(self) -> None:
        if self._last_sync_error_log != -float("inf"):
            logger.info("Task synchronization recovered: %s", self._name)
            self._last_sync_error_log = -float("inf")
            self._sync_errors_suppressed = 0


class IntervalScheduler:
    """Runs many interval tasks from one timer heap.

    Instead of one sleeping coroutine per task, a single event-loop timer
    fires the attempts that are due, each in its own short-lived asyncio task;
    when an attempt ends, the task is due again `interval` seconds later. The
    semantics are those of `IntervalTask.__call__` (one attempt at a time per
    task, the wait measured from the end of an attempt), at a fraction of the
    CPU and memory for thousands of tasks.
    """

    def __init__(self, tasks: list[IntervalTask]) -> None:
        self._tasks = list(dict.fromkeys(tasks))  # each task once
        self._heap: list[tuple[float, int, IntervalTask]] = []
        self._seq = 0
        self._running: dict[IntervalTask, asyncio.Task[None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False

    @property
    def name(self) -> str:
        """The scheduler's task name."""
        return "grelmicro-interval-scheduler"

    async def __call__(
        self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Fire the tasks until cancelled, then cancel and await running attempts."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._closing = False
        now = loop.time()
        self._heap = [(now, index, task) for index, task in enumerate(self._tasks)]
        self._seq = len(self._tasks)
        self._schedule_timer()
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            self._closing = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            running = list(self._running.values())
            for attempt in running:
                attempt.cancel()
            if running:
                with anyio.CancelScope(shield=True):
                    await asyncio.gather(*running, return_exceptions=True)

    def _schedule_timer(self) -> None:
        heap = self._heap
        if heap:
            self._timer = self._loop.call_at(heap[0][0], self._fire)
        else:
            self._timer = None

    def _fire(self) -> None:
        loop = self._loop
        heap = self._heap
        running = self._running
        create_task = loop.create_task
        run = self._run
        # Never early: a task due at t must not start before t (a TaskLock
        # hold ends exactly then, and starting before would skip a period).
        now = loop.time()
        while heap and heap[0][0] <= now:
            task = heapq.heappop(heap)[2]
            running[task] = create_task(run(task))
        self._schedule_timer()

    async def _run(self, task: IntervalTask) -> None:
        """One attempt, then schedule the next one `interval` after its end."""
        try:
            await task.attempt_once()
        except Exception:
            logger.exception("Task execution error: %s", task.name)
        finally:
            del self._running[task]
            if not self._closing:
                self._reschedule(task)

    def _reschedule(self, task: IntervalTask) -> None:
        loop = self._loop
        due = loop.time() + task.interval
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, task))
        timer = self._timer
        if timer is None or due < timer.when():
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(due, self._fire)
