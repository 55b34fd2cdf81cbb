"""Fencing tokens on the primitives, the current run, supervised runs, and the
manager lifecycle (memory backend)."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC
from typing import Any

import anyio
import pytest
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from fast_depends import Depends

from grelmicro.errors import OutOfContextError
from grelmicro.sync import LeaderElection, Lock, MemorySyncBackend, TaskLock
from grelmicro.task import Run, TaskManager, current_run
from grelmicro.task.errors import TaskAddOperationError
from tests.unit.conftest import FailingBackend

pytestmark = pytest.mark.anyio

FAST: dict[str, Any] = {
    "lease_duration": 0.6,
    "renew_deadline": 0.4,
    "retry_interval": 0.05,
    "backend_timeout": 0.2,
}


class FourMethods:
    """A third-party backend with the four required methods only."""

    def __init__(self) -> None:
        self._memory = MemorySyncBackend(auto_register=False)

    async def __aenter__(self) -> FourMethods:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def acquire(self, *, name: str, token: str, duration: float) -> bool:
        return await self._memory.acquire(name=name, token=token, duration=duration)

    async def release(self, *, name: str, token: str) -> bool:
        return await self._memory.release(name=name, token=token)

    async def locked(self, *, name: str) -> bool:
        return await self._memory.locked(name=name)

    async def owned(self, *, name: str, token: str) -> bool:
        return await self._memory.owned(name=name, token=token)


# Fencing tokens on the primitives ---------------------------------------------------


async def test_lock_tokens_grow_and_are_none_when_not_held() -> None:
    backend = MemorySyncBackend(auto_register=False)
    first, second = Lock("r", backend=backend), Lock("r", backend=backend)
    assert first.fencing_token is None
    tokens = []
    for lock in (first, second, first):
        async with lock:
            assert lock.fencing_token is not None
            tokens.append(lock.fencing_token)
        assert lock.fencing_token is None
    assert tokens == sorted(set(tokens))


async def test_task_lock_token_is_kept_by_extensions() -> None:
    backend = MemorySyncBackend(auto_register=False)
    task_lock = TaskLock("t", backend=backend, min_lock_seconds=0.1, max_lock_seconds=5)
    assert await task_lock.try_acquire(hold=0.1)
    token = task_lock.fencing_token
    assert token is not None
    assert await task_lock.extend()
    assert task_lock.fencing_token == token
    await task_lock.release()
    assert task_lock.fencing_token is None


async def test_leader_token_per_term() -> None:
    backend = MemorySyncBackend(auto_register=False)
    leader = LeaderElection("e", backend=backend, **FAST)
    assert leader.fencing_token is None
    async with TaskManager(tasks=[leader]):
        await leader.wait_for_leader()
        token = leader.fencing_token
        assert token is not None
        await anyio.sleep(0.2)  # renewals keep the term's token
        assert leader.fencing_token == token
    assert leader.fencing_token is None


async def test_backend_without_tokens_still_works() -> None:
    backend = FourMethods()
    lock = Lock("r", backend=backend)  # type: ignore[arg-type]
    async with lock:
        assert await lock.owned()
        assert lock.fencing_token is None
    manager = TaskManager()
    runs: list[Run] = []

    @manager.interval(seconds=0.05, max_lock_seconds=1, backend=backend)  # type: ignore[arg-type]
    async def job() -> None:
        runs.append(current_run())

    async with manager:
        with anyio.fail_after(2):
            while not runs:
                await anyio.sleep(0.01)
    assert runs[0].fencing_token is None


# The current run ----------------------------------------------------------------------


async def test_current_run_outside_a_run_raises() -> None:
    with pytest.raises(OutOfContextError, match="current_run"):
        current_run()


async def test_current_run_in_async_sync_and_injected_functions() -> None:
    backend = MemorySyncBackend(auto_register=False)
    manager = TaskManager()
    seen: dict[str, Run] = {}
    before = time.time()

    @manager.interval(seconds=10, max_lock_seconds=20, backend=backend, name="async")
    async def in_async() -> None:
        seen["async"] = current_run()

    @manager.interval(seconds=10, max_lock_seconds=20, backend=backend, name="sync")
    def in_thread() -> None:
        assert threading.current_thread() is not threading.main_thread()
        seen["sync"] = current_run()

    @manager.interval(seconds=10, name="injected")
    async def injected(run: Run = Depends(current_run)) -> None:  # noqa: B008
        seen["injected"] = run

    async with manager:
        with anyio.fail_after(2):
            while len(seen) < 3:
                await anyio.sleep(0.01)
    assert {run.name for run in seen.values()} == {"async", "sync", "injected"}
    for run in seen.values():
        assert run.scheduled_at.tzinfo is UTC
        assert before - 1 <= run.scheduled_at.timestamp() <= time.time()
        assert not run.lost
    # Locked runs carry their TaskLock's token; a local run has none.
    assert seen["async"].fencing_token is not None
    assert seen["sync"].fencing_token is not None
    assert seen["injected"].fencing_token is None
    with pytest.raises(OutOfContextError):
        current_run()


async def test_run_tokens_grow_across_workers() -> None:
    backend = MemorySyncBackend(auto_register=False)
    tokens: list[int | None] = []
    managers = [TaskManager(), TaskManager()]
    for index, manager in enumerate(managers):

        @manager.interval(
            seconds=0.02,
            max_lock_seconds=1,
            min_lock_seconds=0.02,
            backend=backend,
            worker=f"w{index}",
            name="shared",
        )
        async def job() -> None:
            tokens.append(current_run().fencing_token)

    async with managers[0], managers[1]:
        await anyio.sleep(0.4)
    assert len(tokens) >= 5
    assert all(token is not None for token in tokens)
    assert tokens == sorted(set(tokens))  # type: ignore[type-var]


# Supervised runs ----------------------------------------------------------------------


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


async def test_run_past_max_lock_seconds_is_cancelled_before_the_lock_expires(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = MemorySyncBackend(auto_register=False)
    manager = TaskManager()
    spans: list[tuple[float, float]] = []
    cancelled = anyio.Event()

    @manager.interval(
        seconds=0.2, max_lock_seconds=0.6, backend=backend, name="too-long"
    )
    async def too_long() -> None:
        start = time.monotonic()
        try:
            await anyio.sleep(5)
        finally:
            spans.append((start, time.monotonic()))
            cancelled.set()

    with caplog.at_level(logging.WARNING, logger="grelmicro.task"):
        async with manager:
            with anyio.fail_after(3):
                await cancelled.wait()
            # Cancelled before the lock expired on the server: the lock is
            # released, and it was held by nobody else meanwhile.
            assert not await backend.owned(name="tasklock:too-long", token="x")
    start, end = spans[0]
    assert end - start < 0.6
    messages = warnings_of(caplog)
    assert any(
        "Task lock lost while running: too-long" in m and "max_lock_seconds" in m
        for m in messages
    ), messages


async def test_cancel_on_loss_false_lets_the_run_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = MemorySyncBackend(auto_register=False)
    manager = TaskManager()
    done = anyio.Event()

    @manager.interval(
        seconds=0.2,
        max_lock_seconds=0.4,
        backend=backend,
        name="goes-on",
        cancel_on_loss=False,
    )
    async def goes_on() -> None:
        await anyio.sleep(0.6)
        done.set()

    with caplog.at_level(logging.WARNING, logger="grelmicro.task"):
        async with manager:
            with anyio.fail_after(3):
                await done.wait()
    assert any(
        "Task lock lost while running: goes-on" in m for m in warnings_of(caplog)
    )


async def test_leader_loss_cancels_a_gated_run_by_renew_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing = FailingBackend()
    leader = LeaderElection("e", backend=failing, **FAST)
    manager = TaskManager(tasks=[leader])
    started = anyio.Event()
    ended: list[float] = []

    # The task lock lives on a healthy backend: only leadership is lost.
    @manager.interval(
        seconds=0.1,
        leader=leader,
        max_lock_seconds=5,
        backend=MemorySyncBackend(auto_register=False),
        name="gated",
    )
    async def gated() -> None:
        started.set()
        try:
            await anyio.sleep(10)
        finally:
            ended.append(time.monotonic())

    with caplog.at_level(logging.WARNING, logger="grelmicro.task"):
        async with manager:
            with anyio.fail_after(2):
                await started.wait()
            cut_at = time.monotonic()
            failing.failing = True  # cut off: renewals fail from now on
            with anyio.fail_after(2):
                while not ended:
                    await anyio.sleep(0.01)
            failing.failing = False
    # Cancelled by renew_deadline after the last renewal, before the lease
    # (0.6 s) can expire for another worker.
    assert ended[0] - cut_at <= FAST["renew_deadline"] + 0.1
    assert any("Leadership lost while running: gated" in m for m in warnings_of(caplog))


async def test_sync_function_sees_lost(caplog: pytest.LogCaptureFixture) -> None:
    failing = FailingBackend()
    leader = LeaderElection("e", backend=failing, **FAST)
    manager = TaskManager(tasks=[leader])
    started = threading.Event()
    saw_lost = threading.Event()

    @manager.interval(
        seconds=0.1,
        leader=leader,
        max_lock_seconds=5,
        backend=MemorySyncBackend(auto_register=False),
        name="sync-gated",
    )
    def gated() -> None:
        run = current_run()
        started.set()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if run.lost:
                saw_lost.set()
                return
            time.sleep(0.01)

    async with manager:
        with anyio.fail_after(2):
            while not started.is_set():
                await anyio.sleep(0.01)
        failing.failing = True
        with anyio.fail_after(2):
            while not saw_lost.is_set():
                await anyio.sleep(0.01)
        failing.failing = False
    assert saw_lost.is_set()


# Manager lifecycle ----------------------------------------------------------------------


class SlowStart:
    """A task that takes a while before it reports started."""

    name = "slow-start"

    def __init__(self) -> None:
        self.started = False

    async def __call__(
        self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        await anyio.sleep(0.2)
        self.started = True
        task_status.started()
        await anyio.sleep_forever()


async def test_enter_returns_once_every_task_has_started() -> None:
    slow = SlowStart()
    async with TaskManager(tasks=[slow]):
        assert slow.started


async def test_second_start_raises() -> None:
    manager = TaskManager()
    async with manager:
        with pytest.raises(TaskAddOperationError):
            await manager.start()
    manual = TaskManager(auto_start=False)
    async with manual:
        await manual.start()
        with pytest.raises(TaskAddOperationError):
            await manual.start()


async def test_exit_outside_the_context_raises() -> None:
    with pytest.raises(OutOfContextError):
        await TaskManager().__aexit__(None, None, None)


async def test_stop_is_idempotent_and_releases() -> None:
    backend = MemorySyncBackend(auto_register=False)
    leader = LeaderElection("e", backend=backend, **FAST)
    manager = TaskManager(tasks=[leader])
    async with manager:
        await leader.wait_for_leader()
        await manager.stop()
        assert not manager.running
        assert not await backend.locked(name="leader:e")
        await manager.stop()


async def test_leader_gated_task_runs_at_start_not_an_interval_later() -> None:
    # The first attempt comes before the election's first answer: it waits
    # for that answer (bounded by backend_timeout) instead of skipping a
    # whole interval (60 s here).
    backend = MemorySyncBackend(auto_register=False)
    leader = LeaderElection("e", backend=backend, **FAST)
    manager = TaskManager(tasks=[leader])
    ran = anyio.Event()

    @manager.interval(seconds=60, leader=leader, backend=backend, name="hourly")
    async def hourly() -> None:
        ran.set()

    async with manager:
        with anyio.fail_after(2):
            await ran.wait()
