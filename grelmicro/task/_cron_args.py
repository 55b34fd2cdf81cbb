"""Cron tasks: argument checks, errors and the (injectable) wall clock."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import tzinfo
from typing import Any, Protocol

from grelmicro import _metrics
from grelmicro._validate import SettingsValidationError, non_empty_str, number
from grelmicro.sync._primitive import check_backend, worker_id
from grelmicro.sync.errors import SyncBackendError
from grelmicro.sync.lock import Lock
from grelmicro.task._cron_schedule import CronSchedule, to_datetime
from grelmicro.task._interval import SyncErrorLog as IntervalSyncErrorLog
from grelmicro.task.errors import CronBackendError, FireClaimUnsupportedError

#: Longest single sleep while waiting for a fire: the wall clock is read again
#: at least this often, so a clock step (NTP) is followed.
MAX_SLEEP = 30.0

#: At most this many missed fires are counted (the WARNING says "at least").
MISSED_COUNT_LIMIT = 100_000

logger = logging.getLogger("grelmicro.task")


def report_missed(
    name: str,
    missed: int,
    *,
    capped: bool,
    after: float,
    due: float,
    grace: float | None,
    at_start: bool = False,
) -> None:
    """Count `missed` fires and log them in one WARNING.

    `grace` is set when the latest missed fire (`due`) was too old to run.
    `at_start`: fires found unclaimed and too old for the grace by a worker
    that just started, after an outage shorter than the catch-up horizon
    (they are left unclaimed, so a worker whose clock is behind may still
    run them).
    """
    for _ in range(missed):
        _metrics.count_outcome(name, "missed")
    latest = to_datetime(due).isoformat()
    if grace is None:
        detail = f"running the latest one, due {latest}"
    else:
        detail = (
            f"the latest one, due {latest}, is older than "
            f"misfire_grace_seconds={grace!r}"
        )
    if at_start:
        detail += "; not run here, a worker whose clock is behind may still run them"
    logger.warning(
        "Cron task missed %s%d fire(s) while no worker was up: %s "
        "(after the fire of %s; %s)",
        "at least " if capped else "",
        missed,
        name,
        to_datetime(after).isoformat(),
        detail,
    )


class Clock(Protocol):
    """The wall clock a cron task reads (injectable for tests)."""

    def now(self) -> float:
        """Seconds since the Unix epoch."""
        ...

    async def sleep_until(self, instant: float) -> None:
        """Return once `now()` is at or past `instant`."""
        ...


class WallClock:
    """The system's wall clock (`time.time`)."""

    def now(self) -> float:
        """Seconds since the Unix epoch."""
        return time.time()

    async def sleep_until(self, instant: float) -> None:
        """Sleep until the wall clock reaches `instant` (re-read every 30 s).

        The event loop's timer runs on the monotonic clock: a millisecond
        more per sleep keeps it from waking just before the wall clock gets
        there (and sleeping a second time for nothing).
        """
        while (remaining := instant - time.time()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(min(remaining + 0.001, MAX_SLEEP))


def check_cron_args(
    expression: Any,
    *,
    name: Any,
    timezone: Any,
    local: Any,
    misfire_grace_seconds: Any,
    at_least_once: Any,
    lease_seconds: Any,
    sync: Any,
    backend: Any,
    worker: Any,
    cancel_on_loss: Any,
) -> tuple[CronSchedule, float | None, float, str | None]:
    """Validate the arguments of `cron()`: (schedule, grace, lease, worker).

    Every problem is a `SettingsValidationError` naming the parameter.
    """
    schedule = CronSchedule(expression, _timezone_arg(timezone))
    if name is not None:
        non_empty_str("name", name)
    for flag, value in (
        ("local", local),
        ("at_least_once", at_least_once),
        ("cancel_on_loss", cancel_on_loss),
    ):
        if not isinstance(value, bool):
            msg = f"{flag} must be a bool, got {value!r}"
            raise SettingsValidationError(msg)
    grace = (
        None
        if misfire_grace_seconds is None
        else number("misfire_grace_seconds", misfire_grace_seconds)
    )
    lease = number("lease_seconds", lease_seconds)
    if sync is not None and not isinstance(sync, Lock):
        msg = f"sync must be a grelmicro.sync.Lock (a resource lock), got {sync!r}"
        raise SettingsValidationError(msg)
    check_backend(backend)
    if local and at_least_once:
        msg = (
            "at_least_once=True needs a coordinated task: it cannot be combined "
            "with local=True (every worker runs every fire)"
        )
        raise SettingsValidationError(msg)
    if local and backend is not None:
        msg = "backend= is unused with local=True (no backend is used): drop one"
        raise SettingsValidationError(msg)
    worker_name = None if worker is None else worker_id(worker)
    return schedule, grace, lease, worker_name


def _timezone_arg(timezone: Any) -> str | tzinfo:
    if isinstance(timezone, str | tzinfo):
        return timezone
    msg = (
        "timezone must be an IANA time zone name (such as 'Europe/Zurich') or "
        f"a tzinfo, got {timezone!r}"
    )
    raise SettingsValidationError(msg)


class SyncErrorLog:
    """Backend-error logging for a task: the same throttled log as interval
    tasks (`grelmicro.task._interval.SyncErrorLog`), as a mixin."""

    _name: str
    _sync_error_log: IntervalSyncErrorLog | None = None

    def _errors(self) -> IntervalSyncErrorLog:
        log = self._sync_error_log
        if log is None:
            log = self._sync_error_log = IntervalSyncErrorLog(self._name)
        return log

    def _log_sync_error(self, exc: SyncBackendError) -> None:
        self._errors().error(exc)

    def _sync_recovered(self) -> None:
        self._errors().recovered()


__all__ = [
    "MISSED_COUNT_LIMIT",
    "Clock",
    "CronBackendError",
    "FireClaimUnsupportedError",
    "SyncErrorLog",
    "WallClock",
    "check_cron_args",
    "report_missed",
]
