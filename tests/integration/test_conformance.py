"""One conformance suite for every backend: memory, Redis and NATS JetStream KV.

Each test runs once per backend (ids ``memory``, ``redis``, ``nats``) on a
fresh namespace. Timings respect the slowest backend: NATS takes TTLs of 1 s
and more and expires keys on a coarse sweep, so expiry is checked by polling
with a generous deadline, never with a fixed sleep.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from uuid import uuid4

import anyio
import anyio.to_thread
import pytest

from grelmicro.sync import LeaderElection, Lock, TaskLock
from grelmicro.sync.abc import SyncBackend
from grelmicro.sync.errors import LockNotOwnedError
from grelmicro.task import TaskManager
from tests.integration.conftest import (
    SERVER_KINDS,
    BackendCase,
    server_url,
    unique_namespace,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

ROOT = Path(__file__).resolve().parents[2]


def name() -> str:
    """A lock name no other test uses."""
    return f"conformance-{uuid4().hex[:8]}"


def fast_path(backend: SyncBackend) -> Callable[..., object] | None:
    """The backend's optional `acquire_or_remaining`, if it has one."""
    method = getattr(backend, "acquire_or_remaining", None)
    return method if callable(method) else None


# Backend protocol ---------------------------------------------------------------


async def test_acquire_free_lock(backend: SyncBackend) -> None:
    key = name()
    assert not await backend.locked(name=key)
    assert not await backend.owned(name=key, token="a")
    assert await backend.acquire(name=key, token="a", duration=10)
    assert await backend.locked(name=key)
    assert await backend.owned(name=key, token="a")
    assert not await backend.owned(name=key, token="b")


async def test_other_token_is_rejected(backend: SyncBackend) -> None:
    key = name()
    assert await backend.acquire(name=key, token="a", duration=10)
    assert not await backend.acquire(name=key, token="b", duration=10)
    assert not await backend.owned(name=key, token="b")
    assert await backend.owned(name=key, token="a")


async def test_same_token_extends(backend_case: BackendCase) -> None:
    backend, key = backend_case.backend, name()
    assert await backend.acquire(name=key, token="a", duration=backend_case.ttl)
    assert await backend.acquire(name=key, token="a", duration=30)
    # Past the first lease and the server's expiry sweep: still held.
    await anyio.sleep(backend_case.ttl + backend_case.slack + 0.2)
    assert await backend.owned(name=key, token="a")
    assert not await backend.acquire(name=key, token="b", duration=10)


async def test_same_token_can_shorten_the_lease(backend_case: BackendCase) -> None:
    # TaskLock relies on this to keep only what is left of min_lock_seconds.
    backend, key = backend_case.backend, name()
    assert await backend.acquire(name=key, token="a", duration=60)
    assert await backend.acquire(name=key, token="a", duration=backend_case.ttl)
    assert await backend.locked(name=key)
    await wait_for(
        lambda: backend.acquire(name=key, token="b", duration=10),
        backend_case.expiry_deadline(backend_case.ttl),
    )
    assert not await backend.owned(name=key, token="a")


async def test_release_by_owner_only(backend: SyncBackend) -> None:
    key = name()
    assert await backend.acquire(name=key, token="a", duration=10)
    assert not await backend.release(name=key, token="b")
    assert await backend.owned(name=key, token="a")
    assert await backend.release(name=key, token="a")
    assert not await backend.locked(name=key)
    assert not await backend.release(name=key, token="a")
    # Free again: anyone can take it right away.
    assert await backend.acquire(name=key, token="b", duration=10)


async def test_release_of_a_free_lock(backend: SyncBackend) -> None:
    assert not await backend.release(name=name(), token="a")


async def test_expiry(backend_case: BackendCase) -> None:
    backend, key = backend_case.backend, name()
    assert await backend.acquire(name=key, token="a", duration=backend_case.ttl)
    assert await backend.locked(name=key)
    took = await wait_for(
        lambda: backend.acquire(name=key, token="b", duration=10),
        backend_case.expiry_deadline(backend_case.ttl),
    )
    assert took > 0
    assert not await backend.owned(name=key, token="a")
    assert await backend.owned(name=key, token="b")
    assert not await backend.release(name=key, token="a")


async def test_names_are_independent(backend: SyncBackend) -> None:
    key = name()
    assert await backend.acquire(name=key, token="a", duration=10)
    assert await backend.acquire(name=f"{key}-other", token="b", duration=10)
    assert not await backend.locked(name=f"{key}-free")


async def test_any_name_and_token_works(backend: SyncBackend) -> None:
    # Default task names look like "<module>:<qualname>" (with "<locals>"),
    # Lock tokens like "<worker>/task-<id>": the backend must take any string
    # and keep distinct names distinct.
    tag = uuid4().hex[:6]
    names = [
        f"tasklock:app.tasks:outer.<locals>.job-{tag}",
        f"lock:with space/and.dots-{tag}",
        f"lock:with space/and-dots-{tag}",
        f"lock:ünïcödé ✓-{tag}",
        f"lock:a*b>c-{tag}",
        f"lock:A*B>C-{tag}",
        f"leader:{'x' * 200}-{tag}",
    ]
    for index, key in enumerate(names):
        token = f"worker-{index}/task-1234"
        assert await backend.acquire(name=key, token=token, duration=10), key
    for index, key in enumerate(names):
        assert await backend.owned(name=key, token=f"worker-{index}/task-1234"), key
    for index, key in enumerate(names):
        assert await backend.release(name=key, token=f"worker-{index}/task-1234")
        assert not await backend.locked(name=key), key


async def test_concurrent_acquire_has_one_winner(backend_case: BackendCase) -> None:
    backend, key = backend_case.backend, name()
    others = [backend_case.make() for _ in range(3)]
    for other in others:
        await other.__aenter__()
    clients = [backend, *others]
    results: list[bool] = []

    async def contend(index: int) -> None:
        client = clients[index % len(clients)]
        results.append(await client.acquire(name=key, token=f"t{index}", duration=10))

    async with anyio.create_task_group() as group:
        for index in range(16):
            group.start_soon(contend, index)
    assert results.count(True) == 1


async def test_primitive_namespaces_do_not_collide(backend: SyncBackend) -> None:
    shared = name()
    lock = Lock(shared, backend=backend, worker="w1")
    task_lock = TaskLock(shared, backend=backend, worker="w2", max_lock_seconds=10)
    leader = LeaderElection(
        shared,
        backend=backend,
        worker="w3",
        lease_duration=10,
        renew_deadline=5,
        retry_interval=0.1,
        backend_timeout=2,
    )
    await lock.acquire()
    assert await task_lock.try_acquire()
    async with anyio.create_task_group() as group:
        group.start_soon(leader)
        with anyio.fail_after(5):
            await leader.wait_for_leader()
        assert await backend.owned(name=f"lock:{shared}", token=lock._task_token())
        assert await backend.owned(name=f"tasklock:{shared}", token="w2")
        assert await backend.owned(name=f"leader:{shared}", token="w3")
        assert not await backend.locked(name=shared)
        group.cancel_scope.cancel()
    await lock.release()
    await task_lock.release()


async def test_acquire_or_remaining(backend_case: BackendCase) -> None:
    backend, key = backend_case.backend, name()
    method = fast_path(backend)
    if method is None:
        pytest.skip(f"the {backend_case.kind} backend has no acquire_or_remaining")
    assert await method(name=key, token="a", duration=5) == 0.0  # type: ignore[misc]
    assert await backend.owned(name=key, token="a")
    # The same token extends.
    assert await method(name=key, token="a", duration=5) == 0.0  # type: ignore[misc]
    remaining = await method(name=key, token="b", duration=5)  # type: ignore[misc]
    assert isinstance(remaining, float)
    assert 0 < remaining <= 5.0 + 0.01
    assert remaining > 5.0 - 3.0  # roughly what is left, not a placeholder
    assert await backend.owned(name=key, token="a")
    assert await backend.release(name=key, token="a")
    assert await method(name=key, token="b", duration=5) == 0.0  # type: ignore[misc]
    assert await backend.owned(name=key, token="b")


async def test_wait_released(backend_case: BackendCase) -> None:
    backend, key = backend_case.backend, name()
    wait_released = getattr(backend, "wait_released", None)
    if wait_released is None:
        pytest.skip(f"the {backend_case.kind} backend has no wait_released")
    with anyio.fail_after(5):
        await wait_released(name=key)  # free: returns at once
    # Released by its holder: a waiter wakes up soon after.
    assert await backend.acquire(name=key, token="a", duration=30)
    woke = anyio.Event()

    async def waiter() -> None:
        await wait_released(name=key)
        woke.set()

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.sleep(0.1)
        assert await backend.release(name=key, token="a")
        with anyio.fail_after(5):
            await woke.wait()
    # Expired: a waiter wakes up too.
    assert await backend.acquire(name=key, token="a", duration=backend_case.ttl)
    with anyio.fail_after(backend_case.expiry_deadline(backend_case.ttl)):
        while await backend.locked(name=key):
            await wait_released(name=key)


# Lock ---------------------------------------------------------------------------


async def test_lock_end_to_end(backend: SyncBackend) -> None:
    key = name()
    lock_a = Lock(key, backend=backend, worker="a", retry_interval=0.02)
    lock_b = Lock(key, backend=backend, worker="b", retry_interval=0.02)
    events: list[str] = []

    async def b_waits() -> None:
        async with lock_b:
            events.append("b acquired")
            assert await lock_b.owned()

    async with lock_a:
        assert await lock_a.owned()
        assert await lock_b.locked()
        assert not await lock_b.owned()
        with pytest.raises(anyio.WouldBlock):
            await lock_b.acquire_nowait()
        async with anyio.create_task_group() as group:
            group.start_soon(b_waits)
            await anyio.sleep(0.2)
            assert events == []  # b waits while a holds it
            events.append("a releasing")
            await lock_a.release()
            with anyio.fail_after(5):
                while "b acquired" not in events:
                    await anyio.sleep(0.01)
        # a released inside the block already: leaving must not release again.
        await lock_a.acquire()
    assert events == ["a releasing", "b acquired"]
    assert not await lock_a.locked()


async def test_lock_release_not_owned(backend: SyncBackend) -> None:
    lock = Lock(name(), backend=backend, worker="a")
    with pytest.raises(LockNotOwnedError):
        await lock.release()


async def test_lock_lease_expires_when_holder_dies(backend_case: BackendCase) -> None:
    key = name()
    crashed = Lock(
        key, backend=backend_case.backend, worker="a", lease_duration=backend_case.ttl
    )
    await crashed.acquire()  # never released: the holder "dies"
    other = Lock(key, backend=backend_case.backend, worker="b", retry_interval=0.05)
    with anyio.fail_after(backend_case.expiry_deadline(backend_case.ttl)):
        await other.acquire()
    assert await other.owned()
    await other.release()


async def test_lock_from_thread(backend: SyncBackend) -> None:
    lock = Lock(name(), backend=backend, worker="t")

    def in_thread() -> bool:
        with lock.from_thread:
            return lock.from_thread.owned() and lock.from_thread.locked()

    assert await anyio.to_thread.run_sync(in_thread)
    assert not await lock.locked()


# TaskLock -----------------------------------------------------------------------


async def test_task_lock_keeps_min_lock_seconds(backend_case: BackendCase) -> None:
    backend, key = backend_case.backend, name()
    min_hold = backend_case.ttl
    first = TaskLock(
        key, backend=backend, worker="a", min_lock_seconds=min_hold, max_lock_seconds=30
    )
    second = TaskLock(
        key, backend=backend, worker="b", min_lock_seconds=min_hold, max_lock_seconds=30
    )
    acquired_at = time.monotonic()
    async with first:
        pass  # the job is quick: the lock is kept until min_lock_seconds
    assert await first.locked()
    with pytest.raises(anyio.WouldBlock):
        async with second:
            pass
    took = await wait_for(
        second.try_acquire,
        backend_case.expiry_deadline(min_hold),
        interval=0.02,
    )
    assert took >= 0  # it did become free
    held = time.monotonic() - acquired_at
    assert held >= min_hold - 0.05, f"taken after {held:.3f}s < {min_hold}s"
    assert await second.owned()


async def test_task_lock_released_after_min_lock_seconds(
    backend: SyncBackend,
) -> None:
    key = name()
    first = TaskLock(
        key, backend=backend, worker="a", min_lock_seconds=0.2, max_lock_seconds=30
    )
    second = TaskLock(
        key, backend=backend, worker="b", min_lock_seconds=0.2, max_lock_seconds=30
    )
    async with first:
        await anyio.sleep(0.3)
    assert not await first.locked()
    assert await second.try_acquire()


async def test_task_lock_expires_after_max_lock_seconds(
    backend_case: BackendCase,
) -> None:
    backend, key = backend_case.backend, name()
    max_hold = backend_case.ttl
    crashed = TaskLock(
        key,
        backend=backend,
        worker="a",
        min_lock_seconds=max_hold,
        max_lock_seconds=max_hold,
    )
    assert await crashed.try_acquire()  # never released: the worker "dies"
    other = TaskLock(
        key,
        backend=backend,
        worker="b",
        min_lock_seconds=max_hold,
        max_lock_seconds=max_hold,
    )
    assert not await other.try_acquire()
    await wait_for(
        other.try_acquire, backend_case.expiry_deadline(max_hold), interval=0.02
    )
    assert await other.owned()
    assert not await crashed.owned()


# LeaderElection ---------------------------------------------------------------


def election(
    key: str, backend: SyncBackend, worker: str, lease: float = 10
) -> LeaderElection:
    """A fast-retrying election for tests."""
    return LeaderElection(
        key,
        backend=backend,
        worker=worker,
        lease_duration=lease,
        renew_deadline=lease * 0.6,
        retry_interval=min(0.05, lease * 0.1),
        backend_timeout=min(2, lease * 0.5),
    )


async def test_leader_election_takeover_on_cancel(backend_case: BackendCase) -> None:
    key = name()
    first = election(key, backend_case.backend, "a")
    second = election(key, backend_case.make(), "b")
    await second.backend.__aenter__()
    async with anyio.create_task_group() as group:
        first_scope = anyio.CancelScope()

        async def run_first() -> None:
            with first_scope:
                await first()

        group.start_soon(run_first)
        with anyio.fail_after(5):
            await first.wait_for_leader()
        group.start_soon(second)
        await anyio.sleep(0.3)
        assert first.is_leader()
        assert not second.is_leader()

        first_scope.cancel()
        await anyio.sleep(0)
        with anyio.fail_after(3):  # far less than the 10 s lease: it was released
            await second.wait_for_leader()
        assert not first.is_leader()
        assert await backend_case.backend.owned(name=f"leader:{key}", token="b")
        group.cancel_scope.cancel()
    # The second leader released on cancel too.
    assert not await backend_case.backend.locked(name=f"leader:{key}")


async def test_leader_renews_beyond_its_lease(backend_case: BackendCase) -> None:
    key = name()
    lease = max(0.75, backend_case.ttl * 1.5)
    leader = election(key, backend_case.backend, "a", lease=lease)
    follower = election(key, backend_case.make(), "b", lease=lease)
    await follower.backend.__aenter__()
    async with anyio.create_task_group() as group:
        group.start_soon(leader)
        with anyio.fail_after(5):
            await leader.wait_for_leader()
        group.start_soon(follower)
        await anyio.sleep(lease * 1.7)
        assert leader.is_leader()
        assert not follower.is_leader()
        group.cancel_scope.cancel()


# TaskManager ------------------------------------------------------------------


def check_runs(
    runs: list[tuple[str, float, float]], *, min_gap: float, duration: float
) -> None:
    """No two runs overlap or start less than `min_gap` apart; a sane count."""
    runs = sorted(runs, key=lambda run: run[1])
    tolerance = 0.15
    for previous, current in itertools.pairwise(runs):
        assert current[1] >= previous[2], f"overlapping runs: {previous} {current}"
        gap = current[1] - previous[1]
        assert gap >= min_gap - tolerance, (
            f"two runs {gap:.3f}s apart (< {min_gap}s): {previous} {current}"
        )
    assert 2 <= len(runs) <= duration / min_gap + 1, runs


async def test_two_managers_run_a_locked_task_at_most_once_per_interval(
    backend_case: BackendCase,
) -> None:
    seconds = backend_case.ttl
    duration = seconds * 2.5 + backend_case.slack
    task_name = name()
    runs: list[tuple[str, float, float]] = []
    managers = []
    for worker in ("m1", "m2"):
        manager = TaskManager()
        backend = backend_case.backend if worker == "m1" else backend_case.make()

        def make_job(worker: str = worker) -> Callable[[], object]:
            async def job() -> None:
                start = time.monotonic()
                await anyio.sleep(0.02)
                runs.append((worker, start, time.monotonic()))

            return job

        manager.interval(
            seconds=seconds,
            name=task_name,
            max_lock_seconds=10,
            backend=backend,
            worker=worker,
        )(make_job())
        managers.append((manager, backend))
    async with anyio.create_task_group() as group:
        for manager, backend in managers:
            if backend is not backend_case.backend:
                await backend.__aenter__()

            async def run(manager: TaskManager = manager) -> None:
                async with manager:
                    await anyio.sleep_forever()

            group.start_soon(run)
        started = time.monotonic()
        await anyio.sleep(duration)
        # A loaded machine may start the managers late: give them until a
        # second run, then count over the time actually waited.
        with anyio.move_on_after(10):
            while len(runs) < 2:
                await anyio.sleep(0.01)
        waited = time.monotonic() - started
        group.cancel_scope.cancel()
    check_runs(runs, min_gap=seconds, duration=waited)


@pytest.mark.slow
@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_processes_contend_for_one_task_lock(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Three OS processes run the same locked task: never twice per interval."""
    url = server_url(request, kind)
    namespace = unique_namespace(kind)
    seconds, duration, workers = 1.0, 2.5, 3
    out = tmp_path / "runs.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "tests.integration._worker_proc",
        "--backend",
        kind,
        "--url",
        url,
        "--namespace",
        namespace,
        "--task",
        "contended-task",
        "--seconds",
        str(seconds),
        "--duration",
        str(duration),
        "--out",
        str(out),
    ]
    logs = [tmp_path / f"worker-{index}.log" for index in range(workers)]
    processes = []
    try:
        for index in range(workers):
            with logs[index].open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        [*command, "--worker", f"w{index}"],
                        cwd=ROOT,
                        env=env,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=log,
                    )
                )
        for process in processes:  # wait until every worker is connected
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.strip() == b"ready", _worker_logs(logs)
        for process in processes:  # then start them together
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            process.stdin.flush()
        for process in processes:
            process.wait(timeout=duration + 20)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()
    assert all(p.returncode == 0 for p in processes), _worker_logs(logs)
    assert "Task synchronization error" not in _worker_logs(logs)
    runs = [
        (worker, float(start), float(end))
        for worker, start, end in (
            line.split() for line in out.read_text().splitlines() if line
        )
    ]
    check_runs(runs, min_gap=seconds, duration=duration)


def _worker_logs(logs: list[Path]) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()}" for log in logs)
