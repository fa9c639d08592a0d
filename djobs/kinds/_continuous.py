"""Continuous jobs: recurring work with typed, persistent state.

An instance runs ``execute(ctx)`` on its schedule (``every(...)`` or
``cron(...)``), starting at once by default. A run's state changes are
committed with its outcome. ``pause`` takes an instance off its schedule
(status ``stopped``: state kept, no alarm) until ``resume`` puts it back on at
the next fire time after now; fire times that passed while paused are not
run, as APScheduler's ``pause_job``/``resume_job`` behave. A failed run retries by the job's `Retry`
policy; when the retries are exhausted the instance is terminated (state and
alarm purged) and ``job.retry_exhausted`` is emitted. A failure that is not
retried (no policy, or a non-retryable error) leaves the instance on its
schedule.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from contextvars import copy_context
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal

import msgspec
from returns.future import FutureResult
from returns.result import Failure, Result, Success
from typing_extensions import TypeVar

from .._actors import RUNNING_KEYS
from .._bodies import Returns, check_body, plain_type
from .._clock import AFTER_LATEST, LATEST_MS, LATEST_TEXT, to_datetime, utc_isoformat
from .._codec import check_storable, decode, decoder, encode
from .._context import D_co, StatefulContext
from .._durations import DurationLike
from .._errors import (
    InstanceNotFoundError,
    InvalidStateError,
    JobError,
    JobNotFoundError,
    SchedulerError,
    StorageError,
    TenantError,
    ValidationError,
    safe_repr,
)
from .._execution import (
    Checkout,
    Env,
    Outcome,
    Pending,
    Ran,
    RunInfo,
    execute,
    judge,
    ran_gave,
    ran_raised,
    run_now,
    run_returning_state,
    since,
)
from .._limits import NO_LIMITS, RunLimits, definition_limits, offloaded
from .._logging import JobLog, LoggingOption, check_logging, threshold
from .._printable import printable
from .._retry import Retry, check_retry
from .._schedule import Schedule, next_fire
from ..storage import Alarm, Checkin, ClaimedAlarm, ClearAlarm, InstanceRecord, SetAlarm
from ..storage._base import Revival
from ..tracking import TrackedEvent
from ._common import (
    D_contra,
    Definition,
    InstanceClient,
    OnExhausted,
    StateResult,
    TenantScoped,
    TerminateResult,
    bind_async,
    check_name,
    check_on_exhausted,
    count_failed_attempt,
    instance_dead_letter,
    instance_key,
    revive_letter,
    terminate_instance,
    unreadable_state,
)

if TYPE_CHECKING:
    from .._runtime import Runtime

S = TypeVar("S")

KIND = "continuous"

#: The stored status of a paused instance (a running one is ``"running"``).
PAUSED: Literal["stopped"] = "stopped"


class ContinuousContext(StatefulContext[S, D_co]):
    """The context of one run of a continuous job: ``ContinuousContext[S, D]``, state `S`, services `D`.

    ``ContinuousContext[S]`` is a body that needs no services (``D`` is ``object``).

    Attributes:
        run_count: Which run this is (1 for the first); a retry keeps its run's number.
        attempt: Which try of this run (1 = the first).
    """

    __slots__ = ("attempt", "run_count")

    def __init__(
        self,
        env: Env,
        job_name: str,
        instance_id: str,
        log: JobLog,
        checkout: Checkout[S],
        state_type: type[Any],
        run_count: int,
        attempt: int,
        tenant_id: str | None = None,
    ) -> None:
        # Every slot set here, not through the bases' ``__init__``: one call per run, not three.
        self._env = env
        self.job_name = job_name
        self.instance_id = instance_id
        self.log = log
        self.tenant_id = tenant_id
        self._checkout = checkout
        self._state_type = state_type
        self.run_count = run_count
        self.attempt = attempt

    @property
    def is_retry(self) -> bool:
        """Whether this run is a retry of a failed try."""
        return self.attempt > 1


@dataclass(frozen=True, eq=False)
class Continuous(Definition[D_contra], Generic[S, D_contra]):
    """A recurring job with typed, persistent state. Make one with `Continuous.make`.

    ``Continuous[S, D]``: state `S`; its body needs services `D` (``object``,
    the default, for none).

    Examples:
        >>> import msgspec, djobs
        >>> class Beat(msgspec.Struct):
        ...     count: int = 0
        >>> def tick(ctx: djobs.ContinuousContext[Beat]) -> None:
        ...     ctx.update_state(lambda s: Beat(s.count + 1))
        >>> heartbeat = djobs.Continuous.make("heartbeat", state=Beat, schedule=djobs.every("1 minute"),
        ...                                   execute=tick)
        >>> heartbeat.name
        'heartbeat'
    """

    kind: ClassVar[str] = KIND
    name: str
    state: type[S]
    schedule: Schedule
    execute: Callable[[ContinuousContext[S, D_contra]], Returns[S | None, D_contra]]
    start_immediately: bool = True
    retry: Retry | None = None
    logging: LoggingOption = False
    limits: RunLimits = NO_LIMITS
    on_exhausted: OnExhausted = "terminate"

    @classmethod
    def make(
        cls,
        name: str,
        *,
        state: type[S],
        schedule: Schedule,
        execute: Callable[[ContinuousContext[S, D_contra]], Returns[S | None, D_contra]],
        start_immediately: bool = True,
        retry: Retry | None = None,
        logging: LoggingOption = False,
        timeout: DurationLike | None = None,
        blocking: bool = False,
        on_exhausted: OnExhausted = "terminate",
    ) -> Continuous[S, D_contra]:
        """Define a continuous job.

        Args:
            name: The job's unique name (no ``:``).
            state: The ``msgspec.Struct`` type of the instance's state.
            schedule: ``djobs.every("30 minutes")`` or ``djobs.cron("0 */5 * * *", tz=...)``.
            execute: The body, ``execute(ctx)``. It may return the new state
                (instead of calling ``ctx.set_state``; ``None`` keeps the
                state), in any body form (a value, a
                ``Result``, ``async def``, a ``FutureResult``, a
                ``RequiresContextFutureResult`` run with the services, ...).
            start_immediately: Run once as soon as an instance starts (default),
                rather than at the first scheduled time.
            retry: How a failed run is retried; ``None`` does not retry.
            logging: ``True`` (debug), ``False`` (errors only), a level, or ``None`` (silent).
            timeout: The longest a run may take (``"5 minutes"``); a longer
                run is cancelled and fails with `JobTimeoutError`, which
                `retry` retries. ``None`` (default): no limit.
            blocking: ``True`` runs a synchronous `execute` in a worker thread
                (``trio.to_thread``), so a body that blocks does not stall the
                engine or let its lease lapse; an ``async def`` body is refused.
            on_exhausted: What an instance whose retries are exhausted becomes:
                ``"terminate"`` (default) deletes it with its state;
                ``"dead_letter"`` deletes it too but keeps its last state as a
                dead letter (``engine.client.dead_letters``), which a retry
                starts again with that state and runs at once.

        Raises:
            ValidationError: A malformed option (also a `timeout` that is not
                a positive duration, or ``blocking=True`` with an ``async def``).
        """
        check_name(name, KIND)
        if not (isinstance(state, type) and issubclass(state, msgspec.Struct)):
            raise ValidationError(f"Continuous {name!r}: state must be a msgspec.Struct type, got {state!r}")
        check_storable(state, f"Continuous {name!r}: state")
        if not hasattr(schedule, "next_after"):
            raise ValidationError(f"Continuous {name!r}: schedule must come from djobs.every() or djobs.cron()")
        check_body(execute, f"Continuous {name!r}: execute", ("ctx",))
        limits = definition_limits(timeout, blocking, {"execute": execute}, f"Continuous {name!r}")
        exhausted = check_on_exhausted(on_exhausted, f"Continuous {name!r}")
        if not isinstance(start_immediately, bool):
            raise ValidationError(
                f"Continuous {name!r}: start_immediately must be True or False, got {safe_repr(start_immediately):.80}"
            )
        retry = check_retry(retry, f"Continuous {name!r}")
        logging = check_logging(logging, f"Continuous {name!r}")
        return cls(name, state, schedule, execute, start_immediately, retry, logging, limits, exhausted)

    def bind(self, runtime: Runtime) -> ContinuousHandler[S]:
        """The handler that runs this job inside an engine (used by the engine)."""
        return ContinuousHandler(self, runtime)


class StartResult(msgspec.Struct, frozen=True):
    """The result of ``start``: ``created`` is false when the id already existed.

    ``status`` is the instance's: ``stopped`` when an existing id is paused
    (``start`` does not resume it).
    """

    created: bool
    instance_id: str
    status: Literal["running", "stopped"]


class ContinuousStatus(msgspec.Struct, frozen=True):
    """The result of ``status``.

    Attributes:
        status: ``running`` (on its schedule), ``stopped`` (paused: state
            kept, no run until ``resume``) or ``not_found``.
        run_count: Runs so far (``None`` when not found).
        next_run_at: When the next run (or a pending retry) is due; ``None`` while stopped.
    """

    status: Literal["running", "stopped", "not_found"]
    run_count: int | None = None
    next_run_at: datetime | None = None


class TriggerResult(msgspec.Struct, frozen=True):
    """The result of ``trigger``: how the run it caused ended.

    ``outcome`` is ``succeeded``, ``failed`` (not retried), ``retrying``,
    ``exhausted`` or ``terminated``; a failed run is not a failed call.
    """

    instance_id: str
    run_count: int
    outcome: str


def _status(record: InstanceRecord, alarm: Alarm | None) -> Literal["running", "stopped"]:
    # "stopped" is a paused instance; one stored without an alarm otherwise has none to wait for.
    return "stopped" if record.status == PAUSED or alarm is None else "running"


#: Why an instance has no next run: its schedule has none before djobs's last time.
_ENDED = f"its schedule has no run by {LATEST_TEXT}, the latest time djobs schedules anything for"


def _pause(record: InstanceRecord) -> None:
    """Take an instance off its schedule with its state kept (``resume`` puts it back)."""
    record.status = PAUSED


def _refused(claimed: ClaimedAlarm, pending: Pending | None, finish: Callable[[Sequence[ClaimedAlarm]], None]) -> None:
    """A batch-fired run whose rest never ran (the close cut it off while it waited for a slot):
    its claim and hold end as its run's would (the close releases its alarm, which fires again),
    and an awaitable its body gave is closed unawaited, without Python's warning."""
    if pending is not None and inspect.iscoroutine(pending.value):
        pending.value.close()
    finish((claimed,))


class ContinuousHandler(TenantScoped, Generic[S]):
    """Runs one continuous job's instances on an engine's runtime."""

    def __init__(self, job: Continuous[S, Any], runtime: Runtime) -> None:
        self.job = job
        self.runtime = runtime
        self.env = runtime.env
        self._what = f"the execute of continuous job {job.name!r}"
        self._body = offloaded(job.execute, job.limits, self._what)
        # A body that gives its value at once, with nothing to bound it, runs where its
        # alarm was claimed: no actor, no cancel scope (`fire_batch`).
        self._inline = job.limits == NO_LIMITS and not inspect.iscoroutinefunction(job.execute)
        # What each batch-fired run shares (`_fire`): the job's logger and level, the state's
        # decoder (``None``: msgspec cannot make one; `_open` says why per run), whether a
        # returned instance of the state's class is a plain value (`plain_type`).
        self._logger = self.env.job_logger(KIND, job.name)
        self._threshold = threshold(job.logging)
        try:
            self._decoder: msgspec.json.Decoder[Any] | None = decoder(job.state)
        except TypeError:
            self._decoder = None
        self._plain_state = plain_type(job.state)

    def key(self, instance_id: str) -> str:
        return instance_key(KIND, self.job.name, instance_id, self.tenant)

    async def revive_letter(self, key: str, letter_id: str, now: int) -> Revival:
        """Bring back the instance dead letter `letter_id` holds (see `revive_letter`)."""
        return await revive_letter(self.runtime, key, letter_id, now)

    # -- verbs (each runs on the instance's actor) -------------------------------------

    async def start(self, instance_id: str, input: S) -> Result[StartResult, ValidationError | StorageError]:
        encoded = encode(self.job.state, input, what=f"input of {self.job.name!r}", limit=self.env.max_payload_bytes)
        key = self.key(instance_id)

        async def run(state: bytes) -> Result[StartResult, ValidationError | StorageError]:
            existing = await self.env.storage.load(key)
            if existing is not None:
                return Success(StartResult(False, instance_id, _status(existing[0], existing[1])))
            now = self.env.now_ms()
            first = now if self.job.start_immediately else next_fire(self.job.schedule, now)
            if first is None:
                return Failure(
                    ValidationError(
                        f"{self.job.name!r} instance {instance_id!r}: the first run would be "
                        f"{AFTER_LATEST}: its schedule has no run by then"
                    )
                )
            record = InstanceRecord(
                key=key,
                kind=KIND,
                name=self.job.name,
                instance_id=instance_id,
                tenant_id=self.tenant,
                status="running",
                state=state,
                created_at=now,
                updated_at=now,
            )
            next_run_at = utc_isoformat(first)
            started = self.env.event("job.started", key, KIND, self.job.name, next_run_at=next_run_at)
            await self.env.commit(Checkin(key=key, record=record, alarm=SetAlarm(first, "run")), [started])
            return Success(StartResult(True, instance_id, "running"))

        return await bind_async(encoded, lambda state: self.runtime.call(key, lambda: run(state)))

    async def trigger(
        self, instance_id: str
    ) -> Result[TriggerResult, InstanceNotFoundError | InvalidStateError | StorageError]:
        key = self.key(instance_id)

        async def run() -> Result[TriggerResult, InstanceNotFoundError | InvalidStateError | StorageError]:
            loaded = await self.env.storage.load(key)
            if loaded is None:
                return Failure(InstanceNotFoundError(self.job.name, instance_id, "continuous job"))
            record, alarm = loaded
            if record.status == PAUSED:
                return Failure(
                    InvalidStateError(f"{self.job.name!r} instance {instance_id!r} is paused; resume it first")
                )
            run_count, outcome = await self._run(record, alarm, triggered=True)
            return Success(TriggerResult(instance_id, run_count, outcome))

        return await self.runtime.call(key, run)

    async def status(self, instance_id: str) -> Result[ContinuousStatus, StorageError]:
        loaded = await self.env.storage.load(self.key(instance_id))
        if loaded is None:
            return Success(ContinuousStatus("not_found"))
        record, alarm = loaded
        next_run = to_datetime(alarm.fire_at) if alarm else None
        return Success(ContinuousStatus(_status(record, alarm), record.run_count, next_run))

    async def pause(self, instance_id: str) -> Result[ContinuousStatus, InstanceNotFoundError | StorageError]:
        key = self.key(instance_id)

        async def run() -> Result[ContinuousStatus, InstanceNotFoundError | StorageError]:
            loaded = await self.env.storage.load(key)
            if loaded is None:
                return Failure(InstanceNotFoundError(self.job.name, instance_id, "continuous job"))
            record, _ = loaded
            if record.status != PAUSED:
                record.status, record.updated_at, record.attempt = PAUSED, self.env.now_ms(), 1
                paused = self.env.event("job.paused", key, KIND, self.job.name)
                # The alarm goes with the pause (a pending retry too): nothing runs until resume.
                await self.env.commit(Checkin(key=key, record=record, alarm=ClearAlarm()), [paused])
            return Success(ContinuousStatus(PAUSED, record.run_count, None))

        return await self.runtime.call(key, run)

    async def resume(
        self, instance_id: str
    ) -> Result[ContinuousStatus, InstanceNotFoundError | ValidationError | StorageError]:
        key = self.key(instance_id)

        async def run() -> Result[ContinuousStatus, InstanceNotFoundError | ValidationError | StorageError]:
            loaded = await self.env.storage.load(key)
            if loaded is None:
                return Failure(InstanceNotFoundError(self.job.name, instance_id, "continuous job"))
            record, alarm = loaded
            if record.status != PAUSED:
                next_run = to_datetime(alarm.fire_at) if alarm else None
                return Success(ContinuousStatus(_status(record, alarm), record.run_count, next_run))
            now = self.env.now_ms()
            # The next fire time after now: times that passed while paused are not run.
            first = next_fire(self.job.schedule, now)
            if first is None:
                return Failure(
                    ValidationError(
                        f"{self.job.name!r} instance {instance_id!r}: the next run would be "
                        f"{AFTER_LATEST}: its schedule has no run by then"
                    )
                )
            record.status, record.updated_at = "running", now
            resumed = self.env.event("job.resumed", key, KIND, self.job.name, next_run_at=utc_isoformat(first))
            await self.env.commit(Checkin(key=key, record=record, alarm=SetAlarm(first, "run")), [resumed])
            return Success(ContinuousStatus("running", record.run_count, to_datetime(first)))

        return await self.runtime.call(key, run)

    async def get_state(
        self, instance_id: str
    ) -> Result[StateResult[S], InstanceNotFoundError | ValidationError | StorageError]:
        loaded = await self.env.storage.load(self.key(instance_id))
        if loaded is None or loaded[0].state is None:
            return Failure(InstanceNotFoundError(self.job.name, instance_id, "continuous job"))
        record, alarm = loaded
        assert record.state is not None
        return decode(self.job.state, record.state, what="state").map(
            lambda state: StateResult(state, to_datetime(alarm.fire_at) if alarm else None)
        )

    async def terminate(
        self, instance_id: str, reason: object
    ) -> Result[TerminateResult, ValidationError | StorageError]:
        return await terminate_instance(self.runtime, KIND, self.job.name, self.key(instance_id), instance_id, reason)

    # -- alarms and runs ---------------------------------------------------------------

    async def on_alarm(self, alarm: Alarm) -> None:
        loaded = await self.env.storage.load(alarm.key)
        if loaded is None or loaded[1] is None or loaded[1] != alarm:
            return  # terminated or paused, or the alarm was replaced after it was claimed
        record, current = loaded
        if record.status == PAUSED:
            return  # paused after this alarm was claimed (the pause cleared it)
        attempt = record.attempt if alarm.purpose == "retry" else 1
        try:
            await self._run(record, current, triggered=False)
        except StorageError as exc:
            # The alarm stays claimed and fires again after its lease.
            self.env.logger.error(
                "continuous %s: could not record a run: %s", printable(alarm.key), printable(exc.message)
            )
        except Exception as exc:  # a bug past the body: the attempt counts (no endless re-run of it)
            await self._bug(alarm, attempt, exc)

    async def _bug(self, alarm: Alarm, attempt: int, exc: Exception) -> None:
        await count_failed_attempt(
            self.env,
            alarm.key,
            exc,
            kind=KIND,
            name=self.job.name,
            retry=self.job.retry,
            attempt=attempt,
            retry_purpose="retry",
            give_up=_pause,
        )

    @property
    def takes_batches(self) -> bool:
        """Whether due alarms may run in batches (`fire_batch`): a synchronous body without limits."""
        return self._inline

    async def fire_batch(self, runs: list[ClaimedAlarm], finish: Callable[[Sequence[ClaimedAlarm]], None]) -> None:
        """Run the claimed alarms' instances, whose leases and rows the claim took, and write
        their outcomes back in one transaction; `finish` is told of each once it is done
        (of those written back together in one call).

        Each instance runs as `on_alarm` runs it, in this task (the engine holds each
        instance for it: nothing else of the engine runs it meanwhile). A body that gives
        an awaitable, and a bug past a body, go on in a task of their own.
        """
        env = self.env
        writes: list[tuple[ClaimedAlarm, Checkin, _Run]] = []
        #: What each write-back writes, in the order of `writes`: (check-in, events).
        pairs: list[tuple[Checkin, list[TrackedEvent]]] = []
        #: The runs handed to a task of their own, which finishes them; the rest are finished
        #: at the end, whatever happens (nothing of the engine would run their instances otherwise).
        handed: set[int] = set()
        try:
            for claimed in runs:
                alarm, stored = claimed.alarm, claimed.stored
                if stored is None or stored[1] is None or stored[1] != alarm or stored[0].status == PAUSED:
                    continue  # terminated, paused or replaced since it was claimed (as `on_alarm`)
                record, current = stored
                assert current is not None
                attempt = record.attempt if alarm.purpose == "retry" else 1
                try:
                    # In a context of its own, as in an actor: what the body sets stays with its run.
                    run = copy_context().run(self._fire, record, current)
                    checkin = run.checkin
                    if checkin is None:
                        assert run.pending is not None
                        later = functools.partial(self._finish_later, claimed, run, run.pending, finish)
                        self.runtime.spawn(later, alarm.key, functools.partial(_refused, claimed, run.pending, finish))
                        handed.add(alarm.id)
                        continue
                except Exception as exc:  # a bug past the body
                    bug_later = functools.partial(self._bug_later, claimed, attempt, exc, finish)
                    self.runtime.spawn(bug_later, alarm.key, functools.partial(_refused, claimed, None, finish))
                    handed.add(alarm.id)
                    continue
                writes.append((claimed, checkin, run))
                pairs.append((checkin, run.events))
            if writes:
                try:
                    # The leases the claim took end with the write-back: a batch-fired instance
                    # is rarely called again at once, so no lingering lease to give up later.
                    errors = await env.commit_many(pairs, release_leases=True)
                except StorageError as exc:
                    # The alarms stay claimed and fire again after their lease.
                    env.logger.error(
                        "continuous %s: could not record %d runs: %s",
                        self.job.name,
                        len(writes),
                        printable(exc.message),
                    )
                except Exception as exc:  # a bug past the bodies: each run's attempt counts, as in `on_alarm`
                    for claimed, _, run in writes:
                        await self._bug(claimed.alarm, run.info.attempt, exc)
                else:
                    for (claimed, _, _), error in zip(writes, errors, strict=True):
                        if isinstance(error, StorageError):
                            env.logger.error(
                                "continuous %s: could not record a run: %s",
                                printable(claimed.alarm.key),
                                printable(error.message),
                            )
        finally:
            finish([claimed for claimed in runs if claimed.alarm.id not in handed] if handed else runs)

    async def _finish_later(
        self, claimed: ClaimedAlarm, run: _Run, pending: Pending, finish: Callable[[Sequence[ClaimedAlarm]], None]
    ) -> None:
        try:
            try:
                await self._await_body(run, lambda: pending.value)
                await self.env.commit(self._close(run), run.events)
            except StorageError as exc:
                self.env.logger.error(
                    "continuous %s: could not record a run: %s", printable(claimed.alarm.key), printable(exc.message)
                )
            except Exception as exc:
                await self._bug(claimed.alarm, run.info.attempt, exc)
        finally:
            finish((claimed,))

    async def _bug_later(
        self, claimed: ClaimedAlarm, attempt: int, exc: Exception, finish: Callable[[Sequence[ClaimedAlarm]], None]
    ) -> None:
        try:
            await self._bug(claimed.alarm, attempt, exc)
        finally:
            finish((claimed,))

    def _fire(self, record: InstanceRecord, alarm: Alarm) -> _Run:
        """One batch-fired run of `record` for its due `alarm` (not a trigger), in the calling
        context, which is the run's own: `_open`, `_run_now` and `_close` in one pass.

        ``run.checkin`` is what to write back; ``None`` if the body gave an awaitable
        (``run.pending``, for `_finish_later`). A run that returns ``None`` or an instance of
        the state's class is judged here (a success, its events and debug line only if a
        tracker or the job's log takes them); any other value, a raise and a
        ``ctx.terminate`` go through `ran_gave`, `ran_raised` and `judge` as every run's do.
        """
        key = record.key
        RUNNING_KEYS.set(frozenset((key,)))  # its user code runs as a handler of its instance
        job, env = self.job, self.env
        state_decoder = self._decoder
        if state_decoder is None:
            return self._fire_slowly(record, alarm)
        assert record.state is not None
        try:
            state = state_decoder.decode(record.state)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return self._fire_slowly(record, alarm)  # `_open` fails the run, saying why
        if alarm.purpose == "retry":
            run_count, attempt = record.run_count, record.attempt
        else:
            run_count, attempt = record.run_count + 1, 1
        name, instance_id = job.name, record.instance_id
        log = JobLog(
            self._logger, self._threshold, {"job": name, "instance": instance_id, "run": run_count, "attempt": attempt}
        )
        checkout: Checkout[Any] = Checkout(state)
        ctx = ContinuousContext(env, name, instance_id, log, checkout, job.state, run_count, attempt, record.tenant_id)
        run = _Run(record, alarm, False, RunInfo(key, KIND, name, run_count, attempt), log, [], checkout, ctx)
        started = time.perf_counter()
        ran: Ran | Pending | None = None  # None: it succeeded
        try:
            value = self._body(ctx)
        except BaseException as exc:
            ran = ran_raised(checkout, exc, started)
        else:
            if checkout.terminated:  # a swallowed ``ctx.terminate`` still ends the run
                ran = ran_gave(checkout, value, ctx.set_state, started)
            elif value is None:
                pass
            elif type(value) is job.state and self._plain_state:
                try:
                    ctx.set_state(value)
                except JobError as exc:  # not a state (as `ran_gave`: the run's failure)
                    ran = Ran(Failure(exc), duration_ms=since(started))
            else:
                ran = ran_gave(checkout, value, ctx.set_state, started)
        if isinstance(ran, Pending):
            run.pending = ran
            return run
        # One clock reading for the run's end: its events and its check-in (`_close`).
        run.ended_ms = now = env.clock.now_ms()
        if ran is None:
            run.outcome_kind = "succeeded"
            if env.tracking or self._threshold <= logging.DEBUG:  # `judge`'s debug line and event, as it makes them
                duration_ms = since(started)
                if self._threshold <= logging.DEBUG:
                    log.debug("executed in %.1f ms", duration_ms)
                if env.tracking:
                    run.events.append(
                        env.event(
                            "job.executed",
                            key,
                            KIND,
                            name,
                            now,
                            run_count=run_count,
                            duration_ms=duration_ms,
                            attempt=attempt,
                        )
                    )
        else:
            run.outcome = judge(env, run.info, ran, job.retry, run.events, log, now)
            run.outcome_kind = run.outcome.kind
        run.checkin = self._close(run)
        return run

    def _fire_slowly(self, record: InstanceRecord, alarm: Alarm) -> _Run:
        """`_fire` through `_open` and `_run_now` (a state the decoder refuses, or no decoder)."""
        run = self._open(record, alarm, triggered=False)
        pending = self._run_now(run)
        if pending is not None:
            run.pending = pending
            return run
        run.checkin = self._close(run)
        return run

    def _next_run(self, alarm: Alarm | None, now: int) -> int | None:
        # Keep the schedule's phase: the next run follows the one that was due,
        # unless that is already past (after downtime), then it follows now.
        # ``None``: none by `LATEST_MS` (`next_fire`).
        base = alarm.fire_at if alarm is not None and alarm.purpose == "run" else now
        nxt = next_fire(self.job.schedule, base)
        return nxt if nxt is None or nxt > now else next_fire(self.job.schedule, now)

    def _ended(self, run: _Run) -> Checkin:
        """The check-in of a run after which the schedule has no run left: the instance stays, with no alarm."""
        self.env.logger.warning(
            "continuous job %r instance %r has no next run: %s",
            self.job.name,
            printable(run.record.instance_id),
            _ENDED,
        )
        return Checkin(key=run.record.key, record=run.record, alarm=ClearAlarm())

    async def _run(self, record: InstanceRecord, alarm: Alarm | None, *, triggered: bool) -> tuple[int, str]:
        run = self._open(record, alarm, triggered=triggered)
        if run.ctx is not None:
            ctx = run.ctx
            await self._await_body(run, lambda: self._body(ctx))
        await self.env.commit(self._close(run), run.events)
        return run.info.run_count, run.outcome_kind

    def _open(self, record: InstanceRecord, alarm: Alarm | None, *, triggered: bool) -> _Run:
        """A run's context from the stored instance; a state that does not decode fails the run here."""
        job, env = self.job, self.env
        retrying = not triggered and alarm is not None and alarm.purpose == "retry"
        run_count = record.run_count if retrying else record.run_count + 1
        attempt = record.attempt if retrying else 1
        log = env.job_log(KIND, job.name, job.logging, instance=record.instance_id, run=run_count, attempt=attempt)
        info = RunInfo(record.key, KIND, job.name, run_count, attempt)
        assert record.state is not None
        # A run's path: the stored state decides between two blocks of statements.
        match decode(job.state, record.state, what="state"):
            case Success(state):
                checkout = Checkout(state)
                run = _Run(record, alarm, triggered, info, log, [], checkout)
                run.ctx = ContinuousContext(
                    env, job.name, record.instance_id, log, checkout, job.state, run_count, attempt, record.tenant_id
                )
            case Failure(error):
                run = _Run(record, alarm, triggered, info, log, [], Checkout(None))
                unreadable_state(
                    env, log, run.events, record, KIND, job.name, error, run_count=run_count, attempt=attempt
                )
        return run

    async def _await_body(self, run: _Run, call: Callable[[], object]) -> None:
        """Run the body (`call` gives what it gives) to its outcome, as every run but a batch's does."""
        job, env = self.job, self.env
        assert run.ctx is not None
        set_state = run.ctx.set_state
        run.outcome = await execute(
            env,
            run.info,
            run.checkout,
            lambda: run_returning_state(call, env.services, set_state, self._what),
            job.retry,
            run.events,
            run.log,
            job.limits,
            self._what,
        )
        run.outcome_kind = run.outcome.kind

    def _run_now(self, run: _Run) -> Pending | None:
        """Run the body in this task if it gives its value at once (a synchronous body);
        else the `Pending` awaitable it gave, for `_await_body`."""
        ctx = run.ctx
        if ctx is None:
            return None  # the state did not decode: the run failed without user code
        ran = run_now(run.checkout, functools.partial(self._body, ctx), ctx.set_state)
        if isinstance(ran, Pending):
            return ran
        # One clock reading for the run's end: its events and its check-in (`_close`).
        run.ended_ms = now = self.env.now_ms()
        run.outcome = judge(self.env, run.info, ran, self.job.retry, run.events, run.log, now)
        run.outcome_kind = run.outcome.kind
        return None

    def _close(self, run: _Run) -> Checkin:
        """The check-in that stores what `run` came to (its events are in ``run.events``)."""
        job, env = self.job, self.env
        record, alarm, outcome, outcome_kind, events = run.record, run.alarm, run.outcome, run.outcome_kind, run.events
        now = env.now_ms() if run.ended_ms is None else run.ended_ms
        record.run_count, record.updated_at = run.info.run_count, now
        if outcome_kind in ("terminated", "exhausted"):
            letter = None
            if outcome_kind == "exhausted":
                events.append(env.event("job.terminated", record.key, KIND, job.name, now, reason="retry_exhausted"))
                if job.on_exhausted == "dead_letter":
                    assert outcome is not None
                    # The state the failed run started from; a retry of the letter runs it again at once.
                    again = msgspec.structs.replace(record, status="running", attempt=1)
                    letter = instance_dead_letter(
                        record,
                        kind="continuous",
                        revived=again,
                        purpose="run",
                        error=outcome.error,
                        attempts=run.info.attempt,
                        now=now,
                    )
            return Checkin(key=record.key, record=None, dead_letter=letter)
        if outcome_kind == "retrying":
            assert outcome is not None and outcome.retry_at is not None
            record.attempt = run.info.attempt + 1
            return Checkin(key=record.key, record=record, alarm=SetAlarm(outcome.retry_at, "retry"))
        record.attempt = 1
        checkout = run.checkout
        if outcome_kind == "succeeded" and checkout.encoded is not None:
            record.state = checkout.encoded  # as the last set_state validated it (no encoding here)
        if run.triggered:
            if alarm is not None and alarm.purpose == "run":
                return Checkin(key=record.key, record=record, alarm=None)  # the scheduled run stays
            following = self._next_run(alarm, now)
            if following is None:
                return self._ended(run)
            return Checkin(key=record.key, record=record, alarm=SetAlarm(following, "run"))
        # `_next_run`, inline: every scheduled run passes here.
        schedule = job.schedule
        try:
            nxt = schedule.next_after(alarm.fire_at if alarm is not None and alarm.purpose == "run" else now)
            if nxt <= now:
                nxt = schedule.next_after(now)
        except SchedulerError:  # a cron with no run left before datetime's last day
            return self._ended(run)
        if nxt > LATEST_MS:
            return self._ended(run)
        return Checkin(key=record.key, record=record, alarm=SetAlarm(nxt, "run"))


@dataclass(slots=True, eq=False)  # not frozen: built per run, where frozen costs a setattr call per field
class _Run:
    """One run of a continuous instance, from its stored row to the check-in that ends it."""

    record: InstanceRecord
    alarm: Alarm | None
    triggered: bool
    #: Its run count and attempt (``run_count`` is this run's, not the stored one).
    info: RunInfo
    log: JobLog
    events: list[TrackedEvent]
    checkout: Checkout[Any]
    ctx: ContinuousContext[Any, Any] | None = None
    outcome: Outcome | None = None
    outcome_kind: str = "failed"
    #: The clock's reading as the body ended, if taken (`_run_now`); `_close` reads it else.
    ended_ms: int | None = None
    #: A batch-fired run's check-in (`_fire`), or the awaitable its body gave (`pending`).
    checkin: Checkin | None = None
    pending: Pending | None = None


class ContinuousClient(InstanceClient[ContinuousHandler[S]], Generic[S]):
    """The client verbs of one continuous job; get one with ``engine.client.continuous(job)``.

    Every verb returns a `FutureResult` that does its work when awaited and
    gives an ``IOSuccess`` or an ``IOFailure`` with one of the errors its
    type names. A verb returns only after what it changed is committed.
    """

    def start(
        self, *, id: str, input: S
    ) -> FutureResult[StartResult, JobNotFoundError | TenantError | InvalidStateError | ValidationError | StorageError]:
        """Start instance `id` with `input` as its state; a running id is left as it is (``created=False``)."""
        return self._verb(id, lambda h, i: h.start(i, input))

    def trigger(
        self, id: str
    ) -> FutureResult[
        TriggerResult,
        JobNotFoundError | TenantError | InstanceNotFoundError | InvalidStateError | ValidationError | StorageError,
    ]:
        """Run instance `id` now, outside its schedule; returns once the run is committed.

        A paused instance is not run: `InvalidStateError` (resume it first).
        """
        return self._verb(id, lambda h, i: h.trigger(i))

    def pause(
        self, id: str
    ) -> FutureResult[
        ContinuousStatus,
        JobNotFoundError | TenantError | InvalidStateError | InstanceNotFoundError | ValidationError | StorageError,
    ]:
        """Take instance `id` off its schedule: status ``stopped``, state kept, no run until `resume`.

        A pending retry is dropped with the schedule. Pausing a paused
        instance changes nothing. Emits ``job.paused``.
        """
        return self._verb(id, lambda h, i: h.pause(i))

    def resume(
        self, id: str
    ) -> FutureResult[
        ContinuousStatus,
        JobNotFoundError | TenantError | InvalidStateError | InstanceNotFoundError | ValidationError | StorageError,
    ]:
        """Put a paused instance back on its schedule, at the schedule's next fire time after now.

        Fire times that passed while paused are not run (nor is
        ``start_immediately`` applied again). Resuming a running instance
        changes nothing. Emits ``job.resumed`` with ``next_run_at``.
        """
        return self._verb(id, lambda h, i: h.resume(i))

    def status(
        self, id: str
    ) -> FutureResult[ContinuousStatus, JobNotFoundError | TenantError | ValidationError | StorageError]:
        """``running`` (with ``run_count`` and ``next_run_at``), ``stopped`` or ``not_found``."""
        return self._verb(id, lambda h, i: h.status(i))

    def get_state(
        self, id: str
    ) -> FutureResult[
        StateResult[S], JobNotFoundError | TenantError | InstanceNotFoundError | ValidationError | StorageError
    ]:
        """The instance's state and when it next runs."""
        return self._verb(id, lambda h, i: h.get_state(i))

    def terminate(
        self, id: str, *, reason: str | None = None
    ) -> FutureResult[
        TerminateResult, JobNotFoundError | TenantError | InvalidStateError | ValidationError | StorageError
    ]:
        """Delete the instance's state and alarm; the id can be started again."""
        return self._verb(id, lambda h, i: h.terminate(i, reason))
