"""Run the benchmarks: ``python benchmarks/run.py`` (``--smoke`` for CI).

Starts a throwaway Redis and NATS (JetStream) on loopback, creates the
peers' environments under ``benchmarks/.venvs`` (``uv venv`` + ``uv pip
install`` from PyPI, one environment per peer), runs every benchmark with the
targets interleaved round by round (A B C, A B C, ...), prints markdown
tables of medians and ratios to the floor of the same round, and writes
``benchmarks/results/latest.json``, ``benchmarks/results/latest.md`` and the
plot ``docs/img/benchmarks.png``.

Standard library only: any Python >= 3.11 can run it. This project is
measured from the repository's ``.venv``; every peer runs as a subprocess of
its own environment.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as dt
import json
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _envs
from _envs import BENCH_DIR, REPO, Env, child_env, clean_env, ensure_envs, project_env
from _report import markdown_report
from _servers import NatsServer, RedisServer

BENCHMARKS = ("lock", "scheduler", "load", "takeover")


@dataclass(frozen=True)
class Settings:
    """How long and how often each benchmark runs."""

    lock_rounds: int = 5
    lock_seconds: float = 1.0
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


FULL = Settings()
SMOKE = Settings(
    lock_rounds=1,
    lock_seconds=0.1,
    scheduler_rounds=1,
    scheduler_jobs=(50,),
    scheduler_seconds=1.5,
    load_tasks=5,
    load_seconds=2.0,
    monitor_seconds=0.5,
    takeover_rounds=1,
    takeover_lease=1.0,
    takeover_retry=0.1,
)


@dataclass(frozen=True)
class Target:
    """One thing measured: its id, the environment it runs in, a label."""

    id: str
    env: str
    label: str
    role: str  # "floor", "project" or "peer"


LOCK_TARGETS = {
    "redis": [
        Target(
            "redis-floor",
            "project",
            "raw floor: 2 CAS scripts",
            "floor",
        ),
        Target(
            "redis-grelmicro-backend",
            "project",
            "grelmicro RedisSyncBackend",
            "project",
        ),
        Target("redis-grelmicro-lock", "project", "grelmicro Lock (Redis)", "project"),
        Target("redis-redispy-lock", "project", "redis-py asyncio Lock", "peer"),
        Target(
            "redis-grelmicro060-backend",
            "grelmicro060",
            "grelmicro 0.6.0 RedisSyncBackend",
            "peer",
        ),
        Target(
            "redis-grelmicro060-lock", "grelmicro060", "grelmicro 0.6.0 Lock", "peer"
        ),
        Target("redis-aioredlock", "aioredlock", "aioredlock", "peer"),
        Target("redis-pottery", "pottery", "pottery AIORedlock", "peer"),
    ],
    "nats": [
        Target(
            "nats-floor",
            "project",
            "raw floor: create + purge",
            "floor",
        ),
        Target(
            "nats-grelmicro-backend", "project", "grelmicro NatsSyncBackend", "project"
        ),
        Target("nats-grelmicro-lock", "project", "grelmicro Lock (NATS)", "project"),
        Target("nats-natskvlock", "natskvlock", "nats-kv-lock", "peer"),
        Target("nats-natspylock", "natspylock", "natspy-lock", "peer"),
    ],
}

SCHEDULER_TARGETS = [
    Target("sleep-loop", "project", "floor: one asyncio sleep loop per job", "floor"),
    Target("heap-loop", "project", "floor: one heap-based timer loop", "floor"),
    Target("grelmicro", "project", "grelmicro TaskManager", "project"),
    Target("apscheduler", "apscheduler", "APScheduler 3.11 AsyncIOScheduler", "peer"),
    Target("grelmicro060", "grelmicro060", "grelmicro 0.6.0 TaskManager", "peer"),
]

MULTI_TARGETS = [
    Target("grelmicro-redis", "project", "grelmicro, Redis", "project"),
    Target("grelmicro-nats", "project", "grelmicro, NATS", "project"),
    Target("grelmicro060-redis", "grelmicro060", "grelmicro 0.6.0, Redis", "peer"),
]

#: Redis commands that set up connections or measure: not per-execution load.
SETUP_COMMANDS = {
    "client|setinfo",
    "client|setname",
    "hello",
    "select",
    "auth",
    "ping",
    "info",
    "config|resetstat",
    "monitor",
    "script|load",
    "command|docs",
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# Processes --------------------------------------------------------------------


class Worker:
    """A child process whose stdout lines arrive on a queue (with arrival time)."""

    def __init__(
        self,
        argv: list[str],
        events: queue.Queue[tuple[float, Worker, str]] | None = None,
        stdin: bool = False,
    ) -> None:
        self.events: queue.Queue[tuple[float, Worker, str]] = events or queue.Queue()
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            argv,
            cwd=BENCH_DIR,
            env=child_env(argv[0]),
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
        """The next stdout line of this worker ('' at EOF); TimeoutError if none."""
        _, _, line = self.events.get(timeout=timeout)
        return line

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


def python_of(env: Env) -> str:
    assert env.python is not None
    return str(env.python)


# Lock cycle ---------------------------------------------------------------


def run_lock(
    s: Settings, envs: dict[str, Env], redis: RedisServer, nats: NatsServer
) -> list[dict[str, Any]]:
    """Lock cycle: every target a long-lived worker, commands round by round."""
    workers: dict[str, Worker] = {}
    status: dict[str, str] = {}
    for targets in LOCK_TARGETS.values():
        for target in targets:
            env = envs.get(target.env)
            if env is None or env.python is None:
                status[target.id] = env.error if env else "environment not requested"
                continue
            workers[target.id] = Worker(
                [
                    python_of(env),
                    "lockcycle.py",
                    "--target",
                    target.id,
                    "--redis-url",
                    redis.url,
                    "--nats-url",
                    nats.url,
                ],
                stdin=True,
            )
    for target_id, worker in list(workers.items()):
        try:
            hello = json.loads(worker.next_line(timeout=60) or "{}")
        except (queue.Empty, ValueError):
            hello = {"error": f"no answer: {worker.stderr_tail()}"}
        if "error" in hello or not hello.get("ready"):
            status[target_id] = (
                f"does not work: {hello.get('error') or worker.stderr_tail()}"
            )
            log(f"lock: {target_id}: {status[target_id]}")
            worker.stop()
            del workers[target_id]
        else:
            status[target_id] = "ok"

    modes = [("seq", 1), ("conc", s.lock_concurrency)]
    rounds: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    try:
        for round_index in range(s.lock_rounds):
            log(f"lock: round {round_index + 1}/{s.lock_rounds}")
            for kind, targets in LOCK_TARGETS.items():
                for mode, concurrency in modes:
                    bucket = rounds.setdefault((kind, mode), {})
                    for target in targets:
                        worker = workers.get(target.id)
                        if worker is None:
                            continue
                        command = {
                            "mode": mode,
                            "seconds": s.lock_seconds,
                            "concurrency": concurrency,
                        }
                        worker.send(json.dumps(command))
                        try:
                            result = json.loads(worker.next_line(timeout=60) or "{}")
                        except (queue.Empty, ValueError):
                            result = {"error": f"no answer: {worker.stderr_tail()}"}
                        if "error" in result:
                            status[target.id] = f"failed: {result['error']}"
                            log(f"lock: {target.id}: {status[target.id]}")
                            worker.stop()
                            del workers[target.id]
                            continue
                        result["round"] = round_index
                        bucket.setdefault(target.id, []).append(result)
    finally:
        for worker in workers.values():
            worker.stop()

    benchmarks = []
    for kind, targets in LOCK_TARGETS.items():
        for mode, concurrency in modes:
            bucket = rounds.get((kind, mode), {})
            floor = targets[0].id
            floor_by_round = {r["round"]: r["ops"] for r in bucket.get(floor, [])}
            rows = []
            for target in targets:
                results = bucket.get(target.id, [])
                ratios = [
                    r["ops"] / floor_by_round[r["round"]]
                    for r in results
                    if floor_by_round.get(r["round"])
                ]
                row: dict[str, Any] = {
                    "target": target.id,
                    "label": target.label,
                    "role": target.role,
                    "env": target.env,
                    "status": status.get(target.id, "not run"),
                    "rounds": results,
                }
                if results:
                    row["ops"] = statistics.median(r["ops"] for r in results)
                    row["ratio"] = statistics.median(ratios) if ratios else None
                    if mode == "seq":
                        row["p50_ms"] = statistics.median(r["p50_ms"] for r in results)
                        row["p99_ms"] = statistics.median(r["p99_ms"] for r in results)
                rows.append(row)
            benchmarks.append(
                {
                    "name": f"lock-{kind}-{mode}",
                    "title": (
                        f"Lock cycle, {'Redis' if kind == 'redis' else 'NATS'}, "
                        + (
                            "sequential"
                            if mode == "seq"
                            else f"{concurrency} coroutines on distinct keys"
                        )
                    ),
                    "unit": "acquire+release cycles/s",
                    "floor": floor,
                    "concurrency": concurrency,
                    "rows": rows,
                }
            )
    return benchmarks


# Scheduler overhead -----------------------------------------------------------


def run_scheduler(s: Settings, envs: dict[str, Env]) -> list[dict[str, Any]]:
    """Scheduler overhead: each target and size in a fresh process, per round."""
    results: dict[int, dict[str, list[dict[str, Any]]]] = {}
    failures: dict[tuple[str, int], list[str]] = {}
    status: dict[str, str] = {}
    for target in SCHEDULER_TARGETS:
        env = envs.get(target.env)
        status[target.id] = (
            "ok"
            if env and env.python
            else (env.error if env else "environment not requested")
        )
    for round_index in range(s.scheduler_rounds):
        for jobs in s.scheduler_jobs:
            log(f"scheduler: round {round_index + 1}/{s.scheduler_rounds}, {jobs} jobs")
            for target in SCHEDULER_TARGETS:
                env = envs.get(target.env)
                if env is None or env.python is None:
                    continue
                argv = [
                    python_of(env),
                    "scheduler.py",
                    "--target",
                    target.id,
                    "--jobs",
                    str(jobs),
                    "--seconds",
                    str(s.scheduler_seconds),
                ]
                # stderr to a file: a peer may log a line per missed run.
                with tempfile.TemporaryFile() as stderr:
                    try:
                        done = subprocess.run(
                            argv,
                            cwd=BENCH_DIR,
                            env=child_env(argv[0]),
                            stdout=subprocess.PIPE,
                            stderr=stderr,
                            text=True,
                            timeout=s.scheduler_seconds + 180,
                            check=False,
                        )
                        result = json.loads(done.stdout.strip().splitlines()[-1])
                        exc = None
                    except (subprocess.TimeoutExpired, ValueError, IndexError) as error:
                        exc = error
                    stderr.seek(0, os.SEEK_END)
                    stderr.seek(max(0, stderr.tell() - 4000))
                    stderr_lines = (
                        stderr.read().decode(errors="replace").strip().splitlines()
                    )
                if exc is not None:
                    tail = ""
                    if isinstance(exc, subprocess.TimeoutExpired):
                        tail = "timed out"
                    else:
                        tail = " / ".join(stderr_lines[-3:])
                    failures.setdefault((target.id, jobs), []).append(
                        f"round {round_index + 1}: {tail or exc}"
                    )
                    log(f"scheduler: {target.id}, {jobs} jobs: failed: {tail or exc}")
                    continue
                result["round"] = round_index
                results.setdefault(jobs, {}).setdefault(target.id, []).append(result)

    benchmarks = []
    metrics = (
        "cpu_per_s",
        "peak_rss_mib",
        "startup_s",
        "import_s",
        "late_p50_ms",
        "late_p99_ms",
        "late_max_ms",
        "runs_per_job_s",
    )
    for jobs in s.scheduler_jobs:
        bucket = results.get(jobs, {})
        floor_cpu = {r["round"]: r["cpu_per_s"] for r in bucket.get("sleep-loop", [])}
        rows = []
        for target in SCHEDULER_TARGETS:
            runs = bucket.get(target.id, [])
            row: dict[str, Any] = {
                "target": target.id,
                "label": target.label,
                "role": target.role,
                "env": target.env,
                "status": (
                    "failed: " + "; ".join(failures[(target.id, jobs)])
                    if (target.id, jobs) in failures
                    else status[target.id]
                ),
                "rounds": runs,
            }
            if runs:
                for metric in metrics:
                    row[metric] = statistics.median(r[metric] for r in runs)
                ratios = [
                    r["cpu_per_s"] / floor_cpu[r["round"]]
                    for r in runs
                    if floor_cpu.get(r["round"])
                ]
                row["cpu_ratio"] = statistics.median(ratios) if ratios else None
                row["version"] = runs[0].get("version")
                row["startup_idle"] = all(r.get("startup_idle", True) for r in runs)
            rows.append(row)
        benchmarks.append(
            {
                "name": f"scheduler-{jobs}",
                "title": f"Scheduler overhead, {jobs:,} local interval jobs every 1 s, {s.scheduler_seconds:g} s",
                "jobs": jobs,
                "floor": "sleep-loop",
                "rows": rows,
            }
        )
    return benchmarks


# Backend load -----------------------------------------------------------------


def _monitor_counts(lines: list[str]) -> dict[str, Any]:
    by_command: Counter[str] = Counter()
    for line in lines:
        match = re.match(r'^[\d.]+ \[\d+ ([^\]]+)\] "([^"]+)"', line)
        if not match:
            continue
        source = "lua" if match.group(1) == "lua" else "client"
        by_command[f"{source}:{match.group(2).lower()}"] += 1
    return {"lines": len(lines), "by_command": dict(by_command), "sample": lines[:12]}


def run_load(
    s: Settings, envs: dict[str, Env], redis: RedisServer, nats: NatsServer
) -> list[dict[str, Any]]:
    """Backend load: N workers x M locked tasks, round trips per execution."""
    results: dict[str, list[dict[str, Any]]] = {}
    status: dict[str, str] = {}
    for round_index in range(s.load_rounds):
        for target in MULTI_TARGETS:
            env = envs.get(target.env)
            if env is None or env.python is None:
                status[target.id] = env.error if env else "environment not requested"
                continue
            if status.get(target.id, "ok") != "ok":
                continue
            log(f"load: round {round_index + 1}/{s.load_rounds}, {target.id}")
            is_redis = target.id.endswith("-redis")
            url = redis.url if is_redis else nats.url
            namespace = f"load{round_index}_{target.id.replace('-', '_')}"
            events: queue.Queue[tuple[float, Worker, str]] = queue.Queue()
            workers = [
                Worker(
                    [
                        python_of(env),
                        "load.py",
                        "--target",
                        target.id,
                        "--url",
                        url,
                        "--namespace",
                        namespace,
                        "--tasks",
                        str(s.load_tasks),
                        "--seconds",
                        str(s.load_seconds),
                    ],
                    events=events,
                    stdin=True,
                )
                for _ in range(s.load_workers)
            ]
            try:
                result = _load_once(s, workers, events, is_redis, redis, nats)
            except Exception as exc:
                status[target.id] = f"failed: {exc}"
                log(f"load: {target.id}: {status[target.id]}")
                continue
            finally:
                for worker in workers:
                    worker.stop(signal.SIGKILL)
            status[target.id] = "ok"
            result["round"] = round_index
            results.setdefault(target.id, []).append(result)

    rows = []
    metrics = (
        "executions",
        "exec_per_task_s",
        "client_rt_per_exec",
        "server_cmds_per_exec",
        "js_api_per_exec",
        "in_msgs_per_exec",
        "client_connections",
    )
    for target in MULTI_TARGETS:
        runs = results.get(target.id, [])
        row: dict[str, Any] = {
            "target": target.id,
            "label": target.label,
            "role": target.role,
            "env": target.env,
            "status": status.get(target.id, "not run"),
            "rounds": runs,
        }
        for metric in metrics:
            values = [r[metric] for r in runs if r.get(metric) is not None]
            if values:
                row[metric] = statistics.median(values)
        rows.append(row)
    return [
        {
            "name": "load",
            "title": (
                f"Backend load, {s.load_workers} workers x {s.load_tasks} locked tasks "
                f"(seconds=1, max_lock_seconds=5), {s.load_seconds:g} s"
            ),
            "rows": rows,
        }
    ]


def _load_once(
    s: Settings,
    workers: list[Worker],
    events: queue.Queue[tuple[float, Worker, str]],
    is_redis: bool,
    redis: RedisServer,
    nats: NatsServer,
) -> dict[str, Any]:
    ready: set[int] = set()
    deadline = time.monotonic() + 60
    while len(ready) < len(workers):
        _, worker, line = events.get(timeout=max(0.1, deadline - time.monotonic()))
        if line == "READY":
            ready.add(worker.pid)
        elif line == "":
            raise RuntimeError(f"worker exited: {worker.stderr_tail()}")
    start_at = time.time() + 0.5
    for worker in workers:
        worker.send(repr(start_at))
    before_redis = redis.commandstats() if is_redis else {}
    before_varz = nats.monitoring("varz") if not is_redis else {}
    before_jsz = nats.monitoring("jsz") if not is_redis else {}
    monitor: dict[str, Any] = {}
    if is_redis:
        time.sleep(max(0.0, start_at + s.load_seconds / 2 - time.time()))
        monitor = _monitor_counts(redis.monitor(s.monitor_seconds))
    time.sleep(max(0.0, start_at + s.load_seconds - time.time()))
    after_redis = redis.commandstats() if is_redis else {}
    after_varz = nats.monitoring("varz") if not is_redis else {}
    after_jsz = nats.monitoring("jsz") if not is_redis else {}
    reports: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while len(reports) < len(workers):
        _, sender, line = events.get(timeout=max(0.1, deadline - time.monotonic()))
        if line.startswith("{"):
            reports.append(json.loads(line))
        elif line == "" and sender.process.poll() not in (None, 0):
            raise RuntimeError(f"worker failed: {sender.stderr_tail()}")
    executions = sum(r["executions"] for r in reports)
    round_trips = sum(r["round_trips"] for r in reports)
    result: dict[str, Any] = {
        "executions": executions,
        "exec_per_task_s": executions / s.load_tasks / s.load_seconds,
        "client_round_trips": round_trips,
        "client_rt_per_exec": round_trips / executions if executions else None,
        "client_connections": sum(r["connections"] for r in reports),
        "client_rt_by_kind_per_exec": {
            kind: sum(r.get("round_trips_by_kind", {}).get(kind, 0) for r in reports)
            / executions
            for kind in sorted(
                {k for r in reports for k in r.get("round_trips_by_kind", {})}
            )
        }
        if executions
        else {},
        "workers": reports,
    }
    if is_redis:
        delta = {
            cmd: after_redis.get(cmd, 0) - before_redis.get(cmd, 0)
            for cmd in after_redis
            if after_redis.get(cmd, 0) - before_redis.get(cmd, 0) > 0
        }
        load = {cmd: n for cmd, n in delta.items() if cmd not in SETUP_COMMANDS}
        result["server_commands"] = delta
        result["server_cmds_per_exec"] = (
            sum(load.values()) / executions if executions else None
        )
        result["server_cmds_by_command_per_exec"] = (
            {cmd: n / executions for cmd, n in sorted(load.items())}
            if executions
            else {}
        )
        result["monitor"] = monitor
        if monitor.get("lines") and monitor.get("by_command"):
            result["monitor"]["seconds"] = s.monitor_seconds
    else:
        api = after_jsz.get("api", {}).get("total", 0) - before_jsz.get("api", {}).get(
            "total", 0
        )
        in_msgs = after_varz.get("in_msgs", 0) - before_varz.get("in_msgs", 0)
        out_msgs = after_varz.get("out_msgs", 0) - before_varz.get("out_msgs", 0)
        result["js_api_calls"] = api
        result["js_api_per_exec"] = api / executions if executions else None
        result["in_msgs_per_exec"] = in_msgs / executions if executions else None
        result["out_msgs_per_exec"] = out_msgs / executions if executions else None
        result["client_messages_out"] = sum(r["messages_out"] for r in reports)
        result["server_cmds_per_exec"] = result["in_msgs_per_exec"]
    return result


# Takeover ---------------------------------------------------------------------


class TakeoverPool:
    """N takeover workers of one target; finds the leader, stops it, replaces it."""

    def __init__(self, s: Settings, target: Target, env: Env, url: str) -> None:
        self.s = s
        self.target = target
        self.argv = [
            python_of(env),
            "takeover.py",
            "--target",
            target.id,
            "--url",
            url,
            "--namespace",
            f"takeover_{target.id.replace('-', '_')}",
            "--lease",
            str(s.takeover_lease),
            "--retry",
            str(s.takeover_retry),
            "--interval",
            str(s.takeover_interval),
        ]
        self.events: queue.Queue[tuple[float, Worker, str]] = queue.Queue()
        self.workers: dict[int, Worker] = {}
        self.last_run: dict[int, float] = {}
        for _ in range(s.takeover_workers):
            self.spawn()

    def spawn(self) -> None:
        worker = Worker(self.argv, events=self.events)
        self.workers[worker.pid] = worker
        self.wait_for(lambda w, line: w is worker and line.startswith("READY"), 60)

    def _note(self, event: tuple[float, Worker, str]) -> None:
        _, worker, line = event
        if line.startswith("RUN "):
            self.last_run[worker.pid] = float(line.split()[2])
        elif line == "" and worker.pid in self.workers:
            raise RuntimeError(f"worker {worker.pid} exited: {worker.stderr_tail()}")

    def wait_for(
        self, match: Callable[[Worker, str], bool], timeout: float
    ) -> tuple[float, Worker, str]:
        """Consume events until one matches; TimeoutError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                event = self.events.get(timeout=max(remaining, 0.0001))
            except queue.Empty:
                raise TimeoutError("no such event") from None
            self._note(event)
            if match(event[1], event[2]):
                return event

    def drain(self, seconds: float) -> None:
        """Consume events for `seconds`."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                self._note(self.events.get(timeout=remaining))
            except queue.Empty:
                return

    def leader(self) -> Worker:
        """The worker that ran the gated task last, once it runs steadily."""
        self.last_run.clear()
        self.wait_for(
            lambda w, line: line.startswith("RUN "), self.s.takeover_lease * 4 + 10
        )
        self.drain(3 * self.s.takeover_interval + 0.05)
        current = {p: t for p, t in self.last_run.items() if p in self.workers}
        return self.workers[max(current, key=lambda p: current[p])]

    def stop_leader(self, sig: int) -> float:
        leader = self.leader()
        del self.workers[leader.pid]  # its exit is expected from now on
        stopped_at = time.time()
        os.kill(leader.pid, sig)
        _, _, line = self.wait_for(
            lambda w, line: (
                w is not leader
                and line.startswith("RUN ")
                and float(line.split()[2]) > stopped_at
            ),
            self.s.takeover_lease * 4 + 10,
        )
        took = float(line.split()[2]) - stopped_at
        leader.stop(signal.SIGKILL, timeout=10)
        self.spawn()
        return took

    def close(self) -> None:
        for worker in self.workers.values():
            worker.stop(signal.SIGKILL)


def run_takeover(
    s: Settings, envs: dict[str, Env], redis: RedisServer, nats: NatsServer
) -> list[dict[str, Any]]:
    """Takeover after SIGKILL and after a graceful stop, round by round."""
    pools: dict[str, TakeoverPool] = {}
    status: dict[str, str] = {}
    times: dict[tuple[str, str], list[float]] = {}
    try:
        for target in MULTI_TARGETS:
            env = envs.get(target.env)
            if env is None or env.python is None:
                status[target.id] = env.error if env else "environment not requested"
                continue
            url = redis.url if target.id.endswith("-redis") else nats.url
            try:
                pools[target.id] = TakeoverPool(s, target, env, url)
                status[target.id] = "ok"
            except Exception as exc:
                status[target.id] = f"failed to start: {exc}"
                log(f"takeover: {target.id}: {status[target.id]}")
        for round_index in range(s.takeover_rounds):
            log(f"takeover: round {round_index + 1}/{s.takeover_rounds}")
            for kind, sig in (
                ("graceful", signal.SIGTERM),
                ("sigkill", signal.SIGKILL),
            ):
                for target in MULTI_TARGETS:
                    pool = pools.get(target.id)
                    if pool is None or status[target.id] != "ok":
                        continue
                    try:
                        took = pool.stop_leader(sig)
                    except Exception as exc:
                        status[target.id] = f"failed: {type(exc).__name__}: {exc}"
                        log(f"takeover: {target.id}: {status[target.id]}")
                        continue
                    times.setdefault((target.id, kind), []).append(took)
    finally:
        for pool in pools.values():
            pool.close()
    rows = []
    for target in MULTI_TARGETS:
        row: dict[str, Any] = {
            "target": target.id,
            "label": target.label,
            "role": target.role,
            "env": target.env,
            "status": status.get(target.id, "not run"),
        }
        for kind in ("graceful", "sigkill"):
            values = times.get((target.id, kind), [])
            row[f"{kind}_runs_s"] = values
            if values:
                row[f"{kind}_s"] = statistics.median(values)
        rows.append(row)
    return [
        {
            "name": "takeover",
            "title": (
                f"Takeover: stop the leader, time to the next leader-gated run on another worker "
                f"({s.takeover_workers} workers, lease {s.takeover_lease:g} s, retry {s.takeover_retry:g} s, "
                f"gated task every {s.takeover_interval:g} s)"
            ),
            "lease": s.takeover_lease,
            "retry": s.takeover_retry,
            "rows": rows,
        }
    ]


# Machine and output -----------------------------------------------------------


def machine_info(
    redis: RedisServer | None, nats_bin: Path, project: Env
) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    nproc = subprocess.run(
        ["nproc"], capture_output=True, text=True, check=False
    ).stdout.strip()

    def version_of(argv: list[str]) -> str:
        with contextlib.suppress(OSError):
            return subprocess.run(
                argv, capture_output=True, text=True, check=False
            ).stdout.strip()
        return ""

    commit = version_of(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = version_of(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "grelmicro"]
    )
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": nproc,
        "cpu_model": cpu_model,
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "python": version_of(
            [str(project.python), "-c", "import sys; print(sys.version.split()[0])"]
        ),
        "redis_server": version_of(["redis-server", "--version"]),
        "nats_server": version_of([str(nats_bin), "--version"]),
        "commit": commit + ("+dirty" if dirty else ""),
    }


def plot(results_path: Path, png: Path, envs: dict[str, Env]) -> str | None:
    """Draw the PNG with matplotlib from the tools environment; None if done."""
    tools = envs.get("tools")
    if tools is None or tools.python is None:
        return f"no plot: {tools.error if tools else 'tools environment not requested'}"
    png.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [str(tools.python), str(BENCH_DIR / "_plot.py"), str(results_path), str(png)],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
    )
    if done.returncode != 0:
        return f"no plot: {done.stderr.strip().splitlines()[-1:]}"
    return None


def update_docs(markdown: str, docs: Path) -> None:
    """Replace the generated part of docs/benchmarks.md with the new tables."""
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if not docs.exists():
        return
    text = docs.read_text()
    if start not in text or end not in text:
        return
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    docs.write_text(f"{head}{start}\n{markdown.strip()}\n{end}{tail}")


@contextlib.contextmanager
def servers(
    needed: bool, nats_bin: Path
) -> Iterator[tuple[RedisServer | None, NatsServer | None]]:
    if not needed:
        yield None, None
        return
    redis = RedisServer()
    try:
        nats = NatsServer(nats_bin)
    except Exception:
        redis.stop()
        raise
    try:
        yield redis, nats
    finally:
        redis.stop()
        nats.stop()


def snapshot_source() -> Path:
    """Copy the project's package as it is now (committed or not)."""
    target = Path(tempfile.mkdtemp(prefix="bench-src-"))
    shutil.copytree(
        REPO / "grelmicro",
        target / "grelmicro",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return target


def scrub(value: Any) -> Any:
    """The results without this machine's directories (they get committed)."""
    if isinstance(value, str):
        value = re.sub(r"(?:/[^\s/\"']+)+/site-packages/", ".../site-packages/", value)
        return value.replace(str(REPO), "<repo>").replace(str(Path.home()), "~")
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def render(results: Path, png: Path | None) -> int:
    """Redraw the markdown and the plot of an earlier run (no measuring)."""
    output = json.loads(results.read_text())
    markdown = markdown_report(output)
    results.with_suffix(".md").write_text(markdown)
    print(markdown)
    published = results.resolve() == (BENCH_DIR / "results" / "latest.json").resolve()
    if png is None:
        png = (
            REPO / "docs" / "img" / "benchmarks.png"
            if published
            else results.with_suffix(".png")
        )
    envs = ensure_envs(["tools"], project_env().python or Path(sys.executable))
    problem = plot(results, png, envs)
    if problem:
        log(problem)
    if published and output.get("mode") == "full":
        update_docs(markdown, REPO / "docs" / "benchmarks.md")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few seconds per benchmark; asserts nothing about speed",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS,
        help="run only this benchmark (repeatable)",
    )
    parser.add_argument(
        "--no-peers",
        action="store_true",
        help="measure only this project and the floors",
    )
    parser.add_argument(
        "--rounds", type=int, help="override the number of rounds of every benchmark"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="JSON output (default: benchmarks/results/latest.json for a full run, a temporary directory for --smoke, --only or --no-peers)",
    )
    parser.add_argument(
        "--png",
        type=Path,
        help="plot output (default: docs/img/benchmarks.png with the published results, else next to --out)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="only redraw the tables and the plot from a results JSON",
    )
    args = parser.parse_args()
    if args.render:
        return render(args.render, args.png)

    s = SMOKE if args.smoke else FULL
    if args.rounds:
        s = Settings(
            **{
                **s.__dict__,
                **dict.fromkeys(
                    (
                        "lock_rounds",
                        "scheduler_rounds",
                        "load_rounds",
                        "takeover_rounds",
                    ),
                    args.rounds,
                ),
            }
        )
    selected = args.only or list(BENCHMARKS)
    # Only a full run of everything replaces the published results; a smoke or
    # partial run goes to a temporary directory unless --out says otherwise.
    published = not args.smoke and not args.only and not args.no_peers
    if args.out is None:
        if published:
            args.out = BENCH_DIR / "results" / "latest.json"
        else:
            args.out = Path(tempfile.mkdtemp(prefix="bench-")) / "results.json"
    if args.png is None:
        args.png = (
            REPO / "docs" / "img" / "benchmarks.png"
            if args.out == BENCH_DIR / "results" / "latest.json"
            else args.out.with_suffix(".png")
        )
    started = time.monotonic()

    project = project_env()
    nats_bin = REPO / ".venv" / "bin" / "nats-server"
    wanted_envs: set[str] = {"tools"}
    if not args.no_peers:
        for name in selected:
            targets = (
                [t for ts in LOCK_TARGETS.values() for t in ts]
                if name == "lock"
                else SCHEDULER_TARGETS
                if name == "scheduler"
                else MULTI_TARGETS
            )
            wanted_envs.update(t.env for t in targets if t.env != "project")
    log(f"preparing environments: {', '.join(sorted(wanted_envs))}")
    envs = ensure_envs(sorted(wanted_envs), project.python or Path(sys.executable))
    for env in envs.values():
        if env.error:
            log(f"environment {env.name}: {env.error}")
    envs["project"] = project
    if args.no_peers:
        for name in (
            "grelmicro060",
            "apscheduler",
            "aioredlock",
            "pottery",
            "natskvlock",
            "natspylock",
        ):
            envs[name] = Env(name, None, error="skipped (--no-peers)")

    output: dict[str, Any] = {
        "mode": "smoke" if args.smoke else "full",
        "settings": s.__dict__ | {"scheduler_jobs": list(s.scheduler_jobs)},
        "environments": {
            name: {"error": env.error, "packages": env.packages}
            for name, env in sorted(envs.items())
        },
        "benchmarks": [],
    }
    # Measure the source as it is now, even if commits land during the run.
    _envs.PROJECT_SOURCE = snapshot_source()
    atexit.register(shutil.rmtree, _envs.PROJECT_SOURCE, ignore_errors=True)
    needs_servers = any(b in selected for b in ("lock", "load", "takeover"))
    with servers(needs_servers, nats_bin) as (redis, nats):
        output["machine"] = machine_info(redis, nats_bin, project)
        for name in BENCHMARKS:
            if name not in selected:
                continue
            log(f"benchmark {name}")
            if name == "lock":
                assert redis
                assert nats
                output["benchmarks"] += run_lock(s, envs, redis, nats)
            elif name == "scheduler":
                output["benchmarks"] += run_scheduler(s, envs)
            elif name == "load":
                assert redis
                assert nats
                output["benchmarks"] += run_load(s, envs, redis, nats)
            else:
                assert redis
                assert nats
                output["benchmarks"] += run_takeover(s, envs, redis, nats)
    output["elapsed_s"] = time.monotonic() - started
    shutil.rmtree(_envs.PROJECT_SOURCE, ignore_errors=True)
    _envs.PROJECT_SOURCE = None
    output = scrub(output)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(output, indent=1) + "\n")
    markdown = markdown_report(output)
    args.out.with_suffix(".md").write_text(markdown)
    print(markdown)
    problem = plot(args.out, args.png, envs)
    if problem:
        log(problem)
    if published and args.out == BENCH_DIR / "results" / "latest.json":
        update_docs(markdown, REPO / "docs" / "benchmarks.md")
    log(
        f"wrote {args.out}, {args.out.with_suffix('.md')}"
        + ("" if problem else f", {args.png}")
    )
    log(f"done in {output['elapsed_s']:.0f} s")

    # The smoke check: every benchmark produced rows, and this project's and
    # the floors' targets all ran (peers may be unavailable, with a reason).
    failures = []
    for bench in output["benchmarks"]:
        for row in bench["rows"]:
            if row["role"] in ("project", "floor") and row["status"] != "ok":
                failures.append(f"{bench['name']}: {row['target']}: {row['status']}")
    names = {b["name"].split("-")[0] for b in output["benchmarks"]}
    failures += [f"{name}: no output" for name in selected if name not in names]
    if not args.out.exists():
        failures.append("no JSON written")
    for failure in failures:
        log(f"FAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
