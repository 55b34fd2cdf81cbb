"""OpenTelemetry overhead: N local interval tasks with and without a provider.

Each case runs in a fresh process through ``benchmarks/otel_overhead.py``'s
one-case mode (``--case``), cases interleaved round by round: ``absent``
(the API cannot be imported: the floor), ``no-provider`` (installed, nothing
configured), ``metrics`` (the SDK's meter provider with an in-memory
reader), ``metrics+traces`` (plus the SDK's tracer provider and an exporter
that drops the spans).
"""

from __future__ import annotations

from typing import Any

from runner.common import Context, Target, log, run_once, summarize
from runner.envs import BENCH_DIR

NAME = "otel"
SERVERS = False
SCRIPT = BENCH_DIR / "otel_overhead.py"

TARGETS = [
    Target("absent", "project", "opentelemetry not importable", "floor"),
    Target("no-provider", "project", "opentelemetry-api, no provider", "project"),
    Target("metrics", "project", "SDK meter provider, in-memory reader", "project"),
    Target(
        "metrics+traces",
        "project",
        "SDK meter + tracer providers (spans dropped)",
        "project",
    ),
]

#: Whether each case must be recording (the hooks on), as the script reports.
RECORDING = {"absent": False, "no-provider": False, "metrics": True}


def environments(baseline: str | None = None) -> set[str]:
    return {"project"}


def run(ctx: Context) -> list[dict[str, Any]]:
    s = ctx.settings
    warmup = min(2.0, s.otel_seconds / 2)
    rounds: dict[str, list[dict[str, Any]]] = {}
    status = {t.id: ctx.env_status(t) for t in TARGETS}
    if not SCRIPT.exists():
        status = dict.fromkeys(status, f"{SCRIPT.name} is missing")
    for round_index in range(s.otel_rounds if SCRIPT.exists() else 0):
        log(f"otel: round {round_index + 1}/{s.otel_rounds}")
        # Alternate the order: no case is always first after a pause.
        order = TARGETS if round_index % 2 == 0 else TARGETS[::-1]
        for target in order:
            env = ctx.env_of(target)
            if env is None or status[target.id] != "ok":
                continue
            result, problem = run_once(
                env,
                str(SCRIPT),
                [
                    "--case",
                    target.id,
                    "--tasks",
                    str(s.otel_tasks),
                    "--seconds",
                    str(s.otel_seconds),
                    "--warmup",
                    str(warmup),
                ],
                timeout=s.otel_seconds + warmup + 120,
            )
            expected = RECORDING.get(target.id, True)
            if result is not None and result.get("recording") != expected:
                problem = f"recording={result.get('recording')}, expected {expected}"
                result = None
            if result is None:
                status[target.id] = f"failed: round {round_index + 1}: {problem}"
                log(f"otel: {target.id}: {status[target.id]}")
                continue
            result["round"] = round_index
            if result.get("runs_per_s"):
                result["cpu_us_per_run"] = (
                    1e6 * result["cpu_per_s"] / result["runs_per_s"]
                )
            rounds.setdefault(target.id, []).append(result)
    _extra_per_run(rounds)
    rows = summarize(
        TARGETS,
        rounds,
        status,
        metrics=("cpu_per_s", "runs_per_s", "cpu_us_per_run", "extra_us_per_run"),
        floor="absent",
        ratio_of="cpu_per_s",
        ratio_key="cpu_ratio",
    )
    floor = [
        r["cpu_us_per_run"] for r in rounds.get("absent", []) if "cpu_us_per_run" in r
    ]
    if len(floor) >= 2:
        # What the floor itself moves between rounds: the measurement's noise.
        rows[0]["noise_us_per_run"] = max(floor) - min(floor)
    return [
        {
            "name": "otel",
            "title": (
                f"OpenTelemetry overhead, {s.otel_tasks:,} local interval tasks "
                f"(seconds=1), {s.otel_seconds:g} s window after {warmup:g} s warm-up"
            ),
            "floor": "absent",
            "rows": rows,
        }
    ]


def _extra_per_run(rounds: dict[str, list[dict[str, Any]]]) -> None:
    """CPU microseconds per run above the floor's, within each round."""
    floor = {r["round"]: r.get("cpu_us_per_run") for r in rounds.get("absent", [])}
    for results in rounds.values():
        for result in results:
            base = floor.get(result["round"])
            if base is not None and result.get("cpu_us_per_run") is not None:
                result["extra_us_per_run"] = result["cpu_us_per_run"] - base
