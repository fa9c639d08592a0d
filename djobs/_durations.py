"""One parser for every duration djobs accepts.

A duration is a `timedelta`, a non-negative ``int`` of milliseconds, or a
string such as ``"30 minutes"``, ``"5s"``, ``"1.5 hours"`` or ``"1h30m"``.
Floats are refused: in a Trio program a bare ``0.5`` usually means seconds,
and guessing wrong by a factor of a thousand is worse than asking.
"""

from __future__ import annotations

import re
from datetime import timedelta
from fractions import Fraction
from typing import TypeAlias

from returns.result import Failure, Result, Success

from ._errors import ValidationError, raise_error, safe_repr
from ._input import LONGEST_INTERVAL, check_interval, nearest_ms

__all__ = ["DurationLike", "duration", "format_duration", "parse_duration", "to_ms"]

#: What a duration option may be written as: a string (``"30 minutes"``,
#: ``"1h30m"``), a `timedelta`, or an ``int`` that counts **milliseconds**
#: (``every(5)`` runs every 5 ms; ``delay=5000`` is five seconds). A ``float``
#: is refused. See Durations in the engine reference for the one exception:
#: a time to wait until (``ctx.schedule``, ``ctx.sleep``, a signal wait's
#: ``timeout``) takes no bare number at all.
DurationLike: TypeAlias = str | timedelta | int

_EXPECTED = (
    'expected a timedelta, milliseconds as an int, or a string like "30 minutes", "5s", "1h30m"'
    " in units ms, s, m (minutes), h, d, w (weeks; no months or years: write days, 36525 days is 100 years)"
)

_UNIT_US = {
    "ms": 1_000,
    "s": 1_000_000,
    "m": 60_000_000,
    "h": 3_600_000_000,
    "d": 86_400_000_000,
    "w": 604_800_000_000,
}
_UNIT_NAMES = {
    "ms": ("ms", "msec", "msecs", "millisecond", "milliseconds"),
    "s": ("s", "sec", "secs", "second", "seconds"),
    "m": ("m", "min", "mins", "minute", "minutes"),
    "h": ("h", "hr", "hrs", "hour", "hours"),
    "d": ("d", "day", "days"),
    "w": ("w", "week", "weeks"),
}
_UNIT_OF = {name: unit for unit, names in _UNIT_NAMES.items() for name in names}

# Longest names first and no letter after the unit, so "5min" is never read as "5m" + "in"
# and "500ms" never as "500m" + "s".
_UNIT_PATTERN = "|".join(sorted(_UNIT_OF, key=len, reverse=True))
_PART = r"(\d+(?:\.\d*)?|\.\d+)\s*(" + _UNIT_PATTERN + r")(?![a-z])"
# ASCII only: int() would happily read Arabic-Indic or full-width digits.
_PART_RE = re.compile(_PART, re.ASCII)
_DURATION_RE = re.compile(r"(?:" + _PART + r"\s*)+", re.ASCII)

_LONGEST_MS = LONGEST_INTERVAL // timedelta(milliseconds=1)

#: Why a duration longer than `LONGEST_INTERVAL` is refused (a `ValidationError` holds it).
TOO_LONG = f"longer than {LONGEST_INTERVAL.days} days (100 years), the longest duration djobs takes"

# Reprs of arbitrary user text go into messages and logs; keep them readable.
_MAX_REPR = 80


def _invalid(value: object, what: str, reason: str | None = None) -> ValidationError:
    try:
        shown = repr(value)
    except Exception:
        # parse_duration promises not to raise; a broken __repr__ (or an int too long to
        # print) must not break that.
        shown = f"<{type(value).__name__} object>"
    if len(shown) > _MAX_REPR:
        shown = shown[: _MAX_REPR - 3] + "..."
    why = f"{reason}; " if reason else ""
    return ValidationError(f"invalid {what} {shown}: {why}{_EXPECTED}")


def negative_text(value: str) -> bool:
    """Whether `value` reads as a duration written with a minus sign (``"-5 seconds"``): refused as negative."""
    text = value.strip().lower()
    return text.startswith("-") and _DURATION_RE.fullmatch(text[1:].lstrip()) is not None


def _parse_text(value: str, what: str) -> Result[timedelta, ValidationError]:
    text = value.strip().lower()
    if not _DURATION_RE.fullmatch(text):
        if negative_text(text):
            return Failure(_invalid(value, what, "must not be negative"))
        return Failure(_invalid(value, what))
    try:
        # Fractions keep "1.5 hours" and "0.1s" exact; timedelta only rounds once, at the end.
        total = sum(
            (Fraction(number) * _UNIT_US[_UNIT_OF[unit]] for number, unit in _PART_RE.findall(text)),
            Fraction(0),
        )
        parsed = timedelta(microseconds=round(total))
    except (OverflowError, ValueError):  # ValueError: more digits than int() will read
        return Failure(_invalid(value, what, f"too large: {TOO_LONG}"))
    return Failure(_invalid(value, what, TOO_LONG)) if parsed > LONGEST_INTERVAL else Success(parsed)


def parse_duration(value: object, *, what: str = "duration") -> Result[timedelta, ValidationError]:
    """Read a duration from run-time input, without raising.

    Accepted: a `timedelta`; a non-negative ``int`` of milliseconds (not
    ``bool``, not ``float``); or a string of one or more ``<number><unit>``
    parts, case-insensitive, with optional spaces, where the number may have
    a decimal point and the unit is one of ``ms``/``msec``/``millisecond(s)``,
    ``s``/``sec(s)``/``second(s)``, ``m``/``min(s)``/``minute(s)``,
    ``h``/``hr(s)``/``hour(s)``, ``d``/``day(s)``, ``w``/``week(s)``. Parts
    add up (``"1h30m"``, ``"1 hour 30 minutes"``). Zero is allowed; negative
    values, bare numbers in strings, unknown units, NaN and infinity are not,
    nor is a duration longer than 36,525 days (100 years): every duration
    djobs takes (an option, a delay, a ``ctx.schedule`` or a workflow's
    ``ctx.sleep``) is read here or bounded the same way.

    Args:
        value: The input to read.
        what: The name of the setting, used in the error message in place of
            the word "duration".

    Returns:
        ``Success(timedelta)``, or ``Failure(ValidationError)`` whose message
        names the input and lists the accepted forms.

    Examples:
        >>> parse_duration("1h30m")
        <Success: 1:30:00>
        >>> parse_duration(1500)
        <Success: 0:00:01.500000>
        >>> parse_duration("thirty", what="flush_after").failure().message.startswith(
        ...     "invalid flush_after 'thirty': expected a timedelta, milliseconds as an int")
        True
    """
    if isinstance(value, timedelta):
        if value < timedelta(0):
            return Failure(_invalid(value, what, "must not be negative"))
        return Failure(_invalid(value, what, TOO_LONG)) if value > LONGEST_INTERVAL else Success(value)
    if isinstance(value, bool):
        return Failure(_invalid(value, what))
    if isinstance(value, int):
        if value < 0:
            return Failure(_invalid(value, what, "must not be negative"))
        if value > _LONGEST_MS:
            return Failure(_invalid(value, what, TOO_LONG))
        return Success(timedelta(milliseconds=value))
    if isinstance(value, str):
        return _parse_text(value, what)
    return Failure(_invalid(value, what))


def duration(value: DurationLike, *, what: str = "duration") -> timedelta:
    """Read a duration written in the program, raising if it is malformed.

    For definition-time literals (``Continuous.make(..., timeout="5s")``),
    where a bad value is a bug to fix rather than an outcome to handle. Takes
    the same forms as `parse_duration`.

    Args:
        value: The duration literal.
        what: The name of the setting, for the error message.

    Returns:
        The duration as a `timedelta`.

    Raises:
        ValidationError: The value is not a valid duration.

    Examples:
        >>> duration("1 week")
        datetime.timedelta(days=7)
    """
    return parse_duration(value, what=what).alt(raise_error).unwrap()


def to_ms(value: timedelta) -> int:
    """Whole milliseconds in a `timedelta`, rounding half a millisecond up.

    Integer arithmetic throughout, so long durations do not lose precision.

    Args:
        value: The duration.

    Returns:
        The number of milliseconds.

    Examples:
        >>> to_ms(timedelta(seconds=1, microseconds=1500))
        1002
    """
    return nearest_ms(value)


def format_duration(value: timedelta) -> str:
    """Write a `timedelta` the way a person would, in a form `parse_duration` reads back.

    Sub-millisecond parts are written as fractional milliseconds.

    Args:
        value: A non-negative duration.

    Returns:
        Text such as ``"1 hour 30 minutes"`` or ``"500 milliseconds"``.

    Examples:
        >>> format_duration(timedelta(days=1, minutes=30))
        '1 day 30 minutes'
    """
    us = value // timedelta(microseconds=1)
    if us == 0:
        return "0 milliseconds"
    parts: list[str] = []
    for name, size in (("day", 86_400_000_000), ("hour", 3_600_000_000), ("minute", 60_000_000), ("second", 1_000_000)):
        count, us = divmod(us, size)
        if count:
            parts.append(f"{count} {name}" + ("" if count == 1 else "s"))
    if us:
        ms = f"{us // 1_000}.{us % 1_000:03d}".rstrip("0").rstrip(".")
        parts.append(f"{ms} millisecond" + ("" if ms == "1" else "s"))
    return " ".join(parts)


def check_at_least(value: DurationLike, option: str, least_ms: int, least: str) -> int:
    """The milliseconds of duration option `value`, refused if over 100 years or under `least_ms`.

    For settings where zero would mean a busy loop or no wait at all (a poll
    interval, a connect timeout): `least` names the floor in words.

    Raises:
        ValidationError: `value` is malformed, over 100 years, or under `least_ms`.
    """
    ms = to_ms(check_interval(duration(value, what=option), option))
    if ms < least_ms:
        raise ValidationError(f"{option} must be at least {least}, got {safe_repr(value):.80}")
    return ms
