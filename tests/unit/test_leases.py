"""Every lease accounted for (issue 9), on the memory backend with faults.

`LateBackend` applies a call at once and answers late (or never): the server
applied it, the caller did not hear back. Each test names the case it proves.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from typing import Any

import anyio
import pytest

from grelmicro.sync import LeaderElection, Lock, MemorySyncBackend, TaskLock
from grelmicro.sync.errors import LockAcquireError
from grelmicro.task import TaskManager, _interval

pytestmark = pytest.mark.anyio


class LateBackend(MemorySyncBackend):
    """Applies `acquire` at once, answers `late` seconds later (inf: never).

    `late_when(duration)` chooses which acquisitions answer late.
    """

    def __init__(self) -> None:
        super().__init__(auto_register=False)
        self.late = 0.0
        self.late_when: Any = lambda duration: True
        self.acquires = 0

    async def acquire(self, *, name: str, token: str, duration: float) -> bool:
        self.acquires += 1
        answer = await super().acquire(name=name, token=token, duration=duration)
        if self.late and self.late_when(duration):
            if math.isinf(self.late):
                await anyio.sleep_forever()
            await anyio.sleep(self.late)
        return answer


# Case 1: a late answer to an acquire whose caller gave up -------------------------


async def test_cancelled_lock_acquire_frees_the_lock_at_once() -> None:
    backend = LateBackend()
    backend.late = math.inf
    lock = Lock("res", backend=backend, lease_duration=60)
    with anyio.move_on_after(0.1):
        await lock.acquire()
    # Applied on the server, but its caller is gone: given back already.
    assert not await backend.locked(name="lock:res")
    assert lock.fencing_token is None


async def test_timed_out_lock_acquire_frees_the_lock() -> None:
    backend = LateBackend()
    backend.late = math.inf
    lock = Lock("res", backend=backend, lease_duration=60)
    lock._timeout = 0.1
    with pytest.raises(LockAcquireError):
        await lock.acquire_nowait()
    assert not await backend.locked(name="lock:res")


async def test_follower_acquire_in_flight_at_shutdown_is_given_back() -> None:
    backend = LateBackend()
    leader = LeaderElection(
        "e",
        backend=backend,
        lease_duration=30,
        renew_deadline=2,
        retry_interval=0.05,
        backend_timeout=1,
    )
    backend.late = math.inf  # the very first acquire never answers
    async with TaskManager(tasks=[leader]):
        await anyio.sleep(0.1)
        assert backend.acquires == 1
        assert await backend.locked(name="leader:e")
    assert not leader.is_leader()
    assert not await backend.locked(name="leader:e")


async def test_cancelled_task_lock_acquire_is_given_back() -> None:
    backend = LateBackend()
    backend.late = math.inf
    task_lock = TaskLock("t", backend=backend, min_lock_seconds=5, max_lock_seconds=30)
    with anyio.move_on_after(0.1):
        await task_lock.try_acquire()
    assert not await backend.locked(name="tasklock:t")
    # And the TaskLock can be taken again by this worker.
    backend.late = 0
    assert await task_lock.try_acquire()


# Case 2: an extension in flight when a run ends -------------------------------------


async def test_run_ending_while_its_extension_is_in_flight_keeps_min_hold_only() -> (
    None
):
    backend = LateBackend()
    min_lock, max_lock = 0.3, 10.0
    # Extensions (longer than the minimum hold) answer 1 s late.
    backend.late = 1.0
    backend.late_when = lambda duration: duration > min_lock + 0.01
    manager = TaskManager()
    started: list[float] = []

    @manager.interval(
        seconds=5,
        max_lock_seconds=max_lock,
        min_lock_seconds=min_lock,
        backend=backend,
        name="ext",
    )
    async def job() -> None:
        started.append(time.monotonic())
        await anyio.sleep(0.2)  # past halfway (0.15 s): an extension goes out

    freed_at = None
    async with manager:
        with anyio.fail_after(5):
            while not started:
                await anyio.sleep(0.01)
            while await backend.locked(name="tasklock:ext"):
                await anyio.sleep(0.01)
        freed_at = time.monotonic()
    # The lock ends min_lock_seconds after the run's start (0.3 s), not when
    # the late extension answers, and never at max_lock_seconds.
    held = freed_at - started[0]
    assert held < min_lock + 0.2, held


# Case 3: a late confirmation ----------------------------------------------------------


async def test_late_confirmation_gives_the_lock_back() -> None:
    backend = LateBackend()
    backend.late = 0.15  # every answer later than half of the 0.2 s hold
    task_lock = TaskLock("t", backend=backend, min_lock_seconds=0.2, max_lock_seconds=5)
    assert not await task_lock.try_acquire(hold=0.2)
    assert backend.acquires == 2  # the first answer, then its confirmation
    # Not kept by a worker that does not run: free for the next one.
    assert not await backend.locked(name="tasklock:t")


# Case 4: an extension after a gap is a loss ---------------------------------------------


async def test_task_lock_extension_after_a_gap_is_a_loss() -> None:
    backend = MemorySyncBackend(auto_register=False)
    task_lock = TaskLock(
        "t", backend=backend, worker="w1", min_lock_seconds=0.1, max_lock_seconds=5
    )
    assert await task_lock.try_acquire(hold=0.1)
    first = task_lock.fencing_token
    await anyio.sleep(0.15)  # the hold lapses...
    assert await backend.acquire(name="tasklock:t", token="w2", duration=1)
    assert await backend.release(name="tasklock:t", token="w2")  # ...and w2 ran
    # `acquire` takes the free lock again: that is not an extension.
    assert not await task_lock.extend()
    assert task_lock.fencing_token is not None
    assert first is not None
    assert task_lock.fencing_token > first
    await task_lock.release()


async def test_leader_renewal_after_a_gap_ends_the_term(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = MemorySyncBackend(auto_register=False)
    leader = LeaderElection(
        "e",
        backend=backend,
        lease_duration=0.3,
        renew_deadline=0.25,
        retry_interval=0.05,
        backend_timeout=0.1,
    )
    with caplog.at_level(logging.WARNING, logger="grelmicro.sync"):
        await leader._round()
        assert leader.is_leader()
        term, token = leader.term, leader.fencing_token
        # The lease lapses and another worker leads in between.
        backend._locks.clear()
        assert await backend.acquire(name="leader:e", token="other", duration=1)
        assert await backend.release(name="leader:e", token="other")
        await leader._round()
    assert leader.is_leader()
    assert leader.term == term + 1
    assert token is not None
    assert leader.fencing_token is not None
    assert leader.fencing_token > token + 1
    assert any("lapsed" in r.getMessage() for r in caplog.records)


# Case 6: one TaskLock entered by two coroutines of one worker --------------------------


async def test_task_lock_admits_one_coroutine_of_a_worker() -> None:
    backend = MemorySyncBackend(auto_register=False)
    task_lock = TaskLock("t", backend=backend, min_lock_seconds=0.01)
    inside = 0
    most = 0
    blocked = 0

    async def enter() -> None:
        nonlocal inside, most, blocked
        try:
            async with task_lock:
                inside += 1
                most = max(most, inside)
                await anyio.sleep(0.05)
                inside -= 1
        except anyio.WouldBlock:
            blocked += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(enter)
        tg.start_soon(enter)
    assert most == 1
    assert blocked == 1


# Case 7: holder tokens are unique for the life of the process --------------------------


async def test_a_new_task_never_owns_a_dead_task_lock() -> None:
    backend = MemorySyncBackend(auto_register=False)
    lock = Lock("res", backend=backend)
    tokens = []

    async def take() -> None:
        await lock.acquire()  # and never release: the task just ends
        tokens.append(lock._task_token())

    for _ in range(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(take)
        gc.collect()
        # Whatever task runs now (its id may be a dead one's), it does not
        # own the dead task's lock.
        assert not await lock.owned()
        await backend.release(name="lock:res", token=tokens[-1])
    assert len(set(tokens)) == len(tokens)


# Case 8: a name the backend cannot store fails at start --------------------------------


async def test_bad_name_fails_when_the_manager_starts() -> None:
    from grelmicro.sync.errors import SyncSettingsValidationError

    class ShortKeys(MemorySyncBackend):
        def check_name(self, name: str) -> None:
            if len(name) > 20:
                msg = f"name too long for this backend: {name!r}"
                raise SyncSettingsValidationError(msg)

    backend = ShortKeys(auto_register=False)
    manager = TaskManager()

    @manager.interval(
        seconds=1, max_lock_seconds=5, backend=backend, name="a-very-long-task-name"
    )
    async def job() -> None: ...

    with pytest.raises(SyncSettingsValidationError, match="a-very-long-task-name"):
        async with manager:
            pass


# Case 10: the memory backend forgets what expired ---------------------------------------


async def test_memory_backend_forgets_release_events_of_expired_keys() -> None:
    backend = MemorySyncBackend(auto_register=False)
    assert await backend.acquire(name="k", token="a", duration=0.05)
    with anyio.fail_after(1):
        await backend.wait_released(name="k")
    assert not backend._release_events
    assert not backend._locks


# Case 11: a sync function stuck in its thread does not block shutdown ------------------


async def test_stuck_sync_task_does_not_block_shutdown(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_interval, "SYNC_STOP_TIMEOUT", 0.3)
    manager = TaskManager()
    release = threading.Event()
    entered = threading.Event()

    @manager.interval(seconds=1, name="stuck")
    def stuck() -> None:
        entered.set()
        release.wait(10)

    try:
        with caplog.at_level(logging.WARNING, logger="grelmicro.task"):
            async with manager:
                with anyio.fail_after(2):
                    while not entered.is_set():
                        await anyio.sleep(0.01)
                exit_started = time.monotonic()
            took = time.monotonic() - exit_started
    finally:
        release.set()
    # Bounded by SYNC_STOP_TIMEOUT (0.3 s here), not by the 10 s the thread waits.
    assert took < 2.0, took
    messages = [r.getMessage() for r in caplog.records]
    assert any("stuck" in m and "worker thread" in m for m in messages), messages
