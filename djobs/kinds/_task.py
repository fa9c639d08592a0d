"""Task jobs: event-driven state machines that schedule themselves.

An instance is created by its first event. ``on_event(event, ctx)`` handles
each event sent to it; ``execute(ctx)`` runs when the alarm it set with
``ctx.schedule(when)`` fires (or when a client calls ``trigger``). An
instance has at most one alarm: scheduling again replaces it, and the alarm
that fired is consumed, so a task that wants to run again schedules again.

Every handler's changes (state and alarm) are buffered and committed in one
`Checkin` with its outcome; a handler that fails keeps none of them.

- ``on_idle(ctx)`` runs when a step (an event, or an execute) takes the task
  from having an alarm (or from not existing) to having none, in the same
  commit; it may schedule. It runs once per such transition, never for its
  own outcome, so it cannot loop on its own.
- A failed execute is retried first by the job's `Retry` policy (the retry
  is an alarm, so it survives a restart). When no retry is scheduled (no
  policy, an error that is not retryable, or the last attempt failed),
  ``on_error(error, ctx)`` runs with the state as it was before the failed
  execute; it may change the state, schedule, or terminate. Without
  ``on_error`` the failure is logged and emitted and the state is kept.
- A failing ``on_event`` is returned to the sender (``send`` fails with it)
  and nothing is stored.
"""

from __future__ import annotations

import reprlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, NoReturn, TypeAlias

import msgspec
from returns.future import FutureResult
from returns.result import Failure, Result, Success
from typing_extensions import TypeVar

from .._bodies import Returns, check_body
from .._clock import AFTER_LATEST, LATEST_MS, to_datetime, utc_isoformat
from .._codec import check_storable, decode, encoded, validate
from .._context import BaseContext, D_co
from .._durations import TOO_LONG, DurationLike, negative_text, parse_duration, to_ms
from .._errors import (
    DuplicateEventError,
    ExecutionError,
    InstanceNotFoundError,
    InvalidStateError,
    JobError,
    JobNotFoundError,
    StorageError,
    TenantError,
    ValidationError,
    raise_error,
)
from .._execution import Checkout, Env, RunInfo, execute, run_call, run_returning_state
from .._input import LONGEST_INTERVAL, epoch_ms
from .._limits import NO_LIMITS, RunLimits, definition_limits, offloaded
from .._logging import JobLog, LoggingOption, check_logging
from .._printable import printable
from .._retry import Retry, check_retry
from ..storage import Alarm, Checkin, ClaimedAlarm, ClearAlarm, InstanceRecord, SetAlarm
from ..storage._base import DeadLetter, Revival
from ..tracking import TrackedEvent
from ._common import (
    EVENT_KEY_FIELDS,
    D_contra,
    Definition,
    InstanceClient,
    OnExhausted,
    StateResult,
    TenantScoped,
    TerminateResult,
    bind_async,
    check_event_id,
    check_name,
    check_on_exhausted,
    count_failed_attempt,
    instance_dead_letter,
    instance_key,
    key_problem,
    revive_letter,
    terminate_instance,
    unreadable_state,
)

if TYPE_CHECKING:
    from .._runtime import Runtime

S = TypeVar("S")
Ev = TypeVar("Ev")

KIND = "task"

# Alarm purposes: a scheduled execute, and a retry set by the job's Retry policy
# (a retry keeps its execute's number and counts attempts; a scheduled execute starts afresh).
_EXECUTE = "execute"
_RETRY = "retry"

#: What ``ctx.schedule(when)`` accepts: a delay from now, or an aware point in time.
When: TypeAlias = timedelta | str | datetime

_ACCEPTED = 'expected a timedelta, a duration string like "5 minutes", or a timezone-aware datetime'
# Times past this cannot be shown as a datetime (scheduled_at); refuse them when scheduled.
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60

Trigger = Literal["event", "execute", "idle", "error"]
Outcome = Literal["succeeded", "failed", "retrying", "exhausted", "terminated"]


def _bad_when(when: object, why: str | None = None) -> ValidationError:
    reason = f"; {why}" if why else ""
    return ValidationError(f"ctx.schedule() got {_short.repr(when)}: {_ACCEPTED}{reason}")


def resolve_when(when: object, now_ms: int, *, latest: int = LATEST_MS) -> Result[int, ValidationError]:
    """When ``ctx.schedule(when)`` is due, in epoch milliseconds (never before `now_ms`).

    Args:
        when: A `timedelta` or a duration string (a delay from now), or an
            aware `datetime`. A time in the past is due at once.
        now_ms: The current time, in epoch milliseconds.
        latest: The latest due time accepted (`LATEST_MS`, the year 9999's limit); a time
            due now is taken even on a clock past it.

    Returns:
        The due time, or a `ValidationError` naming the accepted forms. A
        naive datetime and a bare number (seconds or milliseconds?) are
        refused rather than guessed at.

    Examples:
        >>> resolve_when("5 minutes", 0)
        <Success: 300000>
        >>> print(resolve_when(300, 0).failure())  # doctest: +ELLIPSIS
        ctx.schedule() got 300: expected a timedelta, ...; a bare number is ambiguous (seconds or milliseconds?)...
    """
    if isinstance(when, datetime):
        if when.tzinfo is None:
            return Failure(
                _bad_when(
                    when,
                    "this datetime is naive (it has no time zone); "
                    "use datetime(..., tzinfo=UTC) or ctx.now() + timedelta(...)",
                )
            )
        return (
            epoch_ms(when, "the datetime")
            .map(lambda moment: max(now_ms, moment))
            .alt(lambda error: _bad_when(when, error.message))
            .bind(lambda fire_at: _not_after_9999(when, fire_at, now_ms, latest))
        )
    elif isinstance(when, bool | int | float):
        return Failure(
            _bad_when(
                when,
                "a bare number is ambiguous (seconds or milliseconds?); "
                'write timedelta(seconds=...) or a string like "30 seconds" '
                "(a duration option such as every() or delay= reads an int as milliseconds, but a time to "
                "wait until takes no number: see Durations in the engine reference)",
            )
        )
    elif isinstance(when, timedelta | str):
        return (
            parse_duration(when)
            .map(lambda delay: now_ms + to_ms(delay))
            .alt(lambda error: _bad_when(when, _why_not_a_delay(when, error)))
            .bind(lambda fire_at: _not_after_9999(when, fire_at, now_ms, latest))
        )
    return Failure(_bad_when(when))


def _why_not_a_delay(when: timedelta | str, error: ValidationError) -> str:
    if TOO_LONG in error.message:
        return f"a delay must be at most {LONGEST_INTERVAL.days} days (100 years)"
    if isinstance(when, timedelta) or negative_text(when):
        return "a delay must not be negative"
    return "the string is not a duration"


def _not_after_9999(when: object, fire_at: int, now_ms: int, latest: int) -> Result[int, ValidationError]:
    # Due now is taken even on a clock past `latest` (before 9999 ends), as a job's ``now()`` is.
    if fire_at > latest and fire_at > now_ms:
        return Failure(_bad_when(when, f"that is {AFTER_LATEST}"))
    return Success(fire_at)


class _TaskContextBase(BaseContext[D_co], Generic[S, D_co]):
    """What every Task handler's context has: state, scheduling, terminate, ``event_count``."""

    __slots__ = ("_draft", "_scheduled_ms", "_state_type", "event_count")

    def __init__(
        self,
        env: Env,
        job_name: str,
        instance_id: str,
        log: JobLog,
        draft: Checkout[S | None],
        state_type: type[S],
        scheduled_ms: int | None,
        event_count: int,
        tenant_id: str | None = None,
    ) -> None:
        super().__init__(env, job_name, instance_id, log, tenant_id)
        self._draft = draft
        self._state_type = state_type
        self._scheduled_ms = scheduled_ms
        self.event_count = event_count

    @property
    def state(self) -> S | None:
        """The task's state with this handler's changes; ``None`` before the first ``set_state``."""
        return self._draft.state

    def set_state(self, state: S) -> None:
        """Replace the state. It is validated and encoded now, and that encoding is committed
        with the handler's outcome: a change made to `state` in place afterwards is not stored
        unless ``set_state`` is called again.

        Raises:
            ValidationError: `state` does not match the job's state type; the
                handler fails with this error and nothing is written.
        """
        # Raising ends the handler at the mistake; the execution service turns it into a failure value.
        raw = encoded(self._state_type, state, what="state", limit=self._env.max_payload_bytes)
        if isinstance(raw, ValidationError):
            raise raw
        draft = self._draft
        draft.state, draft.encoded = state, raw

    def update_state(self, fn: Callable[[S], S]) -> None:
        """Replace the state with ``fn(state)``.

        Raises:
            InvalidStateError: The task has no state yet (use `set_state` first).
            ValidationError: The new state does not match the state type.
        """
        current = self._draft.state
        if current is None:
            raise InvalidStateError(
                f"update_state needs a state, but task {self.job_name!r} instance {self.instance_id!r} "
                "has none yet; call set_state first"
            )
        self.set_state(fn(current))

    def schedule(self, when: When) -> None:
        """Run ``execute`` at `when`, replacing any alarm the task has.

        Args:
            when: A `timedelta` or a duration string such as ``"5 minutes"``
                (from now), or a timezone-aware `datetime`. A time in the past
                is due at once.

        Raises:
            ValidationError: `when` is none of these (a naive datetime, a bare
                number, a negative delay, unreadable text); the handler fails
                with this error and nothing is written.
        """
        fire_at = resolve_when(when, self._env.now_ms()).alt(raise_error).unwrap()
        self._draft.alarm = SetAlarm(fire_at, _EXECUTE)
        self._draft.schedule_touched = True

    def cancel_schedule(self) -> None:
        """Remove the task's alarm (committed with the handler's outcome)."""
        self._draft.alarm = "cancel"
        self._draft.schedule_touched = True

    @property
    def scheduled_at(self) -> datetime | None:
        """When ``execute`` is next due, including this handler's ``schedule``/``cancel_schedule``."""
        alarm = self._draft.alarm
        if isinstance(alarm, SetAlarm):
            return to_datetime(alarm.fire_at)
        if alarm == "cancel" or self._scheduled_ms is None:
            return None
        return to_datetime(self._scheduled_ms)

    def terminate(self, reason: str | None = None) -> NoReturn:
        """End this handler now and delete the task with its state, alarm and event ids.

        The id can be used again afterwards. Nothing else this handler changed is kept.

        `reason` is kept as text a job produces (escaped where no storage holds it, cut to 1,000
        characters).

        Raises:
            ValidationError: `reason` is neither a str nor ``None``; the handler fails with it instead.
        """
        self._draft.terminate(reason)


class TaskEventContext(_TaskContextBase[S, D_co]):
    """The context of ``on_event(event, ctx)``: ``TaskEventContext[S, D]``, state `S`, services `D`.

    Attributes:
        event_count: Events this task has accepted, this one included (1 on the first).
        is_first_event: Whether this event created the task.
    """

    __slots__ = ("is_first_event",)

    def __init__(
        self,
        env: Env,
        job_name: str,
        instance_id: str,
        log: JobLog,
        draft: Checkout[S | None],
        state_type: type[S],
        scheduled_ms: int | None,
        event_count: int,
        is_first_event: bool,
        tenant_id: str | None = None,
    ) -> None:
        super().__init__(env, job_name, instance_id, log, draft, state_type, scheduled_ms, event_count, tenant_id)
        self.is_first_event = is_first_event


class TaskContext(_TaskContextBase[S, D_co]):
    """The context of ``execute(ctx)``, ``on_idle(ctx)`` and ``on_error(error, ctx)``:
    ``TaskContext[S, D]``, state `S`, services `D` (``object``, the default, for none).

    In ``execute`` the alarm that fired is already consumed: `scheduled_at`
    is ``None`` until the handler schedules again.

    Attributes:
        execute_count: Which execute this is (1 for the first); a retry keeps
            its execute's number. In ``on_idle``, the executes so far.
        event_count: Events this task has accepted.
        created_at: When the task was created (its first event), aware UTC.
        attempt: Which try of this execute (1 = the first).
    """

    __slots__ = ("attempt", "created_at", "execute_count")

    def __init__(
        self,
        env: Env,
        job_name: str,
        instance_id: str,
        log: JobLog,
        draft: Checkout[S | None],
        state_type: type[S],
        scheduled_ms: int | None,
        event_count: int,
        execute_count: int,
        created_at: int,
        attempt: int,
        tenant_id: str | None = None,
    ) -> None:
        super().__init__(env, job_name, instance_id, log, draft, state_type, scheduled_ms, event_count, tenant_id)
        self.execute_count = execute_count
        self.created_at = to_datetime(created_at)
        self.attempt = attempt

    @property
    def is_retry(self) -> bool:
        """Whether this execute is a retry (by the job's `Retry` policy) of a failed try."""
        return self.attempt > 1


@dataclass(frozen=True, eq=False)
class Task(Definition[D_contra], Generic[S, Ev, D_contra]):
    """An event-driven state machine that schedules itself. Make one with `Task.make`.

    ``Task[S, Ev, D]``: state `S`, events `Ev`; its handlers need services
    `D` (``object``, the default, for none). Every handler may return the
    new state instead of calling ``ctx.set_state`` (``None`` keeps it).

    Examples:
        >>> import msgspec, djobs
        >>> class Ping(msgspec.Struct, tag=True):
        ...     pass
        >>> class Seen(msgspec.Struct):
        ...     pings: int = 0
        >>> def on_event(event: Ping, ctx: djobs.TaskEventContext[Seen]) -> None:
        ...     ctx.set_state(Seen((ctx.state or Seen()).pings + 1))
        ...     ctx.schedule("1 hour")
        >>> def expire(ctx: djobs.TaskContext[Seen]) -> None:
        ...     ctx.terminate(reason="quiet for an hour")
        >>> watcher = djobs.Task.make("watcher", state=Seen, event=Ping, on_event=on_event, execute=expire)
        >>> watcher.name
        'watcher'
    """

    kind: ClassVar[str] = KIND
    name: str
    state: type[S]
    event: Any
    on_event: Callable[[Ev, TaskEventContext[S, D_contra]], Returns[S | None, D_contra]]
    execute: Callable[[TaskContext[S, D_contra]], Returns[S | None, D_contra]]
    on_idle: Callable[[TaskContext[S, D_contra]], Returns[S | None, D_contra]] | None = None
    on_error: Callable[[JobError, TaskContext[S, D_contra]], Returns[S | None, D_contra]] | None = None
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
        event: Any,
        on_event: Callable[[Ev, TaskEventContext[S, D_contra]], Returns[S | None, D_contra]],
        execute: Callable[[TaskContext[S, D_contra]], Returns[S | None, D_contra]],
        on_idle: Callable[[TaskContext[S, D_contra]], Returns[S | None, D_contra]] | None = None,
        on_error: Callable[[JobError, TaskContext[S, D_contra]], Returns[S | None, D_contra]] | None = None,
        retry: Retry | None = None,
        logging: LoggingOption = False,
        timeout: DurationLike | None = None,
        blocking: bool = False,
        on_exhausted: OnExhausted = "terminate",
    ) -> Task[S, Ev, D_contra]:
        """Define a task job.

        Args:
            name: The job's unique name (no ``:``).
            state: The ``msgspec.Struct`` type of the task's state.
            event: The type of the events it accepts: usually a
                ``msgspec.Struct``, or a union of structs made with ``tag=True``
                (``OrderPlaced | PaymentReceived | Shipped``); any other type
                msgspec can decode and store is taken too (``int``,
                ``list[Item]``), as for a job's result.
            on_event: ``on_event(event, ctx)``, called for each event sent
                (`TaskEventContext`); a failure is returned to the sender.
            execute: ``execute(ctx)``, called when the task's alarm fires (`TaskContext`).
            on_idle: ``on_idle(ctx)``, called when a step leaves the task with no alarm.
            on_error: ``on_error(error, ctx)``, called with the typed error when an
                execute failed and no retry is scheduled.
            retry: How a failed execute is retried before ``on_error``; ``None`` does not retry.
            logging: ``True`` (debug), ``False`` (errors only), a level, or ``None`` (silent).
            timeout: The longest any one handler may take; a longer one is
                cancelled and fails with `JobTimeoutError` (an execute's is
                retried by `retry`, an on_event's returned to the sender).
                ``None`` (default): no limit.
            blocking: ``True`` runs synchronous handlers in a worker thread
                (``trio.to_thread``), so a handler that blocks does not stall
                the engine; an ``async def`` handler is refused.
            on_exhausted: What a task ended by exhausted retries (its
                ``on_error`` terminated it after the last attempt failed)
                becomes: ``"terminate"`` (default) deletes it with its state;
                ``"dead_letter"`` keeps the state the failed execute started
                from as a dead letter (``engine.client.dead_letters``), which a
                retry brings back and executes at once.

        Raises:
            ValidationError: The definition is malformed (a bug in the program).

        Every handler may return the new state (``None`` keeps it) in any
        body form (a value, ``async def``, a ``Result``, a
        ``FutureResult``, a ``RequiresContextFutureResult`` run with the
        services, ...).
        """
        check_name(name, KIND)
        if not (isinstance(state, type) and issubclass(state, msgspec.Struct)):
            raise ValidationError(f"Task {name!r}: state must be a msgspec.Struct type, got {state!r}")
        check_storable(state, f"Task {name!r}: state")
        if event is None:  # NoneType to msgspec: a task whose every event is None is a forgotten argument
            raise ValidationError(f"Task {name!r}: event must be the type of the events it accepts, got None")
        for what, required in (("on_event", on_event), ("execute", execute)):
            if required is None:
                raise ValidationError(f"Task {name!r}: {what} is required (a handler), got None")
        try:
            msgspec.json.Decoder(event)
        except TypeError as exc:
            raise ValidationError(
                f"Task {name!r}: event must be a type msgspec can decode: a msgspec.Struct, a union of structs"
                f" made with tag=True, or another type msgspec stores such as int or list[Item] ({exc})"
            ) from None
        check_storable(event, f"Task {name!r}: event")
        handlers: tuple[tuple[str, object, tuple[str, ...]], ...] = (
            ("on_event", on_event, ("event", "ctx")),
            ("execute", execute, ("ctx",)),
            ("on_idle", on_idle, ("ctx",)),
            ("on_error", on_error, ("error", "ctx")),
        )
        for what, fn, args in handlers:
            if fn is not None:
                check_body(fn, f"Task {name!r}: {what}", args)
        limits = definition_limits(
            timeout,
            blocking,
            {"on_event": on_event, "execute": execute, "on_idle": on_idle, "on_error": on_error},
            f"Task {name!r}",
        )
        exhausted = check_on_exhausted(on_exhausted, f"Task {name!r}")
        retry = check_retry(retry, f"Task {name!r}")
        logging = check_logging(logging, f"Task {name!r}")
        return cls(name, state, event, on_event, execute, on_idle, on_error, retry, logging, limits, exhausted)

    def bind(self, runtime: Runtime) -> TaskHandler[S, Ev]:
        """The handler that runs this job inside an engine (used by the engine)."""
        return TaskHandler(self, runtime)


class SendResult(msgspec.Struct, frozen=True):
    """The result of ``send``.

    Attributes:
        created: Whether this event created the task.
        instance_id: The task's id.
        scheduled_at: When ``execute`` is next due after this event (with
            ``on_idle``'s schedule, if it ran), or ``None``.
    """

    created: bool
    instance_id: str
    scheduled_at: datetime | None = None


class TaskStatus(msgspec.Struct, frozen=True):
    """The result of ``status``.

    Attributes:
        status: ``active`` when ``execute`` is scheduled, ``idle`` when it is
            not, or ``not_found``.
        scheduled_at: When ``execute`` is next due (``None`` when idle).
        event_count: Events the task has accepted (``None`` when not found).
    """

    status: Literal["active", "idle", "not_found"]
    scheduled_at: datetime | None = None
    event_count: int | None = None


class TaskTriggerResult(msgspec.Struct, frozen=True):
    """The result of ``trigger``: how the execute it caused ended.

    ``outcome`` is ``succeeded``, ``failed`` (no retry scheduled; ``on_error``
    ran if the job has one), ``retrying``, ``exhausted`` or ``terminated``; a
    failed execute is not a failed call. ``scheduled_at`` is when ``execute``
    is next due.
    """

    instance_id: str
    execute_count: int
    outcome: Outcome
    scheduled_at: datetime | None = None


def _rejection(error: JobError) -> ValidationError | InvalidStateError | ExecutionError:
    # Keep the error union of `send` precise: other JobErrors an on_event returns are wrapped.
    if isinstance(error, ValidationError | InvalidStateError | ExecutionError):
        return error
    return ExecutionError(f"on_event failed: {error.message}", error)


def _at(ms: int | None) -> datetime | None:
    return None if ms is None else to_datetime(ms)


SendError: TypeAlias = ValidationError | InvalidStateError | ExecutionError | DuplicateEventError | StorageError


def _rest(record: InstanceRecord) -> None:
    """Leave a task idle with its state kept: its next event or ``schedule`` wakes it."""
    record.status = "idle"


class TaskHandler(TenantScoped, Generic[S, Ev]):
    """Runs one task job's instances on an engine's runtime."""

    def __init__(self, job: Task[S, Ev, Any], runtime: Runtime) -> None:
        self.job = job
        self.runtime = runtime
        self.env = runtime.env

    def key(self, instance_id: str) -> str:
        return instance_key(KIND, self.job.name, instance_id, self.tenant)

    async def revive_letter(self, key: str, letter_id: str, now: int) -> Revival:
        """Bring back the instance dead letter `letter_id` holds (see `revive_letter`)."""
        return await revive_letter(self.runtime, key, letter_id, now)

    def _state(self, record: InstanceRecord) -> Result[S | None, ValidationError]:
        if record.state is None:
            return Success(None)
        return decode(self.job.state, record.state, what="state")

    def _log(self, record: InstanceRecord, **extra: Any) -> JobLog:
        return self.env.job_log(KIND, self.job.name, self.job.logging, instance=record.instance_id, **extra)

    def _event(self, record: InstanceRecord, type: str, **data: Any) -> TrackedEvent:
        return self.env.event(type, record.key, KIND, self.job.name, **data)

    def _context(
        self, record: InstanceRecord, draft: Checkout[S | None], log: JobLog, attempt: int
    ) -> TaskContext[S, Any]:
        return TaskContext(
            self.env,
            self.job.name,
            record.instance_id,
            log,
            draft,
            self.job.state,
            None,
            record.event_count,
            record.execute_count,
            record.created_at,
            attempt,
            record.tenant_id,
        )

    def _returning(
        self, call: Callable[[], object], ctx: _TaskContextBase[S, Any], handler: str
    ) -> Callable[[], Awaitable[Result[object, JobError]]]:
        """`call`, where a returned value other than ``None`` is the task's new state."""
        what = f"the {handler} of task {self.job.name!r}"
        body = offloaded(call, self.job.limits, what)
        return lambda: run_returning_state(body, self.env.services, ctx.set_state, what)

    # -- verbs (each runs on the instance's actor) -------------------------------------

    async def send(self, instance_id: str, event: object, event_id: object) -> Result[SendResult, SendError]:
        job, env = self.job, self.env
        checked = Result.do(
            (eid, the_event)
            for eid in check_event_id(event_id)
            for the_event in validate(
                job.event, event, what=f"event for task {job.name!r}", limit=env.max_payload_bytes
            )
        )
        key = self.key(instance_id)
        match checked:  # the checked id: a str subclass's is its text (`plain_text`)
            case Success((str() as eid, _)) if (problem := key_problem(key + eid, EVENT_KEY_FIELDS)) is not None:
                return Failure(problem)  # stored beside the instance's key, as one key
        return await bind_async(
            checked, lambda valid: self.runtime.call(key, lambda: self._accept(key, instance_id, *valid))
        )

    async def _accept(
        self, key: str, instance_id: str, eid: str | None, the_event: Any
    ) -> Result[SendResult, SendError]:
        """`send`'s work on the instance's actor: run ``on_event`` and commit what it changed."""
        job, env = self.job, self.env
        loaded = await env.storage.load(key)
        # Checked before on_event runs, so a repeated event never reaches user code.
        if loaded is not None and eid is not None and await env.storage.has_event_id(key, eid):
            return Failure(DuplicateEventError(instance_id, eid))
        created = loaded is None
        if loaded is None:
            now = env.now_ms()
            record = InstanceRecord(
                key=key,
                kind=KIND,
                name=job.name,
                instance_id=instance_id,
                tenant_id=self.tenant,
                status="idle",
                created_at=now,
                updated_at=now,
            )
            alarm = None
        else:
            record, alarm = loaded
        match self._state(record):
            case Success(state):
                draft: Checkout[S | None] = Checkout(state)
            case Failure() as failed:
                return failed
        count = record.event_count + 1
        log = self._log(record, event=count)
        keep_ms = alarm.fire_at if alarm is not None else None
        ctx: TaskEventContext[S, Any] = TaskEventContext(
            env, job.name, instance_id, log, draft, job.state, keep_ms, count, created, self.tenant
        )
        ran = await run_call(
            env,
            key,
            draft,
            self._returning(lambda: job.on_event(the_event, ctx), ctx, "on_event"),
            job.limits,
            f"the on_event of task {job.name!r}",
        )
        match ran.result:
            case Failure(failure):
                error = _rejection(failure)
                log.info("event rejected: %s", printable(error.message))
                return Failure(error)
        record.event_count = count
        events = [self._event(record, "job.started")] if created else []
        try:
            if ran.terminated:
                await self._purge(record, ran.reason, events, log)
                return Success(SendResult(created, instance_id, None))
            _, fire = await self._settle(
                record,
                draft,
                keep_ms=keep_ms,
                was_active=created or alarm is not None,
                trigger="event",
                events=events,
                event_id=eid,
            )
        except DuplicateEventError:
            # Another process accepted the same id between our check and our commit.
            assert eid is not None
            return Failure(DuplicateEventError(instance_id, eid))
        return Success(SendResult(created, instance_id, _at(fire)))

    async def trigger(self, instance_id: str) -> Result[TaskTriggerResult, InstanceNotFoundError | StorageError]:
        key = self.key(instance_id)

        async def run() -> Result[TaskTriggerResult, InstanceNotFoundError | StorageError]:
            loaded = await self.env.storage.load(key)
            if loaded is None:
                return Failure(InstanceNotFoundError(self.job.name, instance_id, "task"))
            record, alarm = loaded
            count, outcome, fire = await self._execute(record, alarm, triggered=True)
            return Success(TaskTriggerResult(instance_id, count, outcome, _at(fire)))

        return await self.runtime.call(key, run)

    async def status(self, instance_id: str) -> Result[TaskStatus, StorageError]:
        loaded = await self.env.storage.load(self.key(instance_id))
        if loaded is None:
            return Success(TaskStatus("not_found"))
        record, alarm = loaded
        if alarm is None:
            return Success(TaskStatus("idle", None, record.event_count))
        return Success(TaskStatus("active", to_datetime(alarm.fire_at), record.event_count))

    async def get_state(
        self, instance_id: str
    ) -> Result[StateResult[S | None], InstanceNotFoundError | ValidationError | StorageError]:
        loaded = await self.env.storage.load(self.key(instance_id))
        if loaded is None:
            return Failure(InstanceNotFoundError(self.job.name, instance_id, "task"))
        record, alarm = loaded
        return self._state(record).map(lambda state: StateResult(state, _at(alarm.fire_at if alarm else None)))

    async def terminate(
        self, instance_id: str, reason: object
    ) -> Result[TerminateResult, ValidationError | StorageError]:
        return await terminate_instance(self.runtime, KIND, self.job.name, self.key(instance_id), instance_id, reason)

    # -- alarms, executes and the shared end of every step ---------------------------------

    async def on_alarm(self, alarm: Alarm) -> None:
        await self._on_alarm(alarm, None)

    async def on_claimed(self, claimed: ClaimedAlarm) -> None:
        """Run a claimed alarm on the instance's actor, its lease and row taken by the claim."""
        await self._on_alarm(claimed.alarm, claimed)

    async def _on_alarm(self, alarm: Alarm, claimed: ClaimedAlarm | None) -> None:
        attempt = 1
        try:
            loaded = await self.env.storage.load(alarm.key) if claimed is None else claimed.stored
            if loaded is None or loaded[1] is None or loaded[1] != alarm:
                return  # terminated, or the alarm was replaced after it was claimed
            record, current = loaded
            attempt = record.attempt if alarm.purpose == _RETRY else 1
            await self._execute(record, current, triggered=False)
        except StorageError as exc:
            # The alarm stays claimed and fires again after its lease.
            self.env.logger.error(
                "task %s: could not record an execute: %s", printable(alarm.key), printable(exc.message)
            )
        except Exception as exc:  # a bug past the body: the attempt counts (no endless re-run of it)
            await count_failed_attempt(
                self.env,
                alarm.key,
                exc,
                kind=KIND,
                name=self.job.name,
                retry=self.job.retry,
                attempt=attempt,
                retry_purpose=_RETRY,
                give_up=_rest,
            )

    async def _execute(
        self, record: InstanceRecord, alarm: Alarm | None, *, triggered: bool
    ) -> tuple[int, Outcome, int | None]:
        """Run ``execute`` (then ``on_error`` if it failed for good) and commit; the alarm is consumed."""
        job, env = self.job, self.env
        retrying = not triggered and alarm is not None and alarm.purpose == _RETRY
        execute_count = record.execute_count if retrying else record.execute_count + 1
        attempt = record.attempt if retrying else 1
        record.execute_count = execute_count
        log = self._log(record, execute=execute_count, attempt=attempt)
        events: list[TrackedEvent] = []
        match self._state(record):
            case Success(before):
                before_raw = record.state
            case Failure(error):
                unreadable_state(
                    env, log, events, record, KIND, job.name, error, run_count=execute_count, attempt=attempt
                )
                record.attempt, record.status, record.updated_at = 1, "idle", env.now_ms()
                await env.commit(Checkin(key=record.key, record=record, alarm=ClearAlarm()), events)
                return execute_count, "failed", None
        draft: Checkout[S | None] = Checkout(before)
        ctx = self._context(record, draft, log, attempt)
        info = RunInfo(record.key, KIND, job.name, execute_count, attempt)
        outcome = await execute(
            env,
            info,
            draft,
            self._returning(lambda: job.execute(ctx), ctx, "execute"),
            job.retry,
            events,
            log,
            job.limits,
            f"the execute of task {job.name!r}",
        )
        kind: Outcome = outcome.kind
        if kind == "terminated":
            await env.commit(Checkin(key=record.key, record=None), events)
            return execute_count, kind, None
        if kind == "retrying":
            assert outcome.retry_at is not None
            record.attempt, record.status, record.updated_at = attempt + 1, "active", env.now_ms()
            events.append(self._scheduled(record, outcome.retry_at, "error"))
            await env.commit(Checkin(key=record.key, record=record, alarm=SetAlarm(outcome.retry_at, _RETRY)), events)
            return execute_count, kind, outcome.retry_at
        record.attempt = 1
        trigger: Trigger = "execute"
        if kind != "succeeded":
            draft = Checkout(before)  # nothing the failed execute changed is kept
            on_error = job.on_error
            if on_error is not None:
                assert outcome.error is not None
                error = outcome.error
                trigger = "error"
                err_log = self._log(record, execute=execute_count, attempt=attempt, handler="on_error")
                err_ctx = self._context(record, draft, err_log, attempt)
                ran = await run_call(
                    env,
                    record.key,
                    draft,
                    self._returning(lambda: on_error(error, err_ctx), err_ctx, "on_error"),
                    job.limits,
                    f"the on_error of task {job.name!r}",
                )
                if ran.terminated:
                    letter = None
                    if kind == "exhausted" and job.on_exhausted == "dead_letter":
                        again = msgspec.structs.replace(record, state=before_raw, status="active", attempt=1)
                        letter = instance_dead_letter(
                            record,
                            kind="task",
                            revived=again,
                            purpose=_EXECUTE,
                            error=error,
                            attempts=attempt,
                            now=env.now_ms(),
                        )
                    await self._purge(record, ran.reason, events, err_log, letter)
                    return execute_count, "terminated", None
                match ran.result:
                    case Failure(failure):
                        self._handler_failed(record, "on_error", failure, events, err_log)
                        draft = Checkout(before)
        alive, fire = await self._settle(
            record, draft, keep_ms=None, was_active=alarm is not None, trigger=trigger, events=events
        )
        return execute_count, kind if alive else "terminated", fire

    async def _settle(
        self,
        record: InstanceRecord,
        draft: Checkout[S | None],
        *,
        keep_ms: int | None,
        was_active: bool,
        trigger: Trigger,
        events: list[TrackedEvent],
        event_id: str | None = None,
    ) -> tuple[bool, int | None]:
        """Commit a step's successful changes, running ``on_idle`` first if the task goes idle.

        `keep_ms` is the alarm the task keeps if the step did not touch it
        (``None``: there is none, or it was consumed). Returns whether the
        task still exists, and when its alarm is due.
        """
        job, env = self.job, self.env
        change = draft.alarm
        alarm: SetAlarm | ClearAlarm | None
        if isinstance(change, SetAlarm):
            alarm, fire, by = change, change.fire_at, trigger
        elif change == "cancel" or keep_ms is None:
            alarm, fire, by = ClearAlarm(), None, trigger
        else:
            alarm, fire, by = None, keep_ms, trigger  # untouched: keep the stored alarm as it is
        encoded = draft.encoded
        on_idle = job.on_idle
        if fire is None and was_active and on_idle is not None:
            idle: Checkout[S | None] = Checkout(draft.state)
            log = self._log(record, handler="on_idle")
            ctx = self._context(record, idle, log, 1)
            ran = await run_call(
                env,
                record.key,
                idle,
                self._returning(lambda: on_idle(ctx), ctx, "on_idle"),
                job.limits,
                f"the on_idle of task {job.name!r}",
            )
            if ran.terminated:
                await self._purge(record, ran.reason, events, log)
                return False, None
            match ran.result:
                case Failure(failure):
                    # The step itself succeeded and is kept; only on_idle's changes are dropped.
                    self._handler_failed(record, "on_idle", failure, events, log)
                case _:
                    encoded = idle.encoded if idle.encoded is not None else encoded
                    if isinstance(idle.alarm, SetAlarm):
                        alarm, fire, by = idle.alarm, idle.alarm.fire_at, "idle"
        if encoded is not None:
            record.state = encoded
        record.status = "active" if fire is not None else "idle"
        record.updated_at = env.now_ms()
        if isinstance(alarm, SetAlarm):
            events.append(self._scheduled(record, alarm.fire_at, by))
        await env.commit(Checkin(key=record.key, record=record, alarm=alarm, event_id=event_id), events)
        return True, fire

    def _scheduled(self, record: InstanceRecord, fire_at: int, trigger: Trigger) -> TrackedEvent:
        return self._event(record, "task.scheduled", scheduled_at=utc_isoformat(fire_at), trigger=trigger)

    def _handler_failed(
        self, record: InstanceRecord, handler: str, error: JobError, events: list[TrackedEvent], log: JobLog
    ) -> None:
        log.error("%s failed: %s", handler, printable(error.message))
        events.append(
            self._event(
                record,
                "job.failed",
                error={"tag": error.tag, "message": error.message},
                handler=handler,
                run_count=record.execute_count,
                attempt=record.attempt,
                will_retry=False,
            )
        )

    async def _purge(
        self,
        record: InstanceRecord,
        reason: str | None,
        events: list[TrackedEvent],
        log: JobLog,
        letter: DeadLetter | None = None,
    ) -> None:
        log.info("terminated: %s", printable(reason or "no reason given"))
        events.append(self._event(record, "job.terminated", reason=reason))
        await self.env.commit(Checkin(key=record.key, record=None, dead_letter=letter), events)


class TaskClient(InstanceClient[TaskHandler[S, Ev]], Generic[S, Ev]):
    """The client verbs of one task job; get one with ``engine.client.task(job)``.

    Every verb returns a `FutureResult` that does its work when awaited and
    gives an ``IOSuccess`` or an ``IOFailure`` with one of the errors its
    type names. A verb returns only after what it changed is committed.
    """

    def send(
        self, *, id: str, event: Ev, event_id: str | None = None
    ) -> FutureResult[
        SendResult,
        JobNotFoundError
        | TenantError
        | ValidationError
        | InvalidStateError
        | ExecutionError
        | DuplicateEventError
        | StorageError,
    ]:
        """Send `event` to task `id`, creating the task if it does not exist.

        The event is validated against the job's event type, then handed to
        ``on_event``; what it changed is committed before this returns.

        Args:
            id: The task's id.
            event: The event (an instance of the job's event type).
            event_id: An idempotency key: sending it again while the task
                exists is a `DuplicateEventError` and changes nothing. Keys are
                kept until the task is terminated.

        Returns:
            `SendResult`; or a `ValidationError` (bad id, event or state), the
            error ``on_event`` failed with (`ValidationError`,
            `InvalidStateError` or `ExecutionError`; nothing is stored),
            `DuplicateEventError`, `StorageError` or `JobNotFoundError`.
        """
        return self._verb(id, lambda h, i: h.send(i, event, event_id))

    def trigger(
        self, id: str
    ) -> FutureResult[
        TaskTriggerResult,
        JobNotFoundError | TenantError | InvalidStateError | InstanceNotFoundError | ValidationError | StorageError,
    ]:
        """Run ``execute`` now, as if the task's alarm had fired early (a pending alarm is consumed)."""
        return self._verb(id, lambda h, i: h.trigger(i))

    def status(
        self, id: str
    ) -> FutureResult[TaskStatus, JobNotFoundError | TenantError | ValidationError | StorageError]:
        """``active`` (an alarm is scheduled, with ``scheduled_at``), ``idle`` or ``not_found``."""
        return self._verb(id, lambda h, i: h.status(i))

    def get_state(
        self, id: str
    ) -> FutureResult[
        StateResult[S | None], JobNotFoundError | TenantError | InstanceNotFoundError | ValidationError | StorageError
    ]:
        """The task's state (``None`` before its first ``set_state``) and when ``execute`` is next due."""
        return self._verb(id, lambda h, i: h.get_state(i))

    def terminate(
        self, id: str, *, reason: str | None = None
    ) -> FutureResult[
        TerminateResult, JobNotFoundError | TenantError | InvalidStateError | ValidationError | StorageError
    ]:
        """Delete the task's state, alarm and event ids; the id can be used again."""
        return self._verb(id, lambda h, i: h.terminate(i, reason))
