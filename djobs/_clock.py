"""The clock layer: every "now" and every wait in djobs goes through it.

Two implementations share one contract. `WallClock` reads the system clock;
`VirtualClock` maps Trio's clock to epoch time, so under
``trio.testing.MockClock(autojump_threshold=0)`` a month of schedules, cron
included, runs in milliseconds of real time.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol, final

import trio
from returns.result import Failure

from ._errors import SchedulerError
from ._input import epoch_ms, nearest_ms

if TYPE_CHECKING:
    import trio.testing


def current_mock_clock() -> trio.testing.MockClock | None:
    """The running Trio clock when it is a `trio.testing.MockClock`, else None (outside `trio.run` too).

    ``trio.testing`` is looked up, never imported: it imports pytest when pytest is
    installed, which a production process (or a CLI call) should not pay for, and a
    MockClock can only be running once a test imported ``trio.testing`` to make it.
    """
    testing = sys.modules.get("trio.testing")
    if testing is None:
        return None
    try:
        clock = trio.lowlevel.current_clock()
    except RuntimeError:  # outside trio.run
        return None
    mock: type[trio.testing.MockClock] = testing.MockClock
    return clock if isinstance(clock, mock) else None


class Clock(Protocol):
    """What djobs needs from time: the current epoch time and a way to wait for one."""

    def now_ms(self) -> int:
        """The current time in whole milliseconds since the Unix epoch (UTC)."""
        ...

    async def sleep_until(self, epoch_ms: int) -> None:
        """Return once `now_ms()` has reached `epoch_ms` (at once if it has)."""
        ...


def to_datetime(epoch_ms: int) -> datetime:
    """An aware UTC datetime for epoch milliseconds.

    Raises:
        SchedulerError: `epoch_ms` is after the last millisecond of the year 9999
            (`LAST_MS`) or before the year 1: no `datetime` holds it (a clock read
            past the end of 9999, such as a test's virtual clock slept too far).
    """
    global _last_datetime
    last = _last_datetime
    if last[0] == epoch_ms:
        return last[1]  # asked for just before: every event of a busy millisecond is stamped with it
    if not FIRST_MS <= epoch_ms <= LAST_MS:
        raise SchedulerError(beyond_datetime(epoch_ms))
    # Whole milliseconds added to the epoch, exactly: `fromtimestamp(epoch_ms / 1000)` goes through a
    # float, off by microseconds outside about 1900-2100 (9999-12-31 23:59:59.999 read .998993).
    moment = _EPOCH + timedelta(0, 0, 0, epoch_ms)  # (milliseconds given by position: no keyword parsing)
    _last_datetime = (epoch_ms, moment)
    return moment


def utc_isoformat(epoch_ms: int) -> str:
    """``to_datetime(epoch_ms).isoformat()`` (``2026-01-01T09:00:00+00:00``), what events write a time
    as, without formatting a whole-second time afresh: its day's text is kept from the call before
    (a cron's fires of one day share it), its time of day comes from tables.

    Raises:
        SchedulerError: As `to_datetime`: no `datetime` holds `epoch_ms`.
    """
    global _last_day_text
    day, ms = divmod(epoch_ms, _DAY_MS)
    if ms % 1000:
        return to_datetime(epoch_ms).isoformat()
    last = _last_day_text
    if last[0] != day:
        last = _last_day_text = (day, to_datetime(epoch_ms).date().isoformat() + "T")
    seconds = ms // 1000
    return last[1] + _MINUTE_TEXTS[seconds // 60] + _SECOND_TEXTS[seconds % 60]


_DAY_MS = 86_400_000
#: ``HH:MM:`` for each minute of a day, and ``SS+00:00`` for each second of a minute.
_MINUTE_TEXTS = tuple(f"{m // 60:02}:{m % 60:02}:" for m in range(1440))
_SECOND_TEXTS = tuple(f"{s:02}+00:00" for s in range(60))
#: The last day `utc_isoformat` wrote (days since the epoch) and its ``YYYY-MM-DDT``, as one tuple.
_last_day_text: tuple[int, str] = (0, "1970-01-01T")


def beyond_datetime(epoch_ms: int, what: str = "the time") -> str:
    """Why `epoch_ms`, a time no `datetime` holds (`to_datetime`'s `SchedulerError`), is not used:
    `what` it is (``"the engine's clock reads"``) and what to do."""
    if epoch_ms > LAST_MS:
        return (
            f"{what} {epoch_ms} ms since the epoch, after the year 9999, the last that djobs keeps "
            "times in: nothing can be stamped with it (a test's virtual clock slept past "
            "9999-12-31? sleep less, or start it earlier)"
        )
    return f"{what} {epoch_ms} ms since the epoch, before the year 1, the first that djobs keeps times in"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The last `to_datetime`, as one tuple (a thread reads a whole pair, never half of two).
_last_datetime: tuple[int, datetime] = (0, _EPOCH)


def to_epoch_ms(moment: datetime) -> int:
    """Epoch milliseconds for an aware datetime, to the nearest (a half up), exactly (`nearest_ms`)."""
    return nearest_ms(moment - _EPOCH)


#: The latest time djobs schedules anything for: 9999-12-31 00:00 UTC (`LATEST_TEXT`). A day
#: short of the last a `datetime` holds (`LAST_MS`) on purpose: every time djobs stores is
#: then a `datetime` in every time zone (offsets reach 14 hours: 9999-12-31 12:00 UTC is no
#: datetime in Pacific/Kiritimati), and a cron in a zone may look a day past it.
LATEST_MS = 253_402_214_400_000

#: `LATEST_MS` as refusals and warnings write it.
LATEST_TEXT = "9999-12-31T00:00:00Z"

#: What every refusal of a time past `LATEST_MS` says of it (``"the batch would flush ..."``).
AFTER_LATEST = f"after {LATEST_TEXT}, the latest time djobs schedules anything for"

#: The last millisecond a `datetime` holds (9999-12-31 23:59:59.999 UTC): a clock reading
#: past it converts to none (`to_datetime` says so with a `SchedulerError`).
LAST_MS = 253_402_300_799_999

#: The first millisecond a `datetime` holds (0001-01-01 00:00 UTC).
FIRST_MS = -62_135_596_800_000


@final
class WallClock:
    """The production clock: the system's wall time.

    Waits are computed as a delay from now and re-checked on waking, so a wall
    clock that jumps while djobs sleeps delays a wake-up rather than losing it.
    """

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    async def sleep_until(self, epoch_ms: int) -> None:
        due_ns = epoch_ms * 1_000_000
        while True:
            # From the nanosecond clock `now_ms` floors, not from whole milliseconds: a delay
            # from a floored now overshot by its lost fraction, half a millisecond on average.
            delay_ns = due_ns - time.time_ns()
            if delay_ns <= 0:
                return
            await trio.sleep(delay_ns / 1e9)


#: Where a `VirtualClock` starts unless told.
_DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)

#: How long, in Trio seconds, before the Trio time of an epoch time a `VirtualClock` wait for it
#: ends. Trio wakes the tasks of one deadline in one batch in an order it draws at random, so a
#: test's ``trio.sleep`` to the instant an alarm is due would see its run done or not by chance;
#: a microsecond earlier, the run (which takes no Trio time) is done before the test wakes.
_LEAD_S = 1e-6

#: What a reading adds to the Trio time elapsed, in milliseconds: the lead, so a wait that ended
#: a lead early reads the time it waited for, and as much again for float rounding (Trio's clock
#: reads a deadline of 1.002 s as 1.0019999999999998, which whole milliseconds would floor to
#: 1001, a millisecond early: enough for a rate limit's window to open before its time).
_SLACK_MS = 2 * _LEAD_S * 1000


@final
class VirtualClock:
    """A clock that follows Trio's clock, starting at a chosen epoch time.

    Under ``MockClock(autojump_threshold=0)`` Trio's clock jumps to the next
    deadline whenever every task is blocked, so waiting a virtual day costs
    nothing. Outside a mock clock it simply runs at real speed from `start`.

    Its waits end a microsecond of Trio time before the instant they wait for
    (which the clock then reads): work due at an instant that takes no Trio
    time is done before a task that ``trio.sleep``-s to the same instant
    wakes, so a test that sleeps exactly until a run is due sees it, in every
    Trio run and test order.

    Args:
        start: The epoch time that the first reading maps to (aware datetime);
            ``None``: 2026-01-01 00:00 UTC.

    Raises:
        ValidationError: `start` is not a timezone-aware `datetime` (naive, a
            date, a string, a number), or its time zone cannot give its UTC
            offset (a ``utcoffset`` that raises or returns no valid offset).

    Examples:
        >>> from datetime import datetime, UTC
        >>> VirtualClock(datetime(2026, 1, 1, tzinfo=UTC)).start_ms
        1767225600000
    """

    def __init__(self, start: datetime | None = None) -> None:
        # `is None`, not falsiness: a start of 0 or False is a mistake to report, not the default.
        start_ms = epoch_ms(_DEFAULT_START if start is None else start, "VirtualClock(start=...)")
        if isinstance(start_ms, Failure):  # a naive start, or a time zone that cannot say its offset
            raise start_ms.failure()
        self.start_ms: int = start_ms.unwrap()
        self._anchor: float | None = None

    def _trio_anchor(self) -> float:
        # The anchor is taken on first use, inside trio.run, where the Trio
        # clock exists; until then the clock reads as `start`.
        if self._anchor is None:
            self._anchor = trio.current_time()
        return self._anchor

    def now_ms(self) -> int:
        try:
            now = trio.current_time()
        except RuntimeError:  # outside trio.run: time stands still at the last reading
            return self.start_ms
        anchor = self._anchor
        if anchor is None:  # the first reading (`_trio_anchor`), inlined: this is read per wake-up
            anchor = self._anchor = now
        return self.start_ms + int((now - anchor) * 1000 + _SLACK_MS)

    def trio_deadline(self, epoch_ms: int) -> float:
        """The Trio time at which a wait for `epoch_ms` ends, for a cancel scope's deadline: a
        microsecond before the Trio time of `epoch_ms`, where this clock reads it already (give
        or take float rounding: `sleep_until` re-checks on waking)."""
        return self._trio_anchor() + (epoch_ms - self.start_ms) / 1000 - _LEAD_S

    async def sleep_until(self, epoch_ms: int) -> None:
        target = self.trio_deadline(epoch_ms)
        await trio.sleep_until(target)
        # Float rounding can leave us a hair early; never fire early.
        if self.now_ms() < epoch_ms:
            await trio.sleep_until(target + 0.001)
