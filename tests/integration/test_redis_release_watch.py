"""Redis: a backend built from a URL learns of releases over pub/sub.

The poll interval is raised to a minute in these tests: a waiter that wakes
within the test's bound was woken by the release (or the lease's end), not
by a look at the lease.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from uuid import uuid4

import anyio
import pytest
from redis.asyncio import Redis

from grelmicro.sync.redis import RedisSyncBackend
from grelmicro.sync.redis import _backend as redis_backend_module

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def slow_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_backend_module, "RELEASE_POLL_INTERVAL", 60.0)


def name() -> str:
    return f"watch-{uuid4().hex[:8]}"


@contextlib.asynccontextmanager
async def waiting(
    backend: RedisSyncBackend, key: str, *, settle: float = 0.2
) -> AsyncIterator[anyio.Event]:
    """A waiter on `key` in the background; the event is set when it returns."""
    woke = anyio.Event()

    async def wait() -> None:
        await backend.wait_released(name=key)
        woke.set()

    async with anyio.create_task_group() as group:
        group.start_soon(wait)
        await anyio.sleep(settle)  # subscribed, and still waiting
        yield woke


async def woken(event: anyio.Event) -> None:
    with anyio.fail_after(5):
        await event.wait()


async def pubsub_clients(raw: Redis) -> int:
    clients = await raw.client_list(_type="pubsub")
    return len(clients)


async def test_a_release_wakes_the_waiter(redis_url: str, raw: Redis) -> None:
    key = name()
    async with (
        RedisSyncBackend(redis_url, auto_register=False) as waiter,
        RedisSyncBackend(client=raw, auto_register=False) as holder,
    ):
        assert await holder.acquire(name=key, token="h", duration=30)
        async with waiting(waiter, key) as woke:
            assert not woke.is_set()  # held: still waiting
            # Released by a backend on a borrowed client: it publishes too.
            assert await holder.release(name=key, token="h")
            await woken(woke)


async def test_the_lease_end_wakes_the_waiter(redis_url: str) -> None:
    key = name()
    async with RedisSyncBackend(redis_url, auto_register=False) as backend:
        assert await backend.acquire(name=key, token="h", duration=0.5)
        with anyio.fail_after(5):
            await backend.wait_released(name=key)
        assert not await backend.locked(name=key)


async def test_an_extended_lease_keeps_the_waiter_waiting(redis_url: str) -> None:
    key = name()
    async with RedisSyncBackend(redis_url, auto_register=False) as backend:
        assert await backend.acquire(name=key, token="h", duration=0.4)
        async with waiting(backend, key, settle=0.1) as woke:
            assert await backend.acquire(name=key, token="h", duration=2)
            await anyio.sleep(0.6)  # past the first lease's end
            assert not woke.is_set()
            assert await backend.release(name=key, token="h")
            await woken(woke)


async def test_waiters_share_one_subscribed_connection(
    redis_url: str, raw: Redis
) -> None:
    keys = [name() for _ in range(5)]
    before = await pubsub_clients(raw)
    async with RedisSyncBackend(redis_url, auto_register=False) as backend:
        for key in keys:
            assert await backend.acquire(name=key, token="h", duration=30)
        async with anyio.create_task_group() as group:
            for key in keys:
                group.start_soon(lambda k=key: backend.wait_released(name=k))
            await anyio.sleep(0.2)
            assert await pubsub_clients(raw) == before + 1
            for key in keys:
                assert await backend.release(name=key, token="h")
    # Closed with the backend.
    with anyio.fail_after(5):
        while await pubsub_clients(raw) != before:
            await anyio.sleep(0.05)


async def test_a_borrowed_client_opens_no_subscribed_connection(
    raw: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a borrowed client (a broker's) the waiter looks at the lease instead."""
    monkeypatch.setattr(redis_backend_module, "RELEASE_POLL_INTERVAL", 0.05)
    key = name()
    before = await pubsub_clients(raw)
    async with RedisSyncBackend(client=raw, auto_register=False) as backend:
        assert await backend.acquire(name=key, token="h", duration=30)
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: backend.wait_released(name=key))
            await anyio.sleep(0.2)
            assert await pubsub_clients(raw) == before
            assert await backend.release(name=key, token="h")


async def test_a_release_missed_while_reconnecting_is_seen_at_the_next_look(
    redis_url: str, raw: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The subscribed connection is killed: redis-py subscribes again, and a
    release not published meanwhile is seen by the waiter's slow look."""
    monkeypatch.setattr(redis_backend_module, "WATCH_LOOK_INTERVAL", 0.3)
    key = name()
    async with RedisSyncBackend(redis_url, auto_register=False) as backend:
        assert await backend.acquire(name=key, token="h", duration=30)
        async with waiting(backend, key) as woke:
            killed = await raw.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            assert int(killed) >= 1
            await anyio.sleep(0.1)
            assert not woke.is_set()
            await raw.delete(key)  # freed without a publish
            await woken(woke)
        # Subscribed again: a release wakes the next waiter at once.
        monkeypatch.setattr(redis_backend_module, "WATCH_LOOK_INTERVAL", 60.0)
        assert await backend.acquire(name=key, token="h", duration=30)
        async with waiting(backend, key) as woke_again:
            assert not woke_again.is_set()
            assert await backend.release(name=key, token="h")
            await woken(woke_again)


@pytest.mark.parametrize("subscribed", [True, False], ids=["watch", "poll"])
async def test_a_lease_in_its_last_millisecond_wakes_the_waiter_at_its_end(
    redis_url: str,
    raw: Redis,
    monkeypatch: pytest.MonkeyPatch,
    subscribed: bool,
) -> None:
    """PTTL answers 0 in a lease's last millisecond: the waiter looks again
    right after, not at its next slow look (a CI flake once waited 5 s)."""
    monkeypatch.setattr(redis_backend_module, "WATCH_LOOK_INTERVAL", 60.0)
    monkeypatch.setattr(redis_backend_module, "RELEASE_POLL_INTERVAL", 0.05)
    key = name()
    backend = (
        RedisSyncBackend(redis_url, auto_register=False)
        if subscribed
        else RedisSyncBackend(client=raw, auto_register=False)
    )
    answers = iter([0])
    real_pttl = backend._pttl

    async def pttl(lock: str, full_key: str) -> int:
        answer = next(answers, None)
        if answer is not None:
            await raw.delete(full_key)  # the lease ends right after
            return answer
        return await real_pttl(lock, full_key)

    monkeypatch.setattr(backend, "_pttl", pttl)
    async with backend:
        assert await backend.acquire(name=key, token="h", duration=30)
        with anyio.fail_after(2):
            await backend.wait_released(name=key)
        assert not await backend.locked(name=key)
