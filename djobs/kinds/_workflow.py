"""Workflows: durable programs whose steps run once and whose sleeps survive restarts.

A workflow's body is an ordinary ``async def run(input, ctx)``. What it does
through its context is recorded, in order, in the workflow's *step log*:

- ``ctx.step(name, fn, *args)`` runs `fn` (any body form the execution
  service accepts) and stores its result in the same transaction that marks
  the step done;
- ``ctx.sleep(when)`` records its wake-up time and suspends the workflow
  (an alarm wakes it; nothing is held meanwhile);
- ``ctx.wait_for_signal(name, type, timeout=)`` consumes a signal sent with
  ``client.signal`` (kept if it came first) or suspends until one comes or
  the timeout passes;
- ``ctx.now()``, ``ctx.random()`` and ``ctx.uuid()`` record their values;
- ``ctx.child(workflow, id, input)`` starts a child workflow (a step) and
  waits for the signal it sends its parent when it ends;
- ``ctx.job(job, params)`` enqueues a one-off `Job` (a step, under an
  idempotency key made of the workflow and the call's position) and waits
  for its row to end, looking at it by alarm with a backoff.

Each time the workflow is woken (its start, a sleep's end, a signal, a
retry, a restart after a crash) the body runs again from the top, and every
call that is in the log returns what was recorded without running anything:
this *replay* is what makes a finished step run once, whichever process
resumes the workflow. A call whose kind or name differs from the log's entry
at its position fails the workflow with `NonDeterminismError`; recorded and
new results are never mixed.

The model is DBOS's (``operation_outputs`` keyed by the workflow and the
call's position, a name check on replay, sleeps that record their wake-up
time) and Temporal's (deterministic replay of a history), on djobs's
instances, alarms and leases: the log is stored in the workflow's instance
row, so a checkpoint is one `Checkin`, fenced by the instance lease like
every other kind's.
"""

from __future__ import annotations

import builtins
import contextlib
import reprlib
import time
import typing
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, NoReturn, TypeVar, cast

import msgspec
import trio
from returns.context import RequiresContextFutureResult
from returns.future import FutureResult
from returns.io import IOResult, IOSuccess
from returns.result import Failure, Result, Success
from returns.unsafe import unsafe_perform_io

from .._clock import to_datetime
from .._codec import decode, decoder, encode, encode_decoded
from .._context import BaseContext, D_co
from .._durations import DurationLike, parse_duration, to_ms
from .._errors import (
    DuplicateEventError,
    InstanceNotFoundError,
    InvalidStateError,
    JobError,
    JobNotFoundError,
    StorageError,
    ValidationError,
)
from .._execution import Checkout, Env, run_body, run_call
from .._input import check_text, clean_text, text_problem
from .._logging import JobLog, LoggingOption
from .._retry import Retry
from ..storage import (
    Alarm,
    CancelRequests,
    Checkin,
    ClearAlarm,
    InstanceCreator,
    InstanceRecord,
    LeaseLostError,
    SetAlarm,
    Storage,
)
from ..tracking import TrackedEvent
from ._common import D_contra, Definition, InstanceClient, TenantScoped, check_id, check_name, instance_key
from ._task import When, resolve_when

if TYPE_CHECKING:
    from .._client import Client
    from .._runtime import Runtime
    from ._job import Job

I = TypeVar("I")  # noqa: E741  # the input, as in the issue's Workflow[I, R, D]
R = TypeVar("R")
D = TypeVar("D")
T = TypeVar("T")
U = TypeVar("U")
CI = TypeVar("CI")
CR = TypeVar("CR")
JP = TypeVar("JP")
JR = TypeVar("JR")

KIND = "workflow"

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60

#: A workflow's status. ``running``: woken and replaying or running steps (or
#: waiting for a step's retry); ``sleeping``: in ``ctx.sleep``; ``waiting``: in
#: ``ctx.wait_for_signal``; the last three are final.
WorkflowStatusName = Literal["running", "sleeping", "waiting", "completed", "failed", "cancelled"]
_FINAL = ("completed", "failed", "cancelled")

# Alarm purposes: why a workflow is woken.
_RUN = "run"  # started, or a signal or cancel arrived
_WAKE = "wake"  # a sleep ended
_TIMEOUT = "timeout"  # a signal wait timed out
_RETRY = "retry"  # a failed step's next attempt is due
_TELL_PARENT = "tell_parent"  # an ended child workflow has yet to tell its parent
_JOB = "job"  # time to look at the job a ctx.job waits for again
#: The first look at a ctx.job's row comes this long after the enqueue; each later one
#: waits twice as long as the one before, up to the call's `poll` (milliseconds).
_FIRST_JOB_LOOK_MS = 100
_JOB_FINAL = ("completed", "failed", "cancelled")
#: How often a process reads the cancels other processes noted for the runs live in it.
CANCEL_POLL_SECONDS = 1.0

EntryKind = Literal["step", "sleep", "signal", "job", "now", "random", "uuid"]


# -- errors ----------------------------------------------------------------------------


class StepFailedError(JobError):
    """A step failed for good (its retries, if any, are spent): raised into the body at the step.

    The body may catch it and compensate (a saga), or let it fail the
    workflow. A replay raises the same error again from the log.

    Attributes:
        step: The step's name.
        attempts: How many times the step ran.
        error_tag: The ``tag`` of the error its last attempt failed with.
        error_message: That error's message.
    """

    tag = "step_failed"
    retryable = False

    def __init__(self, step: str, attempts: int, error_tag: str, error_message: str) -> None:
        super().__init__(f"step {step!r} failed after {attempts} attempt(s): {error_message}")
        self.step = step
        self.attempts = attempts
        self.error_tag = error_tag
        self.error_message = error_message

    def _fields(self) -> tuple[object, ...]:
        return (self.step, self.attempts, self.error_tag, self.error_message)


class NonDeterminismError(JobError):
    """A replay asked for something other than what the workflow's log recorded.

    The workflow's code changed while it was in flight in a way that moved,
    renamed, added or removed a recorded call before the point it reached.
    The workflow fails with this error; nothing new runs.

    Attributes:
        position: The 0-based position of the first divergent call in the log.
        recorded: What the log holds there (``"step 'charge'"``), or ``None``
            if the log ended and the body returned earlier than recorded.
        requested: What the code asked for there, or ``None`` if the body
            returned before reaching the recorded call.
    """

    tag = "non_determinism"
    retryable = False

    def __init__(self, workflow: str, position: int, recorded: str | None, requested: str | None) -> None:
        if requested is None:
            what = f"the body returned before reaching the recorded {recorded}"
        else:
            what = f"the code asked for {requested} where the log recorded {recorded}"
        super().__init__(
            f"workflow {workflow!r} diverged from its log at call #{position + 1}: {what}; "
            "an in-flight workflow must replay the same calls in the same order"
        )
        self.position = position
        self.recorded = recorded
        self.requested = requested

    def _fields(self) -> tuple[object, ...]:
        return (self.position, self.recorded, self.requested)


class WorkflowCancelledError(JobError):
    """Raised into the body where a cancel reached it (``client.cancel``).

    The body may catch it to run cleanup steps; the workflow ends
    ``cancelled`` whatever the body then returns.
    """

    tag = "workflow_cancelled"
    retryable = False

    def __init__(self, workflow: str, instance_id: str, reason: str | None = None) -> None:
        because = f": {reason}" if reason else ""
        super().__init__(f"workflow {workflow!r} instance {instance_id!r} was cancelled{because}")
        self.reason = reason


class ChildWorkflowError(JobError):
    """Raised into a parent's body by ``ctx.child`` when the child workflow failed or was cancelled.

    Attributes:
        child: ``name:id`` of the child.
        status: ``failed`` or ``cancelled``.
        error_tag: The ``tag`` of the error the child ended with.
        error_message: Its message.
    """

    tag = "child_workflow_failed"
    retryable = False

    def __init__(self, child: str, status: str, error_tag: str, error_message: str) -> None:
        super().__init__(f"child workflow {child!r} ended {status}: {error_message}")
        self.child = child
        self.status = status
        self.error_tag = error_tag
        self.error_message = error_message

    def _fields(self) -> tuple[object, ...]:
        return (self.child, self.status, self.error_tag, self.error_message)


class ChildJobError(JobError):
    """Raised into a workflow's body by ``ctx.job`` when the job failed or was cancelled.

    Attributes:
        job: ``name:id`` of the job.
        status: ``failed`` or ``cancelled``.
        error_tag: The ``tag`` of the error the job ended with.
        error_message: Its message.
    """

    tag = "child_job_failed"
    retryable = False

    def __init__(self, job: str, status: str, error_tag: str, error_message: str) -> None:
        super().__init__(f"job {job!r} ended {status}: {error_message}")
        self.job = job
        self.status = status
        self.error_tag = error_tag
        self.error_message = error_message

    def _fields(self) -> tuple[object, ...]:
        return (self.job, self.status, self.error_tag, self.error_message)


class WorkflowFailedError(JobError):
    """``result(id)`` of a workflow that ended ``failed`` or ``cancelled``.

    Attributes:
        status: ``failed`` or ``cancelled``.
        error_tag: The ``tag`` of the error the workflow ended with.
        error_message: Its message.
    """

    tag = "workflow_failed"
    retryable = False

    def __init__(self, instance_id: str, status: str, error_tag: str, error_message: str) -> None:
        super().__init__(f"workflow {instance_id!r} ended {status}: {error_message}")
        self.instance_id = instance_id
        self.status = status
        self.error_tag = error_tag
        self.error_message = error_message

    def _fields(self) -> tuple[object, ...]:
        return (self.instance_id, self.status, self.error_tag, self.error_message)


# -- the step log (stored as JSON in the instance row's `data`) ------------------------------

_NULL = msgspec.Raw(b"null")


class _ErrorInfo(msgspec.Struct, frozen=True):
    tag: str
    message: str

    @classmethod
    def of(cls, error: JobError) -> _ErrorInfo:
        """`error` as stored: its message made storable (user code may raise any text)."""
        return cls(error.tag, clean_text(error.message))


class _Entry(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One recorded call. `value` is the JSON of a step's result, a signal's payload, a
    recorded time or random value; `until` is a sleep's wake-up time, a wait's deadline
    or a failed step's retry time (epoch ms)."""

    kind: EntryKind
    name: str
    done: bool = True
    value: msgspec.Raw = _NULL
    error: _ErrorInfo | None = None
    attempts: int = 0
    until: int | None = None
    timed_out: bool = False
    cancelled: bool = False
    at: int = 0
    duration_ms: float = 0.0


class _Signal(msgspec.Struct, frozen=True):
    name: str
    payload: msgspec.Raw
    at: int


class _Log(msgspec.Struct, kw_only=True, omit_defaults=True):
    entries: list[_Entry] = msgspec.field(default_factory=list)
    inbox: list[_Signal] = msgspec.field(default_factory=list)
    result: msgspec.Raw = _NULL
    error: _ErrorInfo | None = None
    cancel_requested: bool = False
    cancel_reason: str | None = None
    #: A child workflow's parent (its key) and whether the parent was told how the child ended.
    parent: str | None = None
    parent_told: bool = False


class _JobOutcome(msgspec.Struct, frozen=True):
    """How the job a ``ctx.job`` waits for ended, as recorded in the log."""

    status: str
    result: msgspec.Raw = _NULL
    error: _ErrorInfo | None = None


class _ChildOutcome(msgspec.Struct, frozen=True):
    """The signal a child workflow sends its parent when it ends."""

    status: str
    result: msgspec.Raw = _NULL
    error: _ErrorInfo | None = None


_log_decoder = msgspec.json.Decoder(_Log)
_encoder = msgspec.json.Encoder()
#: The log of a workflow just started (no parent), encoded once.
_EMPTY_LOG = _encoder.encode(_Log())


def _read_log(record: InstanceRecord) -> _Log:
    """The step log stored in `record`. Raises `ValidationError` if it cannot be read."""
    if record.data is None:
        return _Log()
    try:
        return _log_decoder.decode(record.data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValidationError(f"the step log of workflow {record.key!r} cannot be read: {exc}") from None


def _check_call_name(name: object, what: str) -> str:
    """A step's, sleep's or signal's name: a non-empty str of at most 200 characters."""
    checked = check_text(name, f"{what} name", max_length=200)
    if isinstance(checked, Failure):
        raise checked.failure()
    return checked.unwrap()


def _describe(kind: str, name: str) -> str:
    return f"{kind} {name!r}"


# -- step result types -----------------------------------------------------------------

_UNSET: Any = object()
_WRAPPERS = (Result, FutureResult, IOResult, RequiresContextFutureResult, Awaitable, Coroutine)
_step_types: dict[Any, Any] = {}


def _result_type(fn: Callable[..., object], explicit: Any, step: str) -> Any:
    """The type a step's result is stored as: `explicit`, or `fn`'s return annotation
    unwrapped from ``Result``/``FutureResult``/... (a coroutine's is already its value's)."""
    if explicit is not _UNSET:
        tp = explicit
    else:
        tp = _step_types.get(fn, _UNSET)
        if tp is _UNSET:
            try:
                hints = typing.get_type_hints(fn)
            except Exception:  # a partial, a builtin, an unresolvable annotation
                hints = {}
            if "return" not in hints:
                raise ValidationError(
                    f"step {step!r}: cannot tell the type of its result ({_short.repr(fn)} has no return "
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
            with contextlib.suppress(TypeError):  # an unhashable callable is not cached
                _step_types[fn] = tp
    try:
        decoder(tp)
    except TypeError as exc:
        raise ValidationError(f"step {step!r}: its result type {tp!r} cannot be stored: {exc}") from None
    return tp


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

    def map(self, fn: Callable[[T], U]) -> Step[U]:
        """A step whose result is ``fn(result)`` (``fn`` is not recorded: keep it pure)."""
        start = self._start

        async def run() -> U:
            return fn(await start())

        return Step(run)

    def bind(self, fn: Callable[[T], Step[U]]) -> Step[U]:
        """A step that runs this one, then the step ``fn(result)`` returns."""
        start = self._start

        async def run() -> U:
            return await fn(await start())

        return Step(run)

    def result(self) -> FutureResult[T, StepFailedError]:
        """This step as a ``FutureResult``: a failed step is an ``IOFailure(StepFailedError)``."""
        start = self._start

        async def run() -> Result[T, StepFailedError]:
            try:
                return Success(await start())
            except StepFailedError as exc:
                return Failure(exc)

        return FutureResult(run())


class TimedOut(msgspec.Struct, frozen=True):
    """What ``ctx.wait_for_signal`` returns when its timeout passed before a signal came.

    Attributes:
        signal: The signal's name.
        deadline: When the wait gave up, aware UTC.
    """

    signal: str
    deadline: datetime


# -- the run ------------------------------------------------------------------------------


class _Stop(BaseException):
    """Ends the body at a ctx call: the workflow suspends, diverged or lost its storage.

    A `BaseException`, so a user's ``except Exception`` does not swallow it;
    the run also records why it stopped, so even a swallowed one ends the run.
    """


StopKind = Literal["suspend", "diverged", "storage"]


@dataclass(slots=True, eq=False)
class _Run:
    """One run (replay, then new calls) of one workflow instance."""

    handler: WorkflowHandler[Any, Any, Any]
    record: InstanceRecord
    log: _Log
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

    # -- plumbing --

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
        if self.env.tracking:  # no tracker listens: no event is built
            self.events.append(self.handler.event(self.record, type, **data))

    async def save(self, status: WorkflowStatusName, alarm: SetAlarm | ClearAlarm | None) -> None:
        """Commit the log with `status` and the events so far. Raises `StorageError`."""
        record = self.record
        record.data = _encoder.encode(self.log)
        record.status = status
        record.execute_count = sum(1 for e in self.log.entries if e.kind == "step" and e.done)
        record.updated_at = self.env.now_ms()
        events, self.events = self.events, []
        await self.handler.commit(Checkin(key=record.key, record=record, alarm=alarm), events)

    async def checkpoint(self) -> None:
        """`save` from inside the body: a failure stops the run (nothing after it may run)."""
        try:
            await self.save("running", None)
        except StorageError as exc:
            self.halt("storage", exc)

    def next_entry(self, kind: EntryKind, name: str) -> _Entry | None:
        """The recorded entry at this call's position (``None``: a new call); checks it matches."""
        self.check_open()
        _check_call_name(name, kind)
        position = self.position
        self.position += 1
        entries = self.log.entries
        if position >= len(entries):
            return None
        entry = entries[position]
        if entry.kind != kind or entry.name != name:
            error = NonDeterminismError(
                self.handler.job.name, position, _describe(entry.kind, entry.name), _describe(kind, name)
            )
            self.halt("diverged", error)
        return entry

    def deliver_cancel(self, entry: _Entry) -> NoReturn:
        entry.done, entry.cancelled = True, True
        self.cancel_delivered = True
        raise WorkflowCancelledError(self.handler.job.name, self.record.instance_id, self.cancel_reason)

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
        self.guard("ctx.step", name)
        entry = self.next_entry("step", name)
        if entry is not None and entry.cancelled:
            self.cancel_delivered = True
            raise WorkflowCancelledError(self.handler.job.name, self.record.instance_id, self.cancel_reason)
        result_type = _result_type(fn, tp, name)
        if entry is not None and entry.done:
            return self.replayed_step(entry, result_type)
        if entry is None:
            entry = _Entry(kind="step", name=name, done=False)
            self.log.entries.append(entry)
        if self.cancel_pending():
            self.deliver_cancel(entry)
        if entry.until is not None and entry.until > self.env.now_ms():
            # Woken early (a signal or a restart) before this step's retry is due.
            self.suspend("running", SetAlarm(entry.until, _RETRY))
        policy = retry if retry is not None else self.handler.job.retry
        attempt = entry.attempts + 1
        env = self.env
        self.in_call, self.current = True, name
        started = time.perf_counter()
        try:
            with trio.CancelScope() as scope:
                self.scope = scope
                outcome = await run_body(lambda: fn(*args), env.services)
        finally:
            self.in_call, self.scope, self.current = False, None, None
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        if scope.cancelled_caught:
            entry.attempts = attempt
            self.deliver_cancel(entry)
        entry.attempts, entry.at, entry.duration_ms = attempt, env.now_ms(), duration_ms
        if isinstance(outcome, Success):
            checked = encode_decoded(
                result_type, outcome.unwrap(), what=f"result of step {name!r}", limit=env.max_payload_bytes
            )
            if isinstance(checked, Failure):
                raise checked.failure()  # a bug in the step or its type, not a failure to retry
            raw, value = checked.unwrap()
            entry.done, entry.until, entry.error = True, None, None
            entry.value = msgspec.Raw(raw)
            self.event("workflow.step_completed", step=name, attempt=attempt, duration_ms=duration_ms)
            await self.checkpoint()
            return value
        error = outcome.failure()
        if policy is not None and policy.should_retry(error) and attempt < policy.max_attempts:
            delay = env.retries.delay_before(policy, attempt + 1)
            entry.until = env.now_ms() + max(0, round(delay.total_seconds() * 1000))
            entry.error = _ErrorInfo.of(error)
            self.handler.step_log(self.record, name, attempt).warning(
                "step failed on attempt %d of %d, retrying in %s: %s",
                attempt,
                policy.max_attempts,
                delay,
                error.message,
            )
            self.event(
                "workflow.step_failed",
                step=name,
                attempt=attempt,
                will_retry=True,
                error={"tag": error.tag, "message": error.message},
                retry_at=to_datetime(entry.until).isoformat(),
            )
            self.suspend("running", SetAlarm(entry.until, _RETRY))
        entry.done, entry.until, entry.error = True, None, _ErrorInfo.of(error)
        self.handler.step_log(self.record, name, attempt).error("step failed for good: %s", error.message)
        self.event(
            "workflow.step_failed",
            step=name,
            attempt=attempt,
            will_retry=False,
            error={"tag": error.tag, "message": error.message},
        )
        await self.checkpoint()
        return self.replayed_step(entry, result_type)

    def replayed_step(self, entry: _Entry, tp: Any) -> Any:
        if entry.error is not None:
            raise StepFailedError(entry.name, entry.attempts, entry.error.tag, entry.error.message)
        decoded = decode(tp, bytes(entry.value), what=f"result of step {entry.name!r}")
        if isinstance(decoded, Failure):
            raise decoded.failure()
        return decoded.unwrap()

    async def sleep(self, when: object, name: str) -> None:
        self.guard("ctx.sleep", name)
        entry = self.next_entry("sleep", name)
        if entry is not None and entry.cancelled:
            self.cancel_delivered = True
            raise WorkflowCancelledError(self.handler.job.name, self.record.instance_id, self.cancel_reason)
        if entry is not None and entry.done:
            return
        now = self.env.now_ms()
        if entry is None:
            wake = resolve_when(when, now)
            if isinstance(wake, Failure):
                raise ValidationError(wake.failure().message.replace("ctx.schedule()", "ctx.sleep()"))
            entry = _Entry(kind="sleep", name=name, done=False, until=wake.unwrap(), at=now)
            self.log.entries.append(entry)
        if self.cancel_pending():
            self.deliver_cancel(entry)
        assert entry.until is not None
        if entry.until <= now:
            entry.done = True
            return
        self.event("workflow.sleeping", step=name, wake_at=to_datetime(entry.until).isoformat())
        self.suspend("sleeping", SetAlarm(entry.until, _WAKE))

    async def wait_for_signal(self, name: str, tp: Any, give_up: object) -> Any:
        self.guard("ctx.wait_for_signal", name)
        entry = self.next_entry("signal", name)
        if entry is not None and entry.cancelled:
            self.cancel_delivered = True
            raise WorkflowCancelledError(self.handler.job.name, self.record.instance_id, self.cancel_reason)
        if entry is None or not entry.done:
            now = self.env.now_ms()
            if entry is None:
                deadline = None
                if give_up is not None:
                    resolved = resolve_when(give_up, now)
                    if isinstance(resolved, Failure):
                        raise ValidationError(
                            resolved.failure().message.replace("ctx.schedule()", "ctx.wait_for_signal(timeout=)")
                        )
                    deadline = resolved.unwrap()
                entry = _Entry(kind="signal", name=name, done=False, until=deadline, at=now)
                self.log.entries.append(entry)
            if self.cancel_pending():
                self.deliver_cancel(entry)
            inbox = self.log.inbox
            found = next((i for i, s in enumerate(inbox) if s.name == name), None)
            if found is not None:
                signal = inbox.pop(found)
                entry.done, entry.value, entry.at = True, signal.payload, now
            elif entry.until is not None and entry.until <= now:
                entry.done, entry.timed_out = True, True
            else:
                self.event(
                    "workflow.waiting",
                    signal=name,
                    timeout_at=None if entry.until is None else to_datetime(entry.until).isoformat(),
                )
                alarm = None if entry.until is None else SetAlarm(entry.until, _TIMEOUT)
                self.suspend("waiting", alarm)
        if entry.timed_out:
            assert entry.until is not None
            return TimedOut(name, to_datetime(entry.until))
        decoded = decode(tp, bytes(entry.value), what=f"payload of signal {name!r}")
        if isinstance(decoded, Failure):
            raise ValidationError(f"signal {name!r}: {decoded.failure().message}")
        return decoded.unwrap()

    async def await_job(self, name: str, job_id: str, client: Client, poll_ms: int) -> _JobOutcome:
        """Wait for the job `job_id` to end: look at its row now, else suspend until the next look."""
        self.guard("ctx.job", name)
        entry = self.next_entry("job", name)
        if entry is not None and entry.cancelled:
            self.cancel_delivered = True
            raise WorkflowCancelledError(self.handler.job.name, self.record.instance_id, self.cancel_reason)
        env = self.env
        now = env.now_ms()
        if entry is None:
            entry = _Entry(kind="job", name=name, done=False, at=now)
            self.log.entries.append(entry)
        if not entry.done:
            self.in_call, self.current = True, name
            try:
                if self.cancel_pending():
                    # The job is cancelled with the workflow (pending: it never runs; running: its scope).
                    cancelled = await client.jobs.cancel(job_id)
                    if not isinstance(cancelled, IOSuccess):  # it ends as it may; the body is cancelled
                        env.logger.warning("workflow %s: could not cancel its job %s", self.record.key, job_id)
                looked = await client.jobs.status(job_id)
            finally:
                self.in_call, self.current = False, None
            if self.cancel_pending():
                self.deliver_cancel(entry)
            info = unsafe_perform_io(looked.value_or(None))
            if info is not None and info.status in _JOB_FINAL:
                error = None if info.error is None else _ErrorInfo(info.error.tag, info.error.message)
                result = msgspec.Raw(_encoder.encode(info.result)) if info.status == "completed" else _NULL
                entry.done, entry.until, entry.at = True, None, now
                entry.value = msgspec.Raw(_encoder.encode(_JobOutcome(info.status, result, error)))
            else:
                if info is None:
                    env.logger.warning(
                        "workflow %s: could not look at its job %s (%s); looking again later",
                        self.record.key,
                        job_id,
                        looked,
                    )
                entry.attempts += 1
                entry.until = now + min(poll_ms, _FIRST_JOB_LOOK_MS << min(entry.attempts - 1, 30))
                self.suspend("waiting", SetAlarm(entry.until, _JOB))
        return msgspec.json.decode(bytes(entry.value), type=_JobOutcome)

    def recorded(self, kind: EntryKind, make: Callable[[], object], tp: Any) -> Any:
        """A value recorded at its first run (time, random, id); committed with the next checkpoint."""
        entry = self.next_entry(kind, kind)
        if entry is None:
            entry = _Entry(kind=kind, name=kind, value=msgspec.Raw(_encoder.encode(make())))
            self.log.entries.append(entry)
        return msgspec.json.decode(bytes(entry.value), type=tp)


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

    def __init__(self, env: Env, job_name: str, instance_id: str, log: JobLog, run: _Run, run_count: int) -> None:
        super().__init__(env, job_name, instance_id, log, run.record.tenant_id)
        self._run = run
        self.run_count = run_count

    @property
    def is_replaying(self) -> bool:
        """Whether the next call will be answered from the log (nothing runs)."""
        return self._run.position < len(self._run.log.entries)

    def step(
        self,
        name: str,
        fn: Callable[..., object],
        *args: Any,
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
            catch it and compensate), `ValidationError` when the result cannot
            be stored as its type or the type is unknown, and
            `WorkflowCancelledError` where a cancel reaches the body.
        """
        if retry is not None and not isinstance(retry, Retry):
            raise ValidationError(f"ctx.step({name!r}): retry must be a djobs.Retry or None, got {_short.repr(retry)}")
        if not callable(fn):
            raise ValidationError(f"ctx.step({name!r}): {_short.repr(fn)} is not callable")
        run = self._run
        return Step(lambda: run.step(name, fn, args, retry, result))

    async def sleep(self, when: When, *, name: str = "sleep") -> None:
        """Suspend the workflow until `when`, durably: no task, lease or memory is held.

        Args:
            when: A `timedelta` or a duration string (``"1 day"``) from the
                first time this sleep runs, or an aware `datetime`. The wake-up
                time is recorded, so a replay does not start the sleep again.
            name: Recorded with the sleep (a replay checks it).

        Raises:
            ValidationError: `when` is not one of those forms.
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
            ValidationError: The payload does not match `type`, or `timeout` is malformed.
        """
        try:
            msgspec.json.Decoder(type)
        except TypeError as exc:
            raise ValidationError(f"signal {name!r}: payload type {type!r} cannot be decoded: {exc}") from None
        value: T | TimedOut = await self._run.wait_for_signal(name, type, timeout)
        return value

    async def child(self, workflow: Workflow[CI, CR, Any], id: str, input: CI) -> CR:
        """Start the workflow `workflow` as a child with `id` and `input`, and wait for its result, durably.

        Two recorded calls: a step that starts the child (in this workflow's
        tenant), then a wait for the signal the child sends when it ends
        (``child <name>:<id>``), which is kept if it comes first. The child
        runs on its own, like any workflow (its own steps, sleeps, signals).

        Returns:
            The child's result.

        Raises:
            ChildWorkflowError: The child failed or was cancelled.
            JobNotFoundError: `workflow` is not registered with this engine.
            StepFailedError: The child could not be started (the id is
                another workflow's, or the input does not match).
        """
        run = self._run
        target = run.handler.runtime.target_for(instance_key(KIND, workflow.name, "x"))
        if not isinstance(target, WorkflowHandler) or target.job is not workflow:
            raise JobNotFoundError(workflow.name)
        handler = target.scoped(run.record.tenant_id)  # the parent's tenant, whichever handler runs it
        parent = run.record.key
        label = f"{workflow.name}:{id}"

        async def start() -> Result[bool, JobError]:
            return await handler.start_child(id, input, parent)

        await self.step(f"start child {label}", start, result=bool)
        outcome = await self.wait_for_signal(f"child {label}", _ChildOutcome)
        assert not isinstance(outcome, TimedOut)  # no timeout
        if outcome.status != "completed":
            error = outcome.error or _ErrorInfo("workflow_cancelled", "cancelled")
            raise ChildWorkflowError(label, outcome.status, error.tag, error.message)
        decoded = decode(workflow.result, bytes(outcome.result), what=f"result of child workflow {label!r}")
        if isinstance(decoded, Failure):
            raise decoded.failure()
        return decoded.unwrap()

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

        Returns:
            The job's result, as its ``result`` type.

        Raises:
            ChildJobError: The job failed (its retries spent) or was cancelled.
            StepFailedError: The job could not be enqueued (not registered with
                this engine, params that do not match, storage).
            ValidationError: `poll` is not a duration of at least 100 ms.
        """
        parsed = parse_duration(poll, what="poll")
        poll_ms = to_ms(parsed.unwrap()) if isinstance(parsed, Success) else 0
        if poll_ms < _FIRST_JOB_LOOK_MS:
            raise ValidationError(
                f"ctx.job({job.name!r}): poll must be a duration of at least 100 ms, got {_short.repr(poll)}"
            )
        run = self._run
        client = self.client
        # Per job name and tenant, as idempotency keys are; the position makes each call its own.
        idempotency_key = f"workflow:{self.job_name}:{self.instance_id}:{run.position}"

        def enqueue() -> FutureResult[str, JobError]:
            return client.job(job).later(params, idempotency_key=idempotency_key)

        job_id: str = await self.step(f"enqueue job {job.name}", enqueue, result=str)
        label = f"{job.name}:{job_id}"
        outcome = await run.await_job(label, job_id, client, poll_ms)
        if outcome.status != "completed":
            error = outcome.error or _ErrorInfo("job_cancelled", "cancelled")
            raise ChildJobError(label, outcome.status, error.tag, error.message)
        decoded = decode(job.result, bytes(outcome.result), what=f"result of job {label!r}")
        if isinstance(decoded, Failure):
            raise decoded.failure()
        result: JR = decoded.unwrap()
        return result

    def now(self) -> datetime:
        """The current time, recorded: a replay gets the time of the first run."""
        return to_datetime(self._run.recorded("now", self._env.now_ms, int))

    def random(self) -> float:
        """A random float in [0, 1), recorded: a replay gets the same value."""
        value: float = self._run.recorded("random", self._env.ids.random, float)
        return value

    def uuid(self) -> str:
        """A fresh UUID4 as text, recorded: a replay gets the same id."""
        value: str = self._run.recorded("uuid", self._env.ids.uuid, str)
        return value


@dataclass(frozen=True, eq=False)
class Workflow(Definition[D_contra], Generic[I, R, D_contra]):
    """A durable workflow: a body whose steps run once. Make one with `Workflow.make`.

    Examples:
        >>> import msgspec, djobs
        >>> class Order(msgspec.Struct):
        ...     id: str
        >>> class Receipt(msgspec.Struct):
        ...     order_id: str
        >>> async def run(order: Order, ctx: djobs.WorkflowContext) -> Receipt:
        ...     return Receipt(order.id)
        >>> checkout = djobs.Workflow.make("checkout", input=Order, result=Receipt, execute=run)
        >>> checkout.name
        'checkout'
    """

    kind: ClassVar[str] = KIND
    name: str
    input: type[I]
    result: type[R]
    execute: Callable[[I, WorkflowContext[D_contra]], object]
    retry: Retry | None = None
    logging: LoggingOption = False

    @classmethod
    def make(
        cls,
        name: str,
        *,
        input: type[I],
        result: type[R],
        execute: Callable[[I, WorkflowContext[D_contra]], object],
        retry: Retry | None = None,
        logging: LoggingOption = False,
    ) -> Workflow[I, R, D_contra]:
        """Define a workflow.

        Args:
            name: The workflow's unique name (no ``:``).
            input: The ``msgspec.Struct`` type of its input.
            result: The type of its result (anything msgspec can store).
            execute: The body, ``execute(input, ctx)`` (`WorkflowContext`), in
                any form the execution service accepts (usually ``async def``).
            retry: The retry policy of every step that gives none of its own;
                ``None``: a failed step fails at once. The body itself is never
                retried: it is replayed.
            logging: ``True`` (debug), ``False`` (errors only), a level, or ``None`` (silent).

        Raises:
            ValidationError: A bad name, input or result type, or a body that is not callable.
        """
        check_name(name, KIND)
        if not (isinstance(input, type) and issubclass(input, msgspec.Struct)):
            raise ValidationError(f"Workflow {name!r}: input must be a msgspec.Struct type, got {input!r}")
        try:
            msgspec.json.Decoder(result)
        except TypeError as exc:
            raise ValidationError(f"Workflow {name!r}: result type {result!r} cannot be stored: {exc}") from None
        if not callable(execute):
            raise ValidationError(f"Workflow {name!r}: execute must be callable, got {execute!r}")
        if retry is not None and not isinstance(retry, Retry):
            raise ValidationError(f"Workflow {name!r}: retry must be a djobs.Retry, got {retry!r}")
        return cls(name, input, result, execute, retry, logging)

    def bind(self, runtime: Runtime) -> WorkflowHandler[I, R, D_contra]:
        """The handler that runs this workflow inside an engine (used by the engine)."""
        return WorkflowHandler(self, runtime)


# -- results ------------------------------------------------------------------------------


class WorkflowStartResult(msgspec.Struct, frozen=True):
    """The result of ``start``: ``created`` is false when the id was already used."""

    created: bool
    instance_id: str
    status: WorkflowStatusName


class StepInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded call of a workflow, as ``status`` and ``djobs workflows show`` list it.

    Attributes:
        kind: ``step``, ``sleep``, ``signal``, ``job`` (the wait of a ``ctx.job``),
            ``now``, ``random`` or ``uuid``.
        name: The call's name.
        done: Whether it finished (a step succeeded or failed for good, a
            sleep ended, a signal came or timed out).
        attempts: How many times a step ran.
        error: The error a step last failed with (``{"tag", "message"}``).
        until: A sleep's wake-up time, a wait's deadline or a step's retry time.
        at: When it finished (a sleep: when it began).
        duration_ms: How long a step's last attempt took.
        cancelled: Whether a cancel reached the body here.
        timed_out: Whether a signal wait timed out.
    """

    kind: str
    name: str
    done: bool
    attempts: int = 0
    error: dict[str, str] | None = None
    until: datetime | None = None
    at: datetime | None = None
    duration_ms: float = 0.0
    cancelled: bool = False
    timed_out: bool = False


class WorkflowStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The result of ``status``.

    Attributes:
        status: ``running``, ``sleeping``, ``waiting``, ``completed``,
            ``failed``, ``cancelled`` or ``not_found``.
        steps_finished: Steps that finished (succeeded or failed for good).
        current_step: The step running in this process now, the sleep or the
            signal wait the workflow is in, or the step awaiting its retry.
        wake_at: When the workflow is next woken (a sleep's end, a wait's
            timeout, a retry), if it is.
        error: The error a failed or cancelled workflow ended with.
        cancel_requested: A cancel is recorded and has yet to reach the body.
        steps: Every recorded call, in order.
        created_at: When it was started.
        updated_at: When it last changed.
    """

    status: Literal["running", "sleeping", "waiting", "completed", "failed", "cancelled", "not_found"]
    steps_finished: int = 0
    current_step: str | None = None
    wake_at: datetime | None = None
    error: dict[str, str] | None = None
    cancel_requested: bool = False
    steps: list[StepInfo] = msgspec.field(default_factory=list)
    created_at: datetime | None = None
    updated_at: datetime | None = None


class WorkflowSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One workflow, as ``list`` gives it."""

    instance_id: str
    status: str
    steps_finished: int
    tenant_id: str | None
    created_at: datetime
    updated_at: datetime


class SignalResult(msgspec.Struct, frozen=True):
    """The result of ``signal``: the signal is stored; ``waiting`` says whether the
    workflow was waiting for it (it is then woken at once)."""

    instance_id: str
    waiting: bool


class WorkflowCancelResult(msgspec.Struct, frozen=True):
    """The result of ``cancel``.

    ``cancelled`` is false if the workflow had already ended (``status`` says
    how). Otherwise the cancel is recorded and reaches the body at its
    current call (a running step's scope is cancelled) or at its next one;
    the body's cleanup steps may still run before it ends ``cancelled``.
    """

    instance_id: str
    cancelled: bool
    status: str


def _step_info(entry: _Entry) -> StepInfo:
    error = None if entry.error is None else {"tag": entry.error.tag, "message": entry.error.message}
    return StepInfo(
        kind=entry.kind,
        name=entry.name,
        done=entry.done,
        attempts=entry.attempts,
        error=error,
        until=None if entry.until is None else to_datetime(entry.until),
        at=to_datetime(entry.at) if entry.at else None,
        duration_ms=entry.duration_ms,
        cancelled=entry.cancelled,
        timed_out=entry.timed_out,
    )


def _error_dict(info: _ErrorInfo | None) -> dict[str, str] | None:
    return None if info is None else {"tag": info.tag, "message": info.message}


def describe_workflow(record: InstanceRecord, alarm: Alarm | None, current: str | None = None) -> WorkflowStatus:
    """A stored workflow as `WorkflowStatus` (also what ``djobs workflows show`` prints)."""
    log = _read_log(record)
    pending = next((e for e in log.entries if not e.done), None)
    if current is None and pending is not None and record.status not in _FINAL:
        current = pending.name
    status = cast(WorkflowStatusName, record.status)
    return WorkflowStatus(
        status=status,
        steps_finished=record.execute_count,
        current_step=current,
        # A run alarm is a guard against a crash mid-run (or a wake-up due now), not a wake-up time.
        wake_at=None if alarm is None or status in _FINAL or alarm.purpose == _RUN else to_datetime(alarm.fire_at),
        error=_error_dict(log.error),
        cancel_requested=log.cancel_requested and status not in _FINAL,
        steps=[_step_info(e) for e in log.entries],
        created_at=to_datetime(record.created_at),
        updated_at=to_datetime(record.updated_at),
    )


async def cancel_stored(
    storage: Storage, key: str, reason: str | None, now_ms: int, owner: str, lease_ms: int = 30_000
) -> str:
    """Cancel the stored workflow `key` from a process that runs no engine (the dashboard).

    With the workflow's lease (no engine is running it), the cancel is written
    to its log with an alarm due now, as ``client.cancel`` writes it: an
    engine's alarm sleeper wakes it at its next poll and the body gets
    `WorkflowCancelledError` where it stands. Without it (an engine runs it
    now), the cancel is noted beside it (`CancelRequests`) and that engine
    cancels the running step within `CANCEL_POLL_SECONDS`.

    Returns:
        What was done, for a person.

    Raises:
        InstanceNotFoundError: No workflow `key` is stored.
        InvalidStateError: It has already ended.
        StorageError: The storage failed, or it holds no cancel notes and an engine runs the workflow.
    """
    loaded = await storage.load(key)
    if loaded is None or loaded[0].kind != KIND:
        raise InstanceNotFoundError(KIND, key)
    if loaded[0].status in _FINAL:
        raise InvalidStateError(f"workflow {key!r} has already ended {loaded[0].status}")
    if not await storage.acquire_instance_lease(key, owner, now_ms, lease_ms):
        if not isinstance(storage, CancelRequests):
            raise StorageError(f"workflow {key!r} is running in an engine now; try again")
        await storage.request_cancel(key, reason, now_ms)
        return "cancel noted: the engine running it cancels its step within a second"
    try:
        loaded = await storage.load(key)  # again, under the lease
        if loaded is None or loaded[0].status in _FINAL:
            raise InvalidStateError(f"workflow {key!r} has ended meanwhile")
        record = loaded[0]
        log = _read_log(record)
        if not log.cancel_requested:
            log.cancel_requested, log.cancel_reason = True, reason
            record.data, record.updated_at = _encoder.encode(log), now_ms
            await storage.commit(Checkin(key=key, record=record, alarm=SetAlarm(now_ms, _RUN), lease_owner=owner))
    finally:
        await storage.release_instance_leases([key], owner)
    return "cancel recorded: an engine wakes the workflow at its next alarm poll and its body is cancelled"


# -- the handler ------------------------------------------------------------------------------


class WorkflowHandler(TenantScoped, Generic[I, R, D]):
    """Runs one workflow definition's instances on an engine's runtime."""

    def __init__(self, job: Workflow[I, R, D], runtime: Runtime) -> None:
        self.job = job
        self.runtime = runtime
        self.env = runtime.env
        #: Runs in flight in this process, by key (shared by the tenant-scoped copies).
        self.live: dict[str, _Run] = {}
        #: The record a verb just committed and queued a run of, by key: the run takes it
        #: instead of reading it back (any other commit of the key drops it, see `commit`).
        self.fresh: dict[str, InstanceRecord] = {}
        #: Set while runs are live here (`watch_cancels` then reads their cancel notes); in a
        #: list, so the tenant-scoped copies and the engine's handler share the current one.
        self.runs_live = [trio.Event()]
        #: Keys whose `start` is storing them in one write now (`InstanceCreator`): another
        #: start of one of them in this process goes through the actor instead.
        self.creating: set[str] = set()
        #: The storage's optional protocols, asked once (a runtime-checkable isinstance is slow).
        storage = self.env.storage
        self.creator = storage if isinstance(storage, InstanceCreator) else None
        self.cancel_requests = storage if isinstance(storage, CancelRequests) else None

    async def commit(self, checkin: Checkin, events: builtins.list[TrackedEvent] | None = None) -> None:
        """`Env.commit` for this kind: every write of a workflow goes through here, on its actor."""
        self.fresh.pop(checkin.key, None)
        await self.env.commit(checkin, events)

    def key(self, instance_id: str) -> str:
        return instance_key(KIND, self.job.name, instance_id, self.tenant)

    def event(self, record: InstanceRecord, type: str, **data: Any) -> TrackedEvent:
        return self.env.event(type, record.key, KIND, self.job.name, **data)

    def step_log(self, record: InstanceRecord, step: str, attempt: int) -> JobLog:
        return self.env.job_log(
            KIND, self.job.name, self.job.logging, instance=record.instance_id, step=step, attempt=attempt
        )

    # -- verbs --

    async def start_child(self, instance_id: str, input: object, parent: str) -> Result[bool, JobError]:
        """Start a child of the workflow `parent` (a key); a repeat by the same parent is not an error."""
        checked = check_id(instance_id)
        if isinstance(checked, Failure):
            return checked
        started = await self.start(instance_id, cast(I, input), parent=parent)
        if isinstance(started, Failure) or started.unwrap().created:
            return started.map(lambda s: s.created)
        loaded = await self.env.storage.load(self.key(instance_id))
        if loaded is not None and _read_log(loaded[0]).parent == parent:
            return Success(False)  # started by this parent before (its step was not recorded)
        return Failure(
            InvalidStateError(f"workflow {self.job.name!r} instance {instance_id!r} exists and is not this child")
        )

    async def start(
        self, instance_id: str, input: I, parent: str | None = None
    ) -> Result[WorkflowStartResult, ValidationError | StorageError]:
        job, env = self.job, self.env
        encoded = encode(job.input, input, what=f"input of workflow {job.name!r}", limit=env.max_payload_bytes)
        if isinstance(encoded, Failure):
            return encoded
        key = self.key(instance_id)
        runtime = self.runtime

        def new() -> tuple[InstanceRecord, Checkin, builtins.list[TrackedEvent]]:
            now = env.now_ms()
            record = InstanceRecord(
                key=key,
                kind=KIND,
                name=job.name,
                instance_id=instance_id,
                tenant_id=self.tenant,
                status="running",
                state=encoded.unwrap(),
                data=_encoder.encode(_Log(parent=parent)) if parent is not None else _EMPTY_LOG,
                created_at=now,
                updated_at=now,
            )
            checkin = Checkin(key=key, record=record, alarm=self._wake_alarm(now))
            return record, checkin, [self.event(record, "workflow.started")]

        def existing(stored: InstanceRecord) -> Result[WorkflowStartResult, ValidationError | StorageError]:
            return Success(WorkflowStartResult(False, instance_id, cast(WorkflowStatusName, stored.status)))

        async def run() -> Result[WorkflowStartResult, ValidationError | StorageError]:
            loaded = await env.storage.load(key)
            if loaded is not None:
                return existing(loaded[0])
            record, checkin, events = new()
            await self.commit(checkin, events)
            self._run_next(key, record)
            return Success(WorkflowStartResult(True, instance_id, "running"))

        creator = self.creator
        if creator is not None and runtime.fires_alarms and key not in self.creating and runtime.untouched(key):
            # Nothing here works on `key`: store it and take its lease in one write, where the
            # actor's way takes the lease, reads the key and commits in three.
            self.creating.add(key)
            try:
                record, checkin, events = new()
                stored = await env.create(creator, checkin, runtime.leases.lease_ms, events)
            except LeaseLostError:
                pass  # another engine holds the key's lease: the actor waits for it
            else:
                if stored is not None:
                    return existing(stored[0])
                runtime.took_lease(key)
                self._run_next(key, record)
                return Success(WorkflowStartResult(True, instance_id, "running"))
            finally:
                self.creating.discard(key)
        return await runtime.call(key, run)

    async def status(self, instance_id: str) -> Result[WorkflowStatus, StorageError]:
        key = self.key(instance_id)
        loaded = await self.env.storage.load(key)
        if loaded is None:
            return Success(WorkflowStatus(status="not_found"))
        live = self.live.get(key)
        return Success(describe_workflow(*loaded, current=None if live is None else live.current))

    async def result(
        self, instance_id: str
    ) -> Result[R, InstanceNotFoundError | InvalidStateError | WorkflowFailedError | ValidationError | StorageError]:
        loaded = await self.env.storage.load(self.key(instance_id))
        if loaded is None:
            return Failure(InstanceNotFoundError(self.job.name, instance_id))
        record = loaded[0]
        log = _read_log(record)
        if record.status == "completed":
            return decode(self.job.result, bytes(log.result), what=f"result of workflow {self.job.name!r}")
        if record.status in ("failed", "cancelled"):
            error = log.error or _ErrorInfo("workflow_cancelled", "cancelled")
            return Failure(WorkflowFailedError(instance_id, record.status, error.tag, error.message))
        return Failure(
            InvalidStateError(
                f"workflow {self.job.name!r} instance {instance_id!r} is {record.status}; it has no result yet"
            )
        )

    async def signal(
        self, instance_id: str, name: object, payload: object
    ) -> Result[SignalResult, InstanceNotFoundError | InvalidStateError | ValidationError | StorageError]:
        checked = check_text(name, "signal name", max_length=200)
        if isinstance(checked, Failure):
            return checked
        # Any payload msgspec encodes (its type is the wait's, known only there); storable and within the limit.
        limit = self.env.max_payload_bytes
        encoded = encode(cast(Any, Any), payload, what=f"payload of signal {name!r}", limit=limit, strict=False)
        if isinstance(encoded, Failure):
            return encoded
        raw, signal = encoded.unwrap(), checked.unwrap()
        key = self.key(instance_id)
        return await self.runtime.call(key, lambda: self._deliver(key, instance_id, signal, raw))

    async def _deliver(
        self, key: str, instance_id: str, name: str, raw: bytes, event_id: str | None = None
    ) -> Result[SignalResult, InstanceNotFoundError | InvalidStateError | StorageError]:
        """Store signal `name` for workflow `key` and wake it if it waits for it (on its actor)."""
        env = self.env
        loaded = await env.storage.load(key)
        if loaded is None:
            return Failure(InstanceNotFoundError(self.job.name, instance_id))
        record, _ = loaded
        if record.status in _FINAL:
            return Failure(
                InvalidStateError(
                    f"workflow {self.job.name!r} instance {instance_id!r} is {record.status}; "
                    "it accepts no more signals"
                )
            )
        log = _read_log(record)
        now = env.now_ms()
        log.inbox.append(_Signal(name, msgspec.Raw(raw), now))
        pending = next((e for e in log.entries if not e.done), None)
        waiting = (
            record.status == "waiting" and pending is not None and pending.kind == "signal" and pending.name == name
        )
        record.data, record.updated_at = _encoder.encode(log), now
        record.event_count += 1
        event = self.event(record, "workflow.signal_received", signal=name, waiting=waiting)
        alarm = self._wake_alarm(now) if waiting else None
        await self.commit(Checkin(key=key, record=record, alarm=alarm, event_id=event_id), [event])
        if waiting:
            self._run_next(key, record)
        return Success(SignalResult(instance_id, waiting))

    async def cancel(
        self, instance_id: str, reason: object
    ) -> Result[WorkflowCancelResult, ValidationError | StorageError]:
        if reason is not None and (not isinstance(reason, str) or len(reason) > 1000 or text_problem(reason)):
            return Failure(
                ValidationError(
                    f"reason must be None or a str of at most 1000 characters every storage can hold "
                    f"(no NUL, no lone surrogate), got {_short.repr(reason)}"
                )
            )
        key = self.key(instance_id)
        env = self.env
        live = self.live.get(key)
        requests = self.cancel_requests
        requested = False
        if live is not None:
            # A run in this process: cancel its running step now, or its next call.
            self._cancel_live(live, reason)
        elif requests is not None:
            # Perhaps running in another process, which holds the lease until its run ends: a
            # note it reads while its steps run (`watch_cancels`) reaches it without the lease.
            loaded = await env.storage.load(key)
            if loaded is None or loaded[0].status in _FINAL:
                status = "not_found" if loaded is None else loaded[0].status
                return Success(WorkflowCancelResult(instance_id, False, status))
            await requests.request_cancel(key, reason, env.now_ms())
            requested = True

        async def run() -> Result[WorkflowCancelResult, StorageError]:
            loaded = await env.storage.load(key)
            if loaded is None:
                return Success(WorkflowCancelResult(instance_id, False, "not_found"))
            record, _ = loaded
            if record.status in _FINAL:
                # Ended: by this cancel if it reached a run here or through its note, else before it.
                by_us = (live is not None or requested) and record.status == "cancelled"
                if requests is not None and requested:
                    await requests.clear_cancel_request(key)
                return Success(WorkflowCancelResult(instance_id, by_us, record.status))
            log = _read_log(record)
            if not log.cancel_requested:
                log.cancel_requested, log.cancel_reason = True, reason
                record.data, record.updated_at = _encoder.encode(log), env.now_ms()
                # Woken at once: the body gets WorkflowCancelledError where it stands.
                await self.commit(Checkin(key=key, record=record, alarm=self._wake_alarm(env.now_ms())))
                self._run_next(key, record)
            if requests is not None and requested:
                await requests.clear_cancel_request(key)  # recorded in the log now
            return Success(WorkflowCancelResult(instance_id, True, record.status))

        return await self.runtime.call(key, run)

    @staticmethod
    def _cancel_live(live: _Run, reason: str | None) -> None:
        """Cancel a run in this process: its running step's scope now, or its next call."""
        if live.log.cancel_requested:
            return
        live.cancel_requested = live.log.cancel_requested = True
        live.cancel_reason = live.log.cancel_reason = reason
        if live.scope is not None:
            live.scope.cancel()

    async def background(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The kind's background loop, which an engine that runs work starts: `watch_cancels`."""
        await self.watch_cancels(task_status)

    async def watch_cancels(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """While runs are live in this process, read the cancels other processes noted for them.

        The engine runs this once per workflow definition (`background`). A
        process that does not hold a workflow's lease cannot write its row, so
        its ``cancel`` notes the request beside it (`CancelRequests`); this
        loop reads the notes of the runs live here every `CANCEL_POLL_SECONDS`
        and cancels them as a local ``cancel`` would (the running step's scope
        at once). Nothing is read while no run is live.
        """
        task_status.started()
        requests = self.cancel_requests
        if requests is None:
            return
        while True:
            await self.runs_live[0].wait()
            await trio.sleep(CANCEL_POLL_SECONDS)
            keys = sorted(self.live)
            if not keys:
                self.runs_live[0] = trio.Event()
                continue
            try:
                noted = await requests.cancel_requests(keys)
            except StorageError as exc:
                self.env.logger.warning("workflows %s: could not read cancel requests: %s", self.job.name, exc.message)
                continue
            for key, reason in noted.items():
                live = self.live.get(key)
                if live is not None:
                    self._cancel_live(live, reason)

    async def list_instances(
        self, status: str | None, after: str | None, limit: int
    ) -> Result[builtins.list[WorkflowSummary], ValidationError | StorageError]:
        lister = getattr(self.env.storage, "list_instances", None)
        if lister is None:
            return Failure(StorageError(f"the storage {self.env.storage!r} cannot list instances"))
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10_000:
            return Failure(ValidationError(f"limit must be an int from 1 to 10000, got {_short.repr(limit)}"))
        if status is not None and status not in ("running", "sleeping", "waiting", *_FINAL):
            return Failure(ValidationError(f"status {_short.repr(status)} is not a workflow status"))
        if after is not None:
            checked = check_text(after, "after")
            if isinstance(checked, Failure):
                return checked
        after_key = None if after is None else self.key(after)
        records: builtins.list[InstanceRecord] = await lister(
            KIND, self.job.name, self.tenant, status, after_key, limit
        )
        return Success(
            [
                WorkflowSummary(
                    instance_id=r.instance_id,
                    status=r.status,
                    steps_finished=r.execute_count,
                    tenant_id=r.tenant_id,
                    created_at=to_datetime(r.created_at),
                    updated_at=to_datetime(r.updated_at),
                )
                for r in records
            ]
        )

    # -- alarms and runs --

    def _wake_alarm(self, now: int, purpose: str = _RUN) -> SetAlarm:
        """The alarm of a workflow to run now (started, signalled, cancelled).

        An engine that fires alarms runs it itself at once, on the actor that
        holds its lease (`_run_next`), so the alarm is only the guard against
        this process dying first: due when a claim of it would have run out.
        An engine that fires none (client-only) leaves it due now, for a
        worker process to take.
        """
        if self.runtime.fires_alarms:
            return SetAlarm(now + self.runtime.alarm_lease_ms, purpose)
        return SetAlarm(now, purpose)

    def _run_next(self, key: str, record: InstanceRecord) -> None:
        """Run workflow `key` next on its actor (after the verb that called this committed `record`).

        The run starts from `record` unless another commit of the key came
        between (then it reads the row): the actor holds the lease throughout,
        so what this process committed last is what is stored.
        """
        if not self.runtime.fires_alarms:
            return
        self.fresh[key] = record

        async def resume() -> None:
            try:
                fresh = self.fresh.pop(key, None)
                if fresh is None:
                    loaded = await self.env.storage.load(key)
                    if loaded is None or loaded[1] is None or loaded[0].status in _FINAL:
                        return
                    fresh = loaded[0]
                await self._run(fresh)
            except JobError as exc:  # the guard alarm runs it later
                self.env.logger.error("workflow %s: could not record a run: %s", key, exc.message)

        self.runtime.post(key, resume)

    async def on_alarm(self, alarm: Alarm) -> None:
        try:
            loaded = await self.env.storage.load(alarm.key)
            if loaded is None or loaded[1] is None or loaded[1].id != alarm.id:
                return  # ended, or woken for another reason since this alarm was claimed
            record = loaded[0]
            if record.status in _FINAL:
                if loaded[1].purpose == _TELL_PARENT:
                    await self._tell_parent(alarm.key)
                return
            await self._run(record)
        except JobError as exc:
            # A StorageError (or an unreadable log): the alarm stays claimed and fires
            # again after its lease; the steps recorded stand.
            self.env.logger.error("workflow %s: could not record a run: %s", alarm.key, exc.message)

    async def _run(self, record: InstanceRecord) -> None:
        job, env = self.job, self.env
        record.run_count += 1
        log = _read_log(record)
        run = _Run(self, record, log, [])
        run.cancel_requested, run.cancel_reason = log.cancel_requested, log.cancel_reason
        run.cancel_delivered = any(e.cancelled for e in log.entries)
        jlog = env.job_log(KIND, job.name, job.logging, instance=record.instance_id, run=record.run_count)
        decoded = decode(job.input, record.state or b"null", what=f"input of workflow {job.name!r}")
        if isinstance(decoded, Failure):
            await self._end(run, "failed", error=decoded.failure())
            return
        the_input = decoded.unwrap()
        ctx: WorkflowContext[D] = WorkflowContext(env, job.name, record.instance_id, jlog, run, record.run_count)
        self.live[record.key] = run
        self.runs_live[0].set()
        try:
            ran = await run_call(env, record.key, Checkout(None), lambda: job.execute(the_input, ctx))
            body: Result[object, JobError] | None = ran.result
        except trio.Cancelled:
            raise
        except BaseException as exc:
            if run.stop is None or _holds_cancelled(exc):
                raise
            body = None  # stopped at a ctx call: how is in `run.stop`
        finally:
            self.live.pop(record.key, None)
        if run.stop == "storage":
            assert run.stop_error is not None
            raise run.stop_error  # on_alarm logs it; the alarm fires again after its lease
        if run.stop == "suspend":
            # A wait with no timeout has no alarm: the one that woke this run must not fire again.
            await run.save(run.suspend_status, run.suspend_alarm or ClearAlarm())
            return
        if run.stop == "diverged":
            assert run.stop_error is not None
            jlog.error("%s", run.stop_error.message)
            await self._end(run, "failed", error=run.stop_error)
            return
        assert body is not None
        if run.cancel_delivered or (run.cancel_requested and isinstance(body, Failure)):
            error = body.failure() if isinstance(body, Failure) else None
            await self._end(run, "cancelled", error=error)
            return
        if isinstance(body, Failure):
            error = body.failure()
            jlog.error("failed: %s", error.message)
            await self._end(run, "failed", error=error)
            return
        if run.position < len(log.entries):
            entry = log.entries[run.position]
            error = NonDeterminismError(job.name, run.position, _describe(entry.kind, entry.name), None)
            jlog.error("%s", error.message)
            await self._end(run, "failed", error=error)
            return
        raw = encode(job.result, body.unwrap(), what=f"result of workflow {job.name!r}", limit=env.max_payload_bytes)
        if isinstance(raw, Failure):
            await self._end(run, "failed", error=raw.failure())
            return
        log.result = msgspec.Raw(raw.unwrap())
        await self._end(run, "completed")

    async def _end(
        self, run: _Run, status: Literal["completed", "failed", "cancelled"], error: JobError | None = None
    ) -> None:
        log = run.log
        duration_ms = round((time.perf_counter() - run.started) * 1000, 3)
        if status == "cancelled":
            reason = log.cancel_reason
            because = error.message if error else f"cancelled: {reason or 'no reason given'}"
            log.error = _ErrorInfo("workflow_cancelled", clean_text(because))
            run.event("workflow.cancelled", reason=reason)
        elif error is not None:
            log.error = _ErrorInfo.of(error)
            run.event("workflow.failed", error={"tag": error.tag, "message": error.message})
        else:
            run.event("workflow.completed", steps=run.record.execute_count, duration_ms=duration_ms)
        log.inbox.clear()  # undelivered signals die with the workflow
        if log.parent is not None and not log.parent_told:
            # A child: the alarm stays until its parent has been told, so a crash cannot lose that.
            await run.save(status, self._wake_alarm(self.env.now_ms(), _TELL_PARENT))
            key = run.record.key
            if self.runtime.fires_alarms:
                self.runtime.post(key, lambda: self._tell_parent(key))
        else:
            await run.save(status, ClearAlarm())
        if run.stop == "storage" and run.stop_error is not None:
            raise run.stop_error

    async def _tell_parent(self, key: str) -> None:
        """Send an ended child's outcome to its parent (on the parent's actor), then clear its alarm.

        Nothing waits on another actor here, so a parent starting this child
        while it tells the parent cannot deadlock. A signal told twice (a
        crash between the two commits) is refused by its event id.
        """
        env = self.env
        try:
            loaded = await env.storage.load(key)
            if loaded is None:
                return
            record = loaded[0]
            log = _read_log(record)
        except JobError as exc:
            env.logger.error("workflow %s: could not read it to tell its parent: %s", key, exc.message)
            return
        parent = log.parent
        if parent is None or log.parent_told or record.status not in _FINAL:
            return
        target = self.runtime.target_for(parent)
        if not isinstance(target, WorkflowHandler):
            env.logger.warning("workflow %s: its parent %s is not registered here; told later", key, parent)
            return
        raw = _encoder.encode(_ChildOutcome(record.status, log.result, log.error))
        name = f"child {self.job.name}:{record.instance_id}"

        async def deliver() -> None:
            try:
                await target._deliver(parent, parent.split(":", 2)[2], name, raw, event_id=key)
            except DuplicateEventError:
                pass  # told before
            except JobError as exc:  # the alarm tells it again later
                env.logger.error("workflow %s: could not tell its parent %s: %s", key, parent, exc.message)
                return
            # Told (or the parent is gone or ended, and there is no one to tell).
            self.runtime.post(key, lambda: self._told_parent(key))

        self.runtime.post(parent, deliver)

    async def _told_parent(self, key: str) -> None:
        env = self.env
        try:
            loaded = await env.storage.load(key)
            if loaded is None:
                return
            record = loaded[0]
            log = _read_log(record)
            if log.parent_told:
                return
            log.parent_told = True
            record.data = _encoder.encode(log)
            await self.commit(Checkin(key=key, record=record, alarm=ClearAlarm()))
        except JobError as exc:  # the alarm tells the parent again; its event id refuses the repeat
            env.logger.error("workflow %s: could not record that its parent was told: %s", key, exc.message)


def _holds_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[0] is not None
    return False


# -- the client --------------------------------------------------------------------------------


class WorkflowClient(InstanceClient[WorkflowHandler[I, R, Any]], Generic[I, R]):
    """The client verbs of one workflow; get one with ``engine.client.workflow(defn)``.

    Every verb returns a `FutureResult` that does its work when awaited and
    gives an ``IOSuccess`` or an ``IOFailure`` with one of the errors its
    type names. A verb returns once what it changed is committed; the body
    itself runs on the engine (woken by an alarm), not in the caller's task.
    """

    def start(
        self, *, id: str, input: I
    ) -> FutureResult[WorkflowStartResult, JobNotFoundError | ValidationError | StorageError]:
        """Start workflow `id` with `input`; an id already used is left as it is (``created=False``)."""
        return self._verb(id, lambda h, i: h.start(i, input))

    def status(self, id: str) -> FutureResult[WorkflowStatus, JobNotFoundError | ValidationError | StorageError]:
        """Where workflow `id` is: its status, steps finished, current step, ``wake_at`` and log."""
        return self._verb(id, lambda h, i: h.status(i))

    def result(
        self, id: str
    ) -> FutureResult[
        R,
        JobNotFoundError
        | InstanceNotFoundError
        | InvalidStateError
        | WorkflowFailedError
        | ValidationError
        | StorageError,
    ]:
        """The result of a completed workflow; `WorkflowFailedError` if it failed or was
        cancelled, `InvalidStateError` while it is still going."""
        return self._verb(id, lambda h, i: h.result(i))

    def signal(
        self, id: str, name: str, payload: object = None
    ) -> FutureResult[
        SignalResult, JobNotFoundError | InstanceNotFoundError | InvalidStateError | ValidationError | StorageError
    ]:
        """Send the signal `name` with `payload` (anything msgspec encodes) to workflow `id`.

        The signal is stored with the workflow and delivered to its next
        ``ctx.wait_for_signal(name, ...)`` (now, if it is waiting for it).
        An ended workflow refuses it (`InvalidStateError`).
        """
        return self._verb(id, lambda h, i: h.signal(i, name, payload))

    def cancel(
        self, id: str, *, reason: str | None = None
    ) -> FutureResult[WorkflowCancelResult, JobNotFoundError | ValidationError | StorageError]:
        """Cancel workflow `id`: the body gets `WorkflowCancelledError` at its current call."""
        return self._verb(id, lambda h, i: h.cancel(i, reason))

    def list(
        self, *, status: WorkflowStatusName | None = None, after: str | None = None, limit: int = 100
    ) -> FutureResult[builtins.list[WorkflowSummary], JobNotFoundError | ValidationError | StorageError]:
        """This workflow's instances (this client's tenant's only, if it has one), by id,
        starting after the id `after`, at most `limit`, only those in `status` if given."""
        # The checks of every instance verb (unknown job, required tenancy, the tenant's text);
        # the id they validate is a placeholder: list takes none.
        return self._verb("-", lambda h, _: h.list_instances(status, after, limit))
