"""The job queue and cron jobs: what every storage guarantees.

Rows are written and read through the `QueueStorage` protocol alone; the
engine-level behaviour built on it is tested in ``test_queue.py`` and
``test_cron_jobs.py``.
"""

from __future__ import annotations

import pytest
import trio

import djobs
from djobs.storage import CronSpec, JobFilter, JobSettlement, NewJob, QueueStorage, StorageLayer

from . import FullStorage

pytestmark = pytest.mark.trio

CANCELLED = b'{"tag":"job_cancelled"}'
LEASE_LOST = b'{"tag":"execution"}'


def job(n: int, *, name: str = "send", at: int = 0, **kw: object) -> NewJob:
    fields: dict[str, object] = {"max_attempts": 3, "created_at": 0, **kw}
    return NewJob(id=f"job-{n:04d}", name=name, params=b'{"n":%d}' % n, scheduled_for=at, **fields)  # type: ignore[arg-type]


def settle(
    job_id: str, status: str, *, worker: str = "w", attempt: int = 1, at: int = 50, **kw: object
) -> JobSettlement:
    return JobSettlement(job_id=job_id, worker_id=worker, attempt=attempt, status=status, at=at, **kw)  # type: ignore[arg-type]


async def test_an_enqueued_job_is_pending_with_what_was_given(storage: FullStorage) -> None:
    row = job(1, at=10, priority=2, correlation_id="order-7", tenant_id="acme", created_at=5, max_attempts=4)
    assert await storage.enqueue_jobs([row]) == [("job-0001", True)]
    stored = await storage.get_job("job-0001")
    assert stored is not None
    assert (stored.status, stored.params, stored.max_attempts, stored.scheduled_for, stored.priority) == (
        "pending",
        b'{"n":1}',
        4,
        10,
        2,
    )
    assert (stored.correlation_id, stored.tenant_id, stored.created_at, stored.updated_at) == ("order-7", "acme", 5, 5)
    assert (stored.attempt_count, stored.progress, stored.worker_id, stored.result, stored.error) == (
        0,
        0,
        None,
        None,
        None,
    )
    assert not stored.cancel_requested and stored.completed_at is None
    assert await storage.get_job("job-9999") is None
    assert await storage.enqueue_jobs([]) == []


async def test_an_idempotency_key_enqueues_once_per_tenant_and_name(storage: FullStorage) -> None:
    rows = [
        job(1, idempotency_key="k"),
        job(2, idempotency_key="k"),  # the same key in the same batch
        job(3, idempotency_key="k", tenant_id="acme"),  # another tenant
        job(4, idempotency_key="k", name="other"),  # another job name
        job(5),
    ]
    assert await storage.enqueue_jobs(rows) == [
        ("job-0001", True),
        ("job-0001", False),
        ("job-0003", True),
        ("job-0004", True),
        ("job-0005", True),
    ]
    assert await storage.enqueue_jobs([job(6, idempotency_key="k")]) == [("job-0001", False)]
    assert await storage.get_job("job-0002") is None and await storage.get_job("job-0006") is None


async def test_claims_take_due_rows_by_priority_then_time_and_count_an_attempt(storage: FullStorage) -> None:
    await storage.enqueue_jobs(
        [
            job(1, at=30),
            job(2, at=10),
            job(3, at=20, priority=5),
            job(4, at=5, priority=-1),
            job(5, at=999),
            job(6, at=0, name="elsewhere"),
            job(7, at=40),
        ]
    )
    [top] = await storage.claim_jobs(100, 60_100, "w", ["send"], 1)
    assert top.id == "job-0003"  # the highest priority, though not the earliest
    [earliest] = await storage.claim_jobs(100, 60_100, "w", ["send"], 1)
    assert earliest.id == "job-0002"  # then priority 0 by time
    claimed = [top, earliest, *await storage.claim_jobs(100, 60_100, "w", ["send"], 1)]
    # Which rows a claim takes is promised; the order of the list is not (the worker sorts it).
    assert sorted(c.id for c in claimed) == ["job-0001", "job-0002", "job-0003"]
    first = next(c for c in claimed if c.id == "job-0003")
    assert (first.attempt, first.max_attempts, first.priority, first.params) == (1, 3, 5, b'{"n":3}')
    stored = await storage.get_job("job-0003")
    assert stored is not None
    assert (stored.status, stored.worker_id, stored.worker_started_at, stored.worker_expires_at) == (
        "running",
        "w",
        100,
        60_100,
    )
    assert stored.attempt_count == 1
    # Then the rest of priority 0, then the negative priority; never the row due later or another name's.
    assert sorted(c.id for c in await storage.claim_jobs(100, 60_100, "w", ["send"], 10)) == ["job-0004", "job-0007"]
    assert [c.id for c in await storage.claim_jobs(100, 60_100, "w", ["send"], 10)] == []
    await storage.enqueue_jobs([job(8, at=50), job(9, at=60, priority=-1)])
    assert [c.id for c in await storage.claim_jobs(100, 60_100, "w", ["send"], 1)] == ["job-0008"]
    both = await storage.claim_jobs(100, 60_100, "w", ["send", "elsewhere"], 10)
    assert sorted(c.id for c in both) == ["job-0006", "job-0009"]


async def test_a_job_can_start_running_in_the_callers_task(storage: FullStorage) -> None:
    await storage.start_job(job(1, created_at=7), "caller", 60_007)
    stored = await storage.get_job("job-0001")
    assert stored is not None
    assert (stored.status, stored.worker_id, stored.attempt_count, stored.worker_expires_at) == (
        "running",
        "caller",
        1,
        60_007,
    )
    assert await storage.claim_jobs(100, 200, "w", ["send"], 10) == []


async def test_settling_is_fenced_by_worker_and_attempt(storage: FullStorage) -> None:
    await storage.enqueue_jobs([job(1), job(2), job(3)])
    await storage.claim_jobs(0, 1000, "w", ["send"], 10)
    applied = await storage.settle_jobs(
        [
            settle("job-0001", "completed", result=b"1"),
            settle("job-0002", "completed", worker="impostor", result=b"2"),
            settle("job-0003", "completed", attempt=2, result=b"3"),
        ]
    )
    assert applied == [True, False, False]
    done = await storage.get_job("job-0001")
    assert done is not None
    assert (done.status, done.result, done.completed_at, done.worker_expires_at) == ("completed", b"1", 50, None)
    for other in ("job-0002", "job-0003"):
        untouched = await storage.get_job(other)
        assert untouched is not None and untouched.status == "running" and untouched.result is None
    # A settled row takes no second settlement.
    assert await storage.settle_jobs([settle("job-0001", "failed", error=b"x")]) == [False]
    assert await storage.settle_jobs([]) == []


async def test_each_way_an_attempt_can_end(storage: FullStorage) -> None:
    await storage.enqueue_jobs([job(n) for n in range(1, 6)])
    await storage.claim_jobs(0, 1000, "w", ["send"], 10)
    assert (
        await storage.settle_jobs(
            [
                settle("job-0001", "failed", error=b"boom"),
                settle("job-0002", "cancelled", error=CANCELLED),
                settle("job-0003", "pending", error=b"flaky", scheduled_for=5000),  # a retry later: the attempt counts
                settle("job-0004", "pending", release=True, error=CANCELLED),  # handed back: it does not
                settle("job-0005", "running", error=b"again", lease_until=9000),  # the next attempt, at once
            ]
        )
        == [True] * 5
    )
    rows = {r.id: r for r in await storage.list_jobs(JobFilter())}
    assert (rows["job-0001"].status, rows["job-0001"].error, rows["job-0001"].completed_at) == ("failed", b"boom", 50)
    assert (rows["job-0002"].status, rows["job-0002"].error) == ("cancelled", CANCELLED)
    retry = rows["job-0003"]
    assert (retry.status, retry.error, retry.scheduled_for, retry.attempt_count) == ("pending", b"flaky", 5000, 1)
    assert retry.completed_at is None and retry.worker_expires_at is None
    back = rows["job-0004"]
    assert (back.status, back.attempt_count, back.worker_started_at, back.error) == ("pending", 0, None, None)
    again = rows["job-0005"]
    assert (again.status, again.attempt_count, again.worker_expires_at, again.error) == ("running", 2, 9000, b"again")
    # The retry is due at its time, not before.
    assert [c.id for c in await storage.claim_jobs(4999, 9999, "w", ["send"], 10)] == ["job-0004"]
    [retried] = await storage.claim_jobs(5000, 9999, "w", ["send"], 10)
    assert (retried.id, retried.attempt) == ("job-0003", 2)


async def test_a_requested_cancel_wins_over_a_retry_or_a_hand_back(storage: FullStorage) -> None:
    await storage.enqueue_jobs([job(1), job(2)])
    await storage.claim_jobs(0, 1000, "w", ["send"], 10)
    for job_id in ("job-0001", "job-0002"):
        running = await storage.cancel_job(job_id, 10, CANCELLED)
        assert running is not None and running.status == "running" and running.cancel_requested
    assert await storage.renew_leases("w", 2000) == [("job-0001", True), ("job-0002", True)]
    assert await storage.settle_jobs(
        [
            settle("job-0001", "pending", error=b"flaky", scheduled_for=5000),
            settle("job-0002", "pending", release=True, error=CANCELLED),
        ]
    ) == [True, True]
    for job_id in ("job-0001", "job-0002"):
        row = await storage.get_job(job_id)
        assert row is not None and row.status == "cancelled" and row.completed_at == 50
    row = await storage.get_job("job-0002")
    assert row is not None and row.error == CANCELLED


async def test_cancel_and_retry(storage: FullStorage) -> None:
    await storage.enqueue_jobs([job(1), job(2)])
    cancelled = await storage.cancel_job("job-0001", 10, CANCELLED)
    assert cancelled is not None
    assert (cancelled.status, cancelled.error, cancelled.completed_at, cancelled.cancel_requested) == (
        "cancelled",
        CANCELLED,
        10,
        False,
    )
    assert await storage.claim_jobs(20, 1000, "w", ["send"], 10) != []  # job 2 only
    again = await storage.cancel_job("job-0001", 30, b"other")  # already final: unchanged
    assert again == cancelled
    assert await storage.cancel_job("job-9999", 30, CANCELLED) is None
    retried = await storage.retry_job("job-0001", 40)
    assert retried is not None
    assert (retried.status, retried.scheduled_for, retried.attempt_count, retried.error, retried.completed_at) == (
        "pending",
        40,
        0,
        None,
        None,
    )
    # Retrying a row that is not failed or cancelled changes nothing.
    running = await storage.get_job("job-0002")
    assert await storage.retry_job("job-0002", 50) == running
    assert await storage.retry_job("job-9999", 50) is None


async def test_expired_leases_are_reclaimed_as_pending_failed_or_cancelled(storage: FullStorage) -> None:
    await storage.enqueue_jobs([job(1, at=1), job(2, at=2, max_attempts=1), job(3, at=3), job(4, at=4)])
    await storage.claim_jobs(10, 1000, "dead", ["send"], 3)
    await storage.cancel_job("job-0003", 20, CANCELLED)
    await storage.claim_jobs(10, 5000, "alive", ["send"], 3)  # job 4, leased longer
    assert await storage.reclaim_expired(999, CANCELLED, LEASE_LOST, 10) == []
    reclaimed = await storage.reclaim_expired(1000, CANCELLED, LEASE_LOST, 10)
    assert sorted((r.id, r.status, r.worker_id, r.attempt) for r in reclaimed) == [
        ("job-0001", "pending", "dead", 1),
        ("job-0002", "failed", "dead", 1),
        ("job-0003", "cancelled", "dead", 1),
    ]
    rows = {r.id: r for r in await storage.list_jobs(JobFilter())}
    assert rows["job-0001"].scheduled_for == 1 and rows["job-0001"].completed_at is None
    assert (rows["job-0002"].error, rows["job-0002"].completed_at) == (LEASE_LOST, 1000)
    assert rows["job-0003"].error == CANCELLED
    assert rows["job-0004"].status == "running"
    # The dead worker's late settlement is refused; the row runs again, attempt 2.
    assert await storage.settle_jobs([settle("job-0001", "completed", worker="dead", result=b"late")]) == [False]
    [again] = await storage.claim_jobs(1000, 2000, "alive", ["send"], 10)
    assert (again.id, again.attempt) == ("job-0001", 2)


async def test_renewing_extends_only_the_workers_own_running_leases(storage: FullStorage) -> None:
    await storage.enqueue_jobs([job(1), job(2), job(3)])
    await storage.claim_jobs(0, 1000, "a", ["send"], 2)
    await storage.claim_jobs(0, 1000, "b", ["send"], 1)
    assert await storage.renew_leases("a", 5000) == [("job-0001", False), ("job-0002", False)]
    assert [r.id for r in await storage.reclaim_expired(1000, CANCELLED, LEASE_LOST, 10)] == ["job-0003"]
    await storage.settle_jobs([settle("job-0001", "completed", worker="a", result=b"")])
    assert await storage.renew_leases("a", 6000) == [("job-0002", False)]
    assert await storage.renew_leases("nobody", 6000) == []


async def test_progress_is_fenced_and_stays_within_0_to_100(storage: FullStorage) -> None:
    await storage.enqueue_jobs([job(1)])
    await storage.claim_jobs(0, 1000, "w", ["send"], 1)
    assert await storage.set_progress("job-0001", "w", 1, 40, "halfway", 20)
    assert not await storage.set_progress("job-0001", "other", 1, 90, "no", 20)
    row = await storage.get_job("job-0001")
    assert row is not None and (row.progress, row.progress_message, row.updated_at) == (40, "halfway", 20)
    with pytest.raises(djobs.StorageError):
        await storage.set_progress("job-0001", "w", 1, 101, None, 30)


async def test_listing_filters_and_pages_in_id_order(storage: FullStorage) -> None:
    await storage.enqueue_jobs(
        [
            job(3, correlation_id="c"),
            job(1, tenant_id="t"),
            job(2, name="other", correlation_id="c"),
            job(4),
        ]
    )
    await storage.claim_jobs(0, 1000, "w", ["other"], 10)
    assert [r.id for r in await storage.list_jobs(JobFilter())] == ["job-0001", "job-0002", "job-0003", "job-0004"]
    assert [r.id for r in await storage.list_jobs(JobFilter(status="pending"))] == ["job-0001", "job-0003", "job-0004"]
    assert [r.id for r in await storage.list_jobs(JobFilter(name="other"))] == ["job-0002"]
    assert [r.id for r in await storage.list_jobs(JobFilter(correlation_id="c"))] == ["job-0002", "job-0003"]
    assert [r.id for r in await storage.list_jobs(JobFilter(tenant_id="t"))] == ["job-0001"]
    page = await storage.list_jobs(JobFilter(limit=2))
    assert [r.id for r in page] == ["job-0001", "job-0002"]
    rest = await storage.list_jobs(JobFilter(after=page[-1].id, limit=2))
    assert [r.id for r in rest] == ["job-0003", "job-0004"]
    assert await storage.list_jobs(JobFilter(status="pending", name="other")) == []


async def test_the_next_wakeup_is_the_earliest_due_row_or_lease_end(storage: FullStorage) -> None:
    assert await storage.next_job_wakeup(["send"]) is None
    await storage.enqueue_jobs([job(1, at=500), job(2, at=100, name="other")])
    assert await storage.next_job_wakeup(["send"]) == 500
    assert await storage.next_job_wakeup(["send", "other"]) == 100
    await storage.claim_jobs(100, 300, "w", ["other"], 10)
    # Any running row's lease end counts (its worker may have died), whatever its name.
    assert await storage.next_job_wakeup(["send"]) == 300


def cron_spec(name: str = "nightly", *, expression: str = "0 3 * * *", first: int = 1000, now: int = 0) -> CronSpec:
    return CronSpec(
        name=name,
        job_name="send",
        expression=expression,
        tz="UTC",
        params=b"{}",
        tenant_id=None,
        first_run_at=first,
        now=now,
    )


async def test_cron_jobs_are_synced_fired_once_and_listed(storage: FullStorage) -> None:
    await storage.sync_cron_jobs([cron_spec(), cron_spec("hourly", expression="0 * * * *", first=500)])
    assert [c.name for c in await storage.list_cron_jobs()] == ["hourly", "nightly"]
    assert await storage.next_cron_at(["nightly", "hourly"]) == 500
    assert await storage.next_cron_at(["nightly"]) == 1000
    assert await storage.due_cron_jobs(["nightly", "hourly"], 999) != []
    assert [c.name for c in await storage.due_cron_jobs(["nightly", "hourly"], 1000)] == ["hourly", "nightly"]
    # An unchanged schedule keeps its stored next run; a changed one takes the new first run.
    await storage.sync_cron_jobs([cron_spec(first=7777), cron_spec("hourly", expression="30 * * * *", first=800)])
    rows = {c.name: c for c in await storage.list_cron_jobs()}
    assert (rows["nightly"].next_run_at, rows["hourly"].next_run_at, rows["hourly"].expression) == (
        1000,
        800,
        "30 * * * *",
    )
    fired = job(1, at=1000)
    assert await storage.fire_cron("nightly", 1000, 2000, 1001, fired)
    assert not await storage.fire_cron("nightly", 1000, 2000, 1002, job(2, at=1000))  # someone was first
    assert await storage.get_job("job-0001") is not None and await storage.get_job("job-0002") is None
    nightly = next(c for c in await storage.list_cron_jobs() if c.name == "nightly")
    assert (nightly.next_run_at, nightly.last_run_at, nightly.last_job_id) == (2000, 1001, "job-0001")
    assert await storage.fire_cron("nightly", 2000, 3000, 2001, None)  # a skipped fire: no job
    nightly = next(c for c in await storage.list_cron_jobs() if c.name == "nightly")
    assert (nightly.next_run_at, nightly.last_job_id) == (3000, "job-0001")


async def test_a_disabled_cron_job_is_never_due(storage: FullStorage) -> None:
    await storage.sync_cron_jobs([cron_spec()])
    disabled = await storage.set_cron_enabled("nightly", False, None, 5)
    assert disabled is not None and not disabled.enabled and disabled.updated_at == 5
    assert await storage.due_cron_jobs(["nightly"], 10_000) == []
    assert await storage.next_cron_at(["nightly"]) is None
    assert not await storage.fire_cron("nightly", 1000, 2000, 1001, job(1))
    enabled = await storage.set_cron_enabled("nightly", True, 4000, 6)
    assert enabled is not None and enabled.enabled and enabled.next_run_at == 4000
    assert await storage.set_cron_enabled("missing", True, 1, 1) is None
    await storage.sync_cron_jobs([])


async def test_two_processes_never_claim_one_job(shared_layer: StorageLayer) -> None:
    async with shared_layer.open() as one, shared_layer.open() as two:
        assert isinstance(one, QueueStorage) and isinstance(two, QueueStorage)
        await one.enqueue_jobs([job(n) for n in range(300)])
        claimed: list[str] = []

        async def claim(storage: QueueStorage, worker: str) -> None:
            while batch := await storage.claim_jobs(10, 60_000, worker, ["send"], 13):
                claimed.extend(j.id for j in batch)
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            for n in range(3):
                nursery.start_soon(claim, one, f"one-{n}")
                nursery.start_soon(claim, two, f"two-{n}")
        assert len(claimed) == len(set(claimed)) == 300


async def test_two_processes_fire_one_cron_time_once(shared_layer: StorageLayer) -> None:
    async with shared_layer.open() as one, shared_layer.open() as two:
        assert isinstance(one, QueueStorage) and isinstance(two, QueueStorage)
        await one.sync_cron_jobs([cron_spec()])
        await two.sync_cron_jobs([cron_spec(first=5555)])  # the second engine to open keeps the stored time
        wins: list[str] = []

        async def fire(storage: QueueStorage, n: int) -> None:
            if await storage.fire_cron("nightly", 1000, 2000, 1000, job(n, at=1000)):
                wins.append(f"job-{n:04d}")

        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(fire, one if n % 2 else two, n)
        assert len(wins) == 1
        assert [r.id for r in await one.list_jobs(JobFilter())] == wins


async def test_a_held_row_starts_only_while_its_holder_still_holds_it(storage: FullStorage) -> None:
    await storage.enqueue_jobs([job(1, at=1), job(2, at=2), job(3, at=3), job(4, at=4)])
    [one] = await storage.claim_jobs(10, 1000, "w", ["send"], 1)
    two_three = await storage.claim_jobs(10, 5000, "w", ["send"], 2)
    assert (one.id, sorted(j.id for j in two_three)) == ("job-0001", ["job-0002", "job-0003"])
    await storage.cancel_job("job-0002", 20, CANCELLED)  # cancelled elsewhere while held
    # The holder stalled past job 1's lease: another worker reclaimed it and took it (attempt 2).
    assert [r.id for r in await storage.reclaim_expired(1000, CANCELLED, LEASE_LOST, 10)] == ["job-0001"]
    [taken] = await storage.claim_jobs(1000, 9000, "v", ["send"], 1)
    assert (taken.id, taken.attempt) == ("job-0001", 2)
    # Enqueued after the claims: an urgent row, and one below the floor.
    await storage.enqueue_jobs([job(9, at=1003, priority=9), job(10, at=1003, priority=-1)])
    held = [("job-0001", 1), ("job-0002", 1), ("job-0003", 1)]
    starts = await storage.start_held_jobs("w", held, 1500, 9500, CANCELLED, ["send"], 0)
    assert (starts.started, starts.cancelled) == (["job-0003"], ["job-0002"])
    assert [(u.id, u.attempt, u.priority) for u in starts.urgent] == [("job-0009", 1, 9)]
    rows = {r.id: r for r in await storage.list_jobs(JobFilter())}
    started = rows["job-0003"]
    assert (started.status, started.worker_started_at, started.worker_expires_at) == ("running", 1500, 9500)
    cancelled = rows["job-0002"]
    assert (cancelled.status, cancelled.error, cancelled.completed_at) == ("cancelled", CANCELLED, 1500)
    lost = rows["job-0001"]
    assert (lost.status, lost.worker_id, lost.attempt_count, lost.worker_expires_at) == ("running", "v", 2, 9000)
    assert (rows["job-0009"].status, rows["job-0009"].worker_id) == ("running", "w")
    assert (rows["job-0004"].status, rows["job-0010"].status) == ("pending", "pending")
    empty = await storage.start_held_jobs("w", [], 1600, 9600, CANCELLED, ["send"], 0)
    assert (empty.started, empty.cancelled, empty.urgent) == ([], [], [])
