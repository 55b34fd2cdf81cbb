"""Fencing tokens on NATS across real OS processes (issue 11).

Three worker processes contend for one lock until each has taken it 70 times
(210 acquisitions). Each records, for every holding, when it took the lock,
its fencing token, and when it released it (on the machine's monotonic
clock, shared by the processes). Holdings never overlap, every token is
unique, and tokens increase in acquisition order.

The stalled holder: a worker takes the lock (a 1 s lease), writes to a
fenced store (a NATS KV key holding the highest token it accepted, which
rejects a write carrying a lower one), and is frozen with SIGSTOP longer
than its lease; this test, as another worker, takes the lock and writes;
the first worker is resumed with SIGCONT and writes again at once, with its
old token: the store rejects it, in every trial.

Run as a module (``python -m tests.integration.test_nats_fencing_processes
contend URL BUCKET WORKER COUNT`` or ``... stall URL BUCKET``), this file is
the worker.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from tests.integration.conftest import delete_nats_bucket

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKERS = 3
PER_WORKER = 70
LOCK = "lock:fenced-processes"
ROOT = Path(__file__).resolve().parents[2]


async def work(url: str, bucket: str, worker: str, count: int) -> None:
    from grelmicro.sync.nats import NatsSyncBackend

    holdings: list[tuple[float, int, float]] = []
    async with NatsSyncBackend(url, bucket=bucket, auto_register=False) as backend:
        print(json.dumps({"ready": worker}), flush=True)
        deadline = time.monotonic() + 120
        while len(holdings) < count and time.monotonic() < deadline:
            answer = await backend.acquire_fenced(name=LOCK, token=worker, duration=5)
            if answer.fence is None:
                await backend.wait_released(name=LOCK)
                continue
            taken = time.monotonic()
            await asyncio.sleep(0.001)
            released = time.monotonic()
            assert await backend.release(name=LOCK, token=worker)
            holdings.append((taken, answer.fence, released))
            await asyncio.sleep(0.002)  # let the others in
    print(json.dumps({"worker": worker, "holdings": holdings}), flush=True)


@pytest.mark.anyio
async def test_tokens_are_unique_and_grow_in_acquisition_order(nats_url: str) -> None:
    bucket = f"fenced-{uuid4().hex[:8]}"
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.test_nats_fencing_processes",
                "contend",
                nats_url,
                bucket,
                f"w{index}",
                str(PER_WORKER),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for index in range(WORKERS)
    ]
    try:
        outputs = [process.communicate(timeout=180)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        await delete_nats_bucket(nats_url, bucket)
    holdings: list[tuple[float, int, float, str]] = []
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output
        result = json.loads(output.strip().splitlines()[-1])
        holdings += [
            (t, fence, r, result["worker"]) for t, fence, r in result["holdings"]
        ]
    assert len(holdings) == WORKERS * PER_WORKER
    holdings.sort()
    fences = [fence for _, fence, _, _ in holdings]
    assert len(set(fences)) == len(fences), "a token was issued twice"
    assert fences == sorted(fences), "tokens do not grow in acquisition order"
    for (_, _, released, who), (taken, _, _, next_who) in itertools.pairwise(holdings):
        assert taken >= released, f"{who} and {next_who} held the lock at once"
    assert len({who for *_, who in holdings}) == WORKERS


# The stalled holder ---------------------------------------------------------------

STALL_LOCK = "lock:fenced-store"
STORE_KEY = "report"
STALL_LEASE = 1.0
TRIALS = 3


async def fenced_write(kv: Any, fence: int, writer: str) -> bool:
    """Write `writer` to the store unless it accepted a higher token before."""
    import nats.js.errors

    while True:
        try:
            entry = await kv.get(STORE_KEY)
        except nats.js.errors.KeyNotFoundError:
            entry = None
        value = f"{fence}:{writer}".encode()
        try:
            if entry is None:
                await kv.create(STORE_KEY, value)
                return True
            assert entry.value is not None
            if fence < int(entry.value.split(b":")[0]):
                return False  # fenced off: a later holder wrote already
            await kv.update(STORE_KEY, value, last=entry.revision)
            return True
        except nats.js.errors.KeyWrongLastSequenceError:
            continue  # another write in between: judge again


async def stalled_holder(url: str, bucket: str) -> None:
    import nats

    from grelmicro.sync.nats import NatsSyncBackend

    client = await nats.connect(url)
    kv = await client.jetstream().create_key_value(bucket=f"{bucket}-store")
    async with NatsSyncBackend(url, bucket=bucket, auto_register=False) as backend:
        answer = await backend.acquire_fenced(
            name=STALL_LOCK, token="stalled", duration=STALL_LEASE
        )
        assert answer.fence is not None
        assert await fenced_write(kv, answer.fence, "stalled")
        print(json.dumps({"holding": answer.fence}), flush=True)
        # Frozen here by the test, then told to go on: it writes at once,
        # still believing it holds the lock.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        accepted = await fenced_write(kv, answer.fence, "stalled")
        print(json.dumps({"accepted": accepted}), flush=True)
    await client.close()


@pytest.mark.anyio
async def test_a_stalled_holder_is_fenced_off(nats_url: str) -> None:
    import nats

    from grelmicro.sync.nats import NatsSyncBackend

    bucket = f"stalled-{uuid4().hex[:8]}"
    client = await nats.connect(nats_url)
    rejected = 0
    try:
        async with NatsSyncBackend(
            nats_url, bucket=bucket, auto_register=False
        ) as backend:
            for _ in range(TRIALS):
                holder = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tests.integration.test_nats_fencing_processes",
                        "stall",
                        nats_url,
                        bucket,
                    ],
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                try:
                    assert holder.stdout is not None
                    assert holder.stdin is not None
                    line = await asyncio.to_thread(holder.stdout.readline)
                    stalled_fence = json.loads(line)["holding"]
                    os.kill(holder.pid, signal.SIGSTOP)
                    # This worker takes the lock once the stalled lease ended.
                    deadline = time.monotonic() + 10
                    while True:
                        answer = await backend.acquire_fenced(
                            name=STALL_LOCK, token="next", duration=30
                        )
                        if answer.fence is not None:
                            break
                        assert time.monotonic() < deadline, "never took over"
                        await asyncio.sleep(0.05)
                    assert answer.fence > stalled_fence
                    kv = await client.jetstream().key_value(f"{bucket}-store")
                    assert await fenced_write(kv, answer.fence, "next")
                    os.kill(holder.pid, signal.SIGCONT)
                    holder.stdin.write("go\n")
                    holder.stdin.flush()
                    line = await asyncio.to_thread(holder.stdout.readline)
                    if json.loads(line)["accepted"] is False:
                        rejected += 1
                    assert holder.wait(timeout=30) == 0
                    assert await backend.release(name=STALL_LOCK, token="next")
                    stored = await kv.get(STORE_KEY)
                    assert stored.value == f"{answer.fence}:next".encode()
                finally:
                    if holder.poll() is None:
                        os.kill(holder.pid, signal.SIGCONT)
                        holder.kill()
                        holder.wait()
                    for stream in (holder.stdin, holder.stdout):
                        if stream is not None:
                            stream.close()
    finally:
        await client.close()
        await delete_nats_bucket(nats_url, f"{bucket}-store")
        await delete_nats_bucket(nats_url, bucket)
    assert rejected == TRIALS


if __name__ == "__main__":
    if sys.argv[1] == "contend":
        asyncio.run(work(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
    else:
        asyncio.run(stalled_holder(sys.argv[2], sys.argv[3]))
