"""A workflow's calls: `WorkflowContext`, the `Step` it returns, and the run that replays the log.

`Run` is one run of one workflow instance: each context call takes the next
position in its `StepLog`, answers from a recorded entry or runs and
records a new one, and checkpoints a finished step before it returns
(through the handler's commit). The module documentation of
`djobs.kinds._workflow` describes the model.

Arrows: this module imports `_workflow_log`; `_workflow` (the handler)
imports this one, which names the handler only for the type checker.
"""

from __future__ import annotations

import bisect
import contextlib
import dis
import hashlib
import sys
import time
import typing
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass, field
from datetime import datetime
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any, Generic, Literal, NoReturn, TypeVar, TypeVarTuple, cast, overload

import msgspec
import trio
from returns.context import (
    RequiresContext,
    RequiresContextFutureResult,
    RequiresContextIOResult,
    RequiresContextResult,
)
from returns.future import FutureResult
from returns.io import IOResult
from returns.pipeline import is_successful
from returns.result import Failure, Result, Success
from returns.unsafe import unsafe_perform_io

from .._bodies import is_plain
from .._clock import LATEST_MS, to_datetime, utc_isoformat
from .._codec import decode, decoder, encoded, encoded_copy, storable_problem, type_name
from .._context import BaseContext, D_co
from .._durations import DurationLike, parse_duration, to_ms
from .._errors import (
    JobError,
    JobNotFoundError,
    StorageError,
    ValidationError,
    describe,
)
from .._execution import Env, Pending, RunSignal, begun, body_failure, finish_body
from .._logging import JobLog
from .._printable import printable
from .._results import unwrap_or_raise
from .._retry import Retry
from ..storage import (
    Checkin,
    ClearAlarm,
    InstanceRecord,
    LeaseLostError,
    SetAlarm,
)
from ..tracking import TrackedEvent
from ._common import check_id, instance_key, key_problem
from ._job import MAX_TEXT
from ._task import When
from ._workflow_log import (
    FIRST_JOB_LOOK_MS,
    JOB_FINAL,
    JOB_LOOK,
    KIND,
    MAX_CALL_NAME_LENGTH,
    NULL,
    RETRY,
    TIMEOUT,
    WAKE,
    ChildJobError,
    ChildWorkflowError,
    Entry,
    EntryKind,
    ErrorInfo,
    NonDeterminismError,
    Outcome,
    StepFailedError,
    StepLog,
    WorkflowCancelledError,
    WorkflowStatusName,
    check_call_name,
    describe_call,
    encoder,
    error_data,
    failed_step_data,
    good_names,
    outcome_decoder,
    resolved_when,
    short,
    signal_payload,
    type_ref,
)

if TYPE_CHECKING:
    from .._client import Client
    from ._job import Job
    from ._workflow import Workflow, WorkflowHandler

T = TypeVar("T")
U = TypeVar("U")
CI = TypeVar("CI")
CR = TypeVar("CR")
JP = TypeVar("JP")
JR = TypeVar("JR")
Ts = TypeVarTuple("Ts")

# -- a body that returns a step's value at once -----------------------------------------------

#: Whether the frame of each code at each offset (an await in progress) returns the awaited
#: value at once: read from the code once per place (`_returns_at_once`).
_returning: dict[tuple[CodeType, int], bool] = {}
#: How many coroutines may lie between a step and the run that awaits the body.
_MAX_RETURNING_FRAMES = 8
#: What may lie between an await's end and the ``RETURN_VALUE`` that returns its value:
#: instructions that leave the value on top of the stack and run nothing.
_PASSING = frozenset({"NOP", "END_SEND"})


def _returns_at_once(code: CodeType, offset: int) -> bool:
    """Whether the instruction at `offset` of `code` (or the one whose inline cache that is) is
    an await (``SEND``) that, once it ends, returns the awaited value and runs nothing before
    (no ``finally`` or ``with`` exit, no other statement): ``return await x``. Any other form,
    or a Python whose bytecode reads otherwise, is ``False``."""
    instructions = list(dis.get_instructions(code))
    offsets = [instruction.offset for instruction in instructions]
    at = bisect.bisect_right(offsets, offset) - 1
    if at < 0 or instructions[at].opname != "SEND":
        return False
    after = bisect.bisect_left(offsets, instructions[at].argval)
    while after < len(instructions) and instructions[after].opname in _PASSING:
        after += 1
    return after < len(instructions) and instructions[after].opname == "RETURN_VALUE"


# -- step result types -----------------------------------------------------------------

_UNSET: Any = object()
#: The name of the step that starts a child workflow is this, then ``name:id``.
_CHILD_STEP = "start child "
#: What a child's stored keys are made of, for `key_problem`'s error.
_FAMILY = "the parent's and the child's names and ids and their tenant id"
#: What a ``ctx.job`` enqueue's idempotency key is stored with, for `key_problem`'s error.
_JOB_KEY_FIELDS = "the job's name, the workflow's tenant id and the call's idempotency key"
#: What the log names a ``ctx.job`` call's enqueue step before the job's name.
_JOB_STEP = "enqueue job "
#: The longest job name ``ctx.job`` takes: its enqueue step's name holds it (`MAX_CALL_NAME_LENGTH`).
MAX_WAITED_JOB_NAME = MAX_CALL_NAME_LENGTH - len(_JOB_STEP)
_WRAPPERS = (Result, FutureResult, IOResult, RequiresContextFutureResult, Awaitable, Coroutine)
#: A step function's result type (`_result_type`), for at most `_STORABLE_TYPES_LIMIT` functions.
_step_types: dict[Any, Any] = {}
#: Types found storable (`_type_problem`), so a step's ``result=`` or a signal's payload type is walked once.
_storable_types: set[Any] = set()
_STORABLE_TYPES_LIMIT = 4096


def _result_type(fn: Callable[..., object], explicit: Any, step: str) -> Any:
    """The type a step's result is stored as: `explicit`, or `fn`'s return annotation
    unwrapped from ``Result``/``FutureResult``/... (a coroutine's is already its value's)."""
    if explicit is not _UNSET:
        tp = explicit
    else:
        try:
            cached = _step_types.get(fn, _UNSET)
        except TypeError:  # an unhashable callable is never cached
            cached = _UNSET
        if cached is not _UNSET:
            return cached  # checked when it was cached
        tp = _annotated_type(fn, step)
    try:
        known = tp in _storable_types  # `_type_problem`'s first look, inline: every step passes here
    except TypeError:  # an unhashable type is checked each time
        known = False
    if not known:
        refused = _type_problem(tp)
        if refused is not None:
            raise ValidationError(f"step {step!r}: its result type {tp!r} cannot be stored: {refused[1]}")
    if explicit is _UNSET and len(_step_types) < _STORABLE_TYPES_LIMIT:
        # Bounded: a function defined inside a workflow body is a new object each run, and
        # each entry keeps its function (and what it closes over) alive.
        with contextlib.suppress(TypeError):
            _step_types[fn] = tp
    return tp


def _type_problem(tp: Any) -> tuple[bool, str] | None:
    """Why values of `tp` cannot be stored and read back (a step's result, a signal's payload),
    as ``(decodes, why)`` (``decodes`` false: msgspec cannot make a decoder for `tp`, or raised
    reading it); ``None`` if they can, remembered in `_storable_types` so a type is walked once."""
    try:
        if tp in _storable_types:
            return None
    except TypeError:  # an unhashable type is checked each time
        pass
    try:
        decoder(tp)
        problem = storable_problem(tp)
    except Exception as exc:  # msgspec's TypeError, or a NameError of an annotation it cannot resolve
        return False, describe(exc)
    if problem is not None:
        return True, problem
    if len(_storable_types) < _STORABLE_TYPES_LIMIT:
        with contextlib.suppress(TypeError):
            _storable_types.add(tp)
    return None


def _annotated_type(fn: Callable[..., object], step: str) -> Any:
    """`fn`'s return annotation, unwrapped. Raises `ValidationError` if it has none."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # a partial, a builtin, an unresolvable annotation
        hints = {}
    if "return" not in hints:
        raise ValidationError(
            f"step {step!r}: cannot tell the type of its result ({short.repr(fn)} has no return "
            "annotation); annotate the function or pass result=<type> to ctx.step"
        )
    tp = hints["return"]
    while True:
        origin = typing.get_origin(tp) or tp
        if isinstance(origin, type) and issubclass(origin, _WRAPPERS):
            args = typing.get_args(tp)
            if not args:
                break
            tp = args[-1] if origin in (Awaitable, Coroutine) else args[0]
            continue
        break
    return tp


def _waited_job_call(label: str, name: str, job_id: str) -> str:
    """The log's name for a ``ctx.job`` call's wait: `label` (``<job name>:<job id>``), or, when
    that is longer than a call's name may be, as much of the name as fits beside the id, marked
    cut (a job's id is about 36 characters: a job name of up to 188, which its enqueue step's
    name takes, is waited for too). Made from what a replay has again: the same on every run."""
    if len(label) <= MAX_CALL_NAME_LENGTH:
        return label  # as every log written before long names were waited for names it
    keep = MAX_CALL_NAME_LENGTH - len(job_id) - 2
    if keep > 0:
        return f"{name[:keep]}\u2026:{job_id}"
    return f"job {hashlib.sha256(job_id.encode()).hexdigest()}"  # an ids layer's very long job id


def _not_a(call: str, given: object, wanted: str, instead: str) -> ValidationError:
    """The error of `call` given `given`, which is not a `wanted` definition (`instead` says what to use)."""
    kind, name = getattr(given, "kind", None), getattr(given, "name", None)
    if isinstance(kind, str) and isinstance(name, str):
        return ValidationError(f"{call}: {name!r} is a {kind} definition, not a {wanted} (use {instead})")
    return ValidationError(f"{call}: {short.repr(given)} is not a {wanted}")


# -- the result of one awaited call ----------------------------------------------------


class Step(Generic[T]):
    """A step of a workflow, run when awaited: ``await ctx.step(...)`` gives its result.

    Awaiting raises `StepFailedError` if the step failed for good. A step
    also composes as a pipeline: ``step.bind(lambda v: ctx.step(...))`` and
    ``step.map(f)`` are steps, and `result` is the step as a ``FutureResult``.
    Steps run one at a time, in the order they are awaited.
    """

    __slots__ = ("_start",)

    def __init__(self, start: Callable[[], Coroutine[Any, Any, T]]) -> None:
        self._start = start

    def __await__(self) -> Generator[Any, None, T]:
        return self._start().__await__()

    def _begin(self) -> Coroutine[Any, Any, T]:
        """The step's run, a coroutine not awaited yet (what `map`, `bind` and `result` run)."""
        return self._start()

    def map(self, fn: Callable[[T], U]) -> Step[U]:
        """A step whose result is ``fn(result)`` (``fn`` is not recorded: keep it pure)."""
        start = self._begin

        async def run() -> U:
            return fn(await start())

        return Step(run)

    def bind(self, fn: Callable[[T], Step[U]]) -> Step[U]:
        """A step that runs this one, then the step ``fn(result)`` returns."""
        start = self._begin

        async def run() -> U:
            return await fn(await start())

        return Step(run)

    def result(self) -> FutureResult[T, StepFailedError]:
        """This step as a ``FutureResult``: a failed step is an ``IOFailure(StepFailedError)``."""
        start = self._begin

        async def run() -> Result[T, StepFailedError]:
            try:
                return Success(await start())
            except StepFailedError as exc:
                return Failure(exc)

        return FutureResult(run())


class _CallStep(Step[T]):
    """The `Step` ``ctx.step`` makes: its call's arguments in slots, run by `Run.step` when
    awaited, where a `Step` of a ``partial`` built a bound method, the partial and its tuple
    per step and called through both."""

    __slots__ = ("_args", "_fn", "_name", "_result", "_retry", "_run")

    def __init__(
        self, run: Run, name: str, fn: Callable[..., object], args: tuple[Any, ...], retry: Retry | None, result: Any
    ) -> None:
        self._run, self._name, self._fn, self._args, self._retry, self._result = run, name, fn, args, retry, result

    def __await__(self) -> Generator[Any, None, T]:
        # `_begin`'s coroutine, made here: one call fewer per step.
        coroutine: Coroutine[Any, Any, T] = self._run.step(self._name, self._fn, self._args, self._retry, self._result)
        return coroutine.__await__()

    def _begin(self) -> Coroutine[Any, Any, T]:
        coroutine: Coroutine[Any, Any, T] = self._run.step(self._name, self._fn, self._args, self._retry, self._result)
        return coroutine


class TimedOut(msgspec.Struct, frozen=True):
    """What ``ctx.wait_for_signal`` returns when its timeout passed before a signal came.

    Attributes:
        signal: The signal's name.
        deadline: When the wait gave up, aware UTC.
    """

    signal: str
    deadline: datetime


# -- the run ------------------------------------------------------------------------------


class _Stop(RunSignal):
    """Ends the body at a ctx call: the workflow suspends, diverged or lost its storage.

    A `BaseException`, so a user's ``except Exception`` does not swallow it;
    the run also records why it stopped, so even a swallowed one ends the run.
    """


StopKind = Literal["suspend", "diverged", "storage"]


@dataclass(slots=True, eq=False)
class Run:
    """One run (replay, then new calls) of one workflow instance."""

    handler: WorkflowHandler[Any, Any, Any]
    record: InstanceRecord
    log: StepLog
    events: list[TrackedEvent]
    position: int = 0
    stop: StopKind | None = None
    stop_error: JobError | None = None
    suspend_status: WorkflowStatusName = "running"
    suspend_alarm: SetAlarm | None = None
    in_call: bool = False
    current: str | None = None
    scope: trio.CancelScope | None = None
    cancel_requested: bool = False
    cancel_reason: str | None = None
    cancel_delivered: bool = False
    started: float = field(default_factory=time.perf_counter)
    #: How many steps the body made (``ctx.step``) and how many ran (were awaited), the last made
    #: one's name, and the names of those made while an earlier one had not run yet (`warn_unawaited`):
    #: counters per step, where a ``Step.__del__`` would cost a Python call.
    made: int = 0
    stepped: int = 0
    last_made: str = ""
    held: list[str] | None = None
    #: How many of the log's entries are finished steps (the record's ``execute_count``), kept as
    #: steps finish: counted from the log once per run (`WorkflowHandler._run`), not per write.
    steps_done: int = 0
    #: The code of the frame that awaits the body itself (`WorkflowHandler._run`, for an
    #: ``async def`` body), or ``None``: no step then looks whether the body returns its value.
    runner: CodeType | None = None
    #: Whether a step's write ended the workflow (completed: `ends_with`); the body returned after it.
    ended: bool = False

    # -- plumbing --

    def hold(self) -> None:
        """Keep the last made step's name: a step is made while it has not run (`warn_unawaited`)."""
        if self.held is None:
            self.held = []
        self.held.append(self.last_made)

    def warn_unawaited(self) -> None:
        """Warn (`RuntimeWarning`) of each step the body made but never awaited, as Python warns of
        a coroutine never awaited: such a step never ran. For a body that ended having made more
        steps than ran (``made > stepped``)."""
        ran = Counter(e.name for e in self.log.entries[: self.position] if e.kind == "step")
        for name, made in Counter([*(self.held or ()), self.last_made]).items():
            if made > ran[name]:
                warnings.warn(
                    f"ctx.step({name!r}) of workflow {self.handler.job.name!r} instance {self.record.instance_id!r}"
                    " was never awaited: the step did not run (await it, or do not make it)",
                    RuntimeWarning,
                    stacklevel=1,
                )

    @property
    def env(self) -> Env:
        return self.handler.env

    def halt(self, kind: StopKind, error: JobError | None = None) -> NoReturn:
        if self.stop is None:
            self.stop, self.stop_error = kind, error
        raise _Stop()

    def check_open(self) -> None:
        if self.stop is not None:
            raise _Stop()  # the body swallowed the stop and called again

    def event(self, type: str, **data: Any) -> None:
        env = self.handler.env
        if env.tracking:  # no tracker listens: no event is built
            self.events.append(env.event(type, self.record.key, KIND, self.handler.job.name, **data))

    def stage(self, status: WorkflowStatusName, now: int | None = None) -> list[TrackedEvent]:
        """Put the log, `status` and the count of finished steps on the record, stamped `now` (a
        clock reading the caller took; default now), and hand over the events so far: what
        `save` writes and emits after its commit."""
        record = self.record
        record.data = encoder.encode(self.log)
        record.status = status
        record.execute_count = self.steps_done
        record.updated_at = self.handler.env.clock.now_ms() if now is None else now
        events, self.events = self.events, []
        return events

    async def save(
        self, status: WorkflowStatusName, alarm: SetAlarm | ClearAlarm | None, now: int | None = None
    ) -> None:
        """Commit the log with `status` and the events so far, stamped `now` (a clock reading the
        caller took; default now). Raises `StorageError`."""
        events = self.stage(status, now)
        record, handler = self.record, self.handler
        if alarm is not None and not isinstance(alarm, ClearAlarm):
            await handler.commit(Checkin(key=record.key, record=record, alarm=alarm), events)
            return
        checkpointer = handler.checkpointer
        if checkpointer is None:
            await handler.checkpoint(record, events, clear_alarm=alarm is not None)
            return
        # `WorkflowHandler.checkpoint`'s common case, one coroutine fewer per write.
        env = handler.env
        handler.fresh.pop(record.key, None)
        try:
            await checkpointer.checkpoint_instance(record, env.leases.owner, alarm is not None)
        except LeaseLostError:
            env.leases.lost(record.key)  # take it afresh next time
            raise
        if events:
            env.emit(events)

    def ends_with(self, result: object, now: int) -> bool:
        """Whether the step that gives `result` (its checkpoint not written yet) also ends the
        workflow: the body returns `result` as soon as the step gives it, nothing of its own run
        in between (``return await ctx.step(...)``, through any coroutines that each return what
        they await at once: their code says so, `_returns_at_once`), as its last call (no entry
        after it to replay, no step made and not awaited), not cancelled, not a child (whose end
        tells its parent), and `result` can be stored as the workflow's result. Then the
        completion is put in the log and its event in the events (the caller writes both with the
        step's checkpoint, the alarm cleared) and `ended` is set once that write is committed.
        Anything else: ``False``, nothing changed, and the end is a write of its own as ever."""
        log = self.log
        if (
            self.runner is None
            or self.position != len(log.entries)
            or self.made != self.stepped
            or self.cancel_requested
            or self.cancel_delivered
            or log.parent is not None
        ):
            return False
        # The frames from the body's up to the run's, each at its await of the next: this
        # function's caller is `step`, whose caller awaits it.
        frame: FrameType | None = sys._getframe(2)
        for _ in range(_MAX_RETURNING_FRAMES):
            if frame is None:
                return False
            code = frame.f_code
            if code is self.runner:
                break
            at = (code, frame.f_lasti)
            returns = _returning.get(at)
            if returns is None:
                returns = _returning[at] = _returns_at_once(code, frame.f_lasti)
            if not returns:
                return False
            frame = frame.f_back
        else:
            return False
        handler = self.handler
        raw = handler.result_of(result)
        if isinstance(raw, ValidationError):
            return False  # the body's end fails it, in a write of its own
        log.result = msgspec.Raw(raw)
        handler.ending(self, "completed", None, now)
        return True

    async def checkpoint(self) -> None:
        """`save` from inside the body: a failure stops the run (nothing after it may run)."""
        try:
            await self.save("running", None)
        except StorageError as exc:
            self.halt("storage", exc)

    def in_log(self) -> bool:
        """Whether the call at this position is in the log (this run replays it), before reading it."""
        return self.position < len(self.log.entries)

    def next_entry(self, kind: EntryKind, name: str) -> Entry | None:
        """The recorded entry at this call's position (``None``: a new call); checks it matches."""
        if self.stop is not None:
            raise _Stop()  # the body swallowed the stop and called again (`check_open`)
        if type(name) is not str or name not in good_names:  # a name seen before needs no call
            check_call_name(name, kind)
        position = self.position
        self.position += 1
        entries = self.log.entries
        if position >= len(entries):
            return None
        entry = entries[position]
        if entry.kind != kind or entry.name != name:
            error = NonDeterminismError(
                self.handler.job.name, position, describe_call(entry.kind, entry.name), describe_call(kind, name)
            )
            self.halt("diverged", error)
        if entry.cancelled:  # a replay raises the cancel where it reached the body
            self.cancel_delivered = True
            raise self.cancelled()
        return entry

    def append(self, entry: Entry) -> Entry:
        """Record the new call `entry` at the end of the log (committed with the next checkpoint)."""
        self.log.entries.append(entry)
        return entry

    def cancelled(self) -> WorkflowCancelledError:
        return WorkflowCancelledError(self.handler.job.name, self.record.instance_id, self.cancel_reason)

    def deliver_cancel(self, entry: Entry) -> NoReturn:
        # Settled for replay (done) but not finished: status reports it not done, not counted.
        entry.done, entry.cancelled = True, True
        self.cancel_delivered = True
        raise self.cancelled()

    def cancel_pending(self) -> bool:
        return self.cancel_requested and not self.cancel_delivered

    def suspend(self, status: WorkflowStatusName, alarm: SetAlarm | None) -> NoReturn:
        self.suspend_status, self.suspend_alarm = status, alarm
        self.halt("suspend")

    def guard(self, call: str, name: str) -> None:
        """Refuse `call` (``ctx.step`` named `name`, ...) while another call of this run is in flight."""
        if self.in_call:
            raise ValidationError(
                f"{call}({name!r}) was called while another call of this workflow was in flight; "
                "a workflow's calls run one at a time (await each before the next)"
            )

    # -- the calls --

    async def step(
        self, name: str, fn: Callable[..., object], args: tuple[Any, ...], retry: Retry | None, tp: Any
    ) -> Any:
        self.stepped += 1  # awaited: `warn_unawaited` counts it, whether the guard lets it run or not
        if self.in_call:
            self.guard("ctx.step", name)
        # Every argument is checked before the log is consulted, so a replay refuses what the
        # first run refused, at the same call, and a refused call takes no position in the log.
        if type(name) is not str or name not in good_names:
            check_call_name(name, "step")
        if tp is _UNSET:  # `_result_type`'s cache, inline: every step passes here
            try:
                result_type = _step_types.get(fn, _UNSET)
            except TypeError:  # an unhashable callable is never cached
                result_type = _UNSET
        else:
            result_type = _UNSET
        if result_type is _UNSET:
            result_type = _result_type(fn, tp, name)
        entries = self.log.entries
        if self.stop is None and self.position == len(entries):
            # `next_entry`'s new call, inline (the name is checked above): the log's next entry.
            self.position += 1
            entry = Entry(kind="step", name=name, done=False)
            entries.append(entry)
        else:
            found = self.next_entry("step", name)
            if found is not None and found.done:
                return self.replayed_step(found, result_type)
            if found is None:
                found = Entry(kind="step", name=name, done=False)
                entries.append(found)
            entry = found
        if self.cancel_requested and not self.cancel_delivered:
            self.deliver_cancel(entry)
        env = self.handler.env
        if entry.until is not None and entry.until > env.now_ms():
            # Woken early (a signal or a restart) before this step's retry is due.
            self.suspend("running", SetAlarm(entry.until, RETRY))
        attempt = entry.attempts + 1
        # In flight until its result (or failure) is committed: the checkpoint awaits too, so a
        # synchronous step, which runs with no await of its own, is still refused a second call
        # made meanwhile (`guard`).
        self.in_call, self.current = True, name
        try:
            started = time.perf_counter()
            scope = None
            produced: object = None
            try:
                # `begin_body`, inline: a plain value (a synchronous step's) is taken as it is,
                # without a `Result` built around it and taken apart again.
                try:
                    value = fn(*args)
                except BaseException as exc:
                    outcome: Result[object, JobError] | Pending | None = Failure(body_failure(exc))
                else:
                    if is_plain(value):
                        outcome, produced = None, value
                    else:
                        outcome = begun(value)
                if isinstance(outcome, Pending):
                    # The step's own scope, which a cancel of the workflow cancels: only for what
                    # `fn` gave to await (a synchronous step's value is taken as it comes).
                    scope = self.scope = trio.CancelScope()
                    outcome = await finish_body(outcome, env.services, "the job body", scope)
            finally:
                self.scope, self.current = None, None
            duration_ms = round((time.perf_counter() - started) * 1000, 3)
            if scope is not None and scope.cancelled_caught:
                entry.attempts = attempt
                self.deliver_cancel(entry)
            now = env.clock.now_ms()
            entry.attempts, entry.at, entry.duration_ms = attempt, now, duration_ms
            match outcome:
                case None:
                    pass
                case Success(produced):
                    pass
                case Failure(error):
                    await self.step_failed(entry, error, retry if retry is not None else self.handler.job.retry)
                    return self.replayed_step(entry, result_type)
            copied = encoded_copy(result_type, produced, what=f"result of step {name!r}", limit=env.max_payload_bytes)
            if isinstance(copied, ValidationError):
                # A result that cannot be stored is a bug in the step or its type, not a failure to
                # retry: the step's outcome, recorded as such, so a replay raises the same error
                # without running the step again (`replayed_step`).
                entry.invalid_result = True
                await self.step_failed(entry, copied, None)
                return self.replayed_step(entry, result_type)
            raw, result = copied
            entry.done, entry.until, entry.error = True, None, None
            entry.value = msgspec.Raw(raw)
            self.steps_done += 1
            if env.tracking:
                self.events.append(
                    env.event(
                        "workflow.step_completed",
                        self.record.key,
                        KIND,
                        self.handler.job.name,
                        now,
                        step=name,
                        attempt=attempt,
                        duration_ms=duration_ms,
                    )
                )
            # `checkpoint`, inline (one coroutine fewer for each write to pass through, twice):
            # the result is committed before the step returns. A body that returns it at once
            # is completed by the same write (`ends_with`), its alarm cleared.
            ends = self.runner is not None and self.ends_with(result, now)
            events = self.stage("completed" if ends else "running", now)
            handler = self.handler
            checkpointer = handler.checkpointer
            try:
                if checkpointer is None:
                    await handler.checkpoint(self.record, events, clear_alarm=ends)
                else:
                    handler.fresh.pop(self.record.key, None)
                    await checkpointer.checkpoint_instance(self.record, env.leases.owner, ends)
                    if events:
                        env.emit(events)
            except StorageError as exc:
                if checkpointer is not None and isinstance(exc, LeaseLostError):
                    env.leases.lost(self.record.key)  # take it afresh next time
                self.halt("storage", exc)
            self.ended = ends
            return result
        finally:
            self.in_call = False

    async def step_failed(self, entry: Entry, error: JobError, policy: Retry | None) -> None:
        """Record the failed attempt of step `entry`: suspend until its retry, or checkpoint it failed for good."""
        env, name, attempt = self.env, entry.name, entry.attempts
        log = self.handler.step_log(self.record, name, attempt)
        if policy is not None and policy.should_retry(error) and attempt < policy.max_attempts:
            delay = env.retries.delay_before(policy, attempt + 1)
            # Due at the latest at `LATEST_MS`, as every retry is (`_execution`): a later one has
            # no datetime to be told in (its event, `to_datetime` past the year 9999).
            entry.until = min(env.now_ms() + max(0, to_ms(delay)), LATEST_MS)
            entry.error = ErrorInfo.of(error)
            log.warning(
                "step failed on attempt %d of %d, retrying in %s: %s",
                attempt,
                policy.max_attempts,
                delay,
                printable(error.message),
            )
            retry_at = utc_isoformat(entry.until)
            self.event(
                "workflow.step_failed", **failed_step_data(name, attempt, error, will_retry=True), retry_at=retry_at
            )
            self.suspend("running", SetAlarm(entry.until, RETRY))
        entry.done, entry.until, entry.error = True, None, ErrorInfo.of(error)
        self.steps_done += 1
        log.error("step failed for good: %s", printable(error.message))
        self.event("workflow.step_failed", **failed_step_data(name, attempt, error, will_retry=False))
        await self.checkpoint()

    def replayed_step(self, entry: Entry, tp: Any) -> Any:
        if entry.error is not None:
            if entry.invalid_result:
                raise ValidationError(entry.error.message)
            raise StepFailedError(entry.name, entry.attempts, entry.error.tag, entry.error.message)
        return unwrap_or_raise(decode(tp, bytes(entry.value), what=f"result of step {entry.name!r}"))

    async def sleep(self, when: object, name: str) -> None:
        self.guard("ctx.sleep", name)
        now = self.env.now_ms()
        # Before the log: a replay refuses a bad `when` too (its limit was judged when first made).
        wake = resolved_when(when, now, "ctx.sleep()", replay=self.in_log())
        entry = self.next_entry("sleep", name)
        if entry is not None and entry.done:
            return
        if entry is None:
            entry = self.append(Entry(kind="sleep", name=name, done=False, until=wake, at=now))
        if self.cancel_pending():
            self.deliver_cancel(entry)
        assert entry.until is not None
        if entry.until <= now:
            entry.done = True
            return
        self.event("workflow.sleeping", step=name, wake_at=utc_isoformat(entry.until))
        self.suspend("sleeping", SetAlarm(entry.until, WAKE))

    async def wait_for_signal(self, name: str, tp: Any, give_up: object) -> Any:
        self.guard("ctx.wait_for_signal", name)
        now = self.env.now_ms()
        # Before the log: a replay refuses a bad timeout too (its limit was judged when first made).
        deadline = (
            None
            if give_up is None
            else resolved_when(give_up, now, "ctx.wait_for_signal(timeout=)", replay=self.in_log())
        )
        entry = self.next_entry("signal", name)
        if entry is None or not entry.done:
            if entry is None:
                entry = self.append(
                    Entry(kind="signal", name=name, done=False, until=deadline, at=now, payload_type=type_ref(tp))
                )
            if self.cancel_pending():
                self.deliver_cancel(entry)
            taken = self.take_signal(name, tp)
            if taken is not None:
                entry.done, entry.value, entry.at = True, taken[0], now
                return taken[1]
            if entry.until is not None and entry.until <= now:
                entry.done, entry.timed_out = True, True
            else:
                self.event(
                    "workflow.waiting",
                    signal=name,
                    timeout_at=None if entry.until is None else utc_isoformat(entry.until),
                )
                alarm = None if entry.until is None else SetAlarm(entry.until, TIMEOUT)
                self.suspend("waiting", alarm)
        if entry.timed_out:
            assert entry.until is not None
            return TimedOut(name, to_datetime(entry.until))
        payload = decode(tp, bytes(entry.value), what=f"payload of signal {name!r}")
        return unwrap_or_raise(payload)

    def take_signal(self, name: str, tp: Any) -> tuple[msgspec.Raw, Any] | None:
        """The first kept signal `name` whose payload decodes as `tp`: taken from the inbox, with
        its value. One sent before it that does not decode is dropped, not consumed: logged, and
        tracked as ``workflow.signal_rejected`` (the wait goes on)."""
        inbox = self.log.inbox
        at = 0
        while at < len(inbox):
            signal = inbox[at]
            if signal.name != name:
                at += 1
                continue
            del inbox[at]
            match signal_payload(tp, bytes(signal.payload), name):
                case Success(value):
                    return signal.payload, value
                case Failure(refused):
                    self.env.logger.warning(
                        "workflow %s: dropped a signal its wait cannot take: %s",
                        printable(self.record.key),
                        printable(refused.message),
                    )
                    self.event("workflow.signal_rejected", signal=name, error=error_data(refused))
        return None

    async def await_job(self, name: str, job_id: str, client: Client, poll_ms: int) -> Outcome:
        """Wait for the job `job_id` to end: look at its row now, else suspend until the next look."""
        self.guard("ctx.job", name)
        entry = self.next_entry("job", name)
        env = self.env
        now = env.now_ms()
        if entry is None:
            entry = self.append(Entry(kind="job", name=name, done=False, at=now))
        if not entry.done:
            self.in_call, self.current = True, name
            try:
                if self.cancel_pending():
                    # The job is cancelled with the workflow (pending: it never runs; running: its scope).
                    cancelled = await client.jobs.cancel(job_id)
                    if not is_successful(cancelled):  # it ends as it may; the body is cancelled
                        env.logger.warning(
                            "workflow %s: could not cancel its job %s", printable(self.record.key), job_id
                        )
                looked = await client.jobs.status(job_id)
            finally:
                self.in_call, self.current = False, None
            if self.cancel_pending():
                self.deliver_cancel(entry)
            info = unsafe_perform_io(looked.value_or(None))
            if info is not None and info.status in JOB_FINAL:
                error = None if info.error is None else ErrorInfo(info.error.tag, info.error.message)
                result = msgspec.Raw(encoder.encode(info.result)) if info.status == "completed" else NULL
                entry.done, entry.until, entry.at = True, None, now
                entry.value = msgspec.Raw(encoder.encode(Outcome(info.status, result, error)))
            else:
                if info is None:
                    env.logger.warning(
                        "workflow %s: could not look at its job %s (%s); looking again later",
                        printable(self.record.key),
                        job_id,
                        looked,
                    )
                entry.attempts += 1
                entry.until = now + min(poll_ms, FIRST_JOB_LOOK_MS << min(entry.attempts - 1, 30))
                self.suspend("waiting", SetAlarm(entry.until, JOB_LOOK))
        return outcome_decoder.decode(bytes(entry.value))

    def recorded(self, kind: EntryKind, make: Callable[[], object], tp: Any) -> Any:
        """A value recorded at its first run (time, random, id); committed with the next checkpoint."""
        if self.in_call:  # its position would be the scheduler's pick
            self.guard(f"ctx.{kind}", kind)
        entry = self.next_entry(kind, kind)
        if entry is None:
            entry = self.append(Entry(kind=kind, name=kind, value=msgspec.Raw(encoder.encode(make()))))
        return decoder(tp).decode(bytes(entry.value))


# -- definition and context -----------------------------------------------------------------


class WorkflowContext(BaseContext[D_co]):
    """The context of a workflow's body: steps, durable sleeps, signals, recorded values.

    Every call is recorded in the workflow's log at its position and replayed
    from there when the body runs again; see the module's documentation.

    Attributes:
        instance_id: The workflow's id.
        job_name: The workflow definition's name.
        run_count: Which run of the body this is (1 for the first; each wake-up
            replays the body from the top).
    """

    __slots__ = ("_run", "run_count")

    def __init__(self, env: Env, job_name: str, instance_id: str, log: JobLog, run: Run, run_count: int) -> None:
        super().__init__(env, job_name, instance_id, log, run.record.tenant_id)
        self._run = run
        self.run_count = run_count

    @property
    def is_replaying(self) -> bool:
        """Whether the next call will be answered from the log (nothing runs)."""
        return self._run.position < len(self._run.log.entries)

    # One overload per form of `djobs._bodies.Returns` (mypy cannot infer `T` from the union),
    # the containers before the bare value, so `T` is the value a step's await gives.
    @overload
    def step(
        self,
        name: str,
        fn: Callable[[*Ts], Result[T, object]],
        *args: *Ts,
        retry: Retry | None = None,
        result: type[T] = ...,
    ) -> Step[T]: ...
    @overload
    def step(
        self,
        name: str,
        fn: Callable[[*Ts], IOResult[T, Any]],
        *args: *Ts,
        retry: Retry | None = None,
        result: type[T] = ...,
    ) -> Step[T]: ...
    @overload
    def step(
        self,
        name: str,
        fn: Callable[[*Ts], FutureResult[T, object]],
        *args: *Ts,
        retry: Retry | None = None,
        result: type[T] = ...,
    ) -> Step[T]: ...
    @overload
    def step(
        self,
        name: str,
        fn: Callable[[*Ts], RequiresContext[T, Any]],
        *args: *Ts,
        retry: Retry | None = None,
        result: type[T] = ...,
    ) -> Step[T]: ...
    @overload
    def step(
        self,
        name: str,
        fn: Callable[[*Ts], RequiresContextResult[T, Any, Any]],
        *args: *Ts,
        retry: Retry | None = None,
        result: type[T] = ...,
    ) -> Step[T]: ...
    @overload
    def step(
        self,
        name: str,
        fn: Callable[[*Ts], RequiresContextIOResult[T, Any, Any]],
        *args: *Ts,
        retry: Retry | None = None,
        result: type[T] = ...,
    ) -> Step[T]: ...
    @overload
    def step(
        self,
        name: str,
        fn: Callable[[*Ts], RequiresContextFutureResult[T, Any, Any]],
        *args: *Ts,
        retry: Retry | None = None,
        result: type[T] = ...,
    ) -> Step[T]: ...
    @overload
    def step(
        self,
        name: str,
        fn: Callable[[*Ts], Awaitable[Result[T, object]]],
        *args: *Ts,
        retry: Retry | None = None,
        result: type[T] = ...,
    ) -> Step[T]: ...
    @overload
    def step(
        self,
        name: str,
        fn: Callable[[*Ts], Awaitable[IOResult[T, Any]]],
        *args: *Ts,
        retry: Retry | None = None,
        result: type[T] = ...,
    ) -> Step[T]: ...
    @overload
    def step(
        self,
        name: str,
        fn: Callable[[*Ts], Awaitable[T]],
        *args: *Ts,
        retry: Retry | None = None,
        result: type[T] = ...,
    ) -> Step[T]: ...
    @overload
    def step(
        self,
        name: str,
        fn: Callable[[*Ts], T],
        *args: *Ts,
        retry: Retry | None = None,
        result: type[T] = ...,
    ) -> Step[T]: ...
    def step(
        self,
        name: str,
        fn: Callable[[*Ts], object],
        *args: *Ts,
        retry: Retry | None = None,
        result: Any = _UNSET,
    ) -> Step[Any]:
        """Run ``fn(*args)`` once, durably: its result is recorded when it succeeds.

        Args:
            name: The step's name, unique enough to read in ``djobs workflows
                show``; a replay checks it against the log.
            fn: A plain or ``async`` function, or one returning a ``Result``,
                ``FutureResult`` or ``RequiresContextFutureResult`` (called with
                the engine's services), like a job body.
            args: Passed to `fn`.
            retry: How a failure is retried (durably: the retry is an alarm);
                default the workflow's ``retry``; ``None`` for both: no retry.
            result: The type the result is stored as; default `fn`'s return
                annotation (``Result[T, E]`` and the like give ``T``).

        Raises:
            ValidationError: `retry` is not a `Retry`, or `fn` is not callable.

        Returns:
            A `Step`: await it for the result. Awaiting raises
            `StepFailedError` when the step failed for good (the body may
            catch it and compensate), `ValidationError` when the name is
            malformed or the result type is unknown or cannot be stored
            (checked before the log is consulted: the step does not run and
            takes no place in the log) or when the result does not fit its
            type (recorded as the step's outcome and not retried: a replay
            raises it again without running `fn`), and
            `WorkflowCancelledError` where a cancel reaches the body.
        """
        if retry is not None and not isinstance(retry, Retry):
            raise ValidationError(f"ctx.step({name!r}): retry must be a djobs.Retry or None, got {short.repr(retry)}")
        if not callable(fn):
            raise ValidationError(f"ctx.step({name!r}): {short.repr(fn)} is not callable")
        run = self._run
        if run.made != run.stepped:  # a step made earlier has not run yet (rare): keep its name
            run.hold()
        run.made += 1
        run.last_made = name
        return _CallStep(run, name, fn, args, retry, result)

    async def sleep(self, when: When, *, name: str = "sleep") -> None:
        """Suspend the workflow until `when`, durably: no task, lease or memory is held.

        Args:
            when: A `timedelta` or a duration string (``"1 day"``) from the
                first time this sleep runs, or an aware `datetime`. The wake-up
                time is recorded, so a replay does not start the sleep again.
            name: Recorded with the sleep (a replay checks it).

        Raises:
            ValidationError: `when` is not one of those forms, or `name` is
                malformed: checked before the log is consulted, so a replay
                raises it at the same call (and the call takes no place in the log).
        """
        await self._run.sleep(when, name)

    async def wait_for_signal(
        self,
        name: str,
        type: type[T],
        *,
        timeout: When | None = None,  # noqa: ASYNC109  # a durable timeout, recorded in the log
    ) -> T | TimedOut:
        """Wait for the signal `name` (``client.signal(id, name, payload)``), durably.

        A signal sent before the wait is kept and delivered here; signals of
        one name are delivered one per wait, in the order they were sent.

        Args:
            name: The signal's name.
            type: The payload's type; the payload is decoded as it.
            timeout: Give up after this long (or at this aware time); ``None`` waits for ever.

        Returns:
            The payload, or `TimedOut` if the timeout passed first.

        Raises:
            ValidationError: The payload does not match `type`; or `type` cannot
                be stored, `timeout` or `name` is malformed (checked before the
                log is consulted, so a replay raises it at the same call).
        """
        refused = _type_problem(type)
        if refused is not None:
            decodes, problem = refused
            if not decodes:
                raise ValidationError(f"signal {name!r}: payload type {type!r} cannot be decoded: {problem}")
            raise ValidationError(f"signal {name!r}: payload type {type_name(type)!r} cannot be stored: {problem}")
        value: T | TimedOut = await self._run.wait_for_signal(name, type, timeout)
        return value

    async def child(self, workflow: Workflow[CI, CR, Any], id: str, input: CI) -> CR:
        """Start the workflow `workflow` as a child with `id` and `input`, and wait for its result, durably.

        Two recorded calls: a step that starts the child (in this workflow's
        tenant), then a wait for the signal the child sends when it ends
        (``child <name>:<id>``), which is kept if it comes first. The child
        runs on its own, like any workflow (its own steps, sleeps, signals).

        The arguments are checked at the call, before the log is consulted,
        on the first run and on every replay alike: a bad one raises there
        and records nothing.

        Returns:
            The child's result.

        Raises:
            ChildWorkflowError: The child failed or was cancelled.
            JobNotFoundError: `workflow` is not registered with this engine.
            ValidationError: `workflow` is not a `Workflow`, `id` is not a
                valid id (or, with the workflow's name, longer than a recorded
                call's name may be: 200 characters), or `input` does not match
                the workflow's ``input`` type.
            StepFailedError: The child could not be started: the id is
                another workflow's (not this parent's child), or the storage
                failed (after the workflow's retries).
        """
        if getattr(workflow, "kind", None) != KIND:
            raise _not_a("ctx.child", workflow, "djobs.Workflow", "ctx.job for a one-off job")
        run = self._run
        target = run.handler.runtime.target_for(instance_key(KIND, workflow.name, "x"))
        if getattr(target, "job", None) is not workflow:  # only `workflow`'s own handler holds it
            raise JobNotFoundError(workflow.name)
        call = f"ctx.child({workflow.name!r})"
        checked = check_id(id)
        if not isinstance(checked, Success):
            raise ValidationError(f"{call}: {checked.failure().message}")
        label = f"{workflow.name}:{id}"
        # The child's key, and beside it its parent's (the event id of the child's outcome, sent to the parent).
        too_long = key_problem(run.record.key + instance_key(KIND, workflow.name, id, run.record.tenant_id), _FAMILY)
        if too_long is not None:
            raise ValidationError(f"{call}: {too_long.message}")
        if len(label) + len(_CHILD_STEP) > MAX_CALL_NAME_LENGTH:
            raise ValidationError(
                f"{call}: the id is {len(id)} characters long, too long for a child's: the parent's log "
                f"names the call '{_CHILD_STEP}{workflow.name}:<id>', in at most {MAX_CALL_NAME_LENGTH} "
                f"characters, so this workflow's child ids may be at most "
                f"{MAX_CALL_NAME_LENGTH - len(_CHILD_STEP) - len(workflow.name) - 1} characters long"
            )
        bad_input = encoded(
            workflow.input, input, what=f"input of workflow {workflow.name!r}", limit=self._env.max_payload_bytes
        )
        if isinstance(bad_input, ValidationError):
            raise bad_input
        # The parent's tenant, whichever handler runs it.
        handler = cast("WorkflowHandler[CI, CR, Any]", target).scoped(run.record.tenant_id)
        parent = run.record.key

        async def start() -> Result[bool, JobError]:
            return await handler.start_child(id, input, parent)

        await self.step(f"{_CHILD_STEP}{label}", start, result=bool)
        outcome = await self.wait_for_signal(f"child {label}", Outcome)
        assert not isinstance(outcome, TimedOut)  # no timeout
        result: CR = outcome.value(workflow.result, ChildWorkflowError, label)
        return result

    async def job(self, job: Job[JP, JR, Any], params: JP, *, poll: DurationLike = "10 seconds") -> JR:
        """Enqueue the one-off job `job` with `params` and wait for its result, durably.

        Two recorded calls: a step that enqueues the job (in this workflow's
        tenant) under an idempotency key made of the workflow and this call's
        position, so a step run again after a crash finds the job it enqueued
        instead of enqueueing another; then a wait for the job's row to end.
        While the job is pending or running the workflow is ``waiting`` and
        holds no task and no lease: an alarm wakes it to look at the row
        again, 0.1 s after the enqueue, then at doubling intervals up to
        `poll`. A cancel of the workflow that reaches this wait cancels the
        job too.

        Args:
            job: A `Job` registered with this engine (the workers that run it
                may be other processes on the same database).
            params: Its params.
            poll: The longest wait between two looks at the job's row (a
                duration; default 10 seconds): the most the workflow may lag
                behind the job's end.

        The arguments are checked at the call, before the log is consulted,
        on the first run and on every replay alike: a bad one raises there
        and records nothing.

        Returns:
            The job's result, as its ``result`` type.

        Raises:
            ChildJobError: The job failed (its retries spent) or was cancelled.
            JobNotFoundError: `job` is not registered with this engine.
            ValidationError: `job` is not a `Job`, its name is longer than
                188 characters (the log names the call ``enqueue job <name>``,
                in at most 200), `params` do not match its ``params`` type,
                or `poll` is not a duration from 100 ms to 36,525 days.
            StepFailedError: The job could not be enqueued: the storage
                failed, or the workflow's tenant is refused (after the
                workflow's retries).
        """
        if getattr(job, "kind", None) != "job":
            raise _not_a("ctx.job", job, "djobs.Job", "ctx.child for a workflow")
        if len(job.name) > MAX_WAITED_JOB_NAME:
            raise ValidationError(
                f"ctx.job({short.repr(job.name)}): the job's name is {len(job.name)} characters long, too long for "
                f"ctx.job: the workflow's log names the call '{_JOB_STEP}<job name>', in at most "
                f"{MAX_CALL_NAME_LENGTH} characters, so a job a workflow waits for may have a name of at most "
                f"{MAX_WAITED_JOB_NAME} characters"
            )
        poll_ms = parse_duration(poll, what="poll").map(to_ms).value_or(0)
        if poll_ms < FIRST_JOB_LOOK_MS:
            raise ValidationError(
                f"ctx.job({job.name!r}): poll must be a duration from 100 ms to 36525 days (100 years), "
                f"got {short.repr(poll)}"
            )
        run = self._run
        client = self.client
        jobs = client.job(job)
        if jobs._handler is None:  # as its enqueue would say, but at the call, not as a failed step
            raise JobNotFoundError(job.name, jobs._missing)
        bad_params = encoded(job.params, params, what=f"params of job {job.name!r}", limit=self._env.max_payload_bytes)
        if isinstance(bad_params, ValidationError):
            raise bad_params
        # Per job name and tenant, as idempotency keys are; the position makes each call its own.
        idempotency_key = f"workflow:{self.job_name}:{self.instance_id}:{run.position}"
        tenant = run.record.tenant_id
        if len(idempotency_key) > MAX_TEXT or key_problem(f"{tenant or ''}{job.name}{idempotency_key}", ""):
            # A long instance id: the key's limits (512 characters, and the bytes of what it is
            # stored with) are not the id's. A digest of the workflow, under a prefix no key
            # above has, stays the same on every replay.
            digest = hashlib.sha256(f"{self.job_name}:{self.instance_id}".encode()).hexdigest()
            idempotency_key = f"workflow-digest:{digest}:{run.position}"
            # Still too long with the job's name and the tenant id (both of wide characters):
            # refused here, as the enqueue would refuse it.
            too_long = key_problem(f"{tenant or ''}{job.name}{idempotency_key}", _JOB_KEY_FIELDS)
            if too_long is not None:
                raise ValidationError(f"ctx.job({short.repr(job.name)}): {too_long.message}")

        def enqueue() -> FutureResult[str, JobError]:
            return jobs.later(params, idempotency_key=idempotency_key)

        job_id: str = await self.step(f"{_JOB_STEP}{job.name}", enqueue, result=str)
        label = f"{job.name}:{job_id}"
        outcome = await run.await_job(_waited_job_call(label, job.name, job_id), job_id, client, poll_ms)
        return outcome.value(job.result, ChildJobError, label)

    def now(self) -> datetime:
        """The current time, recorded: a replay gets the time of the first run.

        Raises:
            ValidationError: Called while another call of this workflow is in flight.
            SchedulerError: The clock read after the year 9999 (a test's virtual
                clock slept past it): no datetime holds its time.
        """
        return to_datetime(self._run.recorded("now", self._env.now_ms, int))

    def random(self) -> float:
        """A random float in [0, 1), recorded: a replay gets the same value.

        Raises:
            ValidationError: Called while another call of this workflow is in flight.
        """
        value: float = self._run.recorded("random", self._env.ids.random, float)
        return value

    def uuid(self) -> str:
        """A fresh UUID4 as text, recorded: a replay gets the same id.

        Raises:
            ValidationError: Called while another call of this workflow is in flight.
        """
        value: str = self._run.recorded("uuid", self._env.ids.uuid, str)
        return value
