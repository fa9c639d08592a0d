"""Hung and blocking handlers: a definition's `timeout`, `terminate` on a stuck instance,
and `blocking=True` bodies run off the Trio thread with their leases renewed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import trio
from postgres_support import STORAGE_KINDS, fresh_storage_layer

import djobs
import djobs.storage
from djobs.testing import failure, open_test_engine, success


class Count(msgspec.Struct):
    n: int = 0


class Ping(msgspec.Struct, tag=True):
    pass


class Nothing(msgspec.Struct):
    pass


async def hang(*_args: object) -> None:
    await trio.sleep_forever()


RETRY_TWICE = djobs.Retry(max_attempts=2, delay="1 second")

continuous_hung = djobs.Continuous.make(
    "hung-continuous",
    state=Count,
    schedule=djobs.every("1 hour"),
    execute=hang,
    retry=RETRY_TWICE,
    timeout="1 minute",
)
task_hung: djobs.Task[Count, Ping] = djobs.Task.make(
    "hung-task",
    state=Count,
    event=Ping,
    on_event=lambda _e, ctx: ctx.schedule("1 second"),
    execute=hang,
    retry=RETRY_TWICE,
    timeout="1 minute",
)
debounce_hung = djobs.Debounce.make(
    "hung-debounce", event=Count, flush_after="1 second", execute=hang, retry=RETRY_TWICE, timeout="1 minute"
)
job_hung = djobs.Job.make("hung-job", params=Nothing, execute=hang, max_attempts=2, timeout="1 minute")


@pytest.fixture(params=STORAGE_KINDS)
def layer(request: pytest.FixtureRequest) -> Iterator[djobs.storage.StorageLayer]:
    with fresh_storage_layer(request.param) as made:
        yield made


def timeouts(engine: Any) -> list[Any]:
    return [e for e in engine.tracker.of_type("job.failed") if e.data["error"]["tag"] == "timeout"]


@pytest.mark.trio
async def test_a_hung_body_of_every_kind_times_out_and_is_retried(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    async with open_test_engine(
        [continuous_hung, task_hung, debounce_hung, job_hung], storage=layer, shutdown_grace="1 second"
    ) as engine:
        client = engine.client
        assert success(await client.continuous(continuous_hung).start(id="c", input=Count()))
        assert success(await client.task(task_hung).send(id="t", event=Ping()))
        assert success(await client.debounce(debounce_hung).add(id="d", event=Count()))
        job_id = success(await client.job(job_hung).later(Nothing()))
        await trio.sleep(10 * 60)
        # Each kind: attempt 1 timed out after a minute, attempt 2 too, then retries were exhausted.
        by_job: dict[str, list[int]] = {}
        for event in timeouts(engine):
            by_job.setdefault(event.job_name, []).append(event.data["attempt"])
        assert by_job == {name: [1, 2] for name in ("hung-continuous", "hung-task", "hung-debounce", "hung-job")}
        info = success(await client.jobs.status(job_id))
        assert info.status == "failed" and info.attempts == 2
        assert info.error is not None and "timeout of 60 s" in info.error.message
        assert success(await client.continuous(continuous_hung).status("c")).status == "not_found"  # exhausted


@pytest.mark.trio
async def test_a_timed_out_job_run_now_is_a_typed_failure(autojump_clock: trio.testing.MockClock) -> None:
    once = djobs.Job.make("hung-once", params=Nothing, execute=hang, max_attempts=1, timeout="30 seconds")
    async with open_test_engine([once]) as engine:
        started = trio.current_time()
        run = success(await engine.client.job(once).now(Nothing()))
        assert run.status == "failed"
        assert isinstance(run.error, djobs.RetryExhaustedError)
        assert isinstance(run.error.last_error, djobs.JobTimeoutError)
        assert run.error.last_error.timeout_seconds == 30
        assert trio.current_time() - started == pytest.approx(30)


@pytest.mark.trio
async def test_a_quick_body_is_not_touched_by_its_timeout(autojump_clock: trio.testing.MockClock) -> None:
    def bump(ctx: djobs.ContinuousContext[Count]) -> Count:
        return Count(ctx.state.n + 1)

    quick = djobs.Continuous.make(
        "quick", state=Count, schedule=djobs.every("1 minute"), execute=bump, timeout="5 seconds"
    )
    async with open_test_engine([quick]) as engine:
        await engine.client.continuous(quick).start(id="q", input=Count())
        await trio.sleep(10 * 60 + 1)
        assert success(await engine.client.continuous(quick).get_state("q")).state.n == 11
        assert engine.tracker.count("job.failed") == 0


@pytest.mark.trio
async def test_terminate_or_clear_ends_a_stuck_instance_of_every_stateful_kind(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    forever_c = djobs.Continuous.make("stuck-c", state=Count, schedule=djobs.every("1 hour"), execute=hang)
    forever_t: djobs.Task[Count, Ping] = djobs.Task.make(
        "stuck-t", state=Count, event=Ping, on_event=lambda _e, ctx: ctx.schedule("1 second"), execute=hang
    )
    forever_d = djobs.Debounce.make("stuck-d", event=Count, flush_after="1 second", execute=hang)
    async with open_test_engine([forever_c, forever_t, forever_d], storage=layer) as engine:
        client = engine.client
        await client.continuous(forever_c).start(id="x", input=Count())
        await client.task(forever_t).send(id="x", event=Ping())
        await client.debounce(forever_d).add(id="x", event=Count(), event_id="e1")
        await trio.sleep(15 * 60)  # each body is still stuck, its lease renewed
        started = trio.current_time()
        with trio.fail_after(5):
            done_c = success(await client.continuous(forever_c).terminate("x", reason="stuck"))
            done_t = success(await client.task(forever_t).terminate("x", reason="stuck"))
            cleared = success(await client.debounce(forever_d).clear("x"))
        assert trio.current_time() - started < 1
        assert done_c.terminated and done_t.terminated
        assert cleared.cleared and cleared.event_count == 1
        assert success(await client.continuous(forever_c).status("x")).status == "not_found"
        assert success(await client.task(forever_t).status("x")).status == "not_found"
        # A clear drops the batch, not the instance: it goes idle and still knows the ids it accepted,
        # as after a clear between flushes (deleting it would accept a retried add a second time).
        assert success(await client.debounce(forever_d).status("x")).status == "idle"
        again = await client.debounce(forever_d).add(id="x", event=Count(), event_id="e1")
        assert isinstance(failure(again), djobs.DuplicateEventError)
        reasons = {e.job_name: e.data.get("reason") for e in engine.tracker.of_type("job.terminated")}
        assert reasons == {"stuck-c": "stuck", "stuck-t": "stuck", "stuck-d": "cleared"}
        assert engine.active_instances == 0


@pytest.mark.trio
async def test_a_blocking_body_outliving_every_lease_runs_once_and_completes(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    """A synchronous body that blocks for 4 virtual minutes (four job leases, eight instance leases)."""
    release = threading.Event()
    starts: list[str] = []

    both_started = threading.Barrier(3)

    def block(params: Nothing, ctx: djobs.JobContext) -> None:
        starts.append("job")
        both_started.wait()
        release.wait()

    def block_state(ctx: djobs.ContinuousContext[Count]) -> Count:
        starts.append("continuous")
        both_started.wait()
        release.wait()
        return Count(ctx.state.n + 1)

    slow_job = djobs.Job.make("slow-job", params=Nothing, execute=block, blocking=True)
    slow_c = djobs.Continuous.make(
        "slow-c", state=Count, schedule=djobs.every("1 day"), execute=block_state, blocking=True, retry=RETRY_TWICE
    )
    async with open_test_engine(
        [slow_job, slow_c], storage=layer, worker=djobs.WorkerOptions(lock_timeout="1 minute")
    ) as engine:
        client = engine.client
        job_id = success(await client.job(slow_job).later(Nothing()))
        await client.continuous(slow_c).start(id="s", input=Count())
        await trio.to_thread.run_sync(both_started.wait)  # both threads run (real time; virtual time may pass)
        await trio.sleep(4 * 60)  # the Trio thread is free meanwhile: leases are renewed
        assert sorted(starts) == ["continuous", "job"]
        assert success(await client.jobs.status(job_id)).status == "running"
        release.set()
        # A day of virtual time: the released threads end in real time, and meanwhile the
        # autojumping clock moves from lease renewal to lease renewal (20 s apart), so a
        # minute's guard was reached after a few real milliseconds on a slow machine.
        with trio.fail_after(24 * 3600):
            await engine.wait_idle()
        assert success(await client.jobs.status(job_id)).status == "completed"
        assert success(await client.continuous(slow_c).get_state("s")).state == Count(1)
        assert sorted(starts) == ["continuous", "job"]  # each started once
        assert engine.tracker.count("job.failed") == 0


@pytest.mark.trio
async def test_a_blocking_body_past_its_timeout_is_abandoned_and_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    release = threading.Event()
    attempts: list[int] = []

    def block(params: Nothing, ctx: djobs.JobContext) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            release.wait()

    slow = djobs.Job.make("slow", params=Nothing, execute=block, blocking=True, timeout="1 minute", max_attempts=2)
    # Virtual time jumps only after 50 ms of real idleness: a thread that returns at once
    # (attempt 2) does so before its virtual timeout, one that blocks (attempt 1) does not.
    autojump_clock.autojump_threshold = 0.05
    try:
        async with open_test_engine([slow]) as engine:
            job_id = success(await engine.client.job(slow).later(Nothing()))
            await trio.sleep(3 * 60)
            info = success(await engine.client.jobs.status(job_id))
            assert info.status == "completed" and info.attempts == 2
            # The first thread may start after the virtual minute has passed: order is not promised.
            assert sorted(attempts) == [1, 2]
            (timed_out,) = timeouts(engine)
            assert timed_out.data["attempt"] == 1 and timed_out.data["will_retry"]
    finally:
        release.set()  # the abandoned thread ends


def test_options_are_checked_when_the_job_is_defined() -> None:
    async def body(params: Nothing, ctx: djobs.JobContext) -> None:
        return None

    def sync_body(params: Nothing, ctx: djobs.JobContext) -> None:
        return None

    with pytest.raises(djobs.ValidationError, match="blocking=True is for a synchronous body"):
        djobs.Job.make("a", params=Nothing, execute=body, blocking=True)
    with pytest.raises(djobs.ValidationError, match="timeout must be positive"):
        djobs.Job.make("a", params=Nothing, execute=sync_body, timeout="0 seconds")
    with pytest.raises(djobs.ValidationError, match="timeout"):
        djobs.Task.make("a", state=Count, event=Ping, on_event=hang, execute=hang, timeout="soon")
    with pytest.raises(djobs.ValidationError, match="blocking must be True or False"):
        djobs.Continuous.make(
            "a",
            state=Count,
            schedule=djobs.every("1 hour"),
            execute=lambda ctx: None,
            blocking="yes",  # type: ignore[arg-type]
        )
    with pytest.raises(djobs.ValidationError, match="on_event"):
        djobs.Debounce.make("a", event=Count, on_event=hang, execute=lambda ctx: None, blocking=True)  # type: ignore[arg-type]
    job = djobs.Job.make("a", params=Nothing, execute=sync_body)
    with pytest.raises(djobs.ValidationError, match="go with execute="):
        djobs.CronJob.make("c", schedule="* * * * *", job=job, timeout="1 minute")
    cron = djobs.CronJob.make("c", schedule="* * * * *", execute=lambda fire, ctx: None, timeout="1 minute")
    assert cron.job.limits.timeout_ms == 60_000
