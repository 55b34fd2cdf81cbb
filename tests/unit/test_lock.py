"""Lock and TaskLock on the memory backend."""

from __future__ import annotations

import time

import anyio
import anyio.to_thread
import pytest

from grelmicro.errors import GrelmicroError
from grelmicro.sync import Lock, MemorySyncBackend, TaskLock
from grelmicro.sync.errors import (
    BackendNotLoadedError,
    LockAcquireError,
    LockNotOwnedError,
    LockReleaseError,
    SyncBackendError,
)
from tests.unit.conftest import FailingBackend

pytestmark = pytest.mark.anyio


@pytest.fixture
def backend() -> MemorySyncBackend:
    return MemorySyncBackend()


async def test_lock_context_manager(backend: MemorySyncBackend) -> None:
    lock = Lock("res")
    assert not await lock.locked()
    async with lock:
        assert await lock.locked()
        assert await lock.owned()
        assert await backend.locked(name="lock:res")
    assert not await lock.locked()


async def test_lock_excludes_other_tasks_of_same_worker(
    backend: MemorySyncBackend,
) -> None:
    lock = Lock("res", retry_interval=0.01)
    order: list[str] = []

    async def holder() -> None:
        async with lock:
            order.append("a-in")
            await anyio.sleep(0.1)
            order.append("a-out")

    async def waiter() -> None:
        await anyio.sleep(0.02)
        async with lock:
            order.append("b-in")

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        tg.start_soon(waiter)
    assert order == ["a-in", "a-out", "b-in"]


async def test_acquire_nowait_raises_would_block(backend: MemorySyncBackend) -> None:
    mine, theirs = Lock("res"), Lock("res")
    await theirs.acquire()
    with pytest.raises(anyio.WouldBlock):
        await mine.acquire_nowait()
    assert not await mine.owned()
    await theirs.release()
    await mine.acquire_nowait()
    assert await mine.owned()


async def test_release_not_owned_raises(backend: MemorySyncBackend) -> None:
    lock = Lock("res")
    with pytest.raises(LockNotOwnedError) as info:
        await lock.release()
    assert isinstance(info.value, LockReleaseError)
    assert "res" in str(info.value)


async def test_lease_expires(backend: MemorySyncBackend) -> None:
    holder = Lock("res", lease_duration=0.05)
    other = Lock("res", retry_interval=0.01)
    await holder.acquire()
    start = time.monotonic()
    with anyio.fail_after(1):
        await other.acquire()
    assert time.monotonic() - start >= 0.04


async def test_same_task_reacquire_extends(backend: MemorySyncBackend) -> None:
    lock = Lock("res")
    await lock.acquire()
    await lock.acquire_nowait()
    assert await lock.owned()
    await lock.release()
    assert not await lock.locked()


async def test_lock_from_thread(backend: MemorySyncBackend) -> None:
    lock = Lock("res", retry_interval=0.01)

    def in_thread() -> tuple[bool, bool, bool]:
        with lock.from_thread:
            owned = lock.from_thread.owned()
            locked = lock.from_thread.locked()
        return owned, locked, lock.from_thread.locked()

    owned, locked, after = await anyio.to_thread.run_sync(in_thread)
    assert (owned, locked, after) == (True, True, False)

    await lock.acquire()

    def try_nowait() -> None:
        lock.from_thread.acquire_nowait()

    with pytest.raises(anyio.WouldBlock):
        await anyio.to_thread.run_sync(try_nowait)
    # The task's ownership is not the thread's.
    assert not await anyio.to_thread.run_sync(lambda: lock.from_thread.owned())
    await lock.release()


async def test_backend_error_wrapped_with_lock_name() -> None:
    failing = FailingBackend()
    failing.failing = True
    lock = Lock("res", backend=failing)
    with pytest.raises(LockAcquireError, match="res") as info:
        await lock.acquire()
    assert isinstance(info.value, SyncBackendError)
    assert isinstance(info.value, GrelmicroError)
    assert isinstance(info.value.__cause__, ConnectionError)
    with pytest.raises(LockReleaseError, match="res"):
        await lock.release()
    with pytest.raises(SyncBackendError, match="res"):
        await lock.locked()
    with pytest.raises(SyncBackendError, match="res"):
        await lock.owned()


async def test_hanging_backend_times_out() -> None:
    class Hanging(MemorySyncBackend):
        async def acquire(self, *, name: str, token: str, duration: float) -> bool:
            await anyio.sleep_forever()
            raise AssertionError

    lock = Lock("res", backend=Hanging(auto_register=False))
    lock._timeout = 0.05
    with anyio.fail_after(2), pytest.raises(LockAcquireError) as info:
        await lock.acquire()
    assert isinstance(info.value.__cause__, TimeoutError)


async def test_no_backend_raises_not_loaded_itself() -> None:
    lock = Lock("res")
    with pytest.raises(BackendNotLoadedError) as info:
        await lock.acquire()
    assert not isinstance(info.value, LockAcquireError)
    assert "MemorySyncBackend" in str(info.value)


async def test_explicit_backend_wins_over_default(backend: MemorySyncBackend) -> None:
    other = MemorySyncBackend(auto_register=False)
    lock = Lock("res", backend=other)
    async with lock:
        assert await other.locked(name="lock:res")
        assert not await backend.locked(name="lock:res")


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"lease_duration": 0}, "lease_duration"),
        ({"retry_interval": -1}, "retry_interval"),
        ({"worker": ""}, "worker"),
        ({"backend": "redis://"}, "backend"),
    ],
)
def test_lock_validation(kwargs: dict[str, object], param: str) -> None:
    with pytest.raises(ValueError, match=param):
        Lock("res", **kwargs)  # type: ignore[arg-type]


def test_lock_name_validation() -> None:
    with pytest.raises(ValueError, match="name"):
        Lock("")


# TaskLock ---------------------------------------------------------------------


async def test_task_lock_is_non_blocking(backend: MemorySyncBackend) -> None:
    first, second = TaskLock("job"), TaskLock("job")
    async with first:
        with pytest.raises(anyio.WouldBlock):
            async with second:
                pytest.fail("entered a held task lock")


async def test_task_lock_keeps_min_hold(backend: MemorySyncBackend) -> None:
    first = TaskLock("job", min_lock_seconds=0.2, max_lock_seconds=5)
    second = TaskLock("job", min_lock_seconds=0.2, max_lock_seconds=5)
    async with first:
        pass
    assert await first.locked()
    with pytest.raises(anyio.WouldBlock):
        await second.__aenter__()
    await anyio.sleep(0.25)
    assert not await first.locked()
    async with second:
        assert await second.owned()


async def test_task_lock_releases_after_min(backend: MemorySyncBackend) -> None:
    lock = TaskLock("job", min_lock_seconds=0.05, max_lock_seconds=5)
    async with lock:
        await anyio.sleep(0.06)
    assert not await lock.locked()


async def test_task_lock_expires_at_max(backend: MemorySyncBackend) -> None:
    crashed = TaskLock("job", min_lock_seconds=0.05, max_lock_seconds=0.1)
    assert await crashed.try_acquire()
    other = TaskLock("job", min_lock_seconds=0.05, max_lock_seconds=0.1)
    assert not await other.try_acquire()
    await anyio.sleep(0.12)
    assert await other.try_acquire()


async def test_task_lock_same_worker_not_rerun_within_min(
    backend: MemorySyncBackend,
) -> None:
    lock = TaskLock("job", min_lock_seconds=0.2, max_lock_seconds=5)
    async with lock:
        pass
    # Same worker, same token: it must still wait out its own minimum hold.
    assert not await lock.try_acquire()
    await anyio.sleep(0.21)
    assert await lock.try_acquire()


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"min_lock_seconds": 0}, "min_lock_seconds"),
        ({"max_lock_seconds": -1}, "max_lock_seconds"),
        ({"min_lock_seconds": 10, "max_lock_seconds": 5}, "min_lock_seconds"),
    ],
)
def test_task_lock_validation(kwargs: dict[str, object], param: str) -> None:
    with pytest.raises(ValueError, match=param):
        TaskLock("job", **kwargs)  # type: ignore[arg-type]


def test_default_task_lock_settings() -> None:
    lock = TaskLock("job")
    assert lock.min_lock_seconds == 1
    assert lock.max_lock_seconds == 60
    lock2 = Lock("job")
    assert lock2.lease_duration == 60
    assert lock2.retry_interval == 0.1


async def test_waiting_lock_wakes_on_release(backend: MemorySyncBackend) -> None:
    holder = Lock("res")
    waiter = Lock("res", retry_interval=5)
    released_at = 0.0
    held = anyio.Event()

    async def hold_then_release() -> None:
        nonlocal released_at
        async with holder:
            held.set()
            await anyio.sleep(0.05)
            released_at = time.monotonic()

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold_then_release)
        await held.wait()
        with anyio.fail_after(2):
            await waiter.acquire()
        acquired_at = time.monotonic()
    assert acquired_at - released_at < 0.5  # not the 5 s retry_interval


class SlowReleaseBackend(MemorySyncBackend):
    """Releases take `delay` seconds after being applied (a late answer)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.releases = 0

    async def release(self, *, name: str, token: str) -> bool:
        released = await super().release(name=name, token=token)
        self.releases += 1
        await anyio.sleep(self.delay)
        return released


async def test_lock_exit_cancelled_mid_release_still_releases() -> None:
    """The scope is cancelled while the exit's release waits for its answer:
    the release is made again, shielded (the first one was applied: "not
    owned" is no error then), and the cancellation goes on."""
    backend = SlowReleaseBackend(delay=0.2)
    lock = Lock("res", backend=backend, lease_duration=60)
    with anyio.CancelScope() as scope:
        async with lock:
            scope.deadline = anyio.current_time() + 0.05
        pytest.fail("the exit must raise the cancellation")  # pragma: no cover
    assert scope.cancelled_caught
    assert not await backend.locked(name="lock:res")
    assert backend.releases == 2
    assert lock.fencing_token is None
    # Usable again at once.
    async with lock:
        assert await lock.owned()


async def test_lock_exit_after_an_error_is_shielded_and_keeps_the_error() -> None:
    backend = SlowReleaseBackend(delay=0.1)
    lock = Lock("res", backend=backend, lease_duration=60)

    async def body() -> None:
        with anyio.CancelScope() as scope:
            async with lock:
                scope.deadline = anyio.current_time() + 0.02
                msg = "body"
                raise ValueError(msg)

    with pytest.raises(ValueError, match="body"):
        await body()
    assert not await backend.locked(name="lock:res")
    assert backend.releases == 1


async def test_backend_call_deadlines() -> None:
    """A call past its timeout raises the primitive's error (caused by a
    TimeoutError); a cancellation from outside stays a cancellation; calls
    with different timeouts each get theirs."""
    from grelmicro.sync._primitive import call_backend

    def error() -> SyncBackendError:
        return LockAcquireError(name="x", token="t")

    async def slow() -> None:
        await anyio.sleep(5)

    started = time.monotonic()
    with pytest.raises(LockAcquireError) as info:
        await call_backend(slow, error, 0.1)
    assert 0.09 <= time.monotonic() - started < 1
    assert isinstance(info.value.__cause__, TimeoutError)

    outcomes: dict[float, float] = {}

    async def bounded_by(timeout: float) -> None:
        begun = time.monotonic()
        with pytest.raises(LockAcquireError):
            await call_backend(slow, error, timeout)
        outcomes[timeout] = time.monotonic() - begun

    async with anyio.create_task_group() as group:
        group.start_soon(bounded_by, 0.3)
        group.start_soon(bounded_by, 0.1)  # earlier than the pending timer
    assert 0.09 <= outcomes[0.1] < 0.25
    assert 0.29 <= outcomes[0.3] < 0.6

    with anyio.move_on_after(0.05) as scope:
        await call_backend(slow, error, 5)
    assert scope.cancelled_caught
