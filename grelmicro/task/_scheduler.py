"""The interval scheduler: one timer heap for every interval task of a manager."""

from __future__ import annotations

import asyncio
import bisect
import heapq
import logging
from collections.abc import Awaitable, Callable

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from grelmicro.sync import _burst as burst
from grelmicro.task._interval import IntervalTask

logger = logging.getLogger("grelmicro.task")

#: At most this late (and at most a twentieth of the task's interval), a
#: coordinated attempt joins the attempts due just before it.
COALESCE_SECONDS = 0.03


class IntervalScheduler:
    """Runs many interval tasks from one timer heap.

    Instead of one sleeping coroutine per task, a single event-loop timer
    fires the attempts that are due, each in its own short-lived asyncio task;
    when an attempt ends, the task is due again `interval` seconds later. The
    semantics are those of `IntervalTask.__call__` (one attempt at a time per
    task, the wait measured from the end of an attempt), at a fraction of the
    CPU and memory for thousands of tasks.
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
        self._heap: list[tuple[float, int, IntervalTask]] = []
        self._seq = 0
        self._running: dict[IntervalTask, asyncio.Task[None]] = {}
        self._timer: asyncio.TimerHandle | None = None
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
        self._closing = False
        self._heap = []
        task_status.started()
        try:
            if self._ready is not None:
                await self._ready()
            now = loop.time()
            self._heap = [(now, i, task) for i, task in enumerate(self._tasks)]
            self._seq = len(self._tasks)
            self._schedule_timer()
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
        coordinated = 0
        while heap and heap[0][0] <= now:
            task = heapq.heappop(heap)[2]
            running[task] = create_task(run(task))
            if task.task_lock is not None or task.leader is not None:
                coordinated += 1
        if coordinated > 1:
            # Their first backend calls, all in the next turn, go out together.
            burst.begin(loop)
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

    def _join_slot(self, due: float, interval: float, now: float) -> float:
        """A coordinated attempt's start: `due`, or a slot taken just after it.

        Coordinated attempts (TaskLock, leader) that fall due within a short
        window of one another start together, at the window's end: in one
        event-loop turn, so their backend calls go out in one round trip
        (see the Redis backend's batching; NATS flushes them in one write).
        Never early; at most `COALESCE_SECONDS` (or a twentieth of the
        interval) late. Attempts that ended together stay together.
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

    def _reschedule(self, task: IntervalTask) -> None:
        loop = self._loop
        due = loop.time() + task.interval
        if task.task_lock is not None or task.leader is not None:
            due = self._join_slot(due, task.interval, loop.time())
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, task))
        timer = self._timer
        if timer is None or due < timer.when():
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(due, self._fire)
