"""Redis-specific behaviour of RedisSyncBackend, on a real Redis server."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from uuid import uuid4

import anyio
import pytest
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from grelmicro.sync import Lock, TaskLock
from grelmicro.sync import _backends as registry
from grelmicro.sync.errors import (
    LockAcquireError,
    SyncBackendError,
    SyncBackendTimeoutError,
)
from grelmicro.sync.redis import (
    RedisSyncBackend,
    RedisSyncBackendConnectionError,
    RedisSyncBackendError,
    RedisSyncBackendReplicationError,
    _milliseconds,
)
from tests.integration.conftest import wait_for
from tests.servers import RedisClusterServers, RedisServer

pytestmark = [pytest.mark.integration]


def key() -> str:
    return f"redis-test-{uuid4().hex[:8]}"


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Redis]:
    """A plain redis-py client on the session server, for inspection."""
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


# Construction (no server needed) -------------------------------------------------


def test_url_and_client_together_is_an_error() -> None:
    client = Redis()
    with pytest.raises(ValueError, match=r"url.*client") as info:
        RedisSyncBackend("redis://localhost", client=client, auto_register=False)
    assert "not both" in str(info.value)


def test_no_url_no_client_no_env_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(ValueError) as info:
        RedisSyncBackend(auto_register=False)
    message = str(info.value)
    assert "url" in message
    assert "client" in message
    assert "REDIS_URL" in message


@pytest.mark.parametrize(
    "url", ["http://localhost:6379", "localhost:6379", "nats://x:4222", ""]
)
def test_invalid_url_scheme_is_an_error(url: str) -> None:
    with pytest.raises(ValueError, match=r"Redis URL|url"):
        RedisSyncBackend(url, auto_register=False)


def test_invalid_port_is_an_error() -> None:
    with pytest.raises(ValueError, match="Invalid Redis URL"):
        RedisSyncBackend("redis://localhost:notaport/0", auto_register=False)


def test_password_is_not_shown() -> None:
    backend = RedisSyncBackend("redis://user:s3cret@localhost/0", auto_register=False)
    assert "s3cret" not in repr(backend)
    with pytest.raises(ValueError) as info:
        RedisSyncBackend("redis://user:s3cret@localhost:bad/0", auto_register=False)
    assert "s3cret" not in str(info.value)


def test_construction_does_not_connect() -> None:
    # Nothing listens on port 1: building the backend must still succeed.
    RedisSyncBackend("redis://127.0.0.1:1/0", auto_register=False)


def test_auto_register_makes_it_the_default() -> None:
    backend = RedisSyncBackend("redis://127.0.0.1:1/0")
    assert registry.get_default_backend() is backend
    quiet = RedisSyncBackend("redis://127.0.0.1:1/0", auto_register=False)
    assert registry.get_default_backend() is backend
    assert quiet not in registry.loaded_backends()


def test_from_client_provider_does_not_register_by_default() -> None:
    async def provider() -> Redis:
        raise AssertionError

    backend = RedisSyncBackend.from_client_provider(provider)
    assert backend not in registry.loaded_backends()


@pytest.mark.parametrize(
    ("seconds", "ms"),
    [(0.1, 100), (1.5, 1500), (0.0001, 1), (0, 1), (1.0005, 1001), (60, 60000)],
)
def test_durations_round_up_to_milliseconds(seconds: float, ms: int) -> None:
    assert _milliseconds(seconds) == ms


@pytest.mark.parametrize("bad", [math.inf, math.nan, "1"])
def test_invalid_duration(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        _milliseconds(bad)  # type: ignore[arg-type]


def test_missing_redis_package_raises_dependency_error() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from grelmicro.errors import DependencyNotFoundError\n"
        "try:\n"
        "    import grelmicro.sync.redis\n"
        "except DependencyNotFoundError as exc:\n"
        "    print('OK', exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.stdout.startswith("OK"), result.stderr
    assert "grelmicro[redis]" in result.stdout


# Against the server ----------------------------------------------------------------


@pytest.mark.anyio
async def test_keys_use_the_prefix(redis_url: str, raw: Redis) -> None:
    name = key()
    first = RedisSyncBackend(redis_url, prefix="app1:", auto_register=False)
    second = RedisSyncBackend(redis_url, prefix="app2:", auto_register=False)
    async with first, second:
        assert await first.acquire(name=name, token="a", duration=10)
        assert await raw.get(f"app1:{name}") == "a"
        assert 0 < await raw.pttl(f"app1:{name}") <= 10_000
        # Another prefix is another namespace.
        assert not await second.locked(name=name)
        assert await second.acquire(name=name, token="b", duration=10)
        assert await first.release(name=name, token="a")
        assert await raw.get(f"app1:{name}") is None
        assert await raw.get(f"app2:{name}") == "b"
        await second.release(name=name, token="b")
    assert first.prefix == "app1:"


@pytest.mark.anyio
async def test_primitive_keys_in_redis(redis_url: str, raw: Redis) -> None:
    prefix = f"{uuid4().hex[:6]}:"
    async with RedisSyncBackend(redis_url, prefix=prefix, auto_register=False) as b:
        lock = Lock("report", backend=b, worker="w")
        task_lock = TaskLock("report", backend=b, worker="w", max_lock_seconds=10)
        async with lock:
            assert await raw.exists(f"{prefix}lock:report") == 1
            assert await task_lock.try_acquire()
            assert await raw.get(f"{prefix}tasklock:report") == "w"
        await task_lock.release()


@pytest.mark.anyio
async def test_lease_is_set_in_milliseconds(redis_url: str, raw: Redis) -> None:
    name = key()
    async with RedisSyncBackend(redis_url, auto_register=False) as backend:
        assert await backend.acquire(name=name, token="a", duration=0.25)
        assert 0 < await raw.pttl(name) <= 250
        assert await backend.acquire(name=name, token="a", duration=30)
        assert 25_000 < await raw.pttl(name) <= 30_000
        assert await backend.release(name=name, token="a")


@pytest.mark.anyio
async def test_url_from_environment(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    name = key()
    async with RedisSyncBackend(auto_register=False) as backend:
        assert await backend.acquire(name=name, token="a", duration=5)
        assert await backend.release(name=name, token="a")


@pytest.mark.anyio
async def test_borrowed_client_is_not_closed(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        name = key()
        async with RedisSyncBackend(client=client, auto_register=False) as backend:
            assert await backend.acquire(name=name, token="a", duration=5)
        # The backend exited: the client still works and its pool is intact.
        assert await client.ping()
        assert await client.exists(name) == 1
        async with RedisSyncBackend(client=client, auto_register=False) as backend:
            assert await backend.release(name=name, token="a")
    finally:
        await client.aclose()


async def _connected_clients(raw: Redis, tag: str) -> int:
    clients = await raw.client_list()
    return sum(1 for c in clients if c.get("name") == tag)


@pytest.mark.anyio
async def test_url_built_client_is_closed_on_exit(redis_url: str, raw: Redis) -> None:
    tag = f"grelmicro-test-{uuid4().hex[:8]}"
    url = f"{redis_url}?client_name={tag}"
    backend = RedisSyncBackend(url, auto_register=False)
    async with backend:
        assert await backend.acquire(name=key(), token="a", duration=5)
        assert await _connected_clients(raw, tag) >= 1

    async def closed() -> bool:
        return await _connected_clients(raw, tag) == 0

    await wait_for(closed, 5)
    # The backend can be used again: it reconnects, and closes again on exit.
    async with backend:
        assert not await backend.locked(name=key())
    await wait_for(closed, 5)


@pytest.mark.anyio
async def test_lazy_use_without_entering(redis_url: str) -> None:
    # Primitives are often created at import time and used without `async with`.
    backend = RedisSyncBackend(redis_url)  # registered as the default
    try:
        lock = Lock(key(), worker="w")
        async with lock:
            assert await lock.owned()
    finally:
        await backend.aclose()


@pytest.mark.anyio
async def test_client_provider_is_borrowed(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    calls = 0

    async def provider() -> Redis:
        nonlocal calls
        calls += 1
        return client

    try:
        backend = RedisSyncBackend.from_client_provider(provider, prefix="prov:")
        assert calls == 0  # lazily: nothing happens before first use
        name = key()
        async with backend:
            assert await backend.acquire(name=name, token="a", duration=5)
            assert await backend.owned(name=name, token="a")
        assert calls >= 2
        assert await client.ping()  # never closed by the backend
        assert await client.get(f"prov:{name}") == b"a"
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_provider_failure_is_wrapped() -> None:
    async def provider() -> Redis:
        msg = "broker not connected"
        raise ConnectionError(msg)

    backend = RedisSyncBackend.from_client_provider(provider)
    with pytest.raises(RedisSyncBackendConnectionError, match="acquire"):
        await backend.acquire(name="x", token="a", duration=1)


@pytest.mark.anyio
async def test_scripts_survive_a_script_flush(redis_url: str, raw: Redis) -> None:
    name = key()
    async with RedisSyncBackend(redis_url, auto_register=False) as backend:
        assert await backend.acquire(name=name, token="a", duration=5)
        await raw.script_flush()  # NOSCRIPT on the next EVALSHA
        assert await backend.owned(name=name, token="a")
        assert await backend.release(name=name, token="a")


@pytest.mark.anyio
async def test_decode_responses_client(redis_url: str) -> None:
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        name = key()
        backend = RedisSyncBackend(client=client, auto_register=False)
        assert await backend.acquire(name=name, token="a", duration=5)
        assert await backend.owned(name=name, token="a")
        assert await backend.acquire_or_remaining(
            name=name, token="b", duration=5
        ) == pytest.approx(5, abs=1)
        assert await backend.release(name=name, token="a")
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_key_without_expiry_reports_infinite_remaining(
    redis_url: str, raw: Redis
) -> None:
    name = key()
    await raw.set(name, "someone")
    async with RedisSyncBackend(redis_url, auto_register=False) as backend:
        left = await backend.acquire_or_remaining(name=name, token="a", duration=1)
        assert left == math.inf
    await raw.delete(name)


@pytest.mark.anyio
async def test_server_error_is_wrapped(redis_url: str, raw: Redis) -> None:
    name = key()
    await raw.rpush(name, "not a string")  # WRONGTYPE for GET
    try:
        async with RedisSyncBackend(redis_url, auto_register=False) as backend:
            for call in (
                backend.acquire(name=name, token="a", duration=1),
                backend.release(name=name, token="a"),
                backend.owned(name=name, token="a"),
                backend.acquire_or_remaining(name=name, token="a", duration=1),
            ):
                with pytest.raises(RedisSyncBackendError) as info:
                    await call
                assert name in str(info.value)
                assert not isinstance(info.value, RedisError)
                assert isinstance(info.value.__cause__, RedisError)
    finally:
        await raw.delete(name)


# Outages (private servers) -----------------------------------------------------------


@pytest.mark.anyio
async def test_unreachable_server_fails_fast() -> None:
    backend = RedisSyncBackend("redis://127.0.0.1:1/0", auto_register=False)
    started = time.monotonic()
    with pytest.raises(RedisSyncBackendConnectionError) as info:
        await backend.acquire(name="job", token="a", duration=1)
    assert time.monotonic() - started < 10
    assert "operation=acquire" in str(info.value)
    assert "'job'" in str(info.value)
    assert isinstance(info.value, SyncBackendError)
    await backend.aclose()


@pytest.mark.anyio
async def test_stopped_server_raises_backend_errors(
    start_server: Callable[[RedisServer], RedisServer],
) -> None:
    server: RedisServer = start_server(RedisServer(source="controllable"))
    server.require_control()
    name = key()
    async with RedisSyncBackend(server.url, auto_register=False) as backend:
        assert await backend.acquire(name=name, token="a", duration=5)
        server.stop()
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: backend.acquire(name=name, token="a", duration=5),
            lambda: backend.release(name=name, token="a"),
            lambda: backend.locked(name=name),
            lambda: backend.owned(name=name, token="a"),
            lambda: backend.acquire_or_remaining(name=name, token="a", duration=5),
        ]
        for call in calls:
            with anyio.fail_after(10):
                with pytest.raises(SyncBackendError) as info:
                    await call()
            assert not isinstance(info.value, RedisError)
        # Through a primitive: LockAcquireError naming the lock.
        lock = Lock("outage", backend=backend, worker="w")
        with anyio.fail_after(10), pytest.raises(LockAcquireError, match="outage"):
            await lock.acquire_nowait()
        # The server comes back (empty: no persistence): the backend recovers.
        server.start()
        assert await backend.acquire(name=name, token="b", duration=5)


@pytest.mark.anyio
async def test_frozen_server_times_out(
    start_server: Callable[[RedisServer], RedisServer],
) -> None:
    server: RedisServer = start_server(RedisServer(source="controllable"))
    server.require_control()
    async with RedisSyncBackend(server.url, auto_register=False) as backend:
        assert not await backend.locked(name="x")  # connected
        with server.paused():
            started = time.monotonic()
            with anyio.fail_after(15):
                with pytest.raises(SyncBackendTimeoutError) as info:
                    await backend.acquire(name="x", token="a", duration=5)
            assert time.monotonic() - started < 10
            assert isinstance(info.value, RedisSyncBackendError)
        assert await backend.acquire(name="x", token="a", duration=5)


# Redis Cluster -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.anyio
async def test_redis_cluster_client(
    start_server: Callable[[RedisClusterServers], RedisClusterServers],
) -> None:
    cluster = start_server(RedisClusterServers(3))
    client = RedisCluster.from_url(cluster.url)
    try:
        backend = RedisSyncBackend(client=client, prefix="app:", auto_register=False)
        names = [f"job-{index}" for index in range(12)]  # spread over the slots
        for name in names:
            assert await backend.acquire(name=name, token="a", duration=5)
            assert not await backend.acquire(name=name, token="b", duration=5)
            assert (
                await backend.acquire_or_remaining(name=name, token="b", duration=5) > 0
            )
            assert await backend.owned(name=name, token="a")
            assert await backend.locked(name=name)
        task_lock = TaskLock("report", backend=backend, worker="w")
        assert await task_lock.try_acquire()
        assert await task_lock.owned()
        for name in names:
            assert await backend.release(name=name, token="a")
            assert not await backend.locked(name=name)
    finally:
        await client.aclose()


# Fencing tokens and cron claims: the key layout ----------------------------------------

LAYOUT_KEYS = [
    "lock:report",
    "app:lock:report",
    "lock:{orders}:7",
    "{app}:lock:x",
    "a}b",
    "{}x",
    "a{b",
    "",
    "tasklock:module:Class.<locals>.job",
]


@pytest.mark.parametrize("lock_key", LAYOUT_KEYS)
@pytest.mark.parametrize("prefix", ["", "app:", "{app}:"])
def test_companion_keys_share_the_lock_keys_slot(lock_key: str, prefix: str) -> None:
    from redis.crc import key_slot

    from grelmicro.sync.redis._keys import fence_key, fire_key

    key = prefix + lock_key
    for other in (fence_key(key, prefix), fire_key(key, prefix, 1_700_000_000_000)):
        assert other != key
        # redis-py's own slot function is the independent reference.
        assert key_slot(other.encode()) == key_slot(key.encode()), other


def test_companion_keys_are_distinct_per_name() -> None:
    from grelmicro.sync.redis._keys import fence_key

    keys = [prefix + k for k in LAYOUT_KEYS for prefix in ("", "app:")]
    fences = {fence_key(k, "") for k in keys}
    assert len(fences) == len(set(keys))


@pytest.mark.anyio
async def test_fencing_key_layout(redis_url: str, raw: Redis) -> None:
    name = f"lock:{key()}"
    async with RedisSyncBackend(redis_url, prefix="app:", auto_register=False) as b:
        first = await b.acquire_fenced(name=name, token="a", duration=10)
        # The lock key is unchanged: prefix + name, holding the token.
        assert await raw.get(f"app:{name}") == "a"
        fence = f"app:{{app:{name}}}:fence"
        assert await raw.hgetall(fence) == {"last": "1", "held": "1"}
        assert await raw.pttl(fence) == -1  # persistent: tokens never go back
        assert first.fence == 1
        assert await b.release(name=name, token="a")
        # Plain acquire consumes a token too; the counter outlives the lock.
        assert await b.acquire(name=name, token="b", duration=10)
        assert await b.release(name=name, token="b")
        assert await raw.hget(fence, "last") == "2"
        assert (await b.acquire_fenced(name=name, token="c", duration=10)).fence == 3


@pytest.mark.anyio
async def test_fire_claim_key_layout(redis_url: str, raw: Redis) -> None:
    name = f"cron:{key()}"
    fire = 1_700_000_000_000
    async with RedisSyncBackend(redis_url, auto_register=False) as b:
        assert await b.claim_fire(name=name, fire=fire, token="a", lease=5) == 1
        fence = f"{{{name}}}:fence"
        lease = f"{{{name}}}:fire:{fire}"
        assert await raw.hgetall(fence) == {"last": "1", "fire": str(fire)}
        assert await raw.get(lease) == "a"
        assert 0 < await raw.pttl(lease) <= 5000
        assert await b.finish_fire(name=name, fire=fire, token="a")
        assert await raw.get(lease) == ""  # the completed marker
        assert 55_000 < await raw.pttl(lease) <= 60_000
        assert await b.last_fire(name=name) == fire


@pytest.mark.anyio
async def test_extension_answers_the_holding_token_after_a_fire_claim(
    redis_url: str,
) -> None:
    # The counter is shared with fire claims of the same name: an extension
    # still answers its own holding's token, not the counter's latest value.
    name = key()
    async with RedisSyncBackend(redis_url, auto_register=False) as b:
        held = await b.acquire_fenced(name=name, token="a", duration=10)
        claimed = await b.claim_fire(name=name, fire=1000, token="x", lease=None)
        again = await b.acquire_fenced(name=name, token="a", duration=10)
        assert held.fence is not None
        assert claimed is not None
        assert claimed > held.fence
        assert again.fence == held.fence


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("call", "message"),
    [
        ({"fire": -1, "token": "a"}, "fire"),
        ({"fire": True, "token": "a"}, "fire"),
        ({"fire": 1.5, "token": "a"}, "fire"),
        ({"fire": 1, "token": ""}, "token"),
        ({"fire": 1, "token": 3}, "token"),
    ],
)
async def test_fire_claim_arguments_are_checked(
    call: dict[str, object], message: str
) -> None:
    backend = RedisSyncBackend("redis://127.0.0.1:1", auto_register=False)
    with pytest.raises(ValueError, match=message):
        await backend.claim_fire(name="cron:x", lease=None, **call)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lease"):
        await backend.claim_fire(name="cron:x", fire=1, token="a", lease=math.nan)


# wait_replicas ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"wait_replicas": -1}, "wait_replicas"),
        ({"wait_replicas": 1.0}, "wait_replicas"),
        ({"wait_replicas": True}, "wait_replicas"),
        ({"wait_replicas": 1, "wait_timeout": 0}, "wait_timeout"),
        ({"wait_replicas": 1, "wait_timeout": math.inf}, "wait_timeout"),
        ({"wait_replicas": 1, "wait_timeout": "1"}, "wait_timeout"),
    ],
)
def test_wait_replicas_is_validated(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        RedisSyncBackend("redis://localhost", auto_register=False, **options)  # type: ignore[arg-type]
    assert repr(next(iter(options.values()))) in str(info.value) or message in str(
        info.value
    )


@pytest.mark.anyio
async def test_unacknowledged_acquisition_is_given_back(
    redis_url: str, raw: Redis
) -> None:
    # A lone server has no replica: WAIT 1 times out with 0 acknowledgements.
    name = key()
    backend = RedisSyncBackend(
        redis_url, auto_register=False, wait_replicas=1, wait_timeout=0.05
    )
    assert "wait_replicas=1" in repr(backend)
    async with backend:
        with pytest.raises(RedisSyncBackendReplicationError, match="0 of") as info:
            await backend.acquire(name=name, token="a", duration=10)
        assert isinstance(info.value, SyncBackendError)
        assert await raw.exists(name) == 0  # given back, nobody holds it
        with pytest.raises(RedisSyncBackendReplicationError):
            await backend.claim_fire(name=name, fire=5, token="a", lease=None)
        # A busy answer needs no acknowledgement: nothing was written.
        await raw.set(name, "other", px=10_000)
        assert not await backend.acquire(name=name, token="a", duration=10)
        assert await backend.release(name=name, token="a") is False


# Owned clients and event loops (issue 9 case 10) -------------------------------------


def test_owned_client_is_closed_when_its_event_loop_ends(redis_url: str) -> None:
    import asyncio
    import gc

    import redis

    tag = f"grelmicro-loop-{uuid4().hex[:8]}"
    backend = RedisSyncBackend(f"{redis_url}?client_name={tag}", auto_register=False)
    inspect = redis.Redis.from_url(redis_url, decode_responses=True)

    def connected() -> int:
        return sum(1 for c in inspect.client_list() if c.get("name") == tag)

    async def use() -> int:
        assert await backend.acquire(name=key(), token="a", duration=5)
        return connected()

    try:
        # Used lazily (never entered or exited) from two event loops in turn.
        assert asyncio.run(use()) == 1
        assert connected() == 0  # closed when the first loop ended
        assert asyncio.run(use()) == 1  # the second loop has its own client
        assert connected() == 0
        gc.collect()  # no unclosed-transport ResourceWarning (an error here)
    finally:
        inspect.close()


@pytest.mark.anyio
async def test_url_form_works_without_the_info_command(
    redis_url: str, raw: Redis
) -> None:
    # The URL form asks INFO whether the server is a cluster node; an ACL user
    # without INFO still gets a working (single-server) backend.
    from urllib.parse import urlparse

    user = f"noinfo-{uuid4().hex[:6]}"
    await raw.execute_command(
        "ACL", "SETUSER", user, "on", ">pw", "~*", "+@all", "-info"
    )
    try:
        parsed = urlparse(redis_url)
        url = f"redis://{user}:pw@{parsed.hostname}:{parsed.port}/0"
        async with RedisSyncBackend(url, auto_register=False) as backend:
            name = key()
            assert (
                await backend.acquire_fenced(name=name, token="a", duration=5)
            ).fence
            assert await backend.release(name=name, token="a")
    finally:
        await raw.execute_command("ACL", "DELUSER", user)
