"""Markdown tables from the benchmark results (standard library only)."""

from __future__ import annotations

from typing import Any


def _n(value: Any, digits: int = 0, suffix: str = "") -> str:
    if value is None or value != value:  # None or NaN
        return "—"
    if digits == 0:
        return f"{value:,.0f}{suffix}"
    return f"{value:,.{digits}f}{suffix}"


def _s(status: str, limit: int = 160) -> str:
    """A status that fits in a table cell."""
    text = " ".join(status.replace("|", "/").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _x(value: Any) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _startup(row: dict[str, Any]) -> str:
    """Start-up; a scheduler never idle within the cap shows as a lower bound."""
    if row.get("startup_idle", True):
        return _n(row.get("startup_s"), 3, " s")
    return f">= {_n(row.get('startup_s'), 1, ' s')} (never idle)"


def _bench(output: dict[str, Any], name: str) -> dict[str, Any] | None:
    for bench in output["benchmarks"]:
        if bench["name"] == name:
            return bench
    return None


def _row(bench: dict[str, Any] | None, target: str) -> dict[str, Any]:
    if bench is None:
        return {}
    for row in bench["rows"]:
        if row["target"] == target:
            return row
    return {}


def _ok(row: dict[str, Any]) -> bool:
    return row.get("status") == "ok"


def _met(value: Any, limit: float, below: bool) -> str:
    if value is None or value != value:
        return "not measured"
    return "yes" if (value <= limit if below else value >= limit) else "**no**"


def _summary(output: dict[str, Any]) -> list[str]:
    lines = [
        "| Benchmark | Floor | Best peer | This project | Target | Met |",
        "|---|---|---|---|---|---|",
    ]
    for kind, label, goal in (("redis", "Redis", 1.0), ("nats", "NATS", 0.9)):
        for mode, mode_label in (("seq", "sequential"), ("conc", "8 coroutines")):
            bench = _bench(output, f"lock-{kind}-{mode}")
            if bench is None:
                continue
            floor = _row(bench, bench["floor"])
            peers = [r for r in bench["rows"] if r["role"] == "peer" and r.get("ratio")]
            best = max(peers, key=lambda r: r["ratio"], default=None)
            backend = _row(bench, f"{kind}-grelmicro-backend")
            lock = _row(bench, f"{kind}-grelmicro-lock")
            lines.append(
                f"| {label} lock cycle, {mode_label} | {_n(floor.get('ops'))}/s | "
                + (f"{best['label']} {_x(best['ratio'])}" if best else "—")
                + f" | backend {_x(backend.get('ratio'))}, Lock {_x(lock.get('ratio'))} | "
                f">= {goal:.1f}x floor | backend {_met(backend.get('ratio'), goal, below=False)}, "
                f"Lock {_met(lock.get('ratio'), goal, below=False)} |"
            )
    scheds = [b for b in output["benchmarks"] if b["name"].startswith("scheduler-")]
    if scheds:
        bench = max(scheds, key=lambda b: b["jobs"])
        jobs = f"{bench['jobs']:,} local tasks"
        sleep, heap, ours = (
            _row(bench, t) for t in ("sleep-loop", "heap-loop", "grelmicro")
        )
        peers = [
            r
            for r in bench["rows"]
            if r["role"] == "peer" and _ok(r) and "cpu_per_s" in r
        ]

        def peer_list(metric: str, digits: int, unit: str) -> str:
            ranked = sorted(peers, key=lambda r: r[metric])
            parts = []
            for r in ranked:
                value = f"{_n(r[metric], digits)}{unit}"
                if metric == "startup_s" and not r.get("startup_idle", True):
                    value = f">= {value}"
                part = f"{r['label']} {value}"
                if r.get("runs_per_job_s", 1) < 0.9:
                    part += f" (ran {r['runs_per_job_s']:.0%} of the ticks)"
                parts.append(part)
            return ", ".join(parts) or "—"

        lines.append(
            f"| {jobs}, CPU s per s | {_n(sleep.get('cpu_per_s'), 3)} (sleep loop), "
            f"{_n(heap.get('cpu_per_s'), 3)} (heap loop) | {peer_list('cpu_per_s', 3, '')} | "
            f"{_n(ours.get('cpu_per_s'), 3)} ({_x(ours.get('cpu_ratio'))} sleep loop) | "
            f"<= sleep-loop floor | {_met(ours.get('cpu_ratio'), 1.0, below=True)} |"
        )
        lines.append(
            f"| {jobs}, peak RSS | {_n(sleep.get('peak_rss_mib'), 1)} MiB (sleep loop) | "
            f"{peer_list('peak_rss_mib', 1, ' MiB')} | {_n(ours.get('peak_rss_mib'), 1)} MiB | "
            f"<= 60 MiB | {_met(ours.get('peak_rss_mib'), 60, below=True)} |"
        )
        lines.append(
            f"| {jobs}, start-up | {_n(sleep.get('startup_s'), 3)} s (sleep loop) | "
            f"{peer_list('startup_s', 2, ' s')} | {_n(ours.get('startup_s'), 3)} s | "
            f"<= 0.3 s | {_met(ours.get('startup_s'), 0.3, below=True)} |"
        )
    load = _bench(output, "load")
    if load:
        peer = _row(load, "grelmicro060-redis")
        for target, label in (("grelmicro-redis", "Redis"), ("grelmicro-nats", "NATS")):
            ours = _row(load, target)
            lines.append(
                f"| Round trips per locked execution, 3 workers, {label} | 3.0 (one attempt per worker per tick) | "
                f"grelmicro 0.6.0 (Redis) {_n(peer.get('client_rt_per_exec'), 2)} | "
                f"{_n(ours.get('client_rt_per_exec'), 2)} | <= 1.5 | "
                f"{_met(ours.get('client_rt_per_exec'), 1.5, below=True)} |"
            )
    takeover = _bench(output, "takeover")
    if takeover:
        peer = _row(takeover, "grelmicro060-redis")
        lease, retry = takeover["lease"], takeover["retry"]
        for kind, label, limit, floor in (
            ("graceful", "after graceful stop", 0.05, "—"),
            ("sigkill", "after SIGKILL", lease + retry, f"lease ({lease:g} s)"),
        ):
            ours = [
                f"{name} {_n(_row(takeover, t).get(f'{kind}_s'), 3)} s"
                for t, name in (
                    ("grelmicro-redis", "Redis"),
                    ("grelmicro-nats", "NATS"),
                )
            ]
            worst = max(
                (
                    _row(takeover, t).get(f"{kind}_s", float("nan"))
                    for t in ("grelmicro-redis", "grelmicro-nats")
                ),
                key=lambda v: (v == v, v),
            )
            lines.append(
                f"| Takeover {label} | {floor} | grelmicro 0.6.0 (Redis) "
                f"{_n(peer.get(f'{kind}_s'), 3)} s | {', '.join(ours)} | <= {limit:g} s | "
                f"{_met(worst, limit, below=True)} |"
            )
    return lines


def _lock_tables(output: dict[str, Any], notes: list[str]) -> list[str]:
    lines: list[str] = []
    for bench in output["benchmarks"]:
        if not bench["name"].startswith("lock-"):
            continue
        rounds = output["settings"]["lock_rounds"]
        lines += [
            f"### {bench['title']}",
            "",
            f"{bench['unit']}, median of {rounds} rounds; ratio = target / floor of the same round.",
            "",
        ]
        seq = bench["name"].endswith("-seq")
        header = "| Target | cycles/s | ratio to floor |" + (
            " p50 latency | p99 latency |" if seq else ""
        )
        lines += [header, "|---|---|---|" + ("---|---|" if seq else "")]
        for row in bench["rows"]:
            if "ops" not in row:
                lines.append(
                    f"| {row['label']} | {_s(row['status'])} | — |"
                    + (" — | — |" if seq else "")
                )
                continue
            label = f"**{row['label']}**" if row["role"] == "project" else row["label"]
            line = f"| {label} | {_n(row['ops'])} | {_x(row.get('ratio'))} |"
            if seq:
                line += (
                    f" {_n(row.get('p50_ms'), 3)} ms | {_n(row.get('p99_ms'), 3)} ms |"
                )
            lines.append(line)
            if row["status"] != "ok":
                notes.append(f"{row['label']}: {row['status']}")
        lines.append("")
    return lines


def _scheduler_tables(output: dict[str, Any], notes: list[str]) -> list[str]:
    lines: list[str] = []
    for bench in output["benchmarks"]:
        if not bench["name"].startswith("scheduler-"):
            continue
        rounds = output["settings"]["scheduler_rounds"]
        lines += [
            f"### {bench['title']}",
            "",
            f"Median of {rounds} rounds, each target in a fresh process; CPU ratio to the "
            "sleep-loop floor of the same round.",
            "",
            "| Target | CPU s/s | ratio to sleep loop | peak RSS | start-up | import | "
            "late p50 | late p99 | late max | runs/job/s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in bench["rows"]:
            if "cpu_per_s" not in row:
                lines.append(f"| {row['label']} | {_s(row['status'])} |" + " — |" * 8)
                continue
            label = f"**{row['label']}**" if row["role"] == "project" else row["label"]
            lines.append(
                f"| {label} | {_n(row['cpu_per_s'], 3)} | {_x(row.get('cpu_ratio'))} | "
                f"{_n(row['peak_rss_mib'], 1)} MiB | {_startup(row)} | "
                f"{_n(row['import_s'], 3)} s | {_n(row['late_p50_ms'], 1)} ms | "
                f"{_n(row['late_p99_ms'], 1)} ms | {_n(row['late_max_ms'], 1)} ms | "
                f"{_n(row['runs_per_job_s'], 3)} |"
            )
            if row["status"] != "ok":
                notes.append(f"{row['label']} ({bench['jobs']} jobs): {row['status']}")
        lines.append("")
    return lines


def _load_tables(output: dict[str, Any], notes: list[str]) -> list[str]:
    bench = _bench(output, "load")
    if bench is None:
        return []
    lines = [
        f"### {bench['title']}",
        "",
        "Client round trips counted in each worker by wrapping the driver; server "
        "commands from Redis `INFO commandstats` (commands run inside Lua scripts "
        "included, connection set-up excluded) and NATS `/varz` `in_msgs`; "
        "JetStream API calls from `/jsz`.",
        "",
        "| Target | executions | per task per s | client round trips / exec | "
        "server commands (Redis) or messages in (NATS) / exec | JetStream API calls / exec | "
        "connections opened in the window |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in bench["rows"]:
        if "executions" not in row:
            lines.append(
                f"| {row['label']} | {_s(row['status'])} | — | — | — | — | — |"
            )
            continue
        label = f"**{row['label']}**" if row["role"] == "project" else row["label"]
        lines.append(
            f"| {label} | {_n(row['executions'])} | {_n(row['exec_per_task_s'], 3)} | "
            f"{_n(row.get('client_rt_per_exec'), 2)} | {_n(row.get('server_cmds_per_exec'), 2)} | "
            f"{_n(row.get('js_api_per_exec'), 2)} | {_n(row.get('client_connections'))} |"
        )
        if row["status"] != "ok":
            notes.append(f"{row['label']} (load): {row['status']}")
    lines.append("")
    for row in bench["rows"]:
        runs = row.get("rounds") or []
        if runs and runs[-1].get("client_rt_by_kind_per_exec"):
            kinds = ", ".join(
                f"{kind} {n:.2f}"
                for kind, n in sorted(
                    runs[-1]["client_rt_by_kind_per_exec"].items(),
                    key=lambda kv: -kv[1],
                )
            )
            lines.append(
                f"- {row['label']}, client round trips per execution: {kinds}."
            )
        if not runs or "server_cmds_by_command_per_exec" not in runs[-1]:
            continue
        last = runs[-1]
        per_cmd = ", ".join(
            f"`{cmd}` {n:.2f}"
            for cmd, n in last["server_cmds_by_command_per_exec"].items()
        )
        lines.append(f"  Redis commands per execution (server side): {per_cmd}.")
        monitor = last.get("monitor") or {}
        if monitor.get("by_command"):
            seen = ", ".join(
                f"{cmd} {n}"
                for cmd, n in sorted(
                    monitor["by_command"].items(), key=lambda kv: -kv[1]
                )
            )
            lines.append(
                f"  MONITOR, {monitor.get('seconds', '?')} s mid-run: {monitor['lines']} lines ({seen})."
            )
    lines.append("")
    return lines


def _takeover_tables(output: dict[str, Any], notes: list[str]) -> list[str]:
    bench = _bench(output, "takeover")
    if bench is None:
        return []
    lines = [
        f"### {bench['title']}",
        "",
        "| Target | graceful stop (median) | graceful runs | SIGKILL (median) | SIGKILL runs |",
        "|---|---|---|---|---|",
    ]
    for row in bench["rows"]:
        label = f"**{row['label']}**" if row["role"] == "project" else row["label"]

        def runs(kind: str, row: dict[str, Any] = row) -> str:
            return ", ".join(f"{v:.3f}" for v in row.get(f"{kind}_runs_s", [])) or _s(
                row["status"]
            )

        lines.append(
            f"| {label} | {_n(row.get('graceful_s'), 3, ' s')} | {runs('graceful')} | "
            f"{_n(row.get('sigkill_s'), 3, ' s')} | {runs('sigkill')} |"
        )
        if row["status"] != "ok":
            notes.append(f"{row['label']} (takeover): {row['status']}")
    lines.append("")
    return lines


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
        "### Summary against the targets of issue 6",
        "",
        *_summary(output),
        "",
        *_lock_tables(output, notes),
        *_scheduler_tables(output, notes),
        *_load_tables(output, notes),
        *_takeover_tables(output, notes),
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
