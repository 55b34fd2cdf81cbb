"""Interval tasks: run a function every `interval` seconds, optionally coordinated."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, cast

import anyio
import anyio.to_thread
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from fast_depends import inject

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
    takes_params = _has_parameters(function)
    target: Callable[..., Any] = inject(function) if takes_params else function
    if is_async_callable(function):
        return cast("Callable[[], Awaitable[Any]]", target)

    async def run_in_thread() -> Any:
        return await anyio.to_thread.run_sync(target)

    return run_in_thread


def _has_parameters(function: Callable[..., Any]) -> bool:
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
        if self.task_lock is None and self.leader is None and self.sync is None:
            while True:
                await self._run()
                await anyio.sleep(self.interval)
        while True:
            await self.attempt()
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
            if not await task_lock.try_acquire():
                logger.debug("Task skipped: %s", self._name)
                return
            started = time.monotonic()
            try:
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

    async def _run_with_resource(self) -> None:
        sync = self.sync
        if sync is None:
            await self._run()
            return
        if isinstance(sync, Lock):
            try:
                await sync.acquire_nowait()
            except anyio.WouldBlock:
                logger.debug("Task skipped: %s", self._name)
                return
            try:
                await self._run()
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
            await self._run()
        finally:
            with anyio.CancelScope(shield=True):
                await sync.__aexit__(None, None, None)

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
