"""Redis: calls made while another is in flight go out together (one pipeline).

Round trips are counted by the server: ``total_reads_processed`` in
``INFO stats`` grows by one per read event on a client socket, so commands
that arrive in one write are one read (one round trip).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
from redis.asyncio import Redis

from grelmicro.sync import _burst as burst
from grelmicro.sync.redis import RedisSyncBackend, RedisSyncBackendError

pytestmark = pytest.mark.anyio

#: Calls made at once: their pipeline (~6 KiB) fits in one read of the
#: server's 16 KiB buffer, so one round trip is one read.
CALLS = 30


def names(count: int) -> list[str]:
    prefix = f"batch-{uuid4().hex[:8]}"
    return [f"{prefix}-{i}" for i in range(count)]


@pytest.fixture
async def backend(redis_url: str) -> AsyncIterator[RedisSyncBackend]:
    async with RedisSyncBackend(redis_url, auto_register=False) as backend:
        await backend.locked(name="connect")  # connected before counting
        yield backend


async def reads(raw: Redis) -> int:
    stats = await raw.info("stats")
    return int(stats["total_reads_processed"])


async def test_concurrent_calls_share_round_trips(
    backend: RedisSyncBackend, raw: Redis
) -> None:
    """30 acquisitions made at once: two round trips, each call its own answer."""
    keys = names(CALLS)
    # Before counting: the connections opened (the one for calls sent
    # alone, the pool's one for batches) and the script cached on the server.
    warm = names(2)
    await asyncio.gather(*(backend.locked(name=k) for k in warm))
    await asyncio.gather(
        *(backend.acquire(name=k, token="w", duration=1) for k in warm)
    )
    before = await reads(raw)
    won = await asyncio.gather(
        *(backend.acquire(name=k, token="a", duration=30) for k in keys)
    )
    after = await reads(raw)
    assert won == [True] * CALLS
    # The first call is sent alone; the 29 made meanwhile go out in one
    # pipeline. The INFO before/after counts one read. One round trip per
    # call would be 30 reads.
    assert after - before <= 4, after - before
    # Each caller got its own answer: another token loses every lock, and
    # learns the time left on each.
    left = await asyncio.gather(
        *(backend.acquire_or_remaining(name=k, token="b", duration=30) for k in keys)
    )
    assert all(0 < seconds <= 30 for seconds in left)
    released = await asyncio.gather(*(backend.release(name=k, token="a") for k in keys))
    assert released == [True] * CALLS
    assert await raw.exists(*keys) == 0


async def test_sequential_calls_are_sent_at_once(
    backend: RedisSyncBackend, raw: Redis
) -> None:
    """A call alone is not held back: each is one round trip, in order."""
    (name,) = names(1)
    assert await backend.acquire(name=name, token="w", duration=30)  # warm
    assert await backend.release(name=name, token="w")
    assert not await backend.owned(name=name, token="w")
    before = await reads(raw)
    assert await backend.acquire(name=name, token="a", duration=30)
    assert await backend.owned(name=name, token="a")
    assert await backend.release(name=name, token="a")
    after = await reads(raw)
    # Three calls, three reads, plus the INFO's own.
    assert after - before == 4, after - before
    assert not await backend.locked(name=name)


async def test_a_call_cancelled_while_queued_is_never_sent(
    backend: RedisSyncBackend, raw: Redis
) -> None:
    first, queued = names(2)
    sent = asyncio.ensure_future(backend.acquire(name=first, token="a", duration=30))
    await asyncio.sleep(0)  # the first is in flight: the next one queues
    cancelled = asyncio.ensure_future(
        backend.acquire(name=queued, token="a", duration=30)
    )
    await asyncio.sleep(0)  # queued, not yet sent (sent at the turn's end)
    cancelled.cancel()
    assert await sent
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await asyncio.sleep(0.05)
    assert await raw.get(first) == b"a"
    assert not await raw.exists(queued)


async def test_one_failing_call_in_a_batch_fails_alone(
    backend: RedisSyncBackend, raw: Redis
) -> None:
    """A server error answers only its own caller; the batch's others succeed."""
    good = names(5)
    (bad,) = names(1)
    await raw.rpush(bad, "not a string")  # WRONGTYPE for the script's GET
    try:
        results = await asyncio.gather(
            backend.acquire(name=good[0], token="a", duration=30),
            *(backend.acquire(name=k, token="a", duration=30) for k in good[1:]),
            backend.acquire(name=bad, token="a", duration=30),
            return_exceptions=True,
        )
        assert results[:5] == [True] * 5
        assert isinstance(results[5], RedisSyncBackendError)
        assert bad in str(results[5])
    finally:
        await raw.delete(bad, *good)


async def test_batches_survive_a_script_flush(
    backend: RedisSyncBackend, raw: Redis
) -> None:
    """NOSCRIPT in a pipeline: the scripts are sent again (EVAL) for those calls."""
    keys = names(20)
    await raw.script_flush()
    won = await asyncio.gather(
        *(backend.acquire(name=k, token="a", duration=30) for k in keys)
    )
    assert won == [True] * 20
    await raw.script_flush()
    released = await asyncio.gather(*(backend.release(name=k, token="a") for k in keys))
    assert released == [True] * 20


async def test_calls_made_in_a_burst_all_go_together(
    backend: RedisSyncBackend, raw: Redis
) -> None:
    """During a burst announced by the scheduler even the first call queues:
    the whole group is one round trip (and each gets its own answer)."""
    keys = names(CALLS)
    warm = names(2)
    await asyncio.gather(*(backend.locked(name=k) for k in warm))
    await asyncio.gather(
        *(backend.acquire(name=k, token="w", duration=1) for k in warm)
    )
    loop = asyncio.get_running_loop()
    before = await reads(raw)
    calls = [
        asyncio.ensure_future(backend.acquire(name=k, token="a", duration=30))
        for k in keys
    ]
    burst.begin(loop)  # the calls' first steps run in the next turn
    won = await asyncio.gather(*calls)
    after = await reads(raw)
    assert won == [True] * CALLS
    # One read for the batch, one for the INFO.
    assert after - before <= 2, after - before


async def test_calls_are_applied_in_the_order_they_were_made(
    backend: RedisSyncBackend, raw: Redis
) -> None:
    """A release made while its acquisition is in flight is applied after it:
    one call or batch in flight per backend, in order (repeated: a race
    between two connections would lose some)."""
    for (key,) in (names(1) for _ in range(50)):
        acquiring = asyncio.ensure_future(
            backend.acquire(name=key, token="a", duration=30)
        )
        await asyncio.sleep(0)  # sent, in flight
        releasing = asyncio.ensure_future(backend.release(name=key, token="a"))
        assert await acquiring
        assert await releasing
        assert not await raw.exists(key)
