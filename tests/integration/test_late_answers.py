"""Late answers and cancellation on the real servers (issue 9, case 1).

A backend call whose caller gives up (cancelled, or timed out) may still be
applied by the server. `LateAnswer` wraps a real backend: it sends the call
and then never hands the answer back, as a frozen network path would. The
lock must be free again within one round trip of the cancellation.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from grelmicro.sync import LeaderElection, Lock, TaskLock
from grelmicro.sync.abc import FencedAcquire, SyncBackend
from grelmicro.task import TaskManager
from tests.integration.conftest import BackendCase
from tests.integration.faults.harness import figure

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


class LateAnswer:
    """The real backend, whose acquisitions are applied but never answered."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.late = True

    async def __aenter__(self) -> LateAnswer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def acquire_fenced(
        self, *, name: str, token: str, duration: float
    ) -> FencedAcquire:
        answer: FencedAcquire = await self.backend.acquire_fenced(
            name=name, token=token, duration=duration
        )
        if self.late:
            await anyio.sleep_forever()
        return answer

    async def acquire(self, *, name: str, token: str, duration: float) -> bool:
        return (
            await self.acquire_fenced(name=name, token=token, duration=duration)
        ).acquired

    async def release(self, *, name: str, token: str) -> bool:
        released: bool = await self.backend.release(name=name, token=token)
        return released

    async def locked(self, *, name: str) -> bool:
        locked: bool = await self.backend.locked(name=name)
        return locked

    async def owned(self, *, name: str, token: str) -> bool:
        owned: bool = await self.backend.owned(name=name, token=token)
        return owned


def late(backend: SyncBackend) -> Any:
    return LateAnswer(backend)


async def test_cancelled_lock_acquire_frees_the_lock_within_a_round_trip(
    backend_case: BackendCase,
) -> None:
    backend = backend_case.backend
    key = f"late-{time.monotonic_ns()}"
    lock = Lock(key, backend=late(backend), lease_duration=60)
    cancel_at = time.monotonic() + 0.2
    with anyio.move_on_after(0.2):
        await lock.acquire()
    # The give-back (one release round trip, shielded) completes before the
    # cancellation returns: that is how long the lock outlived its caller.
    held = time.monotonic() - cancel_at
    assert not await backend.locked(name=f"lock:{key}")
    figure(f"{backend_case.kind} cancelled acquire: lock held after cancel", held)
    assert held < 0.5


async def test_timed_out_task_lock_acquire_is_given_back(
    backend_case: BackendCase,
) -> None:
    backend = backend_case.backend
    key = f"late-{time.monotonic_ns()}"
    task_lock = TaskLock(
        key, backend=late(backend), min_lock_seconds=1, max_lock_seconds=60
    )
    task_lock._timeout = 0.3
    with pytest.raises(Exception, match="acquire"):
        await task_lock.try_acquire()
    assert not await backend.locked(name=f"tasklock:{key}")


async def test_follower_acquire_in_flight_at_shutdown_is_given_back(
    backend_case: BackendCase,
) -> None:
    backend = backend_case.backend
    key = f"late-{time.monotonic_ns()}"
    leader = LeaderElection(
        key,
        backend=late(backend),
        lease_duration=30,
        renew_deadline=5,
        retry_interval=1,
        backend_timeout=4,
    )
    async with TaskManager(tasks=[leader]):
        with anyio.fail_after(5):
            while not await backend.locked(name=f"leader:{key}"):
                await anyio.sleep(0.01)
        stop_at = time.monotonic()
    stopped = time.monotonic() - stop_at
    assert not leader.is_leader()
    assert not await backend.locked(name=f"leader:{key}")
    figure(f"{backend_case.kind} shutdown with an acquire in flight took", stopped)
