"""Cron tasks across real worker processes on real Redis and NATS servers.

Each worker is an OS process (tests/integration/_cron_worker.py) running one
cron task; it records every run it starts and ends (fire time, fencing token,
worker). The fleets of both backends run at the same time, so the whole
module takes about as long as one backend would.

- every fire of a per-second schedule runs exactly once on three workers,
  and again with the workers' wall clocks skewed by -1.5 s, 0 and +1.5 s
  (libfaketime, monotonic clock left alone);
- a SIGKILLed claimant's fire is run again by another worker within
  `lease_seconds` plus one retry with `at_least_once=True`, never by default;
- after every worker was down across fire times, the latest missed fire runs
  once at start, or not at all when older than `misfire_grace_seconds`, with
  one WARNING counting what was skipped (also after an outage under 8 s).
"""

from __future__ import annotations

import collections
import glob
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from grelmicro.sync.abc import FireClaimBackend
from tests.integration._worker_proc import make_backend
from tests.integration.conftest import nats_backend_available, unique_namespace
from tests.integration.faults.targets import cleanup
from tests.servers import is_ci

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
#: Scheduling slack for a 2-core machine running servers and a dozen workers.
MARGIN = 1.0
SKEWS = (-1.5, 0.0, 1.5)


def faketime_library() -> str | None:
    """The path of libfaketime (Debian/Ubuntu package `faketime`), if installed."""
    for pattern in (
        "/usr/lib/*/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


@dataclass(frozen=True)
class Record:
    """One line of a worker's output file."""

    event: str
    worker: str
    fire_ms: int
    fence: int | None
    wall: float


@dataclass(eq=False)
class Worker:
    """One worker process."""

    name: str
    process: subprocess.Popen[str]
    stderr_path: Path

    def wait_line(self, expected: str, timeout: float = 60.0) -> None:
        """Wait for `expected` on the worker's stdout."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.2)
            if ready:
                line = self.process.stdout.readline()
                if line.strip() == expected:
                    return
                if not line:
                    break
        msg = f"worker {self.name} did not print {expected!r}: {self.stderr()}"
        raise AssertionError(msg)

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        """Ask for a graceful stop (stdin closes)."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()

    def kill(self) -> float:
        self.process.send_signal(signal.SIGKILL)
        return time.time()

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def warnings(self) -> list[str]:
        return [
            line for line in self.stderr().splitlines() if line.startswith("WARNING")
        ]


@dataclass(eq=False)
class Fleet:
    """Workers running one cron task on one backend namespace."""

    kind: str
    url: str
    namespace: str
    task: str
    expression: str
    directory: Path
    options: tuple[str, ...] = ()
    workers: list[Worker] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.directory / f"{self.kind}-{self.task}.records"

    def spawn(self, name: str, *, skew: float | None = None) -> Worker:
        """Start a worker process (call `wait_line("ready")` before `go`)."""
        env = dict(os.environ)
        if skew is not None:
            library = faketime_library()
            assert library is not None
            env.update(
                LD_PRELOAD=library,
                FAKETIME=f"{skew:+}s",
                FAKETIME_DONT_FAKE_MONOTONIC="1",
                FAKETIME_NO_CACHE="1",
            )
        stderr_path = self.directory / f"{self.kind}-{self.task}-{name}.stderr"
        command = [
            sys.executable,
            "-m",
            "tests.integration._cron_worker",
            "--backend",
            self.kind,
            "--url",
            self.url,
            "--namespace",
            self.namespace,
            "--task",
            self.task,
            "--expression",
            self.expression,
            "--out",
            str(self.out),
            "--worker",
            name,
            *self.options,
        ]
        with stderr_path.open("w") as stderr:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        worker = Worker(name, process, stderr_path)
        self.workers.append(worker)
        return worker

    def records(self, event: str = "start") -> list[Record]:
        if not self.out.exists():
            return []
        result = []
        for line in self.out.read_text().splitlines():
            kind, worker, fire, fence, wall = line.split()
            if kind == event:
                fence_value = None if fence == "None" else int(fence)
                result.append(Record(kind, worker, int(fire), fence_value, float(wall)))
        return result

    def stop_all(self, timeout: float = 15.0) -> None:
        """Stop the live workers gracefully; each must exit 0."""
        live = [w for w in self.workers if w.process.poll() is None]
        for worker in live:
            worker.stop()
        for worker in live:
            code = worker.process.wait(timeout)
            assert code == 0, f"{worker.name} exited {code}: {worker.stderr()}"

    def close(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait(5)
            for stream in (worker.process.stdin, worker.process.stdout):
                if stream is not None and not stream.closed:
                    stream.close()

    def summary(self) -> str:
        starts = self.records()
        per_worker = collections.Counter(r.worker for r in starts)
        return f"{self.kind}/{self.task}: {len(starts)} runs, per worker {dict(per_worker)}"


@pytest.fixture
def kinds(request: pytest.FixtureRequest) -> dict[str, str]:
    """{kind: url} for every backend kind whose backend can claim fires."""
    found: dict[str, str] = {}
    reasons: list[str] = []
    for kind in ("redis", "nats"):
        if kind == "nats" and not nats_backend_available():
            reasons.append("grelmicro.sync.nats is not available")
            continue
        url: str = request.getfixturevalue(f"{kind}_url")
        if not isinstance(make_backend(kind, url, "probe"), FireClaimBackend):
            reasons.append(f"the {kind} backend cannot claim cron fires yet")
            continue
        found[kind] = url
    if reasons and is_ci():
        pytest.fail("; ".join(reasons))
    if not found:
        pytest.skip("; ".join(reasons))
    return found


@pytest.fixture
def fleets(kinds: dict[str, str], tmp_path: Path) -> Iterator[list[Fleet]]:
    """The fleets a test creates (with `new_fleet`), killed and cleaned up after."""
    created: list[Fleet] = []
    yield created
    for fleet in created:
        fleet.close()
        cleanup(fleet.kind, fleet.url, fleet.namespace)


def new_fleet(
    fleets: list[Fleet],
    kind: str,
    url: str,
    directory: Path,
    task: str,
    expression: str,
    *options: str,
) -> Fleet:
    fleet = Fleet(
        kind, url, unique_namespace(kind), task, expression, directory, options
    )
    fleets.append(fleet)
    return fleet


def start(workers: list[Worker]) -> None:
    """Wait until every worker is connected, then start them together."""
    for worker in workers:
        worker.wait_line("ready")
    for worker in workers:
        worker.go()
    for worker in workers:
        worker.wait_line("started")


# Exactly once, with and without skew ---------------------------------------------------


def test_every_fire_runs_exactly_once_with_and_without_clock_skew(
    kinds: dict[str, str], fleets: list[Fleet], tmp_path: Path
) -> None:
    if faketime_library() is None:
        if is_ci():
            pytest.fail("libfaketime is missing: apt-get install -y faketime")
        pytest.skip("libfaketime is missing: apt-get install -y faketime")
    runs_for = 17.0
    workers: list[Worker] = []
    for kind, url in kinds.items():
        plain = new_fleet(fleets, kind, url, tmp_path, "plain", "* * * * * *")
        skewed = new_fleet(fleets, kind, url, tmp_path, "skewed", "* * * * * *")
        for index in range(3):
            workers.append(plain.spawn(f"w{index}"))
            workers.append(skewed.spawn(f"w{index}{SKEWS[index]:+}", skew=SKEWS[index]))
    start(workers)
    time.sleep(runs_for)
    for fleet in fleets:
        fleet.stop_all()
    for fleet in fleets:
        starts = fleet.records()
        fires = collections.Counter(r.fire_ms for r in starts)
        duplicates = {fire: n for fire, n in fires.items() if n > 1}
        assert not duplicates, f"{fleet.summary()}: run twice: {duplicates}"
        ordered = sorted(fires)
        # Gaps: none while every worker is up, from the very first fire run
        # (the last second is left out: the workers stop one after the
        # other). The first fires are the hard part: on the task's very first
        # start, workers whose clocks are 3 s apart, stalled at start on a
        # loaded machine, make their first claims at the same moment, each
        # from a different fire; a claim names the fire before it, so none
        # can pass over fires another worker has not claimed yet.
        window = [f for f in ordered if f <= ordered[-1] - 1000]
        expected = list(range(window[0], window[-1] + 1000, 1000))
        assert window == expected, (
            f"{fleet.summary()}: gaps {set(expected) - set(window)}"
        )
        assert len(window) >= 13, fleet.summary()
        # Fencing tokens grow with the fires.
        by_fire = sorted(starts, key=lambda r: r.fire_ms)
        tokens = [r.fence for r in by_fire]
        assert all(t is not None for t in tokens)
        assert tokens == sorted(tokens), fleet.summary()  # type: ignore[type-var]
        assert len(fleet.records("end")) >= len(window)
        print(fleet.summary())


# Crash of the claimant ---------------------------------------------------------------------


LEASE = 3.0
RETRY = LEASE / 4  # CronTask's default retry for this lease


def test_killed_claimant_fire_reruns_only_with_at_least_once(
    kinds: dict[str, str], fleets: list[Fleet], tmp_path: Path
) -> None:
    options = ("--work", "2", "--lease", str(LEASE))
    workers: list[Worker] = []
    pairs: list[tuple[Fleet, Fleet]] = []
    for kind, url in kinds.items():
        alo = new_fleet(
            fleets,
            kind,
            url,
            tmp_path,
            "alo",
            "* * * * * *",
            *options,
            "--at-least-once",
        )
        once = new_fleet(fleets, kind, url, tmp_path, "once", "* * * * * *", *options)
        pairs.append((alo, once))
        for fleet in (alo, once):
            workers.extend(fleet.spawn(f"w{i}") for i in range(3))
    start(workers)
    started = time.time()
    # Kill, in each fleet, the claimant of a fire once runs overlap.
    kills: dict[Fleet, tuple[str, float]] = {}
    deadline = time.monotonic() + 15
    while len(kills) < len(fleets) and time.monotonic() < deadline:
        for fleet in fleets:
            if fleet in kills:
                continue
            late = [r for r in fleet.records() if r.wall >= started + 2.5]
            if late:
                claimant = next(w for w in fleet.workers if w.name == late[0].worker)
                kills[fleet] = (claimant.name, claimant.kill())
        time.sleep(0.02)
    assert len(kills) == len(fleets), "no run started"
    time.sleep(LEASE + RETRY + MARGIN + 2.5)  # the reruns, and their 2 s of work
    for fleet in fleets:
        fleet.stop_all()
    for alo, once in pairs:
        for fleet in (alo, once):
            victim, killed_at = kills[fleet]
            starts = fleet.records()
            ended = {r.fire_ms for r in fleet.records("end")}
            victim_ended = {
                r.fire_ms for r in fleet.records("end") if r.worker == victim
            }
            orphans = {
                r.fire_ms
                for r in starts
                if r.worker == victim and r.fire_ms not in victim_ended
            }
            assert orphans, f"{fleet.summary()}: the victim left no fire unfinished"
            ends = collections.Counter(r.fire_ms for r in fleet.records("end"))
            ended_then_killed: set[int] = set()
            for fire, n in ends.items():
                if n == 1:
                    continue
                ended_then_killed.add(fire)
                # Twice only when the victim finished the work right before
                # it was killed, before its completion reached the backend:
                # with at_least_once that fire is run again (at-least-once).
                victim_end = [
                    r
                    for r in fleet.records("end")
                    if r.fire_ms == fire and r.worker == victim
                ]
                assert fleet is alo, f"{fleet.summary()}: fire {fire} ended {n}x"
                assert n == 2, f"{fleet.summary()}: fire {fire} ended {n}x"
                assert victim_end, f"{fleet.summary()}: fire {fire} ended twice"
                assert killed_at - victim_end[0].wall < 0.5, fleet.summary()
            for fire in orphans:
                others = [r for r in starts if r.fire_ms == fire and r.worker != victim]
                if fleet is once:
                    assert others == [], f"{fleet.summary()}: fire {fire} ran twice"
                    continue
                assert len(others) == 1, f"{fleet.summary()}: fire {fire}: {others}"
                (rerun,) = others
                delay = rerun.wall - killed_at
                print(f"{fleet.summary()}: fire {fire} rerun {delay:.2f}s after kill")
                assert delay <= LEASE + RETRY + MARGIN, f"rerun after {delay:.2f}s"
                original = next(
                    r for r in starts if r.fire_ms == fire and r.worker == victim
                )
                assert rerun.fence is not None
                assert original.fence is not None
                assert rerun.fence > original.fence
                assert fire in ended
            # Every other fire ran once.
            counts = collections.Counter(r.fire_ms for r in starts)
            assert all(
                n == 1
                for f, n in counts.items()
                if f not in orphans and f not in ended_then_killed
            )


# Missed fires -------------------------------------------------------------------------------


def test_latest_missed_fire_runs_once_unless_older_than_the_grace(
    kinds: dict[str, str], fleets: list[Fleet], tmp_path: Path
) -> None:
    period = 3  # seconds; a 60 s minute holds whole periods
    expression = f"*/{period} * * * * *"
    plain: list[Fleet] = []
    graced: list[Fleet] = []
    short: list[Fleet] = []  # a short outage (under 8 s), with a grace
    for kind, url in kinds.items():
        plain.append(new_fleet(fleets, kind, url, tmp_path, "missed", expression))
        graced.append(
            new_fleet(
                fleets, kind, url, tmp_path, "grace", expression, "--grace", "0.3"
            )
        )
        short.append(
            new_fleet(
                fleets, kind, url, tmp_path, "short", expression, "--grace", "0.3"
            )
        )
    # Phase 1: one worker per fleet claims a fire, then every worker stops.
    # The workers of phase 2 are spawned (connected, idle) meanwhile.
    first = [fleet.spawn("first") for fleet in fleets]
    second = [fleet.spawn("second") for fleet in fleets]
    start(first)
    deadline = time.monotonic() + 10
    while not all(fleet.records() for fleet in fleets):
        assert time.monotonic() < deadline, "no fire ran"
        time.sleep(0.02)
    for worker in first:
        worker.stop()
    for worker in first:
        code = worker.process.wait(15)
        assert code == 0, f"{worker.name} exited {code}: {worker.stderr()}"
    last = {fleet: max(r.fire_ms for r in fleet.records()) for fleet in fleets}
    for worker in second:
        worker.wait_line("ready")
    # Phase 2: down across three fires (longer than the 8 s within which an
    # unclaimed fire may still be claimed by a starting worker); one worker
    # starts 2.5 s after a fire.
    go_at = max(last.values()) / 1000 + 3 * period + 2.5  # > 8 s: an outage
    while go_at < time.time() + 0.2:
        go_at += period
    # The short outages: each short fleet restarts 1 s after a fire, the
    # latest claimed fire at most 7 s old (under 8 s: the fires between are
    # not surely missed, yet too old for the grace).
    starts = {}
    for fleet, worker in zip(fleets, second, strict=True):
        go = go_at
        if fleet in short:
            go = last[fleet] / 1000 + period + 1.0
            while go < time.time() + 0.2:
                go += period
            assert go - last[fleet] / 1000 < 7.5, "the first runs took too long"
        starts[worker] = go
    for worker, go in sorted(starts.items(), key=lambda item: item[1]):
        time.sleep(max(go - time.time(), 0.0))
        worker.go()
    for worker in second:
        worker.wait_line("started")
    time.sleep(max(go_at + 1.5 - time.time(), 0.0))  # the next regular fire too
    for fleet in fleets:
        fleet.stop_all()
    for fleet, worker in zip(fleets, second, strict=True):
        if fleet not in short:
            continue
        runs = [r.fire_ms for r in fleet.records() if r.worker == "second"]
        go_ms = round(starts[worker] * 1000)
        skipped = list(range(last[fleet] + period * 1000, go_ms, period * 1000))
        warnings = [w for w in worker.warnings() if "missed" in w]
        assert skipped, fleet.summary()
        assert not set(skipped) & set(runs), f"{fleet.summary()}: {runs}"
        assert skipped[-1] + period * 1000 in runs, f"{fleet.summary()}: {runs}"
        assert len(warnings) == 1, f"{fleet.summary()}: {worker.stderr()}"
        assert f"missed {len(skipped)} fire(s)" in warnings[0]
        assert "misfire_grace_seconds=0.3; not run here" in warnings[0]
    for fleet in plain + graced:
        stored = last[fleet]
        runs = [r.fire_ms for r in fleet.records() if r.worker == "second"]
        latest = round(go_at * 1000) - 2500
        regular = latest + period * 1000
        older = (latest - stored) // (period * 1000) - 1  # strictly in between
        missed_older = latest - period * 1000
        (restarted,) = [w for w in fleet.workers if w.name == "second"]
        warnings = [w for w in restarted.warnings() if "missed" in w]
        assert len(warnings) == 1, f"{fleet.summary()}: {restarted.stderr()}"
        assert missed_older not in runs
        assert regular in runs
        if fleet in plain:
            assert runs.count(latest) == 1, f"{fleet.summary()}: {runs}"
            assert f"missed {older} fire(s)" in warnings[0]
        else:
            assert latest not in runs, f"{fleet.summary()}: {runs}"
            assert f"missed {older + 1} fire(s)" in warnings[0]
            assert "misfire_grace_seconds=0.3" in warnings[0]
