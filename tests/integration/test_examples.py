"""The examples in examples/faststream/ run, briefly, against real servers.

Each example is loaded from its file with the server's URL in the
environment (as a user would run it), then run under FastStream's `TestApp`
(or the FastAPI lifespan) until every kind of task has done its job.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from uuid import uuid4

import anyio
import httpx
import pytest
from faststream import TestApp

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "faststream"


def nats_backend_available() -> bool:
    return importlib.util.find_spec("grelmicro.sync.nats") is not None


def load_example(name: str, monkeypatch: pytest.MonkeyPatch, **env: str) -> ModuleType:
    """Import examples/faststream/<name>.py afresh, with `env` set."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location(
        f"example_{name}_{uuid4().hex[:8]}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        await anyio.sleep(0.05)


def logged(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


# Every task of the Redis and NATS examples, by the message it logs.
EXPECTED = (
    "cleanup ran on",  # distributed lock
    "leader report from",  # leader gating
    "cache rebuilt on",  # custom lock timing
    "ledger reconciled on",  # resource lock
    "digest built on",  # task from a TaskRouter
    "announcement from",  # published by a task, handled by a subscriber
)


async def lease_is_free(kind: str, url: str, election: str) -> bool:
    """Whether no worker holds the election's lease (checked on the server)."""
    if kind == "redis":
        from grelmicro.sync.redis import RedisSyncBackend

        backend = RedisSyncBackend(url, auto_register=False)
    else:
        from grelmicro.sync.nats import NatsSyncBackend

        backend = NatsSyncBackend(url, auto_register=False)
    async with backend:
        return not await backend.locked(name=f"leader:{election}")


@pytest.mark.parametrize(
    ("example", "kind", "env_var"),
    [("redis_app", "redis", "REDIS_URL"), ("nats_app", "nats", "NATS_URL")],
)
async def test_broker_example(
    example: str,
    kind: str,
    env_var: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if kind == "nats" and not nats_backend_available():
        pytest.skip("grelmicro.sync.nats is not available yet")
    url = str(request.getfixturevalue(f"{kind}_url"))
    module = load_example(example, monkeypatch, **{env_var: url})
    logger = f"examples.{example}"
    caplog.set_level(logging.INFO, logger=logger)

    def all_ran() -> bool:
        messages = logged(caplog, logger)
        return all(any(m.startswith(e) for m in messages) for e in EXPECTED)

    async with TestApp(module.app):
        await wait_until(all_ran, timeout=15)
        assert module.leader.is_leader()
    # Leaving the app released the lease before the broker closed.
    assert not module.leader.is_leader()
    assert await lease_is_free(kind, url, module.leader.name)


# FastStream 0.7 announces that its FastAPI integration moves to a package of
# its own (faststream_fastapi); the integration itself still works.
@pytest.mark.filterwarnings(
    "ignore:The integration has been moved to the faststream_fastapi:DeprecationWarning"
)
async def test_fastapi_example(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if not nats_backend_available():
        pytest.skip("grelmicro.sync.nats is not available yet")
    url = str(request.getfixturevalue("nats_url"))
    module = load_example("fastapi_app", monkeypatch, NATS_URL=url)
    caplog.set_level(logging.INFO, logger="examples.fastapi_app")
    app = module.app
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test"
        ) as client:
            # The leader-only task publishes; the router's subscriber receives it.
            await wait_until(lambda: bool(module.last_status), timeout=15)
            status = (await client.get("/status")).json()
            assert status == {
                "worker": module.WORKER,
                "is_leader": True,
                "last": {"leader": module.WORKER},
            }
            # The request handler takes the resource lock the task also uses.
            reply = await client.post("/report")
            assert reply.json() == {"built_by": module.WORKER}
        await wait_until(
            lambda: any(
                m.startswith("report built by the task")
                for m in logged(caplog, "examples.fastapi_app")
            ),
            timeout=10,
        )
    # The router closed the broker after grelmicro released the lease.
    assert not module.leader.is_leader()
    assert await lease_is_free("nats", url, module.leader.name)
