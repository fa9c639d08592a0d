from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from returns.result import Failure, Result, Success

from djobs._durations import duration, format_duration, parse_duration, to_ms
from djobs._errors import ValidationError

EXPECTED = (
    'expected a timedelta, milliseconds as an int, or a string like "30 minutes", "5s", "1h30m"'
    " in units ms, s, m (minutes), h, d, w (weeks; no months or years: write days, 36525 days is 100 years)"
)


@pytest.mark.parametrize("value", ["100 years", "1 year", "1y", "2 months", "1mo"])
def test_years_and_months_are_refused_with_the_units_listed(value: str) -> None:
    # Months and years vary in length; the message says so and lists what is accepted.
    error = parse_duration(value).failure()
    assert error.message == f"invalid duration {value!r}: {EXPECTED}"
    assert "no months or years" in error.message and "36525 days" in error.message


MAX_MS = to_ms(timedelta(days=36_525))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30 minutes", timedelta(minutes=30)),
        ("5s", timedelta(seconds=5)),
        ("1 hour", timedelta(hours=1)),
        ("1.5 hours", timedelta(hours=1, minutes=30)),
        ("500ms", timedelta(milliseconds=500)),
        ("2 days", timedelta(days=2)),
        ("90 seconds", timedelta(seconds=90)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1 hour 30 minutes", timedelta(hours=1, minutes=30)),
        ("1 week", timedelta(weeks=1)),
        ("2 weeks", timedelta(weeks=2)),
        ("3w", timedelta(weeks=3)),
        ("1 millisecond", timedelta(milliseconds=1)),
        ("250 milliseconds", timedelta(milliseconds=250)),
        ("10 sec", timedelta(seconds=10)),
        ("1 second", timedelta(seconds=1)),
        ("5m", timedelta(minutes=5)),
        ("5 min", timedelta(minutes=5)),
        ("1 minute", timedelta(minutes=1)),
        ("2h", timedelta(hours=2)),
        ("2 hr", timedelta(hours=2)),
        ("3d", timedelta(days=3)),
        ("1 day", timedelta(days=1)),
        ("0.1s", timedelta(milliseconds=100)),
        (".5s", timedelta(milliseconds=500)),
        ("1d2h3m4s5ms", timedelta(days=1, hours=2, minutes=3, seconds=4, milliseconds=5)),
        ("  30 MINUTES \n", timedelta(minutes=30)),
        ("1H30M", timedelta(hours=1, minutes=30)),
        ("0s", timedelta(0)),
    ],
)
def test_accepts_strings(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == Success(expected)


def test_accepts_timedelta_and_int_milliseconds() -> None:
    assert parse_duration(timedelta(minutes=3)) == Success(timedelta(minutes=3))
    assert parse_duration(1500) == Success(timedelta(milliseconds=1500))
    assert parse_duration(0) == Success(timedelta(0))
    assert parse_duration(timedelta(0)) == Success(timedelta(0))


@pytest.mark.parametrize(
    "value",
    [
        "thirty minutes",
        "",
        "   ",
        "30",
        "1h 30",
        "5 fortnights",
        "5 m s",
        "-5s",
        "- 5 s",
        "1e3s",
        "nan s",
        "inf hours",
        "NaN",
        "5 minutes ago",
        "1,5 hours",
        "\u0663\u0660s",  # Arabic-Indic digits
        None,
        [],
        ["5s"],
        {"seconds": 5},
        datetime(2026, 1, 1),
        b"5s",
        True,
        False,
        1.5,
        math.nan,
        math.inf,
        -1,
        timedelta(seconds=-1),
    ],
)
def test_rejects_with_the_input_named(value: object) -> None:
    result = parse_duration(value)
    assert isinstance(result, Failure)
    error = result.failure()
    assert isinstance(error, ValidationError)
    assert error.message.startswith(f"invalid duration {value!r}")
    assert error.message.endswith(EXPECTED)


def test_negative_values_say_so() -> None:
    for value in (-5, timedelta(minutes=-5)):
        assert "must not be negative" in parse_duration(value).failure().message


def test_too_large_is_a_failure_not_an_exception() -> None:
    for value in (10**30, 10**5000, "9" * 5000 + "s", "99999999999999 weeks", timedelta.max, timedelta(days=36_526)):
        result = parse_duration(value)
        assert isinstance(result, Failure)
        assert "longer than 36525 days (100 years)" in result.failure().message


def test_the_longest_duration_is_36525_days() -> None:
    longest = timedelta(days=36_525)
    for value in (longest, "36525 days", "5217 weeks 6 days", to_ms(longest)):
        assert parse_duration(value) == Success(longest)
    for value in (longest + timedelta(microseconds=1), "36525 days 1 ms", to_ms(longest) + 1):
        assert "longer than 36525 days" in parse_duration(value).failure().message


def test_long_input_is_shortened_in_the_message() -> None:
    message = parse_duration("x" * 10_000).failure().message
    assert message.startswith("invalid duration 'xxx")
    assert len(message) < 300


def test_broken_repr_does_not_escape() -> None:
    class Nasty:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert isinstance(parse_duration(Nasty()), Failure)


def test_what_names_the_setting() -> None:
    error = parse_duration("thirty minutes", what="flush_after").failure()
    assert error == ValidationError(f"invalid flush_after 'thirty minutes': {EXPECTED}")


def test_duration_raises_the_same_error() -> None:
    assert duration("1h30m") == timedelta(hours=1, minutes=30)
    with pytest.raises(ValidationError) as caught:
        duration("soon", what="alarm_lease")
    assert caught.value == parse_duration("soon", what="alarm_lease").failure()


def test_to_ms_rounds_half_up() -> None:
    assert to_ms(timedelta(seconds=2)) == 2000
    assert to_ms(timedelta(microseconds=1499)) == 1
    assert to_ms(timedelta(microseconds=1500)) == 2
    assert to_ms(timedelta(0)) == 0
    assert to_ms(timedelta(days=999_999_999)) == 999_999_999 * 86_400_000


def test_format_duration() -> None:
    assert format_duration(timedelta(minutes=30)) == "30 minutes"
    assert format_duration(timedelta(hours=1, minutes=30)) == "1 hour 30 minutes"
    assert format_duration(timedelta(days=8, seconds=1)) == "8 days 1 second"
    assert format_duration(timedelta(milliseconds=1)) == "1 millisecond"
    assert format_duration(timedelta(microseconds=1500)) == "1.5 milliseconds"
    assert format_duration(timedelta(0)) == "0 milliseconds"


@given(st.text())
def test_any_text_gives_a_result(text: str) -> None:
    assert isinstance(parse_duration(text), Result)


@given(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.binary(),
        st.timedeltas(),
        st.datetimes(),
        st.lists(st.integers()),
        st.text(alphabet="0123456789.smhdw ", max_size=20),
    )
)
def test_any_value_gives_a_result(value: object) -> None:
    result = parse_duration(value)
    assert isinstance(result, Success | Failure)


@given(st.integers(min_value=0, max_value=MAX_MS))
def test_int_milliseconds_round_trip(ms: int) -> None:
    assert to_ms(parse_duration(ms).unwrap()) == ms
    assert parse_duration(f"{ms}ms") == parse_duration(ms)


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=36_525)))
def test_formatted_durations_parse_back(value: timedelta) -> None:
    assert parse_duration(format_duration(value)) == Success(value)
