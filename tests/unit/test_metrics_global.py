"""Metrics with the global OpenTelemetry providers, each case in a fresh process.

A process can set the global providers only once, and "OpenTelemetry is not
installed" can only be shown in a process where it was never imported, so
every case runs in a subprocess: without `opentelemetry` importable (a
meta-path finder refuses it), installed but with no provider, and with a
provider set after grelmicro was imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Makes `import opentelemetry...` fail as if the package were not installed.
HIDE_OPENTELEMETRY = """
import importlib.abc
import sys

class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "opentelemetry" or fullname.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None

sys.meta_path.insert(0, _Hide())
"""

#: Runs a manager with a local and a locked interval task, a few runs each.
RUN_MANAGER = """
import anyio
from grelmicro.sync.memory import MemorySyncBackend
from grelmicro.task import TaskManager

runs = {"local": 0, "locked": 0, "failing": 0}

async def main() -> None:
    manager = TaskManager()

    @manager.interval(seconds=0.01, name="local")
    async def local() -> None:
        runs["local"] += 1

    @manager.interval(seconds=0.01, name="locked", max_lock_seconds=1)
    def locked() -> None:
        runs["locked"] += 1

    @manager.interval(seconds=0.01, name="failing")
    async def failing() -> None:
        runs["failing"] += 1
        raise ValueError("boom")

    async with MemorySyncBackend(), manager:
        with anyio.move_on_after(5):
            while min(runs.values()) < 3:
                await anyio.sleep(0.01)

anyio.run(main)
assert min(runs.values()) >= 3, runs
"""


def run_python(code: str, env: dict[str, str] | None = None) -> str:
    """Run `code` in a fresh interpreter from the project root; its stdout."""
    full_env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("OTEL_PYTHON_")
    }
    full_env.update(env or {})
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_without_opentelemetry() -> None:
    """Not installed: grelmicro imports, tasks run, the hooks do nothing."""
    out = run_python(
        HIDE_OPENTELEMETRY
        + """
try:
    import opentelemetry
except ImportError:
    pass
else:
    raise AssertionError("opentelemetry is not hidden")

import grelmicro
import grelmicro.sync
import grelmicro.task
from grelmicro import _metrics
"""
        + RUN_MANAGER
        + """
assert not _metrics.ENABLED.on
assert not _metrics.refresh()
recorder = _metrics.start_run("t", scheduled_at=0.0, fencing_token=1)
recorder.set_fencing_token(2)
recorder.finish("error", ValueError("x"))
_metrics.count_outcome("t", "missed")
_metrics.lock_acquire("lock", "busy", 0.1)
_metrics.leader_status("e", True)
assert not any(name.startswith("opentelemetry") for name in sys.modules)
print("ok")
""",
        # Even when asked to load a provider from the environment.
        env={"OTEL_PYTHON_METER_PROVIDER": "sdk_meter_provider"},
    )
    assert out.strip() == "ok"


def test_installed_without_provider() -> None:
    """Installed, no provider: off, and grelmicro does not even import it."""
    pytest.importorskip("opentelemetry.metrics")
    out = run_python(
        """
import sys
from grelmicro import _metrics
"""
        + RUN_MANAGER
        + """
assert not _metrics.ENABLED.on
assert not any(name.startswith("opentelemetry") for name in sys.modules)

# The application uses the API (e.g. a library instrumented with it), but
# configures no provider: still off.
from opentelemetry import metrics, trace
metrics.get_meter("app").create_counter("app.things").add(1)
trace.get_tracer("app").start_span("x").end()
assert not _metrics.refresh()
assert type(_metrics.start_run("t", scheduled_at=0.0)) is _metrics.RunRecorder

# Explicit no-op providers are not providers either.
metrics.set_meter_provider(metrics.NoOpMeterProvider())
trace.set_tracer_provider(trace.NoOpTracerProvider())
assert not _metrics.refresh()
print("ok")
"""
    )
    assert out.strip() == "ok"


PROVIDERS = """
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
exporter = InMemorySpanExporter()
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(tracer_provider)

def success_runs(task):
    data = reader.get_metrics_data()
    total = 0
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != "grelmicro.task.runs":
                    continue
                for point in metric.data.data_points:
                    attributes = dict(point.attributes)
                    if attributes == {"task.name": task, "task.outcome": "success"}:
                        total += point.value
    return total
"""


def test_provider_set_after_import() -> None:
    """A provider set at start-up, after grelmicro was imported and used."""
    pytest.importorskip("opentelemetry.sdk")
    out = run_python(
        """
import time
from grelmicro import _metrics

assert not _metrics.ENABLED.on  # checked once: nothing configured yet
"""
        + PROVIDERS
        + """
# Within RECHECK_SECONDS of the last check the answer may still be the old
# one; after it, the new providers are found without any call to refresh().
deadline = time.monotonic() + _metrics.RECHECK_SECONDS + 5
while not _metrics.ENABLED.on:
    assert time.monotonic() < deadline, "provider not found"
    time.sleep(0.05)
_metrics.start_run("job", scheduled_at=time.time()).finish("success")
assert success_runs("job") == 1
assert [span.name for span in exporter.get_finished_spans()] == [
    "grelmicro.task.run"
]
print("ok")
"""
    )
    assert out.strip() == "ok"


def test_refresh_finds_provider_at_once() -> None:
    pytest.importorskip("opentelemetry.sdk")
    out = run_python(
        """
import time
from grelmicro import _metrics

assert not _metrics.ENABLED.on
"""
        + PROVIDERS
        + """
assert _metrics.refresh()
_metrics.count_outcome("job", "skipped")
_metrics.start_run("job", scheduled_at=time.time()).finish("success")
assert success_runs("job") == 1
print("ok")
"""
    )
    assert out.strip() == "ok"


def test_provider_from_environment() -> None:
    """``OTEL_PYTHON_METER_PROVIDER`` configures a provider without any import."""
    pytest.importorskip("opentelemetry.sdk")
    out = run_python(
        """
from grelmicro import _metrics
assert _metrics.ENABLED.on
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
assert isinstance(metrics.get_meter_provider(), MeterProvider)
print("ok")
""",
        env={"OTEL_PYTHON_METER_PROVIDER": "sdk_meter_provider"},
    )
    assert out.strip() == "ok"
