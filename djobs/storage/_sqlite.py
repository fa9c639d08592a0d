"""SQLite storage on APSW.

Calls go straight to APSW on the Trio thread: a small transaction costs about
20 µs there, against about 135 µs for a hop to a worker thread, and a
transaction never spans an ``await``, so no other task can interleave with it
and one connection is never used by two threads.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import stat
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Final, Literal, TypeVar, final, get_args

import apsw
import msgspec
import trio

from .._errors import CLOSED_MESSAGE, DuplicateEventError, StorageError, ValidationError, safe_repr
from .._input import os_text_problem
from .._queue_limits import MAX_PERIOD_MS
from .._shield import SHIELDED, shielded_wait
from . import _sql
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
    JobSettlement,
    JobStatusName,
    LeaseLostError,
    NewJob,
    QueueLimit,
    Revival,
    SetAlarm,
)
from ._common import NO_FLOOR, describe_error, every_name_limited, limits_of, resolve
from ._dead_letters import (
    DELETE_DEAD_LETTER,
    GET_DEAD_LETTER,
    INSERT_DEAD_LETTER,
    REVIVE_PURGED_JOB,
    dead_letter,
    dead_letter_query,
    dead_letter_row,
    purged_job_args,
    revival_decoder,
)
from ._rows import (
    CRON_COLUMNS,
    INSTANCE_COLUMNS,
    alarm_record,
    claimed_job,
    cron_record,
    cron_spec_args,
    expired_lease,
    fire_cron_args,
    instance_args,
    instance_record,
    job_record,
    loaded,
    new_job_args,
    running_job_args,
)

#: Commits between WAL checkpoints, in pages (1,024 pages of 4 KiB: 4 MiB, about SQLite's own
#: default of 1,000). The checkpoint runs in a thread of its own (`_Checkpointer`), so its size
#: stalls nothing; what the engine's thread pays per checkpoint is the WAL header's sync when
#: the next commit starts the WAL over, so a larger mark means fewer of them (at 256 pages,
#: about ten a second while 1,000 Task alarms a second fired).
WAL_AUTOCHECKPOINT_PAGES: Final = 1024
#: Seconds the checkpoint thread rests after a checkpoint before it takes the next wake. Woken
#: at every commit past the mark and never resting, it chased a fast writer: a checkpoint of
#: the few pages committed during the one before, each with its two fsyncs (about 160 for
#: 20,000 Debounce events, beside the mark's 10). Woken only after a step of more pages, it
#: left a tail at every checkpoint, so the WAL never started over and the writer checkpointed
#: it itself, on the Trio thread, every cycle. Resting a moment, it still catches up with an
#: ordinary writer within a few checkpoints (the WAL starts over), and costs a fast one a
#: checkpoint per rest rather than one per commit.
WAL_CHECKPOINT_REST_S: Final = 0.01
#: The WAL size, in pages, past which the writer checkpoints itself after its commit (one large
#: transaction, or commits that outran the checkpoint thread), so the WAL stays bounded.
WAL_WRITER_CHECKPOINT_PAGES: Final = 2 * WAL_AUTOCHECKPOINT_PAGES
#: The size a WAL file is cut back to when a commit starts it over, in bytes: its size at
#: `WAL_WRITER_CHECKPOINT_PAGES` frames of a 4 KiB page and its 24-byte header, plus the file's
#: 32-byte header (8,437,792 bytes). A WAL of ordinary commits (the mark and what the checkpoint
#: thread lags behind it) stays below it and is never cut: a cut is an ``ftruncate`` in the
#: committing thread, the engine's, at every start-over, and the next pages written past the
#: cut allocate the file's blocks again. Only a WAL that outgrew it gives its space back.
WAL_SIZE_LIMIT_BYTES: Final = WAL_WRITER_CHECKPOINT_PAGES * (4096 + 24) + 32

#: ``PRAGMA application_id`` of a djobs database ("djob" in ASCII).
APPLICATION_ID: Final = 0x646A6F62

_log = logging.getLogger("djobs.storage")

#: Each entry upgrades the schema by one version; never edit a released one,
#: append a new one. ``PRAGMA user_version`` holds how many have been applied.
MIGRATIONS: list[str] = [
    # 1: stateful instances, their alarms and idempotency keys
    """
    CREATE TABLE instances (
        key TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        tenant_id TEXT,
        status TEXT NOT NULL,
        state BLOB,
        run_count INTEGER NOT NULL DEFAULT 0,
        attempt INTEGER NOT NULL DEFAULT 1,
        event_count INTEGER NOT NULL DEFAULT 0,
        execute_count INTEGER NOT NULL DEFAULT 0,
        started_at INTEGER,
        data BLOB,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        version INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE INDEX instances_kind_name ON instances(kind, name);
    CREATE TABLE alarms (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        fire_at INTEGER NOT NULL,
        due_at INTEGER NOT NULL,
        purpose TEXT NOT NULL
    );
    CREATE INDEX alarms_due_at ON alarms(due_at);
    CREATE TABLE event_ids (
        key TEXT NOT NULL,
        event_id TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (key, event_id)
    ) WITHOUT ROWID;
    CREATE TABLE instance_leases (
        key TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # 2: the job queue, its idempotency keys, and cron jobs
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
        params BLOB NOT NULL,
        result BLOB,
        error BLOB,
        progress INTEGER NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
        progress_message TEXT,
        worker_id TEXT,
        worker_started_at INTEGER,
        worker_expires_at INTEGER,
        attempt_count INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL DEFAULT 3,
        scheduled_for INTEGER NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        correlation_id TEXT,
        tenant_id TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        completed_at INTEGER
    ) WITHOUT ROWID;
    -- Claims of priority-0 rows and status filters; priority is in the index so a
    -- claim never reads the table to check it.
    CREATE INDEX jobs_status_scheduled ON jobs(status, scheduled_for, priority);
    -- Leases to renew or reclaim: running rows only, so finished rows cost nothing here.
    CREATE INDEX jobs_status_expires ON jobs(status, worker_expires_at) WHERE status = 'running';
    -- Rows with a priority other than 0 (rare): claimed before (or after) the rest.
    CREATE INDEX jobs_priority ON jobs(priority DESC, scheduled_for) WHERE status = 'pending' AND priority <> 0;
    CREATE INDEX jobs_name ON jobs(name);
    CREATE INDEX jobs_correlation ON jobs(correlation_id) WHERE correlation_id IS NOT NULL;
    CREATE INDEX jobs_tenant ON jobs(tenant_id) WHERE tenant_id IS NOT NULL;
    CREATE TABLE job_keys (
        tenant_id TEXT NOT NULL,
        name TEXT NOT NULL,
        key TEXT NOT NULL,
        job_id TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, name, key)
    ) WITHOUT ROWID;
    CREATE TABLE cron_jobs (
        name TEXT PRIMARY KEY,
        job_name TEXT NOT NULL,
        expression TEXT NOT NULL,
        tz TEXT NOT NULL,
        params BLOB NOT NULL,
        tenant_id TEXT,
        enabled INTEGER NOT NULL DEFAULT 1,
        last_run_at INTEGER,
        next_run_at INTEGER,
        last_job_id TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX cron_jobs_next_run ON cron_jobs(next_run_at) WHERE enabled = 1;
    """,
    # 3: instances and jobs become rowid tables. A WITHOUT ROWID table keeps each row
    # inline in its B-tree, so one large state or params (megabytes) slowed every
    # write of every other row; a rowid table moves a large row to overflow pages.
    # The rows are copied as they are (same columns, same order).
    """
    CREATE TABLE instances_v3 (
        key TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        tenant_id TEXT,
        status TEXT NOT NULL,
        state BLOB,
        run_count INTEGER NOT NULL DEFAULT 0,
        attempt INTEGER NOT NULL DEFAULT 1,
        event_count INTEGER NOT NULL DEFAULT 0,
        execute_count INTEGER NOT NULL DEFAULT 0,
        started_at INTEGER,
        data BLOB,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        version INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO instances_v3 SELECT * FROM instances;
    DROP TABLE instances;
    ALTER TABLE instances_v3 RENAME TO instances;
    CREATE INDEX instances_kind_name ON instances(kind, name);
    CREATE TABLE jobs_v3 (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
        params BLOB NOT NULL,
        result BLOB,
        error BLOB,
        progress INTEGER NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
        progress_message TEXT,
        worker_id TEXT,
        worker_started_at INTEGER,
        worker_expires_at INTEGER,
        attempt_count INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL DEFAULT 3,
        scheduled_for INTEGER NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        correlation_id TEXT,
        tenant_id TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        completed_at INTEGER
    );
    INSERT INTO jobs_v3 SELECT * FROM jobs;
    DROP TABLE jobs;
    ALTER TABLE jobs_v3 RENAME TO jobs;
    -- Claims of priority-0 rows and status filters; priority is in the index so a
    -- claim never reads the table to check it.
    CREATE INDEX jobs_status_scheduled ON jobs(status, scheduled_for, priority);
    -- Leases to renew or reclaim: running rows only, so finished rows cost nothing here.
    CREATE INDEX jobs_status_expires ON jobs(status, worker_expires_at) WHERE status = 'running';
    -- Rows with a priority other than 0 (rare): claimed before (or after) the rest.
    CREATE INDEX jobs_priority ON jobs(priority DESC, scheduled_for) WHERE status = 'pending' AND priority <> 0;
    CREATE INDEX jobs_name ON jobs(name);
    CREATE INDEX jobs_correlation ON jobs(correlation_id) WHERE correlation_id IS NOT NULL;
    CREATE INDEX jobs_tenant ON jobs(tenant_id) WHERE tenant_id IS NOT NULL;
    """,
    # 4: unique jobs: an enqueue with a unique key finds a live job with the same key
    # (per tenant and name) through this index, inside the enqueue's transaction.
    """
    ALTER TABLE jobs ADD COLUMN unique_key TEXT;
    CREATE INDEX jobs_unique ON jobs(name, unique_key) WHERE unique_key IS NOT NULL;
    """,
    # 5: the host's lease clock: epoch ms at the monotonic clock's zero, one row per boot,
    # so every process on the host judges leases by one clock that wall-clock steps miss.
    """
    CREATE TABLE lease_clock (
        boot_id TEXT PRIMARY KEY,
        anchor_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # 6: finished jobs by the time they ended (only finished rows have one), for the
    # per-minute counts of the dashboard's overview.
    """
    CREATE INDEX jobs_finished ON jobs(completed_at) WHERE completed_at IS NOT NULL;
    """,
    # 7: cancels asked of a workflow from a process that does not hold its lease; the
    # process running it reads them while its steps run (`CancelRequests`).
    """
    CREATE TABLE cancel_requests (
        key TEXT PRIMARY KEY,
        reason TEXT,
        requested_at INTEGER NOT NULL
    );
    """,
    # 8: dead letters. A job's letter is written by a trigger whenever its row becomes
    # 'failed' (a failed last attempt, a lease reclaimed on the last attempt: every path,
    # in the statement's own transaction), and removed when the row leaves 'failed'
    # (a retry). Instances' letters come with a check-in.
    """
    CREATE TABLE dead_letters (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        ref TEXT NOT NULL,
        tenant_id TEXT,
        payload BLOB,
        error BLOB,
        attempts INTEGER NOT NULL DEFAULT 0,
        event_count INTEGER NOT NULL DEFAULT 0,
        revive BLOB,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX dead_letters_created ON dead_letters(created_at, id);
    -- Retention purges event ids and idempotency keys by age.
    CREATE INDEX event_ids_created ON event_ids(created_at);
    CREATE INDEX job_keys_created ON job_keys(created_at);
    CREATE TRIGGER jobs_dead_letter AFTER UPDATE OF status ON jobs
    WHEN NEW.status = 'failed' AND OLD.status <> 'failed'
    BEGIN
        INSERT OR REPLACE INTO dead_letters
            (id, kind, name, ref, tenant_id, payload, error, attempts, revive, created_at)
        VALUES (NEW.id, 'job', NEW.name, NEW.id, NEW.tenant_id, NEW.params, NEW.error, NEW.attempt_count,
                CAST(json_object('max_attempts', NEW.max_attempts, 'priority', NEW.priority,
                                 'correlation_id', NEW.correlation_id) AS BLOB),
                coalesce(NEW.completed_at, NEW.updated_at));
    END;
    CREATE TRIGGER jobs_dead_letter_retried AFTER UPDATE OF status ON jobs
    WHEN OLD.status = 'failed' AND NEW.status <> 'failed'
    BEGIN
        DELETE FROM dead_letters WHERE id = NEW.id AND kind = 'job';
    END;
    """,
    # 9: concurrency and rate limits. A limited row carries its limit key (the job's
    # name, or name and key); the limited claim walks pending limited rows by key in
    # claim order, counts a key's running rows, and counts its recent starts in
    # job_starts (kept a day at most: the longest rate-limit window).
    """
    ALTER TABLE jobs ADD COLUMN limit_key TEXT;
    CREATE INDEX jobs_limited ON jobs(limit_key, priority DESC, scheduled_for)
        WHERE status = 'pending' AND limit_key IS NOT NULL;
    CREATE INDEX jobs_limited_running ON jobs(limit_key) WHERE status = 'running' AND limit_key IS NOT NULL;
    CREATE TABLE job_starts (
        limit_key TEXT NOT NULL,
        started_at INTEGER NOT NULL
    );
    CREATE INDEX job_starts_key ON job_starts(limit_key, started_at);
    CREATE INDEX job_starts_at ON job_starts(started_at);
    -- A job's letter keeps its limit key, so a job revived after its row was purged keeps its limits.
    DROP TRIGGER jobs_dead_letter;
    CREATE TRIGGER jobs_dead_letter AFTER UPDATE OF status ON jobs
    WHEN NEW.status = 'failed' AND OLD.status <> 'failed'
    BEGIN
        INSERT OR REPLACE INTO dead_letters
            (id, kind, name, ref, tenant_id, payload, error, attempts, revive, created_at)
        VALUES (NEW.id, 'job', NEW.name, NEW.id, NEW.tenant_id, NEW.params, NEW.error, NEW.attempt_count,
                CAST(json_object('max_attempts', NEW.max_attempts, 'priority', NEW.priority,
                                 'correlation_id', NEW.correlation_id, 'limit_key', NEW.limit_key) AS BLOB),
                coalesce(NEW.completed_at, NEW.updated_at));
    END;
    """,
    # 10: PostgreSQL's version 10 makes its dead-letter trigger replace every column, as
    # INSERT OR REPLACE does here already; nothing changes here.
    "SELECT 1",
    # 11: the claims of a worker that runs limited jobs walk pending rows without a limit
    # key only, so a limited backlog (due, but waiting for its key) is never walked past.
    """
    CREATE INDEX jobs_unlimited ON jobs(scheduled_for, priority) WHERE status = 'pending' AND limit_key IS NULL;
    CREATE INDEX jobs_priority_unlimited ON jobs(priority DESC, scheduled_for)
        WHERE status = 'pending' AND priority <> 0 AND limit_key IS NULL;
    """,
    # 12: PostgreSQL's version 12 compares dead-letter ids and cron job names by code
    # point, as SQLite compares all text; nothing changes here.
    "SELECT 1",
    # 13: a set alarm is rewritten in place (an upsert keeps its row id); an engine tells a
    # claim from the alarm set after it by id, fire time and purpose. The tables stay as they
    # are; the version keeps an older djobs, which compared the id alone (and would fire an
    # alarm moved later at its old time), from opening the file.
    "SELECT 1",
]

SCHEMA_VERSION: Final = len(MIGRATIONS)

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
#: Which clock judges leases on SQLite (see `sqlite`).
LeaseClock = Literal["auto", "host", "engine"]
#: Where Linux names the current boot (a new value after every reboot).
_BOOT_ID_PATH: Final = "/proc/sys/kernel/random/boot_id"
T = TypeVar("T")
#: `SqliteStorage._no_rows`: a statement and its bindings.
_NoRows = Callable[[str, "tuple[Any, ...]"], object]

#: key, owner, lease end, now: an instance's lease, taken if it is free, expired or the owner's
#: already. Whether it was taken is ``changes()`` (1: inserted or updated; 0: another's), not a
#: ``RETURNING``, which costs about 17k instructions (callgrind), half the statement's cost.
_TAKE_LEASE = """
    INSERT INTO instance_leases (key, owner, expires_at) VALUES (?1, ?2, ?3)
    ON CONFLICT(key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
    WHERE instance_leases.owner = excluded.owner OR instance_leases.expires_at <= ?4
"""
#: status, run_count, execute_count, data, updated_at, key, owner: a workflow's checkpoint,
#: fenced by the lease in the statement itself (no row changed: not ours, or not stored).
_CHECKPOINT_INSTANCE = """
    UPDATE instances SET status = ?1, run_count = ?2, execute_count = ?3, data = ?4, updated_at = ?5
    WHERE key = ?6 AND EXISTS (SELECT 1 FROM instance_leases AS l WHERE l.key = ?6 AND l.owner = ?7)
"""
_INSTANCE_EXISTS = "SELECT 1 FROM instances WHERE key = ?"
# The leases of many keys (a JSON array) at once, as `_TAKE_LEASE` takes one: the keys taken.
_ACQUIRE_LEASES = """
    INSERT INTO instance_leases (key, owner, expires_at) SELECT value, ?2, ?3 FROM json_each(?1) WHERE true
    ON CONFLICT(key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
    WHERE instance_leases.owner = excluded.owner OR instance_leases.expires_at <= ?4
    RETURNING key
"""
#: The rows of a batch of claimed alarms' instances, without their alarms: each key's alarm
#: is the one the claim just took, in the same transaction (``alarms.key`` is unique).
_LOAD_MANY = f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE key IN (SELECT value FROM json_each(?))"
_RELEASE_LEASES = "DELETE FROM instance_leases WHERE owner = ? AND key IN (SELECT value FROM json_each(?))"
#: The owners named after a host (``host:`` starts the id) holding an instance lease or a
#: running job's: the few rows of leases held, and the running rows' partial index.
_HOST_LEASE_OWNERS = """
    SELECT owner FROM instance_leases WHERE substr(owner, 1, length(?1)) = ?1
    UNION SELECT worker_id FROM jobs WHERE status = 'running' AND substr(worker_id, 1, length(?1)) = ?1
    ORDER BY 1
"""
# Freeing the leases of exited owners (a JSON array): the claims on their instances' alarms
# first (read through the lease rows), then the lease rows, then their running jobs' leases.
_FREE_ALARM_CLAIMS = """
    UPDATE alarms SET due_at = fire_at WHERE due_at > fire_at
    AND key IN (SELECT key FROM instance_leases WHERE owner IN (SELECT value FROM json_each(?)))
"""
_FREE_INSTANCE_LEASES = "DELETE FROM instance_leases WHERE owner IN (SELECT value FROM json_each(?))"
_FREE_JOB_LEASES = """
    UPDATE jobs SET worker_expires_at = ?2
    WHERE status = 'running' AND worker_id IN (SELECT value FROM json_each(?1)) AND worker_expires_at > ?2
"""
#: An instance's alarm, set: a new row, or the stored one rewritten in place (same row id, so
#: the key's index entry stays; `Alarm` tells a claim from the alarm set after it by fire time
#: and purpose as well as id). ``INSERT OR REPLACE`` gave every set alarm a new row id, and at a
#: million stored alarms rewrote a random leaf of the key's index on every fire.
_SET_ALARM = """
    INSERT INTO alarms (key, fire_at, due_at, purpose) VALUES (?, ?, ?, ?)
    ON CONFLICT(key) DO UPDATE SET fire_at = excluded.fire_at, due_at = excluded.due_at, purpose = excluded.purpose
"""
_LEASE_OWNERS = "SELECT key, owner FROM instance_leases WHERE key IN (SELECT value FROM json_each(?))"
#: An instance's 16 values (`instance_args`), then the owner whose lease fences it: `UPSERT_INSTANCE`
#: with the fence in the statement itself, where a ``SELECT owner`` ran before it (a statement
#: fewer per check-in, about 15k instructions). It changed no row (``changes()``) exactly when the
#: lease is another's or not held (else it inserts or updates the row): then it wrote nothing.
_FENCED_UPSERT_INSTANCE = f"""
    INSERT INTO instances ({INSTANCE_COLUMNS})
    SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16
    WHERE EXISTS (SELECT 1 FROM instance_leases WHERE key = ?1 AND owner = ?17)
    ON CONFLICT {_sql.UPSERT_INSTANCE.split("ON CONFLICT", 1)[1]}"""
_CLAIM_ALARMS = """
    UPDATE alarms SET due_at = ?
    WHERE id IN (SELECT id FROM alarms WHERE due_at <= ? ORDER BY due_at LIMIT ?)
    RETURNING id, key, fire_at, purpose
"""
# An engine that registered some definitions only: the alarms of those, walked
# in due order (a key's ``kind:name:`` prefix is one of the JSON array's values).
_MINE = "EXISTS (SELECT 1 FROM json_each(?) WHERE substr(alarms.key, 1, length(value)) = value)"
_CLAIM_MY_ALARMS = f"""
    UPDATE alarms SET due_at = ?
    WHERE id IN (SELECT id FROM alarms WHERE due_at <= ? AND {_MINE} ORDER BY due_at LIMIT ?)
    RETURNING id, key, fire_at, purpose
"""
_NEXT_MY_ALARM = f"SELECT due_at FROM alarms WHERE {_MINE} ORDER BY due_at LIMIT 1"

# -- queue statements -------------------------------------------------------------------
#
# Job names are bound as one JSON array (``json_each``) so each statement has
# one text and APSW's statement cache prepares it once. ``+name`` keeps the
# planner on the status indexes: a claim walks due rows in order, it must
# never start from every row ever stored under a name.

_INSERT_JOB = """
    INSERT INTO jobs (id, name, params, max_attempts, scheduled_for, priority, correlation_id, tenant_id,
                      created_at, updated_at, unique_key, limit_key)
    VALUES (?,?,?,?,?,?,?,?,?,?,?,?)
"""
# The live job holding a unique key: the enqueue's write transaction (BEGIN
# IMMEDIATE) makes the check and the insert one step for every process.
_FIND_UNIQUE = """
    SELECT id FROM jobs INDEXED BY jobs_unique
    WHERE name = ? AND unique_key = ? AND tenant_id IS ? AND status IN (SELECT value FROM json_each(?))
    ORDER BY id LIMIT 1
"""
_NAMES = "+name IN (SELECT value FROM json_each(?4))"


def _claim_statement(priority_index: str, zero_index: str, only: str) -> str:
    """The claim, walking `priority_index` for rows of priority other than 0 and
    `zero_index` for the rest, of the rows `only` allows."""
    return f"""
    UPDATE jobs SET status = 'running', worker_id = ?3, worker_started_at = ?1, worker_expires_at = ?2,
                    attempt_count = attempt_count + 1, updated_at = ?1
    WHERE id IN (
        SELECT id FROM (SELECT id FROM jobs INDEXED BY {priority_index}
                        WHERE status = 'pending' AND priority <> 0 AND priority > 0 AND priority > ?6
                              AND scheduled_for <= ?1 {only}
                              AND {_NAMES}
                        ORDER BY priority DESC, scheduled_for LIMIT ?5)
        UNION ALL
        SELECT id FROM (SELECT id FROM jobs {zero_index}
                        WHERE status = 'pending' AND scheduled_for <= ?1 AND priority = 0 AND 0 > ?6 {only}
                              AND {_NAMES}
                        ORDER BY scheduled_for LIMIT ?5)
        UNION ALL
        SELECT id FROM (SELECT id FROM jobs INDEXED BY {priority_index}
                        WHERE status = 'pending' AND priority <> 0 AND priority < 0 AND priority > ?6
                              AND scheduled_for <= ?1 {only}
                              AND {_NAMES}
                        ORDER BY priority DESC, scheduled_for LIMIT ?5)
        LIMIT ?5)
    RETURNING id, name, params, attempt_count, max_attempts, scheduled_for, priority, correlation_id, tenant_id
"""


# Rows with a positive priority first, then priority 0 (nearly always all of
# them), then negative ones; each part walks its own index in claim order. The
# planner, without statistics, would rather sort every due row by priority.
_CLAIM_JOBS = _claim_statement("jobs_priority", "", "")
# The claim of a worker that runs limited jobs, and the urgent claim of a start: rows
# without a limit key only, on indexes that hold no other (keyed rows are the limited claim's).
_CLAIM_UNLIMITED = _claim_statement("jobs_priority_unlimited", "INDEXED BY jobs_unlimited", "AND limit_key IS NULL")
# Limited claims visit keys, not rows: a recursive skip-scan of jobs_limited lists the
# keys with pending rows (one seek each), and each key's state is read by its own seeks
# (its running rows, its starts in the window), so a key's backlog costs nothing until
# the key has room. The limits are a JSON array of [name, concurrency, rate, period_ms]
# (null: no such limit); a key belongs to a name if it is the name or starts with it
# and \x1f. :clock is the lease clock's now, :now the caller's.
_LIMITED_KEYS = """
    WITH RECURSIVE lim AS (
        SELECT json_extract(value, '$[0]') AS name, json_extract(value, '$[1]') AS conc,
               json_extract(value, '$[2]') AS rate, json_extract(value, '$[3]') AS period
        FROM json_each(:limits)),
    keys(k) AS (
        SELECT (SELECT min(limit_key) FROM jobs INDEXED BY jobs_limited
                WHERE status = 'pending' AND limit_key IS NOT NULL)
        UNION ALL
        SELECT (SELECT min(limit_key) FROM jobs INDEXED BY jobs_limited
                WHERE status = 'pending' AND limit_key IS NOT NULL AND limit_key > keys.k)
        FROM keys WHERE keys.k IS NOT NULL),
    state AS (
        SELECT keys.k AS k, lim.conc AS conc, lim.rate AS rate, lim.period AS period,
               (SELECT count(*) FROM jobs AS r INDEXED BY jobs_limited_running
                WHERE r.limit_key = keys.k AND r.status = 'running') AS running,
               (SELECT count(*) FROM job_starts AS s
                WHERE s.limit_key = keys.k AND s.started_at > :clock - lim.period) AS started
        FROM keys JOIN lim ON keys.k = lim.name OR substr(keys.k, 1, length(lim.name) + 1) = lim.name || char(31)
        WHERE keys.k IS NOT NULL)
"""
# Keys with room, and how much: concurrency minus running, rate minus recent starts.
_KEYS_WITH_ROOM = (
    _LIMITED_KEYS
    + """
    SELECT k, CASE WHEN conc IS NULL AND rate IS NULL THEN :room
                   ELSE min(coalesce(conc - running, rate - started), coalesce(rate - started, conc - running)) END
              AS room
    FROM state WHERE room > 0
"""
)
# A key's best due rows, in claim order (the index's order: no sort).
_KEY_ROWS = """
    SELECT id, priority, scheduled_for FROM jobs INDEXED BY jobs_limited
    WHERE limit_key = ? AND status = 'pending' AND scheduled_for <= ?
    ORDER BY priority DESC, scheduled_for LIMIT ?
"""
_START_LIMITED = """
    UPDATE jobs SET status = 'running', worker_id = ?3, worker_started_at = ?1, worker_expires_at = ?2,
                    attempt_count = attempt_count + 1, updated_at = ?1
    WHERE id IN (SELECT value FROM json_each(?4)) AND status = 'pending'
    RETURNING id, name, params, attempt_count, max_attempts, scheduled_for, priority, correlation_id, tenant_id,
              limit_key
"""
_INSERT_START = "INSERT INTO job_starts (limit_key, started_at) VALUES (?, ?)"
# Starts older than the longest window (a day) count for nothing.
_FORGET_STARTS = "DELETE FROM job_starts WHERE started_at <= ?"
# When a limited key can next start a row, in the caller's clock: now if it has a due row
# and room; when its oldest start in the window leaves it if only its rate stops it; never
# (NULL) if its concurrency does (a run's end wakes the worker). And the earliest limited
# row not yet due.
_NEXT_LIMITED = (
    _LIMITED_KEYS
    + """
    SELECT min(CASE
        WHEN NOT EXISTS (SELECT 1 FROM jobs AS d INDEXED BY jobs_limited
                         WHERE d.limit_key = state.k AND d.status = 'pending' AND d.scheduled_for <= :now) THEN NULL
        WHEN conc IS NOT NULL AND running >= conc THEN NULL
        WHEN rate IS NOT NULL AND started >= rate
            THEN (SELECT min(s.started_at) FROM job_starts AS s
                  WHERE s.limit_key = state.k AND s.started_at > :clock - period) + period - :clock + :now
        ELSE :now END)
    FROM state
"""
)
_NEXT_LIMITED_DUE = """
    SELECT scheduled_for FROM jobs
    WHERE status = 'pending' AND scheduled_for > ?1 AND limit_key IS NOT NULL
      AND +name IN (SELECT value FROM json_each(?2))
    ORDER BY scheduled_for LIMIT 1
"""
# Starts a row held unstarted, if this worker still holds it at that attempt; a row
# whose cancel was requested while it waited ends cancelled instead.
_START_HELD = """
    UPDATE jobs SET
        status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'running' END,
        error = CASE WHEN cancel_requested THEN ?3 ELSE error END,
        completed_at = CASE WHEN cancel_requested THEN ?1 END,
        worker_expires_at = CASE WHEN cancel_requested THEN NULL ELSE ?2 END,
        worker_started_at = CASE WHEN cancel_requested THEN worker_started_at ELSE ?1 END,
        updated_at = ?1
    WHERE id = ?5 AND worker_id = ?4 AND attempt_count = ?6 AND status = 'running'
    RETURNING status
"""
# A reclaimed row keeps its scheduled_for (long past), so it is claimed again first.
_RECLAIM = """
    UPDATE jobs SET
        status = CASE WHEN cancel_requested THEN 'cancelled'
                      WHEN attempt_count >= max_attempts THEN 'failed' ELSE 'pending' END,
        error = CASE WHEN cancel_requested THEN ?2 WHEN attempt_count >= max_attempts THEN ?3 ELSE error END,
        completed_at = CASE WHEN cancel_requested OR attempt_count >= max_attempts THEN ?1 END,
        worker_expires_at = NULL, updated_at = ?1
    WHERE id IN (SELECT id FROM jobs WHERE status = 'running' AND worker_expires_at <= ?5 LIMIT ?4)
    RETURNING id, name, worker_id, attempt_count, status
"""


_RENEW = """
    UPDATE jobs SET worker_expires_at = ?2 WHERE status = 'running' AND worker_id = ?1
    RETURNING id, cancel_requested
"""
_NEXT_DUE = (
    "SELECT scheduled_for FROM jobs WHERE status = 'pending' AND +name IN (SELECT value FROM json_each(?))"
    " ORDER BY scheduled_for LIMIT 1"
)
# The next due row without a limit key (a worker that runs limited jobs: see _CLAIM_UNLIMITED).
_NEXT_UNLIMITED_DUE = (
    "SELECT scheduled_for FROM jobs INDEXED BY jobs_unlimited WHERE status = 'pending' AND limit_key IS NULL"
    " AND +name IN (SELECT value FROM json_each(?)) ORDER BY scheduled_for LIMIT 1"
)
_NEXT_EXPIRY = "SELECT worker_expires_at FROM jobs WHERE status = 'running' ORDER BY worker_expires_at LIMIT 1"

_CRON_NAMES = "+name IN (SELECT value FROM json_each(?))"
_DUE_CRONS = (
    f"SELECT {CRON_COLUMNS} FROM cron_jobs WHERE enabled = 1 AND next_run_at <= ? AND {_CRON_NAMES}"
    " ORDER BY next_run_at, name"
)
_NEXT_CRON = (
    f"SELECT next_run_at FROM cron_jobs WHERE enabled = 1 AND next_run_at IS NOT NULL AND {_CRON_NAMES}"
    " ORDER BY next_run_at LIMIT 1"
)

_names_encoder = msgspec.json.Encoder()


# The row a job's letter brings back when the job itself was purged: pending, due now, its old id.
_PURGE_EVENT_IDS = """
    DELETE FROM event_ids WHERE (key, event_id) IN (
        SELECT key, event_id FROM event_ids WHERE created_at < ? ORDER BY created_at LIMIT ?)
"""
# A key is never purged while its job is live: a repeat then still finds the job.
_PURGE_JOB_KEYS = """
    DELETE FROM job_keys WHERE (tenant_id, name, key) IN (
        SELECT k.tenant_id, k.name, k.key FROM job_keys AS k
        WHERE k.created_at < ?
          AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = k.job_id AND jobs.status IN ('pending', 'running'))
        ORDER BY k.created_at LIMIT ?)
"""


def _insert_job(job: NewJob, db: apsw.Connection) -> list[tuple[str, bool]]:
    """Insert `job`, which has no idempotency or unique key: one ``later``, the common case."""
    db.execute(_INSERT_JOB, new_job_args(job))
    return [(job.id, True)]


def _insert_jobs(db: apsw.Connection, jobs: Sequence[NewJob]) -> list[tuple[str, bool]]:
    if all(job.idempotency_key is None and job.unique_key is None for job in jobs):
        # No row checks another (a later_many): one executemany, the rows in order.
        db.executemany(_INSERT_JOB, [new_job_args(job) for job in jobs])
        return [(job.id, True) for job in jobs]
    out: list[tuple[str, bool]] = []
    for job in jobs:
        key = (job.tenant_id or "", job.name, job.idempotency_key)
        if job.idempotency_key is not None:
            first = _scalar_args(db, _sql.FIND_JOB_KEY, key)
            if first is not None:
                out.append((first, False))
                continue
        if job.unique_key is not None:
            statuses = _names_encoder.encode(list(job.unique_statuses))
            live = _scalar_args(db, _FIND_UNIQUE, (job.name, job.unique_key, job.tenant_id, statuses))
            if live is not None:
                out.append((live, False))
                continue
        if job.idempotency_key is not None:
            db.execute(_sql.INSERT_JOB_KEY, (*key, job.id, job.created_at)).fetchall()
        db.execute(_INSERT_JOB, new_job_args(job))
        out.append((job.id, True))
    return out


def _limits_json(limits: Sequence[QueueLimit]) -> bytes:
    return _names_encoder.encode([[lim.name, lim.concurrency, lim.rate, lim.period_ms] for lim in limits])


def _claim_limited(
    db: apsw.Connection,
    now: int,
    until: int,
    worker_id: str,
    limits: Sequence[QueueLimit],
    room: int,
    clock: int,
) -> list[ClaimedJob]:
    """The limited claim (`claim_jobs`), in the caller's write transaction: SQLite has one
    writer at a time, so the counts it reads cannot change before it commits."""
    args = {"limits": _limits_json(limits), "clock": clock, "room": room}
    keys = [(k, n) for k, n in db.execute(_KEYS_WITH_ROOM, args)]
    candidates: list[tuple[int, int, str]] = []
    for key, key_room in keys:
        rows = db.execute(_KEY_ROWS, (key, now, min(key_room, room)))
        candidates += [(-priority, due, job_id) for job_id, priority, due in rows]
    if not candidates:
        return []
    best = [job_id for _, _, job_id in sorted(candidates)[:room]]
    taken = [claimed_job(r) for r in db.execute(_START_LIMITED, (now, until, worker_id, _names_encoder.encode(best)))]
    rated = {lim.name for lim in limits if lim.rate is not None}
    starts = [(job.limit_key, clock) for job in taken if job.name in rated]
    if starts:
        db.executemany(_INSERT_START, starts)
        db.execute(_FORGET_STARTS, (clock - MAX_PERIOD_MS,))
    taken.sort(key=lambda job: (-job.priority, job.scheduled_for, job.id))
    return taken


# Completions of many rows in one statement: a VALUES list of (id, worker, attempt,
# result, at) joined to the rows by id, each row fenced by its holder and attempt as
# SETTLE_COMPLETED fences one. A statement's text holds a power of two of rows, so a
# batch of any size is a few statements (200 rows: 128 + 64 + 8) from nine cached texts.
_COMPLETE_CHUNKS = (256, 128, 64, 32, 16, 8, 4, 2, 1)


@functools.cache
def _complete_many(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?)"] * rows)
    return f"""
    UPDATE jobs SET status = 'completed', result = v.column4, error = NULL, completed_at = v.column5,
                    updated_at = v.column5, worker_expires_at = NULL
    FROM (VALUES {values}) AS v
    WHERE jobs.id = v.column1
      AND (jobs.worker_id = v.column2 AND jobs.attempt_count = v.column3 AND jobs.status = 'running') IS TRUE
    RETURNING jobs.id, jobs.attempt_count
"""


def _settle_completed(db: apsw.Connection, completed: Sequence[JobSettlement]) -> set[tuple[str, int]]:
    """Complete the rows of `completed` (in the caller's transaction); the (id, attempt) of those it did."""
    done: set[tuple[str, int]] = set()
    start, left = 0, len(completed)
    for size in _COMPLETE_CHUNKS:
        while left >= size:
            args: list[object] = []
            for s in completed[start : start + size]:
                args += (s.job_id, s.worker_id, s.attempt, s.result, s.at)
            done.update(db.execute(_complete_many(size), args))
            start += size
            left -= size
    return done


@final
class _Batch:
    """One group commit: writers wait in `writers` (see `SqliteStorage.write`), reads on `done`;
    `error` says if the commit failed."""

    __slots__ = ("done", "error", "spoiled", "writers")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: StorageError | None = None
        #: Set when a writer failed partway (see `SqliteStorage.write`): the batch is rolled back whole.
        self.spoiled: StorageError | None = None
        self.writers: list[trio.lowlevel.Task] = []

    def end(self, error: StorageError | None = None) -> None:
        """The batch committed (or failed with `error`): wake its writers and reads."""
        self.error = error
        self.done.set()
        for task in self.writers:
            trio.lowlevel.reschedule(task)
        self.writers.clear()


def _cannot_abort(_: Callable[[], BaseException]) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


def _commit(storage: SqliteStorage, checkin: Checkin, db: apsw.Connection) -> None:
    """`SqliteStorage.commit`'s write, in the caller's transaction: the lease's fence, then `_apply`."""
    owner = checkin.lease_owner
    record = checkin.record
    key = checkin.key
    if (
        owner is not None
        and record is not None
        and checkin.event_id is None
        and checkin.dead_letter is None
        and not checkin.create
    ):
        # A row (and its alarm): fenced in the upsert itself, the first statement that writes.
        no_rows = storage._no_rows
        no_rows(_FENCED_UPSERT_INSTANCE, (*instance_args(key, record), owner))
        if not db.changes():
            raise LeaseLostError(key)  # nothing written: the lease is another's, or not held
        _write_alarm(no_rows, key, checkin.alarm)
        return
    # Fenced by the lease: in this transaction no other engine can take it over.
    if owner is not None and _scalar_args(db, _sql.LEASE_OWNER, (key,)) != owner:
        raise LeaseLostError(key)
    _apply(db, checkin, storage._no_rows)


def _lease_and_load(
    storage: SqliteStorage, key: str, owner: str, now_ms: int, ttl_ms: int, db: apsw.Connection
) -> tuple[bool, tuple[InstanceRecord, Alarm | None] | None]:
    """`SqliteStorage.lease_and_load`'s write, in the caller's transaction."""
    lease_now = storage.lease_now(now_ms)
    # Taken (inserted, or updated where free, expired or ours already) if it changed a row.
    storage._no_rows(_TAKE_LEASE, (key, owner, lease_now + ttl_ms, lease_now))
    if not db.changes():
        return False, None
    # Read in the write's transaction: should it fail to commit, the lease goes with it.
    for row in db.execute(_sql.LOAD, (key,)):
        return True, loaded(row)
    return True, None


def _apply(db: apsw.Connection, checkin: Checkin, no_rows: _NoRows) -> None:
    """Write `checkin` (its lease already checked) in the caller's transaction; `no_rows` runs
    the statements that give no rows (`SqliteStorage._no_rows`)."""
    key = checkin.key
    new = checkin.record if checkin.create else None
    if new is not None:
        no_rows(_sql.INSERT_INSTANCE_IF_ABSENT, instance_args(key, new))
        if not db.changes():
            for row in db.execute(_sql.LOAD, (key,)):
                raise InstanceExistsError(loaded(row))
    if checkin.event_id is not None:
        created = checkin.record.updated_at if checkin.record else 0
        if _scalar_args(db, _sql.INSERT_EVENT_ID, (key, checkin.event_id, created)) is None:
            raise DuplicateEventError(key, checkin.event_id)
    if checkin.dead_letter is not None:
        no_rows(INSERT_DEAD_LETTER, dead_letter_row(checkin.dead_letter))
    record = checkin.record
    if record is None:
        no_rows(_sql.DELETE_INSTANCE, (key,))
        no_rows(_sql.DELETE_ALARM, (key,))
        no_rows(_sql.DELETE_EVENT_IDS, (key,))
        return
    if not checkin.create:
        no_rows(_sql.UPSERT_INSTANCE, instance_args(key, record))
    _write_alarm(no_rows, key, checkin.alarm)


def _write_alarm(no_rows: _NoRows, key: str, alarm: SetAlarm | ClearAlarm | None) -> None:
    """Set or clear `key`'s alarm as a check-in says (``None``: leave it), in the caller's transaction."""
    if isinstance(alarm, SetAlarm):
        no_rows(
            _SET_ALARM, (key, alarm.fire_at, alarm.fire_at if alarm.due_at is None else alarm.due_at, alarm.purpose)
        )
    elif isinstance(alarm, ClearAlarm):
        no_rows(_sql.DELETE_ALARM, (key,))


def _create(
    storage: SqliteStorage, checkin: Checkin, owner: str, now_ms: int, lease_ms: int, simple: bool, db: apsw.Connection
) -> bool:
    """`SqliteStorage.create_instance`'s write, in the caller's transaction: whether it took the
    lease (``False``: another engine holds it, nothing written). Raises `InstanceExistsError`."""
    key, record, alarm = checkin.key, checkin.record, checkin.alarm
    lease_now = storage.lease_now(now_ms)
    lease = (key, owner, lease_now + lease_ms, lease_now)
    if not simple:
        # The batch holds the file's write lock, so what this reads stays true until it
        # commits: a stored instance is answered without taking its lease.
        if _scalar_args(db, _INSTANCE_EXISTS, (key,)) is not None:
            for row in db.execute(_sql.LOAD, (key,)):
                raise InstanceExistsError(loaded(row))
        storage._no_rows(_TAKE_LEASE, lease)
        if not db.changes():
            raise LeaseLostError(key)  # nothing written: another engine holds the lease
        _apply(db, checkin, storage._no_rows)
        return True
    # The row first, as an insert-if-absent: a stored key writes nothing (it is answered
    # with its row, its lease untouched), a new one is looked up no more than that.
    assert record is not None
    db.execute(_sql.INSERT_INSTANCE_IF_ABSENT, instance_args(key, record))
    if not db.changes():
        for row in db.execute(_sql.LOAD, (key,)):
            raise InstanceExistsError(loaded(row))
    # The lease: taken where the upsert changed its row (inserted, or renewed ours or an
    # expired one), refused where it changed none.
    db.execute(_TAKE_LEASE, lease)
    if not db.changes():
        # Another engine holds the lease (it is starting the key its own way): the row
        # is taken back in the same transaction, so nothing of this start is written.
        db.execute(_sql.DELETE_INSTANCE, (key,))
        return False
    # The alarm: a statement that refuses nothing (see `write`).
    if isinstance(alarm, SetAlarm):
        db.execute(
            _SET_ALARM,
            (key, alarm.fire_at, alarm.fire_at if alarm.due_at is None else alarm.due_at, alarm.purpose),
        )
    elif isinstance(alarm, ClearAlarm):
        db.execute(_sql.DELETE_ALARM, (key,))
    return True


def _checkpoint(record: InstanceRecord, owner: str, clear_alarm: bool, db: apsw.Connection) -> None:
    """`SqliteStorage.checkpoint_instance`'s write, in the caller's transaction."""
    key = record.key
    args = (record.status, record.run_count, record.execute_count, record.data, record.updated_at, key, owner)
    db.execute(_CHECKPOINT_INSTANCE, args)
    if not db.changes():
        # Nothing changed: the lease is another's (nothing written), or no row is stored.
        if _scalar_args(db, _sql.LEASE_OWNER, (key,)) != owner:
            raise LeaseLostError(key)
        db.execute(_sql.UPSERT_INSTANCE, instance_args(key, record))
    if clear_alarm:
        db.execute(_sql.DELETE_ALARM, (key,))  # refuses nothing (see `write`)


@final
@final
class _Checkpointer:
    """Copies the WAL back into the database file in a thread of its own, on a connection of its own.

    SQLite's automatic checkpoint runs inside the COMMIT that crosses
    `WAL_AUTOCHECKPOINT_PAGES`, in the committing thread: there it held the Trio loop
    for the checkpoint's two fsyncs (the WAL's, then the file's), a stall of 3 to 30 ms
    every few hundred pages committed, which every timer due meanwhile (a delayed job, an
    alarm) waited for. The writer's connection asks for a checkpoint here instead (its WAL
    hook); a PASSIVE checkpoint needs no lock that a writer holds, so commits go on
    meanwhile. What a commit promises does not change: a commit is in the WAL (and synced
    as ``synchronous`` says) before it returns; a checkpoint only moves committed pages.
    """

    __slots__ = ("_path", "_stop", "_stopping", "_thread", "_wanted")

    def __init__(self, path: str) -> None:
        self._path = path
        self._wanted = threading.Event()
        #: Set by `close`: ends the thread's rest at once.
        self._stop = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def wal_hook(self, db: apsw.Connection, _name: str, pages: int) -> int:
        """The writer's WAL hook (after each commit): past the threshold, wake the checkpoint thread.

        A WAL twice past it (`WAL_WRITER_CHECKPOINT_PAGES`: one large transaction, or commits
        that outran the thread) is checkpointed here, in the committing thread, as SQLite itself
        would: its space comes back at the next commit, whatever the thread is doing, so the WAL
        stays bounded.
        """
        if pages >= WAL_WRITER_CHECKPOINT_PAGES:
            with contextlib.suppress(apsw.Error):  # busy: the thread checkpoints now
                db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
            return apsw.SQLITE_OK
        if pages >= WAL_AUTOCHECKPOINT_PAGES and not self._stopping:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="djobs-sqlite-checkpoint", daemon=True)
                self._thread.start()
            self._wanted.set()
        return apsw.SQLITE_OK

    def _run(self) -> None:
        try:
            # Never creates the file (the writer's connection did), never a URI.
            db = apsw.Connection(self._path, flags=apsw.SQLITE_OPEN_READWRITE)
        except apsw.Error as exc:
            _log.warning("could not open %s to checkpoint it: %s; its WAL grows until it closes", self._path, exc)
            return
        try:
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
            # A connection learns the file is in WAL mode at its first read; until then a
            # checkpoint does nothing.
            db.execute("PRAGMA schema_version").fetchall()
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._stopping:
                    return
                try:
                    db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
                except apsw.Error as exc:  # busy (another process checkpoints): the next commit asks again
                    _log.debug("checkpoint of %s: %s", self._path, exc)
                if self._stop.wait(WAL_CHECKPOINT_REST_S):  # the commits meanwhile wake it once after
                    return
        finally:
            db.close()

    def close(self) -> None:
        """Stop the thread, after the checkpoint it runs now (if any)."""
        self._stopping = True
        self._stop.set()
        thread = self._thread
        if thread is not None:
            self._wanted.set()
            thread.join()


class SqliteStorage:
    """The `Storage` protocol on one APSW connection. Open it with `sqlite()` or `memory()`."""

    #: A write parks its caller uninterruptibly until its group commit ends; the waits a cancel
    #: could end (another connection's write lock, a read behind the open commit) are shielded
    #: for a task marked in `djobs._shield.SHIELDED` (`_wait`, `shields_marked_waits`).
    shields_marked_waits: Final = True

    def __init__(
        self, connection: apsw.Connection, path: str, busy_timeout_ms: int = 5000, anchor_ms: int | None = None
    ) -> None:
        self._db = connection
        #: Runs a statement that gives no rows (an INSERT, UPDATE or DELETE without RETURNING)
        #: on one cursor kept for them: such a statement is done, and the cursor free again,
        #: when ``execute`` returns. `apsw.Connection.execute` makes a cursor per call (and
        #: registers it with the connection): about 3k instructions each (callgrind).
        self._no_rows: _NoRows = connection.cursor().execute
        self.path = path
        #: ``"host"``: leases are judged by the host's monotonic clock (epoch ms at its zero is
        #: `anchor_ms`, shared through the file); ``"engine"``: by the times the engine passes.
        self.lease_clock: Literal["host", "engine"] = "engine" if anchor_ms is None else "host"
        self._anchor_ms = anchor_ms
        self._batch: _Batch | None = None
        #: Reads waiting for the open batch to end; no new batch opens until they have run.
        self._readers = 0
        self._readers_gone = trio.Event()
        self._busy_timeout_ms = busy_timeout_ms
        self._closed = False
        #: The file as SQLite opened it: an absolute path (SQLite resolves a relative one once, at
        #: open), so the checks below and the checkpoint thread name the same file after the
        #: application changes its working directory. `path` stays as given, for messages.
        self._file = (connection.filename or os.path.abspath(path)) if path != ":memory:" else path
        # The file this connection opened (device, inode): a file deleted or replaced
        # under a running engine must not take acknowledgements it never stores.
        self._identity = _file_identity(self._file)
        #: Checkpoints the WAL off the Trio thread (none for an in-memory database, which has no WAL).
        self._checkpointer: _Checkpointer | None = None
        if path != ":memory:":
            self._checkpointer = _Checkpointer(self._file)
            connection.set_wal_hook(self._checkpointer.wal_hook)

    # -- plumbing -----------------------------------------------------------------

    def lease_now(self, now: int) -> int:
        """The lease clock's reading, epoch ms: the host's monotonic clock, or the caller's `now`."""
        if self._anchor_ms is None:
            return now
        return self._anchor_ms + time.monotonic_ns() // 1_000_000

    def _lease_end(self, until: int, now: int | None) -> int:
        """Where a lease that the caller's clock ends at `until` (read at `now`) ends on the lease clock."""
        if self._anchor_ms is None or now is None:
            return until
        return self.lease_now(now) + (until - now)

    def _check_file(self) -> None:
        """Raise `StorageError` if the file at `path` is no longer the one this connection writes."""
        if self._identity is None:
            return
        if _file_identity(self._file) != self._identity:
            raise StorageError(
                f"the database file {self.path} was deleted or replaced while the engine had it open; "
                "nothing more is written to the old file: restart the engine on the file now at that path"
            )

    @staticmethod
    async def _wait(wait: Callable[..., Awaitable[object]], *args: object) -> None:
        """Await ``wait(*args)``, a wait a cancel could end: shielded for a task marked in `SHIELDED`
        (`djobs._shield.shielded_wait`, which raises `StorageError` if the close cancels it)."""
        shields = SHIELDED.get(trio.lowlevel.current_task()) if SHIELDED else None
        if shields is None:
            await wait(*args)
        else:
            await shielded_wait(shields, wait(*args))

    @property
    def connection(self) -> apsw.Connection:
        """The APSW connection, for storage extensions within djobs."""
        return self._db

    async def write(self, fn: Callable[[apsw.Connection], T], *, single: bool = False, at_once: bool = False) -> T:
        """Run `fn` in a write transaction shared with concurrent writers (group commit).

        The first writer opens the transaction and leads a batch; each writer's
        statements run in a savepoint of their own, so a writer whose `fn`
        raises rolls back its own work only. With `single`, `fn` runs at most one
        statement that writes (a ``RETURNING`` one read to its end: SQLite makes
        all its changes at its first step), and raises only
        from it or before it (a read that checks): SQLite undoes a failing
        statement by itself, so no savepoint is needed (two statements fewer
        per write). More statements may follow the first that writes when none of
        them is expected to fail (no fence, no constraint that can refuse): should
        one fail all the same (a full disk, an I/O error), what came before it
        cannot be undone alone, so the whole batch is rolled back and every
        writer in it gets the `StorageError` (`_Batch.spoiled`); nothing is ever
        half written. The leader lets every task that is
        ready run once, so their writes join the batch, then commits. Every
        caller returns (or raises `StorageError`) only after the commit that
        holds its writes: durability is per call, the cost of a commit is
        shared. `fn` must not ``await``. With `at_once`, a writer that opens
        the batch commits it at once, with no checkpoint (the ready tasks'
        writes open the next): for a caller that waits on nothing else and
        checkpoints soon after (the alarm sleeper's claim, whose alarms' handlers
        wait for its commit).
        """
        if self._closed:
            raise StorageError(CLOSED_MESSAGE)
        db = self._db
        batch = self._batch
        leader = batch is None
        if batch is None:
            await self._begin()
            batch = self._batch
            if batch is None:
                batch = self._batch = _Batch()
            else:  # another task opened a batch while we waited for the lock: join it
                leader = False
        outcome: T | BaseException
        if batch.spoiled is not None:
            outcome = batch.spoiled  # rolled back whole: nothing more is written in it
        elif single:
            changes = db.total_changes()
            try:
                outcome = fn(db)
            except BaseException as exc:
                outcome = exc
                if db.total_changes() != changes or not db.in_transaction:
                    # Written partway (or SQLite rolled the transaction back itself): only
                    # the whole batch can be undone.
                    batch.spoiled = StorageError(f"write to {self.path} failed partway: {describe_error(exc)}", exc)
        else:
            outcome = self._in_savepoint(db, fn)
            if isinstance(outcome, StorageError) and not db.in_transaction:
                batch.spoiled = outcome
        # Shielded (no cancel ends these waits): the writes are in the batch, and the caller
        # must learn whether they committed.
        if leader:
            if not at_once:
                await trio.lowlevel.cancel_shielded_checkpoint()  # let the ready tasks add their writes
            self._batch = None
            try:
                self._check_file()
                if batch.spoiled is not None:
                    raise batch.spoiled
            except StorageError as exc:
                with contextlib.suppress(apsw.Error):
                    db.execute("ROLLBACK")
                batch.end(exc)
                raise
            error = None
            try:
                db.execute("COMMIT")
            except apsw.Error as exc:
                if db.in_transaction:
                    with contextlib.suppress(apsw.Error):
                        db.execute("ROLLBACK")
                error = StorageError(f"could not commit to {self.path}: {describe_error(exc)}", exc)
            batch.end(error)
        elif not batch.done.is_set():
            # A shielded wait (a cancel reaches the caller at its next checkpoint), without a cancel
            # scope per writer or a coroutine of its own: `_Batch.end` reschedules this task.
            batch.writers.append(trio.lowlevel.current_task())
            await trio.lowlevel.wait_task_rescheduled(_cannot_abort)
        if batch.error is not None:
            raise batch.error
        if isinstance(outcome, apsw.Error):
            raise StorageError(f"write to {self.path} failed: {describe_error(outcome)}", outcome) from outcome
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _in_savepoint(self, db: apsw.Connection, fn: Callable[[apsw.Connection], T]) -> T | BaseException:
        """Run `fn` in a savepoint of its own: what it wrote is rolled back if it raises."""
        outcome: T | BaseException
        try:
            db.execute("SAVEPOINT djobs_write")
            try:
                outcome = fn(db)
            except BaseException as exc:
                db.execute("ROLLBACK TO djobs_write")
                outcome = exc
            db.execute("RELEASE djobs_write")
        except apsw.Error as exc:  # the savepoint itself failed: the transaction is unusable
            outcome = StorageError(f"write to {self.path} failed: {describe_error(exc)}", exc)
        return outcome

    async def _begin(self) -> None:
        """``BEGIN IMMEDIATE``, waiting for another connection's write lock without blocking Trio.

        SQLite's own busy handler sleeps in the calling thread: a lock held by
        another connection of this very thread (two engines in one process)
        could never be released, and another process's lock would stall the
        event loop. So the handler is off for this statement and the wait is
        a Trio sleep, up to the busy timeout.
        """
        db = self._db
        # Reads waiting for the last batch to end go first: with writers always
        # ready, a new batch would otherwise open before they run, again and again.
        while self._readers:
            await self._wait(self._readers_gone.wait)
        deadline = trio.current_time() + self._busy_timeout_ms / 1000
        delay = 0.001
        while True:
            if self._batch is not None:
                return  # a batch opened meanwhile (by a task that ran while we slept)
            db.setbusytimeout(0)
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except apsw.Error as exc:
                if not isinstance(exc, apsw.BusyError) or trio.current_time() >= deadline:
                    error = f"could not start a transaction on {self.path}: {describe_error(exc)}"
                    raise StorageError(error, exc) from exc
            finally:
                db.setbusytimeout(self._busy_timeout_ms)
            await self._wait(trio.sleep, delay)
            delay = min(delay * 2, 0.05)

    async def read(self, fn: Callable[[apsw.Connection], T]) -> T:
        """Run `fn` outside an explicit transaction (each statement sees a snapshot).

        Never while a group commit's transaction is open: on this one connection
        a read would see the batch's writes before they are committed (and a
        batch whose COMMIT fails takes them back), so a read first waits for the
        open batch to end. `fn` must not ``await``.
        """
        if self._batch is not None:
            self._readers += 1
            if self._readers == 1:
                self._readers_gone = trio.Event()
            try:
                while self._batch is not None:
                    await self._wait(self._batch.done.wait)
            finally:
                self._readers -= 1
                if not self._readers:
                    self._readers_gone.set()
        if self._closed:
            raise StorageError(CLOSED_MESSAGE)
        self._check_file()
        try:
            return fn(self._db)
        except apsw.Error as exc:
            raise StorageError(f"read from {self.path} failed: {describe_error(exc)}", exc) from exc

    # -- instances and alarms -----------------------------------------------------

    async def load(self, key: str) -> tuple[InstanceRecord, Alarm | None] | None:
        def run(db: apsw.Connection) -> tuple[InstanceRecord, Alarm | None] | None:
            for row in db.execute(_sql.LOAD, (key,)):
                return loaded(row)
            return None

        return await self.read(run)

    def commit(self, checkin: Checkin) -> Coroutine[Any, Any, None]:
        # A plain function giving `write`'s coroutine, as `checkpoint_instance`: a Debounce
        # round's commit and each run's are resumed through one coroutine fewer.
        # A row, with or without its alarm (a workflow's checkpoint, a Debounce round, most runs'
        # commits), is one statement that can refuse, after a fence that raises before anything
        # is written: the alarm's REPLACE or DELETE that may follow has no constraint to refuse
        # it, so no savepoint (should it fail all the same, the whole batch is rolled back).
        one = checkin.event_id is None and checkin.dead_letter is None and not checkin.create
        return self.write(partial(_commit, self, checkin), single=one and checkin.record is not None)

    async def create_instance(
        self, checkin: Checkin, owner: str, now_ms: int, lease_ms: int
    ) -> tuple[InstanceRecord, Alarm | None] | None:
        simple = checkin.record is not None and checkin.event_id is None and checkin.dead_letter is None
        try:
            # Without an event id or a dead letter, the insert-if-absent is the one statement that
            # can refuse: no savepoint (the lease refuses by writing nothing, not by raising).
            leased = await self.write(partial(_create, self, checkin, owner, now_ms, lease_ms, simple), single=simple)
        except InstanceExistsError as exists:
            return exists.stored
        if not leased:
            raise LeaseLostError(checkin.key)
        return None

    def checkpoint_instance(
        self, record: InstanceRecord, owner: str, clear_alarm: bool = False
    ) -> Coroutine[Any, Any, None]:
        # A plain function giving `write`'s coroutine: one coroutine fewer for a workflow's
        # checkpoints to pass through (each is awaited in and resumed out of them all).
        # The fence refuses before anything is written, and the alarm's delete refuses
        # nothing: no savepoint, with or without it. A partial, not a closure: no cells.
        return self.write(partial(_checkpoint, record, owner, clear_alarm), single=True)

    async def has_event_id(self, key: str, event_id: str) -> bool:
        def run(db: apsw.Connection) -> bool:
            return any(True for _ in db.execute(_sql.HAS_EVENT_ID, (key, event_id)))

        return await self.read(run)

    async def claim_alarms(
        self, now_ms: int, lease_ms: int, limit: int, prefixes: Sequence[str] | None = None
    ) -> list[Alarm]:
        def run(db: apsw.Connection) -> list[Alarm]:
            # Exhaust the RETURNING cursor inside the transaction: an unfinished
            # one would keep the write lock.
            if prefixes is None:
                rows = list(db.execute(_CLAIM_ALARMS, (now_ms + lease_ms, now_ms, limit)))
            else:
                mine = _names_encoder.encode(list(prefixes))
                rows = list(db.execute(_CLAIM_MY_ALARMS, (now_ms + lease_ms, now_ms, mine, limit)))
            return [alarm_record(r) for r in rows]

        # One statement, its RETURNING read to the end: no savepoint (see `write`). Committed
        # at once: the sleeper checkpoints after it, and the alarms' handlers wait for it.
        return await self.write(run, single=True, at_once=True)

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
        mine = _names_encoder.encode(list(prefixes))

        def run(db: apsw.Connection) -> list[ClaimedAlarm]:
            alarms = [alarm_record(r) for r in db.execute(_CLAIM_MY_ALARMS, (now_ms + lease_ms, now_ms, mine, limit))]
            here = [alarm.key for alarm in alarms if runs_here(alarm.key)]
            if not here:
                return [ClaimedAlarm(alarm) for alarm in alarms]
            # Three statements for the whole batch: the claim, the leases, the rows.
            lease_now = self.lease_now(now_ms)
            until = lease_now + instance_lease_ms
            keys = _names_encoder.encode(here)
            leased = [key for (key,) in db.execute(_ACQUIRE_LEASES, (keys, owner, until, lease_now))]
            stored: dict[str, InstanceRecord] = {}
            if leased:
                for row in db.execute(_LOAD_MANY, (_names_encoder.encode(leased),)):
                    record = instance_record(row)
                    stored[record.key] = record
            taken = set(leased)
            # An instance's alarm is the one claimed: what loading it with its row would give.
            return [
                ClaimedAlarm(alarm, True, None if (found := stored.get(alarm.key)) is None else (found, alarm))
                if alarm.key in taken
                else ClaimedAlarm(alarm)
                for alarm in alarms
            ]

        # The claim is the first statement that writes; the leases' upsert after it refuses
        # nothing (a taken lease is skipped, not refused): no savepoint (see `write`). Committed
        # at once: the sleeper checkpoints after it, and the alarms' handlers wait for it.
        return await self.write(run, single=True, at_once=True)

    async def commit_checkins(
        self, checkins: Sequence[Checkin], release_leases: bool = False
    ) -> list[Exception | None]:
        def run(db: apsw.Connection) -> list[Exception | None]:
            fenced = [c.key for c in checkins if c.lease_owner is not None]
            owners: dict[str, str] = {}
            if fenced:
                owners = dict(db.execute(_LEASE_OWNERS, (_names_encoder.encode(fenced),)))
            errors: list[Exception | None] = []
            # A run's usual check-in (its row and its next alarm, nothing else) goes in with
            # the others' in two `executemany`s, when no key comes twice (so order is moot).
            rows: list[tuple[Any, ...]] = []
            alarms: list[tuple[str, int, int, str]] = []
            plain = len({c.key for c in checkins}) == len(checkins)
            for checkin in checkins:
                # Each fails alone before it writes anything (the fence, a repeated event id);
                # a failing statement fails the whole transaction, and the caller learns it.
                key = checkin.key
                if checkin.lease_owner is not None and owners.get(key) != checkin.lease_owner:
                    errors.append(LeaseLostError(key))
                    continue
                record, alarm = checkin.record, checkin.alarm
                simple = checkin.event_id is None and checkin.dead_letter is None
                if plain and simple and record is not None and (alarm is None or isinstance(alarm, SetAlarm)):
                    rows.append(instance_args(key, record))
                    if alarm is not None:
                        alarms.append(
                            (key, alarm.fire_at, alarm.fire_at if alarm.due_at is None else alarm.due_at, alarm.purpose)
                        )
                    errors.append(None)
                    continue
                try:
                    _apply(db, checkin, self._no_rows)
                except DuplicateEventError as exc:
                    errors.append(exc)
                    continue
                errors.append(None)
            if rows:
                db.executemany(_sql.UPSERT_INSTANCE, rows)
            if alarms:
                db.executemany(_SET_ALARM, alarms)
            if release_leases:
                given_up: dict[str, list[str]] = {}
                for checkin, error in zip(checkins, errors, strict=True):
                    if error is None and checkin.lease_owner is not None:
                        given_up.setdefault(checkin.lease_owner, []).append(checkin.key)
                for owner, keys in given_up.items():
                    db.execute(_RELEASE_LEASES, (owner, _names_encoder.encode(keys)))
            return errors

        return await self.write(run)

    async def acquire_instance_lease(self, key: str, owner: str, now_ms: int, ttl_ms: int) -> bool:
        def run(db: apsw.Connection) -> bool:
            # Take the lease if it is free, expired, or already ours; changes() tells whether we did.
            lease_now = self.lease_now(now_ms)
            db.execute(_TAKE_LEASE, (key, owner, lease_now + ttl_ms, lease_now))
            return bool(db.changes())

        # One statement that writes: no savepoint (see `write`).
        return await self.write(run, single=True)

    def lease_and_load(
        self, key: str, owner: str, now_ms: int, ttl_ms: int
    ) -> Coroutine[Any, Any, tuple[bool, tuple[InstanceRecord, Alarm | None] | None]]:
        # The lease's upsert is the one statement that writes, the read after it refuses
        # nothing: no savepoint (see `write`). A plain function giving `write`'s coroutine.
        return self.write(partial(_lease_and_load, self, key, owner, now_ms, ttl_ms), single=True)

    async def instance_lease_holder(self, key: str, now_ms: int | None = None) -> tuple[str, int] | None:
        shift = 0 if now_ms is None else now_ms - self.lease_now(now_ms)

        def run(db: apsw.Connection) -> tuple[str, int] | None:
            rows = list(db.execute(_sql.LEASE_HOLDER, (key,)))
            return (str(rows[0][0]), int(rows[0][1]) + shift) if rows else None

        return await self.read(run)

    async def renew_instance_leases(
        self, keys: list[str], owner: str, until_ms: int, now_ms: int | None = None
    ) -> None:
        until = self._lease_end(until_ms, now_ms)

        def run(db: apsw.Connection) -> None:
            db.executemany(
                "UPDATE instance_leases SET expires_at = ? WHERE key = ? AND owner = ?",
                [(until, key, owner) for key in keys],
            )

        await self.write(run)

    async def release_instance_leases(self, keys: list[str], owner: str) -> None:
        if not keys:
            return
        given_up = _names_encoder.encode(keys)

        def run(db: apsw.Connection) -> None:
            db.execute(_RELEASE_LEASES, (owner, given_up))

        await self.write(run, single=True)

    async def lease_owners(self, host: str) -> list[str]:
        return await self.read(lambda db: [str(r[0]) for r in db.execute(_HOST_LEASE_OWNERS, (f"{host}:",))])

    async def free_leases(self, owners: Sequence[str], now_ms: int) -> int:
        if not owners:
            return 0
        names = _names_encoder.encode(list(owners))

        def run(db: apsw.Connection) -> int:
            db.execute(_FREE_ALARM_CLAIMS, (names,))
            freed = db.changes()
            db.execute(_FREE_INSTANCE_LEASES, (names,))
            freed += db.changes()
            db.execute(_FREE_JOB_LEASES, (names, self.lease_now(now_ms)))
            return freed + db.changes()

        return await self.write(run)

    async def release_alarms(self, ids: list[int]) -> None:
        def run(db: apsw.Connection) -> None:
            db.executemany("UPDATE alarms SET due_at = fire_at WHERE id = ?", [(i,) for i in ids])

        await self.write(run)

    async def next_alarm_at(self, prefixes: Sequence[str] | None = None) -> int | None:
        def run(db: apsw.Connection) -> int | None:
            args: tuple[bytes, ...] = ()
            if prefixes is None:
                query = "SELECT min(due_at) FROM alarms"
            else:
                query, args = _NEXT_MY_ALARM, (_names_encoder.encode(list(prefixes)),)
            for (due,) in db.execute(query, args):
                return int(due) if due is not None else None
            return None

        return await self.read(run)

    async def healthcheck(self) -> bool:
        try:
            return await self.read(lambda db: list(db.execute("SELECT 1")) == [(1,)])
        except StorageError:
            return False

    # -- listing instances (InstanceLister; workflows' ``list``) -------------------------

    async def list_instances(
        self, kind: str, name: str, tenant_id: str | None, status: str | None, after: str | None, limit: int
    ) -> list[InstanceRecord]:
        sql, args = _sql.list_instances(kind, name, tenant_id, status, after, limit, _sql.SQLITE)

        def run(db: apsw.Connection) -> list[InstanceRecord]:
            return [instance_record(r) for r in db.execute(sql, args)]

        return await self.read(run)

    # -- the job queue (QueueStorage) -------------------------------------------------

    async def request_cancel(self, key: str, reason: str | None, now_ms: int) -> bool:
        def run(db: apsw.Connection) -> bool:
            db.execute(
                "INSERT INTO cancel_requests (key, reason, requested_at) VALUES (?, ?, ?) ON CONFLICT(key) DO NOTHING",
                (key, reason, now_ms),
            )
            return db.changes() > 0

        return await self.write(run)

    async def cancel_requests(self, keys: Sequence[str]) -> dict[str, str | None]:
        def run(db: apsw.Connection) -> dict[str, str | None]:
            sql = "SELECT key, reason FROM cancel_requests WHERE key IN (SELECT value FROM json_each(?))"
            return {r[0]: r[1] for r in db.execute(sql, (_names_encoder.encode(list(keys)),))}

        return await self.read(run) if keys else {}

    async def clear_cancel_request(self, key: str) -> None:
        def run(db: apsw.Connection) -> None:
            db.execute("DELETE FROM cancel_requests WHERE key = ?", (key,))

        await self.write(run)

    async def enqueue_jobs(self, jobs: Sequence[NewJob]) -> list[tuple[str, bool]]:
        if len(jobs) == 1:
            job = jobs[0]
            if job.idempotency_key is None:
                # One job without an idempotency key is one INSERT (its unique check only reads).
                fn = partial(_insert_job, job) if job.unique_key is None else partial(_insert_jobs, jobs=jobs)
                return await self.write(fn, single=True)
        return await self.write(partial(_insert_jobs, jobs=jobs))

    async def start_job(self, job: NewJob, worker_id: str, lease_until: int) -> None:
        row = running_job_args(job, worker_id, self._lease_end(lease_until, job.created_at))
        await self.write(lambda db: db.execute(_sql.INSERT_RUNNING_JOB, row), single=True)

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
        until = self._lease_end(lease_until, now)
        limited = limits_of(names, limits)
        args = (now, until, worker_id, _names_encoder.encode(list(names)), limit, NO_FLOOR if above is None else above)
        if not limited or above is not None:
            # Exhaust the RETURNING cursor inside the transaction: an unfinished one would keep the write lock.
            statement = _CLAIM_JOBS if not limited else _CLAIM_UNLIMITED
            return await self.write(lambda db: [claimed_job(r) for r in db.execute(statement, args)])
        every = every_name_limited(names, limits)

        def run(db: apsw.Connection) -> list[ClaimedJob]:
            # Limited rows first (at most `slots`: they start at once), then the rest of `limit`.
            room = min(slots, limit)
            claimed = _claim_limited(db, now, until, worker_id, every, room, self.lease_now(now)) if room > 0 else []
            if len(claimed) < limit:
                rest = (now, until, worker_id, args[3], limit - len(claimed), args[5])
                claimed += [claimed_job(r) for r in db.execute(_CLAIM_UNLIMITED, rest)]
            return claimed

        return await self.write(run)

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
        until = self._lease_end(lease_until, now)
        # An urgent claim takes no row that carries a limit key.
        claim = (now, until, worker_id, _names_encoder.encode(list(names)), len(held), above)

        def run(db: apsw.Connection) -> HeldStarts:
            started: list[str] = []
            cancelled: list[str] = []
            for job_id, attempt in held:
                for (status,) in db.execute(_START_HELD, (now, until, cancel_error, worker_id, job_id, attempt)):
                    (started if status == "running" else cancelled).append(job_id)
            urgent = [claimed_job(r) for r in db.execute(_CLAIM_UNLIMITED, claim)] if held else []
            return HeldStarts(started=started, cancelled=cancelled, urgent=urgent)

        return await self.write(run)

    async def reclaim_expired(
        self, now: int, cancel_error: bytes, lease_error: bytes, limit: int
    ) -> list[ExpiredLease]:
        def run(db: apsw.Connection) -> list[ExpiredLease]:
            args = (now, cancel_error, lease_error, limit, self.lease_now(now))
            return [expired_lease(r) for r in db.execute(_RECLAIM, args)]

        return await self.write(run)

    async def renew_leases(self, worker_id: str, lease_until: int, now: int | None = None) -> list[tuple[str, bool]]:
        args = (worker_id, self._lease_end(lease_until, now))
        return await self.write(lambda db: [(r[0], bool(r[1])) for r in db.execute(_RENEW, args)])

    async def settle_jobs(self, settlements: Sequence[JobSettlement]) -> list[bool]:
        if len(settlements) == 1:
            # One settlement is one UPDATE (a dead letter its trigger writes is part of it).
            [s] = settlements
            return await self.write(lambda db: [self._settle_one(db, s)], single=True)

        def run(db: apsw.Connection) -> list[bool]:
            # Completions (nearly all of a drain's) in one statement per chunk, the rest one by one.
            completed = [s for s in settlements if s.status == "completed"]
            done = _settle_completed(db, completed) if completed else set()
            return [
                (s.job_id, s.attempt) in done if s.status == "completed" else self._settle_one(db, s)
                for s in settlements
            ]

        return await self.write(run)

    def _settle_one(self, db: apsw.Connection, s: JobSettlement) -> bool:
        """Apply the settlement `s` alone (fenced by its holder and attempt); whether it applied."""
        fence = (s.job_id, s.worker_id, s.attempt)
        if s.status == "completed":
            db.execute(_sql.SETTLE_COMPLETED, (s.result, s.at, s.at, *fence))
        elif s.status == "pending" and s.release:
            db.execute(_sql.SETTLE_RELEASE, (s.error, s.at, s.at, *fence))
        elif s.status == "pending":
            db.execute(_sql.SETTLE_RETRY, (s.error, s.scheduled_for, s.at, s.at, *fence))
        elif s.status == "running":
            assert s.lease_until is not None
            db.execute(_sql.SETTLE_AGAIN, (s.error, self._lease_end(s.lease_until, s.at), s.at, *fence))
        else:
            db.execute(_sql.SETTLE_FINAL, (s.status, s.error, s.at, s.at, *fence))
        return db.changes() > 0

    async def set_progress(
        self, job_id: str, worker_id: str, attempt: int, progress: int, message: str | None, now: int
    ) -> bool:
        def run(db: apsw.Connection) -> bool:
            db.execute(_sql.SET_PROGRESS, (progress, message, now, job_id, worker_id, attempt))
            return db.changes() > 0

        return await self.write(run, single=True)

    def _get_job(self, db: apsw.Connection, job_id: str) -> JobRecord | None:
        for r in db.execute(_sql.GET_JOB, (job_id,)):
            return job_record(r)
        return None

    async def get_job(self, job_id: str) -> JobRecord | None:
        return await self.read(lambda db: self._get_job(db, job_id))

    async def list_jobs(self, where: JobFilter) -> list[JobRecord]:
        sql, args = _sql.list_jobs(where, _sql.SQLITE)
        return await self.read(lambda db: [job_record(r) for r in db.execute(sql, args)])

    async def cancel_job(self, job_id: str, now: int, error: bytes) -> tuple[JobRecord, bool] | None:
        def run(db: apsw.Connection) -> tuple[JobRecord, bool] | None:
            db.execute(_sql.CANCEL_JOB, {"id": job_id, "now": now, "error": error})
            changed = db.changes() > 0
            row = self._get_job(db, job_id)
            return None if row is None else (row, changed)

        return await self.write(run)

    async def retry_job(self, job_id: str, now: int) -> JobRecord | None:
        def run(db: apsw.Connection) -> JobRecord | None:
            db.execute(_sql.RETRY_JOB, {"id": job_id, "now": now})
            return self._get_job(db, job_id)

        return await self.write(run)

    async def next_job_wakeup(
        self, names: Sequence[str], now: int | None = None, limits: Sequence[QueueLimit] = ()
    ) -> int | None:
        limited = limits_of(names, limits)

        def run(db: apsw.Connection) -> int | None:
            encoded = _names_encoder.encode(list(names))
            times = [r[0] for r in db.execute(_NEXT_UNLIMITED_DUE if limited else _NEXT_DUE, (encoded,))]
            # A lease's end, told in the caller's clock: now plus what is left of it.
            shift = 0 if now is None else now - self.lease_now(now)
            times += [r[0] + shift for r in db.execute(_NEXT_EXPIRY)]
            if limited:
                at = 0 if now is None else now
                args = {"limits": _limits_json(every_name_limited(names, limits)), "now": at, "clock": at - shift}
                times += [r[0] for r in db.execute(_NEXT_LIMITED, args) if r[0] is not None]
                times += [r[0] for r in db.execute(_NEXT_LIMITED_DUE, (at, encoded))]
            return min(times) if times else None

        return await self.read(run)

    # -- cron jobs --------------------------------------------------------------------

    async def sync_cron_jobs(self, specs: Sequence[CronSpec]) -> None:
        rows = [cron_spec_args(c) for c in specs]
        await self.write(lambda db: db.executemany(_sql.SYNC_CRON, rows) if rows else None)

    async def due_cron_jobs(self, names: Sequence[str], now: int) -> list[CronRecord]:
        args = (now, _names_encoder.encode(list(names)))
        return await self.read(lambda db: [cron_record(r) for r in db.execute(_DUE_CRONS, args)])

    async def next_cron_at(self, names: Sequence[str]) -> int | None:
        def run(db: apsw.Connection) -> int | None:
            for (at,) in db.execute(_NEXT_CRON, (_names_encoder.encode(list(names)),)):
                return int(at)
            return None

        return await self.read(run)

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
        started = None
        if job is not None and worker_id is not None and lease_until is not None:
            started = running_job_args(job, worker_id, self._lease_end(lease_until, now))

        def run(db: apsw.Connection) -> bool:
            # The compare-and-set and the enqueue share one transaction: the
            # engine that moves next_run_at on is the one whose job is stored.
            db.execute(_sql.FIRE_CRON, fire_cron_args(name, expected_next_run_at, next_run_at, now, job))
            if db.changes() == 0:
                return False
            if started is not None:
                db.execute(_sql.INSERT_RUNNING_JOB, started)
            elif job is not None:
                _insert_jobs(db, [job])
            return True

        return await self.write(run)

    async def list_cron_jobs(self) -> list[CronRecord]:
        return await self.read(lambda db: [cron_record(r) for r in db.execute(_sql.LIST_CRONS)])

    async def set_cron_enabled(self, name: str, enabled: bool, next_run_at: int | None, now: int) -> CronRecord | None:
        def run(db: apsw.Connection) -> CronRecord | None:
            if enabled:
                db.execute(_sql.ENABLE_CRON, (next_run_at, now, name))
            else:
                db.execute(_sql.DISABLE_CRON, (now, name))
            for r in db.execute(_sql.GET_CRON, (name,)):
                return cron_record(r)
            return None

        return await self.write(run)

    async def purge_jobs(
        self, finished_before: int, statuses: Sequence[JobStatusName], limit: int, tenant_id: str | None = None
    ) -> int:
        final = [s for s in statuses if s in FINAL_STATUSES]
        if not final:
            return 0
        marks = ", ".join("?" for _ in final)
        select = f"SELECT id FROM jobs WHERE status IN ({marks}) AND coalesce(completed_at, updated_at) < ?"
        args: list[object] = [*final, finished_before]
        if tenant_id is not None:
            select += " AND tenant_id = ?"
            args.append(tenant_id)
        select += " LIMIT ?"
        args.append(limit)

        def run(db: apsw.Connection) -> int:
            ids = [r[0] for r in db.execute(select, args)]
            if ids:
                id_marks = ", ".join("?" for _ in ids)
                db.execute(f"DELETE FROM job_keys WHERE job_id IN ({id_marks})", ids)
                db.execute(f"DELETE FROM jobs WHERE id IN ({id_marks})", ids)
            return len(ids)

        return await self.write(run)

    # -- dead letters -------------------------------------------------------------------

    async def list_dead_letters(self, where: DeadLetterFilter) -> list[DeadLetter]:
        sql, args = dead_letter_query(where, "?")
        return await self.read(lambda db: [dead_letter(r) for r in db.execute(sql, args)])

    def _get_dead_letter(self, db: apsw.Connection, letter_id: str) -> DeadLetter | None:
        return next((dead_letter(r) for r in db.execute(GET_DEAD_LETTER, (letter_id,))), None)

    async def get_dead_letter(self, letter_id: str) -> DeadLetter | None:
        return await self.read(lambda db: self._get_dead_letter(db, letter_id))

    async def discard_dead_letter(self, letter_id: str) -> bool:
        def run(db: apsw.Connection) -> bool:
            db.execute(DELETE_DEAD_LETTER, (letter_id,))
            return db.changes() > 0

        return await self.write(run)

    async def revive_dead_letter(self, letter_id: str, now: int, lease_owner: str | None) -> Revival:
        def run(db: apsw.Connection) -> Revival:
            letter = self._get_dead_letter(db, letter_id)
            if letter is None:
                return "missing"
            if letter.kind == "job":
                status = _scalar_args(db, "SELECT status FROM jobs WHERE id = ?", (letter.ref,))
                if status is None:
                    db.execute(REVIVE_PURGED_JOB, purged_job_args(letter, now))
                elif status in ("failed", "cancelled"):
                    db.execute(_sql.RETRY_JOB, {"id": letter.ref, "now": now})
                else:
                    return "occupied"
            else:
                revival = revival_decoder.decode(letter.revive or b"")
                held = _scalar_args(
                    db,
                    "SELECT owner FROM instance_leases WHERE key = ? AND expires_at > ? AND owner IS NOT ?",
                    (revival.key, now, lease_owner),
                )
                stored = _scalar_args(db, "SELECT status FROM instances WHERE key = ?", (revival.key,))
                if held is not None or (stored is not None and stored != revival.over):
                    return "occupied"
                record = msgspec.structs.replace(revival.record, updated_at=now)
                db.execute(_sql.UPSERT_INSTANCE, instance_args(revival.key, record))
                db.execute(_SET_ALARM, (revival.key, now, now, revival.purpose))
            db.execute(DELETE_DEAD_LETTER, (letter_id,))
            return "revived"

        return await self.write(run)

    # -- retention ----------------------------------------------------------------------

    async def purge_event_ids(self, before: int, limit: int) -> int:
        def run(db: apsw.Connection) -> int:
            db.execute(_PURGE_EVENT_IDS, (before, limit))
            return db.changes()

        return await self.write(run)

    async def purge_job_keys(self, before: int, limit: int) -> int:
        def run(db: apsw.Connection) -> int:
            db.execute(_PURGE_JOB_KEYS, (before, limit))
            return db.changes()

        return await self.write(run)

    async def purge_dead_letters(self, before: int, limit: int) -> int:
        def run(db: apsw.Connection) -> int:
            sql = "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters WHERE created_at < ? LIMIT ?)"
            db.execute(sql, (before, limit))
            return db.changes()

        return await self.write(run)

    def close(self) -> None:
        self._closed = True
        if self._checkpointer is not None:
            self._checkpointer.close()  # first: the writer's close checkpoints what is left, as the last connection
        self._db.close()


# -- opening -------------------------------------------------------------------------


def _boot_id() -> str:
    """This boot of the host: Linux's boot id; elsewhere the wall time of boot, to the minute
    (a clock step of a minute or more between two processes' starts then splits them)."""
    try:
        with open(_BOOT_ID_PATH) as f:
            return f.read().strip()
    except OSError:
        return f"boot at {round((time.time() - time.monotonic()) / 60)} min"


def host_anchor(db: apsw.Connection) -> int:
    """The epoch ms at this boot's monotonic zero, as the database file records it.

    The first process of a boot to open the file writes it (the wall time now minus the
    monotonic time now); every later one reads it back, so all processes on the host read
    one lease clock, ``anchor + monotonic``, which a step of the wall clock does not move.
    Rows of earlier boots are deleted: every lease they timed ended with their processes.
    """
    boot = _boot_id()
    guess = time.time_ns() // 1_000_000 - time.monotonic_ns() // 1_000_000
    own = not db.in_transaction
    if own:
        db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("INSERT INTO lease_clock (boot_id, anchor_ms) VALUES (?, ?) ON CONFLICT DO NOTHING", (boot, guess))
        db.execute("DELETE FROM lease_clock WHERE boot_id <> ?", (boot,))
        anchor = _scalar_args(db, "SELECT anchor_ms FROM lease_clock WHERE boot_id = ?", (boot,))
        if own:
            db.execute("COMMIT")
    except BaseException:
        if own and db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return int(anchor)


def not_a_file_problem(path: str) -> str | None:
    """Why `path` names something that cannot be a database file, or ``None``: it does not exist
    (SQLite creates it) or is a regular file (through any symlinks). A directory, a device such as
    ``/dev/null``, a FIFO or a socket is refused at open with this, instead of SQLite's "disk I/O
    error" at the first read or write."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None  # missing (or unreadable): SQLite's own error, with `_open_hint`, says why
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "it is a directory, not a database file"
    kinds = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"))
    kind = next((name for test, name in (*kinds, (stat.S_ISSOCK, "a socket")) if test(mode)), "something else")
    return f"it is {kind}, not a regular file; djobs keeps its database in a regular file (or creates one)"


def _open_hint(path: str) -> str:
    """Why SQLite may have refused to open or create `path`, for its error message."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f" (its directory {folder!r} does not exist; create it first)"
    if not os.path.exists(path) and not os.access(folder, os.W_OK | os.X_OK):
        return f" (the file does not exist, and this process may not create files in {folder!r})"
    return ""


def _open_connection(
    path: str, synchronous: Synchronous, busy_timeout_ms: int, lease_clock: LeaseClock = "engine"
) -> SqliteStorage:
    where = "an in-memory database" if path == ":memory:" else repr(path)
    if path != ":memory:" and (problem := not_a_file_problem(path)) is not None:
        raise StorageError(f"cannot open {where}: {problem}")
    try:
        db = apsw.Connection(path)
    except apsw.Error as exc:
        raise StorageError(f"cannot open {where}: {describe_error(exc)}{_open_hint(path)}", exc) from exc
    try:
        db.setbusytimeout(busy_timeout_ms)
        if db.readonly("main"):
            # SQLite opens a file it may not write read-only without a word, and every
            # write would fail later. Refuse it now, before a read of a WAL database
            # leaves -wal and -shm files beside it.
            raise StorageError(
                f"{where} is read-only (file permissions, an immutable file or a read-only file system); "
                "djobs needs to write to its database"
            )
        app_id, version, tables = _inspect(db)
        if app_id not in (0, APPLICATION_ID) or (app_id == 0 and tables):
            raise StorageError(
                f"{where} is not a djobs database (it holds other data); "
                "point djobs at a new file or an existing djobs database"
            )
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"{where} has schema version {version}, newer than this djobs understands "
                f"({SCHEMA_VERSION}); upgrade djobs to open it"
            )
        if path != ":memory:":
            # WAL lets readers (the CLI, other processes) run beside the writer.
            # Switching needs a moment alone with the file, and SQLite answers "busy" at
            # once rather than calling the busy handler: another process may be opening it too.
            mode = _retry_busy(lambda: _scalar(db, "PRAGMA journal_mode=WAL"), busy_timeout_ms)
            if str(mode).lower() != "wal":
                raise StorageError(f"could not switch {where} to WAL journal mode (got {mode!r})")
        # The bundled default on WAL is FULL; NORMAL is durable across process
        # crashes and loses at most the last commits on power loss.
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA foreign_keys=ON")
        # Every writer's statements run in a savepoint of their own (group commit), and a
        # savepoint keeps the pages it changes first in a sub-journal: a temporary file by
        # default, which doubled the CPU cost of a drain's writes. In memory it costs a copy
        # of each page changed; recovery after a crash never reads it (the WAL holds the commits).
        db.execute("PRAGMA temp_store=MEMORY")
        # A bounded WAL: checkpoint every 4 MiB of commits (SQLite's default is ~4 MB), and
        # cut a file that outgrew ~8 MB back to that when it starts over, so one large
        # transaction does not leave a large WAL behind, and a nearly full volume gets its
        # space back (`WAL_SIZE_LIMIT_BYTES`: ordinary commits never cut it). Once
        # open, the checkpoints run in a thread of their own (`_Checkpointer`); SQLite's own
        # is for the migrations, before.
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        if version < SCHEMA_VERSION:
            _migrate(db, version)
        else:
            # Take the write lock once, as a migration does: a file another program
            # keeps locked (a long BEGIN EXCLUSIVE) is refused here, after busy_timeout,
            # rather than failing every write of a running engine.
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
        own = resolve(lease_clock) in ("own", "host")
        anchor = _retry_busy(lambda: host_anchor(db), busy_timeout_ms) if own else None
    except StorageError:
        db.close()
        raise
    except apsw.Error as exc:
        db.close()
        raise StorageError(f"cannot use {where}: {describe_error(exc)}", exc) from exc
    return SqliteStorage(db, path, busy_timeout_ms, anchor)


def _file_identity(path: str) -> tuple[int, int] | None:
    """``(device, inode)`` of the file at `path`; ``None`` for an in-memory database, or no file there."""
    if path == ":memory:" or not path:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _retry_busy(fn: Callable[[], T], timeout_ms: int) -> T:
    """`fn()`, tried again while SQLite says busy, for up to `timeout_ms` (used only at open)."""
    deadline = time.monotonic() + timeout_ms / 1000
    delay = 0.002
    while True:
        try:
            return fn()
        except apsw.BusyError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(delay)  # opening is synchronous already: busy_timeout blocks the same way
            delay = min(delay * 2, 0.1)


def _inspect(db: apsw.Connection) -> tuple[int, int, int]:
    # One read transaction, so the three reads see one snapshot: another process
    # may be creating the schema meanwhile, and tables without the application id
    # would look like another program's database.
    own = not db.in_transaction
    if own:
        db.execute("BEGIN")
    try:
        app_id = _scalar(db, "PRAGMA application_id")
        version = _scalar(db, "PRAGMA user_version")
        tables = _scalar(db, "SELECT count(*) FROM sqlite_master")
    finally:
        if own and db.in_transaction:
            db.execute("COMMIT")
    return int(app_id), int(version), int(tables)


def _scalar_args(db: apsw.Connection, sql: str, args: tuple[Any, ...]) -> Any:
    for row in db.execute(sql, args):
        return row[0]
    return None


def _scalar(db: apsw.Connection, sql: str) -> Any:
    for row in db.execute(sql):
        return row[0]
    return None


def _migrate(db: apsw.Connection, current: int) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        # Re-read inside the write lock: another process may have migrated meanwhile.
        _, current, _ = _inspect(db)
        for version in range(current, SCHEMA_VERSION):
            db.execute(MIGRATIONS[version])
        db.execute(f"PRAGMA application_id={APPLICATION_ID}")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


@final
class _SqliteLayer:
    def __init__(
        self, path: str, synchronous: Synchronous, busy_timeout_ms: int, lease_clock: LeaseClock = "engine"
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self.lease_clock: LeaseClock = lease_clock

    @asynccontextmanager
    async def open(self) -> AsyncIterator[SqliteStorage]:
        storage = _open_connection(self.path, self.synchronous, self.busy_timeout_ms, self.lease_clock)
        try:
            yield storage
        finally:
            storage.close()

    def __repr__(self) -> str:
        return f"sqlite({self.path!r})"


def uri_problem(path: str | os.PathLike[str]) -> str | None:
    """Why `path` reads as a SQLite URI (``file:...``) where a file's path is taken, or ``None``.

    djobs opens SQLite files without URI filenames, as Python's ``sqlite3.connect`` does
    unless given ``uri=True``: ``file::memory:?cache=shared`` would name a file of that
    literal name in the working directory, its parameters never applied. A URI's
    options do not suit an engine's database either (``mode=ro`` and ``immutable``
    cannot take writes; a shared in-memory database lives only as long as the process).
    A `os.PathLike` is a path, whatever its name; a file whose name starts with
    ``file:`` is named ``./file:...`` as a string.
    """
    if not isinstance(path, str) or not path.startswith("file:"):
        return None
    return (
        f"{path!r:.80} is a SQLite URI; djobs takes a database file's path and reads no URI parameters: "
        "give the path (e.g. 'jobs.db'), or ':memory:' for a database in memory "
        "(a file whose name starts with 'file:' is given as './file:...')"
    )


def sqlite(
    path: str | os.PathLike[str] = "djobs.db",
    *,
    synchronous: Synchronous = "NORMAL",
    busy_timeout: int = 5000,
    lease_clock: LeaseClock = "auto",
) -> _SqliteLayer:
    """A storage layer on one SQLite file (created if missing), in WAL mode.

    Args:
        path: The database file's path, or ``":memory:"`` for a database in
            this engine's memory. A SQLite URI (``"file:jobs.db?mode=ro"``) is
            refused, as is a URL: djobs reads no URI parameters, and Python's
            ``sqlite3`` would take one as a file name too unless told
            ``uri=True`` (a file whose name starts with ``file:`` is given as
            ``"./file:..."``, or as a `pathlib.Path`).
        synchronous: ``"NORMAL"`` (default: durable across process crashes) or
            ``"FULL"`` (also across power loss, slower); ``"EXTRA"`` and
            ``"OFF"`` are SQLite's other levels. Nothing else is accepted.
        busy_timeout: Milliseconds to wait for another process's write lock (0 to 10 minutes).
        lease_clock: Which clock judges job and instance leases. ``"host"``:
            the host's monotonic clock, anchored once per boot in the file, so
            every process on the host agrees and a step of the wall clock
            neither ends a lease early nor prolongs one; an engine's clock
            gives only a lease's length. ``"engine"``: the times the engine
            passes. ``"auto"`` (the default): ``"host"``, except under
            ``trio.testing.MockClock``, whose virtual time the host's clock
            cannot follow (there every engine of the test shares the one
            virtual clock). Due times and alarms always follow the engine's
            clock.

    Raises:
        ValidationError: `path` is empty, not text, a URL or a SQLite URI;
            `synchronous` is not one of those four names, `busy_timeout` is
            not an int in range, or `lease_clock` is not one of its three names.

    Examples:
        >>> layer = sqlite("jobs.db")
        >>> layer
        sqlite('jobs.db')
    """
    # `type(...) is str` first: `in` would call a hostile object's own __eq__.
    if type(synchronous) is not str or synchronous not in get_args(Synchronous):
        raise ValidationError(
            f"synchronous must be one of {', '.join(get_args(Synchronous))}, got {safe_repr(synchronous):.80}"
        )
    if isinstance(busy_timeout, bool) or not isinstance(busy_timeout, int) or not 0 <= busy_timeout <= 600_000:
        raise ValidationError(
            f"busy_timeout must be an int of milliseconds from 0 to 600000, got {safe_repr(busy_timeout):.80}"
        )
    if type(lease_clock) is not str or lease_clock not in get_args(LeaseClock):
        raise ValidationError(f"lease_clock must be 'auto', 'host' or 'engine', got {safe_repr(lease_clock):.80}")
    if not isinstance(path, str | os.PathLike):
        raise ValidationError(f"path must be a str or a path, got {safe_repr(path):.80}")
    where = os.fspath(path)
    if not isinstance(where, str):
        raise ValidationError(f"path must be a text path, got {safe_repr(where):.80}")
    if not where:
        raise ValidationError("path is empty; give the database file's path, e.g. djobs.sqlite('jobs.db')")
    problem = os_text_problem(where)
    if problem is not None:
        raise ValidationError(f"sqlite(path={safe_repr(where):.80}): {problem}")
    uri = uri_problem(path)
    if uri is not None:
        raise ValidationError(f"{uri}; djobs.memory() is a store in memory for tests")
    if "://" in where:
        raise ValidationError(
            f"{where!r:.80} is a URL, not a file path; for PostgreSQL use djobs.postgres(dsn), "
            "for SQLite give the file's path"
        )
    return _SqliteLayer(where, synchronous, busy_timeout, lease_clock)
