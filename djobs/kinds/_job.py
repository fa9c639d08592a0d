"""One-off jobs: typed params in, a typed result out, run now or through the queue.

A `Job` is defined once with its params and result structs and its body,
``execute(params, ctx)``. The client runs it three ways:

- ``now``: in the caller's task, at once (persisted as a row, or not), with
  the job's retries; the caller gets a `JobRun` with the result or the error;
- ``later``: a ``pending`` row, run by a worker at its time (or at once);
- ``batch``: ``now`` for many params with bounded concurrency.

Rows move pending → running (leased by one worker) → completed / failed /
cancelled; a failed attempt with attempts left goes back to pending with a
backoff. ``client.send_event(name, payload)`` enqueues one job per definition
that listens to `name` (``Job.make(..., on=name)``), in one transaction.

Tenancy: a row may carry a tenant id. ``client.for_tenant(t)`` acts for one
tenant only: what it enqueues is the tenant's, and it reads and changes only
that tenant's rows (any other's is a `TenantError`). An engine opened with
``tenancy="required"`` refuses an enqueue without a tenant id.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, cast, overload

import msgspec
import trio
from returns.future import FutureResult
from returns.result import Failure, Result, Success
from typing_extensions import TypeVar

from .._bodies import Returns, check_body
from .._clock import LATEST_MS, to_datetime
from .._codec import decode, encode
from .._context import BaseContext, D_co
from .._durations import DurationLike, parse_duration, to_ms
from .._errors import (
    ExecutionError,
    InstanceNotFoundError,
    InvalidStateError,
    JobCancelledError,
    JobError,
    JobNotFoundError,
    RetryExhaustedError,
    StorageError,
    TenantError,
    ValidationError,
)
from .._event import Event, name_problem
from .._execution import Checkout, Env, Outcome, RunInfo, execute, run_body
from .._input import check_attempts, check_text, clean_text, epoch_ms
from .._limits import NO_LIMITS, RunLimits, definition_limits, offloaded
from .._logging import JobLog, LoggingOption, threshold
from .._retry import Retry
from .._worker import CANCELLED_ERROR, RunHandle, Worker, error_json
from ..storage import ClaimedJob, JobFilter, JobRecord, JobSettlement, JobStatusName, NewJob, QueueStorage
from ..storage._base import FINAL_STATUSES
from ..tracking import TrackedEvent
from ._common import D_contra, Definition, check_id, check_name, effect, not_registered

if TYPE_CHECKING:
    from .._runtime import Runtime
    from ..storage import Alarm

P = TypeVar("P")
R = TypeVar("R")

KIND = "job"

#: How an engine treats tenant ids: ``"required"`` refuses an enqueue without one.
Tenancy = Literal["optional", "required"]

#: The final status of a `JobRun`.
JobRunStatus = Literal["completed", "failed", "cancelled"]

#: How long a unique job holds its key: while ``pending`` only (a running job
#: does not stop a new one), or while ``pending_or_running``.
UniqueWhile = Literal["pending", "pending_or_running"]

_UNIQUE_STATUSES: dict[str, tuple[JobStatusName, ...]] = {
    "pending": ("pending",),
    "pending_or_running": ("pending", "running"),
}

_MAX_TEXT = 512
_any_json = msgspec.json.Decoder()


def _check_text(value: object, what: str) -> Result[str | None, ValidationError]:
    if value is None:
        return Success(None)
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
        return Failure(
            ValidationError(f"{what} must be a non-empty string of at most {_MAX_TEXT} characters, got {value!r:.80}")
        )
    return check_text(value, what)


def _error_json(error: JobError) -> bytes:
    return error_json(error.tag, error.message)


def _error_event(error: JobError) -> dict[str, str]:
    return {"tag": error.tag, "message": error.message}


# -- context ---------------------------------------------------------------------------


class JobContext(BaseContext[D_co]):
    """The context of one attempt of a job: ``JobContext[D]``, services `D`
    (``object``, the default, for a body that needs none).

    Attributes:
        job_id: The job's id (a UUIDv7), or ``None`` for ``now(persist=False)``.
        run_id: This attempt's own id (a UUIDv7).
        attempt: Which try this is (1 = the first).
        max_attempts: How many tries the job has.
        tenant_id: The tenant the job belongs to, if any.
        correlation_id: The correlation id it was enqueued with, if any.
    """

    __slots__ = ("_lease", "attempt", "correlation_id", "job_id", "max_attempts", "run_id")

    def __init__(
        self,
        env: Env,
        job_name: str,
        log: JobLog,
        *,
        job_id: str | None,
        run_id: str,
        attempt: int,
        max_attempts: int,
        tenant_id: str | None,
        correlation_id: str | None,
        lease: tuple[QueueStorage, str] | None,
    ) -> None:
        super().__init__(env, job_name, job_id or run_id, log, tenant_id)
        self.job_id = job_id
        self.run_id = run_id
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.correlation_id = correlation_id
        self._lease = lease

    @property
    def is_retry(self) -> bool:
        """Whether this attempt retries a failed one."""
        return self.attempt > 1

    async def update_progress(self, percent: float, message: str | None = None) -> None:
        """Record how far the job is, 0-100 (clamped), with an optional message.

        Persisted at once, so ``client.jobs.status`` shows it while the job
        runs. For a job that is not persisted (``now(persist=False)``) it does
        nothing but log at debug level. A storage failure is logged, not
        raised: progress is advice, not the job's outcome.
        """
        try:
            value = 0 if percent != percent else max(0, min(100, round(percent)))  # NaN counts as 0
        except (TypeError, OverflowError):
            value = 100 if isinstance(percent, float) and percent > 0 else 0
        if self._lease is None or self.job_id is None:
            self.log.debug("progress %d%% (%s) not stored: the job is not persisted", value, message or "")
            return
        storage, worker_id = self._lease
        if message is not None:
            message = clean_text(str(message))[:_MAX_TEXT]  # storable on every storage, never refused
        try:
            held = await storage.set_progress(self.job_id, worker_id, self.attempt, value, message, self._env.now_ms())
        except StorageError as exc:
            self.log.warning("could not store progress: %s", exc.message)
            return
        if not held:
            self.log.warning("progress not stored: this attempt no longer holds the job's lease")


# -- definition ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Job(Definition[D_contra], Generic[P, R, D_contra]):
    """A one-off job with typed params and result. Make one with `Job.make`.

    ``Job[P, R, D]``: params `P`, result `R`; its body needs services `D`
    (``object``, the default, for none) and returns `R` in one of the body forms (`R`, ``Result[R, E]``, ``async def``,
    ``FutureResult[R, E]``, ``RequiresContextFutureResult[R, E, D]``, ...).

    Examples:
        >>> import msgspec, djobs
        >>> class Email(msgspec.Struct):
        ...     to: str
        >>> class Sent(msgspec.Struct):
        ...     message_id: str
        >>> async def send(params: Email, ctx: djobs.JobContext) -> Sent:
        ...     return Sent(message_id=f"m-{params.to}")
        >>> send_email = djobs.Job.make("sendEmail", params=Email, result=Sent, execute=send)
        >>> send_email.max_attempts
        3
    """

    kind: ClassVar[str] = KIND
    name: str
    params: type[P]
    result: type[R]
    execute: Callable[[P, JobContext[D_contra]], Returns[R, D_contra]]
    retry: Retry
    max_attempts: int
    on: str | None = None
    logging: LoggingOption = False
    limits: RunLimits = NO_LIMITS

    @overload
    @classmethod
    def make(
        cls,
        name: str,
        *,
        params: type[P],
        result: type[R],
        execute: Callable[[P, JobContext[D_contra]], Returns[R, D_contra]],
        retry: Retry | None = None,
        max_attempts: int | None = None,
        on: str | Event[P] | None = None,
        logging: LoggingOption = False,
        timeout: DurationLike | None = None,
        blocking: bool = False,
    ) -> Job[P, R, D_contra]: ...
    @overload
    @classmethod
    def make(
        cls,
        name: str,
        *,
        params: type[P],
        result: None = None,
        execute: Callable[[P, JobContext[D_contra]], Returns[None, D_contra]],
        retry: Retry | None = None,
        max_attempts: int | None = None,
        on: str | Event[P] | None = None,
        logging: LoggingOption = False,
        timeout: DurationLike | None = None,
        blocking: bool = False,
    ) -> Job[P, None, D_contra]: ...
    @classmethod
    def make(
        cls,
        name: str,
        *,
        params: type[P],
        result: type[Any] | None = None,
        execute: Callable[[P, JobContext[Any]], Any],
        retry: Retry | None = None,
        max_attempts: int | None = None,
        on: str | Event[P] | None = None,
        logging: LoggingOption = False,
        timeout: DurationLike | None = None,
        blocking: bool = False,
    ) -> Job[P, Any, Any]:
        """Define a job.

        Args:
            name: The job's unique name (no ``:``).
            params: The ``msgspec.Struct`` type of its params (and of the
                payload of the event it listens to).
            result: The ``msgspec.Struct`` type of its result; ``None`` (the
                default) for a job that returns nothing.
            execute: The body, ``execute(params, ctx)``, returning the result
                in a body form (a value, a ``Result``,
                ``async def``, a ``FutureResult``, a
                ``RequiresContextFutureResult`` run with the services, ...).
                Any other return is a mypy error, and at run time the
                attempt's `ValidationError`.
            retry: The backoff between attempts and which errors are retried;
                default exponential from 1 second to 30 seconds.
            max_attempts: Tries per job, the first included; default the
                retry's ``max_attempts`` if `retry` is given, else 3.
            on: An event, as a typed `Event` or its name:
                ``client.send_event(on, payload)`` enqueues this job. A typed
                event's payload type must be `params` (mypy checks it), or a
                subclass of it.
            logging: ``True`` (debug), ``False`` (errors only), a level, or ``None`` (silent).
            timeout: The longest an attempt may take (``"10 minutes"``); a
                longer one is cancelled and fails with `JobTimeoutError`, and
                the next attempt follows as for any failure. ``None``
                (default): no limit.
            blocking: ``True`` runs a synchronous `execute` in a worker thread
                (``trio.to_thread``), so a body that blocks neither stalls
                the engine nor lets its lease lapse; an ``async def`` is refused.

        Raises:
            ValidationError: A bad name, params or result type, max_attempts,
                timeout, or ``blocking=True`` with an ``async def``; an event
                name that is empty or holds a NUL or a lone surrogate; a typed
                event whose payload is not a `params`.
        """
        check_name(name, "Job")
        if not (isinstance(params, type) and issubclass(params, msgspec.Struct)):
            raise ValidationError(f"Job {name!r}: params must be a msgspec.Struct type, got {params!r}")
        if result is not None and not (isinstance(result, type) and issubclass(result, msgspec.Struct)):
            raise ValidationError(f"Job {name!r}: result must be a msgspec.Struct type or None, got {result!r}")
        check_body(execute, f"Job {name!r}: execute")
        attempts = max_attempts if max_attempts is not None else (retry.max_attempts if retry is not None else 3)
        check_attempts(attempts, f"Job {name!r}: max_attempts")
        if isinstance(on, Event):
            if not issubclass(on.payload, params):
                raise ValidationError(
                    f"Job {name!r}: it listens to {on!r}, whose payload is not a {params.__qualname__}"
                    f" (its params); give the event's payload type as params"
                )
            on = on.name
        if on is not None and (problem := name_problem(on)) is not None:
            raise ValidationError(f"Job {name!r}: on: {problem}")
        base = retry or Retry()
        policy = Retry(attempts, base.delay, jitter=base.jitter, retry_on=base.retry_on)
        result_type: type[Any] = type(None) if result is None else result
        limits = definition_limits(timeout, blocking, {"execute": execute}, f"Job {name!r}")
        return Job(name, params, result_type, execute, policy, attempts, on, logging, limits)

    def bind(self, runtime: Runtime) -> JobHandler[P, R]:
        """The handler that runs this job inside an engine (used by the engine)."""
        return JobHandler(self, runtime.env)


# -- results ---------------------------------------------------------------------------


class JobRun(msgspec.Struct, Generic[R], frozen=True, kw_only=True):
    """How one ``now`` (or one item of a ``batch``) ended.

    A failed job is a successful call: ``status="failed"`` with the `error`.

    Attributes:
        job_id: The row's id, or ``None`` when not persisted.
        status: ``completed``, ``failed`` or ``cancelled``.
        result: The validated result, when completed.
        error: Why it failed: the job's error, `RetryExhaustedError` when
            every attempt failed, `JobCancelledError` when cancelled.
        duration_ms: Wall time from the first attempt's start to the end.
        attempts: How many attempts ran.
    """

    job_id: str | None
    status: JobRunStatus
    result: R | None = None
    error: JobError | None = None
    duration_ms: float = 0.0
    attempts: int = 0

    @property
    def ok(self) -> bool:
        """Whether the job completed."""
        return self.status == "completed"


class JobErrorInfo(msgspec.Struct, frozen=True):
    """A stored job error: the `JobError` tag and its message."""

    tag: str
    message: str


class JobInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A queued job as stored, returned by ``client.jobs.status`` and ``list``.

    `params` and `result` are the job's structs when this engine registers
    the job and the stored JSON still matches them, else plain JSON values.

    Attributes:
        id: The job id (UUIDv7).
        name: The job's name.
        status: ``pending``, ``running``, ``completed``, ``failed`` or ``cancelled``.
        attempts: Attempts started so far (0 while pending the first time).
        max_attempts: The attempt budget.
        progress: 0-100, as the job last reported.
        scheduled_for: When it is (or was) due.
        started_at: When the current or last attempt started.
        cancel_requested: A cancel is waiting for the running attempt to stop.
    """

    id: str
    name: str
    status: JobStatusName
    params: Any
    result: Any = None
    error: JobErrorInfo | None = None
    progress: int = 0
    progress_message: str | None = None
    attempts: int = 0
    max_attempts: int = 1
    priority: int = 0
    correlation_id: str | None = None
    tenant_id: str | None = None
    scheduled_for: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    cancel_requested: bool = False


class CancelResult(msgspec.Struct, frozen=True):
    """The result of ``cancel``.

    ``status`` is ``cancelled`` (it will not run again; a job running in this
    process was interrupted and its row is settled), ``cancel_requested`` (it
    runs in another process, whose worker cancels it at its next lease
    renewal), or ``completed`` / ``failed`` (it had already finished; nothing
    changed).
    """

    job_id: str
    status: Literal["cancelled", "cancel_requested", "completed", "failed"]


class RetryResult(msgspec.Struct, frozen=True):
    """The result of ``retry``: the job is pending again with a fresh attempt budget."""

    job_id: str
    status: Literal["pending"] = "pending"


class EventResult(msgspec.Struct, frozen=True, kw_only=True):
    """The result of ``send_event``: one job per listening definition.

    Attributes:
        event: The event name.
        job_ids: The enqueued jobs' ids, in the order of `job_names`.
        job_names: The listening jobs.
        delivered: ``False`` when no job listens to the event (not an error).
    """

    event: str
    job_ids: list[str]
    job_names: list[str]
    delivered: bool


def job_info(record: JobRecord, handler: JobHandler[Any, Any] | None) -> JobInfo:
    """The public view of a stored row, decoding params and result with the job's types if known."""

    def value(raw: bytes | None, tp: Any) -> Any:
        if raw is None:
            return None
        if tp is not None:
            typed = decode(tp, raw, what="value")
            if isinstance(typed, Success):
                return typed.unwrap()
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


# -- handler ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Attempt:
    """Who one attempt is: the identity its context, log lines and events carry."""

    job_id: str | None
    attempt: int
    max_attempts: int
    tenant_id: str | None
    correlation_id: str | None
    worker_id: str | None  # the lease holder, for progress writes; None when not persisted


class JobHandler(Generic[P, R]):
    """Runs one job definition's attempts: in a caller's task (``now``) or for the worker."""

    def __init__(self, job: Job[P, R, Any], env: Env) -> None:
        self.job = job
        self.env = env
        self._logger = env.logger.getChild(f"{KIND}.{job.name}")
        self._threshold = threshold(job.logging)
        self._retries: dict[int, Retry] = {job.max_attempts: job.retry}

    async def on_alarm(self, alarm: Alarm) -> None:
        """Jobs use no alarms; the engine routes none here."""

    def retry_for(self, max_attempts: int) -> Retry:
        """The job's retry policy with a row's attempt budget (rows keep the budget they were enqueued with)."""
        policy = self._retries.get(max_attempts)
        if policy is None:
            base = self.job.retry
            policy = self._retries[max_attempts] = Retry(
                max_attempts, base.delay, jitter=base.jitter, retry_on=base.retry_on
            )
        return policy

    async def _call(self, params: P, ctx: JobContext[Any]) -> Result[bytes, JobError]:
        # The result is validated as part of the attempt, so a bad result is the
        # attempt's failure (a ValidationError, not retried) like any other.
        job = self.job
        limit = self.env.max_payload_bytes
        body = offloaded(job.execute, job.limits, f"the execute of job {job.name!r}")
        value = await run_body(lambda: body(params, ctx), self.env.services, f"the execute of job {job.name!r}")
        return value.bind(lambda result: encode(job.result, result, what=f"result of job {job.name!r}", limit=limit))

    async def attempt(
        self, params: P, who: _Attempt, run_id: str, storage: QueueStorage | None
    ) -> tuple[Outcome, list[TrackedEvent]]:
        """Run one attempt through the execution service; nothing is written here."""
        env, job = self.env, self.job
        key = who.job_id or run_id
        log = JobLog(self._logger, self._threshold, {"job": job.name, "job_id": key, "attempt": who.attempt})
        lease = (storage, who.worker_id) if storage is not None and who.worker_id is not None else None
        ctx: JobContext[Any] = JobContext(
            env,
            job.name,
            log,
            job_id=who.job_id,
            run_id=run_id,
            attempt=who.attempt,
            max_attempts=who.max_attempts,
            tenant_id=who.tenant_id,
            correlation_id=who.correlation_id,
            lease=lease,
        )
        events: list[TrackedEvent] = []
        info = RunInfo(key, KIND, job.name, 1, who.attempt)
        outcome = await execute(
            env,
            info,
            Checkout(None),
            lambda: self._call(params, ctx),
            self.retry_for(who.max_attempts),
            events,
            log,
            job.limits,
            f"the execute of job {job.name!r}",
        )
        return outcome, events

    def final_error(self, outcome: Outcome, attempt: int) -> JobError:
        """The error a failed outcome leaves on the row and the `JobRun`."""
        error = outcome.error or JobError("the job failed")
        return RetryExhaustedError(attempt, error) if outcome.kind == "exhausted" else error

    # -- the worker's side -------------------------------------------------------------

    async def run_claimed(self, job: ClaimedJob, worker: Worker) -> None:
        """Run the leased attempt `job` and settle its row (fenced by worker id and attempt)."""
        who = _Attempt(job.id, job.attempt, job.max_attempts, job.tenant_id, job.correlation_id, worker.id)
        params = decode(self.job.params, job.params, what=f"params of job {self.job.name!r}")
        with worker.running(job.id, attempt=job.attempt) as run:
            if isinstance(params, Failure):
                error = params.failure()
                events = [
                    worker.event(
                        "job.failed", job.id, job.name, attempt=job.attempt, will_retry=False, error=_error_event(error)
                    )
                ]
                self._settle(worker, run, job, "failed", None, error, events)
                return
            try:
                with run.scope:
                    outcome, events = await self.attempt(params.unwrap(), who, worker.new_id(), worker.storage)
                if not run.scope.cancelled_caught:
                    self._record(worker, run, job, outcome, events)
                    return
            except Exception as exc:
                # A bug after (or around) the user's code: the attempt counts, the row is not handed back.
                self._count_failed_attempt(worker, run, job, exc)
                return
            except BaseException:
                # Cancelled from outside (the engine is being torn down): hand the row
                # back; its attempt does not count.
                with trio.CancelScope(shield=True):
                    await self._release(worker, job)
                raise
            if run.scope.cancelled_caught:
                if run.lost:
                    return  # the row belongs to another worker now
                if worker.closing:
                    # Shielded: when the scope around the engine was cancelled, the hand-back must still land.
                    with trio.CancelScope(shield=True):
                        await self._release(worker, job)
                    return
                cancelled = [worker.event("job.cancelled", job.id, job.name, attempt=job.attempt)]
                self._settle(worker, run, job, "cancelled", None, JobCancelledError(job.id), cancelled)

    def _record(
        self, worker: Worker, run: RunHandle, job: ClaimedJob, outcome: Outcome, events: list[TrackedEvent]
    ) -> None:
        """Settle the row as the attempt's outcome says."""
        env = self.env
        if outcome.kind == "succeeded":
            if worker.tracking:
                events.append(
                    worker.event(
                        "job.completed", job.id, job.name, attempt=job.attempt, duration_ms=outcome.duration_ms
                    )
                )
            self._settle(worker, run, job, "completed", cast(bytes, outcome.value), None, events)
        elif outcome.kind == "retrying":
            assert outcome.retry_at is not None and outcome.error is not None
            settlement = JobSettlement(
                job_id=job.id,
                worker_id=worker.id,
                attempt=job.attempt,
                status="pending",
                at=env.now_ms(),
                error=_error_json(outcome.error),
                scheduled_for=outcome.retry_at,
            )
            worker.settle(settlement, events, run, poke_at=outcome.retry_at)
        else:
            self._settle(worker, run, job, "failed", None, self.final_error(outcome, job.attempt), events)

    def _count_failed_attempt(self, worker: Worker, run: RunHandle, job: ClaimedJob, exc: Exception) -> None:
        """An unexpected exception ended the attempt: it counts, as a failure retried by the job's policy."""
        self._logger.exception(
            "bug: attempt %d of job %s raised past its handler; it counts as failed", job.attempt, job.id
        )
        error = ExecutionError(clean_text(f"the attempt failed unexpectedly: {exc!r}"), exc)
        if job.attempt < job.max_attempts:
            now = self.env.now_ms()
            policy = self.retry_for(job.max_attempts)
            retry_at = min(now + to_ms(policy.delay_before(job.attempt + 1, self.env.rng)), LATEST_MS)
            settlement = JobSettlement(
                job_id=job.id,
                worker_id=worker.id,
                attempt=job.attempt,
                status="pending",
                at=now,
                error=_error_json(error),
                scheduled_for=retry_at,
            )
            worker.settle(settlement, [], run, poke_at=retry_at)
        else:
            self._settle(worker, run, job, "failed", None, RetryExhaustedError(job.attempt, error), [])

    def _settle(
        self,
        worker: Worker,
        run: RunHandle,
        job: ClaimedJob,
        status: JobStatusName,
        result: bytes | None,
        error: JobError | None,
        events: list[TrackedEvent],
    ) -> None:
        settlement = JobSettlement(
            job_id=job.id,
            worker_id=worker.id,
            attempt=job.attempt,
            status=status,
            at=self.env.now_ms(),
            result=result,
            error=None if error is None else _error_json(error),
        )
        worker.settle(settlement, events, run)

    async def _apply(self, worker: Worker, settlement: JobSettlement, events: list[TrackedEvent]) -> bool:
        try:
            [applied] = await worker.storage.settle_jobs([settlement])
        except StorageError as exc:
            # The row stays leased; once the lease runs out it is reclaimed and runs again.
            self._logger.error(
                "job %s: could not record how attempt %d ended: %s", settlement.job_id, settlement.attempt, exc.message
            )
            return False
        if not applied:
            self._logger.warning(
                "job %s: attempt %d lost its lease before it ended; its outcome is dropped",
                settlement.job_id,
                settlement.attempt,
            )
            return False
        worker.emit(events)
        return True

    async def _release(self, worker: Worker, job: ClaimedJob) -> None:
        settlement = JobSettlement(
            job_id=job.id,
            worker_id=worker.id,
            attempt=job.attempt,
            status="pending",
            at=self.env.now_ms(),
            release=True,
            error=CANCELLED_ERROR,
        )
        try:
            await worker.storage.settle_jobs([settlement])
        except StorageError as exc:
            self._logger.warning(
                "job %s: could not hand back an interrupted attempt; it runs after its lease: %s", job.id, exc.message
            )

    # -- now ---------------------------------------------------------------------------

    async def run_now(
        self,
        queue: JobQueue,
        params: P,
        raw: bytes,
        *,
        persist: bool,
        tenant_id: str | None,
        correlation_id: str | None,
    ) -> JobRun[R]:
        """Run the job in the caller's task, retrying by its policy; raises `StorageError`."""
        env, worker, job = self.env, queue.worker, self.job
        started = time.perf_counter()
        job_id: str | None = None
        if persist:
            storage = queue.storage
            job_id = worker.new_id()
            now = env.now_ms()
            row = NewJob(
                id=job_id,
                name=job.name,
                params=raw,
                max_attempts=job.max_attempts,
                scheduled_for=now,
                created_at=now,
                correlation_id=correlation_id,
                tenant_id=tenant_id,
            )
            await storage.start_job(row, worker.id, now + worker.lease_ms)
            if worker.tracking:
                worker.emit(
                    [
                        worker.event("job.enqueued", job_id, job.name, now=True, tenant_id=tenant_id),
                        worker.event("job.claimed", job_id, job.name, attempt=1, worker_id=worker.id),
                    ]
                )
        who = _Attempt(job_id, 1, job.max_attempts, tenant_id, correlation_id, worker.id if persist else None)
        cm = worker.running(job_id) if job_id is not None else nullcontext(RunHandle())
        settled = False

        def done(status: JobRunStatus, result: R | None, error: JobError | None) -> JobRun[R]:
            duration = round((time.perf_counter() - started) * 1000, 3)
            return JobRun(
                job_id=job_id, status=status, result=result, error=error, duration_ms=duration, attempts=who.attempt
            )

        async def settle(
            status: JobStatusName,
            result: bytes | None,
            error: JobError | None,
            events: list[TrackedEvent],
            lease_until: int | None = None,
        ) -> None:
            nonlocal settled
            if job_id is None:
                worker.emit(events)
                return
            settled = status != "running"
            settlement = JobSettlement(
                job_id=job_id,
                worker_id=worker.id,
                attempt=who.attempt,
                status=status,
                at=env.now_ms(),
                result=result,
                lease_until=lease_until,
                error=None if error is None else _error_json(error),
            )
            await self._apply(worker, settlement, events)

        with cm as run:
            try:
                with run.scope:
                    while True:
                        outcome, events = await self.attempt(params, who, worker.new_id(), queue.storage)
                        if outcome.kind != "retrying":
                            break
                        assert outcome.retry_at is not None and outcome.error is not None
                        await settle(
                            "running", None, outcome.error, events, lease_until=outcome.retry_at + worker.lease_ms
                        )
                        who.attempt += 1  # the row counts the next attempt from here (its fence)
                        await env.clock.sleep_until(outcome.retry_at)
            except BaseException:
                if job_id is not None and not settled:
                    # The caller's own task was cancelled mid-run: the row ends cancelled.
                    with trio.CancelScope(shield=True):
                        cancelled = [worker.event("job.cancelled", job_id, job.name, attempt=who.attempt)]
                        await settle("cancelled", None, JobCancelledError(job_id), cancelled)
                raise
            # Settled inside the run's block: a `cancel` waiting for this run reads the final row.
            if run.scope.cancelled_caught:
                stopped = JobCancelledError(job_id or "")
                await settle(
                    "cancelled",
                    None,
                    stopped,
                    [worker.event("job.cancelled", job_id or "", job.name, attempt=who.attempt)],
                )
                return done("cancelled", None, stopped)
            if outcome.kind == "succeeded":
                raw_result = cast(bytes, outcome.value)
                value = decode(job.result, raw_result, what=f"result of job {job.name!r}").unwrap()  # just encoded
                if worker.tracking:
                    events.append(
                        worker.event(
                            "job.completed",
                            job_id or "",
                            job.name,
                            attempt=who.attempt,
                            duration_ms=outcome.duration_ms,
                        )
                    )
                await settle("completed", raw_result, None, events)
                return done("completed", value, None)
            error = self.final_error(outcome, who.attempt)
            await settle("failed", None, error, events)
            return done("failed", None, error)


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
        self.worker.register(job.name, handler)

    def handler(self, job: object) -> tuple[str, JobHandler[Any, Any] | None]:
        """The handler of `job` (a definition or a name); ``None`` if this engine does not run it."""
        name = job if isinstance(job, str) else getattr(job, "name", repr(job))
        handler = self.handlers.get(name)
        if handler is not None and not isinstance(job, str) and handler.job is not job:
            return name, None  # same name, another definition: not this engine's job
        return name, handler

    # -- tenancy -----------------------------------------------------------------------

    def tenant_for(self, scope: str | None, given: object) -> Result[str | None, TenantError | ValidationError]:
        """The tenant an enqueue is for: the client's scope, or the given id (required if tenancy is)."""
        checked = _check_text(given, "tenant_id")
        if isinstance(checked, Failure):
            return checked
        tenant = checked.unwrap()
        if scope is not None:
            scoped = _check_text(scope, "the client's tenant id")
            if isinstance(scoped, Failure):
                return scoped
            if tenant is not None and tenant != scope:
                return Failure(TenantError(f"this client acts for tenant {scope!r}; it cannot act for {tenant!r}"))
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
                            scheduled_for=to_datetime(row.scheduled_for).isoformat(),
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
    ) -> NewJob:
        """A new pending row for `handler`'s job."""
        return NewJob(
            id=self.worker.new_id(),
            name=handler.job.name,
            params=raw,
            max_attempts=handler.job.max_attempts,
            scheduled_for=scheduled_for,
            created_at=now,
            priority=priority,
            correlation_id=correlation_id,
            tenant_id=tenant_id,
            idempotency_key=idempotency_key,
            unique_key=unique_key,
            unique_statuses=unique_statuses,
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
            typed = encode(
                event.payload, payload, what=f"payload of event {event.name!r}", limit=self.env.max_payload_bytes
            )
            if isinstance(typed, Failure):
                return typed
            event = event.name
        if (problem := name_problem(event)) is not None or not isinstance(event, str):
            return Failure(ValidationError(problem or f"event name must be a string, got {event!r:.80}"))
        now = self.env.now_ms()
        checked = Result.do(
            (tenant, correlation, key, due)
            for tenant in self.tenant_for(scope, tenant_id)
            for correlation in _check_text(correlation_id, "correlation_id")
            for key in _check_text(idempotency_key, "idempotency_key")
            for due in _when(at, delay, now)
        )
        if isinstance(checked, Failure):
            return checked
        tenant, correlation, key, due = checked.unwrap()
        listeners = self.listeners.get(event, [])
        encoded: list[bytes] = []
        limit = self.env.max_payload_bytes
        exact = [
            encode(h.job.params, payload, what=f"payload of event {event!r} for job {h.job.name!r}", limit=limit)
            for h in listeners
        ]
        if exact and all(isinstance(e, Failure) for e in exact):
            # A listener may read a part of the payload, but some listener must take all of it:
            # a field no listener knows (a misspelling) or a struct no listener takes is refused.
            return Failure(exact[0].failure())
        for handler, strict_raw in zip(listeners, exact, strict=True):
            what = f"payload of event {event!r} for job {handler.job.name!r}"
            raw = (
                strict_raw
                if isinstance(strict_raw, Success)
                else encode(handler.job.params, payload, what=what, limit=limit, strict=False)
            )
            if isinstance(raw, Failure):
                return Failure(raw.failure())
            encoded.append(raw.unwrap())
        if not listeners:
            return Success(EventResult(event=event, job_ids=[], job_names=[], delivered=False))
        rows = [
            self.row(
                h, raw, scheduled_for=due, now=now, correlation_id=correlation, tenant_id=tenant, idempotency_key=key
            )
            for h, raw in zip(listeners, encoded, strict=True)
        ]
        ids = [job_id for job_id, _ in await self.enqueue(rows)]
        return Success(EventResult(event=event, job_ids=ids, job_names=[h.job.name for h in listeners], delivered=True))

    # -- reading and changing rows -------------------------------------------------------

    async def load(self, scope: str | None, job_id: object) -> Result[JobRecord, Any]:
        """The row `job_id`, if it exists and the scope may see it."""
        checked = Result.do(
            the_id
            for _ in _check_text(scope, "the client's tenant id")
            for the_id in check_id(job_id).alt(lambda error: ValidationError(f"job id: {error.message}"))
        )
        if isinstance(checked, Failure):
            return checked
        record = await self.storage.get_job(checked.unwrap())
        if record is None:
            return Failure(_job_not_found(checked.unwrap()))
        return self.visible(scope, record)

    def info(self, record: JobRecord) -> JobInfo:
        """The public view of `record`."""
        return job_info(record, self.handlers.get(record.name))

    async def cancel(self, scope: str | None, job_id: object) -> Result[CancelResult, Any]:
        """Cancel a pending job, or the running attempt of one (here: at once; elsewhere: requested)."""
        loaded = await self.load(scope, job_id)
        if isinstance(loaded, Failure):
            return loaded
        record = loaded.unwrap()
        if record.status in ("completed", "failed", "cancelled"):
            return Success(CancelResult(record.id, record.status))
        changed = await self.storage.cancel_job(record.id, self.env.now_ms(), CANCELLED_ERROR)
        if changed is None:
            return Failure(_job_not_found(record.id))
        if changed.status == "cancelled":
            self.worker.emit([self.worker.event("job.cancelled", record.id, record.name, attempt=record.attempt_count)])
            return Success(CancelResult(record.id, "cancelled"))
        if changed.status != "running":
            return Success(CancelResult(record.id, changed.status))  # type: ignore[arg-type]  # finished meanwhile
        settled = self.worker.cancel_local(record.id)
        if settled is None:
            return Success(CancelResult(record.id, "cancel_requested"))
        await settled.wait()
        after = await self.storage.get_job(record.id)
        status = after.status if after is not None else "cancelled"
        return Success(CancelResult(record.id, status if status != "running" else "cancel_requested"))  # type: ignore[arg-type]

    async def retry(self, scope: str | None, job_id: object) -> Result[RetryResult, Any]:
        """Put a failed or cancelled job back to pending, due now, with a fresh attempt budget."""
        loaded = await self.load(scope, job_id)
        if isinstance(loaded, Failure):
            return loaded
        record = loaded.unwrap()
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
        if status is not None and status not in ("pending", "running", "completed", "failed", "cancelled"):
            return Failure(
                ValidationError(f"status must be pending, running, completed, failed or cancelled, got {status!r}")
            )
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            return Failure(ValidationError(f"limit must be an int from 1 to 10000, got {limit!r}"))
        filters = Result.do(
            (the_name, correlation, tenant, the_after)
            for the_name in _check_text(name, "name")
            for correlation in _check_text(correlation_id, "correlation_id")
            for tenant in _check_text(tenant_id, "tenant_id")
            for the_after in _check_text(after, "after")
            for _ in _check_text(scope, "the client's tenant id")
        )
        if isinstance(filters, Failure):
            return filters
        the_name, correlation, tenant, the_after = filters.unwrap()
        if scope is not None:
            if tenant is not None and tenant != scope:
                return Failure(TenantError(f"this client acts for tenant {scope!r}; it cannot list {tenant!r}'s jobs"))
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

    async def purge(self, scope: str | None, older_than: object, status: object) -> Result[int, Any]:
        """Delete finished jobs (`status`) that finished more than `older_than` ago; how many."""
        age = parse_duration(older_than, what="older_than")
        if isinstance(age, Failure):
            return age
        statuses = [status] if isinstance(status, str) else status
        if (
            not isinstance(statuses, list | tuple)
            or not statuses
            or not all(isinstance(s, str) and s in FINAL_STATUSES for s in statuses)
        ):
            return Failure(
                ValidationError(
                    f"status must be completed, failed or cancelled (or a list of them), got {status!r}; "
                    "pending and running jobs are never purged"
                )
            )
        before = self.env.now_ms() - to_ms(age.unwrap())
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


# -- clients ---------------------------------------------------------------------------


def _when(at: object, delay: object, now: int) -> Result[int, ValidationError]:
    when: Result[int, ValidationError]
    if at is not None and delay is not None:
        return Failure(ValidationError("give at= or delay=, not both"))
    if at is not None:
        when = epoch_ms(at, "at").map(lambda moment: max(moment, now))
    elif delay is not None:
        when = parse_duration(delay, what="delay").map(lambda d: now + to_ms(d))
    else:
        when = Success(now)
    too_late = ValidationError(f"a job cannot be scheduled after 9999-12-30 (got at={at!r}, delay={delay!r})")
    return when.bind(lambda ms: Failure(too_late) if ms > LATEST_MS else Success(ms))


def _unique_key(unique: object, raw: bytes) -> Result[str | None, ValidationError]:
    """The stored unique key: ``True`` keys by the params' JSON (its SHA-256), a string is the key."""
    if unique is False or unique is None:
        return Success(None)
    if unique is True:
        return Success("params:" + hashlib.sha256(raw).hexdigest())
    if not isinstance(unique, str):
        return Failure(ValidationError(f"unique must be True, False or a key (a string), got {unique!r:.80}"))
    return _check_text(unique, "unique").map(lambda key: None if key is None else "key:" + key)


def _unique_statuses(unique_while: object) -> Result[tuple[JobStatusName, ...], ValidationError]:
    statuses = _UNIQUE_STATUSES.get(unique_while) if isinstance(unique_while, str) else None
    if statuses is None:
        return Failure(
            ValidationError(f"unique_while must be 'pending' or 'pending_or_running', got {unique_while!r:.80}")
        )
    return Success(statuses)


def _check_priority(priority: object) -> Result[int, ValidationError]:
    if isinstance(priority, bool) or not isinstance(priority, int) or not -(2**31) <= priority < 2**31:
        return Failure(ValidationError(f"priority must be a 32-bit int, got {priority!r}"))
    return Success(priority)


class JobClient(Generic[P, R]):
    """The verbs of one job: ``now``, ``later``, ``batch``. Get one with ``engine.client.job(job)``.

    Every verb returns a `FutureResult` that does its work when awaited. A
    call's own problems (bad params, an unknown job, a tenant mismatch,
    storage) are the failure; a job that fails is a successful call whose
    `JobRun` says ``failed``.
    """

    def __init__(
        self, name: str, handler: JobHandler[P, R] | None, queue: JobQueue | None, tenant: str | None = None
    ) -> None:
        self._name = name
        self._handler = handler
        self._queue = queue
        self._tenant = tenant

    def now(
        self, params: P, *, persist: bool = True, correlation_id: str | None = None, tenant_id: str | None = None
    ) -> FutureResult[JobRun[R], JobNotFoundError | ValidationError | TenantError | StorageError]:
        """Run the job in this task now, retrying by its policy, and return how it ended.

        With ``persist=True`` (default) the job is a row like any other
        (running → completed / failed / cancelled) that ``client.jobs`` sees
        and can cancel; with ``persist=False`` nothing is written and
        ``update_progress`` is a no-op.
        """
        h, q = self._handler, self._queue
        if h is None or q is None:
            return not_registered(self._name)

        async def run() -> Result[JobRun[R], Any]:
            checked = self._checked(h, q, params, tenant_id, correlation_id)
            if isinstance(checked, Failure):
                return checked
            raw, tenant, correlation = checked.unwrap()
            value = decode(h.job.params, raw, what=f"params of job {h.job.name!r}").unwrap()  # just validated
            return Success(
                await h.run_now(q, value, raw, persist=persist, tenant_id=tenant, correlation_id=correlation)
            )

        return effect(run)

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
            return not_registered(self._name)

        async def run() -> Result[str, Any]:
            now = q.env.now_ms()
            row = Result.do(
                q.row(
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
                for raw, tenant, correlation in self._checked(h, q, params, tenant_id, correlation_id)
                for when in _when(at, delay, now)
                for rank in _check_priority(priority)
                for key in _check_text(idempotency_key, "idempotency_key")
                for unique_key in _unique_key(unique, raw)
                for statuses in _unique_statuses(unique_while)
            )
            if isinstance(row, Failure):
                return row
            [(job_id, _)] = await q.enqueue([row.unwrap()])
            return Success(job_id)

        return effect(run)

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
            return not_registered(self._name)

        async def run() -> Result[list[str], Any]:
            if isinstance(params_list, str | bytes) or not isinstance(params_list, Sequence):
                kind = type(params_list).__name__
                return Failure(ValidationError(f"later_many takes a sequence of params, got {kind}"))
            now = q.env.now_ms()
            shared = Result.do(
                (tenant, correlation, rank, when)
                for tenant in q.tenant_for(self._tenant, tenant_id)
                for correlation in _check_text(correlation_id, "correlation_id")
                for rank in _check_priority(priority)
                for when in _when(at, delay, now)
            )
            if isinstance(shared, Failure):
                return shared
            tenant, correlation, rank, when = shared.unwrap()
            rows = []
            for index, params in enumerate(params_list):
                raw = encode(
                    h.job.params, params, what=f"params[{index}] of job {h.job.name!r}", limit=q.env.max_payload_bytes
                )
                if isinstance(raw, Failure):
                    return raw
                rows.append(
                    q.row(
                        h,
                        raw.unwrap(),
                        scheduled_for=when,
                        now=now,
                        priority=rank,
                        correlation_id=correlation,
                        tenant_id=tenant,
                    )
                )
            if not rows:
                return Success([])
            return Success([job_id for job_id, _ in await q.enqueue(rows)])

        return effect(run)

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
        """
        h, q = self._handler, self._queue
        if h is None or q is None:
            return not_registered(self._name)

        async def run() -> Result[list[JobRun[R]], Any]:
            if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
                return Failure(ValidationError(f"concurrency must be an int of at least 1, got {concurrency!r}"))
            prepared: list[tuple[P, bytes]] = []
            tenant: str | None = None
            correlation: str | None = None
            for params in params_list:
                checked = self._checked(h, q, params, tenant_id, correlation_id)
                if isinstance(checked, Failure):
                    return checked
                raw, tenant, correlation = checked.unwrap()
                prepared.append((decode(h.job.params, raw, what="params").unwrap(), raw))
            if not prepared:
                checked_tenant = q.tenant_for(self._tenant, tenant_id)
                if isinstance(checked_tenant, Failure):
                    return checked_tenant
            runs: list[JobRun[R] | None] = [None] * len(prepared)
            errors: list[JobError] = []
            limiter = trio.CapacityLimiter(concurrency)
            stop = False

            async def one(i: int, value: P, raw: bytes) -> None:
                nonlocal stop
                try:
                    runs[i] = r = await h.run_now(
                        q, value, raw, persist=persist, tenant_id=tenant, correlation_id=correlation
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

        return effect(run)

    def _checked(
        self, h: JobHandler[P, R], q: JobQueue, params: object, tenant_id: object, correlation_id: object
    ) -> Result[tuple[bytes, str | None, str | None], ValidationError | TenantError]:
        return Result.do(
            (raw, tenant, correlation)
            for raw in encode(h.job.params, params, what=f"params of job {h.job.name!r}", limit=q.env.max_payload_bytes)
            for tenant in q.tenant_for(self._tenant, tenant_id)
            for correlation in _check_text(correlation_id, "correlation_id")
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

    def status(
        self, job_id: str
    ) -> FutureResult[JobInfo, InstanceNotFoundError | TenantError | ValidationError | StorageError]:
        """The stored job: status, progress, attempts, result or error."""
        q, scope = self._queue, self._tenant
        return effect(lambda: _map(q.load(scope, job_id), q.info))

    def cancel(
        self, job_id: str
    ) -> FutureResult[CancelResult, InstanceNotFoundError | TenantError | ValidationError | StorageError]:
        """Cancel the job: a pending one never runs; a running one is interrupted through its
        Trio cancel scope (here at once, in another process at its next lease renewal)."""
        q, scope = self._queue, self._tenant
        return effect(lambda: q.cancel(scope, job_id))

    def retry(
        self, job_id: str
    ) -> FutureResult[
        RetryResult, InstanceNotFoundError | InvalidStateError | TenantError | ValidationError | StorageError
    ]:
        """Put a failed or cancelled job back to pending, due now, with a fresh attempt budget."""
        q, scope = self._queue, self._tenant
        return effect(lambda: q.retry(scope, job_id))

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
            )
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
        return effect(lambda: q.purge(scope, older_than, status))


async def _map(loaded: Any, fn: Callable[[JobRecord], JobInfo]) -> Result[JobInfo, Any]:
    result: Result[JobRecord, Any] = await loaded
    return result.map(fn)
