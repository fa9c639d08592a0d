"""Storage in Python's own data structures: every protocol SQLite implements, without SQL.

For tests (`memory`): one database per layer, shared by every engine opened on it and
living as long as the layer (`_Tables`; each open is a `MemoryStorage` on them, closed on
its own), and times (leases included) are the engines' (``lease_clock="engine"``).
An instance is kept as an `InstanceRecord` that no caller ever holds (a read hands
out a copy, a write stores one), a job as a private row object, so an object a caller
keeps cannot change what was stored, and every read builds a new record.

Every operation is one transaction. It runs without an ``await`` (no other task sees
it half done), and every change it makes to a table goes through an undo log: if it
raises (a constraint, a lease fence, a fault injected at commit), the log is played
back and nothing of it stays. Ordered questions (the next alarm, the next due job,
the next lease to end) are heaps whose entries are checked against the row when
they surface; an entry a later write made stale is dropped then.
"""

from __future__ import annotations

import heapq
import itertools
import operator
from bisect import bisect_right
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar, final

import msgspec
import trio

from .._errors import CLOSED_MESSAGE, DuplicateEventError, StorageError, ValidationError
from .._queue_limits import MAX_PERIOD_MS
from ._base import (
    FINAL_STATUSES,
    Alarm,
    Checkin,
    ClaimedAlarm,
    ClaimedJob,
    ClearAlarm,
    CronRecord,
    CronSpec,
    DeadLetter,
    DeadLetterFilter,
    ExpiredLease,
    HeldStarts,
    InstanceExistsError,
    InstanceRecord,
    JobFilter,
    JobRecord,
    JobRevival,
    JobSettlement,
    JobStatusName,
    LeaseLostError,
    NewJob,
    QueueLimit,
    Revival,
    SetAlarm,
)
from ._common import NO_FLOOR, describe_error, every_name_limited, limits_of
from ._dead_letters import dead_letter, dead_letter_row, revival_decoder
from ._inspect import (
    JOB_STATUSES,
    AlarmCounts,
    InstanceCount,
    InstanceFilter,
    InstanceView,
    JobCount,
    LeaseHolder,
    MinuteCount,
    PendingJob,
    StorageSummary,
)

T = TypeVar("T")

_MISSING: Final = object()
#: Pushes on the pending and expiry heaps between two sweeps of them, at least (`_sweep_heaps`).
_SWEEP_FLOOR: Final = 1024

#: A heap entry of a pending job: (scheduled_for, rowid, stamp, id).
_Entry = tuple[int, int, int, str]
#: Pending jobs of one kind, by priority: each priority's heap of entries.
_Lane = dict[int, list[_Entry]]
_revival_encoder = msgspec.json.Encoder()


def _restore(table: dict[Any, Any], key: object, old: object) -> None:
    if old is _MISSING:
        table.pop(key, None)
    else:
        table[key] = old


def _list_pop(values: list[Any]) -> None:
    values.pop()


@final
class _Job:
    """A stored queue job: the columns of SQLite's ``jobs`` table, plus `rowid` (its
    insertion order, the tie-break of claims as SQLite's rowid is) and `stamp` (nonzero
    while pending: the heap entries carrying it are the row's current ones)."""

    __slots__ = (
        "attempt_count",
        "cancel_requested",
        "completed_at",
        "correlation_id",
        "created_at",
        "error",
        "id",
        "limit_key",
        "max_attempts",
        "name",
        "params",
        "priority",
        "progress",
        "progress_message",
        "result",
        "rowid",
        "scheduled_for",
        "stamp",
        "status",
        "tenant_id",
        "unique_key",
        "updated_at",
        "worker_expires_at",
        "worker_id",
        "worker_started_at",
    )

    def __init__(self, job: NewJob, rowid: int) -> None:
        self.id = job.id
        self.name = job.name
        self.status: JobStatusName = "pending"
        self.params = job.params
        self.result: bytes | None = None
        self.error: bytes | None = None
        self.progress = 0
        self.progress_message: str | None = None
        self.worker_id: str | None = None
        self.worker_started_at: int | None = None
        self.worker_expires_at: int | None = None
        self.attempt_count = 0
        self.max_attempts = job.max_attempts
        self.scheduled_for = job.scheduled_for
        self.priority = job.priority
        self.correlation_id = job.correlation_id
        self.tenant_id = job.tenant_id
        self.cancel_requested = False
        self.created_at = job.created_at
        self.updated_at = job.created_at
        self.completed_at: int | None = None
        self.unique_key = job.unique_key
        self.limit_key = job.limit_key
        self.rowid = rowid
        self.stamp = 0

    def record(self, payloads: bool = True) -> JobRecord:
        return JobRecord(
            id=self.id,
            name=self.name,
            status=self.status,
            params=self.params if payloads else b"",
            result=self.result if payloads else None,
            error=self.error,
            progress=self.progress,
            progress_message=self.progress_message,
            worker_id=self.worker_id,
            worker_started_at=self.worker_started_at,
            worker_expires_at=self.worker_expires_at,
            attempt_count=self.attempt_count,
            max_attempts=self.max_attempts,
            scheduled_for=self.scheduled_for,
            priority=self.priority,
            correlation_id=self.correlation_id,
            tenant_id=self.tenant_id,
            cancel_requested=self.cancel_requested,
            created_at=self.created_at,
            updated_at=self.updated_at,
            completed_at=self.completed_at,
        )

    def claimed(self, limit_key: str | None = None) -> ClaimedJob:
        return ClaimedJob(
            id=self.id,
            name=self.name,
            params=self.params,
            attempt=self.attempt_count,
            max_attempts=self.max_attempts,
            scheduled_for=self.scheduled_for,
            priority=self.priority,
            correlation_id=self.correlation_id,
            tenant_id=self.tenant_id,
            limit_key=limit_key,
        )


_JOB_SLOTS: Final = _Job.__slots__
_snapshot: Final = operator.attrgetter(*_JOB_SLOTS)


#: A copy of a stored instance: what a read hands out and a write stores (a C-level copy of
#: the struct's fields, which are all immutable values).
_copy_instance: Final[Callable[[InstanceRecord], InstanceRecord]] = getattr(  # noqa: B009  # msgspec's C __copy__
    InstanceRecord, "__copy__"
)


#: A copy of a stored cron job (as `_copy_instance`: its fields are all immutable values).
_cron_copy: Final[Callable[[CronRecord], CronRecord]] = getattr(CronRecord, "__copy__")  # noqa: B009


@final
class _Tables:
    """One memory database: its tables, heaps and id counters, shared by every `MemoryStorage`
    opened on it (`MemoryLayer`). Rows are kept as SQLite keeps them (see the module docstring)."""

    __slots__ = (
        "alarm_heap",
        "alarm_ids",
        "alarm_keys",
        "alarm_sweep",
        "alarms",
        "by_definition",
        "by_key",
        "by_worker",
        "cancels",
        "crons",
        "event_ids",
        "expiry",
        "free",
        "instances",
        "job_keys",
        "jobs",
        "keyed",
        "keys_of_job",
        "leases",
        "letters",
        "rowids",
        "running_keys",
        "stamps",
        "starts",
        "sweep",
        "unique",
    )

    def __init__(self) -> None:
        # instances, alarms, idempotency keys, leases, cancel notes
        #: key -> the stored instance, a record no caller holds (`_copy_instance` in and out)
        self.instances: dict[str, InstanceRecord] = {}
        self.by_definition: dict[tuple[str, str], dict[str, None]] = {}
        #: key -> (id, fire_at, due_at, purpose)
        self.alarms: dict[str, tuple[int, int, int, str]] = {}
        self.alarm_keys: dict[int, str] = {}
        #: (due_at, id, key), lazily checked against `alarms`
        self.alarm_heap: list[tuple[int, int, str]] = []
        #: [entries pushed on `alarm_heap` since its last sweep, the count that sweeps it next]
        #: (`_push_alarm`)
        self.alarm_sweep: list[int] = [0, _SWEEP_FLOOR]
        self.alarm_ids = itertools.count(1)
        self.event_ids: dict[str, dict[str, int]] = {}
        #: key -> (owner, expires_at)
        self.leases: dict[str, tuple[str, int]] = {}
        self.cancels: dict[str, tuple[str | None, int]] = {}
        # the queue
        self.jobs: dict[str, _Job] = {}
        self.rowids = itertools.count(1)
        self.stamps = itertools.count(1)
        #: (tenant or "", name, key) -> (job id, created_at)
        self.job_keys: dict[tuple[str, str, str], tuple[str, int]] = {}
        self.keys_of_job: dict[str, dict[tuple[str, str, str], None]] = {}
        #: (name, unique key, tenant) -> ids of the rows stored with it
        self.unique: dict[tuple[str, str, str | None], dict[str, None]] = {}
        #: pending rows without a limit key, by name; with one, by name and by key
        self.free: dict[str, _Lane] = {}
        self.keyed: dict[str, _Lane] = {}
        self.by_key: dict[str, _Lane] = {}
        #: (worker_expires_at, rowid, id) of running rows, lazily checked
        self.expiry: list[tuple[int, int, str]] = []
        #: [entries pushed on the pending and expiry heaps since their last sweep, the count that
        #: sweeps them next] (`_sweep_heaps`)
        self.sweep: list[int] = [0, _SWEEP_FLOOR]
        self.by_worker: dict[str, dict[str, None]] = {}
        self.running_keys: dict[str, int] = {}
        #: limit key -> start times (ascending) of its rate-limited claims
        self.starts: dict[str, list[int]] = {}
        self.crons: dict[str, CronRecord] = {}
        self.letters: dict[str, tuple[Any, ...]] = {}


@final
class MemoryStorage:
    """The `Storage`, `QueueStorage` and optional protocols (`AlarmRunStore`, `InstanceCreator`,
    `InstanceCheckpointer`, `InstanceLeaseLoader`, `InstanceLister`, `CancelRequests`, dead
    letters, retention and the `Inspector` read side) on dicts and heaps in this process.
    Open it with `memory()`, which opens every store of one layer on the same tables (a new
    store gets new, empty ones); each store closes on its own, as a connection does.

    Leases are judged by the times the engine passes (``lease_clock == "engine"``).
    """

    lease_clock: Final = "engine"
    #: The writes only the engine's own loops make (a claim of due alarms, their batch's
    #: write-back, a cron fire, settles) are a bare `_transaction`, without `_write`'s
    #: checkpoint (`writes_inline`): those loops never count on a write letting other tasks
    #: run (each checkpoints where it goes round without sleeping). The writes user code
    #: reaches (client verbs, a kind's commits) keep it.
    engine_writes_inline: Final = True
    #: No cancel ends a wait of this store's: each write ends with a shielded checkpoint and a
    #: read does not wait (`shields_marked_waits`).
    shields_marked_waits: Final = True

    def __init__(self, tables: _Tables | None = None) -> None:
        # Not documented on its own: the reference page would show the private `_Tables`.
        t = _Tables() if tables is None else tables
        self._closed = False
        #: The open operation's undo log: (function, *arguments) to call in reverse on failure.
        self._undo: list[tuple[Any, ...]] = []
        self._commit_hook: Callable[[], object] | None = None
        # The tables, bound to this store's attributes (the same objects in every store on them).
        self._instances = t.instances
        self._by_definition = t.by_definition
        self._alarms = t.alarms
        self._alarm_keys = t.alarm_keys
        self._alarm_heap = t.alarm_heap
        self._alarm_sweep = t.alarm_sweep
        self._alarm_ids = t.alarm_ids
        self._event_ids = t.event_ids
        self._leases = t.leases
        self._cancels = t.cancels
        self._jobs = t.jobs
        self._rowids = t.rowids
        self._stamps = t.stamps
        self._job_keys = t.job_keys
        self._keys_of_job = t.keys_of_job
        self._unique = t.unique
        self._free = t.free
        self._keyed = t.keyed
        self._by_key = t.by_key
        self._expiry = t.expiry
        self._sweep = t.sweep
        self._by_worker = t.by_worker
        self._running_keys = t.running_keys
        self._starts = t.starts
        self._crons = t.crons
        self._letters = t.letters

    def __repr__(self) -> str:
        return "MemoryStorage()"

    # -- plumbing -----------------------------------------------------------------

    def lease_now(self, now: int) -> int:
        """The lease clock's reading: the caller's `now` (leases follow the engine's clock)."""
        return now

    def set_commit_hook(self, hook: Callable[[], object] | None) -> None:
        """Call `hook` as each write is about to commit (fault injection, `djobs.storage.faulty`):
        if it raises or returns true, the write is rolled back and fails with `StorageError`."""
        self._commit_hook = hook

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(CLOSED_MESSAGE)

    def _transaction(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` as one transaction: everything it wrote is undone if it (or the commit hook) raises."""
        if self._closed:  # `_check_open`, inlined: every write passes here
            raise StorageError(CLOSED_MESSAGE)
        undo = self._undo = []
        try:
            out = fn(*args)
            hook = self._commit_hook
            if hook is not None:
                try:
                    refused = hook()
                except Exception as exc:
                    raise StorageError(f"could not commit to memory(): {describe_error(exc)}", exc) from exc
                if refused:
                    raise StorageError("could not commit to memory(): the commit hook refused it")
        except BaseException:
            self._rollback(undo)
            raise
        finally:
            self._undo = []
        return out

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn` as one transaction, then a checkpoint (shielded: the write is done, the caller
        learns its outcome), as a SQLite write lets other tasks run before its commit."""
        try:
            return self._transaction(fn, *args)
        finally:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _rollback(self, undo: list[tuple[Any, ...]]) -> None:
        for entry in reversed(undo):
            entry[0](*entry[1:])

    def _put(self, table: dict[Any, Any], key: Any, value: Any) -> None:
        self._undo.append((_restore, table, key, table.get(key, _MISSING)))
        table[key] = value

    def _drop(self, table: dict[Any, Any], key: Any) -> Any:
        old = table.pop(key, _MISSING)
        if old is not _MISSING:
            self._undo.append((_restore, table, key, old))
        return old

    def _inner(self, table: dict[Any, dict[Any, Any]], key: Any) -> dict[Any, Any]:
        """The dict stored under `key` in `table`, created (undoably) if missing."""
        inner = table.get(key)
        if inner is None:
            inner = {}
            self._put(table, key, inner)
        return inner

    def _touch(self, job: _Job) -> None:
        """Remember `job`'s columns, to be put back if the operation fails."""
        self._undo.append((self._restore_job, job, _snapshot(job)))

    def _restore_job(self, job: _Job, columns: tuple[Any, ...]) -> None:
        for name, value in zip(_JOB_SLOTS, columns, strict=True):
            setattr(job, name, value)
        # The heap entries the failed operation popped: put back (a duplicate is harmless).
        if job.status == "pending":
            self._index_pending(job)
        elif job.status == "running" and job.worker_expires_at is not None:
            self._push_expiry((job.worker_expires_at, job.rowid, job.id))

    def _restore_alarm(self, key: str, old: object) -> None:
        _restore(self._alarms, key, old)
        if isinstance(old, tuple):
            self._push_alarm((old[2], old[0], key))

    # -- instances and alarms -----------------------------------------------------

    def _loaded(self, key: str) -> tuple[InstanceRecord, Alarm | None] | None:
        row = self._instances.get(key)
        if row is None:
            return None
        alarm = self._alarms.get(key)
        found = None if alarm is None else Alarm(id=alarm[0], key=key, fire_at=alarm[1], purpose=alarm[3])
        return _copy_instance(row), found

    async def load(self, key: str) -> tuple[InstanceRecord, Alarm | None] | None:
        self._check_open()
        return self._loaded(key)

    def _set_alarm(self, key: str, fire_at: int, due_at: int, purpose: str) -> None:
        """Set `key`'s alarm: a new one, or the stored one rewritten in place (its id kept,
        as SQLite's upsert keeps the row's); its old heap entry no longer matches its due time."""
        old = self._alarms.get(key)
        if old is None:
            alarm_id = next(self._alarm_ids)
            self._undo.append((self._restore_alarm, key, _MISSING))
            self._put(self._alarm_keys, alarm_id, key)
        else:
            alarm_id = old[0]
            self._undo.append((self._restore_alarm, key, old))
        self._alarms[key] = (alarm_id, fire_at, due_at, purpose)
        self._push_alarm((due_at, alarm_id, key))

    def _push_alarm(self, entry: tuple[int, int, str]) -> None:
        """Push an alarm's current entry on the alarm heap; once there were as many pushes as
        the last sweep left (`_SWEEP_FLOOR` at least), sweep it: rebuilt from the alarms, one
        entry each, as `_sweep_heaps` sweeps the job heaps.

        An alarm set again, moved or cleared leaves its old entry, dropped only when it comes
        to the top: for the length of its old delay (a Task pushing a 30-day timeout back on
        every event left one per event). A claim pops the entry it replaces, so its pushes are
        not counted. Safe within an operation and within a rollback: the rebuilt heap holds
        every alarm's current entry, and a rollback pushes the entries of the alarms it
        restores (`_restore_alarm`)."""
        heap = self._alarm_heap
        heapq.heappush(heap, entry)
        sweep = self._alarm_sweep
        sweep[0] += 1
        if sweep[0] > sweep[1]:
            heap[:] = [(a[2], a[0], key) for key, a in self._alarms.items()]
            heapq.heapify(heap)
            sweep[:] = [0, max(_SWEEP_FLOOR, len(heap))]

    def _clear_alarm(self, key: str) -> None:
        old = self._alarms.pop(key, None)
        if old is not None:
            self._undo.append((self._restore_alarm, key, old))
            self._drop(self._alarm_keys, old[0])

    def _hide_alarm(self, key: str, alarm: tuple[int, int, int, str], due_at: int) -> None:
        self._undo.append((self._restore_alarm, key, alarm))
        self._alarms[key] = (alarm[0], alarm[1], due_at, alarm[3])

    def _store_instance(self, key: str, record: InstanceRecord) -> None:
        """Upsert a copy of `record` under `key`: identity (kind, name, instance id) and birth
        (``created_at``) kept from the stored row, as SQLite's upsert keeps them."""
        new = _copy_instance(record)
        old = self._instances.get(key)
        if old is None:
            new.key = key
            self._put(self._instances, key, new)
            self._put(self._inner(self._by_definition, (new.kind, new.name)), key, None)
            return
        new.key, new.kind, new.name, new.instance_id, new.created_at = (
            old.key,
            old.kind,
            old.name,
            old.instance_id,
            old.created_at,
        )
        self._undo.append((_restore, self._instances, key, old))
        self._instances[key] = new

    def _delete_instance(self, key: str) -> None:
        old = self._drop(self._instances, key)
        if old is not _MISSING:
            keys = self._by_definition.get((old.kind, old.name))
            if keys is not None:
                self._drop(keys, key)

    def _apply(self, checkin: Checkin) -> None:
        """Write `checkin` (its lease already checked): what SQLite's ``_apply`` writes."""
        key = checkin.key
        if checkin.create and key in self._instances:
            stored = self._loaded(key)
            assert stored is not None
            raise InstanceExistsError(stored)
        if checkin.event_id is not None:
            seen = self._event_ids.get(key)
            if seen is not None and checkin.event_id in seen:
                raise DuplicateEventError(key, checkin.event_id)
            created = checkin.record.updated_at if checkin.record else 0
            self._put(self._inner(self._event_ids, key), checkin.event_id, created)
        if checkin.dead_letter is not None:
            self._put(self._letters, checkin.dead_letter.id, dead_letter_row(checkin.dead_letter))
        record = checkin.record
        if record is None:
            self._delete_instance(key)
            self._clear_alarm(key)
            self._drop(self._event_ids, key)
            return
        self._store_instance(key, record)
        alarm = checkin.alarm
        if isinstance(alarm, SetAlarm):
            self._set_alarm(key, alarm.fire_at, alarm.fire_at if alarm.due_at is None else alarm.due_at, alarm.purpose)
        elif isinstance(alarm, ClearAlarm):
            self._clear_alarm(key)

    def _commit(self, checkin: Checkin) -> None:
        if checkin.lease_owner is not None:
            lease = self._leases.get(checkin.key)
            if lease is None or lease[0] != checkin.lease_owner:
                raise LeaseLostError(checkin.key)
        self._apply(checkin)

    async def commit(self, checkin: Checkin) -> None:
        await self._write(self._commit, checkin)

    def _take_lease(self, key: str, owner: str, now: int, ttl: int) -> bool:
        lease = self._leases.get(key)
        if lease is not None and lease[0] != owner and lease[1] > now:
            return False
        self._put(self._leases, key, (owner, now + ttl))
        return True

    def _create(self, checkin: Checkin, owner: str, now: int, ttl: int) -> tuple[InstanceRecord, Alarm | None] | None:
        key = checkin.key
        lease = self._leases.get(key)
        if lease is not None and lease[0] != owner and lease[1] > now:
            raise LeaseLostError(key)
        stored = self._loaded(key)
        if stored is not None:
            return stored  # nothing is written, the lease included
        self._take_lease(key, owner, now, ttl)
        self._apply(checkin)
        return None

    async def create_instance(
        self, checkin: Checkin, owner: str, now_ms: int, lease_ms: int
    ) -> tuple[InstanceRecord, Alarm | None] | None:
        return await self._write(self._create, checkin, owner, now_ms, lease_ms)

    def _checkpoint(self, record: InstanceRecord, owner: str, clear_alarm: bool) -> None:
        key = record.key
        lease = self._leases.get(key)
        if lease is None or lease[0] != owner:
            raise LeaseLostError(key)
        old = self._instances.get(key)
        if old is None:
            self._store_instance(key, record)
        else:
            row = _copy_instance(old)
            row.status, row.run_count, row.execute_count, row.data, row.updated_at = (
                record.status,
                record.run_count,
                record.execute_count,
                record.data,
                record.updated_at,
            )
            self._put(self._instances, key, row)
        if clear_alarm:
            self._clear_alarm(key)

    async def checkpoint_instance(self, record: InstanceRecord, owner: str, clear_alarm: bool = False) -> None:
        await self._write(self._checkpoint, record, owner, clear_alarm)

    async def has_event_id(self, key: str, event_id: str) -> bool:
        self._check_open()
        seen = self._event_ids.get(key)
        return seen is not None and event_id in seen

    def _claim_alarms(self, now: int, lease_ms: int, limit: int, prefixes: Sequence[str] | None) -> list[Alarm]:
        mine = None if prefixes is None else tuple(prefixes)
        heap, alarms, undo = self._alarm_heap, self._alarms, self._undo
        until = now + lease_ms
        aside: list[tuple[int, int, str]] = []
        taken: list[Alarm] = []
        seen: set[int] = set()
        while heap and len(taken) < limit and heap[0][0] <= now:
            due_at, alarm_id, key = entry = heapq.heappop(heap)
            if alarm_id in seen:
                continue
            # An entry is current while its alarm's id and due time are the entry's (a later write
            # leaves it stale); the write-back below is `_hide_alarm`'s, inlined.
            alarm = alarms.get(key)
            if alarm is None or alarm[0] != alarm_id or alarm[2] != due_at:
                continue
            if mine is not None and not key.startswith(mine):
                aside.append(entry)
                continue
            seen.add(alarm_id)
            undo.append((self._restore_alarm, key, alarm))
            alarms[key] = (alarm_id, alarm[1], until, alarm[3])
            taken.append(Alarm(id=alarm_id, key=key, fire_at=alarm[1], purpose=alarm[3]))
        for entry in aside:
            heapq.heappush(heap, entry)
        for alarm_ in taken:
            heapq.heappush(heap, (until, alarm_.id, alarm_.key))
        return taken

    async def claim_alarms(
        self, now_ms: int, lease_ms: int, limit: int, prefixes: Sequence[str] | None = None
    ) -> list[Alarm]:
        return await self._write(self._claim_alarms, now_ms, lease_ms, limit, prefixes)

    def _claim_runs(
        self,
        now: int,
        lease_ms: int,
        limit: int,
        prefixes: Sequence[str],
        owner: str,
        instance_lease_ms: int,
        runs_here: Callable[[str], bool],
    ) -> list[ClaimedAlarm]:
        out: list[ClaimedAlarm] = []
        leases, instances = self._leases, self._instances
        for alarm in self._claim_alarms(now, lease_ms, limit, prefixes):
            key = alarm.key
            if runs_here(key):
                # `_take_lease`, inlined: every claimed run passes here.
                lease = leases.get(key)
                if lease is None or lease[0] == owner or lease[1] <= now:
                    self._undo.append((_restore, leases, key, _MISSING if lease is None else lease))
                    leases[key] = (owner, now + instance_lease_ms)
                    row = instances.get(key)
                    out.append(ClaimedAlarm(alarm, True, None if row is None else (_copy_instance(row), alarm)))
                    continue
            out.append(ClaimedAlarm(alarm))
        return out

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
        return self._transaction(
            self._claim_runs, now_ms, lease_ms, limit, prefixes, owner, instance_lease_ms, runs_here
        )

    def _commit_many(self, checkins: Sequence[Checkin], release_leases: bool) -> list[Exception | None]:
        leases = self._leases
        # The fences are read before anything is written, as SQLite reads the owners first
        # (a lone check-in's is read as it is written: nothing is written before it).
        owners = (
            None if len(checkins) == 1 else {c.key: leases.get(c.key) for c in checkins if c.lease_owner is not None}
        )
        errors: list[Exception | None] = []
        for checkin in checkins:
            key, owner = checkin.key, checkin.lease_owner
            if owner is not None:
                lease = leases.get(key) if owners is None else owners[key]
                if lease is None or lease[0] != owner:
                    errors.append(LeaseLostError(key))
                    continue
            try:
                # A repeated event id raises before its check-in writes anything.
                self._apply(checkin)
            except DuplicateEventError as exc:
                errors.append(exc)
                continue
            errors.append(None)
            if release_leases and owner is not None:
                # `_release_instances`, inlined: the lease as it is now (a check-in before
                # this one in the batch, of the same key, may have given it up).
                lease = leases.get(key)
                if lease is not None and lease[0] == owner:
                    self._undo.append((_restore, leases, key, lease))
                    del leases[key]
        return errors

    async def commit_checkins(
        self, checkins: Sequence[Checkin], release_leases: bool = False
    ) -> list[Exception | None]:
        return self._transaction(self._commit_many, checkins, release_leases)

    async def acquire_instance_lease(self, key: str, owner: str, now_ms: int, ttl_ms: int) -> bool:
        return await self._write(self._take_lease, key, owner, now_ms, ttl_ms)

    def _lease_and_load(
        self, key: str, owner: str, now: int, ttl: int
    ) -> tuple[bool, tuple[InstanceRecord, Alarm | None] | None]:
        if not self._take_lease(key, owner, now, ttl):
            return False, None
        return True, self._loaded(key)

    async def lease_and_load(
        self, key: str, owner: str, now_ms: int, ttl_ms: int
    ) -> tuple[bool, tuple[InstanceRecord, Alarm | None] | None]:
        return await self._write(self._lease_and_load, key, owner, now_ms, ttl_ms)

    async def instance_lease_holder(self, key: str, now_ms: int | None = None) -> tuple[str, int] | None:
        self._check_open()
        return self._leases.get(key)

    def _renew_instances(self, keys: list[str], owner: str, until: int) -> None:
        for key in keys:
            lease = self._leases.get(key)
            if lease is not None and lease[0] == owner:
                self._put(self._leases, key, (owner, until))

    async def renew_instance_leases(
        self, keys: list[str], owner: str, until_ms: int, now_ms: int | None = None
    ) -> None:
        await self._write(self._renew_instances, keys, owner, until_ms)

    def _release_instances(self, keys: list[str], owner: str) -> None:
        for key in keys:
            lease = self._leases.get(key)
            if lease is not None and lease[0] == owner:
                self._drop(self._leases, key)

    async def release_instance_leases(self, keys: list[str], owner: str) -> None:
        if keys:
            await self._write(self._release_instances, keys, owner)

    async def lease_owners(self, host: str) -> list[str]:
        self._check_open()
        prefix = f"{host}:"
        owners = {lease[0] for lease in self._leases.values() if lease[0].startswith(prefix)}
        owners.update(worker for worker, running in self._by_worker.items() if running and worker.startswith(prefix))
        return sorted(owners)

    def _free_leases(self, owners: Sequence[str], now: int) -> int:
        theirs = set(owners)
        freed = 0
        for key, lease in list(self._leases.items()):
            if lease[0] not in theirs:
                continue
            alarm = self._alarms.get(key)
            if alarm is not None and alarm[2] > alarm[1]:  # claimed: due again at its fire time
                self._hide_alarm(key, alarm, alarm[1])
                self._push_alarm((alarm[1], alarm[0], key))
                freed += 1
            self._drop(self._leases, key)
            freed += 1
        for worker in theirs:
            for job_id in self._by_worker.get(worker, ()):
                job = self._jobs[job_id]
                if job.worker_expires_at is not None and job.worker_expires_at > now:
                    self._touch(job)
                    job.worker_expires_at = now
                    self._push_expiry((now, job.rowid, job_id))
                    freed += 1
        return freed

    async def free_leases(self, owners: Sequence[str], now_ms: int) -> int:
        return await self._write(self._free_leases, owners, now_ms) if owners else 0

    def _release_alarms(self, ids: list[int]) -> None:
        for alarm_id in ids:
            key = self._alarm_keys.get(alarm_id)
            if key is not None:
                alarm = self._alarms[key]
                self._hide_alarm(key, alarm, alarm[1])
                self._push_alarm((alarm[1], alarm[0], key))

    async def release_alarms(self, ids: list[int]) -> None:
        await self._write(self._release_alarms, ids)

    async def next_alarm_at(self, prefixes: Sequence[str] | None = None) -> int | None:
        if self._closed:  # `_check_open`, inlined: every wake-up with nothing due reads here
            raise StorageError(CLOSED_MESSAGE)
        heap, alarms = self._alarm_heap, self._alarms
        while heap:
            due_at, alarm_id, key = heap[0]
            alarm = alarms.get(key)  # current, as `_claim_alarms` tells
            if alarm is not None and alarm[0] == alarm_id and alarm[2] == due_at:
                break
            heapq.heappop(heap)
        if len(heap) > 64 and len(heap) > 4 * len(alarms):  # mostly stale: rebuild
            heap[:] = [(a[2], a[0], key) for key, a in alarms.items()]
            heapq.heapify(heap)
        if not heap:
            return None
        if prefixes is None or heap[0][2].startswith(tuple(prefixes)):
            return heap[0][0]
        mine = tuple(prefixes)
        return min((a[2] for key, a in alarms.items() if key.startswith(mine)), default=None)

    async def healthcheck(self) -> bool:
        return not self._closed

    # -- listing instances (InstanceLister) ------------------------------------------

    async def list_instances(
        self, kind: str, name: str, tenant_id: str | None, status: str | None, after: str | None, limit: int
    ) -> list[InstanceRecord]:
        self._check_open()
        out: list[InstanceRecord] = []
        for key in sorted(self._by_definition.get((kind, name), ())):
            if len(out) >= limit:
                break
            if after is not None and key <= after:
                continue
            row = self._instances[key]
            if (tenant_id is None or row.tenant_id == tenant_id) and (status is None or row.status == status):
                out.append(_copy_instance(row))
        return out

    # -- cancel requests (CancelRequests) ---------------------------------------------

    def _request_cancel(self, key: str, reason: str | None, now: int) -> bool:
        if key in self._cancels:
            return False
        self._put(self._cancels, key, (reason, now))
        return True

    async def request_cancel(self, key: str, reason: str | None, now_ms: int) -> bool:
        return await self._write(self._request_cancel, key, reason, now_ms)

    async def cancel_requests(self, keys: Sequence[str]) -> dict[str, str | None]:
        self._check_open()
        return {key: note[0] for key in keys if (note := self._cancels.get(key)) is not None}

    async def clear_cancel_request(self, key: str) -> None:
        await self._write(self._drop, self._cancels, key)

    # -- the job queue: rows and their indexes ----------------------------------------

    def _index_pending(self, job: _Job) -> None:
        """Push `job`'s current entry (its stamp) on the heaps that find it."""
        entry = (job.scheduled_for, job.rowid, job.stamp, job.id)
        if job.limit_key is None:
            heapq.heappush(self._free.setdefault(job.name, {}).setdefault(job.priority, []), entry)
        else:
            heapq.heappush(self._keyed.setdefault(job.name, {}).setdefault(job.priority, []), entry)
            heapq.heappush(self._by_key.setdefault(job.limit_key, {}).setdefault(job.priority, []), entry)
        sweep = self._sweep  # `_sweep_heaps`, counted inline: one of the queue's hottest paths
        sweep[0] += 1
        if sweep[0] > sweep[1]:
            self._sweep_heaps()

    def _push_expiry(self, entry: tuple[int, int, str]) -> None:
        """Push a running row's entry (its lease's end) on the expiry heap."""
        heapq.heappush(self._expiry, entry)
        sweep = self._sweep
        sweep[0] += 1
        if sweep[0] > sweep[1]:
            self._sweep_heaps()

    def _sweep_heaps(self) -> None:
        """Keep only the live entries (each once) of the pending and expiry heaps; called once
        there were as many pushes on them as entries were left by the last sweep (`_SWEEP_FLOOR`
        at least), counted in `_index_pending` and `_push_expiry`.

        Their entries are checked lazily, dropped when they come to the top: one whose row
        left its place (a job that finished before its lease ran out, a pending job
        cancelled, a renewed lease's old end) stayed until then, for ever if it never came
        to the top while the engine ran (an hourly cron job's runs left 8,760 a virtual year).
        A sweep costs the entries it looks at, at most twice the pushes since the last:
        amortised, a few steps a push; the heaps hold at most the live entries plus as many
        again (plus the floor). Safe within an operation, and within a rollback: a rollback
        pushes back the entries of the rows it restores (`_restore_job`)."""
        jobs = self._jobs
        kept = 0
        for table in (self._free, self._keyed, self._by_key):
            for lane in table.values():
                for heap in lane.values():
                    live = {e for e in heap if (job := jobs.get(e[3])) is not None and job.stamp == e[2]}
                    if len(live) < len(heap):
                        heap[:] = live
                        heapq.heapify(heap)
                    kept += len(heap)
        expiry = self._expiry
        running = {
            e
            for e in expiry
            if (job := jobs.get(e[2])) is not None
            and job.rowid == e[1]
            and job.status == "running"
            and job.worker_expires_at == e[0]
        }
        if len(running) < len(expiry):
            expiry[:] = running
            heapq.heapify(expiry)
        kept += len(expiry)
        self._sweep[:] = [0, max(_SWEEP_FLOOR, kept)]

    def _status(self, job: _Job, status: JobStatusName) -> None:
        """Move `job` (touched already, its other columns written) to `status`, keeping the
        indexes, the running counts and the dead letter a ``failed`` row has."""
        old = job.status
        if old == "running":
            if job.worker_id is not None:
                held = self._by_worker.get(job.worker_id)
                if held is not None:
                    self._drop(held, job.id)
            if job.limit_key is not None:
                self._put(self._running_keys, job.limit_key, self._running_keys.get(job.limit_key, 1) - 1)
        elif old == "failed" and status != "failed":
            letter = self._letters.get(job.id)
            if letter is not None and letter[1] == "job":
                self._drop(self._letters, job.id)
        job.status = status
        job.stamp = 0
        if status == "pending":
            job.stamp = next(self._stamps)
            self._index_pending(job)
        elif status == "running":
            if job.worker_id is not None:
                self._put(self._inner(self._by_worker, job.worker_id), job.id, None)
            if job.limit_key is not None:
                self._put(self._running_keys, job.limit_key, self._running_keys.get(job.limit_key, 0) + 1)
            if job.worker_expires_at is not None:
                self._push_expiry((job.worker_expires_at, job.rowid, job.id))
        elif status == "failed" and old != "failed":
            self._put(self._letters, job.id, self._job_letter(job))

    def _job_letter(self, job: _Job) -> tuple[Any, ...]:
        """The dead letter of a job that just failed: what SQLite's ``jobs_dead_letter`` trigger writes."""
        revive = _revival_encoder.encode(
            {
                "max_attempts": job.max_attempts,
                "priority": job.priority,
                "correlation_id": job.correlation_id,
                "limit_key": job.limit_key,
            }
        )
        at = job.completed_at if job.completed_at is not None else job.updated_at
        return (job.id, "job", job.name, job.id, job.tenant_id, job.params, job.error, job.attempt_count, 0, revive, at)

    def _new_job(self, job: NewJob, keys: bool = True) -> _Job:
        """A new row for `job` (not indexed yet: `_status` does it); without `keys`, its unique
        and limit keys are not stored (as SQLite's insert of a row started at once)."""
        if job.id in self._jobs:
            raise StorageError(f"write to memory() failed: a job with id {job.id!r} is already stored")
        row = _Job(job, next(self._rowids))
        row.status = "completed"  # no status yet: `_status` moves it from one that has no index
        if not keys:
            row.unique_key = row.limit_key = None
        self._put(self._jobs, job.id, row)
        if row.unique_key is not None:
            self._put(self._inner(self._unique, (job.name, row.unique_key, job.tenant_id)), job.id, None)
        return row

    def _insert(self, job: NewJob) -> None:
        self._status(self._new_job(job), "pending")

    def _insert_jobs(self, jobs: Sequence[NewJob]) -> list[tuple[str, bool]]:
        out: list[tuple[str, bool]] = []
        for job in jobs:
            if job.idempotency_key is not None:
                first = self._job_keys.get((job.tenant_id or "", job.name, job.idempotency_key))
                if first is not None:
                    out.append((first[0], False))
                    continue
            if job.unique_key is not None:
                live = self._live_unique(job)
                if live is not None:
                    out.append((live, False))
                    continue
            if job.idempotency_key is not None:
                key = (job.tenant_id or "", job.name, job.idempotency_key)
                self._put(self._job_keys, key, (job.id, job.created_at))
                self._put(self._inner(self._keys_of_job, job.id), key, None)
            self._insert(job)
            out.append((job.id, True))
        return out

    def _live_unique(self, job: NewJob) -> str | None:
        assert job.unique_key is not None
        ids = self._unique.get((job.name, job.unique_key, job.tenant_id))
        if not ids:
            return None
        statuses = set(job.unique_statuses)
        live = [job_id for job_id in ids if self._jobs[job_id].status in statuses]
        return min(live) if live else None

    async def enqueue_jobs(self, jobs: Sequence[NewJob]) -> list[tuple[str, bool]]:
        return await self._write(self._insert_jobs, jobs)

    def _start_job(self, job: NewJob, worker_id: str, lease_until: int) -> None:
        row = self._new_job(job, keys=False)
        row.worker_id = worker_id
        row.worker_started_at = job.created_at
        row.worker_expires_at = lease_until
        row.attempt_count = 1
        self._status(row, "running")

    async def start_job(self, job: NewJob, worker_id: str, lease_until: int) -> None:
        await self._write(self._start_job, job, worker_id, lease_until)

    # -- claims -------------------------------------------------------------------------

    def _pending_top(self, heap: list[_Entry]) -> _Entry | None:
        """The heap's first entry that is still its row's, dropping stale ones on the way."""
        jobs = self._jobs
        while heap:
            entry = heap[0]
            job = jobs.get(entry[3])
            if job is not None and job.stamp == entry[2]:
                return entry
            heapq.heappop(heap)
        return None

    def _take(
        self, lanes: Iterable[_Lane], now: int, limit: int, above: int
    ) -> list[tuple[_Job, list[_Entry], _Entry]]:
        """Pop up to `limit` due pending rows from `lanes` in claim order (priority, then due
        time, then insertion), only those whose priority is above `above`; each with the heap
        it came from and its entry, so a caller may push back what it does not take."""
        lanes = [lane for lane in lanes if lane]
        out: list[tuple[_Job, list[_Entry], _Entry]] = []
        if not lanes or limit <= 0:
            return out
        priorities = sorted({p for lane in lanes for p in lane}, reverse=True)
        seen: set[str] = set()
        for priority in priorities:
            if priority <= above or len(out) >= limit:
                break
            heaps = [heap for lane in lanes if (heap := lane.get(priority))]
            while len(out) < limit:
                best: list[_Entry] | None = None
                best_entry: _Entry | None = None
                for heap in heaps:
                    top = self._pending_top(heap)
                    if top is not None and top[0] <= now and (best_entry is None or top < best_entry):
                        best, best_entry = heap, top
                if best is None or best_entry is None:
                    break
                heapq.heappop(best)
                if best_entry[3] in seen:
                    continue
                seen.add(best_entry[3])
                out.append((self._jobs[best_entry[3]], best, best_entry))
        return out

    def _start(self, job: _Job, now: int, until: int, worker_id: str) -> None:
        self._touch(job)
        job.worker_id = worker_id
        job.worker_started_at = now
        job.worker_expires_at = until
        job.attempt_count += 1
        job.updated_at = now
        self._status(job, "running")

    def _claim(
        self, now: int, until: int, worker_id: str, lanes: Iterable[_Lane], limit: int, above: int
    ) -> list[ClaimedJob]:
        out: list[ClaimedJob] = []
        for job, _, _ in self._take(lanes, now, limit, above):
            self._start(job, now, until, worker_id)
            out.append(job.claimed())
        return out

    def _window(self, key: str, clock: int, period: int | None) -> tuple[list[int], int]:
        """`key`'s starts and the index of its first start in the window ending at `clock`."""
        starts = self._starts.get(key, [])
        if period is None:
            return starts, len(starts)  # SQL's comparison with NULL: no start counts
        return starts, bisect_right(starts, clock - period)

    def _claim_limited(
        self, now: int, until: int, worker_id: str, limits: Sequence[QueueLimit], room: int, clock: int
    ) -> list[ClaimedJob]:
        """The limited claim (`claim_jobs`): per key with room, its best due rows; the best `room` of all."""
        by_name = {lim.name: lim for lim in limits}
        candidates: list[tuple[_Job, list[_Entry], _Entry]] = []
        for key, lane in list(self._by_key.items()):
            lim = by_name.get(key.partition("\x1f")[0])
            if lim is None:
                continue
            if not any(self._pending_top(heap) is not None for heap in lane.values()):
                del self._by_key[key]  # no pending row left (derived: a rollback pushes them back)
                continue
            if lim.concurrency is None and lim.rate is None:
                key_room = room
            else:
                running = self._running_keys.get(key, 0)
                starts, first = self._window(key, clock, lim.period_ms)
                started = len(starts) - first
                rooms = [
                    n
                    for n in (
                        None if lim.concurrency is None else lim.concurrency - running,
                        None if lim.rate is None else lim.rate - started,
                    )
                    if n is not None
                ]
                key_room = min(rooms)
            if key_room <= 0:
                continue
            candidates += self._take([lane], now, min(key_room, room), NO_FLOOR)
        candidates.sort(key=lambda c: (-c[0].priority, c[0].scheduled_for, c[0].id))
        best, rest = candidates[:room], candidates[room:]
        for _, heap, entry in rest:
            heapq.heappush(heap, entry)
        rated = {lim.name for lim in limits if lim.rate is not None}
        taken: list[ClaimedJob] = []
        for job, _, _ in best:
            limit_key = job.limit_key
            assert limit_key is not None
            self._start(job, now, until, worker_id)
            taken.append(job.claimed(limit_key))
            if job.name in rated:
                starts = self._starts.get(limit_key, [])
                if not starts:
                    self._put(self._starts, limit_key, starts)
                forget = bisect_right(starts, clock - MAX_PERIOD_MS)
                if forget:  # starts older than the longest window count for nothing
                    starts = starts[forget:]
                    self._put(self._starts, limit_key, starts)
                starts.append(clock)
                self._undo.append((_list_pop, starts))
        taken.sort(key=lambda j: (-j.priority, j.scheduled_for, j.id))
        return taken

    def _free_lanes(self, names: Sequence[str]) -> list[_Lane]:
        return [lane for name in names if (lane := self._free.get(name))]

    def _all_lanes(self, names: Sequence[str]) -> list[_Lane]:
        return self._free_lanes(names) + [lane for name in names if (lane := self._keyed.get(name))]

    def _claim_jobs(
        self,
        now: int,
        until: int,
        worker_id: str,
        names: Sequence[str],
        limit: int,
        above: int | None,
        limits: Sequence[QueueLimit],
        slots: int,
    ) -> list[ClaimedJob]:
        floor = NO_FLOOR if above is None else above
        if not limits_of(names, limits):
            return self._claim(now, until, worker_id, self._all_lanes(names), limit, floor)
        if above is not None:
            return self._claim(now, until, worker_id, self._free_lanes(names), limit, floor)
        room = min(slots, limit)
        every = every_name_limited(names, limits)
        claimed = self._claim_limited(now, until, worker_id, every, room, now) if room > 0 else []
        if len(claimed) < limit:
            claimed += self._claim(now, until, worker_id, self._free_lanes(names), limit - len(claimed), floor)
        return claimed

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
        return await self._write(self._claim_jobs, now, lease_until, worker_id, names, limit, above, limits, slots)

    def _start_held(
        self,
        worker_id: str,
        held: Sequence[tuple[str, int]],
        now: int,
        until: int,
        cancel_error: bytes,
        names: Sequence[str],
        above: int,
    ) -> HeldStarts:
        started: list[str] = []
        cancelled: list[str] = []
        for job_id, attempt in held:
            job = self._jobs.get(job_id)
            if job is None or job.status != "running" or job.worker_id != worker_id or job.attempt_count != attempt:
                continue
            self._touch(job)
            job.updated_at = now
            if job.cancel_requested:
                job.error = cancel_error
                job.completed_at = now
                job.worker_expires_at = None
                self._status(job, "cancelled")
                cancelled.append(job_id)
            else:
                job.completed_at = None
                job.worker_expires_at = until
                job.worker_started_at = now
                self._push_expiry((until, job.rowid, job.id))
                started.append(job_id)
        urgent = self._claim(now, until, worker_id, self._free_lanes(names), len(held), above) if held else []
        return HeldStarts(started=started, cancelled=cancelled, urgent=urgent)

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
        return await self._write(self._start_held, worker_id, held, now, lease_until, cancel_error, names, above)

    def _expiring_top(self) -> tuple[int, int, str] | None:
        heap = self._expiry
        while heap:
            at, rowid, job_id = heap[0]
            job = self._jobs.get(job_id)
            if job is not None and job.rowid == rowid and job.status == "running" and job.worker_expires_at == at:
                return heap[0]
            heapq.heappop(heap)
        return None

    def _reclaim(self, now: int, cancel_error: bytes, lease_error: bytes, limit: int) -> list[ExpiredLease]:
        out: list[ExpiredLease] = []
        while len(out) < limit:
            top = self._expiring_top()
            if top is None or top[0] > now:
                break
            heapq.heappop(self._expiry)
            job = self._jobs[top[2]]
            self._touch(job)
            status: JobStatusName
            if job.cancel_requested:
                status, job.error, job.completed_at = "cancelled", cancel_error, now
            elif job.attempt_count >= job.max_attempts:
                status, job.error, job.completed_at = "failed", lease_error, now
            else:
                status, job.completed_at = "pending", None
            job.worker_expires_at = None
            job.updated_at = now
            self._status(job, status)
            out.append(
                ExpiredLease(
                    id=job.id, name=job.name, worker_id=job.worker_id, attempt=job.attempt_count, status=status
                )
            )
        return out

    async def reclaim_expired(
        self, now: int, cancel_error: bytes, lease_error: bytes, limit: int
    ) -> list[ExpiredLease]:
        return await self._write(self._reclaim, now, cancel_error, lease_error, limit)

    def _renew(self, worker_id: str, until: int) -> list[tuple[str, bool]]:
        out: list[tuple[str, bool]] = []
        for job_id in self._by_worker.get(worker_id, ()):
            job = self._jobs[job_id]
            self._touch(job)
            job.worker_expires_at = until
            self._push_expiry((until, job.rowid, job_id))
            out.append((job_id, job.cancel_requested))
        return out

    async def renew_leases(self, worker_id: str, lease_until: int, now: int | None = None) -> list[tuple[str, bool]]:
        return await self._write(self._renew, worker_id, lease_until)

    def _settle_one(self, s: JobSettlement) -> bool:
        job = self._jobs.get(s.job_id)
        if job is None or job.worker_id != s.worker_id or job.attempt_count != s.attempt or job.status != "running":
            return False
        self._touch(job)
        at = s.at
        job.updated_at = at
        if s.status == "completed":
            job.result, job.error, job.completed_at, job.worker_expires_at = s.result, None, at, None
            self._status(job, "completed")
        elif s.status == "pending":
            cancel = job.cancel_requested
            if s.release:
                if cancel:
                    job.error = s.error
                job.attempt_count -= 1
                job.worker_started_at = None
            else:
                job.error = s.error
                job.scheduled_for = s.scheduled_for if s.scheduled_for is not None else job.scheduled_for
            job.completed_at = at if cancel else None
            job.worker_expires_at = None
            self._status(job, "cancelled" if cancel else "pending")
        elif s.status == "running":
            if s.lease_until is None:
                raise StorageError("write to memory() failed: a running settlement needs lease_until")
            job.attempt_count += 1
            job.error = s.error
            job.worker_expires_at = s.lease_until
            self._push_expiry((s.lease_until, job.rowid, job.id))
        elif s.status in FINAL_STATUSES:
            job.error, job.completed_at, job.worker_expires_at = s.error, at, None
            self._status(job, s.status)
        else:
            raise StorageError(f"write to memory() failed: {s.status!r} is not a job status")
        return True

    def _settle(self, settlements: Sequence[JobSettlement]) -> list[bool]:
        return [self._settle_one(s) for s in settlements]

    async def settle_jobs(self, settlements: Sequence[JobSettlement]) -> list[bool]:
        return self._transaction(self._settle, settlements)

    def _progress(
        self, job_id: str, worker_id: str, attempt: int, progress: int, message: str | None, now: int
    ) -> bool:
        job = self._jobs.get(job_id)
        if job is None or job.worker_id != worker_id or job.attempt_count != attempt or job.status != "running":
            return False
        if not 0 <= progress <= 100:
            raise StorageError(f"write to memory() failed: progress {progress!r} is not between 0 and 100")
        self._touch(job)
        job.progress, job.progress_message, job.updated_at = progress, message, now
        return True

    async def set_progress(
        self, job_id: str, worker_id: str, attempt: int, progress: int, message: str | None, now: int
    ) -> bool:
        return await self._write(self._progress, job_id, worker_id, attempt, progress, message, now)

    async def get_job(self, job_id: str) -> JobRecord | None:
        self._check_open()
        job = self._jobs.get(job_id)
        return None if job is None else job.record()

    async def list_jobs(self, where: JobFilter) -> list[JobRecord]:
        self._check_open()
        out: list[JobRecord] = []
        for job_id in sorted(self._jobs):
            if len(out) >= where.limit:
                break
            if where.after is not None and job_id <= where.after:
                continue
            job = self._jobs[job_id]
            if (
                (where.status is None or job.status == where.status)
                and (where.name is None or job.name == where.name)
                and (where.correlation_id is None or job.correlation_id == where.correlation_id)
                and (where.tenant_id is None or job.tenant_id == where.tenant_id)
            ):
                out.append(job.record(where.payloads))
        return out

    def _cancel(self, job_id: str, now: int, error: bytes) -> tuple[JobRecord, bool] | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.status == "pending":
            self._touch(job)
            job.error, job.completed_at, job.updated_at = error, now, now
            self._status(job, "cancelled")
        elif job.status == "running" and not job.cancel_requested:
            self._touch(job)
            job.cancel_requested, job.updated_at = True, now
        else:
            return job.record(), False
        return job.record(), True

    async def cancel_job(self, job_id: str, now: int, error: bytes) -> tuple[JobRecord, bool] | None:
        return await self._write(self._cancel, job_id, now, error)

    def _retry_row(self, job: _Job, now: int) -> None:
        self._touch(job)
        job.attempt_count, job.result, job.error, job.progress, job.progress_message = 0, None, None, 0, None
        job.cancel_requested, job.scheduled_for, job.completed_at = False, now, None
        job.worker_id, job.worker_started_at, job.worker_expires_at, job.updated_at = None, None, None, now
        self._status(job, "pending")

    def _retry(self, job_id: str, now: int) -> JobRecord | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.status in ("failed", "cancelled"):
            self._retry_row(job, now)
        return job.record()

    async def retry_job(self, job_id: str, now: int) -> JobRecord | None:
        return await self._write(self._retry, job_id, now)

    def _lane_next(self, lane: _Lane) -> int | None:
        tops = [top[0] for heap in lane.values() if (top := self._pending_top(heap)) is not None]
        return min(tops) if tops else None

    async def next_job_wakeup(
        self, names: Sequence[str], now: int | None = None, limits: Sequence[QueueLimit] = ()
    ) -> int | None:
        self._check_open()
        limited = limits_of(names, limits)
        lanes = self._free_lanes(names) if limited else self._all_lanes(names)
        times = [at for lane in lanes if (at := self._lane_next(lane)) is not None]
        expiring = self._expiring_top()
        if expiring is not None:
            times.append(expiring[0])
        if limited:
            at = 0 if now is None else now
            by_name = {lim.name: lim for lim in every_name_limited(names, limits)}
            for key, lane in self._by_key.items():
                lim = by_name.get(key.partition("\x1f")[0])
                if lim is None:
                    continue
                due = self._lane_next(lane)  # a heap's first live entry is its earliest
                if due is None or due > at:
                    continue
                if lim.concurrency is not None and self._running_keys.get(key, 0) >= lim.concurrency:
                    continue
                starts, first = self._window(key, at, lim.period_ms)
                if lim.rate is not None and len(starts) - first >= lim.rate and lim.period_ms is not None:
                    times.append(starts[first] + lim.period_ms)
                else:
                    times.append(at)
            # The earliest limited row not yet due.
            later = [
                e[0]
                for name in names
                for heap in self._keyed.get(name, {}).values()
                for e in heap
                if e[0] > at and (job := self._jobs.get(e[3])) is not None and job.stamp == e[2]
            ]
            if later:
                times.append(min(later))
        return min(times) if times else None

    # -- cron jobs --------------------------------------------------------------------

    def _sync_crons(self, specs: Sequence[CronSpec]) -> None:
        for spec in specs:
            old = self._crons.get(spec.name)
            if old is None:
                cron = CronRecord(
                    name=spec.name,
                    job_name=spec.job_name,
                    expression=spec.expression,
                    tz=spec.tz,
                    params=spec.params,
                    enabled=True,
                    tenant_id=spec.tenant_id,
                    next_run_at=spec.first_run_at,
                    created_at=spec.now,
                    updated_at=spec.now,
                )
            else:
                same = old.expression == spec.expression and old.tz == spec.tz and old.next_run_at is not None
                cron = msgspec.structs.replace(
                    old,
                    job_name=spec.job_name,
                    params=spec.params,
                    tenant_id=spec.tenant_id,
                    next_run_at=old.next_run_at if same else spec.first_run_at,
                    expression=spec.expression,
                    tz=spec.tz,
                    updated_at=spec.now,
                )
            self._put(self._crons, spec.name, cron)

    async def sync_cron_jobs(self, specs: Sequence[CronSpec]) -> None:
        await self._write(self._sync_crons, specs)

    def _due_crons(self, names: Sequence[str]) -> Iterable[CronRecord]:
        for name in names:
            cron = self._crons.get(name)
            if cron is not None and cron.enabled and cron.next_run_at is not None:
                yield cron

    async def due_cron_jobs(self, names: Sequence[str], now: int) -> list[CronRecord]:
        if self._closed:  # `_check_open`, inlined: the alarm task asks this at every cron fire
            raise StorageError(CLOSED_MESSAGE)
        # `_due_crons`, inlined: the alarm task asks this at every cron fire.
        crons, due = self._crons, {}
        for name in names:
            cron = crons.get(name)
            if cron is not None and cron.enabled and cron.next_run_at is not None and cron.next_run_at <= now:
                due[name] = cron
        if len(due) == 1:
            return [_cron_copy(cron) for cron in due.values()]
        return [_cron_copy(c) for c in sorted(due.values(), key=lambda c: (c.next_run_at, c.name))]

    async def next_cron_at(self, names: Sequence[str]) -> int | None:
        self._check_open()
        return min((c.next_run_at for c in self._due_crons(names) if c.next_run_at is not None), default=None)

    def _fire_cron(
        self,
        name: str,
        expected: int,
        next_run_at: int | None,
        now: int,
        job: NewJob | None,
        worker_id: str | None,
        lease_until: int | None,
    ) -> bool:
        cron = self._crons.get(name)
        if cron is None or not cron.enabled or cron.next_run_at != expected:
            return False
        last_job_id = job.id if job is not None else cron.last_job_id
        fired = msgspec.structs.replace(
            cron, next_run_at=next_run_at, last_run_at=now, last_job_id=last_job_id, updated_at=now
        )
        self._put(self._crons, name, fired)
        if job is not None and worker_id is not None and lease_until is not None:
            self._start_job(job, worker_id, lease_until)
        elif job is not None:
            self._insert_jobs([job])
        return True

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
        return self._transaction(
            self._fire_cron, name, expected_next_run_at, next_run_at, now, job, worker_id, lease_until
        )

    async def list_cron_jobs(self) -> list[CronRecord]:
        self._check_open()
        return [_cron_copy(self._crons[name]) for name in sorted(self._crons)]

    def _set_cron_enabled(self, name: str, enabled: bool, next_run_at: int | None, now: int) -> CronRecord | None:
        cron = self._crons.get(name)
        if cron is None:
            return None
        if enabled:
            cron = msgspec.structs.replace(cron, enabled=True, next_run_at=next_run_at, updated_at=now)
        else:
            cron = msgspec.structs.replace(cron, enabled=False, updated_at=now)
        self._put(self._crons, name, cron)
        return _cron_copy(cron)

    async def set_cron_enabled(self, name: str, enabled: bool, next_run_at: int | None, now: int) -> CronRecord | None:
        return await self._write(self._set_cron_enabled, name, enabled, next_run_at, now)

    def _delete_job(self, job: _Job) -> None:
        self._drop(self._jobs, job.id)
        keys = self._drop(self._keys_of_job, job.id)
        if keys is not _MISSING:
            for key in keys:
                self._drop(self._job_keys, key)
        if job.unique_key is not None:
            ids = self._unique.get((job.name, job.unique_key, job.tenant_id))
            if ids is not None:
                self._drop(ids, job.id)

    def _purge_jobs(self, before: int, statuses: Sequence[JobStatusName], limit: int, tenant_id: str | None) -> int:
        final = {s for s in statuses if s in FINAL_STATUSES}
        doomed: list[_Job] = []
        for job in self._jobs.values():
            if len(doomed) >= limit:
                break
            ended = job.completed_at if job.completed_at is not None else job.updated_at
            if job.status in final and ended < before and (tenant_id is None or job.tenant_id == tenant_id):
                doomed.append(job)
        for job in doomed:
            self._delete_job(job)
        return len(doomed)

    async def purge_jobs(
        self, finished_before: int, statuses: Sequence[JobStatusName], limit: int, tenant_id: str | None = None
    ) -> int:
        if not any(s in FINAL_STATUSES for s in statuses):
            self._check_open()
            return 0
        return await self._write(self._purge_jobs, finished_before, statuses, limit, tenant_id)

    # -- dead letters -------------------------------------------------------------------

    async def list_dead_letters(self, where: DeadLetterFilter) -> list[DeadLetter]:
        self._check_open()
        rows = [
            row
            for row in self._letters.values()
            if (where.kind is None or row[1] == where.kind)
            and (where.name is None or row[2] == where.name)
            and (where.tenant_id is None or row[4] == where.tenant_id)
        ]
        if where.after is not None:
            start: tuple[int, str]
            if where.after_created_at is not None:
                start = (where.after_created_at, where.after)
            else:
                after = self._letters.get(where.after)
                if after is None:
                    return []  # a letter no longer stored ends the listing
                start = (after[10], after[0])
            rows = [row for row in rows if (row[10], row[0]) < start]
        rows.sort(key=lambda row: (row[10], row[0]), reverse=True)
        return [dead_letter(row) for row in rows[: where.limit]]

    async def get_dead_letter(self, letter_id: str) -> DeadLetter | None:
        self._check_open()
        row = self._letters.get(letter_id)
        return None if row is None else dead_letter(row)

    def _discard(self, letter_id: str) -> bool:
        return self._drop(self._letters, letter_id) is not _MISSING

    async def discard_dead_letter(self, letter_id: str) -> bool:
        return await self._write(self._discard, letter_id)

    def _revive(self, letter_id: str, now: int, lease_owner: str | None) -> Revival:
        row = self._letters.get(letter_id)
        if row is None:
            return "missing"
        letter = dead_letter(row)
        if letter.kind == "job":
            job = self._jobs.get(letter.ref)
            if job is None:
                how = msgspec.json.decode(letter.revive or b"{}", type=JobRevival)
                revived = NewJob(
                    id=letter.ref,
                    name=letter.name,
                    params=letter.payload or b"{}",
                    max_attempts=how.max_attempts,
                    scheduled_for=now,
                    created_at=now,
                    priority=how.priority,
                    correlation_id=how.correlation_id,
                    tenant_id=letter.tenant_id,
                    limit_key=how.limit_key,
                )
                self._insert(revived)
            elif job.status in ("failed", "cancelled"):
                self._retry_row(job, now)
            else:
                return "occupied"
        else:
            revival = revival_decoder.decode(letter.revive or b"")
            lease = self._leases.get(revival.key)
            held = lease is not None and lease[1] > now and lease[0] != lease_owner
            stored = self._instances.get(revival.key)
            if held or (stored is not None and stored.status != revival.over):
                return "occupied"
            self._store_instance(revival.key, msgspec.structs.replace(revival.record, updated_at=now))
            self._set_alarm(revival.key, now, now, revival.purpose)
        self._drop(self._letters, letter_id)
        return "revived"

    async def revive_dead_letter(self, letter_id: str, now: int, lease_owner: str | None) -> Revival:
        return await self._write(self._revive, letter_id, now, lease_owner)

    def _purge_letters(self, before: int, limit: int) -> int:
        doomed = [letter_id for letter_id, row in self._letters.items() if row[10] < before][:limit]
        for letter_id in doomed:
            self._drop(self._letters, letter_id)
        return len(doomed)

    async def purge_dead_letters(self, before: int, limit: int) -> int:
        return await self._write(self._purge_letters, before, limit)

    # -- retention ----------------------------------------------------------------------

    def _purge_event_ids(self, before: int, limit: int) -> int:
        old = ((created, key, event_id) for key, ids in self._event_ids.items() for event_id, created in ids.items())
        doomed = heapq.nsmallest(limit, (o for o in old if o[0] < before))
        for _, key, event_id in doomed:
            self._drop(self._event_ids[key], event_id)
        return len(doomed)

    async def purge_event_ids(self, before: int, limit: int) -> int:
        return await self._write(self._purge_event_ids, before, limit)

    def _purge_job_keys(self, before: int, limit: int) -> int:
        def live(job_id: str) -> bool:
            job = self._jobs.get(job_id)
            return job is not None and job.status in ("pending", "running")

        old = ((created, key, job_id) for key, (job_id, created) in self._job_keys.items() if created < before)
        doomed = heapq.nsmallest(limit, (o for o in old if not live(o[2])))
        for _, key, job_id in doomed:
            self._drop(self._job_keys, key)
            keys = self._keys_of_job.get(job_id)
            if keys is not None:
                self._drop(keys, key)
        return len(doomed)

    async def purge_job_keys(self, before: int, limit: int) -> int:
        return await self._write(self._purge_job_keys, before, limit)

    # -- inspection (the `Inspector` read side) -------------------------------------------

    async def summary(self, now: int) -> StorageSummary:
        self._check_open()
        counts: dict[tuple[str, str, str], int] = {}
        for row in self._instances.values():
            group = (row.kind, row.name, row.status)
            counts[group] = counts.get(group, 0) + 1
        instances = [InstanceCount(kind=k, name=n, status=s, count=c) for (k, n, s), c in sorted(counts.items())]
        due = claimed = later = 0
        next_at: int | None = None
        for _, fire_at, due_at, _ in self._alarms.values():
            if fire_at > now:
                later += 1
                next_at = fire_at if next_at is None else min(next_at, fire_at)
            elif due_at <= now:
                due += 1
            else:
                claimed += 1
        jobs: dict[str, int] = dict.fromkeys(JOB_STATUSES, 0)
        jobs_due = 0
        oldest: _Job | None = None
        held: dict[str, list[int]] = {}
        for job in self._jobs.values():
            jobs[job.status] += 1
            if job.status == "pending" and job.scheduled_for <= now:
                jobs_due += 1
                if oldest is None or (job.scheduled_for, job.id) < (oldest.scheduled_for, oldest.id):
                    oldest = job
            elif job.status == "running" and job.worker_id is not None and job.worker_expires_at is not None:
                mine = held.setdefault(job.worker_id, [0, 0, 0])
                mine[1 if job.worker_expires_at > now else 2] += 1
        for owner, expires_at in self._leases.values():
            mine = held.setdefault(owner, [0, 0, 0])
            mine[0 if expires_at > now else 2] += 1
        pending = (
            None
            if oldest is None
            else PendingJob(
                id=oldest.id, name=oldest.name, scheduled_for=oldest.scheduled_for, created_at=oldest.created_at
            )
        )
        return StorageSummary(
            now=now,
            instances=instances,
            alarms=AlarmCounts(due=due, claimed=claimed, later=later, next_at=next_at),
            jobs=jobs,
            jobs_due=jobs_due,
            oldest_pending=pending,
            leases=[LeaseHolder(owner=o, instances=c[0], jobs=c[1], expired=c[2]) for o, c in sorted(held.items())],
        )

    async def instances(self, where: InstanceFilter) -> list[InstanceView]:
        self._check_open()
        out: list[InstanceView] = []
        for key in sorted(self._instances):
            if len(out) >= where.limit:
                break
            row = self._instances[key]
            if (
                (where.after is not None and key <= where.after)
                or (where.kind is not None and row.kind != where.kind)
                or (where.name is not None and row.name != where.name)
                or (where.key is not None and key != where.key)
                or (where.tenant_id is not None and row.tenant_id != where.tenant_id)
                or (where.status is not None and row.status != where.status)
            ):
                continue
            record = _copy_instance(row)
            if not where.payloads:
                record.state = record.data = None
            alarm = self._alarms.get(key)
            lease = self._leases.get(key)
            out.append(
                InstanceView(
                    record=record,
                    alarm=None if alarm is None else Alarm(id=alarm[0], key=key, fire_at=alarm[1], purpose=alarm[3]),
                    alarm_claimed_until=alarm[2] if alarm is not None and alarm[2] > alarm[1] else None,
                    lease_owner=None if lease is None else lease[0],
                    lease_expires_at=None if lease is None else lease[1],
                )
            )
        return out

    async def job_counts(self, correlation_id: str | None = None) -> dict[str, int]:
        self._check_open()
        counts: dict[str, int] = dict.fromkeys(JOB_STATUSES, 0)
        for job in self._jobs.values():
            if correlation_id is None or job.correlation_id == correlation_id:
                counts[job.status] += 1
        return counts

    async def job_counts_by_name(self) -> list[JobCount]:
        self._check_open()
        counts: dict[tuple[str, str], int] = {}
        for job in self._jobs.values():
            counts[job.name, job.status] = counts.get((job.name, job.status), 0) + 1
        return [JobCount(name=n, status=s, count=c) for (n, s), c in sorted(counts.items())]

    async def finished_per_minute(self, since: int, until: int) -> list[MinuteCount]:
        self._check_open()
        minutes: dict[int, list[int]] = {}
        for job in self._jobs.values():
            at = job.completed_at
            if job.status in ("completed", "failed") and at is not None and since <= at <= until:
                counts = minutes.setdefault(at // 60_000 * 60_000, [0, 0])
                counts[0 if job.status == "completed" else 1] += 1
        return [MinuteCount(minute=m, completed=c[0], failed=c[1]) for m, c in sorted(minutes.items())]

    def close(self) -> None:
        self._closed = True


@final
class MemoryLayer:
    """The `StorageLayer` of `memory`: one database in this process's memory, as a SQLite file is
    one on disk. Every ``open()`` is a `MemoryStorage` on the layer's tables (engines open on it
    at once share them), closed on its own; the tables live as long as the layer."""

    def __init__(self) -> None:
        self._tables = _Tables()
        self._opens = 0
        #: The Trio run the open stores are in (the tables are not safe across threads).
        self._run: trio.lowlevel.TrioToken | None = None
        #: The virtual clock of the test engines opened on this layer with their default clock, and
        #: the time it last read (`djobs.testing.open_test_engine`): a reopened one goes on from it.
        self.test_clock: Any = None

    @asynccontextmanager
    async def open(self) -> AsyncIterator[MemoryStorage]:
        run = trio.lowlevel.current_trio_token()
        if self._opens and run is not self._run:
            raise ValidationError(
                "this djobs.memory() is open in another trio.run (another thread): its tables serve one "
                "Trio run at a time; give each run its own djobs.memory(), or share a djobs.sqlite() file"
            )
        self._run = run
        self._opens += 1
        storage = MemoryStorage(self._tables)
        try:
            yield storage
        finally:
            storage.close()
            self._opens -= 1

    def __repr__(self) -> str:
        return "memory()"


def memory() -> MemoryLayer:
    """A storage layer in this process's memory, for tests: no SQL, nothing kept after the process ends.

    One database, as a SQLite file is one on disk: every engine opened on this
    layer shares it, at once (two engines of a test see each other's jobs and
    instances, and take leases against each other, as two processes on one file
    do) or one after another (an engine reopened on the layer finds what the
    last one left). Call ``memory()`` again for a new, empty database (the test
    engine's default layers do, per engine). The engines that share it must be
    in one ``trio.run`` and read one clock: leases follow the engine's clock
    (``lease_clock="engine"``), so a virtual clock's leases end in virtual time.
    Every storage protocol the engine uses is implemented (the queue, cron jobs,
    dead letters, retention, the inspection read side), and the shipped
    conformance suite (`djobs.testing.check_storage`, shared checks included)
    runs against it as against SQLite and PostgreSQL. For SQLite's own
    behaviour in memory, use ``djobs.sqlite(":memory:")``.

    Raises:
        ValidationError: At ``open()``, while the layer is open in another ``trio.run``.

    Examples:
        >>> memory()
        memory()
    """
    return MemoryLayer()
