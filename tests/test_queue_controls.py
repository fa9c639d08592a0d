"""Queue controls: unique jobs, on SQLite and PostgreSQL (the latter when configured)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import msgspec
import pytest
import trio
import trio.testing
from postgres_support import require_postgres, throwaway_schema

import djobs
from djobs.storage import StorageLayer
from djobs.testing import failure, open_test_engine, success

START = datetime(2026, 1, 1, tzinfo=UTC)


class Sync(msgspec.Struct):
    account: str
    seconds: int = 1


@pytest.fixture(params=["sqlite", "postgres"])
def storage(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[StorageLayer]:
    if request.param == "sqlite":
        yield djobs.sqlite(f"{tmp_path}/q.db")
        return
    dsn = require_postgres()
    with throwaway_schema(dsn) as schema:
        yield djobs.postgres(dsn, schema=schema)


def make_sync(seen: list[str]) -> djobs.Job[Sync, None]:
    async def sync(params: Sync, ctx: djobs.JobContext) -> None:
        seen.append(params.account)
        await trio.sleep(params.seconds)

    return djobs.Job.make("sync", params=Sync, execute=sync, max_attempts=1)


# -- uniqueness ------------------------------------------------------------------------


@pytest.mark.trio
async def test_a_unique_job_is_enqueued_once_while_pending(
    autojump_clock: trio.testing.MockClock, storage: StorageLayer
) -> None:
    seen: list[str] = []
    sync = make_sync(seen)
    async with open_test_engine([sync], storage=storage) as engine:
        client = engine.client.job(sync)
        first = success(await client.later(Sync("a"), delay="1 minute", unique=True))
        again = success(await client.later(Sync("a"), unique=True))
        other = success(await client.later(Sync("b"), delay="1 minute", unique=True))
        keyed = success(await client.later(Sync("c"), delay="1 minute", unique="a"))
        keyed_again = success(await client.later(Sync("d"), unique="a"))
        assert again == first and other != first and keyed_again == keyed and keyed != first
        plain = success(await client.later(Sync("a"), delay="1 minute"))  # no key: always a new job
        assert plain != first
        await trio.sleep(120)
        assert sorted(seen) == ["a", "a", "b", "c"]
        # Finished: the key is free again.
        after = success(await client.later(Sync("a"), unique=True))
        assert after not in (first, plain)
        await engine.wait_idle()
        assert sorted(seen) == ["a", "a", "a", "b", "c"]


@pytest.mark.trio
async def test_unique_while_running_holds_the_key_until_the_job_ends(
    autojump_clock: trio.testing.MockClock, storage: StorageLayer
) -> None:
    seen: list[str] = []
    sync = make_sync(seen)
    async with open_test_engine([sync], storage=storage) as engine:
        client = engine.client.job(sync)
        running = success(await client.later(Sync("a", 60), unique="acct-a", unique_while="pending_or_running"))
        await trio.sleep(1)
        assert success(await engine.client.jobs.status(running)).status == "running"
        held = success(await client.later(Sync("a"), unique="acct-a", unique_while="pending_or_running"))
        assert held == running
        # "pending" only: a running job does not hold the key. (Delayed, so the worker cannot start
        # it before the second call asks: a started job no longer holds a "pending" key.)
        queued = success(await client.later(Sync("a"), delay="5 minutes", unique="acct-a"))
        assert queued != running
        assert success(await client.later(Sync("a"), delay="5 minutes", unique="acct-a")) == queued
        await trio.sleep(600)
        await engine.wait_idle()
        assert seen == ["a", "a"]


@pytest.mark.trio
async def test_a_unique_key_is_per_tenant(autojump_clock: trio.testing.MockClock, storage: StorageLayer) -> None:
    sync = make_sync([])
    async with open_test_engine([sync], storage=storage) as engine:
        one = success(await engine.client.for_tenant("t1").job(sync).later(Sync("a"), delay="1 hour", unique=True))
        two = success(await engine.client.for_tenant("t2").job(sync).later(Sync("a"), delay="1 hour", unique=True))
        none = success(await engine.client.job(sync).later(Sync("a"), delay="1 hour", unique=True))
        assert len({one, two, none}) == 3
        again = success(await engine.client.for_tenant("t1").job(sync).later(Sync("a"), unique=True))
        assert again == one


@pytest.mark.trio
async def test_unique_with_an_idempotency_key(autojump_clock: trio.testing.MockClock, storage: StorageLayer) -> None:
    sync = make_sync([])
    async with open_test_engine([sync], storage=storage) as engine:
        client = engine.client.job(sync)
        live = success(await client.later(Sync("a"), delay="1 hour", unique=True))
        # The live unique job answers; the idempotency key is not taken by a job never stored.
        assert success(await client.later(Sync("a"), unique=True, idempotency_key="k")) == live
        fresh = success(await client.later(Sync("b"), idempotency_key="k"))
        assert fresh != live
        assert success(await client.later(Sync("c"), idempotency_key="k")) == fresh


@pytest.mark.trio
@pytest.mark.parametrize("bad", [{"unique": 3}, {"unique": ""}, {"unique": True, "unique_while": "running"}])
async def test_bad_unique_options_are_validation_errors(autojump_clock: trio.testing.MockClock, bad: dict) -> None:
    sync = make_sync([])
    async with open_test_engine([sync]) as engine:
        error = failure(await engine.client.job(sync).later(Sync("a"), **bad))
        assert isinstance(error, djobs.ValidationError)
        assert success(await engine.client.jobs.list()) == []


@pytest.mark.trio
async def test_two_engines_enqueueing_one_unique_key_at_once_make_one_job(
    autojump_clock: trio.testing.MockClock, storage: StorageLayer
) -> None:
    sync = make_sync([])
    async with open_test_engine([sync], storage=storage) as a, open_test_engine([sync], storage=storage) as b:
        ids: list[str] = []

        async def enqueue(engine: djobs.testing.TestEngine[None], n: int) -> None:
            for _ in range(n):
                ids.append(success(await engine.client.job(sync).later(Sync("x"), delay="1 hour", unique=True)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(enqueue, a, 20)
            nursery.start_soon(enqueue, b, 20)
        assert len(set(ids)) == 1
        assert len(success(await a.client.jobs.list())) == 1


# -- rows held unstarted ---------------------------------------------------------------


@pytest.mark.trio
async def test_rows_held_unstarted_yield_to_an_urgent_job_and_never_start_once_cancelled_elsewhere(
    autojump_clock: trio.testing.MockClock, storage: StorageLayer
) -> None:
    started: list[str] = []
    gate = trio.Event()

    async def work(params: Sync, ctx: djobs.JobContext) -> None:
        started.append(params.account)
        if params.account == "blocker":
            await gate.wait()

    job = djobs.Job.make("held", params=Sync, execute=work, max_attempts=1)
    # One slot and four rows in hand: the blocker runs, three rows wait leased but unstarted.
    worker = djobs.WorkerOptions(max_concurrency=1, batch_size=4, poll_interval="1 second")
    async with (
        open_test_engine([job], storage=storage, worker=worker) as here,
        open_test_engine([job], storage=storage, worker=None) as elsewhere,
    ):
        other = elsewhere.client.job(job)  # another process's client: this worker hears nothing from it
        success(await other.later(Sync("blocker"), delay=1000, priority=1))
        for account in ["held-1", "held-2", "held-3"]:  # due together, started in the order enqueued
            success(await other.later(Sync(account), delay=1000))
        await trio.sleep(2)
        assert started == ["blocker"]
        assert len(success(await here.client.jobs.list(status="running"))) == 4  # all four leased here

        [held_2] = [j for j in success(await elsewhere.client.jobs.list()) if j.params == Sync("held-2")]
        assert success(await elsewhere.client.jobs.cancel(held_2.id)).status == "cancel_requested"
        urgent = success(await other.later(Sync("urgent"), priority=100))

        gate.set()
        await trio.sleep(1)
        await here.wait_idle()
        assert started == ["blocker", "urgent", "held-1", "held-3"]
        assert success(await here.client.jobs.status(held_2.id)).status == "cancelled"
        assert success(await here.client.jobs.status(urgent)).status == "completed"
        assert [e.instance_id for e in here.tracker.of_type("job.cancelled")] == [held_2.id]
