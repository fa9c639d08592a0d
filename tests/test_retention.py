"""Retention: an engine purges finished jobs, idempotency keys, accepted event ids and dead
letters past their ages, in the background, in virtual time; on every storage."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from postgres_support import STORAGE_KINDS, fresh_storage_layer

import djobs
import djobs.storage
from djobs.testing import failure, open_test_engine, success

MINUTE = 60


class Work(msgspec.Struct):
    fail: bool = False


async def work(params: Work, ctx: djobs.JobContext) -> None:
    if params.fail:
        raise RuntimeError("broken")


job = djobs.Job.make("work", params=Work, execute=work, max_attempts=1)


class Ping(msgspec.Struct):
    n: int = 0


debounce = djobs.Debounce.make("pings", event=Ping, flush_after="1 minute", execute=lambda ctx: None)


@pytest.fixture(params=STORAGE_KINDS)
def layer(request: pytest.FixtureRequest) -> Iterator[djobs.storage.StorageLayer]:
    with fresh_storage_layer(request.param) as made:
        yield made


async def statuses(engine: Any) -> dict[str, str]:
    return {j.id: j.status for j in success(await engine.client.jobs.list(limit=1000))}


@pytest.mark.trio
async def test_finished_jobs_are_purged_past_their_age_and_live_ones_never(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    retention = djobs.Retention(completed="1 hour", failed="2 hours", cancelled="1 hour", every="10 minutes")
    async with open_test_engine([job], storage=layer, retention=retention) as engine:
        jobs = engine.client.job(job)
        done = success(await jobs.later(Work()))
        failed = success(await jobs.later(Work(fail=True)))
        cancelled = success(await jobs.later(Work(), delay="1 day"))
        success(await engine.client.jobs.cancel(cancelled))
        waiting = success(await jobs.later(Work(), delay="1 day"))
        await trio.sleep(59 * MINUTE)
        assert await statuses(engine) == {
            done: "completed",
            failed: "failed",
            cancelled: "cancelled",
            waiting: "pending",
        }
        await trio.sleep(12 * MINUTE)  # past an hour, and a pass (every 10 minutes) since
        assert await statuses(engine) == {failed: "failed", waiting: "pending"}
        await trio.sleep(60 * MINUTE)
        assert await statuses(engine) == {waiting: "pending"}
        # The failed job's dead letter has an age of its own (30 days by default).
        assert [le.id for le in success(await engine.client.dead_letters.list())] == [failed]


@pytest.mark.trio
async def test_an_idempotency_key_is_purged_past_its_age_but_never_while_its_job_is_live(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    retention = djobs.Retention(completed=None, idempotency_keys="1 hour", every="10 minutes")
    async with open_test_engine([job], storage=layer, retention=retention) as engine:
        jobs = engine.client.job(job)
        first = success(await jobs.later(Work(), delay="2 hours", idempotency_key="order-1"))
        await trio.sleep(90 * MINUTE)  # the key is older than an hour, but its job still waits
        assert success(await jobs.later(Work(), idempotency_key="order-1")) == first
        await trio.sleep(60 * MINUTE)  # the job ran at 2 hours; a pass since removed its key
        assert success(await engine.client.jobs.status(first)).status == "completed"  # completed=None keeps it
        again = success(await jobs.later(Work(), idempotency_key="order-1"))
        assert again != first


@pytest.mark.trio
async def test_accepted_event_ids_are_purged_past_their_age(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    retention = djobs.Retention(event_ids="1 hour", every="10 minutes")
    async with open_test_engine([debounce], storage=layer, retention=retention) as engine:
        pings = engine.client.debounce(debounce)
        success(await pings.add(id="p", event=Ping(1), event_id="delivery-1"))
        await trio.sleep(30 * MINUTE)
        assert isinstance(
            failure(await pings.add(id="p", event=Ping(1), event_id="delivery-1")), djobs.DuplicateEventError
        )
        await trio.sleep(41 * MINUTE)
        assert success(await pings.add(id="p", event=Ping(1), event_id="delivery-1")).event_count == 1


@pytest.mark.trio
async def test_without_an_age_for_event_ids_they_are_kept(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([debounce], retention=djobs.Retention(every="1 minute")) as engine:
        pings = engine.client.debounce(debounce)
        success(await pings.add(id="p", event=Ping(1), event_id="delivery-1"))
        await trio.sleep(40 * 24 * 3600)
        error = failure(await pings.add(id="p", event=Ping(1), event_id="delivery-1"))
        assert isinstance(error, djobs.DuplicateEventError)


@pytest.mark.trio
async def test_dead_letters_are_purged_past_their_age(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    retention = djobs.Retention(failed=None, dead_letters="1 day", every="1 hour")
    async with open_test_engine([job], storage=layer, retention=retention) as engine:
        failed = success(await engine.client.job(job).later(Work(fail=True)))
        await trio.sleep(23 * 3600)
        assert [le.id for le in success(await engine.client.dead_letters.list())] == [failed]
        await trio.sleep(2.5 * 3600)  # the pass at 25 hours (the first after a day) removed it
        assert success(await engine.client.dead_letters.list()) == []
        assert success(await engine.client.jobs.status(failed)).status == "failed"


@pytest.mark.trio
async def test_the_purge_runs_once_per_interval(autojump_clock: trio.testing.MockClock) -> None:
    """No busy loop: the purge sleeps on the clock layer between passes."""
    calls: list[float] = []

    class Counting(djobs.storage.MemoryStorage):
        async def purge_event_ids(self, before: int, limit: int) -> int:
            calls.append(trio.current_time())
            return await super().purge_event_ids(before, limit)

    retention = djobs.Retention(event_ids="1 day", every="15 minutes")
    layer = djobs.storage.memory()
    async with layer.open() as store:
        store.__class__ = Counting
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(djobs._retention.retention_loop, store, djobs.VirtualClock(), retention)
            await trio.sleep(60 * MINUTE + 1)
            nursery.cancel_scope.cancel()
        assert [round(t - started) for t in calls] == [0, 900, 1800, 2700, 3600]


@pytest.mark.parametrize(
    "bad",
    [{"completed": "0 seconds"}, {"failed": -5}, {"every": "10 ms"}, {"dead_letters": "soon"}],
)
def test_bad_retention_ages_are_validation_errors(bad: dict[str, Any]) -> None:
    with pytest.raises(djobs.ValidationError, match="Retention"):
        djobs.Retention(**bad)
