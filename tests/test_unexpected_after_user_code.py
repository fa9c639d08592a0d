"""A bug past the user's code (an unexpected exception while an alarm's run is recorded) counts the attempt.

Handing such a run back uncounted made its alarm fire again after every
alarm lease with the same attempt number, forever when the bug repeats.
For Continuous, Debounce and Task alike, the attempt now counts: the retry
policy decides the next one, and when none is left the instance is kept,
inert, with its state (nothing stored is lost). The bug is injected into
the storage's ``commit`` (`faulty(..., kind="bug")`), the step right after
user code.
"""

from __future__ import annotations

from datetime import datetime

import msgspec
import pytest
import trio
import trio.testing

import djobs
from djobs.storage import faulty
from djobs.testing import open_test_engine, success

MINUTE = 60
RETRY = djobs.Retry(max_attempts=3, delay="1 minute")


class Count(msgspec.Struct):
    n: int = 0


class Hook(msgspec.Struct):
    n: int


class Batch(msgspec.Struct):
    ns: list[int]


def add(ctx: djobs.DebounceEventContext[Hook, Batch]) -> Batch:
    return Batch([*(ctx.state.ns if ctx.state else []), ctx.event.n])


def counter(attempts: list[int], retry: djobs.Retry | None) -> djobs.Continuous[Count]:
    def tick(ctx: djobs.ContinuousContext[Count]) -> Count:
        attempts.append(ctx.attempt)
        return Count(ctx.state.n + 1)

    return djobs.Continuous.make("counter", state=Count, schedule=djobs.every("1 hour"), execute=tick, retry=retry)


@pytest.mark.trio
async def test_a_continuous_run_whose_commit_raises_counts_its_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[int] = []
    job = counter(attempts, RETRY)
    storage = faulty(djobs.memory())
    async with open_test_engine([job], storage=storage) as engine:
        client = engine.client.continuous(job)
        success(await client.start(id="a", input=Count()))
        await engine.wait_idle()
        storage.fail("commit", kind="bug", times=1)  # the next run's outcome cannot be recorded
        await trio.sleep(MINUTE * 60 + 1)  # the hourly run
        await trio.sleep(MINUTE + 1)  # its retry, a minute later (not after the 5-minute alarm lease)
        assert storage.injected == 1
        assert attempts == [1, 1, 2]
        assert success(await client.get_state("a")).state.n == 2
        failed = engine.tracker.of_type("job.failed")
        assert [(e.data["attempt"], e.data["will_retry"]) for e in failed] == [(1, True)]
        assert "injected bug" in failed[0].data["error"]["message"]


@pytest.mark.trio
async def test_a_continuous_run_with_no_retry_left_is_paused_with_its_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[int] = []
    job = counter(attempts, None)
    storage = faulty(djobs.memory())
    async with open_test_engine([job], storage=storage) as engine:
        client = engine.client.continuous(job)
        success(await client.start(id="a", input=Count()))
        await engine.wait_idle()
        storage.fail("commit", kind="bug", times=1)
        await trio.sleep(10 * MINUTE * 60)  # ten hours: no run is repeated after the alarm lease
        assert attempts == [1, 1]
        status = success(await client.status("a"))
        assert status.status == "stopped"
        assert success(await client.get_state("a")).state.n == 1  # the last recorded state is kept
        success(await client.resume("a"))  # a person can put it back on its schedule
        await trio.sleep(MINUTE * 60 + 1)
        assert success(await client.get_state("a")).state.n == 2


@pytest.mark.trio
async def test_a_debounce_flush_whose_commit_raises_counts_its_attempt_and_keeps_the_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flushes: list[tuple[int, int, str]] = []

    def flush(ctx: djobs.DebounceContext[Batch]) -> None:
        flushes.append((ctx.attempt, len(ctx.state.ns), ctx.flush_reason))

    job = djobs.Debounce.make(
        "batcher", event=Hook, state=Batch, flush_after="10 seconds", on_event=add, execute=flush, retry=RETRY
    )
    storage = faulty(djobs.memory())
    async with open_test_engine([job], storage=storage) as engine:
        client = engine.client.debounce(job)
        for n in range(3):
            success(await client.add(id="d", event=Hook(n)))
        storage.fail("commit", kind="bug", times=1)
        await trio.sleep(10 + 1)  # the flush; its outcome cannot be recorded
        await trio.sleep(MINUTE + 1)  # the counted retry
        assert flushes == [(1, 3, "flush_after"), (2, 3, "flush_after")]  # the same batch, attempt 2


@pytest.mark.trio
async def test_a_debounce_flush_with_no_retry_left_keeps_its_batch_for_a_manual_flush(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flushes: list[int] = []

    def flush(ctx: djobs.DebounceContext[Batch]) -> None:
        flushes.append(len(ctx.state.ns))

    job = djobs.Debounce.make("batcher", event=Hook, state=Batch, flush_after="10 seconds", on_event=add, execute=flush)
    storage = faulty(djobs.memory())
    async with open_test_engine([job], storage=storage) as engine:
        client = engine.client.debounce(job)
        for n in range(3):
            success(await client.add(id="d", event=Hook(n)))
        storage.fail("commit", kind="bug", times=1)
        await trio.sleep(24 * MINUTE * 60)  # a day: the flush is not repeated after the alarm lease
        assert flushes == [3]
        success(await client.flush("d"))  # the batch is still there
        assert flushes == [3, 3]


class Note(msgspec.Struct):
    text: str


@pytest.mark.trio
async def test_a_task_execute_whose_commit_raises_counts_its_attempt(autojump_clock: trio.testing.MockClock) -> None:
    runs: list[tuple[int, datetime]] = []

    def on_event(event: Note, ctx: djobs.TaskEventContext[Note]) -> None:
        ctx.set_state(event)
        ctx.schedule("10 minutes")

    def execute(ctx: djobs.TaskContext[Note]) -> None:
        runs.append((ctx.attempt, ctx.now()))

    job = djobs.Task.make("reminder", state=Note, event=Note, on_event=on_event, execute=execute, retry=RETRY)
    storage = faulty(djobs.memory())
    async with open_test_engine([job], storage=storage) as engine:
        client = engine.client.task(job)
        success(await client.send(id="t", event=Note("call back")))
        storage.fail("commit", kind="bug", times=1)
        await trio.sleep(10 * MINUTE + 1)
        await trio.sleep(MINUTE + 1)
        assert [attempt for attempt, _ in runs] == [1, 2]
        assert (runs[1][1] - runs[0][1]).total_seconds() == pytest.approx(MINUTE, abs=1)


@pytest.mark.trio
async def test_an_injected_bug_is_raised_at_the_call() -> None:
    layer = faulty(djobs.memory())
    async with layer.open():
        with pytest.raises(djobs.ValidationError, match="at the call"):
            layer.fail("commit", kind="bug", at="commit")


class Nothing(msgspec.Struct):
    pass


@pytest.mark.trio
async def test_a_bug_in_the_job_claim_leaves_the_worker_whole(autojump_clock: trio.testing.MockClock) -> None:
    # The claim loop counted its claim as a hand-off in flight and ended the count only on a
    # StorageError: after any other exception the engine never looked idle again (wait_idle
    # hung; a close waited out its grace). The loop restarts and the job runs.
    ran: list[str] = []

    def work(params: Nothing, ctx: djobs.JobContext) -> None:
        ran.append(ctx.job_id)

    job = djobs.Job.make("work", params=Nothing, execute=work)
    storage = faulty(djobs.memory())
    async with open_test_engine([job], storage=storage, shutdown_grace="10 minutes") as engine:
        storage.fail("claim_jobs", kind="bug", times=1)
        job_id = success(await engine.client.job(job).later(Nothing()))
        with trio.fail_after(60):
            await engine.wait_idle()
        assert ran == [job_id] and storage.injected == 1
        closing = trio.current_time()
    assert trio.current_time() - closing < 60  # not the 10-minute grace
