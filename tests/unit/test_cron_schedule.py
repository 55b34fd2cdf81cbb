"""Cron schedules: expressions, time zones and the daylight-saving rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from grelmicro.errors import SettingsValidationError
from grelmicro.task._cron_schedule import CronSchedule, to_ms

ZURICH = ZoneInfo("Europe/Zurich")
NEW_YORK = ZoneInfo("America/New_York")


def at(tz: timezone | ZoneInfo, *parts: int, fold: int = 0) -> float:
    return datetime(*parts, tzinfo=tz, fold=fold).timestamp()  # type: ignore[arg-type,misc]


def fires(expression: str, tz: str, start: float, end: float) -> list[float]:
    schedule = CronSchedule(expression, tz)
    result = []
    for fire in schedule.iter_after(start):
        if fire > end:
            break
        result.append(fire)
    return result


def local(instants: list[float], tz: ZoneInfo) -> list[str]:
    return [datetime.fromtimestamp(t, tz).strftime("%H:%M:%S%z") for t in instants]


# Forms of expression ---------------------------------------------------------------


def test_five_fields_every_minute() -> None:
    start = at(UTC, 2026, 1, 1, 0, 0, 30)
    assert fires("* * * * *", "UTC", start, start + 150) == [
        at(UTC, 2026, 1, 1, 0, 1),
        at(UTC, 2026, 1, 1, 0, 2),
        at(UTC, 2026, 1, 1, 0, 3),
    ]


def test_six_fields_lead_with_seconds() -> None:
    start = at(UTC, 2026, 1, 1, 0, 0, 0)
    assert fires("*/20 * * * * *", "UTC", start, start + 60) == [
        start + 20,
        start + 40,
        start + 60,
    ]
    # The seconds field is the first one: "0 30 2 * * *" is 02:30:00 daily.
    assert fires("0 30 2 * * *", "UTC", start, start + 86400) == [
        at(UTC, 2026, 1, 1, 2, 30)
    ]


@pytest.mark.parametrize(
    ("macro", "expected"),
    [
        ("@yearly", datetime(2027, 1, 1, tzinfo=UTC)),
        ("@annually", datetime(2027, 1, 1, tzinfo=UTC)),
        ("@monthly", datetime(2026, 2, 1, tzinfo=UTC)),
        ("@weekly", datetime(2026, 1, 4, tzinfo=UTC)),  # a Sunday
        ("@daily", datetime(2026, 1, 2, tzinfo=UTC)),
        ("@midnight", datetime(2026, 1, 2, tzinfo=UTC)),
        ("@hourly", datetime(2026, 1, 1, 1, tzinfo=UTC)),
    ],
)
def test_macros(macro: str, expected: datetime) -> None:
    schedule = CronSchedule(macro)
    assert schedule.next_after(at(UTC, 2026, 1, 1, 0, 0, 1)) == expected.timestamp()


def test_quartz_question_mark_and_names() -> None:
    schedule = CronSchedule("0 0 9 ? * MON-FRI", "UTC")
    start = at(UTC, 2026, 1, 2, 12)  # a Friday
    assert schedule.next_after(start) == at(UTC, 2026, 1, 5, 9)  # Monday


def test_next_after_is_strict_and_latest_is_inclusive() -> None:
    schedule = CronSchedule("*/10 * * * * *")
    t = at(UTC, 2026, 1, 1, 0, 0, 20)
    assert schedule.next_after(t) == t + 10
    assert schedule.next_after(t - 0.5) == t
    assert schedule.latest_at_or_before(t) == t
    assert schedule.latest_at_or_before(t + 9.9) == t
    assert schedule.latest_at_or_before(t - 0.001) == t - 10


def test_count_between() -> None:
    schedule = CronSchedule("* * * * * *")
    t = at(UTC, 2026, 1, 1)
    assert schedule.count_between(t, t + 10, limit=100) == 9
    assert schedule.count_between(t, t + 10, limit=3) == 3
    assert schedule.count_between(t, t + 1, limit=100) == 0


def test_fire_identity_is_whole_milliseconds() -> None:
    assert to_ms(at(UTC, 2026, 1, 1)) == 1767225600000


def test_fixed_offset_and_tzinfo_objects() -> None:
    plus_two = timezone(timedelta(hours=2))
    schedule = CronSchedule("0 9 * * *", plus_two)
    assert schedule.next_after(at(UTC, 2026, 1, 1)) == at(UTC, 2026, 1, 1, 7)
    schedule = CronSchedule("0 9 * * *", ZURICH)
    assert schedule.next_after(at(UTC, 2026, 1, 1)) == at(UTC, 2026, 1, 1, 8)


# Daylight saving -----------------------------------------------------------------


def test_zurich_spring_forward_fixed_time_fires_right_after_the_jump() -> None:
    # 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
    start = at(ZURICH, 2026, 3, 28, 12)
    result = fires("30 2 * * *", "Europe/Zurich", start, start + 3 * 86400)
    assert [datetime.fromtimestamp(t, ZURICH).isoformat() for t in result] == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


def test_zurich_spring_forward_skipped_matches_fire_once_at_the_jump() -> None:
    start = at(ZURICH, 2026, 3, 29, 1, 0)
    end = at(ZURICH, 2026, 3, 29, 4, 0)
    result = fires("*/15 * * * *", "Europe/Zurich", start, end)
    # 02:00, 02:15, 02:30, 02:45 never exist; they and 03:00 are one fire.
    assert local(result, ZURICH) == [
        "01:15:00+0100",
        "01:30:00+0100",
        "01:45:00+0100",
        "03:00:00+0200",
        "03:15:00+0200",
        "03:30:00+0200",
        "03:45:00+0200",
        "04:00:00+0200",
    ]


def test_zurich_spring_forward_six_fields() -> None:
    start = at(ZURICH, 2026, 3, 28, 12)
    result = fires("15 30 2 * * *", "Europe/Zurich", start, start + 86400)
    assert local(result, ZURICH) == ["03:00:00+0200"]


def test_zurich_fall_back_repeated_time_fires_once_on_first_pass() -> None:
    # 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    start = at(ZURICH, 2026, 10, 24, 12)
    result = fires("30 2 * * *", "Europe/Zurich", start, start + 2 * 86400)
    assert [datetime.fromtimestamp(t, ZURICH).isoformat() for t in result] == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ]
    result = fires("0 30 2 * * *", "Europe/Zurich", start, start + 86400)
    assert local(result, ZURICH) == ["02:30:00+0200"]


def test_zurich_fall_back_hourly_fires_each_wall_hour_once() -> None:
    start = at(ZURICH, 2026, 10, 25, 0, 30)
    end = at(ZURICH, 2026, 10, 25, 4, 30)
    result = fires("0 * * * *", "Europe/Zurich", start, end)
    assert local(result, ZURICH) == [
        "01:00:00+0200",
        "02:00:00+0200",
        "03:00:00+0100",
        "04:00:00+0100",
    ]


def test_new_york_spring_forward_and_fall_back() -> None:
    # 2026-03-08: 02:00 EST jumps to 03:00 EDT.
    start = at(NEW_YORK, 2026, 3, 7, 12)
    result = fires("30 2 * * *", "America/New_York", start, start + 2 * 86400)
    assert [datetime.fromtimestamp(t, NEW_YORK).isoformat() for t in result] == [
        "2026-03-08T03:00:00-04:00",
        "2026-03-09T02:30:00-04:00",
    ]
    # 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
    start = at(NEW_YORK, 2026, 10, 31, 12)
    result = fires("30 1 * * *", "America/New_York", start, start + 2 * 86400)
    assert [datetime.fromtimestamp(t, NEW_YORK).isoformat() for t in result] == [
        "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:30:00-05:00",
    ]


def expected_fires(tz: ZoneInfo, day: datetime, step_minutes: int) -> list[float]:
    """Brute force: every wall-clock minute of `day` that matches, once each."""
    result: list[float] = []
    naive = day
    while naive < day + timedelta(days=1):
        if naive.minute % step_minutes == 0:
            first = naive.replace(tzinfo=tz, fold=0)
            instant = first.timestamp()
            if datetime.fromtimestamp(instant, tz).replace(tzinfo=None) != naive:
                # Skipped: the instant the clocks jump (wall reads past `naive`).
                instant = naive.replace(tzinfo=tz, fold=1).timestamp()
                while datetime.fromtimestamp(instant, tz).replace(tzinfo=None) < naive:
                    instant += 1
            if not result or instant > result[-1]:
                result.append(instant)
        naive += timedelta(minutes=1)
    return result


@pytest.mark.parametrize(
    ("tz_name", "day"),
    [
        ("Europe/Zurich", datetime(2026, 3, 29)),
        ("Europe/Zurich", datetime(2026, 10, 25)),
        ("America/New_York", datetime(2026, 3, 8)),
        ("America/New_York", datetime(2026, 11, 1)),
    ],
)
@pytest.mark.parametrize("step", [1, 7, 15, 60])
def test_every_wall_clock_match_fires_once_on_dst_days(
    tz_name: str, day: datetime, step: int
) -> None:
    tz = ZoneInfo(tz_name)
    expression = "* * * * *" if step == 1 else f"*/{step} * * * *"
    if step == 60:
        expression = "0 * * * *"
    start = day.replace(tzinfo=tz).timestamp() - 1
    end = (day + timedelta(days=1)).replace(tzinfo=tz).timestamp() - 1
    result = fires(expression, tz_name, start, end)
    assert result == expected_fires(tz, day, step)
    assert len(result) == len(set(result))


def test_starting_in_the_second_pass_of_a_repeated_hour() -> None:
    schedule = CronSchedule("*/20 * * * *", "Europe/Zurich")
    second_pass = at(ZURICH, 2026, 10, 25, 2, 30, fold=1)  # 02:30 CET
    assert datetime.fromtimestamp(second_pass, ZURICH).fold == 1
    # 02:40 and 02:00-02:20 fired on the first pass: next is 03:00 CET.
    assert local([schedule.next_after(second_pass)], ZURICH) == ["03:00:00+0100"]  # type: ignore[list-item]
    latest = schedule.latest_at_or_before(second_pass)
    assert latest == at(ZURICH, 2026, 10, 25, 2, 40)  # first pass (CEST)
    first_pass = at(ZURICH, 2026, 10, 25, 2, 30)
    assert schedule.next_after(first_pass) == at(ZURICH, 2026, 10, 25, 2, 40)
    assert schedule.latest_at_or_before(first_pass) == at(ZURICH, 2026, 10, 25, 2, 20)


def test_latest_right_after_a_spring_forward_jump() -> None:
    schedule = CronSchedule("30 2 * * *", "Europe/Zurich")
    after_jump = at(ZURICH, 2026, 3, 29, 3, 0, 30)
    assert schedule.latest_at_or_before(after_jump) == at(ZURICH, 2026, 3, 29, 3, 0)


# Validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "detail"),
    [
        ("61 * * * *", "bad minute field"),
        ("* 24 * * *", "bad hour field"),
        ("* * * *", "expected 5 fields"),
        ("* * * * * * *", "got 7"),
        ("", "got 0"),
        ("@fortnightly", "unknown macro"),
        ("0 0 30 2 *", "bad day-of-month field"),
        ("0 0 * * 8", "bad day-of-week field"),
        ("x * * * *", "bad minute field"),
    ],
)
def test_invalid_expression_names_it_and_what_is_wrong(
    expression: str, detail: str
) -> None:
    with pytest.raises(SettingsValidationError) as info:
        CronSchedule(expression)
    assert repr(expression) in str(info.value)
    assert detail in str(info.value)


def test_expression_must_be_a_string() -> None:
    with pytest.raises(SettingsValidationError, match="must be a str"):
        CronSchedule(5)  # type: ignore[arg-type]


@pytest.mark.parametrize("tz", ["Mars/Olympus", "Europe/Zürich", "../etc/passwd", ""])
def test_unknown_timezone(tz: str) -> None:
    with pytest.raises(SettingsValidationError, match="timezone"):
        CronSchedule("* * * * *", tz)
