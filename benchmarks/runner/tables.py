"""Markdown tables, one per benchmark, and the formatting they share."""

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
        base = bench.get("baseline")
        header = "| Target | cycles/s | ratio to floor |"
        header += " p50 latency | p99 latency |" if seq else ""
        header += f" now / at {base} (same round) |" if base else ""
        columns = 3 + (2 if seq else 0) + (1 if base else 0)
        lines += [header, "|" + "---|" * columns]
        for row in bench["rows"]:
            if "ops" not in row:
                lines.append(
                    f"| {row['label']} | {_s(row['status'])} |" + " — |" * (columns - 2)
                )
                continue
            label = f"**{row['label']}**" if row["role"] == "project" else row["label"]
            line = f"| {label} | {_n(row['ops'])} | {_x(row.get('ratio'))} |"
            if seq:
                line += (
                    f" {_n(row.get('p50_ms'), 3)} ms | {_n(row.get('p99_ms'), 3)} ms |"
                )
            if base:
                line += f" {_x(row.get('vs_baseline'))} |"
            lines.append(line)
            if row["status"] != "ok":
                notes.append(f"{row['label']}: {row['status']}")
        lines.append("")
    return lines


def _scheduler_tables(output: dict[str, Any], notes: list[str]) -> list[str]:
    lines: list[str] = []
    for bench in output["benchmarks"]:
        if not bench["name"].startswith(("scheduler-", "cron-")):
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
            if row.get("stalled"):
                notes.append(
                    f"{row['label']} ({bench['jobs']} jobs): stalled, the event loop "
                    "could not keep up and never reported; its figures come from a "
                    "watchdog thread (window opened at the start-up cap)"
                )
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
        "client commands / exec | "
        "server commands (Redis) or messages in (NATS) / exec | JetStream API calls / exec | "
        "connections opened in the window |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in bench["rows"]:
        if "executions" not in row:
            lines.append(
                f"| {row['label']} | {_s(row['status'])} | — | — | — | — | — | — |"
            )
            continue
        label = f"**{row['label']}**" if row["role"] == "project" else row["label"]
        lines.append(
            f"| {label} | {_n(row['executions'])} | {_n(row['exec_per_task_s'], 3)} | "
            f"{_n(row.get('client_rt_per_exec'), 2)} | {_n(row.get('client_cmds_per_exec'), 2)} | "
            f"{_n(row.get('server_cmds_per_exec'), 2)} | "
            f"{_n(row.get('js_api_per_exec'), 2)} | {_n(row.get('client_connections'))} |"
        )
        if row["status"] != "ok":
            notes.append(f"{row['label']} (load): {row['status']}")
    lines.append("")
    for row in bench["rows"]:
        runs = row.get("rounds") or []
        if runs and runs[-1].get("client_cmds_by_kind_per_exec"):
            kinds = ", ".join(
                f"{kind} {n:.2f}"
                for kind, n in sorted(
                    runs[-1]["client_cmds_by_kind_per_exec"].items(),
                    key=lambda kv: -kv[1],
                )
            )
            lines.append(f"- {row['label']}, client commands per execution: {kinds}.")
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
        "| Target | graceful stop (median) | graceful runs | new leader after graceful stop (median) | "
        "SIGKILL (median) | SIGKILL runs | new leader after SIGKILL (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in bench["rows"]:
        label = f"**{row['label']}**" if row["role"] == "project" else row["label"]

        def runs(kind: str, row: dict[str, Any] = row) -> str:
            return ", ".join(f"{v:.3f}" for v in row.get(f"{kind}_runs_s", [])) or _s(
                row["status"]
            )

        lines.append(
            f"| {label} | {_n(row.get('graceful_s'), 3, ' s')} | {runs('graceful')} | "
            f"{_n(row.get('graceful_leader_s'), 3, ' s')} | "
            f"{_n(row.get('sigkill_s'), 3, ' s')} | {runs('sigkill')} | "
            f"{_n(row.get('sigkill_leader_s'), 3, ' s')} |"
        )
        if row["status"] != "ok":
            notes.append(f"{row['label']} (takeover): {row['status']}")
    lines.append("")
    return lines


def _otel_tables(output: dict[str, Any], notes: list[str]) -> list[str]:
    bench = _bench(output, "otel")
    if bench is None:
        return []
    rounds = output["settings"].get("otel_rounds", "?")
    lines = [
        f"### {bench['title']}",
        "",
        f"Median of {rounds} rounds, each case in a fresh process, cases interleaved; "
        "extra CPU per run against the floor (OpenTelemetry not importable) of the "
        "same round.",
        "",
        "| Case | CPU s/s | ratio to floor | runs/s | CPU per run | extra CPU per run |",
        "|---|---|---|---|---|---|",
    ]
    for row in bench["rows"]:
        if "cpu_per_s" not in row:
            lines.append(f"| {row['label']} | {_s(row['status'])} |" + " — |" * 4)
            continue
        label = f"**{row['label']}**" if row["role"] == "project" else row["label"]
        lines.append(
            f"| {label} | {_n(row['cpu_per_s'], 3)} | {_x(row.get('cpu_ratio'))} | "
            f"{_n(row.get('runs_per_s'))} | {_n(row.get('cpu_us_per_run'), 1, ' µs')} | "
            f"{_n(row.get('extra_us_per_run'), 2, ' µs')} |"
        )
        if row["status"] != "ok":
            notes.append(f"{row['label']} (otel): {row['status']}")
    lines.append("")
    return lines
