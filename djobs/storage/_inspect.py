"""Read-only inspection of a djobs database, on SQLite and PostgreSQL alike.

The engine's `Storage` and `QueueStorage` protocols hold what running jobs
need; a person (the ``djobs`` command line, the dashboard, the metrics
collector) needs more: counts by kind and status, which alarms are due, how far
behind the queue is, which processes hold leases, how many jobs finished per
minute. `Inspector` is that read side, one protocol that `SqliteInspector` and
`PostgresInspector` implement with the same semantics (the memory store,
`djobs.memory()`, answers it itself); `inspector(storage)` gives the one for
an open storage.

`open_existing(where)` opens a SQLite file or a PostgreSQL schema for
inspection without ever creating, migrating or (unless asked) writing to it.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol, final, runtime_checkable

import apsw
import msgspec
import trio

from .._errors import StorageError, ValidationError
from .._input import os_text_problem
from ._base import Alarm, InstanceRecord, JobStatusName, QueueStorage, Storage, StorageLayer
from ._common import describe_error
from ._rows import INSTANCE_COLUMNS, instance_record, qualified
from ._sql import POSTGRES, SQLITE, Dialect
from ._sqlite import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    SqliteStorage,
    _boot_id,
    _inspect,
    not_a_file_problem,
    sqlite,
    uri_problem,
)

if TYPE_CHECKING:
    from ._pgconn import Connection
    from ._pgstore import PostgresStorage

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
    """The leases one owner (an engine's ``host:pid:token:random`` id) holds.

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
    tenant_id: str | None = None
    status: str | None = None
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


class JobCount(msgspec.Struct, frozen=True, kw_only=True):
    """How many queue jobs named `name` are stored with `status`."""

    name: str
    status: str
    count: int


class MinuteCount(msgspec.Struct, frozen=True, kw_only=True):
    """Queue jobs that finished in the minute starting at `minute` (epoch ms, a whole minute)."""

    minute: int
    completed: int = 0
    failed: int = 0


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

    async def job_counts_by_name(self) -> list[JobCount]:
        """Queue jobs by name and status, in name then status order (statuses with none left out)."""
        ...

    async def finished_per_minute(self, since: int, until: int) -> list[MinuteCount]:
        """Jobs completed and failed per minute from `since` to `until` (epoch ms), one entry
        per minute in which any finished, oldest first; a job counts in the minute of its
        ``completed_at``."""
        ...


def inspector(storage: Storage) -> Inspector:
    """The `Inspector` of an open storage: SQLite's, PostgreSQL's, or the storage itself if it implements one.

    Raises:
        StorageError: The storage offers no inspection (a custom layer).
    """
    if isinstance(storage, Inspector):
        return storage
    if isinstance(storage, SqliteStorage):
        return SqliteInspector(storage)
    from ._pgstore import PostgresStorage  # psycopg is imported only when a PostgreSQL storage exists

    if isinstance(storage, PostgresStorage):
        return PostgresInspector(storage)
    raise StorageError(f"the storage {storage!r} cannot be inspected (it does not implement Inspector)")


# -- SQLite ------------------------------------------------------------------------------

# Portable SQL (SQLite and PostgreSQL): sums of CASE, not of booleans.
_ALARMS = """
    SELECT sum(CASE WHEN fire_at <= :now AND due_at <= :now THEN 1 ELSE 0 END),
           sum(CASE WHEN fire_at <= :now AND due_at > :now THEN 1 ELSE 0 END),
           sum(CASE WHEN fire_at > :now THEN 1 ELSE 0 END),
           min(CASE WHEN fire_at > :now THEN fire_at END)
    FROM alarms
"""
# The oldest due row walks the (status, scheduled_for) index from its start: the rows of the
# earliest due time, the smallest id of those (ids grow with time) on every dialect.
_JOBS_DUE = "SELECT count(*) FROM jobs WHERE status = 'pending' AND scheduled_for <= ?"
_OLDEST_PENDING = """
    SELECT id, name, scheduled_for, created_at FROM jobs
    WHERE status = 'pending' AND scheduled_for <= ? ORDER BY scheduled_for, id LIMIT 1
"""
_INSTANCE_LEASES = """
    SELECT owner, sum(CASE WHEN expires_at > :now THEN 1 ELSE 0 END),
           sum(CASE WHEN expires_at <= :now THEN 1 ELSE 0 END)
    FROM instance_leases GROUP BY owner
"""
_JOB_LEASES = """
    SELECT worker_id, sum(CASE WHEN worker_expires_at > :now THEN 1 ELSE 0 END),
           sum(CASE WHEN worker_expires_at <= :now THEN 1 ELSE 0 END) FROM jobs
    WHERE status = 'running' AND worker_id IS NOT NULL GROUP BY worker_id
"""
_INSTANCE_VIEW = f"""
    SELECT {qualified(INSTANCE_COLUMNS, "i")}, a.id, a.fire_at, a.due_at, a.purpose, l.owner, l.expires_at
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


def _row(db: apsw.Connection, sql: str, args: tuple[object, ...] | dict[str, object] = ()) -> tuple[Any, ...]:
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
                    for r in db.execute(_instance_counts(SQLITE))
                ]
                due, claimed, later, next_at = _row(db, _ALARMS, {"now": now})
                alarms = AlarmCounts(due=due or 0, claimed=claimed or 0, later=later or 0, next_at=next_at)
                jobs = _counts(list(db.execute("SELECT status, count(*) FROM jobs GROUP BY status")))
                (jobs_due,) = _row(db, _JOBS_DUE, (now,))
                oldest = None
                for r in db.execute(_OLDEST_PENDING, (now,)):
                    oldest = PendingJob(id=r[0], name=r[1], scheduled_for=r[2], created_at=r[3])
                # owner -> [instance leases, job leases, expired leases]
                held: dict[str, list[int]] = {}
                for column, sql in ((0, _INSTANCE_LEASES), (1, _JOB_LEASES)):
                    for owner, live, expired in db.execute(sql, {"now": self._storage.lease_now(now)}):
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
        sql, args = _instances_query(where, SQLITE)
        return await self._storage.read(lambda db: [_instance_view(r) for r in db.execute(sql, args)])

    async def job_counts(self, correlation_id: str | None = None) -> dict[str, int]:
        sql = "SELECT status, count(*) FROM jobs GROUP BY status"
        args: tuple[str, ...] = ()
        if correlation_id is not None:
            sql, args = "SELECT status, count(*) FROM jobs WHERE correlation_id = ? GROUP BY status", (correlation_id,)
        return await self._storage.read(lambda db: _counts(list(db.execute(sql, args))))

    async def job_counts_by_name(self) -> list[JobCount]:
        return await self._storage.read(lambda db: _job_counts(db.execute(_by_name(SQLITE))))

    async def finished_per_minute(self, since: int, until: int) -> list[MinuteCount]:
        return await self._storage.read(lambda db: _minutes(db.execute(_PER_MINUTE_SQLITE, (since, until))))


# -- shared by both dialects -------------------------------------------------------------


def _by_name(dialect: Dialect) -> str:
    """Job counts per name and status; names in code-point order whatever the collation."""
    return f"SELECT name, status, count(*) FROM jobs GROUP BY name, status ORDER BY name{dialect.key_order}, status"


def _instance_counts(dialect: Dialect) -> str:
    """Instance counts per kind, name and status; names in code-point order whatever the collation."""
    return (
        "SELECT kind, name, status, count(*) FROM instances GROUP BY kind, name, status"
        f" ORDER BY kind, name{dialect.key_order}, status"
    )


# completed_at is set on every final status, and indexed where set (jobs_finished, schema version 6): the
# last hour is a range of that index however many jobs are stored. SQLite, without statistics, would
# rather search the status index; it reads ``+status`` (below), which no index serves.
_PER_MINUTE = """
    SELECT (completed_at / 60000) * 60000 AS minute,
           sum(CASE WHEN status = 'completed' THEN 1 ELSE 0 END),
           sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END)
    FROM jobs
    WHERE status IN ('completed', 'failed') AND completed_at >= ? AND completed_at <= ?
    GROUP BY minute ORDER BY minute
"""
_PER_MINUTE_SQLITE = _PER_MINUTE.replace("WHERE status IN", "WHERE +status IN")


_PG_PER_MINUTE = POSTGRES.text(_PER_MINUTE).encode()


def _job_counts(rows: Any) -> list[JobCount]:
    return [JobCount(name=r[0], status=r[1], count=int(r[2])) for r in rows]


def _minutes(rows: Any) -> list[MinuteCount]:
    return [MinuteCount(minute=int(r[0]), completed=int(r[1] or 0), failed=int(r[2] or 0)) for r in rows]


def _instances_query(where: InstanceFilter, dialect: Dialect) -> tuple[str, list[object]]:
    terms: list[str] = []
    args: list[object] = []
    for column, value in (
        ("i.kind", where.kind),
        ("i.name", where.name),
        ("i.key", where.key),
        ("i.tenant_id", where.tenant_id),
        ("i.status", where.status),
    ):
        if value is not None:
            terms.append(f"{column} = ?")
            args.append(value)
    if where.after is not None:
        terms.append(f"i.key{dialect.key_order} > ?")
        args.append(where.after)
    view = _INSTANCE_VIEW if where.payloads else _INSTANCE_VIEW_NO_PAYLOADS
    sql = view + (" WHERE " + " AND ".join(terms) if terms else "") + f" ORDER BY i.key{dialect.key_order} LIMIT ?"
    args.append(where.limit)
    return dialect.text(sql), args


def _instance_view(r: Sequence[Any]) -> InstanceView:
    record = instance_record(r)
    alarm = None if r[16] is None else Alarm(id=r[16], key=r[0], fire_at=r[17], purpose=r[19])
    claimed_until = r[18] if alarm is not None and r[18] > r[17] else None
    return InstanceView(
        record=record, alarm=alarm, alarm_claimed_until=claimed_until, lease_owner=r[20], lease_expires_at=r[21]
    )


# -- PostgreSQL --------------------------------------------------------------------------


@final
class PostgresInspector:
    """`Inspector` for a `PostgresStorage`: the same questions as `SqliteInspector`, in
    PostgreSQL's SQL, each answered in one transaction on a pooled connection."""

    def __init__(self, storage: PostgresStorage) -> None:
        self._storage = storage

    async def summary(self, now: int) -> StorageSummary:
        def run(conn: Connection) -> StorageSummary:
            # One REPEATABLE READ transaction: every count describes the same moment.
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            instances = [
                InstanceCount(kind=r[0], name=r[1], status=r[2], count=int(r[3]))
                for r in conn.execute(_instance_counts(POSTGRES))
            ]
            row = conn.execute(POSTGRES.text(_ALARMS), {"now": now}).fetchone()
            assert row is not None
            due, claimed, later, next_at = row
            alarms = AlarmCounts(due=int(due or 0), claimed=int(claimed or 0), later=int(later or 0), next_at=next_at)
            jobs = _counts([(r[0], r[1]) for r in conn.execute("SELECT status, count(*) FROM jobs GROUP BY status")])
            due_row = conn.execute(POSTGRES.text(_JOBS_DUE), (now,)).fetchone()
            jobs_due = int(due_row[0]) if due_row else 0
            oldest = None
            r = conn.execute(POSTGRES.text(_OLDEST_PENDING), (now,)).fetchone()
            if r is not None:
                oldest = PendingJob(id=r[0], name=r[1], scheduled_for=r[2], created_at=r[3])
            held: dict[str, list[int]] = {}
            for column, sql in ((0, _INSTANCE_LEASES), (1, _JOB_LEASES)):
                statement = POSTGRES.text(sql)
                if self._storage.lease_clock == "database":  # leases ended by the server's clock
                    from ._pgstore import DATABASE_NOW

                    statement = statement.replace("%(now)s", DATABASE_NOW)
                for owner, live, expired in conn.execute(statement, {"now": now}):
                    counts = held.setdefault(owner, [0, 0, 0])
                    counts[column] += int(live or 0)
                    counts[2] += int(expired or 0)
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

        return await self._storage.read(run, "summary")

    async def instances(self, where: InstanceFilter) -> list[InstanceView]:
        sql, args = _instances_query(where, POSTGRES)
        return await self._storage.read(
            lambda conn: [_instance_view(r) for r in conn.execute(sql.encode(), args)], "instances"
        )

    async def job_counts(self, correlation_id: str | None = None) -> dict[str, int]:
        sql = "SELECT status, count(*) FROM jobs GROUP BY status"
        args: tuple[str, ...] = ()
        if correlation_id is not None:
            sql, args = "SELECT status, count(*) FROM jobs WHERE correlation_id = %s GROUP BY status", (correlation_id,)
        return await self._storage.read(
            lambda conn: _counts([(r[0], r[1]) for r in conn.execute(sql.encode(), args)]), "job_counts"
        )

    async def job_counts_by_name(self) -> list[JobCount]:
        return await self._storage.read(
            lambda conn: _job_counts(conn.execute(_by_name(POSTGRES))), "job_counts_by_name"
        )

    async def finished_per_minute(self, since: int, until: int) -> list[MinuteCount]:
        return await self._storage.read(
            lambda conn: _minutes(conn.execute(POSTGRES.text(_PER_MINUTE).encode(), (since, until))),
            "finished_per_minute",
        )


# -- opening an existing database ----------------------------------------------------------

_DSN_RE = re.compile(r"^(postgres|postgresql)://|(^|\s)(host|dbname|user|port|service)\s*=", re.IGNORECASE)


def is_dsn(where: str) -> bool:
    """Whether `where` names a PostgreSQL database (a URL or a libpq ``key=value`` string) rather than a file.

    Examples:
        >>> is_dsn("postgresql://app@db/app"), is_dsn("host=db dbname=app"), is_dsn("jobs.db")
        (True, True, False)
    """
    return bool(_DSN_RE.search(where))


def describe(where: str, schema: str = "djobs") -> str:
    """`where` for people: a file's path, or a DSN's ``user@host:port/db`` and schema (never its password).

    Examples:
        >>> describe("postgresql://app:s3cret@db.internal/jobs", "djobs")
        "app@db.internal:5432/jobs (schema 'djobs')"
        >>> describe("jobs.db")
        'jobs.db'
    """
    if not is_dsn(where):
        return where
    try:
        from ._pgconn import server_name
    except ImportError:  # no driver installed: say nothing of the DSN, it may hold a password
        return f"a PostgreSQL database (schema {schema!r})"
    return f"{server_name(where)} (schema {schema!r})"


def storage_layer(where: str, schema: str = "djobs") -> StorageLayer:
    """The storage layer for a SQLite path or a PostgreSQL DSN (with `schema`), as the command line opens them."""
    if is_dsn(where):
        from ._postgres import postgres

        return postgres(where, schema=schema, pool_size=2)
    return sqlite(where)


class Opened(msgspec.Struct, frozen=True, kw_only=True):
    """A database opened by `open_existing`.

    Attributes:
        storage: The storage (both SQLite's and PostgreSQL's implement `QueueStorage`).
        inspect: Its `Inspector`.
        where: The database for people (`describe`: never a password).
        schema_version: The djobs schema version it holds.
    """

    storage: QueueStorage
    inspect: Inspector
    where: str
    schema_version: int


@asynccontextmanager
async def open_existing(
    where: str | os.PathLike[str], *, schema: str = "djobs", write: bool = False
) -> AsyncIterator[Opened]:
    """Open an existing djobs database for inspection (or, with `write`, small changes).

    `where` is a SQLite file's path or a PostgreSQL DSN (``postgresql://...``
    or libpq's ``key=value`` form); `schema` is the PostgreSQL schema. Unlike
    `djobs.sqlite` and `djobs.postgres`, it never creates the file or schema
    and never changes it: a missing one, one that is not djobs's, and one
    whose schema is older or newer than this djobs are all refused with a
    `StorageError` that says which. Without `write` nothing can be written
    through it (SQLite's ``query_only``, PostgreSQL's read-only transactions).

    Raises:
        StorageError: Missing, unreachable, unreadable, foreign, or of another schema version.
        ValidationError: A path or DSN that holds a NUL or a lone surrogate (no file name or
            connection string can), a SQLite URI (``file:...``, `djobs.sqlite` refuses it too),
            or a DSN `djobs.postgres` refuses.
    """
    text = os.fspath(where)
    if is_dsn(text):
        async with _open_existing_postgres(text, schema, write) as opened:
            yield opened
        return
    uri = uri_problem(where)
    if uri is not None:
        raise ValidationError(uri)
    storage = _open_existing_sqlite(text, write)
    try:
        yield Opened(storage=storage, inspect=SqliteInspector(storage), where=text, schema_version=SCHEMA_VERSION)
    finally:
        storage.close()


def _open_existing_sqlite(where: str, write: bool) -> SqliteStorage:
    problem = os_text_problem(where)
    if problem is not None:
        # SQLite takes a file name as UTF-8: a name read from bytes that are not UTF-8 (a lone
        # surrogate) may exist on disk and still cannot be opened; a NUL would cut it short.
        raise ValidationError(f"cannot open {where!r:.80}: {problem}")
    if not os.path.exists(where):
        raise StorageError(
            f"no database at {where!r}; djobs creates one only when an engine opens it "
            "(check --db, or start your worker first)"
        )
    if (not_a_file := not_a_file_problem(where)) is not None:
        raise StorageError(f"cannot open {where!r}: {not_a_file}")
    try:
        # READWRITE without CREATE: a file that vanished meanwhile is an error,
        # not a new empty database; query_only then forbids writes. (A
        # READONLY connection would leave -wal and -shm files behind.)
        db = apsw.Connection(where, flags=apsw.SQLITE_OPEN_READWRITE)
    except apsw.Error as exc:
        raise StorageError(f"cannot open {where!r}: {describe_error(exc)}", exc) from exc
    try:
        db.setbusytimeout(5000)
        if not write:
            db.execute("PRAGMA query_only=ON")
        app_id, version, tables = _inspect(db)
        if app_id != APPLICATION_ID:
            what = "an empty file" if not tables else "it holds other data"
            raise StorageError(f"{where!r} is not a djobs database ({what})")
        _check_version(repr(where), version)
        if write:
            db.execute("PRAGMA synchronous=NORMAL")
        # The engines' lease clock on this host, if one of them recorded it this boot.
        anchor = None
        for (value,) in db.execute("SELECT anchor_ms FROM lease_clock WHERE boot_id = ?", (_boot_id(),)):
            anchor = int(value)
    except StorageError:
        db.close()
        raise
    except apsw.Error as exc:
        db.close()
        raise StorageError(f"cannot read {where!r}: {describe_error(exc)}", exc) from exc
    return SqliteStorage(db, where, anchor_ms=anchor)


def _check_version(where: str, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"{where} has schema version {version}, newer than this djobs understands "
            f"({SCHEMA_VERSION}); upgrade djobs to read it"
        )
    if version < SCHEMA_VERSION:
        # Migrating is an engine's job: an older engine may still be running on this database.
        raise StorageError(
            f"{where} has schema version {version}, older than this djobs ({SCHEMA_VERSION}); "
            "open it with an engine of this version (your worker) to migrate it, then try again"
        )


@asynccontextmanager
async def _open_existing_postgres(dsn: str, schema: str, write: bool) -> AsyncIterator[Opened]:
    import importlib.util

    if importlib.util.find_spec("psycopg") is None:
        raise StorageError('reading PostgreSQL needs the psycopg driver: pip install "djobs-trio[postgres]"')
    import psycopg

    from ._pgconn import Pool, configure, connect, connect_error, database_time, query_error, server_name
    from ._pgstore import SCHEMA_VERSION as PG_SCHEMA_VERSION
    from ._pgstore import PostgresStorage
    from ._postgres import postgres

    postgres(dsn, schema=schema)  # validates the schema name (ValidationError)
    where = server_name(dsn)
    shown = f"{where} (schema {schema!r})"

    try:
        given = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        raise connect_error(exc, where) from exc
    # The DSN's own settings win; these are defaults.
    extra: dict[str, Any] = {
        k: v for k, v in (("connect_timeout", 10), ("application_name", "djobs-inspect")) if k not in given
    }

    kwargs: dict[str, Any] = {"autocommit": True, **extra}

    def configured(conn: Connection) -> None:
        configure(conn, schema)
        if not write:
            conn.execute("SET default_transaction_read_only = on")

    def check() -> int:
        try:
            conn = connect(dsn, kwargs, configured)
        except psycopg.Error as exc:
            raise connect_error(exc, where) from exc
        with conn:
            try:
                row = conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s),"
                    " to_regclass(format('%%I.djobs_schema', %s::text)) IS NOT NULL",
                    (schema, schema),
                ).fetchone()
                assert row is not None
                if not row[0]:
                    raise StorageError(
                        f"no schema {schema!r} at {where}; djobs creates it only when an engine opens it "
                        "(check --db and --schema, or start your worker first)"
                    )
                if not row[1]:
                    raise StorageError(f"the schema {schema!r} at {where} is not a djobs schema")
                version = conn.execute("SELECT version FROM djobs_schema").fetchone()
            except psycopg.Error as exc:
                raise query_error(exc, where, f"opening schema {schema!r}") from exc
        return 0 if version is None else int(version[0])

    with database_time():
        version = await trio.to_thread.run_sync(check)
    if version != PG_SCHEMA_VERSION:
        _check_pg_version(shown, version, PG_SCHEMA_VERSION)
    pool = Pool(dsn, kwargs, configured, 2, where, timeout_s=10)
    pool.open()
    try:
        # Read-only: leases are counted against the `now` a summary is asked for (the server's
        # clock and the reader's agree to within NTP's error; an engine's judgement never reads this).
        storage = PostgresStorage(pool, lambda: connect(dsn, kwargs, configured), schema, where, "engine")
        yield Opened(storage=storage, inspect=PostgresInspector(storage), where=shown, schema_version=version)
    finally:
        await pool.aclose()


def _check_pg_version(where: str, version: int, current: int) -> None:
    if version > current:
        raise StorageError(
            f"{where} has schema version {version}, newer than this djobs understands ({current}); "
            "upgrade djobs to read it"
        )
    raise StorageError(
        f"{where} has schema version {version}, older than this djobs ({current}); "
        "open it with an engine of this version (your worker) to migrate it, then try again"
    )
