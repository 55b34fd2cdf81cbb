"""Cron schedules: the expression, the time zone and the daylight-saving rule.

Parsing and matching are cronsim's (the expression is handed to it as is,
after `@daily`-style macros are expanded and a Quartz `?` is read as `*`).
This module adds what no cron library does the same way for every form of
expression: the wall-clock rule around daylight-saving changes.

The schedule is iterated in *naive wall-clock time* of the task's time zone,
so every wall-clock match is seen exactly once, then each match is mapped to
an instant:

- a wall time that exists once is that instant;
- a wall time repeated by a fall-back is its first pass (``fold=0``);
- a wall time skipped by a spring-forward is the instant of the jump (the
  first instant after it); several skipped matches, and a match at the wall
  time the jump lands on, are then one fire at that instant.

The mapping never goes backwards, so fires come in order, each once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from grelmicro._validate import SettingsValidationError

#: The macros accepted in place of five fields.
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

#: Upper bound on matches examined to find one fire (a guard, never reached
#: by a valid schedule: at most one hour of per-second matches is skipped).
_MAX_SKIP = 10_000

_ONE_SECOND = timedelta(seconds=1)
_EPOCH = datetime(1970, 1, 1)  # naive: the wall-clock epoch


def resolve_timezone(timezone: Any) -> tzinfo:
    """An IANA name or a `tzinfo` -> a `tzinfo`; `SettingsValidationError` otherwise."""
    if isinstance(timezone, tzinfo):
        return timezone
    if not isinstance(timezone, str) or not timezone:
        msg = (
            "timezone must be an IANA time zone name (such as 'Europe/Zurich') "
            f"or a tzinfo, got {timezone!r}"
        )
        raise SettingsValidationError(msg)
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        msg = (
            f"timezone {timezone!r} is not a known IANA time zone name (such as "
            "'UTC', 'Europe/Zurich' or 'America/New_York')"
        )
        raise SettingsValidationError(msg) from exc


def normalize_expression(expression: Any) -> str:
    """Validate a cron expression; the five- or six-field form cronsim reads."""
    if not isinstance(expression, str):
        msg = f"cron expression must be a str, got {expression!r}"
        raise SettingsValidationError(msg)
    return _normalize(expression)


@lru_cache(maxsize=1024)
def _normalize(expression: str) -> str:
    """`normalize_expression` for a str, remembered: thousands of tasks on one
    expression parse it once (an invalid one raises each time)."""
    text = " ".join(expression.split())
    if text.startswith("@"):
        macro = MACROS.get(text.lower())
        if macro is None:
            msg = (
                f"invalid cron expression {expression!r}: unknown macro, expected "
                f"one of {', '.join(MACROS)}"
            )
            raise SettingsValidationError(msg)
        return macro
    fields = text.split(" ") if text else []
    if len(fields) not in (5, 6):
        msg = (
            f"invalid cron expression {expression!r}: expected 5 fields (minute "
            "hour day-of-month month day-of-week) or 6 with a leading seconds "
            f"field, got {len(fields)}"
        )
        raise SettingsValidationError(msg)
    # Quartz writes "?" ("no specific value") in one of the two day fields.
    for index in (len(fields) - 3, len(fields) - 1):
        if fields[index] == "?":
            fields[index] = "*"
    normalized = " ".join(fields)
    try:
        iterator = CronSim(normalized, datetime(2000, 1, 1))
    except CronSimError as exc:
        msg = f"invalid cron expression {expression!r}: {_explain(exc)}"
        raise SettingsValidationError(msg) from exc
    try:
        next(iterator)
    except StopIteration:
        msg = f"invalid cron expression {expression!r}: it never matches"
        raise SettingsValidationError(msg) from None
    return normalized


def _explain(exc: CronSimError) -> str:
    text = str(exc) or "cannot be parsed"
    if text.startswith("Bad "):
        return f"bad {text[4:]} field"
    return text[:1].lower() + text[1:]


class CronSchedule:
    """The fire times of a cron expression in a time zone, as epoch seconds.

    Every method is pure: it reads no clock (callers pass the time).
    """

    __slots__ = ("_tz", "expression", "normalized", "timezone")

    def __init__(self, expression: str, timezone: str | tzinfo = "UTC") -> None:
        self.expression = expression
        self.normalized = normalize_expression(expression)
        self._tz = resolve_timezone(timezone)
        self.timezone = timezone

    @property
    def tz(self) -> tzinfo:
        """The schedule's time zone."""
        return self._tz

    def __repr__(self) -> str:
        return f"CronSchedule({self.expression!r}, timezone={self.timezone!r})"

    # Wall clock <-> instants ---------------------------------------------------------

    def _wall(self, instant: float) -> datetime:
        """The aware local time of `instant` (its `fold` tells the second pass)."""
        return datetime.fromtimestamp(instant, self._tz)

    def to_instant(self, naive: datetime) -> float:
        """The instant (epoch s) a wall-clock match fires at, per the DST rule."""
        tz = self._tz
        first = naive.replace(tzinfo=tz, fold=0)
        instant = first.timestamp()
        if datetime.fromtimestamp(instant, tz).replace(tzinfo=None) == naive:
            return instant  # exists (once, or first pass of a repeated time)
        # Skipped by a jump forward: the instant of the jump. Before it the
        # wall clock reads earlier than `naive`, from it on later.
        low = math.floor(naive.replace(tzinfo=tz, fold=1).timestamp())
        high = math.ceil(instant)
        while low < high:
            middle = (low + high) // 2
            if self._wall(middle).replace(tzinfo=None) > naive:
                high = middle
            else:
                low = middle + 1
        return float(low)

    def _naive_start(self, instant: float) -> datetime:
        """The wall-clock time to iterate from for `instant`.

        In the second pass of a repeated hour, the matches up to the end of
        that hour already fired on the first pass: start at its end.
        """
        wall = self._wall(instant)
        naive = wall.replace(tzinfo=None, fold=0)
        if not wall.fold:
            return naive
        # Smallest whole second after `naive` that is no longer ambiguous.
        low = 0
        span = wall.replace(fold=0).utcoffset() or timedelta()
        span -= wall.utcoffset() or timedelta()
        high = max(int(abs(span.total_seconds())), 1)
        base = naive.replace(microsecond=0)
        while low < high:
            middle = (low + high) // 2
            probe = base + timedelta(seconds=middle)
            if self._ambiguous(probe):
                low = middle + 1
            else:
                high = middle
        return base + timedelta(seconds=low)

    def _ambiguous(self, naive: datetime) -> bool:
        tz = self._tz
        return bool(
            naive.replace(tzinfo=tz, fold=0).utcoffset()
            != naive.replace(tzinfo=tz, fold=1).utcoffset()
        )

    # Iteration ---------------------------------------------------------------------

    def iter_after(self, instant: float) -> Iterator[float]:
        """The fires strictly after `instant`, in order (an endless iterator).

        It ends only if the expression stops matching (more than 50 years
        without a match).
        """
        start = self._naive_start(instant)
        if start != self._wall(instant).replace(tzinfo=None, fold=0):
            start -= _ONE_SECOND  # the end of the repeated hour is a candidate
        last = instant
        skipped = 0
        for naive in CronSim(self.normalized, start):
            fire = self.to_instant(naive)
            if fire <= last:
                skipped += 1
                if skipped > _MAX_SKIP:  # pragma: no cover - a guard
                    return
                continue
            skipped = 0
            last = fire
            yield fire

    def next_after(self, instant: float) -> float | None:
        """The first fire strictly after `instant`; None if there is none."""
        return next(self.iter_after(instant), None)

    def latest_at_or_before(self, instant: float) -> float | None:
        """The latest fire at or before `instant`; None if none in 50 years."""
        start = self._naive_start(instant)
        wall = self._wall(instant)
        if not wall.fold:
            # cronsim's reverse iteration yields the start itself when it has
            # a fraction of a second (and matches): "at or before".
            start = wall.replace(tzinfo=None) + timedelta(microseconds=1)
        for skipped, naive in enumerate(CronSim(self.normalized, start, reverse=True)):
            fire = self.to_instant(naive)
            if fire <= instant:
                return fire
            if skipped > _MAX_SKIP:  # pragma: no cover - a guard
                break
        return None

    def count_between(self, after: float, before: float, limit: int) -> int:
        """How many fires lie strictly between `after` and `before` (at most `limit`)."""
        count = 0
        for fire in self.iter_after(after):
            if fire >= before or count >= limit:
                break
            count += 1
        return count


def to_ms(instant: float) -> int:
    """A fire's identity on the backend: whole milliseconds since the epoch."""
    return round(instant * 1000)


def to_datetime(instant: float) -> datetime:
    """An aware UTC datetime of `instant`."""
    return datetime.fromtimestamp(instant, UTC)


__all__ = [
    "MACROS",
    "CronSchedule",
    "normalize_expression",
    "resolve_timezone",
    "to_datetime",
    "to_ms",
]
