"""A test that sleeps until a virtual instant sees the work due at that instant done, every time.

Trio wakes the tasks whose deadlines are equal in one batch, in an order it draws at random;
the engine's wait for a due time must end before a test's ``trio.sleep`` to the same instant,
or the test sees the run in some processes and test orders and not in others.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import djobs
from djobs.testing import open_test_engine

HOUR_S = 3600
START = datetime(2026, 1, 1, tzinfo=UTC)


class Count(msgspec.Struct):
    n: int = 0


def tick(ctx: djobs.ContinuousContext[Count]) -> Count:
    return Count(ctx.state.n + 1)


hourly = djobs.Continuous.make("hourly", state=Count, schedule=djobs.every("1 hour"), execute=tick)


def storage_layer(kind: str) -> djobs.storage.StorageLayer | None:
    return djobs.sqlite(":memory:") if kind == "sqlite" else None


async def continuous_runs_seen(kind: str, before_s: float, start: datetime, slept_s: float) -> int:
    """Runs of an hourly continuous seen `slept_s` after it starts, on an engine opened
    `before_s` of Trio time into the run with its virtual clock at `start`."""
    await trio.sleep(before_s)
    async with open_test_engine([hourly], start=start, storage=storage_layer(kind)) as engine:
        await engine.client.continuous(hourly).start(id="u", input=Count())
        await trio.sleep(slept_s)
        return engine.tracker.count("job.executed")


async def cron_fires_seen(kind: str, before_s: float, start: datetime) -> list[datetime]:
    """The fires of an @hourly cron job seen by a test that sleeps until its first fire time."""
    fires: list[datetime] = []

    def fire(fire: djobs.CronFire, ctx: djobs.JobContext) -> None:
        fires.append(fire.scheduled_at)

    job = djobs.CronJob.make("tick", schedule=djobs.cron("@hourly"), execute=fire)
    first = start.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    await trio.sleep(before_s)
    async with open_test_engine([job], start=start, storage=storage_layer(kind)):
        await trio.sleep((first - start).total_seconds())
        return list(fires)


def run(scenario: Any, *args: Any) -> Any:
    return trio.run(scenario, *args, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@given(
    before_us=st.integers(0, 10**12),
    start_ms=st.integers(0, 24 * 3_600_000 - 1),
)
@settings(max_examples=15, deadline=None)
def test_sleeping_exactly_to_a_run_sees_it_in_every_trio_run(kind: str, before_us: int, start_ms: int) -> None:
    before_s = before_us / 1e6
    start = START + timedelta(milliseconds=start_ms)
    # The same scenario three times in one process: the run at start + 1 hour is seen each
    # time (it was seen in about half of them), and a millisecond less sees it in none.
    assert [run(continuous_runs_seen, kind, before_s, start, HOUR_S) for _ in range(3)] == [2, 2, 2]
    assert [run(continuous_runs_seen, kind, before_s, start, HOUR_S - 0.001) for _ in range(2)] == [1, 1]
    first = start.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    assert [run(cron_fires_seen, kind, before_s, start) for _ in range(3)] == [[first]] * 3


@pytest.mark.trio
@pytest.mark.parametrize("order", ["first", "second", "third"])
async def test_sleeping_exactly_an_hour_sees_the_hourly_run_whatever_the_test_order(
    autojump_clock: trio.testing.MockClock, order: str
) -> None:
    # Three tests of one session, each on its own mock clock: each sees the 01:00 run.
    assert await continuous_runs_seen("memory", 0, START, HOUR_S) == 2
