"""The typed client verbs of one-off jobs: `JobClient` (``now``, ``later``, ``batch``) and `JobsClient`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic

import trio
from returns.future import FutureResult
from returns.result import Failure, Result, Success

from .._codec import decode, encode
from .._durations import DurationLike
from .._errors import (
    InstanceNotFoundError,
    InvalidStateError,
    JobError,
    JobNotFoundError,
    StorageError,
    TenantError,
    ValidationError,
    describe,
    safe_repr,
)
from .._input import MAX_LIMIT, check_whole
from ..storage import JobRecord, JobStatusName, NewJob
from ._common import bind_async, effect, key_problem, not_registered
from ._job import CancelResult, JobInfo, JobRun, P, R, RetryResult, UniqueWhile
from ._job_queue import (
    JobQueue,
    check_priority,
    check_short_text,
    due_at,
    unique_key_of,
    unique_statuses,
)
from ._job_runner import JobHandler

if TYPE_CHECKING:
    from .._execution import Env

#: What the keys an enqueue stores are made of, for `key_problem`'s error.
_IDEMPOTENCY_FIELDS = "the job's name, the tenant id (if any) and the idempotency key"
_UNIQUE_FIELDS = "the job's name and the unique key"


class JobClient(Generic[P, R]):
    """The verbs of one job: ``now``, ``later``, ``batch``. Get one with ``engine.client.job(job)``.

    Every verb returns a `FutureResult` that does its work when awaited. A
    call's own problems (bad params, an unknown job, a tenant mismatch,
    storage) are the failure; a job that fails is a successful call whose
    `JobRun` says ``failed``.
    """

    def __init__(
        self,
        name: str,
        handler: JobHandler[P, R] | None,
        queue: JobQueue | None,
        tenant: str | None = None,
        *,
        missing: str | None = None,
        home: Env | None = None,
    ) -> None:
        self._name = name
        self._missing = missing  # why there is no handler, if known better than "not registered"
        self._home = home  # the engine's env, for the verbs of a client without a handler
        self._handler = handler
        self._queue = queue
        self._tenant = tenant
        self._what = f"params of job {name!r}"

    def now(
        self, params: P, *, persist: bool = True, correlation_id: str | None = None, tenant_id: str | None = None
    ) -> FutureResult[JobRun[R], JobNotFoundError | ValidationError | TenantError | StorageError]:
        """Run the job in this task now, retrying by its policy, and return how it ended.

        With ``persist=True`` (default) the job is a row like any other
        (running → completed / failed / cancelled) that ``client.jobs`` sees
        and can cancel; with ``persist=False`` nothing is written and
        ``update_progress`` is a no-op.

        With ``persist=True`` the `JobRun` is returned only once the row records
        how the run ended; an end that could not be written is the call's
        `StorageError` (the row stays running, and runs again after its lease).
        The engine's close gives a run under way its ``shutdown_grace``, then
        cancels it: the row ends ``cancelled``, as the `JobRun` says. A call
        made while the engine closes is refused with `StorageError`.
        """
        h, q = self._handler, self._queue
        if h is None or q is None:
            return not_registered(self._name, self._missing, self._home)

        async def start(checked: tuple[bytes, str | None, str | None]) -> Result[JobRun[R], Any]:
            raw, tenant, correlation = checked
            value = decode(h.job.params, raw, what=f"params of job {h.job.name!r}").unwrap()  # just validated
            return Success(
                await h.run_now(q.worker, value, raw, persist=persist, tenant_id=tenant, correlation_id=correlation)
            )

        async def run() -> Result[JobRun[R], Any]:
            if (refused := _not_a_flag(persist, "persist")) is not None:
                return refused
            return await bind_async(self._checked(h, q, params, tenant_id, correlation_id), start)

        return effect(run, q.env)

    def later(
        self,
        params: P,
        *,
        at: datetime | None = None,
        delay: DurationLike | None = None,
        correlation_id: str | None = None,
        tenant_id: str | None = None,
        priority: int = 0,
        idempotency_key: str | None = None,
        unique: bool | str = False,
        unique_while: UniqueWhile = "pending",
    ) -> FutureResult[str, JobNotFoundError | ValidationError | TenantError | StorageError]:
        """Enqueue the job to run at `at`, after `delay`, or as soon as a worker is free; returns its id.

        Args:
            params: The job's params (its struct, or what converts to it).
            at: An aware datetime; a past one means now.
            delay: A duration (``"10 minutes"``, a timedelta, ms as an int); not negative.
            correlation_id: A free-form id to find related jobs with ``list``.
            tenant_id: The tenant the job belongs to (a tenant-scoped client sets it).
            priority: Among due jobs, higher runs first (default 0).
            idempotency_key: A repeat of the key (per job name and tenant)
                enqueues nothing and returns the first job's id.
            unique: ``True`` (the key is the params) or a key (a string): while
                a job of this name and tenant with the same key is pending (or
                pending or running, by `unique_while`), this enqueue writes
                nothing and returns that job's id. Checked in the enqueue's
                transaction, so two processes enqueueing at once make one job.
                Unlike an idempotency key, the key is free again once its job
                has started (or ended). A job that started and is retried keeps
                its key but does not stop a newer one enqueued meanwhile.
            unique_while: ``"pending"`` (default) or ``"pending_or_running"``.
        """
        h, q = self._handler, self._queue
        if h is None or q is None:
            return not_registered(self._name, self._missing, self._home)

        async def run() -> Result[str, Any]:
            # A match, not Result.do over the checks: this is the enqueue's hot path, and the
            # do-notation took some eighty calls per enqueue (see _later_row).
            match self._later_row(
                h, q, params, at, delay, correlation_id, tenant_id, priority, idempotency_key, unique, unique_while
            ):
                case Success(row):
                    [(job_id, _)] = await q.enqueue([row])
                    return Success(job_id)
                case Failure() as failed:
                    return failed
            raise AssertionError("neither a Success nor a Failure")

        return effect(run, q.env, "JobClient.later")

    def later_many(
        self,
        params_list: Sequence[P],
        *,
        at: datetime | None = None,
        delay: DurationLike | None = None,
        correlation_id: str | None = None,
        tenant_id: str | None = None,
        priority: int = 0,
    ) -> FutureResult[list[str], JobNotFoundError | ValidationError | TenantError | StorageError]:
        """Enqueue one job per params in one transaction (all or none); returns their ids in order.

        Every params is validated before anything is stored: one that does not
        match gives a `ValidationError` naming its index, and nothing is enqueued.
        The other arguments are those of `later` and apply to every job.
        """
        h, q = self._handler, self._queue
        if h is None or q is None:
            return not_registered(self._name, self._missing, self._home)

        async def run() -> Result[list[str], Any]:
            match _params_of(params_list, "later_many"):
                case Failure() as refused:
                    return refused
                case Success(items):
                    pass
            now = q.env.now_ms()
            shared = Result.do(
                (tenant, correlation, rank, when)
                for tenant in q.tenant_for(self._tenant, tenant_id)
                for correlation in check_short_text(correlation_id, "correlation_id")
                for rank in check_priority(priority)
                for when in due_at(at, delay, now)
            )
            return await bind_async(shared, lambda given: enqueue(items, now, *given))

        async def enqueue(
            items: list[object], now: int, tenant: str | None, correlation: str | None, rank: int, when: int
        ) -> Result[list[str], Any]:
            tp, limit, name = h.job.params, q.env.max_payload_bytes, h.job.name
            rows = []
            # A loop that stops at the first params that fail (a batch may be large), so matches,
            # each testing `Success` first (one C type test for the common case).
            for index, params in enumerate(items):
                what = f"params[{index}] of job {name!r}"
                match encode(tp, params, what=what, limit=limit):
                    case Success(raw):
                        pass
                    case Failure() as failed:
                        return failed
                made = q.row(
                    h,
                    raw,
                    scheduled_for=when,
                    now=now,
                    priority=rank,
                    correlation_id=correlation,
                    tenant_id=tenant,
                    what=what,
                )
                if isinstance(made, ValidationError):
                    return Failure(made)
                rows.append(made)
            if not rows:
                return Success([])
            return Success([job_id for job_id, _ in await q.enqueue(rows)])

        return effect(run, q.env)

    def batch(
        self,
        params_list: Sequence[P],
        *,
        concurrency: int = 3,
        persist: bool = True,
        stop_on_error: bool = False,
        correlation_id: str | None = None,
        tenant_id: str | None = None,
    ) -> FutureResult[list[JobRun[R]], JobNotFoundError | ValidationError | TenantError | StorageError]:
        """Run ``now`` for each params, at most `concurrency` at once; the runs come in input order.

        Every params is validated before any job starts. With
        `stop_on_error`, no new job starts after one fails; the list then
        holds only the jobs that started (a prefix of the input).

        `params_list` is a sequence (a list or tuple): one params struct,
        ``None``, a str, a set or a generator is a `ValidationError`, as is a
        `persist` or `stop_on_error` that is not a bool.
        """
        h, q = self._handler, self._queue
        if h is None or q is None:
            return not_registered(self._name, self._missing, self._home)

        async def run() -> Result[list[JobRun[R]], Any]:
            match _params_of(params_list, "batch"):
                case Failure() as refused:
                    return refused
                case Success(items):
                    pass
            for flag, given in (("persist", persist), ("stop_on_error", stop_on_error)):
                if (not_a_flag := _not_a_flag(given, flag)) is not None:
                    return not_a_flag
            match check_whole(concurrency, "concurrency", 1, MAX_LIMIT):
                case Failure() as bad_count:
                    return bad_count
            prepared: list[tuple[P, bytes]] = []
            tenant: str | None = None
            correlation: str | None = None
            for index, params in enumerate(items):
                what = f"params[{index}] of job {h.job.name!r}"  # as later_many names them
                match self._checked(h, q, params, tenant_id, correlation_id, what):
                    case Failure() as failed:
                        return failed
                    case Success((raw, tenant, correlation)):
                        prepared.append((decode(h.job.params, raw, what="params").unwrap(), raw))  # just validated
            if not prepared:
                return q.tenant_for(self._tenant, tenant_id).map(lambda _: [])
            runs: list[JobRun[R] | None] = [None] * len(prepared)
            errors: list[JobError] = []
            limiter = trio.CapacityLimiter(concurrency)
            stop = False

            async def one(i: int, value: P, raw: bytes) -> None:
                nonlocal stop
                try:
                    runs[i] = r = await h.run_now(
                        q.worker, value, raw, persist=persist, tenant_id=tenant, correlation_id=correlation
                    )
                    stop = stop or (stop_on_error and not r.ok)
                except JobError as exc:
                    errors.append(exc)
                    stop = True
                finally:
                    limiter.release_on_behalf_of(i)

            async with trio.open_nursery() as nursery:
                for i, (value, raw) in enumerate(prepared):
                    await limiter.acquire_on_behalf_of(i)
                    if stop:
                        limiter.release_on_behalf_of(i)
                        break
                    nursery.start_soon(one, i, value, raw)
            if errors:
                return Failure(errors[0])
            return Success([r for r in runs if r is not None])

        return effect(run, q.env)

    def _later_row(
        self,
        h: JobHandler[P, R],
        q: JobQueue,
        params: object,
        at: object,
        delay: object,
        correlation_id: object,
        tenant_id: object,
        priority: object,
        idempotency_key: object,
        unique: object,
        unique_while: object,
    ) -> Result[NewJob, ValidationError | TenantError]:
        """The row `later` stores, or the first of its arguments that is refused (in the order
        of `later`'s signature, the params first).

        An argument left at its default (``None``, or ``False`` for `unique`) is not checked:
        it is known good, so an enqueue with the defaults runs the params' checks alone. Each
        match tests `Success` first: an exact type is one C test, where testing a `Success`
        for `Failure` goes through the ABC's Python ``__instancecheck__``.
        """
        match encode(h.job.params, params, what=self._what, limit=q.env.max_payload_bytes):
            case Success(raw):
                pass
            case Failure() as failed:
                return failed
        tenant = correlation = key = unique_key = None
        if tenant_id is not None or self._tenant is not None or q.tenancy == "required":
            match q.tenant_for(self._tenant, tenant_id):
                case Success(tenant):
                    pass
                case Failure() as refused:
                    return refused
        if correlation_id is not None:
            match check_short_text(correlation_id, "correlation_id"):
                case Success(correlation):
                    pass
                case Failure() as failed:
                    return failed
        now = q.env.clock.now_ms()
        when = now
        if at is not None or delay is not None:
            match due_at(at, delay, now):
                case Success(when):
                    pass
                case Failure() as failed:
                    return failed
        rank = 0
        if type(priority) is not int or priority:  # 0 is the default
            match check_priority(priority):
                case Success(rank):
                    pass
                case Failure() as failed:
                    return failed
        if idempotency_key is not None:
            match check_short_text(idempotency_key, "idempotency_key"):
                case Success(key):
                    pass
                case Failure() as failed:
                    return failed
            # Stored as one key with the job's name and tenant id.
            if (problem := key_problem(f"{tenant or ''}{h.job.name}{key}", _IDEMPOTENCY_FIELDS)) is not None:
                return Failure(problem)
        if unique is not False:
            match unique_key_of(unique, raw, h.job.params):
                case Success(unique_key):
                    pass
                case Failure() as failed:
                    return failed
            if unique_key is not None and (problem := key_problem(h.job.name + unique_key, _UNIQUE_FIELDS)):
                return Failure(problem)  # indexed with the job's name
        match unique_statuses(unique_while):
            case Success(statuses):
                pass
            case Failure() as failed:
                return failed
        made = q.row(
            h,
            raw,
            scheduled_for=when,
            now=now,
            priority=rank,
            correlation_id=correlation,
            tenant_id=tenant,
            idempotency_key=key,
            unique_key=unique_key,
            unique_statuses=statuses,
        )
        return Failure(made) if isinstance(made, ValidationError) else Success(made)

    def _checked(
        self,
        h: JobHandler[P, R],
        q: JobQueue,
        params: object,
        tenant_id: object,
        correlation_id: object,
        what: str | None = None,
    ) -> Result[tuple[bytes, str | None, str | None], ValidationError | TenantError]:
        return Result.do(
            (raw, tenant, correlation)
            for raw in encode(h.job.params, params, what=what or self._what, limit=q.env.max_payload_bytes)
            for tenant in q.tenant_for(self._tenant, tenant_id)
            for correlation in check_short_text(correlation_id, "correlation_id")
        )


class JobsClient:
    """The verbs on queued jobs by id: ``status``, ``cancel``, ``retry``, ``list``.

    Get it as ``engine.client.jobs``. A tenant-scoped client
    (``client.for_tenant(t)``) sees only tenant `t`'s jobs: another
    tenant's job id gives `InstanceNotFoundError`, exactly as an unknown
    id does (no answer tells a tenant which other ids exist).
    """

    def __init__(self, queue: JobQueue, tenant: str | None = None) -> None:
        self._queue = queue
        self._tenant = tenant

    def status(self, job_id: str) -> FutureResult[JobInfo, InstanceNotFoundError | ValidationError | StorageError]:
        """The stored job: status, progress, attempts, result or error."""
        q, scope = self._queue, self._tenant
        return effect(lambda: _map(q.load(scope, job_id), q.info), q.env)

    def cancel(self, job_id: str) -> FutureResult[CancelResult, InstanceNotFoundError | ValidationError | StorageError]:
        """Cancel the job: a pending one never runs; a running one is interrupted through its
        Trio cancel scope (here at once, in another process at its next lease renewal)."""
        q, scope = self._queue, self._tenant
        return effect(lambda: q.cancel(scope, job_id), q.env)

    def retry(
        self, job_id: str
    ) -> FutureResult[RetryResult, InstanceNotFoundError | InvalidStateError | ValidationError | StorageError]:
        """Put a failed or cancelled job back to pending, due now, with a fresh attempt budget."""
        q, scope = self._queue, self._tenant
        return effect(lambda: q.retry(scope, job_id), q.env)

    def list(
        self,
        *,
        status: JobStatusName | None = None,
        name: str | None = None,
        correlation_id: str | None = None,
        tenant_id: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> FutureResult[list[JobInfo], TenantError | ValidationError | StorageError]:
        """Jobs matching every given filter, oldest first; page with ``after=<last id>``."""
        q, scope = self._queue, self._tenant
        return effect(
            lambda: q.list(
                scope,
                status=status,
                name=name,
                correlation_id=correlation_id,
                tenant_id=tenant_id,
                limit=limit,
                after=after,
            ),
            q.env,
        )

    def purge(
        self, *, older_than: DurationLike, status: JobStatusName | Sequence[JobStatusName] = "completed"
    ) -> FutureResult[int, ValidationError | StorageError]:
        """Delete jobs that finished (`status`: ``completed`` by default, or ``failed``,
        ``cancelled``, or a list of them) more than `older_than` ago, with their idempotency
        keys (an enqueue with such a key then creates a new job); how many were deleted.

        Pending and running jobs are never deleted. A tenant-scoped client deletes only
        its tenant's jobs. Rows go in batches of 1000, each its own transaction.
        """
        q, scope = self._queue, self._tenant
        return effect(lambda: q.purge(scope, older_than, status), q.env)


def _params_of(params_list: object, verb: str) -> Result[list[object], ValidationError]:
    """The params of a list or tuple-like sequence, read once into a list; a `ValidationError`
    for anything else (one params struct, ``None``, a str, a number, a set or a generator), or
    for a sequence whose own iteration raises (a hostile subclass: the caller's mistake)."""
    if isinstance(params_list, str | bytes | bytearray) or not isinstance(params_list, Sequence):
        kind = type(params_list).__name__
        return Failure(ValidationError(f"{verb} takes a sequence of params (a list), got {kind}"))
    try:
        return Success(list(params_list))
    except Exception as exc:
        return Failure(
            ValidationError(
                f"{verb} could not read its params: iterating the {type(params_list).__name__} raised {describe(exc)}"
            )
        )


def _not_a_flag(value: object, option: str) -> Failure[ValidationError] | None:
    """The `ValidationError` of an `option` that is not a bool (``persist="no"`` is truthy), or ``None``."""
    if isinstance(value, bool):
        return None
    return Failure(ValidationError(f"{option} must be True or False, got {safe_repr(value):.80}"))


async def _map(loaded: Any, fn: Callable[[JobRecord], JobInfo]) -> Result[JobInfo, Any]:
    result: Result[JobRecord, Any] = await loaded
    return result.map(fn)
