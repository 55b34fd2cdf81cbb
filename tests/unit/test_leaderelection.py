"""LeaderElection on the memory backend."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from grelmicro.sync import LeaderElection, MemorySyncBackend
from grelmicro.task import TaskManager
from tests.unit.conftest import FailingBackend

pytestmark = pytest.mark.anyio

FAST: dict[str, Any] = {
    "lease_duration": 0.6,
    "renew_deadline": 0.4,
    "retry_interval": 0.05,
    "backend_timeout": 0.2,
}


@asynccontextmanager
async def running(*elections: LeaderElection) -> AsyncIterator[None]:
    async with TaskManager(tasks=list(elections)):
        yield


async def test_single_worker_becomes_leader() -> None:
    backend = MemorySyncBackend()
    leader = LeaderElection("e", **FAST)
    assert not leader.is_leader()
    async with running(leader):
        with anyio.fail_after(1):
            await leader.wait_for_leader()
        assert leader.is_leader()
        assert await backend.owned(name="leader:e", token=leader.worker)
    assert not leader.is_leader()
    assert not await backend.locked(name="leader:e")


async def test_only_one_leader_and_takeover_on_release() -> None:
    MemorySyncBackend()
    first = LeaderElection("e", **FAST)
    second = LeaderElection("e", **FAST)
    async with running(second):
        async with running(first):
            await anyio.sleep(0.2)
            assert first.is_leader() != second.is_leader()
            current = first if first.is_leader() else second
        if current is first:
            start = time.monotonic()
            with anyio.fail_after(1):
                await second.wait_for_leader()
            # Released on exit: taken over within about one retry_interval.
            assert time.monotonic() - start < 0.3


async def test_cancel_sets_not_leader_and_releases() -> None:
    backend = MemorySyncBackend()
    leader = LeaderElection("e", **FAST)
    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await leader.wait_for_leader()
        tg.cancel_scope.cancel()
    assert not leader.is_leader()
    assert not await backend.locked(name="leader:e")


async def test_steps_down_by_renew_deadline_when_backend_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing = FailingBackend()
    leader = LeaderElection("e", backend=failing, error_interval=10, **FAST)
    with caplog.at_level(logging.DEBUG, logger="grelmicro.sync"):
        async with running(leader):
            await leader.wait_for_leader()
            failing.failing = True
            start = time.monotonic()
            with anyio.fail_after(2):
                await leader.wait_lose_leader()
            lost_after = time.monotonic() - start
            await anyio.sleep(0.3)
            failing.failing = False
            with anyio.fail_after(2):
                await leader.wait_for_leader()
    # Steps down no later than renew_deadline (plus scheduling slack), before
    # the lease (0.6 s) can expire on the backend.
    assert lost_after <= FAST["renew_deadline"] + 0.05
    errors = [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR
        and "Leader election backend error" in r.getMessage()
    ]
    assert len(errors) == 1  # throttled by error_interval
    assert any("recovered" in r.getMessage() for r in caplog.records)


async def test_hanging_backend_bounded_by_backend_timeout() -> None:
    class Hanging(MemorySyncBackend):
        hang = False

        async def acquire(self, *, name: str, token: str, duration: float) -> bool:
            if self.hang:
                await anyio.sleep_forever()
            return await super().acquire(name=name, token=token, duration=duration)

    backend = Hanging(auto_register=False)
    leader = LeaderElection("e", backend=backend, **FAST)
    async with running(leader):
        await leader.wait_for_leader()
        backend.hang = True
        with anyio.fail_after(2):
            await leader.wait_lose_leader()


async def test_guard_enters_only_as_leader() -> None:
    MemorySyncBackend()
    leader = LeaderElection("e", **FAST)
    with pytest.raises(anyio.WouldBlock):
        async with leader:
            pytest.fail("entered while not leader")
    async with running(leader):
        await leader.wait_for_leader()
        async with leader:
            assert leader.is_leader()


async def test_one_election_shared_by_two_managers() -> None:
    # Issue 9 case 5: it used to raise "already running" in the second
    # manager's task group. It runs once; both managers' tasks follow it, and
    # the manager that did not start it does not stop it.
    backend = MemorySyncBackend()
    leader = LeaderElection("e", **FAST)
    runs = {"first": 0, "second": 0}
    first, second = TaskManager(tasks=[leader]), TaskManager(tasks=[leader])

    @first.interval(seconds=0.05, leader=leader, name="first")
    async def in_first() -> None:
        runs["first"] += 1

    @second.interval(seconds=0.05, leader=leader, name="second")
    async def in_second() -> None:
        runs["second"] += 1

    with anyio.fail_after(5):
        async with first:
            async with second:
                await leader.wait_for_leader()
                while not (runs["first"] and runs["second"]):
                    await anyio.sleep(0.02)
            # The second manager exited: the election still runs.
            assert leader.running
            await anyio.sleep(FAST["renew_deadline"] + 0.1)
            assert leader.is_leader()
        assert not leader.running
    assert not await backend.locked(name="leader:e")


def test_defaults() -> None:
    leader = LeaderElection("e")
    assert (
        leader.lease_duration,
        leader.renew_deadline,
        leader.retry_interval,
        leader.backend_timeout,
        leader.error_interval,
    ) == (15, 10, 2, 5, 30)
    assert leader.name == "e"
    assert leader.key == "leader:e"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"lease_duration": 5, "renew_deadline": 5}, "renew_deadline"),
        (
            {"renew_deadline": 3, "retry_interval": 3, "backend_timeout": 1},
            "retry_interval",
        ),
        (
            {"renew_deadline": 4, "backend_timeout": 4, "retry_interval": 1},
            "backend_timeout",
        ),
        ({"lease_duration": 0}, "lease_duration"),
        ({"error_interval": -1}, "error_interval"),
        ({"retry_interval": float("inf")}, "retry_interval"),
    ],
)
def test_validation(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(ValueError, match=param):
        LeaderElection("e", **kwargs)


def test_created_outside_event_loop() -> None:
    # Module-level construction: no event loop, no backend yet.
    make: Callable[[], LeaderElection] = lambda: LeaderElection("e", **FAST)  # noqa: E731
    leader = make()

    async def main() -> bool:
        MemorySyncBackend()
        async with running(leader):
            await leader.wait_for_leader()
            return leader.is_leader()

    assert anyio.run(main)


async def test_follower_takes_over_at_once_when_backend_reports_release() -> None:
    # MemorySyncBackend implements the optional wait_released(): a follower
    # wakes as soon as the leader releases, not at its next retry.
    MemorySyncBackend()
    slow = {**FAST, "retry_interval": 0.3, "renew_deadline": 0.5, "lease_duration": 1}
    first = LeaderElection("e", **slow)
    second = LeaderElection("e", **slow)
    async with running(second):
        async with running(first):
            await anyio.sleep(0.1)
            leader, follower = (first, second) if first.is_leader() else (second, first)
            assert leader.is_leader()
        if leader is second:
            return  # the follower was stopped; nothing to time
        start = time.monotonic()
        with anyio.fail_after(1):
            await follower.wait_for_leader()
        assert time.monotonic() - start < 0.1


async def test_follower_retries_when_crashed_leaders_lease_runs_out() -> None:
    # A crashed leader never releases; the follower learns from its failed
    # attempt how long the lease lasts and retries right then, not up to one
    # retry_interval later.
    class NoRelease(MemorySyncBackend):
        async def wait_released(self, *, name: str) -> None:
            await anyio.sleep_forever()

    backend = NoRelease()
    await backend.acquire(name="leader:e", token="crashed", duration=0.3)
    start = time.monotonic()
    follower = LeaderElection(
        "e", lease_duration=5, renew_deadline=4, retry_interval=2, backend_timeout=1
    )
    async with running(follower):
        with anyio.fail_after(1.5):
            await follower.wait_for_leader()
    assert time.monotonic() - start < 0.6
