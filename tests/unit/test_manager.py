"""TaskManager running interval tasks on the memory backend."""

from __future__ import annotations

import itertools
import logging
import threading
import time

import anyio
import pytest
from fast_depends import Depends

from grelmicro.errors import OutOfContextError
from grelmicro.sync import LeaderElection, Lock, MemorySyncBackend, TaskLock
from grelmicro.sync.errors import BackendNotLoadedError
from grelmicro.task import TaskManager, TaskRouter
from grelmicro.task.errors import TaskAddOperationError
from tests.unit.conftest import CountingBackend, FailingBackend

pytestmark = pytest.mark.anyio


async def test_local_task_runs_repeatedly_with_gap_between_attempts() -> None:
    manager = TaskManager()
    starts: list[float] = []

    @manager.interval(seconds=0.05)
    async def tick() -> None:
        starts.append(time.monotonic())
        await anyio.sleep(0.02)

    async with manager:
        await anyio.sleep(0.4)
    assert 3 <= len(starts) <= 7
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # The wait is between the end of one attempt and the next: >= 0.02 + 0.05.
    assert min(gaps) >= 0.065


async def test_sync_function_runs_in_worker_thread() -> None:
    manager = TaskManager()
    threads: list[int] = []

    @manager.interval(seconds=0.01)
    def blocking() -> None:
        threads.append(threading.get_ident())
        time.sleep(0.01)

    async with manager:
        await anyio.sleep(0.1)
    assert threads
    assert threading.get_ident() not in threads


async def test_depends_injection_sync_and_async() -> None:
    manager = TaskManager()
    seen: list[tuple[str, int]] = []

    def settings() -> int:
        return 7

    async def async_dep(value: int = Depends(settings)) -> int:
        return value * 2

    @manager.interval(seconds=0.01)
    async def async_job(value: int = Depends(async_dep)) -> None:
        seen.append(("async", value))

    @manager.interval(seconds=0.01)
    def sync_job(value: int = Depends(settings)) -> None:
        seen.append(("sync", value))

    async with manager:
        await anyio.sleep(0.1)
    assert ("async", 14) in seen
    assert ("sync", 7) in seen


async def test_exception_is_logged_and_loop_continues(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = TaskManager()
    calls = 0

    @manager.interval(seconds=0.01, name="boom")
    async def boom() -> None:
        nonlocal calls
        calls += 1
        msg = "kaboom"
        raise RuntimeError(msg)

    with caplog.at_level(logging.ERROR, logger="grelmicro.task"):
        async with manager:
            await anyio.sleep(0.1)
    assert calls >= 3
    records = [
        r for r in caplog.records if r.getMessage() == "Task execution error: boom"
    ]
    assert len(records) == calls
    assert records[0].levelno == logging.ERROR
    assert records[0].exc_info is not None
    assert "kaboom" in caplog.text


async def test_sync_function_exception_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = TaskManager()

    @manager.interval(seconds=0.01, name="sync-boom")
    def boom() -> None:
        raise ValueError("bad")

    with caplog.at_level(logging.ERROR, logger="grelmicro.task"):
        async with manager:
            with anyio.fail_after(5):
                while "Task execution error: sync-boom" not in caplog.text:
                    await anyio.sleep(0.01)
    record = next(
        r for r in caplog.records if r.getMessage() == "Task execution error: sync-boom"
    )
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)


async def test_two_managers_share_backend_run_at_most_once_per_min_lock() -> None:
    backend = MemorySyncBackend()
    runs: list[tuple[str, float]] = []
    managers = [TaskManager(), TaskManager()]
    for index, manager in enumerate(managers):

        @manager.interval(
            seconds=0.02, max_lock_seconds=2, min_lock_seconds=0.2, name="shared"
        )
        async def shared(worker: str = f"w{index}") -> None:
            runs.append((worker, time.monotonic()))

    async with backend, managers[0], managers[1]:
        await anyio.sleep(1.05)
    times = [t for _, t in runs]
    assert 3 <= len(times) <= 6  # generous lower bound: a loaded machine is slow
    assert all(b - a >= 0.2 - 0.005 for a, b in itertools.pairwise(times))


async def test_locked_task_skips_while_other_worker_holds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = MemorySyncBackend()
    await backend.acquire(name="tasklock:held", token="other", duration=10)
    manager = TaskManager()
    runs = 0

    @manager.interval(seconds=0.01, max_lock_seconds=5, name="held")
    async def held() -> None:
        nonlocal runs
        runs += 1

    with caplog.at_level(logging.DEBUG, logger="grelmicro.task"):
        async with manager:
            await anyio.sleep(0.05)
    assert runs == 0
    skipped = [r for r in caplog.records if r.getMessage() == "Task skipped: held"]
    assert skipped
    assert skipped[0].levelno == logging.DEBUG


async def test_non_leader_never_touches_task_lock_or_resource_lock(
    counting_backend: CountingBackend,
) -> None:
    leader_backend = MemorySyncBackend(auto_register=False)
    other = LeaderElection(
        "election",
        backend=leader_backend,
        lease_duration=5,
        renew_deadline=4,
        retry_interval=0.05,
        backend_timeout=1,
    )
    mine = LeaderElection(
        "election",
        backend=leader_backend,
        lease_duration=5,
        renew_deadline=4,
        retry_interval=0.05,
        backend_timeout=1,
    )
    resource = Lock("resource", backend=counting_backend)
    manager = TaskManager()
    runs = 0

    @manager.interval(
        seconds=0.01, leader=mine, sync=resource, backend=counting_backend, name="g"
    )
    async def gated() -> None:
        nonlocal runs
        runs += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(other)
        await other.wait_for_leader()
        async with manager:
            await anyio.sleep(0.2)
            assert not mine.is_leader()
        tg.cancel_scope.cancel()
    assert runs == 0
    assert counting_backend.calls == []


async def test_leader_runs_and_acquisition_order(
    counting_backend: CountingBackend,
) -> None:
    leader = LeaderElection(
        "election",
        backend=counting_backend,
        lease_duration=5,
        renew_deadline=4,
        retry_interval=0.5,
        backend_timeout=1,
    )
    resource = Lock("res", backend=counting_backend)
    manager = TaskManager()
    runs = 0

    @manager.interval(seconds=0.5, leader=leader, sync=resource, name="ordered")
    async def ordered() -> None:
        nonlocal runs
        runs += 1

    manager.add_task(leader)
    async with counting_backend, manager:
        await leader.wait_for_leader()
        with anyio.fail_after(2):
            while runs == 0:
                await anyio.sleep(0.01)
    names = [kwargs["name"] for op, kwargs in counting_backend.calls if op == "acquire"]
    assert names.index("leader:election") < names.index("tasklock:ordered")
    assert names.index("tasklock:ordered") < names.index("lock:res")


async def test_leader_election_used_by_task_is_started_automatically() -> None:
    backend = MemorySyncBackend()
    leader = LeaderElection(
        "auto",
        lease_duration=2,
        renew_deadline=1,
        retry_interval=0.05,
        backend_timeout=0.5,
    )
    manager = TaskManager()
    ran = anyio.Event()

    @manager.interval(seconds=0.01, leader=leader)
    async def gated() -> None:
        ran.set()

    async with backend, manager:
        with anyio.fail_after(2):
            await ran.wait()
        assert leader.is_leader()
    assert not leader.is_leader()
    assert not await backend.locked(name="leader:auto")


async def test_resource_lock_held_skips_without_waiting() -> None:
    backend = MemorySyncBackend()
    resource = Lock("db")
    await backend.acquire(name="lock:db", token="someone", duration=10)
    manager = TaskManager()
    runs = 0

    @manager.interval(seconds=0.01, sync=resource)
    async def job() -> None:
        nonlocal runs
        runs += 1

    async with manager:
        await anyio.sleep(0.05)
    assert runs == 0
    await backend.release(name="lock:db", token="someone")
    async with TaskManager(tasks=manager.tasks):
        await anyio.sleep(0.05)
    assert runs >= 1
    assert not await backend.locked(name="lock:db")


async def test_backend_error_is_logged_and_loop_continues(
    failing_backend: FailingBackend, caplog: pytest.LogCaptureFixture
) -> None:
    manager = TaskManager()
    runs = 0

    @manager.interval(
        seconds=0.01,
        max_lock_seconds=1,
        min_lock_seconds=0.01,
        backend=failing_backend,
        name="flaky",
    )
    async def flaky() -> None:
        nonlocal runs
        runs += 1

    failing_backend.failing = True
    with caplog.at_level(logging.DEBUG, logger="grelmicro.task"):
        async with manager:
            await anyio.sleep(0.1)
            assert runs == 0
            failing_backend.failing = False
            await anyio.sleep(0.1)
    assert runs >= 1
    errors = [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR
        and r.getMessage() == "Task synchronization error: flaky"
    ]
    # Logged at ERROR once, repeats throttled (DEBUG) instead of once per tick.
    assert len(errors) == 1
    assert errors[0].exc_info is not None


async def test_no_backend_loaded_fails_before_any_task_starts() -> None:
    manager = TaskManager()
    runs = 0

    @manager.interval(seconds=0.01, name="local")
    async def local() -> None:
        nonlocal runs
        runs += 1

    @manager.interval(seconds=0.01, max_lock_seconds=1, name="nobackend")
    async def job() -> None: ...

    with pytest.raises(BackendNotLoadedError, match="nobackend"):
        async with manager:
            pytest.fail("entered without a backend")
    await anyio.sleep(0.02)
    assert runs == 0


async def test_backend_unloaded_while_running_is_logged_as_sync_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = MemorySyncBackend()
    manager = TaskManager()

    @manager.interval(
        seconds=0.01, max_lock_seconds=1, min_lock_seconds=0.01, name="gone"
    )
    async def job() -> None: ...

    with caplog.at_level(logging.ERROR, logger="grelmicro.task"):
        async with manager:
            await backend.__aexit__(None, None, None)  # no default any more
            await anyio.sleep(0.05)
    record = next(
        r
        for r in caplog.records
        if r.getMessage() == "Task synchronization error: gone"
    )
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], BackendNotLoadedError)


async def test_long_task_warns_naming_task(caplog: pytest.LogCaptureFixture) -> None:
    MemorySyncBackend()
    manager = TaskManager()

    @manager.interval(seconds=0.05, max_lock_seconds=0.05, name="slowpoke")
    async def slow() -> None:
        await anyio.sleep(0.1)

    with caplog.at_level(logging.WARNING, logger="grelmicro.task"):
        async with manager:
            await anyio.sleep(0.15)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("slowpoke" in r.getMessage() for r in warnings)


async def test_start_outside_context_raises() -> None:
    manager = TaskManager(auto_start=False)
    with pytest.raises(OutOfContextError):
        await manager.start()


async def test_auto_start_false_waits_for_start() -> None:
    manager = TaskManager(auto_start=False)
    runs = 0

    @manager.interval(seconds=0.01)
    async def job() -> None:
        nonlocal runs
        runs += 1

    async with manager:
        await anyio.sleep(0.05)
        assert runs == 0
        await manager.start()
        await anyio.sleep(0.05)
    assert runs >= 1


async def test_add_after_start_raises() -> None:
    manager = TaskManager()
    router = TaskRouter()
    manager.include_router(router)
    async with manager:
        with pytest.raises(TaskAddOperationError):
            manager.add_task(LeaderElection("late"))
        with pytest.raises(TaskAddOperationError):
            router.interval(seconds=1)(lambda: None)


async def test_exit_cancels_tasks_and_releases_locks() -> None:
    backend = MemorySyncBackend()
    resource = Lock("res")
    manager = TaskManager()
    started = anyio.Event()
    cancelled = False

    @manager.interval(
        seconds=1, max_lock_seconds=30, min_lock_seconds=0.1, sync=resource, name="long"
    )
    async def long() -> None:
        nonlocal cancelled
        started.set()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            cancelled = True
            raise

    with anyio.fail_after(5):
        async with manager:
            await started.wait()
            await anyio.sleep(0.15)  # past min_lock_seconds: released on exit
            assert await backend.locked(name="lock:res")
            assert await backend.locked(name="tasklock:long")
    assert cancelled
    assert not await backend.locked(name="lock:res")
    assert not await backend.locked(name="tasklock:long")


async def test_exit_keeps_only_remaining_min_lock_hold() -> None:
    backend = MemorySyncBackend()
    manager = TaskManager()
    ran = anyio.Event()

    @manager.interval(seconds=0.01, max_lock_seconds=30, min_lock_seconds=0.3, name="m")
    async def quick() -> None:
        ran.set()

    async with manager:
        await ran.wait()
    assert await backend.locked(name="tasklock:m")
    await anyio.sleep(0.35)
    assert not await backend.locked(name="tasklock:m")


async def test_module_level_primitives_resolve_backend_at_first_use() -> None:
    # Created before any backend exists, like a module-level declaration.
    lock = Lock("late-bound")
    task_lock = TaskLock("late-bound")
    with pytest.raises(BackendNotLoadedError, match="async with backend"):
        await lock.acquire()
    backend = MemorySyncBackend(auto_register=False)
    async with backend:
        async with lock:
            assert await backend.locked(name="lock:late-bound")
        async with task_lock:
            assert await backend.owned(
                name="tasklock:late-bound", token=task_lock.worker
            )


async def test_manager_reentry_after_exit() -> None:
    manager = TaskManager()
    runs = 0

    @manager.interval(seconds=0.01)
    async def job() -> None:
        nonlocal runs
        runs += 1

    async with manager:
        await anyio.sleep(0.03)
    first = runs
    async with manager:
        await anyio.sleep(0.03)
    assert runs > first


async def test_manager_entered_twice_concurrently_fails() -> None:
    manager = TaskManager()
    async with manager:
        with pytest.raises(RuntimeError, match="already entered"):
            await manager.__aenter__()


def test_manager_rejects_unknown_broker() -> None:
    with pytest.raises(TypeError, match="RedisBroker"):
        TaskManager(broker=object())


async def test_interval_task_runs_standalone_in_a_task_group() -> None:
    router = TaskRouter()
    runs = 0

    @router.interval(seconds=0.01)
    async def job() -> None:
        nonlocal runs
        runs += 1

    (task,) = router.tasks
    async with anyio.create_task_group() as tg:
        await tg.start(task)
        await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert runs >= 2


async def test_same_task_never_overlaps_itself() -> None:
    manager = TaskManager()
    active = 0
    max_active = 0
    runs = 0

    @manager.interval(seconds=0.001)
    async def slow() -> None:
        nonlocal active, max_active, runs
        active += 1
        max_active = max(max_active, active)
        await anyio.sleep(0.02)
        active -= 1
        runs += 1

    async with manager:
        await anyio.sleep(0.15)
    assert runs >= 3
    assert max_active == 1


async def test_many_tasks_all_run() -> None:
    manager = TaskManager()
    seen: set[int] = set()
    for index in range(500):

        @manager.interval(seconds=0.05, name=f"t{index}")
        async def job(index: int = index) -> None:
            seen.add(index)

    async with manager:
        await anyio.sleep(0.1)
    assert seen == set(range(500))


async def test_quick_locked_run_costs_one_backend_call(
    counting_backend: CountingBackend,
) -> None:
    manager = TaskManager()
    runs = 0

    @manager.interval(
        seconds=0.01,
        max_lock_seconds=5,
        min_lock_seconds=0.3,
        backend=counting_backend,
        name="quick",
    )
    async def quick() -> None:
        nonlocal runs
        runs += 1

    async with manager:
        await anyio.sleep(0.2)
        assert runs == 1
        # One acquire for the minimum hold; the server expires it by itself.
        assert [op for op, _ in counting_backend.calls] == ["acquire"]
        assert await counting_backend.locked(name="tasklock:quick")
        await anyio.sleep(0.15)
        assert runs == 2


async def test_long_locked_run_extends_to_max_then_releases(
    counting_backend: CountingBackend,
) -> None:
    manager = TaskManager()
    other = MemorySyncBackend(auto_register=False)
    done = anyio.Event()

    @manager.interval(
        seconds=5,
        max_lock_seconds=5,
        min_lock_seconds=0.1,
        backend=counting_backend,
        name="long",
    )
    async def long() -> None:
        await anyio.sleep(0.25)  # past the minimum hold
        assert await counting_backend.owned(
            name="tasklock:long", token=task_lock.worker
        )
        done.set()

    task_lock = manager.tasks[0].task_lock  # type: ignore[attr-defined]
    async with manager:
        await done.wait()
        await anyio.sleep(0.05)
    ops = [op for op, _ in counting_backend.calls if op in ("acquire", "release")]
    assert ops == ["acquire", "acquire", "release"]
    assert not await counting_backend.locked(name="tasklock:long")
    assert not await other.locked(name="tasklock:long")
