"""Recurring schedules: a fixed interval, or a cron expression in a time zone.

Every time in this module is an ``int`` of milliseconds since the Unix epoch,
in UTC.

Cron expressions are matched against the wall clock of their zone. The
semantics are djobs's own (croniter only parses fields and walks the
calendar), chosen to match what cronie (Vixie cron) users expect:

- **Days.** When both day-of-month and day-of-week are restricted (neither
  starts with ``*`` or is ``?``), a day matches when *either* does, for every
  extension (``L``, ``15W``, ``1#2``, ``L5``): each half is walked on its own
  and the earlier match wins. When either starts with ``*`` (``*/2``
  included), both must match. This is cronie's rule (``man 5 crontab``).
- **Daylight saving.** A *fixed-time* expression (minute and hour fields
  made only of numbers, ranges and lists) fires once per wall time: a time
  that happens twice when the clocks go back fires at its first occurrence,
  and a time skipped when they go forward fires at the same instant it would
  have had before the change (02:30 in a one-hour gap fires at 03:30), so a
  daily job still runs that day; a moved time that lands on a time the
  expression also names is one run, not two (``30 1-3 * * *`` in
  Europe/Berlin runs at 01:30 CET and 03:30 CEST on 2026-03-29, where cronie
  would also run the skipped 02:30 at 03:00). An *interval* expression (a ``*`` or a
  ``/`` step in the minute or hour field: ``0 * * * *``, ``*/5 * * * *``,
  ``@hourly``) keeps firing in elapsed time: through a repeated hour it fires
  in both passes, so an hourly job has no two-hour gap, and a wall time
  skipped when the clocks go forward does not fire, whatever the size of the
  jump (on a 30-minute change, ``*/20`` fires at 01:40 and then 02:40). This is Vixie
  cron's rule (cronie's ``cron.c``: "wildcard" and "fixed-time" jobs).

croniter's own time-zone handling differs, so it only ever sees naive
wall-clock times here and `zoneinfo` maps them to instants.
"""

from __future__ import annotations

import dataclasses
import re
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Protocol, final, runtime_checkable
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, CroniterError, croniter
from returns.result import Failure, Result, Success, safe

from ._clock import LATEST_MS, beyond_datetime
from ._durations import DurationLike, duration, format_duration, to_ms
from ._errors import SchedulerError, ValidationError, raise_error
from ._input import check_interval

__all__ = ["Cron", "Every", "Schedule", "cron", "every", "parse_cron"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = _EPOCH.toordinal()
_DAY = timedelta(days=1)
_DAY_MS = 86_400_000
_FIELDS = "minute hour day-of-month month day-of-week"
# Candidates skipped on the way are at most the wall times of a day (1440 for a minutely
# job), so this bound is only reached if the expression never matches, which the
# constructor rules out.
_MAX_STEPS = 10_000


@runtime_checkable
class Schedule(Protocol):
    """When a recurring job runs next.

    Examples:
        >>> every("1 minute").next_after(0)
        60000
    """

    def next_after(self, after_ms: int) -> int:
        """The first run time strictly later than ``after_ms`` (epoch milliseconds, UTC)."""
        ...

    def describe(self) -> str:
        """The schedule in words, for logs and status pages."""
        ...


@final
@dataclass(frozen=True, slots=True)
class Every:
    """Run at a fixed interval, measured from the previous run.

    Build it with `every`. An interval that is not a whole number of
    milliseconds is rounded to the nearest one.

    Attributes:
        interval: The time between runs; at least one millisecond.

    Examples:
        >>> Every(timedelta(minutes=30)).next_after(0)
        1800000
    """

    interval: timedelta
    #: The interval in whole milliseconds, worked out once (each fire adds it).
    _interval_ms: int = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.interval, timedelta):
            raise ValidationError(f"interval must be a timedelta, got {self.interval!r}")
        if self.interval <= timedelta(0):
            raise ValidationError(f"interval must be positive, got {self.interval!r}")
        if to_ms(self.interval) < 1:
            raise ValidationError(f"interval must be at least 1 millisecond, got {self.interval!r}")
        check_interval(self.interval, "interval")
        object.__setattr__(self, "_interval_ms", to_ms(self.interval))

    def next_after(self, after_ms: int) -> int:
        """``after_ms`` plus the interval.

        Examples:
            >>> every("5s").next_after(1_000)
            6000
        """
        return after_ms + self._interval_ms

    def next_runs(self, after_ms: int, n: int) -> list[int]:
        """The next ``n`` run times after ``after_ms`` (epoch ms, UTC), as `Cron.next_runs` gives them.

        Raises:
            ValidationError: `after_ms` is not an int, or `n` not an int from 0 to 1000.

        Examples:
            >>> every("30 minutes").next_runs(0, 3)
            [1800000, 3600000, 5400000]
        """
        return _next_runs(self, after_ms, n)

    def describe(self) -> str:
        """The schedule in words.

        Examples:
            >>> every("1h30m").describe()
            'every 1 hour 30 minutes'
        """
        return f"every {format_duration(self.interval)}"

    def __repr__(self) -> str:
        if self.interval % timedelta(milliseconds=1):
            return f"Every({self.interval!r})"
        return f"Every({format_duration(self.interval)!r})"


def every(interval: DurationLike) -> Every:
    """A schedule that runs every ``interval``.

    Args:
        interval: A duration such as ``"30 minutes"``, a `timedelta`, or
            milliseconds as an ``int``; it must be positive.

    Returns:
        The schedule.

    Raises:
        ValidationError: The interval is malformed, zero or negative.

    Examples:
        >>> every("30 minutes")
        Every('30 minutes')
    """
    return Every(duration(interval, what="interval"))


def next_fire(schedule: Schedule, after_ms: int) -> int | None:
    """`schedule`'s first run after `after_ms` (epoch ms), or ``None`` where there is none by
    `LATEST_MS`: a later time, or a cron's `SchedulerError` for no run left before datetime's
    last day. A cron job's and a Continuous instance's next runs come from here (or, on a
    Continuous run's hot path, from the same test inline), so neither stores one past it.

    Examples:
        >>> next_fire(every("1 day"), 0), next_fire(every("36525 days"), LATEST_MS - 1)
        (86400000, None)
    """
    if after_ms >= LATEST_MS:  # a clock that went on past it: every later time is past it too
        return None
    try:
        nxt = schedule.next_after(after_ms)
    except SchedulerError:
        return None
    return nxt if nxt <= LATEST_MS else None


def runs_from(schedule: Schedule, first_ms: int | None, n: int) -> list[int]:
    """`first_ms` (a run of `schedule`, or ``None`` for none) and the runs after it: at most `n`,
    fewer where `next_fire` finds none left by `LATEST_MS`.

    Examples:
        >>> runs_from(every("1 day"), 0, 2), runs_from(every("1 day"), None, 2)
        ([0, 86400000], [])
    """
    runs: list[int] = []
    while first_ms is not None and len(runs) < n:
        runs.append(first_ms)
        first_ms = next_fire(schedule, first_ms)
    return runs


#: The most run times `next_runs` gives in one call (as ``client.crons.next_runs``).
MAX_NEXT_RUNS = 1000


def _next_runs(schedule: Schedule, after_ms: object, n: object) -> list[int]:
    """`Cron.next_runs` and `Every.next_runs`: their arguments checked, then `runs_from`."""
    if isinstance(after_ms, bool) or not isinstance(after_ms, int):
        raise ValidationError(f"after_ms must be an int of epoch milliseconds, got {after_ms!r}")
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_NEXT_RUNS:
        raise ValidationError(f"n must be an int from 0 to {MAX_NEXT_RUNS}, got {n!r}")
    return runs_from(schedule, next_fire(schedule, after_ms) if n else None, n)


def latest_fire(schedule: Schedule, first_ms: int, now_ms: int) -> int:
    """The last of `schedule`'s runs from `first_ms` on (itself a run) that is not after `now_ms`.

    A missed span coalesced into one run (a cron job's ``missed="once"``) runs for it. An
    `Every` counts whole intervals from `first_ms`; a `Cron`, whose runs do not depend on
    where the search starts, is looked back at from `now_ms` over a window that doubles
    until it holds a run, then walked forward (a minute's cron missed for a year: a few
    dozen `next_after` calls, not half a million); any other schedule is walked forward
    from `first_ms`, at most `_MAX_STEPS` runs (the last one reached, if it stops there).

    Examples:
        >>> latest_fire(every("1 hour"), 1, 5 * 3_600_000), latest_fire(cron("0 * * * *"), 0, 5 * 3_600_000 + 1)
        (14400001, 18000000)
    """
    if first_ms >= now_ms:
        return first_ms
    if isinstance(schedule, Every):
        return first_ms + (now_ms - first_ms) // schedule._interval_ms * schedule._interval_ms
    latest = first_ms
    if isinstance(schedule, Cron):
        window = 60_000
        while (start := now_ms - window) > first_ms:
            found = next_fire(schedule, start)
            if found is not None and found <= now_ms:
                latest = found
                break
            window *= 2
    for _ in range(_MAX_STEPS):
        following = next_fire(schedule, latest)
        if following is None or following > now_ms:
            break
        latest = following
    return latest


def resume_fire(schedule: Schedule, first_ms: int, now_ms: int) -> tuple[int, int | None]:
    """After fire times from `first_ms` to `now_ms` were missed: the latest of them (`latest_fire`)
    and the first run after `now_ms` (`next_fire`, ``None`` for none), both on the times the
    schedule gives from `first_ms` on, so an `Every` keeps its grid through an outage, as
    APScheduler's ``IntervalTrigger`` keeps its start-anchored one (a cron's runs never depend
    on where the search starts).

    Examples:
        >>> resume_fire(every("1 hour"), 1, 5 * 3_600_000 + 7)
        (18000001, 21600001)
    """
    latest = latest_fire(schedule, first_ms, now_ms)
    following = next_fire(schedule, latest)
    if following is not None and following <= now_ms:  # a walk `latest_fire` cut short
        following = next_fire(schedule, now_ms)
    return latest, following


def _parse_zone(tz: object) -> Result[ZoneInfo, ValidationError]:
    if not isinstance(tz, str):
        return Failure(ValidationError(f"time zone must be an IANA name such as 'Europe/Berlin', got {tz!r}"))
    # KeyError is ZoneInfoNotFoundError; ValueError and OSError come from keys that are
    # paths, directories ("America") or otherwise not a zone file.
    zone = safe(exceptions=(KeyError, ValueError, OSError))(ZoneInfo)(tz)
    return zone.alt(lambda _: ValidationError(f"unknown time zone {tz!r}"))


#: cronie's nicknames (``man 5 crontab``), as the five fields they stand for.
NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to walk one expression: one or two croniter walks, and its daylight-saving rule.

    Attributes:
        walks: ``(expression, day_or)`` pairs whose matches, merged, are the
            expression's wall times: two halves (day-of-month, day-of-week) for
            cronie's either-day rule, else the expression with both days required.
        elapsed: Whether the minute or hour field is an interval (``*`` or a
            ``/`` step), so the expression fires in both passes of a repeated hour.
    """

    walks: tuple[tuple[str, bool], ...]
    elapsed: bool
    #: The walks' fields as sets, when every field is plain (numbers, ranges,
    #: steps, lists, names): their wall times are then found without croniter.
    fields: tuple[_Fields, ...] | None = None


@dataclass(frozen=True, slots=True)
class _Fields:
    """One walk's fields, expanded by croniter: the minutes of the day and the days it fires on."""

    minutes_of_day: tuple[int, ...]
    days: frozenset[int] | None  # None: every day of the month
    months: frozenset[int] | None
    weekdays: frozenset[int] | None  # 0 = Sunday, as cron counts

    def fires_on(self, day: date) -> bool:
        return (
            (self.months is None or day.month in self.months)
            and (self.days is None or day.day in self.days)
            and (self.weekdays is None or (day.weekday() + 1) % 7 in self.weekdays)
        )


_PLAIN_DAYS = re.compile(r"[0-9*,/-]+")
_PLAIN_WEEKDAYS = re.compile(r"(?:[0-7*,/-]|sun|mon|tue|wed|thu|fri|sat)+")


def _plain_fields(walk: str) -> _Fields | None:
    """`walk`'s fields as sets, or ``None`` if one is not plain (``L``, ``#``, ``W``, ...): croniter walks it."""
    parts = walk.split()
    # Day fields with L, W or # mean more than a set of days (croniter's expansion drops a W).
    if len(parts) != 5 or not _PLAIN_DAYS.fullmatch(parts[2]) or not _PLAIN_WEEKDAYS.fullmatch(parts[4].lower()):
        return None
    expanded, nth = croniter.expand(walk)
    if nth or len(expanded) != 5:
        return None
    sets: list[frozenset[int] | None] = []
    for values in expanded:
        if values == ["*"]:
            sets.append(None)
            continue
        ints = [v for v in values if isinstance(v, int)]
        if len(ints) != len(values):
            return None
        sets.append(frozenset(ints))
    minutes, hours, days, months, weekdays = sets
    every_minute, every_hour = range(60), range(24)
    of_day = sorted(h * 60 + m for h in (hours or every_hour) for m in (minutes or every_minute))
    return _Fields(tuple(of_day), days, months, weekdays)


def _unrestricted(day_field: str) -> bool:
    # cronie sets DOM_STAR / DOW_STAR when the field's first character is '*' ("*/2" too).
    return day_field.startswith("*") or day_field == "?"


def _never_matches(expression: str, day_or: bool) -> bool:
    try:
        # A match from any start means it matches forever: without a year field the
        # calendar repeats (every 400 years, and croniter searches far enough).
        croniter(expression, datetime(2000, 1, 1), day_or=day_or).get_next(datetime)
    except CroniterBadDateError:
        return True
    return False


_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
#: The names a field may use for its numbers (cron's: three-letter, any case).
_NAMES: dict[str, dict[str, int]] = {
    "month": {name: number for number, name in enumerate(_MONTHS, start=1)},
    "day-of-week": {name: number for number, name in enumerate(_WEEKDAYS)},
}
_BOUNDS = {"minute": ("0", "59"), "hour": ("0", "23"), "day-of-month": ("1", "31"), "month": ("1", "12")}
_BOUNDS["day-of-week"] = ("0", "6")
_NAMED_BOUNDS = {"month": ("jan", "dec"), "day-of-week": ("sun", "sat")}
_RANGE = re.compile(r"([0-9a-z]+)-([0-9a-z]+)(?:/.*)?")


def _reversed_range(field: str, names: dict[str, int]) -> str | None:
    """The first range of `field` whose start is past its end (``5-1``, ``22-2/2``, ``fri-mon``), or ``None``.

    cronie refuses such a range (src/entry.c, get_range); croniter would read it
    as wrapping around. Parts that are not a plain range (``L-3``, ``*``) are left
    to croniter's own checks.
    """
    for part in field.split(","):
        matched = _RANGE.fullmatch(part.lower())
        if matched is None:
            continue
        first, last = (_number(end, names) for end in matched.groups())
        if first is not None and last is not None and first > last:
            return part.split("/")[0]
    return None


def _cased(name: str, like: str) -> str:
    """`name` (a lower-case month or day name, or a number) in the case of `like` (``FRI``, ``Fri``, ``fri``)."""
    if like.isupper():
        return name.upper()
    if like.istitle():
        return name.title()
    return name


def _number(end: str, names: dict[str, int]) -> int | None:
    if end.isdigit():
        return int(end)
    return names.get(end)


#: croniter's random (``R``) and hashed (``H``) values, with its optional range and step: ``R``, ``H(0-29)/5``.
_CRONITER_VALUE = re.compile(r"([hr])(?:\(\d+-\d+\))?(?:/\d+)?")
_VALUE = r"(?:[0-9]+|[a-z]+)"
#: What every field reads: ``*``, ``*/n``, a value, ``a-b`` and ``a-b/n`` (the checks below refuse the rest).
_PLAIN_PART = re.compile(
    rf"\*(?:/(?P<star_step>[0-9]+))?|(?P<first>{_VALUE})(?:-(?P<last>{_VALUE})(?:/(?P<step>[0-9]+))?)?"
)
#: The day fields' own forms: ``L`` and ``15W`` (day-of-month), ``FRI#2``, ``1#2`` and ``L5`` (day-of-week).
_DAY_PART = {"day-of-month": re.compile(r"l|[0-9]+w"), "day-of-week": re.compile(rf"{_VALUE}#[0-9]+|l[0-9]+")}
_SYNTAX = (
    "a field takes *, a number, a range a-b, a step */n or a-b/n, and lists of them (a,b); names JAN-DEC"
    " and SUN-SAT; L and 15W in the day of the month; 1#2 and L5 in the day of the week"
)


def _unsupported(part: str, what: str) -> str | None:
    """Why one comma-separated `part` of the `what` field is refused, or ``None`` if djobs reads it.

    croniter reads more than djobs documents; what it alone reads is refused here with what
    to write instead, never passed on to be read as croniter reads it: its random ``R`` and
    hashed ``H`` values, ``W15``, ranges ending at ``L`` and ranges of ``#`` days; Quartz's
    (and croniter's) ``a/n`` start with a step, ``LW`` and ``L-3``. A number out of its
    field's range is named with the range.
    """
    low = part.lower()
    high = _cased(_NAMED_BOUNDS[what][1], part) if what in _NAMED_BOUNDS and part[:1].isalpha() else _BOUNDS[what][1]
    number = "12" if what == "day-of-month" else "3" if what in ("month", "day-of-week") else "17"
    if (random := _CRONITER_VALUE.fullmatch(low)) is not None:
        kind = (
            "croniter's random value, which each process (and each restart) picks anew, so engines"
            " sharing a database would disagree"
            if random.group(1) == "r"
            else "a hashed value (croniter, Jenkins), which moves with the id it hashes"
        )
        return (
            f"{part!r} in the {what} field is {kind}; djobs does not support it: write the {what} you mean,"
            f" such as {number} (or a step such as {number}-{_BOUNDS[what][1]}/5)"
        )
    if what == "day-of-month":
        if low in ("lw", "wl"):
            return (
                f"{part!r} (Quartz's last weekday of the month) is not supported: fire on the last days"
                " (0 0 26-31 * *) and let the body check for the month's last weekday"
            )
        if low.startswith("l-"):
            return (
                f"{part!r} (Quartz's day counted back from the last) is not supported: use L for the last"
                " day of the month, or list the days you mean"
            )
        if re.fullmatch(r"w[0-9]+", low):
            return f"{part!r}: the weekday nearest a day is written {part[1:]}W (croniter alone reads W{part[1:]})"
        if re.fullmatch(r"[0-9]+-l(?:/[0-9]+)?", low):
            first = low.split("-")[0]
            return f"{part!r}: a range ending at L is not supported; write {first}-31 (days a month lacks never match)"
    if what == "day-of-week":
        if low == "l":
            return (
                "'L' alone in the day-of-week field is not supported:"
                " write Ld for the last weekday d of the month (L5 = last Friday)"
            )
        if (days := re.fullmatch(rf"({_VALUE})-({_VALUE})(?:/([0-9]+))?#([0-9]+)", low)) is not None:
            start, end = (_number(value, _NAMES[what]) for value in days.group(1, 2))
            every_nth = int(days.group(3) or 1)
            listed = "1#2,2#2,..."
            if start is not None and end is not None and start <= end and every_nth:
                named = not days.group(1).isdigit()
                listed = ",".join(
                    f"{_cased(_WEEKDAYS[d % 7], part) if named else d}#{days.group(4)}"
                    for d in range(start, end + 1, every_nth)
                )
            return f"{part!r}: a range of n-th weekdays is not supported; list them: {listed}"
    names = _NAMES.get(what, {})
    if what in _DAY_PART and _DAY_PART[what].fullmatch(low) is not None:
        if low == "l":
            return None
        if low.endswith("w"):
            return _out_of_range(part, low[:-1], "the day of the month")
        if low.startswith("l"):
            return _out_of_range(part, low[1:], what)
        weekday, nth = low.split("#")
        if not weekday.isdigit() and weekday not in names:
            return _unknown_name(part, what)
        if not 1 <= int(nth) <= 5:
            return f"{part!r}: n in d#n (the n-th weekday d of the month) runs from 1 to 5"
        return _out_of_range(part, weekday, what)
    if (plain := _PLAIN_PART.fullmatch(low)) is not None:
        step = plain["star_step"] or plain["step"]
        if step is not None and int(step) == 0:
            return f"{part!r}: a step must be at least 1"
        for value in (plain["first"], plain["last"]):
            if value is not None and not value.isdigit() and value not in names:
                return _unknown_name(part, what)
            if value is not None and (why := _out_of_range(part, value, what)) is not None:
                return why
        return None
    started = re.fullmatch(rf"({_VALUE})/([0-9]+)", low)
    if started is not None and (started.group(1).isdigit() or started.group(1) in names):
        first, step = part.split("/")
        instead = first if first.lower() in (high.lower(), _BOUNDS[what][1]) else f"{first}-{high}/{step}"
        return f"{part!r}: a step from a start (Quartz's and croniter's a/n) is not supported; write {instead}"
    return f"{part!r} is not cron syntax djobs reads in the {what} field: {_SYNTAX}"


#: The values each field takes (cronie's; day-of-week 7 is Sunday, as 0).
_LIMITS = {"minute": (0, 59), "hour": (0, 23), "day-of-month": (1, 31), "month": (1, 12), "day-of-week": (0, 7)}
_LIMITS["the day of the month"] = _LIMITS["day-of-month"]


def _out_of_range(part: str, value: str, what: str) -> str | None:
    """Why the number `value` of `part` is out of the `what` field's range, or ``None`` (a name is in range)."""
    low, high = _LIMITS[what]
    if not value.isdigit() or low <= int(value) <= high:
        return None
    field = what if what.startswith("the ") else f"the {what} field"
    return f"{part!r} is out of range: {field} runs from {low} to {high}"


def _unknown_name(part: str, what: str) -> str:
    bounds = _NAMED_BOUNDS.get(what)
    known = f" (names: {'-'.join(_cased(n, part) for n in bounds)})" if bounds else ""
    return f"{part!r} is not a {what} djobs reads{known}"


def _read_fields(fields: list[str]) -> Result[list[str], str]:
    """`fields` as croniter is to read them, or why one is refused (`_unsupported`).

    An equal range ``a-a`` (``a-a/n`` too) is rewritten as ``a``, cronie's reading, where croniter
    reads it as the whole field (``5-5`` in the minute field would fire every minute).
    """
    read: list[str] = []
    for field, what in zip(fields, _FIELDS.split(), strict=True):
        if field == "?" and what in _DAY_PART:
            read.append(field)
            continue
        parts = field.split(",")
        for part in parts:
            why = _unsupported(part, what)
            if why is not None:
                return Failure(why)
        if what == "day-of-month" and len(parts) > 1 and any(p.lower().endswith("w") for p in parts):
            return Failure(f"{field!r}: the nearest weekday (15W) must be the whole day-of-month field, a single day")
        if what == "day-of-week":
            nth = [p for p in parts if "#" in p or p.lower().startswith("l")]
            if nth and len(nth) < len(parts):
                return Failure(
                    f"the day-of-week field {field!r} mixes plain days with n-th or last weekdays (1#2, L5),"
                    " which is not supported: make a cron job for each"
                )
        read.append(",".join(_one_value(part) for part in parts))
    return Success(read)


def _one_value(part: str) -> str:
    """``a-a`` and ``a-a/n`` as ``a``; any other part as it is."""
    matched = _RANGE.fullmatch(part.lower())
    if matched is not None and matched.group(1) == matched.group(2):
        return part.split("-")[0]
    return part


@lru_cache(maxsize=512)
def _plan(normal: str) -> Result[_Plan, str]:
    """The walks of a normalised expression, or why it is refused (a message tail)."""
    fields = NICKNAMES.get(normal, normal).split()
    if len(fields) == 6:
        return Failure(
            "6 fields are not supported: the sixth could be a seconds field before the minute (Quartz, croniter)"
            " or a year field after the day of the week (AWS), so it is read as neither; cron takes 5 fields"
            f" ({_FIELDS}) and fires to the minute (djobs.every('30 seconds') runs more often)"
        )
    if len(fields) == 7:
        return Failure("seconds and year fields (Quartz) are not supported")
    if len(fields) != 5:
        return Failure(f"expected 5 fields ({_FIELDS}) or a nickname such as @daily, got {len(fields)}")
    minute, hour, dom, month, dow = fields
    for field, what in zip(fields, _FIELDS.split(), strict=True):
        backwards = _reversed_range(field, _NAMES.get(what, {}))
        if backwards is not None:
            first, last = backwards.split("-")
            low, high = _BOUNDS[what] if first.isdigit() else _NAMED_BOUNDS[what]
            high, low = _cased(high, first), _cased(low, last)  # as the expression writes its names
            return Failure(
                f"the {what} field's range {backwards!r} runs backwards, and is not read as wrapping around;"
                f" write the two ranges it would wrap into: {first}-{high},{low}-{last}"
            )
    for field in (minute, hour, month):
        if "?" in field:
            return Failure("'?' is only allowed as the whole day-of-month or day-of-week field")
    for field, what in ((dom, "day-of-month"), (dow, "day-of-week")):
        if "?" in field and field != "?":
            return Failure(f"'?' must be the whole {what} field")
    if dow.upper().endswith("L") and dow.upper() != "L":
        return Failure(f"{dow!r}: the last weekday of the month is written L5 (last Friday), not 5L (Quartz)")
    match _read_fields(fields):
        case Failure(why):
            return Failure(why)
        case Success(read):
            minute, hour, dom, month, dow = read
    dom_star, dow_star = _unrestricted(dom), _unrestricted(dow)
    dom, dow = ("*" if dom == "?" else dom), ("*" if dow == "?" else dow)
    if dom_star or dow_star:
        walks: list[tuple[str, bool]] = [(" ".join((minute, hour, dom, month, dow)), False)]
    else:
        walks = [(" ".join((minute, hour, dom, month, "*")), True), (" ".join((minute, hour, "*", month, dow)), True)]
    try:
        for walk, day_or in walks:
            croniter(walk, datetime(2000, 1, 1), day_or=day_or)  # syntax of every half first
        alive = tuple(w for w in walks if not _never_matches(*w))
    except (CroniterError, ValueError, KeyError, IndexError, TypeError) as exc:
        return Failure(str(exc))
    if not alive:
        return Failure("it never matches a date")
    elapsed = any(c in field for field in (minute, hour) for c in "*/")
    plain = [_plain_fields(walk) for walk, _ in alive]
    sets = tuple(f for f in plain if f is not None)
    return Success(_Plan(alive, elapsed, sets if len(sets) == len(plain) else None))


def _parse_expression(expression: object) -> Result[str, ValidationError]:
    if not isinstance(expression, str):
        return Failure(ValidationError(f"cron expression must be a string, got {expression!r}"))
    normal = " ".join(expression.split())
    if normal.startswith("@"):
        normal = normal.lower()
        if normal not in NICKNAMES:
            known = ", ".join(NICKNAMES)
            return Failure(
                ValidationError(f"invalid cron expression {expression!r}: unknown nickname (known: {known})")
            )
    return (
        _plan(normal)
        .map(lambda _: normal)
        .alt(lambda why: ValidationError(f"invalid cron expression {expression!r}: {why}"))
    )


#: How many days a walk of plain fields looks ahead: past every leap-day cycle (28 years).
_MAX_DAYS = 366 * 30
_ONE_DAY = timedelta(days=1)
#: Zone names whose offset never changes from UTC's: a cron in one needs no daylight-saving pass.
_UTC_NAMES = frozenset({"UTC", "Etc/UTC"})


def _walls(plan: _Plan, start: datetime) -> Iterator[datetime]:
    """The matching wall times strictly after `start`, ascending, each once."""
    if plan.fields is not None:
        return _plain_walls(plan.fields, start)
    return _croniter_walls(plan, start)


def _plain_walls(fields: tuple[_Fields, ...], start: datetime) -> Iterator[datetime]:
    """`_walls` for plain fields, by calendar arithmetic (croniter's walk costs about 0.2 ms a step)."""
    day = start.date()
    after = start.hour * 60 + start.minute  # wall times are whole minutes: later ones are in later minutes
    for n in range(_MAX_DAYS):
        firing = [f.minutes_of_day for f in fields if f.fires_on(day)]
        if firing:
            times = firing[0] if len(firing) == 1 else sorted(set().union(*firing))
            for minute in times:
                if n == 0 and minute <= after:
                    continue
                yield datetime(day.year, day.month, day.day, minute // 60, minute % 60)
        if day == date.max:
            return
        day += _ONE_DAY


def _later_that_day(fields: tuple[_Fields, ...], after_ms: int) -> int | None:
    """The first wall time of `fields` later than `after_ms` on the same UTC day, in epoch ms,
    or ``None`` if none is left that day (`_plain_walls` then walks the days after): an hourly
    cron's next run, every hour but the last of a day, by arithmetic on the day's minutes."""
    day_ms = after_ms - after_ms % _DAY_MS
    # Wall times are whole minutes: those strictly later than `after_ms` are past its minute.
    minute = (after_ms - day_ms) // 60_000
    day = date.fromordinal(_EPOCH_ORDINAL + day_ms // _DAY_MS)
    best: int | None = None
    for one in fields:
        if one.fires_on(day):
            times = one.minutes_of_day
            i = bisect_right(times, minute)
            if i < len(times) and (best is None or times[i] < best):
                best = times[i]
    return None if best is None else day_ms + best * 60_000


def _croniter_walls(plan: _Plan, start: datetime) -> Iterator[datetime]:
    """`_walls` by croniter, for fields it alone understands (``L``, ``#``, ...)."""
    walks = [croniter(walk, start, day_or=day_or) for walk, day_or in plan.walks]
    heads: list[datetime] = [w.get_next(datetime) for w in walks]
    last: datetime | None = None
    while True:
        i = min(range(len(heads)), key=heads.__getitem__)
        wall = heads[i]
        heads[i] = walks[i].get_next(datetime)
        if wall != last:
            last = wall
            yield wall


def _from_ms(ms: int) -> datetime:
    """The UTC instant of epoch ms `ms`; `SchedulerError` past datetime's range (a clock read
    after the year 9999, which the walk cannot start from), where datetime raised OverflowError."""
    try:
        return _EPOCH + timedelta(0, 0, 0, ms)  # milliseconds, by position (no keyword parsing)
    except OverflowError:
        raise SchedulerError(beyond_datetime(ms)) from None


def _moved(instant: datetime, by: timedelta) -> datetime:
    """`instant` moved `by`, or left where it is where that passes datetime's first or last day."""
    try:
        return instant + by
    except OverflowError:
        return instant


def _offset(instant: datetime, zone: ZoneInfo) -> timedelta:
    try:
        local = instant.astimezone(zone)
    except OverflowError:
        # Within a day of datetime's first or last instant the local time falls outside its
        # range: the zone's offset at the instant's face value is the same there (local mean time).
        local = instant.replace(tzinfo=None)
    offset = zone.utcoffset(local)
    assert offset is not None  # a ZoneInfo always knows its offset at an aware instant
    return offset


@final
@dataclass(frozen=True, slots=True)
class Cron:
    """Run at the wall-clock times a five-field cron expression names, in a time zone.

    Build it with `cron` (or `parse_cron` for run-time input). Both day fields
    restricted fire on either day (cronie's rule); a fixed-time expression
    fires once per wall time across daylight-saving changes, an interval one
    in elapsed time; see the module notes.

    Attributes:
        expression: ``minute hour day-of-month month day-of-week`` (or a
            nickname, lower-cased), with whitespace normalised to single spaces.
        tz: The IANA zone name. Kept as text so it survives serialisation
            (a ``ZoneInfo`` would be turned into a fixed offset).

    Examples:
        >>> Cron("0 9 * * 1-5", tz="Europe/Berlin").describe()
        "cron '0 9 * * 1-5' in Europe/Berlin"
    """

    expression: str
    tz: str = "UTC"

    def __post_init__(self) -> None:
        normal = _parse_expression(self.expression).alt(raise_error).unwrap()
        _parse_zone(self.tz).alt(raise_error)
        object.__setattr__(self, "expression", normal)

    def next_after(self, after_ms: int) -> int:
        """The first run time strictly later than ``after_ms``.

        Args:
            after_ms: Epoch milliseconds, UTC.

        Returns:
            Epoch milliseconds, UTC.

        Raises:
            SchedulerError: No run time is left before datetime's last day, or
                `after_ms` is past it (after the year 9999).

        Examples:
            >>> cron("30 1 * * *", tz="America/New_York").next_after(0)  # 1970-01-01 06:30 UTC
            23400000
        """
        # Not cached on the instance, where msgspec would try to encode it; ZoneInfo keeps
        # its own cache of recently used zones, _plan its own of expressions.
        plan = _plan(self.expression).unwrap()  # the constructor checked it
        if self.tz in _UTC_NAMES and plan.fields is not None and 0 <= after_ms < LATEST_MS:
            same_day = _later_that_day(plan.fields, after_ms)
            if same_day is not None:
                return same_day
        after = _from_ms(after_ms)
        if self.tz in _UTC_NAMES:
            # No offset ever changes: the first matching wall time after `after` is the run.
            for wall in _walls(plan, after.replace(tzinfo=None)):
                return (wall.replace(tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)
            raise SchedulerError(f"cron {self.expression!r} in {self.tz}: no run time found after {after}")
        zone = ZoneInfo(self.tz)
        best = self._first_pass(plan, zone, after)
        if plan.elapsed:
            second = self._second_pass(plan, zone, after, best)
            if second is not None and second < best:
                best = second
        return (best - _EPOCH) // timedelta(milliseconds=1)

    def _first_pass(self, plan: _Plan, zone: ZoneInfo, after: datetime) -> datetime:
        """The earliest matching wall time later than `after`, each wall time read with fold=0;
        for an interval expression, the earliest that exists (a gap's wall times are skipped)."""
        # A wall time inside a spring-forward gap maps (fold=0, the pre-change offset) to an
        # instant up to one shift after its face value, so just after a gap the search starts
        # that much earlier on the wall clock to still see it.
        start = _moved(after, min(_offset(after, zone), _offset(_moved(after, -_DAY), zone)))
        best: datetime | None = None
        horizon: datetime | None = None
        for _, wall in zip(range(_MAX_STEPS), _walls(plan, start.replace(tzinfo=None)), strict=False):
            if horizon is not None and wall >= horizon:
                break
            instant = wall.replace(tzinfo=zone).astimezone(UTC)
            if instant <= after or (best is not None and instant >= best):
                continue
            shown = instant.astimezone(zone).replace(tzinfo=None)
            if plan.elapsed and shown != wall:
                continue  # an interval's wall time in a gap does not exist, so it does not fire
            best = instant
            # Wall times that exist map to instants in order, so only a gap wall time (moved
            # forward) can be beaten, and only by a later wall time read before the clock
            # shows `best`; an existing wall time is its own horizon and ends the search.
            horizon = shown
            if wall >= horizon:
                break
        else:
            raise SchedulerError(f"cron {self.expression!r} in {self.tz}: no run time found after {after}")
        assert best is not None
        return best

    def _second_pass(self, plan: _Plan, zone: ZoneInfo, after: datetime, bound: datetime) -> datetime | None:
        """The earliest matching wall time later than `after` and before `bound`, read with fold=1.

        fold=1 differs from fold=0 only for the second pass of a repeated hour (and for gap
        times, which are skipped here: they have no second reading). On existing wall times
        fold=1 maps to instants in order, so the first one later than `after` is the earliest.
        """
        start = _moved(
            after, min(_offset(after, zone), _offset(_moved(after, -_DAY), zone), _offset(_moved(after, _DAY), zone))
        )
        for _, wall in zip(range(_MAX_STEPS), _walls(plan, start.replace(tzinfo=None)), strict=False):
            instant = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
            if instant >= bound:
                return None
            if instant <= after or instant.astimezone(zone).replace(tzinfo=None) != wall:
                continue  # already past, or a wall time in a gap
            return instant
        return None

    def next_runs(self, after_ms: int, n: int) -> list[int]:
        """The next ``n`` run times after ``after_ms`` (epoch ms, UTC), in order; fewer where
        none is left by 9999-12-31T00:00:00Z, the latest time djobs schedules anything for.

        Raises:
            ValidationError: `after_ms` is not an int, or `n` not an int from 0 to 1000
                (``client.crons.next_runs``'s limit).

        Examples:
            >>> cron("0 * * * *").next_runs(0, 3)
            [3600000, 7200000, 10800000]
        """
        return _next_runs(self, after_ms, n)

    def describe(self) -> str:
        """The schedule in words.

        Examples:
            >>> cron("*/15 * * * *").describe()
            "cron '*/15 * * * *' in UTC"
        """
        return f"cron {self.expression!r} in {self.tz}"

    def __repr__(self) -> str:
        return f"Cron({self.expression!r}, tz={self.tz!r})"


def cron(expression: str, tz: str = "UTC") -> Cron:
    """A schedule from a five-field cron expression, read on the wall clock of ``tz``.

    The syntax, and how it compares with cronie's and Quartz's, is the table
    in the cron guide; the day and daylight-saving rules are in the module notes.

    Args:
        expression: ``minute hour day-of-month month day-of-week``: ranges,
            steps, lists, names, ``L`` and ``15W`` (day-of-month), ``1#2`` and
            ``L5`` (day-of-week), ``?`` for a whole day field, or a nickname
            (``@hourly``, ``@daily``, ``@weekly``, ``@monthly``, ``@yearly``).
            ``a-a`` is the one value ``a`` (cronie's reading). Seconds and year
            fields, ``@reboot``, ``LW``, ``L-3``, Quartz's ``5L`` and ``a/n``, and
            croniter's own ``R`` (random) and ``H`` (hashed) values, ``W15``,
            ranges to ``L`` and ranges of ``d#n`` are refused, each saying what
            to write instead.
        tz: An IANA zone name such as ``"America/New_York"``.

    Returns:
        The schedule.

    Raises:
        ValidationError: The expression is malformed or never matches a date,
            or the zone is unknown.

    Examples:
        >>> cron("30 2 * * *", tz="Europe/Berlin")
        Cron('30 2 * * *', tz='Europe/Berlin')
    """
    return Cron(expression, tz)


def parse_cron(expression: object, tz: object = "UTC") -> Result[Cron, ValidationError]:
    """Read a cron schedule from run-time input, without raising.

    Args:
        expression: The cron expression; anything else is a failure.
        tz: The IANA zone name.

    Returns:
        ``Success(Cron)``, or ``Failure(ValidationError)`` saying what is wrong.

    Examples:
        >>> parse_cron("0 9 * * 1-5", "Europe/Berlin")
        <Success: Cron('0 9 * * 1-5', tz='Europe/Berlin')>
        >>> parse_cron("61 * * * *")
        <Failure: invalid cron expression '61 * * * *': '61' is out of range: the minute field runs from 0 to 59>
    """
    return Result.do(Cron(normal, str(tz)) for normal in _parse_expression(expression) for _ in _parse_zone(tz))
