"""The local cron scheduler: one wall-clock timer for every local cron task.

A local cron task (``local=True``, every worker runs every fire) needs no
claim: its fires only have to start on time. Instead of one sleeping
coroutine per task, a single event-loop timer starts the fires that are due,
each run in its own short-lived asyncio task. Tasks on the same schedule
(expression and time zone) share one iterator of fire times: one cron
computation per fire, not one per task. Coordinated cron tasks keep their
own loop (`CronTask.__call__`), as do tasks given a test clock.

The semantics are those of `CronTask.__call__` for a local task: the fires
after the start, in order, each started once without waiting for the
previous run to end; a late wake-up skips to the catch-up horizon
(`skip_late`); a fire past a task's `misfire_grace_seconds` is skipped.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Iterator
from heapq import heappop, heappush
from typing import Any

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from grelmicro.task._cron import CronTask, skip_late
from grelmicro.task._cron_args import MAX_SLEEP, WallClock
from grelmicro.task._cron_schedule import CronSchedule
from grelmicro.task._scheduler import BATCH, cancel_and_wait, task_creator

logger = logging.getLogger("grelmicro.task")

#: The event loop's timer runs on the monotonic clock: wake this much after
#: the wall clock's fire time, not a hair before it (and sleep again).
_WAKE_MARGIN = 0.001


def local_cron_task(task: object) -> CronTask | None:
    """`task` if it is a local cron task on the system's wall clock."""
    if type(task) is CronTask and task.local and type(task.clock) is WallClock:
        return task
    return None


class _Group:
    """The tasks on one schedule, and the schedule's upcoming fires."""

    __slots__ = ("fires", "label", "schedule", "tasks")

    def __init__(self, schedule: CronSchedule) -> None:
        self.schedule = schedule
        self.tasks: list[CronTask] = []
        self.fires: Iterator[float] = iter(())
        self.label = ""


class CronScheduler:
    """Runs many local cron tasks from one wall-clock timer heap.

    The heap holds `(fire, group)` pairs of plain numbers (epoch seconds,
    group index): the garbage collector stops tracking them at once.
    """

    def __init__(self, tasks: list[CronTask]) -> None:
        groups: dict[tuple[str, Any], _Group] = {}
        for task in dict.fromkeys(tasks):  # each task once
            schedule = task.schedule
            key = (schedule.normalized, _hashable(schedule.tz))
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group(schedule)
            group.tasks.append(task)
        self._groups = list(groups.values())
        for group in self._groups:
            names = ", ".join(task.name for task in group.tasks[:3])
            more = len(group.tasks) - 3
            group.label = names + (f" and {more} more" if more > 0 else "")
        self._heap: list[tuple[float, int]] = []
        #: Runs due, not started yet (started `BATCH` per event-loop turn).
        self._pending: deque[tuple[CronTask, float]] = deque()
        self._running: set[asyncio.Task[None]] = set()
        self._timer: asyncio.Handle | None = None
        self._starter: asyncio.Handle | None = None

    @property
    def name(self) -> str:
        """The scheduler's task name."""
        return "grelmicro-cron-scheduler"

    async def __call__(
        self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Start the fires until cancelled, then cancel and await running runs."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        # Runs start from this context (a copy per run): they see what the
        # scheduler's task sees, never what an earlier run set.
        self._context = contextvars.copy_context()
        start = time.time()
        self._heap = []
        for index, group in enumerate(self._groups):
            group.fires = group.schedule.iter_after(start)
            self._push(index)
        task_status.started()
        try:
            self._schedule_timer()
            await anyio.sleep_forever()
        finally:
            for handle in (self._timer, self._starter):
                if handle is not None:
                    handle.cancel()
            self._timer = self._starter = None
            self._pending.clear()
            await cancel_and_wait(self._running)

    def _push(self, index: int) -> None:
        group = self._groups[index]
        fire = next(group.fires, None)
        if fire is None:
            logger.info("Cron task has no more fires: %s", group.label)
            return
        heappush(self._heap, (fire, index))

    def _schedule_timer(self) -> None:
        heap = self._heap
        if not heap:
            self._timer = None
            return
        # Re-read the wall clock at least every MAX_SLEEP seconds: it may be
        # stepped while the loop's monotonic timer waits.
        delay = min(max(heap[0][0] - time.time(), 0.0) + _WAKE_MARGIN, MAX_SLEEP)
        self._timer = self._loop.call_at(
            self._loop.time() + delay, self._fire, context=self._context
        )

    def _fire(self) -> None:
        heap = self._heap
        groups = self._groups
        pending = self._pending
        now = time.time()
        while heap and heap[0][0] <= now:
            fire, index = heappop(heap)
            group = groups[index]
            fire, group.fires = skip_late(
                group.schedule, fire, now, group.fires, group.label
            )
            self._push(index)
            pending.extend(
                (task, fire) for task in group.tasks if not task.past_grace(fire, now)
            )
        self._schedule_timer()
        if pending and self._starter is None:
            self._start_pending()

    def _start_pending(self) -> None:
        """Start up to `BATCH` due runs; the rest on the next turn, after these
        ran (thousands of tasks on one schedule fall due together)."""
        self._starter = None
        loop = self._loop
        pending = self._pending
        running = self._running
        create_task = task_creator(loop)
        run = self._run
        for _ in range(min(BATCH, len(pending))):
            task, fire = pending.popleft()
            started = create_task(run(task, fire))
            if not started.done():  # an eager task factory may have run it
                running.add(started)
        if pending:
            self._starter = loop.call_soon(self._start_pending, context=self._context)

    async def _run(self, task: CronTask, fire: float) -> None:
        try:
            await task.run_local(fire)
        except Exception:
            logger.exception("Task execution error: %s", task.name)
        finally:
            current = asyncio.current_task()
            if current is not None:
                self._running.discard(current)


def _hashable(tz: object) -> object:
    """The time zone as a dict key (its identity if it cannot be hashed)."""
    try:
        hash(tz)
    except TypeError:
        return id(tz)
    return tz
