"""Read-only inspection of a djobs database: what ``djobs status`` and ``djobs instances`` show.

The engine's `Storage` and `QueueStorage` protocols hold what running jobs
need; a person looking at a database needs more: counts by kind and status,
which alarms are due, how far behind the queue is, which processes hold
leases. `Inspector` is that read side, kept apart so a storage does not
have to offer it to run jobs. `inspector(storage)` gives the one for an
open storage: a storage that implements `Inspector` itself (a future
PostgreSQL one) is its own; a `SqliteStorage` gets a `SqliteInspector`.

`open_existing(path)` opens a SQLite file for inspection without ever
creating, migrating or (unless asked) writing to it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, final, runtime_checkable

import apsw
import msgspec

from .._errors import StorageError
from ._base import Alarm, InstanceRecord, JobStatusName, Storage
from ._sqlite import APPLICATION_ID, SCHEMA_VERSION, SqliteStorage, _describe, _inspect

#: Every queue status, in the order a job moves through them.
JOB_STATUSES: tuple[JobStatusName, ...] = ("pending", "running", "completed", "failed", "cancelled")


class InstanceCount(msgspec.Struct, frozen=True, kw_only=True):
    """How many instances of one job (`kind`, `name`) are stored with one `status`."""

    kind: str
    name: str
    status: str
    count: int


class AlarmCounts(msgspec.Struct, frozen=True, kw_only=True):
    """The alarms of every instance at one moment.

    Attributes:
        due: Due and not being handled: the next alarm sleeper to look takes them.
        claimed: Due and claimed by an engine that is handling them (their
            lease has not run out).
        later: Due in the future.
        next_at: When the earliest of the `later` alarms is due (epoch ms), or ``None``.
    """

    due: int
    claimed: int
    later: int
    next_at: int | None = None


class PendingJob(msgspec.Struct, frozen=True, kw_only=True):
    """A pending queue job, as the oldest-pending line of a summary shows it (times in epoch ms)."""

    id: str
    name: str
    scheduled_for: int
    created_at: int


class LeaseHolder(msgspec.Struct, frozen=True, kw_only=True):
    """The leases one owner (an engine's ``host:pid:random`` id) holds.

    Attributes:
        owner: The engine's id.
        instances: Instance leases still in force.
        jobs: Running queue jobs whose lease is still in force.
        expired: Leases of either kind whose time ran out (the owner stopped
            renewing them: it crashed, hung or was killed); they are taken
            over when another engine needs them.
    """

    owner: str
    instances: int = 0
    jobs: int = 0
    expired: int = 0


class StorageSummary(msgspec.Struct, frozen=True, kw_only=True):
    """Everything ``djobs status`` reports, read at `now` (epoch ms).

    Attributes:
        now: The moment the summary describes.
        instances: Instance counts by kind, name and status.
        alarms: Alarm counts.
        jobs: Queue jobs by status (every status present, zero included).
        jobs_due: Pending jobs that are due now.
        oldest_pending: The pending job that has been due the longest, if any is due.
        leases: Lease holders, by owner.
    """

    now: int
    instances: list[InstanceCount]
    alarms: AlarmCounts
    jobs: dict[str, int]
    jobs_due: int
    oldest_pending: PendingJob | None
    leases: list[LeaseHolder]


class InstanceFilter(msgspec.Struct, frozen=True, kw_only=True):
    """What `Inspector.instances` selects: every given field must match; rows come in key order,
    starting after the key `after`."""

    kind: str | None = None
    name: str | None = None
    key: str | None = None
    after: str | None = None
    limit: int = 100
    #: ``False`` leaves out the state and data (they come back as ``None``): a listing that
    #: does not show them reads no large rows.
    payloads: bool = True


class InstanceView(msgspec.Struct, frozen=True, kw_only=True):
    """One stored instance with its alarm and its lease.

    Attributes:
        record: The instance's row.
        alarm: Its alarm, if one is set.
        alarm_claimed_until: When the alarm's claim runs out (epoch ms), if an
            engine is handling it now.
        lease_owner: The engine holding the instance's lease, if any.
        lease_expires_at: When that lease runs out (epoch ms).
    """

    record: InstanceRecord
    alarm: Alarm | None = None
    alarm_claimed_until: int | None = None
    lease_owner: str | None = None
    lease_expires_at: int | None = None


@runtime_checkable
class Inspector(Protocol):
    """Read-only questions about a database, for people and dashboards rather than the engine.

    Every method only reads. A storage may implement this protocol itself;
    `inspector` finds the implementation for a storage.
    """

    async def summary(self, now: int) -> StorageSummary:
        """Counts of instances, alarms, queue jobs and leases as of `now` (epoch ms)."""
        ...

    async def instances(self, where: InstanceFilter) -> list[InstanceView]:
        """The instances `where` selects, in key order, with their alarms and leases."""
        ...

    async def job_counts(self, correlation_id: str | None = None) -> dict[str, int]:
        """Queue jobs by status (every status present), only those with `correlation_id` if given."""
        ...


def inspector(storage: Storage) -> Inspector:
    """The `Inspector` of an open storage.

    Raises:
        StorageError: The storage offers no inspection (a custom layer).
    """
    if isinstance(storage, Inspector):
        return storage
    if isinstance(storage, SqliteStorage):
        return SqliteInspector(storage)
    raise StorageError(f"the storage {storage!r} cannot be inspected (it does not implement Inspector)")


# -- SQLite ------------------------------------------------------------------------------

_ALARMS = """
    SELECT sum(fire_at <= ?1 AND due_at <= ?1), sum(fire_at <= ?1 AND due_at > ?1), sum(fire_at > ?1),
           min(CASE WHEN fire_at > ?1 THEN fire_at END)
    FROM alarms
"""
# The oldest due row walks the (status, scheduled_for) index from its start: one row read.
_OLDEST_PENDING = """
    SELECT id, name, scheduled_for, created_at FROM jobs
    WHERE status = 'pending' AND scheduled_for <= ? ORDER BY scheduled_for LIMIT 1
"""
_INSTANCE_LEASES = "SELECT owner, sum(expires_at > ?1), sum(expires_at <= ?1) FROM instance_leases GROUP BY owner"
_JOB_LEASES = """
    SELECT worker_id, sum(worker_expires_at > ?1), sum(worker_expires_at <= ?1) FROM jobs
    WHERE status = 'running' AND worker_id IS NOT NULL GROUP BY worker_id
"""
_INSTANCE_VIEW = """
    SELECT i.key, i.kind, i.name, i.instance_id, i.tenant_id, i.status, i.state, i.run_count, i.attempt,
           i.event_count, i.execute_count, i.started_at, i.data, i.created_at, i.updated_at, i.version,
           a.id, a.fire_at, a.due_at, a.purpose, l.owner, l.expires_at
    FROM instances AS i
    LEFT JOIN alarms AS a ON a.key = i.key
    LEFT JOIN instance_leases AS l ON l.key = i.key
"""

_INSTANCE_VIEW_NO_PAYLOADS = _INSTANCE_VIEW.replace("i.state,", "NULL,").replace("i.data,", "NULL,")


def _counts(rows: list[tuple[str, int]]) -> dict[str, int]:
    counts: dict[str, int] = dict.fromkeys(JOB_STATUSES, 0)
    for status, n in rows:
        counts[status] = int(n)
    return counts


def _row(db: apsw.Connection, sql: str, args: tuple[object, ...] = ()) -> tuple[Any, ...]:
    """The first row of a query that always returns one (an aggregate)."""
    return tuple(next(iter(db.execute(sql, args))))


@final
class SqliteInspector:
    """`Inspector` for a `SqliteStorage`: plain reads on its connection, each a consistent snapshot."""

    def __init__(self, storage: SqliteStorage) -> None:
        self._storage = storage

    async def summary(self, now: int) -> StorageSummary:
        def run(db: apsw.Connection) -> StorageSummary:
            # One read transaction, so every count describes the same moment.
            db.execute("BEGIN")
            try:
                instances = [
                    InstanceCount(kind=r[0], name=r[1], status=r[2], count=r[3])
                    for r in db.execute(
                        "SELECT kind, name, status, count(*) FROM instances GROUP BY kind, name, status"
                        " ORDER BY kind, name, status"
                    )
                ]
                due, claimed, later, next_at = _row(db, _ALARMS, (now,))
                alarms = AlarmCounts(due=due or 0, claimed=claimed or 0, later=later or 0, next_at=next_at)
                jobs = _counts(list(db.execute("SELECT status, count(*) FROM jobs GROUP BY status")))
                (jobs_due,) = _row(
                    db, "SELECT count(*) FROM jobs WHERE status = 'pending' AND scheduled_for <= ?", (now,)
                )
                oldest = None
                for r in db.execute(_OLDEST_PENDING, (now,)):
                    oldest = PendingJob(id=r[0], name=r[1], scheduled_for=r[2], created_at=r[3])
                # owner -> [instance leases, job leases, expired leases]
                held: dict[str, list[int]] = {}
                for column, sql in ((0, _INSTANCE_LEASES), (1, _JOB_LEASES)):
                    for owner, live, expired in db.execute(sql, (now,)):
                        counts = held.setdefault(owner, [0, 0, 0])
                        counts[column] += live or 0
                        counts[2] += expired or 0
            finally:
                db.execute("COMMIT")
            leases = [LeaseHolder(owner=o, instances=c[0], jobs=c[1], expired=c[2]) for o, c in sorted(held.items())]
            return StorageSummary(
                now=now,
                instances=instances,
                alarms=alarms,
                jobs=jobs,
                jobs_due=jobs_due,
                oldest_pending=oldest,
                leases=leases,
            )

        return await self._storage.read(run)

    async def instances(self, where: InstanceFilter) -> list[InstanceView]:
        terms: list[str] = []
        args: list[object] = []
        for column, value in (("i.kind", where.kind), ("i.name", where.name), ("i.key", where.key)):
            if value is not None:
                terms.append(f"{column} = ?")
                args.append(value)
        if where.after is not None:
            terms.append("i.key > ?")
            args.append(where.after)
        view = _INSTANCE_VIEW if where.payloads else _INSTANCE_VIEW_NO_PAYLOADS
        sql = view + (" WHERE " + " AND ".join(terms) if terms else "") + " ORDER BY i.key LIMIT ?"
        args.append(where.limit)

        def run(db: apsw.Connection) -> list[InstanceView]:
            views = []
            for r in db.execute(sql, args):
                record = InstanceRecord(
                    key=r[0],
                    kind=r[1],
                    name=r[2],
                    instance_id=r[3],
                    tenant_id=r[4],
                    status=r[5],
                    state=r[6],
                    run_count=r[7],
                    attempt=r[8],
                    event_count=r[9],
                    execute_count=r[10],
                    started_at=r[11],
                    data=r[12],
                    created_at=r[13],
                    updated_at=r[14],
                    version=r[15],
                )
                alarm = None if r[16] is None else Alarm(id=r[16], key=r[0], fire_at=r[17], purpose=r[19])
                claimed_until = r[18] if alarm is not None and r[18] > r[17] else None
                views.append(
                    InstanceView(
                        record=record,
                        alarm=alarm,
                        alarm_claimed_until=claimed_until,
                        lease_owner=r[20],
                        lease_expires_at=r[21],
                    )
                )
            return views

        return await self._storage.read(run)

    async def job_counts(self, correlation_id: str | None = None) -> dict[str, int]:
        sql = "SELECT status, count(*) FROM jobs GROUP BY status"
        args: tuple[str, ...] = ()
        if correlation_id is not None:
            sql, args = "SELECT status, count(*) FROM jobs WHERE correlation_id = ? GROUP BY status", (correlation_id,)
        return await self._storage.read(lambda db: _counts(list(db.execute(sql, args))))


@contextmanager
def open_existing(path: str | os.PathLike[str], *, write: bool = False) -> Iterator[SqliteStorage]:
    """Open an existing djobs database file for inspection (or, with `write`, small changes).

    Unlike `djobs.sqlite`, it never creates the file and never changes its
    schema: a missing file, a file that is not a djobs database, and one
    whose schema is older or newer than this djobs are all refused with a
    `StorageError` that says which. Without `write` the connection is
    ``query_only``: nothing can be written through it.

    Raises:
        StorageError: The file is missing, unreadable, foreign, or of another schema version.
    """
    where = os.fspath(path)
    if not os.path.exists(where):
        raise StorageError(
            f"no database at {where!r}; djobs creates one only when an engine opens it "
            "(check --db, or start your worker first)"
        )
    if os.path.isdir(where):
        raise StorageError(f"{where!r} is a directory, not a database file")
    try:
        # READWRITE without CREATE: a file that vanished meanwhile is an error,
        # not a new empty database; query_only then forbids writes. (A
        # READONLY connection would leave -wal and -shm files behind.)
        db = apsw.Connection(where, flags=apsw.SQLITE_OPEN_READWRITE)
    except apsw.Error as exc:
        raise StorageError(f"cannot open {where!r}: {_describe(exc)}", exc) from exc
    try:
        db.setbusytimeout(5000)
        if not write:
            db.execute("PRAGMA query_only=ON")
        app_id, version, tables = _inspect(db)
        if app_id != APPLICATION_ID:
            what = "an empty file" if not tables else "it holds other data"
            raise StorageError(f"{where!r} is not a djobs database ({what})")
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"{where!r} has schema version {version}, newer than this djobs understands "
                f"({SCHEMA_VERSION}); upgrade djobs to read it"
            )
        if version < SCHEMA_VERSION:
            # Migrating is an engine's job: an older engine may still be running on this file.
            raise StorageError(
                f"{where!r} has schema version {version}, older than this djobs ({SCHEMA_VERSION}); "
                "open it with an engine of this version (your worker) to migrate it, then try again"
            )
        if write:
            db.execute("PRAGMA synchronous=NORMAL")
    except StorageError:
        db.close()
        raise
    except apsw.Error as exc:
        db.close()
        raise StorageError(f"cannot read {where!r}: {_describe(exc)}", exc) from exc
    try:
        yield SqliteStorage(db, where)
    finally:
        db.close()
