"""The OpenTelemetry snippets of docs/observability.md run standalone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SNIPPETS = ROOT / "docs" / "snippets"


def run_snippet(name: str) -> str:
    """Run docs/snippets/<name> as `python <file>`; its stdout (must exit 0)."""
    pytest.importorskip("opentelemetry.sdk")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, str(SNIPPETS / name)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_prometheus_snippet() -> None:
    pytest.importorskip("opentelemetry.exporter.prometheus")
    out = run_snippet("otel_prometheus.py")
    lines = out.splitlines()
    assert any(
        'task_name="sync-invoices"' in line and 'task_outcome="success"' in line
        for line in lines
    ), out
    assert any(
        'error_type="ConnectionError"' in line and 'task_outcome="error"' in line
        for line in lines
    ), out


def test_traces_snippet() -> None:
    out = run_snippet("otel_traces.py")
    spans = dict(re.findall(r"^(\S+) span=(\w+) parent=", out, re.MULTILINE))
    parents = dict(re.findall(r"^(\S+) span=\w+ parent=(\w+)", out, re.MULTILINE))
    assert set(spans) == {"grelmicro.task.run", "fetch-invoices"}, out
    # The function's span is a child of the run's span.
    assert parents["fetch-invoices"] == spans["grelmicro.task.run"], out
    assert "task.name = sync-invoices" in out
    assert "task.outcome = success" in out
