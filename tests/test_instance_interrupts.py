"""An instance's run that a crash or its body's ``KeyboardInterrupt`` stopped counts its attempt.

A Continuous run, a Debounce flush, a Task's execute and a workflow's run are
woken by a claimed alarm. The body's ``KeyboardInterrupt`` still stops the
engine (it leaves the engine's block, as a real Ctrl-C must), and the run is a
crash: its alarm stays claimed. The claim after it finds the alarm claimed
twice since it was set (`Alarm.claims`), so the stopped run's attempt counts
as failed: the run is retried by its policy and, once its attempts are used
up, takes its kind's failure path, instead of stopping every engine that
starts it, forever (docs/guides/reliability.md, "Exceptions past a body").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from postgres_support import STORAGE_KINDS, fresh_storage_layer

import djobs
import djobs.storage
from djobs.testing import VirtualClock, open_test_engine, success

#: What the error of an attempt whose run never ended says.
STOPPED = "stopped before the run ended"


class Count(msgspec.Struct):
    n: int = 0


@pytest.fixture(params=STORAGE_KINDS)
def layer(request: pytest.FixtureRequest) -> Iterator[djobs.storage.StorageLayer]:
    """One storage that outlives the engines opened on it (a restart of the process)."""
    with fresh_storage_layer(request.param) as made:
        yield made


async def stopped_by_its_body(engine_block: Callable[[], Awaitable[Any]]) -> None:
    """Run `engine_block` (an engine's whole life): a body's KeyboardInterrupt stops it."""
    with pytest.raises(BaseException) as raised:
        await engine_block()
    caught = raised.value
    if isinstance(caught, BaseExceptionGroup):
        assert caught.split(KeyboardInterrupt)[0] is not None, caught
    else:
        assert isinstance(caught, KeyboardInterrupt), caught


def lives(
    definitions: list[Any], layer: djobs.storage.StorageLayer, clock: VirtualClock
) -> Callable[[float, Callable[[djobs.Engine], Awaitable[None]] | None], Awaitable[None]]:
    """An engine's life on `layer`: `begin` (if any) once it is open, then `seconds` of (virtual) time."""

    async def life(seconds: float, begin: Callable[[djobs.Engine], Awaitable[None]] | None = None) -> None:
        async with open_test_engine(definitions, storage=layer, clock=clock) as engine:
            if begin is not None:
                await begin(engine)
            await trio.sleep(seconds)

    return life


# -- Continuous ---------------------------------------------------------------------------


@pytest.mark.trio
@pytest.mark.parametrize("synchronous", [False, True], ids=["async", "sync"])
async def test_a_continuous_run_stopped_by_keyboard_interrupt_counts_its_attempts(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer, synchronous: bool
) -> None:
    """Two engines stopped by the run's Ctrl-C (one per attempt), then the third finds the
    attempts used up: the instance ends as exhausted retries end it (here kept as a dead
    letter), and no engine is stopped again. (A synchronous body runs in batches on SQLite.)"""
    runs: list[int] = []

    def sync_body(ctx: djobs.ContinuousContext[Count]) -> None:
        runs.append(ctx.attempt)
        raise KeyboardInterrupt

    async def body(ctx: djobs.ContinuousContext[Count]) -> None:
        sync_body(ctx)

    job = djobs.Continuous.make(
        "ctrl-c",
        state=Count,
        schedule=djobs.every("1 day"),
        execute=sync_body if synchronous else body,
        retry=djobs.Retry(max_attempts=2, delay="1 second"),
        on_exhausted="dead_letter",
    )
    clock = VirtualClock()  # one for every engine: each restart goes on from the last one's time
    life = lives([job], layer, clock)

    async def start(engine: djobs.Engine) -> None:
        success(await engine.client.continuous(job).start(id="a", input=Count(7)))

    await stopped_by_its_body(lambda: life(3600, start))
    assert runs == [1]
    await stopped_by_its_body(lambda: life(3600, None))  # attempt 1 counted: attempt 2 runs
    assert runs == [1, 2]
    async with open_test_engine([job], storage=layer, clock=clock) as engine:
        await trio.sleep(3600)
        letters = success(await engine.client.dead_letters.list())
    assert runs == [1, 2]
    assert [(le.kind, le.ref, le.attempts, le.payload) for le in letters] == [("continuous", "a", 2, Count(7))]
    assert letters[0].error is not None and STOPPED in letters[0].error.message, letters[0].error


@pytest.mark.trio
async def test_a_continuous_run_without_retries_stopped_by_keyboard_interrupt_fails_and_keeps_its_schedule(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    """With no retry policy a run has one attempt: the next engine records it failed, keeps the
    state and the schedule, and the next run is the schedule's next one (attempt 1 again)."""
    runs: list[tuple[int, int]] = []

    async def body(ctx: djobs.ContinuousContext[Count]) -> Count:
        runs.append((ctx.run_count, ctx.attempt))
        if ctx.run_count == 1:
            raise KeyboardInterrupt
        return Count(ctx.state.n + 1)

    job = djobs.Continuous.make("ctrl-c", state=Count, schedule=djobs.every("1 day"), execute=body)
    clock = VirtualClock()
    life = lives([job], layer, clock)

    async def start(engine: djobs.Engine) -> None:
        success(await engine.client.continuous(job).start(id="a", input=Count(7)))

    await stopped_by_its_body(lambda: life(3600, start))
    async with open_test_engine([job], storage=layer, clock=clock) as engine:
        await trio.sleep(3600)
        status = success(await engine.client.continuous(job).status("a"))
        assert runs == [(1, 1)]
        assert status.status == "running" and status.run_count == 1, status
        assert success(await engine.client.continuous(job).get_state("a")).state == Count(7)
        await trio.sleep(86400)
        assert success(await engine.client.continuous(job).get_state("a")).state == Count(8)
    assert runs == [(1, 1), (2, 1)]


# -- Task -----------------------------------------------------------------------------------


class Plan(msgspec.Struct, tag=True):
    note: str


class Notes(msgspec.Struct):
    note: str
    error: str | None = None


@pytest.mark.trio
@pytest.mark.parametrize("with_on_error", [True, False], ids=["on_error", "no_on_error"])
async def test_a_task_execute_stopped_by_keyboard_interrupt_counts_its_attempts(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer, with_on_error: bool
) -> None:
    """Two engines stopped by ``execute``'s Ctrl-C, then the third finds its attempts used up:
    ``on_error`` gets the failure, as for any execute whose retries are spent (without it the
    state is kept and the task rests), and no engine is stopped again."""
    runs: list[int] = []
    errors: list[str] = []

    def on_event(event: Plan, ctx: djobs.TaskEventContext[Notes]) -> None:
        ctx.set_state(Notes(event.note))
        ctx.schedule("1 minute")

    def execute(ctx: djobs.TaskContext[Notes]) -> None:
        runs.append(ctx.attempt)
        raise KeyboardInterrupt

    def on_error(error: djobs.JobError, ctx: djobs.TaskContext[Notes]) -> None:
        errors.append(error.message)
        ctx.set_state(Notes(ctx.state.note if ctx.state else "", error.message))

    job = djobs.Task.make(
        "ctrl-c",
        state=Notes,
        event=Plan,
        on_event=on_event,
        execute=execute,
        on_error=on_error if with_on_error else None,
        retry=djobs.Retry(max_attempts=2, delay="1 second"),
    )
    clock = VirtualClock()  # one for every engine: each restart goes on from the last one's time
    life = lives([job], layer, clock)

    async def send(engine: djobs.Engine) -> None:
        success(await engine.client.task(job).send(id="a", event=Plan("kept")))

    await stopped_by_its_body(lambda: life(3600, send))
    assert runs == [1]
    await stopped_by_its_body(lambda: life(3600, None))
    assert runs == [1, 2]
    async with open_test_engine([job], storage=layer, clock=clock) as engine:
        await trio.sleep(3600)
        status = success(await engine.client.task(job).status("a"))
        state = success(await engine.client.task(job).get_state("a")).state
    assert runs == [1, 2]
    assert status.status == "idle", status
    if with_on_error:
        assert len(errors) == 1 and STOPPED in errors[0], errors
        assert state == Notes("kept", errors[0])
    else:
        assert state == Notes("kept")


# -- Debounce -------------------------------------------------------------------------------


class Hook(msgspec.Struct):
    n: int


class Hooks(msgspec.Struct):
    seen: list[int] = []


@pytest.mark.trio
@pytest.mark.parametrize("full", [False, True], ids=["flush_after", "max_events"])
async def test_a_debounce_flush_stopped_by_keyboard_interrupt_counts_its_attempts(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer, full: bool
) -> None:
    """Engines stopped by the flush's Ctrl-C, then one finds its attempts used up: the batch is
    kept as a dead letter and the instance purged, as when a flush's retries are spent.

    A batch that `max_events` filled is flushed by the add's own engine without a claim of its
    alarm, so the first stop of that flush is not counted: the alarm's next claim is its first
    (one engine more)."""
    runs: list[int] = []

    def reduce(ctx: djobs.DebounceEventContext[Hook, Hooks]) -> Hooks:
        return Hooks([*(ctx.state.seen if ctx.state is not None else []), ctx.event.n])

    def flush(ctx: djobs.DebounceContext[Hooks]) -> None:
        runs.append(ctx.attempt)
        raise KeyboardInterrupt

    job = djobs.Debounce.make(
        "ctrl-c",
        event=Hook,
        state=Hooks,
        flush_after="1 minute",
        max_events=2 if full else None,
        on_event=reduce,
        execute=flush,
        retry=djobs.Retry(max_attempts=2, delay="1 second"),
    )
    clock = VirtualClock()  # one for every engine: each restart goes on from the last one's time
    life = lives([job], layer, clock)

    async def add(engine: djobs.Engine) -> None:
        for n in (1, 2):
            success(await engine.client.debounce(job).add(id="a", event=Hook(n)))

    await stopped_by_its_body(lambda: life(3600, add))
    stops = [[1], [1, 1], [1, 1, 2]] if full else [[1], [1, 2]]
    assert runs == stops[0]
    for seen in stops[1:]:
        await stopped_by_its_body(lambda: life(3600, None))
        assert runs == seen
    async with open_test_engine([job], storage=layer, clock=clock) as engine:
        await trio.sleep(3600)
        status = success(await engine.client.debounce(job).status("a"))
        letters = success(await engine.client.dead_letters.list())
    assert runs == stops[-1]
    assert status.status == "not_found", status
    assert [(le.kind, le.ref, le.attempts, le.event_count, le.payload) for le in letters] == [
        ("debounce", "a", 2, 2, Hooks([1, 2]))
    ]
    assert letters[0].error is not None and STOPPED in letters[0].error.message, letters[0].error


@pytest.mark.trio
@pytest.mark.parametrize("stopper_first", [True, False], ids=["stopper_first", "stopper_last"])
async def test_a_run_stopped_by_keyboard_interrupt_counts_no_attempt_of_the_runs_fired_with_it(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer, stopper_first: bool
) -> None:
    """Runs due with the stopped one are not charged for its crash: one that ended before it is
    stored, one that had not started or was cut off is handed back, and each runs as its
    attempt 1 (on SQLite they are fired in one batch with it; elsewhere the stop cancels
    their actors)."""
    others: list[tuple[int, int]] = []

    def body(ctx: djobs.ContinuousContext[Count]) -> Count:
        if ctx.instance_id == "stopper":
            raise KeyboardInterrupt
        others.append((ctx.run_count, ctx.attempt))
        return Count(ctx.state.n + 1)

    job = djobs.Continuous.make(
        "ctrl-c",
        state=Count,
        schedule=djobs.every("1 day"),
        execute=body,
        retry=djobs.Retry(max_attempts=2, delay="1 second"),
        start_immediately=False,
    )
    clock = VirtualClock()
    life = lives([job], layer, clock)

    async def start(engine: djobs.Engine) -> None:
        ids = ["stopper", "other"] if stopper_first else ["other", "stopper"]
        for instance_id in ids:
            success(await engine.client.continuous(job).start(id=instance_id, input=Count()))

    await stopped_by_its_body(lambda: life(86400 + 60, start))
    await stopped_by_its_body(lambda: life(3600, None))  # the stopper's attempt 2
    async with open_test_engine([job], storage=layer, clock=clock) as engine:
        await trio.sleep(3600)
        other = success(await engine.client.continuous(job).get_state("other")).state
        stopper = success(await engine.client.continuous(job).status("stopper"))
    # Its run 1 ran once, or again if the stop cut it off before its outcome was stored
    # (at least once): always as attempt 1.
    assert others in ([(1, 1)], [(1, 1), (1, 1)]) and other == Count(1), others
    assert stopper.status == "not_found", stopper  # its attempts used up: deleted, as exhausted retries end it


# -- Workflow -------------------------------------------------------------------------------


class Order(msgspec.Struct):
    n: int = 0


@pytest.mark.trio
@pytest.mark.parametrize("compensates", [False, True], ids=["fails", "compensates"])
async def test_a_workflow_step_stopped_by_keyboard_interrupt_counts_its_attempts(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer, compensates: bool
) -> None:
    """A step whose call raises KeyboardInterrupt every time: each stop is one of its attempts,
    charged when the workflow's alarm is claimed again; once they are spent the body gets
    `StepFailedError` at the step, as from any step whose retries are spent, and may compensate.

    The run `start` began is not claimed: its stop is counted from the claim of its guard
    alarm, so the first attempt stops two engines."""
    calls: list[str] = []

    def charge() -> int:
        calls.append("charge")
        raise KeyboardInterrupt

    def refund() -> int:
        calls.append("refund")
        return 0

    async def body(order: Order, ctx: djobs.WorkflowContext) -> int:
        try:
            return await ctx.step("charge", charge, result=int)
        except djobs.StepFailedError as failed:
            if not compensates:
                raise
            assert STOPPED in failed.error_message, failed
            return await ctx.step("refund", refund, result=int)

    workflow = djobs.Workflow.make(
        "ctrl-c", input=Order, result=int, execute=body, retry=djobs.Retry(max_attempts=2, delay="1 second")
    )
    clock = VirtualClock()
    life = lives([workflow], layer, clock)

    async def start(engine: djobs.Engine) -> None:
        success(await engine.client.workflow(workflow).start(id="w", input=Order()))

    await stopped_by_its_body(lambda: life(3600, start))
    for _ in range(2):
        await stopped_by_its_body(lambda: life(3600, None))
    async with open_test_engine([workflow], storage=layer, clock=clock) as engine:
        await trio.sleep(3600)
        status = success(await engine.client.workflow(workflow).status("w"))
    assert calls == ["charge"] * 3 + (["refund"] if compensates else [])
    [step, *_] = status.steps
    assert (step.name, step.attempts) == ("charge", 2), status.steps
    if compensates:
        assert status.status == "completed", status
    else:
        assert status.status == "failed" and status.error is not None, status
        assert STOPPED in status.error["message"], status.error


@pytest.mark.trio
async def test_a_workflow_whose_body_raises_keyboard_interrupt_at_every_run_fails(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    """A body that stops before any step, at every run: once more runs in a row have stopped
    than the workflow's retry allows attempts (one here), the workflow fails without running
    the body again. (The run `start` began is not claimed, and the first claimed run carries
    the charge for a step it never reaches: three engines stop.)"""
    runs: list[int] = []

    async def body(order: Order, ctx: djobs.WorkflowContext) -> int:
        runs.append(ctx.run_count)
        raise KeyboardInterrupt

    workflow = djobs.Workflow.make("ctrl-c", input=Order, result=int, execute=body)
    clock = VirtualClock()
    life = lives([workflow], layer, clock)

    async def start(engine: djobs.Engine) -> None:
        success(await engine.client.workflow(workflow).start(id="w", input=Order()))

    await stopped_by_its_body(lambda: life(3600, start))
    for _ in range(2):
        await stopped_by_its_body(lambda: life(3600, None))
    async with open_test_engine([workflow], storage=layer, clock=clock) as engine:
        await trio.sleep(3600)
        status = success(await engine.client.workflow(workflow).status("w"))
    assert len(runs) == 3, runs
    assert status.status == "failed" and status.error is not None, status
    assert STOPPED in status.error["message"], status.error
