"""What SQLite and PostgreSQL share about the dead-letter table: its columns, its statements
(in SQLite's placeholders; PostgreSQL's through ``_sql.Dialect.text``), its rows and its listing.

A letter written under an id already stored replaces the stored one, every column, on both
dialects: `INSERT_DEAD_LETTER` for a check-in's letter, and each dialect's ``jobs`` trigger
for a job's (SQLite's ``INSERT OR REPLACE``, PostgreSQL's ``ON CONFLICT (id) DO UPDATE`` of
every column since its schema version 10). See `DeadLetterStorage` for why that is the rule.
The locking of a revival stays with each dialect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec

from ._base import DeadLetter, DeadLetterFilter, InstanceRevival, JobRevival

#: The table's columns, in the order `dead_letter_row` gives them.
DEAD_LETTER_COLUMNS = "id, kind, name, ref, tenant_id, payload, error, attempts, event_count, revive, created_at"
#: A check-in's letter; one stored under its id is replaced, every column (`DeadLetterStorage`).
INSERT_DEAD_LETTER: Final = f"""
    INSERT INTO dead_letters ({DEAD_LETTER_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)
    ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, name = excluded.name, ref = excluded.ref,
        tenant_id = excluded.tenant_id, payload = excluded.payload, error = excluded.error,
        attempts = excluded.attempts, event_count = excluded.event_count, revive = excluded.revive,
        created_at = excluded.created_at
"""
GET_DEAD_LETTER: Final = f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ?"
DELETE_DEAD_LETTER: Final = "DELETE FROM dead_letters WHERE id = ?"
#: A job's row put back by the retry of its letter when the row was purged since (`purged_job_args`).
REVIVE_PURGED_JOB: Final = """
    INSERT INTO jobs (id, name, params, max_attempts, scheduled_for, priority, correlation_id, tenant_id,
                      created_at, updated_at, limit_key)
    VALUES (?,?,?,?,?,?,?,?,?,?,?)
"""
#: Reads an instance letter's ``revive``.
revival_decoder: Final = msgspec.json.Decoder(InstanceRevival)
_job_revival_decoder = msgspec.json.Decoder(JobRevival)


def dead_letter(r: Sequence[Any]) -> DeadLetter:
    """A row of `DEAD_LETTER_COLUMNS` as a `DeadLetter`."""
    revive = r[9].encode() if isinstance(r[9], str) else r[9]  # SQLite's trigger writes json_object's text
    return DeadLetter(
        id=r[0],
        kind=r[1],
        name=r[2],
        ref=r[3],
        tenant_id=r[4],
        payload=r[5],
        error=r[6],
        attempts=r[7],
        event_count=r[8],
        revive=revive,
        created_at=r[10],
    )


def purged_job_args(letter: DeadLetter, now: int) -> tuple[object, ...]:
    """The arguments of `REVIVE_PURGED_JOB` for a job's `letter`: the job again, due `now`."""
    how = _job_revival_decoder.decode(letter.revive or b"{}")
    return (
        letter.ref,
        letter.name,
        letter.payload or b"{}",
        how.max_attempts,
        now,
        how.priority,
        how.correlation_id,
        letter.tenant_id,
        now,
        now,
        how.limit_key,
    )


def dead_letter_row(letter: DeadLetter) -> tuple[object, ...]:
    """`letter` as the values of an ``INSERT`` of `DEAD_LETTER_COLUMNS`."""
    return (
        letter.id,
        letter.kind,
        letter.name,
        letter.ref,
        letter.tenant_id,
        letter.payload,
        letter.error,
        letter.attempts,
        letter.event_count,
        letter.revive,
        letter.created_at,
    )


def dead_letter_query(where: DeadLetterFilter, mark: str) -> tuple[str, list[object]]:
    """The ``SELECT`` of `list_dead_letters` and its arguments, in a dialect's parameter `mark`
    (``?`` or ``%s``); the statement is otherwise portable."""
    clauses: list[str] = []
    args: list[object] = []
    for column, value in (("kind", where.kind), ("name", where.name), ("tenant_id", where.tenant_id)):
        if value is not None:
            clauses.append(f"{column} = {mark}")
            args.append(value)
    if where.after is not None and where.after_created_at is not None:
        clauses.append(f"(created_at, id) < ({mark}, {mark})")
        args += [where.after_created_at, where.after]
    elif where.after is not None:
        # An id no longer stored (discarded meanwhile) ends the listing.
        clauses.append(f"(created_at, id) < (SELECT created_at, id FROM dead_letters WHERE id = {mark})")
        args.append(where.after)
    condition = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters {condition} ORDER BY created_at DESC, id DESC LIMIT {mark}"
    return sql, [*args, where.limit]
