"""What SQLite and PostgreSQL share about the dead-letter table: its columns and its listing."""

from __future__ import annotations

from ._base import DeadLetter, DeadLetterFilter

#: The table's columns, in the order `dead_letter_row` gives them.
DEAD_LETTER_COLUMNS = "id, kind, name, ref, tenant_id, payload, error, attempts, event_count, revive, created_at"


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
    if where.after is not None:
        # An id no longer stored (discarded meanwhile) ends the listing.
        clauses.append(f"(created_at, id) < (SELECT created_at, id FROM dead_letters WHERE id = {mark})")
        args.append(where.after)
    condition = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters {condition} ORDER BY created_at DESC, id DESC LIMIT {mark}"
    return sql, [*args, where.limit]
