"""Debounce jobs: collect events per instance, process them as one batch.

``add`` runs the job's ``on_event`` reducer, which folds the event into the
batch's state. The batch is flushed (``execute(ctx)`` runs once with the
state) ``flush_after`` the batch's *first* event, or at once when the batch
reaches ``max_events``, or when the client calls ``flush``. A successful
flush leaves the instance empty and ``idle``.

How a batch is kept:

- The instance row holds the batch: its state, ``event_count`` and
  ``started_at`` (the first event's time). An idle instance keeps its row
  with no state, so the event ids it accepted stay remembered.
- One alarm per instance says when the batch flushes, and why: purpose
  ``flush_after`` (set by the first event, never pushed back), ``max_events``
  (set, due now, by the event that fills the batch) or ``retry`` (a failed
  flush; the original reason is kept in the row's ``data``).
- The add that fills the batch commits a ``max_events`` alarm due now and
  posts the flush to the instance's actor. The next handler on the actor
  that sees that alarm flushes first, so the flush happens exactly at the
  Nth event even when more adds are already queued; the durable alarm covers
  a crash between the add and the flush.
- A failed flush retries by the job's `Retry` policy and keeps its batch;
  events added meanwhile join it. Exhausted retries purge the instance
  (state, alarm and event ids). A failure that is not retried (no policy,
  or an error that is not retryable) ends the batch: it is logged and
  emitted as ``job.failed``, and the instance goes idle. Either way the
  batch is kept as a dead letter (``client.dead_letters``), in the same
  check-in.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import warnings
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, NoReturn, cast, overload

import msgspec
import trio
from returns.future import FutureResult
from returns.io import IOResult, IOSuccess
from returns.result import Failure, Result, Success
from typing_extensions import TypeVar

from .._bodies import Done, Returns, check_body
from .._clock import AFTER_LATEST, LAST_MS, LATEST_MS, beyond_datetime, to_datetime, utc_isoformat
from .._codec import (
    check_storable,
    copier,
    decode,
    holds_no_float,
    may_hide_non_finite,
    non_finite,
    quick_codec,
)
from .._context import BaseContext, D_co
from .._durations import DurationLike, duration, to_ms
from .._errors import (
    CLOSED_MESSAGE,
    DuplicateEventError,
    ExecutionError,
    InstanceNotFoundError,
    InvalidStateError,
    JobError,
    JobNotFoundError,
    StorageError,
    TenantError,
    ValidationError,
)
from .._execution import Checkout, Env, OutcomeKind, RunInfo, execute, holds_cancel, run_body
from .._future import AWAITED_AFTER_CANCEL, AWAITED_TWICE, VerbResult, result_of, set_cell, set_inner
from .._future import new as _new
from .._input import MAX_LIMIT, SEPARATOR, check_interval
from .._limits import NO_LIMITS, RunLimits, definition_limits, offloaded
from .._logging import JobLog, LoggingOption, check_logging, threshold
from .._printable import printable
from .._retry import Retry, check_retry
from .._shield import SHIELDED, Shields, shielded_wait
from .._trap import RUN_CONTEXT, WOKEN, checkpoint_due, shared_trap, wakes_inline
from ..storage import Alarm, Checkin, ClearAlarm, InstanceRecord, LeaseLostError, SetAlarm
from ..storage._base import InstanceLeaseLoader, Revival, shields_marked_waits
from ..tracking import TrackedEvent
from ..tracking._base import CALLER_CONTEXT
from ._common import (
    EVENT_KEY_FIELDS,
    MAX_ID_LENGTH,
    D_contra,
    Definition,
    InstanceClient,
    StateResult,
    TenantScoped,
    bug_failure,
    check_event_id,
    check_id,
    check_name,
    count_failed_attempt,
    foreign_run,
    instance_dead_letter,
    instance_key,
    key_problem,
    refused,
    revive_letter,
    storable_id,
    unreadable_state,
)

if TYPE_CHECKING:
    from .._runtime import Runtime

E = TypeVar("E")
S = TypeVar("S")

KIND = "debounce"

#: Why an add that would open a batch is refused when its flush would fall after `LATEST_MS`.
_TOO_LATE = "Debounce {!r} instance {!r}: the batch would flush (flush_after from now) " + AFTER_LATEST

FlushReason = Literal["max_events", "flush_after", "manual"]

_REASONS: tuple[FlushReason, ...] = ("max_events", "flush_after", "manual")


class DebounceEventContext(BaseContext[D_co], Generic[E, S, D_co]):
    """The context of one ``on_event(ctx)`` call: fold `event` into `state`, return the new state.

    ``DebounceEventContext[E, S, D]``: event `E`, state `S`, services `D`
    (``object``, the default, for a reducer that needs none).

    A context is valid during its call only: the adds of an instance applied
    together (one commit) are given the same object, its fields set anew for each.

    Attributes:
        event: The event being added, validated against the job's event type.
        state: The batch's state so far, or ``None`` for the first event of a batch.
        event_count: How many events the batch holds with this one (1 for the first).
    """

    __slots__ = ("_log", "_log_level", "_logger", "event", "event_count", "state")

    def __init__(
        self,
        env: Env,
        job_name: str,
        instance_id: str,
        logger: logging.Logger,
        log_level: int,
        event: E,
        state: S | None,
        event_count: int,
        tenant_id: str | None = None,
    ) -> None:
        # BaseContext's fields set here, not through its __init__: one per add, a call fewer;
        # `log` is made when first read (most reducers never log).
        self._env = env
        self.job_name = job_name
        self.instance_id = instance_id
        self._log: JobLog | None = None
        self._logger = logger
        self._log_level = log_level
        self.tenant_id = tenant_id
        self.event = event
        self.state = state
        self.event_count = event_count

    @property
    def log(self) -> JobLog:
        """The ``ctx.log`` of this ``on_event`` call (job, instance and event number attached)."""
        log = self._log
        if log is None:
            extra = {"job": self.job_name, "instance": self.instance_id, "event": self.event_count}
            log = self._log = JobLog(self._logger, self._log_level, extra)
        return log

    @log.setter
    def log(self, log: JobLog) -> None:  # BaseContext's attribute stays assignable
        self._log = log


class DebounceContext(BaseContext[D_co], Generic[S, D_co]):
    """The context of one flush: ``execute(ctx)`` processes the batch.

    ``DebounceContext[S, D]``: state `S`, services `D` (``object`` for none).

    Attributes:
        state: The batch's accumulated state.
        event_count: How many events the batch holds.
        flush_reason: Why it flushes: ``"max_events"``, ``"flush_after"`` or
            ``"manual"`` (a client ``flush``). A retry keeps the reason of the
            flush it retries.
        debounce_started_at: When the batch's first event was added (aware UTC).
        run_count: Which flush of this instance this is (1 for the first);
            a retry keeps its flush's number.
        attempt: Which try of this flush (1 = the first).
    """

    __slots__ = ("_checkout", "attempt", "debounce_started_at", "event_count", "flush_reason", "run_count")

    def __init__(
        self,
        env: Env,
        job_name: str,
        instance_id: str,
        log: JobLog,
        checkout: Checkout[S],
        event_count: int,
        flush_reason: FlushReason,
        debounce_started_at: datetime,
        run_count: int,
        attempt: int,
        tenant_id: str | None = None,
    ) -> None:
        super().__init__(env, job_name, instance_id, log, tenant_id)
        self._checkout = checkout
        self.event_count = event_count
        self.flush_reason: FlushReason = flush_reason
        self.debounce_started_at = debounce_started_at
        self.run_count = run_count
        self.attempt = attempt

    @property
    def state(self) -> S:
        """The batch's accumulated state."""
        return self._checkout.state

    @property
    def is_retry(self) -> bool:
        """Whether this flush is a retry of a failed try."""
        return self.attempt > 1

    def terminate(self, reason: str | None = None) -> NoReturn:
        """End this flush now and delete the instance: its batch, alarm and remembered event ids.

        The next ``add`` for the id starts a new instance.

        `reason` is kept as text a job produces (escaped where no storage holds it, cut to 1,000
        characters).

        Raises:
            ValidationError: `reason` is neither a str nor ``None``; the flush fails with it instead.
        """
        self._checkout.terminate(reason)


def _keep_latest(ctx: DebounceEventContext[Any, Any, object]) -> Any:
    return ctx.event


@dataclass(frozen=True, eq=False)
class Debounce(Definition[D_contra], Generic[E, S, D_contra]):
    """A job that batches events per instance. Make one with `Debounce.make`.

    ``Debounce[E, S, D]``: event `E`, batch state `S`; its bodies need
    services `D` (``object``, the default, for none).

    Examples:
        >>> import msgspec, djobs
        >>> class Ping(msgspec.Struct):
        ...     source: str
        >>> def send(ctx: djobs.DebounceContext[Ping]) -> None:
        ...     print(ctx.event_count, ctx.state.source)
        >>> latest_ping = djobs.Debounce.make("latestPing", event=Ping, flush_after="10 seconds", execute=send)
        >>> latest_ping.flush_after_ms, latest_ping.max_events
        (10000, None)
    """

    kind: ClassVar[str] = KIND
    name: str
    event: type[E]
    state: type[S]
    flush_after_ms: int
    max_events: int | None
    on_event: Callable[[DebounceEventContext[E, S, D_contra]], Returns[S, D_contra]]
    execute: Callable[[DebounceContext[S, D_contra]], Done[D_contra]]
    retry: Retry | None = None
    logging: LoggingOption = False
    limits: RunLimits = NO_LIMITS

    @overload
    @classmethod
    def make(
        cls,
        name: str,
        *,
        event: type[E],
        state: None = None,
        flush_after: DurationLike = "5 seconds",
        max_events: int | None = None,
        on_event: Callable[[DebounceEventContext[E, E, D_contra]], Returns[E, D_contra]] | None = None,
        execute: Callable[[DebounceContext[E, D_contra]], Done[D_contra]],
        retry: Retry | None = None,
        logging: LoggingOption = False,
        timeout: DurationLike | None = None,
        blocking: bool = False,
    ) -> Debounce[E, E, D_contra]: ...

    @overload
    @classmethod
    def make(
        cls,
        name: str,
        *,
        event: type[E],
        state: type[S],
        flush_after: DurationLike = "5 seconds",
        max_events: int | None = None,
        on_event: Callable[[DebounceEventContext[E, S, D_contra]], Returns[S, D_contra]] | None = None,
        execute: Callable[[DebounceContext[S, D_contra]], Done[D_contra]],
        retry: Retry | None = None,
        logging: LoggingOption = False,
        timeout: DurationLike | None = None,
        blocking: bool = False,
    ) -> Debounce[E, S, D_contra]: ...

    @classmethod
    def make(
        cls,
        name: str,
        *,
        event: type[Any],
        state: type[Any] | None = None,
        flush_after: DurationLike = "5 seconds",
        max_events: int | None = None,
        on_event: Callable[[DebounceEventContext[Any, Any, Any]], Any] | None = None,
        execute: Callable[[DebounceContext[Any, Any]], Any],
        retry: Retry | None = None,
        logging: LoggingOption = False,
        timeout: DurationLike | None = None,
        blocking: bool = False,
    ) -> Debounce[Any, Any, Any]:
        """Define a debounce job.

        Args:
            name: The job's unique name (no ``:``).
            event: The ``msgspec.Struct`` type of an event; ``add`` validates against it.
            state: The ``msgspec.Struct`` type of a batch's state; defaults to `event`.
            flush_after: How long after a batch's first event it flushes (later
                events do not push it back). Must be more than zero.
            max_events: Flush at once when a batch holds this many events (at
                least 1); ``None`` flushes only after `flush_after`.
            on_event: The reducer: ``on_event(ctx)`` returns the new state from
                ``ctx.state`` (``None`` for a batch's first event) and
                ``ctx.event``, as a plain value, a ``Result`` or a
                ``FutureResult``. Default: keep the latest event, which needs
                `state` to be the event type.
            execute: The flush: ``execute(ctx)``, returning ``None`` or any
                container of the body forms (a ``FutureResult``, a
                ``RequiresContextFutureResult`` run with the services, ...);
                its success value is dropped.
            retry: How a failed flush is retried; ``None`` does not retry (the
                batch is kept as a dead letter and ``job.failed`` emitted).
            logging: ``True`` (debug), ``False`` (errors only), a level, or ``None`` (silent).
            timeout: The longest a flush, or an ``on_event``, may take; a
                longer one is cancelled and fails with `JobTimeoutError` (a
                flush's is retried by `retry`). ``None`` (default): no limit.
            blocking: ``True`` runs synchronous `on_event` and `execute` in a
                worker thread (``trio.to_thread``), so a body that blocks
                does not stall the engine; an ``async def`` is refused.

        Raises:
            ValidationError: The definition is malformed (a bug in the program).
        """
        check_name(name, KIND)
        state_type = event if state is None else state
        for what, tp in (("event", event), ("state", state_type)):
            if not (isinstance(tp, type) and issubclass(tp, msgspec.Struct)):
                raise ValidationError(f"Debounce {name!r}: {what} must be a msgspec.Struct type, got {tp!r}")
            check_storable(tp, f"Debounce {name!r}: {what}")
        if on_event is None and state_type is not event:
            raise ValidationError(
                f"Debounce {name!r}: the default on_event keeps the latest event, so state must be the event type "
                f"({event.__name__}); pass on_event= to fold events into a {state_type.__name__}"
            )
        flush_after_ms = to_ms(check_interval(duration(flush_after, what="flush_after"), "flush_after"))
        if flush_after_ms <= 0:
            raise ValidationError(f"Debounce {name!r}: flush_after must be more than zero, got {flush_after!r}")
        if max_events is not None and (
            isinstance(max_events, bool) or not isinstance(max_events, int) or not 1 <= max_events <= MAX_LIMIT
        ):
            raise ValidationError(
                f"Debounce {name!r}: max_events must be None or an int from 1 to {MAX_LIMIT}, got {max_events!r:.40}"
            )
        check_body(execute, f"Debounce {name!r}: execute", ("ctx",))
        if on_event is not None:
            check_body(on_event, f"Debounce {name!r}: on_event", ("ctx",))
        limits = definition_limits(timeout, blocking, {"execute": execute, "on_event": on_event}, f"Debounce {name!r}")
        reducer = _keep_latest if on_event is None else on_event
        retry, logging = check_retry(retry, f"Debounce {name!r}"), check_logging(logging, f"Debounce {name!r}")
        return cls(name, event, state_type, flush_after_ms, max_events, reducer, execute, retry, logging, limits)

    def bind(self, runtime: Runtime) -> DebounceHandler[E, S]:
        """The handler that runs this job inside an engine (used by the engine)."""
        return DebounceHandler(self, runtime)


class AddResult(msgspec.Struct, frozen=True):
    """The result of ``add``.

    Attributes:
        created: Whether this event started a new batch (the instance was
            new or idle); ``debounce.started`` was emitted.
        event_count: How many events the batch holds, this one included.
        will_flush_at: When the batch flushes: ``flush_after`` its first event,
            now if this event filled it to ``max_events``, or the time of a
            pending retry.
    """

    created: bool
    event_count: int
    will_flush_at: datetime | None


class DebounceStatus(msgspec.Struct, frozen=True):
    """The result of ``status``.

    Attributes:
        status: ``debouncing`` (a batch is waiting), ``idle`` (flushed or
            cleared; the instance remembers its event ids) or ``not_found``.
        event_count: Events in the waiting batch (0 when idle; ``None`` when not found).
        will_flush_at: When the waiting batch flushes (or retries its flush).
    """

    status: Literal["debouncing", "idle", "not_found"]
    event_count: int | None = None
    will_flush_at: datetime | None = None


class FlushResult(msgspec.Struct, frozen=True):
    """The result of ``flush``: whether a batch was flushed and how the flush ended.

    ``outcome`` is ``succeeded``, ``failed`` (not retried: the batch is now a
    dead letter), ``retrying`` (the batch is kept for a retry), ``exhausted`` or
    ``terminated`` (the instance was purged); ``None`` when the instance was
    idle and there was nothing to flush. A failed flush is not a failed call.
    """

    instance_id: str
    flushed: bool
    event_count: int
    outcome: OutcomeKind | None = None


class ClearResult(msgspec.Struct, frozen=True):
    """The result of ``clear``: whether a batch was dropped, and how many events it held."""

    instance_id: str
    cleared: bool
    event_count: int


class _Pending(msgspec.Struct, frozen=True):
    """What the row's ``data`` holds while a failed flush waits for its retry."""

    flush_reason: str


def _make_idle(record: InstanceRecord, now: int) -> None:
    """Empty the batch; the row stays, so its event ids stay remembered."""
    record.status, record.state, record.event_count, record.started_at = "idle", None, 0, None
    record.attempt, record.data, record.updated_at = 1, None, now


@dataclass(slots=True, eq=False)
class _Live(Generic[S]):
    """An instance's batch kept in memory between adds, valid under one taking of its lease.

    `serial` is the lease's serial number when the copy was made
    (`InstanceLeases.serial`); `record` is the row as last committed (``None``:
    no row), `alarm` its alarm's ``(fire_at, purpose)``, `state` the decoded
    batch state (``None``: no batch).
    """

    serial: int
    record: InstanceRecord | None
    alarm: tuple[int, str] | None
    state: S | None


#: An add's outcome: a round's success is its very answer (an ``IOSuccess``), any other a `Result`.
_Added = (
    IOSuccess[AddResult]
    | Result[AddResult, ValidationError | ExecutionError | DuplicateEventError | InvalidStateError | StorageError]
)
#: What a reducer's run gives: the new state's encoding and fresh copy, or why the add fails.
_Reduced = tuple[bytes, S] | ValidationError | ExecutionError
_Stop = Literal["lost", "actor"]

#: The most adds of one instance a round applies and commits together.
ROUND_LIMIT = 1000


#: One ``add``, as its `_AddVerb` keeps it and as it waits in its instance's queue: the verb's
#: cell itself, a list (made in one step, where an object of its own cost about 2k instructions
#: more an add), read and written by index:
#:
#: - ``[0]`` the verb's state (`_AddVerb`), then its answer;
#: - ``[1]`` the handler; ``[2]`` the instance id (checked);
#: - ``[3]`` the event, the checked copy once queued; ``[4]`` the event id, checked once queued;
#: - ``[5]`` the round's outcome for it (an `_Added`), ``None`` until its round answers it;
#: - ``[6]`` the caller's task while it is parked until then (``None``: not parked, or
#:   cancelled while queued: the add is still applied, nobody is woken for it);
#: - ``[7]`` what the reducer raised past `run_body` for it (a ``KeyboardInterrupt``), for its
#:   caller to re-raise.
_Queued = list[Any]


def _finish(pending: _Queued, result: _Added) -> None:
    pending[5] = result
    waiter = pending[6]
    if waiter is not None:
        pending[6] = None
        trio.lowlevel.reschedule(waiter)


def _step_aside(queue: deque[_Queued], mine: _Queued, refused: InvalidStateError) -> bool:
    """A writer that may not wait for its instance's actor (`Actors.refusal`: it runs a handler
    that actor waits for) stops writing: its own add, if not answered yet, is taken out of
    `queue` unapplied and answered with `refused`, and the first caller still waiting in
    `queue` is woken unanswered to go on writing (`_write`'s hand-over): ``True``. ``False``
    when `queue` is empty. With only cancelled callers' adds left, `refused` is raised: the
    writer fails them (nobody waits for them, and nothing may wait here for the actor)."""
    if mine[5] is None and mine[7] is None:
        for index, pending in enumerate(queue):
            if pending is mine:
                del queue[index]
                break
        _finish(mine, Failure(refused))
    if _hand_over(queue):
        return True
    if queue:
        raise refused
    return False


def _hand_over(queue: deque[_Queued]) -> bool:
    """Wake the first caller still waiting in `queue`, unanswered, to go on writing (`_write`'s
    hand-over): ``True``; ``False`` when only cancelled callers' adds (or none) are left."""
    for waiting in queue:
        task = waiting[6]
        if task is not None:
            waiting[6] = None
            trio.lowlevel.reschedule(task)
            return True
    return False


@trio.lowlevel.enable_ki_protection
def _answer(
    queue: deque[_Queued], results: list[_Added], escaped: BaseException | None, raised: list[BaseException]
) -> None:
    """Answer a round's adds, the front of `queue`: `results` in order, then `escaped` (what a
    reducer raised past `run_body`, for the add after them), and wake their parked callers.

    `_finish` of each without its calls: each caller is woken with one shared `WOKEN` as the
    runner's own ``reschedule`` wakes a task, inline (`djobs._trap.wakes_inline`), or through
    that ``reschedule`` when the run needs its extra steps (an instrument hears each task
    scheduled; guest mode). Protected from a ``KeyboardInterrupt`` as ``trio.lowlevel.reschedule``
    is (Trio then delivers it to the main task): one raised between taking a caller's task and
    putting it on the run queue would leave that caller parked for good, neither woken nor
    cancellable. One call a round that wakes a caller, where ``trio.lowlevel.reschedule`` would
    be one a woken caller, and about 1.5k instructions more.
    """
    runner = RUN_CONTEXT.runner
    runq = runner.runq if wakes_inline(runner) else None
    for result in results:
        pending = queue.popleft()
        pending[5] = result
        task = pending[6]
        if task is not None:
            pending[6] = None
            if runq is not None:  # `Runner.reschedule(task, WOKEN)`'s steps (`djobs._trap`)
                task._next_send_fn = task.coro.send
                task._next_send = WOKEN
                task._abort_func = None
                task.custom_sleep_data = None
                runq.append(task)
            else:
                runner.reschedule(task, WOKEN)
    if escaped is not None:
        pending = queue.popleft()
        pending[7] = escaped  # answered: a writer's own add is done (`_write`)
        task = pending[6]
        if task is not None:
            pending[6] = None
            runner.reschedule(task)
        else:
            raised.append(escaped)


def _raise(exc: BaseException) -> NoReturn:
    raise exc


def _same(value: object) -> object:
    return value


async def _unreachable() -> NoReturn:
    raise AssertionError("Runtime.call refuses a call to the instance whose handler is running")


#: How many instances' batches a handler keeps in memory at most; past it, the
#: copies whose lease was given up go first, then the oldest.
LIVE_LIMIT = 10_000


def _hold(record: InstanceRecord) -> None:
    """Keep the batch, with no alarm: a manual ``flush`` (or a full batch) flushes it."""
    record.data = None


class DebounceHandler(TenantScoped, Generic[E, S]):
    """Runs one debounce job's instances on an engine's runtime.

    While this engine holds an instance's lease, the instance's batch stays
    in memory (`_Live`): an ``add`` then runs the reducer on it and writes the
    row through (one fenced upsert, committed with its neighbours' by the
    storage's group commit) without loading it, and, when no handler of the
    instance is queued, in the caller's own task rather than on the actor.
    """

    def __init__(self, job: Debounce[E, S, Any], runtime: Runtime) -> None:
        self.job = job
        self.runtime = runtime
        self.env = runtime.env
        # Shared by the tenant-scoped copies (`scoped` copies the handler shallowly): keys are distinct.
        self._live: dict[str, _Live[S]] = {}
        #: The adds waiting per instance while one caller (the writer) applies them in rounds.
        self._queues: dict[str, deque[_Queued]] = {}
        #: Where the callers applying adds now (the writers) list their shielded scopes; the
        #: engine's close cancels them past its grace, as it cancels the handlers on actors.
        self._shields = runtime.actors.shields
        #: Whether no cancel can end a storage wait of a writer's marked task (`SHIELDED`): then
        #: a writer opens a shielded scope only where it awaits the reducer (`_write_own`).
        self._marks = shields_marked_waits(self.env.storage)
        self._logger = self.env.logger.getChild(f"{KIND}.{job.name}")
        #: What `key` puts before an instance id when no tenant is set.
        self._key_prefix = instance_key(KIND, job.name, "")
        self._running = runtime.actors.running_keys
        #: The engine's wait-for graph (`Actors.waits`): an add from a handler checks it for a cycle.
        self._waits = runtime.actors.waits
        self._log_level = threshold(job.logging)
        self._reducer_what = f"the on_event of debounce job {job.name!r}"
        self._reducer = offloaded(job.on_event, job.limits, self._reducer_what)
        #: The reducer called directly, its value taken without `run_body` when it is a
        #: state (``None``: a timeout or ``blocking``, which `run_body` applies).
        self._direct_reducer = self._reducer if job.limits.timeout_ms is None and not job.limits.blocking else None
        #: The storage, if it takes a lease and reads the row in one write (`_take_lease`).
        self._lease_loader = self.env.storage if isinstance(self.env.storage, InstanceLeaseLoader) else None
        limit = self.env.max_payload_bytes
        self._copy_state = copier(job.state, what=f"state returned by on_event of {job.name!r}", limit=limit)
        self._copy_event = copier(job.event, what=f"event of {job.name!r}", limit=limit)
        #: The copiers' quick checks, run inline per add (`quick_codec`); ``None``: through the copier.
        self._limit = limit
        self._quick_event = quick_codec(job.event)
        self._quick_state = quick_codec(job.state)
        #: Whether the event's and the state's types hold no float: then no nan hides in their
        #: encodings, and the quick checks skip `may_hide_non_finite`'s search.
        self._event_floatless = holds_no_float(job.event)
        self._state_floatless = holds_no_float(job.state)
        #: The one trap its queued adds park on (`djobs._trap.shared_trap`), and its fields.
        self._trap, self._trap_fields = shared_trap()

    def _forget(self, key: str) -> None:
        """Drop `key`'s copy in memory: a handler other than ``add`` is about to change the row."""
        self._live.pop(key, None)

    def _keep(self, key: str, live: _Live[S]) -> None:
        live_map = self._live
        live_map[key] = live
        if len(live_map) > LIVE_LIMIT:
            serial = self.runtime.lease_serial
            for k in [k for k, v in live_map.items() if serial(k) != v.serial]:
                del live_map[k]
            while len(live_map) > LIVE_LIMIT:
                del live_map[next(iter(live_map))]

    async def _live_or_fail(self, key: str, serial: int, queue: deque[_Queued]) -> _Live[S] | None:
        """`_checkout_live`'s batch, or ``None`` once every add in `queue` is answered with its failure."""
        checked = await self._checkout_live(key, serial)
        match checked:
            case Failure() as failed:
                while queue:
                    _finish(queue.popleft(), failed)
        return checked.value_or(None)

    async def _checkout_live(self, key: str, serial: int) -> Result[_Live[S], ValidationError | StorageError]:
        """`key`'s batch: the copy in memory if it was made under lease `serial`, else loaded and kept."""
        live = self._live.get(key)
        if live is not None and live.serial == serial:
            return Success(live)
        self._live.pop(key, None)
        made = self._live_of(serial, await self.env.storage.load(key))
        if isinstance(made, ValidationError):
            return Failure(made)
        self._keep(key, made)
        return Success(made)

    def _live_of(self, serial: int, loaded: tuple[InstanceRecord, Alarm | None] | None) -> _Live[S] | ValidationError:
        """The batch in memory for a row as loaded (``None``: no row), or why its state does not decode."""
        if loaded is None:
            return _Live(serial, None, None, None)
        record, alarm = loaded
        state: S | None = None
        if record.state is not None:
            match decode(self.job.state, record.state, what="state"):
                case Success(decoded):
                    state = decoded
                case Failure(error):
                    failed: ValidationError = error
                    return failed
        return _Live(serial, record, None if alarm is None else (alarm.fire_at, alarm.purpose), state)

    def key(self, instance_id: str) -> str:
        return instance_key(KIND, self.job.name, instance_id, self.tenant)

    async def revive_letter(self, key: str, letter_id: str, now: int) -> Revival:
        """Bring back the batch dead letter `letter_id` holds (see `revive_letter`); the copy
        in memory is dropped first, so the next add reads the batch brought back."""
        return await revive_letter(self.runtime, key, letter_id, now, self._forget)

    # -- verbs -------------------------------------------------------------------------

    async def add(
        self, instance_id: str, event: object, event_id: object
    ) -> Result[AddResult, ValidationError | ExecutionError | DuplicateEventError | InvalidStateError | StorageError]:
        """Add `event` to instance `instance_id`'s batch (the client's ``add`` through ``_verb``, its id checked)."""
        return result_of(await _add_verb(self, instance_id, event, event_id))

    async def _write_own(self, key: str, queue: deque[_Queued], pending: _Queued) -> _Added:
        """Apply `queue`'s adds as their writer (`_write`) until `pending`, this caller's own, is answered."""
        raised: list[BaseException] = []
        stopped: JobError | None = None
        handed = False
        # Shielded as a handler on an actor is: the adds queued behind this caller are applied
        # even if it is cancelled. Past the shutdown grace the engine's close cancels the
        # shields (`Actors.cancel_running`): a reducer still running stops, nothing more is
        # applied. With a storage no cancel interrupts but where it shields a marked task's
        # waits itself (`shields_marked_waits`), the task is marked (`djobs._shield`) and only
        # an awaited reducer opens a scope (`_round`); else one scope covers all of it.
        shields = self._shields
        scope: trio.CancelScope | None = None
        task: trio.lowlevel.Task | None = None
        marked: Shields | None = None
        if self._marks:
            task = RUN_CONTEXT.task
            marked = SHIELDED.get(task)  # a writer of another instance, whose reducer adds here
            SHIELDED[task] = shields
            shields.writers += 1
        else:
            scope = trio.CancelScope(shield=True)
            shields.scopes[scope] = None  # a subscript, not a call
        try:
            if scope is None:
                handed = await self._write(key, queue, raised, pending)
            else:
                with scope:
                    handed = await self._write(key, queue, raised, pending)
        except JobError as exc:  # the engine closed (or a lease failed): the adds left were not applied
            stopped = exc
        finally:
            if task is not None:
                shields.writers -= 1
                if marked is None:
                    del SHIELDED[task]
                else:
                    SHIELDED[task] = marked
            elif scope is not None:
                del shields.scopes[scope]
            if not handed:
                # No await since the queue was last seen empty (or the writer stopped).
                del self._queues[key]
                if queue:
                    if isinstance(stopped, StorageError):
                        gone = stopped
                    elif scope is not None and scope.cancelled_caught:
                        gone = StorageError(CLOSED_MESSAGE)
                    else:
                        gone = StorageError("the add was not applied: the engine failed while applying it")
                    own: JobError = gone if stopped is None else stopped  # the writer's own add's answer
                    while queue:
                        left = queue.popleft()
                        _finish(left, Failure(own if left is pending else gone))  # type: ignore[arg-type]
        if raised:
            # A reducer's KeyboardInterrupt for this caller's own add, or for an add whose
            # caller was cancelled while it waited: re-raised here, every other add answered.
            raise raised[0] if len(raised) == 1 else BaseExceptionGroup("reducers raised", raised)
        answered: _Added | None = pending[5]
        assert answered is not None
        return answered

    async def flush(self, instance_id: str) -> Result[FlushResult, InstanceNotFoundError | StorageError]:
        key = self.key(instance_id)

        async def run() -> Result[FlushResult, InstanceNotFoundError | StorageError]:
            self._forget(key)
            loaded = await self.env.storage.load(key)
            if loaded is None:
                return Failure(InstanceNotFoundError(self.job.name, instance_id, "debounce job"))
            record, _ = loaded
            if record.state is None:
                return Success(FlushResult(instance_id, flushed=False, event_count=0))
            count = record.event_count
            outcome = await self._flush(record, "manual")
            return Success(FlushResult(instance_id, flushed=True, event_count=count, outcome=outcome))

        return await self.runtime.call(key, run)

    async def clear(self, instance_id: str) -> Result[ClearResult, StorageError]:
        key = self.key(instance_id)
        # A flush running now (a stuck one) is cancelled: its batch is dropped with it. A clear from
        # that flush itself (or one it waits for) is refused first, and so cancels nothing.
        self.runtime.refuse_self_call(key)
        running = self.env.running.get(key)
        stuck = None
        if running is not None:
            before = await self.env.storage.load(key)
            stuck = 0 if before is None else before[0].event_count
            running = self.env.running.get(key)
            # The instance stays (idle, its event ids remembered), as a clear between flushes leaves it.
            if running is None or not running.stop("cleared", keep_instance=True):
                stuck = None

        async def run() -> Result[ClearResult, StorageError]:
            self._forget(key)
            loaded = await self.env.storage.load(key)
            if loaded is None or loaded[0].state is None:
                if stuck is not None:
                    return Success(ClearResult(instance_id, cleared=True, event_count=stuck))
                return Success(ClearResult(instance_id, cleared=False, event_count=0))
            record = loaded[0]
            count = record.event_count
            _make_idle(record, self.env.now_ms())
            await self.env.commit(Checkin(key=key, record=record, alarm=ClearAlarm()))
            return Success(ClearResult(instance_id, cleared=True, event_count=count))

        return await self.runtime.call(key, run)

    async def status(self, instance_id: str) -> Result[DebounceStatus, StorageError]:
        loaded = await self.env.storage.load(self.key(instance_id))
        if loaded is None:
            return Success(DebounceStatus("not_found"))
        record, alarm = loaded
        if record.state is None:
            return Success(DebounceStatus("idle", event_count=0))
        return Success(DebounceStatus("debouncing", record.event_count, to_datetime(alarm.fire_at) if alarm else None))

    async def get_state(
        self, instance_id: str
    ) -> Result[StateResult[S | None], InstanceNotFoundError | ValidationError | StorageError]:
        loaded = await self.env.storage.load(self.key(instance_id))
        if loaded is None:
            return Failure(InstanceNotFoundError(self.job.name, instance_id, "debounce job"))
        record, alarm = loaded
        if record.state is None:
            return Success(StateResult(None))
        flush_at = to_datetime(alarm.fire_at) if alarm else None
        return decode(self.job.state, record.state, what="state").map(lambda state: StateResult(state, flush_at))

    # -- adding an event -----------------------------------------------------------------

    async def _finish_reduce(self, call: Callable[[], object], ctx: DebounceEventContext[E, S, Any]) -> _Reduced[S]:
        """The add's outcome (as a round's loop takes it) for a reducer's outcome that `run_body` must finish."""
        job = self.job
        match await run_body(call, self.env.services, self._reducer_what, job.limits):
            case Failure(error):
                ctx.log.error("on_event failed: %s", printable(error.message))
                if isinstance(error, ValidationError | ExecutionError):
                    return error
                return ExecutionError(f"on_event failed: {error.message}", error)
            case Success(returned):
                pass
        if returned is None:
            return ValidationError(
                f"on_event of {job.name!r} returned None; it must return the new state (a {job.state.__name__})"
            )
        return self._copy_state(returned)

    async def _write(self, key: str, queue: deque[_Queued], raised: list[BaseException], mine: _Queued) -> bool:
        """Apply `queue`'s adds in rounds: each round one reducer run per add, one commit.

        Once `mine` (this writer's own add) is answered, the writer goes on only until
        the adds queued at that moment are answered (those that waited for it, mostly
        one more round); then the first caller still waiting in `queue` is woken
        unanswered to go on writing, and this returns ``True`` (the queue is that
        caller's now): no caller goes on applying others' adds for as long as they keep
        coming. With none waiting (only cancelled callers' adds are left) this writer
        goes on; ``False`` once `queue` is empty.

        A round runs in this task when the instance is free and its lease held
        (`Runtime.enter`), on the instance's actor otherwise. An instance nothing
        of this engine works on has its lease taken here first (`_take_lease`).
        What the reducer raised past `run_body` (a ``KeyboardInterrupt``) for an add
        whose caller is not waiting (the writer's own, or one whose caller was
        cancelled) is put in `raised`, for the writer to re-raise once it stops.
        """
        runtime = self.runtime
        lost = 0
        last: _Queued | None = None  # the last add queued when `mine` was answered
        while queue:
            if mine[5] is not None or mine[7] is not None:
                if last is None:
                    last = queue[-1]
                elif last[5] is not None or last[7] is not None:
                    if _hand_over(queue):
                        return True
                    last = queue[-1]  # none waiting: only cancelled callers' adds, applied here
            serial = runtime.enter(key)
            if serial is None and not lost and runtime.untouched(key):
                serial = await self._take_lease(key)
            if serial is not None:
                token = CALLER_CONTEXT.set(contextvars.copy_context()) if self.env.tracking else None
                try:
                    stop = await self._round(key, serial, queue, raised, inline=True)
                finally:
                    if token is not None:
                        CALLER_CONTEXT.reset(token)
                    runtime.leave(key)
                if stop != "lost":
                    continue  # "actor": a flush of a full batch is posted; the next round queues behind it

            async def on_actor() -> _Stop | None:
                # Queued behind a handler the engine's close cut off past its grace, this never
                # starts: the actor refuses it (`Actors.cut_off`), and `call` raises a StorageError.
                if not queue:
                    return None
                held = runtime.lease_serial(key)
                if held is None:  # lost by an earlier handler's check-in: take it afresh
                    return "lost"
                return await self._round(key, held, queue, raised, inline=False)

            if serial is None or stop == "lost":
                # Shielded from the close's cancel of the writer's scope: the round on the actor
                # (cancelled there with the actor's handlers) ends before its adds are answered here.
                with trio.CancelScope(shield=True):
                    try:
                        stop = await runtime.call(key, on_actor)
                    except InvalidStateError as refused:  # the writer is a handler the actor waits for
                        return _step_aside(queue, mine, refused)
            if stop == "lost":
                # Nothing was written: the lease passed to another engine. Take it afresh and go on.
                lost += 1
                if lost > 3:
                    while queue:
                        _finish(queue.popleft(), Failure(LeaseLostError(key)))
        return False

    async def _take_lease(self, key: str) -> int | None:
        """Take `key`'s lease in this task, one try, and enter it (`Runtime.enter`): its serial number.

        ``None`` when another engine holds the lease, storage failed or work for
        `key` began meanwhile: the round goes to the actor, which waits for the
        lease (outside this writer's shield) and reports a failure to every add
        queued. Saves starting an actor for an instance's first round.
        """
        runtime, env = self.runtime, self.env
        leases, loader = runtime.leases, self._lease_loader
        loaded: tuple[InstanceRecord, Alarm | None] | None = None
        try:
            if loader is not None:  # the row is read in the same write
                taken, loaded = await loader.lease_and_load(key, leases.owner, env.now_ms(), leases.lease_ms)
            else:
                taken = await env.storage.acquire_instance_lease(key, leases.owner, env.now_ms(), leases.lease_ms)
        except StorageError:
            return None
        if not taken:
            return None
        ours = leases.free(key)  # else an actor took the lease meanwhile and holds it
        if ours:
            leases.took(key)  # `runtime.took_lease`, a call fewer
        serial = runtime.actors.enter(key)  # `runtime.enter`, a call fewer
        if ours and serial is not None and loader is not None:
            # The row as this taking of the lease found it: the first round loads nothing.
            live = self._live_of(serial, loaded)
            if isinstance(live, _Live):  # else the round loads it again and reports why it does not decode
                self._keep(key, live)
        if serial is None and not runtime.actors.has_work(key):
            # The engine began to close meanwhile: the lease is given up with the idle ones.
            leases.went_idle(key)
        return serial

    async def _round(
        self, key: str, serial: int, queue: deque[_Queued], raised: list[BaseException], *, inline: bool
    ) -> _Stop | None:
        """Apply the adds at the front of `queue` under the lease numbered `serial` and commit them as one write.

        A round takes the adds without an event id (up to `ROUND_LIMIT`, and
        up to the one that fills the batch to ``max_events``), or one add with
        an event id alone (its id is checked and stored with it). Each add
        gets what it would have had alone: the reducer sees the state the
        previous add left; a reducer that fails fails its own add only. Every
        add of the round is answered only after the round's commit.

        A reducer that raises what `run_body` lets through but a cancel (a
        ``KeyboardInterrupt``) ends the round at its add: the adds before it
        are committed and answered, the exception is raised in that add's
        caller's task (or put in `raised` when the caller is not waiting), and
        the adds after it wait for the next round. A cancel propagates: none
        of the round's adds is written.

        Returns ``"lost"`` (nothing written: another engine holds the lease),
        ``"actor"`` (`inline` and a full batch must flush first), else ``None``.
        """
        job, env = self.job, self.env
        live = self._live.get(key)
        if live is None or live.serial != serial:  # else the copy in memory, without a call
            live = await self._live_or_fail(key, serial, queue)
            if live is None:
                return None
        if live.alarm is not None and live.alarm[1] == "max_events" and live.state is not None:
            # A full batch whose posted flush has not run yet (or did not survive a
            # restart): it flushes before these events, which start the next batch.
            if inline:
                return "actor"
            assert live.record is not None
            self._forget(key)
            await self._flush(live.record, "max_events")
            live = await self._live_or_fail(key, serial, queue)
            if live is None:
                return None
        event_id = queue[0][4]
        if event_id is not None and await env.storage.has_event_id(key, event_id):
            first = queue.popleft()
            _finish(first, Failure(DuplicateEventError(first[2], event_id)))
            return None
        # Until the round commits, the copy may differ from the row (a reducer may
        # change the state it was given in place): it is dropped, and kept again after.
        self._live.pop(key, None)
        record, alarm, state = live.record, live.alarm, live.state
        raw = record.state if record is not None and state is not None else None
        count = record.event_count if raw is not None and record is not None else 0
        now = env.now_ms()
        if state is None and now + job.flush_after_ms > LATEST_MS:
            # The add would open a batch whose flush falls after djobs's last time: refused, nothing stored.
            first = queue.popleft()
            if now > LAST_MS:  # the clock itself is past what a datetime holds: as `effect` refuses every verb
                _finish(first, Failure(StorageError(beyond_datetime(now, "the engine's clock reads"))))
            else:
                _finish(first, Failure(ValidationError(_TOO_LATE.format(job.name, first[2]))))
            return None
        results: list[_Added] = []
        new_alarm: SetAlarm | None = None
        started = False
        started_flush_at = now
        # The datetime of the add's alarm, made when first needed and again only when the alarm moves.
        flush_at_ms: int | None = None
        flush_at: datetime | None = None
        full = False
        added = False  # some event of the round was reduced
        taken = 0
        escaped: BaseException | None = None  # what a reducer raised past run_body, ending the round
        direct, quick, limit, state_type = self._direct_reducer, self._quick_state, self._limit, job.state
        floatless = self._state_floatless
        logger, log_level, tenant = self._logger, self._log_level, self.tenant
        # A reducer called directly shares one context per round, made at its first add and set
        # anew for each (an `__init__` of ten stores per add otherwise): its call is over before
        # the next add's. Under a timeout or `blocking`, each add has a context of its own: a
        # `blocking` reducer past its timeout runs on in its abandoned thread, and must not see
        # (nor write into) the next add's event and state.
        ctx: DebounceEventContext[E, S, Any] | None = None
        # The round's adds are the queue's front as it is now: a reducer that awaits lets
        # more adds join the queue meanwhile, and they wait for the next round.
        for pending in list(islice(queue, ROUND_LIMIT)):
            if taken and pending[4] is not None:
                break
            taken += 1
            created = state is None
            number = 1 if created else count + 1
            # The new state's checked encoding and the state freshly decoded from it (the decoded
            # copy, not the object the reducer returned, which its code may still hold or change,
            # is the next event's ``ctx.state``), or why the add fails; or, when what the reducer
            # gave needs `run_body` (any form but a state, an exception, a timeout, ``blocking``),
            # the coroutine that finishes it. No `Result` and no coroutine is made on the way
            # for a synchronous reducer that returns a state.
            reduced: _Reduced[S] | Coroutine[Any, Any, _Reduced[S]] | None = None
            if ctx is None or direct is None:
                ctx = DebounceEventContext(
                    env, job.name, pending[2], logger, log_level, pending[3], state, number, tenant
                )
            else:  # the round's one context, for this add (the round's adds are of one instance)
                ctx.event, ctx.state, ctx.event_count, ctx._log = pending[3], state, number, None
            if direct is None:  # a timeout or `blocking`: `run_body` calls the reducer
                reduced = self._finish_reduce(functools.partial(self._reducer, ctx), ctx)
            else:
                # A reducer called directly (no call of its own per add), with `copier`'s quick
                # check of the state it returns (`quick_codec`).
                try:
                    value = direct(ctx)
                except BaseException as exc:  # run_body makes it the add's failure, or lets a cancel through
                    reduced = self._finish_reduce(functools.partial(_raise, exc), ctx)
                else:
                    if type(value) is state_type:
                        if quick is not None:
                            try:
                                new_raw = quick[0](value)
                                if len(new_raw) <= limit and (
                                    floatless or may_hide_non_finite(new_raw) is None or non_finite(value) is None
                                ):
                                    decoded = quick[1](new_raw)
                                    if decoded == value:  # nothing turned into another type (`quick_codec`)
                                        reduced = new_raw, decoded
                            except Exception:  # refused (or user code msgspec calls raised): the copier words it
                                pass
                        if reduced is None:
                            reduced = self._copy_state(value)
                    else:  # any other form goes through `run_body` with the value the reducer gave
                        reduced = self._finish_reduce(functools.partial(_same, value), ctx)
            if type(reduced) is not tuple and not isinstance(reduced, JobError):
                finishing = cast("Coroutine[Any, Any, _Reduced[S]]", reduced)
                try:
                    if inline and self._marks:  # a marked writer's task: shielded here (`_write_own`)
                        # Unmarked while the reducer runs: its storage waits stay cancellable by
                        # its own scopes (a ``move_on_after``, the job's ``timeout``); the scope
                        # `shielded_wait` opens keeps the writer's caller's cancel out.
                        task = RUN_CONTEXT.task
                        mark = SHIELDED.pop(task)
                        try:
                            reduced = await shielded_wait(self._shields, finishing)
                        finally:
                            SHIELDED[task] = mark
                    else:
                        reduced = await finishing
                except BaseException as exc:
                    if holds_cancel(exc) or isinstance(exc, StorageError):  # the close's stop: nothing applied
                        raise
                    escaped = exc  # this add's own: the adds before it are committed first
                    if raw is not None:  # the reducer may have changed the state it was given in place
                        state = decode(job.state, raw, what="state").value_or(None)
                    break
            if type(reduced) is tuple:
                raw, state = reduced
            else:
                results.append(Failure(cast("ValidationError | ExecutionError", reduced)))
                if raw is not None:  # a fresh copy of the state before it, whatever the reducer did to it
                    state = decode(job.state, raw, what="state").value_or(None)
                if event_id is not None:
                    break
                continue
            count = number
            if created:
                started = True
                new_alarm = SetAlarm(now + job.flush_after_ms, "flush_after")
                alarm = (new_alarm.fire_at, new_alarm.purpose)
            # While a failed flush waits for its retry, new events join its batch
            # and the retry's backoff is kept, even past max_events.
            if job.max_events is not None and count >= job.max_events and alarm is not None and alarm[1] != "retry":
                # Due now, and durable: should the process stop before the posted
                # flush runs, the alarm flushes the batch after a restart.
                new_alarm = SetAlarm(now, "max_events")
                alarm = (now, "max_events")
                full = True
            assert alarm is not None
            if created:
                started_flush_at = alarm[0]
            if alarm[0] != flush_at_ms:  # one datetime per round, mostly
                flush_at_ms, flush_at = alarm[0], to_datetime(alarm[0])
            # The add's very answer, an ``IOSuccess`` holding a ``Success``, made without returns'
            # constructors (four Python calls) as `djobs._future.success` makes one.
            made = _new(Success)
            set_inner(made, AddResult(created, count, flush_at))
            answer = _new(IOSuccess)
            set_inner(answer, made)
            results.append(answer)
            added = True
            if full or event_id is not None:
                break
        if added:
            assert raw is not None
            events: list[TrackedEvent] | None = [] if env.tracking else None
            if record is None:
                record = InstanceRecord(
                    key=key,
                    kind=KIND,
                    name=job.name,
                    instance_id=queue[0][2],
                    tenant_id=self.tenant,
                    status="idle",
                    created_at=now,
                )
                if events is not None:
                    events.append(env.event("job.started", key, KIND, job.name))
            if started:
                record.started_at, record.attempt, record.data = now, 1, None
                if events is not None:
                    when = utc_isoformat(started_flush_at)
                    events.append(env.event("debounce.started", key, KIND, job.name, flush_at=when))
            record.status, record.state, record.event_count, record.updated_at = "debouncing", raw, count, now
            try:
                await env.commit(Checkin(key=key, record=record, alarm=new_alarm, event_id=event_id), events)
            except LeaseLostError:
                return "lost"
            except DuplicateEventError:  # another process accepted the id since the check above
                assert event_id is not None
                first = queue.popleft()
                _finish(first, Failure(DuplicateEventError(first[2], event_id)))
                return None
            except StorageError as exc:
                results = [Failure(exc)] * len(results)
            else:
                # Committed: the copy is the row again (unless the lease changed hands meanwhile).
                if self.runtime.lease_serial(key) == serial:
                    self._keep(key, _Live(serial, record, alarm, state))
                if full:
                    self.runtime.post(key, lambda: self._flush_posted(key))
        if escaped is None and len(results) == 1 and queue[0][6] is None:
            queue.popleft()[5] = results[0]  # one add whose caller is not parked (the writer): no wake-up
        else:
            _answer(queue, results, escaped, raised)
        return None

    async def _flush_posted(self, key: str) -> None:
        self._forget(key)
        try:
            loaded = await self.env.storage.load(key)
            if loaded is None or loaded[1] is None or loaded[1].purpose != "max_events" or loaded[0].state is None:
                return  # flushed or cleared since
            await self._flush(loaded[0], "max_events")
        except StorageError as exc:
            # The max_events alarm is still set: it fires and flushes later.
            self.env.logger.error(
                "debounce %s: could not flush a full batch: %s", printable(key), printable(exc.message)
            )

    # -- alarms and flushes --------------------------------------------------------------

    async def on_alarm(self, alarm: Alarm) -> None:
        self._forget(alarm.key)
        loaded = await self.env.storage.load(alarm.key)
        if loaded is None or loaded[1] is None or loaded[1] != alarm or loaded[0].state is None:
            return  # flushed, cleared or purged since, or the alarm was replaced after it was claimed
        record = loaded[0]
        reason: FlushReason = "flush_after"
        if alarm.purpose == "max_events":
            reason = "max_events"
        elif alarm.purpose == "retry" and record.data is not None:
            try:
                stored = msgspec.json.decode(record.data, type=_Pending).flush_reason
            except msgspec.DecodeError:
                stored = "flush_after"
            reason = next((r for r in _REASONS if r == stored), "flush_after")
        attempt = record.attempt
        try:
            await self._flush(record, reason)
        except StorageError as exc:
            # The alarm stays claimed and fires again after its lease.
            self.env.logger.error(
                "debounce %s: could not record a flush: %s", printable(alarm.key), printable(exc.message)
            )
        except Exception as exc:  # a bug past the body: the attempt counts (no endless re-run of it)

            def keep_reason(pending: InstanceRecord) -> None:
                pending.data = msgspec.json.encode(_Pending(reason))

            await count_failed_attempt(
                self.env,
                alarm.key,
                exc,
                kind=KIND,
                name=self.job.name,
                retry=self.job.retry,
                attempt=attempt,
                retry_purpose="retry",
                give_up=_hold,
                before_retry=keep_reason,
            )

    async def _flush(self, record: InstanceRecord, reason: FlushReason) -> OutcomeKind:
        """Run ``execute`` on the batch in `record` and commit what came of it."""
        job, env = self.job, self.env
        # attempt > 1 means a failed flush of this batch is waiting for its retry;
        # any flush of the batch (the retry alarm or a manual one) is the next try.
        attempt = record.attempt
        run_count = record.run_count if attempt > 1 else record.run_count + 1
        count = record.event_count
        log = env.job_log(KIND, job.name, job.logging, instance=record.instance_id, run=run_count, attempt=attempt)
        info = RunInfo(record.key, KIND, job.name, run_count, attempt)
        events: list[TrackedEvent] = []
        assert record.state is not None
        state = decode(job.state, record.state, what="state")
        outcome_kind: OutcomeKind
        error: JobError | None = None
        kept = False  # a clear stopped the flush: the batch goes, the instance and its event ids stay
        match state:
            case Failure(failure):
                outcome_kind, error = "failed", failure
                unreadable_state(env, log, events, record, KIND, job.name, error, run_count=run_count, attempt=attempt)
                retry_at, duration_ms = None, 0.0
            case Success(value):
                checkout = Checkout(value)
                started_at = to_datetime(record.started_at if record.started_at is not None else record.updated_at)
                ctx: DebounceContext[S, Any] = DebounceContext(
                    env,
                    job.name,
                    record.instance_id,
                    log,
                    checkout,
                    count,
                    reason,
                    started_at,
                    run_count,
                    attempt,
                    record.tenant_id,
                )
                what = f"the execute of debounce job {job.name!r}"
                body = offloaded(job.execute, job.limits, what)
                outcome = await execute(
                    env, info, checkout, lambda: body(ctx), job.retry, events, log, job.limits, what
                )
                outcome_kind, retry_at, duration_ms = outcome.kind, outcome.retry_at, outcome.duration_ms
                error = outcome.error
                kept = outcome_kind == "terminated" and checkout.keep_instance
        now = env.now_ms()
        record.run_count = run_count
        # A batch whose flush failed for good is kept as a dead letter, with its events'
        # state; retrying the letter flushes it again on this instance.
        letter = None
        if outcome_kind in ("exhausted", "failed"):
            batch = msgspec.structs.replace(record, status="debouncing", attempt=1, data=None, updated_at=now)
            letter = instance_dead_letter(
                record,
                kind="debounce",
                revived=batch,
                purpose="flush_after",
                error=error,
                attempts=attempt,
                now=now,
                over="idle",
            )
        if outcome_kind == "exhausted" or (outcome_kind == "terminated" and not kept):
            if outcome_kind == "exhausted":
                events.append(env.event("job.terminated", record.key, KIND, job.name, reason="retry_exhausted"))
            await env.commit(Checkin(key=record.key, record=None, dead_letter=letter), events)
        elif outcome_kind == "retrying":
            assert retry_at is not None
            record.attempt, record.updated_at = attempt + 1, now
            record.data = msgspec.json.encode(_Pending(reason))
            await env.commit(Checkin(key=record.key, record=record, alarm=SetAlarm(retry_at, "retry")), events)
        else:
            if outcome_kind == "succeeded":
                events.append(
                    env.event(
                        "debounce.flushed",
                        record.key,
                        KIND,
                        job.name,
                        event_count=count,
                        reason=reason,
                        duration_ms=duration_ms,
                    )
                )
            elif outcome_kind == "failed":
                log.error("flush failed and is not retried; its batch of %d event(s) is kept as a dead letter", count)
            _make_idle(record, now)
            await env.commit(Checkin(key=record.key, record=record, alarm=ClearAlarm(), dead_letter=letter), events)
        return outcome_kind


_AddError = ValidationError | ExecutionError | DuplicateEventError | InvalidStateError | StorageError


#: What an add never awaited warns (`_AddVerb.__del__`), in the words Python uses for a coroutine.
_NEVER_AWAITED = "coroutine 'djobs.DebounceClient.add' was never awaited"

#: `_AddVerb`'s state until its first await.
_NEW: Any = object()
#: `_AddVerb`'s state while its first await runs, and after that await ended by an exception.
_AWAITING: Any = object()
_SPENT: Any = object()


class _AddVerb(VerbResult[AddResult, _AddError]):  # type: ignore[misc]  # FutureResult is final to type checkers
    """The `FutureResult` of one ``add``: awaited, it is the add itself, one generator.

    No coroutine of its own and no `trio.lowlevel.wait_task_rescheduled`: an add that
    joins the queue of an instance's writer (most adds, under load) parks its caller
    by yielding Trio's trap here (`djobs._trap`: its handler's one trap, its abort
    function set each time), once, until its round's commit, and its answer is the
    ``IOSuccess`` the round made. ``_cell`` is the add as it waits in the queue (see
    `_Queued`); its state is `_NEW` until the first await, `_AWAITING` while it runs,
    `_SPENT` once it ended by an exception (a cancel), then the answer. Awaited again,
    it answers as `VerbResult` does. An add dropped never awaited warns as Python warns
    of a coroutine never awaited (`__del__`: a call per add, where a coroutine made per
    add to warn cost about ten times more).
    """

    __slots__ = ()

    def __await__(self) -> Generator[Any, Any, IOResult[AddResult, _AddError]]:
        cell: list[Any] = self._cell  # see the class's docstring
        state = cell[0]
        if state is not _NEW:
            if state is _AWAITING:
                raise RuntimeError(AWAITED_TWICE)
            if state is _SPENT:
                raise RuntimeError(AWAITED_AFTER_CANCEL)
            return state  # type: ignore[no-any-return]  # the answer
        if checkpoint_due():  # in a cancelled scope: Cancelled before anything is done, as `VerbResult` does
            yield from trio.lowlevel.checkpoint().__await__()  # noqa: ASYNC105  # awaited, by yield from
            return (yield from self.__await__())
        cell[0] = _AWAITING
        handler: DebounceHandler[Any, Any] = cell[1]
        env = handler.env
        result: _Added | None = None
        try:
            token = env.trio_token
            if token is not None:  # `effect`'s checks: the caller awaits this add itself
                try:
                    foreign = RUN_CONTEXT.runner.trio_token is not token or RUN_CONTEXT.task is None
                except AttributeError:  # awaited outside any Trio run, or outside its tasks (a guest run's host)
                    foreign = True
                if foreign:
                    result = foreign_run(env)
            if result is None and env.clients.closed:
                result = Failure(StorageError(CLOSED_MESSAGE))
            if result is None:
                # Matches, not a Result.do: every add passes here, and a generator would cost more than the checks.
                event, event_id = cell[3], cell[4]
                the_event_id: str | None = None
                if event_id is not None:
                    match check_event_id(event_id):
                        case Success(checked_id):
                            the_event_id = checked_id
                        case Failure(error):
                            result = Failure(error)
                # The first problem found is the answer: the event id's, the event's, then the key's.
                checked_event: object = None
                if result is None:
                    # The event's checked copy: `copier`'s quick check inline (no call of its own), else the copier.
                    quick = handler._quick_event
                    if quick is not None and type(event) is handler.job.event:
                        try:
                            raw = quick[0](event)
                            # A null (or a "nan": key) may be a nan msgspec wrote so (`non_finite`): the
                            # copier refuses one.
                            if len(raw) <= handler._limit and (
                                handler._event_floatless
                                or may_hide_non_finite(raw) is None
                                or non_finite(event) is None
                            ):
                                decoded = quick[1](raw)
                                if decoded == event:  # nothing turned into another type (`quick_codec`)
                                    checked_event = decoded
                        except Exception:  # refused (or user code msgspec calls raised): the copier words it
                            pass
                    if checked_event is None:
                        copied = handler._copy_event(event)
                        if isinstance(copied, ValidationError):
                            result = Failure(copied)
                        else:
                            checked_event = copied[1]
                instance_id: str = cell[2]
                key = handler._key_prefix + instance_id if handler.tenant is None else handler.key(instance_id)
                if (
                    the_event_id is not None
                    and result is None
                    and (problem := key_problem(key + the_event_id, EVENT_KEY_FIELDS))
                ):
                    result = Failure(problem)  # stored beside the instance's key, as one key
            if result is None:
                cell[3], cell[4] = checked_event, the_event_id  # the cell is the add in the queue (`_Queued`)
                queue = handler._queues.get(key)
                if queue is None:
                    queue = handler._queues[key] = deque((cell,))
                    result = yield from handler._write_own(key, queue, cell).__await__()
                elif (
                    (running := handler._running())
                    and (key in running or key in handler._waits)
                    and (refused := handler.runtime.actors.refusal(key)) is not None
                ):
                    # A handler of this very instance adding to it, or of one it waits for, or a wait
                    # that would close a cycle (`Actors.cycle`): refused as `call` refuses it, not queued.
                    result = Failure(refused)
                else:
                    # A writer is applying this instance's adds: join its queue and wait for its commit,
                    # parked until the round reschedules this task (a cancel ends the wait, not the add).
                    queue.append(cell)
                    cell[6] = RUN_CONTEXT.task
                    # The handler's one trap, read by Trio as soon as it is yielded (`djobs._trap`).
                    handler._trap_fields["abort_func"] = self._abort
                    if running:
                        # A handler waits for this instance (its writer): in the wait-for graph, and
                        # its concurrency slot lent meanwhile, as `Actors.call` lends it.
                        actors = handler.runtime.actors
                        edges = actors.waiting(key)
                        assert edges is not None
                        lent = actors.lend_slot()
                        try:
                            woken = yield handler._trap
                        finally:
                            actors.done_waiting(edges)
                            with trio.CancelScope(shield=True):  # noqa: ASYNC100  # `yield from` is its await
                                yield from actors.take_slot(lent).__await__()
                    else:
                        woken = yield handler._trap
                    if woken is not WOKEN:
                        woken.unwrap()
                    if cell[7] is not None:  # its event made the reducer raise a KeyboardInterrupt
                        raise cell[7]
                    result = cell[5]
                    if result is None:
                        # Woken unanswered: the writer answered its own add and handed the queue over
                        # (`_write`); this caller writes now.
                        result = yield from handler._write_own(key, queue, cell).__await__()
        except JobError as exc:
            result = Failure(exc)  # type: ignore[arg-type]
        except Exception as exc:  # a bug below: a typed failure for the caller, never an escape into its app
            # An add already committed keeps its answer (a caller retrying a failure would add twice).
            done = cell[5]  # ``None`` unless its round answered it
            result = done if type(done) is IOSuccess else bug_failure(exc)
        except BaseException:
            cell[0] = _SPENT
            raise
        answer: IOResult[AddResult, _AddError] = result if type(result) is IOSuccess else IOResult.from_result(result)
        cell[0] = answer
        return answer

    def _abort(self, _: Callable[[], BaseException]) -> trio.lowlevel.Abort:
        """The abort function of the caller's park (one park and one wake-up per add: a
        `trio.Event` costs an object, a set and more calls)."""
        # Cancelled while queued: the add is still applied; nobody is woken for it.
        cell: _Queued = self._cell
        cell[6] = None
        return trio.lowlevel.Abort.SUCCEEDED

    def __del__(self) -> None:
        if self._cell[0] is _NEW:
            warnings.warn(_NEVER_AWAITED, RuntimeWarning, stacklevel=2)


def _add_verb(handler: DebounceHandler[Any, Any], instance_id: str, event: object, event_id: object) -> _AddVerb:
    """The `_AddVerb` of an add of `event` to instance `instance_id` (its id checked)."""
    verb: _AddVerb = _new(_AddVerb)
    set_cell(verb, [_NEW, handler, instance_id, event, event_id, None, None, None])  # `_Queued`
    return verb


class DebounceClient(InstanceClient[DebounceHandler[E, S]], Generic[E, S]):
    """The client verbs of one debounce job; get one with ``engine.client.debounce(job)``.

    Every verb returns a `FutureResult` that does its work when awaited and
    gives an ``IOSuccess`` or an ``IOFailure`` with one of the errors its
    type names. A verb returns only after what it changed is committed.
    """

    def add(
        self, *, id: str, event: E, event_id: str | None = None
    ) -> FutureResult[
        AddResult,
        JobNotFoundError
        | TenantError
        | InvalidStateError
        | ValidationError
        | ExecutionError
        | DuplicateEventError
        | StorageError,
    ]:
        """Add `event` to instance `id`'s batch, creating the instance if needed.

        The event is validated and folded into the batch by ``on_event``; a
        reducer that fails gives its `ExecutionError` (or `ValidationError`)
        and nothing is stored. With `event_id`, an id the instance accepted
        before gives `DuplicateEventError` and changes nothing.
        """
        handler = self._handler
        if handler is not None and handler.tenant is None and not self._tenant_missing:
            # `_verb` without its bind (no tenant id to check first) nor `effect`'s wrapper (the
            # handler's add answers a bug as `effect` would): every add passes here.
            if (
                type(id) is str
                and 0 < len(id) <= MAX_ID_LENGTH
                and id.isascii()  # no lone surrogate: what `check_id` checks, without its calls
                and "\x00" not in id
                and SEPARATOR not in id
            ):
                instance_id: str = id
            else:
                # An id of wide characters may make a key too long to store (`_verb` checks it too).
                match check_id(id).bind(lambda checked: storable_id(handler, checked)):
                    case Success(checked):
                        instance_id = checked
                    case Failure(error):
                        return refused(error, handler.env)
            verb: _AddVerb = _new(_AddVerb)  # `_add_verb` inline: a call fewer per add
            set_cell(verb, [_NEW, handler, instance_id, event, event_id, None, None, None])  # `_Queued`
            return verb
        return self._verb(id, lambda h, i: h.add(i, event, event_id))

    def flush(
        self, id: str
    ) -> FutureResult[
        FlushResult,
        JobNotFoundError | TenantError | InvalidStateError | InstanceNotFoundError | ValidationError | StorageError,
    ]:
        """Flush instance `id`'s batch now (``flush_reason="manual"``); returns once the flush is committed.

        An idle instance has nothing to flush: ``flushed=False``.
        """
        return self._verb(id, lambda h, i: h.flush(i))

    def clear(
        self, id: str
    ) -> FutureResult[ClearResult, JobNotFoundError | TenantError | InvalidStateError | ValidationError | StorageError]:
        """Drop instance `id`'s batch without processing it; the instance goes idle.

        A flush of the batch running now is cancelled (a stuck flush does not
        hold the instance): the run ends as terminated (``job.terminated`` with
        reason ``"cleared"``), its batch is dropped, and the instance goes idle
        and keeps its event ids, as after a clear between flushes.

        Clearing an idle or unknown id changes nothing (``cleared=False``).
        """
        return self._verb(id, lambda h, i: h.clear(i))

    def status(
        self, id: str
    ) -> FutureResult[DebounceStatus, JobNotFoundError | TenantError | ValidationError | StorageError]:
        """``debouncing`` (with ``event_count`` and ``will_flush_at``), ``idle`` or ``not_found``."""
        return self._verb(id, lambda h, i: h.status(i))

    def get_state(
        self, id: str
    ) -> FutureResult[
        StateResult[S | None], JobNotFoundError | TenantError | InstanceNotFoundError | ValidationError | StorageError
    ]:
        """The waiting batch's state and when it flushes (``scheduled_at``); ``state=None`` when idle."""
        return self._verb(id, lambda h, i: h.get_state(i))
