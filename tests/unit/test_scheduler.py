"""The interval scheduler: many local tasks on one timer heap."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from grelmicro.task import Run, TaskManager, current_run
from grelmicro.task._run import enter_local_run
from grelmicro.task._scheduler import BATCH

pytestmark = pytest.mark.anyio


async def test_many_due_tasks_start_in_batches_with_loop_turns_between() -> None:
    # More tasks than one batch fall due at once (at start-up): every one runs
    # once, and the loop gets turns (here, a ticker's) between the batches.
    count = 3 * BATCH + 5
    manager = TaskManager()
    events: list[int] = []
    ticks = 0

    def job(index: int) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            events.append(index)

        return run

    for index in range(count):
        manager.interval(seconds=60, name=f"job-{index}")(job(index))

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            events.append(-1)  # a loop turn
            await asyncio.sleep(0)

    tick_task = asyncio.get_running_loop().create_task(ticker())
    try:
        async with manager:
            with anyio.fail_after(5):
                while sum(1 for e in events if e >= 0) < count:
                    await anyio.sleep(0.01)
    finally:
        tick_task.cancel()
    runs = [e for e in events if e >= 0]
    assert sorted(runs) == list(range(count))  # each once (60 s interval)
    streak = longest = 0
    for event in events:
        streak = streak + 1 if event >= 0 else 0
        longest = max(longest, streak)
    assert longest <= 2 * BATCH  # not all in one turn
    assert ticks > 3


async def test_local_runs_each_have_their_own_context() -> None:
    # Each run sets the current run in a context of its own: what one run
    # sets is seen neither by the next run nor by another task.
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker")
    manager = TaskManager()
    seen: list[tuple[str, str, str]] = []
    done = anyio.Event()

    async def record(name: str) -> None:
        run = current_run()
        seen.append((name, run.name, marker.get("unset")))
        marker.set(name)
        assert abs(run.scheduled_timestamp - time.time()) < 5
        if len(seen) >= 6:
            done.set()

    @manager.interval(seconds=0.01, name="first")
    async def first() -> None:
        await record("first")

    @manager.interval(seconds=0.01, name="second")
    async def second() -> None:
        await record("second")

    async with manager:
        with anyio.fail_after(5):
            await done.wait()
    assert {(task, name) for task, name, _ in seen} == {
        ("first", "first"),
        ("second", "second"),
    }
    assert all(value == "unset" for _, _, value in seen)


async def test_a_failing_local_task_runs_again_and_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = TaskManager()
    failures = 0
    ok = 0

    @manager.interval(seconds=0.01, name="failing")
    async def failing() -> None:
        nonlocal failures
        failures += 1
        raise RuntimeError("boom")

    @manager.interval(seconds=0.01, name="fine")
    async def fine() -> None:
        nonlocal ok
        ok += 1

    async with manager:
        with anyio.fail_after(5):
            while failures < 3 or ok < 3:
                await anyio.sleep(0.01)
    assert "Task execution error: failing" in caplog.text


async def test_stop_cancels_a_running_local_run_and_no_run_follows() -> None:
    manager = TaskManager()
    started = anyio.Event()
    cancelled = False
    runs = 0

    @manager.interval(seconds=0.01, name="slow")
    async def slow() -> None:
        nonlocal cancelled, runs
        runs += 1
        started.set()
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            cancelled = True
            raise

    async with manager:
        with anyio.fail_after(5):
            await started.wait()
        await manager.stop()
    assert cancelled
    assert runs == 1


def test_enter_local_run_builds_the_same_run_as_the_constructor() -> None:
    def inside() -> tuple[Run, Run]:
        enter_local_run("job", 1_700_000_000.5)
        return current_run(), Run(name="job", scheduled_at=1_700_000_000.5)

    fast, built = contextvars.copy_context().run(inside)
    for slot in Run.__slots__:
        assert getattr(fast, slot) == getattr(built, slot), slot
    assert fast.scheduled_at == built.scheduled_at
    assert repr(fast) == repr(built)
    fast.mark_lost()
    assert fast.lost


async def _runs_twice_each_with(factory: object) -> None:
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()
    loop.set_task_factory(factory)  # type: ignore[arg-type]
    try:
        manager = TaskManager()
        runs = {"a": 0, "b": 0}

        @manager.interval(seconds=0.01, name="a")
        async def a() -> None:
            runs["a"] += 1

        @manager.interval(seconds=0.01, name="b")
        async def b() -> None:
            runs["b"] += 1
            await asyncio.sleep(0)

        async with manager:
            with anyio.fail_after(5):
                while min(runs.values()) < 3:
                    await anyio.sleep(0.01)
    finally:
        loop.set_task_factory(previous)


async def test_local_tasks_run_under_a_task_factory() -> None:
    built: list[object] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        built.append(task)
        return task

    await _runs_twice_each_with(factory)
    assert len(built) >= 6  # the attempts went through the factory


@pytest.mark.skipif(not hasattr(asyncio, "eager_task_factory"), reason="Python 3.12+")
async def test_local_tasks_run_again_under_an_eager_task_factory() -> None:
    # An eager factory runs a run that never waits to its end inside
    # create_task: it is due again all the same.
    await _runs_twice_each_with(asyncio.eager_task_factory)  # type: ignore[attr-defined]
