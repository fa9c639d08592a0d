"""A healthy run that lasts long, or waits for another engine, is never charged as a stopped one.

A claimed alarm is hidden for ``alarm_lease`` (5 minutes); a handler that outlives it
has its alarm claimed again meanwhile (by this engine or another), and an engine can claim
an alarm whose instance another engine holds and wait for its lease. None of those claims
started a run: a later stop of the process must not use up the run's attempts with them,
and with no stop at all every run of the schedule runs.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from postgres_support import STORAGE_KINDS, fresh_storage_layer

import djobs
import djobs.storage
from djobs.testing import VirtualClock, open_test_engine, success


class Count(msgspec.Struct):
    n: int = 0


@pytest.fixture(params=STORAGE_KINDS)
def layer(request: pytest.FixtureRequest) -> Iterator[djobs.storage.StorageLayer]:
    """One storage that outlives the engines opened on it (a restart of the process)."""
    with fresh_storage_layer(request.param) as made:
        yield made


async def stopped(life: Any) -> None:
    """Run `life` (an engine's whole life), which a body's KeyboardInterrupt ends."""
    with pytest.raises(BaseException) as raised:
        await life()
    caught = raised.value
    if isinstance(caught, BaseExceptionGroup):
        assert caught.split(KeyboardInterrupt)[0] is not None, caught
    else:
        assert isinstance(caught, KeyboardInterrupt), caught


@pytest.mark.trio
async def test_a_continuous_run_longer_than_the_alarm_lease_stopped_once_runs_again(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    """The body runs 12 minutes (over two alarm leases), then its process stops once: the
    next engine runs it again, and the stop leaves attempts to spare (3 allowed)."""
    attempts: list[int] = []

    async def body(ctx: djobs.ContinuousContext[Count]) -> Count:
        attempts.append(ctx.attempt)
        if len(attempts) == 1:
            await trio.sleep(12 * 60)
            raise KeyboardInterrupt  # the process stops, once
        return ctx.state

    job = djobs.Continuous.make(
        "slow",
        state=Count,
        schedule=djobs.every("1 day"),
        execute=body,
        retry=djobs.Retry(max_attempts=3, delay="1 second"),
        on_exhausted="dead_letter",
    )
    clock = VirtualClock()

    async def first() -> None:
        async with open_test_engine([job], storage=layer, clock=clock) as engine:
            success(await engine.client.continuous(job).start(id="a", input=Count()))
            await trio.sleep(3600)

    await stopped(first)
    async with open_test_engine([job], storage=layer, clock=clock) as engine:
        await trio.sleep(3600)
        letters = success(await engine.client.dead_letters.list())
        status = success(await engine.client.continuous(job).status("a"))
    assert letters == []
    assert len(attempts) == 2 and attempts[1] <= 2, attempts
    assert status.status == "running"


@pytest.mark.trio
async def test_a_workflow_step_longer_than_the_alarm_lease_stopped_once_runs_again(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    """A step with 5 attempts runs 6 minutes (over one alarm lease) in a run its alarm woke,
    then its process stops once: the next engine calls the step again and the workflow completes."""
    calls: list[str] = []

    async def charge() -> int:
        calls.append("charge")
        if len(calls) == 1:
            await trio.sleep(6 * 60)
            raise KeyboardInterrupt  # the process stops, once
        return 1

    async def body(order: Count, ctx: djobs.WorkflowContext) -> int:
        await ctx.sleep(ctx.now() + datetime.timedelta(minutes=1))  # the run after it is alarm-woken
        return await ctx.step("charge", charge, result=int, retry=djobs.Retry(max_attempts=5, delay="1 second"))

    wf = djobs.Workflow.make("order", input=Count, result=int, execute=body)
    clock = VirtualClock()

    async def first() -> None:
        async with open_test_engine([wf], storage=layer, clock=clock) as engine:
            success(await engine.client.workflow(wf).start(id="w", input=Count()))
            await trio.sleep(3600)

    await stopped(first)
    async with open_test_engine([wf], storage=layer, clock=clock) as engine:
        await trio.sleep(3600)
        status = success(await engine.client.workflow(wf).status("w"))
    assert calls == ["charge", "charge"]
    assert status.status == "completed", status


@pytest.mark.trio
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_scheduled_run_claimed_while_another_engine_runs_a_trigger_runs(
    autojump_clock: trio.testing.MockClock, tmp_path: Any, kind: str
) -> None:
    """No process stops. Engine A (its clock 2 s ahead of B's, as between hosts) runs a
    trigger for 9 minutes, holding the instance; the scheduled run falls due meanwhile, B
    claims it and waits for A's lease, then A claims it again once the alarm lease ends. The
    scheduled run still runs, as attempt 1: no run is judged stopped."""
    runs: list[tuple[str, int, int]] = []

    async def body(ctx: djobs.ContinuousContext[Count]) -> Count:
        runs.append((ctx.job_name, ctx.run_count, ctx.attempt))
        if ctx.job_name == "j" and ctx.run_count == 2:  # the triggered run: longer than the alarm lease
            await trio.sleep(8 * 60)
        return ctx.state

    job = djobs.Continuous.make("j", state=Count, schedule=djobs.every("10 minutes"), execute=body)
    other = djobs.Continuous.make("z", state=Count, schedule=djobs.every("1 day"), execute=body)
    db = djobs.memory() if kind == "memory" else djobs.sqlite(str(tmp_path / "x.db"))
    ahead = VirtualClock(datetime.datetime(2026, 1, 1, 0, 0, 2, tzinfo=datetime.UTC))
    async with (
        open_test_engine([job, other], storage=db, alarm_poll_interval="1 second") as b,
        open_test_engine([job, other], storage=db, alarm_poll_interval=None, clock=ahead) as a,
    ):
        success(await b.client.continuous(job).start(id="a", input=Count()))
        await trio.sleep(9 * 60)

        async def trigger() -> None:
            success(await a.client.continuous(job).trigger("a"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trigger)
            await trio.sleep(3 * 60)  # B has claimed the due alarm, and waits for A's lease
            # A commit that sets an alarm wakes A's sleeper: it claims the alarm again at its lease's end.
            success(await a.client.continuous(other).start(id="other", input=Count()))
        await trio.sleep(20 * 60)
    assert [run for name, run, _ in runs if name == "j"] == [1, 2, 3, 4, 5], runs
    assert all(attempt == 1 for _, _, attempt in runs), runs


@pytest.mark.trio
async def test_a_run_longer_than_the_alarm_lease_that_a_clean_close_cut_off_runs_again(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    """No retry policy; the body runs 12 minutes and the engine closes cleanly at 7 (its grace
    cuts the run off after the alarm was claimed again at 5): the next engine runs it again,
    as attempt 1, and its state is written."""
    runs: list[tuple[int, int]] = []

    async def body(ctx: djobs.ContinuousContext[Count]) -> Count:
        runs.append((ctx.run_count, ctx.attempt))
        await trio.sleep(12 * 60)
        return Count(ctx.state.n + 1)

    job = djobs.Continuous.make("slow", state=Count, schedule=djobs.every("1 day"), execute=body)
    clock = VirtualClock()
    async with open_test_engine([job], storage=layer, clock=clock) as engine:
        success(await engine.client.continuous(job).start(id="a", input=Count()))
        await trio.sleep(7 * 60)
    async with open_test_engine([job], storage=layer, clock=clock) as engine:
        await trio.sleep(3600)
        state = success(await engine.client.continuous(job).get_state("a")).state
    assert runs == [(1, 1), (1, 1)]
    assert state == Count(1)


@pytest.mark.trio
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_storage_error_before_the_body_leaves_the_run_to_run_later(
    autojump_clock: trio.testing.MockClock, tmp_path: Any, kind: str
) -> None:
    """No retry policy; the handler's read of its row fails once (busy) as run 2 falls due: the
    alarm fires again after its lease, and run 2 runs then, as attempt 1."""
    runs: list[tuple[int, int]] = []

    async def body(ctx: djobs.ContinuousContext[Count]) -> Count:
        runs.append((ctx.run_count, ctx.attempt))
        return Count(ctx.state.n + 1)

    job = djobs.Continuous.make("c", state=Count, schedule=djobs.every("1 hour"), execute=body)
    layer = djobs.storage.faulty(djobs.memory() if kind == "memory" else djobs.sqlite(str(tmp_path / "x.db")))
    async with open_test_engine([job], storage=layer) as engine:
        success(await engine.client.continuous(job).start(id="a", input=Count()))
        await trio.sleep(3600 - 1)
        layer.fail("load", kind="busy", times=1)  # one blip as run 2 falls due
        await trio.sleep(3)
        assert layer.injected
        await trio.sleep(1800)
        state = success(await engine.client.continuous(job).get_state("a")).state
    assert runs == [(1, 1), (2, 1)]
    assert state == Count(2)
