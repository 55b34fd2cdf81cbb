"""Hooks the scheduler and the primitives call to record metrics and traces.

This module is the only place that knows about OpenTelemetry (extra `otel`).
The rest of grelmicro calls the functions below; when OpenTelemetry is not
installed, or no provider is configured, they do nothing and cost next to
nothing (callers on hot paths may test `ENABLED.on` first).

Outcomes of a run: ``success``, ``error``, ``skipped``, ``lost``, ``missed``.
Lock kinds: ``lock``, ``tasklock``, ``leader``, ``cron``; lock outcomes:
``acquired``, ``busy``, ``error``.

Instruments (meter and tracer name ``grelmicro``, durations in seconds):

- ``grelmicro.task.runs`` counter: ``task.name``, ``task.outcome``, and
  ``error.type`` for ``error``.
- ``grelmicro.task.duration`` histogram: ``task.name``, ``task.outcome``
  (and ``error.type``).
- ``grelmicro.task.lag`` histogram (start minus scheduled time): ``task.name``.
- ``grelmicro.task.active`` up-down counter: ``task.name``.

The runs counter and the active up-down counter are asynchronous
(observable) instruments: runs are counted in dicts and reported when the
metrics are collected. This spares three SDK measurements per run (each
costs microseconds: the SDK checks and hashes the attributes every time),
leaving two per run (lag and duration) when a provider is configured.
- ``grelmicro.leader.status`` gauge (1 leader, 0 not): ``election.name``.
- ``grelmicro.leader.transitions`` counter (times this worker became the
  leader): ``election.name``.
- ``grelmicro.lock.acquire.duration`` histogram: ``lock.kind``,
  ``lock.outcome``.
- One span per run, ``grelmicro.task.run``: ``task.name``, ``task.outcome``,
  ``task.fencing_token``, ``task.scheduled_at``; an error sets the span's
  status to error and adds an exception event.

When is a provider "configured"? OpenTelemetry's global getters always return
a provider: a proxy (or a no-op) until the application sets a real one. The
proxy and no-op classes are defined by the `opentelemetry-api` package itself
(`opentelemetry.metrics`, `opentelemetry.trace`), and any real provider (the
SDK's, a vendor's) is defined elsewhere; so a provider counts as configured
when its class does not come from those API modules. This relies on no
private attribute or class, only on where the API package defines its
stand-ins. A provider may be set after grelmicro is imported (at application
start-up): while nothing is configured, `ENABLED.on` checks again at most
once per `RECHECK_SECONDS` (and `refresh()` checks at once). The check never
imports OpenTelemetry: if the application has not imported the API, nobody
can have configured a provider (except through the ``OTEL_PYTHON_*_PROVIDER``
environment variables, which are honoured).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "ENABLED",
    "RECHECK_SECONDS",
    "RunRecorder",
    "count_outcome",
    "leader_status",
    "lock_acquire",
    "refresh",
    "start_run",
    "use_providers",
]

#: Seconds between two checks for a provider while none is configured.
RECHECK_SECONDS = 1.0

METER_NAME = "grelmicro"

OUTCOMES = ("success", "error", "skipped", "lost", "missed")
LOCK_KINDS = ("lock", "tasklock", "leader", "cron")
LOCK_OUTCOMES = ("acquired", "busy", "error")

# Bucket boundaries (seconds) advised to the SDK: its defaults are made for
# milliseconds and would put every run in the first bucket.
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
LAG_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
LOCK_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_METER_ENV = "OTEL_PYTHON_METER_PROVIDER"
_TRACER_ENV = "OTEL_PYTHON_TRACER_PROVIDER"
_API_MODULES = ("opentelemetry.metrics", "opentelemetry.trace")

_monotonic = time.monotonic
_time = time.time


class _Instruments:
    """The instruments of one meter provider."""

    __slots__ = (
        "active",
        "duration",
        "lag",
        "leader_gauge",
        "leader_states",
        "lock_duration",
        "runs",
        "transitions",
    )

    def __init__(self, provider: Any) -> None:
        from grelmicro import __version__

        meter = provider.get_meter(METER_NAME, __version__)
        #: Runs per (task, outcome, error type), reported by grelmicro.task.runs.
        self.runs: dict[tuple[str, str, str | None], int] = {}
        meter.create_observable_counter(
            "grelmicro.task.runs",
            callbacks=[self._observe_runs],
            unit="{run}",
            description="Runs of tasks, by outcome.",
        )
        self.duration = _histogram(
            meter,
            "grelmicro.task.duration",
            "Duration of task runs.",
            DURATION_BUCKETS,
        )
        self.lag = _histogram(
            meter,
            "grelmicro.task.lag",
            "Start of a run minus its scheduled time.",
            LAG_BUCKETS,
        )
        #: Runs in progress per task, reported by `grelmicro.task.active`.
        self.active: dict[str, int] = {}
        meter.create_observable_up_down_counter(
            "grelmicro.task.active",
            callbacks=[self._observe_active],
            unit="{run}",
            description="Runs in progress.",
        )
        self.transitions = meter.create_counter(
            "grelmicro.leader.transitions",
            unit="{transition}",
            description="Times this worker became the leader.",
        )
        self.lock_duration = _histogram(
            meter,
            "grelmicro.lock.acquire.duration",
            "Duration of lock acquisition attempts.",
            LOCK_BUCKETS,
        )
        #: Last status per election (for transitions and the observable gauge).
        self.leader_states: dict[str, bool] = {}
        description = "Whether this worker is the leader (1) or not (0)."
        create_gauge = getattr(meter, "create_gauge", None)
        if create_gauge is not None:  # opentelemetry-api >= 1.23
            self.leader_gauge: Any = create_gauge(
                "grelmicro.leader.status", unit="1", description=description
            )
        else:
            self.leader_gauge = None
            meter.create_observable_gauge(
                "grelmicro.leader.status",
                callbacks=[self._observe_leaders],
                unit="1",
                description=description,
            )

    def _observe_runs(self, _options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        return [
            Observation(count, _outcome_attrs(*key))
            for key, count in list(self.runs.items())
        ]

    def _observe_active(self, _options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        return [
            Observation(count, _task_attrs(name))
            for name, count in list(self.active.items())
        ]

    def _observe_leaders(self, _options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        return [
            Observation(1 if leading else 0, {"election.name": name})
            for name, leading in list(self.leader_states.items())
        ]


def _histogram(
    meter: Any, name: str, description: str, buckets: Sequence[float]
) -> Any:
    try:
        return meter.create_histogram(
            name,
            unit="s",
            description=description,
            explicit_bucket_boundaries_advisory=list(buckets),
        )
    except TypeError:  # opentelemetry-api < 1.23: no advisory parameter
        return meter.create_histogram(name, unit="s", description=description)


class _Tracing:
    """The tracer of one tracer provider and the span helpers."""

    __slots__ = (
        "attach",
        "detach",
        "error_status",
        "get_current_span",
        "set_in",
        "tracer",
    )

    def __init__(self, provider: Any) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import Status, StatusCode

        from grelmicro import __version__

        self.tracer = provider.get_tracer(METER_NAME, __version__)
        self.attach: Callable[[Any], Any] = context.attach
        self.detach: Callable[[Any], None] = context.detach
        self.set_in: Callable[[Any], Any] = trace.set_span_in_context
        self.get_current_span: Callable[[], Any] = trace.get_current_span

        def error_status(description: str) -> Any:
            return Status(StatusCode.ERROR, description)

        self.error_status: Callable[[str], Any] = error_status


class _State:
    """What is recorded now: instruments and tracing, each None when off."""

    __slots__ = (
        "explicit",
        "instruments",
        "meter_provider",
        "tracer_provider",
        "tracing",
    )

    def __init__(self) -> None:
        self.instruments: _Instruments | None = None
        self.tracing: _Tracing | None = None
        self.meter_provider: Any = None
        self.tracer_provider: Any = None
        #: Providers given by `use_providers` (the globals are then ignored).
        self.explicit = False


_state = _State()


class _Enabled:
    """Whether metrics or traces are recorded: `ENABLED.on`.

    Reading `on` is cheap: once both a meter and a tracer provider are
    configured it returns True at once; before, it looks for providers at
    most once per `RECHECK_SECONDS`.
    """

    __slots__ = ("_next_check", "_on", "_settled")

    def __init__(self) -> None:
        self._on = False
        #: Both signals are configured: nothing can change any more.
        self._settled = False
        self._next_check = -float("inf")

    @property
    def on(self) -> bool:
        """Whether a provider is configured (metrics or traces are recorded)."""
        if self._settled:
            return self._on
        now = _monotonic()
        if now < self._next_check:
            return self._on
        self._next_check = now + RECHECK_SECONDS
        return _check()

    def _set(self, *, on: bool, settled: bool) -> None:
        self._on = on
        self._settled = settled

    def _expire(self) -> None:
        self._next_check = -float("inf")


ENABLED = _Enabled()


def _is_stand_in(provider: object) -> bool:
    """Whether `provider` is the API's proxy or no-op (nothing configured)."""
    module = type(provider).__module__
    return any(
        module == prefix or module.startswith(prefix + ".") for prefix in _API_MODULES
    )


def _global_providers() -> tuple[Any, Any]:
    """The configured global (meter, tracer) providers, None where none is."""
    modules = sys.modules
    meter_provider: Any = None
    tracer_provider: Any = None
    if "opentelemetry.metrics" in modules or _METER_ENV in os.environ:
        try:
            from opentelemetry.metrics import get_meter_provider
        except ImportError:
            pass
        else:
            meter_candidate = get_meter_provider()
            if not _is_stand_in(meter_candidate):
                meter_provider = meter_candidate
    if "opentelemetry.trace" in modules or _TRACER_ENV in os.environ:
        try:
            from opentelemetry.trace import get_tracer_provider
        except ImportError:
            pass
        else:
            tracer_candidate = get_tracer_provider()
            if not _is_stand_in(tracer_candidate):
                tracer_provider = tracer_candidate
    return meter_provider, tracer_provider


def _check() -> bool:
    """Look for providers, build the instruments of new ones; return `on`."""
    state = _state
    if state.explicit:
        meter_provider, tracer_provider = state.meter_provider, state.tracer_provider
    else:
        meter_provider, tracer_provider = _global_providers()
    if meter_provider is not state.meter_provider or state.instruments is None:
        state.meter_provider = meter_provider
        state.instruments = (
            _Instruments(meter_provider) if meter_provider is not None else None
        )
    if tracer_provider is not state.tracer_provider or state.tracing is None:
        state.tracer_provider = tracer_provider
        state.tracing = (
            _Tracing(tracer_provider) if tracer_provider is not None else None
        )
    on = state.instruments is not None or state.tracing is not None
    settled = state.explicit or (
        state.instruments is not None and state.tracing is not None
    )
    ENABLED._set(on=on, settled=settled)
    return on


def refresh() -> bool:
    """Look for configured providers now (e.g. when a manager starts).

    Returns whether anything is recorded.
    """
    ENABLED._expire()
    return ENABLED.on


def use_providers(
    *, meter_provider: Any = None, tracer_provider: Any = None, reset: bool = False
) -> None:
    """Record through these providers instead of the global ones (tests).

    None for a signal turns it off. `reset=True` goes back to the global
    providers (the other arguments are then ignored).
    """
    state = _state
    state.instruments = None
    state.tracing = None
    state.meter_provider = None
    state.tracer_provider = None
    if reset:
        state.explicit = False
    else:
        state.explicit = True
        state.meter_provider = meter_provider
        state.tracer_provider = tracer_provider
        state.instruments = (
            _Instruments(meter_provider) if meter_provider is not None else None
        )
        state.tracing = (
            _Tracing(tracer_provider) if tracer_provider is not None else None
        )
    ENABLED._set(on=False, settled=False)
    ENABLED._expire()
    _check()


# Attribute sets are built once per key and reused (the SDK hashes them).
_task_attributes: dict[str, dict[str, str]] = {}
_outcome_attributes: dict[tuple[str, str, str | None], dict[str, str]] = {}
_lock_attributes: dict[tuple[str, str], dict[str, str]] = {}
_election_attributes: dict[str, dict[str, str]] = {}


def _task_attrs(name: str) -> dict[str, str]:
    attributes = _task_attributes.get(name)
    if attributes is None:
        attributes = _task_attributes[name] = {"task.name": name}
    return attributes


def _outcome_attrs(name: str, outcome: str, error_type: str | None) -> dict[str, str]:
    key = (name, outcome, error_type)
    attributes = _outcome_attributes.get(key)
    if attributes is None:
        attributes = {"task.name": name, "task.outcome": outcome}
        if error_type is not None:
            attributes["error.type"] = error_type
        if len(_outcome_attributes) < 10_000:  # bounded: error types may vary
            _outcome_attributes[key] = attributes
    return attributes


def _error_type(error: BaseException | None) -> str:
    if error is None:
        return "_OTHER"  # OpenTelemetry's value when the type is unknown
    return type(error).__qualname__


class RunRecorder:
    """Records one run: started by `start_run`, ended by `finish`."""

    __slots__ = ()

    def set_fencing_token(self, token: int | None) -> None:
        """Attach the run's fencing token (to the span)."""

    def finish(self, outcome: str, error: BaseException | None = None) -> None:
        """End the run with `outcome` (and the error for ``error``)."""


_NOOP_RECORDER = RunRecorder()


class _Recorder(RunRecorder):
    """A run being recorded: lag at start, then counts, duration and span."""

    __slots__ = (
        "_instruments",
        "_name",
        "_owner",
        "_span",
        "_started",
        "_token",
        "_tracing",
    )

    def __init__(
        self,
        name: str,
        scheduled_at: float,
        fencing_token: int | None,
        instruments: _Instruments | None,
        tracing: _Tracing | None,
    ) -> None:
        self._name = name
        self._instruments = instruments
        self._tracing = tracing
        self._span: Any = None
        self._token: Any = None
        self._owner: object = None
        if tracing is not None:
            attributes: dict[str, Any] = {
                "task.name": name,
                "task.scheduled_at": datetime.fromtimestamp(
                    scheduled_at, UTC
                ).isoformat(),
            }
            if fencing_token is not None:
                attributes["task.fencing_token"] = fencing_token
            span = tracing.tracer.start_span(
                "grelmicro.task.run", attributes=attributes
            )
            self._span = span
            # The run's span is the current span until `finish`: spans the
            # task function creates are its children.
            self._token = tracing.attach(tracing.set_in(span))
            self._owner = _context_owner()
        if instruments is not None:
            attributes = _task_attrs(name)
            lag = _time() - scheduled_at
            instruments.lag.record(lag if lag > 0.0 else 0.0, attributes)
            active = instruments.active
            active[name] = active.get(name, 0) + 1
        self._started = _monotonic()

    def set_fencing_token(self, token: int | None) -> None:
        """Attach the run's fencing token (to the span)."""
        if token is not None and self._span is not None:
            self._span.set_attribute("task.fencing_token", token)

    def finish(self, outcome: str, error: BaseException | None = None) -> None:
        """End the run with `outcome` (and the error for ``error``)."""
        elapsed = _monotonic() - self._started
        instruments = self._instruments
        if instruments is not None:
            active = instruments.active
            active[self._name] -= 1
            error_type = _error_type(error) if outcome == "error" else None
            key = (self._name, outcome, error_type)
            runs = instruments.runs
            runs[key] = runs.get(key, 0) + 1
            attributes = _outcome_attrs(self._name, outcome, error_type)
            instruments.duration.record(elapsed, attributes)
        span = self._span
        if span is None:
            return
        self._span = None
        tracing = self._tracing
        assert tracing is not None
        span.set_attribute("task.outcome", outcome)
        if outcome == "error":
            span.set_attribute("error.type", _error_type(error))
            if error is not None:
                span.record_exception(error)
            span.set_status(tracing.error_status(_describe(error)))
        # Restore the context only where start_run set it: the same task (a
        # context token cannot be reset from another context, and the
        # task's context dies with it anyway).
        if _context_owner() == self._owner and tracing.get_current_span() is span:
            tracing.detach(self._token)
        self._token = None
        span.end()


def _context_owner() -> object:
    """The asyncio task running now, else the thread: whose context it is."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running event loop
        task = None
    return task if task is not None else threading.get_ident()


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "error"
    text = str(error)
    return f"{type(error).__qualname__}: {text}" if text else type(error).__qualname__


def start_run(
    name: str, *, scheduled_at: float, fencing_token: int | None = None
) -> RunRecorder:
    """A run of task `name` starts now; `scheduled_at` is its due time (epoch s).

    Call `finish` on the result from the same task (context): in between, the
    run's span is the current span.
    """
    if not ENABLED.on:
        return _NOOP_RECORDER
    state = _state
    return _Recorder(
        name, scheduled_at, fencing_token, state.instruments, state.tracing
    )


def count_outcome(name: str, outcome: str) -> None:
    """A run of `name` that did not start: ``skipped`` or ``missed``."""
    if not ENABLED.on:
        return
    instruments = _state.instruments
    if instruments is not None:
        key = (name, outcome, None)
        runs = instruments.runs
        runs[key] = runs.get(key, 0) + 1


def lock_acquire(kind: str, outcome: str, seconds: float) -> None:
    """One acquisition attempt of a lock of `kind` took `seconds`."""
    if not ENABLED.on:
        return
    instruments = _state.instruments
    if instruments is None:
        return
    key = (kind, outcome)
    attributes = _lock_attributes.get(key)
    if attributes is None:
        attributes = _lock_attributes[key] = {
            "lock.kind": kind,
            "lock.outcome": outcome,
        }
    instruments.lock_duration.record(seconds if seconds > 0.0 else 0.0, attributes)


def leader_status(name: str, is_leader: bool) -> None:
    """The leadership of election `name` on this worker is now `is_leader`.

    May be called on every round: a transition is counted only when this
    worker becomes the leader.
    """
    if not ENABLED.on:
        return
    instruments = _state.instruments
    if instruments is None:
        return
    attributes = _election_attributes.get(name)
    if attributes is None:
        attributes = _election_attributes[name] = {"election.name": name}
    states = instruments.leader_states
    was_leader = states.get(name, False)
    states[name] = is_leader
    if instruments.leader_gauge is not None:
        instruments.leader_gauge.set(1 if is_leader else 0, attributes)
    if is_leader and not was_leader:
        instruments.transitions.add(1, attributes)
