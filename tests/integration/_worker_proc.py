"""A worker process for the multi-process tests.

Runs one `TaskManager` with one distributed interval task against a real
server, and appends each run as ``<worker> <start> <end>`` (wall-clock
seconds) to an output file. Protocol with the parent: the worker prints
``ready`` once connected, waits for a line on stdin, runs for ``--duration``
seconds, then exits 0.

    python -m tests.integration._worker_proc --backend redis --url URL \\
        --namespace NS --task NAME --seconds 1 --duration 3 --out FILE --worker W
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import anyio
import anyio.to_thread

from grelmicro.sync.abc import SyncBackend
from grelmicro.task import TaskManager


def make_backend(kind: str, url: str, namespace: str) -> SyncBackend:
    """Build a backend of `kind` on `namespace` (not entered, not registered).

    `namespace` is a Redis key prefix or a NATS bucket name.
    """
    if kind == "redis":
        from grelmicro.sync.redis import RedisSyncBackend

        return RedisSyncBackend(url, prefix=namespace, auto_register=False)
    if kind == "nats":
        from grelmicro.sync.nats import NatsSyncBackend

        return NatsSyncBackend(url, bucket=namespace, auto_register=False)
    msg = f"unknown backend kind {kind!r}"
    raise ValueError(msg)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["redis", "nats"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--max-lock-seconds", type=float, default=10.0)
    parser.add_argument("--work", type=float, default=0.05)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--worker", required=True)
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    """Connect, signal readiness, wait for the go, run the manager for a while."""
    backend = make_backend(args.backend, args.url, args.namespace)
    manager = TaskManager()
    out: Path = args.out

    @manager.interval(
        seconds=args.seconds,
        name=args.task,
        max_lock_seconds=args.max_lock_seconds,
        backend=backend,
        worker=args.worker,
    )
    async def job() -> None:
        start = time.time()
        await anyio.sleep(args.work)
        end = time.time()
        with out.open("a") as file:
            file.write(f"{args.worker} {start!r} {end!r}\n")

    async with backend:
        # Connect before the start signal so every worker starts on time.
        await backend.locked(name="warm-up")
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        with anyio.move_on_after(args.duration):
            async with manager:
                await anyio.sleep_forever()


def main() -> None:
    """Entry point."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    anyio.run(run, parse_args())


if __name__ == "__main__":
    main()
