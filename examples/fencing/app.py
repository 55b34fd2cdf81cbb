"""A distributed task that writes through a fenced store (Redis).

Each run of `publish_report` holds the task's lock and carries its fencing
token (`current_run().fencing_token`). The store rejects a write whose token
is older than one it has accepted, so a worker frozen past its lease (a long
garbage-collection pause, a suspended VM, a network partition) cannot
overwrite a later run's report when it wakes up.

    REDIS_URL=redis://localhost:6379 python examples/fencing/app.py
    python examples/fencing/app.py --seconds 5   # stops by itself (demo)

Run several copies side by side: each run is done by one of them, and the
tokens grow from run to run whichever worker runs it. With ``--seconds`` (or
``FENCING_DEMO_SECONDS``), the app stops after that long, then replays what a
worker frozen since the first run would do on waking up: write with its old
token. The store rejects it.
"""

from __future__ import annotations

import argparse
import logging
import os

import anyio
from fenced_store import FencedStore, StaleTokenError
from redis.asyncio import Redis

from grelmicro.sync.redis import RedisSyncBackend
from grelmicro.task import TaskManager, current_run

logger = logging.getLogger("examples.fencing")

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
PREFIX = os.environ.get("FENCING_PREFIX", "examples:fencing:")
WORKER = os.environ.get("WORKER_NAME") or f"worker-{os.getpid()}"

backend = RedisSyncBackend(REDIS_URL, prefix=PREFIX)
client = Redis.from_url(REDIS_URL)
# --8<-- [start:task]
store = FencedStore(client, f"{PREFIX}report")
task = TaskManager()
tokens: list[int] = []


@task.interval(seconds=1, max_lock_seconds=10)
async def publish_report() -> None:
    run = current_run()  # this run's name, schedule, fencing token, lost flag
    report = f"report of {run.scheduled_at:%H:%M:%S} by {WORKER}"
    try:
        await store.write(report, fencing_token=run.fencing_token)
    except StaleTokenError as exc:
        # A later run already wrote: this worker was paused past its lease.
        logger.warning("stale run, nothing written: %s", exc)
        return
    tokens.append(run.fencing_token)
    print(f"{WORKER}: report written with token {run.fencing_token}", flush=True)


# --8<-- [end:task]


async def replay_stale_write() -> None:
    """What a worker frozen since the first run does when it wakes up."""
    if len(tokens) < 2:
        return
    try:
        await store.write("late report", fencing_token=tokens[0])
    except StaleTokenError as exc:
        print(f"stale write with token {tokens[0]} rejected: {exc}", flush=True)
    stored = await store.read()
    print(f"stored: {stored.value!r} (token {stored.fence})", flush=True)


async def main(seconds: float | None) -> None:
    """Run the tasks (for `seconds`, or until interrupted)."""
    async with backend, task:
        if seconds is None:
            await anyio.sleep_forever()
        await anyio.sleep(seconds)
    await replay_stale_write()
    await client.aclose()


def parse_seconds() -> float | None:
    """``--seconds N`` or ``FENCING_DEMO_SECONDS``: stop after N seconds."""
    parser = argparse.ArgumentParser(description="Fenced writes from a task.")
    parser.add_argument(
        "--seconds",
        type=float,
        default=os.environ.get("FENCING_DEMO_SECONDS") or None,
        help="stop after this many seconds (demo); run until interrupted if unset",
    )
    seconds: float | None = parser.parse_args().seconds
    if seconds is not None and not 0 < seconds <= 60:
        parser.error(f"--seconds must be in (0, 60], got {seconds}")
    return seconds


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    anyio.run(main, parse_seconds())
