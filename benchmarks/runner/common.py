"""What every benchmark of the runner shares: settings, targets, worker
processes, and the one aggregation of rounds into table rows."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.envs import Env, child_env

WORKERS_DIR = Path(__file__).resolve().parent.parent / "workers"


@dataclass(frozen=True)
class Settings:
    """How long and how often each benchmark runs."""

    lock_rounds: int = 5
    lock_seconds: float = 1.0  # per target, table and round, split in slices
    lock_slices: int = 5
    lock_concurrency: int = 8
    scheduler_rounds: int = 2
    scheduler_jobs: tuple[int, ...] = (1_000, 10_000)
    scheduler_seconds: float = 20.0
    load_rounds: int = 1
    load_workers: int = 3
    load_tasks: int = 100
    load_seconds: float = 20.0
    monitor_seconds: float = 2.0
    takeover_rounds: int = 5
    takeover_workers: int = 3
    takeover_lease: float = 2.0
    takeover_retry: float = 0.25
    takeover_interval: float = 0.05
    otel_rounds: int = 3
    otel_tasks: int = 10_000
    otel_seconds: float = 10.0

    def with_rounds(self, rounds: int) -> Settings:
        """These settings with every benchmark's number of rounds set."""
        fields = dict(self.__dict__)
        for key in fields:
            if key.endswith("_rounds"):
                fields[key] = rounds
        return Settings(**fields)

    def as_json(self) -> dict[str, Any]:
        return self.__dict__ | {"scheduler_jobs": list(self.scheduler_jobs)}


FULL = Settings()
SMOKE = Settings(
    lock_rounds=1,
    lock_seconds=0.1,
    lock_slices=1,
    scheduler_rounds=1,
    scheduler_jobs=(50,),
    scheduler_seconds=1.5,
    load_tasks=5,
    load_seconds=2.0,
    monitor_seconds=0.5,
    takeover_rounds=1,
    takeover_lease=1.0,
    takeover_retry=0.1,
    otel_rounds=1,
    otel_tasks=50,
    otel_seconds=1.5,
)


@dataclass(frozen=True)
class Target:
    """One thing measured: its id, the environment it runs in, a label.

    `worker` names what the worker script runs when it differs from `id`
    (the same target measured in another environment, e.g. a baseline).
    """

    id: str
    env: str
    label: str
    role: str  # "floor", "project", "baseline" or "peer"
    worker: str = ""

    @property
    def runs(self) -> str:
        return self.worker or self.id


@dataclass
class Context:
    """What a benchmark gets from the runner."""

    settings: Settings
    envs: dict[str, Env]
    redis: Any = None  # tests.servers.RedisServer
    nats: Any = None  # tests.servers.NatsServer
    baseline: str | None = None  # short commit measured beside this one

    def env_of(self, target: Target) -> Env | None:
        """The target's ready environment, or None (see `env_status`)."""
        env = self.envs.get(target.env)
        return env if env is not None and env.python is not None else None

    def env_status(self, target: Target) -> str:
        """``ok`` if the target's environment is ready, else why not."""
        env = self.envs.get(target.env)
        if env is None:
            return "environment not requested"
        return "ok" if env.python is not None else env.error or "no environment"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# Aggregation ------------------------------------------------------------------


def summarize(
    targets: Iterable[Target],
    rounds: dict[str, list[dict[str, Any]]],
    status: dict[str, str],
    *,
    metrics: Iterable[str],
    floor: str | None = None,
    ratio_of: str | None = None,
    ratio_key: str = "ratio",
) -> list[dict[str, Any]]:
    """One table row per target: the medians of its rounds.

    `rounds` maps a target id to its per-round results (each with a
    ``round`` index). Every metric present in a target's rounds gets its
    median; with `floor` and `ratio_of`, ``row[ratio_key]`` is the median over
    rounds of the target's `ratio_of` divided by the floor's in the same
    round.
    """
    metrics = tuple(metrics)
    floor_by_round = {
        r["round"]: r[ratio_of]
        for r in (rounds.get(floor, []) if floor and ratio_of else [])
        if r.get(ratio_of)
    }
    rows = []
    for target in targets:
        results = rounds.get(target.id, [])
        row: dict[str, Any] = {
            "target": target.id,
            "label": target.label,
            "role": target.role,
            "env": target.env,
            "status": status.get(target.id, "not run"),
            "rounds": results,
        }
        for metric in metrics:
            values = [r[metric] for r in results if r.get(metric) is not None]
            if values:
                row[metric] = statistics.median(values)
        if ratio_of and results:
            ratios = [
                r[ratio_of] / floor_by_round[r["round"]]
                for r in results
                if r.get(ratio_of) is not None and r["round"] in floor_by_round
            ]
            row[ratio_key] = statistics.median(ratios) if ratios else None
        rows.append(row)
    return rows


# Processes --------------------------------------------------------------------

Event = tuple[float, "Worker", str]


class Worker:
    """A worker script in a target's environment; stdout lines arrive on a
    queue with their arrival time (``''`` at EOF)."""

    def __init__(
        self,
        env: Env,
        script: str,
        args: list[str],
        events: queue.Queue[Event] | None = None,
        stdin: bool = False,
    ) -> None:
        assert env.python is not None
        self.events: queue.Queue[Event] = events or queue.Queue()
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [str(env.python), script, *args],
            cwd=WORKERS_DIR,
            env=child_env(env),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
        )
        self.pid = self.process.pid
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.put((time.time(), self, line.rstrip("\n")))
        self.events.put((time.time(), self, ""))  # EOF

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def next_line(self, timeout: float) -> str:
        """The next stdout line of this worker ('' at EOF); queue.Empty if none."""
        _, _, line = self.events.get(timeout=timeout)
        return line

    def ask(self, command: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        """Send one JSON command, read one JSON answer (``{"error"}`` if none)."""
        if command:
            self.send(json.dumps(command))
        try:
            answer: dict[str, Any] = json.loads(self.next_line(timeout) or "{}")
        except (queue.Empty, ValueError):
            return {"error": f"no answer: {self.stderr_tail()}"}
        return answer

    def stderr_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(2)
        self.stderr.seek(0)
        return " / ".join(self.stderr.read().strip().splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self.stderr.close()


def run_once(
    env: Env, script: str, args: list[str], timeout: float
) -> tuple[dict[str, Any] | None, str]:
    """Run a worker script to its end; its last stdout line as JSON, or
    (None, why not). stderr goes to a file: a peer may log a line per run."""
    with tempfile.TemporaryFile() as stderr:
        try:
            done = subprocess.run(
                [str(env.python), script, *args],
                cwd=WORKERS_DIR,
                env=child_env(env),
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                timeout=timeout,
                check=False,
            )
            result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
            return result, ""
        except subprocess.TimeoutExpired:
            return None, "timed out"
        except (ValueError, IndexError) as exc:
            stderr.seek(0, os.SEEK_END)
            stderr.seek(max(0, stderr.tell() - 4000))
            tail = stderr.read().decode(errors="replace").strip().splitlines()
            return None, " / ".join(tail[-3:]) or repr(exc)


def wait_for_event(
    events: queue.Queue[Event],
    match: Callable[[Event], bool],
    timeout: float,
    note: Callable[[Event], None] | None = None,
) -> Event:
    """Consume events until one matches; TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            event = events.get(timeout=max(deadline - time.monotonic(), 0.0001))
        except queue.Empty:
            raise TimeoutError("no such event") from None
        if note is not None:
            note(event)
        if match(event):
            return event
