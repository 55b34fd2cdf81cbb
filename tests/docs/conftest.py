"""The documentation's snippets run against servers of their own.

Snippets use the library's defaults (the NATS bucket ``grelmicro``, Redis keys
without prefix, lock names such as ``ledger``), which other tests use too: a
lock another test left to expire would make a snippet skip its run. So the
snippets get a Redis and a NATS server started for this package alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import NatsServer, RedisServer, launch


@pytest.fixture(scope="package")
def docs_redis_url() -> Iterator[str]:
    """A Redis server for the snippets only."""
    server = launch(RedisServer())
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture(scope="package")
def docs_nats_url() -> Iterator[str]:
    """A NATS server (JetStream) for the snippets only."""
    server = launch(NatsServer())
    try:
        yield server.url
    finally:
        server.close()
