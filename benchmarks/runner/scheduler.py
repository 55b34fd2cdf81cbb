"""Scheduler overhead: N local interval jobs, and N local cron jobs, in one
process each.

Every target and size runs in a fresh ``workers/scheduler.py`` process per
round; interval and cron targets are interleaved in the same rounds, so the
cron figures sit beside the interval figures of the same run.
"""

from __future__ import annotations

from typing import Any

from runner.common import Context, Target, log, run_once, summarize

NAME = "scheduler"
SERVERS = False

INTERVAL_TARGETS = [
    Target("sleep-loop", "project", "floor: one asyncio sleep loop per job", "floor"),
    Target("heap-loop", "project", "floor: one heap-based timer loop", "floor"),
    Target("grelmicro", "project", "grelmicro TaskManager", "project"),
    Target("apscheduler", "apscheduler", "APScheduler 3.11 AsyncIOScheduler", "peer"),
    Target("grelmicro060", "grelmicro060", "grelmicro 0.6.0 TaskManager", "peer"),
]

CRON_TARGETS = [
    Target(
        "cron-sleep-loop",
        "project",
        "floor: cron, one sleep loop per job to the next second",
        "floor",
    ),
    Target(
        "grelmicro-cron",
        "project",
        'grelmicro cron("* * * * * *", local=True)',
        "project",
    ),
    Target(
        "apscheduler-cron",
        "apscheduler",
        "APScheduler 3.11 CronTrigger(second='*')",
        "peer",
    ),
]

TARGETS = INTERVAL_TARGETS + CRON_TARGETS

METRICS = (
    "cpu_per_s",
    "peak_rss_mib",
    "startup_s",
    "import_s",
    "late_p50_ms",
    "late_p99_ms",
    "late_max_ms",
    "runs_per_job_s",
)


def environments(baseline: str | None = None) -> set[str]:
    return {t.env for t in TARGETS}


def run(ctx: Context) -> list[dict[str, Any]]:
    s = ctx.settings
    results: dict[int, dict[str, list[dict[str, Any]]]] = {}
    failures: dict[tuple[str, int], list[str]] = {}
    for round_index in range(s.scheduler_rounds):
        for jobs in s.scheduler_jobs:
            log(f"scheduler: round {round_index + 1}/{s.scheduler_rounds}, {jobs} jobs")
            for target in TARGETS:
                env = ctx.env_of(target)
                if env is None:
                    continue
                result, problem = run_once(
                    env,
                    "scheduler.py",
                    [
                        "--target",
                        target.id,
                        "--jobs",
                        str(jobs),
                        "--seconds",
                        str(s.scheduler_seconds),
                    ],
                    timeout=s.scheduler_seconds + 180,
                )
                if result is None:
                    failures.setdefault((target.id, jobs), []).append(
                        f"round {round_index + 1}: {problem}"
                    )
                    log(f"scheduler: {target.id}, {jobs} jobs: failed: {problem}")
                    continue
                result["round"] = round_index
                results.setdefault(jobs, {}).setdefault(target.id, []).append(result)

    benchmarks = []
    for jobs in s.scheduler_jobs:
        bucket = results.get(jobs, {})
        status = {
            t.id: (
                "failed: " + "; ".join(failures[(t.id, jobs)])
                if (t.id, jobs) in failures
                else ctx.env_status(t)
            )
            for t in TARGETS
        }
        for name, listed, what in (
            ("scheduler", INTERVAL_TARGETS, "local interval jobs every 1 s"),
            ("cron", CRON_TARGETS, 'local cron jobs "* * * * * *" (every second)'),
        ):
            rows = summarize(
                listed,
                bucket,
                status,
                metrics=METRICS,
                floor=listed[0].id,
                ratio_of="cpu_per_s",
                ratio_key="cpu_ratio",
            )
            for row in rows:
                if row["rounds"]:
                    row["version"] = row["rounds"][0].get("version")
                    row["startup_idle"] = all(
                        r.get("startup_idle", True) for r in row["rounds"]
                    )
                    row["stalled"] = any(r.get("stalled") for r in row["rounds"])
            benchmarks.append(
                {
                    "name": f"{name}-{jobs}",
                    "title": f"Scheduler overhead, {jobs:,} {what}, {s.scheduler_seconds:g} s",
                    "jobs": jobs,
                    "floor": listed[0].id,
                    "rows": rows,
                }
            )
    return benchmarks
