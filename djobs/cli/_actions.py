"""What an operator does to a database without an engine: the command line's and the dashboard's actions.

Each action changes rows through the storage's own queue methods (the same
statements an engine's client uses), so an engine running elsewhere sees the
change as it would its own: a retried job at its worker's next poll, a cancel
of a job it runs at its next lease renewal, a cron job enabled, disabled or
due now at its cron task's next poll. Keys are shown with `printable` and
read back with `key_candidates`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from .._errors import StorageError, ValidationError
from .._input import text_problem
from .._printable import from_printable, printable
from .._schedule import Schedule, every, next_fire, parse_cron, runs_from
from .._worker import CANCELLED_ERROR
from ..storage import CronRecord, JobRecord, JobStatusName, QueueStorage
from ..storage._base import FINAL_STATUSES, DeadLetter, DeadLetterStorage
from ._exit import CommandError, ExitCode


def key_candidates(text: str) -> list[str]:
    """The stored keys `text` may name: itself, and with `printable`'s stand-ins read back.

    A candidate no storage can hold (a NUL, as ``␀`` reads back, or a lone
    surrogate) names nothing and is left out, so such a key is "not found" on
    SQLite and PostgreSQL alike instead of a query PostgreSQL refuses.

    Examples:
        >>> key_candidates("task:t:acme␟a1")
        ['task:t:acme␟a1', 'task:t:acme\\x1fa1']
        >>> key_candidates("task:t:a␀1")
        ['task:t:a␀1']
    """
    raw = from_printable(text)
    return [k for k in dict.fromkeys((text, raw)) if text_problem(k) is None]


def stored_schedule(record: CronRecord) -> Schedule:
    """The schedule a stored cron job's ``expression`` and ``tz`` describe (``every ...`` or a cron expression).

    Raises:
        StorageError: The stored expression cannot be read (written by another djobs version).
    """
    if record.expression.startswith("every "):
        try:
            return every(record.expression.removeprefix("every "))
        except ValidationError as exc:
            raise StorageError(f"cron job {record.name!r} has an unreadable interval: {exc.message}") from exc

    def unreadable(_: ValidationError) -> NoReturn:
        raise StorageError(f"cron job {record.name!r} has an unreadable schedule {record.expression!r}")

    return parse_cron(record.expression, record.tz).alt(unreadable).unwrap()


def next_runs(record: CronRecord, now: int, n: int = 5) -> list[int]:
    """The next `n` fire times (epoch ms): from the stored next run if enabled, else from `now`;
    fewer where the schedule has none left by `LATEST_MS` (`next_fire`)."""
    schedule = stored_schedule(record)
    nxt = record.next_run_at if record.enabled and record.next_run_at is not None else next_fire(schedule, now)
    return runs_from(schedule, nxt, n)


async def get_job(storage: QueueStorage, job_id: str) -> JobRecord:
    """The stored job; `CommandError` (not found) if there is none."""
    record = await storage.get_job(job_id)
    if record is None:
        raise CommandError(f"no job with id {job_id!r} is stored", ExitCode.NOT_FOUND)
    return record


async def cancel_job(storage: QueueStorage, job_id: str, now: int) -> tuple[JobRecord, bool]:
    """Cancel a pending job, or ask the worker of a running one to stop it: the row afterwards,
    and whether this call changed it (``False``: it was cancelled, its cancel requested, or it
    finished before, by this process or another; `QueueStorage.cancel_job`)."""
    before = await get_job(storage, job_id)
    if before.status in ("pending", "running"):
        outcome = await storage.cancel_job(before.id, now, CANCELLED_ERROR)
        if outcome is not None:
            return outcome
    return before, False


async def retry_job(storage: QueueStorage, job_id: str, now: int) -> JobRecord:
    """A failed or cancelled job pending again, due now, with a fresh attempt budget.

    Raises:
        CommandError: No such job (not found), or it is not failed or cancelled (failed).
    """
    before = await get_job(storage, job_id)
    if before.status not in ("failed", "cancelled"):
        raise CommandError(
            f"job {before.id} ({before.name}) is {before.status}; only a failed or cancelled job can be retried",
            ExitCode.FAILED,
        )
    after = await storage.retry_job(before.id, now)
    if after is None or after.status != "pending":
        now_status = "gone" if after is None else after.status
        raise CommandError(f"job {before.id} changed to {now_status} meanwhile; it was not retried", ExitCode.FAILED)
    return after


async def get_cron(storage: QueueStorage, name: str) -> CronRecord:
    """The stored cron job; `CommandError` (not found) if there is none."""
    for record in await storage.list_cron_jobs():
        if record.name == name:
            return record
    raise CommandError(
        f"no cron job named {name!r} is stored (an engine stores its cron jobs when it opens)", ExitCode.NOT_FOUND
    )


async def set_cron_enabled(storage: QueueStorage, name: str, enabled: bool, now: int) -> CronRecord:
    """Enable cron `name` from its next fire time after `now` (as ``client.crons.enable`` does), or disable it."""
    record = await get_cron(storage, name)
    next_run_at = next_fire(stored_schedule(record), now) if enabled else None  # None: no fire left by 9999
    changed = await storage.set_cron_enabled(name, enabled, next_run_at, now)
    if changed is None:
        raise CommandError(f"cron job {name!r} was deleted meanwhile", ExitCode.NOT_FOUND)
    return changed


async def run_cron_now(storage: QueueStorage, name: str, now: int) -> CronRecord:
    """Make cron `name`'s next fire due at `now`: an engine's cron task enqueues it at its next
    poll, with the definition's params, retries and correlation id, and then goes on from the
    schedule's next fire time. A disabled cron job is refused (enable it first).

    Raises:
        CommandError: No such cron job (not found), or it is disabled (failed).
    """
    record = await get_cron(storage, name)
    if not record.enabled:
        raise CommandError(f"cron job {name!r} is disabled; enable it first", ExitCode.FAILED)
    stored_schedule(record)  # refuse a schedule the engine could not go on from
    changed = await storage.set_cron_enabled(name, True, now, now)
    if changed is None:
        raise CommandError(f"cron job {name!r} was deleted meanwhile", ExitCode.NOT_FOUND)
    return changed


async def purge_jobs(
    storage: QueueStorage, older_than_ms: int, statuses: Sequence[JobStatusName], now: int, tenant_id: str | None = None
) -> int:
    """Delete jobs in the final `statuses` that finished more than `older_than_ms` before `now`; how many.

    Raises:
        CommandError: A status that is not final (usage).
    """
    wrong = [s for s in statuses if s not in FINAL_STATUSES]
    if wrong or not statuses:
        raise CommandError(
            f"only completed, failed or cancelled jobs can be purged, not {', '.join(wrong) or 'none'}", ExitCode.USAGE
        )
    total = 0
    while True:
        deleted = await storage.purge_jobs(now - older_than_ms, list(statuses), 1000, tenant_id)
        total += deleted
        if deleted < 1000:
            return total


def dead_letter_store(storage: object, where: str) -> DeadLetterStorage:
    """`storage` as the dead-letter table; `CommandError` (failed) if it keeps none (`where` names it)."""
    if not isinstance(storage, DeadLetterStorage):
        raise CommandError(f"{where} keeps no dead letters", ExitCode.FAILED)
    return storage


async def get_dead_letter(store: DeadLetterStorage, letter_id: str) -> DeadLetter:
    """The stored dead letter; `CommandError` (not found) if there is none."""
    letter = await store.get_dead_letter(letter_id)
    if letter is None:
        raise CommandError(f"no dead letter with id {letter_id!r} is stored", ExitCode.NOT_FOUND)
    return letter


async def retry_dead_letter(store: DeadLetterStorage, letter_id: str, now: int) -> DeadLetter:
    """Bring a dead letter's work back, due at `now`, and delete the letter; the letter as it was.

    Raises:
        CommandError: No such letter (not found), or its job or instance is live again or an
            engine holds it right now (failed; nothing was changed).
    """
    letter = await get_dead_letter(store, letter_id)
    outcome = await store.revive_dead_letter(letter.id, now, None)
    if outcome == "missing":
        raise CommandError(f"no dead letter with id {letter_id!r} is stored", ExitCode.NOT_FOUND)
    if outcome == "occupied":
        what = "job" if letter.kind == "job" else f"{letter.kind} instance"
        raise CommandError(
            f"dead letter {letter.id}: {what} {printable(letter.ref)!r} of {letter.name!r} is live again, or an "
            "engine holds it right now; nothing was changed (retry through that engine's client, or later)",
            ExitCode.FAILED,
        )
    return letter


async def discard_dead_letter(store: DeadLetterStorage, letter_id: str) -> DeadLetter:
    """Delete a dead letter for good; the letter as it was. `CommandError` (not found) if there is none."""
    letter = await get_dead_letter(store, letter_id)
    if not await store.discard_dead_letter(letter.id):
        raise CommandError(f"no dead letter with id {letter_id!r} is stored", ExitCode.NOT_FOUND)
    return letter
