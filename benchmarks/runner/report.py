"""Markdown tables from the benchmark results (standard library only)."""

from __future__ import annotations

from typing import Any

from runner.tables import (
    _bench,
    _load_tables,
    _lock_tables,
    _met,
    _n,
    _ok,
    _otel_tables,
    _row,
    _s,
    _scheduler_tables,
    _takeover_tables,
    _x,
)


def _row_line(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _lock_summary(output: dict[str, Any]) -> list[str]:
    """Issue 15: Redis backend and Lock >= 1.0x the floor and ahead of every
    peer; NATS >= 0.9x. With a baseline: issue 11's fencing overhead < 5%."""
    lines = []
    for kind, label, goal in (("redis", "Redis", 1.0), ("nats", "NATS", 0.9)):
        for mode, mode_label in (("seq", "sequential"), ("conc", "8 coroutines")):
            bench = _bench(output, f"lock-{kind}-{mode}")
            if bench is None:
                continue
            floor = _row(bench, bench["floor"])
            peers = [r for r in bench["rows"] if r["role"] == "peer" and r.get("ratio")]
            best = max(peers, key=lambda r: r["ratio"], default=None)
            names = [("backend", "backend"), ("Lock", "lock")]
            if kind == "redis":
                names += [
                    ("broker backend", "broker-backend"),
                    ("broker Lock", "broker-lock"),
                ]
            ours = {
                name: _row(bench, f"{kind}-grelmicro-{target}").get("ratio")
                for name, target in names
            }
            bar = max(goal, best["ratio"] if best and kind == "redis" else 0.0)
            target = f">= {goal:.1f}x floor" + (
                ", ahead of every peer" if kind == "redis" else ""
            )
            lines.append(
                _row_line(
                    f"{label} lock cycle, {mode_label}",
                    f"{_n(floor.get('ops'))}/s",
                    f"{best['label']} {_x(best['ratio'])}" if best else "—",
                    ", ".join(f"{k} {_x(v)}" for k, v in ours.items()),
                    target,
                    ", ".join(
                        f"{k} {_met(v, bar, below=False)}" for k, v in ours.items()
                    ),
                )
            )
            if bench.get("baseline"):
                changes = {
                    name: _row(bench, f"{kind}-grelmicro-{name.lower()}").get(
                        "vs_baseline"
                    )
                    for name in ("backend", "Lock")
                }
                lines.append(
                    _row_line(
                        f"{label} lock cycle, {mode_label}, vs {bench['baseline']}",
                        "—",
                        "—",
                        ", ".join(f"{k} {_x(v)}" for k, v in changes.items()),
                        "overhead < 5% (>= 0.95x)",
                        ", ".join(
                            f"{k} {_met(v, 0.95, below=False)}"
                            for k, v in changes.items()
                        ),
                    )
                )
    return lines


def _peer_list(rows: list[dict[str, Any]], metric: str, digits: int, unit: str) -> str:
    parts = []
    for r in sorted(rows, key=lambda r: r[metric]):
        value = f"{_n(r[metric], digits)}{unit}"
        if metric == "startup_s" and not r.get("startup_idle", True):
            value = f">= {value}"
        part = f"{r['label']} {value}"
        if r.get("runs_per_job_s", 1) < 0.9:
            part += f" (ran {r['runs_per_job_s']:.0%} of the ticks)"
        parts.append(part)
    return ", ".join(parts) or "—"


def _scheduler_summary(output: dict[str, Any]) -> list[str]:
    """Issue 15: 10,000 local interval tasks: late p99 <= the sleep loop's,
    CPU <= 0.8x the sleep loop, RSS <= 60 MiB, start-up <= 0.3 s. Issue 12:
    the same figures for cron tasks, beside APScheduler's cron trigger."""
    scheds = [b for b in output["benchmarks"] if b["name"].startswith("scheduler-")]
    if not scheds:
        return []
    bench = max(scheds, key=lambda b: b["jobs"])
    jobs = f"{bench['jobs']:,} local tasks"
    sleep, heap, ours = (
        _row(bench, t) for t in ("sleep-loop", "heap-loop", "grelmicro")
    )
    peers = [
        r for r in bench["rows"] if r["role"] == "peer" and _ok(r) and "cpu_per_s" in r
    ]
    lines = [
        _row_line(
            f"{jobs}, CPU s per s",
            f"{_n(sleep.get('cpu_per_s'), 3)} (sleep loop), "
            f"{_n(heap.get('cpu_per_s'), 3)} (heap loop)",
            _peer_list(peers, "cpu_per_s", 3, ""),
            f"{_n(ours.get('cpu_per_s'), 3)} ({_x(ours.get('cpu_ratio'))} sleep loop)",
            "<= 0.8x sleep loop",
            _met(ours.get("cpu_ratio"), 0.8, below=True),
        ),
        _row_line(
            f"{jobs}, lateness p99",
            f"{_n(sleep.get('late_p99_ms'), 2)} ms (sleep loop)",
            _peer_list(peers, "late_p99_ms", 2, " ms"),
            f"{_n(ours.get('late_p99_ms'), 2)} ms",
            "<= sleep loop",
            _met(ours.get("late_p99_ms"), sleep.get("late_p99_ms") or 0, below=True),
        ),
        _row_line(
            f"{jobs}, peak RSS",
            f"{_n(sleep.get('peak_rss_mib'), 1)} MiB (sleep loop)",
            _peer_list(peers, "peak_rss_mib", 1, " MiB"),
            f"{_n(ours.get('peak_rss_mib'), 1)} MiB",
            "<= 60 MiB",
            _met(ours.get("peak_rss_mib"), 60, below=True),
        ),
        _row_line(
            f"{jobs}, start-up",
            f"{_n(sleep.get('startup_s'), 3)} s (sleep loop)",
            _peer_list(peers, "startup_s", 2, " s"),
            f"{_n(ours.get('startup_s'), 3)} s",
            "<= 0.3 s",
            _met(ours.get("startup_s"), 0.3, below=True),
        ),
    ]
    cron = _bench(output, f"cron-{bench['jobs']}")
    if cron is None:
        return lines
    floor, mine = _row(cron, "cron-sleep-loop"), _row(cron, "grelmicro-cron")
    cron_peers = [
        r for r in cron["rows"] if r["role"] == "peer" and _ok(r) and "cpu_per_s" in r
    ]
    for metric, label, digits, unit in (
        ("cpu_per_s", "CPU s per s", 3, ""),
        ("late_p99_ms", "lateness p99", 2, " ms"),
        ("peak_rss_mib", "peak RSS", 1, " MiB"),
        ("startup_s", "start-up", 3, " s"),
    ):
        interval = ours.get(metric)
        lines.append(
            _row_line(
                f"{bench['jobs']:,} cron tasks, {label}",
                f"{_n(floor.get(metric), digits)}{unit} (sleep loop to the second)",
                _peer_list(cron_peers, metric, digits, unit),
                f"{_n(mine.get(metric), digits)}{unit} "
                f"(interval tasks: {_n(interval, digits)}{unit})",
                "—",
                "—",
            )
        )
    return lines


def _multi_summary(output: dict[str, Any]) -> list[str]:
    """Issue 15: round trips per locked execution <= 0.1; NATS server
    messages per execution <= 3.0; graceful takeover <= 0.05 s."""
    lines = []
    load = _bench(output, "load")
    if load:
        peer = _row(load, "grelmicro060-redis")
        for target, label in (("grelmicro-redis", "Redis"), ("grelmicro-nats", "NATS")):
            ours = _row(load, target)
            lines.append(
                _row_line(
                    f"Round trips per locked execution, 3 workers, {label}",
                    "—",
                    f"grelmicro 0.6.0 (Redis) {_n(peer.get('client_rt_per_exec'), 2)}",
                    _n(ours.get("client_rt_per_exec"), 2),
                    "<= 0.1",
                    _met(ours.get("client_rt_per_exec"), 0.1, below=True),
                )
            )
        ours = _row(load, "grelmicro-nats")
        lines.append(
            _row_line(
                "Server messages in per locked execution, 3 workers, NATS",
                "—",
                "—",
                _n(ours.get("server_cmds_per_exec"), 2),
                "<= 3.0",
                _met(ours.get("server_cmds_per_exec"), 3.0, below=True),
            )
        )
    takeover = _bench(output, "takeover")
    if takeover:
        peer = _row(takeover, "grelmicro060-redis")
        lease, retry = takeover["lease"], takeover["retry"]
        for kind, label, limit, floor, judged in (
            ("graceful", "after graceful stop", 0.05, "—", ("Redis",)),
            ("sigkill", "after SIGKILL", lease + retry, f"lease ({lease:g} s)", None),
        ):
            values = {
                name: _row(takeover, f"grelmicro-{name.lower()}").get(f"{kind}_s")
                for name in ("Redis", "NATS")
            }
            leaders = {
                name: _row(takeover, f"grelmicro-{name.lower()}").get(
                    f"{kind}_leader_s"
                )
                for name in ("Redis", "NATS")
            }
            lines.append(
                _row_line(
                    f"Takeover {label}",
                    floor,
                    f"grelmicro 0.6.0 (Redis) {_n(peer.get(f'{kind}_s'), 3)} s",
                    ", ".join(
                        f"{k} {_n(v, 3)} s (new leader after {_n(leaders[k], 3)} s)"
                        for k, v in values.items()
                    ),
                    f"<= {limit:g} s" + (f" ({', '.join(judged)})" if judged else ""),
                    ", ".join(
                        f"{k} {_met(v, limit, below=True)}"
                        for k, v in values.items()
                        if judged is None or k in judged
                    ),
                )
            )
    return lines


def _otel_summary(output: dict[str, Any]) -> list[str]:
    """Issue 13: with no provider, the per-run overhead is within noise;
    with the SDK's in-memory reader, reported."""
    bench = _bench(output, "otel")
    if bench is None:
        return []
    floor = _row(bench, "absent")
    return [
        _row_line(
            f"OpenTelemetry, {row['label']}, extra CPU per run",
            f"{_n(floor.get('cpu_us_per_run'), 1)} µs per run (not importable)",
            "—",
            f"{_n(row.get('extra_us_per_run'), 2)} µs ({_x(row.get('cpu_ratio'))} CPU)",
            "within noise (the floor's spread over rounds, "
            f"{_n(floor.get('noise_us_per_run'), 2)} µs)"
            if target == "no-provider"
            else "—",
            _met(
                abs(row.get("extra_us_per_run", float("nan"))),
                floor["noise_us_per_run"],
                below=True,
            )
            if target == "no-provider" and "noise_us_per_run" in floor
            else "not measured (one round)"
            if target == "no-provider"
            else "—",
        )
        for target in ("no-provider", "metrics", "metrics+traces")
        if (row := _row(bench, target))
    ]


def _summary(output: dict[str, Any]) -> list[str]:
    return [
        "| Benchmark | Floor | Best peer | This project | Target | Met |",
        "|---|---|---|---|---|---|",
        *_lock_summary(output),
        *_scheduler_summary(output),
        *_multi_summary(output),
        *_otel_summary(output),
    ]


def markdown_report(output: dict[str, Any]) -> str:
    """The whole report: summary, then one table per benchmark, then notes."""
    machine = output.get("machine", {})
    notes: list[str] = []
    lines = [
        f"Run: {machine.get('date', '?')}, {output['mode']} mode, commit {machine.get('commit', '?')}; "
        f"{machine.get('nproc', '?')} cores ({machine.get('cpu_model', '?')}), "
        f"{machine.get('memory_gib', '?')} GiB, Linux {machine.get('kernel', '?')}, "
        f"Python {machine.get('python', '?')}, {machine.get('redis_server', '?').split(' sha=')[0]}, "
        f"{machine.get('nats_server', '?')}; took {output.get('elapsed_s', 0):.0f} s.",
        "",
        "### Summary against the targets (issues 11, 12, 13 and 15)",
        "",
        *_summary(output),
        "",
        *_lock_tables(output, notes),
        *_scheduler_tables(output, notes),
        *_load_tables(output, notes),
        *_takeover_tables(output, notes),
        *_otel_tables(output, notes),
    ]
    env_notes = [
        f"- environment `{name}`: {env['error']}"
        for name, env in output.get("environments", {}).items()
        if env.get("error")
    ]
    if notes or env_notes:
        lines += ["### Targets that did not run or failed", ""]
        lines += (
            [f"- {_s(note, 400)}" for note in dict.fromkeys(notes)] + env_notes + [""]
        )
    versions = []
    for name, env in output.get("environments", {}).items():
        packages = env.get("packages") or {}
        keep = [
            f"{p} {v}"
            for p, v in sorted(packages.items())
            if p
            in {
                "grelmicro",
                "redis",
                "nats-py",
                "anyio",
                "apscheduler",
                "aioredlock",
                "aioredis",
                "hiredis",
                "pottery",
                "nats-kv-lock",
                "natspy-lock",
                "fast-depends",
                "pydantic",
            }
        ]
        if keep:
            versions.append(f"- `{name}`: {', '.join(keep)}")
    if versions:
        lines += ["### Package versions per environment", "", *versions, ""]
    return "\n".join(lines)
