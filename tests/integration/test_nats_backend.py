"""NATS-specific behaviour of NatsSyncBackend, on a real NATS server with JetStream."""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any
from uuid import uuid4

import anyio
import nats
import pytest
from nats.aio.client import Client
from nats.js import api
from nats.js.kv import _is_key_valid

from grelmicro.sync import Lock
from grelmicro.sync import _backends as registry
from grelmicro.sync.errors import SyncBackendError, SyncBackendTimeoutError
from grelmicro.sync.nats import (
    NatsSyncBackend,
    NatsSyncBackendBucketError,
    NatsSyncBackendConnectionError,
    NatsSyncBackendError,
)
from grelmicro.sync.nats._codec import (
    decode_key,
    encode_key,
    parse_ttl,
    ttl_seconds,
)
from tests.integration.conftest import wait_for
from tests.servers import NatsServer

pytestmark = [pytest.mark.integration]

URL = "nats://127.0.0.1:4222"


def name() -> str:
    return f"nats-test:{uuid4().hex[:8]}"


def backend_for(url: str, bucket: str, **kwargs: Any) -> NatsSyncBackend:
    return NatsSyncBackend(url, bucket=bucket, auto_register=False, **kwargs)


@pytest.fixture
async def raw(nats_url: str) -> AsyncIterator[Client]:
    """A plain nats-py client on the session server, for inspection."""
    client = await nats.connect(nats_url, allow_reconnect=False)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def bucket(raw: Client) -> AsyncIterator[str]:
    """A bucket name no other test uses, deleted at teardown."""
    bucket = f"nats-test-{uuid4().hex[:10]}"
    yield bucket
    with contextlib.suppress(Exception):
        await raw.jetstream().delete_stream(f"KV_{bucket}")


async def stored(raw: Client, bucket: str, key: str) -> tuple[bytes, dict[str, str]]:
    """The last stored entry of `key` (raw), as (data, headers)."""
    msg = await raw.jetstream().get_msg(
        f"KV_{bucket}", subject=f"$KV.{bucket}.{key}", direct=True
    )
    return msg.data or b"", dict(msg.headers or {})


def sent(client: Client) -> int:
    """Messages `client` has published so far (one per request)."""
    count: int = client.stats["out_msgs"]
    return count


# Construction (no server needed) -------------------------------------------------


def test_url_and_client_together_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"url.*client") as info:
        NatsSyncBackend(URL, client=Client(), auto_register=False)
    assert "not both" in str(info.value)


def test_no_url_no_client_no_env_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NATS_URL", raising=False)
    with pytest.raises(ValueError) as info:
        NatsSyncBackend(auto_register=False)
    message = str(info.value)
    for word in ("url", "client", "NATS_URL"):
        assert word in message


def test_url_from_environment_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://10.1.2.3:4333")
    assert "10.1.2.3:4333" in repr(NatsSyncBackend(auto_register=False))
    monkeypatch.setenv("NATS_URL", "http://10.1.2.3:4333")
    with pytest.raises(ValueError, match="NATS_URL"):
        NatsSyncBackend(auto_register=False)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://localhost:4222", ["NATS URL", "http"]),
        ("redis://localhost:6379", ["NATS URL", "redis"]),
        ("nats://localhost:abc", ["NATS URL"]),
        ("nats://", ["NATS URL", "host"]),
        ("nats://a:4222,http://b:4222", ["NATS URL", "http"]),
        ("", ["url"]),
        (4222, ["url", "4222"]),
    ],
)
def test_invalid_url_is_an_error(url: Any, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        NatsSyncBackend(url, auto_register=False)
    for word in words:
        assert word in str(info.value)


def test_server_lists_and_bare_hosts_are_accepted() -> None:
    backend = NatsSyncBackend("nats://a:4222, tls://b:4223,c:4224", auto_register=False)
    assert "nats://c:4224" in repr(backend)


def test_password_is_not_shown() -> None:
    backend = NatsSyncBackend("nats://user:s3cret@localhost:4222", auto_register=False)
    assert "s3cret" not in repr(backend)
    with pytest.raises(ValueError) as info:
        NatsSyncBackend("http://user:s3cret@localhost:4222", auto_register=False)
    assert "s3cret" not in str(info.value)
    assert "localhost" in str(info.value)


@pytest.mark.parametrize(
    "bucket", ["", "my locks", "a.b", "a*", "a>", "a/b", "é", "x" * 201, 3, None]
)
def test_invalid_bucket_is_an_error(bucket: Any) -> None:
    with pytest.raises(ValueError, match="bucket") as info:
        NatsSyncBackend(URL, bucket=bucket, auto_register=False)
    if isinstance(bucket, str) and len(bucket) < 40:
        assert repr(bucket) in str(info.value)


@pytest.mark.parametrize("replicas", [0, 6, -1, "3", 1.0, True, None])
def test_invalid_replicas_is_an_error(replicas: Any) -> None:
    with pytest.raises(ValueError, match="replicas") as info:
        NatsSyncBackend(URL, replicas=replicas, auto_register=False)
    assert repr(replicas) in str(info.value)


def test_valid_buckets_and_replicas() -> None:
    for bucket, replicas in [("grelmicro", 1), ("My_Locks-2", 3), ("x" * 200, 5)]:
        backend = NatsSyncBackend(
            URL, bucket=bucket, replicas=replicas, auto_register=False
        )
        assert (backend.bucket, backend.replicas) == (bucket, replicas)


def test_client_must_be_a_nats_client() -> None:
    with pytest.raises(ValueError, match=r"client.*nats\.aio\.client\.Client"):
        NatsSyncBackend(client=object(), auto_register=False)  # type: ignore[arg-type]


def test_provider_must_be_callable() -> None:
    with pytest.raises(ValueError, match="provider"):
        NatsSyncBackend.from_client_provider(object())  # type: ignore[arg-type]


def test_construction_does_not_connect() -> None:
    # Nothing listens on port 1: building the backend must still succeed.
    NatsSyncBackend("nats://127.0.0.1:1", auto_register=False)


def test_auto_register_makes_it_the_default() -> None:
    backend = NatsSyncBackend(URL)
    assert registry.get_default_backend() is backend
    quiet = NatsSyncBackend(URL, auto_register=False)
    assert quiet not in registry.loaded_backends()

    async def provider() -> Client:
        raise AssertionError

    provided = NatsSyncBackend.from_client_provider(provider)
    assert provided not in registry.loaded_backends()
    assert registry.get_default_backend() is backend


def test_missing_nats_package_raises_dependency_error() -> None:
    code = (
        "import sys; sys.modules['nats'] = None\n"
        "from grelmicro.errors import DependencyNotFoundError\n"
        "try:\n"
        "    import grelmicro.sync.nats\n"
        "except DependencyNotFoundError as exc:\n"
        "    print('OK', exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.stdout.startswith("OK"), result.stderr
    assert "nats-py" in result.stdout
    assert "grelmicro[nats]" in result.stdout


# Key encoding, TTLs, timestamps ---------------------------------------------------

ODD_NAMES = [
    "tasklock:my.module:func",
    "lock:a b",
    "leader:x/y",
    "=41",
    "A",
    ".",
    "..",
    "a..b",
    ".lead",
    "trail.",
    "*",
    ">",
    "a>b*c",
    "tab\there",
    "éà✓",
    "名前",
    "emoji 🙂",
    "100%",
    "-_/",
]


def test_key_encoding_is_valid_reversible_and_injective() -> None:
    keys = [encode_key(n) for n in ODD_NAMES]
    for original, key in zip(ODD_NAMES, keys, strict=True):
        assert _is_key_valid(key), key
        assert decode_key(key) == original
        assert "." not in key
    assert len(set(keys)) == len(keys)
    assert encode_key("tasklock:my.module:func") == "tasklock=3Amy=2Emodule=3Afunc"
    assert encode_key("plain-name_1/x") == "plain-name_1/x"


def test_key_encoding_rejects_empty_and_huge_names() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        encode_key("")
    with pytest.raises(ValueError, match="too long"):
        encode_key(":" * 1000)


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [
        (0.001, 1),
        (0.5, 1),
        (1, 1),
        (1.0, 1),
        (1.2, 2),
        (1.5, 2),
        (3 * 0.1, 1),
        (60, 60),
    ],
)
def test_ttl_rounds_up_to_whole_seconds_with_a_floor_of_one(
    duration: float, seconds: int
) -> None:
    assert ttl_seconds(duration) == seconds


@pytest.mark.parametrize("bad", [0, -1, math.inf, math.nan, "1", True])
def test_invalid_duration(bad: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        ttl_seconds(bad)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, 0),
        ("60", 60),
        ("1500ms", 1),
        ("1h30m", 5400),
        ("2.5s", 2),
        ("never", None),
        ("NEVER", None),
        ("junk", 0),
    ],
)
def test_stored_ttl_is_read_like_the_server_does(
    header: str | None, seconds: int | None
) -> None:
    assert parse_ttl(header) == seconds


# Against the server ----------------------------------------------------------------


@pytest.mark.anyio
async def test_acquire_extend_reject_release(nats_url: str, bucket: str) -> None:
    lock = name()
    async with backend_for(nats_url, bucket) as backend:
        assert await backend.acquire(name=lock, token="a", duration=10)
        assert await backend.acquire(name=lock, token="a", duration=20)  # extend
        assert not await backend.acquire(name=lock, token="b", duration=10)
        assert await backend.locked(name=lock)
        assert await backend.owned(name=lock, token="a")
        assert not await backend.owned(name=lock, token="b")
        assert not await backend.release(name=lock, token="b")  # owner only
        assert await backend.owned(name=lock, token="a")
        assert await backend.release(name=lock, token="a")
        assert not await backend.release(name=lock, token="a")  # already released
        assert not await backend.locked(name=lock)
        assert not await backend.owned(name=lock, token="a")
        assert await backend.acquire(name=lock, token="b", duration=10)
        assert await backend.owned(name=lock, token="b")
        assert await backend.release(name=lock, token="b")


@pytest.mark.anyio
async def test_two_backends_see_each_others_locks(nats_url: str, bucket: str) -> None:
    lock = name()
    async with (
        backend_for(nats_url, bucket) as one,
        backend_for(nats_url, bucket) as two,
    ):
        assert await one.acquire(name=lock, token="a", duration=10)
        assert not await two.acquire(name=lock, token="b", duration=10)
        assert await two.locked(name=lock)
        assert not await two.release(name=lock, token="b")
        assert await one.release(name=lock, token="a")
        assert await two.acquire(name=lock, token="b", duration=10)
        # `one` still remembers its own (now released) entry: it must not win.
        assert not await one.acquire(name=lock, token="a", duration=10)
        assert not await one.release(name=lock, token="a")
        assert await two.release(name=lock, token="b")
        assert await one.acquire(name=lock, token="a", duration=10)


@pytest.mark.anyio
async def test_stored_entry_and_round_trips(
    nats_url: str, bucket: str, raw: Client
) -> None:
    """Taking a free lock, extending it and releasing it: one publish each."""
    lock = name()
    key = encode_key(lock)
    client = await nats.connect(nats_url)
    try:
        async with NatsSyncBackend(
            client=client, bucket=bucket, auto_register=False
        ) as backend:
            await backend.locked(name=name())  # connect, create the bucket
            for _ in range(3):
                before = sent(client)
                assert await backend.acquire(name=lock, token="tok", duration=30)
                assert sent(client) - before == 1
                data, headers = await stored(raw, bucket, key)
                assert data == b"tok"
                assert headers["Nats-TTL"] == "30"
                assert "Grelmicro-Lease-Ms" not in headers  # whole seconds
                before = sent(client)
                assert await backend.acquire(name=lock, token="tok", duration=5)
                assert sent(client) - before == 1
                assert (await stored(raw, bucket, key))[1]["Nats-TTL"] == "5"
                before = sent(client)
                assert await backend.release(name=lock, token="tok")
                assert sent(client) - before == 1
                data, headers = await stored(raw, bucket, key)
                assert data == b""
                assert headers["KV-Operation"] == "PURGE"
    finally:
        await client.close()


@pytest.mark.anyio
async def test_acquire_or_remaining(nats_url: str, bucket: str) -> None:
    lock = name()
    async with backend_for(nats_url, bucket) as a, backend_for(nats_url, bucket) as b:
        assert await a.acquire_or_remaining(name=lock, token="a", duration=5) == 0.0
        left = await b.acquire_or_remaining(name=lock, token="b", duration=5)
        assert 3 < left <= 5
        again = await b.acquire_or_remaining(name=lock, token="b", duration=5)
        assert 0 < again <= left
        # The holder shortens its hold: the others learn the new lease.
        assert await a.acquire_or_remaining(name=lock, token="a", duration=2) == 0.0
        left = await b.acquire_or_remaining(name=lock, token="b", duration=5)
        assert 0 < left <= 2
        assert await a.release(name=lock, token="a")
        assert await b.acquire_or_remaining(name=lock, token="b", duration=5) == 0.0
        assert await b.owned(name=lock, token="b")


@pytest.mark.anyio
async def test_lease_expires_on_the_server(nats_url: str, bucket: str) -> None:
    lock = name()
    async with backend_for(nats_url, bucket) as a, backend_for(nats_url, bucket) as b:
        started = time.monotonic()
        assert await a.acquire(name=lock, token="a", duration=1)
        assert not await b.acquire(name=lock, token="b", duration=1)

        async def b_takes_it() -> bool:
            return await b.acquire(name=lock, token="b", duration=30)

        await wait_for(b_takes_it, timeout=5)
        assert time.monotonic() - started >= 0.95
        assert not await a.owned(name=lock, token="a")
        assert not await a.release(name=lock, token="a")
        assert not await a.acquire(name=lock, token="a", duration=1)
        assert await b.release(name=lock, token="b")


@pytest.mark.anyio
async def test_an_expired_lease_is_free(nats_url: str, bucket: str) -> None:
    """`locked`/`owned` see expiry (the backend's own clock, then the
    server's TTL), and an expired lease is taken again from scratch."""
    lock = name()
    async with backend_for(nats_url, bucket) as backend:
        assert await backend.acquire(name=lock, token="a", duration=1)

        async def free() -> bool:
            return not await backend.locked(name=lock)

        await wait_for(free, timeout=5)
        assert not await backend.owned(name=lock, token="a")
        assert await backend.acquire(name=lock, token="a", duration=10)
        assert await backend.owned(name=lock, token="a")
        assert await backend.release(name=lock, token="a")


@pytest.mark.anyio
async def test_sub_second_leases(nats_url: str, bucket: str, raw: Client) -> None:
    """The server keeps whole seconds (1 s floor); the lease itself is
    honoured by the other workers, counted on their own clock from when they
    received the holder's write."""
    lock = name()
    async with backend_for(nats_url, bucket) as a, backend_for(nats_url, bucket) as b:
        started = time.monotonic()
        assert await a.acquire(name=lock, token="a", duration=0.3)
        _, headers = await stored(raw, bucket, encode_key(lock))
        assert headers["Nats-TTL"] == "1"
        assert headers["Grelmicro-Lease-Ms"] == "300"
        assert not await b.acquire(name=lock, token="b", duration=5)

        async def b_takes_it() -> bool:
            return await b.acquire(name=lock, token="b", duration=5)

        await wait_for(b_takes_it, timeout=5, interval=0.02)
        took = time.monotonic() - started
        assert 0.3 <= took < 0.9  # not the server's whole second
        # The former holder knows its lease ended, by its own clock.
        assert not await a.owned(name=lock, token="a")
        assert await b.release(name=lock, token="b")
        # Fractional leases over a second: ceil on the server, exact for readers.
        assert await a.acquire(name=lock, token="a", duration=1.5)
        _, headers = await stored(raw, bucket, encode_key(lock))
        assert (headers["Nats-TTL"], headers["Grelmicro-Lease-Ms"]) == ("2", "1500")
        left = await b.acquire_or_remaining(name=lock, token="b", duration=5)
        assert 1.4 < left <= 1.5
        assert await a.release(name=lock, token="a")


@pytest.mark.anyio
async def test_recreated_after_delete_and_purge(
    nats_url: str, bucket: str, raw: Client
) -> None:
    lock = name()
    key = encode_key(lock)
    async with backend_for(nats_url, bucket) as backend:
        assert await backend.acquire(name=lock, token="a", duration=30)
        kv = await raw.jetstream().key_value(bucket)
        await kv.delete(key)  # a DEL marker
        assert not await backend.locked(name=lock)
        assert not await backend.release(name=lock, token="a")
        assert await backend.acquire(name=lock, token="b", duration=30)
        await kv.purge(key)  # a PURGE marker
        assert not await backend.owned(name=lock, token="b")
        assert await backend.acquire(name=lock, token="a", duration=30)
        assert await backend.owned(name=lock, token="a")
        # A foreign value without TTL never expires: held "forever".
        await kv.put(key, b"other")
        assert not await backend.acquire(name=lock, token="a", duration=30)
        assert (
            await backend.acquire_or_remaining(name=lock, token="a", duration=30)
            == math.inf
        )
        await kv.delete(key)
        assert await backend.acquire(name=lock, token="a", duration=30)


@pytest.mark.anyio
async def test_odd_names_round_trip_through_the_server(
    nats_url: str, bucket: str, raw: Client
) -> None:
    async with backend_for(nats_url, bucket) as backend:
        for lock in ODD_NAMES:
            assert await backend.acquire(name=lock, token="t", duration=30), lock
            assert await backend.owned(name=lock, token="t"), lock
        kv = await raw.jetstream().key_value(bucket)
        keys = await kv.keys()
        assert sorted(decode_key(k) for k in keys) == sorted(ODD_NAMES)
        # Names that only differ by what is escaped are different locks.
        assert not await backend.locked(name="=3A")
        assert await backend.acquire(name="=3D41", token="u", duration=30)
        for lock in ODD_NAMES:
            assert await backend.release(name=lock, token="t"), lock
        with pytest.raises(ValueError, match="non-empty"):
            await backend.acquire(name="", token="t", duration=1)
        with pytest.raises(ValueError, match="too long"):
            await backend.acquire(name="é" * 2000, token="t", duration=1)
        assert not await backend.locked(name="A")  # the connection survived


@pytest.mark.anyio
async def test_bucket_is_created_as_documented(
    nats_url: str, bucket: str, raw: Client
) -> None:
    async with backend_for(nats_url, bucket) as backend:
        assert not await backend.locked(name=name())
    info = await raw.jetstream().stream_info(f"KV_{bucket}")
    config = info.config
    assert config.num_replicas == 1
    assert config.allow_msg_ttl
    assert config.max_msgs_per_subject == 1
    assert not config.max_age
    assert not config.subject_delete_marker_ttl
    assert config.allow_rollup_hdrs
    assert config.allow_direct
    assert config.subjects == [f"$KV.{bucket}.>"]


@pytest.mark.anyio
async def test_bucket_without_per_message_ttl_is_refused(
    nats_url: str, bucket: str, raw: Client
) -> None:
    await raw.jetstream().add_stream(
        api.StreamConfig(
            name=f"KV_{bucket}",
            subjects=[f"$KV.{bucket}.>"],
            max_msgs_per_subject=1,
            allow_rollup_hdrs=True,
            allow_direct=True,
        )
    )
    async with backend_for(nats_url, bucket) as backend:
        with pytest.raises(NatsSyncBackendBucketError) as info:
            await backend.acquire(name="x", token="a", duration=5)
    message = str(info.value)
    assert isinstance(info.value, SyncBackendError)
    for word in (bucket, "per-message TTL", "--allow-msg-ttl", "bucket="):
        assert word in message


@pytest.mark.anyio
async def test_existing_kv_bucket_with_history_and_markers(
    nats_url: str, bucket: str, raw: Client
) -> None:
    """A bucket made by nats-py (history 5, limit markers) is used as it is;
    a shortened lease does not bring the longer one back when it expires."""
    await raw.jetstream().create_key_value(bucket=bucket, history=5, limit_marker_ttl=5)
    lock = name()
    async with backend_for(nats_url, bucket) as a, backend_for(nats_url, bucket) as b:
        assert await a.acquire(name=lock, token="a", duration=60)
        started = time.monotonic()
        assert await a.acquire(name=lock, token="a", duration=1)  # shorten

        async def b_takes_it() -> bool:
            return await b.acquire(name=lock, token="b", duration=60)

        # The server raises short TTLs to the marker TTL (5 s) in such a
        # bucket; the 1 s lease is still honoured, and the 60 s value
        # written before never comes back.
        await wait_for(b_takes_it, timeout=4)
        assert time.monotonic() - started >= 0.95
        assert await b.release(name=lock, token="b")
        assert await a.acquire(name=lock, token="a", duration=60)
        assert await a.release(name=lock, token="a")


@pytest.mark.anyio
async def test_bucket_max_age_bounds_the_lease(
    nats_url: str, bucket: str, raw: Client
) -> None:
    await raw.jetstream().create_key_value(bucket=bucket, ttl=10)
    async with backend_for(nats_url, bucket) as backend:
        assert await backend.acquire(name="x", token="a", duration=10)
        with pytest.raises(NatsSyncBackendBucketError, match="max_age"):
            await backend.acquire(name="x", token="a", duration=11)


@pytest.mark.anyio
async def test_bucket_without_direct_get(
    nats_url: str, bucket: str, raw: Client
) -> None:
    await raw.jetstream().add_stream(
        api.StreamConfig(
            name=f"KV_{bucket}",
            subjects=[f"$KV.{bucket}.>"],
            max_msgs_per_subject=1,
            allow_rollup_hdrs=True,
            allow_msg_ttl=True,
            allow_direct=False,
        )
    )
    lock = name()
    async with backend_for(nats_url, bucket) as a, backend_for(nats_url, bucket) as b:
        assert await a.acquire(name=lock, token="a", duration=0.5)
        assert await b.acquire_or_remaining(name=lock, token="b", duration=5) > 0
        assert await b.locked(name=lock)
        assert await a.owned(name=lock, token="a")
        assert not await b.release(name=lock, token="b")
        assert await a.release(name=lock, token="a")
        assert not await b.locked(name=lock)
        assert await b.acquire(name=lock, token="b", duration=5)


@pytest.mark.anyio
async def test_bucket_deleted_while_running_is_created_again(
    nats_url: str, bucket: str, raw: Client
) -> None:
    lock = name()
    async with backend_for(nats_url, bucket) as backend:
        assert await backend.acquire(name=lock, token="a", duration=30)
        await raw.jetstream().delete_stream(f"KV_{bucket}")
        with pytest.raises(NatsSyncBackendConnectionError, match="deleted"):
            await backend.acquire(name=lock, token="a", duration=30)
        assert await backend.acquire(name=lock, token="a", duration=30)
        assert await backend.owned(name=lock, token="a")


@pytest.mark.anyio
async def test_borrowed_client_is_not_closed(nats_url: str, bucket: str) -> None:
    client = await nats.connect(nats_url)
    try:
        async with NatsSyncBackend(
            client=client, bucket=bucket, auto_register=False
        ) as backend:
            assert await backend.acquire(name="x", token="a", duration=5)
        assert client.is_connected
        # Still usable after exit, over the same client.
        assert await backend.release(name="x", token="a")
        assert client.is_connected
    finally:
        await client.close()


@pytest.mark.anyio
async def test_own_connection_is_closed_on_exit(nats_url: str, bucket: str) -> None:
    backend = backend_for(nats_url, bucket)
    async with backend:
        assert await backend.acquire(name="x", token="a", duration=5)
        own = backend._connection.nc
        assert own is not None
        assert own.is_connected
    assert own.is_closed
    # The backend connects again when used after exit.
    async with backend:
        assert await backend.release(name="x", token="a")
        assert backend._connection.nc is not own


@pytest.mark.anyio
async def test_concurrent_first_uses_open_one_connection(
    nats_url: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connects: list[Client] = []
    real_connect = Client.connect

    async def counting_connect(self: Client, *args: Any, **kwargs: Any) -> None:
        connects.append(self)
        await real_connect(self, *args, **kwargs)

    monkeypatch.setattr(Client, "connect", counting_connect)
    async with backend_for(nats_url, bucket) as backend:
        async with anyio.create_task_group() as group:
            for index in range(20):
                group.start_soon(
                    partial(backend.acquire, name=f"k{index}", token="a", duration=5)
                )
        assert len(connects) == 1


@pytest.mark.anyio
async def test_client_provider_is_borrowed(nats_url: str, bucket: str) -> None:
    client = await nats.connect(nats_url)
    calls = 0

    async def provider() -> Client:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.01)
        return client

    try:
        backend = NatsSyncBackend.from_client_provider(provider, bucket=bucket)
        async with backend:
            async with anyio.create_task_group() as group:
                for index in range(5):
                    group.start_soon(
                        partial(
                            backend.acquire, name=f"k{index}", token="a", duration=5
                        )
                    )
            assert await backend.owned(name="k0", token="a")
        assert calls >= 1
        assert client.is_connected
    finally:
        await client.close()


@pytest.mark.anyio
async def test_provider_errors_are_backend_errors(bucket: str) -> None:
    async def provider() -> Client:
        raise RuntimeError("broker not ready")

    backend = NatsSyncBackend.from_client_provider(provider, bucket=bucket)
    with pytest.raises(NatsSyncBackendConnectionError, match="broker not ready"):
        await backend.acquire(name="x", token="a", duration=5)


@pytest.mark.anyio
async def test_unreachable_server_fails_in_bounded_time() -> None:
    backend = NatsSyncBackend("nats://u:s3cret@127.0.0.1:1", auto_register=False)
    started = time.monotonic()
    with pytest.raises(NatsSyncBackendConnectionError) as info:
        await backend.acquire(name="lock:x", token="a", duration=5)
    assert time.monotonic() - started < 5
    message = str(info.value)
    for word in ("lock:x", "acquire", "127.0.0.1:1", "Connect"):
        assert word in message
    assert "s3cret" not in message
    assert isinstance(info.value.__cause__, Exception)


@pytest.mark.anyio
async def test_server_outage_raises_backend_errors_then_recovers(
    start_server: Callable[[NatsServer], NatsServer],
) -> None:
    server = start_server(NatsServer(source="controllable"))
    backend = NatsSyncBackend(server.url, bucket="outage", auto_register=False)
    backend.request_timeout = 0.5
    async with backend:
        assert await backend.acquire(name="x", token="a", duration=30)
        server.stop()
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: backend.acquire(name="x", token="a", duration=30),
            lambda: backend.release(name="x", token="a"),
            lambda: backend.locked(name="x"),
            lambda: backend.owned(name="x", token="a"),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(SyncBackendError) as info:
                await call()
            assert time.monotonic() - started < 5
            assert "'x'" in str(info.value)
            assert not isinstance(info.value, nats.errors.Error)
        # Nothing was queued while the connection was down: the failed
        # release above must not be applied once the server is back.
        server.start()

        async def owned_again() -> bool:
            try:
                return await backend.owned(name="x", token="a")
            except SyncBackendError:
                return False

        # JetStream kept the lock (file storage) and the backend reconnected.
        await wait_for(owned_again, timeout=10, interval=0.1)
        assert await backend.release(name="x", token="a")


@pytest.mark.anyio
async def test_frozen_server_times_out(
    start_server: Callable[[NatsServer], NatsServer],
) -> None:
    server = start_server(NatsServer(source="controllable"))
    backend = NatsSyncBackend(server.url, bucket="frozen", auto_register=False)
    backend.request_timeout = 0.3
    async with backend:
        assert await backend.acquire(name="x", token="a", duration=30)
        with server.paused(), pytest.raises(SyncBackendTimeoutError):
            await backend.acquire(name="x", token="a", duration=30)


@pytest.mark.anyio
async def test_lock_end_to_end(nats_url: str, bucket: str, raw: Client) -> None:
    async with backend_for(nats_url, bucket) as backend:
        lock = Lock("report.daily", backend=backend, worker="w", retry_interval=0.02)
        async with lock:
            assert await lock.owned()
            data, _ = await stored(raw, bucket, encode_key("lock:report.daily"))
            assert data.decode().startswith("w")
        assert not await lock.locked()


@pytest.mark.anyio
async def test_release_wakes_a_waiter_at_once(nats_url: str, bucket: str) -> None:
    lock = name()
    async with backend_for(nats_url, bucket) as a, backend_for(nats_url, bucket) as b:
        assert await a.acquire(name=lock, token="a", duration=30)
        woke_after: list[float] = []

        async def waiter() -> None:
            await b.wait_released(name=lock)
            woke_after.append(time.monotonic())

        async with anyio.create_task_group() as group:
            group.start_soon(waiter)
            await anyio.sleep(0.2)
            assert not woke_after
            released_at = time.monotonic()
            assert await a.release(name=lock, token="a")
        assert woke_after[0] - released_at < 2  # not the 30 s lease
        assert await b.acquire(name=lock, token="b", duration=5)


@pytest.mark.anyio
@pytest.mark.parametrize("bad", [0, -1, math.inf, math.nan, "1", True, [1]])
async def test_backend_rejects_invalid_durations(bad: Any) -> None:
    backend = NatsSyncBackend("nats://127.0.0.1:1", auto_register=False)
    with pytest.raises(ValueError, match="duration"):
        await backend.acquire(name="x", token="a", duration=bad)


@pytest.mark.anyio
async def test_replicas_need_a_cluster(nats_url: str, bucket: str) -> None:
    backend = backend_for(nats_url, bucket, replicas=3)
    with pytest.raises(NatsSyncBackendBucketError) as info:
        await backend.acquire(name="x", token="a", duration=5)
    assert bucket in str(info.value)
    assert "replicas" in str(info.value)
    await backend.aclose()


@pytest.mark.anyio
async def test_replicated_bucket_on_a_cluster(
    start_server: Callable[[Any], Any],
) -> None:
    from tests.servers import NatsCluster

    cluster = start_server(NatsCluster(3))
    cluster.wait_meta_leader()
    async with NatsSyncBackend(
        cluster.url, bucket="replicated", replicas=3, auto_register=False
    ) as backend:
        with anyio.fail_after(20):
            while True:  # JetStream may need a moment to place the stream
                try:
                    assert await backend.acquire(name="x", token="a", duration=30)
                    break
                except NatsSyncBackendError:
                    await anyio.sleep(0.2)
        assert not await backend.acquire(name="x", token="b", duration=30)
        client = await nats.connect(cluster.url.split(","))
        try:
            info = await client.jetstream().stream_info("KV_replicated")
        finally:
            await client.close()
        assert info.config.num_replicas == 3
        assert await backend.release(name="x", token="a")


@pytest.fixture
async def loser_pair(
    nats_url: str, bucket: str
) -> AsyncIterator[tuple[NatsSyncBackend, NatsSyncBackend, Client]]:
    """Two workers on one bucket: `a` on its own URL connection, `b` on a
    borrowed client whose messages the test counts (`sent(client)`)."""
    client = await nats.connect(nats_url)
    try:
        async with (
            backend_for(nats_url, bucket) as a,
            NatsSyncBackend(client=client, bucket=bucket, auto_register=False) as b,
        ):
            yield a, b, client
    finally:
        await client.close()


@pytest.mark.anyio
async def test_a_loser_asks_once_per_attempt(
    loser_pair: tuple[NatsSyncBackend, NatsSyncBackend, Client],
) -> None:
    """Once a worker knows who holds a key and until when, a failed attempt
    costs one publish, and taking over after the lease is one publish too."""
    a, b, client = loser_pair
    lock = name()
    assert await a.acquire(name=lock, token="a", duration=0.5)
    before = sent(client)
    first = await b.acquire_or_remaining(name=lock, token="b", duration=5)
    assert 0 < first <= 0.5
    assert sent(client) - before <= 3  # connect, publish, read
    before = sent(client)
    again = await b.acquire_or_remaining(name=lock, token="b", duration=5)
    assert 0 < again <= first
    assert sent(client) - before == 1
    await anyio.sleep(again + 0.05)
    before = sent(client)
    assert await b.acquire_or_remaining(name=lock, token="b", duration=5) == 0
    assert sent(client) - before == 1
    assert await b.owned(name=lock, token="b")


@pytest.mark.anyio
async def test_a_loser_learns_a_new_holder_from_the_failed_write(
    loser_pair: tuple[NatsSyncBackend, NatsSyncBackend, Client],
) -> None:
    """After the last holding it knew has ended, a loser whose write fails on
    a newer sequence (another worker took the key) answers busy without
    reading the entry: one publish. The entry is read only when needed."""
    a, b, client = loser_pair
    lock = name()
    assert await a.acquire(name=lock, token="a", duration=0.4)
    first = await b.acquire_fenced(name=lock, token="b", duration=0.4)
    assert first.fence is None
    assert 0 < first.remaining <= 0.4
    await anyio.sleep(first.remaining + 0.05)
    # The lease ended; `a` takes the key again before `b` tries.
    assert await a.acquire(name=lock, token="a", duration=0.4)
    before = sent(client)
    busy = await b.acquire_fenced(name=lock, token="b", duration=0.4)
    assert sent(client) - before == 1  # the write; no read
    assert busy.fence is None
    assert busy.remaining == 0.4  # the last holding's lease
    # Still there at the next attempt, before it could end: read
    # (the answer may also have been a release), then busy.
    before = sent(client)
    again = await b.acquire_fenced(name=lock, token="b", duration=0.4)
    assert sent(client) - before == 2
    assert again.fence is None
    assert 0 < again.remaining <= 0.4
    # A release after a holding that had not ended: read, then taken.
    assert await a.release(name=lock, token="a")
    taken = await b.acquire_fenced(name=lock, token="b", duration=5)
    assert taken.fence is not None
    assert await b.owned(name=lock, token="b")
