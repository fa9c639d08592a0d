"""How many of a job may run at once, and how often it may start: ``Job.make(concurrency=, rate_limit=, limit_key=)``.

The limits live in the definition; a stored row carries only its *limit key*
(``name``, or ``name`` and the key the definition's `limit_key` function gave
its params, joined by ``\\x1f``), computed when the job is enqueued. The
worker's claim passes its definitions' limits to the storage, which takes a
row only while its key is under both limits, in the claim's own transaction
(see ``docs/design.md``, "Concurrency and rate limits"). A changed limit
therefore applies to the rows already waiting; a changed key function only to
rows enqueued after the change.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Generic, TypeVar

from returns.result import Failure, Result, Success

from ._bodies import check_arity
from ._durations import DurationLike, duration, to_ms
from ._errors import ValidationError, describe
from ._input import MAX_LIMIT, SEPARATOR, check_text

__all__ = ["JobLimits", "RateLimit", "job_limits", "limit_key_of"]

P = TypeVar("P")

#: The longest rate-limit period: a day (starts older than that are forgotten).
MAX_PERIOD_MS: Final = 86_400_000
#: The longest key a `limit_key` function may return.
MAX_KEY: Final = 512

_PERIODS: Final = {"second": 1_000, "minute": 60_000, "hour": 3_600_000, "day": 86_400_000}
_PERIOD_ALIASES: Final = {
    **{name: name for name in _PERIODS},
    "s": "second",
    "sec": "second",
    "m": "minute",
    "min": "minute",
    "h": "hour",
    "hr": "hour",
    "d": "day",
}
_RATE_RE = re.compile(r"\s*(\d+)\s*/\s*([a-z]+)\s*", re.ASCII)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `count` starts of a job (per key) in any window of `per`.

    The text form ``"100/minute"`` (``N/second``, ``N/minute``, ``N/hour``,
    ``N/day``) is the same as ``RateLimit(100, "1 minute")``; the typed form
    takes any duration from 1 ms to a day (``RateLimit(5, timedelta(seconds=10))``).
    The window slides: a start counts until `per` after it, as DBOS's queue
    limiter counts (not a bucket that refills at fixed times).

    Args:
        count: Starts allowed per window, from 1 to 2,147,483,647 (`MAX_LIMIT`, PostgreSQL's
            ``integer``; for no rate limit pass no `RateLimit`).
        per: The window: a duration (``"10 seconds"``, a timedelta, ms as an int).

    Raises:
        ValidationError: `count` not an int from 1 to 2,147,483,647, or `per` not a
            duration from 1 ms to a day.

    Examples:
        >>> RateLimit(100, "1 minute").period_ms
        60000
        >>> RateLimit.parse("5/second")
        RateLimit(count=5, per=datetime.timedelta(seconds=1))
    """

    count: int
    per: DurationLike

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or not 1 <= self.count <= MAX_LIMIT:
            raise ValidationError(f"RateLimit(count={self.count!r:.40}): expected an int from 1 to {MAX_LIMIT}")
        ms = to_ms(duration(self.per, what="RateLimit per"))
        if not 1 <= ms <= MAX_PERIOD_MS:
            raise ValidationError(f"RateLimit(per={self.per!r}): the window must be from 1 millisecond to 1 day")

    @property
    def period_ms(self) -> int:
        """The window in milliseconds."""
        return to_ms(duration(self.per, what="RateLimit per"))

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """``"N/second"``, ``"N/minute"``, ``"N/hour"`` or ``"N/day"`` as a `RateLimit`.

        Raises:
            ValidationError: Another form (``"5/fortnight"``, ``"0/minute"``, ``"fast"``).
        """
        match = _RATE_RE.fullmatch(text.lower()) if isinstance(text, str) else None
        period = _PERIOD_ALIASES.get(match.group(2)) if match else None
        if match is None or period is None:
            raise ValidationError(
                f"rate_limit {text!r:.80}: expected 'N/second', 'N/minute', 'N/hour' or 'N/day'"
                " (or a djobs.RateLimit(count, per=duration))"
            )
        return cls(int(match.group(1)), timedelta(milliseconds=_PERIODS[period]))


@dataclass(frozen=True, slots=True)
class JobLimits(Generic[P]):
    """A job definition's queue limits (`Job.make`'s ``concurrency``, ``rate_limit`` and ``limit_key``).

    Attributes:
        concurrency: At most this many running at once per key, across processes; ``None``: no limit.
        rate: At most ``rate.count`` starts per key in any ``rate.per``; ``None``: no limit.
        key: The params' key (``None``: one key, the job's name).
    """

    concurrency: int | None = None
    rate: RateLimit | None = None
    key: Callable[[P], str] | None = None


def job_limits(
    name: str, concurrency: object, rate_limit: object, limit_key: object, what: str | None = None
) -> JobLimits[Any] | None:
    """Check `Job.make`'s limit options; ``None`` when the job has no limit. Messages start
    with `what` (default ``Job 'name'``).

    Raises:
        ValidationError: `concurrency` is not an int from 1 to `MAX_LIMIT` (2**31 - 1), `rate_limit`
            is neither ``"N/period"`` nor a `RateLimit`, or `limit_key` is not
            callable or is given without a limit.
    """
    what = what or f"Job {name!r}"
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= MAX_LIMIT
    ):
        raise ValidationError(
            f"{what}: concurrency must be an int from 1 to {MAX_LIMIT} (or None: no limit), got {concurrency!r:.80}"
        )
    rate: RateLimit | None
    if rate_limit is None or isinstance(rate_limit, RateLimit):
        rate = rate_limit
    elif isinstance(rate_limit, str):
        try:
            rate = RateLimit.parse(rate_limit)
        except ValidationError as exc:
            raise ValidationError(f"{what}: {exc.message}") from None
    else:
        raise ValidationError(
            f"{what}: rate_limit must be 'N/second|minute|hour|day' or a djobs.RateLimit, got {rate_limit!r:.80}"
        )
    if limit_key is not None:
        if not callable(limit_key):
            raise ValidationError(f"{what}: limit_key must be a function of the params returning a str")
        check_arity(limit_key, f"{what}: limit_key", ("params",))
    if concurrency is None and rate is None:
        if limit_key is not None:
            raise ValidationError(f"{what}: limit_key needs concurrency= or rate_limit= to key")
        return None
    return JobLimits(concurrency, rate, limit_key)


def limit_key_of(
    name: str, limits: JobLimits[Any] | None, params: Callable[[], object], what: str | None = None
) -> Result[str | None, ValidationError]:
    """The stored limit key of a job named `name` whose params `params()` gives (called
    only when the definition keys its limits): ``None`` without limits, else ``name`` or
    ``name + "\\x1f" + key``.

    A key function that raises, or returns anything but a non-empty storable ``str`` of
    at most 512 characters, is this enqueue's `ValidationError`, which starts with
    `what` (default ``job 'name'``; a batch names the params, ``params[3] of job 'name'``).
    """
    if limits is None:
        return Success(None)
    if limits.key is None:
        return Success(name)
    what = f"job {name!r}" if what is None else what
    try:
        key = limits.key(params())
    except BaseException as exc:  # any but a Ctrl-C is the enqueue's error, never an escape (`body_failure`'s rule)
        if isinstance(exc, KeyboardInterrupt):
            raise
        return Failure(ValidationError(f"{what}: its limit_key function raised {describe(exc)}"))
    return check_text(key, f"{what}: the key its limit_key function returned", max_length=MAX_KEY).map(
        lambda text: name + SEPARATOR + text
    )
