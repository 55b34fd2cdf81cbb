"""NATS-specific behaviour of the optional capabilities, on a real server.

Fencing tokens are stream sequences carried by extensions in a header; fire
claims are a high-water key and per-fire lease keys; names too long for a
subject fail at binding time; a malformed server reply is a backend error;
an own connection never outlives its event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from uuid import uuid4

import anyio
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from grelmicro.sync.abc import NameCheckBackend
from grelmicro.sync.errors import SyncBackendError, SyncSettingsValidationError
from grelmicro.sync.nats import (
    NatsSyncBackend,
    NatsSyncBackendConnectionError,
    NatsSyncBackendError,
)
from grelmicro.sync.nats._codec import encode_key
from tests.integration.conftest import delete_nats_bucket
from tests.servers import (
    NatsServer,
    find_nats_server,
    free_port,
    tcp_open,
    wait_until,
)

pytestmark = [pytest.mark.integration]


def name() -> str:
    return f"nats-cap:{uuid4().hex[:8]}"


def sent(client: Client) -> int:
    """Messages `client` has published so far (one per request)."""
    count: int = client.stats["out_msgs"]
    return count


@pytest.fixture
async def raw(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url, allow_reconnect=False)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def bucket(nats_url: str) -> AsyncIterator[str]:
    bucket = f"nats-cap-{uuid4().hex[:10]}"
    yield bucket
    await delete_nats_bucket(nats_url, bucket)


async def stored(raw: Client, bucket: str, key: str) -> tuple[bytes, dict[str, str]]:
    msg = await raw.jetstream().get_msg(
        f"KV_{bucket}", subject=f"$KV.{bucket}.{key}", direct=True
    )
    return msg.data or b"", dict(msg.headers or {})


# Fencing tokens ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_token_is_the_stream_sequence_carried_by_extensions(
    nats_url: str, bucket: str, raw: Client
) -> None:
    lock = name()
    key = encode_key(lock)
    client = await nats.connect(nats_url)
    try:
        async with NatsSyncBackend(
            client=client, bucket=bucket, auto_register=False
        ) as backend:
            await backend.locked(name=name())  # connect, create the bucket
            before = sent(client)
            taken = await backend.acquire_fenced(name=lock, token="a", duration=30)
            assert sent(client) - before == 1  # one round trip
            info = await raw.jetstream().stream_info(f"KV_{bucket}")
            assert taken.fence == info.state.last_seq
            _, headers = await stored(raw, bucket, key)
            assert "Grelmicro-Fence" not in headers  # a fresh write: its own seq
            for _ in range(3):
                before = sent(client)
                kept = await backend.acquire_fenced(name=lock, token="a", duration=30)
                assert sent(client) - before == 1
                assert kept.fence == taken.fence
                _, headers = await stored(raw, bucket, key)
                assert headers["Grelmicro-Fence"] == str(taken.fence)
            # Another backend (another worker) reads the holding's token back
            # from the header when the holder's own state is lost.
            async with NatsSyncBackend(
                nats_url, bucket=bucket, auto_register=False
            ) as other:
                again = await other.acquire_fenced(name=lock, token="a", duration=30)
                assert again.fence == taken.fence
                busy = await other.acquire_fenced(name=lock, token="b", duration=30)
                assert busy.fence is None
                assert 29 < busy.remaining <= 30
    finally:
        await client.close()


# Fire claims ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_fire_claims_are_stored_as_documented(
    nats_url: str, bucket: str, raw: Client
) -> None:
    task = f"cron:{uuid4().hex[:6]}"
    key = encode_key(task)
    fire = 1_800_000_000_000
    async with NatsSyncBackend(nats_url, bucket=bucket, auto_register=False) as one:
        fence = await one.claim_fire(name=task, fire=fire, token="w1", lease=5)
        assert fence is not None
        data, headers = await stored(raw, bucket, f"{key}.fire")
        assert data == str(fire).encode()
        assert "Nats-TTL" not in headers  # the high-water mark is persistent
        data, headers = await stored(raw, bucket, f"{key}.fire.{fire}")
        assert data == b"w1"
        assert headers["Nats-TTL"] == "5"
        assert headers["Grelmicro-Fence"] == str(fence)
        assert await one.keep_fire(name=task, fire=fire, token="w1", lease=9)
        assert (await stored(raw, bucket, f"{key}.fire.{fire}"))[1]["Nats-TTL"] == "9"
        assert await one.finish_fire(name=task, fire=fire, token="w1")
        data, headers = await stored(raw, bucket, f"{key}.fire.{fire}")
        assert data == b""
        assert headers["Nats-TTL"] == "60"
        # One high-water key per task: later claims overwrite it.
        later = await one.claim_fire(
            name=task, fire=fire + 1000, token="w2", lease=None
        )
        assert later is not None
        assert later > fence
        kv = await raw.jetstream().key_value(bucket)
        keys = sorted(await kv.keys())
        assert keys == [f"{key}.fire", f"{key}.fire.{fire}"]


# Names (issue 9, case 8) ------------------------------------------------------------


def test_check_name_rejects_names_too_long_for_a_subject() -> None:
    backend = NatsSyncBackend("nats://127.0.0.1:1", auto_register=False)
    assert isinstance(backend, NameCheckBackend)
    backend.check_name("tasklock:my.module:func")
    too_long = "tasklock:" + "é" * 1000
    with pytest.raises(SyncSettingsValidationError) as info:
        backend.check_name(too_long)
    assert too_long[:30] in str(info.value)
    assert "too long" in str(info.value)
    with pytest.raises(SyncSettingsValidationError, match="non-empty"):
        backend.check_name("")


@pytest.mark.anyio
async def test_the_longest_accepted_name_works_for_locks_and_fires(
    nats_url: str, bucket: str
) -> None:
    longest = "x" * 1800
    async with NatsSyncBackend(nats_url, bucket=bucket, auto_register=False) as b:
        b.check_name(longest)
        assert await b.acquire(name=longest, token="a", duration=5)
        fire = 1_800_000_000_000
        assert await b.claim_fire(name=longest, fire=fire, token="a", lease=5)
        assert await b.finish_fire(name=longest, fire=fire, token="a")
        assert await b.release(name=longest, token="a")


# Malformed replies (issue 9, case 8) -------------------------------------------------


@contextlib.contextmanager
def core_nats_server() -> Iterator[str]:
    """A NATS server without JetStream: the test answers JetStream requests."""
    binary = find_nats_server()
    if binary is None:
        pytest.skip("nats-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: tcp_open("127.0.0.1", port), timeout=10)
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


STREAM_INFO = {
    "config": {
        "name": "KV_fake",
        "subjects": ["$KV.fake.>"],
        "retention": "limits",
        "storage": "file",
        "discard": "new",
        "num_replicas": 1,
        "max_msgs_per_subject": 1,
        "max_age": 0,
        "duplicate_window": 0,
        "allow_msg_ttl": True,
        "allow_rollup_hdrs": True,
        "allow_direct": True,
    },
    "state": {
        "messages": 0,
        "bytes": 0,
        "first_seq": 0,
        "last_seq": 0,
        "consumer_count": 0,
    },
    "created": "2026-01-01T00:00:00Z",
}

Reply = tuple[bytes, dict[str, str] | None]


async def fake_jetstream(
    client: Client, write: Reply, read: Reply
) -> Callable[[], Awaitable[None]]:
    """Answer the bucket's JetStream requests: stream info as a real server
    would, writes with `write` and direct reads with `read`."""

    async def on_request(msg: Msg) -> None:
        if msg.subject.startswith("$JS.API.STREAM.INFO."):
            await client.publish(msg.reply, json.dumps(STREAM_INFO).encode())
        elif msg.subject.startswith("$JS.API.DIRECT.GET."):
            await client.publish(msg.reply, read[0], headers=read[1])
        elif msg.subject.startswith("$KV.fake."):
            await client.publish(msg.reply, write[0], headers=write[1])

    api = await client.subscribe("$JS.API.>", cb=on_request)
    kv = await client.subscribe("$KV.fake.>", cb=on_request)

    async def stop() -> None:
        await api.unsubscribe()
        await kv.unsubscribe()

    return stop


MALFORMED: list[tuple[str, Reply, Reply, str]] = [
    ("ack not json", (b"not json", None), (b"a", None), "acquire"),
    ("ack without seq", (b'{"stream":"KV_fake"}', None), (b"a", None), "acquire"),
    ("ack a list", (b"[1]", None), (b"a", None), "acquire"),
    ("ack seq not int", (b'{"seq":"x"}', None), (b"a", None), "acquire"),
    ("read no headers", (b"", None), (b"token", None), "locked"),
    ("read no seq", (b"", None), (b"token", {"Nats-Subject": "x"}), "locked"),
    (
        "read bad fence",
        (b"", None),
        (b"token", {"Nats-Subject": "x", "Nats-Sequence": "3", "Grelmicro-Fence": "?"}),
        "locked",
    ),
    (
        "fire not a number",
        (b"", None),
        (b"soon", {"Nats-Subject": "x", "Nats-Sequence": "3"}),
        "last_fire",
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("write", "read", "operation"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
async def test_a_malformed_reply_is_a_backend_error(
    write: Reply, read: Reply, operation: str
) -> None:
    with core_nats_server() as url:
        server = await nats.connect(url)
        stop = await fake_jetstream(server, write, read)
        try:
            async with NatsSyncBackend(url, bucket="fake", auto_register=False) as b:
                b.request_timeout = 2
                calls: dict[str, Callable[[], Awaitable[Any]]] = {
                    "acquire": lambda: b.acquire(name="x", token="a", duration=5),
                    "locked": lambda: b.locked(name="x"),
                    "last_fire": lambda: b.last_fire(name="x"),
                }
                with pytest.raises(NatsSyncBackendError) as info:
                    await calls[operation]()
                assert isinstance(info.value, SyncBackendError)
                assert f"operation={operation}" in str(info.value)
                assert "'x'" in str(info.value)
        finally:
            await stop()
            await server.close()


# Connection lifecycle (issue 9, case 10) ----------------------------------------------


def test_own_client_is_closed_when_its_event_loop_ends(nats_url: str) -> None:
    bucket = f"nats-cap-{uuid4().hex[:10]}"
    backend = NatsSyncBackend(nats_url, bucket=bucket, auto_register=False)
    clients: list[Client] = []

    async def use() -> None:
        assert await backend.acquire(name="x", token="a", duration=5)
        client = backend._connection.nc
        assert client is not None
        assert client.is_connected
        clients.append(client)

    try:
        asyncio.run(use())
        assert clients[0].is_closed
        asyncio.run(use())  # a new loop: a new client
        assert clients[1] is not clients[0]
        assert clients[1].is_closed
    finally:
        asyncio.run(delete_nats_bucket(nats_url, bucket))


def test_own_client_replaced_on_a_new_event_loop_is_closed(nats_url: str) -> None:
    """The old loop still runs (another thread): the client is closed there."""
    bucket = f"nats-cap-{uuid4().hex[:10]}"
    backend = NatsSyncBackend(nats_url, bucket=bucket, auto_register=False)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(
            backend.acquire(name="x", token="a", duration=5), loop
        ).result(timeout=10)
        first = backend._connection.nc
        assert first is not None
        assert first.is_connected

        async def use_here() -> None:
            assert await backend.owned(name="x", token="a")
            assert backend._connection.nc is not first
            await backend.aclose()

        asyncio.run(use_here())
        assert wait_until(lambda: first.is_closed, timeout=5)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        asyncio.run(delete_nats_bucket(nats_url, bucket))
        time.sleep(0)


@pytest.mark.anyio
async def test_a_server_that_lost_its_storage_is_noticed_after_reconnecting(
    start_server: Callable[[NatsServer], NatsServer],
) -> None:
    """A borrowed client reconnects to a server that lost its storage: the
    backend checks the bucket again, sees a new stream, and forgets the
    sequences of the old one (one of them now belongs to another holder)."""
    server = start_server(NatsServer(source="controllable"))
    # Connections before ours: the restarted server gives ours another id.
    others = [await nats.connect(server.url, allow_reconnect=False) for _ in range(5)]
    client = await nats.connect(
        server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1
    )
    try:
        async with NatsSyncBackend(
            client=client, bucket="lost", auto_register=False
        ) as a:
            assert await a.acquire(name="x", token="a", duration=30)
            for other in others:
                await other.close()
            server.stop()
            shutil.rmtree(server.store_dir)
            server.store_dir.mkdir()
            server.start()
            assert await anyio.to_thread.run_sync(
                lambda: wait_until(lambda: client.is_connected, timeout=10)
            )
            async with NatsSyncBackend(
                server.url, bucket="lost", auto_register=False
            ) as b:
                # The new stream's first write: the sequence `a` remembers.
                assert await b.acquire(name="x", token="b", duration=30)
                assert not await _acquire_when_connected(a, name="x", token="a")
                assert await b.owned(name="x", token="b")
    finally:
        await client.close()


async def _acquire_when_connected(
    backend: NatsSyncBackend, *, name: str, token: str
) -> bool:
    """Acquire once the borrowed client is connected again.

    A client that just reconnected to a restarted server can lose that new
    connection once more (the server is still settling): the backend refuses
    to send while disconnected, so the test waits for the next reconnection.
    """
    with anyio.fail_after(10):
        while True:
            try:
                return await backend.acquire(name=name, token=token, duration=30)
            except NatsSyncBackendConnectionError:
                await anyio.sleep(0.1)
