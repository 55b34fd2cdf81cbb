"""Fault injection on real worker processes against real Redis and NATS servers.

Each worker is an OS process (tests/integration/faults/worker.py) running a
`TaskManager` with a `LeaderElection` (lease 2 s, renew deadline 1.5 s, retry
0.2 s) and a leader-gated interval task (every 0.2 s). The tests crash, stall
and stop the processes (SIGKILL, SIGSTOP/SIGCONT, SIGTERM) and the server, and
check from the workers' own records (which worker ran what, when, and when its
`is_leader()` changed) that no two workers acted as leader at once and that
leadership moved within the bound each test states.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.faults.harness import (
    Fleet,
    Worker,
    check_handovers,
    check_spacing,
    figure,
    longest_double_leadership,
)
from tests.integration.faults.targets import KINDS, Target, require_kind, target_for
from tests.integration.faults.worker import LOCKED_TASK
from tests.servers import NatsServer, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Scheduling slack for 2-core CI machines running servers and 2-3 workers.
MARGIN = 0.4


@pytest.fixture(params=KINDS)
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """The session server of each kind, with a fresh namespace."""
    kind: str = request.param
    require_kind(kind)
    url: str = request.getfixturevalue(f"{kind}_url")
    yield from target_for(kind, url)


def make_fleet(target: Target, tmp_path: Path, *extra: str) -> Fleet:
    """Workers of `target`, writing their records under `tmp_path`."""
    return Fleet(
        backend=target.kind,
        url=target.url,
        namespace=target.namespace,
        directory=tmp_path,
        timings=target.timings,
        extra_args=extra,
    )


def other(fleet: Fleet, worker: Worker) -> Worker:
    """The (single) other worker of a two-worker fleet."""
    (found,) = [w for w in fleet.workers if w is not worker]
    return found


def test_leader_crash_moves_leadership_within_the_lease(
    target: Target, tmp_path: Path
) -> None:
    """SIGKILL the leader: the other worker leads and runs the task within
    lease_duration + retry_interval (+ interval, + the server's expiry slack)."""
    t = target.timings
    with make_fleet(target, tmp_path) as fleet:
        fleet.spawn(2)
        leader = fleet.wait_leader()
        follower = other(fleet, leader)
        killed_at = leader.kill()
        new, first_run = fleet.wait_run(killed_at, timeout=t.takeover_bound + 5)
        time.sleep(3 * t.interval)
        codes = fleet.terminate_all()
        elected = min(e.time for e in new.leader_changes(killed_at))
        handovers = check_handovers(fleet)
        diagnostics = fleet.diagnostics()

    assert new is follower, diagnostics
    assert max(leader.runs()) < first_run
    assert [(h[0], h[1]) for h in handovers] == [(leader.name, new.name)]
    election_gap = elected - killed_at
    run_gap = first_run - killed_at
    figure(f"{target.kind} crash: kill -> new leader elected", election_gap)
    figure(
        f"{target.kind} crash: kill -> first run of new leader",
        run_gap,
        t.takeover_bound,
    )
    assert run_gap <= t.takeover_bound + MARGIN, diagnostics
    # Nobody took the lease while the dead leader's lease was still valid.
    assert election_gap >= t.lease - t.retry - MARGIN, diagnostics
    assert codes[new.name] == 0, diagnostics


def test_paused_leader_never_acts_with_the_new_leader(
    target: Target, tmp_path: Path
) -> None:
    """SIGSTOP the leader longer than its lease, then SIGCONT: the other worker
    leads meanwhile, and the resumed worker knows it lost leadership before it
    runs anything (no run after SIGCONT, `is_leader()` False at once)."""
    t = target.timings
    with make_fleet(target, tmp_path) as fleet:
        fleet.spawn(2)
        leader = fleet.wait_leader()
        follower = other(fleet, leader)
        paused_at = leader.pause()
        new, first_run = fleet.wait_run(paused_at, timeout=t.takeover_bound + 5)
        # Keep it frozen until the new leader has run a few times.
        while len([r for r in new.runs() if r > paused_at]) < 3:
            time.sleep(0.05)
        resumed_at = leader.resume()
        time.sleep(max(1.0, 5 * t.retry))
        still_alive = leader.alive()
        # The resumed worker stops first: stopped after the new leader, it
        # would be elected again in the milliseconds between the two stops
        # (the new leader releases at its stop, and followers learn it at once).
        leader.terminate()
        leader.wait()
        codes = fleet.terminate_all()
        handovers = check_handovers(fleet)
        diagnostics = fleet.diagnostics()

    assert new is follower, diagnostics
    paused_for = resumed_at - paused_at
    assert paused_for > t.lease
    assert still_alive, diagnostics
    # The frozen worker did not run after it was resumed...
    assert [r for r in leader.runs() if r > resumed_at] == [], diagnostics
    assert max(leader.runs()) < first_run
    # ...because is_leader() was False as soon as it woke up, and it never
    # became leader again (the new leader kept the lease).
    assert leader.is_leader_at(resumed_at - 0.001), "was leader when paused"
    changes = leader.leader_changes(resumed_at)
    assert changes, diagnostics
    assert all(e.detail == "0" for e in changes), diagnostics
    noticed = changes[0].time - resumed_at
    lost_log = [
        line.time
        for line in leader.logs("INFO", "Leader lost")
        if line.time > resumed_at
    ]
    assert lost_log, diagnostics
    assert [(h[0], h[1]) for h in handovers] == [(leader.name, new.name)]
    figure(f"{target.kind} pause: paused for", paused_for)
    figure(
        f"{target.kind} pause: stop -> first run of new leader",
        first_run - paused_at,
        t.takeover_bound,
    )
    figure(f"{target.kind} pause: SIGCONT -> is_leader() False seen", noticed)
    figure(
        f"{target.kind} pause: SIGCONT -> 'Leader lost' logged",
        lost_log[0] - resumed_at,
    )
    assert first_run - paused_at <= t.takeover_bound + MARGIN, diagnostics
    assert noticed <= 0.2 + MARGIN, diagnostics
    assert all(code == 0 for code in codes.values()), (codes, diagnostics)


def test_graceful_stop_hands_over_within_one_retry_interval(
    target: Target, tmp_path: Path
) -> None:
    """SIGTERM the leader: it leaves its manager and releases the lease, and the
    other worker is elected within about one retry_interval, not a lease."""
    t = target.timings
    with make_fleet(target, tmp_path) as fleet:
        fleet.spawn(2)
        leader = fleet.wait_leader()
        follower = other(fleet, leader)
        termed_at = leader.terminate()
        code = leader.wait(10)
        exited_at = leader.events("exit")[-1].time
        new, first_run = fleet.wait_run(termed_at, timeout=t.takeover_bound + 5)
        time.sleep(3 * t.interval)
        codes = fleet.terminate_all()
        elected = min(e.time for e in follower.leader_changes(termed_at))
        handovers = check_handovers(fleet)
        diagnostics = fleet.diagnostics()

    assert code == 0, diagnostics
    assert new is follower, diagnostics
    problems = leader.logs("WARNING") + leader.logs("ERROR")
    assert problems == [], diagnostics
    takeover = elected - termed_at
    run_gap = first_run - termed_at
    # The leader task's TaskLock keeps what is left of min_lock_seconds
    # (= interval) after the last run: at most one more interval.
    run_bound = t.retry + 2 * t.interval
    figure(f"{target.kind} SIGTERM: shutdown took", exited_at - termed_at)
    figure(f"{target.kind} SIGTERM: -> new leader elected", takeover, t.retry)
    figure(f"{target.kind} SIGTERM: -> first run of new leader", run_gap, run_bound)
    assert takeover <= t.retry + MARGIN, diagnostics
    assert takeover < t.lease / 2, diagnostics
    assert run_gap <= run_bound + MARGIN, diagnostics
    assert [(h[0], h[1]) for h in handovers] == [(leader.name, new.name)]
    assert codes[follower.name] == 0


OUTAGE = 2.5
ERROR_INTERVAL = 1.0


def restartable_server(kind: str, start_server: Callable[[Any], Any]) -> Any:
    """A private server the test may stop and start (data kept across restarts)."""
    if kind == "redis":
        return start_server(RedisServer(source="controllable", persistent=True))
    return start_server(NatsServer(source="controllable"))


@pytest.mark.parametrize("kind", KINDS)
def test_broker_restart(
    kind: str, start_server: Callable[[Any], Any], tmp_path: Path
) -> None:
    """Stop the server for 3 s and start it again on the same port.

    No worker crashes; the leader steps down by renew_deadline; backend errors
    are logged once per error_interval (not per tick); the leader task, the
    TaskLock task and leadership resume shortly after the server is back.
    """
    require_kind(kind)
    server = restartable_server(kind, start_server)
    server.require_control()
    target_iter = target_for(kind, server.url)
    target = next(target_iter)
    t = target.timings
    try:
        with make_fleet(
            target,
            tmp_path,
            "--locked",
            "--probe",
            "--error-interval",
            str(ERROR_INTERVAL),
        ) as fleet:
            fleet.spawn(2)
            leader = fleet.wait_leader()
            time.sleep(0.3)
            down_at = time.time()
            server.stop()
            time.sleep(OUTAGE - (time.time() - down_at))
            alive_during = [w.alive() for w in fleet.workers]
            # Workers may reach the server as soon as it listens, a few ms
            # before start() has seen it ready: "back" is when it was started.
            up_at = time.time()
            server.start()
            _, recovered_at = fleet.wait_run(up_at, timeout=15)
            _, locked_at = fleet.wait_run(up_at, timeout=15, task=LOCKED_TASK)
            time.sleep(0.5)
            alive_after = [w.alive() for w in fleet.workers]
            probes_ok = {
                w.name: [e.time for e in w.events("probe", "ok") if e.time > up_at]
                for w in fleet.workers
            }
            codes = fleet.terminate_all()
            handovers = check_handovers(fleet)
            spacing = check_spacing(fleet, LOCKED_TASK, t.interval - 0.1)
            diagnostics = fleet.diagnostics()
    finally:
        next(target_iter, None)

    assert all(alive_during), diagnostics
    assert all(alive_after), diagnostics
    assert all(code == 0 for code in codes.values()), (codes, diagnostics)
    # The leader stepped down by renew_deadline after its last renewal (which
    # was at most one retry_interval before the server went down).
    stepped = [e.time for e in leader.leader_changes(down_at) if e.detail == "0"]
    assert stepped, diagnostics
    step_down = stepped[0] - down_at
    figure(f"{kind} restart: server down -> leader steps down", step_down, t.renew)
    assert step_down <= t.renew + MARGIN, diagnostics
    # Nobody acted as leader while the server was down (after the step-down).
    acting = [r for r, _ in fleet.all_runs() if stepped[0] < r < up_at]
    assert acting == [], diagnostics
    # Errors: one ERROR line per error_interval per worker, not one per tick.
    outage = recovered_at - down_at
    allowed = math.ceil(outage / ERROR_INTERVAL) + 1
    ticks = outage / t.retry
    for worker in fleet.workers:
        election_errors = worker.logs("ERROR", "Leader election backend error")
        task_errors = worker.logs("ERROR", f"Task synchronization error: {LOCKED_TASK}")
        figure(
            f"{kind} restart: {worker.name} election ERROR lines "
            f"(vs {ticks:.0f} failing rounds)",
            len(election_errors),
            allowed,
            unit=" lines",
        )
        assert 1 <= len(election_errors) <= allowed, diagnostics
        # The task loop throttles its own errors (30 s): one line per outage.
        assert len(task_errors) == 1, diagnostics
        recovered = worker.logs("INFO", "Leader election backend recovered")
        assert [r for r in recovered if r.time > up_at], diagnostics
        assert probes_ok[worker.name], diagnostics
    figure(f"{kind} restart: server up -> leader task runs", recovered_at - up_at)
    figure(f"{kind} restart: server up -> TaskLock task runs", locked_at - up_at)
    figure(f"{kind} restart: smallest spacing of TaskLock runs", spacing)
    recovery_bound = t.retry + t.interval + (0.5 if kind == "redis" else 2.5)
    assert recovered_at - up_at <= recovery_bound + MARGIN, diagnostics
    assert locked_at - up_at <= recovery_bound + MARGIN, diagnostics
    assert len(handovers) <= 1


def test_redis_restart_losing_data_bounds_double_leadership(
    start_server: Callable[[Any], Any], tmp_path: Path
) -> None:
    """Redis comes back empty within renew_deadline (no persistence, or a
    failover to a replica that missed the last writes): the lease is gone, so
    another worker may take it while the old leader still counts on its
    renew_deadline. The old leader learns it at its next renewal: two workers
    are leader together for at most about one retry_interval."""
    server = start_server(RedisServer(source="controllable", persistent=False))
    server.require_control()
    target_iter = target_for("redis", server.url)
    target = next(target_iter)
    t = target.timings
    try:
        with make_fleet(target, tmp_path) as fleet:
            fleet.spawn(2)
            fleet.wait_leader()
            time.sleep(0.3)
            down_at = time.time()
            server.stop()
            server.start()
            up_at = time.time()
            time.sleep(1.5)
            ended_at = time.time()
            codes = fleet.terminate_all()
            diagnostics = fleet.diagnostics()
    finally:
        next(target_iter, None)

    assert up_at - down_at < t.renew, "the restart took longer than renew_deadline"
    assert all(code == 0 for code in codes.values()), (codes, diagnostics)
    overlap = longest_double_leadership(fleet, ended_at)
    figure("redis restart losing data: restart took", up_at - down_at)
    figure("redis restart losing data: two leaders overlapped", overlap, t.retry)
    assert overlap <= t.retry + 0.1 + MARGIN, diagnostics
