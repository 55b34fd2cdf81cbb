"""The demo (examples/faststream/demo.py, `make demo`) runs to its summary.

Short mode: three worker processes, the leader crashes (SIGKILL), the next
one stops gracefully (SIGTERM); the summary must show runs, no double run,
and both takeovers. Both demos (embedded NATS, as `make demo` runs it, and
the session's Redis via REDIS_URL) run side by side to keep the test short.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEMO = Path(__file__).resolve().parents[2] / "examples" / "faststream" / "demo.py"


def start_demo(summary: Path, **env: str) -> subprocess.Popen[str]:
    environ = {
        k: v for k, v in os.environ.items() if k not in ("NATS_URL", "REDIS_URL")
    }
    environ.update(env, NO_COLOR="1")
    return subprocess.Popen(
        [sys.executable, str(DEMO), "--short", "--summary-json", str(summary)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environ,
    )


def finish(process: subprocess.Popen[str], summary: Path) -> tuple[str, dict[str, Any]]:
    try:
        output, _ = process.communicate(timeout=50)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"the demo did not finish in time:\n{output}")
    assert summary.exists(), output
    return output, json.loads(summary.read_text())


def check(label: str, output: str, summary: dict[str, Any], returncode: int) -> None:
    assert returncode == 0, f"{label}:\n{output}"
    assert summary["ok"], f"{label}:\n{output}"
    assert summary["double_runs"] == 0, f"{label}:\n{output}"
    assert summary["runs"] >= 4, f"{label}:\n{output}"
    assert summary["messages_handled"] >= summary["runs"] - 1, f"{label}:\n{output}"
    crash = summary["takeovers"]["crash"]
    graceful = summary["takeovers"]["graceful"]
    assert crash["to"] not in (None, crash["from"]), f"{label}:\n{output}"
    assert graceful["to"] not in (None, graceful["from"]), f"{label}:\n{output}"
    # A graceful stop releases the lease: far quicker than waiting for it to
    # expire, which is what a crash costs.
    assert graceful["seconds"] < summary["lease_seconds"], f"{label}:\n{output}"
    assert "Summary" in output
    assert "double runs" in output


def test_demo_short(redis_url: str, tmp_path: Path) -> None:
    if importlib.util.find_spec("grelmicro.sync.nats") is None:
        pytest.skip("grelmicro.sync.nats is not available yet")
    nats_summary = tmp_path / "nats.json"
    redis_summary = tmp_path / "redis.json"
    embedded = start_demo(nats_summary)  # no URL: starts its own nats-server
    on_redis = start_demo(redis_summary, REDIS_URL=redis_url)
    nats_output, nats_result = finish(embedded, nats_summary)
    redis_output, redis_result = finish(on_redis, redis_summary)
    assert "an embedded NATS server" in nats_output
    assert "your Redis server" in redis_output
    check("embedded NATS", nats_output, nats_result, embedded.returncode)
    check("Redis", redis_output, redis_result, on_redis.returncode)
