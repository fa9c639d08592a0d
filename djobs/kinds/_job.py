"""One-off jobs: the definition, the attempt's context and the result types.

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

The one-off job is four modules, with arrows one way: this one (what a user
defines and gets back), `_job_runner` (runs attempts: ``now`` in the
caller's task, claimed rows for the queue worker through its runner seam),
`_job_queue` (the jobs an engine knows, tenancy, enqueueing and the verbs by
id) and `_job_client` (the typed client verbs).

Tenancy: a row may carry a tenant id. ``client.for_tenant(t)`` acts for one
tenant only: what it enqueues is the tenant's, and it reads and changes only
that tenant's rows (any other's is invisible, as an unknown id is). An engine opened with
``tenancy="required"`` refuses an enqueue without a tenant id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, overload

import msgspec
from returns.result import Success
from typing_extensions import TypeVar

from .._bodies import Returns, check_body
from .._codec import check_storable
from .._context import BaseContext, D_co
from .._durations import DurationLike
from .._errors import (
    JobError,
    StorageError,
    ValidationError,
)
from .._event import Event, name_problem
from .._execution import Env
from .._input import check_attempts, check_finite, check_produced_text
from .._limits import NO_LIMITS, RunLimits, definition_limits
from .._logging import JobLog, LoggingOption, check_logging
from .._printable import printable
from .._queue_limits import JobLimits, RateLimit, job_limits
from .._retry import Retry, check_retry
from ..storage import JobStatusName, QueueStorage
from ._common import D_contra, Definition, check_name

if TYPE_CHECKING:
    from .._runtime import Runtime
    from ._job_runner import JobHandler

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


MAX_TEXT = 512


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

    __slots__ = ("_lease", "_run_id", "_run_ms", "attempt", "correlation_id", "job_id", "max_attempts")

    def __init__(
        self,
        env: Env,
        job_name: str,
        log: JobLog,
        *,
        job_id: str | None,
        run_id: str | None,
        attempt: int,
        max_attempts: int,
        tenant_id: str | None,
        correlation_id: str | None,
        lease: tuple[QueueStorage, str] | None,
        run_ms: int = 0,
    ) -> None:
        # A `run_id` of None (a persisted job's attempt, whose instance id is the job id) is
        # minted from the ids layer at `run_ms`, the attempt's start, when first read.
        # BaseContext's fields, set here rather than through its __init__: one call fewer per attempt.
        self._env = env
        self.job_name = job_name
        self.instance_id = job_id or run_id or ""
        self.log = log
        self.tenant_id = tenant_id
        self.job_id = job_id
        self._run_id = run_id
        self._run_ms = run_ms
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.correlation_id = correlation_id
        self._lease = lease

    @property
    def run_id(self) -> str:
        """This attempt's own id (a UUIDv7 of the attempt's start)."""
        run_id = self._run_id
        if run_id is None:
            run_id = self._run_id = self._env.ids.job_id(self._run_ms)
        return run_id

    @property
    def is_retry(self) -> bool:
        """Whether this attempt retries a failed one."""
        return self.attempt > 1

    async def update_progress(self, percent: float, message: str | None = None) -> None:
        """Record how far the job is, 0-100, with an optional message.

        `percent` is rounded to a whole number and clamped to 0-100 (150 is
        stored as 100, -3 as 0). `message` is kept as text a job produces:
        escaped where no storage holds it (a NUL as ``\\x00``) and cut to 512
        characters. Persisted at once, so ``client.jobs.status`` shows it
        while the job runs. For a job that is not persisted
        (``now(persist=False)``) it does nothing but log at debug level. A
        storage failure is logged, not raised: progress is advice, not the
        job's outcome.

        Raises:
            ValidationError: `percent` is not a finite number (nan, inf, a
                bool, a str such as ``"50"``), or `message` is neither a str
                nor ``None``; checked on every job, persisted or not. Like
                ``ctx.set_state``, it ends the run at the mistake: the attempt
                fails with it (and is retried as any failure is).
        """
        number = check_finite(percent, "ctx.update_progress(): percent")
        text = check_produced_text(message, "ctx.update_progress(): message", MAX_TEXT)
        if not isinstance(number, Success):
            raise number.failure()
        if not isinstance(text, Success):
            raise text.failure()
        value = max(0, min(100, round(number.unwrap())))
        message = text.unwrap()
        if self._lease is None or self.job_id is None:
            self.log.debug("progress %d%% (%s) not stored: the job is not persisted", value, printable(message or ""))
            return
        storage, worker_id = self._lease
        try:
            held = await storage.set_progress(self.job_id, worker_id, self.attempt, value, message, self._env.now_ms())
        except StorageError as exc:
            self.log.warning("could not store progress: %s", printable(exc.message))
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
    #: Its concurrency and rate limits (``None``: none).
    queue_limits: JobLimits[P] | None = None

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
        concurrency: int | None = None,
        rate_limit: str | RateLimit | None = None,
        limit_key: Callable[[P], str] | None = None,
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
        concurrency: int | None = None,
        rate_limit: str | RateLimit | None = None,
        limit_key: Callable[[P], str] | None = None,
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
        concurrency: int | None = None,
        rate_limit: str | RateLimit | None = None,
        limit_key: Callable[[P], str] | None = None,
    ) -> Job[P, Any, Any]:
        """Define a job.

        Args:
            name: The job's unique name (no ``:``).
            params: The ``msgspec.Struct`` type of its params (and of the
                payload of the event it listens to).
            result: The type of its result: a ``msgspec.Struct``, or anything
                else msgspec can store (``int``, ``str``, ``list[Item]``, ...),
                as for `Workflow.make`; ``None`` (the default) for a job that
                returns nothing.
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
            concurrency: At most this many of the job run at once (per
                `limit_key`), counted across every engine process on the
                database; a job over the limit waits, pending, and starts when
                one ends. From 1 to 2,147,483,647 (PostgreSQL's ``integer``);
                ``None`` (default): no limit but ``max_concurrency``.
            rate_limit: At most N starts (per `limit_key`) in any sliding
                window: ``"100/minute"`` (``N/second``, ``N/minute``,
                ``N/hour``, ``N/day``) or a `RateLimit` (any window up to a
                day); N from 1 to 2,147,483,647. Every attempt is a start. A job over the limit waits and
                starts when the window frees a slot (the worker sleeps until
                then). ``None`` (default): no limit.
            limit_key: ``limit_key(params) -> str``: the limits count per key
                (an account, a tenant, a host) instead of per job. Called at
                enqueue; a key function that raises or returns anything but a
                non-empty ``str`` of at most 512 storable characters fails that
                enqueue with `ValidationError`.

        A job over its limits never holds up due jobs of other names or keys,
        whatever their priorities. ``now`` runs in its caller's task and is not
        limited. Limits are the definition's: a changed limit applies to jobs
        already waiting; a changed `limit_key` to jobs enqueued after it.

        Raises:
            ValidationError: A bad name, params or result type, max_attempts,
                timeout, or ``blocking=True`` with an ``async def``; an event
                name that is empty or holds a NUL or a lone surrogate; a typed
                event whose payload is not a `params`; `concurrency` not an int
                of at least 1, a `rate_limit` that is neither ``"N/period"`` nor
                a `RateLimit`, a `limit_key` that is not callable or has no
                limit to key.
        """
        check_name(name, "Job")
        if not (isinstance(params, type) and issubclass(params, msgspec.Struct)):
            raise ValidationError(f"Job {name!r}: params must be a msgspec.Struct type, got {params!r}")
        check_storable(params, f"Job {name!r}: params")
        if result is not None:
            check_storable(result, f"Job {name!r}: result type")
        check_body(execute, f"Job {name!r}: execute", ("params", "ctx"))
        retry = check_retry(retry, f"Job {name!r}")
        logging = check_logging(logging, f"Job {name!r}")
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
        queue_limits = job_limits(name, concurrency, rate_limit, limit_key)
        return Job(name, params, result_type, execute, policy, attempts, on, logging, limits, queue_limits)

    def bind(self, runtime: Runtime) -> JobHandler[P, R]:
        """The handler that runs this job inside an engine (used by the engine)."""
        from ._job_runner import JobHandler  # the runner imports this module: the arrow points there

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

    ``already_requested`` is true when the job was cancelled, or its cancel
    requested, before this call: this one changed nothing (as a workflow's
    repeated cancel says, `WorkflowCancelResult`). Two cancels at once, from
    one process or two, give one ``already_requested=False``: the one whose write
    changed the row.
    """

    job_id: str
    status: Literal["cancelled", "cancel_requested", "completed", "failed"]
    already_requested: bool = False


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
