"""The interval scheduler: one timer heap for every interval task of a manager."""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from functools import partial
from heapq import heappop, heappush
from typing import Any

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from grelmicro import _metrics
from grelmicro.sync import _burst as burst
from grelmicro.task._interval import IntervalTask
from grelmicro.task._run import enter_local_run

logger = logging.getLogger("grelmicro.task")

#: Attempts started per event-loop turn at most: when more are due, the rest
#: start on the next turn, after these ran. Thousands of tasks on one interval
#: fall due together (at start-up too); in small batches the loop serves I/O
#: between them, the attempts in flight stay few (their short-lived objects do
#: not reach the garbage collector's oldest generation, whose full passes would
#: pause the loop), and the first runs start at the pace of the later ones (were
#: they all started in one turn, the second runs would fall due faster than
#: they can start, and start late).
BATCH = 128

#: At most this late (and at most a twentieth of the task's interval), a
#: coordinated attempt joins the attempts due just before it.
COALESCE_SECONDS = 0.03


def task_creator(
    loop: asyncio.AbstractEventLoop,
) -> Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]:
    """How a scheduler starts its short-lived run tasks on `loop`: without a
    task factory, the tasks are built directly (what `loop.create_task`
    would do, minus its checks per call)."""
    if loop.get_task_factory() is None:
        return partial(asyncio.Task, loop=loop)
    return loop.create_task


async def cancel_and_wait(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel a scheduler's running tasks and wait for them, shielded (the
    scheduler itself is being cancelled)."""
    running = list(tasks)
    for task in running:
        task.cancel()
    if running:
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*running, return_exceptions=True)


class IntervalScheduler:
    """Runs many interval tasks from one timer heap.

    Instead of one sleeping coroutine per task, a single event-loop timer
    fires the attempts that are due, each in its own short-lived asyncio task;
    when an attempt ends, the task is due again `interval` seconds later. The
    semantics are those of `IntervalTask.__call__` (one attempt at a time per
    task, the wait measured from the end of an attempt), at a fraction of the
    CPU and memory for thousands of tasks.

    The heap holds `(due, index)` pairs of plain numbers: the garbage
    collector stops tracking them at once, so the thousands of entries that
    live one interval each never reach its oldest generation (whose full
    collections would otherwise pause the loop every few seconds).
    """

    def __init__(
        self,
        tasks: list[IntervalTask],
        *,
        ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._tasks = list(dict.fromkeys(tasks))  # each task once
        #: Awaited (after reporting started) before the first attempts: a
        #: `TaskManager(broker=...)` waits there for the app to connect its
        #: broker, so a first run that publishes does not fail.
        self._ready = ready
        self._heap: list[tuple[float, int]] = []
        self._running: dict[int, asyncio.Task[None]] = {}
        self._timer: asyncio.Handle | None = None
        self._timer_at = float("inf")
        self._closing = False
        #: Start times of upcoming coordinated attempts (sorted).
        self._slots: list[float] = []

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
        # The attempts start from this context (a copy per attempt): they see
        # what the scheduler's task sees (the manager's broker backend), never
        # what an earlier attempt set.
        self._context = contextvars.copy_context()
        self._closing = False
        self._heap = []
        task_status.started()
        try:
            if self._ready is not None:
                await self._ready()
            now = loop.time()
            # Sorted, hence already a heap.
            self._heap = [(now, index) for index in range(len(self._tasks))]
            self._fire()
            await anyio.sleep_forever()
        finally:
            self._closing = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            await cancel_and_wait(self._running.values())

    def _schedule_timer(self) -> None:
        heap = self._heap
        if heap:
            when = heap[0][0]
            self._timer_at = when
            self._timer = self._loop.call_at(when, self._fire, context=self._context)
        else:
            self._timer_at = float("inf")
            self._timer = None

    def _fire(self, limit: int = BATCH) -> None:
        loop = self._loop
        heap = self._heap
        tasks = self._tasks
        running = self._running
        create_task = task_creator(loop)
        run = self._run
        # Checked once per batch: without metrics a local run needs no hooks.
        run_local = self._run if _metrics.ENABLED.on else self._run_local
        # Never early: a task due at t must not start before t (a TaskLock
        # hold ends exactly then, and starting before would skip a period).
        now = loop.time()
        coordinated = 0
        while heap and heap[0][0] <= now:
            if not limit:  # the rest on the next turn, after these ran
                self._timer_at = now
                self._timer = loop.call_soon(self._fire, context=self._context)
                break
            limit -= 1
            index = heappop(heap)[1]
            task = tasks[index]
            if task.local:
                running[index] = create_task(run_local(index, task))
            else:
                coordinated += 1
                running[index] = create_task(run(index, task))
        else:
            self._schedule_timer()
        if coordinated > 1:
            # Their first backend calls, all in the next turn, go out together.
            burst.begin(loop)

    async def _run_local(self, index: int, task: IntervalTask) -> None:
        """One run of a local task (no coordination, no metrics), then the
        next one `interval` after its end: one coroutine for the whole run."""
        try:
            enter_local_run(task.name, time.time())  # in its own task
            await task.call()
        except Exception:
            logger.exception("Task execution error: %s", task.name)
        finally:
            # Not stored yet if an eager task factory ran it to its end.
            self._running.pop(index, None)
            if not self._closing:
                # `_reschedule`, inlined: this runs 10,000 times a second
                # with 10,000 tasks on a 1 s interval.
                loop = self._loop
                due = loop.time() + task.interval
                heappush(self._heap, (due, index))
                if due < self._timer_at:
                    timer = self._timer
                    if timer is not None:
                        timer.cancel()
                    self._timer_at = due
                    self._timer = loop.call_at(due, self._fire, context=self._context)

    async def _run(self, index: int, task: IntervalTask) -> None:
        """One attempt, then schedule the next one `interval` after its end."""
        try:
            await task.attempt_once()
        except Exception:
            logger.exception("Task execution error: %s", task.name)
        finally:
            # Not stored yet if an eager task factory ran it to its end.
            self._running.pop(index, None)
            if not self._closing:
                self._reschedule(index, task.interval, coordinated=not task.local)

    def _join_slot(self, due: float, interval: float, now: float) -> float:
        """A coordinated attempt's start: `due`, or a slot taken just after it.

        Coordinated attempts (TaskLock, leader, resource lock) that fall due
        within a short window of one another start together, at the
        window's end: in one event-loop turn, so their backend calls go out
        in one round trip (see the Redis backend's batching; NATS flushes
        them in one write). Never early; at most `COALESCE_SECONDS` (or a
        twentieth of the interval) late. Attempts that ended together stay
        together.
        """
        slots = self._slots
        while slots and slots[0] < now:
            del slots[0]
        window = min(COALESCE_SECONDS, interval / 20)
        index = bisect.bisect_left(slots, due)
        if index < len(slots) and slots[index] - due <= window:
            return slots[index]
        # A new slot, one window after the first attempt due: the attempts
        # that end just after this one (answered a few milliseconds later)
        # are due before it, and join it.
        slot = due + window
        slots.insert(index, slot)
        return slot

    def _reschedule(self, index: int, interval: float, *, coordinated: bool) -> None:
        now = self._loop.time()
        due = now + interval
        if coordinated:
            due = self._join_slot(due, interval, now)
        heappush(self._heap, (due, index))
        if due < self._timer_at:
            timer = self._timer
            if timer is not None:
                timer.cancel()
            self._timer_at = due
            self._timer = self._loop.call_at(due, self._fire, context=self._context)
