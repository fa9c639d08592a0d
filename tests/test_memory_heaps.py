"""The memory store's heaps hold about as many entries as it has live rows, however long it runs.

Its heaps (pending rows by due time, running rows by lease end) are checked lazily: a row that
leaves its place leaves its entry behind, dropped when it comes to the top. An entry of a job
that ran and finished before its lease ran out never came to the top while the engine ran: an
hourly cron job left one every hour (8,760 a virtual year), and a long-running test engine grew
without bound. So did a cancelled pending job's entry while its due time lay ahead, and an alarm's
old entry, set again or cleared, until its old due time.
"""

from __future__ import annotations

from typing import Any

import msgspec
import trio
import trio.testing

import djobs
from djobs.storage._memory import MemoryStorage
from djobs.testing import open_test_engine, success

DAY = 24 * 3600


def fire(fire: djobs.CronFire, ctx: djobs.JobContext) -> None:
    pass


hourly = djobs.CronJob.make("hourly", schedule=djobs.cron("0 * * * *"), execute=fire)


class Nothing(msgspec.Struct):
    pass


later = djobs.Job.make("later", params=Nothing, execute=lambda params, ctx: None)


def heap_entries(storage: Any) -> int:
    assert isinstance(storage, MemoryStorage)
    lanes = [storage._free, storage._keyed, storage._by_key]
    pending = sum(len(heap) for table in lanes for lane in table.values() for heap in lane.values())
    return pending + len(storage._expiry) + len(storage._alarm_heap)


def test_an_hourly_cron_job_over_a_virtual_year_leaves_the_heaps_small() -> None:
    sizes: list[int] = []

    async def main() -> None:
        async with open_test_engine([hourly]) as engine:
            for _ in range(12):
                await trio.sleep(30 * DAY)
                sizes.append(heap_entries(engine.storage))
            assert success(await engine.client.jobs.list(limit=1))  # the jobs ran and are kept

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # A few live entries and what a sweep leaves to gather: not 720 more each month.
    assert max(sizes) <= 2_100, sizes


def test_cancelled_pending_jobs_leave_no_entries_behind() -> None:
    async def main() -> None:
        async with open_test_engine([later]) as engine:
            jobs = engine.client.job(later)
            for _ in range(5_000):
                job_id = success(await jobs.later(Nothing(), delay="100 days"))
                assert success(await engine.client.jobs.cancel(job_id)).status == "cancelled"
            assert heap_entries(engine.storage) <= 2_100

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class Seen(msgspec.Struct):
    n: int = 0


def push_back(event: Seen, ctx: djobs.TaskEventContext[Seen]) -> None:
    ctx.set_state(event)
    ctx.schedule("30 days")  # a session's timeout, pushed back on every event


session = djobs.Task.make("session", state=Seen, event=Seen, on_event=push_back, execute=lambda ctx: None)


def test_an_alarm_set_again_on_every_event_leaves_no_entries_behind() -> None:
    """Ten Task instances each push their 30-day alarm back on each of 5,000 events: the alarm
    heap holds about the ten live alarms plus what a sweep leaves to gather, not an entry per event."""

    async def main() -> None:
        async with open_test_engine([session]) as engine:
            task = engine.client.task(session)
            for n in range(5_000):
                success(await task.send(id=f"u{n % 10}", event=Seen(n)))
            storage = engine.storage
            assert isinstance(storage, MemoryStorage)
            assert len(storage._alarms) == 10
            assert len(storage._alarm_heap) <= 1_100

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
