"""Plumbing shared by the job kinds: ids and keys, the effect wrapper, shared results."""

from __future__ import annotations

import copy
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from types import CodeType, CoroutineType, FrameType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Self, cast

import msgspec
from returns.future import FutureResult
from returns.result import Failure, Result, Success
from typing_extensions import TypeVar

from .._clock import LAST_MS, LATEST_MS, beyond_datetime
from .._errors import (
    CLOSED_MESSAGE,
    ExecutionError,
    JobError,
    JobNotFoundError,
    StorageError,
    TenantError,
    ValidationError,
    describe,
    safe_repr,
)
from .._future import VerbResult
from .._input import MAX_REASON_LENGTH as MAX_REASON_LENGTH
from .._input import (
    SEPARATOR,
    check_optional_text,
    check_text,
    clean_message,
    clean_text,
    nearest_ms,
    plain_text,
    text_problem,
)
from .._printable import printable
from .._trap import RUN_CONTEXT
from ..storage import Checkin, ClearAlarm, InstanceRecord, SetAlarm
from ..storage._base import DeadLetter, DeadLetterKind, DeadLetterStorage, InstanceRevival, Revival

if TYPE_CHECKING:
    from .._execution import Env
    from .._logging import JobLog
    from .._retry import Retry
    from .._runtime import AlarmTarget, Runtime
    from ..tracking import TrackedEvent

T = TypeVar("T")
#: The services a definition's bodies need. A definition is contravariant in
#: them: one that needs less (``object``: nothing) is accepted where more is given.
D_contra = TypeVar("D_contra", contravariant=True, default=object)


class Definition(Generic[D_contra]):
    """Base of every job definition (`Continuous`, `Debounce`, `Task`, `Job`, `CronJob`, `Workflow`).

    `D_contra` is the type of the application's services its bodies need:
    ``open_engine([...], services=s)`` type-checks only if `s` is one, for
    every definition in the list. A definition whose bodies need no
    services is a ``Definition[object]`` and accepts any.

    A list of definitions built apart from the call is typed by its
    elements' common base; annotate it when their services differ:
    ``definitions: list[djobs.Definition[AppServices]] = [...]``.
    """

    kind: ClassVar[str]
    name: str

    def bind(self, runtime: Runtime) -> AlarmTarget:
        """The handler that runs this definition inside an engine (used by the engine)."""
        raise NotImplementedError


E = TypeVar("E", bound=JobError)
S = TypeVar("S")

_log = logging.getLogger("djobs.client")

#: Longest instance id accepted, in characters.
MAX_ID_LENGTH = 512

#: The most UTF-8 bytes of what one stored key is made of (an instance's key, with an event id
#: beside it; a job's idempotency key with its name and tenant id). PostgreSQL's btree indexes
#: take rows of at most 2,704 bytes: a longer key failed there as a lost connection. Every
#: storage refuses it, so what runs on one runs on all. Only ids of many non-ASCII characters
#: come near it: ASCII ones, at their longest, make about 1,800 bytes.
MAX_KEY_BYTES = 2600


#: What an instance's key is made of, for `key_problem`'s error (without a tenant, with one).
KEY_FIELDS = "the job's name and the instance id"
TENANT_KEY_FIELDS = "the job's name, the tenant id and the instance id"
#: What an event id's stored key is made of: it is stored beside its instance's key, as one key.
EVENT_KEY_FIELDS = "the job's name, the tenant id (if any), the instance id and the event id"


def key_problem(parts: str, what: str) -> ValidationError | None:
    """Why the key made of `parts` (its text, or all its parts joined) is too long to store, if
    it is; `what` names the fields it is made of, for the error (``"instance id and tenant id"``)."""
    if len(parts) <= MAX_KEY_BYTES // 4:  # four bytes a character at most: no encoding needed
        return None
    size = len(parts.encode("utf-8", "surrogatepass"))
    if size <= MAX_KEY_BYTES:
        return None
    return ValidationError(
        f"{what} make a stored key of {size} UTF-8 bytes; at most {MAX_KEY_BYTES} are allowed "
        "(a PostgreSQL index's limit, kept by every storage): use a shorter id"
    )


#: What a Continuous or Task instance ended by exhausted retries becomes: deleted with its
#: state (``terminate``, the seed's behaviour) or kept as a dead letter (``dead_letter``).
OnExhausted = Literal["terminate", "dead_letter"]


def check_on_exhausted(on_exhausted: object, what: str) -> OnExhausted:
    """Validate a definition's `on_exhausted` (raises: a bad literal is a bug in the program)."""
    given = plain_text(on_exhausted)  # an exact str, whose == is str's own (a subclass's may raise)
    if isinstance(given, str) and given in ("terminate", "dead_letter"):
        return cast("OnExhausted", given)
    raise ValidationError(
        f"{what}: on_exhausted must be 'terminate' or 'dead_letter', got {safe_repr(on_exhausted):.80}"
    )


_letter_error = msgspec.json.Encoder()


def _letter_json(error: JobError) -> bytes:
    """A dead letter's stored error: ``{"tag", "message"}``, the message as stored (`clean_message`)."""
    return _letter_error.encode({"tag": error.tag, "message": clean_message(error.message)})


def instance_dead_letter(
    record: InstanceRecord,
    *,
    kind: DeadLetterKind,
    revived: InstanceRecord,
    purpose: str,
    error: JobError | None,
    attempts: int,
    now: int,
    over: str | None = None,
) -> DeadLetter:
    """The dead letter of an instance's lost work: `revived` is the row a retry of the letter
    stores (with an alarm due at once for `purpose`, over an instance in status `over`)."""
    revival = InstanceRevival(key=record.key, record=revived, purpose=purpose, over=over)
    return DeadLetter(
        id=str(uuid.uuid4()),
        kind=kind,
        name=record.name,
        ref=record.instance_id,
        tenant_id=record.tenant_id,
        payload=revived.state,
        error=None
        if error is None
        else _letter_error.encode({"tag": error.tag, "message": clean_message(error.message)}),
        attempts=attempts,
        event_count=revived.event_count,
        revive=msgspec.json.encode(revival),
        created_at=now,
    )


async def revive_letter(
    runtime: Runtime, key: str, letter_id: str, now: int, forget: Callable[[str], None] | None = None
) -> Revival:
    """Apply dead letter `letter_id` to instance `key` on the instance's actor, under this
    engine's lease (no handler of the instance runs meanwhile, here or elsewhere), and wake
    the alarm sleeper for the alarm it sets. `forget(key)` drops a kind's copy of the row
    in memory, on the actor, before the row changes.

    Raises:
        StorageError: The storage keeps no dead letters, or failed.
    """
    store = runtime.env.storage
    if not isinstance(store, DeadLetterStorage):
        raise StorageError(f"the storage layer {store!r} keeps no dead letters")

    async def run() -> Revival:
        if forget is not None:
            forget(key)
        return await store.revive_dead_letter(letter_id, now, runtime.owner)

    outcome: Revival = await runtime.call(key, run)
    if outcome == "revived":
        runtime.poke(now)
    return outcome


def check_name(name: object, kind: str) -> str:
    """Validate a job name at definition time (raises: a bad name is a bug in the program)."""
    if (
        not isinstance(name, str)
        or not name
        or ":" in name
        or SEPARATOR in name
        or len(name) > 200
        or text_problem(name)
    ):
        raise ValidationError(
            f"{kind} job name {safe_repr(name)} is not valid: use a non-empty string of at most 200 characters "
            "without ':', NUL, the unit separator (\\x1f) or lone surrogates"
        )
    return name


def check_id(instance_id: object, what: str = "instance id") -> Result[str, ValidationError]:
    """Validate a user-supplied id (giving it as an exact `str`, `plain_text`); `what` names it in
    the error (``"job id"``, ``"dead letter id"``)."""
    instance_id = plain_text(instance_id)
    if not isinstance(instance_id, str):
        return Failure(ValidationError(f"{what} must be a str, got {type(instance_id).__name__}"))
    if not instance_id:
        return Failure(ValidationError(f"{what} must not be empty"))
    if len(instance_id) > MAX_ID_LENGTH:
        return Failure(
            ValidationError(f"{what} is {len(instance_id)} characters long; at most {MAX_ID_LENGTH} are allowed")
        )
    if "\x00" in instance_id or SEPARATOR in instance_id:
        return Failure(
            ValidationError(f"{what} {instance_id!r:.80} contains a NUL or unit-separator (\\x1f) character")
        )
    problem = text_problem(instance_id)
    if problem is not None:
        return Failure(ValidationError(f"{what} {instance_id!r:.80} {problem}"))
    return Success(instance_id)


def check_event_id(event_id: object) -> Result[str | None, ValidationError]:
    """A Debounce add's or a Task send's `event_id`: ``None``, or an id (as an exact `str`,
    `plain_text`) of at most `MAX_ID_LENGTH` characters that `check_text` takes."""
    event_id = plain_text(event_id)
    if event_id is None:
        return Success(None)
    if not isinstance(event_id, str) or not event_id or len(event_id) > MAX_ID_LENGTH:
        return Failure(
            ValidationError(
                f"event_id must be None or a non-empty str of at most {MAX_ID_LENGTH} characters,"
                f" got {safe_repr(event_id):.80}"
            )
        )
    return check_text(event_id, "event_id", max_length=MAX_ID_LENGTH)


def name_of(job: object) -> str:
    """The name a client looks `job` up by: a name (as an exact `str`, `plain_text`), a
    definition's ``name``, or, for anything else, its repr (which names no job) without raising."""
    if isinstance(job, str):
        return str(plain_text(job))
    try:
        name = plain_text(getattr(job, "name", None))
    except Exception:  # a hostile object's attribute: it names no job
        name = None
    return name if isinstance(name, str) else safe_repr(job)


U = TypeVar("U")


async def bind_async(result: Result[U, Any], fn: Callable[[U], Awaitable[Result[T, Any]]]) -> Result[T, Any]:
    """``result.bind(fn)`` for an async `fn`: its result, or `result`'s failure without calling it.

    returns' own `FutureResult.bind_async` would answer an `IOResult`; the verbs stay in `Result`
    until `effect` makes the client's `FutureResult`, so this is the one place that awaits a bind.
    """
    match result:
        case Success(value):
            return await fn(value)
        case Failure() as failed:
            return failed
    raise AssertionError(f"neither a Success nor a Failure: {result!r}")


def instance_key(kind: str, name: str, instance_id: str, tenant: str | None = None) -> str:
    """The storage key of an instance: ``{kind}:{name}:{id}``, or, for a tenant's
    instance, ``{kind}:{name}:{tenant}\x1f{id}``."""
    if tenant is None:
        return f"{kind}:{name}:{instance_id}"
    # SEPARATOR: no id holds it, so no plain id can reach into a tenant's namespace.
    return f"{kind}:{name}:{tenant}{SEPARATOR}{instance_id}"


class TenantScoped:
    """Mixin of the stateful kinds' handlers: a copy of a handler can act for one tenant.

    The copy shares everything with the engine's handler but computes keys in
    the tenant's namespace and stamps new instances with the tenant id.
    """

    tenant: str | None = None
    env: Env

    def key(self, instance_id: str) -> str:
        """The storage key of instance `instance_id` in this handler's tenant (`instance_key`)."""
        raise NotImplementedError

    def scoped(self, tenant: str | None) -> Self:
        """This handler, acting for `tenant` (itself when `tenant` is ``None``)."""
        if tenant is None:
            return self
        clone = copy.copy(self)
        clone.tenant = tenant
        return clone


def effect(
    fn: Callable[[], Awaitable[Result[T, Any]]], home: Env | None, verb: str | None = None
) -> FutureResult[T, Any]:
    """A client verb as a `FutureResult`: `fn` runs when the result is awaited.

    Awaited in another Trio run than the engine's (`home`'s: a ``trio.run``
    in a thread, or no Trio run at all), `fn` does not run: the verb fails
    with `StorageError` (`FOREIGN_RUN_MESSAGE`), as its work would start
    tasks in the engine's nursery, and take its leases, from a run that is
    not the engine's. The check is one call per verb. Nor does it run
    once the engine's clock reads past the year 9999 (`LAST_MS`: a test's
    virtual clock slept past it): the verb fails with `StorageError` saying
    so, and nothing is written. Awaited once `home`'s engine has closed, `fn`
    does not run either: the verb fails with the closed engine's
    `StorageError` (`CLOSED_MESSAGE`), even one that would have written
    nothing, so no verb answers for an engine that is gone.

    A `JobError` raised below (storage, duplicate events) becomes a failure
    value here, at the client's edge. The coroutine is named after the verb,
    so a verb never awaited warns ``coroutine 'djobs.JobClient.later' was
    never awaited`` rather than naming this helper: `verb` (``"JobClient.later"``) if
    given, else the qualified name of the function that called this one.

    This is returns' ``future_safe`` with three differences, which is why it
    is not built on it: `fn` already gives a ``Result``, whose failure is kept
    as it is (``future_safe`` would nest it); an exception that is not a
    `JobError` (a bug) is logged and becomes a `StorageError`, not a failure
    of that exception; and ``future_safe`` creates its own inner coroutine,
    which a verb never awaited would name instead of the verb.
    """

    token = None if home is None else home.trio_token
    clock = None if home is None else home.clock
    slot = None if home is None else home.clients

    async def run() -> Result[T, Any]:
        if token is not None:
            try:  # inline, not `running_trio_token`: one call fewer on every verb
                # `.task` too: a Trio guest run's host (asyncio) thread has the run's token, but no
                # Trio task steps there; such a verb wrote, then failed on its first Trio trap.
                foreign = RUN_CONTEXT.runner.trio_token is not token or RUN_CONTEXT.task is None
            except AttributeError:  # awaited outside any Trio run, or outside its tasks
                foreign = True
            if foreign:
                return foreign_run(home)
        if slot is not None and slot.closed:  # whatever the verb would do: even one that writes nothing
            return Failure(StorageError(CLOSED_MESSAGE))
        if clock is not None and (now := clock.now_ms()) > LAST_MS:
            # Nothing a verb writes or reads back could be stamped with the time: refused before
            # anything is written, as a StorageError (an engine that cannot serve) every verb may give.
            return Failure(StorageError(beyond_datetime(now, "the engine's clock reads")))
        try:
            return await fn()
        except JobError as exc:
            return Failure(exc)
        except Exception as exc:  # a bug below: a typed failure for the caller, never an escape into its app
            return bug_failure(exc)

    coroutine = run()
    if isinstance(coroutine, CoroutineType):  # always: `run` is an async def
        coroutine.__qualname__ = _verb_name(sys._getframe(1)) if verb is None else "djobs." + verb
    return VerbResult(coroutine)


#: Why a client verb awaited outside the engine's Trio run fails (`effect`).
FOREIGN_RUN_MESSAGE = (
    "this verb is awaited outside the engine's Trio run (in another trio.run, under asyncio, or with no "
    "event loop): await its client's verbs in the engine's own run (from another thread, through "
    "trio.from_thread.run)"
)


def foreign_run(env: Env | None) -> Failure[StorageError]:
    """What a verb awaited outside the engine's Trio run answers: the closed engine's error once
    the engine has begun to close (as every verb of a closed engine does), else `FOREIGN_RUN_MESSAGE`."""
    closing = env is not None and env.clients.closing
    return Failure(StorageError(CLOSED_MESSAGE if closing else FOREIGN_RUN_MESSAGE))


def bug_failure(exc: Exception) -> Failure[StorageError]:
    """What a client verb answers for `exc`, a bug below it (logged): a `StorageError` that says
    the call may not have applied. Never an escape into the caller's app."""
    _log.exception("bug: a client verb raised %s; the caller gets a StorageError", printable(describe(exc)))
    return Failure(StorageError(f"djobs failed unexpectedly ({describe(exc)}); the call may not have applied", exc))


def _verb_name(frame: FrameType | None) -> str:
    """The qualified name of the client verb running in `frame` or, past these helpers, its caller."""
    while frame is not None and frame.f_code in _HELPERS:
        frame = frame.f_back
    if frame is None:
        return "djobs client verb"
    name = _VERB_NAMES.get(frame.f_code)
    if name is None:
        name = _VERB_NAMES[frame.f_code] = "djobs." + frame.f_code.co_qualname
    return name


#: The verbs' names by their code (a verb's name is built once, not per call).
_VERB_NAMES: dict[CodeType, str] = {}


H = TypeVar("H", bound=TenantScoped)


class InstanceClient(Generic[H]):
    """Base of the per-kind clients: every verb validates the id, then runs on the kind's handler.

    A client made for a job the engine does not know has no handler; each of
    its verbs then fails with `JobNotFoundError`.
    """

    def __init__(
        self,
        name: str,
        handler: H | None,
        tenant: str | None = None,
        *,
        tenant_required: bool = False,
        missing: str | None = None,
        home: Env | None = None,
    ) -> None:
        self._name = name
        #: The engine's env, for the verbs of a client without a handler (`refused`).
        self._home = home
        #: Why there is no handler, if the client knows better than "not registered" (`not_registered`).
        self._missing = missing
        # The tenant id as an exact str (`plain_text`): the handler builds keys with it, and a
        # str subclass's own __format__ or __len__ may raise, or, in `_verb`, skip the key's size check.
        tenant = cast("str | None", plain_text(tenant))
        self._handler = handler.scoped(tenant) if isinstance(handler, TenantScoped) else handler
        # An engine opened with tenancy="required": an unscoped client's verbs fail with TenantError.
        self._tenant_missing = tenant_required and tenant is None

    def _verb(self, instance_id: object, fn: Callable[[H, str], Awaitable[Result[T, Any]]]) -> FutureResult[T, Any]:
        handler = self._handler
        if handler is None:
            return not_registered(self._name, self._missing, self._home)
        if self._tenant_missing:
            return refused(
                TenantError(
                    "this engine requires a tenant (tenancy='required'): "
                    "use client.for_tenant(...) for the verbs of an instance"
                ),
                handler.env,
            )
        tenant = getattr(handler, "tenant", None)
        # The client's tenant id, then the instance id: the first bad one is the verb's failure.
        # Both are checked now (they are pure); the verb's work runs when it is awaited.
        checked: Result[str, Any] = (
            check_id(instance_id)
            if tenant is None
            else check_text(tenant, "the client's tenant id", max_length=MAX_ID_LENGTH).bind(
                lambda _: check_id(instance_id)
            )
        )
        # str.__len__: an id of a str subclass is sized too (`check_id` gives it as an exact str).
        long = isinstance(instance_id, str) and str.__len__(instance_id) > _SHORT_KEY - (
            len(tenant) if type(tenant) is str else 0
        )
        if long:
            checked = checked.bind(lambda i: storable_id(handler, i))
        return effect(lambda: bind_async(checked, lambda i: fn(handler, i)), handler.env)


#: Ids (with the tenant id) of at most this many characters make a key that fits, whatever the
#: definition's name (200 characters at most) and however wide the characters: no key is built.
_SHORT_KEY = MAX_KEY_BYTES // 4 - 200 - len("continuous::\x1f")


def storable_id(handler: TenantScoped, instance_id: str) -> Result[str, ValidationError]:
    """`instance_id` if the key it makes with `handler`'s name (and tenant) can be stored
    (`key_problem`). An id of at most `_SHORT_KEY` characters with the tenant id always fits."""
    tenant = handler.tenant
    if len(instance_id) + (0 if tenant is None else str.__len__(tenant)) <= _SHORT_KEY:
        return Success(instance_id)
    problem = key_problem(handler.key(instance_id), KEY_FIELDS if tenant is None else TENANT_KEY_FIELDS)
    return Success(instance_id) if problem is None else Failure(problem)


def not_registered(
    name: str, message: str | None = None, home: Env | None = None
) -> FutureResult[Any, JobNotFoundError | StorageError]:
    """The result of every verb of a client for a job the engine (`home`'s) does not know
    (`message`, if given, says why: the name is another kind's, or another definition's)."""
    return refused(JobNotFoundError(name, message), home)


def refused(error: E, home: Env | None) -> FutureResult[Any, E | StorageError]:
    """A verb that fails with `error` without doing anything, once awaited: through `effect`, so
    it fails as every verb does outside the engine's run and once the engine (`home`'s) closed."""

    async def fail() -> Result[Any, E]:
        return Failure(error)

    return effect(fail, home)


#: What `effect` looks past to name the verb.
_HELPERS = frozenset({InstanceClient._verb.__code__, not_registered.__code__, refused.__code__})


class StateResult(msgspec.Struct, Generic[S], frozen=True):
    """An instance's state, as returned by ``get_state``.

    Attributes:
        state: The state (``None`` for a Task before its first ``set_state``).
        scheduled_at: When the instance's alarm is next due, if it has one.
    """

    state: S
    scheduled_at: datetime | None = None


class TerminateResult(msgspec.Struct, frozen=True):
    """The result of ``terminate``: whether an instance existed and was deleted."""

    terminated: bool
    instance_id: str


async def terminate_instance(
    runtime: Runtime, kind: str, name: str, key: str, instance_id: str, reason: object
) -> Result[TerminateResult, ValidationError | StorageError]:
    """The ``terminate`` verb of the stateful kinds: delete the instance with its alarm and event ids.

    A handler of the instance that is running user code now (in this engine)
    is cancelled first, so a stuck body does not keep the instance forever:
    its run ends as if it had called ``ctx.terminate(reason)`` (a blocking
    body's thread is abandoned), and the instance is deleted.
    """
    env = runtime.env
    match check_optional_text(reason, "reason", max_length=MAX_REASON_LENGTH):
        case Success(given):
            pass
        case Failure() as refused:
            return refused
    # A handler of this instance (or one it waits for) calling terminate is refused before the
    # stop below: the refusal must leave the instance and its run as they were.
    runtime.refuse_self_call(key)
    running = env.running.get(key)
    stopped = running is not None and running.stop(given)

    async def run() -> Result[TerminateResult, StorageError]:
        if await env.storage.load(key) is None:
            # Deleted by the stopped run itself (it ended as a terminate does).
            return Success(TerminateResult(stopped, instance_id))
        event = env.event("job.terminated", key, kind, name, reason=given)
        await env.commit(Checkin(key=key, record=None), [event])
        return Success(TerminateResult(True, instance_id))

    return await runtime.call(key, run)


def unreadable_state(
    env: Env,
    log: JobLog,
    events: list[TrackedEvent],
    record: InstanceRecord,
    kind: str,
    name: str,
    error: JobError,
    *,
    run_count: int,
    attempt: int,
) -> None:
    """A run whose stored state does not decode as the definition's struct (changed since it
    was written) fails without running user code and is not retried: log `error` and add its
    ``job.failed`` event to `events`. The kind commits what the failure means for it."""
    log.error("%s", printable(error.message))
    events.append(
        env.event(
            "job.failed",
            record.key,
            kind,
            name,
            run_count=run_count,
            attempt=attempt,
            error={"tag": error.tag, "message": error.message},
            will_retry=False,
        )
    )


async def count_failed_attempt(
    env: Env,
    key: str,
    exc: Exception,
    *,
    kind: str,
    name: str,
    retry: Retry | None,
    attempt: int,
    retry_purpose: str,
    give_up: Callable[[InstanceRecord], None],
    before_retry: Callable[[InstanceRecord], None] | None = None,
) -> None:
    """An unexpected exception ended an alarm's run (a bug past the user's code): the attempt counts.

    Handing the alarm back uncounted would run the same attempt again after
    every alarm lease, forever, when the bug repeats. Instead the stored
    instance is reloaded and, if the definition's `retry` allows another
    attempt, given a retry alarm (``retry_purpose``) for attempt ``attempt +
    1`` after the retry layer's delay; otherwise `give_up` makes it inert
    with its state kept (its alarm cleared), so nothing stored is lost and a
    person can act on the logged error. A storage failure here leaves the
    alarm claimed: it fires again after its lease, as any failed commit does.
    """
    env.logger.error(
        "bug: %s %s raised past its handler on attempt %d; the attempt counts as failed: %r",
        kind,
        printable(key),
        attempt,
        exc,
    )
    try:
        loaded = await env.storage.load(key)
        if loaded is None:
            return
        record = loaded[0]
        now = env.now_ms()
        record.updated_at = now
        alarm: SetAlarm | ClearAlarm
        if retry is not None and attempt < retry.max_attempts:
            record.attempt = attempt + 1
            if before_retry is not None:
                before_retry(record)
            delay = env.retries.delay_before(retry, attempt + 1)
            alarm = SetAlarm(min(now + max(0, nearest_ms(delay)), LATEST_MS), retry_purpose)
        else:
            record.attempt = 1
            give_up(record)
            alarm = ClearAlarm()
        events = []
        if env.tracking:
            error = ExecutionError(clean_text(f"the run failed unexpectedly: {describe(exc)}"), exc)
            will_retry = isinstance(alarm, SetAlarm)
            data = {"tag": error.tag, "message": error.message}
            events.append(env.event("job.failed", key, kind, name, attempt=attempt, error=data, will_retry=will_retry))
        await env.commit(Checkin(key=key, record=record, alarm=alarm), events)
    except Exception as again:  # a storage failure or the same bug: the alarm fires again after its lease
        env.logger.error("%s %s: could not record the failed attempt: %r", kind, printable(key), again)
