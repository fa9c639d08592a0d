"""The alarm sleeper hands due alarms to actors with back-pressure: however many alarms fall
due at once, only a bounded number of handlers is in flight, and every alarm still fires."""

from __future__ import annotations

import msgspec
import pytest
import trio

import djobs
from djobs.testing import open_test_engine, success


class Count(msgspec.Struct):
    n: int = 0


async def slow_tick(ctx: djobs.ContinuousContext[Count]) -> Count:
    await trio.sleep(5)  # handlers stay in flight a while
    return Count(ctx.state.n + 1)


ticker = djobs.Continuous.make(
    "ticker", state=Count, schedule=djobs.every("1 hour"), execute=slow_tick, start_immediately=False
)


@pytest.mark.trio
async def test_a_thousand_due_alarms_keep_a_bounded_number_of_actors(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([ticker]) as engine:
        client = engine.client.continuous(ticker)
        for i in range(1000):
            assert success(await client.start(id=f"i{i}", input=Count()))
        await engine.wait_idle()
        assert engine.active_instances == 0
        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                most = max(most, engine.active_instances)
                await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await trio.sleep(3600)  # all 1,000 first runs fall due together
            await trio.sleep(120)
            nursery.cancel_scope.cancel()
        # At most twice the claim batch (200) in flight, not an actor per due alarm.
        assert 0 < most <= 400
        runs = [success(await client.get_state(f"i{i}")).state for i in range(1000)]
        assert runs == [Count(1)] * 1000


runs: list[tuple[float, int]] = []


async def outlives_its_alarm_lease(ctx: djobs.ContinuousContext[Count]) -> Count:
    runs.append((trio.current_time(), ctx.state.n))
    await trio.sleep(90)  # past the alarm's one-minute claim: the sleeper claims it again meanwhile
    return Count(ctx.state.n + 1)


long_runner = djobs.Continuous.make(
    "long_runner", state=Count, schedule=djobs.every("1 hour"), execute=outlives_its_alarm_lease
)


@pytest.mark.trio
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_an_alarm_claimed_again_while_its_handler_runs_fires_once(
    autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    # The claim hides an alarm for the alarm lease; a handler that runs longer sees it claimed
    # again (same id) and queued behind it on the instance's actor. The run's check-in rewrites
    # the alarm in place (same id, the next hour), so the second claim finds the stored alarm
    # changed and does nothing: every hour runs once, none is skipped or run twice.
    runs.clear()
    storage = djobs.sqlite(":memory:") if kind == "sqlite" else None
    async with open_test_engine([long_runner], storage=storage, alarm_lease="1 minute") as engine:
        client = engine.client.continuous(long_runner)
        assert success(await client.start(id="c", input=Count()))
        await trio.sleep(3 * 3600 + 120)
        status = success(await client.status("c"))
        assert status.run_count == 4 and success(await client.get_state("c")).state == Count(4)
    assert [(round(t - runs[0][0]), n) for t, n in runs] == [(0, 0), (3600, 1), (7200, 2), (10800, 3)]
