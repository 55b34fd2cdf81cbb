"""examples/faststream/cron_app.py runs, briefly, against real servers."""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path
from uuid import uuid4

import anyio
import pytest
from faststream import TestApp

from grelmicro.brokers import backend_for
from grelmicro.sync.abc import FireClaimBackend
from grelmicro.task._cron import CronTask

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

EXAMPLE = (
    Path(__file__).resolve().parents[2] / "examples" / "faststream" / "cron_app.py"
)


@pytest.mark.parametrize(
    ("kind", "env_var"), [("redis", "REDIS_URL"), ("nats", "NATS_URL")]
)
async def test_cron_example(
    kind: str,
    env_var: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if kind == "nats" and importlib.util.find_spec("grelmicro.sync.nats") is None:
        pytest.skip("grelmicro.sync.nats is not available yet")
    url = str(request.getfixturevalue(f"{kind}_url"))
    monkeypatch.delenv("NATS_URL", raising=False)
    monkeypatch.setenv(env_var, url)
    spec = importlib.util.spec_from_file_location(
        f"example_cron_app_{uuid4().hex[:8]}", EXAMPLE
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not isinstance(backend_for(module.broker), FireClaimBackend):
        pytest.skip(f"the {kind} backend cannot claim cron fires yet")
    crons = [t for t in module.task.tasks if isinstance(t, CronTask)]
    assert len(crons) == 6
    caplog.set_level(logging.INFO, logger="examples.cron_app")

    def ticks() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "examples.cron_app" and r.getMessage().startswith("tick of")
        ]

    async with TestApp(module.app):
        deadline = time.monotonic() + 10
        while len(ticks()) < 2:
            assert time.monotonic() < deadline, "no tick within 10 s"
            await anyio.sleep(0.05)
    first, second = ticks()[:2]
    assert first != second  # two different fires, each published once
