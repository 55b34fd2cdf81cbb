"""Drive worker processes (tests/integration/faults/worker.py) and read what they did.

Each `Worker` is a real OS process; the test sends it real signals (SIGKILL,
SIGSTOP/SIGCONT, SIGTERM) and then reads its event and log files. Times are
wall-clock seconds (`time.time()`), comparable across processes on one
machine.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.integration.faults.worker import LEADER_TASK

#: Repository root: the worker runs as ``python -m tests.integration.faults.worker``.
ROOT = Path(__file__).resolve().parents[3]

#: Seconds a worker gets to start (interpreter + imports take ~1 s on 2 cores).
START_TIMEOUT = 20.0


@dataclass(frozen=True)
class Timings:
    """The election and task timings the workers use, and the server's slack."""

    lease: float = 2.0
    renew: float = 1.5
    retry: float = 0.2
    backend_timeout: float = 1.0
    interval: float = 0.2
    #: How late the server may expire a key after its TTL (NATS sweeps coarsely).
    expiry_slack: float = 0.0

    def args(self) -> list[str]:
        """Worker command-line arguments."""
        return [
            "--lease",
            str(self.lease),
            "--renew",
            str(self.renew),
            "--retry",
            str(self.retry),
            "--backend-timeout",
            str(self.backend_timeout),
            "--interval",
            str(self.interval),
        ]

    @property
    def takeover_bound(self) -> float:
        """Upper bound from a leader's crash to the next leader's first run.

        The lease was renewed at most `retry` before the crash, expires
        `lease` later (plus the server's expiry slack); another worker tries
        every `retry` and its task checks every `interval`.
        """
        return self.lease + self.retry + self.interval + self.expiry_slack


@dataclass(frozen=True)
class Event:
    """One line of a worker's event file."""

    time: float
    kind: str
    detail: str


@dataclass(frozen=True)
class LogLine:
    """One log record of a worker (continuation lines of tracebacks dropped)."""

    time: float
    level: str
    logger: str
    message: str


@dataclass
class Worker:
    """A worker process."""

    name: str
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def alive(self) -> bool:
        """Whether the process has not exited."""
        return self.process.poll() is None

    # Signals --------------------------------------------------------------

    def send(self, sig: signal.Signals) -> float:
        """Send `sig`; return the wall-clock time it was sent."""
        now = time.time()
        os.kill(self.pid, sig)
        return now

    def kill(self) -> float:
        """SIGKILL: a crash."""
        now = self.send(signal.SIGKILL)
        self.process.wait(10)
        return now

    def pause(self) -> float:
        """SIGSTOP: a stalled process (or one cut off by a partition)."""
        return self.send(signal.SIGSTOP)

    def resume(self) -> float:
        """SIGCONT."""
        return self.send(signal.SIGCONT)

    def terminate(self) -> float:
        """SIGTERM: the app's graceful shutdown."""
        return self.send(signal.SIGTERM)

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the process to exit; its return code."""
        return self.process.wait(timeout)

    def stderr(self) -> str:
        """What the process wrote on stderr."""
        path = self.directory / f"{self.name}.stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    # Records ----------------------------------------------------------------

    def events(self, kind: str | None = None, detail: str | None = None) -> list[Event]:
        """The worker's events so far, optionally filtered."""
        path = self.directory / f"{self.name}.events"
        if not path.exists():
            return []
        found = []
        for line in path.read_text().splitlines():
            parts = line.split(" ", 2)
            if len(parts) < 2:
                continue
            event = Event(float(parts[0]), parts[1], parts[2] if len(parts) > 2 else "")
            if kind is not None and event.kind != kind:
                continue
            if detail is not None and not event.detail.startswith(detail):
                continue
            found.append(event)
        return found

    def runs(self, task: str = LEADER_TASK) -> list[float]:
        """Start times of the runs of `task`."""
        return [e.time for e in self.events("run", task)]

    def logs(self, level: str | None = None, contains: str = "") -> list[LogLine]:
        """The worker's log records, optionally filtered."""
        path = self.directory / f"{self.name}.log"
        if not path.exists():
            return []
        found = []
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split(" ", 3)
            if len(parts) < 4:
                continue
            try:
                when = float(parts[0])
            except ValueError:
                continue  # a traceback line
            record = LogLine(when, parts[1], parts[2], parts[3])
            if level is not None and record.level != level:
                continue
            if contains and contains not in record.message:
                continue
            found.append(record)
        return found

    def is_leader_at(self, when: float) -> bool:
        """Whether `is_leader()` was True at `when` (from the 10 ms watcher)."""
        state = False
        for event in self.events("leader"):
            if event.time > when:
                break
            state = event.detail == "1"
        return state

    def leader_changes(self, after: float = 0.0) -> list[Event]:
        """The `leader 1/0` events after `after`."""
        return [e for e in self.events("leader") if e.time > after]


class Fleet:
    """Worker processes sharing one backend namespace."""

    def __init__(
        self,
        *,
        backend: str,
        url: str,
        namespace: str,
        directory: Path,
        timings: Timings,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.backend = backend
        self.url = url
        self.namespace = namespace
        self.directory = directory
        self.timings = timings
        self.extra_args = list(extra_args)
        self.workers: list[Worker] = []

    def spawn(
        self,
        count: int,
        *,
        urls: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> list[Worker]:
        """Start `count` workers at once and wait until each is ready.

        `urls`, when given, is one URL argument per worker.
        """
        started = []
        for index in range(count):
            name = f"w{len(self.workers) + index}"
            url = urls[index] if urls is not None else self.url
            argv = [
                sys.executable,
                "-m",
                "tests.integration.faults.worker",
                "--backend",
                self.backend,
                "--url",
                url,
                "--namespace",
                self.namespace,
                "--worker",
                name,
                "--dir",
                str(self.directory),
                *self.timings.args(),
                *self.extra_args,
                *extra_args,
            ]
            with (self.directory / f"{name}.stderr").open("wb") as stderr:
                process = subprocess.Popen(
                    argv,
                    cwd=ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    start_new_session=True,
                )
            started.append(Worker(name, self.directory, process))
        self.workers.extend(started)
        deadline = time.monotonic() + START_TIMEOUT
        for worker in started:
            stdout = worker.process.stdout
            assert stdout is not None
            line = b""
            while not line and worker.alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ready, _, _ = select.select([stdout], [], [], min(left, 0.5))
                if ready:
                    line = stdout.readline()
            if line.strip() != b"ready":
                msg = (
                    f"worker {worker.name} did not start (exit code "
                    f"{worker.process.poll()}):\n{worker.stderr()}"
                )
                raise AssertionError(msg)
        return started

    def wait_leader(self, timeout: float = 10.0, runs: int = 3) -> Worker:
        """Wait until one worker has run the leader task `runs` times; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for worker in self.workers:
                if worker.alive() and len(worker.runs()) >= runs:
                    return worker
            time.sleep(0.05)
        msg = f"no leader ran {LEADER_TASK} {runs} times within {timeout}s"
        raise AssertionError(msg + self.diagnostics())

    def wait_run(
        self,
        after: float,
        *,
        timeout: float,
        task: str = LEADER_TASK,
        workers: Iterable[Worker] | None = None,
    ) -> tuple[Worker, float]:
        """Wait for the first run of `task` after `after`; (worker, time)."""
        pool = list(workers) if workers is not None else self.workers
        deadline = time.monotonic() + timeout
        while True:
            found = [(t, w) for w in pool for t in w.runs(task) if t > after]
            if found:
                first = min(found, key=lambda item: item[0])
                return first[1], first[0]
            if time.monotonic() >= deadline:
                msg = f"no worker ran {task} after {after:.3f} within {timeout}s"
                raise AssertionError(msg + self.diagnostics())
            time.sleep(0.02)

    def all_runs(self, task: str = LEADER_TASK) -> list[tuple[float, str]]:
        """Every run of `task` by every worker, by time."""
        return sorted((t, w.name) for w in self.workers for t in w.runs(task))

    def terminate_all(self, timeout: float = 10.0) -> dict[str, int]:
        """SIGTERM every live worker (SIGCONT first); their return codes."""
        for worker in self.workers:
            if worker.alive():
                with contextlib.suppress(ProcessLookupError):
                    worker.resume()
                    worker.terminate()
        codes = {}
        for worker in self.workers:
            try:
                codes[worker.name] = worker.wait(timeout)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                codes[worker.name] = worker.wait(timeout)
        return codes

    def close(self) -> None:
        """Kill what is left (after a failure)."""
        for worker in self.workers:
            if worker.alive():
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                with contextlib.suppress(Exception):
                    worker.process.wait(5)
            if worker.process.stdout is not None:
                worker.process.stdout.close()

    def diagnostics(self) -> str:
        """Every worker's events tail, log and stderr (for assertion messages)."""
        parts = []
        for worker in self.workers:
            path = self.directory / f"{worker.name}.events"
            events = path.read_text().splitlines()[-15:] if path.exists() else []
            logs = self.directory / f"{worker.name}.log"
            log_text = logs.read_text(errors="replace")[-3000:] if logs.exists() else ""
            parts.append(
                f"\n--- {worker.name} (pid {worker.pid}, exit "
                f"{worker.process.poll()})\nevents: {events}\nlog:\n{log_text}\n"
                f"stderr:\n{worker.stderr()[-2000:]}"
            )
        return "".join(parts)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def contiguous_blocks(
    runs: Sequence[tuple[float, str]],
) -> list[tuple[str, float, float]]:
    """Group time-ordered `(time, worker)` runs into `(worker, first, last)` blocks."""
    blocks: list[tuple[str, float, float]] = []
    for when, name in runs:
        if blocks and blocks[-1][0] == name:
            blocks[-1] = (name, blocks[-1][1], when)
        else:
            blocks.append((name, when, when))
    return blocks


def max_gap(times: Sequence[float], start: float, end: float) -> float:
    """The longest stretch in [start, end] without any of `times`."""
    points = [start, *sorted(t for t in times if start < t < end), end]
    return max((b - a for a, b in itertools.pairwise(points)), default=math.inf)


def elected_before(worker: Worker, when: float) -> float | None:
    """When `worker` last became leader (a `leader 1` event) at or before `when`."""
    times = [e.time for e in worker.events("leader", "1") if e.time <= when]
    return max(times) if times else None


def check_handovers(
    fleet: Fleet, task: str = LEADER_TASK, watcher_lag: float = 0.1
) -> list[tuple[str, str, float, float]]:
    """Assert that no two workers ever acted as leader at the same time.

    The leader task's runs, ordered by time, form blocks of one worker each.
    At every change of block from worker X to worker Y, Y must have become
    leader after X's last run (up to `watcher_lag`, the delay of the 10 ms
    `is_leader()` watcher behind Y's first run). Returns the handovers as
    ``(from, to, x_last_run, y_elected)``.
    """
    by_name = {w.name: w for w in fleet.workers}
    blocks = contiguous_blocks(fleet.all_runs(task))
    handovers = []
    for (prev_name, _, prev_last), (name, first, _) in itertools.pairwise(blocks):
        elected = elected_before(by_name[name], first + watcher_lag)
        assert elected is not None, f"{name} ran {task} but was never elected"
        assert elected > prev_last, (
            f"{name} ran {task} at {first:.3f} but was elected at {elected} "
            f"before {prev_name}'s last run at {prev_last:.3f}: two leaders"
            + fleet.diagnostics()
        )
        handovers.append((prev_name, name, prev_last, elected))
    return handovers


def check_spacing(fleet: Fleet, task: str, min_spacing: float) -> float:
    """Assert runs of `task` (all workers) are at least `min_spacing` apart."""
    runs = fleet.all_runs(task)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(runs)]
    smallest = min(gaps, default=math.inf)
    assert smallest >= min_spacing, (
        f"two runs of {task} {smallest:.3f}s apart (< {min_spacing}s): a double "
        f"run; runs={runs}"
    )
    return smallest


def figure(
    name: str, value: float, bound: float | None = None, unit: str = "s"
) -> None:
    """Print a measured figure (``pytest -s``) and append it to $FAULT_FIGURES."""

    def show(number: float) -> str:
        return f"{number:.3f}{unit}" if unit == "s" else f"{number:g}{unit}"

    text = f"FIGURE {name}: {show(value)}"
    if bound is not None:
        text += f" (bound {show(bound)})"
    print(text)
    path = os.environ.get("FAULT_FIGURES")
    if path:
        with open(path, "a") as file:
            file.write(text + "\n")


def leader_intervals(worker: Worker, end: float) -> list[tuple[float, float]]:
    """The spans during which `worker`'s `is_leader()` was True (10 ms watcher)."""
    spans = []
    since: float | None = None
    for event in worker.events("leader"):
        if event.detail == "1" and since is None:
            since = event.time
        elif event.detail == "0" and since is not None:
            spans.append((since, event.time))
            since = None
    if since is not None:
        spans.append((since, end))
    return spans


def longest_double_leadership(fleet: Fleet, end: float) -> float:
    """The longest time two workers' `is_leader()` were True together."""
    spans = {w.name: leader_intervals(w, end) for w in fleet.workers}
    longest = 0.0
    names = list(spans)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            for a_start, a_end in spans[first]:
                for b_start, b_end in spans[second]:
                    longest = max(longest, min(a_end, b_end) - max(a_start, b_start))
    return longest
