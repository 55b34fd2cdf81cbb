"""The local cron scheduler: many local cron tasks on one wall-clock timer.

These run on the real wall clock with per-second schedules (a few seconds
each): what is checked is which fires run, never how fast.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

import anyio
import pytest

from grelmicro.sync import MemorySyncBackend
from grelmicro.task import TaskManager, current_run
from grelmicro.task._cron_scheduler import CronScheduler
from grelmicro.task._scheduler import BATCH

pytestmark = pytest.mark.anyio

Fires = dict[str, list[tuple[float, float]]]


def recorder(fires: Fires, name: str) -> Callable[[], Awaitable[None]]:
    """A job recording (scheduled_at, started) of each of its runs."""

    async def job() -> None:
        fires[name].append((current_run().scheduled_at.timestamp(), time.time()))

    return job


async def wait_until(condition: Callable[[], bool], timeout: float = 6) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.02)


def scheduler_tasks() -> list[str]:
    return [
        task.get_name()
        for task in asyncio.all_tasks()
        if task.get_name().startswith("grelmicro-")
    ]


async def test_local_cron_tasks_run_each_fire_once_on_one_shared_timer() -> None:
    fires: Fires = defaultdict(list)
    manager = TaskManager()
    for name in ("a", "b", "c"):
        manager.cron("* * * * * *", name=name, local=True)(recorder(fires, name))
    manager.cron("*/2 * * * * *", name="even", local=True)(recorder(fires, "even"))
    async with manager:
        # One scheduler task, no task per cron task.
        assert scheduler_tasks() == ["grelmicro-cron-scheduler"]
        await wait_until(lambda: all(len(fires[n]) >= 3 for n in ("a", "b", "c")))
    for name in ("a", "b", "c"):
        scheduled = [due for due, _ in fires[name]]
        assert scheduled == sorted(set(scheduled))  # each fire once, in order
        assert all(due == math.floor(due) for due in scheduled)  # whole seconds
        assert all(b - a == 1 for a, b in itertools.pairwise(scheduled))
        assert all(started >= due for due, started in fires[name])  # never early
    even = [due for due, _ in fires["even"]]
    assert even
    assert all(int(due) % 2 == 0 for due in even)
    assert len(even) == len(set(even))


async def test_many_tasks_on_one_schedule_start_in_batches() -> None:
    # More tasks than one batch share a fire: each runs once per fire, and the
    # loop gets turns (here, a ticker's) between the batches.
    count = 3 * BATCH + 7
    events: list[float] = []  # fire times of runs; -1.0 for a loop turn
    manager = TaskManager()

    async def job() -> None:
        events.append(current_run().scheduled_at.timestamp())

    for index in range(count):
        manager.cron("* * * * * *", name=f"job-{index}", local=True)(job)

    async def ticker() -> None:
        while True:
            events.append(-1.0)
            await asyncio.sleep(0)

    tick = asyncio.get_running_loop().create_task(ticker())
    try:
        async with manager:
            await wait_until(lambda: sum(1 for e in events if e > 0) >= 2 * count)
    finally:
        tick.cancel()
    by_fire: dict[float, int] = defaultdict(int)
    for event in events:
        if event > 0:
            by_fire[event] += 1
    assert max(by_fire.values()) == count  # every task once per fire
    streak = longest = 0
    for event in events:
        streak = streak + 1 if event > 0 else 0
        longest = max(longest, streak)
    assert longest <= 2 * BATCH  # not all in one turn


async def test_a_failing_run_is_logged_and_the_next_fires_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[float] = []
    manager = TaskManager()

    @manager.cron("* * * * * *", name="flaky", local=True)
    async def flaky() -> None:
        runs.append(time.time())
        msg = "boom"
        raise RuntimeError(msg)

    with caplog.at_level(logging.ERROR, logger="grelmicro.task"):
        async with manager:
            await wait_until(lambda: len(runs) >= 2)
    errors = [
        r for r in caplog.records if r.getMessage() == "Task execution error: flaky"
    ]
    assert len(errors) >= 2


async def test_a_blocked_loop_runs_missed_fires_within_each_tasks_grace() -> None:
    fires: Fires = defaultdict(list)
    manager = TaskManager()
    manager.cron("* * * * * *", name="all", local=True)(recorder(fires, "all"))
    manager.cron("* * * * * *", name="graced", local=True, misfire_grace_seconds=0.8)(
        recorder(fires, "graced")
    )
    async with manager:
        await wait_until(lambda: len(fires["all"]) >= 1)
        # Just after a fire: block the loop past the next three.
        await anyio.sleep(math.ceil(time.time()) - time.time() + 0.1)
        blocked_from = time.time()
        time.sleep(3.2)  # a stalled event loop, on purpose
        blocked_to = time.time()
        await wait_until(lambda: any(d > blocked_to for d, _ in fires["graced"]))
    missed = [d for d, _ in fires["all"] if blocked_from < d < blocked_to]
    assert len(missed) == 3  # every fire ran late (no grace)
    graced = [d for d, _ in fires["graced"] if blocked_from < d < blocked_to]
    # The last missed fire was 0.3 s old when the loop woke (within 0.8 s);
    # the others were 1.3 s and 2.3 s old: skipped.
    assert graced == missed[-1:]


async def test_coordinated_and_test_clock_cron_tasks_keep_their_own_loop() -> None:
    manager = TaskManager()
    manager.cron("@daily", name="local", local=True)(lambda: None)
    manager.cron("@daily", name="claimed", backend=MemorySyncBackend())(lambda: None)
    async with manager:
        names = sorted(scheduler_tasks())
    assert names == ["grelmicro-cron-scheduler", "grelmicro-task:claimed"]


async def test_stopping_cancels_running_runs_and_waits_for_them() -> None:
    started = anyio.Event()
    ended: list[str] = []
    manager = TaskManager()

    @manager.cron("* * * * * *", name="long", local=True)
    async def long() -> None:
        started.set()
        try:
            await anyio.sleep(60)
        finally:
            ended.append("cancelled")

    async with manager:
        with anyio.fail_after(3):
            await started.wait()
    assert ended == ["cancelled"]
    assert "grelmicro-cron-scheduler" not in scheduler_tasks()


def test_tasks_on_the_same_schedule_share_one_iterator() -> None:
    manager = TaskManager()
    for index in range(5):
        manager.cron("0 * * * *", name=f"h{index}", local=True)(lambda: None)
    manager.cron("0 * * * *", name="zurich", local=True, timezone="Europe/Zurich")(
        lambda: None
    )
    manager.cron("*/5 * * * *", name="five", local=True)(lambda: None)
    scheduler = CronScheduler(manager.tasks)  # type: ignore[arg-type]
    sizes = sorted(len(group.tasks) for group in scheduler._groups)
    assert sizes == [1, 1, 5]
