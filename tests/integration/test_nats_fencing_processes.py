"""Fencing tokens on NATS across real OS processes (issue 11).

Three worker processes contend for one lock until each has taken it 70 times
(210 acquisitions). Each records, for every holding, when it took the lock,
its fencing token, and when it released it (on the machine's monotonic
clock, shared by the processes). Holdings never overlap, every token is
unique, and tokens increase in acquisition order.

Run as a module (``python -m tests.integration.test_nats_fencing_processes
URL BUCKET WORKER COUNT``), this file is the worker.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
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


if __name__ == "__main__":
    asyncio.run(work(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
