"""Metrics and traces: the hook API recorded through the OpenTelemetry SDK.

The hooks are driven directly here, with the SDK's in-memory metric reader
and span exporter (given with `use_providers`, so no global provider is set
in the test process). End-to-end tests through the scheduler are in
tests/integration/test_metrics_e2e.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

from grelmicro import _metrics


@dataclass
class Otel:
    """The in-memory reader and exporter the hooks record into."""

    reader: InMemoryMetricReader
    exporter: InMemorySpanExporter
    tracer_provider: TracerProvider

    def metrics(self) -> dict[str, Any]:
        """The collected metrics of the ``grelmicro`` meter, by name."""
        data = self.reader.get_metrics_data()
        found: dict[str, Any] = {}
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                if scope.scope.name == "grelmicro":
                    for metric in scope.metrics:
                        found[metric.name] = metric
        return found

    def points(self, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
        """The data points of metric `name`, keyed by their attributes."""
        metric = self.metrics().get(name)
        if metric is None:
            return {}
        return {
            frozenset(point.attributes.items()): point
            for point in metric.data.data_points
        }

    def value(self, name: str, **attributes: Any) -> Any:
        """The value (sums, gauges) or count (histograms) of one point; 0 if none."""
        key = frozenset(_attrs(attributes).items())
        point = self.points(name).get(key)
        if point is None:
            return 0
        return point.count if hasattr(point, "count") else point.value

    def spans(self) -> tuple[ReadableSpan, ...]:
        """The finished spans."""
        return self.exporter.get_finished_spans()


def _attrs(attributes: dict[str, Any]) -> dict[str, Any]:
    """Keyword names to attribute names: task_name -> task.name."""
    return {key.replace("_", "."): value for key, value in attributes.items()}


@pytest.fixture
def otel() -> Iterator[Otel]:
    """Record through fresh SDK providers with in-memory reader and exporter."""
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    _metrics.use_providers(
        meter_provider=meter_provider, tracer_provider=tracer_provider
    )
    try:
        yield Otel(reader, exporter, tracer_provider)
    finally:
        _metrics.use_providers(reset=True)
        meter_provider.shutdown()
        tracer_provider.shutdown()


RUNS = "grelmicro.task.runs"


def test_enabled_with_providers(otel: Otel) -> None:
    assert _metrics.ENABLED.on
    assert _metrics.refresh()


def test_no_providers_records_nothing() -> None:
    _metrics.use_providers()
    try:
        assert not _metrics.ENABLED.on
        recorder = _metrics.start_run("t", scheduled_at=time.time())
        assert type(recorder) is _metrics.RunRecorder  # the shared no-op
        recorder.set_fencing_token(1)
        recorder.finish("success")
        _metrics.count_outcome("t", "skipped")
        _metrics.lock_acquire("lock", "busy", 0.1)
        _metrics.leader_status("e", True)
    finally:
        _metrics.use_providers(reset=True)


def test_success_run(otel: Otel) -> None:
    scheduled = time.time() - 0.25
    recorder = _metrics.start_run("job", scheduled_at=scheduled, fencing_token=7)
    assert otel.value("grelmicro.task.active", task_name="job") == 1
    assert otel.value(RUNS, task_name="job", task_outcome="success") == 0
    time.sleep(0.05)
    recorder.finish("success")

    assert otel.value(RUNS, task_name="job", task_outcome="success") == 1
    assert otel.value("grelmicro.task.active", task_name="job") == 0
    lag = otel.points("grelmicro.task.lag")[frozenset({("task.name", "job")})]
    assert lag.count == 1
    assert 0.25 <= lag.sum < 5
    duration = otel.points("grelmicro.task.duration")[
        frozenset({("task.name", "job"), ("task.outcome", "success")})
    ]
    assert duration.count == 1
    assert 0.05 <= duration.sum < 5
    # No error.type on a success.
    assert all("error.type" not in dict(key) for key in otel.points(RUNS))


@pytest.mark.parametrize("outcome", ["success", "error", "lost"])
def test_run_outcome_counted_when_finished(otel: Otel, outcome: str) -> None:
    recorder = _metrics.start_run("job", scheduled_at=time.time())
    assert otel.points(RUNS) == {}
    error = RuntimeError("boom") if outcome == "error" else None
    recorder.finish(outcome, error)
    expected = {"task.name": "job", "task.outcome": outcome}
    if outcome == "error":
        expected["error.type"] = "RuntimeError"
    assert otel.points(RUNS).keys() == {frozenset(expected.items())}
    assert otel.value(RUNS, **{k.replace(".", "_"): v for k, v in expected.items()})
    assert otel.points(RUNS)[frozenset(expected.items())].value == 1


@pytest.mark.parametrize("outcome", ["skipped", "missed"])
def test_outcome_without_run_counted(otel: Otel, outcome: str) -> None:
    _metrics.count_outcome("job", outcome)
    _metrics.count_outcome("job", outcome)
    assert otel.value(RUNS, task_name="job", task_outcome=outcome) == 2
    # A run that did not start has no span, no lag and no duration.
    assert otel.spans() == ()
    assert otel.points("grelmicro.task.lag") == {}
    assert otel.points("grelmicro.task.duration") == {}


def test_every_outcome_counted_exactly_once(otel: Otel) -> None:
    for outcome in ("success", "error", "lost"):
        _metrics.start_run("job", scheduled_at=time.time()).finish(outcome)
    for outcome in ("skipped", "missed"):
        _metrics.count_outcome("job", outcome)
    counts = {
        dict(key)["task.outcome"]: p.value for key, p in otel.points(RUNS).items()
    }
    assert counts == dict.fromkeys(_metrics.OUTCOMES, 1)
    lag = otel.points("grelmicro.task.lag")[frozenset({("task.name", "job")})]
    assert lag.count == 3  # one point per run that started
    durations = sum(p.count for p in otel.points("grelmicro.task.duration").values())
    assert durations == 3
    assert len(otel.spans()) == 3


def test_error_type(otel: Otel) -> None:
    class PaymentDeclinedError(Exception):
        pass

    _metrics.start_run("job", scheduled_at=time.time()).finish(
        "error", PaymentDeclinedError("card")
    )
    _metrics.start_run("job", scheduled_at=time.time()).finish("error", None)
    types = {dict(key).get("error.type") for key in otel.points(RUNS)}
    assert types == {
        "test_error_type.<locals>.PaymentDeclinedError",
        "_OTHER",
    }


def test_lag_never_negative(otel: Otel) -> None:
    # A scheduled time in the future (clock adjusted): the lag is 0.
    _metrics.start_run("job", scheduled_at=time.time() + 60).finish("success")
    lag = otel.points("grelmicro.task.lag")[frozenset({("task.name", "job")})]
    assert lag.count == 1
    assert lag.sum == 0


def test_active_counts_concurrent_runs(otel: Otel) -> None:
    first = _metrics.start_run("job", scheduled_at=time.time())
    second = _metrics.start_run("job", scheduled_at=time.time())
    assert otel.value("grelmicro.task.active", task_name="job") == 2
    first.finish("success")
    assert otel.value("grelmicro.task.active", task_name="job") == 1
    second.finish("lost")
    assert otel.value("grelmicro.task.active", task_name="job") == 0


def test_units_and_scope(otel: Otel) -> None:
    _metrics.start_run("job", scheduled_at=time.time()).finish("success")
    _metrics.lock_acquire("tasklock", "acquired", 0.002)
    _metrics.leader_status("e", True)
    found = otel.metrics()
    assert set(found) == {
        "grelmicro.task.runs",
        "grelmicro.task.duration",
        "grelmicro.task.lag",
        "grelmicro.task.active",
        "grelmicro.leader.status",
        "grelmicro.leader.transitions",
        "grelmicro.lock.acquire.duration",
    }
    for name in (
        "grelmicro.task.duration",
        "grelmicro.task.lag",
        "grelmicro.lock.acquire.duration",
    ):
        assert found[name].unit == "s"
        # Buckets made for seconds, not the SDK's millisecond defaults.
        (point,) = found[name].data.data_points
        assert point.explicit_bounds[0] < 0.01


def test_span(otel: Otel) -> None:
    scheduled = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    recorder = _metrics.start_run("job", scheduled_at=scheduled.timestamp())
    recorder.set_fencing_token(42)
    recorder.finish("success")
    (span,) = otel.spans()
    assert span.name == "grelmicro.task.run"
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "grelmicro"
    assert dict(span.attributes or {}) == {
        "task.name": "job",
        "task.outcome": "success",
        "task.fencing_token": 42,
        "task.scheduled_at": "2026-01-02T03:04:05+00:00",
    }
    assert span.status.status_code is StatusCode.UNSET
    assert span.events == ()


def test_span_fencing_token_at_start(otel: Otel) -> None:
    _metrics.start_run("job", scheduled_at=time.time(), fencing_token=3).finish(
        "success"
    )
    _metrics.start_run("local", scheduled_at=time.time()).finish("success")
    tokens = {
        (span.attributes or {})["task.name"]: (span.attributes or {}).get(
            "task.fencing_token"
        )
        for span in otel.spans()
    }
    assert tokens == {"job": 3, "local": None}


def test_span_error(otel: Otel) -> None:
    error = ValueError("bad row 12")
    _metrics.start_run("job", scheduled_at=time.time()).finish("error", error)
    (span,) = otel.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ValueError: bad row 12"
    assert (span.attributes or {})["task.outcome"] == "error"
    assert (span.attributes or {})["error.type"] == "ValueError"
    (event,) = span.events
    assert event.name == "exception"
    assert (event.attributes or {})["exception.type"] == "ValueError"
    assert (event.attributes or {})["exception.message"] == "bad row 12"


@pytest.mark.parametrize("outcome", ["lost", "skipped"])
def test_span_other_outcomes_not_errors(otel: Otel, outcome: str) -> None:
    _metrics.start_run("job", scheduled_at=time.time()).finish(outcome)
    (span,) = otel.spans()
    assert (span.attributes or {})["task.outcome"] == outcome
    assert span.status.status_code is StatusCode.UNSET


def test_span_is_current_during_run(otel: Otel) -> None:
    before = trace.get_current_span()
    recorder = _metrics.start_run("job", scheduled_at=time.time())
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("write"):
        pass
    recorder.finish("success")
    assert trace.get_current_span() is before
    write, run = otel.spans()
    assert write.name == "write"
    assert write.parent is not None
    assert run.context is not None
    assert write.parent.span_id == run.context.span_id


def test_lock_acquire(otel: Otel) -> None:
    _metrics.lock_acquire("lock", "acquired", 0.003)
    _metrics.lock_acquire("lock", "acquired", 0.005)
    _metrics.lock_acquire("tasklock", "busy", 0.001)
    _metrics.lock_acquire("leader", "error", 5.0)
    _metrics.lock_acquire("cron", "acquired", -0.001)  # a clock step: 0
    points = otel.points("grelmicro.lock.acquire.duration")
    counts = {
        (dict(key)["lock.kind"], dict(key)["lock.outcome"]): (p.count, p.sum)
        for key, p in points.items()
    }
    assert counts.keys() == {
        ("lock", "acquired"),
        ("tasklock", "busy"),
        ("leader", "error"),
        ("cron", "acquired"),
    }
    assert counts["lock", "acquired"] == (2, pytest.approx(0.008))
    assert counts["leader", "error"] == (1, 5.0)
    assert counts["cron", "acquired"] == (1, 0)


def test_leader_status_and_transitions(otel: Otel) -> None:
    status = "grelmicro.leader.status"
    transitions = "grelmicro.leader.transitions"
    _metrics.leader_status("primary", False)
    assert otel.points(status)[frozenset({("election.name", "primary")})].value == 0
    assert otel.value(transitions, election_name="primary") == 0
    _metrics.leader_status("primary", True)
    _metrics.leader_status("primary", True)  # a renewal: no transition
    assert otel.value(status, election_name="primary") == 1
    assert otel.value(transitions, election_name="primary") == 1
    _metrics.leader_status("primary", False)
    assert otel.points(status)[frozenset({("election.name", "primary")})].value == 0
    assert otel.value(transitions, election_name="primary") == 1
    _metrics.leader_status("primary", True)
    _metrics.leader_status("other", True)
    assert otel.value(transitions, election_name="primary") == 2
    assert otel.value(transitions, election_name="other") == 1
    assert otel.value(status, election_name="other") == 1


def test_metrics_only(otel: Otel) -> None:
    """A meter provider without a tracer provider records metrics, no spans."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    _metrics.use_providers(meter_provider=provider)
    try:
        assert _metrics.ENABLED.on
        _metrics.start_run("job", scheduled_at=time.time()).finish("success")
        assert otel.spans() == ()
        data = reader.get_metrics_data()
        assert data is not None
        names = {
            metric.name
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }
        assert "grelmicro.task.runs" in names
    finally:
        provider.shutdown()


def test_traces_only(otel: Otel) -> None:
    """A tracer provider without a meter provider records spans, no metrics."""
    _metrics.use_providers(tracer_provider=otel.tracer_provider)
    assert _metrics.ENABLED.on
    recorder = _metrics.start_run("job", scheduled_at=time.time())
    recorder.finish("error", KeyError("k"))
    _metrics.count_outcome("job", "skipped")
    _metrics.lock_acquire("lock", "busy", 0.1)
    _metrics.leader_status("e", True)
    assert len(otel.spans()) == 1
    assert otel.metrics() == {}


@pytest.mark.anyio
async def test_span_current_in_the_run_task(otel: Otel) -> None:
    """Started and finished in one asyncio task: the context is restored."""
    import anyio

    async def run() -> None:
        before = trace.get_current_span()
        recorder = _metrics.start_run("job", scheduled_at=time.time())
        await anyio.sleep(0)
        assert trace.get_current_span().get_span_context().is_valid
        recorder.finish("success")
        assert trace.get_current_span() is before

    async with anyio.create_task_group() as group:
        group.start_soon(run)
    assert len(otel.spans()) == 1


@pytest.mark.anyio
async def test_finish_in_another_task(
    otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    """Finished in a child task: the span ends, no context error is logged."""
    import anyio
    from opentelemetry import context

    recorder = _metrics.start_run("job", scheduled_at=time.time())
    token = recorder._token  # type: ignore[attr-defined]

    async def finish() -> None:
        recorder.finish("success")

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(finish)
    finally:
        context.detach(token)  # this test's own clean-up
    assert [span.name for span in otel.spans()] == ["grelmicro.task.run"]
    assert "Failed to detach context" not in caplog.text


def test_cancelled_run(otel: Otel) -> None:
    """A run cut off by the shutdown: a span, no run counted, no duration."""
    before = trace.get_current_span()
    recorder = _metrics.start_run("job", scheduled_at=time.time())
    assert otel.value("grelmicro.task.active", task_name="job") == 1
    recorder.cancel()
    assert otel.value("grelmicro.task.active", task_name="job") == 0
    assert otel.points(RUNS) == {}
    assert otel.points("grelmicro.task.duration") == {}
    (span,) = otel.spans()
    attributes = dict(span.attributes or {})
    assert attributes["task.cancelled"] is True
    assert "task.outcome" not in attributes
    assert span.status.status_code is StatusCode.UNSET
    assert trace.get_current_span() is before


def test_cancel_without_provider() -> None:
    _metrics.use_providers()
    try:
        _metrics.start_run("job", scheduled_at=time.time()).cancel()
    finally:
        _metrics.use_providers(reset=True)


@pytest.mark.anyio
async def test_local_cron_runs_on_the_shared_timer_are_measured(otel: Otel) -> None:
    """Local cron tasks run from the manager's one cron timer: each run is
    counted with its outcome, and has its span with the fire time."""
    import anyio

    from grelmicro.task import TaskManager, current_run

    fires: dict[str, list[float]] = {"ok": [], "failing": []}
    manager = TaskManager()

    @manager.cron("* * * * * *", name="ok", local=True)
    async def ok() -> None:
        fires["ok"].append(current_run().scheduled_at.timestamp())

    @manager.cron("* * * * * *", name="failing", local=True)
    def failing() -> None:  # a sync function, in a worker thread
        fires["failing"].append(current_run().scheduled_at.timestamp())
        msg = "boom"
        raise ValueError(msg)

    async with manager:
        with anyio.fail_after(6):
            while min(len(f) for f in fires.values()) < 2:
                await anyio.sleep(0.05)
        # Stop half-way between two fires: no run is cut off by the stop.
        await anyio.sleep((0.5 - time.time() % 1) % 1)
    ran = {name: len(f) for name, f in fires.items()}
    assert otel.value(RUNS, task_name="ok", task_outcome="success") == ran["ok"]
    assert (
        otel.value(
            RUNS, task_name="failing", task_outcome="error", error_type="ValueError"
        )
        == ran["failing"]
    )
    by_task: dict[str, list[str]] = {"ok": [], "failing": []}
    for span in otel.spans():
        attributes = dict(span.attributes or {})
        by_task[str(attributes["task.name"])].append(
            str(attributes["task.scheduled_at"])
        )
    for name, times in fires.items():
        expected = [datetime.fromtimestamp(t, UTC).isoformat() for t in times]
        assert sorted(by_task[name]) == sorted(expected)
