from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Literal, Protocol, runtime_checkable

import msgspec

from .._errors import StorageError


class InstanceRecord(msgspec.Struct, kw_only=True):
    """One stored instance of a Continuous, Debounce or Task job.

    Times are epoch milliseconds. `state` is the JSON encoding of the job's
    state struct (or ``None`` before a Task's first state). `attempt` is the
    attempt number of the next or current try of the current run.
    """

    key: str
    kind: str
    name: str
    instance_id: str
    status: str
    state: bytes | None = None
    tenant_id: str | None = None
    run_count: int = 0
    attempt: int = 1
    event_count: int = 0
    execute_count: int = 0
    started_at: int | None = None
    data: bytes | None = None
    created_at: int = 0
    updated_at: int = 0
    version: int = 0


class Alarm(msgspec.Struct, frozen=True, kw_only=True):
    """A durable alarm: at `fire_at`, the instance `key` is woken for `purpose`.

    A handler tells the alarm it was woken for from one set after it by
    comparing the whole alarm (``claimed != stored``: `id`, `fire_at` and
    `purpose`), never `id` alone: setting an alarm may rewrite the stored one
    in place, keeping its `id` (SQLite, PostgreSQL and memory do, so a fire's
    write-back touches no index of the key). An alarm set again at the same
    time for the same purpose compares equal, and firing it for the older
    claim is firing it when it is due.
    """

    id: int
    key: str
    fire_at: int
    purpose: str


class SetAlarm(msgspec.Struct, frozen=True):
    """Replace the instance's alarm with one at `fire_at`.

    With `due_at` (later than `fire_at`), the alarm is stored as if claimed at once, its
    claim running out at `due_at`: a guard for a run that the engine setting it starts
    itself (a workflow's verb). It fires at `due_at` unless that run replaces it first, or
    at once when its claim is freed (`LeaseFreer.free_leases`: the engine died).
    """

    fire_at: int
    purpose: str
    due_at: int | None = None


class ClearAlarm(msgspec.Struct, frozen=True):
    """Remove the instance's alarm, if any."""


class Checkin(msgspec.Struct, kw_only=True):
    """One atomic change to an instance: everything in it is committed, or nothing.

    Attributes:
        key: The instance's storage key.
        record: The instance's new row; ``None`` deletes the instance with its
            alarm and event ids (terminate, purge).
        alarm: ``SetAlarm``, ``ClearAlarm``, or ``None`` to leave the alarm as it is.
        event_id: An idempotency key to record; if the instance has seen it
            before, the commit fails with `DuplicateEventError` and writes nothing.
    """

    key: str
    record: InstanceRecord | None
    alarm: SetAlarm | ClearAlarm | None = None
    event_id: str | None = None
    #: If set, the commit happens only while `lease_owner` still holds the
    #: instance's lease; otherwise it fails with `LeaseLostError` and writes nothing.
    lease_owner: str | None = None
    #: A dead letter to keep, written in the same transaction (a Debounce batch
    #: whose flush failed, the final state of an instance ended by exhausted retries).
    dead_letter: DeadLetter | None = None
    #: If set, `record` is a new instance, stored only if none is stored under `key` (an
    #: insert-if-absent, atomic against every other writer, in any process); otherwise the
    #: commit fails with `InstanceExistsError` (the stored instance) and writes nothing.
    create: bool = False


# -- dead letters ---------------------------------------------------------------------

#: What a dead letter holds: a queued job whose last attempt failed (``job``), a Debounce
#: batch whose flush failed (``debounce``), the final state of a Continuous or Task
#: instance ended by exhausted retries (``continuous``, ``task``).
DeadLetterKind = Literal["job", "debounce", "continuous", "task"]


class InstanceRevival(msgspec.Struct, frozen=True, kw_only=True):
    """How retrying an instance's dead letter brings it back, decided by its kind when
    the letter is written: `record` is stored under `key` with an alarm due at once for
    `purpose`, if no instance is stored there (or the one stored is in status `over`: a
    Debounce instance left ``idle``, whose accepted event ids stay)."""

    key: str
    record: InstanceRecord
    purpose: str
    over: str | None = None


class JobRevival(msgspec.Struct, frozen=True, kw_only=True):
    """What retrying a job's dead letter needs when the job's row was purged since."""

    max_attempts: int = 1
    priority: int = 0
    correlation_id: str | None = None
    limit_key: str | None = None


class DeadLetter(msgspec.Struct, kw_only=True):
    """Work that failed for good, kept for a person to inspect, retry or discard. Times are epoch ms.

    Attributes:
        id: The letter's id: a job's letter has the job's id.
        kind: See `DeadLetterKind`.
        name: The definition's name.
        ref: The job's id, or the instance's id.
        tenant_id: The job's or instance's tenant.
        payload: The JSON of the job's params, the batch's state or the instance's state.
        error: JSON ``{"tag": ..., "message": ...}`` of the last failure.
        attempts: The attempts made.
        event_count: The events in a Debounce batch (0 otherwise).
        revive: The JSON of a `JobRevival` or an `InstanceRevival`.
        created_at: When the work failed for good.
    """

    id: str
    kind: DeadLetterKind
    name: str
    ref: str
    tenant_id: str | None = None
    payload: bytes | None = None
    error: bytes | None = None
    attempts: int = 0
    event_count: int = 0
    revive: bytes | None = None
    created_at: int = 0


class DeadLetterFilter(msgspec.Struct, frozen=True, kw_only=True):
    """What ``list_dead_letters`` selects: every given field must match; letters come
    newest first (by `created_at`, then by id descending in code-point order, whatever a
    database's collation), starting after the letter `after`.

    With `after_created_at` (the `created_at` of the letter `after` when it was listed), the
    listing goes on from (`after_created_at`, `after`) whether or not that letter is still
    stored: a page's last letter retried or discarded meanwhile neither ends the listing nor
    skips a letter. Without it, `after` is looked up, and a letter no longer stored ends the
    listing."""

    kind: DeadLetterKind | None = None
    name: str | None = None
    tenant_id: str | None = None
    after: str | None = None
    after_created_at: int | None = None
    limit: int = 100


def dead_letter_cursor(letter: DeadLetter) -> str:
    """Where `letter` stands in a listing, as text: its `created_at` and id joined by the unit
    separator ``"\x1f"`` (which no id holds). `split_dead_letter_cursor` reads it back into a
    `DeadLetterFilter`'s `after` and `after_created_at`."""
    return f"{letter.created_at}\x1f{letter.id}"


_CURSOR_MS = re.compile(r"-?[0-9]{1,18}", re.ASCII)


def split_dead_letter_cursor(after: str) -> tuple[str, int | None] | None:
    """`after` as a `DeadLetterFilter`'s (`after`, `after_created_at`): a `dead_letter_cursor`
    gives both, a plain letter id the id alone (looked up); ``None`` for text that is neither
    (a separator with no whole number of milliseconds before it: an optional minus sign and 1
    to 18 ASCII digits, which every storage's 64-bit integer holds). Never raises."""
    at, separator, letter_id = after.rpartition("\x1f")
    if not separator:
        return after, None
    if not letter_id or _CURSOR_MS.fullmatch(at) is None:
        return None
    return letter_id, int(at)


#: What ``revive_dead_letter`` did: ``revived`` (the letter is gone, its work is due now),
#: ``missing`` (no such letter), ``occupied`` (the job or instance it would bring back
#: exists and is live, or another engine holds the instance: nothing was changed).
Revival = Literal["revived", "missing", "occupied"]


@runtime_checkable
class DeadLetterStorage(Protocol):
    """The dead-letter table, on SQLite and PostgreSQL. Every method is one transaction.

    Letters are written by the storage itself when a job's row ends ``failed`` (every
    path: a failed last attempt, a lease reclaimed on the last attempt), and by a
    `Checkin`'s `dead_letter` for instances; a job's letter goes when the job is retried.

    A letter written under an id already stored replaces the stored letter, every column:
    the letter shows the newest failure, with its attempts, error and time. Ids make that
    safe. A job's letter has the job's id, and the job's row leaves ``failed`` (deleting its
    letter) before it can run and fail again, so a second letter for a job arrives only for
    a row stored again under that id after its row was purged: the newest failure is what
    is left to retry. An instance's letter has an id of its own, new for each dead-lettering
    (``kinds._common.instance_dead_letter``), so two Debounce batches of one instance, or two
    ends of Continuous instances under one id, are two letters and no replace drops one's
    state or events; the same id arrives again only when the very same check-in is written
    again, which leaves the letter as it was.
    """

    async def list_dead_letters(self, where: DeadLetterFilter) -> list[DeadLetter]:
        """The letters `where` selects, newest first."""
        ...

    async def get_dead_letter(self, letter_id: str) -> DeadLetter | None:
        """The letter with this id, or ``None``."""
        ...

    async def discard_dead_letter(self, letter_id: str) -> bool:
        """Delete the letter; whether it existed."""
        ...

    async def revive_dead_letter(self, letter_id: str, now: int, lease_owner: str | None) -> Revival:
        """Bring the letter's work back, due at `now`, and delete the letter, in one transaction.

        A job's letter puts its ``failed`` or ``cancelled`` row back to pending with a fresh
        attempt budget (or inserts it again, with its id, if it was purged). An instance's
        letter applies its `InstanceRevival`, only while no engine other than `lease_owner`
        holds an unexpired lease on the instance.
        """
        ...

    async def purge_dead_letters(self, before: int, limit: int) -> int:
        """Delete up to `limit` letters written before `before` (epoch ms); how many."""
        ...


class LeaseLostError(StorageError):
    """A check-in's instance lease is held by another engine: the run's outcome was not stored.

    The handler ran while this engine's lease had lapsed (renewals failed, or the
    process stalled) and another engine took the instance over; storing this
    outcome would overwrite that engine's newer state.
    """

    def __init__(self, key: str) -> None:
        super().__init__(
            f"the lease of instance {key!r} passed to another engine while this run was going on; "
            "its outcome was not stored (the other engine's state stands)"
        )
        self.key = key


class InstanceStore(Protocol):
    """Where instances live: their records, idempotency keys and leases. Every method is one transaction."""

    async def load(self, key: str) -> tuple[InstanceRecord, Alarm | None] | None:
        """The instance stored under `key` and its alarm, or ``None``."""
        ...

    async def commit(self, checkin: Checkin) -> None:
        """Apply `checkin` atomically. Raises `StorageError` or `DuplicateEventError`."""
        ...

    async def has_event_id(self, key: str, event_id: str) -> bool:
        """Whether the instance `key` already accepted the idempotency key `event_id`."""
        ...

    async def acquire_instance_lease(self, key: str, owner: str, now_ms: int, ttl_ms: int) -> bool:
        """Take instance `key`'s lease for `owner` until ``now_ms + ttl_ms`` if it is free,
        expired or already `owner`'s; whether it was taken. Only the lease holder runs
        the instance's handlers, so two processes never run one instance at once."""
        ...

    async def instance_lease_holder(self, key: str, now_ms: int | None = None) -> tuple[str, int] | None:
        """Who holds instance `key`'s lease and until when (epoch ms), expired or not; ``None`` if no one.
        Given the caller's `now_ms`, the end is told in the caller's clock (see `next_job_wakeup`).

        Read when a lease cannot be taken: the engine logs the wait, and frees at
        once a lease whose holder is a process on this host that no longer exists.
        """
        ...

    async def renew_instance_leases(
        self, keys: list[str], owner: str, until_ms: int, now_ms: int | None = None
    ) -> None:
        """Extend `owner`'s leases on `keys` to `until_ms`; `now_ms` is the caller's clock when it
        computed `until_ms` (a storage that judges leases by its own clock extends them by the
        difference; ``None``: `until_ms` as given)."""
        ...

    async def release_instance_leases(self, keys: list[str], owner: str) -> None:
        """Give up `owner`'s leases on `keys`."""
        ...


class AlarmStore(Protocol):
    """Where instances' alarms live, claimed as leases by the alarm sleeper. Every method is one transaction.

    An alarm is set and cleared with its instance (`InstanceStore.commit`'s
    `Checkin`), so both live in one database.
    """

    async def claim_alarms(
        self, now_ms: int, lease_ms: int, limit: int, prefixes: Sequence[str] | None = None
    ) -> list[Alarm]:
        """Claim up to `limit` due alarms, hiding each for `lease_ms` (it fires again
        after the lease unless its handler replaced or cleared it).

        With `prefixes` (``"continuous:name:"``, one per definition the engine
        registered), only alarms whose key starts with one of them are claimed:
        an engine that runs some definitions never holds another's alarms."""
        ...

    async def release_alarms(self, ids: list[int]) -> None:
        """Make claimed alarms due again at their fire time (their handlers will not run here)."""
        ...

    async def next_alarm_at(self, prefixes: Sequence[str] | None = None) -> int | None:
        """When the earliest alarm (claimed or not) is next due, or ``None``; with
        `prefixes`, among the alarms whose key starts with one of them."""
        ...


class Storage(InstanceStore, AlarmStore, Protocol):
    """What the engine needs from a database: an `InstanceStore` and its `AlarmStore` on one connection.

    Every method is one transaction.
    """

    async def healthcheck(self) -> bool:
        """Whether the database answers a trivial query."""
        ...


def writes_inline(storage: object) -> bool:
    """Whether `storage`'s writes made only by the engine's own loops (`AlarmRunStore`'s
    `claim_alarm_runs` and `commit_checkins`, `QueueStorage`'s `fire_cron` and
    `settle_jobs`) run to their end in the calling task without a checkpoint, so no
    other task runs and no cancel can arrive meanwhile: its class says so with
    ``engine_writes_inline = True`` (the memory storage). The engine then opens no
    shielded cancel scope around them and schedules a lease renewal only for what is
    still held once such a write is done. A storage that does not say so is awaited
    as any other (SQLite and PostgreSQL let other tasks run while a write commits).
    """
    return getattr(storage, "engine_writes_inline", False) is True


def shields_marked_waits(storage: object) -> bool:
    """Whether no cancel can end a wait of `storage`'s for a task marked in `djobs._shield.SHIELDED`
    (a Debounce writer): it waits uninterruptibly (a write parked until its commit ends, a
    shielded checkpoint), except where it opens a shielded scope for a marked task itself
    (`djobs._shield.shielded_wait`). Its class says so with ``shields_marked_waits = True``
    (SQLite, memory); the writer then marks its task rather than entering a shielded scope
    of its own. A storage that does not say so (PostgreSQL, whose reads and writes wait on
    the network; a wrapper) is awaited under the writer's own scope, as before.
    """
    return getattr(storage, "shields_marked_waits", False) is True


class StorageLayer(Protocol):
    """A storage constructor: opened when the engine opens, closed when it closes."""

    def open(self) -> AbstractAsyncContextManager[Storage]:
        """Open the database (creating or migrating its schema) for one engine."""
        ...


# -- listing instances ------------------------------------------------------------------


@runtime_checkable
class InstanceLister(Protocol):
    """Listing a job's instances, for verbs such as a workflow client's ``list``. Optional:
    a storage without it gives those verbs a `StorageError`."""

    async def list_instances(
        self, kind: str, name: str, tenant_id: str | None, status: str | None, after: str | None, limit: int
    ) -> list[InstanceRecord]:
        """Up to `limit` instances of job `kind`/`name`, in key order after the key `after`;
        only `tenant_id`'s and only those in `status` when given."""
        ...


@runtime_checkable
class InstanceCreator(Protocol):
    """A new instance stored and its lease taken in one transaction. Optional: without it,
    a workflow's ``start`` takes the lease, reads the key and commits in three calls."""

    async def create_instance(
        self, checkin: Checkin, owner: str, now_ms: int, lease_ms: int
    ) -> tuple[InstanceRecord, Alarm | None] | None:
        """Store `checkin` (a new instance's record and alarm) unless an instance is stored
        under its key, taking the key's lease for `owner` (until ``now_ms + lease_ms`` on the
        lease clock, as `acquire_instance_lease`) in the same transaction.

        Returns:
            ``None`` once stored and leased; the stored instance and its alarm if one
            exists (then nothing is written, the lease included).

        Raises:
            LeaseLostError: Another owner holds the key's lease (nothing is written). A
                storage whose transaction keeps every other writer out (SQLite's) may look
                for a stored instance first and answer it whoever holds the lease.
            StorageError: The storage failed.
        """
        ...


@runtime_checkable
class InstanceLeaseLoader(Protocol):
    """An instance's lease taken and its row read in one write. Optional: without it, an
    instance's first handler takes the lease and then loads the row, two calls."""

    async def lease_and_load(
        self, key: str, owner: str, now_ms: int, ttl_ms: int
    ) -> tuple[bool, tuple[InstanceRecord, Alarm | None] | None]:
        """Take `key`'s lease for `owner` as `acquire_instance_lease` does and, if taken, read
        the instance under it as `load` does, in the same transaction.

        Returns:
            ``(True, loaded)`` once the lease is held, `loaded` being what `load` would give;
            ``(False, None)`` when another owner holds it (nothing is written).

        Raises:
            StorageError: The storage failed (the lease is not taken).
        """
        ...


@runtime_checkable
class LeaseFreer(Protocol):
    """The leases of an engine that has exited, freed at once rather than left to run out.
    Optional: without it, a dead engine's instance leases, alarm claims and job leases end
    after their length (an actor waiting for an instance lease still frees that one)."""

    async def lease_owners(self, host: str) -> list[str]:
        """The owners (engine ids, ``host:pid:token:random``) named after host `host` that hold an
        instance lease (stored, expired or not) or a running job's lease, sorted."""
        ...

    async def free_leases(self, owners: Sequence[str], now_ms: int) -> int:
        """Free every lease `owners` hold, in one transaction: their instance leases are
        deleted; the alarms of those instances that are claimed (due later than their fire
        time: a claim's lease, or a `SetAlarm` guard) are made due at their fire time, as
        `AlarmStore.release_alarms` does; their running jobs' leases end at `now_ms`, so the
        next `QueueStorage.reclaim_expired` takes those rows back.

        Returns how many leases of each kind were freed, in all. Raises `StorageError`
        (nothing is freed).
        """
        ...


@runtime_checkable
class InstanceCheckpointer(Protocol):
    """An instance's row rewritten in place under its lease, in one statement. Optional:
    without it, a workflow's checkpoint is a `commit` (a read of the lease, then the row)."""

    async def checkpoint_instance(self, record: InstanceRecord, owner: str, clear_alarm: bool = False) -> None:
        """Write `record`'s ``status``, ``run_count``, ``execute_count``, ``data`` and
        ``updated_at`` over the instance stored under ``record.key`` (its other columns
        unchanged), only while `owner` holds the key's lease; with no instance stored under
        the key, store `record` whole, as `commit` would. The key's alarm is left as it is,
        or with `clear_alarm` deleted in the same transaction (a `commit` with `ClearAlarm`).

        Raises:
            LeaseLostError: Another owner holds the key's lease, or none does (nothing is written).
            StorageError: The storage failed.
        """
        ...


class ClaimedAlarm(msgspec.Struct, frozen=True):
    """One alarm claimed by `AlarmRunStore.claim_alarm_runs`, with what its claim took.

    Attributes:
        alarm: The alarm, hidden for the claim's `lease_ms` as `AlarmStore.claim_alarms` hides it.
        leased: Whether the claim took the instance's lease for the claiming engine
            (only for keys its `runs_here` answered ``True``, and only if no other
            engine holds an unexpired lease).
        stored: With `leased`, the instance and its alarm as stored when the lease
            was taken (``None``: no instance under the key); else ``None``.
    """

    alarm: Alarm
    leased: bool = False
    stored: tuple[InstanceRecord, Alarm | None] | None = None


@runtime_checkable
class AlarmRunStore(Protocol):
    """Due alarms fired in batches: the claim takes their instances' leases and loads their
    rows in its own transaction, and their runs' check-ins are written back in one.
    Optional: without it, each claimed alarm's actor takes the lease, loads the row and
    commits on its own (`AlarmStore`, `InstanceStore`)."""

    async def claim_alarm_runs(
        self,
        now_ms: int,
        lease_ms: int,
        limit: int,
        prefixes: Sequence[str],
        owner: str,
        instance_lease_ms: int,
        runs_here: Callable[[str], bool],
    ) -> list[ClaimedAlarm]:
        """Claim up to `limit` due alarms as `AlarmStore.claim_alarms` does, and in the same
        transaction, for each whose key `runs_here` answers ``True``, take the instance's
        lease for `owner` (as `InstanceStore.acquire_instance_lease` with `now_ms` and
        `instance_lease_ms`) and load the instance.

        `runs_here` is called once per claimed alarm, inside the transaction (it must not
        block or await): an engine marks there the instances it will run itself, so no
        other task of it starts one while the claim commits. Alarms come in claim order.
        Raises `StorageError` (nothing is claimed or leased).
        """
        ...

    async def commit_checkins(
        self, checkins: Sequence[Checkin], release_leases: bool = False
    ) -> list[Exception | None]:
        """Apply each check-in as `InstanceStore.commit` does, all in one transaction.

        With `release_leases`, each check-in written that is fenced by a `lease_owner`
        also gives that owner's lease of its instance up, in the same transaction (as
        `InstanceStore.release_instance_leases`): a batch holds its instances' leases
        from its claim to its write-back, and no longer.

        Returns, in order, ``None`` for each check-in written, or the error it alone
        failed with (`LeaseLostError`, `DuplicateEventError`): nothing of that one is
        written (nor its lease given up), the others are. Raises `StorageError` if
        the transaction failed (then nothing is written).
        """
        ...


class InstanceExistsError(Exception):
    """The key is taken: from a `Checkin` with ``create`` (nothing is written), and inside a
    storage's `create_instance` (it rolls the transaction back; the method answers the instance)."""

    def __init__(self, stored: tuple[InstanceRecord, Alarm | None]) -> None:
        super().__init__(stored[0].key)
        self.stored = stored


@runtime_checkable
class CancelRequests(Protocol):
    """Cancels asked of an instance by a process that does not hold its lease. Optional: a
    storage without it lets a workflow's ``cancel`` wait for the lease, as every verb does.

    A request is a note beside the instance, written without the lease; the
    process that runs the instance reads the notes of what it runs and acts on
    them, and the verb that made the note clears it once the cancel is recorded.
    """

    async def request_cancel(self, key: str, reason: str | None, now_ms: int) -> bool | None:
        """Note a cancel of instance `key` (a note already there is kept, with its reason).

        Whether this call wrote the note (``False``: one was there; two
        cancels at once in two processes tell which asked first by it).
        ``None`` means unknown, taken as written.
        """
        ...

    async def cancel_requests(self, keys: Sequence[str]) -> dict[str, str | None]:
        """The noted cancels among `keys`: key to reason."""
        ...

    async def clear_cancel_request(self, key: str) -> None:
        """Remove `key`'s note, if any."""
        ...


# -- the job queue ----------------------------------------------------------------------

#: A queued job's status. ``pending`` rows wait for `scheduled_for`; ``running``
#: rows are leased by a worker until `worker_expires_at`; the rest are final
#: (``retry`` moves a failed or cancelled row back to pending).
JobStatusName = Literal["pending", "running", "completed", "failed", "cancelled"]

#: The statuses a job ends in; only these are ever purged.
FINAL_STATUSES: frozenset[JobStatusName] = frozenset({"completed", "failed", "cancelled"})


class NewJob(msgspec.Struct, kw_only=True):
    """A row to enqueue. `params` is the validated JSON of the job's params struct.

    `idempotency_key`, if given, is remembered per ``(tenant_id, name)``: a
    second enqueue with the same key writes nothing and gets the first job's id.

    `unique_key`, if given, is checked per ``(tenant_id, name)`` in the enqueue's
    transaction: while a job with that key is in one of `unique_statuses`
    (``pending``, or ``pending`` and ``running``), the enqueue writes nothing and
    gets that job's id.
    """

    id: str
    name: str
    params: bytes
    max_attempts: int
    scheduled_for: int
    created_at: int
    priority: int = 0
    correlation_id: str | None = None
    tenant_id: str | None = None
    idempotency_key: str | None = None
    unique_key: str | None = None
    unique_statuses: tuple[JobStatusName, ...] = ("pending",)
    #: The key its definition's limits count it under (``name`` or ``name\x1fkey``); ``None``: unlimited.
    limit_key: str | None = None


class ClaimedJob(msgspec.Struct, kw_only=True):
    """A row a worker holds a lease on. `attempt` is this try's number (1 = first);
    together with the worker id it fences every later write to the row."""

    id: str
    name: str
    params: bytes
    attempt: int
    max_attempts: int
    scheduled_for: int
    priority: int = 0
    correlation_id: str | None = None
    tenant_id: str | None = None
    #: Set when the row was claimed under its limit key (`QueueLimit`): it must start at once.
    limit_key: str | None = None


class QueueLimit(msgspec.Struct, frozen=True):
    """One job name's limits, as a worker passes them to a claim.

    Rows of `name` that carry a limit key are claimed only while, for their key,
    fewer than `concurrency` rows are ``running`` and fewer than `rate` were
    claimed in the trailing `period_ms` (``None``: that limit does not apply).
    """

    name: str
    concurrency: int | None = None
    rate: int | None = None
    period_ms: int | None = None


class HeldStarts(msgspec.Struct, frozen=True, kw_only=True):
    """What `start_held_jobs` did: the ids of the held rows it started, the ids
    of those it ended ``cancelled`` (a cancel was requested while they waited),
    and the due rows more urgent than the best held one that it claimed, best
    first. A held row in neither list was reclaimed by another worker."""

    started: list[str]
    cancelled: list[str]
    urgent: list[ClaimedJob]


class ExpiredLease(msgspec.Struct, frozen=True, kw_only=True):
    """A running row whose worker stopped renewing its lease, as it was reclaimed.

    `status` is what the row became: ``pending`` (it runs again), ``failed``
    (that was its last attempt) or ``cancelled`` (a cancel was requested).
    """

    id: str
    name: str
    worker_id: str | None
    attempt: int
    status: JobStatusName


class JobSettlement(msgspec.Struct, kw_only=True):
    """How one leased attempt ended; applied only while the lease is still this
    attempt's (same worker, same attempt number, still running).

    `status`:

    - ``completed`` with `result`; ``failed`` or ``cancelled`` with `error`;
    - ``pending`` with `scheduled_for`: a retry later (the attempt counts), or
      with `release`: handed back unstarted or interrupted by a shutdown (the
      attempt does not count);
    - ``running`` with `lease_until`: the attempt failed with `error` and the
      same holder starts the next one at once (``now``'s retries in the
      caller's task); the attempt count goes up by one.

    A ``pending`` settlement of a row whose cancel was requested makes it ``cancelled``.
    """

    job_id: str
    worker_id: str
    attempt: int
    status: JobStatusName
    at: int
    result: bytes | None = None
    error: bytes | None = None
    scheduled_for: int | None = None
    release: bool = False
    lease_until: int | None = None
    #: The row counts against a limit: its end frees a slot that other processes' workers may wait for.
    limited: bool = False


class JobRecord(msgspec.Struct, kw_only=True):
    """One stored queue job, as ``status`` and ``list`` read it. Times are epoch ms.

    `error` is JSON ``{"tag": ..., "message": ...}``; `params` and `result` are
    the JSON of the job's structs.
    """

    id: str
    name: str
    status: JobStatusName
    params: bytes
    result: bytes | None = None
    error: bytes | None = None
    progress: int = 0
    progress_message: str | None = None
    worker_id: str | None = None
    worker_started_at: int | None = None
    worker_expires_at: int | None = None
    attempt_count: int = 0
    max_attempts: int = 1
    scheduled_for: int = 0
    priority: int = 0
    correlation_id: str | None = None
    tenant_id: str | None = None
    cancel_requested: bool = False
    created_at: int = 0
    updated_at: int = 0
    completed_at: int | None = None


class JobFilter(msgspec.Struct, frozen=True, kw_only=True):
    """What ``list_jobs`` selects: every given field must match; rows come in id
    (that is, creation) order, starting after the id `after`."""

    status: JobStatusName | None = None
    name: str | None = None
    correlation_id: str | None = None
    tenant_id: str | None = None
    after: str | None = None
    limit: int = 100
    #: ``False`` leaves out what a listing does not show: ``params`` come back
    #: empty (``b""``) and ``result`` as ``None``, so a page of large rows costs
    #: no more than a page of small ones.
    payloads: bool = True


class CronSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A cron job as the code defines it, written to storage when an engine opens.

    `first_run_at` is used when the row is new or its schedule changed; an
    unchanged schedule keeps the stored `next_run_at`, so fire times missed
    while no engine ran are still seen.
    """

    name: str
    job_name: str
    expression: str
    tz: str
    params: bytes
    tenant_id: str | None
    first_run_at: int | None
    now: int


class CronRecord(msgspec.Struct, kw_only=True):
    """One stored cron job. Times are epoch ms."""

    name: str
    job_name: str
    expression: str
    tz: str
    params: bytes
    enabled: bool
    tenant_id: str | None = None
    last_run_at: int | None = None
    next_run_at: int | None = None
    last_job_id: str | None = None
    created_at: int = 0
    updated_at: int = 0


@runtime_checkable
class QueueStorage(Protocol):
    """What the job queue needs from a database, on top of `Storage`.

    Every method is one transaction. Writes to a leased row are fenced by
    ``(worker_id, attempt)``: a worker whose lease was reclaimed cannot
    overwrite what the row's new holder does.
    """

    async def enqueue_jobs(self, jobs: Sequence[NewJob]) -> list[tuple[str, bool]]:
        """Insert `jobs` as ``pending``, all or none; per job its id and whether it
        was created (``False``: its idempotency key was seen, the id is the first job's)."""
        ...

    async def start_job(self, job: NewJob, worker_id: str, lease_until: int) -> None:
        """Insert `job` already ``running`` (attempt 1) under `worker_id`'s lease."""
        ...

    async def claim_jobs(
        self,
        now: int,
        lease_until: int,
        worker_id: str,
        names: Sequence[str],
        limit: int,
        above: int | None = None,
        limits: Sequence[QueueLimit] = (),
        slots: int = 0,
    ) -> list[ClaimedJob]:
        """Lease up to `limit` due ``pending`` rows named one of `names` (only those
        whose `priority` is above `above`, if given): higher `priority` first, then
        earliest `scheduled_for`; counts an attempt on each.

        A row that carries a limit key and is named in `limits` is *limited*: it is
        left to the limited claim, which runs in the same transaction when `limits`
        is given and takes up to `slots` limited rows (best first, each key's best
        first) only while its key is under its limits: fewer than ``concurrency``
        rows of the key ``running`` (counting the ones this claim takes), fewer than
        ``rate`` claims of the key in the trailing ``period_ms``. Every limited row
        taken is remembered as a start of its key and comes back with its
        `ClaimedJob.limit_key` set. The check and the claim are atomic across
        processes: two claims never both take a key's last slot. A row that
        carries a limit key but whose name `limits` does not limit is claimed as
        any other (its definition has no limits now)."""
        ...

    async def start_held_jobs(
        self,
        worker_id: str,
        held: Sequence[tuple[str, int]],
        now: int,
        lease_until: int,
        cancel_error: bytes,
        names: Sequence[str],
        above: int,
    ) -> HeldStarts:
        """Start rows `worker_id` claimed earlier and held unstarted, in one transaction.

        Each ``(id, attempt)`` of `held` still ``running`` under `worker_id` at
        that attempt starts: its lease runs to `lease_until` and its start time
        becomes `now`. One whose cancel was requested meanwhile ends
        ``cancelled`` with `cancel_error` instead. One reclaimed by another
        worker is left alone. Then, as `claim_jobs` with `above`, it claims up
        to ``len(held)`` due rows more urgent than `above` (the best held
        priority), none that carries a limit key. A held row starts only through this conditional write, so it
        never runs twice: a reclaim and a start cannot both succeed.
        """
        ...

    async def reclaim_expired(
        self, now: int, cancel_error: bytes, lease_error: bytes, limit: int
    ) -> list[ExpiredLease]:
        """Take back ``running`` rows whose lease ended by `now`: pending again,
        ``failed`` with `lease_error` if that was the last attempt, ``cancelled``
        with `cancel_error` if a cancel was requested. The rows come in no promised order."""
        ...

    async def renew_leases(self, worker_id: str, lease_until: int, now: int | None = None) -> list[tuple[str, bool]]:
        """Extend every lease `worker_id` holds (to `lease_until`, computed at the caller's `now`;
        see `renew_instance_leases`); per row held its id and whether a cancel was requested,
        in no promised order (the dialects' ``RETURNING`` gives none).

        Never waits for another transaction: a storage with row locks (PostgreSQL) skips a
        row locked now, leaves its lease as it is until the next renewal, and still reports
        it as held. A row not reported is no longer this worker's (reclaimed)."""
        ...

    async def settle_jobs(self, settlements: Sequence[JobSettlement]) -> list[bool]:
        """Apply how attempts ended; per settlement whether it still held the lease and was applied."""
        ...

    async def set_progress(
        self, job_id: str, worker_id: str, attempt: int, progress: int, message: str | None, now: int
    ) -> bool:
        """Record a running attempt's progress (0-100); whether it still held the lease."""
        ...

    async def get_job(self, job_id: str) -> JobRecord | None:
        """The job with this id, or ``None``."""
        ...

    async def list_jobs(self, where: JobFilter) -> list[JobRecord]:
        """The jobs `where` selects, in id order."""
        ...

    async def cancel_job(self, job_id: str, now: int, error: bytes) -> tuple[JobRecord, bool] | None:
        """Cancel a ``pending`` row (it never runs) or mark a ``running`` one
        cancel-requested (its worker cancels it): the row afterwards and whether this call's
        write changed it, or ``None`` if there is no such row.

        The flag is the write's own (a row it updated), not a comparison with an earlier read:
        of two cancels at once, from two processes, exactly one gets ``True``; a row already
        cancelled, finished, or running with its cancel requested is left as it is (``False``).
        """
        ...

    async def retry_job(self, job_id: str, now: int) -> JobRecord | None:
        """Put a ``failed`` or ``cancelled`` row back to pending, due now, with a fresh
        attempt budget; the row afterwards (unchanged if it was in another status), or ``None``."""
        ...

    async def next_job_wakeup(
        self, names: Sequence[str], now: int | None = None, limits: Sequence[QueueLimit] = ()
    ) -> int | None:
        """The earliest time a worker for `names` has something to do: a pending row
        falls due, or any running row's lease ends. ``None`` if neither exists.

        Limited rows (see `claim_jobs`) count only through `limits`: a key under its
        limits with a due row is due at once, a key at its rate limit when its oldest
        start in the window leaves it, a key at its concurrency limit never (the
        end of one of its runs wakes the worker: a settle here, a notice or the
        poll from elsewhere). Without `limits` they do not count at all.

        Given the caller's `now`, a storage that judges leases by its own clock tells a
        lease's end in the caller's clock (`now` plus what is left of the lease)."""
        ...

    async def sync_cron_jobs(self, specs: Sequence[CronSpec]) -> None:
        """Create or update the stored cron jobs for `specs` (an engine opening)."""
        ...

    async def due_cron_jobs(self, names: Sequence[str], now: int) -> list[CronRecord]:
        """Enabled cron jobs named one of `names` whose next run is at or before `now`, by
        next run, then by name in code-point order."""
        ...

    async def next_cron_at(self, names: Sequence[str]) -> int | None:
        """The earliest next run of the enabled cron jobs named one of `names`."""
        ...

    async def fire_cron(
        self,
        name: str,
        expected_next_run_at: int,
        next_run_at: int | None,
        now: int,
        job: NewJob | None,
        worker_id: str | None = None,
        lease_until: int | None = None,
    ) -> bool:
        """Advance cron `name` from `expected_next_run_at` to `next_run_at` and
        enqueue `job`, in one transaction, only if no one advanced it first;
        whether this call did.

        With `worker_id` (and `lease_until`), `job` (which then has no idempotency,
        unique or limit key) is stored already ``running`` (attempt 1) under that
        worker's lease, as `start_job` stores a row: the worker of the engine that
        fires it runs it without a claim."""
        ...

    async def list_cron_jobs(self) -> list[CronRecord]:
        """Every stored cron job, by name in code-point order (``"Z"`` before ``"a"``, whatever
        a database's collation)."""
        ...

    async def set_cron_enabled(self, name: str, enabled: bool, next_run_at: int | None, now: int) -> CronRecord | None:
        """Enable (with a new `next_run_at`) or disable cron `name`; the row afterwards, or ``None``."""
        ...

    async def purge_jobs(
        self, finished_before: int, statuses: Sequence[JobStatusName], limit: int, tenant_id: str | None = None
    ) -> int:
        """Delete up to `limit` jobs in one of the final `statuses` (``completed``, ``failed``,
        ``cancelled``; others are never deleted) that finished before `finished_before` (epoch
        ms), only `tenant_id`'s if given, with the idempotency keys that named them; how many
        were deleted. Call again until it returns less than `limit`."""
        ...
