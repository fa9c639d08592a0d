"""The statements SQLite and PostgreSQL share, written once.

Each statement here runs unchanged on both databases but for its
placeholders, which follow one rule: the text is written in SQLite's style
(``?`` for a positional argument, ``:name`` for a named one) and
`Dialect.text` turns it into psycopg's (``%s``, ``%(name)s``). SQL that only
one database understands stays with its dialect (``_sqlite``: ``json_each``,
``INDEXED BY``, ``INSERT OR REPLACE``; ``_pgstore``: ``FOR UPDATE SKIP
LOCKED``, ``= ANY(...)``, ``unnest``), and composes these where it can: the
lease fence, the column lists of ``_rows``.

Portable spellings used here: ``TRUE``/``FALSE`` (SQLite reads them as 1 and
0), ``CAST(? AS BIGINT)`` where PostgreSQL cannot infer an argument's type,
``sum(CASE ...)`` rather than a sum of booleans, ``ON CONFLICT ... DO
NOTHING RETURNING`` (SQLite 3.35 and later).
"""

from __future__ import annotations

import re
from typing import Final, final

from ._base import JobFilter
from ._rows import CRON_COLUMNS, INSTANCE_COLUMNS, JOB_COLUMNS

_NAMED = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


@final
class Dialect:
    """How one database spells what the shared statements leave open.

    Attributes:
        name: ``"sqlite"`` or ``"postgres"``.
        mark: A positional placeholder (``?`` or ``%s``).
        empty_blob: An empty BLOB literal, for listings that leave payloads out.
        key_order: What follows ``ORDER BY`` or a ``>`` comparison of text keys
            so they sort by code point (SQLite's ``BINARY``; PostgreSQL's ``"C"``).
    """

    __slots__ = ("empty_blob", "key_order", "mark", "name")

    def __init__(self, name: str, mark: str, empty_blob: str, key_order: str) -> None:
        self.name = name
        self.mark = mark
        self.empty_blob = empty_blob
        self.key_order = key_order

    def text(self, statement: str) -> str:
        """`statement` with its placeholders in this dialect's style."""
        if self.mark == "?":
            return statement
        return _NAMED.sub(r"%(\1)s", statement.replace("%", "%%")).replace("?", "%s")


SQLITE: Final = Dialect("sqlite", "?", "x''", "")
POSTGRES: Final = Dialect("postgres", "%s", "''::bytea", ' COLLATE "C"')

# -- instances, alarms, event ids, instance leases ----------------------------------------

UPSERT_INSTANCE: Final = f"""
    INSERT INTO instances ({INSTANCE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
    ON CONFLICT (key) DO UPDATE SET
        tenant_id = excluded.tenant_id, status = excluded.status, state = excluded.state,
        run_count = excluded.run_count, attempt = excluded.attempt, event_count = excluded.event_count,
        execute_count = excluded.execute_count, started_at = excluded.started_at, data = excluded.data,
        updated_at = excluded.updated_at, version = excluded.version
"""
#: A new instance, stored only if its key is free: the count of rows it changed (SQLite's
#: ``changes()``, a PostgreSQL cursor's ``rowcount``) says whether it stored it.
INSERT_INSTANCE_IF_ABSENT: Final = f"""
    INSERT INTO instances ({INSTANCE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
    ON CONFLICT (key) DO NOTHING
"""
#: An instance and its alarm (``_rows.loaded`` reads the row). The row is read in a subquery
#: that a LIMIT keeps apart from the join: SQLite re-prepared the join written with ``WHERE i.key
#: = ?`` at every run (a ``sqlite3Reprepare`` each time, about 145k instructions under callgrind:
#: 7k of a Debounce add's in ``bench/debounce.py``, whose every instance is loaded once).
#: ``i.*`` is the subquery's columns, `INSTANCE_COLUMNS` in their order: SQLite hashes a statement's
#: whole text at each run to find it prepared (about 8 instructions a byte, callgrind), and the
#: list written out again was 190 bytes of it.
LOAD: Final = (
    f"SELECT i.*, a.id, a.fire_at, a.purpose FROM (SELECT {INSTANCE_COLUMNS} FROM instances WHERE key = ? LIMIT 1)"
    " AS i LEFT JOIN alarms AS a ON a.key = i.key"
)
DELETE_INSTANCE: Final = "DELETE FROM instances WHERE key = ?"
DELETE_ALARM: Final = "DELETE FROM alarms WHERE key = ?"
DELETE_EVENT_IDS: Final = "DELETE FROM event_ids WHERE key = ?"
#: Returns a row only if the event id is new for the instance.
INSERT_EVENT_ID: Final = (
    "INSERT INTO event_ids (key, event_id, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1"
)
HAS_EVENT_ID: Final = "SELECT 1 FROM event_ids WHERE key = ? AND event_id = ?"
LEASE_OWNER: Final = "SELECT owner FROM instance_leases WHERE key = ?"
LEASE_HOLDER: Final = "SELECT owner, expires_at FROM instance_leases WHERE key = ?"

# -- the queue ------------------------------------------------------------------------------

#: Marks the placeholder of a lease's end. A storage that judges leases by its own clock
#: (PostgreSQL's ``lease_clock="database"``) binds the lease's length there and adds its clock.
LEASE_END: Final = "? /* lease end */"
INSERT_RUNNING_JOB: Final = f"""
    INSERT INTO jobs (id, name, status, params, max_attempts, scheduled_for, priority, correlation_id, tenant_id,
                      worker_id, worker_started_at, worker_expires_at, attempt_count, created_at, updated_at)
    VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, {LEASE_END}, 1, ?, ?)
"""
#: Returns the job id only if the key is new for the tenant and name.
INSERT_JOB_KEY: Final = """
    INSERT INTO job_keys (tenant_id, name, key, job_id, created_at) VALUES (?, ?, ?, ?, ?)
    ON CONFLICT DO NOTHING RETURNING job_id
"""
FIND_JOB_KEY: Final = "SELECT job_id FROM job_keys WHERE tenant_id = ? AND name = ? AND key = ?"
GET_JOB: Final = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"

# Every write to a leased row is fenced by (worker, attempt): a worker whose lease was
# reclaimed cannot overwrite what the row's new holder does. The fence's arguments
# come last: job id, worker id, attempt. The row is found by its primary key alone: the
# fence's terms are one ``IS TRUE`` test, which no index serves, so a planner without
# statistics (PostgreSQL's, on a fresh schema) cannot pick the index of running rows by
# worker instead and walk every version of every row the worker ever held, once per
# write (a settle batch of 200 rows took seconds that way, holding its locks).
_FENCE = "WHERE id = ? AND (worker_id = ? AND attempt_count = ? AND status = 'running') IS TRUE"
#: result, completed_at, updated_at, *fence
SETTLE_COMPLETED: Final = f"""
    UPDATE jobs SET status = 'completed', result = ?, error = NULL, completed_at = ?, updated_at = ?,
                    worker_expires_at = NULL
    {_FENCE}
"""
#: status, error, completed_at, updated_at, *fence
SETTLE_FINAL: Final = f"""
    UPDATE jobs SET status = ?, error = ?, completed_at = ?, updated_at = ?, worker_expires_at = NULL
    {_FENCE}
"""
#: error, scheduled_for, completed_at (if a cancel was requested), updated_at, *fence
SETTLE_RETRY: Final = f"""
    UPDATE jobs SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'pending' END,
                    error = ?, scheduled_for = ?, completed_at = CASE WHEN cancel_requested THEN CAST(? AS BIGINT) END,
                    updated_at = ?, worker_expires_at = NULL
    {_FENCE}
"""
#: error (if a cancel was requested), completed_at (likewise), updated_at, *fence
SETTLE_RELEASE: Final = f"""
    UPDATE jobs SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'pending' END,
                    error = CASE WHEN cancel_requested THEN ? ELSE error END,
                    completed_at = CASE WHEN cancel_requested THEN CAST(? AS BIGINT) END, updated_at = ?,
                    attempt_count = attempt_count - 1, worker_started_at = NULL, worker_expires_at = NULL
    {_FENCE}
"""
#: error, worker_expires_at, updated_at, *fence
SETTLE_AGAIN: Final = f"""
    UPDATE jobs SET attempt_count = attempt_count + 1, error = ?, worker_expires_at = {LEASE_END}, updated_at = ?
    {_FENCE}
"""
#: progress, message, updated_at, *fence
SET_PROGRESS: Final = f"UPDATE jobs SET progress = ?, progress_message = ?, updated_at = ? {_FENCE}"
CANCEL_JOB: Final = """
    UPDATE jobs SET
        status = CASE WHEN status = 'pending' THEN 'cancelled' ELSE status END,
        error = CASE WHEN status = 'pending' THEN :error ELSE error END,
        completed_at = CASE WHEN status = 'pending' THEN :now ELSE completed_at END,
        cancel_requested = CASE WHEN status = 'running' THEN TRUE ELSE cancel_requested END,
        updated_at = :now
    WHERE id = :id AND (status = 'pending' OR (status = 'running' AND NOT cancel_requested))
"""
RETRY_JOB: Final = """
    UPDATE jobs SET status = 'pending', attempt_count = 0, result = NULL, error = NULL, progress = 0,
                    progress_message = NULL, cancel_requested = FALSE, scheduled_for = :now, completed_at = NULL,
                    worker_id = NULL, worker_started_at = NULL, worker_expires_at = NULL, updated_at = :now
    WHERE id = :id AND status IN ('failed', 'cancelled')
"""


def list_jobs(where: JobFilter, dialect: Dialect) -> tuple[str, list[object]]:
    """The query for ``list_jobs(where)`` and its arguments."""
    terms: list[str] = []
    args: list[object] = []
    for column, value in (
        ("status", where.status),
        ("name", where.name),
        ("correlation_id", where.correlation_id),
        ("tenant_id", where.tenant_id),
    ):
        if value is not None:
            terms.append(f"{column} = ?")
            args.append(value)
    if where.after is not None:
        terms.append("id > ?")
        args.append(where.after)
    columns = JOB_COLUMNS
    if not where.payloads:
        columns = columns.replace("params, result,", f"{dialect.empty_blob} AS params, NULL AS result,")
    query = f"SELECT {columns} FROM jobs"
    if terms:
        query += " WHERE " + " AND ".join(terms)
    args.append(where.limit)
    return dialect.text(query + " ORDER BY id LIMIT ?"), args


def list_instances(
    kind: str, name: str, tenant_id: str | None, status: str | None, after: str | None, limit: int, dialect: Dialect
) -> tuple[str, list[object]]:
    """The query for ``list_instances(...)`` and its arguments (keys in code-point order)."""
    terms: list[str] = ["kind = ?", "name = ?"]
    args: list[object] = [kind, name]
    for column, value in (("tenant_id", tenant_id), ("status", status)):
        if value is not None:
            terms.append(f"{column} = ?")
            args.append(value)
    if after is not None:
        terms.append(f"key{dialect.key_order} > ?")
        args.append(after)
    args.append(limit)
    where = " AND ".join(terms)
    query = f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE {where} ORDER BY key{dialect.key_order} LIMIT ?"
    return dialect.text(query), args


# -- cron jobs ---------------------------------------------------------------------------------

# An unchanged schedule keeps next_run_at (fires missed while no engine ran are
# still due); a changed one starts from the new schedule's first run.
SYNC_CRON: Final = """
    INSERT INTO cron_jobs (name, job_name, expression, tz, params, tenant_id, next_run_at, created_at, updated_at)
    VALUES (:name, :job_name, :expression, :tz, :params, :tenant_id, :first, :now, :now)
    ON CONFLICT (name) DO UPDATE SET
        job_name = excluded.job_name, params = excluded.params, tenant_id = excluded.tenant_id,
        next_run_at = CASE WHEN cron_jobs.expression = excluded.expression AND cron_jobs.tz = excluded.tz
                                AND cron_jobs.next_run_at IS NOT NULL
                           THEN cron_jobs.next_run_at ELSE excluded.next_run_at END,
        expression = excluded.expression, tz = excluded.tz, updated_at = excluded.updated_at
"""
#: The compare-and-set of a cron fire: only the engine that moves next_run_at on enqueues.
FIRE_CRON: Final = """
    UPDATE cron_jobs SET next_run_at = :next, last_run_at = :now, last_job_id = coalesce(:job_id, last_job_id),
                         updated_at = :now
    WHERE name = :name AND next_run_at = :expected AND enabled = TRUE
"""
#: next_run_at, updated_at, name
ENABLE_CRON: Final = "UPDATE cron_jobs SET enabled = TRUE, next_run_at = ?, updated_at = ? WHERE name = ?"
#: updated_at, name
DISABLE_CRON: Final = "UPDATE cron_jobs SET enabled = FALSE, updated_at = ? WHERE name = ?"
GET_CRON: Final = f"SELECT {CRON_COLUMNS} FROM cron_jobs WHERE name = ?"
LIST_CRONS: Final = f"SELECT {CRON_COLUMNS} FROM cron_jobs ORDER BY name"
