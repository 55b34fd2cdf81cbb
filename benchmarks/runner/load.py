"""Backend load: N worker processes x M locked tasks on one server.

Per locked execution: client round trips (socket writes) and commands (counted in each worker by
wrapping the driver), server commands (Redis ``INFO commandstats`` and a
``MONITOR`` sample; NATS ``/varz`` and ``/jsz``).
"""

from __future__ import annotations

import json
import queue
import re
import signal
import time
from collections import Counter
from typing import Any

from runner.common import Context, Event, Settings, Target, Worker, log, summarize
from runner.servers import commandstats, monitor, monitoring

NAME = "load"
SERVERS = True  # needs Redis and NATS

TARGETS = [
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

METRICS = (
    "executions",
    "exec_per_task_s",
    "client_rt_per_exec",
    "client_cmds_per_exec",
    "server_cmds_per_exec",
    "js_api_per_exec",
    "in_msgs_per_exec",
    "client_connections",
)


def environments(baseline: str | None = None) -> set[str]:
    return {t.env for t in TARGETS}


def run(ctx: Context) -> list[dict[str, Any]]:
    s = ctx.settings
    results: dict[str, list[dict[str, Any]]] = {}
    status = {t.id: ctx.env_status(t) for t in TARGETS}
    for round_index in range(s.load_rounds):
        for target in TARGETS:
            env = ctx.env_of(target)
            if env is None or status[target.id] != "ok":
                continue
            log(f"load: round {round_index + 1}/{s.load_rounds}, {target.id}")
            is_redis = target.id.endswith("-redis")
            url = ctx.redis.url if is_redis else ctx.nats.url
            namespace = f"load{round_index}_{target.id.replace('-', '_')}"
            events: queue.Queue[Event] = queue.Queue()
            workers = [
                Worker(
                    env,
                    "load.py",
                    [
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
                result = _once(s, workers, events, is_redis, ctx.redis, ctx.nats)
            except Exception as exc:
                status[target.id] = f"failed: {exc}"
                log(f"load: {target.id}: {status[target.id]}")
                continue
            finally:
                for worker in workers:
                    worker.stop(signal.SIGKILL)
            result["round"] = round_index
            results.setdefault(target.id, []).append(result)

    return [
        {
            "name": "load",
            "title": (
                f"Backend load, {s.load_workers} workers x {s.load_tasks} locked tasks "
                f"(seconds=1, max_lock_seconds=5), {s.load_seconds:g} s"
            ),
            "rows": summarize(TARGETS, results, status, metrics=METRICS),
        }
    ]


def _monitor_counts(lines: list[str]) -> dict[str, Any]:
    by_command: Counter[str] = Counter()
    for line in lines:
        match = re.match(r'^[\d.]+ \[\d+ ([^\]]+)\] "([^"]+)"', line)
        if not match:
            continue
        source = "lua" if match.group(1) == "lua" else "client"
        by_command[f"{source}:{match.group(2).lower()}"] += 1
    return {"lines": len(lines), "by_command": dict(by_command), "sample": lines[:12]}


def _server_counts(is_redis: bool, redis: Any, nats: Any) -> dict[str, Any]:
    if is_redis:
        return {"commandstats": commandstats(redis)}
    return {"varz": monitoring(nats, "varz"), "jsz": monitoring(nats, "jsz")}


def _once(
    s: Settings,
    workers: list[Worker],
    events: queue.Queue[Event],
    is_redis: bool,
    redis: Any,
    nats: Any,
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
    before = _server_counts(is_redis, redis, nats)
    sample: dict[str, Any] = {}
    if is_redis:
        time.sleep(max(0.0, start_at + s.load_seconds / 2 - time.time()))
        sample = _monitor_counts(monitor(redis, s.monitor_seconds))
    time.sleep(max(0.0, start_at + s.load_seconds - time.time()))
    after = _server_counts(is_redis, redis, nats)
    reports: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while len(reports) < len(workers):
        _, sender, line = events.get(timeout=max(0.1, deadline - time.monotonic()))
        if line.startswith("{"):
            reports.append(json.loads(line))
        elif line == "" and sender.process.poll() not in (None, 0):
            raise RuntimeError(f"worker failed: {sender.stderr_tail()}")
    executions = sum(r["executions"] for r in reports)

    def per_exec(value: float) -> float | None:
        return value / executions if executions else None

    round_trips = sum(r["round_trips"] for r in reports)
    commands = sum(r.get("commands", 0) for r in reports)
    kinds = sorted({k for r in reports for k in r.get("commands_by_kind", {})})
    result: dict[str, Any] = {
        "executions": executions,
        "exec_per_task_s": executions / s.load_tasks / s.load_seconds,
        "client_round_trips": round_trips,
        "client_rt_per_exec": per_exec(round_trips),
        "client_commands": commands,
        "client_cmds_per_exec": per_exec(commands),
        "client_connections": sum(r["connections"] for r in reports),
        "client_cmds_by_kind_per_exec": {
            kind: per_exec(
                sum(r.get("commands_by_kind", {}).get(kind, 0) for r in reports)
            )
            for kind in kinds
        }
        if executions
        else {},
        "workers": reports,
    }
    if is_redis:
        stats_before, stats_after = before["commandstats"], after["commandstats"]
        delta = {
            cmd: n - stats_before.get(cmd, 0)
            for cmd, n in stats_after.items()
            if n - stats_before.get(cmd, 0) > 0
        }
        load = {cmd: n for cmd, n in delta.items() if cmd not in SETUP_COMMANDS}
        result["server_commands"] = delta
        result["server_cmds_per_exec"] = per_exec(sum(load.values()))
        result["server_cmds_by_command_per_exec"] = (
            {cmd: n / executions for cmd, n in sorted(load.items())}
            if executions
            else {}
        )
        result["monitor"] = sample
        if sample.get("lines") and sample.get("by_command"):
            result["monitor"]["seconds"] = s.monitor_seconds
        return result

    def delta_of(source: str, *path: str) -> int:
        values = []
        for counts in (before, after):
            value: Any = counts[source]
            for key in path:
                value = value.get(key, {}) if isinstance(value, dict) else 0
            values.append(value or 0)
        return int(values[1] - values[0])

    api = delta_of("jsz", "api", "total")
    result["js_api_calls"] = api
    result["js_api_per_exec"] = per_exec(api)
    result["in_msgs_per_exec"] = per_exec(delta_of("varz", "in_msgs"))
    result["out_msgs_per_exec"] = per_exec(delta_of("varz", "out_msgs"))
    result["client_messages_out"] = sum(r["messages_out"] for r in reports)
    result["server_cmds_per_exec"] = result["in_msgs_per_exec"]
    return result
