"""What a workflow stores and shows: its step log, its errors and its status.

The step log (`StepLog`) is JSON in the workflow's instance row (``data``):
one `Entry` per recorded call, the inbox of signals not yet consumed, the
result or error, a requested cancel, a child's parent. This module holds the
log's structs and codec, the alarm purposes, the errors a body or a client
sees, the status views (`describe_workflow`, what ``status`` and the CLI
show) and `cancel_stored` (a cancel from a process with no engine).

Arrows: `_workflow_context` (the calls that write the log) and `_workflow`
(the definition, the handler that commits the log, the client) import this
module; it imports neither.
"""

from __future__ import annotations

import reprlib
import sys
from datetime import datetime
from typing import Any, ClassVar, Literal, Self, TypeVar, cast

import msgspec
from returns.result import Failure, Result, Success

from .._clock import LATEST_MS, to_datetime
from .._codec import decode, decoder, type_name
from .._errors import (
    InstanceNotFoundError,
    InvalidStateError,
    JobError,
    StorageError,
    ValidationError,
)
from .._input import SEPARATOR, check_text, clean_message
from .._results import unwrap_or_raise
from ..storage import (
    Alarm,
    CancelRequests,
    Checkin,
    InstanceRecord,
    SetAlarm,
    Storage,
)
from ._task import resolve_when

T = TypeVar("T")

KIND = "workflow"

short = reprlib.Repr()
short.maxstring = short.maxother = 60

#: A workflow's status. ``running``: woken and replaying or running steps (or
#: waiting for a step's retry); ``sleeping``: in ``ctx.sleep``; ``waiting``: in
#: ``ctx.wait_for_signal``; the last three are final.
WorkflowStatusName = Literal["running", "sleeping", "waiting", "completed", "failed", "cancelled"]
FINAL = ("completed", "failed", "cancelled")

# Alarm purposes: why a workflow is woken.
RUN = "run"  # started, or a signal or cancel arrived
WAKE = "wake"  # a sleep ended
TIMEOUT = "timeout"  # a signal wait timed out
RETRY = "retry"  # a failed step's next attempt is due
TELL_PARENT = "tell_parent"  # an ended child workflow has yet to tell its parent
JOB_LOOK = "job"  # time to look at the job a ctx.job waits for again
#: The first look at a ctx.job's row comes this long after the enqueue; each later one
#: waits twice as long as the one before, up to the call's `poll` (milliseconds).
FIRST_JOB_LOOK_MS = 100
JOB_FINAL = ("completed", "failed", "cancelled")
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


class _EndedError(JobError):
    """Base of the errors saying that something ended ``failed`` or ``cancelled``: a child
    workflow, a job, the workflow itself. `what` names it in the message."""

    retryable = False
    what: ClassVar[str]
    #: The tag of the error recorded when it was cancelled without one.
    cancelled_tag: ClassVar[str] = "workflow_cancelled"

    def __init__(self, name: str, status: str, error_tag: str, error_message: str) -> None:
        super().__init__(f"{self.what} {name!r} ended {status}: {error_message}")
        self.name = name
        self.status = status
        self.error_tag = error_tag
        self.error_message = error_message

    def _fields(self) -> tuple[object, ...]:
        return (self.name, self.status, self.error_tag, self.error_message)

    @classmethod
    def of(cls, name: str, status: str, error: ErrorInfo | None) -> Self:
        """The error for `name`, which ended `status` with the recorded `error` (none: a bare cancel)."""
        info = error or ErrorInfo(cls.cancelled_tag, "cancelled")
        return cls(name, status, info.tag, info.message)


class ChildWorkflowError(_EndedError):
    """Raised into a parent's body by ``ctx.child`` when the child workflow failed or was cancelled.

    Attributes:
        child: ``name:id`` of the child.
        status: ``failed`` or ``cancelled``.
        error_tag: The ``tag`` of the error the child ended with.
        error_message: Its message.
    """

    tag = "child_workflow_failed"
    what = "child workflow"

    @property
    def child(self) -> str:
        return self.name


class ChildJobError(_EndedError):
    """Raised into a workflow's body by ``ctx.job`` when the job failed or was cancelled.

    Attributes:
        job: ``name:id`` of the job.
        status: ``failed`` or ``cancelled``.
        error_tag: The ``tag`` of the error the job ended with.
        error_message: Its message.
    """

    tag = "child_job_failed"
    what = "job"
    cancelled_tag = "job_cancelled"

    @property
    def job(self) -> str:
        return self.name


class WorkflowFailedError(_EndedError):
    """``result(id)`` of a workflow that ended ``failed`` or ``cancelled``.

    Its message names the workflow and the instance as every other workflow
    message does: ``workflow 'shipping' instance 'p-1' ended failed: ...``.

    Attributes:
        workflow: The workflow's name.
        instance_id: The workflow's id.
        status: ``failed`` or ``cancelled``.
        error_tag: The ``tag`` of the error the workflow ended with.
        error_message: Its message.
    """

    tag = "workflow_failed"
    what = "workflow"

    def __init__(self, workflow: str, instance_id: str, status: str, error_tag: str, error_message: str) -> None:
        JobError.__init__(self, f"workflow {workflow!r} instance {instance_id!r} ended {status}: {error_message}")
        self.workflow = workflow
        self.name = instance_id
        self.status = status
        self.error_tag = error_tag
        self.error_message = error_message

    def _fields(self) -> tuple[object, ...]:
        return (self.workflow, self.name, self.status, self.error_tag, self.error_message)

    @classmethod
    def ended(cls, workflow: str, instance_id: str, status: str, error: ErrorInfo | None) -> WorkflowFailedError:
        """The error for instance `instance_id` of `workflow`, which ended `status` with the recorded `error`."""
        info = error or ErrorInfo(cls.cancelled_tag, "cancelled")
        return cls(workflow, instance_id, status, info.tag, info.message)

    @property
    def instance_id(self) -> str:
        return self.name


# -- the step log (stored as JSON in the instance row's `data`) ------------------------------

NULL = msgspec.Raw(b"null")


class ErrorInfo(msgspec.Struct, frozen=True):
    tag: str
    message: str

    @classmethod
    def of(cls, error: JobError) -> ErrorInfo:
        """`error` as stored: its message made storable (user code may raise any text)."""
        return cls(error.tag, clean_message(error.message))


class Entry(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One recorded call. `value` is the JSON of a step's result, a signal's payload, a
    recorded time or random value; `until` is a sleep's wake-up time, a wait's deadline
    or a failed step's retry time (epoch ms)."""

    kind: EntryKind
    name: str
    done: bool = True
    value: msgspec.Raw = NULL
    error: ErrorInfo | None = None
    attempts: int = 0
    until: int | None = None
    timed_out: bool = False
    cancelled: bool = False
    at: int = 0
    duration_ms: float = 0.0
    #: A signal wait's payload type, ``module.qualname`` (see `type_ref`), so a sender can be
    #: refused at ``signal`` time; absent for a type that has no such name (``list[int]``).
    payload_type: str | None = None
    #: A step whose result could not be stored as its type: `error` is the `ValidationError` the
    #: body got at the step, which a replay raises again (the step is not run again).
    invalid_result: bool = False


class Signal(msgspec.Struct, frozen=True):
    name: str
    payload: msgspec.Raw
    at: int


class StepLog(msgspec.Struct, kw_only=True, omit_defaults=True):
    entries: list[Entry] = msgspec.field(default_factory=list)
    inbox: list[Signal] = msgspec.field(default_factory=list)
    result: msgspec.Raw = NULL
    error: ErrorInfo | None = None
    cancel_requested: bool = False
    cancel_reason: str | None = None
    #: A child workflow's parent (its key) and whether the parent was told how the child ended.
    parent: str | None = None
    parent_told: bool = False


class Outcome(msgspec.Struct, frozen=True):
    """How something a workflow waits for ended: the job of a ``ctx.job`` (recorded in the
    log), a child workflow (the signal it sends its parent), or the workflow itself."""

    status: str
    result: msgspec.Raw = NULL
    error: ErrorInfo | None = None

    def value(self, tp: type[T], failed: type[_EndedError], label: str) -> T:
        """The result, decoded as `tp`, of what `label` names (``name:id``, or an id).

        Raises:
            _EndedError: ``failed(label, ...)`` if it did not complete.
            ValidationError: The result no longer decodes as `tp`.
        """
        if self.status != "completed":
            raise failed.of(label, self.status, self.error)
        return unwrap_or_raise(decode(tp, bytes(self.result), what=f"result of {failed.what} {label!r}"))


log_decoder = msgspec.json.Decoder(StepLog)
outcome_decoder = msgspec.json.Decoder(Outcome)
encoder = msgspec.json.Encoder()
#: The log of a workflow just started (no parent), encoded once.
EMPTY_LOG = encoder.encode(StepLog())


def read_log(record: InstanceRecord) -> StepLog:
    """The step log stored in `record`. Raises `ValidationError` if it cannot be read."""
    if record.data is None:
        return StepLog()
    try:
        return log_decoder.decode(record.data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValidationError(f"the step log of workflow {record.key!r} cannot be read: {exc}") from None


def type_ref(tp: object) -> str | None:
    """A class's importable name, ``module.qualname``, or ``None`` (a generic alias, a local class)."""
    if not isinstance(tp, type) or "<locals>" in tp.__qualname__:
        return None
    return f"{tp.__module__}.{tp.__qualname__}"


def resolve_type_ref(ref: str) -> type | None:
    """The class `ref` (`type_ref`) names in a module this process has already imported, or
    ``None``: nothing is imported, so a process that does not know the type cannot check it."""
    module_name, _, qualname = ref.rpartition(".")
    found: object = None
    # The qualname may itself be dotted (a nested class): try each split of the module path.
    while module_name:
        found = sys.modules.get(module_name)
        if found is not None:
            break
        module_name, _, outer = module_name.rpartition(".")
        qualname = f"{outer}.{qualname}"
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found if isinstance(found, type) and type_ref(found) == ref else None


def signal_payload(tp: Any, raw: bytes, signal: str) -> Result[Any, ValidationError]:
    """The payload `raw` of signal `signal` decoded as the wait's type `tp`, or why it is not one."""
    try:
        return Success(decoder(tp).decode(raw))
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return Failure(ValidationError(f"the payload of signal {signal!r} is not a {type_name(tp)}: {exc}"))


#: The longest name of a recorded call (a step's, a sleep's, a signal's), in characters.
MAX_CALL_NAME_LENGTH = 200

#: Call names already checked (a body names its calls with the same few literals, run after run).
good_names: set[str] = set()
_GOOD_NAMES_LIMIT = 4096


def check_call_name(name: object, what: str) -> str:
    """A step's, sleep's or signal's name: a non-empty str of at most `MAX_CALL_NAME_LENGTH` characters."""
    if type(name) is str and name in good_names:
        return name
    checked = unwrap_or_raise(check_text(name, f"{what} name", max_length=MAX_CALL_NAME_LENGTH))
    if type(name) is str and checked == name and len(good_names) < _GOOD_NAMES_LIMIT:
        good_names.add(name)
    return checked


#: A due time no call reaches (`resolved_when` on a replay): a delay is at most 100 years.
_NO_LIMIT = 2**63 - 1

#: Duration strings a sleep or a wait was given and found good, as milliseconds: a replay checks
#: its call's argument again (`Run.sleep`), and a body names its delays with the same few literals.
_delays: dict[str, int] = {}
_DELAYS_LIMIT = 4096


def resolved_when(when: object, now: int, call: str, *, replay: bool = False) -> int:
    """`resolve_when` for the context call `call` (``"ctx.sleep()"``): the epoch ms `when`
    names, or its `ValidationError` raised, naming `call`.

    On a `replay` (the call is in the log) `when` is checked only for its form: whether it
    ended after the year 9999 was judged when the call was first made, from that run's time,
    and the log holds the time it gave. Judged again from the replay's later time, a delay
    taken near the limit would be refused where the first run took it.
    """
    latest = _NO_LIMIT if replay else LATEST_MS
    if type(when) is str:
        delay = _delays.get(when)
        if delay is not None and now + delay <= latest:
            return now + delay
    refused = resolve_when(when, now, latest=latest).alt(
        lambda e: ValidationError(e.message.replace("ctx.schedule()", call))
    )
    fire_at = unwrap_or_raise(refused)
    if type(when) is str and len(_delays) < _DELAYS_LIMIT:
        _delays[when] = fire_at - now
    return fire_at


def describe_call(kind: str, name: str) -> str:
    return f"{kind} {name!r}"


def error_data(error: JobError) -> dict[str, str]:
    """`error` as an event's ``error`` field."""
    return {"tag": error.tag, "message": error.message}


def failed_step_data(step: str, attempt: int, error: JobError, *, will_retry: bool) -> dict[str, Any]:
    """The fields of a ``workflow.step_failed`` event."""
    return {"step": step, "attempt": attempt, "will_retry": will_retry, "error": error_data(error)}


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
            sleep ended, a signal came or timed out); false for the call a
            cancel reached (``cancelled``).
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
        steps_finished: Steps that finished (succeeded or failed for good; not
            a step a cancel reached while it ran).
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
    """One workflow, as ``list`` gives it.

    Attributes:
        cursor: Where this workflow stands in a listing: ``list(after=page[-1].cursor)``
            gives the workflows after it. One workflow has one cursor, whichever client
            listed it: its id, or for a tenant's workflow the tenant id and the id joined
            by the unit separator ``"\x1f"`` (which no id or tenant id holds), so it names
            one workflow even where tenants reuse ids. Listings come in the code-point
            order of their cursors (on a tenant's client: by id).
    """

    instance_id: str
    status: str
    steps_finished: int
    tenant_id: str | None
    created_at: datetime
    updated_at: datetime
    cursor: str


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
    ``status`` is the workflow's status once the cancel was accepted:
    ``cancelled`` if the run it reached has ended, else ``running`` (woken to
    take it, out of a sleep or a wait; ``status(id)`` says the same).

    ``already_requested`` is true when an earlier cancel had been accepted,
    whether or not the workflow has ended (``cancelled``) since: this one
    changed nothing, and the first cancel's reason stands (``cancelled`` is
    then false). Two cancels at once, from one process or several, give one
    ``cancelled=True``. A queued job's cancel says the same
    (`CancelResult.already_requested`).
    """

    instance_id: str
    cancelled: bool
    status: str
    already_requested: bool = False


def finished_steps(log: StepLog) -> int:
    """How many of `log`'s entries are finished steps (succeeded or failed for good; not a step a
    cancel reached while it ran): the record's ``execute_count``, ``steps_finished``."""
    return sum(1 for e in log.entries if e.kind == "step" and e.done and not e.cancelled)


def _step_info(entry: Entry) -> StepInfo:
    return StepInfo(
        kind=entry.kind,
        name=entry.name,
        done=entry.done and not entry.cancelled,  # a cancelled call is settled in the log, not finished
        attempts=entry.attempts,
        error=_error_dict(entry.error),
        until=None if entry.until is None else to_datetime(entry.until),
        at=to_datetime(entry.at) if entry.at else None,
        duration_ms=entry.duration_ms,
        cancelled=entry.cancelled,
        timed_out=entry.timed_out,
    )


def summarise(record: InstanceRecord) -> WorkflowSummary:
    return WorkflowSummary(
        instance_id=record.instance_id,
        status=record.status,
        steps_finished=record.execute_count,
        tenant_id=record.tenant_id,
        created_at=to_datetime(record.created_at),
        updated_at=to_datetime(record.updated_at),
        cursor=listing_cursor(record.tenant_id, record.instance_id),
    )


def listing_cursor(tenant: str | None, instance_id: str) -> str:
    """The cursor of a workflow in a listing (`WorkflowSummary.cursor`): its storage key
    without the ``workflow:{name}:`` prefix, so cursors sort as the keys they stand for."""
    return instance_id if tenant is None else f"{tenant}{SEPARATOR}{instance_id}"


def _error_dict(info: ErrorInfo | None) -> dict[str, str] | None:
    return None if info is None else {"tag": info.tag, "message": info.message}


def describe_workflow(
    record: InstanceRecord, alarm: Alarm | None, current: str | None = None, live: StepLog | None = None
) -> WorkflowStatus:
    """A stored workflow as `WorkflowStatus` (also what ``djobs workflows show`` prints).

    `live` is the log of a run of it in this process now, with `current` the step that
    run is in, if any: the view is then the run's, ahead of its last checkpoint (a sleep
    it woke from is done, and it is ``running`` with no wake-up time while it runs).
    """
    status = cast(WorkflowStatusName, record.status)
    if live is not None and status not in FINAL:
        log, status, alarm = live, "running", None
        steps_finished = finished_steps(log)
    else:
        log, steps_finished = read_log(record), record.execute_count
    pending = next((e for e in log.entries if not e.done), None)
    if current is None and pending is not None and status not in FINAL:
        current = pending.name
    return WorkflowStatus(
        status=status,
        steps_finished=steps_finished,
        current_step=current,
        # A run alarm is a guard against a crash mid-run (or a wake-up due now), not a wake-up time.
        wake_at=None if alarm is None or status in FINAL or alarm.purpose == RUN else to_datetime(alarm.fire_at),
        error=_error_dict(log.error),
        cancel_requested=log.cancel_requested and status not in FINAL,
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
        missing = InstanceNotFoundError(KIND, key)
        missing.message = f"no workflow is stored under the key {key!r}"
        missing.args = (missing.message,)
        raise missing
    if loaded[0].status in FINAL:
        raise InvalidStateError(f"workflow {key!r} has already ended {loaded[0].status}")
    if not await storage.acquire_instance_lease(key, owner, now_ms, lease_ms):
        if not isinstance(storage, CancelRequests):
            raise StorageError(f"workflow {key!r} is running in an engine now; try again")
        await storage.request_cancel(key, reason, now_ms)
        return "cancel noted: the engine running it cancels its step within a second"
    try:
        loaded = await storage.load(key)  # again, under the lease
        if loaded is None or loaded[0].status in FINAL:
            raise InvalidStateError(f"workflow {key!r} has ended meanwhile")
        record = loaded[0]
        log = read_log(record)
        if not log.cancel_requested:
            log.cancel_requested, log.cancel_reason = True, reason
            record.data, record.updated_at, record.status = encoder.encode(log), now_ms, "running"
            await storage.commit(Checkin(key=key, record=record, alarm=SetAlarm(now_ms, RUN), lease_owner=owner))
    finally:
        await storage.release_instance_leases([key], owner)
    return "cancel recorded: an engine wakes the workflow at its next alarm poll and its body is cancelled"
