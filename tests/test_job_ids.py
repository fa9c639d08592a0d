"""Job and run ids are UUIDv7s, unique across every engine on one database, at any clock time djobs takes.

djobs keeps times back to the year 1, and a test may start its virtual clock
there; a UUIDv7 holds no time before 1970. Engines then mint ids of the epoch's
first millisecond, each counting up from its own random start: an engine opened
after another on the same database mints none of its ids again.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from postgres_support import STORAGE_KINDS, drop_schema, new_schema_name, postgres_dsn, storage_layer

import djobs
from djobs._ids import Uuid7
from djobs.testing import open_test_engine, success


class Note(msgspec.Struct):
    n: int


runs: list[str] = []


def note(params: Note, ctx: djobs.JobContext) -> None:
    runs.append(ctx.run_id)


noter = djobs.Job.make("note", params=Note, execute=note)

STARTS = [
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(1960, 6, 1, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC),
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(2026, 1, 1, tzinfo=UTC),
]


def is_uuid7(text: str) -> bool:
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        return False
    return str(parsed) == text and parsed.version == 7 and parsed.variant == uuid.RFC_4122


@pytest.mark.parametrize("kind", STORAGE_KINDS)
@pytest.mark.parametrize("start", STARTS, ids=lambda s: s.isoformat()[:10])
def test_engines_in_turn_on_one_database_mint_distinct_uuid7_job_and_run_ids(
    kind: str, start: datetime, tmp_path: Any
) -> None:
    schema = new_schema_name() if kind == "postgres" else None
    layer = storage_layer(kind, str(tmp_path), schema)
    runs.clear()

    async def one_engine(first: int) -> list[str]:
        async with open_test_engine([noter], storage=layer, start=start) as engine:
            client = engine.client.job(noter)
            ids = [success(await client.later(Note(first + i))) for i in range(3)]
            await engine.wait_idle()
        return ids

    try:
        first = trio.run(one_engine, 0, clock=trio.testing.MockClock(autojump_threshold=0))
        second = trio.run(one_engine, 3, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        if schema is not None:
            drop_schema(postgres_dsn() or "", schema)
    minted = [*first, *second, *runs]
    assert len(runs) == 6, runs  # every job ran once
    assert all(is_uuid7(i) for i in minted), minted
    assert len(set(minted)) == len(minted), minted
    assert first == sorted(first) and second == sorted(second)  # increasing within an engine


def test_ids_before_1970_hold_the_epochs_first_millisecond_and_increase() -> None:
    ids = Uuid7()
    minted = [ids(ms) for ms in (-62_135_596_800_000, -1, -5, 0, 0, 1)]
    assert all(is_uuid7(i) for i in minted) and minted == sorted(minted) and len(set(minted)) == 6
    assert [i[:15] for i in minted[:5]] == ["00000000-0000-7"] * 5
    assert minted[5][:15] == "00000000-0001-7"
