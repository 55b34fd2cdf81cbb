"""Metrics across a fleet: three OS processes on one real Redis or NATS server.

Each worker process configures the global OpenTelemetry SDK meter provider
with an in-memory reader, runs a `TaskManager` with one coordinated task (a
locked interval task, or a cron task), appends a line to a shared file each
time the function completes, and at exit writes its ``grelmicro.task.runs``
counts to a JSON file. The sum over the processes of the successes must equal
the executions the file counted.

The worker is this module run as a script:

    python -m tests.integration.test_metrics_fleet --backend redis --url URL \\
        --namespace NS --kind interval --duration 3 --out FILE \\
        --metrics FILE.json --worker W
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from tests.integration.conftest import SERVER_KINDS, server_url, unique_namespace

ROOT = Path(__file__).resolve().parents[2]
TASK = "fleet-metrics-task"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The worker's command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["redis", "nats"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--kind", choices=["interval", "cron"], required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--worker", required=True)
    return parser.parse_args(argv)


async def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Run the manager for `--duration` seconds; what the metrics counted."""
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from grelmicro.task import TaskManager
    from tests.integration._worker_proc import make_backend

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

    backend = make_backend(args.backend, args.url, args.namespace)
    manager = TaskManager()
    out: Path = args.out

    async def job() -> None:
        await anyio.sleep(0.05)
        with out.open("a") as file:
            file.write(f"{args.worker} {time.time()!r}\n")

    if args.kind == "interval":
        manager.interval(seconds=0.5, name=TASK, max_lock_seconds=10, backend=backend)(
            job
        )
    else:
        manager.cron("* * * * * *", name=TASK, backend=backend)(job)

    async with backend:
        await backend.locked(name="warm-up")  # connected before the start signal
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        with anyio.move_on_after(args.duration):
            async with manager:
                await anyio.sleep_forever()
    return collect(reader, TASK)


def collect(reader: Any, task: str) -> dict[str, Any]:
    """From `reader`, for `task`: ``runs`` by outcome, and the points of the
    ``lag`` and ``duration`` histograms."""
    runs: dict[str, int] = {}
    points = {"lag": 0, "duration": 0}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attributes = dict(point.attributes)
                    if attributes.get("task.name") != task:
                        continue
                    if metric.name == "grelmicro.task.runs":
                        outcome = str(attributes["task.outcome"])
                        runs[outcome] = runs.get(outcome, 0) + int(point.value)
                    elif metric.name == "grelmicro.task.lag":
                        points["lag"] += int(point.count)
                    elif metric.name == "grelmicro.task.duration":
                        points["duration"] += int(point.count)
    return {"runs": runs, **points}


def main() -> None:
    """Worker entry point."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    args = parse_args()
    counts = anyio.run(run_worker, args)
    args.metrics.write_text(json.dumps(counts))


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["interval", "cron"])
@pytest.mark.parametrize("backend_kind", SERVER_KINDS)
def test_fleet_success_runs_equal_executions(
    backend_kind: str, kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Sum over 3 processes of runs{outcome=success} == executions counted."""
    pytest.importorskip("opentelemetry.sdk")
    from grelmicro.task import TaskManager

    if kind == "cron" and not hasattr(TaskManager, "cron"):
        pytest.skip("cron tasks are not available")
    url = server_url(request, backend_kind)
    namespace = unique_namespace(backend_kind)
    duration, workers = 3.5, 3
    out = tmp_path / "executions.txt"
    dumps = [tmp_path / f"metrics-{index}.json" for index in range(workers)]
    logs = [tmp_path / f"worker-{index}.log" for index in range(workers)]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "PYTHONPATH": str(ROOT),
    }
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(workers):
            command = [
                sys.executable,
                "-m",
                "tests.integration.test_metrics_fleet",
                "--backend",
                backend_kind,
                "--url",
                url,
                "--namespace",
                namespace,
                "--kind",
                kind,
                "--duration",
                str(duration),
                "--out",
                str(out),
                "--metrics",
                str(dumps[index]),
                "--worker",
                f"w{index}",
            ]
            with logs[index].open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        command,
                        cwd=ROOT,
                        env=env,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=log,
                    )
                )
        for process in processes:  # every worker connected
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.strip() == b"ready", worker_logs(logs)
        for process in processes:  # then all start together
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            process.stdin.flush()
        for process in processes:
            process.wait(timeout=duration + 30)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()
    assert all(p.returncode == 0 for p in processes), worker_logs(logs)

    executions = [line for line in out.read_text().splitlines() if line]
    dumped = [json.loads(dump.read_text()) for dump in dumps]
    counts: list[dict[str, int]] = [d["runs"] for d in dumped]
    successes = sum(count.get("success", 0) for count in counts)
    assert executions, "no execution at all"
    assert successes == len(executions), (counts, len(executions))
    # Each process counted its own executions, not the others'.
    for index, count in enumerate(counts):
        mine = sum(1 for line in executions if line.split()[0] == f"w{index}")
        assert count.get("success", 0) == mine, (index, count, mine)
    assert not any(count.get("error") for count in counts), counts
    for count, d in zip(counts, dumped, strict=True):
        # One lag point per run that started, one duration point per run
        # that ended (a run cut off by the shutdown may have only its lag).
        ended = sum(n for o, n in count.items() if o not in ("skipped", "missed"))
        assert d["duration"] == ended, d
        assert ended <= d["lag"] <= ended + 1, d
    if kind == "interval":
        # The workers that found the task lock held counted skipped runs.
        assert sum(count.get("skipped", 0) for count in counts) > 0, counts


def worker_logs(logs: list[Path]) -> str:
    """The workers' stderr, for failure messages."""
    return "\n".join(f"--- {log.name}\n{log.read_text()}" for log in logs)


if __name__ == "__main__":
    main()
