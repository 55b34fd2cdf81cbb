"""Cost of the OpenTelemetry hooks: 10,000 local interval tasks, every second.

Each case runs in a fresh process (one `TaskManager`, N local interval tasks
with ``seconds=1`` whose function only counts its runs), alternating cases
round after round so that a busy machine slows them all alike:

- ``absent``: `opentelemetry` cannot be imported (as if the extra were not
  installed);
- ``no-provider``: the API is installed and imported, no provider is set;
- ``metrics``: the SDK's meter provider with an in-memory metric reader;
- ``metrics+traces``: that, plus the SDK's tracer provider handing every
  run's span to an exporter that drops it (an in-memory exporter would keep
  tens of thousands of spans a second alive and measure the garbage
  collector instead).

After a warm-up (start-up and the first runs), the window measures CPU
seconds (user + system) per wall second and the runs. The table gives the
median over the rounds and the extra CPU per run against ``absent``.

    python benchmarks/otel_overhead.py                      # 10,000 tasks, 5 s, 3 rounds
    python benchmarks/otel_overhead.py --tasks 2000 --seconds 3 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CASES = ("absent", "no-provider", "metrics", "metrics+traces")

HIDE_OPENTELEMETRY = """
import importlib.abc
import sys

class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "opentelemetry" or fullname.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None

sys.meta_path.insert(0, _Hide())
"""


def setup_case(case: str) -> Any:
    """Configure OpenTelemetry for `case`; something to keep alive."""
    if case == "absent":
        exec(HIDE_OPENTELEMETRY, {})
        return None
    from opentelemetry import metrics, trace

    if case == "no-provider":
        return None
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    if case == "metrics":
        return reader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class DropSpans(SpanExporter):
        """Counts the spans it is given and keeps none."""

        def __init__(self) -> None:
            self.spans = 0

        def export(self, spans: Any) -> SpanExportResult:
            self.spans += len(spans)
            return SpanExportResult.SUCCESS

    exporter = DropSpans()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return reader, exporter


def cpu_seconds() -> float:
    """User + system CPU seconds of this process."""
    times = os.times()
    return times.user + times.system


async def measure(tasks: int, warmup: float, seconds: float) -> dict[str, Any]:
    """Run `tasks` local interval tasks; CPU and runs over the window."""
    import anyio

    from grelmicro import _metrics
    from grelmicro.task import TaskManager

    runs = [0]
    manager = TaskManager()

    def make_job() -> Any:
        async def job() -> None:
            runs[0] += 1

        return job

    for index in range(tasks):
        manager.interval(seconds=1, name=f"job-{index}")(make_job())
    async with manager:
        await anyio.sleep(warmup)
        start_runs, start_cpu, start_wall = runs[0], cpu_seconds(), time.monotonic()
        await anyio.sleep(seconds)
        end_runs, end_cpu, end_wall = runs[0], cpu_seconds(), time.monotonic()
    wall = end_wall - start_wall
    return {
        "cpu_per_s": (end_cpu - start_cpu) / wall,
        "runs_per_s": (end_runs - start_runs) / wall,
        "recording": _metrics.ENABLED.on,
        "otel_imported": "opentelemetry" in sys.modules,
    }


def child(args: argparse.Namespace) -> None:
    """One case in this process: print its figures as JSON."""
    keep = setup_case(args.case)
    import anyio

    result = anyio.run(measure, args.tasks, args.warmup, args.seconds)
    result["case"] = args.case
    del keep
    print(json.dumps(result))


def run_case(case: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run `case` in a fresh interpreter and parse its JSON line."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--case",
        case,
        "--tasks",
        str(args.tasks),
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(args.root)
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def parent(args: argparse.Namespace) -> None:
    """Run every case `rounds` times, alternating; print the table."""
    cases = args.cases
    results: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    for round_index in range(args.rounds):
        # Alternate the order: a case is not always first after a pause.
        order = cases if round_index % 2 == 0 else list(reversed(cases))
        for case in order:
            result = run_case(case, args)
            results[case].append(result)
            print(
                f"round {round_index + 1} {case:15} cpu/s {result['cpu_per_s']:.3f}"
                f"  runs/s {result['runs_per_s']:.0f}",
                file=sys.stderr,
            )
    rows = []
    for case in cases:
        cpu = statistics.median(r["cpu_per_s"] for r in results[case])
        rate = statistics.median(r["runs_per_s"] for r in results[case])
        rows.append((case, cpu, rate, results[case][0]))
    base_cpu, base_rate = rows[0][1], rows[0][2]
    print(
        f"{args.tasks} local interval tasks (seconds=1), {args.seconds:g} s window, "
        f"median of {args.rounds} round(s)"
    )
    header = (
        f"{'case':15} {'CPU s / wall s':>15} {'runs / s':>9} "
        f"{'CPU us / run':>13} {'extra us / run':>15} {'recording':>10}"
    )
    print(header)
    print("-" * len(header))
    for case, cpu, rate, first in rows:
        per_run = cpu / rate * 1e6 if rate else float("nan")
        extra = per_run - base_cpu / base_rate * 1e6 if base_rate else float("nan")
        print(
            f"{case:15} {cpu:15.3f} {rate:9.0f} {per_run:13.1f} {extra:15.2f} "
            f"{'yes' if first['recording'] else 'no':>10}"
        )


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="window")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=CASES,
        default=list(CASES),
        help="the cases to compare (the first is the reference)",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=ROOT,
        help="the source tree whose grelmicro is measured (e.g. an export of an "
        "older commit, to compare with a scheduler without the hooks)",
    )
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
