"""Backend load worker: N locked interval tasks (seconds=1) in one process.

``run.py`` starts three of these at once (same target, same server) and
gives them a common wall-clock start time. Each enters its TaskManager at
that time, runs for the window and prints one JSON object: the executions
of its tasks and the client round trips (socket writes) and commands it
made inside the window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from typing import Any

from _targets import COUNTS, KINDS, install_counters, make_backend


async def main(args: argparse.Namespace) -> dict[str, Any]:
    install_counters("redis" if args.target.endswith("-redis") else "nats")
    from grelmicro.task import TaskManager

    backend = make_backend(args.target, args.url, args.namespace)
    await backend.__aenter__()
    await backend.locked(name="warmup")  # connect before the window
    executions = [0]
    manager = TaskManager()

    def make_job(index: int) -> Any:
        async def job() -> None:
            executions[0] += 1

        job.__qualname__ = job.__name__ = f"load_{index}"
        return job

    for i in range(args.tasks):
        manager.interval(
            seconds=1, max_lock_seconds=5, name=f"load-{i}", backend=backend
        )(make_job(i))
    # Ready: the runner answers with the common start time (wall clock).
    print("READY", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    start_at = float(line)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    before = dict(COUNTS)
    kinds_before = dict(KINDS)
    async with manager:
        await asyncio.sleep(max(0.0, start_at + args.seconds - time.time()))
        result: dict[str, Any] = {"executions": executions[0]}
        result.update({k: v - before[k] for k, v in COUNTS.items()})
        result["commands_by_kind"] = {
            k: v - kinds_before.get(k, 0)
            for k, v in KINDS.items()
            if v - kinds_before.get(k, 0)
        }
    await backend.__aexit__(None, None, None)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", default="bench_load")
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(main(parser.parse_args()))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)
