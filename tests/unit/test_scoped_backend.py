"""Each TaskManager(broker=...) gives its own tasks its broker's backend."""

from __future__ import annotations

import anyio
import pytest

from grelmicro.sync._backends import get_default_backend
from grelmicro.sync.abc import SyncBackend
from grelmicro.task import TaskManager

pytestmark = pytest.mark.anyio


async def test_each_manager_tasks_use_their_own_broker_backend() -> None:
    faststream_nats = pytest.importorskip("faststream.nats")
    faststream_redis = pytest.importorskip("faststream.redis")
    # Brokers are never connected here: backends connect lazily on first use.
    redis_manager = TaskManager(
        broker=faststream_redis.RedisBroker("redis://127.0.0.1:1")
    )
    nats_manager = TaskManager(broker=faststream_nats.NatsBroker("nats://127.0.0.1:1"))
    seen: dict[str, SyncBackend] = {}

    @redis_manager.interval(seconds=0.01)
    async def on_redis() -> None:
        seen["redis"] = get_default_backend()

    @nats_manager.interval(seconds=0.01)
    def on_nats() -> None:  # a thread: the context is carried there too
        seen["nats"] = get_default_backend()

    async with redis_manager, nats_manager:
        with anyio.fail_after(5):
            while len(seen) < 2:
                await anyio.sleep(0.01)
        # Outside the tasks, the most recently entered backend is the default.
        assert get_default_backend() is nats_manager.backend
    assert seen["redis"] is redis_manager.backend
    assert seen["nats"] is nats_manager.backend
    assert type(seen["redis"]).__name__ == "RedisSyncBackend"
    assert type(seen["nats"]).__name__ == "NatsSyncBackend"
