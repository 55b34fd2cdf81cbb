"""Fault injection inside one process against real Redis and NATS servers.

Slow tasks (longer than `max_lock_seconds`), backend calls that hang (the
server frozen with SIGSTOP) and leaving the manager while tasks run. Each
test measures the figure it asserts (printed with ``pytest -s``).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest

from grelmicro.sync import LeaderElection, Lock
from grelmicro.sync.abc import SyncBackend
from grelmicro.task import TaskManager
from tests.integration.faults.harness import figure, max_gap
from tests.integration.faults.recording import RecordingBackend, SlowReplyBackend
from tests.integration.faults.targets import (
    KINDS,
    Target,
    make_backend,
    require_kind,
    target_for,
)
from tests.servers import NatsServer, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.anyio]

MARGIN = 0.3


@pytest.fixture(params=KINDS)
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """The session server of each kind, with a fresh namespace."""
    kind: str = request.param
    require_kind(kind)
    url: str = request.getfixturevalue(f"{kind}_url")
    yield from target_for(kind, url)


@pytest.fixture
async def backends(target: Target) -> AsyncIterator[Callable[[], Any]]:
    """Make entered backends on the target's namespace (one per "worker")."""
    async with AsyncExitStack() as stack:

        async def make() -> SyncBackend:
            backend = make_backend(target.kind, target.url, target.namespace)
            await stack.enter_async_context(backend)
            return backend

        yield make


# A task longer than max_lock_seconds -------------------------------------------

MAX_LOCK = 1.0
WORK = 1.6


async def test_task_longer_than_max_lock_seconds(
    target: Target,
    backends: Callable[[], Awaitable[SyncBackend]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run longer than max_lock_seconds logs a warning naming the task, and
    a worker never runs two copies of it at once (another worker may, once
    the lock has expired: that overlap is measured, not forbidden)."""
    runs: dict[str, list[tuple[float, float | None]]] = {"a": [], "b": []}

    def add_task(manager: TaskManager, worker: str, backend: SyncBackend) -> None:
        @manager.interval(
            seconds=0.2,
            name="slow-job",
            max_lock_seconds=MAX_LOCK,
            backend=backend,
            worker=worker,
            cancel_on_loss=False,  # the seed's behaviour: runs go on
        )
        async def slow_job() -> None:
            runs[worker].append((time.time(), None))
            await anyio.sleep(WORK)
            runs[worker][-1] = (runs[worker][-1][0], time.time())

    managers = []
    for worker in ("a", "b"):
        manager = TaskManager()
        add_task(manager, worker, await backends())
        managers.append(manager)
    with caplog.at_level(logging.WARNING, logger="grelmicro.task"):
        async with managers[0], managers[1]:
            await anyio.sleep(3.0)

    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "max_lock_seconds" in r.getMessage()
    ]
    completed = sum(1 for worker in runs.values() for _, end in worker if end)
    started = sum(len(worker) for worker in runs.values())
    assert completed >= 2, runs
    # One warning per run past max_lock_seconds (a run cancelled at exit after
    # more than max_lock_seconds warns too).
    assert completed <= len(warnings) <= started, [r.getMessage() for r in warnings]
    assert all("slow-job" in r.getMessage() for r in warnings)
    # The same worker never runs two copies at once.
    for worker, spans in runs.items():
        for (_, end), (next_start, _) in itertools.pairwise(spans):
            assert end is not None, (worker, spans)
            assert next_start >= end, (worker, spans)
    # Across workers, the second run starts only once the first one's lock
    # expired (max_lock_seconds after it was taken, plus the server's slack).
    starts = sorted((start, w) for w, spans in runs.items() for start, _ in spans)
    first_start, first_worker = starts[0]
    second = [s for s, w in starts if w != first_worker]
    assert second, runs
    takeover = second[0] - first_start
    figure(f"{target.kind} slow task: other worker starts after", takeover, MAX_LOCK)
    assert takeover >= MAX_LOCK - 0.05, runs
    assert takeover <= MAX_LOCK + target.timings.expiry_slack + 2 * 0.2 + MARGIN
    overlap = max(0.0, (runs[first_worker][0][1] or time.time()) - second[0])
    figure(f"{target.kind} slow task: runs of two workers overlapped by", overlap)


# Backend calls that hang --------------------------------------------------------

PAUSE = 3.0
LOCAL_INTERVAL = 0.1
TASK_LOCK_TIMEOUT = 1.0  # TaskLock bounds its calls by min(5 s, max_lock_seconds)
ELECTION_TIMEOUT = 0.5


def pausable_server(kind: str, start_server: Callable[[Any], Any]) -> Any:
    """A private server the test may freeze."""
    if kind == "redis":
        return start_server(RedisServer(source="controllable"))
    return start_server(NatsServer(source="controllable"))


@pytest.mark.parametrize("kind", KINDS)
async def test_hanging_backend_calls_are_bounded(
    kind: str, start_server: Callable[[Any], Any]
) -> None:
    """Freeze the server (SIGSTOP) for 3 s: every backend call ends within its
    timeout, the leader steps down by renew_deadline, a local task keeps its
    schedule, and everything resumes once the server is back."""
    require_kind(kind)
    server = pausable_server(kind, start_server)
    server.require_control()
    target_iter = target_for(kind, server.url)
    target = next(target_iter)
    try:
        backend = RecordingBackend(make_backend(kind, server.url, target.namespace))
        leader = LeaderElection(
            "hang",
            backend=backend,
            worker="a",
            lease_duration=2,
            renew_deadline=1.5,
            retry_interval=0.2,
            backend_timeout=ELECTION_TIMEOUT,
        )
        manager = TaskManager(tasks=[leader])
        local: list[float] = []
        locked: list[float] = []
        gated: list[float] = []
        leader_state: list[tuple[float, bool]] = []

        @manager.interval(seconds=LOCAL_INTERVAL, name="local-job")
        async def local_job() -> None:
            local.append(time.monotonic())
            leader_state.append((time.monotonic(), leader.is_leader()))

        @manager.interval(
            seconds=0.2,
            name="locked-job",
            max_lock_seconds=TASK_LOCK_TIMEOUT,
            backend=backend,
            worker="a",
        )
        async def locked_job() -> None:
            locked.append(time.monotonic())

        @manager.interval(seconds=0.2, name="gated-job", leader=leader, backend=backend)
        async def gated_job() -> None:
            gated.append(time.monotonic())

        async with backend, manager:
            with anyio.fail_after(5):
                await leader.wait_for_leader()
            await anyio.sleep(0.5)
            paused_at = time.monotonic()
            server.pause()
            await anyio.sleep(PAUSE)
            server.resume()
            resumed_at = time.monotonic()
            with anyio.fail_after(10):
                while not (
                    [t for t in locked if t > resumed_at]
                    and [t for t in gated if t > resumed_at]
                ):
                    await anyio.sleep(0.05)
            recovered_at = time.monotonic()
    finally:
        next(target_iter, None)

    during = [c for c in backend.calls if paused_at <= c.start < resumed_at]
    assert during, "no backend call while the server was frozen"
    longest = max(c.duration for c in during)
    timeouts = {c.outcome for c in during}
    figure(
        f"{kind} hang: longest backend call while frozen", longest, TASK_LOCK_TIMEOUT
    )
    # Bounded by the caller's timeout (the election's 0.5 s, the TaskLock's 1 s),
    # not by the driver (2 s socket timeout) and never forever.
    assert longest <= TASK_LOCK_TIMEOUT + MARGIN, during
    assert not [c for c in during if c.granted and c.end < resumed_at], timeouts
    election = [c for c in during if c.name == "leader:hang"]
    assert election, during
    assert max(c.duration for c in election) <= ELECTION_TIMEOUT + MARGIN, election
    # The local task kept its schedule.
    gap = max_gap(local, paused_at, resumed_at)
    figure(f"{kind} hang: longest gap of the local task", gap, LOCAL_INTERVAL)
    assert gap <= LOCAL_INTERVAL + MARGIN, gap
    # The leader stepped down by renew_deadline; nothing gated ran while frozen.
    lost = [t for t, is_leader in leader_state if t > paused_at and not is_leader]
    assert lost, leader_state
    figure(f"{kind} hang: frozen -> leader steps down", lost[0] - paused_at, 1.5)
    assert lost[0] - paused_at <= 1.5 + MARGIN
    assert [t for t in gated if paused_at + 0.05 < t < resumed_at] == []
    assert [t for t in locked if paused_at + 0.05 < t < resumed_at] == []
    figure(f"{kind} hang: resumed -> all tasks run again", recovered_at - resumed_at)
    assert recovered_at - resumed_at <= 3.0


# Shutdown under load --------------------------------------------------------------

MIN_LOCK = 3.0


async def test_shutdown_under_load_leaves_nothing_to_wait_out(
    target: Target, backends: Callable[[], Awaitable[SyncBackend]]
) -> None:
    """Leave the manager while three tasks run: they are cancelled at once; the
    lease and the resource lock are free for the next worker right away, and
    the TaskLock keeps only what is left of its min_lock_seconds."""
    backend = await backends()
    observer = await backends()
    leader = LeaderElection(
        "shutdown",
        backend=backend,
        worker="a",
        lease_duration=2,
        renew_deadline=1.5,
        retry_interval=0.2,
        backend_timeout=1,
    )
    resource = Lock("resource", backend=backend, worker="a", lease_duration=30)
    manager = TaskManager(tasks=[leader])
    started: dict[str, float] = {}
    cancelled: set[str] = set()

    def busy(name: str) -> Callable[[], Awaitable[None]]:
        async def body() -> None:
            started.setdefault(name, time.monotonic())
            try:
                await anyio.sleep(30)
            except anyio.get_cancelled_exc_class():
                cancelled.add(name)
                raise

        return body

    manager.interval(seconds=0.2, name="gated-job", leader=leader, backend=backend)(
        busy("gated-job")
    )
    manager.interval(
        seconds=0.2,
        name="locked-job",
        max_lock_seconds=30,
        min_lock_seconds=MIN_LOCK,
        backend=backend,
        worker="a",
    )(busy("locked-job"))
    manager.interval(seconds=0.2, name="resource-job", sync=resource)(
        busy("resource-job")
    )

    async with manager:
        with anyio.fail_after(10):
            while len(started) < 3:
                await anyio.sleep(0.02)
        await anyio.sleep(0.3)
        leaving_at = time.monotonic()
    left_at = time.monotonic()

    exit_time = left_at - leaving_at
    figure(f"{target.kind} shutdown: leaving the manager took", exit_time)
    assert exit_time <= 2.0  # generous: the figure is what is reported
    assert cancelled == {"gated-job", "locked-job", "resource-job"}
    assert not leader.is_leader()
    # Another worker gets the lease and the resource lock at once...
    assert await observer.acquire(name="leader:shutdown", token="b", duration=2)
    assert await observer.acquire(name="lock:resource", token="b", duration=2)
    # ...and the leader task's TaskLock (its min_lock_seconds, 0.2 s, had passed).
    assert await observer.acquire(name="tasklock:gated-job", token="b", duration=2)
    # The other TaskLock is kept for what is left of min_lock_seconds only.
    held_for = MIN_LOCK - (left_at - started["locked-job"])
    assert held_for > 0.5
    assert not await observer.acquire(name="tasklock:locked-job", token="b", duration=2)
    waited_from = time.monotonic()
    with anyio.fail_after(MIN_LOCK + target.timings.expiry_slack + 2):
        while not await observer.acquire(
            name="tasklock:locked-job", token="b", duration=2
        ):
            await anyio.sleep(0.05)
    free_after = time.monotonic() - waited_from + (waited_from - left_at)
    figure(
        f"{target.kind} shutdown: TaskLock free after exit",
        free_after,
        held_for,
    )
    assert free_after >= held_for - MARGIN
    assert free_after <= held_for + target.timings.expiry_slack + MARGIN


@pytest.mark.parametrize("kind", KINDS)
async def test_late_task_lock_answer_does_not_run_a_stale_leader(
    kind: str, start_server: Callable[[Any], Any]
) -> None:
    """A leader-gated function never starts once its worker's is_leader() is
    False, even when the TaskLock call it made as leader answers late.

    The server is frozen right after a renewal. The renewals (0.2 s timeout)
    fail; a TaskLock acquire sent while still leader (its timeout is
    min(5 s, max_lock_seconds) = 1 s) is still waiting when renew_deadline
    passes. The server is resumed then, with no renewal in flight: the late
    TaskLock answer must not lead to a run.
    """
    require_kind(kind)
    server = pausable_server(kind, start_server)
    server.require_control()
    target_iter = target_for(kind, server.url)
    target = next(target_iter)
    try:
        backend = RecordingBackend(make_backend(kind, server.url, target.namespace))
        leader = LeaderElection(
            "stale",
            backend=backend,
            worker="a",
            lease_duration=2,
            renew_deadline=1.5,
            retry_interval=0.5,
            backend_timeout=0.2,
        )
        manager = TaskManager(tasks=[leader])
        runs: list[tuple[float, bool]] = []

        @manager.interval(
            seconds=0.2,
            name="stale-job",
            leader=leader,
            max_lock_seconds=1.0,
            backend=backend,
        )
        async def stale_job() -> None:
            runs.append((time.monotonic(), leader.is_leader()))

        def renewed() -> int:
            return sum(
                1
                for call in backend.calls
                if call.name == "leader:stale" and call.granted
            )

        def waiting(name: str) -> bool:
            return any(call[1] == name for call in backend.in_flight.values())

        async with backend, manager:
            with anyio.fail_after(5):
                await leader.wait_for_leader()
                while not runs:
                    await anyio.sleep(0.01)
                count = renewed()
                while renewed() == count:
                    await anyio.sleep(0.002)
            server.pause()
            try:
                with anyio.fail_after(6):
                    while (
                        leader.is_leader()
                        or not waiting("tasklock:stale-job")
                        or waiting("leader:stale")
                    ):
                        await anyio.sleep(0.002)
                resumed_at = time.monotonic()
            finally:
                server.resume()
            await anyio.sleep(0.3)
    finally:
        next(target_iter, None)

    stale = [t - resumed_at for t, is_leader in runs if not is_leader]
    assert stale == [], f"ran while not leader, {stale} s after the server resumed"


# A slow TaskLock acquire ------------------------------------------------------------

SLOW_CALL = 1.2
MIN_HOLD = 1.0
RUN_TIME = 0.5


@pytest.mark.parametrize("where", ["reply", "request"])
async def test_slow_task_lock_acquire_never_runs_two_copies(
    target: Target, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Worker A's TaskLock acquire takes 1.2 s, longer than min_lock_seconds
    (1 s): its answer comes late (``reply``: a busy event loop, a slow reply
    path; the server granted the lock 1.2 s before A sees it) or its request
    reaches the server late (``request``). Worker B, trying every 0.2 s, must
    neither run the task while A runs it, nor run it less than
    min_lock_seconds after A did.
    """
    slow = SlowReplyBackend(make_backend(target.kind, target.url, target.namespace))
    other = make_backend(target.kind, target.url, target.namespace)
    runs: list[tuple[str, float, float]] = []

    def manager_for(worker: str, backend: SyncBackend) -> TaskManager:
        manager = TaskManager()

        @manager.interval(
            seconds=0.2,
            name="slow-lock-job",
            max_lock_seconds=3.0,
            min_lock_seconds=MIN_HOLD,
            backend=backend,
            worker=worker,
        )
        async def slow_lock_job() -> None:
            start = time.monotonic()
            await anyio.sleep(RUN_TIME)
            runs.append((worker, start, time.monotonic()))

        return manager

    with caplog.at_level(logging.WARNING, logger="grelmicro.task"):
        async with slow, other:
            slow.delay("tasklock:slow-lock-job", SLOW_CALL, where)
            async with manager_for("a", slow):
                # B starts once the server granted A the lock (reply: A does
                # not know it yet) or once A's run ended (request: A has
                # released, or kept, the lock).
                with anyio.fail_after(5):
                    while "tasklock:slow-lock-job" not in slow.answered_at or (
                        where == "request" and not runs
                    ):
                        await anyio.sleep(0.005)
                async with manager_for("b", other):
                    await anyio.sleep(MIN_HOLD + RUN_TIME + 0.2)

    runs.sort(key=lambda run: run[1])
    # Who wins is a race (a late answer makes A skip its stale grant); what
    # matters is that no two runs overlap or come closer than the minimum hold.
    assert runs, "the task never ran"
    pairs = list(itertools.pairwise(runs))
    overlaps = [(f, s) for f, s in pairs if s[1] < f[2]]
    too_soon = [(f, s) for f, s in pairs if s[1] - f[1] < MIN_HOLD - 0.05]
    lost = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
    assert overlaps == [], f"two workers ran the task at once: {overlaps}; {lost}"
    assert too_soon == [], f"runs closer than min_lock_seconds: {too_soon}"
