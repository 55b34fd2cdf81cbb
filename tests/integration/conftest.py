"""Integration fixtures: one entered backend per test, for each backend kind.

`backend_case` is parametrized with the ids ``memory``, ``redis`` and
``nats``. Each test gets its own namespace (a Redis key prefix, a NATS bucket)
so tests never see each other's locks. Servers start lazily: a run selecting
only ``-k memory`` starts none.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import anyio
import pytest
from redis.asyncio import Redis

from grelmicro.sync import _backends
from grelmicro.sync.abc import SyncBackend
from grelmicro.sync.memory import MemorySyncBackend
from tests.integration._worker_proc import make_backend
from tests.servers import is_ci

BACKEND_KINDS = ["memory", "redis", "nats"]
SERVER_KINDS = ["redis", "nats"]


@pytest.fixture(autouse=True)
def _isolated_registry() -> Iterator[None]:
    """Each test starts and ends with no default backend registered."""
    saved = list(_backends._loaded)
    _backends._loaded.clear()
    yield
    _backends._loaded[:] = saved


@dataclass
class BackendCase:
    """A backend under test and the timings that are fair to ask of it."""

    kind: str
    backend: SyncBackend
    #: A short lease, at or above the backend's TTL floor (1 s on NATS).
    ttl: float
    #: How late the server may expire a key after its TTL (NATS sweeps coarsely).
    slack: float
    #: A new, not yet entered, backend on the same namespace (another "worker").
    make: Callable[[], SyncBackend]
    #: Connection details, for subprocesses: (url, namespace).
    url: str = ""
    namespace: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def expiry_deadline(self, duration: float) -> float:
        """Seconds within which a `duration` lease must have expired (generous)."""
        return math.ceil(duration) + self.slack + 2.0


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Redis]:
    """A plain redis-py client on the test Redis (to look at or change keys)."""
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def nats_backend_available() -> bool:
    """Whether grelmicro.sync.nats exists (it is written in parallel)."""
    return importlib.util.find_spec("grelmicro.sync.nats") is not None


def unique_namespace(kind: str) -> str:
    """A namespace no other test uses: a Redis prefix or a NATS bucket name."""
    tag = uuid4().hex[:12]
    return f"grelmicro-test-{tag}:" if kind == "redis" else f"grelmicro-test-{tag}"


async def delete_nats_bucket(url: str, bucket: str) -> None:
    """Best-effort removal of a test's KV bucket."""
    import nats

    try:
        with anyio.fail_after(5):
            client = await nats.connect(url, allow_reconnect=False)
            try:
                await client.jetstream().delete_key_value(bucket)
            finally:
                await client.close()
    except Exception:
        pass


def server_url(request: pytest.FixtureRequest, kind: str) -> str:
    """The session server's URL for `kind` (starts the server on first use)."""
    if kind == "nats" and not nats_backend_available():
        reason = "grelmicro.sync.nats is not available"
        if is_ci():
            pytest.fail(f"{reason} (CI=true)")
        pytest.skip(reason)
    url: str = request.getfixturevalue(f"{kind}_url")
    return url


@pytest.fixture(params=BACKEND_KINDS)
async def backend_case(request: pytest.FixtureRequest) -> AsyncIterator[BackendCase]:
    """An entered backend of each kind on a fresh namespace."""
    kind: str = request.param
    if kind == "memory":
        memory = MemorySyncBackend(auto_register=False)
        async with memory:
            yield BackendCase(
                kind=kind,
                backend=memory,
                ttl=0.25,
                slack=0.0,
                make=lambda: memory,  # one process: the same store
            )
        return
    url = server_url(request, kind)
    namespace = unique_namespace(kind)
    backend = make_backend(kind, url, namespace)
    others: list[SyncBackend] = []

    def make() -> SyncBackend:
        other = make_backend(kind, url, namespace)
        others.append(other)
        return other

    try:
        async with backend:
            yield BackendCase(
                kind=kind,
                backend=backend,
                ttl=0.3 if kind == "redis" else 1.0,
                # NATS rounds leases up to whole seconds and expires on a
                # periodic sweep (the backend takes over unswept keys itself).
                slack=0.2 if kind == "redis" else 1.0,
                make=make,
                url=url,
                namespace=namespace,
            )
    finally:
        with anyio.CancelScope(shield=True):
            for other in others:
                await other.__aexit__(None, None, None)
            if kind == "nats":
                await delete_nats_bucket(url, namespace)


@pytest.fixture
def backend(backend_case: BackendCase) -> SyncBackend:
    """The entered backend of `backend_case`."""
    return backend_case.backend


async def wait_for(
    predicate: Callable[[], Awaitable[bool]],
    timeout: float,
    interval: float = 0.05,
) -> float:
    """Poll `predicate` until true; return the seconds it took, or fail."""
    start = anyio.current_time()
    deadline = start + timeout
    while True:
        if await predicate():
            return anyio.current_time() - start
        if anyio.current_time() >= deadline:
            pytest.fail(f"condition not met within {timeout}s")
        await anyio.sleep(interval)
