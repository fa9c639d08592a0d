"""The job queue of one engine: the jobs it knows, tenancy, enqueueing, and the verbs by id.

`JobQueue` is what the clients and the cron scheduler enqueue through, and
what ``client.jobs`` reads and changes rows with. The checks of what an
enqueue accepts (due times, unique keys, priorities, short texts) are here,
in one place, for every verb that takes them.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import msgspec
import trio
from returns.pipeline import is_successful
from returns.result import Failure, Result, Success

from .._clock import AFTER_LATEST, LATEST_MS, to_datetime, utc_isoformat
from .._codec import canonical_json, decode, encode
from .._durations import parse_duration, to_ms
from .._errors import (
    InstanceNotFoundError,
    InvalidStateError,
    StorageError,
    TenantError,
    ValidationError,
    describe,
    safe_repr,
)
from .._event import Event, name_problem
from .._execution import Env
from .._input import RefusedText, check_text, epoch_ms, plain_text
from .._queue_limits import limit_key_of
from .._worker import CANCELLED_ERROR, Worker
from ..storage import JobFilter, JobRecord, JobStatusName, NewJob, QueueStorage
from ..storage._base import FINAL_STATUSES, QueueLimit
from ._common import bind_async, check_id, name_of
from ._job import MAX_TEXT, CancelResult, EventResult, JobErrorInfo, JobInfo, RetryResult, Tenancy
from ._job_runner import JobHandler

if TYPE_CHECKING:
    pass

_any_json = msgspec.json.Decoder()

# Results, made once: every `later` reads one.
_UNIQUE_STATUSES: dict[str, Result[tuple[JobStatusName, ...], ValidationError]] = {
    "pending": Success(("pending",)),
    "pending_or_running": Success(("pending", "running")),
}


def check_short_text(value: object, what: str) -> Result[str | None, ValidationError]:
    """`value` if it is ``None`` or a storable non-empty string of at most `MAX_TEXT` characters."""
    value = plain_text(value)
    if value is None:
        return Success(None)
    if isinstance(value, RefusedText):
        return check_text(value, what)
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        return Failure(
            ValidationError(
                f"{what} must be a non-empty string of at most {MAX_TEXT} characters, got {safe_repr(value):.80}"
            )
        )
    return check_text(value, what)


def job_info(record: JobRecord, handler: JobHandler[Any, Any] | None) -> JobInfo:
    """The public view of a stored row, decoding params and result with the job's types if known."""

    def value(raw: bytes | None, tp: Any) -> Any:
        if raw is None:
            return None
        if tp is not None:
            match decode(tp, raw, what="value"):
                case Success(typed):
                    return typed
        try:
            return _any_json.decode(raw)
        except msgspec.DecodeError:
            return raw.decode("utf-8", "replace")

    error = None
    if record.error is not None:
        info = value(record.error, None)
        if isinstance(info, dict):
            error = JobErrorInfo(str(info.get("tag", "")), str(info.get("message", "")))

    def opt(ms: int | None) -> datetime | None:
        return None if ms is None else to_datetime(ms)

    return JobInfo(
        id=record.id,
        name=record.name,
        status=record.status,
        params=value(record.params, handler.job.params if handler else None),
        result=value(record.result, handler.job.result if handler else None),
        error=error,
        progress=record.progress,
        progress_message=record.progress_message,
        attempts=record.attempt_count,
        max_attempts=record.max_attempts,
        priority=record.priority,
        correlation_id=record.correlation_id,
        tenant_id=record.tenant_id,
        scheduled_for=to_datetime(record.scheduled_for),
        created_at=to_datetime(record.created_at),
        updated_at=to_datetime(record.updated_at),
        started_at=opt(record.worker_started_at),
        completed_at=opt(record.completed_at),
        cancel_requested=record.cancel_requested,
    )


# -- the queue of one engine -----------------------------------------------------------


class JobQueue:
    """The jobs an engine knows, the listeners of each event, tenancy, and enqueueing."""

    def __init__(self, env: Env, storage: QueueStorage, worker: Worker, tenancy: Tenancy) -> None:
        if tenancy not in ("optional", "required"):
            raise ValidationError(f"tenancy must be 'optional' or 'required', got {tenancy!r}")
        self.env = env
        self.storage = storage
        self.worker = worker
        self.tenancy = tenancy
        self.handlers: dict[str, JobHandler[Any, Any]] = {}
        self.listeners: dict[str, list[JobHandler[Any, Any]]] = {}
        #: The cancels under way in this process, by job id: a cancel of the same job waits for it (`cancel`).
        self._cancelling: dict[str, trio.Event] = {}

    def add(self, handler: JobHandler[Any, Any]) -> None:
        """Register a job; two different jobs with one name raise `ValidationError`."""
        job = handler.job
        known = self.handlers.get(job.name)
        if known is not None:
            if known.job is job:
                return
            raise ValidationError(f"two different jobs are named {job.name!r}; job names must be unique per engine")
        self.handlers[job.name] = handler
        if job.on is not None:
            self.listeners.setdefault(job.on, []).append(handler)
        limits = job.queue_limits
        self.worker.register(
            job.name,
            handler,
            None
            if limits is None
            else QueueLimit(
                job.name,
                limits.concurrency,
                None if limits.rate is None else limits.rate.count,
                None if limits.rate is None else limits.rate.period_ms,
            ),
        )

    def handler(self, job: object) -> tuple[str, JobHandler[Any, Any] | None]:
        """The handler of `job` (a definition or a name); ``None`` if this engine does not run it."""
        name = name_of(job)
        handler = self.handlers.get(name)
        if handler is not None and not isinstance(job, str) and handler.job is not job:
            return name, None  # same name, another definition: not this engine's job
        return name, handler

    # -- tenancy -----------------------------------------------------------------------

    def tenant_for(self, scope: str | None, given: object) -> Result[str | None, TenantError | ValidationError]:
        """The tenant an enqueue is for: the client's scope, or the given id (required if tenancy is)."""
        checked: Result[str | None, TenantError | ValidationError] = Result.do(
            tenant
            for tenant in check_short_text(given, "tenant_id")
            for _ in check_short_text(scope, "the client's tenant id")
        )
        return checked.bind(lambda tenant: self._scoped(scope, tenant))

    def _scoped(self, scope: str | None, tenant: str | None) -> Result[str | None, TenantError | ValidationError]:
        """The tenant an enqueue by a client scoped to `scope` for a checked `tenant` is for."""
        if scope is not None:
            if tenant is not None and tenant != scope:
                return Failure(
                    TenantError(
                        f"this client acts for tenant {safe_repr(scope)}; it cannot act for {safe_repr(tenant)}"
                    )
                )
            return Success(scope)
        if tenant is None and self.tenancy == "required":
            return Failure(
                TenantError(
                    "this engine requires a tenant id on every job (tenancy='required'): pass tenant_id=... "
                    "or use client.for_tenant(...)"
                )
            )
        return Success(tenant)

    @staticmethod
    def visible(scope: str | None, record: JobRecord) -> Result[JobRecord, InstanceNotFoundError]:
        """`record` if a client scoped to `scope` may see it; another tenant's job is
        answered as an unknown id is, so a scoped client cannot probe which ids exist."""
        if scope is not None and record.tenant_id != scope:
            return Failure(_job_not_found(record.id))
        return Success(record)

    # -- enqueueing ----------------------------------------------------------------------

    async def enqueue(self, rows: list[NewJob]) -> list[tuple[str, bool]]:
        """Store `rows` in one transaction, then emit ``job.enqueued`` and wake the worker."""
        created = await self.storage.enqueue_jobs(rows)
        worker = self.worker
        if len(rows) == 1:  # one `later`: no generator and zip for one row
            due = rows[0].scheduled_for if created[0][1] else None
        else:
            due = min((row.scheduled_for for row, (_, new) in zip(rows, created, strict=True) if new), default=None)
        if due is not None:
            worker.poke(due)
            if worker.tracking:
                worker.emit(
                    [
                        worker.event(
                            "job.enqueued",
                            row.id,
                            row.name,
                            scheduled_for=utc_isoformat(row.scheduled_for),
                            tenant_id=row.tenant_id,
                            correlation_id=row.correlation_id,
                        )
                        for row, (_, new) in zip(rows, created, strict=True)
                        if new
                    ]
                )
        return created

    def row(
        self,
        handler: JobHandler[Any, Any],
        raw: bytes,
        *,
        scheduled_for: int,
        now: int,
        priority: int = 0,
        correlation_id: str | None = None,
        tenant_id: str | None = None,
        idempotency_key: str | None = None,
        unique_key: str | None = None,
        unique_statuses: tuple[JobStatusName, ...] = ("pending",),
        what: str | None = None,
    ) -> NewJob | ValidationError:
        """A new pending row for `handler`'s job, with the limit key its definition gives
        `raw`, or the `ValidationError` that refuses it (a key function that fails: its message
        starts with `what`, by default ``job 'name'``). Not a `Result`: making one costs more
        than the row (a cron fire makes a row each)."""
        job = handler.job
        limit_key = None
        if job.queue_limits is not None:
            # A match, not .map: this runs once per row of a batch, and a lambda would be one more call each.
            keyed = limit_key_of(job.name, job.queue_limits, lambda: msgspec.json.decode(raw, type=job.params), what)
            if isinstance(keyed, Failure):
                refused: ValidationError = keyed.failure()
                return refused
            limit_key = keyed.unwrap()
        return NewJob(
            id=self.env.ids.job_id(now),
            name=job.name,
            params=raw,
            max_attempts=job.max_attempts,
            scheduled_for=scheduled_for,
            created_at=now,
            priority=priority,
            correlation_id=correlation_id,
            tenant_id=tenant_id,
            idempotency_key=idempotency_key,
            unique_key=unique_key,
            unique_statuses=unique_statuses,
            limit_key=limit_key,
        )

    async def send_event(
        self,
        scope: str | None,
        event: object,
        payload: object,
        *,
        tenant_id: object,
        correlation_id: object,
        idempotency_key: object,
        at: object = None,
        delay: object = None,
    ) -> Result[EventResult, ValidationError | TenantError | StorageError]:
        """Validate `payload` for every listener of `event`, then enqueue one job each, all or none.

        A typed `Event` also checks the payload against its own type first.

        The jobs are stored at once, due at `at` or after `delay` (as ``later``
        reads them), so a delayed event survives a restart like any queued job.
        """
        if isinstance(event, Event):
            match encode(
                event.payload, payload, what=f"payload of event {event.name!r}", limit=self.env.max_payload_bytes
            ):
                case Failure(error):
                    return Failure(error)
            event = event.name
        event = plain_text(event)
        if (problem := name_problem(event)) is not None or not isinstance(event, str):
            return Failure(ValidationError(problem or f"event name must be a string, got {safe_repr(event):.80}"))
        now = self.env.now_ms()
        checked = Result.do(
            (tenant, correlation, key, due)
            for tenant in self.tenant_for(scope, tenant_id)
            for correlation in check_short_text(correlation_id, "correlation_id")
            for key in check_short_text(idempotency_key, "idempotency_key")
            for due in due_at(at, delay, now, what="an event")
        )
        return await bind_async(checked, lambda checks: self._send(event, payload, now, *checks))

    async def _send(
        self,
        event: str,
        payload: object,
        now: int,
        tenant: str | None,
        correlation: str | None,
        key: str | None,
        due: int,
    ) -> Result[EventResult, ValidationError]:
        """`send_event` after its checks: encode `payload` for each listener, then enqueue."""
        listeners = self.listeners.get(event, [])
        encoded: list[bytes] = []
        limit = self.env.max_payload_bytes
        exact = [
            encode(h.job.params, payload, what=f"payload of event {event!r} for job {h.job.name!r}", limit=limit)
            for h in listeners
        ]
        match exact:
            case [Failure(error), *_] if not any(map(is_successful, exact)):
                # A listener may read a part of the payload, but some listener must take all of it:
                # a field no listener knows (a misspelling) or a struct no listener takes is refused.
                return Failure(error)
        for handler, strict_raw in zip(listeners, exact, strict=True):
            # A loop that stops at the first payload a listener refuses, so a match.
            what = f"payload of event {event!r} for job {handler.job.name!r}"
            match strict_raw.lash(
                lambda _: encode(handler.job.params, payload, what=what, limit=limit, strict=False)  # noqa: B023  # called at once
            ):
                case Success(raw):
                    encoded.append(raw)
                case Failure(error):
                    return Failure(error)
        if not listeners:
            return Success(EventResult(event=event, job_ids=[], job_names=[], delivered=False))
        rows: list[NewJob] = []
        for h, params in zip(listeners, encoded, strict=True):
            row = self.row(
                h, params, scheduled_for=due, now=now, correlation_id=correlation, tenant_id=tenant, idempotency_key=key
            )
            if isinstance(row, ValidationError):
                return Failure(row)
            rows.append(row)
        ids = [job_id for job_id, _ in await self.enqueue(rows)]
        return Success(EventResult(event=event, job_ids=ids, job_names=[h.job.name for h in listeners], delivered=True))

    # -- reading and changing rows -------------------------------------------------------

    async def load(self, scope: str | None, job_id: object) -> Result[JobRecord, Any]:
        """The row `job_id`, if it exists and the scope may see it."""
        checked = Result.do(
            the_id for _ in check_short_text(scope, "the client's tenant id") for the_id in check_id(job_id, "job id")
        )
        return await bind_async(checked, lambda the_id: self._get(scope, the_id))

    async def _get(self, scope: str | None, job_id: str) -> Result[JobRecord, InstanceNotFoundError]:
        """The row `job_id` (a checked id), if it exists and the scope may see it."""
        record = await self.storage.get_job(job_id)
        if record is None:
            return Failure(_job_not_found(job_id))
        return self.visible(scope, record)

    def info(self, record: JobRecord) -> JobInfo:
        """The public view of `record`."""
        return job_info(record, self.handlers.get(record.name))

    async def cancel(self, scope: str | None, job_id: object) -> Result[CancelResult, Any]:
        """Cancel a pending job, or the running attempt of one (here: at once; elsewhere: requested).

        The cancels of one job in this process run one after another, each
        reading the row once the one before has ended: of two at once, the
        second finds the job cancelled (or its cancel requested) and says it
        is a repeat (``already_requested``).
        """
        key = plain_text(job_id)  # a str subclass's id is its text, as `load` reads it
        if not isinstance(key, str):  # refused by `load`, which says why
            return await bind_async(await self.load(scope, job_id), self._cancel)
        cancelling = self._cancelling
        while (under_way := cancelling.get(key)) is not None:
            await under_way.wait()
        done = cancelling[key] = trio.Event()
        try:
            return await bind_async(await self.load(scope, job_id), self._cancel)
        finally:
            del cancelling[key]
            done.set()

    async def _cancel(self, record: JobRecord) -> Result[CancelResult, Any]:
        """`cancel` of the loaded row `record`."""
        if record.status in ("completed", "failed"):
            return Success(CancelResult(record.id, record.status))
        if record.status == "cancelled":
            return Success(CancelResult(record.id, "cancelled", already_requested=True))
        # A repeat unless this call's write changed the row (`cancel_job`'s flag, not `record`, read
        # before: another process may have cancelled it since). Running with its cancel requested
        # before: interrupted here if it runs here, but this call is a repeat.
        outcome = await self.storage.cancel_job(record.id, self.env.now_ms(), CANCELLED_ERROR)
        if outcome is None:
            return Failure(_job_not_found(record.id))
        changed, repeat = outcome[0], not outcome[1]
        if changed.status == "cancelled":
            if not repeat:
                event = self.worker.event("job.cancelled", record.id, record.name, attempt=record.attempt_count)
                self.worker.emit([event])
            return Success(CancelResult(record.id, "cancelled", already_requested=repeat))
        if changed.status != "running":
            return Success(CancelResult(record.id, changed.status))  # type: ignore[arg-type]  # finished meanwhile
        settled = self.worker.cancel_local(record.id)
        if settled is None:
            return Success(CancelResult(record.id, "cancel_requested", already_requested=repeat))
        await settled.wait()
        after = await self.storage.get_job(record.id)
        status = after.status if after is not None else "cancelled"
        answer = status if status != "running" else "cancel_requested"
        return Success(CancelResult(record.id, answer, already_requested=repeat))  # type: ignore[arg-type]

    async def retry(self, scope: str | None, job_id: object) -> Result[RetryResult, Any]:
        """Put a failed or cancelled job back to pending, due now, with a fresh attempt budget."""
        return await bind_async(await self.load(scope, job_id), self._retry)

    async def _retry(self, record: JobRecord) -> Result[RetryResult, Any]:
        """`retry` of the loaded row `record`."""
        if record.status not in ("failed", "cancelled"):
            return Failure(
                InvalidStateError(f"job {record.id} is {record.status}; only a failed or cancelled job can be retried")
            )
        now = self.env.now_ms()
        changed = await self.storage.retry_job(record.id, now)
        if changed is None or changed.status != "pending":
            status = changed.status if changed else "gone"
            return Failure(InvalidStateError(f"job {record.id} changed to {status} meanwhile; it was not retried"))
        self.worker.poke(now)
        self.worker.emit(
            [self.worker.event("job.enqueued", record.id, record.name, retry=True, tenant_id=record.tenant_id)]
        )
        return Success(RetryResult(record.id))

    async def _list(
        self,
        scope: str | None,
        status: Any,
        limit: int,
        the_name: str | None,
        correlation: str | None,
        tenant: str | None,
        the_after: str | None,
    ) -> Result[list[JobInfo], Any]:
        """`list` after its checks."""
        if scope is not None:
            if tenant is not None and tenant != scope:
                return Failure(
                    TenantError(
                        f"this client acts for tenant {safe_repr(scope)}; it cannot list {safe_repr(tenant)}'s jobs"
                    )
                )
            tenant = scope
        where = JobFilter(
            status=status,
            name=the_name,
            correlation_id=correlation,
            tenant_id=tenant,
            after=the_after,
            limit=limit,
        )
        return Success([self.info(r) for r in await self.storage.list_jobs(where)])

    async def list(
        self,
        scope: str | None,
        *,
        status: object,
        name: object,
        correlation_id: object,
        tenant_id: object,
        limit: object,
        after: object,
    ) -> Result[list[JobInfo], Any]:
        """The jobs matching every given filter, oldest first, at most `limit`."""
        status = plain_text(status)
        statuses = ("pending", "running", "completed", "failed", "cancelled")
        if isinstance(status, list | tuple):  # not read: a subclass's own iteration may raise
            return Failure(
                ValidationError(
                    "status must be one of pending, running, completed, failed or cancelled "
                    f"(one status, not a list of them), got a {type(status).__name__}"
                )
            )
        if status is not None and (not isinstance(status, str) or status not in statuses):
            return Failure(
                ValidationError(
                    f"status must be pending, running, completed, failed or cancelled, got {safe_repr(status)}"
                )
            )
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            return Failure(ValidationError(f"limit must be an int from 1 to 10000, got {safe_repr(limit)}"))
        filters = Result.do(
            (the_name, correlation, tenant, the_after)
            for the_name in check_short_text(name, "name")
            for correlation in check_short_text(correlation_id, "correlation_id")
            for tenant in check_short_text(tenant_id, "tenant_id")
            for the_after in check_short_text(after, "after")
            for _ in check_short_text(scope, "the client's tenant id")
        )
        return await bind_async(filters, lambda checked: self._list(scope, status, limit, *checked))

    async def purge(self, scope: str | None, older_than: object, status: object) -> Result[int, Any]:
        """Delete finished jobs (`status`) that finished more than `older_than` ago; how many."""
        return await bind_async(
            parse_duration(older_than, what="older_than"), lambda age: self._purge(scope, age, status)
        )

    async def _purge(self, scope: str | None, age: Any, status: object) -> Result[int, Any]:
        """`purge` of rows older than the parsed `age`."""
        statuses: object = plain_text(status)
        if isinstance(statuses, str):
            statuses = [statuses]
        elif isinstance(statuses, list | tuple):
            try:  # a copy, read once: a subclass's own iteration may raise
                statuses = [plain_text(s) for s in statuses]
            except Exception as exc:
                return Failure(
                    ValidationError(
                        "status must be completed, failed or cancelled (or a list of them): "
                        f"reading the given {type(status).__name__} raised {describe(exc)}"
                    )
                )
        if (
            not isinstance(statuses, list)
            or not statuses
            or not all(isinstance(s, str) and s in FINAL_STATUSES for s in statuses)
        ):
            return Failure(
                ValidationError(
                    f"status must be completed, failed or cancelled (or a list of them), got {safe_repr(status)}; "
                    "pending and running jobs are never purged"
                )
            )
        before = self.env.now_ms() - to_ms(age)
        total = 0
        while True:
            # Batches of their own transactions: a large purge never holds the write lock for long.
            deleted = await self.storage.purge_jobs(before, cast(list[JobStatusName], list(statuses)), 1000, scope)
            total += deleted
            if deleted < 1000:
                return Success(total)


def _job_not_found(job_id: str) -> InstanceNotFoundError:
    error = InstanceNotFoundError("job", job_id)
    # The stock message names a job kind's instance; a queued job has only its id.
    error.message = f"no job with id {job_id!r} is stored"
    error.args = (error.message,)
    return error


# -- what an enqueue accepts ---------------------------------------------------------


def due_at(at: object, delay: object, now: int, what: str = "a job") -> Result[int, ValidationError]:
    """When a job enqueued at `now` is due: at `at` (a past one means now), after `delay`, or now.

    A time after `LATEST_MS` is refused, naming `what` and the argument given; work due
    now is not, even on a clock between `LATEST_MS` and the end of 9999 (as ``now()``).
    """
    when: Result[int, ValidationError]
    if at is not None and delay is not None:
        return Failure(ValidationError("give at= or delay=, not both"))
    if at is not None:
        when, given = epoch_ms(at, "at").map(lambda moment: max(moment, now)), f"at={safe_repr(at)}"
    elif delay is not None:
        when, given = parse_duration(delay, what="delay").map(lambda d: now + to_ms(d)), f"delay={safe_repr(delay)}"
    else:
        return Success(now)
    match when:
        case Success(ms) if ms > LATEST_MS and ms > now:
            return Failure(ValidationError(f"{what} cannot be scheduled {AFTER_LATEST} (got {given})"))
    return when


def unique_key_of(unique: object, raw: bytes, params_type: Any) -> Result[str | None, ValidationError]:
    """The stored unique key: ``True`` keys by the params (`canonical_json`'s SHA-256), a string is the key."""
    if unique is False or unique is None:
        return Success(None)
    if unique is True:
        return Success("params:" + hashlib.sha256(canonical_json(params_type, raw)).hexdigest())
    if not isinstance(unique, str):
        return Failure(ValidationError(f"unique must be True, False or a key (a string), got {safe_repr(unique):.80}"))
    return check_short_text(unique, "unique").map(lambda key: None if key is None else "key:" + key)


def unique_statuses(unique_while: object) -> Result[tuple[JobStatusName, ...], ValidationError]:
    """The statuses in which a unique job holds its key, by `unique_while`."""
    unique_while = plain_text(unique_while)
    statuses = _UNIQUE_STATUSES.get(unique_while) if isinstance(unique_while, str) else None
    if statuses is None:
        return Failure(
            ValidationError(
                f"unique_while must be 'pending' or 'pending_or_running', got {safe_repr(unique_while):.80}"
            )
        )
    return statuses


def check_priority(priority: object) -> Result[int, ValidationError]:
    """`priority` if it is a 32-bit int (what both storages hold)."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not -(2**31) <= priority < 2**31:
        return Failure(ValidationError(f"priority must be a 32-bit int, got {safe_repr(priority)}"))
    return Success(priority)
