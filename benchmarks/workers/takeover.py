"""Takeover worker: a leader election and a leader-gated interval task.

``run.py`` keeps three of these running per target, stops the leader (SIGKILL,
or SIGTERM: the app leaves ``async with manager`` and releases what it
holds) and measures the time until another worker runs the gated task.

Lines on stdout: ``READY <pid>`` once the manager is entered, ``LEADER
<pid> <wall time>`` when it becomes leader, ``RUN <pid> <wall time>`` at
each gated run, ``EXIT <pid>`` after a graceful stop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time

from _targets import make_backend

PID = os.getpid()


def say(line: str) -> None:
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> None:
    from grelmicro.sync import LeaderElection
    from grelmicro.task import TaskManager

    backend = make_backend(args.target, args.url, args.namespace)
    await backend.__aenter__()
    leader = LeaderElection(
        "takeover",
        backend=backend,
        lease_duration=args.lease,
        renew_deadline=args.lease * 0.75,
        retry_interval=args.retry,
        backend_timeout=min(1.0, args.lease * 0.5),
    )
    manager = TaskManager()
    manager.add_task(leader)

    async def gated() -> None:
        say(f"RUN {PID} {time.time():.6f}")

    gated.__qualname__ = gated.__name__ = "gated"
    manager.interval(seconds=args.interval, leader=leader, name="gated")(gated)

    async def report_leadership() -> None:
        while True:
            await leader.wait_for_leader()
            say(f"LEADER {PID} {time.time():.6f}")
            await leader.wait_lose_leader()

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with manager:
        reporter = asyncio.ensure_future(report_leadership())
        say(f"READY {PID}")
        await stop.wait()
        reporter.cancel()
    say(f"EXIT {PID}")
    await backend.__aexit__(None, None, None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", default="bench_takeover")
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--retry", type=float, default=0.25)
    parser.add_argument("--interval", type=float, default=0.05)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(parser.parse_args()))
