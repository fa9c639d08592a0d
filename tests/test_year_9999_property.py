"""Nothing computed from a schedule or a duration is stored past the year 9999, for any interval
and any clock near that limit: a start or an add is accepted with its times within the limit, or
refused with a ValidationError saying so; status always reads back; the engine logs no bug.
(The examples in test_year_9999.py run each case on every storage; here the times vary.)"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from returns.pipeline import is_successful

import djobs
from djobs.testing import failure, open_test_engine, success

LIMIT = datetime(9999, 12, 31, tzinfo=UTC)


class Count(msgspec.Struct):
    n: int = 0


def tick(ctx: djobs.ContinuousContext[Count]) -> None:
    ctx.set_state(Count(ctx.state.n + 1))


def flush(ctx: Any) -> None:
    pass


@given(
    start=st.datetimes(min_value=datetime(9990, 1, 1), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)),
    interval_hours=st.integers(1, 36_525 * 24),
    flush_hours=st.integers(1, 36_525 * 24),
    immediately=st.booleans(),
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_time_past_9999_is_stored_and_nothing_escapes(
    start: datetime, interval_hours: int, flush_hours: int, immediately: bool, caplog: pytest.LogCaptureFixture
) -> None:
    every = djobs.Continuous.make(
        "every",
        state=Count,
        schedule=djobs.every(timedelta(hours=interval_hours)),
        execute=tick,
        start_immediately=immediately,
    )
    batch = djobs.Debounce.make("batch", event=Count, flush_after=timedelta(hours=flush_hours), execute=flush)

    def refused_for_9999(outcome: Any) -> bool:
        if is_successful(outcome):
            return False
        error = failure(outcome)
        return isinstance(error, djobs.ValidationError) and (
            "after 9999-12-31T00:00:00Z, the latest time djobs schedules anything for" in error.message
        )

    async def main() -> None:
        async with open_test_engine([every, batch], storage=djobs.memory(), start=start) as engine:
            continuous = engine.client.continuous(every)
            started = await continuous.start(id="c", input=Count())
            if not refused_for_9999(started):
                assert success(started).created
            added = await engine.client.debounce(batch).add(id="d", event=Count())
            if not refused_for_9999(added):
                success(added)
            await trio.sleep(2 * 86_400)
            status = success(await continuous.status("c"))
            assert status.next_run_at is None or status.next_run_at <= LIMIT, status
            batch_status = success(await engine.client.debounce(batch).status("d"))
            assert batch_status.will_flush_at is None or batch_status.will_flush_at <= LIMIT, batch_status

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="djobs"):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert not [r for r in caplog.records if "bug" in r.getMessage()], caplog.text
