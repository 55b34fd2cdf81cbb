"""Shared fixtures: the anyio backend (asyncio) and the real Redis/NATS servers.

Servers start lazily, only when a test asks for them (see tests/servers.py for
how they are found). A server that cannot start skips the tests that need it,
or fails them when ``CI=true``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from tests.servers import (
    NatsCluster,
    NatsServer,
    RedisClusterServers,
    RedisServer,
    Server,
    launch,
)

S = TypeVar("S", bound=Server | NatsCluster | RedisClusterServers)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Run async tests on asyncio (the only backend grelmicro supports)."""
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis server for the session (REDIS_URL, container or local binary).

    Shared: do not stop or pause it; use `start_server` for fault injection.
    """
    server = launch(RedisServer())
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """One NATS server with JetStream for the session (NATS_URL, container or binary).

    Shared: do not stop or pause it; use `start_server` for fault injection.
    """
    server = launch(NatsServer())
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session's Redis server."""
    return redis_server.url


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    """URL of the session's NATS server."""
    return nats_server.url


@pytest.fixture
def start_server() -> Iterator[Callable[[S], S]]:
    """Start a private server for one test (closed at teardown).

    ```python
    def test_outage(start_server):
        server = start_server(RedisServer(source="controllable"))
        server.stop()
    ```

    Skips (or fails under ``CI=true``) when the server cannot start.
    """
    started: list[Server | NatsCluster | RedisClusterServers] = []

    def start(server: S) -> S:
        started.append(server)
        return launch(server)

    yield start
    for server in reversed(started):
        server.close()
