"""Epoch milliseconds to datetimes and back, exactly, across every year djobs keeps times in.

Through a float (``datetime.fromtimestamp(ms / 1000)``) a time outside about 1900-2100 came
out microseconds off: the last millisecond of 9999 read 23:59:59.998993, and the command
line's seconds could show the second before.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from djobs._clock import FIRST_MS, LAST_MS, to_datetime, to_epoch_ms
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
