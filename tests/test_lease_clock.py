"""One clock for leases: on PostgreSQL the server's, on one host its monotonic clock.

Two engines whose clocks disagree by more than a lease must still agree on
whose lease has ended, and a step of the wall clock must not end a lease: the
engines run on virtual clocks started hours apart, or stepped while a job runs.
The tests run under ``MockClock``, so they ask for the storage's own clock by
name (``"auto"`` follows the virtual clock there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing
from postgres_support import postgres_dsn, throwaway_schema

import djobs
from djobs.testing import open_test_engine, success

START = datetime(2026, 1, 1, tzinfo=UTC)


class Report(msgspec.Struct):
    name: str


needs_postgres = pytest.mark.skipif(postgres_dsn() is None, reason="PostgreSQL tests need DJOBS_TEST_POSTGRES_DSN")


@pytest.fixture
def schema() -> Iterator[str]:
    with throwaway_schema(postgres_dsn() or "") as name:
        yield name


@needs_postgres
@pytest.mark.trio
async def test_an_engine_two_hours_ahead_never_runs_an_attempt_another_engine_holds(
    autojump_clock: trio.testing.MockClock, schema: str
) -> None:
    runs: list[tuple[int, datetime]] = []
    started = trio.Event()

    async def build(params: Report, ctx: djobs.JobContext) -> None:
        runs.append((ctx.attempt, ctx.now()))
        started.set()
        await trio.sleep(10 * 60)  # ten minutes: many leases long

    report = djobs.Job.make("report", params=Report, execute=build)
    layer = djobs.postgres(postgres_dsn() or "", schema=schema, lease_clock="database")
    worker = djobs.WorkerOptions(lock_timeout="30 seconds")
    async with open_test_engine([report], storage=layer, start=START, worker=worker) as here:
        job_id = success(await here.client.job(report).later(Report("q4")))
        await started.wait()
        # Another engine whose clock reads two hours later: by its clock every lease `here`
        # took has long ended. By the server's, none has.
        ahead = START + timedelta(hours=2)
        async with open_test_engine([report], storage=layer, start=ahead, worker=worker) as there:
            await trio.sleep(15 * 60)
            assert there.client is not None
        await here.wait_idle()
        info = success(await here.client.jobs.status(job_id))
    assert [attempt for attempt, _ in runs] == [1]
    assert (info.status, info.attempts) == ("completed", 1)


class SteppedClock:
    """A virtual wall clock that an operator (the test) steps."""

    def __init__(self, start: datetime) -> None:
        self._virtual = djobs.testing.VirtualClock(start)
        self.step_ms = 0

    def now_ms(self) -> int:
        return self._virtual.now_ms() + self.step_ms

    async def sleep_until(self, epoch_ms: int) -> None:
        while self.now_ms() < epoch_ms:
            await self._virtual.sleep_until(epoch_ms - self.step_ms)


@pytest.mark.trio
async def test_a_ten_minute_step_of_the_wall_clock_does_not_restart_a_running_job(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    runs: list[int] = []
    started, release = trio.Event(), trio.Event()

    async def build(params: Report, ctx: djobs.JobContext) -> None:
        runs.append(ctx.attempt)
        started.set()
        await release.wait()

    report = djobs.Job.make("report", params=Report, execute=build)
    clock = SteppedClock(START)
    layer = djobs.sqlite(tmp_path / "jobs.db", lease_clock="host")
    worker = djobs.WorkerOptions(lock_timeout="30 seconds")
    async with djobs.open_engine([report], storage=layer, clock=clock, worker=worker) as engine:
        job_id = success(await engine.client.job(report).later(Report("q4")))
        await started.wait()
        clock.step_ms += 10 * 60_000  # the wall clock jumps ten minutes: twenty leases
        await trio.sleep(5 * 60)  # the worker renews and looks for expired leases many times
        release.set()
        await engine.wait_idle()
        info = success(await engine.client.jobs.status(job_id))
    assert runs == [1]
    assert (info.status, info.attempts) == ("completed", 1)


@pytest.mark.parametrize(
    "make",
    [
        lambda c: djobs.sqlite("jobs.db", lease_clock=c),  # type: ignore[arg-type]
        lambda c: djobs.postgres("postgresql://db/x", lease_clock=c),  # type: ignore[arg-type]
    ],
)
def test_lease_clock_takes_only_the_documented_names(make: Callable[[str], object]) -> None:
    with pytest.raises(djobs.ValidationError, match="lease_clock"):
        make("wall")
