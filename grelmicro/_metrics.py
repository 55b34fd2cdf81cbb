"""Hooks the scheduler and the primitives call to record metrics and traces.

This module is the only place that knows about OpenTelemetry (extra `otel`).
The rest of grelmicro calls the functions below; when OpenTelemetry is not
installed, or no provider is configured, they do nothing and cost next to
nothing (callers on hot paths may test `ENABLED.on` first).

Outcomes of a run: ``success``, ``error``, ``skipped``, ``lost``, ``missed``.
Lock kinds: ``lock``, ``tasklock``, ``leader``, ``cron``; lock outcomes:
``acquired``, ``busy``, ``error``.
"""

from __future__ import annotations


class _Enabled:
    """Whether metrics are recorded (set when a provider is found)."""

    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = False


ENABLED = _Enabled()


class RunRecorder:
    """Records one run: started by `start_run`, ended by `finish`."""

    __slots__ = ()

    def set_fencing_token(self, token: int | None) -> None:
        """Attach the run's fencing token (to the span)."""

    def finish(self, outcome: str, error: BaseException | None = None) -> None:
        """End the run with `outcome` (and the error for ``error``)."""


_NOOP_RECORDER = RunRecorder()


def start_run(
    name: str, *, scheduled_at: float, fencing_token: int | None = None
) -> RunRecorder:
    """A run of task `name` starts now; `scheduled_at` is its due time (epoch s)."""
    return _NOOP_RECORDER


def count_outcome(name: str, outcome: str) -> None:
    """A run of `name` that did not start: ``skipped`` or ``missed``."""


def lock_acquire(kind: str, outcome: str, seconds: float) -> None:
    """One acquisition attempt of a lock of `kind` took `seconds`."""


def leader_status(name: str, is_leader: bool) -> None:
    """The leadership of election `name` on this worker is now `is_leader`."""
