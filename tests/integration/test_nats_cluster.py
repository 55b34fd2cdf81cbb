"""Leases across a stream-leader change on a 3-node JetStream cluster (issue 9, case 12).

The backend never compares a server timestamp with any clock: a worker counts
another worker's lease on its own monotonic clock from when it received that
worker's write. So a stream-leader change between the holder's write and the
other worker's reads (the new leader's clock may differ from the old one's)
cannot end a lease early. Here, each round, worker A takes a fractional lease,
the stream leader steps down at once, and worker B (connected to another node)
polls for the lock: B must never hold it before A's lease ended by A's own
clock (both workers are in this process, so their monotonic clocks are one).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio
import nats
import pytest

from grelmicro.sync.nats import NatsSyncBackend, NatsSyncBackendError
from tests.integration.conftest import delete_nats_bucket
from tests.servers import NatsCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LEASE = 1.5
ROUNDS = 5
BUCKET = "leader-change"


async def stepdown(urls: list[str], bucket: str) -> tuple[str, str]:
    """Make the bucket's stream leader step down: (old leader, new leader)."""
    client = await nats.connect(servers=urls, connect_timeout=2)
    js = client.jetstream()
    stream = f"KV_{bucket}"

    async def leader() -> str:
        while True:
            try:
                info = await js.stream_info(stream)
                if info.cluster is not None and info.cluster.leader:
                    return str(info.cluster.leader)
            except Exception:
                pass
            await anyio.sleep(0.05)

    try:
        with anyio.fail_after(30):
            old = await leader()
            await client.request(
                f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=5
            )
            await anyio.sleep(0.1)
            return old, await leader()
    finally:
        await client.close()


async def retrying(call: Callable[[], Awaitable[Any]]) -> Any:
    """`call()`, again while the stream has no leader (elections take seconds)."""
    with anyio.fail_after(30):
        while True:
            try:
                return await call()
            except NatsSyncBackendError:
                await anyio.sleep(0.05)


@pytest.mark.anyio
async def test_stream_leader_change_never_ends_a_lease_early(
    start_server: Callable[[Any], Any],
) -> None:
    cluster: NatsCluster = start_server(NatsCluster(3))
    cluster.wait_meta_leader()
    urls = cluster.urls
    a = NatsSyncBackend(",".join(urls), bucket=BUCKET, replicas=3, auto_register=False)
    b = NatsSyncBackend(
        ",".join(urls[1:] + urls[:1]), bucket=BUCKET, replicas=3, auto_register=False
    )
    margins: list[float] = []
    leaders: set[str] = set()
    try:
        async with a, b:
            await retrying(partial(a.locked, name="warm-up"))
            for index in range(ROUNDS):
                lock = f"lock:round-{index}"
                sent = time.monotonic()
                assert await retrying(
                    partial(a.acquire, name=lock, token="a", duration=LEASE)
                )
                # B sees A's write, then the leader changes under both.
                assert not await retrying(
                    partial(b.acquire, name=lock, token="b", duration=30)
                )
                old, new = await stepdown(urls, BUCKET)
                leaders.update((old, new))
                while True:
                    if await retrying(
                        partial(b.acquire, name=lock, token="b", duration=30)
                    ):
                        taken = time.monotonic()
                        break
                    await anyio.sleep(0.02)
                # No double holder: B took the lock after A's lease ended, by
                # A's own accounting (the lease starts before A sent it).
                margins.append(taken - (sent + LEASE))
                assert not await retrying(partial(a.owned, name=lock, token="a"))
                assert await retrying(partial(b.release, name=lock, token="b"))
    finally:
        await delete_nats_bucket(",".join(urls), BUCKET)
    assert min(margins) >= 0, margins
    assert len(leaders) >= 2, leaders  # the leadership really moved
