"""Retention: what an engine deletes in the background, and when.

Without a `Retention`, djobs keeps everything: finished jobs, the event ids
instances accepted, idempotency keys and dead letters stay until purged by
hand (``client.jobs.purge``, ``client.dead_letters.purge``, ``djobs jobs
purge``). ``open_engine(..., retention=djobs.Retention(...))`` purges them
past an age, in a background task that sleeps on the clock layer between
passes (``every``), so a test under ``MockClock`` sees it run in virtual time.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol, runtime_checkable

import trio

from ._clock import Clock
from ._durations import DurationLike, duration, to_ms
from ._errors import StorageError, ValidationError
from ._input import check_interval
from .storage._base import DeadLetterStorage, JobStatusName, QueueStorage

__all__ = ["Retention", "RetentionStorage", "purge_once", "retention_loop"]

_log = logging.getLogger("djobs.retention")

#: Rows deleted per transaction: a large purge never holds the write lock for long.
BATCH = 1000


@dataclass(frozen=True, slots=True)
class Retention:
    """How long an engine keeps what is finished; ``None`` keeps it forever.

    Every age is a duration (``"7 days"``, a `timedelta`, milliseconds as an
    int), counted from when the thing finished or was written:

    Attributes:
        completed: Completed jobs, from their completion (default 1 day).
        failed: Failed jobs, from their failure (default 7 days). Their dead
            letters are kept by `dead_letters`, not by this.
        cancelled: Cancelled jobs (default 1 day).
        idempotency_keys: A job's idempotency key, from the enqueue that made
            it (default 1 day); never while its job is pending or running. A
            repeat of a purged key makes a new job. Keys also go with their
            job when the job is purged.
        event_ids: The event ids an instance accepted (a Debounce ``add``'s or
            a Task ``send``'s ``event_id``), from their acceptance (default
            ``None``: for the instance's life, as without retention). A
            redelivery older than this is no longer recognised.
        dead_letters: Dead letters, from the failure (default 30 days).
        every: How often the engine purges (default 1 hour; at least 1 second).

    The defaults keep what succeeded for a day, as Celery's ``result_expires``
    does, what failed for a week, and dead letters (what a person must look at)
    for a month.

    Raises:
        ValidationError: An age or `every` that is not a positive duration.

    Example:
        ```python
        retention = djobs.Retention(completed="2 days", dead_letters="90 days")
        async with djobs.open_engine(definitions, retention=retention) as engine:
            ...
        ```
    """

    completed: DurationLike | None = "1 day"
    failed: DurationLike | None = "7 days"
    cancelled: DurationLike | None = "1 day"
    idempotency_keys: DurationLike | None = "1 day"
    event_ids: DurationLike | None = None
    dead_letters: DurationLike | None = "30 days"
    every: DurationLike = "1 hour"
    _ms: dict[str, int | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ages: dict[str, int | None] = {}
        for name in ("completed", "failed", "cancelled", "idempotency_keys", "event_ids", "dead_letters", "every"):
            value = getattr(self, name)
            if value is None and name != "every":
                ages[name] = None
                continue
            ms = to_ms(check_interval(duration(value, what=f"Retention {name}"), f"Retention {name}"))
            if ms <= 0:
                raise ValidationError(f"Retention {name} must be a positive duration, got {value!r}")
            ages[name] = ms
        if (ages["every"] or 0) < 1000:
            raise ValidationError(f"Retention every must be at least 1 second, got {self.every!r}")
        object.__setattr__(self, "_ms", ages)

    def age_ms(self, what: str) -> int | None:
        """How long `what` (a field's name) is kept, in milliseconds; ``None`` for ever."""
        return self._ms[what]


@runtime_checkable
class RetentionStorage(Protocol):
    """The purges retention needs beyond `QueueStorage.purge_jobs` and `DeadLetterStorage.purge_dead_letters`."""

    async def purge_event_ids(self, before: int, limit: int) -> int:
        """Delete up to `limit` accepted event ids recorded before `before` (epoch ms); how many."""
        ...

    async def purge_job_keys(self, before: int, limit: int) -> int:
        """Delete up to `limit` idempotency keys made before `before` whose job is not pending
        or running (or is gone); how many."""
        ...


async def _drain(purge: Callable[[int], Awaitable[int]]) -> int:
    """Call `purge(limit)` until it deletes less than a batch; the total."""
    total = 0
    while True:
        deleted = await purge(BATCH)
        total += deleted
        if deleted < BATCH:
            return total


async def purge_once(storage: object, retention: Retention, now: int) -> dict[str, int]:
    """One retention pass over `storage`: how many of each were deleted (only what it keeps
    an age for, and what the storage holds). Raises `StorageError`."""
    counts: dict[str, int] = {}
    statuses: tuple[JobStatusName, ...] = ("completed", "failed", "cancelled")
    if isinstance(storage, QueueStorage):
        queue = storage
        for status in statuses:
            if (age := retention.age_ms(status)) is not None:
                before = now - age
                counts[status] = await _drain(partial(queue.purge_jobs, before, [status]))
    if isinstance(storage, RetentionStorage):
        if (age := retention.age_ms("idempotency_keys")) is not None:
            counts["idempotency_keys"] = await _drain(partial(storage.purge_job_keys, now - age))
        if (age := retention.age_ms("event_ids")) is not None:
            counts["event_ids"] = await _drain(partial(storage.purge_event_ids, now - age))
    if isinstance(storage, DeadLetterStorage) and (age := retention.age_ms("dead_letters")) is not None:
        counts["dead_letters"] = await _drain(partial(storage.purge_dead_letters, now - age))
    return counts


async def retention_loop(
    storage: object,
    clock: Clock,
    retention: Retention,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Purge by `retention` now and then every ``retention.every``, sleeping on `clock`
    in between; a storage error is logged and the next pass tries again."""
    task_status.started()
    every = retention.age_ms("every") or 3_600_000
    while True:
        started = clock.now_ms()
        try:
            counts = await purge_once(storage, retention, started)
        except StorageError as exc:
            _log.warning("retention: the purge failed (the next one, in %d s, tries again): %s", every // 1000, exc)
        else:
            if any(counts.values()):
                _log.info("retention: purged %s", ", ".join(f"{n} {what}" for what, n in counts.items() if n))
        await clock.sleep_until(started + every)
