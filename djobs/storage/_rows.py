"""Rows as both dialects read and write them: the column lists and the row ↔ record mappings.

SQLite and PostgreSQL store the same tables with the same columns in the same
order (the types differ: ``INTEGER``/``BLOB`` there, ``bigint``/``bytea``
here), so one description serves both. A mapper takes any sequence a driver
returns (APSW's tuples, psycopg's tuples) in the order of its column list; a
``*_args`` function gives the positional arguments of the matching statement
in ``_sql``. Booleans go through ``bool()``: SQLite hands back 0 and 1,
PostgreSQL ``True`` and ``False``; both drivers give BLOBs as ``bytes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from ._base import Alarm, ClaimedJob, CronRecord, CronSpec, ExpiredLease, InstanceRecord, JobRecord, NewJob

#: ``instances``, in table order: what `instance_record` reads and `instance_args` writes.
INSTANCE_COLUMNS: Final = (
    "key, kind, name, instance_id, tenant_id, status, state, run_count, attempt, event_count,"
    " execute_count, started_at, data, created_at, updated_at, version"
)
#: ``jobs`` as `job_record` reads it (``unique_key`` is written, never read back).
JOB_COLUMNS: Final = (
    "id, name, status, params, result, error, progress, progress_message, worker_id, worker_started_at,"
    " worker_expires_at, attempt_count, max_attempts, scheduled_for, priority, correlation_id, tenant_id,"
    " cancel_requested, created_at, updated_at, completed_at"
)
#: What a claim returns of each row it leases, for `claimed_job` (a limited claim adds ``limit_key``).
CLAIMED_COLUMNS: Final = (
    "id, name, params, attempt_count, max_attempts, scheduled_for, priority, correlation_id, tenant_id"
)
#: What a reclaim returns of each row it takes back, for `expired_lease`.
EXPIRED_COLUMNS: Final = "id, name, worker_id, attempt_count, status"
#: ``cron_jobs``, for `cron_record`.
CRON_COLUMNS: Final = (
    "name, job_name, expression, tz, params, enabled, tenant_id, last_run_at, next_run_at, last_job_id,"
    " created_at, updated_at"
)
#: What an alarm claim returns, for `alarm_record`.
ALARM_COLUMNS: Final = "id, key, fire_at, purpose"


def qualified(columns: str, table: str) -> str:
    """`columns` each prefixed with ``table.`` (for joins and ``RETURNING`` after ``FROM``)."""
    return ", ".join(f"{table}.{c.strip()}" for c in columns.split(","))


#: What `instance_record` copies and fills in: building a 16-field keyword-only struct
#: from keywords costs about twice a copy and 16 attribute stores (msgspec matches each
#: keyword against the fields), and every claimed or loaded instance is built here.
_copy_blank_instance: Final[Callable[[], InstanceRecord]] = getattr(  # noqa: B009  # msgspec's C __copy__
    InstanceRecord(key="", kind="", name="", instance_id="", status=""), "__copy__"
)


def instance_record(r: Sequence[Any]) -> InstanceRecord:
    """An `InstanceRecord` from the first 16 values of `r`, in `INSTANCE_COLUMNS` order."""
    record = _copy_blank_instance()
    record.key = r[0]
    record.kind = r[1]
    record.name = r[2]
    record.instance_id = r[3]
    record.tenant_id = r[4]
    record.status = r[5]
    record.state = r[6]
    record.run_count = r[7]
    record.attempt = r[8]
    record.event_count = r[9]
    record.execute_count = r[10]
    record.started_at = r[11]
    record.data = r[12]
    record.created_at = r[13]
    record.updated_at = r[14]
    record.version = r[15]
    return record


def instance_args(key: str, record: InstanceRecord) -> tuple[Any, ...]:
    """The values of `record` stored under `key`, in `INSTANCE_COLUMNS` order."""
    return (
        key,
        record.kind,
        record.name,
        record.instance_id,
        record.tenant_id,
        record.status,
        record.state,
        record.run_count,
        record.attempt,
        record.event_count,
        record.execute_count,
        record.started_at,
        record.data,
        record.created_at,
        record.updated_at,
        record.version,
    )


def alarm_record(r: Sequence[Any], offset: int = 0, key: str | None = None) -> Alarm:
    """An `Alarm` from `r` in `ALARM_COLUMNS` order starting at `offset`; with `key`, from
    ``id, fire_at, purpose`` (the key is known)."""
    if key is not None:
        return Alarm(id=r[offset], key=key, fire_at=r[offset + 1], purpose=r[offset + 2])
    return Alarm(id=r[offset], key=r[offset + 1], fire_at=r[offset + 2], purpose=r[offset + 3])


def loaded(r: Sequence[Any]) -> tuple[InstanceRecord, Alarm | None]:
    """An instance and its alarm from a row of the ``LOAD`` statement."""
    record = instance_record(r)
    return record, (None if r[16] is None else alarm_record(r, 16, key=record.key))


def job_record(r: Sequence[Any]) -> JobRecord:
    """A `JobRecord` from `r` in `JOB_COLUMNS` order."""
    return JobRecord(
        id=r[0],
        name=r[1],
        status=r[2],
        params=r[3],
        result=r[4],
        error=r[5],
        progress=r[6],
        progress_message=r[7],
        worker_id=r[8],
        worker_started_at=r[9],
        worker_expires_at=r[10],
        attempt_count=r[11],
        max_attempts=r[12],
        scheduled_for=r[13],
        priority=r[14],
        correlation_id=r[15],
        tenant_id=r[16],
        cancel_requested=bool(r[17]),
        created_at=r[18],
        updated_at=r[19],
        completed_at=r[20],
    )


def claimed_job(r: Sequence[Any]) -> ClaimedJob:
    """A `ClaimedJob` from `r` in `CLAIMED_COLUMNS` order."""
    return ClaimedJob(
        id=r[0],
        name=r[1],
        params=r[2],
        attempt=r[3],
        max_attempts=r[4],
        scheduled_for=r[5],
        priority=r[6],
        correlation_id=r[7],
        tenant_id=r[8],
        limit_key=r[9] if len(r) > 9 else None,
    )


def expired_lease(r: Sequence[Any]) -> ExpiredLease:
    """An `ExpiredLease` from `r` in `EXPIRED_COLUMNS` order."""
    return ExpiredLease(id=r[0], name=r[1], worker_id=r[2], attempt=r[3], status=r[4])


def cron_record(r: Sequence[Any]) -> CronRecord:
    """A `CronRecord` from `r` in `CRON_COLUMNS` order."""
    return CronRecord(
        name=r[0],
        job_name=r[1],
        expression=r[2],
        tz=r[3],
        params=r[4],
        enabled=bool(r[5]),
        tenant_id=r[6],
        last_run_at=r[7],
        next_run_at=r[8],
        last_job_id=r[9],
        created_at=r[10],
        updated_at=r[11],
    )


def new_job_args(job: NewJob) -> tuple[Any, ...]:
    """The arguments of an insert of `job` as ``pending``: id, name, params, max_attempts,
    scheduled_for, priority, correlation_id, tenant_id, created_at, updated_at, unique_key, limit_key."""
    return (
        job.id,
        job.name,
        job.params,
        job.max_attempts,
        job.scheduled_for,
        job.priority,
        job.correlation_id,
        job.tenant_id,
        job.created_at,
        job.created_at,
        job.unique_key,
        job.limit_key,
    )


def running_job_args(job: NewJob, worker_id: str, lease_until: int) -> tuple[Any, ...]:
    """The arguments of ``INSERT_RUNNING_JOB``: `job` started at once under `worker_id`'s lease."""
    now = job.created_at
    return (
        job.id,
        job.name,
        job.params,
        job.max_attempts,
        job.scheduled_for,
        job.priority,
        job.correlation_id,
        job.tenant_id,
        worker_id,
        now,
        lease_until,
        now,
        now,
    )


def cron_spec_args(spec: CronSpec) -> dict[str, Any]:
    """The named arguments of ``SYNC_CRON`` for one cron job as the code defines it."""
    return {
        "name": spec.name,
        "job_name": spec.job_name,
        "expression": spec.expression,
        "tz": spec.tz,
        "params": spec.params,
        "tenant_id": spec.tenant_id,
        "first": spec.first_run_at,
        "now": spec.now,
    }


def fire_cron_args(
    name: str, expected_next_run_at: int, next_run_at: int | None, now: int, job: NewJob | None
) -> dict[str, Any]:
    """The named arguments of ``FIRE_CRON``."""
    return {
        "next": next_run_at,
        "now": now,
        "job_id": job.id if job is not None else None,
        "name": name,
        "expected": expected_next_run_at,
    }
