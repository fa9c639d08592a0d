"""The job queue: now / later / batch, status / cancel / retry / list, the worker and its leases."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing
from returns.context import RequiresContextFutureResult
from returns.future import FutureResult
from returns.io import IOFailure
from returns.result import Failure, Result, Success

import djobs
from djobs.storage import NewJob, QueueStorage
from djobs.testing import failure, open_test_engine, success

START = datetime(2026, 1, 1, tzinfo=UTC)


class Order(msgspec.Struct):
    order_id: str
    amount: int = 0


class Receipt(msgspec.Struct):
    order_id: str
    total: int


class Recorder:
    """What the jobs under test saw: (order id, attempt, virtual time)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, datetime]] = []

    def times(self, order_id: str) -> list[datetime]:
        return [when for oid, _, when in self.calls if oid == order_id]


def make_jobs(rec: Recorder) -> tuple[djobs.Job[Order, Receipt], djobs.Job[Order, Receipt], djobs.Job[Order, None]]:
    async def charge(params: Order, ctx: djobs.JobContext) -> Receipt:
        rec.calls.append((params.order_id, ctx.attempt, ctx.now()))
        await ctx.update_progress(50, "charging")
        return Receipt(params.order_id, params.amount * 2)

    async def flaky(params: Order, ctx: djobs.JobContext) -> Result[Receipt, djobs.ExecutionError]:
        rec.calls.append((params.order_id, ctx.attempt, ctx.now()))
        if params.amount < 0 or ctx.attempt < params.amount:
            return Failure(djobs.ExecutionError(f"try {ctx.attempt} failed"))
        return Success(Receipt(params.order_id, ctx.attempt))

    async def slow(params: Order, ctx: djobs.JobContext) -> None:
        rec.calls.append((params.order_id, ctx.attempt, ctx.now()))
        await trio.sleep(params.amount)

    return (
        djobs.Job.make("charge", params=Order, result=Receipt, execute=charge),
        djobs.Job.make(
            "flaky",
            params=Order,
            result=Receipt,
            execute=flaky,
            retry=djobs.Retry(max_attempts=3, delay=djobs.Backoff.fixed("10 seconds")),
        ),
        djobs.Job.make("slow", params=Order, execute=slow, max_attempts=2),
    )


# -- now ---------------------------------------------------------------------------------


@pytest.mark.trio
async def test_now_runs_in_the_callers_task_and_persists_the_row(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    charge, _, _ = make_jobs(rec)
    async with open_test_engine([charge]) as engine:
        run = success(await engine.client.job(charge).now(Order("o-1", 21), correlation_id="checkout-9"))
        assert run.status == "completed" and run.ok
        assert run.result == Receipt("o-1", 42)
        assert run.error is None and run.attempts == 1 and run.job_id is not None
        info = success(await engine.client.jobs.status(run.job_id))
        assert info.status == "completed"
        assert info.result == Receipt("o-1", 42)  # typed by the registered job
        assert info.params == Order("o-1", 21)
        assert (info.progress, info.progress_message) == (50, "charging")
        assert info.correlation_id == "checkout-9" and info.attempts == 1
        assert engine.tracker.types() == ["job.enqueued", "job.claimed", "job.executed", "job.completed"]
        assert {e.instance_id for e in engine.tracker.events} == {run.job_id}
        assert {e.job_type for e in engine.tracker.events} == {"job"}


@pytest.mark.trio
async def test_now_without_persisting_writes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    charge, _, _ = make_jobs(rec)
    async with open_test_engine([charge]) as engine:
        run = success(await engine.client.job(charge).now(Order("o-2", 1), persist=False))
        assert (run.job_id, run.status, run.result) == (None, "completed", Receipt("o-2", 2))
        assert success(await engine.client.jobs.list()) == []


@pytest.mark.trio
async def test_now_retries_with_backoff_then_reports_exhaustion(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    _, flaky, _ = make_jobs(rec)
    async with open_test_engine([flaky]) as engine:
        run = success(await engine.client.job(flaky).now(Order("ok-on-2", 2)))
        assert (run.status, run.attempts, run.result) == ("completed", 2, Receipt("ok-on-2", 2))
        assert rec.times("ok-on-2") == [START, START + timedelta(seconds=10)]

        run = success(await engine.client.job(flaky).now(Order("never", -1)))
        assert run.status == "failed" and run.attempts == 3
        assert isinstance(run.error, djobs.RetryExhaustedError)
        assert run.error.last_error == djobs.ExecutionError("try 3 failed")
        assert run.job_id is not None
        info = success(await engine.client.jobs.status(run.job_id))
        assert info.status == "failed" and info.attempts == 3
        assert info.error is not None and info.error.tag == "retry_exhausted"


@pytest.mark.trio
async def test_a_now_run_ends_cancelled_when_its_caller_gives_up(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    _, flaky, slow = make_jobs(rec)
    async with open_test_engine([flaky, slow]) as engine:
        with trio.move_on_after(30):  # the caller's own timeout, in the middle of the run
            await engine.client.job(slow).now(Order("slow", 60))
        # ... and cancelled from elsewhere while it waits for its retry backoff.
        runs: list[djobs.JobRun[Receipt]] = []

        async def call() -> None:
            runs.append(success(await engine.client.job(flaky).now(Order("never", -1))))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await trio.sleep(5)  # attempt 1 failed; the retry is due at 10 s
            [waiting] = success(await engine.client.jobs.list(name="flaky", status="running"))
            assert waiting.attempts == 2  # counted before the backoff
            assert success(await engine.client.jobs.cancel(waiting.id)).status == "cancelled"
        assert runs[0].status == "cancelled" and runs[0].attempts == 2
        statuses = {j.name: j.status for j in success(await engine.client.jobs.list())}
        assert statuses == {"slow": "cancelled", "flaky": "cancelled"}
        assert engine.tracker.count("job.cancelled") == 2


@pytest.mark.trio
async def test_a_result_that_does_not_match_its_schema_fails_the_job(autojump_clock: trio.testing.MockClock) -> None:
    def wrong(params: Order, ctx: djobs.JobContext) -> object:
        return {"order_id": params.order_id, "total": "lots"}

    job = djobs.Job.make("wrong", params=Order, result=Receipt, execute=wrong)
    async with open_test_engine([job]) as engine:
        run = success(await engine.client.job(job).now(Order("o", 1)))
        assert run.status == "failed" and run.attempts == 1  # a validation error is not retried
        assert isinstance(run.error, djobs.ValidationError) and "Receipt" in run.error.message


@pytest.mark.trio
async def test_a_result_may_be_any_storable_type_as_a_workflows_may(autojump_clock: trio.testing.MockClock) -> None:
    def total(params: Order, ctx: djobs.JobContext) -> int:
        return params.amount * 2

    def receipts(params: Order, ctx: djobs.JobContext) -> list[Receipt]:
        return [Receipt(params.order_id, params.amount)]

    count = djobs.Job.make("total", params=Order, result=int, execute=total)
    many = djobs.Job.make("receipts", params=Order, result=list[Receipt], execute=receipts)
    async with open_test_engine([count, many]) as engine:
        run = success(await engine.client.job(count).now(Order("o", 21)))
        assert run.result == 42
        queued = success(await engine.client.job(many).later(Order("o", 5)))
        await engine.wait_idle()
        info = success(await engine.client.jobs.status(queued))
        assert info.result == [Receipt("o", 5)]  # typed back by the registered job

    def wrong(params: Order, ctx: djobs.JobContext) -> object:
        return {"order_id": "o"}

    bad = djobs.Job.make("bad-list", params=Order, result=list[Receipt], execute=wrong)
    async with open_test_engine([bad]) as engine:
        run = success(await engine.client.job(bad).now(Order("o", 1)))
        assert isinstance(run.error, djobs.ValidationError)
        assert "does not match list[" in run.error.message and "Receipt]" in run.error.message  # not "list"
    with pytest.raises(djobs.ValidationError, match="cannot be stored"):
        djobs.Job.make("bad", params=Order, result=Recorder, execute=total)  # type: ignore[arg-type]


@pytest.mark.trio
async def test_the_body_forms_and_a_non_retryable_error(autojump_clock: trio.testing.MockClock) -> None:
    class Deps(msgspec.Struct):
        rate: int

    def future(params: Order, ctx: djobs.JobContext) -> FutureResult[Receipt, djobs.ExecutionError]:
        return FutureResult.from_value(Receipt(params.order_id, 1))

    def reader(
        params: Order, ctx: djobs.JobContext
    ) -> RequiresContextFutureResult[Receipt, djobs.ExecutionError, Deps]:
        return RequiresContextFutureResult(lambda deps: FutureResult.from_value(Receipt(params.order_id, deps.rate)))

    calls: list[int] = []

    def permanent(params: Order, ctx: djobs.JobContext) -> Result[Receipt, djobs.ExecutionError]:
        calls.append(ctx.attempt)
        return Failure(djobs.ExecutionError("card declined", retryable=False))

    jobs = [
        djobs.Job.make("future", params=Order, result=Receipt, execute=future),
        djobs.Job.make("reader", params=Order, result=Receipt, execute=reader),
        djobs.Job.make("permanent", params=Order, result=Receipt, execute=permanent),
    ]
    async with open_test_engine(jobs, services=Deps(7)) as engine:
        assert success(await engine.client.job(jobs[0]).now(Order("a"))).result == Receipt("a", 1)
        assert success(await engine.client.job(jobs[1]).now(Order("b"))).result == Receipt("b", 7)
        job_id = success(await engine.client.job(jobs[2]).later(Order("c")))
        await engine.wait_idle()
        info = success(await engine.client.jobs.status(job_id))
        assert info.status == "failed" and calls == [1]
        assert info.error == djobs.JobErrorInfo("execution", "card declined")


@pytest.mark.trio
async def test_the_context(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[djobs.JobContext] = []
    progress: list[tuple[int, str | None]] = []

    async def look(params: Order, ctx: djobs.JobContext) -> None:
        seen.append(ctx)
        await ctx.update_progress(150, "over")
        assert ctx.job_id is not None
        info = success(await engine.client.jobs.status(ctx.job_id))
        progress.append((info.progress, info.progress_message))
        await ctx.update_progress(-3)
        info = success(await engine.client.jobs.status(ctx.job_id))
        progress.append((info.progress, info.progress_message))

    job = djobs.Job.make("look", params=Order, execute=look, max_attempts=4)
    async with open_test_engine([job]) as engine:
        job_id = success(await engine.client.job(job).later(Order("x"), correlation_id="c-1", tenant_id="t-1"))
        await engine.wait_idle()
        [ctx] = seen
        assert (ctx.job_id, ctx.instance_id, ctx.job_name) == (job_id, job_id, "look")
        assert (ctx.attempt, ctx.max_attempts, ctx.is_retry) == (1, 4, False)
        assert (ctx.tenant_id, ctx.correlation_id) == ("t-1", "c-1")
        assert ctx.run_id != job_id and len(ctx.run_id) == 36
        assert progress == [(100, "over"), (0, None)]


# -- later and the worker ------------------------------------------------------------------


@pytest.mark.trio
async def test_a_job_enqueued_here_runs_at_once_not_at_the_next_poll(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    charge, _, _ = make_jobs(rec)
    worker = djobs.WorkerOptions(poll_interval="1 hour")
    async with open_test_engine([charge], worker=worker) as engine:
        await trio.sleep(5)  # the worker is asleep until its poll
        job_id = success(await engine.client.job(charge).later(Order("now-please", 1)))
        assert success(await engine.client.jobs.status(job_id)).status == "pending"
        await engine.wait_idle()
        assert rec.times("now-please") == [START + timedelta(seconds=5)]
        info = success(await engine.client.jobs.status(job_id))
        assert info.status == "completed" and info.result == Receipt("now-please", 2)


@pytest.mark.trio
async def test_a_job_due_later_runs_at_its_time(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    charge, _, _ = make_jobs(rec)
    async with open_test_engine([charge], worker=djobs.WorkerOptions(poll_interval="1 hour")) as engine:
        client = engine.client.job(charge)
        later = success(await client.later(Order("in-10-min"), delay="10 minutes"))
        at = success(await client.later(Order("at-noon"), at=datetime(2026, 1, 1, 12, tzinfo=UTC)))
        past = success(await client.later(Order("past"), at=datetime(2020, 1, 1, tzinfo=UTC)))
        await trio.sleep(9 * 60)
        assert rec.times("in-10-min") == [] and rec.times("past") == [START]
        await trio.sleep(12 * 3600)
        assert rec.times("in-10-min") == [START + timedelta(minutes=10)]
        assert rec.times("at-noon") == [datetime(2026, 1, 1, 12, tzinfo=UTC)]
        info = success(await engine.client.jobs.status(later))
        assert info.scheduled_for == START + timedelta(minutes=10)
        assert {success(await engine.client.jobs.status(i)).status for i in (later, at, past)} == {"completed"}


@pytest.mark.trio
async def test_failed_attempts_go_back_to_pending_with_backoff(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    _, flaky, _ = make_jobs(rec)
    async with open_test_engine([flaky]) as engine:
        job_id = success(await engine.client.job(flaky).later(Order("third-time", 3)))
        await trio.sleep(1)
        info = success(await engine.client.jobs.status(job_id))
        assert (info.status, info.attempts) == ("pending", 1)
        assert info.scheduled_for == START + timedelta(seconds=10)
        assert info.error == djobs.JobErrorInfo("execution", "try 1 failed")
        await trio.sleep(30)
        assert rec.times("third-time") == [START + timedelta(seconds=s) for s in (0, 10, 20)]
        info = success(await engine.client.jobs.status(job_id))
        assert (info.status, info.attempts, info.result) == ("completed", 3, Receipt("third-time", 3))
        assert [e.data["will_retry"] for e in engine.tracker.of_type("job.failed")] == [True, True]


@pytest.mark.trio
async def test_higher_priority_runs_first(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    charge, _, _ = make_jobs(rec)
    async with open_test_engine([charge], worker=djobs.WorkerOptions(max_concurrency=1, poll_interval=None)) as engine:
        client = engine.client.job(charge)
        # Due together (a row due at once could start before the next is enqueued).
        for name, priority in [("low", -1), ("normal", 0), ("urgent", 10), ("normal-2", 0)]:
            await client.later(Order(name), priority=priority, delay="1 second")
        await trio.sleep(2)
        await engine.wait_idle()
        assert [oid for oid, _, _ in rec.calls] == ["urgent", "normal", "normal-2", "low"]


@pytest.mark.trio
async def test_a_repeated_idempotency_key_enqueues_nothing(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    charge, _, _ = make_jobs(rec)
    async with open_test_engine([charge]) as engine:
        client = engine.client.job(charge)
        first = success(await client.later(Order("o-7"), idempotency_key="order-7", delay="1 minute"))
        again = success(await client.later(Order("o-7-again"), idempotency_key="order-7"))
        other = success(await client.later(Order("o-8"), idempotency_key="order-8"))
        assert again == first and other != first
        await trio.sleep(120)
        assert sorted(oid for oid, _, _ in rec.calls) == ["o-7", "o-8"]
        assert len(success(await engine.client.jobs.list())) == 2


# -- batch -------------------------------------------------------------------------------


@pytest.mark.trio
async def test_batch_keeps_input_order_and_bounds_concurrency(autojump_clock: trio.testing.MockClock) -> None:
    running = 0
    peak = 0

    async def work(params: Order, ctx: djobs.JobContext) -> Receipt:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(10 - params.amount)  # later inputs finish first
        running -= 1
        return Receipt(params.order_id, params.amount)

    job = djobs.Job.make("work", params=Order, result=Receipt, execute=work)
    async with open_test_engine([job]) as engine:
        runs = success(await engine.client.job(job).batch([Order(f"o{i}", i) for i in range(8)], concurrency=3))
        assert [r.result for r in runs] == [Receipt(f"o{i}", i) for i in range(8)]
        assert peak == 3
        assert all(r.status == "completed" and r.job_id for r in runs)
        unpersisted = success(await engine.client.job(job).batch([Order("p", 9)], persist=False))
        assert unpersisted[0].job_id is None
        # A bad item is named by its index, as later_many names it, and nothing starts.
        started = peak
        peak = 0
        bad = failure(await engine.client.job(job).batch([Order("a", 1), {"order_id": "b", "amount": "x"}]))
        assert isinstance(bad, djobs.ValidationError) and "params[1] of job 'work'" in bad.message
        assert peak == 0 and started == 3


@pytest.mark.trio
async def test_batch_stop_on_error_starts_nothing_after_a_failure(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    _, flaky, _ = make_jobs(rec)
    async with open_test_engine([flaky]) as engine:
        params = [Order("a", 1), Order("bad", -1), Order("c", 1), Order("d", 1)]
        runs = success(await engine.client.job(flaky).batch(params, concurrency=1, stop_on_error=True))
        assert [(r.status, r.result.order_id if r.result else None) for r in runs] == [
            ("completed", "a"),
            ("failed", None),
        ]
        assert "c" not in {oid for oid, _, _ in rec.calls}
        everything = success(await engine.client.job(flaky).batch(params, concurrency=2))
        assert [r.status for r in everything] == ["completed", "failed", "completed", "completed"]


# -- status, list, cancel, retry -----------------------------------------------------------


@pytest.mark.trio
async def test_list_filters_and_pages(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    charge, flaky, _ = make_jobs(rec)
    async with open_test_engine([charge, flaky], worker=None) as engine:
        ids = [
            success(await engine.client.job(charge).later(Order(f"o{i}"), correlation_id=f"c{i % 2}")) for i in range(5)
        ]
        flaky_id = success(await engine.client.job(flaky).later(Order("f")))
        jobs = engine.client.jobs
        assert [j.id for j in success(await jobs.list())] == [*ids, flaky_id]  # creation order
        assert [j.id for j in success(await jobs.list(name="flaky"))] == [flaky_id]
        assert [j.id for j in success(await jobs.list(correlation_id="c1"))] == [ids[1], ids[3]]
        assert success(await jobs.list(status="completed")) == []
        first = success(await jobs.list(limit=2))
        second = success(await jobs.list(limit=2, after=first[-1].id))
        assert [j.id for j in first + second] == ids[:4]
        assert isinstance(failure(await jobs.list(status="done")), djobs.ValidationError)  # type: ignore[arg-type]
        assert isinstance(failure(await jobs.list(limit=0)), djobs.ValidationError)


@pytest.mark.trio
async def test_cancel_a_pending_job_and_retry_it(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    charge, _, _ = make_jobs(rec)
    async with open_test_engine([charge]) as engine:
        job_id = success(await engine.client.job(charge).later(Order("o"), delay="1 hour"))
        cancelled = success(await engine.client.jobs.cancel(job_id))
        assert cancelled == djobs.CancelResult(job_id, "cancelled")
        repeat = success(await engine.client.jobs.cancel(job_id))
        assert repeat == djobs.CancelResult(job_id, "cancelled", already_requested=True)
        await trio.sleep(2 * 3600)
        assert rec.calls == []  # it never ran
        info = success(await engine.client.jobs.status(job_id))
        assert info.status == "cancelled" and info.error is not None and info.error.tag == "job_cancelled"
        assert engine.tracker.count("job.cancelled") == 1
        assert success(await engine.client.jobs.retry(job_id)) == djobs.RetryResult(job_id)
        await engine.wait_idle()
        assert [oid for oid, _, _ in rec.calls] == ["o"]
        assert success(await engine.client.jobs.cancel(job_id)) == djobs.CancelResult(job_id, "completed")
        again = failure(await engine.client.jobs.retry(job_id))
        assert isinstance(again, djobs.InvalidStateError) and "completed" in again.message


@pytest.mark.trio
async def test_cancel_a_running_job_through_its_cancel_scope(autojump_clock: trio.testing.MockClock) -> None:
    stopped: list[str] = []

    async def forever(params: Order, ctx: djobs.JobContext) -> None:
        try:
            await trio.sleep_forever()
        finally:
            stopped.append(params.order_id)

    job = djobs.Job.make("forever", params=Order, execute=forever)
    async with open_test_engine([job]) as engine:
        job_id = success(await engine.client.job(job).later(Order("queued")))
        await trio.sleep(60)
        assert success(await engine.client.jobs.status(job_id)).status == "running"
        assert success(await engine.client.jobs.cancel(job_id)) == djobs.CancelResult(job_id, "cancelled")
        assert stopped == ["queued"]
        info = success(await engine.client.jobs.status(job_id))
        assert info.status == "cancelled" and info.attempts == 1
        assert engine.tracker.count("job.cancelled") == 1

        # A `now` run in another task is cancelled the same way.
        runs: list[djobs.JobRun[None]] = []

        async def call_now() -> None:
            runs.append(success(await engine.client.job(job).now(Order("inline"))))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_now)
            await trio.sleep(1)
            [running] = success(await engine.client.jobs.list(status="running"))
            assert success(await engine.client.jobs.cancel(running.id)).status == "cancelled"
        assert runs[0].status == "cancelled" and isinstance(runs[0].error, djobs.JobCancelledError)
        assert success(await engine.client.jobs.status(running.id)).status == "cancelled"


@pytest.mark.trio
async def test_cancel_a_job_claimed_here_but_not_started(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    _, _, slow = make_jobs(rec)
    opts = djobs.WorkerOptions(max_concurrency=1, poll_interval=None)
    async with open_test_engine([slow], worker=opts) as engine:
        busy = success(await engine.client.job(slow).later(Order("busy", 60)))
        waiting = success(await engine.client.job(slow).later(Order("waiting", 0)))
        await trio.sleep(1)
        # The worker holds two rows for one slot: the second is claimed, waiting for the first.
        assert success(await engine.client.jobs.status(waiting)).status == "running"
        assert success(await engine.client.jobs.cancel(waiting)) == djobs.CancelResult(waiting, "cancelled")
        await engine.wait_idle()
        assert [oid for oid, _, _ in rec.calls] == ["busy"]
        assert success(await engine.client.jobs.status(waiting)).status == "cancelled"
        assert success(await engine.client.jobs.status(busy)).status == "completed"
        assert [e.instance_id for e in engine.tracker.of_type("job.cancelled")] == [waiting]


@pytest.mark.trio
async def test_retry_a_failed_job_with_a_fresh_attempt_budget(autojump_clock: trio.testing.MockClock) -> None:
    fail = True
    attempts: list[int] = []

    def sometimes(params: Order, ctx: djobs.JobContext) -> Receipt:
        attempts.append(ctx.attempt)
        if fail:
            raise RuntimeError("upstream down")
        return Receipt(params.order_id, 1)

    job = djobs.Job.make(
        "sometimes",
        params=Order,
        result=Receipt,
        execute=sometimes,
        retry=djobs.Retry(2, djobs.Backoff.fixed("1 second")),
    )
    async with open_test_engine([job]) as engine:
        job_id = success(await engine.client.job(job).later(Order("o")))
        await trio.sleep(10)
        info = success(await engine.client.jobs.status(job_id))
        assert info.status == "failed" and info.attempts == 2 and attempts == [1, 2]
        assert info.error is not None and "RuntimeError: upstream down" in info.error.message
        fail = False
        assert success(await engine.client.jobs.retry(job_id)) == djobs.RetryResult(job_id, "pending")
        await engine.wait_idle()
        info = success(await engine.client.jobs.status(job_id))
        assert (info.status, info.attempts, info.error) == ("completed", 1, None)
        assert attempts == [1, 2, 1]


@pytest.mark.trio
async def test_unknown_job_ids(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([]) as engine:
        for verb in (engine.client.jobs.status, engine.client.jobs.cancel, engine.client.jobs.retry):
            missing = failure(await verb("0190e7c0-0000-7000-8000-000000000000"))
            assert isinstance(missing, djobs.InstanceNotFoundError)
            assert missing.message == "no job with id '0190e7c0-0000-7000-8000-000000000000' is stored"
            assert isinstance(failure(await verb("")), djobs.ValidationError)


# -- leases ------------------------------------------------------------------------------


def queue_storage(engine: djobs.Engine) -> QueueStorage:
    assert isinstance(engine.storage, QueueStorage)
    return engine.storage


@pytest.mark.trio
async def test_a_crashed_workers_leases_expire_and_its_jobs_run_again(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    charge, _, _ = make_jobs(rec)
    async with open_test_engine(
        [charge], worker=djobs.WorkerOptions(poll_interval=None, lock_timeout="1 minute")
    ) as engine:
        now = engine.clock.now_ms()
        ids = [success(await engine.client.job(charge).later(Order(f"o{i}"), delay="1 hour")) for i in range(2)]
        # A worker in another process claims them when due (lease: 1 minute), then crashes.
        claimed = await queue_storage(engine).claim_jobs(now + 3_600_000, now + 3_660_000, "crashed", ["charge"], 10)
        assert sorted(j.id for j in claimed) == sorted(ids)
        await trio.sleep(3600 + 59)
        assert rec.calls == []  # leased by the crashed worker
        await trio.sleep(2)
        assert sorted(oid for oid, _, _ in rec.calls) == ["o0", "o1"]
        assert [when for _, _, when in rec.calls] == [START + timedelta(hours=1, minutes=1)] * 2
        assert [a for _, a, _ in rec.calls] == [2, 2]  # the crashed attempt counted
        expired = engine.tracker.of_type("job.lease_expired")
        assert sorted(e.instance_id for e in expired) == sorted(ids)
        assert {e.data["worker_id"] for e in expired} == {"crashed"}
        assert {success(await engine.client.jobs.status(i)).status for i in ids} == {"completed"}


@pytest.mark.trio
async def test_a_lease_lost_on_the_last_attempt_fails_the_job(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    charge, _, _ = make_jobs(rec)
    async with open_test_engine(
        [charge], worker=djobs.WorkerOptions(poll_interval="10 seconds", lock_timeout="1 minute")
    ) as engine:
        # A job this engine does not run (another service's), with two attempts; the
        # worker polls, since its claims by another process do not wake this one.
        storage = queue_storage(engine)
        now = engine.clock.now_ms()
        row = NewJob(
            id="0190e7c0-0000-7000-8000-000000000001",
            name="elsewhere",
            params=b'{"order_id":"o"}',
            max_attempts=2,
            scheduled_for=now,
            created_at=now,
        )
        await storage.enqueue_jobs([row])
        for attempt in (1, 2):
            now = engine.clock.now_ms()
            [claimed] = await storage.claim_jobs(now, now + 60_000, "crashing", ["elsewhere"], 1)
            assert claimed.attempt == attempt
            await trio.sleep(61)  # the lease runs out; this engine's worker reclaims it
        info = success(await engine.client.jobs.status(row.id))
        assert info.status == "failed" and info.attempts == 2
        assert info.error is not None and "lease" in info.error.message
        assert [e.data["status"] for e in engine.tracker.of_type("job.lease_expired")] == ["pending", "failed"]
        assert engine.tracker.count("job.failed") == 1


@pytest.mark.trio
async def test_a_cancel_for_a_job_running_elsewhere_is_requested(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    charge, _, _ = make_jobs(rec)
    async with open_test_engine(
        [charge], worker=djobs.WorkerOptions(poll_interval=None, lock_timeout="1 minute")
    ) as engine:
        job_id = success(await engine.client.job(charge).later(Order("o"), delay="1 hour"))
        now = engine.clock.now_ms() + 3_600_000
        await queue_storage(engine).claim_jobs(now, now + 60_000, "elsewhere", ["charge"], 1)
        cancelled = success(await engine.client.jobs.cancel(job_id))
        assert cancelled == djobs.CancelResult(job_id, "cancel_requested")
        assert success(await engine.client.jobs.status(job_id)).cancel_requested
        # The other worker dies without seeing it: when its lease runs out the row ends cancelled.
        await trio.sleep(3600 + 61)
        assert success(await engine.client.jobs.status(job_id)).status == "cancelled"
        assert rec.calls == [] and engine.tracker.count("job.cancelled") == 1


@pytest.mark.trio
async def test_a_worker_cancels_its_run_when_asked_at_lease_renewal(autojump_clock: trio.testing.MockClock) -> None:
    stopped: list[datetime] = []

    async def forever(params: Order, ctx: djobs.JobContext) -> None:
        try:
            await trio.sleep_forever()
        finally:
            stopped.append(ctx.now())

    job = djobs.Job.make("forever", params=Order, execute=forever)
    async with open_test_engine(
        [job], worker=djobs.WorkerOptions(poll_interval=None, lock_timeout="90 seconds")
    ) as engine:
        job_id = success(await engine.client.job(job).later(Order("o")))
        await trio.sleep(10)
        # Another process asks: it can only mark the row (this is what its cancel writes).
        await queue_storage(engine).cancel_job(job_id, engine.clock.now_ms(), b'{"tag":"job_cancelled","message":""}')
        await trio.sleep(60)
        assert stopped == [START + timedelta(seconds=30)]  # the first renewal after the request
        assert success(await engine.client.jobs.status(job_id)).status == "cancelled"


@pytest.mark.trio
async def test_a_run_whose_lease_was_taken_back_stops_and_writes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runs: list[tuple[int, str]] = []

    async def long(params: Order, ctx: djobs.JobContext) -> Receipt:
        try:
            await trio.sleep(600)
        except trio.Cancelled:
            runs.append((ctx.attempt, "stopped"))
            raise
        runs.append((ctx.attempt, "finished"))
        return Receipt(params.order_id, ctx.attempt)

    job = djobs.Job.make("long", params=Order, result=Receipt, execute=long)
    opts = djobs.WorkerOptions(poll_interval=None, lock_timeout="1 minute")
    async with open_test_engine([job], worker=opts) as engine:
        job_id = success(await engine.client.job(job).later(Order("o")))
        await trio.sleep(5)
        # This process stalled (in effect): another worker saw the lease run out and took the row back.
        future = engine.clock.now_ms() + 120_000
        [taken] = await queue_storage(engine).reclaim_expired(future, b"{}", b"{}", 10)
        assert (taken.id, taken.status) == (job_id, "pending")
        await trio.sleep(20)  # the next renewal finds the lease gone, stops the run, and the row runs again
        await engine.wait_idle()
        await trio.sleep(601)
        assert runs == [(1, "stopped"), (2, "finished")]
        info = success(await engine.client.jobs.status(job_id))
        assert (info.status, info.attempts, info.result) == ("completed", 2, Receipt("o", 2))
        assert engine.tracker.count("job.cancelled") == 0


@pytest.mark.trio
async def test_leases_are_renewed_while_a_long_job_runs(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    _, _, slow = make_jobs(rec)
    async with open_test_engine(
        [slow], worker=djobs.WorkerOptions(poll_interval=None, lock_timeout="1 minute")
    ) as engine:
        job_id = success(await engine.client.job(slow).later(Order("long", 3600)))
        await trio.sleep(1800)
        info = success(await engine.client.jobs.status(job_id))
        assert info.status == "running"
        await trio.sleep(1801)
        assert success(await engine.client.jobs.status(job_id)).status == "completed"
        assert engine.tracker.count("job.lease_expired") == 0 and len(rec.calls) == 1


@pytest.mark.trio
async def test_closing_hands_back_what_has_not_finished(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    rec = Recorder()
    _, _, slow = make_jobs(rec)
    db = djobs.sqlite(tmp_path / "jobs.db")
    opts = djobs.WorkerOptions(max_concurrency=1, poll_interval=None)
    async with open_test_engine([slow], storage=db, worker=opts, shutdown_grace="1 second") as engine:
        ids = [success(await engine.client.job(slow).later(Order(f"o{i}", 600))) for i in range(3)]
        await trio.sleep(60)
        assert len(rec.calls) == 1  # one running, one claimed and waiting, one pending
    async with open_test_engine([slow], storage=db, worker=None) as engine:
        infos = [success(await engine.client.jobs.status(i)) for i in ids]
        assert [(i.status, i.attempts) for i in infos] == [("pending", 0)] * 3  # interrupted: not counted
    async with open_test_engine([slow], storage=db) as engine:
        await trio.sleep(601)
        assert {success(await engine.client.jobs.status(i)).status for i in ids} == {"completed"}


# -- engine ------------------------------------------------------------------------------


@pytest.mark.trio
async def test_healthcheck_and_worker_id(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([]) as engine:
        assert await engine.healthcheck()
        assert engine.worker_id is not None
        # host:pid:token:random (no token where the process table cannot name one, off Linux)
        host, pid, *_, random_part = engine.worker_id.split(":")
        assert host and pid == str(os.getpid()) and len(random_part) == 8, engine.worker_id


@pytest.mark.trio
async def test_two_jobs_with_one_name_fail_at_open() -> None:
    rec = Recorder()
    charge, _, _ = make_jobs(rec)
    twin = djobs.Job.make("charge", params=Order, execute=lambda p, c: None)
    with pytest.raises(djobs.ValidationError, match="charge"):
        async with open_test_engine([charge, twin]):
            pass  # pragma: no cover


def test_job_definitions_are_checked() -> None:
    class NotAStruct:
        pass

    def body(params: Order, ctx: djobs.JobContext) -> None: ...

    with pytest.raises(djobs.ValidationError, match="params"):
        djobs.Job.make("bad", params=NotAStruct, execute=body)  # type: ignore[arg-type]
    with pytest.raises(djobs.ValidationError, match="result"):
        djobs.Job.make("bad", params=Order, result=NotAStruct, execute=body)  # type: ignore[arg-type]
    with pytest.raises(djobs.ValidationError, match="max_attempts"):
        djobs.Job.make("bad", params=Order, execute=body, max_attempts=0)
    with pytest.raises(djobs.ValidationError, match="name"):
        djobs.Job.make("has:colon", params=Order, execute=body)
    with pytest.raises(djobs.ValidationError):
        djobs.WorkerOptions(max_concurrency=0)
    with pytest.raises(djobs.ValidationError):
        djobs.WorkerOptions(lock_timeout="soon")
    assert djobs.Job.make("r", params=Order, execute=body, retry=djobs.Retry(5)).max_attempts == 5


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.trio
async def test_bad_input_is_a_typed_error_and_enqueues_nothing(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    charge, _, _ = make_jobs(rec)
    async with open_test_engine([charge]) as engine:
        client = engine.client.job(charge)
        bad_params = [{"order_id": 5}, {"amount": 1}, Order(order_id=3), None]  # type: ignore[arg-type]
        for params in bad_params:
            for call in (client.later(params), client.now(params), client.batch([Order("ok"), params])):  # type: ignore[arg-type]
                error = failure(await call)
                assert isinstance(error, djobs.ValidationError), (params, error)
                assert "Order" in error.message
        for delay in (-5, "-5 seconds", "soon", 1.5, timedelta(seconds=-1)):
            error = failure(await client.later(Order("o"), delay=delay))  # type: ignore[arg-type]
            assert isinstance(error, djobs.ValidationError) and "delay" in error.message, delay
        for at, delay in ((datetime(2026, 1, 2), None), (START, "1 minute")):  # naive; both given
            assert isinstance(failure(await client.later(Order("o"), at=at, delay=delay)), djobs.ValidationError)
        assert isinstance(failure(await client.later(Order("o"), priority=True)), djobs.ValidationError)
        assert isinstance(failure(await client.later(Order("o"), idempotency_key="")), djobs.ValidationError)
        assert isinstance(failure(await client.batch([Order("o")], concurrency=0)), djobs.ValidationError)
        assert await engine.client.job("nope").later(Order("o")) == IOFailure(djobs.JobNotFoundError("nope"))
        assert await engine.client.job("nope").now(Order("o")) == IOFailure(djobs.JobNotFoundError("nope"))
        other = djobs.Job.make("charge", params=Order, execute=lambda p, c: None)
        assert isinstance(failure(await engine.client.job(other).later(Order("o"))), djobs.JobNotFoundError)
        await engine.wait_idle()
        assert success(await engine.client.jobs.list()) == []
        assert rec.calls == []
        assert engine.tracker.count("job.enqueued") == 0


@pytest.mark.trio
async def test_later_many_enqueues_all_or_nothing(autojump_clock: trio.testing.MockClock) -> None:
    charge, _, _ = make_jobs(Recorder())
    async with open_test_engine([charge], worker=None) as engine:
        job = engine.client.job(charge)
        ids = success(await job.later_many([Order(f"o{i}", i + 1) for i in range(50)], correlation_id="bulk"))
        assert len(ids) == len(set(ids)) == 50
        listed = success(await engine.client.jobs.list(correlation_id="bulk", limit=100))
        assert sorted(j.id for j in listed) == sorted(ids)
        assert success(await job.later_many([])) == []
        bad = failure(await job.later_many([Order("ok", 1), {"order_id": 5}]))  # type: ignore[list-item]
        assert isinstance(bad, djobs.ValidationError) and "params[1]" in bad.message
        assert len(success(await engine.client.jobs.list(limit=100))) == 50  # nothing of the bad batch


@pytest.mark.trio
async def test_a_bug_in_writing_how_an_attempt_ended_counts_the_attempt(autojump_clock: trio.testing.MockClock) -> None:
    """An unexpected exception after the body (the settle path) counts the attempt: the row
    is let go, its lease lapses, and the reclaim runs it again as attempt 2 (never renewed forever)."""
    rec = Recorder()
    charge, _, _ = make_jobs(rec)
    async with open_test_engine([charge], worker=djobs.WorkerOptions(lock_timeout="1 minute")) as engine:
        storage = queue_storage(engine)
        real_settle = storage.settle_jobs
        broken = [True]

        async def settle_once_broken(settlements: object) -> object:
            if broken.pop() if broken else False:
                raise RuntimeError("a bug in the settle path")
            return await real_settle(settlements)  # type: ignore[arg-type]

        storage.settle_jobs = settle_once_broken  # type: ignore[method-assign]
        job_id = success(await engine.client.job(charge).later(Order("o", 1)))
        await trio.sleep(1)
        assert [attempt for _, attempt, _ in rec.calls] == [1]
        assert success(await engine.client.jobs.status(job_id)).status == "running"
        await trio.sleep(120)  # the lease lapses (it is no longer renewed) and the row runs again
        info = success(await engine.client.jobs.status(job_id))
        assert (info.status, info.attempts) == ("completed", 2)
        assert [attempt for _, attempt, _ in rec.calls] == [1, 2]


@pytest.mark.trio
async def test_queued_synchronous_bodies_each_run_in_a_context_of_their_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A synchronous body runs to its end where the worker starts it, without a task of its
    # own; its contextvars still stay its own, as an async body's do in its task, and a
    # failing one fails alone.
    import contextvars

    seen: contextvars.ContextVar[str | None] = contextvars.ContextVar("seen", default=None)
    saw: list[tuple[str, str | None]] = []

    def body(params: Order, ctx: djobs.JobContext) -> Receipt:
        saw.append((params.order_id, seen.get()))
        seen.set(params.order_id)
        if params.amount < 0:
            raise ValueError("no negative orders")
        return Receipt(params.order_id, params.amount)

    job = djobs.Job.make("sync", params=Order, result=Receipt, execute=body, max_attempts=1)
    async with open_test_engine([job], start=START) as engine:
        client = engine.client.job(job)
        ids = [success(await client.later(Order(f"o{n}", -1 if n == 3 else n))) for n in range(6)]
        await engine.wait_idle()
        statuses = [success(await engine.client.jobs.status(i)).status for i in ids]
    assert sorted(saw) == [(f"o{n}", None) for n in range(6)]
    assert statuses == ["completed", "completed", "completed", "failed", "completed", "completed"]
    assert seen.get() is None
