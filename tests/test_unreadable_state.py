"""A stored state that no longer decodes as the definition's struct (the struct changed
incompatibly since it was written): the run fails at once, without calling user code,
is not retried, and says why in a ``job.failed`` event, for every stateful kind."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

import djobs
from djobs.storage import Checkin, InstanceRecord
from djobs.testing import open_test_engine, success

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
#: A state written by an older definition: ``count`` was a string then.
OLD_STATE = msgspec.json.encode({"count": "three"})


class Counter(msgspec.Struct):
    count: int


async def _store(db: djobs.StorageLayer, kind: str, name: str, status: str, event_count: int = 0) -> None:
    async with db.open() as storage:
        key = f"{kind}:{name}:a"
        now = int(T0.timestamp() * 1000)
        record = InstanceRecord(
            key=key,
            kind=kind,
            name=name,
            instance_id="a",
            status=status,
            state=OLD_STATE,
            event_count=event_count,
            started_at=now,
            created_at=now,
            updated_at=now,
        )
        await storage.commit(Checkin(key=key, record=record))


def _the_failure(engine: djobs.testing.TestEngine, name: str) -> None:
    [failed] = engine.tracker.of_type("job.failed")
    assert failed.job_name == name
    assert failed.data["will_retry"] is False
    assert failed.data["error"]["tag"] == "validation"
    assert failed.data["error"]["message"].startswith("stored state no longer matches Counter")


@pytest.mark.trio
async def test_a_continuous_run_over_an_unreadable_state_fails_without_running(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    ran: list[int] = []
    job = djobs.Continuous.make(
        "counter",
        state=Counter,
        schedule=djobs.every("1 hour"),
        execute=lambda ctx: ran.append(ctx.state.count),
        retry=djobs.Retry(max_attempts=3),
    )
    db = djobs.sqlite(tmp_path / "jobs.db")
    await _store(db, "continuous", "counter", "running")
    async with open_test_engine([job], storage=db, start=T0) as engine:
        triggered = success(await engine.client.continuous(job).trigger(id="a"))
        assert (triggered.outcome, ran) == ("failed", [])
        _the_failure(engine, "counter")


@pytest.mark.trio
async def test_a_task_execute_over_an_unreadable_state_fails_without_running(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    ran: list[int] = []

    def on_event(event: Counter, ctx: djobs.TaskEventContext[Counter]) -> None:
        pass

    job = djobs.Task.make(
        "tally",
        state=Counter,
        event=Counter,
        on_event=on_event,
        execute=lambda ctx: ran.append(1),
        retry=djobs.Retry(max_attempts=3),
    )
    db = djobs.sqlite(tmp_path / "jobs.db")
    await _store(db, "task", "tally", "idle")
    async with open_test_engine([job], storage=db, start=T0) as engine:
        triggered = success(await engine.client.task(job).trigger(id="a"))
        assert (triggered.outcome, ran) == ("failed", [])
        _the_failure(engine, "tally")
        assert success(await engine.client.task(job).status(id="a")).status == "idle"


@pytest.mark.trio
async def test_a_debounce_flush_over_an_unreadable_batch_fails_without_running(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    ran: list[int] = []
    job = djobs.Debounce.make(
        "batcher",
        event=Counter,
        state=Counter,
        on_event=lambda ctx: Counter(ctx.event.count),
        flush_after="1 minute",
        execute=lambda ctx: ran.append(ctx.state.count),
        retry=djobs.Retry(max_attempts=3),
    )
    db = djobs.sqlite(tmp_path / "jobs.db")
    await _store(db, "debounce", "batcher", "debouncing", event_count=2)
    async with open_test_engine([job], storage=db, start=T0) as engine:
        flushed = success(await engine.client.debounce(job).flush(id="a"))
        assert (flushed.flushed, flushed.outcome, ran) == (True, "failed", [])
        _the_failure(engine, "batcher")
