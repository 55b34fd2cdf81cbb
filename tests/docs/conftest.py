"""The documentation's snippets run against servers of their own.

Snippets use the library's defaults (the NATS bucket ``grelmicro``, Redis keys
without prefix, lock names such as ``ledger``), which other tests use too: a
lock another test (or an earlier run of the same snippet: a task lock keeps
its minimum hold) left to expire would make a snippet skip its run. So each
snippet run gets a Redis and a NATS server of its own (they start in tens of
milliseconds).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import NatsServer, RedisServer, launch


@pytest.fixture
def docs_redis_url() -> Iterator[str]:
    """A Redis server for one snippet run."""
    server = launch(RedisServer())
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def docs_nats_url() -> Iterator[str]:
    """A NATS server (JetStream) for one snippet run."""
    server = launch(NatsServer())
    try:
        yield server.url
    finally:
        server.close()
