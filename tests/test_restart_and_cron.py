"""Durability across restarts on a real file, and cron through the engine under a virtual clock."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import pytest
import trio
from returns.result import Failure, Result, Success

import djobs
from djobs.testing import open_test_engine, success


class Counter_(msgspec.Struct):
    runs: int = 0


def count(ctx: djobs.ContinuousContext[Counter_]) -> None:
    ctx.update_state(lambda s: Counter_(s.runs + 1))


ticker = djobs.Continuous.make("ticker", state=Counter_, schedule=djobs.every("10 minutes"), execute=count)


@pytest.mark.trio
async def test_state_and_schedule_survive_a_restart(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    db = djobs.sqlite(tmp_path / "jobs.db")
    start = datetime(2026, 5, 1, tzinfo=UTC)
    async with open_test_engine([ticker], storage=db, start=start) as engine:
        for i in range(3):
            await engine.client.continuous(ticker).start(id=f"u{i}", input=Counter_())
        await trio.sleep(25 * 60)  # runs at 0, 10, 20 minutes
        assert success(await engine.client.continuous(ticker).get_state("u0")).state.runs == 3
    # A new engine (a new process, in real life) on the same file, 25 minutes after the first opened.
    async with open_test_engine([ticker], storage=db, start=start + timedelta(minutes=25)) as engine:
        await trio.sleep(6 * 60)  # the alarm due at +30 min fires
        for i in range(3):
            state = success(await engine.client.continuous(ticker).get_state(f"u{i}")).state
            assert state.runs == 4
        status = success(await engine.client.continuous(ticker).status("u0"))
        assert status.run_count == 4
        assert status.next_run_at == datetime(2026, 5, 1, 0, 40, tzinfo=UTC)


@pytest.mark.trio
async def test_due_alarms_fire_after_downtime_once(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    db = djobs.sqlite(tmp_path / "jobs.db")
    async with open_test_engine([ticker], storage=db, start=datetime(2026, 5, 1, tzinfo=UTC)) as engine:
        await engine.client.continuous(ticker).start(id="u", input=Counter_())
        await engine.wait_idle()
    # Reopen three hours later: eighteen runs were missed; catch-up runs once, then the schedule resumes.
    async with open_test_engine([ticker], storage=db, start=datetime(2026, 5, 1, 3, tzinfo=UTC)) as engine:
        await engine.wait_idle()
        client = engine.client.continuous(ticker)
        assert success(await client.get_state("u")).state.runs == 2
        assert success(await client.status("u")).next_run_at == datetime(2026, 5, 1, 3, 10, tzinfo=UTC)


@pytest.mark.trio
async def test_a_pending_retry_fires_after_a_restart(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    attempts: list[int] = []

    def fails_first(ctx: djobs.ContinuousContext[Counter_]) -> Result[None, str]:
        attempts.append(ctx.attempt)
        return Failure("not yet") if ctx.attempt == 1 else Success(None)

    job = djobs.Continuous.make(
        "flaky",
        state=Counter_,
        schedule=djobs.every("1 day"),
        execute=fails_first,
        retry=djobs.Retry(max_attempts=3, delay=djobs.Backoff.fixed("1 minute")),
    )
    db = djobs.sqlite(tmp_path / "jobs.db")
    async with open_test_engine([job], storage=db) as engine:
        await engine.client.continuous(job).start(id="u", input=Counter_())
        await engine.wait_idle()
        assert attempts == [1]
    async with open_test_engine([job], storage=db) as engine:
        await trio.sleep(61)
        assert attempts == [1, 2]
        assert engine.tracker.count("job.executed") == 1


def local_days(fires: list[datetime], zone: str) -> Counter[str]:
    return Counter(f.astimezone(ZoneInfo(zone)).date().isoformat() for f in fires)


@pytest.mark.trio
@pytest.mark.parametrize("expression", ["30 1 * * *", "30 2 * * *"])
@pytest.mark.parametrize("start", [datetime(2026, 3, 5, tzinfo=UTC), datetime(2026, 10, 29, tzinfo=UTC)])
async def test_cron_fires_once_a_day_across_dst(
    autojump_clock: trio.testing.MockClock, expression: str, start: datetime
) -> None:
    fires: list[datetime] = []

    def fire(ctx: djobs.ContinuousContext[Counter_]) -> None:
        fires.append(ctx.now())

    job = djobs.Continuous.make(
        "nightly",
        state=Counter_,
        schedule=djobs.cron(expression, tz="America/New_York"),
        start_immediately=False,
        execute=fire,
    )
    async with open_test_engine([job], start=start) as engine:
        await engine.client.continuous(job).start(id="x", input=Counter_())
        await trio.sleep(7 * 24 * 3600)
    days = local_days(fires, "America/New_York")
    assert len(fires) == 7
    assert all(n == 1 for n in days.values()), days
    if start.month == 10 and expression == "30 1 * * *":
        # 01:30 happens twice on 2026-11-01; it fires at the first (EDT) one only.
        assert datetime(2026, 11, 1, 5, 30, tzinfo=UTC) in fires
        assert datetime(2026, 11, 1, 6, 30, tzinfo=UTC) not in fires


@pytest.mark.trio
async def test_a_user_service_is_swapped_for_a_fake(autojump_clock: trio.testing.MockClock) -> None:
    """The layer swap the docs show: the job reaches its HTTP client through ctx.services."""

    class TokenApi:
        async def refresh(self, refresh_token: str) -> str:  # pragma: no cover - the real one is not called
            raise AssertionError("the real API must not be called in a test")

    class FakeTokenApi:
        def __init__(self) -> None:
            self.calls: list[str] = []

        async def refresh(self, refresh_token: str) -> str:
            self.calls.append(refresh_token)
            return f"token-{len(self.calls)}"

    class Tokens(msgspec.Struct):
        access: str
        refresh: str

    async def refresh(ctx: djobs.ContinuousContext[Tokens]) -> None:
        api: TokenApi = ctx.services
        ctx.set_state(Tokens(await api.refresh(ctx.state.refresh), ctx.state.refresh))

    job = djobs.Continuous.make("refresh", state=Tokens, schedule=djobs.every("30 minutes"), execute=refresh)
    fake = FakeTokenApi()
    async with open_test_engine([job], services=fake) as engine:
        await engine.client.continuous(job).start(id="u", input=Tokens("", "rt"))
        await trio.sleep(3600 + 1)
        assert fake.calls == ["rt", "rt", "rt"]
        assert success(await engine.client.continuous(job).get_state("u")).state.access == "token-3"
