"""The retry layer: how long to wait before trying a failed run again, and whether to.

Retries are alarms, so a pending retry survives a restart. Which failures are
retried is decided by the error's type: an error whose ``retryable`` is
false (for example an `ExecutionError(..., retryable=False)` or a
`ValidationError`) fails at once, and ``retry_on`` narrows retries to the
error or cause types listed.
"""

from __future__ import annotations

import builtins
import random
from datetime import timedelta
from typing import Literal, Protocol, final

from ._durations import DurationLike, duration
from ._errors import ExecutionError, JobError, ValidationError, safe_repr
from ._input import LONGEST_INTERVAL, check_attempts, seeded

_MICROSECOND = timedelta(microseconds=1)
_LONGEST_US = LONGEST_INTERVAL // _MICROSECOND

#: The backoff strategies by name, as the seed platform's retry configuration spells them.
BackoffName = Literal["exponential", "linear", "fixed"]


@final
class Backoff:
    """A delay policy: the wait before retry number ``n`` (1 = the first retry).

    Examples:
        >>> [Backoff.exponential(base="1 second", max="30 seconds").delay(n).seconds for n in range(1, 7)]
        [1, 2, 4, 8, 16, 30]
        >>> [Backoff.linear(base="1 second", increment="1 second").delay(n).seconds for n in (1, 2, 3)]
        [1, 2, 3]
        >>> capped = Backoff.linear(base="10 seconds", increment="10 seconds", max="25 seconds")
        >>> [capped.delay(n).seconds for n in (1, 2, 3)]
        [10, 20, 25]
        >>> Backoff.fixed("5 seconds").delay(9).seconds
        5
    """

    __slots__ = ("_base", "_increment", "_kind", "_max")

    def __init__(self, kind: str, base: timedelta, increment: timedelta, max: timedelta | None) -> None:
        self._kind = kind
        self._base = base
        self._increment = increment
        self._max = max

    @staticmethod
    def exponential(base: DurationLike = "1 second", max: DurationLike | None = None) -> Backoff:
        """``base``, ``2 * base``, ``4 * base``, ... capped at ``max``.

        ``max`` defaults to 30 seconds, or to ``base`` if that is longer (as
        ``Retry(backoff="exponential", initial_delay=...)`` does), so a long
        base is never silently cut to the default cap.

        Raises:
            ValidationError: A malformed duration, or ``max`` shorter than ``base``.
        """
        first = duration(base, what="base")
        if max is None:
            return Backoff("exponential", first, timedelta(0), builtins.max(first, timedelta(seconds=30)))
        cap = duration(max, what="max")
        if cap < first:
            raise ValidationError(f"Backoff.exponential: max ({cap}) is shorter than base ({first})")
        return Backoff("exponential", first, timedelta(0), cap)

    @staticmethod
    def linear(
        base: DurationLike = "1 second", increment: DurationLike = "1 second", max: DurationLike | None = None
    ) -> Backoff:
        """``base``, ``base + increment``, ``base + 2 * increment``, ... capped at ``max`` (default: no cap).

        Raises:
            ValidationError: A malformed duration, or ``max`` shorter than ``base``.
        """
        first = duration(base, what="base")
        cap = None if max is None else duration(max, what="max")
        if cap is not None and cap < first:
            raise ValidationError(f"Backoff.linear: max ({cap}) is shorter than base ({first})")
        return Backoff("linear", first, duration(increment, what="increment"), cap)

    @staticmethod
    def fixed(delay: DurationLike) -> Backoff:
        """The same delay before every retry."""
        return Backoff("fixed", duration(delay, what="delay"), timedelta(0), None)

    def delay(self, retry: int) -> timedelta:
        """The wait before retry number `retry` (1-indexed), at most `LONGEST_INTERVAL` (100 years).

        Integer microseconds throughout: the cap applies before anything could
        overflow a `timedelta`, whatever the base and the retry number.
        """
        n = max(retry, 1)
        base = self._base // _MICROSECOND
        if self._kind == "exponential":
            assert self._max is not None
            # Cap the exponent: past 2**80 every base is over the longest interval anyway.
            us = min(base << min(n - 1, 80), self._max // _MICROSECOND)
        elif self._kind == "linear":
            us = base + (self._increment // _MICROSECOND) * (n - 1)
            if self._max is not None:
                us = min(us, self._max // _MICROSECOND)
        else:
            us = base
        return timedelta(microseconds=min(us, _LONGEST_US))

    def __repr__(self) -> str:
        if self._kind == "exponential":
            return f"Backoff.exponential(base={self._base!r}, max={self._max!r})"
        if self._kind == "linear":
            cap = "" if self._max is None else f", max={self._max!r}"
            return f"Backoff.linear(base={self._base!r}, increment={self._increment!r}{cap})"
        return f"Backoff.fixed({self._base!r})"


@final
class Retry:
    """A retry policy for a job.

    Args:
        max_attempts: Total tries of one run, the first included (``3`` = one
            try and two retries). At least 1.
        delay: A `Backoff`, or one duration for a fixed delay.
        backoff: Instead of `delay`, the strategy by name, as the seed
            platform's retry configuration spells it (``backoff="exponential"``,
            ``initialDelay``, ``maxDelay``): ``"exponential"`` doubles from
            `initial_delay` up to `max_delay` (default 1 second to 30 seconds,
            or to `initial_delay` if that is longer); ``"linear"`` waits
            `initial_delay` times the retry number, capped at `max_delay`
            (default no cap); ``"fixed"`` waits `initial_delay` every time.
        initial_delay: With `backoff`: the first delay (default 1 second).
        max_delay: With `backoff`: the longest delay.
        jitter: Full jitter: wait a uniformly random time between zero and
            the backoff delay, so many failing instances do not retry in step.
        retry_on: Retry only failures whose error, or the error's ``cause``,
            is an instance of one of these types: an exception type or a
            tuple of them, as ``isinstance`` takes. ``None`` retries every
            retryable error; an empty tuple ``()`` retries none (as
            ``isinstance(x, ())`` is always false): each run gets one
            attempt, whatever `max_attempts` says.

    Raises:
        ValidationError: A bad `max_attempts`, duration or backoff name; both
            `delay` and `backoff` (or its delays); `max_delay` shorter than
            `initial_delay`; a `jitter` that is not a bool; a `retry_on` that
            is neither ``None``, an exception type nor a tuple of them (a list
            included).

    Examples:
        >>> Retry(max_attempts=3, delay=Backoff.fixed("2 seconds")).max_attempts
        3
        >>> linear = Retry(backoff="linear", initial_delay="1 second", max_delay="3 seconds").delay
        >>> [linear.delay(n).seconds for n in (1, 2, 3, 4)]
        [1, 2, 3, 3]
        >>> Retry(max_attempts=2, delay="1 second", retry_on=KeyError)
        Retry(max_attempts=2, delay=Backoff.fixed(datetime.timedelta(seconds=1)), jitter=False, retry_on=(KeyError,))
    """

    __slots__ = ("delay", "jitter", "max_attempts", "retry_on")

    retry_on: tuple[type[BaseException], ...] | None

    def __init__(
        self,
        max_attempts: int = 3,
        delay: Backoff | DurationLike | None = None,
        *,
        backoff: BackoffName | None = None,
        initial_delay: DurationLike | None = None,
        max_delay: DurationLike | None = None,
        jitter: bool = False,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
    ) -> None:
        self.max_attempts = check_attempts(max_attempts, "Retry(max_attempts=...)")
        named = backoff is not None or initial_delay is not None or max_delay is not None
        if named and delay is not None:
            raise ValidationError("Retry: give delay= or backoff= (with initial_delay=, max_delay=), not both")
        if named:
            self.delay = _named_backoff("exponential" if backoff is None else backoff, initial_delay, max_delay)
        elif delay is None:
            self.delay = Backoff.exponential()
        elif isinstance(delay, Backoff):
            self.delay = delay
        else:
            self.delay = Backoff.fixed(delay)
        if not isinstance(jitter, bool):
            raise ValidationError(f"Retry: jitter must be True or False, got {safe_repr(jitter):.80}")
        self.jitter = jitter
        self.retry_on = _check_retry_on(retry_on)

    def should_retry(self, error: JobError) -> bool:
        """Whether `error` is the kind of failure this policy retries."""
        if not error.retryable:
            return False
        if self.retry_on is None:
            return True
        cause = error.cause if isinstance(error, ExecutionError) else None
        return isinstance(error, self.retry_on) or isinstance(cause, self.retry_on)

    def delay_before(self, attempt: int, rng: random.Random) -> timedelta:
        """The wait before attempt number `attempt` (2 = the first retry)."""
        base = self.delay.delay(attempt - 1)
        if not self.jitter:
            return base
        return timedelta(microseconds=rng.uniform(0, base / timedelta(microseconds=1)))

    def __repr__(self) -> str:
        if self.retry_on is None:
            on = "None"
        else:  # the types by name, as a tuple is written: (KeyError,), (KeyError, app.Busy), ()
            names = [_type_name(tp) for tp in self.retry_on]
            on = f"({names[0]},)" if len(names) == 1 else f"({', '.join(names)})"
        return f"Retry(max_attempts={self.max_attempts}, delay={self.delay!r}, jitter={self.jitter}, retry_on={on})"


def _type_name(tp: type) -> str:
    """A class as code names it: ``KeyError`` for a builtin, ``module.Qualified`` otherwise."""
    return tp.__qualname__ if tp.__module__ == "builtins" else f"{tp.__module__}.{tp.__qualname__}"


def _check_retry_on(retry_on: object) -> tuple[type[BaseException], ...] | None:
    """`retry_on` as a tuple of exception types (one type becomes a 1-tuple), or ``None``.

    Raises:
        ValidationError: A list, a string, an instance, a type that is no exception.
    """
    if retry_on is None:
        return None
    types = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    for tp in types:
        if not (isinstance(tp, type) and issubclass(tp, BaseException)):
            raise ValidationError(
                "Retry: retry_on must be None, an exception type or a tuple of them"
                f" (retry_on=(ValueError, KeyError)), got {safe_repr(retry_on):.80}"
            )
    return types


def check_retry(retry: object, what: str) -> Retry | None:
    """`retry` if it is a `Retry` or ``None`` (raises: a definition-time literal).

    Raises:
        ValidationError: Anything else (``retry=5``: the attempt budget is
            ``Retry(max_attempts=5)``), naming `what` (the definition).
    """
    if retry is None or isinstance(retry, Retry):
        return retry
    raise ValidationError(
        f"{what}: retry must be a djobs.Retry or None (retry=djobs.Retry(max_attempts=3)), got {safe_repr(retry):.80}"
    )


def _named_backoff(name: object, initial: DurationLike | None, cap: DurationLike | None) -> Backoff:
    """The `Backoff` the seed's ``{backoff, initialDelay, maxDelay}`` spelling names."""
    first = duration(initial if initial is not None else "1 second", what="initial_delay")
    most = None if cap is None else duration(cap, what="max_delay")
    if most is not None and most < first:
        raise ValidationError(f"Retry: max_delay ({most}) is shorter than initial_delay ({first})")
    if name == "exponential":
        return Backoff.exponential(base=first, max=most if most is not None else max(first, timedelta(seconds=30)))
    if name == "linear":
        return Backoff.linear(base=first, increment=first, max=most)
    if name == "fixed":
        return Backoff.fixed(first)
    raise ValidationError(f"Retry: backoff must be 'exponential', 'linear' or 'fixed', got {name!r}")


class RetryPolicy(Protocol):
    """The retry layer: how long a failed run waits before its next attempt.

    The definition's `Retry` says whether to retry and how many times; this
    layer turns its backoff into a delay. Swap it in a test to retry without
    waiting, or to record the attempts.
    """

    def delay_before(self, retry: Retry, attempt: int) -> timedelta:
        """The wait before attempt number `attempt` (2 = the first retry) under the definition's `retry`."""
        ...


@final
class JitteredRetries:
    """The default retry layer: the definition's backoff, jitter drawn from a seeded generator.

    Args:
        seed: Seed for the jitter (``open_engine(seed=...)``); ``None``: from the OS.

    Examples:
        >>> policy = Retry(max_attempts=3, delay=Backoff.fixed("10 seconds"), jitter=True)
        >>> JitteredRetries(7).delay_before(policy, 2) == JitteredRetries(7).delay_before(policy, 2)
        True
    """

    __slots__ = ("_rng",)

    def __init__(self, seed: int | None = None) -> None:
        self._rng = seeded(seed, "JitteredRetries(seed=...)")

    def delay_before(self, retry: Retry, attempt: int) -> timedelta:
        return retry.delay_before(attempt, self._rng)

    def __repr__(self) -> str:
        return "JitteredRetries()"
