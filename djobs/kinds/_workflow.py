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

Three modules, arrows one way: `_workflow_log` (the stored log, the errors,
the status views), `_workflow_context` (the context, its `Step`s and the
`Run` that replays the log) and this one (the `Workflow` definition, the
handler that runs and commits, and the client).
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from types import CoroutineType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar, cast

import msgspec
import trio
from returns.future import FutureResult
from returns.result import Failure, Result, Success

from .._bodies import Returns, check_arity
from .._clock import LAST_MS, beyond_datetime
from .._codec import check_storable, decode, decoded, encode, encoded
from .._errors import (
    CLOSED_MESSAGE,
    DuplicateEventError,
    InstanceNotFoundError,
    InvalidStateError,
    JobError,
    JobNotFoundError,
    StorageError,
    TenantError,
    ValidationError,
)
from .._execution import Pending, body_failure, finish_body, holds_cancel
from .._execution import begun as begun_with
from .._future import VerbResult, success
from .._input import SEPARATOR, check_optional_text, check_text, clean_message, plain_text
from .._logging import JobLog, LoggingOption, check_logging, threshold
from .._printable import printable
from .._retry import Retry, check_retry
from .._trap import RUN_CONTEXT
from ..storage import (
    Alarm,
    CancelRequests,
    Checkin,
    ClearAlarm,
    InstanceCheckpointer,
    InstanceCreator,
    InstanceExistsError,
    InstanceRecord,
    LeaseLostError,
    SetAlarm,
)
from ..tracking import TrackedEvent
from ._common import (
    MAX_REASON_LENGTH,
    D_contra,
    Definition,
    InstanceClient,
    TenantScoped,
    bind_async,
    bug_failure,
    check_id,
    check_name,
    foreign_run,
    instance_key,
    storable_id,
)
from ._workflow_context import Run, WorkflowContext
from ._workflow_log import (
    CANCEL_POLL_SECONDS,
    EMPTY_LOG,
    FINAL,
    KIND,
    RUN,
    TELL_PARENT,
    ErrorInfo,
    NonDeterminismError,
    Outcome,
    Signal,
    SignalResult,
    StepLog,
    WorkflowCancelResult,
    WorkflowFailedError,
    WorkflowStartResult,
    WorkflowStatus,
    WorkflowStatusName,
    WorkflowSummary,
    describe_call,
    describe_workflow,
    encoder,
    error_data,
    finished_steps,
    read_log,
    resolve_type_ref,
    short,
    signal_payload,
    summarise,
)

if TYPE_CHECKING:
    from .._runtime import Runtime

I = TypeVar("I")  # noqa: E741  # the input, as in the issue's Workflow[I, R, D]
R = TypeVar("R")
D = TypeVar("D")


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
    execute: Callable[[I, WorkflowContext[D_contra]], Returns[R, D_contra]]
    retry: Retry | None = None
    logging: LoggingOption = False

    @classmethod
    def make(
        cls,
        name: str,
        *,
        input: type[I],
        result: type[R],
        execute: Callable[[I, WorkflowContext[D_contra]], Returns[R, D_contra]],
        retry: Retry | None = None,
        logging: LoggingOption = False,
    ) -> Workflow[I, R, D_contra]:
        """Define a workflow.

        Args:
            name: The workflow's unique name (no ``:``).
            input: The ``msgspec.Struct`` type of its input.
            result: The type of its result (anything msgspec can store).
            execute: The body, ``execute(input, ctx)`` (`WorkflowContext`), in
                any form the execution service accepts (usually ``async def``),
                giving a `result` (mypy checks it, as for `Job.make`).
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
        check_storable(input, f"Workflow {name!r}: input")
        check_storable(result, f"Workflow {name!r}: result type")
        check_arity(execute, f"Workflow {name!r}: execute", ("input", "ctx"))
        retry = check_retry(retry, f"Workflow {name!r}")
        logging = check_logging(logging, f"Workflow {name!r}")
        return cls(name, input, result, execute, retry, logging)

    def bind(self, runtime: Runtime) -> WorkflowHandler[I, R, D_contra]:
        """The handler that runs this workflow inside an engine (used by the engine)."""
        return WorkflowHandler(self, runtime)


# -- the handler ------------------------------------------------------------------------------


class WorkflowHandler(TenantScoped, Generic[I, R, D]):
    """Runs one workflow definition's instances on an engine's runtime."""

    def __init__(self, job: Workflow[I, R, D], runtime: Runtime) -> None:
        self.job = job
        self.runtime = runtime
        self.env = runtime.env
        #: Runs in flight in this process, by key (shared by the tenant-scoped copies).
        self.live: dict[str, Run] = {}
        #: The record a verb just committed and queued a run of, by key: the run takes it
        #: instead of reading it back (any other commit of the key drops it, see `commit`).
        self.fresh: dict[str, InstanceRecord] = {}
        #: Set while runs are live here (`watch_cancels` then reads their cancel notes); in a
        #: list, so the tenant-scoped copies and the engine's handler share the current one.
        self.runs_live = [trio.Event()]
        #: Set when the cancel in flight in this process ends, by key: a second cancel of the
        #: workflow meanwhile waits for it, then reads the first's cancel (`cancel`).
        self.cancelling: dict[str, trio.Event] = {}
        #: Keys whose `start` is storing them in one write now (`InstanceCreator`): another
        #: start of one of them in this process goes through the actor instead.
        self.creating: set[str] = set()
        #: The storage's optional protocols, asked once (a runtime-checkable isinstance is slow).
        storage = self.env.storage
        self.creator = storage if isinstance(storage, InstanceCreator) else None
        self.checkpointer = storage if isinstance(storage, InstanceCheckpointer) else None
        self.cancel_requests = storage if isinstance(storage, CancelRequests) else None
        #: The runs' logger and its threshold, as `Env.job_log` makes them, looked up once.
        self.run_logger = self.env.logger.getChild(f"{KIND}.{job.name}")
        self.run_log_level = threshold(job.logging)

    async def commit(self, checkin: Checkin, events: builtins.list[TrackedEvent] | None = None) -> None:
        """`Env.commit` for this kind: every write of a workflow goes through here, on its actor."""
        self.fresh.pop(checkin.key, None)
        await self.env.commit(checkin, events)

    async def checkpoint(
        self, record: InstanceRecord, events: builtins.list[TrackedEvent], clear_alarm: bool = False
    ) -> None:
        """A run's checkpoint (or its end, with `clear_alarm`): `record` (its log, status and
        counts) written over the stored row under the lease, then `events` emitted. One
        fenced statement (and the alarm's deletion) with an `InstanceCheckpointer`, a
        `commit` otherwise.

        Raises `StorageError` (`LeaseLostError` if another engine took the workflow over).
        """
        checkpointer = self.checkpointer
        if checkpointer is None:
            await self.commit(
                Checkin(key=record.key, record=record, alarm=ClearAlarm() if clear_alarm else None), events
            )
            return
        env = self.env
        self.fresh.pop(record.key, None)
        try:
            await checkpointer.checkpoint_instance(record, env.leases.owner, clear_alarm)
        except LeaseLostError:
            env.leases.lost(record.key)  # take it afresh next time
            raise
        if events:
            env.emit(events)

    def key(self, instance_id: str) -> str:
        return instance_key(KIND, self.job.name, instance_id, self.tenant)

    async def _stored(self, key: str) -> tuple[InstanceRecord, StepLog] | None:
        """Workflow `key`'s row and its step log, or ``None`` if it is not stored.

        Raises `StorageError`, or `ValidationError` if the log cannot be read.
        """
        loaded = await self.env.storage.load(key)
        return None if loaded is None else (loaded[0], read_log(loaded[0]))

    def event(self, record: InstanceRecord, type: str, **data: Any) -> TrackedEvent:
        return self.env.event(type, record.key, KIND, self.job.name, **data)

    def step_log(self, record: InstanceRecord, step: str, attempt: int) -> JobLog:
        return self.env.job_log(
            KIND, self.job.name, self.job.logging, instance=record.instance_id, step=step, attempt=attempt
        )

    # -- verbs --

    async def start_child(self, instance_id: str, input: object, parent: str) -> Result[bool, JobError]:
        """Start a child of the workflow `parent` (a key); a repeat by the same parent is not an error."""
        return await bind_async(
            check_id(instance_id), lambda checked: self._start_child(checked, cast(I, input), parent)
        )

    async def _start_child(self, instance_id: str, input: I, parent: str) -> Result[bool, JobError]:
        match await self.start(instance_id, input, parent=parent):
            case Success(WorkflowStartResult(created=False)):
                loaded = await self.env.storage.load(self.key(instance_id))
                if loaded is not None and read_log(loaded[0]).parent == parent:
                    return Success(False)  # started by this parent before (its step was not recorded)
                return Failure(
                    InvalidStateError(
                        f"workflow {self.job.name!r} instance {instance_id!r} exists and is not this child"
                    )
                )
            case started:
                return started.map(lambda s: s.created)

    async def start(
        self, instance_id: str, input: I, parent: str | None = None
    ) -> Result[WorkflowStartResult, ValidationError | StorageError]:
        job, env, runtime = self.job, self.env, self.runtime
        state = encoded(job.input, input, what=f"input of workflow {job.name!r}", limit=env.max_payload_bytes)
        if isinstance(state, ValidationError):
            return Failure(state)
        key = self.key(instance_id)
        creator = self.creator
        if creator is not None and runtime.fires_alarms and key not in self.creating and runtime.untouched(key):
            # Nothing here works on `key`: store it and take its lease in one write, where the
            # actor's way takes the lease, reads the key and commits in three.
            self.creating.add(key)
            try:
                record, checkin, events = self._new(key, instance_id, state, parent)
                stored = await env.create(creator, checkin, runtime.leases.lease_ms, events)
            except LeaseLostError:
                pass  # another engine holds the key's lease: the actor waits for it
            else:
                if stored is not None:
                    return success(WorkflowStartResult(False, instance_id, cast(WorkflowStatusName, stored[0].status)))
                runtime.took_lease(key)
                self._run_next(key, record)
                return success(WorkflowStartResult(True, instance_id, "running"))
            finally:
                self.creating.discard(key)
        return await runtime.call(key, partial(self._start_on_actor, key, instance_id, state, parent))

    async def _start_on_actor(
        self, key: str, instance_id: str, state: bytes, parent: str | None
    ) -> Result[WorkflowStartResult, ValidationError | StorageError]:
        """`start`'s way through the key's actor (its lease taken there): read the key, then commit.
        A method, not a closure in `start`: the common one-write way makes no cells."""
        loaded = await self.env.storage.load(key)
        if loaded is not None:
            return Success(WorkflowStartResult(False, instance_id, cast(WorkflowStatusName, loaded[0].status)))
        record, checkin, events = self._new(key, instance_id, state, parent)
        try:
            await self.commit(checkin, events)
        except InstanceExistsError as exists:  # stored meanwhile by another start's one write
            return Success(WorkflowStartResult(False, instance_id, cast(WorkflowStatusName, exists.stored[0].status)))
        self._run_next(key, record)
        return Success(WorkflowStartResult(True, instance_id, "running"))

    def _new(
        self, key: str, instance_id: str, state: bytes, parent: str | None
    ) -> tuple[InstanceRecord, Checkin, builtins.list[TrackedEvent]]:
        """A new workflow's record, the check-in that stores it with its guard alarm, and its event."""
        env = self.env
        now = env.clock.now_ms()
        record = InstanceRecord(
            key=key,
            kind=KIND,
            name=self.job.name,
            instance_id=instance_id,
            tenant_id=self.tenant,
            status="running",
            state=state,
            data=encoder.encode(StepLog(parent=parent)) if parent is not None else EMPTY_LOG,
            created_at=now,
            updated_at=now,
        )
        checkin = Checkin(key=key, record=record, alarm=self._wake_alarm(now), create=True)
        return record, checkin, [self.event(record, "workflow.started")] if env.tracking else []

    async def status(self, instance_id: str) -> Result[WorkflowStatus, StorageError]:
        key = self.key(instance_id)
        loaded = await self.env.storage.load(key)
        if loaded is None:
            return Success(WorkflowStatus(status="not_found"))
        live = self.live.get(key)
        if live is None:
            return Success(describe_workflow(*loaded))
        return Success(describe_workflow(*loaded, current=live.current, live=live.log))

    async def result(
        self, instance_id: str
    ) -> Result[R, InstanceNotFoundError | InvalidStateError | WorkflowFailedError | ValidationError | StorageError]:
        stored = await self._stored(self.key(instance_id))
        if stored is None:
            return Failure(InstanceNotFoundError(self.job.name, instance_id, "workflow"))
        record, log = stored
        if record.status == "completed":
            return decode(self.job.result, bytes(log.result), what=f"result of workflow {self.job.name!r}")
        if record.status in ("failed", "cancelled"):
            return Failure(WorkflowFailedError.ended(self.job.name, instance_id, record.status, log.error))
        return Failure(
            InvalidStateError(
                f"workflow {self.job.name!r} instance {instance_id!r} is {record.status}; it has no result yet"
            )
        )

    async def signal(
        self, instance_id: str, name: object, payload: object
    ) -> Result[SignalResult, InstanceNotFoundError | InvalidStateError | ValidationError | StorageError]:
        key = self.key(instance_id)
        # Any payload msgspec encodes (its type is the wait's, known only there); storable and within the limit.
        limit = self.env.max_payload_bytes

        async def deliver(signal: str) -> Result[SignalResult, JobError]:
            encoded = encode(cast(Any, Any), payload, what=f"payload of signal {signal!r}", limit=limit, strict=False)
            return await bind_async(
                encoded,
                lambda raw: self.runtime.call(key, lambda: self._deliver(key, instance_id, signal, raw, sent=payload)),
            )

        return await bind_async(check_text(name, "signal name", max_length=200), deliver)

    async def _deliver(
        self,
        key: str,
        instance_id: str,
        name: str,
        raw: bytes,
        event_id: str | None = None,
        sent: object = None,
    ) -> Result[SignalResult, InstanceNotFoundError | InvalidStateError | ValidationError | StorageError]:
        """Store signal `name` for workflow `key` and wake it if it waits for it (on its actor).

        Refused (`ValidationError`, nothing stored) if the workflow waits for `name` with a
        payload type this process knows and the payload `sent` (a client's, checked as every
        typed verb checks its input: a struct of another class, an unknown field) or else
        `raw` does not decode as it."""
        env = self.env
        stored = await self._stored(key)
        if stored is None:
            return Failure(InstanceNotFoundError(self.job.name, instance_id, "workflow"))
        record, log = stored
        if record.status in FINAL:
            return Failure(
                InvalidStateError(
                    f"workflow {self.job.name!r} instance {instance_id!r} is {record.status}; "
                    "it accepts no more signals"
                )
            )
        pending = next((e for e in log.entries if not e.done), None)
        open_wait = pending is not None and pending.kind == "signal" and pending.name == name
        if open_wait and pending is not None and pending.payload_type is not None:
            # The wait's payload type, if this process knows it: a payload that is not one is
            # refused here, where the sender hears of it, rather than dropped at the wait.
            tp = resolve_type_ref(pending.payload_type)
            if tp is None:
                refused = None
            elif sent is not None:  # a client's payload: the words every typed verb uses
                what = f"the payload of signal {name!r}"
                refused = encode(tp, sent, what=what, limit=env.max_payload_bytes).swap().value_or(None)
            else:
                refused = signal_payload(tp, raw, name).swap().value_or(None)
            if refused is not None:
                return Failure(
                    ValidationError(
                        f"workflow {self.job.name!r} instance {instance_id!r} waits for signal {name!r} "
                        f"with a {pending.payload_type} payload; nothing was stored: {refused.message}"
                    )
                )
        now = env.now_ms()
        log.inbox.append(Signal(name, msgspec.Raw(raw), now))
        waiting = record.status == "waiting" and open_wait
        record.data, record.updated_at = encoder.encode(log), now
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
        match check_optional_text(reason, "reason", max_length=MAX_REASON_LENGTH):
            case Success(given):
                pass
            case Failure() as refused:
                return refused
        key = self.key(instance_id)
        if self.runtime.within(key):
            # From the workflow's own run (or a handler it waits for): refused at once, as `call`
            # refuses it, before touching the run or waiting behind another cancel, which waits
            # for this run.
            self.runtime.refuse_self_call(key)
        # The cancels of one workflow in this process run one after another, each reading
        # the run and the row once the one before has ended (as a job's `cancel`): of two
        # at once, the second finds the first's cancel and answers as its repeat.
        cancelling = self.cancelling
        while (under_way := cancelling.get(key)) is not None:
            await under_way.wait()
        done = cancelling[key] = trio.Event()
        try:
            return await self._cancel(instance_id, key, given)
        finally:
            del cancelling[key]
            done.set()

    async def _cancel(
        self, instance_id: str, key: str, reason: str | None
    ) -> Result[WorkflowCancelResult, ValidationError | StorageError]:
        """`cancel` of workflow `key` with `reason`, no other cancel of it in flight here.

        `first` says whether this call asked first: ``False`` when the run or its
        row shows an earlier cancel (a repeat), ``None`` while unknown. A repeat
        changes nothing (the first reason stands) and says so:
        ``cancelled=False, already_requested=True``.
        """
        env = self.env
        first: bool | None = None
        live = self.live.get(key)
        requests = self.cancel_requests
        requested = False
        if live is not None:
            # A run in this process: cancel its running step now, or its next call.
            first = self._cancel_live(live, reason)
        elif requests is not None:
            # Perhaps running in another process, which holds the lease until its run ends: a
            # note it reads while its steps run (`watch_cancels`) reaches it without the lease.
            loaded = await env.storage.load(key)
            if loaded is None or loaded[0].status in FINAL:
                if loaded is None:
                    return Success(WorkflowCancelResult(instance_id, False, "not_found"))
                ended = loaded[0].status
                repeat = ended == "cancelled" and read_log(loaded[0]).cancel_requested  # ended by an earlier cancel
                return Success(WorkflowCancelResult(instance_id, False, ended, already_requested=repeat))
            if read_log(loaded[0]).cancel_requested:
                first = False  # recorded before: a repeat
            elif await requests.request_cancel(key, reason, env.now_ms()) is False:
                # Noted before, by another process's cancel: a repeat. Should it reach the log
                # first, it records that cancel's reason.
                first = False
                reason = (await requests.cancel_requests([key])).get(key, reason)
            else:
                requested = True

        async def run() -> Result[WorkflowCancelResult, StorageError]:
            stored = await self._stored(key)
            if stored is None:
                return Success(WorkflowCancelResult(instance_id, False, "not_found"))
            record, log = stored
            ours = first is not False
            if record.status in FINAL:
                # Ended: by this cancel if it reached a run here or through its note, else before it.
                # Through a note, only if its reason is the one recorded: another process's cancel
                # may have noted, recorded and cleared its own between this one's read and note.
                by_us = (
                    ours
                    and record.status == "cancelled"
                    and (live is not None or (requested and log.cancel_reason == reason))
                )
                if requests is not None and requested:
                    await requests.clear_cancel_request(key)
                # Ended cancelled by an earlier cancel: this one is its repeat, as before the end.
                repeat = not by_us and record.status == "cancelled" and log.cancel_requested
                return Success(WorkflowCancelResult(instance_id, by_us, record.status, already_requested=repeat))
            if not log.cancel_requested:
                # A repeat that gets here first records the first cancel's reason (the live run's).
                kept = live.cancel_reason if live is not None and not ours else reason
                log.cancel_requested, log.cancel_reason = True, kept
                record.data, record.updated_at = encoder.encode(log), env.now_ms()
                # Woken at once (so running, not sleeping or waiting): the body gets
                # WorkflowCancelledError where it stands.
                record.status = "running"
                await self.commit(Checkin(key=key, record=record, alarm=self._wake_alarm(env.now_ms())))
                self._run_next(key, record)
            elif first is None and not requested:
                ours = False  # recorded by an earlier cancel, whose run has not ended yet
            if requests is not None and requested:
                await requests.clear_cancel_request(key)  # recorded in the log now
            return Success(WorkflowCancelResult(instance_id, ours, record.status, already_requested=not ours))

        # The live run's step was cancelled above: a cycle of waits through it ends with it.
        return await self.runtime.call(key, run, breaks_cycles=True)

    @staticmethod
    def _cancel_live(live: Run, reason: str | None) -> bool:
        """Cancel a run in this process: its running step's scope now, or its next call.
        Whether this call did (``False``: it was cancelled before, with its own reason)."""
        if live.log.cancel_requested:
            return False
        live.cancel_requested = live.log.cancel_requested = True
        live.cancel_reason = live.log.cancel_reason = reason
        if live.scope is not None:
            live.scope.cancel()
        return True

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
                self.env.logger.warning(
                    "workflows %s: could not read cancel requests: %s", self.job.name, printable(exc.message)
                )
                continue
            for key, reason in noted.items():
                live = self.live.get(key)
                if live is not None:
                    self._cancel_live(live, reason)

    async def list_instances(
        self, status: object, after: str | None, limit: int
    ) -> Result[builtins.list[WorkflowSummary], ValidationError | StorageError]:
        lister = getattr(self.env.storage, "list_instances", None)
        if lister is None:
            return Failure(StorageError(f"the storage {self.env.storage!r} cannot list instances"))
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10_000:
            return Failure(ValidationError(f"limit must be an int from 1 to 10000, got {short.repr(limit)}"))
        status = plain_text(status)
        if status is not None and (
            not isinstance(status, str) or status not in ("running", "sleeping", "waiting", *FINAL)
        ):
            return Failure(ValidationError(f"status {short.repr(status)} is not a workflow status"))
        after_key: Result[str | None, ValidationError | TenantError] = (
            Success(None) if after is None else self._after_key(after)
        )

        async def listed(start: str | None) -> Result[builtins.list[WorkflowSummary], JobError]:
            records: builtins.list[InstanceRecord] = await lister(
                KIND, self.job.name, self.tenant, status, start, limit
            )
            return Success([summarise(r) for r in records])

        return await bind_async(after_key, listed)

    def _after_key(self, after: object) -> Result[str | None, ValidationError | TenantError]:
        """The storage key a listing's `after` stands for: a `WorkflowSummary.cursor`, or an
        id (the cursor of that id's workflow in this client's tenant, or with no tenant)."""
        after = plain_text(after)
        if not isinstance(after, str) or SEPARATOR not in after:
            return check_text(after, "after").map(self.key)
        tenant, _, instance_id = after.partition(SEPARATOR)
        if self.tenant is not None and tenant != self.tenant:
            return Failure(
                TenantError(
                    f"after {after!r:.80} is the cursor of a workflow of another tenant; "
                    f"this client lists tenant {self.tenant!r:.80}'s"
                )
            )
        return Result.do(
            instance_key(KIND, self.job.name, the_id, the_tenant)
            for the_tenant in check_text(tenant, "after's tenant id")
            for the_id in check_id(instance_id, "after's instance id")
        )

    # -- alarms and runs --

    def _wake_alarm(self, now: int, purpose: str = RUN) -> SetAlarm:
        """The alarm of a workflow to run now (started, signalled, cancelled).

        An engine that fires alarms runs it itself at once, on the actor that
        holds its lease (`_run_next`), so the alarm is only the guard against
        this process dying first: set at now as if claimed at once, due when
        that claim would have run out, or at once when the process is found
        dead (its leases freed: `djobs._leases.free_exited`). An engine that
        fires none (client-only) leaves it due now, for a worker process to take.
        """
        if self.runtime.fires_alarms:
            return SetAlarm(now, purpose, now + self.runtime.alarm_lease_ms)
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
        self.runtime.post(key, partial(self._run, key))

    async def on_alarm(self, alarm: Alarm) -> None:
        try:
            loaded = await self.env.storage.load(alarm.key)
            if loaded is None or loaded[1] is None or loaded[1] != alarm:
                return  # ended, or woken for another reason since this alarm was claimed
            record = loaded[0]
            if record.status in FINAL:
                if loaded[1].purpose == TELL_PARENT:
                    await self._tell_parent(alarm.key)
                return
        except JobError as exc:
            # A StorageError (or an unreadable log): the alarm stays claimed and fires
            # again after its lease; the steps recorded stand.
            self.env.logger.error(
                "workflow %s: could not record a run: %s", printable(alarm.key), printable(exc.message)
            )
            return
        await self._run(alarm.key, record)

    async def _run(self, key: str, record: InstanceRecord | None = None) -> None:
        """Run workflow `key`'s body from the top, from `record` (an alarm's read), else from the
        record the last verb committed (`fresh`), else from the row read now. A `JobError` (a
        `StorageError`, an unreadable log) is logged: the guard alarm fires again after its
        lease, and the steps recorded stand. One coroutine, from the actor to the body: each
        step's write passes through every coroutine between them twice (in and back)."""
        try:
            if record is None:
                record = self.fresh.pop(key, None)
                if record is None:
                    loaded = await self.env.storage.load(key)
                    if loaded is None or loaded[1] is None or loaded[0].status in FINAL:
                        return
                    record = loaded[0]
            job, env = self.job, self.env
            record.run_count += 1
            log = read_log(record)
            run = Run(self, record, log, [])
            run.cancel_requested, run.cancel_reason = log.cancel_requested, log.cancel_reason
            if log.entries:
                run.cancel_delivered = any(e.cancelled for e in log.entries)
                run.steps_done = finished_steps(log)
            identity = {"job": job.name, "instance": record.instance_id, "run": record.run_count}
            jlog = JobLog(self.run_logger, self.run_log_level, identity)
            the_input = decoded(job.input, record.state or b"null", what=f"input of workflow {job.name!r}")
            if isinstance(the_input, ValidationError):
                await self._end(run, "failed", error=the_input)
                return
            ctx: WorkflowContext[D] = WorkflowContext(env, job.name, record.instance_id, jlog, run, record.run_count)
            self.live[record.key] = run
            self.runs_live[0].set()
            try:
                # No run scope of its own (no terminate verb): a cancel reaches the body at a step.
                # `run_body`, inline (no timeout, no scope): one coroutine fewer in the chain each
                # write resumes; and `begin_body`, inline: no partial, one call fewer.
                begun: Result[object, JobError] | Pending
                try:
                    value = job.execute(the_input, ctx)
                except BaseException as exc:
                    begun = Failure(body_failure(exc))
                else:
                    if type(value) is CoroutineType:
                        # An `async def` body, awaited here rather than in `finish_body` and
                        # `normalise`: two coroutines fewer between the actor and each step, and
                        # a step may see that the body returns its value to this frame at once.
                        run.runner = _RUN_CODE
                        try:
                            returned = await value
                        except BaseException as exc:
                            begun = Failure(body_failure(exc))
                        else:
                            # Completed by its last step's write (`Run.ends_with`): its value is stored.
                            begun = _ENDED if run.ended else begun_with(returned)
                    else:
                        begun = begun_with(value)
                body: Result[object, JobError] | None = (
                    await finish_body(begun, env.services, "the job body") if isinstance(begun, Pending) else begun
                )
            except trio.Cancelled:
                raise
            except BaseException as exc:
                if run.stop is None or holds_cancel(exc):
                    raise
                body = None  # stopped at a ctx call: how is in `run.stop`
            finally:
                self.live.pop(record.key, None)
            if run.stop == "storage":
                assert run.stop_error is not None
                raise run.stop_error  # logged below; the alarm fires again after its lease
            if run.stop == "suspend":
                # A wait with no timeout has no alarm: the one that woke this run must not fire again.
                await run.save(run.suspend_status, run.suspend_alarm or ClearAlarm())
                return
            if run.stop == "diverged":
                assert run.stop_error is not None
                jlog.error("%s", printable(run.stop_error.message))
                await self._end(run, "failed", error=run.stop_error)
                return
            if run.ended:
                return  # its last step's write completed it (`Run.ends_with`)
            assert body is not None
            if run.made > run.stepped:  # a step the body made was never awaited
                run.warn_unawaited()
            match body:
                case Success(value):
                    if run.cancel_delivered:
                        await self._end(run, "cancelled")
                    else:
                        await self._returned(run, jlog, value)
                case Failure(error) if run.cancel_requested or run.cancel_delivered:
                    await self._end(run, "cancelled", error=error)
                case Failure(error):
                    jlog.error("failed: %s", printable(error.message))
                    await self._end(run, "failed", error=error)
        except JobError as exc:
            self.env.logger.error("workflow %s: could not record a run: %s", printable(key), printable(exc.message))

    async def _returned(self, run: Run, jlog: JobLog, value: object) -> None:
        """End run `run`, whose body returned `value`: completed, or failed if it returned early or
        its value cannot be stored as the workflow's result."""
        job, log = self.job, run.log
        if run.position < len(log.entries):
            entry = log.entries[run.position]
            diverged = NonDeterminismError(job.name, run.position, describe_call(entry.kind, entry.name), None)
            jlog.error("%s", printable(diverged.message))
            await self._end(run, "failed", error=diverged)
            return
        raw = self.result_of(value)
        if isinstance(raw, ValidationError):
            await self._end(run, "failed", error=raw)
        else:
            log.result = msgspec.Raw(raw)
            await self._end(run, "completed")

    def result_of(self, value: object) -> bytes | ValidationError:
        """`value`, a body's return, encoded as the workflow's result (or why it cannot be)."""
        job = self.job
        return encoded(job.result, value, what=f"result of workflow {job.name!r}", limit=self.env.max_payload_bytes)

    def ending(
        self, run: Run, status: Literal["completed", "failed", "cancelled"], error: JobError | None, now: int
    ) -> None:
        """Put the end of run `run` in its log (an error, none for a completion) and its event in
        its events, stamped `now`; undelivered signals are dropped. What `_end` writes, and a
        step ending its workflow in its own write (`Run.ends_with`)."""
        log = run.log
        if status == "cancelled":
            reason = log.cancel_reason
            because = error.message if error else f"cancelled: {reason or 'no reason given'}"
            log.error = ErrorInfo("workflow_cancelled", clean_message(because))
            run.event("workflow.cancelled", reason=reason)
        elif error is not None:
            log.error = ErrorInfo.of(error)
            run.event("workflow.failed", error=error_data(error))
        elif self.env.tracking:
            duration_ms = round((time.perf_counter() - run.started) * 1000, 3)
            run.events.append(
                self.env.event(
                    "workflow.completed",
                    run.record.key,
                    KIND,
                    self.job.name,
                    now,
                    steps=run.steps_done,
                    duration_ms=duration_ms,
                )
            )
        log.inbox.clear()  # undelivered signals die with the workflow

    async def _end(
        self, run: Run, status: Literal["completed", "failed", "cancelled"], error: JobError | None = None
    ) -> None:
        log = run.log
        now = self.env.clock.now_ms()  # one reading for the end's event and its write
        self.ending(run, status, error, now)
        if log.parent is not None and not log.parent_told:
            # A child: the alarm stays until its parent has been told, so a crash cannot lose that.
            await run.save(status, self._wake_alarm(now, TELL_PARENT), now)
            key = run.record.key
            if self.runtime.fires_alarms:
                self.runtime.post(key, lambda: self._tell_parent(key))
        else:
            await run.save(status, ClearAlarm(), now)
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
            stored = await self._stored(key)
        except JobError as exc:
            env.logger.error(
                "workflow %s: could not read it to tell its parent: %s", printable(key), printable(exc.message)
            )
            return
        if stored is None:
            return
        record, log = stored
        parent = log.parent
        if parent is None or log.parent_told or record.status not in FINAL:
            return
        target = self.runtime.target_for(parent)
        if not isinstance(target, WorkflowHandler):
            env.logger.warning(
                "workflow %s: its parent %s is not registered here; told later", printable(key), printable(parent)
            )
            return
        raw = encoder.encode(Outcome(record.status, log.result, log.error))
        name = f"child {self.job.name}:{record.instance_id}"

        async def deliver() -> None:
            try:
                await target._deliver(parent, parent.split(":", 2)[2], name, raw, event_id=key)
            except DuplicateEventError:
                pass  # told before
            except JobError as exc:  # the alarm tells it again later
                env.logger.error(
                    "workflow %s: could not tell its parent %s: %s",
                    printable(key),
                    printable(parent),
                    printable(exc.message),
                )
                return
            # Told (or the parent is gone or ended, and there is no one to tell).
            self.runtime.post(key, lambda: self._told_parent(key))

        self.runtime.post(parent, deliver)

    async def _told_parent(self, key: str) -> None:
        env = self.env
        try:
            stored = await self._stored(key)
            if stored is None or stored[1].parent_told:
                return
            record, log = stored
            log.parent_told = True
            record.data = encoder.encode(log)
            await self.commit(Checkin(key=key, record=record, alarm=ClearAlarm()))
        except JobError as exc:  # the alarm tells the parent again; its event id refuses the repeat
            env.logger.error(
                "workflow %s: could not record that its parent was told: %s", printable(key), printable(exc.message)
            )


#: The code of `WorkflowHandler._run`: a step looks for its frame above the body's (`Run.ends_with`).
_RUN_CODE = WorkflowHandler._run.__code__
#: What `WorkflowHandler._run` takes for the value of a body its last step's write completed (not
#: looked at: that write stored it), rather than a ``Success`` built for it each time.
_ENDED: Result[object, JobError] = Success(None)


# -- the client --------------------------------------------------------------------------------


class WorkflowClient(InstanceClient[WorkflowHandler[I, R, Any]], Generic[I, R]):
    """The client verbs of one workflow; get one with ``engine.client.workflow(defn)``.

    Every verb returns a `FutureResult` that does its work when awaited and
    gives an ``IOSuccess`` or an ``IOFailure`` with one of the errors its
    type names. A verb returns once what it changed is committed; the body
    itself runs on the engine (woken by an alarm), not in the caller's task.
    On an engine opened with ``tenancy="required"``, every verb of a client
    not scoped by ``client.for_tenant(...)`` fails with `TenantError`.
    """

    def start(
        self, *, id: str, input: I
    ) -> FutureResult[WorkflowStartResult, JobNotFoundError | TenantError | ValidationError | StorageError]:
        """Start workflow `id` with `input`; an id already used is left as it is (``created=False``)."""
        handler = self._handler
        if handler is None or self._tenant_missing or handler.tenant is not None:
            return self._verb(id, lambda h, i: h.start(i, input))
        # The common case (a registered workflow, no tenant), without `_verb`'s layers: one
        # coroutine, named after this verb for a never-awaited warning, as `effect` names it.
        return VerbResult(_start(handler, id, input))

    def status(
        self, id: str
    ) -> FutureResult[WorkflowStatus, JobNotFoundError | TenantError | ValidationError | StorageError]:
        """Where workflow `id` is: its status, steps finished, current step, ``wake_at`` and log."""
        return self._verb(id, lambda h, i: h.status(i))

    def result(
        self, id: str
    ) -> FutureResult[
        R,
        JobNotFoundError
        | TenantError
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
        SignalResult,
        JobNotFoundError | TenantError | InstanceNotFoundError | InvalidStateError | ValidationError | StorageError,
    ]:
        """Send the signal `name` with `payload` (anything msgspec encodes) to workflow `id`.

        The signal is stored with the workflow and delivered to its next
        ``ctx.wait_for_signal(name, ...)`` (now, if it is waiting for it).
        An ended workflow refuses it (`InvalidStateError`).
        """
        return self._verb(id, lambda h, i: h.signal(i, name, payload))

    def cancel(
        self, id: str, *, reason: str | None = None
    ) -> FutureResult[WorkflowCancelResult, JobNotFoundError | TenantError | ValidationError | StorageError]:
        """Cancel workflow `id`: the body gets `WorkflowCancelledError` at its current call."""
        return self._verb(id, lambda h, i: h.cancel(i, reason))

    def list(
        self, *, status: WorkflowStatusName | None = None, after: str | None = None, limit: int = 100
    ) -> FutureResult[builtins.list[WorkflowSummary], JobNotFoundError | TenantError | ValidationError | StorageError]:
        """This workflow's instances (this client's tenant's only, if it has one), at most
        `limit`, only those in `status` if given, after the one `after` names.

        Page with ``after=page[-1].cursor`` until a page comes back shorter than `limit`
        (`WorkflowSummary.cursor`): each workflow is listed once, in the code-point order of
        the cursors, which on a tenant's client is the order of the ids. An id is taken
        as `after` too, naming the workflow of that id in this client's tenant (with no
        tenant, on a client for every tenant): on a client for every tenant, where tenants
        may reuse an id, page with the cursor.

        Errors: `ValidationError` for a bad `status`, `limit` (1 to 10,000) or `after`;
        `TenantError` for an `after` that is the cursor of another tenant's workflow on a
        tenant's client.
        """
        # The checks of every instance verb (unknown job, required tenancy, the tenant's text);
        # the id they validate is a placeholder: list takes none.
        return self._verb("-", lambda h, _: h.list_instances(status, after, limit))


async def _start(
    handler: WorkflowHandler[Any, Any, Any], instance_id: str, input: object
) -> Result[WorkflowStartResult, Any]:
    """`WorkflowClient.start` for a client with no tenant: `InstanceClient._verb`'s checks
    and `effect`'s edge, in one coroutine."""
    token = handler.env.trio_token
    if token is not None:
        try:  # `effect`'s test: the engine's run, and one of its tasks (not a guest run's host)
            foreign = RUN_CONTEXT.runner.trio_token is not token or RUN_CONTEXT.task is None
        except AttributeError:  # awaited outside any Trio run, or outside its tasks
            foreign = True
        if foreign:
            return foreign_run(handler.env)
    env = handler.env
    if env.clients.closed:  # `effect`'s checks
        return Failure(StorageError(CLOSED_MESSAGE))
    if (now := env.clock.now_ms()) > LAST_MS:
        return Failure(StorageError(beyond_datetime(now, "the engine's clock reads")))
    try:
        # An id of wide characters may make a key too long to store (`_verb` checks it too).
        match check_id(instance_id).bind(lambda checked: storable_id(handler, checked)):
            case Success(checked):
                return await handler.start(checked, input)
            case Failure(refused):
                return Failure(refused)
    except JobError as exc:
        return Failure(exc)
    except Exception as exc:
        return bug_failure(exc)
    raise AssertionError("check_id gives a Success or a Failure")


_start.__qualname__ = "djobs.WorkflowClient.start"
