"""Interval tasks: run a function every `interval` seconds, optionally coordinated."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from types import FunctionType
from typing import Any, cast

import anyio
import anyio.to_thread
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from grelmicro import _metrics
from grelmicro.sync.abc import Synchronization
from grelmicro.sync.errors import BackendNotReadyError, SyncBackendError
from grelmicro.sync.leaderelection import LeaderElection
from grelmicro.sync.lock import Lock
from grelmicro.sync.tasklock import TaskLock
from grelmicro.task._run import Run, reset_current_run, set_current_run

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


#: Seconds a stopping manager waits for a sync task function still running in
#: its worker thread (a thread cannot be interrupted) before it abandons it
#: with a WARNING, so a stuck thread never keeps a replica from shutting down.
SYNC_STOP_TIMEOUT = 5.0


def prepare_call(
    function: Callable[..., Any],
    *,
    name: str | None = None,
    is_async: bool | None = None,
) -> Callable[[], Awaitable[Any]]:
    """Build a no-argument async callable that runs `function`.

    Parameters are resolved by FastDepends (`Depends(...)`); a sync function
    runs in a worker thread so it never blocks the event loop. When the run
    is cancelled (the manager stops), the thread is waited for at most
    `SYNC_STOP_TIMEOUT` seconds, then abandoned with a WARNING naming the task.
    `is_async` is `is_async_callable(function)` when the caller knows it.
    """
    target: Callable[..., Any] = function
    if _has_parameters(function):
        from fast_depends import inject  # imported on first use: it is heavy

        target = inject(function)
    if is_async if is_async is not None else is_async_callable(function):
        return cast("Callable[[], Awaitable[Any]]", target)
    task_name = name or default_task_name(function)

    async def run_in_thread() -> Any:
        done = threading.Event()

        def call() -> Any:
            try:
                return target()
            finally:
                done.set()

        try:
            return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            await _wait_thread(done, task_name)
            raise

    return run_in_thread


async def _wait_thread(done: threading.Event, name: str) -> None:
    """Wait (shielded, bounded) for a cancelled sync run's thread to finish."""
    with anyio.CancelScope(shield=True):
        with anyio.move_on_after(SYNC_STOP_TIMEOUT):
            while not done.is_set():  # noqa: ASYNC110
                await anyio.sleep(0.01)
    if not done.is_set():
        logger.warning(
            "Task still running in its worker thread after %ss, abandoned: %s "
            "(a thread cannot be interrupted; check current_run().lost to stop "
            "early)",
            SYNC_STOP_TIMEOUT,
            name,
        )


_VARIADIC = inspect.CO_VARARGS | inspect.CO_VARKEYWORDS


def _has_parameters(function: Callable[..., Any]) -> bool:
    code: Any = (
        function.__code__  # the common case, without inspect
        if type(function) is FunctionType
        else None
        if inspect.ismethod(function)
        else getattr(function, "__code__", None)
    )
    if code is not None:
        return bool(
            code.co_argcount or code.co_kwonlyargcount or code.co_flags & _VARIADIC
        )
    try:
        return bool(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # builtins without a signature
        return False


def backend_not_ready(exc: BaseException | None) -> bool:
    """Whether `exc` (or its cause) says the backend is not connected yet."""
    while exc is not None:
        if isinstance(exc, BackendNotReadyError):
            return True
        exc = exc.__cause__
    return False


class SyncErrorLog:
    """Throttled ERROR logs of a task's backend errors (one per interval)."""

    __slots__ = ("_last", "_name", "_suppressed")

    def __init__(self, name: str) -> None:
        self._name = name
        self._last = -float("inf")
        self._suppressed = 0

    def error(self, exc: SyncBackendError) -> None:
        """Log a backend error: ERROR at most every `SYNC_ERROR_LOG_INTERVAL`."""
        if backend_not_ready(exc):
            # The application is starting: the broker is not connected yet.
            logger.debug("Task skipped (backend not connected yet): %s", self._name)
            return
        now = time.monotonic()
        if now - self._last >= SYNC_ERROR_LOG_INTERVAL:
            suppressed = self._suppressed
            extra = f" ({suppressed} similar errors not logged)" if suppressed else ""
            logger.error(
                "Task synchronization error: %s%s", self._name, extra, exc_info=exc
            )
            self._last = now
            self._suppressed = 0
        else:
            self._suppressed += 1
            logger.debug("Task synchronization error: %s: %r", self._name, exc)

    def recovered(self) -> None:
        """Note a successful attempt after errors (INFO once)."""
        if self._last != -float("inf"):
            logger.info("Task synchronization recovered: %s", self._name)
            self._last = -float("inf")
            self._suppressed = 0


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned extension's outcome (its error was handled)."""
    if not future.cancelled():
        future.exception()


def lock_margin(max_lock_seconds: float) -> float:
    """Seconds before a task lock's sure end at which a run counts as lost.

    The run is cancelled (and the lock released) this long before the
    server could expire the lock, so no other worker can start meanwhile.
    """
    return min(1.0, max(0.05, max_lock_seconds * 0.05))


class IntervalTask:
    """Runs a function every `interval` seconds until cancelled.

    The wait is between the end of one attempt and the start of the next. An
    attempt checks, in order and each only if the previous succeeded: the
    leader election (no backend call), the task lock, the resource lock.
    While a coordinated run lasts, it is supervised: the task lock is kept
    (extended up to `max_lock_seconds`) and leadership watched; on a loss the
    run is cancelled (`cancel_on_loss`) and `current_run().lost` turns True.
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
        cancel_on_loss: bool = True,
    ) -> None:
        self._name = name
        self.function = function
        self.interval = interval
        self.task_lock = task_lock
        self.leader = leader
        self.sync = sync
        self.cancel_on_loss = cancel_on_loss
        self._is_async = is_async = is_async_callable(function)
        #: The function as a no-argument async callable (one call per run).
        self.call: Callable[[], Awaitable[Any]] = prepare_call(
            function, name=name, is_async=is_async
        )
        self._errors: SyncErrorLog | None = None  # built by the first guarded attempt
        #: No coordination: the task runs on every worker.
        self.local = task_lock is None and leader is None and sync is None

    @property
    def name(self) -> str:
        """The task's name."""
        return self._name

    def __repr__(self) -> str:
        return f"IntervalTask(name={self._name!r}, interval={self.interval!r})"

    @property
    def _sync_errors(self) -> SyncErrorLog:
        errors = self._errors
        if errors is None:
            errors = self._errors = SyncErrorLog(self._name)
        return errors

    def attempt_once(self) -> Awaitable[None]:
        """One attempt for the scheduler: a local run, or the guarded attempt."""
        return self._run_local() if self.local else self.attempt()

    async def __call__(
        self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Run the loop until cancelled."""
        task_status.started()
        while True:
            await self.attempt_once()
            await anyio.sleep(self.interval)

    async def _run_local(self) -> None:
        """One run on this worker, with no coordination."""
        run = Run(name=self._name, scheduled_at=time.time())
        token = set_current_run(run)
        recorder = (
            _metrics.start_run(self._name, scheduled_at=run.scheduled_timestamp)
            if _metrics.ENABLED.on
            else None
        )
        try:
            await self.call()
        except Exception as exc:
            logger.exception("Task execution error: %s", self._name)
            if recorder is not None:
                recorder.finish("error", exc)
        except anyio.get_cancelled_exc_class():
            if recorder is not None:
                recorder.cancel()  # cut off by the worker stopping
            raise
        else:
            if recorder is not None:
                recorder.finish("success")
        finally:
            reset_current_run(token)

    def _skipped(self) -> None:
        logger.debug("Task skipped: %s", self._name)
        if _metrics.ENABLED.on:
            _metrics.count_outcome(self._name, "skipped")

    async def attempt(self) -> None:
        """One attempt: pass the guards in order, then run the function."""
        leader = self.leader
        if leader is not None and not leader.is_leader():
            if not leader.settled and leader.running:
                # Just started: the election has not heard from the backend
                # yet. Wait for its first answer (bounded) rather than skip a
                # whole interval.
                with anyio.move_on_after(leader.backend_timeout):
                    await leader.wait_settled()
            if not leader.is_leader():
                self._skipped()
                return
        try:
            task_lock = self.task_lock
            if task_lock is None:
                await self._supervised(None)
            else:
                # Take the lock for its minimum hold only: a quick run then
                # costs one round trip, the server expiring the hold by
                # itself. A run still going halfway through the hold extends
                # it (up to max_lock_seconds).
                if not await task_lock.try_acquire(hold=task_lock.min_lock_seconds):
                    self._skipped()
                    return
                try:
                    await self._supervised(task_lock)
                finally:
                    with anyio.CancelScope(shield=True):
                        await task_lock.release()
        except SyncBackendError as exc:
            self._sync_errors.error(exc)
        else:
            self._sync_errors.recovered()

    async def _supervised(self, task_lock: TaskLock | None) -> None:
        """Run under supervision: keep the task lock, watch leadership."""
        run = Run(
            name=self._name,
            scheduled_at=time.time(),
            fencing_token=task_lock.fencing_token if task_lock is not None else None,
        )
        leader = self.leader
        with anyio.CancelScope() as run_scope:
            async with anyio.create_task_group() as watchers:
                if task_lock is not None:
                    watchers.start_soon(self._keep_lock, task_lock, run, run_scope)
                if leader is not None:
                    watchers.start_soon(
                        self._watch_leader, leader, leader.term, run, run_scope
                    )
                try:
                    await self._run_with_resource(run)
                finally:
                    watchers.cancel_scope.cancel()

    def _lost(self, run: Run, run_scope: anyio.CancelScope, message: str) -> None:
        logger.warning(message, self._name)
        run.mark_lost()
        # A thread cannot be interrupted: a sync function sees `run.lost`.
        if self.cancel_on_loss and self._is_async:
            run_scope.cancel()

    async def _keep_lock(
        self, task_lock: TaskLock, run: Run, run_scope: anyio.CancelScope
    ) -> None:
        """Keep the task lock while the run lasts, up to `max_lock_seconds`.

        Extensions go out halfway through the hold the server surely keeps.
        When the lock cannot be kept (lost to another worker, or the backend
        failing until the hold is about to end, or `max_lock_seconds`
        reached), the run is lost `lock_margin()` before the lock could
        expire on the server.
        """
        acquired_at = task_lock.acquired_at
        assert acquired_at is not None
        limit = acquired_at + task_lock.max_lock_seconds
        margin = lock_margin(task_lock.max_lock_seconds)
        while True:
            sure = task_lock.hold_until
            now = time.monotonic()
            if sure >= limit - 0.001:
                await anyio.sleep(max(sure - margin - time.monotonic(), 0.0))
                if not self.cancel_on_loss:
                    outcome = "another worker may run the task meanwhile"
                elif self._is_async:
                    outcome = "cancelled before the lock could expire"
                else:
                    outcome = "a sync function cannot be cancelled: it sees lost"
                self._lost(
                    run,
                    run_scope,
                    "Task lock lost while running: %s (the run exceeded "
                    f"max_lock_seconds={task_lock.max_lock_seconds}; {outcome})",
                )
                return
            # A short hold (min_lock_seconds) gets a proportionate margin.
            if sure - min(margin, (sure - acquired_at) / 4) <= now:
                self._lost(
                    run,
                    run_scope,
                    "Task lock lost while running: %s (the lock could not be "
                    "extended before it expires)",
                )
                return
            await anyio.sleep((sure - now) / 2)
            # If the run ends while the extension is in flight, the extension
            # goes on by itself (its answer is then ignored) and the release
            # that follows shortens the hold again, sent after it.
            extension = asyncio.ensure_future(task_lock.extend())
            extension.add_done_callback(_consume)
            # The answer is awaited no longer than the hold surely lasts: a
            # cut-off worker must lose the run before its lock can expire.
            sure = task_lock.hold_until
            deadline = sure - min(margin, (sure - acquired_at) / 4)
            extended: bool | None = None
            with anyio.move_on_after(max(deadline - time.monotonic(), 0.0)):
                try:
                    extended = await asyncio.shield(extension)
                except SyncBackendError as exc:
                    self._sync_errors.error(exc)
            if extended is False:
                self._lost(
                    run,
                    run_scope,
                    "Task lock lost while running: %s (the lock expired before "
                    "it could be extended; another worker may run the task)",
                )
                return

    async def _watch_leader(
        self,
        leader: LeaderElection,
        term: int,
        run: Run,
        run_scope: anyio.CancelScope,
    ) -> None:
        """Lose the run when this worker's leadership term ends."""
        await leader.wait_term_end(term)
        self._lost(run, run_scope, "Leadership lost while running: %s")

    async def _run_with_resource(self, run: Run) -> None:
        sync = self.sync
        if sync is None:
            await self._run_if_still_leader(run)
            return
        if isinstance(sync, Lock):
            try:
                await sync.acquire_nowait()
            except anyio.WouldBlock:
                self._skipped()
                return
            try:
                await self._run_if_still_leader(run)
            finally:
                with anyio.CancelScope(shield=True):
                    await sync.release()
            return
        try:
            await sync.__aenter__()
        except anyio.WouldBlock:
            self._skipped()
            return
        try:
            await self._run_if_still_leader(run)
        finally:
            with anyio.CancelScope(shield=True):
                await sync.__aexit__(None, None, None)

    async def _run_if_still_leader(self, run: Run) -> None:
        """Run, unless leadership was lost while the locks were being taken.

        A lock call may answer late (a slow or frozen server): by then this
        worker may have passed its renew deadline and another may lead.
        """
        leader = self.leader
        if leader is not None and not leader.is_leader():
            self._skipped()
            return
        token = set_current_run(run)
        recorder = (
            _metrics.start_run(
                self._name,
                scheduled_at=run.scheduled_timestamp,
                fencing_token=run.fencing_token,
            )
            if _metrics.ENABLED.on
            else None
        )
        outcome: str | None = "success"
        error: BaseException | None = None
        try:
            await self.call()
        except Exception as exc:
            outcome, error = "error", exc
            logger.exception("Task execution error: %s", self._name)
        except anyio.get_cancelled_exc_class():
            # Lost, or cut off by the worker stopping (not a failure).
            outcome = "lost" if run.lost else None
            raise
        finally:
            reset_current_run(token)
            if run.lost and outcome == "success":
                outcome = "lost"
            if recorder is not None:
                if outcome is None:
                    recorder.cancel()
                else:
                    recorder.finish(outcome, error)
