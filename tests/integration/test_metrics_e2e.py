"""Metrics and traces recorded by the real scheduler and primitives.

A `TaskManager` runs real tasks (memory backend, and Redis and NATS for the
leader handover) while the hooks record into the OpenTelemetry SDK's
in-memory reader and span exporter. Each test counts what really happened
(executions, failures) on its own and compares with what was recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import anyio
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

from grelmicro import _metrics
from grelmicro.sync import LeaderElection, Lock
from grelmicro.sync.memory import MemorySyncBackend
from grelmicro.task import TaskManager, current_run
from tests.integration.conftest import BackendCase, wait_for
from tests.unit.test_metrics import Otel

pytestmark = [pytest.mark.anyio]

RUNS = "grelmicro.task.runs"


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


def outcomes(otel: Otel, task: str) -> dict[str, int]:
    """The runs counter of `task` by outcome."""
    found: dict[str, int] = {}
    for key, point in otel.points(RUNS).items():
        attributes = dict(key)
        if attributes["task.name"] == task:
            outcome = attributes["task.outcome"]
            found[outcome] = found.get(outcome, 0) + point.value
    return found


def histogram_count(otel: Otel, name: str, task: str) -> int:
    """Points recorded into histogram `name` for `task`, over all attributes."""
    return sum(
        point.count
        for key, point in otel.points(name).items()
        if dict(key).get("task.name") == task
    )


def task_spans(otel: Otel, task: str) -> list[dict[str, object]]:
    """The attributes of the run spans of `task`."""
    return [
        dict(span.attributes or {})
        for span in otel.spans()
        if span.name == "grelmicro.task.run"
        and (span.attributes or {}).get("task.name") == task
    ]


async def test_local_interval_runs(otel: Otel) -> None:
    """Every run of a local task: one success, one lag and duration point, one span."""
    manager = TaskManager()
    executions = 0

    @manager.interval(seconds=0.01, name="tick")
    async def tick() -> None:
        nonlocal executions
        executions += 1  # no await: a run cannot be cut off mid-way

    async with manager:
        with anyio.fail_after(10):
            while executions < 10:
                await anyio.sleep(0.01)

    assert outcomes(otel, "tick") == {"success": executions}
    assert histogram_count(otel, "grelmicro.task.lag", "tick") == executions
    assert histogram_count(otel, "grelmicro.task.duration", "tick") == executions
    assert otel.value("grelmicro.task.active", task_name="tick") == 0
    spans = task_spans(otel, "tick")
    assert len(spans) == executions
    assert {span["task.outcome"] for span in spans} == {"success"}
    assert all("task.fencing_token" not in span for span in spans)


async def test_locked_interval_runs_carry_fencing_token(otel: Otel) -> None:
    manager = TaskManager()
    tokens: list[int | None] = []
    scheduled: list[datetime] = []

    @manager.interval(seconds=0.01, name="locked", max_lock_seconds=5)
    async def locked() -> None:
        run = current_run()
        tokens.append(run.fencing_token)
        scheduled.append(run.scheduled_at)

    async with MemorySyncBackend(), manager:
        with anyio.fail_after(10):
            while len(tokens) < 5:
                await anyio.sleep(0.01)

    assert outcomes(otel, "locked") == {"success": len(tokens)}
    spans = task_spans(otel, "locked")
    assert [span.get("task.fencing_token") for span in spans] == tokens
    assert all(isinstance(token, int) for token in tokens)
    assert [span["task.scheduled_at"] for span in spans] == [
        at.isoformat() for at in scheduled
    ]
    acquired = otel.points("grelmicro.lock.acquire.duration")
    kinds = {(dict(key)["lock.kind"], dict(key)["lock.outcome"]) for key in acquired}
    assert ("tasklock", "acquired") in kinds


async def test_failing_task(otel: Otel) -> None:
    """A task that raises: each run an error with its type, on the span too."""
    manager = TaskManager()
    failures = 0

    class ExportFailedError(Exception):
        pass

    @manager.interval(seconds=0.01, name="failing")
    async def failing() -> None:
        nonlocal failures
        failures += 1
        raise ExportFailedError("upstream 503")

    async with manager:
        with anyio.fail_after(10):
            while failures < 5:
                await anyio.sleep(0.01)

    error_type = "test_failing_task.<locals>.ExportFailedError"
    assert (
        otel.value(
            RUNS, task_name="failing", task_outcome="error", error_type=error_type
        )
        == failures
    )
    assert outcomes(otel, "failing") == {"error": failures}
    assert histogram_count(otel, "grelmicro.task.duration", "failing") == failures
    spans = [
        span
        for span in otel.spans()
        if (span.attributes or {}).get("task.name") == "failing"
    ]
    assert len(spans) == failures
    for span in spans:
        assert span.status.status_code is StatusCode.ERROR
        assert (span.attributes or {})["error.type"] == error_type
        assert [event.name for event in span.events] == ["exception"]


async def test_skipped_runs(otel: Otel) -> None:
    """A held resource lock skips runs: counted as skipped, no span, no lag."""
    manager = TaskManager()
    executions = 0
    async with MemorySyncBackend() as backend:
        resource = Lock("report", backend=backend)
        holder = Lock("report", backend=backend, worker="someone-else")

        @manager.interval(seconds=0.01, name="report", sync=resource)
        async def report() -> None:
            nonlocal executions
            executions += 1

        await holder.acquire()
        async with manager:

            async def skipped_some() -> bool:
                return outcomes(otel, "report").get("skipped", 0) >= 3

            await wait_for(skipped_some, timeout=10)
            assert executions == 0
            assert "success" not in outcomes(otel, "report")
            assert task_spans(otel, "report") == []
            assert histogram_count(otel, "grelmicro.task.lag", "report") == 0
            await holder.release()
            with anyio.fail_after(10):
                while executions < 3:
                    await anyio.sleep(0.01)

    counted = outcomes(otel, "report")
    assert counted["success"] == executions
    assert set(counted) == {"success", "skipped"}
    busy = otel.points("grelmicro.lock.acquire.duration")
    assert (
        sum(
            point.count
            for key, point in busy.items()
            if dict(key) == {"lock.kind": "lock", "lock.outcome": "busy"}
        )
        >= counted["skipped"]
    )


async def test_run_beyond_max_lock_seconds_is_lost(otel: Otel) -> None:
    """A run cancelled because its lock could not be kept: outcome ``lost``."""
    manager = TaskManager()
    started = 0

    @manager.interval(
        seconds=0.05, name="slow", min_lock_seconds=0.1, max_lock_seconds=0.3
    )
    async def slow() -> None:
        nonlocal started
        started += 1
        await anyio.sleep(30)

    async with MemorySyncBackend(), manager:

        async def lost_twice() -> bool:
            return outcomes(otel, "slow").get("lost", 0) >= 2

        await wait_for(lost_twice, timeout=10)

    counted = outcomes(otel, "slow")
    assert "success" not in counted
    assert counted["lost"] >= 2
    # Each run that started ended lost, except one cut off by the shutdown.
    assert started - 1 <= counted["lost"] <= started
    # A run cut off by the shutdown ends its span with no outcome.
    spans = task_spans(otel, "slow")
    lost_spans = [s for s in spans if s.get("task.outcome") == "lost"]
    assert len(lost_spans) == counted["lost"]
    assert otel.value("grelmicro.task.active", task_name="slow") == 0


async def test_leader_gated_task_skipped_on_follower(otel: Otel) -> None:
    async with MemorySyncBackend() as backend:
        leader = LeaderElection(
            "gate", backend=backend, worker="a", retry_interval=0.05
        )
        follower = LeaderElection(
            "gate", backend=backend, worker="b", retry_interval=0.05
        )
        first, second = TaskManager(), TaskManager()
        executions = {"a": 0, "b": 0}

        @first.interval(seconds=0.01, name="gated-a", leader=leader)
        async def gated_a() -> None:
            executions["a"] += 1

        @second.interval(seconds=0.01, name="gated-b", leader=follower)
        async def gated_b() -> None:
            executions["b"] += 1

        async with first:
            await leader.wait_for_leader()
            async with second:
                with anyio.fail_after(10):
                    while executions["a"] < 5:
                        await anyio.sleep(0.01)

                async def follower_skipped() -> bool:
                    return outcomes(otel, "gated-b").get("skipped", 0) >= 3

                await wait_for(follower_skipped, timeout=10)
    assert executions["b"] == 0
    assert set(outcomes(otel, "gated-b")) == {"skipped"}
    assert outcomes(otel, "gated-a") == {"success": executions["a"]}


@pytest.mark.integration
async def test_leader_handover(otel: Otel, backend_case: BackendCase) -> None:
    """Two managers on one backend: status and transitions follow a handover."""
    lease = max(2.0, backend_case.ttl * 4)
    timings = {
        "lease_duration": lease,
        "renew_deadline": lease * 0.75,
        "retry_interval": 0.1,
        "backend_timeout": lease * 0.5,
    }
    election = "metrics-handover"
    first = LeaderElection(
        election, backend=backend_case.backend, worker="w1", **timings
    )
    other_backend = backend_case.make()
    if other_backend is not backend_case.backend:
        await other_backend.__aenter__()
    second = LeaderElection(election, backend=other_backend, worker="w2", **timings)
    manager_one, manager_two = TaskManager(), TaskManager()
    manager_one.add_task(first)
    manager_two.add_task(second)

    def status() -> int:
        return int(otel.value("grelmicro.leader.status", election_name=election))

    def transitions() -> int:
        return int(otel.value("grelmicro.leader.transitions", election_name=election))

    stop_two = anyio.Event()

    async def run_two() -> None:
        async with manager_two:
            await stop_two.wait()

    deadline = backend_case.expiry_deadline(lease) + 5
    async with anyio.create_task_group() as group:
        async with manager_one:
            with anyio.fail_after(deadline):
                await first.wait_for_leader()
            assert status() == 1
            assert transitions() == 1
            group.start_soon(run_two)
            await anyio.sleep(timings["retry_interval"] * 5)  # a few rounds
            assert not second.is_leader()
            assert first.is_leader()
            # Renewals and the follower's attempts are no transitions.
            assert transitions() == 1
        # The first manager stopped and released the lease: the second leads.
        with anyio.fail_after(deadline):
            await second.wait_for_leader()
        assert status() == 1
        assert transitions() == 2
        stop_two.set()
    busy = otel.points("grelmicro.lock.acquire.duration")
    outcomes_seen = {
        dict(key)["lock.outcome"] for key in busy if dict(key)["lock.kind"] == "leader"
    }
    assert {"acquired", "busy"} <= outcomes_seen


async def test_cron_runs_and_missed_fires(otel: Otel) -> None:
    """Cron fires that ran count success; fires nobody ran count missed."""
    if not hasattr(TaskManager, "cron"):
        pytest.skip("cron tasks are not available")
    executions = 0
    async with MemorySyncBackend() as backend:

        def make_manager() -> TaskManager:
            manager = TaskManager()

            @manager.cron(
                "* * * * * *",
                name="every-second",
                backend=backend,
                misfire_grace_seconds=0.5,
            )
            async def every_second() -> None:
                nonlocal executions
                executions += 1

            return manager

        async with make_manager():
            with anyio.fail_after(10):
                while executions < 2:
                    await anyio.sleep(0.05)
        ran = executions
        assert outcomes(otel, "every-second") == {"success": ran}
        assert histogram_count(otel, "grelmicro.task.lag", "every-second") == ran
        # Nobody up for 3 fires: when a worker is back, they are missed (the
        # most recent one may still run, within misfire_grace_seconds).
        await anyio.sleep(9.2)
        async with make_manager():
            await anyio.sleep(1.5)
    counted = outcomes(otel, "every-second")
    assert counted["success"] == executions
    assert counted.get("missed", 0) >= 2, counted
    spans = task_spans(otel, "every-second")
    assert len(spans) == executions  # a missed fire has no span
