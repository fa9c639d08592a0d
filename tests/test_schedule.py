from __future__ import annotations

import bisect
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from functools import cache
from itertools import pairwise
from zoneinfo import ZoneInfo

import msgspec
import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st
from returns.result import Failure, Success

from djobs._clock import LATEST_MS
from djobs._errors import ValidationError
from djobs._schedule import Cron, Every, Schedule, cron, every, parse_cron

NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
MINUTE = 60_000
HOUR = 60 * MINUTE


def ms(dt: datetime) -> int:
    return int(dt.timestamp()) * 1000 + dt.microsecond // 1000


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return ms(datetime(year, month, day, hour, minute, tzinfo=UTC))


def local(instant_ms: int, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(instant_ms / 1000, UTC).astimezone(zone)


def fires(schedule: Schedule, start: datetime, end: datetime) -> list[int]:
    """Every run time in [start, end), checking each is strictly later than the last."""
    times: list[int] = []
    t = ms(start) - 1
    while (t_next := schedule.next_after(t)) < ms(end):
        assert t_next > t
        times.append(t_next)
        t = t_next
    return times


# --- every ---------------------------------------------------------------------------------


def test_every_adds_the_interval() -> None:
    schedule = every("30 minutes")
    assert schedule.next_after(0) == 30 * MINUTE
    assert schedule.next_after(1_234) == 1_234 + 30 * MINUTE
    times = [utc(2026, 1, 1)]
    for _ in range(4):
        times.append(schedule.next_after(times[-1]))
    assert times == [
        utc(2026, 1, 1),
        utc(2026, 1, 1, 0, 30),
        utc(2026, 1, 1, 1),
        utc(2026, 1, 1, 1, 30),
        utc(2026, 1, 1, 2),
    ]


def test_every_forms_equality_and_repr() -> None:
    assert every("30 minutes") == every("30m") == every(timedelta(minutes=30)) == every(1_800_000)
    assert hash(every("1h")) == hash(Every(timedelta(hours=1)))
    assert every("30 minutes").interval == timedelta(minutes=30)
    assert repr(every("30m")) == "Every('30 minutes')"
    assert repr(every("1h30m")) == "Every('1 hour 30 minutes')"
    assert repr(Every(timedelta(microseconds=1500))) == "Every(datetime.timedelta(microseconds=1500))"
    assert every("1h30m").describe() == "every 1 hour 30 minutes"
    assert isinstance(every("1s"), Schedule)


@pytest.mark.parametrize("interval", ["0s", 0, timedelta(0), "0.0001ms", "0.4ms"])
def test_every_rejects_a_zero_interval(interval: str | int | timedelta) -> None:
    with pytest.raises(ValidationError, match="interval must be"):
        every(interval)


@pytest.mark.parametrize("interval", ["-5s", -5, timedelta(seconds=-1), "soon", "30", "", None, 1.5])
def test_every_rejects_bad_intervals(interval: object) -> None:
    with pytest.raises(ValidationError, match="invalid interval"):
        every(interval)  # type: ignore[arg-type]


def test_every_direct_construction_is_checked() -> None:
    with pytest.raises(ValidationError, match="interval must be positive"):
        Every(timedelta(seconds=-1))


def test_every_survives_msgspec() -> None:
    schedule = every("90s")
    assert msgspec.json.decode(msgspec.json.encode(schedule), type=Every) == schedule


# --- cron: daylight saving in New York -------------------------------------------------------


def per_local_day(times: list[int], zone: ZoneInfo) -> Counter[date]:
    return Counter(local(t, zone).date() for t in times)


@pytest.mark.parametrize("expression", ["30 1 * * *", "30 2 * * *"])
def test_new_york_spring_forward_fires_once_a_day(expression: str) -> None:
    schedule = cron(expression, tz="America/New_York")
    times = fires(schedule, datetime(2026, 3, 6, tzinfo=NEW_YORK), datetime(2026, 3, 11, tzinfo=NEW_YORK))
    assert per_local_day(times, NEW_YORK) == {date(2026, 3, day): 1 for day in range(6, 11)}
    assert times == sorted(set(times))
    on_the_day = [t for t in times if local(t, NEW_YORK).date() == date(2026, 3, 8)]
    if expression == "30 1 * * *":
        assert on_the_day == [utc(2026, 3, 8, 6, 30)]  # 01:30 EST
    else:
        # 02:30 does not exist that day; it fires at 02:30 EST = 03:30 EDT.
        assert on_the_day == [utc(2026, 3, 8, 7, 30)]
        assert local(on_the_day[0], NEW_YORK).hour == 3


@pytest.mark.parametrize("expression", ["30 1 * * *", "30 2 * * *"])
def test_new_york_fall_back_fires_once_a_day(expression: str) -> None:
    schedule = cron(expression, tz="America/New_York")
    times = fires(schedule, datetime(2026, 10, 30, tzinfo=NEW_YORK), datetime(2026, 11, 4, tzinfo=NEW_YORK))
    assert per_local_day(times, NEW_YORK) == {
        **{date(2026, 10, day): 1 for day in (30, 31)},
        **{date(2026, 11, day): 1 for day in (1, 2, 3)},
    }
    assert times == sorted(set(times))
    on_the_day = [t for t in times if local(t, NEW_YORK).date() == date(2026, 11, 1)]
    if expression == "30 1 * * *":
        assert on_the_day == [utc(2026, 11, 1, 5, 30)]  # 01:30 EDT, the first of the two
    else:
        assert on_the_day == [utc(2026, 11, 1, 7, 30)]  # 02:30 EST


def test_inside_the_repeated_hour_the_time_does_not_fire_again() -> None:
    schedule = cron("30 1 * * *", tz="America/New_York")
    first = utc(2026, 11, 1, 5, 30)  # 01:30 EDT
    for after in (
        first,
        utc(2026, 11, 1, 6, 0),
        utc(2026, 11, 1, 6, 10),
        utc(2026, 11, 1, 6, 30),
        utc(2026, 11, 1, 6, 45),
    ):  # the last four are in the second 01:xx (EST)
        assert schedule.next_after(after) == utc(2026, 11, 2, 6, 30)
    assert schedule.next_after(first - 1) == first


def test_inside_the_repeated_hour_an_interval_cron_fires_in_elapsed_time() -> None:
    schedule = cron("*/15 * * * *", tz="America/New_York")
    after = utc(2026, 11, 1, 6, 10)  # 01:10 EST, the second pass of 01:xx
    assert schedule.next_after(after) == utc(2026, 11, 1, 6, 15)  # 01:15 EST, a quarter hour of elapsed time
    assert schedule.next_after(utc(2026, 11, 1, 5, 50)) == utc(2026, 11, 1, 6, 0)  # 01:45 EDT -> 01:00 EST


def test_just_after_the_gap_the_moved_time_is_not_missed() -> None:
    schedule = cron("30 2 * * *", tz="America/New_York")
    # 03:10 EDT: the wall clock is past 02:30, but the moved 02:30 (03:30 EDT) is still ahead.
    assert schedule.next_after(utc(2026, 3, 8, 7, 10)) == utc(2026, 3, 8, 7, 30)
    assert schedule.next_after(utc(2026, 3, 8, 7, 30)) == utc(2026, 3, 9, 6, 30)


def test_half_hourly_in_new_york_across_both_changes() -> None:
    schedule = cron("*/30 * * * *", tz="America/New_York")
    spring = fires(schedule, datetime(2026, 3, 8, tzinfo=NEW_YORK), datetime(2026, 3, 9, tzinfo=NEW_YORK))
    fall = fires(schedule, datetime(2026, 11, 1, tzinfo=NEW_YORK), datetime(2026, 11, 2, tzinfo=NEW_YORK))
    # A 23-hour day and a 25-hour day, every half hour of elapsed time in each.
    assert len(spring) == 46
    assert len(fall) == 50
    assert all(b - a == 30 * MINUTE for a, b in pairwise(spring))
    assert all(b - a == 30 * MINUTE for a, b in pairwise(fall))


# --- cron: UTC and Berlin ------------------------------------------------------------------------


def test_every_quarter_hour_for_a_week_in_utc() -> None:
    times = fires(cron("*/15 * * * *"), datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 3, 9, tzinfo=UTC))
    assert len(times) == 672
    assert times[0] == utc(2026, 3, 2)
    assert all(b - a == 15 * MINUTE for a, b in pairwise(times))


def wall_strings(times: list[int], zone: ZoneInfo) -> list[str]:
    return [local(t, zone).strftime("%Y-%m-%d %H:%M") for t in times]


@pytest.mark.parametrize(
    ("day", "expression", "count", "expected"),
    [
        (date(2026, 3, 29), "30 2 * * *", 1, [utc(2026, 3, 29, 1, 30)]),  # 02:30 CET = 03:30 CEST
        (date(2026, 10, 25), "30 2 * * *", 1, [utc(2026, 10, 25, 0, 30)]),  # 02:30 CEST, first one
        (date(2026, 3, 29), "0,30 0-23 * * *", 46, None),  # fixed times: each wall time once
        (date(2026, 10, 25), "0,30 0-23 * * *", 48, None),
    ],
)
def test_berlin_no_fixed_wall_time_fires_twice(
    day: date, expression: str, count: int, expected: list[int] | None
) -> None:
    schedule = cron(expression, tz="Europe/Berlin")
    start = datetime(day.year, day.month, day.day, tzinfo=BERLIN)
    times = fires(schedule, start, start + timedelta(days=1))
    walls = wall_strings(times, BERLIN)
    assert len(walls) == len(set(walls)) == count
    assert times == sorted(set(times))
    if expected is not None:
        assert times == expected


@pytest.mark.parametrize(
    ("tz", "expression", "day", "usual", "on_the_day"),
    [
        # 02:30 CET is 03:30 CEST, the day's own 03:30: one run for both, as cron.md's table says.
        ("Europe/Berlin", "30 1-3 * * *", date(2026, 3, 29), 3, ["01:30 CET", "03:30 CEST"]),
        ("Europe/Berlin", "0 2,3 * * *", date(2026, 3, 29), 2, ["03:00 CEST"]),
        ("America/New_York", "0 1-5 * * *", date(2026, 3, 8), 5, ["01:00 EST", "03:00 EDT", "04:00 EDT", "05:00 EDT"]),
    ],
)
def test_spring_forward_a_moved_fixed_time_on_a_named_time_is_one_run(
    tz: str, expression: str, day: date, usual: int, on_the_day: list[str]
) -> None:
    zone = ZoneInfo(tz)
    schedule = cron(expression, tz=tz)
    start = datetime(day.year, day.month, day.day, tzinfo=zone)
    before = fires(schedule, start - timedelta(days=1), start)
    times = fires(schedule, start, start + timedelta(days=1))
    assert len(before) == usual
    assert [local(t, zone).strftime("%H:%M %Z") for t in times] == on_the_day


def test_apia_skipped_day_moves_onto_the_next_days_run() -> None:
    # Samoa skipped 30 December 2011 (23:59:59 on the 29th, -10, was followed by 00:00 on the 31st, +14).
    apia = ZoneInfo("Pacific/Apia")
    times = fires(
        cron("0 9 * * *", tz="Pacific/Apia"), datetime(2011, 12, 29, tzinfo=apia), datetime(2012, 1, 2, tzinfo=apia)
    )
    assert wall_strings(times, apia) == ["2011-12-29 09:00", "2011-12-31 09:00", "2012-01-01 09:00"]


def test_berlin_fall_back_a_fixed_time_skips_the_second_pass_of_the_hour() -> None:
    schedule = cron("0,30 0-23 * * *", tz="Europe/Berlin")
    start = datetime(2026, 10, 25, tzinfo=BERLIN)
    times = fires(schedule, start, start + timedelta(days=1))
    assert wall_strings(times, BERLIN)[3:8] == [
        "2026-10-25 01:30",
        "2026-10-25 02:00",
        "2026-10-25 02:30",
        "2026-10-25 03:00",
        "2026-10-25 03:30",
    ]
    # 02:30 CEST (00:30 UTC) is followed by 03:00 CET (02:00 UTC): the CET 02:xx pass is skipped.
    assert times[6] - times[5] == 90 * MINUTE


# --- cron: against a brute-force model ---------------------------------------------------------

# Lord Howe moves its clocks by 30 minutes, so a time in its gap can land after a real time.
MODEL_CASES = [
    ("America/New_York", datetime(2026, 3, 7), datetime(2026, 3, 10)),
    ("America/New_York", datetime(2026, 10, 31), datetime(2026, 11, 3)),
    ("Europe/Berlin", datetime(2026, 3, 28), datetime(2026, 3, 31)),
    ("Europe/Berlin", datetime(2026, 10, 24), datetime(2026, 10, 27)),
    ("Australia/Lord_Howe", datetime(2026, 4, 4), datetime(2026, 4, 7)),
    ("Australia/Lord_Howe", datetime(2026, 10, 3), datetime(2026, 10, 6)),
]
MODEL_EXPRESSIONS = ["*/15 * * * *", "30 1 * * *", "30 2 * * *", "20,40 2 * * *", "0,45 1-3 * * *", "5 */2 * * *"]


def is_interval(expression: str) -> bool:
    minute, hour = expression.split()[:2]
    return any(c in minute + hour for c in "*/")


@cache
def model_fires(tz: str, expression: str, first: datetime, last: datetime) -> list[int]:
    """Every matching wall time in the window mapped with fold=0, deduplicated; an interval
    expression fires only at wall times that exist (none in a gap), and also at the second
    reading (fold=1) of each repeated wall time."""
    zone = ZoneInfo(tz)
    walls = croniter(expression, first - timedelta(minutes=1))
    instants: set[int] = set()
    while (wall := walls.get_next(datetime)) < last:
        if not is_interval(expression):
            instants.add(ms(wall.replace(tzinfo=zone)))
            continue
        for fold in (0, 1):
            if exists(reading := wall.replace(tzinfo=zone, fold=fold), wall):
                instants.add(ms(reading))
    return sorted(instants)


def exists(reading: datetime, wall: datetime) -> bool:
    """Whether the aware `reading` of the naive `wall` is a time the zone's clock shows (not in a gap)."""
    assert reading.tzinfo is not None
    return reading.astimezone(UTC).astimezone(reading.tzinfo).replace(tzinfo=None) == wall


@settings(deadline=None, max_examples=300)
@given(
    case=st.sampled_from(MODEL_CASES),
    expression=st.sampled_from(MODEL_EXPRESSIONS),
    offset_ms=st.integers(min_value=0, max_value=36 * HOUR),
)
def test_next_after_is_the_earliest_later_fire(
    case: tuple[str, datetime, datetime], expression: str, offset_ms: int
) -> None:
    tz, first, last = case
    model = model_fires(tz, expression, first, last)
    after = ms(first.replace(tzinfo=ZoneInfo(tz))) + 6 * HOUR + offset_ms
    expected = model[bisect.bisect_right(model, after)]
    assert cron(expression, tz=tz).next_after(after) == expected


# In UTC, a run later the same day is found by arithmetic on the day's minutes, the others by
# the calendar walk: across a year's end and a leap day, at any millisecond, on a fire time too.
UTC_CASES = [(datetime(2026, 12, 30), datetime(2027, 1, 4)), (datetime(2028, 2, 27), datetime(2028, 3, 3))]
UTC_EXPRESSIONS = [*MODEL_EXPRESSIONS, "0 * * * *", "59 23 * * *", "0 0 1 * *", "0 12 * * 1-5", "10 9 29 2 *"]


@settings(deadline=None, max_examples=300)
@given(
    case=st.sampled_from(UTC_CASES),
    expression=st.sampled_from(UTC_EXPRESSIONS),
    offset_ms=st.integers(min_value=0, max_value=36 * HOUR),
    on_a_minute=st.booleans(),
)
def test_next_after_in_utc_is_the_earliest_later_fire(
    case: tuple[datetime, datetime], expression: str, offset_ms: int, on_a_minute: bool
) -> None:
    first, last = case
    model = model_fires("UTC", expression, first, last)
    after = ms(first.replace(tzinfo=UTC)) + 6 * HOUR + (offset_ms - offset_ms % MINUTE if on_a_minute else offset_ms)
    later = model[bisect.bisect_right(model, after) :]
    if later:  # "10 9 29 2 *" has no fire in a window without a leap day
        assert cron(expression).next_after(after) == later[0]


def test_lord_howe_half_hour_gap() -> None:
    lord_howe = ZoneInfo("Australia/Lord_Howe")
    schedule = cron("20,40 2 * * *", tz="Australia/Lord_Howe")
    start = datetime(2026, 10, 4, tzinfo=lord_howe)
    times = fires(schedule, start, start + timedelta(days=1))
    # 02:00-02:30 is skipped: 02:20 moves to 02:50, after the real 02:40.
    assert wall_strings(times, lord_howe) == ["2026-10-04 02:40", "2026-10-04 02:50"]


# --- cron: construction and helpers ------------------------------------------------------------


def test_next_runs() -> None:
    schedule = cron("0 9 * * 1-5", tz="Europe/Berlin")
    runs = schedule.next_runs(utc(2026, 1, 1), 5)  # a Thursday
    assert len(runs) == 5
    assert runs == sorted(set(runs))
    assert runs[0] > utc(2026, 1, 1)
    assert wall_strings(runs, BERLIN) == [
        "2026-01-01 09:00",
        "2026-01-02 09:00",
        "2026-01-05 09:00",
        "2026-01-06 09:00",
        "2026-01-07 09:00",
    ]
    assert schedule.next_runs(0, 0) == []


BOTH_SCHEDULES = [every("90 minutes"), cron("0 9 * * 1-5", tz="Europe/Berlin")]


@pytest.mark.parametrize("schedule", BOTH_SCHEDULES, ids=repr)
@given(after=st.integers(min_value=0, max_value=LATEST_MS), n=st.integers(min_value=0, max_value=20))
@settings(deadline=None, max_examples=50)
def test_next_runs_of_either_schedule_are_its_next_afters(schedule: Cron | Every, after: int, n: int) -> None:
    """Both schedules have next_runs: the chain of next_after, cut at the latest time djobs schedules for."""
    expected: list[int] = []
    t = after
    while len(expected) < n and (t := schedule.next_after(t)) <= LATEST_MS:
        expected.append(t)
    assert schedule.next_runs(after, n) == expected


@pytest.mark.parametrize("schedule", BOTH_SCHEDULES, ids=repr)
@pytest.mark.parametrize(
    ("after", "n", "message"),
    [
        (0, -1, "n must be an int from 0 to 1000"),
        (0, 1001, "n must be an int from 0 to 1000"),
        (0, True, "n must be an int"),
        (0, 2.0, "n must be an int"),
        (0, "3", "n must be an int"),
        ("0", 3, "after_ms must be an int"),
        (1.5, 3, "after_ms must be an int"),
        (False, 3, "after_ms must be an int"),
    ],
)
def test_next_runs_refuses_what_is_not_a_count_or_an_instant(
    schedule: Cron | Every, after: object, n: object, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        schedule.next_runs(after, n)  # type: ignore[arg-type]


def test_cron_value_semantics() -> None:
    schedule = cron(" 30  1 * * * ", tz="America/New_York")
    assert schedule.expression == "30 1 * * *"
    assert schedule.tz == "America/New_York"
    assert schedule == Cron("30 1 * * *", "America/New_York")
    assert hash(schedule) == hash(Cron("30 1 * * *", "America/New_York"))
    assert schedule != cron("30 1 * * *")
    assert repr(schedule) == "Cron('30 1 * * *', tz='America/New_York')"
    assert schedule.describe() == "cron '30 1 * * *' in America/New_York"
    assert isinstance(schedule, Schedule)
    assert cron("0 0 * * *").tz == "UTC"


def test_cron_survives_msgspec() -> None:
    schedule = cron("30 1 * * *", tz="America/New_York")
    encoded = msgspec.json.encode(schedule)
    assert msgspec.json.decode(encoded) == {"expression": "30 1 * * *", "tz": "America/New_York"}
    assert msgspec.json.decode(encoded, type=Cron) == schedule


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("* * *", "expected 5 fields"),
        ("61 * * * *", "out of range"),
        ("nonsense", "expected 5 fields"),
        ("", "expected 5 fields"),
        ("* * * * * *", "6 fields are not supported: the sixth could be a seconds field .* or a year field"),
        ("0 0 1 1 * 2030", "6 fields are not supported: the sixth could be a seconds field .* or a year field"),
        ("5-1 * * * *", "the minute field's range '5-1' runs backwards.*5-59,0-1"),
        ("0 22-2 * * *", "the hour field's range '22-2' runs backwards.*22-23,0-2"),
        ("5-1/2 * * * *", "the minute field's range '5-1' runs backwards"),
        ("0 0 1,30-2 * *", "the day-of-month field's range '30-2' runs backwards.*30-31,1-2"),
        ("0 0 * NOV-feb *", "the month field's range 'NOV-feb' runs backwards.*NOV-DEC,jan-feb"),
        ("0 0 * * FRI-MON", "the day-of-week field's range 'FRI-MON' runs backwards.*FRI-SAT,SUN-MON"),
        ("0 0 * * Fri-Mon", "the day-of-week field's range 'Fri-Mon' runs backwards.*Fri-Sat,Sun-Mon"),
        ("0 0 * * fri-mon/2", "the day-of-week field's range 'fri-mon' runs backwards.*fri-sat,sun-mon"),
        ("0 0 0 * * ? *", "seconds and year fields"),
        ("@reboot", "unknown nickname"),
        ("@every 5m", "unknown nickname"),
        ("0 0 * * 5L", "written L5"),
        ("0 ? * * *", "only allowed as the whole day"),
        ("0 0 1? * *", "must be the whole day-of-month"),
        ("0 0 LW * *", "'LW' .Quartz's last weekday of the month. is not supported: fire on the last days"),
        ("0 0 L-2 * *", "'L-2' .Quartz's day counted back from the last. is not supported: use L"),
        ("0 0 * * 1#6", "'1#6': n in d#n .the n-th weekday d of the month. runs from 1 to 5"),
        ("0 0 30 2 ?", "never matches"),
        ("*/0 * * * *", "step"),
        ("0 0 30 2 *", "never matches"),
        ("0 0 31 4 *", "never matches"),
        ("H * * * *", "hash"),
    ],
)
def test_bad_expressions(expression: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason) as caught:
        cron(expression)
    assert repr(expression) in caught.value.message
    assert parse_cron(expression) == Failure(caught.value)


@pytest.mark.parametrize("expression", [42, None, ["* * * * *"], b"* * * * *"])
def test_non_string_expressions(expression: object) -> None:
    result = parse_cron(expression)
    assert isinstance(result, Failure)
    assert "cron expression must be a string" in result.failure().message
    with pytest.raises(ValidationError):
        cron(expression)  # type: ignore[arg-type]


@pytest.mark.parametrize("tz", ["Mars/Base", "", "America", "../etc/passwd", "/etc/localtime", "x" * 300, "a\0b"])
def test_unknown_zones(tz: str) -> None:
    with pytest.raises(ValidationError) as caught:
        cron("* * * * *", tz=tz)
    assert caught.value.message == f"unknown time zone {tz!r}"
    assert parse_cron("* * * * *", tz) == Failure(caught.value)


def test_unknown_zone_message() -> None:
    assert parse_cron("0 0 * * *", "Mars/Base") == Failure(ValidationError("unknown time zone 'Mars/Base'"))


def test_non_string_zone() -> None:
    result = parse_cron("* * * * *", NEW_YORK)
    assert isinstance(result, Failure)
    assert "IANA name" in result.failure().message


def test_parse_cron_success() -> None:
    assert parse_cron("0 0 29 2 *", "Europe/Berlin") == Success(Cron("0 0 29 2 *", "Europe/Berlin"))


def test_leap_day_only_schedule() -> None:
    schedule = cron("0 0 29 2 *")
    assert schedule.next_after(utc(2026, 1, 1)) == utc(2028, 2, 29)


# --- cron: day-of-month and day-of-week, against an independent model ---------------------------

WEEKDAYS = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}


def cron_weekday(day: date) -> int:
    return (day.weekday() + 1) % 7  # cron counts from Sunday = 0


def last_day(day: date) -> int:
    following = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return (following - timedelta(days=1)).day


def nearest_weekday(day: date, n: int) -> int:
    """Quartz's nW: the weekday nearest the nth, not leaving the month."""
    target = day.replace(day=min(n, last_day(day)))
    if target.weekday() == 5:  # Saturday: the Friday before, or the Monday after on the 1st
        return target.day - 1 if target.day > 1 else target.day + 2
    if target.weekday() == 6:  # Sunday: the Monday after, or the Friday before on the last day
        return target.day + 1 if target.day < last_day(day) else target.day - 2
    return target.day


def dom_item(item: str, day: date) -> bool:
    if item == "L":
        return day.day == last_day(day)
    if item.endswith("W"):
        return day.day == nearest_weekday(day, int(item[:-1]))
    if item.startswith("*/"):
        return (day.day - 1) % int(item[2:]) == 0
    if "-" in item:
        low, high = map(int, item.split("-"))
        return low <= day.day <= high
    return day.day == int(item)


def dow_value(text: str) -> int:
    return WEEKDAYS[text] if text in WEEKDAYS else int(text) % 7


def dow_item(item: str, day: date) -> bool:
    if "#" in item:
        weekday, nth = item.split("#")
        return cron_weekday(day) == dow_value(weekday) and (day.day - 1) // 7 + 1 == int(nth)
    if item.startswith("L"):
        return cron_weekday(day) == dow_value(item[1:]) and day.day + 7 > last_day(day)
    if item.startswith("*/"):
        return cron_weekday(day) % int(item[2:]) == 0
    if "-" in item:
        low, high = map(dow_value, item.split("-"))
        return low <= cron_weekday(day) <= high
    return cron_weekday(day) == dow_value(item)


def model_day_matches(dom: str, dow: str, day: date) -> bool:
    """cronie's rule: either day field matches when both are restricted, else both must."""
    dom_ok = dom in ("*", "?") or any(dom_item(i, day) for i in dom.split(","))
    dow_ok = dow in ("*", "?") or any(dow_item(i, day) for i in dow.split(","))
    if dom.startswith("*") or dom == "?" or dow.startswith("*") or dow == "?":
        return dom_ok and dow_ok
    return dom_ok or dow_ok


DAY_EXPRESSIONS = [
    # (day-of-month, day-of-week): both restricted is a union, for every extension.
    ("8-9", "0#2"),
    ("15", "1#1"),
    ("1", "L5"),
    ("15W", "1"),
    ("1W", "SAT#3"),
    ("L", "5"),
    ("L", "L0"),
    ("1,15", "1-5"),
    ("1", "1"),
    ("30", "1#2,3#4"),
    # One side unrestricted ('*', '*/n' or '?'): both must match, as in cronie.
    ("*/2", "1"),
    ("1-7", "*/2"),
    ("*/2", "0#2"),
    ("?", "1#1"),
    ("15W", "?"),
    ("L", "*"),
    ("*", "L5"),
]


@pytest.mark.parametrize(("dom", "dow"), DAY_EXPRESSIONS)
def test_day_fields_match_cronie_semantics_for_two_years(dom: str, dow: str) -> None:
    schedule = cron(f"0 12 {dom} * {dow}")
    fired = [
        local(t, ZoneInfo("UTC")).date()
        for t in fires(schedule, datetime(2026, 1, 1, tzinfo=UTC), datetime(2028, 1, 1, tzinfo=UTC))
    ]
    expected = [day for n in range(730) if model_day_matches(dom, dow, day := date(2026, 1, 1) + timedelta(days=n))]
    assert fired == expected
    assert expected  # every case here fires at least once in two years


def test_the_issue_examples_fire_on_either_day() -> None:
    def walls(expression: str, n: int) -> list[str]:
        return [local(t, ZoneInfo("UTC")).strftime("%a %m-%d") for t in cron(expression).next_runs(utc(2026, 1, 1), n)]

    # The 8th, the 9th, and every second Sunday (the 11th in January 2026).
    assert walls("0 0 8-9 * 0#2", 4) == ["Thu 01-08", "Fri 01-09", "Sun 01-11", "Sun 02-08"]
    assert walls("0 0 15 * 1#1", 3) == ["Mon 01-05", "Thu 01-15", "Mon 02-02"]  # was refused
    assert walls("0 0 1 * L5", 3) == ["Fri 01-30", "Sun 02-01", "Fri 02-27"]  # was refused
    assert walls("0 0 15W * 1", 4) == ["Mon 01-05", "Mon 01-12", "Thu 01-15", "Mon 01-19"]


@pytest.mark.parametrize(
    ("nickname", "fields"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ],
)
def test_nicknames_are_their_five_fields(nickname: str, fields: str) -> None:
    schedule = cron(nickname.upper(), tz="America/New_York")
    assert schedule.expression == nickname
    start = datetime(2026, 10, 25, tzinfo=NEW_YORK)
    end = start + timedelta(days=400)
    assert fires(schedule, start, end) == fires(cron(fields, tz="America/New_York"), start, end)


def test_question_mark_is_an_unrestricted_day_field() -> None:
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC)
    assert fires(cron("0 0 ? * 1#1"), start, end) == fires(cron("0 0 * * 1#1"), start, end)
    assert fires(cron("0 0 15 * ?"), start, end) == fires(cron("0 0 15 * *"), start, end)


_FIELD_BOUNDS = [("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 28), ("month", 1, 12), ("day-of-week", 0, 7)]


@given(
    field=st.integers(min_value=0, max_value=4),
    data=st.data(),
    step=st.one_of(st.none(), st.integers(min_value=1, max_value=5)),
)
def test_a_range_is_refused_exactly_when_it_runs_backwards(field: int, data: st.DataObject, step: int | None) -> None:
    """cronie refuses ``a-b`` with a > b (src/entry.c, get_range); croniter would read it as wrapping around."""
    what, low, high = _FIELD_BOUNDS[field]
    first = data.draw(st.integers(min_value=low, max_value=high), label="first")
    last = data.draw(st.integers(min_value=low, max_value=high), label="last")
    part = f"{first}-{last}" + ("" if step is None else f"/{step}")
    fields = ["0", "0", "*", "*", "*"]
    fields[field] = part
    result = parse_cron(" ".join(fields))
    if first > last:
        assert isinstance(result, Failure)
        message = result.failure().message
        assert f"the {what} field's range '{first}-{last}' runs backwards" in message, message
    else:
        assert isinstance(result, Success), result


# --- cron: daylight saving, any size of jump ------------------------------------------------------

# Zones whose clocks jump by 30 minutes (Lord Howe), one hour (New York, Berlin, Santiago, whose
# midnight is skipped) and two hours (Troll), and a zone with a 45-minute offset (Chatham).
DST_ZONES = ["Australia/Lord_Howe", "America/New_York", "Europe/Berlin", "America/Santiago", "Antarctica/Troll"]
DST_ZONES += ["Pacific/Chatham"]


@cache
def transitions(tz: str, year: int = 2026) -> list[datetime]:
    """The instants (UTC, to the minute) at which `tz`'s offset changes in `year`: both directions."""
    zone = ZoneInfo(tz)
    found: list[datetime] = []
    hour = datetime(year, 1, 1, tzinfo=UTC)
    while hour.year == year:
        following = hour + timedelta(hours=1)
        if hour.astimezone(zone).utcoffset() != following.astimezone(zone).utcoffset():
            minute = hour
            while minute.astimezone(zone).utcoffset() == hour.astimezone(zone).utcoffset():
                minute += timedelta(minutes=1)
            found.append(minute)
        hour = following
    return found


def field_part(draw: st.DrawFn, low: int, high: int, interval: bool) -> str:
    """A minute or hour field: a step (``*``, ``*/n``, ``a-b/n``) when `interval`, else numbers and ranges."""
    if interval:
        step = draw(st.integers(min_value=1, max_value=(high - low + 1) // 2))
        first = draw(st.integers(min_value=low, max_value=high - 1))
        return draw(st.sampled_from(["*", f"*/{step}", f"{first}-{high}/{step}"]))
    values = draw(st.lists(st.integers(min_value=low, max_value=high), min_size=1, max_size=4, unique=True))
    return ",".join(map(str, sorted(values)))


@st.composite
def minute_hour_expressions(draw: st.DrawFn) -> str:
    interval_minute, interval_hour = draw(st.booleans()), draw(st.booleans())
    minute = field_part(draw, 0, 59, interval_minute)
    hour = field_part(draw, 0, 23, interval_hour)
    return f"{minute} {hour} * * *"


def documented_fires(expression: str, tz: str, start: datetime, end: datetime) -> list[int]:
    """cron.md's daylight-saving table, by brute force over the window's minutes: an interval
    expression fires at every instant whose wall-clock reading matches (so in both passes of a
    repeated hour, never at a skipped wall time); a fixed-time one at each matching wall time
    read with the offset before the change (the first of a repeated time; a skipped time at
    the instant it would have had before the change)."""
    zone = ZoneInfo(tz)
    minutes, hours = (set(values) for values in croniter.expand(expression)[0][:2])
    minutes = set(range(60)) if minutes == {"*"} else minutes
    hours = set(range(24)) if hours == {"*"} else hours
    instants: set[int] = set()
    if is_interval(expression):
        t = start
        while t < end:
            wall = t.astimezone(zone)
            if wall.minute in minutes and wall.hour in hours:
                instants.add(ms(t))
            t += timedelta(minutes=1)
        return sorted(instants)
    wall = (start - timedelta(hours=4)).astimezone(zone).replace(tzinfo=None, second=0, microsecond=0)
    last = (end + timedelta(hours=4)).astimezone(zone).replace(tzinfo=None)
    while wall < last:
        if wall.minute in minutes and wall.hour in hours:
            instant = wall.replace(tzinfo=zone)
            if start <= instant < end:
                instants.add(ms(instant))
        wall += timedelta(minutes=1)
    return sorted(instants)


@settings(deadline=None, max_examples=150)
@given(tz=st.sampled_from(DST_ZONES), which=st.integers(min_value=0, max_value=1), expression=minute_hour_expressions())
def test_across_a_clock_change_of_any_size_a_cron_fires_as_documented(tz: str, which: int, expression: str) -> None:
    """Both changes of the year, in zones whose clocks jump 30 minutes, one hour or two."""
    change = transitions(tz)[which]
    start, end = change - timedelta(hours=5), change + timedelta(hours=5)
    assert fires(cron(expression, tz=tz), start, end) == documented_fires(expression, tz, start, end)


@pytest.mark.parametrize(
    ("expression", "after", "walls"),
    [
        # 02:00-02:30 does not exist on 4 October 2026: neither 02:00 nor 02:20 fires, 02:40 does.
        (
            "*/20 * * * *",
            utc(2026, 10, 3, 14, 45),
            ["01:20+1030", "01:40+1030", "02:40+1100", "03:00+1100", "03:20+1100"],
        ),
        ("0 * * * *", utc(2026, 10, 3, 13, 10), ["00:00+1030", "01:00+1030", "03:00+1100", "04:00+1100", "05:00+1100"]),
    ],
)
def test_lord_howe_an_interval_skips_the_half_hour_gap(expression: str, after: int, walls: list[str]) -> None:
    lord_howe = ZoneInfo("Australia/Lord_Howe")
    runs = cron(expression, tz="Australia/Lord_Howe").next_runs(after, 5)
    assert [local(t, lord_howe).strftime("%H:%M%z") for t in runs] == walls


# --- cron: croniter's own syntax is refused, cronie's is read as cronie reads it ------------------

#: Phrases of croniter's own messages, which say nothing a person can act on.
CRONITER_TEXT = ("hash_id", "is not acceptable", "bands", "field 0", "field 2", "[")


@pytest.mark.parametrize(
    ("expression", "part", "instead"),
    [
        ("R * * * *", "R", "croniter's random value.*write the minute you mean, such as 17"),
        ("0 R * * *", "R", "picks anew.*write the hour you mean"),
        ("R(0-29)/5 * * * *", "R(0-29)/5", "random value"),
        ("H(0-29) * * * *", "H(0-29)", "hashed value.*write the minute you mean"),
        ("0 0 h * *", "h", "hashed value.*write the day-of-month you mean"),
        ("0 0 * * H/2", "H/2", "hashed value"),
        ("10/5 * * * *", "10/5", "a step from a start .* not supported; write 10-59/5"),
        ("0 0 * FEB/3 *", "FEB/3", "write FEB-DEC/3"),
        ("59/15 * * * *", "59/15", "write 59$"),
        ("0 0 W15 * *", "W15", "written 15W"),
        ("0 0 10-L * *", "10-L", "a range ending at L is not supported; write 10-31"),
        ("0 0 1,15W * *", "1,15W", "must be the whole day-of-month field"),
        ("0 0 * * L", "L", "write Ld for the last weekday d"),
        ("0 0 * * mon-fri#2", "mon-fri#2", "list them: mon#2,tue#2,wed#2,thu#2,fri#2$"),
        ("0 0 * * 1-5/2#1", "1-5/2#1", "list them: 1#1,3#1,5#1$"),
        ("0 0 * * 1,2#1", "1,2#1", "mixes plain days with n-th or last weekdays"),
        ("0 0 * * 1,L5", "1,L5", "mixes plain days"),
        ("0 0 * * jan#2", "jan#2", "not a day-of-week djobs reads .names: sun-sat."),
        ("0 0 * foo *", "foo", "not a month djobs reads .names: jan-dec."),
        ("0 0 */L * *", "*/L", "not cron syntax djobs reads in the day-of-month field"),
        ("*/0 * * * *", "*/0", "a step must be at least 1"),
        ("% * * * *", "%", "not cron syntax djobs reads in the minute field"),
        ("0 24 * * *", "24", "out of range: the hour field runs from 0 to 23"),
        ("0 0 0-5 * *", "0-5", "out of range: the day-of-month field runs from 1 to 31"),
        ("0 0 32W * *", "32W", "out of range: the day of the month runs from 1 to 31"),
        ("0 0 * * 8#2", "8#2", "out of range: the day-of-week field runs from 0 to 7"),
        ("0 0 * * L8", "L8", "out of range: the day-of-week field runs from 0 to 7"),
    ],
)
def test_croniter_only_syntax_is_refused_saying_what_to_write(expression: str, part: str, instead: str) -> None:
    with pytest.raises(ValidationError, match=instead) as caught:
        cron(expression)
    message = caught.value.message
    assert repr(part) in message, message
    assert not any(text in message for text in CRONITER_TEXT), message


_FIELD_RANGES = {0: (0, 59), 1: (0, 23), 2: (1, 28), 3: (1, 12), 4: (0, 6)}


@st.composite
def croniter_only_parts(draw: st.DrawFn) -> tuple[int, str]:
    """A field and a part in it that croniter reads and djobs does not: R and H values (with a
    range and a step, any case), a start with a step, W15, a range to L, a range of n-th weekdays."""
    field = draw(st.integers(min_value=0, max_value=4))
    low, high = _FIELD_RANGES[field]
    a, b = sorted(draw(st.lists(st.integers(min_value=low, max_value=high), min_size=2, max_size=2)))
    step = draw(st.integers(min_value=1, max_value=9))
    letter = draw(st.sampled_from("RrHh"))
    forms = [letter, f"{letter}({a}-{b})", f"{letter}/{step}", f"{letter}({a}-{b})/{step}", f"{a}/{step}"]
    if field == 2:
        forms += [f"W{a}", f"w{a}", f"{a}-L", f"{a}-l/{step}", "LW", f"L-{a}"]
    if field == 4:
        forms += [f"{a}-{b}#{step % 5 + 1}", "L", f"{a},{b}#2"]
    return field, draw(st.sampled_from(forms))


@given(croniter_only_parts())
def test_no_croniter_only_part_is_accepted(case: tuple[int, str]) -> None:
    """croniter reads each of these (R and H differently in each process); djobs refuses them all by name."""
    field, part = case
    fields = ["0", "0", "*", "*", "*"]
    fields[field] = part
    result = parse_cron(" ".join(fields))
    assert isinstance(result, Failure), result
    message = result.failure().message
    assert repr(part) in message, message
    assert not any(text in message for text in CRONITER_TEXT), message


@st.composite
def cronie_minute_fields(draw: st.DrawFn) -> tuple[str, frozenset[int]]:
    """A minute field in cronie's syntax (values, ranges ``a-b`` with a <= b, steps, lists) and the
    minutes cronie reads in it (src/entry.c: ``a-a`` is the one minute ``a``)."""
    parts: list[str] = []
    minutes: set[int] = set()
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        a = draw(st.integers(min_value=0, max_value=59))
        b = draw(st.integers(min_value=a, max_value=min(59, a + draw(st.sampled_from([0, 0, 5, 59])))))
        step = draw(st.integers(min_value=1, max_value=20))
        kind = draw(st.sampled_from(["value", "range", "stepped", "star"]))
        if kind == "value":
            parts.append(str(a))
            minutes.add(a)
        elif kind == "range":
            parts.append(f"{a}-{b}")
            minutes.update(range(a, b + 1))
        elif kind == "stepped":
            parts.append(f"{a}-{b}/{step}")
            minutes.update(range(a, b + 1, step))
        else:
            parts.append(f"*/{step}")
            minutes.update(range(0, 60, step))
    return ",".join(parts), frozenset(minutes)


@settings(deadline=None)
@given(cronie_minute_fields())
def test_a_cronie_minute_field_fires_at_the_minutes_cronie_reads(case: tuple[str, frozenset[int]]) -> None:
    """Equal ranges included: croniter reads ``5-5`` (and ``1-1/3``) as the whole field."""
    field, minutes = case
    start = datetime(2026, 1, 1, tzinfo=UTC)
    times = fires(cron(f"{field} 3 * * *"), start, start + timedelta(days=1))
    assert [local(t, ZoneInfo("UTC")).minute for t in times] == sorted(minutes)
