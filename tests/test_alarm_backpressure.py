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
