"""The OpenTelemetry example (examples/faststream/otel_app.py) on real servers.

The app runs as its own process on Redis and on NATS; the test scrapes its
Prometheus endpoint until the task runs, the leader and the failures show,
then stops it with SIGTERM (it must exit cleanly).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import SERVER_KINDS, server_url

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "faststream" / "otel_app.py"


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scrape(port: int) -> str:
    """The /metrics text, or "" while the server is not up."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=2
        ) as response:
            text: str = response.read().decode()
            return text
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return ""


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name` whose labels include `labels` (sum)."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)\{(.*)\} (\S+)$", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2)))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match.group(3))
    return total


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_otel_example_exports_to_prometheus(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    pytest.importorskip("opentelemetry.exporter.prometheus")
    url = server_url(request, kind)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "NATS_URL")},
        "PYTHONPATH": str(ROOT),
        "METRICS_PORT": str(port),
        "WORKER_NAME": "otel-test",
        f"{kind.upper()}_URL": url,
    }
    log = tmp_path / "app.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(APP)],
            cwd=ROOT,
            env=env,
            stdout=stderr,
            stderr=stderr,
        )
    text = ""
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = scrape(port)
            runs = "grelmicro_task_runs_total"
            if (
                sample(text, runs, task_name="sync-invoices", task_outcome="success")
                >= 2
                and sample(
                    text,
                    runs,
                    task_name="flaky-export",
                    task_outcome="error",
                    error_type="TimeoutError",
                )
                >= 1
                and sample(
                    text, runs, task_name="leader-report", task_outcome="success"
                )
                >= 1
                and sample(
                    text, "grelmicro_leader_status", election_name="otel-example-leader"
                )
                == 1
            ):
                break
            assert process.poll() is None, log.read_text()
            time.sleep(0.2)
        else:
            pytest.fail(f"metrics not seen within 30 s:\n{text}\n{log.read_text()}")
        assert (
            sample(
                text, "grelmicro_task_duration_seconds_count", task_name="sync-invoices"
            )
            >= 2
        )
        assert (
            sample(text, "grelmicro_task_lag_seconds_count", task_name="sync-invoices")
            >= 2
        )
        assert (
            sample(
                text,
                "grelmicro_leader_transitions_total",
                election_name="otel-example-leader",
            )
            == 1
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
