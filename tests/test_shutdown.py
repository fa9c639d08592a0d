"""Shutdown: the grace period holds whether the engine's block ends or the scope around it is
cancelled, and closing never spins (it waits on events, so virtual time passes)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from postgres_support import storage_layer
from test_timeouts import layer  # noqa: F401  # the memory / SQLite / PostgreSQL fixture

import djobs
import djobs.storage
from djobs.testing import open_test_engine, success


class Count(msgspec.Struct):
    n: int = 0


class Nothing(msgspec.Struct):
    pass


def slow_counter(seconds: float, done: list[str]) -> djobs.Continuous[Count]:
    async def run(ctx: djobs.ContinuousContext[Count]) -> Count:
        await trio.sleep(seconds)
        done.append("continuous")
        return Count(ctx.state.n + 1)

    return djobs.Continuous.make(f"slow-{seconds:g}", state=Count, schedule=djobs.every("1 hour"), execute=run)


def slow_job(seconds: float, done: list[str]) -> djobs.Job[Nothing, None]:
    async def run(params: Nothing, ctx: djobs.JobContext) -> None:
        await trio.sleep(seconds)
        done.append("job")

    return djobs.Job.make(f"slow-job-{seconds:g}", params=Nothing, execute=run)


@pytest.mark.trio
async def test_cancelling_the_scope_around_the_engine_lets_running_handlers_finish_within_the_grace(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
) -> None:
    done: list[str] = []
    counter, job = slow_counter(5, done), slow_job(5, done)
    ids: list[str] = []
    with trio.CancelScope() as host:
        async with open_test_engine([counter, job], storage=layer, shutdown_grace="10 seconds") as engine:
            await engine.client.continuous(counter).start(id="a", input=Count())
            ids.append(success(await engine.client.job(job).later(Nothing())))
            await trio.sleep(1)  # both bodies are running
            started = trio.current_time()
            host.cancel()  # the application shuts down
            await trio.sleep_forever()
    assert host.cancelled_caught
    assert sorted(done) == ["continuous", "job"]  # finished, not killed
    assert 3.9 <= trio.current_time() - started < 10  # waited for them, not for the whole grace
    async with open_test_engine([counter, job], storage=layer) as engine:
        assert success(await engine.client.continuous(counter).get_state("a")).state == Count(1)
        assert success(await engine.client.jobs.status(ids[0])).status == "completed"


@pytest.mark.trio
async def test_handlers_running_past_the_grace_are_cancelled_and_nothing_of_them_is_written(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
) -> None:
    done: list[str] = []
    counter, job = slow_counter(600, done), slow_job(600, done)
    ids: list[str] = []
    with trio.CancelScope() as host:
        async with open_test_engine([counter, job], storage=layer, shutdown_grace="10 seconds") as engine:
            await engine.client.continuous(counter).start(id="a", input=Count())
            ids.append(success(await engine.client.job(job).later(Nothing())))
            await trio.sleep(1)
            started = trio.current_time()
            host.cancel()
            await trio.sleep_forever()
    assert done == []
    assert 10 <= trio.current_time() - started < 30  # the grace, then the cancel (not the 600 s bodies)
    async with open_test_engine([counter, job], storage=layer, worker=None) as engine:  # reads, runs nothing
        assert success(await engine.client.continuous(counter).get_state("a")).state == Count(0)
        assert success(await engine.client.jobs.status(ids[0])).status == "pending"  # handed back, runs again


@pytest.mark.trio
async def test_a_call_queued_behind_a_handler_the_close_cut_off_does_not_start_and_says_so(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
) -> None:
    """Past the grace the running body is cancelled; a call its instance had queued behind it
    does not start (the close ends within its grace): its caller gets a `StorageError` saying
    it was not applied, and the instance is stored as it was."""
    done: list[str] = []
    answers: list[object] = []
    counter = slow_counter(600, done)
    async with trio.open_nursery() as callers:  # outside the engine's scope: the caller waits for its answer
        with trio.CancelScope() as host:
            async with open_test_engine([counter], storage=layer, shutdown_grace="10 seconds") as engine:
                client = engine.client.continuous(counter)
                await client.start(id="a", input=Count())
                await trio.sleep(1)  # the 600 s body runs on the instance's actor

                async def pause() -> None:
                    answers.append(await client.pause("a"))

                callers.start_soon(pause)
                await trio.sleep(1)  # queued behind the body
                closing = trio.current_time()
                host.cancel()
                await trio.sleep_forever()
    assert done == []
    assert trio.current_time() - closing < 15  # the grace and the cut-off, nothing after
    [answer] = answers
    error = djobs.testing.failure(answer)  # type: ignore[arg-type]
    assert isinstance(error, djobs.StorageError) and "not applied" in error.message
    async with open_test_engine([counter], storage=layer, worker=None) as engine:
        assert success(await engine.client.continuous(counter).status("a")).status == "running"


@pytest.mark.trio
async def test_a_close_waiting_on_a_slow_claim_lets_virtual_time_pass(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A claim still in flight when the engine closes: close waits on it (an event), never spins."""
    storage = djobs.storage.memory()
    done: list[str] = []
    job = slow_job(1, done)
    async with open_test_engine([job], storage=storage, shutdown_grace="10 seconds") as engine:
        real_claim = engine.storage.claim_jobs  # type: ignore[attr-defined]

        async def slow_claim(*args: object, **kwargs: object) -> object:
            with trio.CancelScope(shield=True):  # like a database call on a thread that must finish
                await trio.sleep(3)
            return await real_claim(*args, **kwargs)

        engine.storage.claim_jobs = slow_claim  # type: ignore[attr-defined]
        success(await engine.client.job(job).later(Nothing()))
        await trio.sleep(0.5)  # the claim is in flight
        started = trio.current_time()
    assert trio.current_time() - started < 10


async def call_now(client: djobs.Client, job: djobs.Job[Nothing, None], into: list[object]) -> None:
    into.append(await client.job(job).now(Nothing()))


@pytest.mark.trio
@pytest.mark.parametrize(("seconds", "status"), [(0.5, "completed"), (5, "cancelled")])
async def test_a_now_call_under_way_when_the_engine_closes_gets_the_grace_and_reports_what_was_committed(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
    seconds: float,
    status: str,
) -> None:
    """A ``now`` run in a host task is waited for like a claimed run; past the grace it is
    cancelled, and its row ends ``cancelled`` before the storage closes: what the call
    returns is what the row says, and the job never runs a second time."""
    runs: list[float] = []

    async def body(params: Nothing, ctx: djobs.JobContext) -> None:
        runs.append(trio.current_time())
        await trio.sleep(seconds)

    job = djobs.Job.make("inline", params=Nothing, execute=body)
    results: list[object] = []
    worker = djobs.WorkerOptions(lock_timeout="2 seconds")
    async with trio.open_nursery() as host:
        async with open_test_engine([job], storage=layer, shutdown_grace="1 second", worker=worker) as engine:
            host.start_soon(call_now, engine.client, job, results)
            await trio.sleep(0.1)  # the body runs; the block ends
        assert len(results) == 1  # the close waited for the call to end, its row settled
    (returned,) = results
    run = success(returned)  # type: ignore[arg-type]
    assert run.status == status
    if status == "cancelled":
        assert isinstance(run.error, djobs.JobCancelledError)
    async with open_test_engine([job], storage=layer, worker=worker) as engine:
        await trio.sleep(60)  # far past the lease the row had
        assert run.job_id is not None
        assert success(await engine.client.jobs.status(run.job_id)).status == status
    assert len(runs) == 1


@pytest.mark.trio
async def test_a_now_call_whose_end_could_not_be_recorded_is_a_storage_error(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
) -> None:
    """A result is reported only once it is committed: a settle that fails is the call's
    `StorageError`; the row stays running and runs again once its lease ends."""
    runs: list[int] = []

    async def body(params: Nothing, ctx: djobs.JobContext) -> None:
        runs.append(ctx.attempt)

    job = djobs.Job.make("inline", params=Nothing, execute=body)
    async with open_test_engine([job], storage=layer, worker=djobs.WorkerOptions(lock_timeout="1 minute")) as engine:
        storage = engine.storage
        assert isinstance(storage, djobs.storage.QueueStorage)
        real_settle = storage.settle_jobs

        async def settle_failing_once(settlements: object) -> object:
            storage.settle_jobs = real_settle  # type: ignore[method-assign]
            raise djobs.StorageError("disk I/O error")

        storage.settle_jobs = settle_failing_once  # type: ignore[method-assign]
        error = djobs.testing.failure(await engine.client.job(job).now(Nothing()))
        assert isinstance(error, djobs.StorageError)
        assert "could not be recorded" in error.message and "disk I/O error" in error.message
        (info,) = success(await engine.client.jobs.list())
        assert info.status == "running"  # not reported, not recorded
        await trio.sleep(5 * 60)  # the lease ends and a worker runs it again (at least once)
        assert success(await engine.client.jobs.status(info.id)).status == "completed"
        assert runs == [1, 2]  # the reclaim is attempt 2


@pytest.mark.trio
async def test_a_now_call_made_while_the_engine_closes_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    done: list[str] = []
    slow = slow_job(5, done)
    runs: list[str] = []

    async def body(params: Nothing, ctx: djobs.JobContext) -> None:
        runs.append("now")

    inline = djobs.Job.make("inline", params=Nothing, execute=body)
    results: list[object] = []

    async def late_caller(client: djobs.Client) -> None:
        await trio.sleep(1)  # the close is waiting for the slow job
        await call_now(client, inline, results)

    async with trio.open_nursery() as host, open_test_engine([slow, inline], shutdown_grace="10 seconds") as engine:
        success(await engine.client.job(slow).later(Nothing()))
        await trio.sleep(0.1)
        host.start_soon(late_caller, engine.client)
    error = djobs.testing.failure(results[0])  # type: ignore[arg-type]
    assert isinstance(error, djobs.StorageError) and "closing" in error.message
    assert done == ["job"] and runs == []


@pytest.mark.trio
async def test_an_alarm_whose_handler_the_close_cut_off_fires_at_once_after_a_restart(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
) -> None:
    # The close releases the alarms of handlers it cancelled (embedding guide, shutdown step 4):
    # they were claimed for the alarm lease (5 minutes) and fired only after it.
    starts: list[float] = []

    async def run(ctx: djobs.ContinuousContext[Count]) -> Count:
        starts.append(trio.current_time())
        await trio.sleep(600)
        return Count(ctx.state.n + 1)

    counter = djobs.Continuous.make("cut", state=Count, schedule=djobs.every("1 hour"), execute=run)
    async with open_test_engine([counter], storage=layer, shutdown_grace="1 second") as engine:
        await engine.client.continuous(counter).start(id="a", input=Count())
        await trio.sleep(1)
    assert len(starts) == 1
    reopened = trio.current_time()
    async with open_test_engine([counter], storage=layer, shutdown_grace="1 second"):
        await trio.sleep(30)
    assert len(starts) == 2 and starts[1] - reopened < 5  # at once, not after the alarm's 5-minute lease


class Event(msgspec.Struct):
    n: int


class Batch(msgspec.Struct):
    events: list[int]


@pytest.mark.trio
async def test_a_flush_queued_behind_a_flush_the_close_cut_off_does_not_start_and_the_next_engine_runs_it(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
) -> None:
    """A full batch's flush runs on its instance's actor; its alarm (due at once) is claimed and
    queued behind it. Past the grace the close cuts the running flush off: the flush queued behind
    it does not start (it held the host for its whole execute), and the batch, still stored with
    its alarm, is flushed by the next engine."""
    flushes: list[list[int]] = []
    finished: list[list[int]] = []

    def add(ctx: djobs.DebounceEventContext[Event, Batch]) -> Batch:
        return Batch([*(ctx.state.events if ctx.state else []), ctx.event.n])

    async def send(ctx: djobs.DebounceContext[Batch]) -> None:
        flushes.append(ctx.state.events)
        await trio.sleep(20)
        finished.append(ctx.state.events)

    batcher = djobs.Debounce.make(
        "batcher", event=Event, state=Batch, on_event=add, flush_after="1 hour", max_events=1, execute=send
    )
    async with open_test_engine([batcher], storage=layer, shutdown_grace="1 second") as engine:
        success(await engine.client.debounce(batcher).add(id="a", event=Event(1)))
        await trio.sleep(1)  # the posted flush runs; the alarm's flush waits behind it
        closing = trio.current_time()
    assert trio.current_time() - closing < 5  # the grace, the cut-off and no second execute
    assert flushes == [[1]] and finished == []
    async with open_test_engine([batcher], storage=layer, shutdown_grace="1 second") as engine:
        await trio.sleep(30)
        assert finished == [[1]]  # the batch was kept, with its alarm: flushed at once
        status = success(await engine.client.debounce(batcher).status("a"))
        assert status.status == "idle"


@pytest.mark.parametrize("kind", ["memory", "sqlite"])  # the stores whose due alarms fire in batches
def test_a_batch_of_alarms_waiting_for_a_slot_at_the_cut_off_does_not_start_and_the_next_engine_runs_it(
    kind: str, tmp_path: Any
) -> None:
    """A batch of due alarms waits for a concurrency slot that a long body holds. Past the grace
    the close cuts the body off: the batch does not start, and it gives up the instances it held,
    so the next engine runs them at once (it waited for their leases to run out, 30 seconds)."""
    runs: list[tuple[str, float]] = []

    async def slow(ctx: djobs.ContinuousContext[Count]) -> Count:
        await trio.sleep(600)
        return Count(ctx.state.n + 1)

    def quick(ctx: djobs.ContinuousContext[Count]) -> Count:
        runs.append((ctx.instance_id, trio.current_time()))
        return Count(ctx.state.n + 1)

    sleeper = djobs.Continuous.make("sleeper", state=Count, schedule=djobs.every("1 hour"), execute=slow)
    ticker = djobs.Continuous.make("ticker", state=Count, schedule=djobs.every("1 minute"), execute=quick)
    store = storage_layer(kind, str(tmp_path), None)

    async def scenario() -> None:
        async with open_test_engine(
            [sleeper, ticker], storage=store, shutdown_grace="1 second", max_concurrency=1
        ) as engine:
            for id in ("a", "b"):
                success(await engine.client.continuous(ticker).start(id=id, input=Count()))
            await trio.sleep(1)
            success(await engine.client.continuous(sleeper).start(id="s", input=Count()))
            await trio.sleep(90)  # the tickers' next alarms came due at 61 s: their batch waits for the slot
            ran = len(runs)
            now = datetime.fromtimestamp(engine.clock.now_ms() / 1000, UTC)
        assert len(runs) == ran  # the batch did not start after the cut-off
        reopened = trio.current_time()
        async with open_test_engine([sleeper, ticker], storage=store, shutdown_grace="1 second", start=now):
            await trio.sleep(20)
        late = sorted(at - reopened for id, at in runs[ran:])
        assert len(late) >= 2 and late[1] < 5, late  # both tickers at once, not after their leases

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
