"""One clock for leases: on PostgreSQL the server's, whatever the engines' clocks say.

Two engines whose clocks disagree by more than a lease must still agree on
whose lease has ended; the engines run on virtual clocks started hours apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
import trio
import trio.testing
from postgres_support import require_postgres, throwaway_schema

import djobs
from djobs.testing import open_test_engine, success

DSN = require_postgres()
START = datetime(2026, 1, 1, tzinfo=UTC)


class Report(msgspec.Struct):
    name: str


@pytest.fixture
def schema() -> Iterator[str]:
    with throwaway_schema(DSN) as name:
        yield name


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
    layer = djobs.postgres(DSN, schema=schema)  # lease_clock="database", the default
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


@pytest.mark.trio
async def test_lease_clock_takes_only_the_two_documented_names() -> None:
    with pytest.raises(djobs.ValidationError, match="lease_clock"):
        djobs.postgres(DSN, lease_clock="wall")  # type: ignore[arg-type]
