"""A worker process for the multi-process cron tests.

Runs one `TaskManager` with one cron task against a real server and appends
each run to an output file, one line per event, flushed at once (a SIGKILL
loses nothing written)::

    start <worker> <fire_ms> <fencing_token> <wall_s>
    end <worker> <fire_ms> <fencing_token> <wall_s>

WARNING and ERROR logs go to stderr as ``<LEVEL> <message>``.

Protocol with the parent: the worker prints ``ready`` once connected, waits
for a line on stdin, enters the manager, prints ``started``, and runs until
stdin closes; then it leaves the manager and exits 0.

    python -m tests.integration._cron_worker --backend redis --url URL \\
        --namespace NS --task NAME --expression "* * * * * *" --out FILE \\
        --worker W [--work 0.05] [--at-least-once --lease 3] [--grace 0.3]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import anyio
import anyio.to_thread

from grelmicro.task import TaskManager, current_run
from tests.integration._worker_proc import make_backend


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["redis", "nats"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--expression", required=True)
    parser.add_argument("--work", type=float, default=0.05)
    parser.add_argument("--at-least-once", action="store_true")
    parser.add_argument("--lease", type=float, default=60.0)
    parser.add_argument("--grace", type=float, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--worker", required=True)
    return parser.parse_args(argv)


def record(out: Path, event: str, worker: str) -> None:
    """Append one event line for the current run."""
    run = current_run()
    fire_ms = round(run.scheduled_at.timestamp() * 1000)
    line = f"{event} {worker} {fire_ms} {run.fencing_token} {time.time()!r}\n"
    with out.open("a") as file:
        file.write(line)
        file.flush()


async def run(args: argparse.Namespace) -> None:
    """Connect, signal readiness, wait for the go, run until stdin closes."""
    backend = make_backend(args.backend, args.url, args.namespace)
    manager = TaskManager()
    out: Path = args.out
    worker: str = args.worker

    @manager.cron(
        args.expression,
        name=args.task,
        backend=backend,
        worker=worker,
        at_least_once=args.at_least_once,
        lease_seconds=args.lease,
        misfire_grace_seconds=args.grace,
    )
    async def job() -> None:
        record(out, "start", worker)
        await anyio.sleep(args.work)
        record(out, "end", worker)

    async with backend:
        await backend.locked(name="warm-up")  # connect before the go
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        async with manager:
            print("started", flush=True)
            while await anyio.to_thread.run_sync(sys.stdin.readline):
                pass


def main() -> None:
    """Entry point."""
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s"
    )
    anyio.run(run, parse_args())


if __name__ == "__main__":
    main()
