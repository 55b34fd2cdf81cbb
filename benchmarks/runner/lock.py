"""Lock cycle: acquire + release, sequentially and with N coroutines.

Every target is a long-lived ``workers/lockcycle.py`` process in its own
environment, driven over stdin, round by round (targets interleaved). With
``--baseline COMMIT`` this project's backend and `Lock` are also measured at
that commit (same interpreter and dependencies), in the same rounds.
"""

from __future__ import annotations

import statistics
from typing import Any

from runner.common import Context, Target, Worker, log, summarize

NAME = "lock"
SERVERS = True  # needs Redis and NATS

TARGETS = {
    "redis": [
        Target("redis-floor", "project", "raw floor: 2 CAS scripts", "floor"),
        Target(
            "redis-grelmicro-backend",
            "project",
            "grelmicro RedisSyncBackend",
            "project",
        ),
        Target("redis-grelmicro-lock", "project", "grelmicro Lock (Redis)", "project"),
        Target(
            "redis-grelmicro-broker-backend",
            "project",
            "grelmicro RedisSyncBackend, broker's client",
            "project",
        ),
        Target(
            "redis-grelmicro-broker-lock",
            "project",
            "grelmicro Lock (Redis), broker's client",
            "project",
        ),
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
        Target("nats-floor", "project", "raw floor: create + purge", "floor"),
        Target(
            "nats-grelmicro-backend", "project", "grelmicro NatsSyncBackend", "project"
        ),
        Target("nats-grelmicro-lock", "project", "grelmicro Lock (NATS)", "project"),
        Target("nats-natskvlock", "natskvlock", "nats-kv-lock", "peer"),
        Target("nats-natspylock", "natspylock", "natspy-lock", "peer"),
    ],
}

#: This project's targets, measured again at a baseline commit.
BASELINE_OF = (
    "redis-grelmicro-backend",
    "redis-grelmicro-lock",
    "nats-grelmicro-backend",
    "nats-grelmicro-lock",
)


def targets(baseline: str | None = None) -> dict[str, list[Target]]:
    """The targets by server; with a baseline commit, its rows after ours."""
    if baseline is None:
        return TARGETS
    out: dict[str, list[Target]] = {}
    for kind, listed in TARGETS.items():
        rows: list[Target] = []
        for target in listed:
            rows.append(target)
            if target.id in BASELINE_OF:
                rows.append(
                    Target(
                        f"{target.id}-baseline",
                        "baseline",
                        f"{target.label} at {baseline}",
                        "baseline",
                        worker=target.id,
                    )
                )
        out[kind] = rows
    return out


def environments(baseline: str | None = None) -> set[str]:
    return {t.env for ts in targets(baseline).values() for t in ts}


def run(ctx: Context) -> list[dict[str, Any]]:
    s = ctx.settings
    by_kind = targets(ctx.baseline)
    workers: dict[str, Worker] = {}
    status: dict[str, str] = {}
    for listed in by_kind.values():
        for target in listed:
            env = ctx.env_of(target)
            status[target.id] = ctx.env_status(target)
            if env is None:
                continue
            workers[target.id] = Worker(
                env,
                "lockcycle.py",
                [
                    "--target",
                    target.runs,
                    "--redis-url",
                    ctx.redis.url,
                    "--nats-url",
                    ctx.nats.url,
                    "--namespace",
                    target.id.replace("-", "_"),
                ],
                stdin=True,
            )
    for target_id, worker in list(workers.items()):
        hello = worker.ask({})
        if "error" in hello or not hello.get("ready"):
            status[target_id] = (
                f"does not work: {hello.get('error') or worker.stderr_tail()}"
            )
            log(f"lock: {target_id}: {status[target_id]}")
            worker.stop()
            del workers[target_id]

    modes = [("seq", 1), ("conc", s.lock_concurrency)]
    rounds: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    try:
        for round_index in range(s.lock_rounds):
            log(f"lock: round {round_index + 1}/{s.lock_rounds}")
            for kind, listed in by_kind.items():
                for mode, concurrency in modes:
                    slices = _round(
                        s, listed, workers, status, mode=mode, concurrency=concurrency
                    )
                    bucket = rounds.setdefault((kind, mode), {})
                    for target_id, parts in slices.items():
                        bucket.setdefault(target_id, []).append(
                            _merge(parts) | {"round": round_index}
                        )
    finally:
        for worker in workers.values():
            worker.stop()

    benchmarks = []
    for kind, listed in by_kind.items():
        for mode, concurrency in modes:
            bucket = rounds.get((kind, mode), {})
            floor = listed[0].id
            rows = summarize(
                listed,
                bucket,
                status,
                metrics=("ops", "p50_ms", "p99_ms") if mode == "seq" else ("ops",),
                floor=floor,
                ratio_of="ops",
            )
            if ctx.baseline:
                _baseline_ratios(rows, bucket)
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
                    "baseline": ctx.baseline,
                    "rows": rows,
                }
            )
    return benchmarks


def _round(
    s: Any,
    listed: list[Target],
    workers: dict[str, Worker],
    status: dict[str, str],
    *,
    mode: str,
    concurrency: int,
) -> dict[str, list[dict[str, Any]]]:
    """One round of one table: `lock_slices` slices of every target in turn
    (A B C, A B C, ...), so that a slow moment of a shared machine falls on
    every target alike, even on one measured next to its baseline."""
    parts: dict[str, list[dict[str, Any]]] = {}
    for _ in range(s.lock_slices):
        for target in listed:
            worker = workers.get(target.id)
            if worker is None:
                continue
            result = worker.ask(
                {
                    "mode": mode,
                    "seconds": s.lock_seconds / s.lock_slices,
                    "concurrency": concurrency,
                }
            )
            if "error" in result:
                status[target.id] = f"failed: {result['error']}"
                log(f"lock: {target.id}: {status[target.id]}")
                worker.stop()
                del workers[target.id]
                parts.pop(target.id, None)
                continue
            parts.setdefault(target.id, []).append(result)
    return parts


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """A round's result from its slices: cycles over time; latencies, the
    median of the slices' percentiles."""
    cycles = sum(p["cycles"] for p in parts)
    elapsed = sum(p["elapsed"] for p in parts)
    merged: dict[str, Any] = {
        "cycles": cycles,
        "elapsed": elapsed,
        "ops": cycles / elapsed,
        "slices": len(parts),
    }
    for key in ("p50_ms", "p99_ms"):
        values = [p[key] for p in parts if key in p]
        if values:
            merged[key] = statistics.median(values)
    return merged


def _baseline_ratios(
    rows: list[dict[str, Any]], bucket: dict[str, list[dict[str, Any]]]
) -> None:
    """``vs_baseline`` on this project's rows: median over rounds of ops now /
    ops at the baseline commit in the same round."""
    by_id = {row["target"]: row for row in rows}
    for target_id in BASELINE_OF:
        row = by_id.get(target_id)
        base = {r["round"]: r["ops"] for r in bucket.get(f"{target_id}-baseline", [])}
        if row is None or not base:
            continue
        changes = [
            r["ops"] / base[r["round"]]
            for r in bucket.get(target_id, [])
            if base.get(r["round"])
        ]
        if changes:
            row["vs_baseline"] = statistics.median(changes)
