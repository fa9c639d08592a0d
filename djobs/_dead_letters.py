"""Dead letters: work that failed for good, kept to be inspected, retried or discarded.

One place for every kind, as Sidekiq's "Dead" set and a Celery dead-letter
queue are one place: an operator looks at one list, whatever failed. What
lands here:

- a queued job (`Job`, a `CronJob`'s job) whose last attempt failed, by any
  path (its error, a timeout, a lease that ran out on the last attempt);
- a `Debounce` batch whose flush failed (retries exhausted, or not retried),
  with its state and event count, instead of being dropped;
- with ``on_exhausted="dead_letter"``, the last state of a `Continuous` or
  `Task` instance that exhausted retries ended.

Storage writes them in the transaction that records the failure, so a letter
exists exactly when the work failed. `engine.client.dead_letters`
(`DeadLettersClient`) lists, shows, retries and discards them; so does
``djobs dead-letters`` on the command line.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec
from returns.future import FutureResult
from returns.result import Failure, Result, Success

from ._clock import to_datetime
from ._durations import DurationLike, parse_duration, to_ms
from ._errors import InstanceNotFoundError, InvalidStateError, StorageError, TenantError, ValidationError, safe_repr
from ._input import check_optional_text, check_text, check_whole, plain_text
from .kinds._common import bind_async, check_id, effect, refused
from .kinds._job import JobErrorInfo
from .kinds._job_queue import JobQueue
from .storage._base import (
    DeadLetter,
    DeadLetterFilter,
    DeadLetterKind,
    DeadLetterStorage,
    InstanceRevival,
    Revival,
    dead_letter_cursor,
    split_dead_letter_cursor,
)

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["DeadLetterInfo", "DeadLetterRetryResult", "DeadLetters", "DeadLettersClient"]

_KINDS: tuple[DeadLetterKind, ...] = ("job", "debounce", "continuous", "task")
_revival = msgspec.json.Decoder(InstanceRevival)
_error = msgspec.json.Decoder(JobErrorInfo)


class DeadLetterInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One dead letter, as ``client.dead_letters.list`` and ``get`` return it.

    Attributes:
        id: The letter's id (a job's letter has the job's id).
        kind: ``job``, ``debounce``, ``continuous`` or ``task``.
        name: The definition's name.
        ref: The job's id, or the instance's id.
        tenant_id: The job's or instance's tenant.
        payload: The job's params, the batch's state or the instance's last
            state: the definition's struct when this engine registers it and the
            stored JSON still matches it, else the plain JSON value.
        error: The last failure (tag and message), if one was recorded.
        attempts: The attempts made.
        event_count: The events in a Debounce batch (0 for the other kinds).
        failed_at: When the work failed for good (UTC).
        cursor: Where this letter stands in a listing: ``list(after=page[-1].cursor)``
            gives the letters after it, whether or not this one is still stored then
            (retried or discarded meanwhile). Its time and id joined by ``"\x1f"``.
    """

    id: str
    kind: DeadLetterKind
    name: str
    ref: str
    tenant_id: str | None = None
    payload: Any = None
    error: JobErrorInfo | None = None
    attempts: int = 0
    event_count: int = 0
    failed_at: datetime
    cursor: str


class DeadLetterRetryResult(msgspec.Struct, frozen=True, kw_only=True):
    """The result of ``retry``: the letter is gone and its work is due now.

    Attributes:
        id: The letter's id.
        kind: Its kind.
        name: The definition's name.
        ref: The job id that runs again (the same id), or the instance brought back.
    """

    id: str
    kind: DeadLetterKind
    name: str
    ref: str


def _not_found(letter_id: str) -> InstanceNotFoundError:
    error = InstanceNotFoundError("dead letter", letter_id)
    error.message = f"no dead letter with id {letter_id!r} is stored"
    error.args = (error.message,)
    return error


class DeadLetters:
    """An engine's dead letters: the storage, and the handlers that read payloads and bring work back."""

    def __init__(self, runtime: Runtime, handlers: dict[str, Any], queue: JobQueue | None) -> None:
        self.runtime = runtime
        self.env = runtime.env
        self.handlers = handlers
        self.queue = queue

    def storage(self) -> DeadLetterStorage:
        store = self.env.storage
        if not isinstance(store, DeadLetterStorage):
            raise StorageError(f"the storage layer {store!r} keeps no dead letters")
        return store

    def info(self, letter: DeadLetter) -> DeadLetterInfo:
        """The public view of `letter`."""
        return DeadLetterInfo(
            id=letter.id,
            kind=letter.kind,
            name=letter.name,
            ref=letter.ref,
            tenant_id=letter.tenant_id,
            payload=self._payload(letter),
            error=_decode_error(letter.error),
            attempts=letter.attempts,
            event_count=letter.event_count,
            failed_at=to_datetime(letter.created_at),
            cursor=dead_letter_cursor(letter),
        )

    def _payload(self, letter: DeadLetter) -> Any:
        if letter.payload is None:
            return None
        tp: Any = None
        if letter.kind == "job":
            handler = self.queue.handlers.get(letter.name) if self.queue is not None else None
            tp = handler.job.params if handler is not None else None
        else:
            handler = self.handlers.get(letter.name)
            job = getattr(handler, "job", None)
            tp = job.state if job is not None and getattr(job, "kind", None) == letter.kind else None
        if tp is not None:
            try:
                return msgspec.json.decode(letter.payload, type=tp)
            except msgspec.DecodeError:
                pass  # written by another version of the definition: show the JSON as it is
        try:
            return msgspec.json.decode(letter.payload)
        except msgspec.DecodeError:
            return letter.payload.decode(errors="replace")

    async def load(self, scope: str | None, letter_id: object) -> Result[DeadLetter, Any]:
        """The letter `letter_id`, if it exists and the scope may see it."""
        checked = check_optional_text(scope, "the client's tenant id").bind(
            lambda _: check_id(letter_id, "dead letter id")
        )

        async def stored(the_id: str) -> Result[DeadLetter, Any]:
            letter = await self.storage().get_dead_letter(the_id)
            if letter is None or (scope is not None and letter.tenant_id != scope):
                return Failure(_not_found(the_id))
            return Success(letter)

        return await bind_async(checked, stored)

    async def list(
        self, scope: str | None, kind: object, name: object, tenant_id: object, after: object, limit: object
    ) -> Result[list[DeadLetterInfo], Any]:
        """The letters matching every given filter, newest first."""
        where = Result.do(
            DeadLetterFilter(
                kind=the_kind,
                name=the_name,
                tenant_id=tenant,
                after=the_after[0],
                after_created_at=the_after[1],
                limit=the_limit,
            )
            for _ in check_optional_text(scope, "the client's tenant id")
            for the_kind in _check_kind(kind)
            for the_limit in check_whole(limit, "limit", 1, 10_000)
            for the_name in check_optional_text(name, "name")
            for given in check_optional_text(tenant_id, "tenant_id")
            for the_after in _check_after(after)
            for tenant in _tenant_in_scope(scope, given)
        )

        async def listed(where: DeadLetterFilter) -> Result[list[DeadLetterInfo], Any]:
            return Success([self.info(letter) for letter in await self.storage().list_dead_letters(where)])

        return await bind_async(where, listed)

    async def discard(self, scope: str | None, letter_id: object) -> Result[DeadLetterInfo, Any]:
        """Delete the letter; what it held."""
        return await bind_async(await self.load(scope, letter_id), self._discard)

    async def _discard(self, letter: DeadLetter) -> Result[DeadLetterInfo, Any]:
        if not await self.storage().discard_dead_letter(letter.id):
            return Failure(_not_found(letter.id))
        return Success(self.info(letter))

    async def retry(self, scope: str | None, letter_id: object) -> Result[DeadLetterRetryResult, Any]:
        """Bring the letter's work back, due now, and delete the letter."""
        return await bind_async(await self.load(scope, letter_id), self._retry)

    async def _retry(self, letter: DeadLetter) -> Result[DeadLetterRetryResult, Any]:
        store, now = self.storage(), self.env.now_ms()
        outcome: Revival
        if letter.kind == "job":
            outcome = await store.revive_dead_letter(letter.id, now, None)
            if outcome == "revived" and self.queue is not None:
                worker = self.queue.worker
                worker.poke(now)
                worker.emit(
                    [worker.event("job.enqueued", letter.ref, letter.name, retry=True, tenant_id=letter.tenant_id)]
                )
        else:
            key = _revival.decode(letter.revive or b"").key
            handler = self.handlers.get(letter.name)
            if handler is not None and getattr(getattr(handler, "job", None), "kind", None) == letter.kind:
                # The kind's handler: on the instance's actor, under this engine's lease.
                outcome = await handler.revive_letter(key, letter.id, now)
            else:
                # Not run here: its alarm wakes the engine that runs it.
                outcome = await store.revive_dead_letter(letter.id, now, None)
        if outcome == "missing":
            return Failure(_not_found(letter.id))
        if outcome == "occupied":
            what = "job" if letter.kind == "job" else f"{letter.kind} instance"
            return Failure(
                InvalidStateError(
                    f"dead letter {letter.id}: {what} {letter.ref!r} of {letter.name!r} is live again "
                    "(or another engine holds it); nothing was changed"
                )
            )
        return Success(DeadLetterRetryResult(id=letter.id, kind=letter.kind, name=letter.name, ref=letter.ref))

    async def purge(self, older_than: object) -> Result[int, Any]:
        """Delete letters written more than `older_than` ago; how many."""
        return await bind_async(parse_duration(older_than, what="older_than").map(to_ms), self._purge)

    async def _purge(self, age_ms: int) -> Result[int, Any]:
        before, total, store = self.env.now_ms() - age_ms, 0, self.storage()
        while True:
            deleted = await store.purge_dead_letters(before, 1000)
            total += deleted
            if deleted < 1000:
                return Success(total)


def _decode_error(raw: bytes | None) -> JobErrorInfo | None:
    if raw is None:
        return None
    try:
        return _error.decode(raw)
    except msgspec.DecodeError:
        return JobErrorInfo("unknown", raw.decode(errors="replace"))


class DeadLettersClient:
    """The verbs on dead letters: ``list``, ``get``, ``retry``, ``discard``, ``purge``.

    Get it as ``engine.client.dead_letters``. A tenant-scoped client
    (``client.for_tenant(t)``) sees only tenant `t`'s letters; another tenant's
    letter id gives `InstanceNotFoundError`, as an unknown id does.

    Example:
        ```python
        for letter in (await engine.client.dead_letters.list(kind="job")).unwrap():
            print(letter.name, letter.ref, letter.error)
        ```
    """

    def __init__(self, letters: DeadLetters, tenant: str | None = None) -> None:
        self._letters = letters
        self._tenant = tenant

    def list(
        self,
        *,
        kind: DeadLetterKind | None = None,
        name: str | None = None,
        tenant_id: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> FutureResult[list[DeadLetterInfo], TenantError | ValidationError | StorageError]:
        """Letters matching every given filter, newest first, at most `limit` (1 to 10,000).

        Page with ``after=page[-1].cursor`` (`DeadLetterInfo.cursor`) until a page is shorter
        than `limit`: each letter is listed once, even if the page's last letter is retried
        or discarded before the next page is asked for. A letter id is taken as `after` too
        (the listing goes on after that letter, and ends if it is no longer stored).

        On a tenant's client (`Client.for_tenant`) a `tenant_id` filter naming another tenant
        gives `TenantError`, as ``jobs.list``'s does."""
        box, scope = self._letters, self._tenant
        return effect(lambda: box.list(scope, kind, name, tenant_id, after, limit), box.env)

    def get(
        self, letter_id: str
    ) -> FutureResult[DeadLetterInfo, InstanceNotFoundError | ValidationError | StorageError]:
        """The letter: what failed, with what payload and error, when."""
        box, scope = self._letters, self._tenant

        async def run() -> Result[DeadLetterInfo, Any]:
            return (await box.load(scope, letter_id)).map(box.info)

        return effect(run, box.env)

    def retry(
        self, letter_id: str
    ) -> FutureResult[
        DeadLetterRetryResult, InstanceNotFoundError | InvalidStateError | ValidationError | StorageError
    ]:
        """Bring the work back, due now, and delete the letter, in one transaction.

        - A job runs again under its own id with a fresh attempt budget (its row is
          put back if it was purged meanwhile), as ``client.jobs.retry`` does; a
          ``jobs.retry`` of the job removes its letter too.
        - A Debounce batch is flushed again on its instance, which must be idle or
          gone (a new batch collecting meanwhile is `InvalidStateError`: flush it first).
        - A Continuous or Task instance is stored again with the letter's state and
          runs (executes) at once; if an instance with its id exists again, the
          retry is `InvalidStateError` and nothing changes.
        """
        box, scope = self._letters, self._tenant
        return effect(lambda: box.retry(scope, letter_id), box.env)

    def discard(
        self, letter_id: str
    ) -> FutureResult[DeadLetterInfo, InstanceNotFoundError | ValidationError | StorageError]:
        """Delete the letter for good; what it held."""
        box, scope = self._letters, self._tenant
        return effect(lambda: box.discard(scope, letter_id), box.env)

    def purge(self, *, older_than: DurationLike) -> FutureResult[int, ValidationError | StorageError]:
        """Delete every letter written more than `older_than` ago (all tenants'); how many.

        Rows go in batches of 1000, each its own transaction.
        """
        box, scope = self._letters, self._tenant
        if scope is not None:
            return refused(
                ValidationError("purging dead letters is for every tenant at once; use a client without a tenant"),
                box.env,
            )
        return effect(lambda: box.purge(older_than), box.env)


def _check_kind(kind: object) -> Result[DeadLetterKind | None, ValidationError]:
    kind = plain_text(kind)
    for known in _KINDS:
        if isinstance(kind, str) and kind == known:
            return Success(known)
    if kind is None:
        return Success(None)
    return Failure(ValidationError(f"kind must be job, debounce, continuous or task, got {safe_repr(kind):.80}"))


def _check_after(after: object) -> Result[tuple[str | None, int | None], ValidationError]:
    """A listing's `after`: a `DeadLetterInfo.cursor` (the letter's time and id), or a letter
    id (looked up: a letter no longer stored ends the listing); ``None`` lists from the newest."""
    after = plain_text(after)
    if after is None:
        return Success((None, None))
    if not isinstance(after, str) or "\x1f" not in after:
        return check_text(after, "after").map(lambda letter_id: (letter_id, None))
    split = split_dead_letter_cursor(after)
    if split is None or split[1] is None:
        return Failure(
            ValidationError(f"after {after!r:.80} is neither a letter id nor a cursor (DeadLetterInfo.cursor)")
        )
    return check_id(split[0], "after's letter id").map(lambda letter_id: (letter_id, split[1]))


def _tenant_in_scope(scope: str | None, tenant: str | None) -> Result[str | None, TenantError]:
    """The tenant a listing filters by: a scoped client's own, which a filter may only repeat."""
    if scope is None:
        return Success(tenant)
    if tenant is not None and tenant != scope:
        return Failure(
            TenantError(f"this client acts for tenant {safe_repr(scope)}; it cannot list {safe_repr(tenant)}'s")
        )
    return Success(scope)
