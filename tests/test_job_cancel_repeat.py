"""A queued job cancelled twice: the second cancel says an earlier one was accepted
(``already_requested``), as a workflow's repeated cancel does, whenever it comes.

Before, a repeated cancel of a pending job answered exactly as the cancel that cancelled it.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
from postgres_support import STORAGE_KINDS, drop_schema, new_schema_name, postgres_dsn, storage_layer

import djobs
from djobs.storage import QueueStorage
from djobs.testing import open_test_engine, success


class Nothing(msgspec.Struct):
    pass


async def forever(params: Nothing, ctx: djobs.JobContext) -> None:
    await trio.sleep_forever()


job = djobs.Job.make("forever", params=Nothing, execute=forever)


def run_on(kind: str, tmp_path: Any, scenario: Any) -> None:
    schema = new_schema_name() if kind == "postgres" else None
    try:
        trio.run(
            scenario, storage_layer(kind, str(tmp_path), schema), clock=trio.testing.MockClock(autojump_threshold=0)
        )
    finally:
        if schema is not None:
            drop_schema(postgres_dsn() or "", schema)


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_pending_job_cancelled_again_says_the_first_cancel_was_accepted(kind: str, tmp_path: Any) -> None:
    async def scenario(layer: djobs.storage.StorageLayer) -> None:
        async with open_test_engine([job], storage=layer) as engine:
            jobs = engine.client.jobs
            job_id = success(await engine.client.job(job).later(Nothing(), delay="1 hour"))
            assert success(await jobs.cancel(job_id)) == djobs.CancelResult(job_id, "cancelled")
            again = success(await jobs.cancel(job_id))
            assert again == djobs.CancelResult(job_id, "cancelled", already_requested=True)
            assert engine.tracker.count("job.cancelled") == 1

    run_on(kind, tmp_path, scenario)


class Id(str):
    """An id of a str subclass (a StrEnum's member, say): the same job as its text."""

    __slots__ = ()


@pytest.mark.parametrize("kind", STORAGE_KINDS)
@pytest.mark.parametrize("subclass", [False, True])
def test_two_cancels_at_once_cancel_once(kind: str, tmp_path: Any, subclass: bool) -> None:
    async def scenario(layer: djobs.storage.StorageLayer) -> None:
        async with open_test_engine([job], storage=layer) as engine:
            job_id = success(await engine.client.job(job).later(Nothing(), delay="1 hour"))
            answers: list[djobs.CancelResult] = []

            async def cancel(given: str) -> None:
                answers.append(success(await engine.client.jobs.cancel(given)))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel, job_id)
                nursery.start_soon(cancel, Id(job_id) if subclass else job_id)
            assert sorted(a.already_requested for a in answers) == [False, True], answers
            assert {a.status for a in answers} == {"cancelled"}

    run_on(kind, tmp_path, scenario)


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_running_job_cancelled_again_says_so_here_and_elsewhere(kind: str, tmp_path: Any) -> None:
    async def scenario(layer: djobs.storage.StorageLayer) -> None:
        async with open_test_engine([job], storage=layer) as engine:
            jobs = engine.client.jobs
            # Running here: the first cancel interrupts it, the second finds it cancelled.
            here = success(await engine.client.job(job).later(Nothing()))
            await trio.sleep(1)
            assert success(await jobs.status(here)).status == "running"
            assert success(await jobs.cancel(here)) == djobs.CancelResult(here, "cancelled")
            assert success(await jobs.cancel(here)) == djobs.CancelResult(here, "cancelled", already_requested=True)
            # Running in another worker: both cancels are requests, the second a repeat.
            elsewhere = success(await engine.client.job(job).later(Nothing(), delay="1 hour"))
            storage = engine.storage
            assert isinstance(storage, QueueStorage)
            now = engine.clock.now_ms() + 3_600_000
            await storage.claim_jobs(now, now + 60_000, "elsewhere", ["forever"], 1)
            assert success(await jobs.cancel(elsewhere)) == djobs.CancelResult(elsewhere, "cancel_requested")
            repeat = success(await jobs.cancel(elsewhere))
            assert repeat == djobs.CancelResult(elsewhere, "cancel_requested", already_requested=True)

    run_on(kind, tmp_path, scenario)


@pytest.mark.parametrize("kind", STORAGE_KINDS)
@pytest.mark.parametrize("running", [False, True])
def test_two_cancels_at_once_from_two_processes_cancel_once(kind: str, tmp_path: Any, running: bool) -> None:
    """Two engines on one database (as two processes): each reads the job before either writes,
    and only the cancel whose write changed the row says it was the first
    (``already_requested=False``); the other is a repeat. The job pending, or running in a third
    worker (both cancels then requests)."""

    async def scenario(layer: djobs.storage.StorageLayer) -> None:
        async with (
            open_test_engine([job], storage=layer, worker=None) as one,
            open_test_engine([job], storage=layer, worker=None) as other,
        ):
            for round in range(5):
                job_id = success(await one.client.job(job).later(Nothing(), delay="1 hour"))
                if running:
                    storage = one.storage
                    assert isinstance(storage, QueueStorage)
                    now = one.clock.now_ms() + 3_600_000
                    assert [c.id for c in await storage.claim_jobs(now, now + 60_000, "third", ["forever"], 1)] == [
                        job_id
                    ]
                answers: list[djobs.CancelResult] = []

                async def cancel(engine: Any, job_id: str = job_id, answers: list[Any] = answers) -> None:
                    answers.append(success(await engine.client.jobs.cancel(job_id)))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(cancel, one)
                    nursery.start_soon(cancel, other)
                assert sorted(a.already_requested for a in answers) == [False, True], (round, answers)
                assert {a.status for a in answers} == {"cancel_requested" if running else "cancelled"}
                assert (one.tracker.count("job.cancelled") + other.tracker.count("job.cancelled")) == (
                    0 if running else round + 1
                )

    run_on(kind, tmp_path, scenario)
