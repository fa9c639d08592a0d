"""How long a body may run, and where: a definition's ``timeout`` and ``blocking``.

Every kind takes both (``Continuous.make(..., timeout="5 minutes",
blocking=True)``); `RunLimits` carries them to the execution service.

- ``timeout``: a body that runs longer is cancelled and its run fails with
  `JobTimeoutError`, which a retry policy retries like any failure (as
  Celery's ``time_limit`` and Huey's ``expires``/timeouts end a task). The
  time is Trio's (virtual under ``MockClock``).
- ``blocking``: the body is a synchronous function that may block (a
  blocking HTTP client, a C extension, a long computation). It runs in a
  worker thread through ``trio.to_thread.run_sync``, so the Trio thread
  stays free: the engine keeps renewing the instance's and the job's leases
  and serves every other instance meanwhile. Python cannot stop a thread: a
  blocking body that is timed out, terminated or outlives the engine's
  shutdown grace is *abandoned* (``abandon_on_cancel=True``); its thread runs
  to its end and its result is ignored.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from ._durations import DurationLike, duration, to_ms
from ._errors import ValidationError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class RunLimits:
    """A definition's limits on its bodies.

    Attributes:
        timeout_ms: The longest a body may run, in milliseconds; ``None`` for no limit.
        blocking: Whether synchronous bodies run in a worker thread.
    """

    timeout_ms: int | None = None
    blocking: bool = False

    @property
    def timeout_seconds(self) -> float | None:
        """`timeout_ms` in seconds."""
        return None if self.timeout_ms is None else self.timeout_ms / 1000


#: No timeout, bodies on the Trio thread: every definition's default.
NO_LIMITS = RunLimits()


def run_limits(timeout: DurationLike | None, blocking: object, what: str) -> RunLimits:
    """Validate a definition's ``timeout`` and ``blocking`` options.

    Raises:
        ValidationError: `timeout` is not a positive duration, or `blocking` is not a bool.
    """
    if not isinstance(blocking, bool):
        raise ValidationError(f"{what}: blocking must be True or False, got {blocking!r}")
    if timeout is None:
        return RunLimits(None, blocking)
    ms = to_ms(duration(timeout, what=f"{what}: timeout"))
    if ms <= 0:
        raise ValidationError(f"{what}: timeout must be positive, got {timeout!r}")
    return RunLimits(ms, blocking)


def offloaded(fn: F, limits: RunLimits, what: str) -> F:
    """`fn` itself, or, for a ``blocking`` definition, `fn` run in a worker thread.

    The wrapper returns an awaitable of what `fn` returns, so every body form
    (a value, a ``Result``, a ``FutureResult`` ...) is normalised as before on
    the Trio thread.

    Raises:
        ValidationError: `blocking` was asked for an ``async def`` body (it never blocks the thread it runs on).
    """
    if not limits.blocking:
        return fn
    if inspect.iscoroutinefunction(fn):
        raise ValidationError(
            f"{what} is an async def; blocking=True is for a synchronous body that may block (await in an async one)"
        )

    @functools.wraps(fn)
    def in_thread(*args: Any, **kwargs: Any) -> Awaitable[object]:
        return trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), abandon_on_cancel=True)

    return in_thread  # type: ignore[return-value]  # an awaitable of the body's value is a body form too


def definition_limits(
    timeout: DurationLike | None, blocking: object, bodies: dict[str, object], what: str
) -> RunLimits:
    """`run_limits`, also refusing ``blocking=True`` for any ``async def`` among `bodies` (by option name).

    Raises:
        ValidationError: as `run_limits` and `offloaded`.
    """
    limits = run_limits(timeout, blocking, what)
    for name, fn in bodies.items():
        if fn is not None:
            offloaded(fn, limits, f"{what}: {name}")  # type: ignore[type-var]  # checked callable by check_body
    return limits
