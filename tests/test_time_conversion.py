"""Epoch milliseconds to datetimes and back, exactly, across every year djobs keeps times in.

Through a float (``datetime.fromtimestamp(ms / 1000)``) a time outside about 1900-2100 came
out microseconds off: the last millisecond of 9999 read 23:59:59.998993, and the command
line's seconds could show the second before.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from djobs._clock import FIRST_MS, LAST_MS, to_datetime, to_epoch_ms
from djobs._input import epoch_ms
from djobs.cli._output import iso, when

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECONDS = st.integers(min_value=FIRST_MS, max_value=LAST_MS)


@given(MILLISECONDS)
def test_a_millisecond_reads_as_the_datetime_of_that_very_millisecond(ms: int) -> None:
    moment = to_datetime(ms)
    assert moment.microsecond == ms % 1000 * 1000
    assert (moment - EPOCH) // timedelta(milliseconds=1) == ms
    assert to_epoch_ms(moment) == ms


@given(MILLISECONDS)
def test_the_command_line_writes_the_millisecond_it_was_given(ms: int) -> None:
    moment = EPOCH + timedelta(milliseconds=ms)
    assert iso(ms) == moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert when(ms) == moment.strftime("%Y-%m-%d %H:%M:%SZ")


def test_the_last_millisecond_of_9999_is_read_exactly() -> None:
    assert to_datetime(LAST_MS) == datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)
    assert iso(LAST_MS) == "9999-12-31T23:59:59.999Z"
    assert when(253_402_214_400_000) == "9999-12-31 00:00:00Z"


def exact_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware `moment`, from its fields in integers (no float, no
    datetime arithmetic): to the nearest millisecond, a half rounded up, as `to_ms` does."""
    offset = moment.utcoffset()
    assert offset is not None
    days = moment.toordinal() - EPOCH.toordinal()
    seconds = days * 86_400 + moment.hour * 3_600 + moment.minute * 60 + moment.second
    us = seconds * 1_000_000 + moment.microsecond - offset // timedelta(microseconds=1)
    return (us + 500) // 1000


OFFSETS = st.timedeltas(min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59))
AWARE = st.builds(
    lambda moment, offset: moment.replace(tzinfo=timezone(offset)),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    OFFSETS,
)


@given(AWARE)
def test_an_aware_datetime_converts_to_its_exact_millisecond(moment: datetime) -> None:
    assert to_epoch_ms(moment) == exact_ms(moment)
    assert epoch_ms(moment, "at").unwrap() == exact_ms(moment)


@pytest.mark.parametrize(
    "moment",
    [
        # Through a float: a millisecond off (the float's step there is about 30 microseconds).
        datetime(4366, 1, 13, 13, 6, 51, 27_497, tzinfo=UTC),
        datetime(6925, 3, 20, 16, 12, 54, 534_508, tzinfo=UTC),
        datetime(8536, 8, 22, 23, 57, 59, 819_482, tzinfo=timezone(timedelta(hours=-5))),
        # A half: up, as `to_ms` rounds a duration (round() of the float went to the even one).
        datetime(1970, 1, 1, 0, 0, 0, 2_500, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 998_500, tzinfo=UTC),
        datetime(1, 1, 2, 0, 0, 0, 1_499, tzinfo=timezone(timedelta(hours=14))),
    ],
)
def test_a_datetime_far_from_1970_or_at_a_half_millisecond_is_not_a_millisecond_off(moment: datetime) -> None:
    assert to_epoch_ms(moment) == exact_ms(moment)
    assert epoch_ms(moment, "at").unwrap() == exact_ms(moment)
