"""The execution service: the one place user code runs.

A kind handler loads an instance (checkout), builds a context over a
`Checkout`, and hands the user's function to `execute`. `execute` runs the
program in whichever of the accepted forms it comes in, maps what happened
to an `Outcome` (success, typed failure, exception, terminate, retry
scheduled, retries exhausted) and prepares the telemetry events. The handler
turns the outcome into one `Checkin`; `Env.commit` writes it atomically and
only then emits the events.

`Env` is built once per engine with every collaborator it calls (the
leases that fence a check-in, the wake-up a commit pokes, the slot holding
the engine's client); nothing is assigned into it afterwards.

The forms a body may return, and how each is run, are `djobs._bodies`'s.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Literal, NoReturn, Protocol, TypeVar, final

import trio
from returns.result import Failure, Result, Success

from ._bodies import immediate, normalise
from ._clock import FIRST_MS, LAST_MS, LATEST_MS, Clock, to_datetime, utc_isoformat
from ._errors import ExecutionError, JobError, JobTimeoutError, SchedulerError, StorageError, describe, safe_repr
from ._ids import Ids
from ._input import DEFAULT_MAX_PAYLOAD_BYTES, MAX_REASON_LENGTH, check_produced_text, nearest_ms
from ._limits import NO_LIMITS, RunLimits
from ._logging import JobLog, LoggingOption, threshold
from ._printable import printable
from ._retry import Retry, RetryPolicy
from .storage import Alarm, AlarmRunStore, Checkin, InstanceCreator, InstanceRecord, LeaseLostError, SetAlarm, Storage
from .tracking import InMemoryTracker, NoopTracker, TrackedEvent, Tracker

S = TypeVar("S")


class RunSignal(BaseException):
    """djobs's own signal that ends a body at a ctx call (``ctx.terminate``, a workflow's stop).

    A body boundary lets it through (`body_failure`): the run that raised it
    handles it. A `BaseException`, so a user's ``except Exception`` does not
    swallow it.
    """


#: What a body boundary lets through (`body_failure`): a cancel of a scope around the body
#: (djobs's timeout, ``cancel``, the engine's close, or the host's), a real Ctrl-C, djobs's signals.
PASSED_THROUGH: tuple[type[BaseException], ...] = (trio.Cancelled, KeyboardInterrupt, RunSignal)


def body_failure(exc: BaseException) -> JobError:
    """The counted failure that `exc`, raised past user code, makes of the run; or `exc` re-raised.

    The rule (docs/guides/reliability.md, "Exceptions past a body"): a
    `trio.Cancelled` belongs to a scope around the body (user code's own scopes
    catch their own), a `KeyboardInterrupt` must stop the application, and a
    `RunSignal` is djobs's: those propagate. Anything else, an `Exception` or
    not (``SystemExit``, ``asyncio.CancelledError``, ``GeneratorExit``, a
    custom `BaseException`), is the run's failure, an `ExecutionError` naming
    the exception, so it never reaches the engine's nursery or the host. A
    `BaseExceptionGroup` from a body's own nursery that holds any of the first
    kind re-raises only those (the rest of the group is dropped: the cancel or
    the interrupt decides how the run ends); otherwise the group is the failure.
    """
    if isinstance(exc, BaseExceptionGroup):
        passed, _ = exc.split(PASSED_THROUGH)
        if passed is not None:
            raise passed
    elif isinstance(exc, PASSED_THROUGH):
        raise exc
    return _as_job_error(exc)


def holds_cancel(exc: BaseException) -> bool:
    """Whether `exc` is a `trio.Cancelled` or a group that holds one: it belongs to a scope
    around the task it reached, and propagates there."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[0] is not None
    return isinstance(exc, trio.Cancelled)


def holds_interrupt(exc: BaseException) -> bool:
    """Whether `exc` is a `KeyboardInterrupt` or a group that holds one: raised inside a body,
    it stopped the run as a crash would (its row or lease is left as a crash leaves it)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(KeyboardInterrupt)[0] is not None
    return isinstance(exc, KeyboardInterrupt)


class TerminateSignal(RunSignal):
    """Raised by ``ctx.terminate()`` to end a run; caught by `execute`.

    A `BaseException`, so a user's ``except Exception`` does not swallow it;
    the checkout also records the request, so even a swallowed signal ends
    the instance.
    """

    def __init__(self, reason: str | None) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True, eq=False)
class Checkout(Generic[S]):
    """The working copy of an instance during one run; committed only with its outcome."""

    state: S
    terminated: bool = False
    terminate_reason: str | None = None
    #: Set by a ``stop`` that ends only this run, not the instance (a Debounce ``clear``).
    keep_instance: bool = False
    alarm: SetAlarm | Literal["cancel"] | None = None
    schedule_touched: bool = False
    #: The scope the user's code runs in while it runs (`run_call`): the ``terminate`` verb cancels it.
    scope: trio.CancelScope | None = None
    #: The state's encoding as its last ``set_state`` validated it: what a check-in stores. A
    #: change made to the state object after that call is not stored (nor checked) unless
    #: ``set_state`` is called again, so a check-in never encodes, and never fails to.
    encoded: bytes | None = None

    def terminate(self, reason: object) -> NoReturn:
        """A body's ``ctx.terminate(reason)``: `reason` as `check_produced_text` keeps it, or the
        `ValidationError` that refuses it raised in the body (which then fails with it)."""
        checked = check_produced_text(reason, "ctx.terminate(): reason", MAX_REASON_LENGTH)
        if not isinstance(checked, Success):
            raise checked.failure()
        self.terminated = True
        self.terminate_reason = text = checked.unwrap()
        raise TerminateSignal(text)

    def stop(self, reason: str | None, *, keep_instance: bool = False) -> bool:
        """End the run from outside (the ``terminate`` verb): cancel the user's code now.

        The run then ends as if the body had called ``ctx.terminate(reason)``;
        with `keep_instance` (a Debounce ``clear``) the kind keeps the instance
        and only drops the run's work. Returns whether user code was running to
        be cancelled.
        """
        if self.scope is None:
            return False
        self.terminated = True
        self.terminate_reason = reason
        self.keep_instance = keep_instance
        self.scope.cancel()
        return True


OutcomeKind = Literal["succeeded", "retrying", "failed", "exhausted", "terminated"]


@dataclass(slots=True)  # not frozen: built per run, where frozen costs a setattr call per field
class Outcome:
    """What a run came to.

    Attributes:
        kind: ``succeeded``; ``retrying`` (a retry is due at `retry_at`);
            ``failed`` (no retry: none configured, or the error is not
            retryable); ``exhausted`` (the last allowed attempt failed);
            ``terminated`` (the body called ``ctx.terminate``).
        value: The body's success value (a Job's result, a reducer's state).
    """

    kind: OutcomeKind
    value: object = None
    error: JobError | None = None
    retry_at: int | None = None
    reason: str | None = None
    duration_ms: float = 0.0


class LeaseFence(Protocol):
    """The engine's instance leases as a check-in sees them (`djobs._leases.InstanceLeases`)."""

    @property
    def owner(self) -> str:
        """The engine's id: check-ins are fenced by it."""
        ...

    def lost(self, key: str) -> None:
        """A check-in found `key`'s lease held by another engine."""
        ...

    def gave_up(self, keys: Iterable[str]) -> None:
        """Check-ins gave the leases of `keys` up as they were written (`commit_many` with `release_leases`)."""
        ...


class AlarmWaker(Protocol):
    """What a commit that sets an alarm wakes (the alarm sleeper's `djobs._wakeup.Wakeup`)."""

    def poke(self, at_ms: int) -> None:
        """An alarm is due at `at_ms`: wake the sleeper if it sleeps past that."""
        ...


@final
class Handoffs:
    """Work claimed in storage whose handler has not started yet (alarms, queued jobs, cron fires).

    `Engine.wait_idle` waits for the count to reach zero, since storage
    already shows such work as taken.
    """

    __slots__ = ("_zero", "count")

    def __init__(self) -> None:
        self.count = 0
        self._zero: trio.Event | None = None

    def begin(self) -> None:
        """A hand-off starts (the work is claimed)."""
        self.count += 1

    def end(self) -> None:
        """A hand-off is over (its handler started, or it was given back)."""
        self.count -= 1
        if self.count <= 0 and self._zero is not None:
            self._zero.set()

    async def wait(self) -> None:
        """Return once no hand-off is in flight; sleeps on an event (no spin, so virtual time passes)."""
        while self.count > 0:
            if self._zero is None or self._zero.is_set():
                self._zero = trio.Event()
            await self._zero.wait()


@final
class ClientSlot:
    """``ctx.client``'s engine client, given once the engine has built it.

    The client is built from the kinds' handlers, which are built over the
    `Env`, so the env cannot take the client itself; it takes this slot, and
    the engine fills it once, before it yields (so before any user code runs).
    """

    __slots__ = ("_client", "closed", "closing")

    def __init__(self) -> None:
        self._client: TenantClients | None = None
        #: Whether the engine has begun to close: a verb awaited from another run then fails
        #: as every verb of a closed engine does (`djobs.kinds._common.foreign_run`).
        self.closing = False
        #: Whether the engine has closed (its handlers ended): every verb then fails with the
        #: closed engine's `StorageError`, whatever it would have done (`djobs.kinds._common.effect`).
        self.closed = False

    def fill(self, client: TenantClients) -> None:
        """Give the engine's client; a second fill is a bug (`RuntimeError`)."""
        if self._client is not None:
            raise RuntimeError("the engine's client was given twice")
        self._client = client

    def for_tenant(self, tenant: str | None) -> object:
        """The client acting for `tenant` (every tenant for ``None``); ``None`` before the engine filled it."""
        client = self._client
        if client is None:
            return None
        return client if tenant is None else client.for_tenant(tenant)


class TenantClients(Protocol):
    """The part of the engine's `Client` a slot needs."""

    def for_tenant(self, tenant_id: str) -> object: ...


def running_trio_token() -> trio.lowlevel.TrioToken | None:
    """The token of the Trio run the caller is in, or ``None`` outside one (a thread, asyncio)."""
    try:
        return trio.lowlevel.current_trio_token()
    except RuntimeError:
        return None


@dataclass(slots=True, frozen=True, eq=False)
class Env:
    """The services a run and a handler use, built once per engine with its collaborators.

    Nothing is assigned into it afterwards: the leases it fences check-ins
    with, the waker its commits poke and the client slot are given when it
    is built. `handoffs` and `running` are objects whose state changes, not
    fields that are replaced.
    """

    storage: Storage
    clock: Clock
    tracker: Tracker
    services: object
    retries: RetryPolicy
    ids: Ids
    logger: logging.Logger
    #: The engine's instance leases: check-ins are fenced by their owner.
    leases: LeaseFence
    #: Woken when a commit sets an alarm (the alarm sleeper's wake-up).
    alarm_waker: AlarmWaker
    #: ``ctx.client``: the engine's client, given once it is built.
    clients: ClientSlot = field(default_factory=ClientSlot)
    #: The Trio run the engine runs in (its token; ``None`` for an env built outside one): a
    #: client verb awaited in another run is refused (`djobs.kinds._common.effect`).
    trio_token: trio.lowlevel.TrioToken | None = field(default_factory=running_trio_token)
    #: The largest encoded payload (params, event, state, input, result) accepted, in bytes.
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    #: Claimed work not yet started (`Handoffs`).
    handoffs: Handoffs = field(default_factory=Handoffs)
    #: The runs whose user code is running now, by instance key: ``terminate`` stops one.
    running: dict[str, Checkout[Any]] = field(default_factory=dict)
    #: Each job's logger, by kind and name (`job_log`): looked up once, not per run.
    job_loggers: dict[tuple[str, str], logging.Logger] = field(default_factory=dict)
    #: Whether events are worth building: not for the `NoopTracker`, which drops them.
    tracking: bool = field(init=False, default=True)
    #: The storage, if it writes many check-ins in one transaction (`AlarmRunStore`): a
    #: protocol's ``isinstance`` walks its members, so it is asked once, not per write.
    run_store: AlarmRunStore | None = field(init=False, default=None)
    #: The tracker, if it is the `InMemoryTracker` (the test engine's), whose ``emit`` is an
    #: append that cannot fail: `emit` hands it a run's events in one ``extend``.
    recorder: InMemoryTracker | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tracking", not isinstance(self.tracker, NoopTracker))
        object.__setattr__(self, "recorder", self.tracker if type(self.tracker) is InMemoryTracker else None)
        object.__setattr__(self, "run_store", self.storage if isinstance(self.storage, AlarmRunStore) else None)

    def now_ms(self) -> int:
        return self.clock.now_ms()

    def event(self, type: str, key: str, kind: str, name: str, at_ms: int | None = None, **data: Any) -> TrackedEvent:
        """A telemetry event stamped with the clock's time (or `at_ms`, a reading the caller took).

        A time past the year 9999 (a test's virtual clock slept past it while a run that began
        before went on) is stamped with its last millisecond, `LAST_MS` (one before the year 1
        with its first): an event is built where the work it tells of is done, where a
        `SchedulerError` would have no caller to go to (every client verb is refused from
        then on, `effect`)."""
        at = self.clock.now_ms() if at_ms is None else at_ms
        try:
            stamp = to_datetime(at)
        except SchedulerError:
            stamp = to_datetime(LAST_MS if at > LAST_MS else FIRST_MS)
        return TrackedEvent(type=type, instance_id=key, job_type=kind, job_name=name, at=stamp, data=data)

    def job_log(self, kind: str, name: str, option: LoggingOption, **extra: Any) -> JobLog:
        """The ``ctx.log`` for one run of the job `name`."""
        return JobLog(self.job_logger(kind, name), threshold(option), {"job": name, **extra})

    def job_logger(self, kind: str, name: str) -> logging.Logger:
        """The stdlib logger of the job `name` of `kind` (made once) that its runs' `JobLog` wraps."""
        logger = self.job_loggers.get((kind, name))
        if logger is None:
            logger = self.job_loggers[kind, name] = self.logger.getChild(f"{kind}.{name}")
        return logger

    async def commit(self, checkin: Checkin, events: list[TrackedEvent] | None = None) -> None:
        """Write `checkin` atomically, then wake the alarm sleeper and emit `events`.

        Raises `StorageError` or `DuplicateEventError`; on either nothing was
        written and no event is emitted.
        """
        if checkin.lease_owner is None:
            checkin.lease_owner = self.leases.owner
        try:
            await self.storage.commit(checkin)
        except LeaseLostError:
            self.leases.lost(checkin.key)  # take it afresh next time
            raise
        self._committed(checkin, events)

    async def create(
        self, creator: InstanceCreator, checkin: Checkin, lease_ms: int, events: list[TrackedEvent] | None = None
    ) -> tuple[InstanceRecord, Alarm | None] | None:
        """Store a new instance and take its lease in one write (`InstanceCreator.create_instance`),
        then, if it was stored, wake the alarm sleeper and emit `events` as `commit` does.

        Returns ``None`` once stored, or the instance already stored under the key
        (nothing written, no event). Raises `LeaseLostError` (another engine holds
        the key's lease) or `StorageError`.
        """
        stored = await creator.create_instance(checkin, self.leases.owner, self.clock.now_ms(), lease_ms)
        if stored is None:
            self._committed(checkin, events)
        return stored

    async def commit_many(
        self, writes: Sequence[tuple[Checkin, list[TrackedEvent]]], *, release_leases: bool = False
    ) -> list[Exception | None]:
        """`commit` each check-in with its events, all in one transaction (`AlarmRunStore.commit_checkins`).

        With `release_leases`, each check-in written gives its instance's lease up in that
        transaction (the engine no longer holds it once this returns).

        Returns, in order, ``None`` for each written (its alarm poked, its events emitted)
        or the error it alone failed with (`LeaseLostError`, `DuplicateEventError`: nothing
        of it written). Raises `StorageError` if the transaction failed (nothing written).
        """
        storage = self.run_store
        if storage is None:
            raise StorageError(f"{type(self.storage).__name__} cannot write many check-ins in one transaction")
        owner = self.leases.owner
        checkins: list[Checkin] = []
        for checkin, _ in writes:
            if checkin.lease_owner is None:
                checkin.lease_owner = owner
            checkins.append(checkin)
        errors = await (
            storage.commit_checkins(checkins, True) if release_leases else storage.commit_checkins(checkins)
        )
        # Once for the batch: the leases given up, the earliest alarm set poked, then the events.
        leases = self.leases
        written: list[str] = []
        earliest: int | None = None
        emitted: list[list[TrackedEvent]] = []
        for (checkin, events), error in zip(writes, errors, strict=True):
            if error is None:
                written.append(checkin.key)
                alarm = checkin.alarm
                if isinstance(alarm, SetAlarm):
                    due = alarm.fire_at if alarm.due_at is None else alarm.due_at
                    if earliest is None or due < earliest:
                        earliest = due
                if events:
                    emitted.append(events)
            elif isinstance(error, LeaseLostError):
                leases.lost(checkin.key)  # take it afresh next time
        if release_leases and written:
            leases.gave_up(written)
        if earliest is not None:
            self.alarm_waker.poke(earliest)
        for events in emitted:
            self.emit(events)
        return errors

    def _committed(self, checkin: Checkin, events: list[TrackedEvent] | None) -> None:
        alarm = checkin.alarm
        if isinstance(alarm, SetAlarm):
            self.alarm_waker.poke(alarm.fire_at if alarm.due_at is None else alarm.due_at)
        if events:
            self.emit(events)

    def emit(self, events: list[TrackedEvent]) -> None:
        """Hand events to the tracker; a tracker failure never reaches the job."""
        recorder = self.recorder
        if recorder is not None:
            recorder.events.extend(events)  # each `emit`'s append, at once
            return
        for event in events:
            try:
                self.tracker.emit(event)
            except BaseException as exc:  # a tracker bug must not fail a job, nor reach the engine
                body_failure(exc)  # the one rule: a cancel or a Ctrl-C goes on, the rest is logged
                self.logger.exception("tracker %r failed to accept %s", self.tracker, event.type)


def _as_job_error(error: object) -> JobError:
    if isinstance(error, JobError):
        return error
    if isinstance(error, BaseExceptionGroup):
        return _group_error(error)
    if isinstance(error, BaseException):
        return ExecutionError(describe(error), error)  # never raises, whatever the exception's __str__ does
    return ExecutionError(f"job returned a failure: {safe_repr(error)}", error)


def _group_error(group: BaseExceptionGroup[BaseException]) -> JobError:
    """What a nursery's exception group says: its one error, or errors of one djobs type,
    as if raised alone (the first of them); otherwise an `ExecutionError` naming every
    leaf's type and message (a group's own message, "Exceptions from Trio nursery",
    says nothing)."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending[:0] = exc.exceptions
        else:
            leaves.append(exc)
    first = leaves[0]
    if len(leaves) == 1 or (isinstance(first, JobError) and all(type(leaf) is type(first) for leaf in leaves)):
        return _as_job_error(first)
    named = "; ".join(describe(leaf) for leaf in leaves)
    return ExecutionError(f"{len(leaves)} errors at once: {named}", group)


def begin_body(call: Callable[[], object]) -> Result[object, JobError] | Pending:
    """Call user code once (`run_body`'s first half): its result, if what it gave needs no
    await (a plain value or a ``Result``, so a synchronous body's), else a `Pending` to
    hand to `finish_body`. Never raises but what `body_failure` lets through.
    """
    try:
        value = call()
    except BaseException as exc:
        return Failure(body_failure(exc))
    return begun(value)


def begun(value: object) -> Result[object, JobError] | Pending:
    """`begin_body` for what user code gave once called (`value`), for a caller that called it itself."""
    result = immediate(value)
    if result is None:
        return Pending(value)
    if isinstance(result, Success):  # a success needs no normalising (`alt` would return it)
        return result
    return result.alt(_as_job_error)


@final
class Pending:
    """What `begin_body` could not finish without awaiting: the value user code gave."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value


async def finish_body(
    pending: Pending, services: object, what: str, scope: trio.CancelScope | None = None
) -> Result[object, JobError]:
    """Await and normalise what `begin_body` gave (`run_body`'s second half), inside `scope`
    if given. If `scope` caught a cancel, the result is a failure that says so; the caller
    reads ``scope.cancelled_caught`` and does not treat it as the body's."""
    result: Result[object, object] | None = None
    try:
        if scope is None:
            result = await normalise(pending.value, services, what)
        else:
            with scope:
                result = await normalise(pending.value, services, what)
    except BaseException as exc:
        return Failure(body_failure(exc))
    if result is None:  # the run's scope caught a cancel
        return Failure(ExecutionError(f"{what} was cancelled"))
    return result.alt(_as_job_error)


async def run_body(
    call: Callable[[], object],
    services: object,
    what: str = "the job body",
    limits: RunLimits = NO_LIMITS,
    scope: trio.CancelScope | None = None,
) -> Result[object, JobError]:
    """Run one call of user code in any accepted form; never raises but what `body_failure` lets through.

    The forms are `djobs._bodies.normalise`'s; a failure value that is not a
    `JobError`, and any exception but a cancel, a ``KeyboardInterrupt`` or a
    `RunSignal` (`body_failure`), becomes an `ExecutionError`. A call that
    outlives ``limits.timeout_ms`` is cancelled: `JobTimeoutError`.

    `scope`, if given, is the run's cancel scope (a queued job's): what the
    call gives is awaited inside it, and a value that needs no await (a
    synchronous body's) is taken without entering it. If the scope caught a
    cancel, the result is a failure that says so; the caller reads
    ``scope.cancelled_caught`` and does not treat it as the body's.
    """
    if limits.timeout_ms is None:
        begun = begin_body(call)
        if isinstance(begun, Pending):
            return await finish_body(begun, services, what, scope)
        return begun
    result: Result[object, object] | None = None
    timer = trio.move_on_after(limits.timeout_ms / 1000)
    try:
        with scope if scope is not None else contextlib.nullcontext(), timer:
            result = await normalise(call(), services, what)
    except BaseException as exc:
        error = body_failure(exc)
        # A group that also held the timeout's cancel (the timer took it out): the run timed out.
        return Failure(JobTimeoutError(what, limits.timeout_ms / 1000) if timer.cancelled_caught else error)
    if timer.cancelled_caught:
        return Failure(JobTimeoutError(what, limits.timeout_ms / 1000))
    if result is None:  # the run's scope caught a cancel
        return Failure(ExecutionError(f"{what} was cancelled"))
    return result.alt(_as_job_error)


async def run_returning_state(
    call: Callable[[], object], services: object, set_state: Callable[[Any], None], what: str
) -> Result[object, JobError]:
    """`run_body` for a body that may return its instance's new state (Continuous, Task).

    A value other than ``None`` is handed to `set_state`, which validates it
    as ``ctx.set_state`` does: a value that is not a state fails the run with
    that `ValidationError` and nothing is written. ``None`` keeps the state.
    """
    result = await run_body(call, services, what)
    return result.bind(lambda value: _set_returned(set_state, value))


def run_now(checkout: Checkout[Any], call: Callable[[], object], set_state: Callable[[Any], None]) -> Ran | Pending:
    """`run_call` of a body that may return its instance's new state (`run_returning_state`),
    for a run with no limits, without a cancel scope: what the body gave, if it needs no
    await (a synchronous body's), else the `Pending` awaitable for `execute` to finish.

    Nothing can stop such a run from outside while it runs (no task switch happens), so it
    is not listed in ``env.running``; ``ctx.terminate`` ends it as in `run_call`.
    """
    started = time.perf_counter()
    try:
        value = call()
    except BaseException as exc:
        return ran_raised(checkout, exc, started)
    return ran_gave(checkout, value, set_state, started)


def ran_raised(checkout: Checkout[Any], exc: BaseException, started: float) -> Ran:
    """`run_now`'s outcome for a body that raised `exc`, its call having begun at `started`
    (``time.perf_counter()``): a failure (`body_failure`), or the run's end if it terminated.
    Raises what `body_failure` lets through but a ``ctx.terminate``."""
    try:
        error = body_failure(exc)
    except TerminateSignal as signal:
        return Ran(Success(None), terminated=True, reason=signal.reason, duration_ms=since(started))
    except BaseExceptionGroup as group:
        terminated = _only_terminate(group)
        if terminated is None:
            raise
        return Ran(Success(None), terminated=True, reason=terminated.reason, duration_ms=since(started))
    if checkout.terminated:  # a swallowed signal still ends the run
        return Ran(Success(None), terminated=True, reason=checkout.terminate_reason, duration_ms=since(started))
    return Ran(Failure(error), duration_ms=since(started))


def ran_gave(checkout: Checkout[Any], value: object, set_state: Callable[[Any], None], started: float) -> Ran | Pending:
    """`run_now`'s outcome for a body that gave `value` (its call begun at `started`): as `run_now`."""
    begun_ = begun(value)
    if isinstance(begun_, Pending):
        return begun_
    if checkout.terminated:  # a swallowed signal still ends the run
        return Ran(Success(None), terminated=True, reason=checkout.terminate_reason, duration_ms=since(started))
    match begun_:
        case Success(value) if value is not None:
            begun_ = _set_returned(set_state, value)
    return Ran(begun_, duration_ms=since(started))


def since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


#: The ``Success(None)`` of a returned state set (containers are immutable: one for every run).
_STATE_SET: Final[Result[None, JobError]] = Success(None)


def _set_returned(set_state: Callable[[Any], None], value: object) -> Result[None, JobError]:
    """Set the state a body returned (`value`): a `JobError` it raises (a state of another
    type) is the run's failure; anything else raised goes on."""
    if value is None:
        return _STATE_SET
    try:
        set_state(value)
    except JobError as exc:
        return Failure(exc)
    return _STATE_SET


def _only_terminate(group: BaseExceptionGroup[BaseException]) -> TerminateSignal | None:
    matched, rest = group.split(TerminateSignal)
    if rest is not None or matched is None:
        return None
    first = matched.exceptions[0]
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first if isinstance(first, TerminateSignal) else None


@dataclass(slots=True)  # not frozen: built per run, where frozen costs a setattr call per field
class Ran:
    """What one call of user code came to, before any retry decision.

    Attributes:
        result: The body's value, or the typed error it failed with.
        terminated: Whether the body called ``ctx.terminate`` (its result is then ``Success(None)``).
        reason: The reason given to ``ctx.terminate``.
        duration_ms: How long the call took, in (real) milliseconds.
    """

    result: Result[object, JobError]
    terminated: bool = False
    reason: str | None = None
    duration_ms: float = 0.0


async def run_call(
    env: Env,
    key: str,
    checkout: Checkout[Any],
    call: Callable[[], object],
    limits: RunLimits = NO_LIMITS,
    what: str = "the job body",
) -> Ran:
    """Run `call` like `run_body`, also catching ``ctx.terminate`` (a signal, not a failure).

    For handlers whose outcome the caller maps itself (a Task's ``on_event``,
    ``on_idle``, ``on_error``); `execute` builds on it for job bodies.

    While `call` runs, the run is listed in ``env.running`` under `key`, so the
    ``terminate`` verb can stop it (`Checkout.stop`): it then ends as a
    ``ctx.terminate`` would. A call that outlives ``limits.timeout_ms`` is
    cancelled and fails with `JobTimeoutError`.
    """
    started = time.perf_counter()
    terminated: TerminateSignal | None = None
    result: Result[object, JobError] = Success(None)
    scope = trio.CancelScope()
    if limits.timeout_ms is not None:
        scope.relative_deadline = limits.timeout_ms / 1000
    checkout.scope = scope
    env.running[key] = checkout
    try:
        with scope:
            result = await run_body(call, env.services, what)
        if scope.cancelled_caught and not checkout.terminated:
            result = Failure(JobTimeoutError(what, limits.timeout_ms / 1000 if limits.timeout_ms else 0.0))
    except TerminateSignal as signal:
        terminated, result = signal, Success(None)
    except BaseExceptionGroup as group:
        terminated = _only_terminate(group)
        if terminated is None:
            raise
        result = Success(None)
    finally:
        checkout.scope = None
        if env.running.get(key) is checkout:
            del env.running[key]
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    if terminated is not None or checkout.terminated:
        # A swallowed signal still ends the run: the checkout recorded the request.
        reason = checkout.terminate_reason if terminated is None else terminated.reason
        return Ran(Success(None), terminated=True, reason=reason, duration_ms=duration_ms)
    return Ran(result, duration_ms=duration_ms)


@dataclass(slots=True)  # not frozen: built per run, where frozen costs a setattr call per field
class RunInfo:
    """Who is running: the identity stamped on events and log lines."""

    key: str
    kind: str
    name: str
    run_count: int
    attempt: int


async def execute(
    env: Env,
    info: RunInfo,
    checkout: Checkout[Any],
    call: Callable[[], object],
    retry: Retry | None,
    events: list[TrackedEvent],
    log: JobLog,
    limits: RunLimits = NO_LIMITS,
    what: str = "the job body",
) -> Outcome:
    """Run `call` and decide what its result means; appends the run's events to `events`.

    `limits` bound the run (`run_call`): a timeout is a failure, retried by `retry`.
    """
    ran = await run_call(env, info.key, checkout, call, limits, what)
    return judge(env, info, ran, retry, events, log)


def judge(
    env: Env,
    info: RunInfo,
    ran: Ran,
    retry: Retry | None,
    events: list[TrackedEvent],
    log: JobLog,
    at_ms: int | None = None,
) -> Outcome:
    """Decide what a run's result means (`execute`'s second half); appends its events to `events`.

    For a caller that ran the user's code itself (a one-off job's attempt
    needs no checkout and no ``terminate``, so it calls `run_body` directly).
    `at_ms` is a clock reading the caller took as the run ended, to stamp the
    events and time a retry with (``None``: the clock is read here).
    """
    result, duration_ms = ran.result, ran.duration_ms

    tracking = env.tracking

    def ev(type: str, **data: Any) -> None:
        if tracking:  # built only when a tracker receives them
            events.append(env.event(type, info.key, info.kind, info.name, at_ms, **data))

    if ran.terminated:
        reason = ran.reason
        log.info("terminated: %s", printable(reason or "no reason given"))
        ev("job.terminated", reason=reason, run_count=info.run_count, attempt=info.attempt, duration_ms=duration_ms)
        return Outcome("terminated", reason=reason, duration_ms=duration_ms)

    # Every run passes here: a match on the result, not a chain of closures.
    match result:
        case Success(value):
            log.debug("executed in %.1f ms", duration_ms)
            if tracking:  # as `ev`, without its call: every successful run passes here
                events.append(
                    env.event(
                        "job.executed",
                        info.key,
                        info.kind,
                        info.name,
                        at_ms,
                        run_count=info.run_count,
                        duration_ms=duration_ms,
                        attempt=info.attempt,
                    )
                )
            return Outcome("succeeded", value=value, duration_ms=duration_ms)
        case Failure(error):
            failed = {
                "error": {"tag": error.tag, "message": error.message},
                "run_count": info.run_count,
                "attempt": info.attempt,
                "duration_ms": duration_ms,
            }
    if retry is None or not retry.should_retry(error):
        log.error("failed (no retry): %s", printable(error.message))
        ev("job.failed", **failed, will_retry=False)
        return Outcome("failed", error=error, duration_ms=duration_ms)
    if info.attempt >= retry.max_attempts:
        log.error(
            "failed on attempt %d of %d, giving up: %s", info.attempt, retry.max_attempts, printable(error.message)
        )
        ev("job.failed", **failed, will_retry=False)
        ev("job.retry_exhausted", attempts=info.attempt, reason=error.message)
        return Outcome("exhausted", error=error, duration_ms=duration_ms)
    delay = env.retries.delay_before(retry, info.attempt + 1)
    now = env.now_ms() if at_ms is None else at_ms
    retry_at = min(now + max(0, nearest_ms(delay)), LATEST_MS)
    log.warning(
        "failed on attempt %d of %d, retrying in %s: %s",
        info.attempt,
        retry.max_attempts,
        delay,
        printable(error.message),
    )
    ev("job.failed", **failed, will_retry=True, retry_at=utc_isoformat(retry_at))
    return Outcome("retrying", error=error, retry_at=retry_at, duration_ms=duration_ms)
