"""The attempt runner of one-off jobs: ``now`` in the caller's task, claimed rows for the worker.

`JobHandler` runs one `Job` definition's attempts through the execution
service. For the queue worker it is an `AttemptRunner` (the worker's seam):
``run_attempt`` runs a claimed row's body and returns an `AttemptEnd`, a
value; the worker writes it. The worker never calls into this module. For
``now`` the handler runs every attempt itself, in the caller's task, under a
lease the worker renews.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, cast

import msgspec
import trio
from returns.result import Failure, Result, Success

from .._clock import LATEST_MS
from .._codec import decode, decoder, encode
from .._durations import to_ms
from .._errors import (
    CLOSED_MESSAGE,
    ExecutionError,
    JobCancelledError,
    JobError,
    RetryExhaustedError,
    StorageError,
    describe,
)
from .._execution import Env, Outcome, Pending, Ran, RunInfo, begin_body, finish_body, judge, run_body
from .._input import clean_text
from .._limits import offloaded
from .._logging import JobLog, threshold
from .._printable import printable
from .._retry import Retry
from .._worker import AttemptEnd, RunHandle, Worker, error_json
from ..storage import ClaimedJob, JobSettlement, JobStatusName, NewJob, QueueStorage
from ..tracking import NoopTracker, TrackedEvent
from ._job import KIND, Job, JobContext, JobRun, JobRunStatus, P, R

if TYPE_CHECKING:
    from ..storage import Alarm


def _error_json(error: JobError) -> bytes:
    return error_json(error.tag, error.message)


def _error_event(error: JobError) -> dict[str, str]:
    return {"tag": error.tag, "message": error.message}


def _raising(exc: BaseException) -> Callable[[], object]:
    """A call that raises `exc`: a body's exception, caught where it ran, handed to `begin_body`."""

    def call() -> object:
        raise exc

    return call


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


@dataclass(slots=True)
class _Run:
    """One attempt under way: what its end is judged with."""

    who: _Attempt
    log: JobLog
    info: RunInfo
    events: list[TrackedEvent]
    started: float  # perf_counter at the body's call


class JobHandler(Generic[P, R]):
    """Runs one job definition's attempts: in a caller's task (``now``) or for the worker."""

    def __init__(self, job: Job[P, R, Any], env: Env) -> None:
        self.job = job
        self.env = env
        self._logger = env.logger.getChild(f"{KIND}.{job.name}")
        self._threshold = threshold(job.logging)
        self._retries: dict[int, Retry] = {job.max_attempts: job.retry}
        #: Whether events are worth building (not with the `NoopTracker`).
        self.tracking = not isinstance(env.tracker, NoopTracker)
        self._what = f"the execute of job {job.name!r}"
        self._result_what = f"result of job {job.name!r}"
        self._params_what = f"params of job {job.name!r}"
        self._body = offloaded(job.execute, job.limits, self._what)
        #: Whether an attempt's duration is read: by its events, or by a DEBUG log line.
        self._timed = self.tracking or self._threshold <= logging.DEBUG
        #: The params' decoder (``None``: a type msgspec caches no decoder for; `decode` is used).
        self._params_decoder: msgspec.json.Decoder[Any] | None
        try:
            self._params_decoder = decoder(job.params)
        except TypeError:
            self._params_decoder = None
        #: The stored result of a body that returns ``None`` (``None``: ``None`` is no valid result).
        self._null = encode(job.result, None, what=self._result_what).value_or(None)

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

    def _prepare(
        self, params: P, who: _Attempt, run_id: str | None, storage: QueueStorage | None, run_ms: int = 0
    ) -> tuple[_Run, Callable[[], object]]:
        """An attempt's context, log and identity, and the call of its body (`run_id`: see `JobContext`)."""
        key = who.job_id or run_id or ""
        lease = (storage, who.worker_id) if storage is not None and who.worker_id is not None else None
        ctx, log = self._context(
            key, who.job_id, run_id, who.attempt, who.max_attempts, who.tenant_id, who.correlation_id, lease, run_ms
        )
        run = _Run(who, log, RunInfo(key, KIND, self.job.name, 1, who.attempt), [], time.perf_counter())
        body = self._body
        return run, lambda: body(params, ctx)

    def _context(
        self,
        key: str,
        job_id: str | None,
        run_id: str | None,
        attempt: int,
        max_attempts: int,
        tenant_id: str | None,
        correlation_id: str | None,
        lease: tuple[QueueStorage, str] | None,
        run_ms: int,
    ) -> tuple[JobContext[Any], JobLog]:
        """An attempt's context and its log (`key`: the id its log lines name)."""
        name = self.job.name
        log = JobLog(self._logger, self._threshold, {"job": name, "job_id": key, "attempt": attempt})
        ctx: JobContext[Any] = JobContext(
            self.env,
            name,
            log,
            job_id=job_id,
            run_id=run_id,
            attempt=attempt,
            max_attempts=max_attempts,
            tenant_id=tenant_id,
            correlation_id=correlation_id,
            lease=lease,
            run_ms=run_ms,
        )
        return ctx, log

    def _judge(self, run: _Run, result: Result[object, JobError], at_ms: int | None = None) -> Outcome:
        """What the body's `result` means: encoded (a bad result is the attempt's
        failure, a ValidationError, not retried, like any other), then `judge`d."""
        env, job = self.env, self.job
        match result:
            case Success(value):
                result = encode(job.result, value, what=self._result_what, limit=env.max_payload_bytes)
        ran = Ran(result, duration_ms=round((time.perf_counter() - run.started) * 1000, 3))
        return judge(env, run.info, ran, self.retry_for(run.who.max_attempts), run.events, run.log, at_ms)

    async def attempt(
        self, params: P, who: _Attempt, run_id: str, storage: QueueStorage | None
    ) -> tuple[Outcome, list[TrackedEvent]]:
        """Run one attempt through the execution service in the caller's task; nothing is written here.

        A one-off job has no checkout and no ``terminate``: its body runs through
        `run_body` directly (one normalisation, no cancel scope without a timeout).
        """
        run, call = self._prepare(params, who, run_id, storage)
        result = await run_body(call, self.env.services, self._what, self.job.limits)
        return self._judge(run, result), run.events

    def final_error(self, outcome: Outcome, attempt: int) -> JobError:
        """The error a failed outcome leaves on the row and the `JobRun`."""
        error = outcome.error or JobError("the job failed")
        return RetryExhaustedError(attempt, error) if outcome.kind == "exhausted" else error

    # -- the worker's side: the runner seam ---------------------------------------------

    def start_attempt(
        self, job: ClaimedJob, lease: tuple[QueueStorage, str], now_ms: int | None = None
    ) -> AttemptEnd | Callable[[trio.CancelScope], Awaitable[AttemptEnd]]:
        """Start the leased attempt `job` (`lease`: the storage and the holder, for progress;
        `now_ms`: the clock's reading the worker took as it started it, ``None`` to read it).

        A body whose value needs no await (a synchronous one, without a timeout)
        runs now, and how the attempt ended is returned; otherwise the rest of
        the attempt, to await inside the run's cancel scope (a run that scope
        cancelled ends ``cancelled``; the worker decides how). The worker writes
        the end. Never raises but for cancellation.

        Every attempt the worker drains passes here, so the common case is
        kept short: the params decoded by their cached decoder, the context
        built once, and, when nothing will read the attempt's duration (no
        tracker, no DEBUG logging), a synchronous body's value encoded and
        returned without a clock read or a judgement object.
        """
        params_decoder = self._params_decoder
        if params_decoder is None:
            return self._start_slowly(job, lease)
        try:
            params = params_decoder.decode(job.params)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return self._start_slowly(job, lease)
        env, definition = self.env, self.job
        job_id = job.id
        # The run id is minted only if the body reads it (the job id names the attempt's logs and events).
        ctx, log = self._context(
            job_id,
            job_id,
            None,
            job.attempt,
            job.max_attempts,
            job.tenant_id,
            job.correlation_id,
            lease,
            env.clock.now_ms() if now_ms is None else now_ms,
        )
        if definition.limits.timeout_ms is not None:
            run = self._run_of(job, log)
            body = self._body
            return self._begin(job, run, lambda: body(params, ctx))
        timed = self._timed
        started = time.perf_counter() if timed else 0.0  # the attempt's clock, read only if its duration is
        begun: Result[object, JobError] | Pending
        try:
            value = self._body(params, ctx)
        except BaseException as exc:  # begin_body makes it a JobError, or lets a cancel or a Ctrl-C through
            begun = begin_body(_raising(exc))  # made a JobError there, as any body's exception is
        else:
            if value is None and self._null is not None:
                if timed:
                    return self._completed(job, log, self._null, started)
                return AttemptEnd("completed", result=self._null)  # what judging a plain None comes to
            begun = begin_body(lambda: value)
        match begun:
            case Success(ok):
                match encode(definition.result, ok, what=self._result_what, limit=env.max_payload_bytes):
                    case Success(raw):
                        if timed:
                            return self._completed(job, log, raw, started)
                        return AttemptEnd("completed", result=raw)
        return self._finish(job, self._run_of(job, log, started if timed else None), begun)

    def _completed(self, job: ClaimedJob, log: JobLog, raw: bytes, started: float) -> AttemptEnd:
        """A started attempt whose body gave `raw` (its encoded result) at once, when its
        duration is read: `_end`'s success, without building the judgement (`judge`'s debug
        line and ``job.executed`` event, then ``job.completed``, stamped with one reading)."""
        env = self.env
        at = env.clock.now_ms()
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        if self._threshold <= logging.DEBUG:  # `log.debug`'s own test: no call for most jobs
            log.debug("executed in %.1f ms", duration_ms)
        events: list[TrackedEvent] = []
        if self.tracking:
            job_id, name, attempt = job.id, job.name, job.attempt
            events.append(
                env.event("job.executed", job_id, KIND, name, at, run_count=1, duration_ms=duration_ms, attempt=attempt)
            )
            events.append(env.event("job.completed", job_id, KIND, name, at, attempt=attempt, duration_ms=duration_ms))
        return AttemptEnd("completed", result=raw, events=events, at=at)

    def _start_slowly(
        self, job: ClaimedJob, lease: tuple[QueueStorage, str]
    ) -> AttemptEnd | Callable[[trio.CancelScope], Awaitable[AttemptEnd]]:
        """`start_attempt` when the params do not decode (the attempt fails), or have no cached decoder."""
        match decode(self.job.params, job.params, what=self._params_what):
            case Failure(error):
                failed = self.env.event(
                    "job.failed",
                    job.id,
                    KIND,
                    job.name,
                    attempt=job.attempt,
                    will_retry=False,
                    error=_error_event(error),
                )
                return AttemptEnd("failed", error=_error_json(error), events=[failed])
            case Success(params):
                pass
        who = _Attempt(job.id, job.attempt, job.max_attempts, job.tenant_id, job.correlation_id, lease[1])
        run, call = self._prepare(params, who, None, lease[0], self.env.clock.now_ms())
        return self._begin(job, run, call)

    def _run_of(self, job: ClaimedJob, log: JobLog, started: float | None = None) -> _Run:
        """The judgement state of the claimed attempt `job` (its clock started at `started`,
        a ``time.perf_counter()`` reading; ``None``: it starts now)."""
        who = _Attempt(job.id, job.attempt, job.max_attempts, job.tenant_id, job.correlation_id, None)
        return _Run(
            who,
            log,
            RunInfo(job.id, KIND, self.job.name, 1, job.attempt),
            [],
            time.perf_counter() if started is None else started,
        )

    def _begin(
        self, job: ClaimedJob, run: _Run, call: Callable[[], object]
    ) -> AttemptEnd | Callable[[trio.CancelScope], Awaitable[AttemptEnd]]:
        """Call the body (`call`) of a started attempt: its end if it needs no await, else the rest."""
        services, what, limits = self.env.services, self._what, self.job.limits
        if limits.timeout_ms is not None:

            async def timed(scope: trio.CancelScope) -> AttemptEnd:
                return self._end(job, run, await run_body(call, services, what, limits, scope), scope)

            return timed
        return self._finish(job, run, begin_body(call))

    def _finish(
        self, job: ClaimedJob, run: _Run, begun: Result[object, JobError] | Pending
    ) -> AttemptEnd | Callable[[trio.CancelScope], Awaitable[AttemptEnd]]:
        if isinstance(begun, Pending):
            services, what = self.env.services, self._what

            async def awaited(scope: trio.CancelScope) -> AttemptEnd:
                return self._end(job, run, await finish_body(begun, services, what, scope), scope)

            return awaited
        return self._end(job, run, begun, None)

    def _end(
        self, job: ClaimedJob, run: _Run, result: Result[object, JobError], scope: trio.CancelScope | None
    ) -> AttemptEnd:
        if scope is not None and scope.cancelled_caught:
            return AttemptEnd("cancelled")  # the worker ends the attempt cancelled (or hands it back)
        at = self.env.clock.now_ms()  # one reading for the attempt's end: its events, a retry, the row
        outcome = self._judge(run, result, at)
        events = run.events
        if outcome.kind == "succeeded":
            if self.tracking:
                events.append(
                    self.env.event(
                        "job.completed",
                        job.id,
                        KIND,
                        job.name,
                        at,
                        attempt=job.attempt,
                        duration_ms=outcome.duration_ms,
                    )
                )
            return AttemptEnd("completed", result=cast(bytes, outcome.value), events=events, at=at)
        if outcome.kind == "retrying":
            assert outcome.retry_at is not None and outcome.error is not None
            return AttemptEnd(
                "pending", error=_error_json(outcome.error), retry_at=outcome.retry_at, events=events, at=at
            )
        return AttemptEnd("failed", error=_error_json(self.final_error(outcome, job.attempt)), events=events, at=at)

    def counted_failure(self, job: ClaimedJob, exc: Exception) -> AttemptEnd:
        """An unexpected exception ended the attempt (a bug past the body): it counts,
        as a failure the job's policy retries."""
        error = ExecutionError(clean_text(f"the attempt failed unexpectedly: {describe(exc)}"), exc)
        if job.attempt < job.max_attempts:
            now = self.env.now_ms()
            policy = self.retry_for(job.max_attempts)
            retry_at = min(now + to_ms(self.env.retries.delay_before(policy, job.attempt + 1)), LATEST_MS)
            return AttemptEnd("pending", error=_error_json(error), retry_at=retry_at)
        return AttemptEnd("failed", error=_error_json(RetryExhaustedError(job.attempt, error)))

    async def _apply(
        self, worker: Worker, settlement: JobSettlement, events: list[TrackedEvent]
    ) -> StorageError | None:
        """Write a ``now`` run's `settlement`, then emit `events`; the error that kept it from being written."""
        job_id, attempt = settlement.job_id, settlement.attempt
        try:
            [applied] = await worker.storage.settle_jobs([settlement])
        except StorageError as exc:
            # The row stays leased; once the lease runs out it is reclaimed and runs again.
            self._logger.error(
                "job %s: could not record how attempt %d ended: %s", job_id, attempt, printable(exc.message)
            )
            return StorageError(
                f"job {job_id}: how attempt {attempt} ended could not be recorded ({exc.message}); "
                "the row stays running and runs again once its lease ends",
                exc,
            )
        if not applied:
            self._logger.warning(
                "job %s: attempt %d lost its lease before it ended; its outcome is dropped", job_id, attempt
            )
            return StorageError(
                f"job {job_id}: attempt {attempt} lost its lease before it ended; its outcome was not recorded "
                "(the worker that took the row over runs it again)"
            )
        worker.emit(events)
        return None

    # -- now ---------------------------------------------------------------------------

    async def run_now(
        self,
        worker: Worker,
        params: P,
        raw: bytes,
        *,
        persist: bool,
        tenant_id: str | None,
        correlation_id: str | None,
    ) -> JobRun[R]:
        """Run the job in the caller's task, retrying by its policy; raises `StorageError`.

        With `persist`, a result is returned only once the row records it: a
        settle that could not be written (the storage failed or closed, the
        lease was lost) raises `StorageError` instead. The row is refused
        (`StorageError`) once the engine closes; the close gives a run under way
        its grace, then cancels it, and the run ends ``cancelled``.
        """
        env, job = self.env, self.job
        if persist and worker.closing:
            raise StorageError(CLOSED_MESSAGE)
        started = time.perf_counter()
        job_id: str | None = None
        if persist:
            storage = worker.storage
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
            *,
            check: bool = True,
        ) -> None:
            """Write the row's new status; raises the `StorageError` that kept it from being
            written (not with `check`, for a run whose own exception propagates)."""
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
            failed = await self._apply(worker, settlement, events)
            if failed is not None and check:
                settled = True  # not recorded: the row is left to its lease (it runs again), not settled again
                raise failed

        with cm as run:
            try:
                with run.scope:
                    while True:
                        outcome, events = await self.attempt(params, who, worker.new_id(), worker.storage)
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
                        await settle("cancelled", None, JobCancelledError(job_id), cancelled, check=False)
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
