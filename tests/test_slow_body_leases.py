"""A lease taken right after a slow synchronous body runs for its whole length.

The alarm task runs a cron job's synchronous body in its own task (the memory store's writes
run inline). The alarm claim after it took its leases from the clock reading taken before the
body: with a body of 20 seconds, an alarm lease of 5 minutes due at the same time ended 4:40
after the handler began, and another engine could have claimed that work 20 seconds early.
The memory store's leases follow the engine's clock (its readings), so it is the one this hit.
"""

from __future__ import annotations

from typing import Any

import msgspec
import trio
import trio.testing

import djobs
from djobs.storage._memory import MemoryStorage
from djobs.testing import open_test_engine, success

BODY_S = 20
LEASE_MS = 5 * 60 * 1000  # the test engine's alarm_lease
INSTANCE_LEASE_MS = 30 * 1000  # the engine's default instance_lease


class Beat(msgspec.Struct):
    n: int = 0


def test_an_alarm_claimed_after_a_slow_synchronous_cron_body_is_leased_from_the_claim() -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)
    engines: list[Any] = []
    seen: list[tuple[int, int, int]] = []  # (the body's start, its alarm's hidden-until, its instance lease's end)

    def slow(fire: djobs.CronFire, ctx: djobs.JobContext) -> None:
        clock.jump(BODY_S)  # a synchronous body that takes 20 seconds

    def beat(ctx: djobs.ContinuousContext[Beat]) -> Beat:
        engine = engines[0]
        storage = engine.storage
        assert isinstance(storage, MemoryStorage)
        key = next(iter(storage._alarms))
        seen.append((engine.clock.now_ms(), storage._alarms[key][2], storage._leases[key][1]))
        return Beat(ctx.run_count)

    crons = djobs.CronJob.make("slow", schedule=djobs.cron("0 * * * *"), execute=slow)
    hourly = djobs.Continuous.make("hourly", state=Beat, schedule=djobs.every("1 hour"), execute=beat)

    async def main() -> None:
        async with open_test_engine([crons, hourly]) as engine:
            engines.append(engine)
            success(await engine.client.continuous(hourly).start(id="one", input=Beat()))
            await trio.sleep(3 * 3600 + 60)

    trio.run(main, clock=clock)
    assert len(seen) == 4, seen
    for began, hidden_until, leased_until in seen:
        assert hidden_until - began >= LEASE_MS, (began, hidden_until)  # was 20 s short after a cron fire
        assert leased_until - began >= INSTANCE_LEASE_MS, (began, leased_until)  # was 10 s, not 30


def test_a_cron_job_fired_after_another_ones_slow_synchronous_body_is_leased_from_its_start() -> None:
    """Two cron jobs due at once: the second's job starts after the first's 20-second body, and
    its lease runs from then (it ran from the reading taken before both)."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    engines: list[Any] = []
    leases: dict[str, list[int]] = {"a": [], "b": []}

    def slow(fire: djobs.CronFire, ctx: djobs.JobContext) -> None:
        engine = engines[0]
        storage = engine.storage
        assert isinstance(storage, MemoryStorage) and ctx.job_id is not None
        row = storage._jobs[ctx.job_id]
        assert row.worker_expires_at is not None
        leases[fire.cron].append(row.worker_expires_at - engine.clock.now_ms())
        clock.jump(BODY_S)  # a synchronous body that takes 20 seconds

    a = djobs.CronJob.make("a", schedule=djobs.cron("0 * * * *"), execute=slow)
    b = djobs.CronJob.make("b", schedule=djobs.cron("0 * * * *"), execute=slow)

    async def main() -> None:
        async with open_test_engine([a, b]) as engine:
            engines.append(engine)
            await trio.sleep(3 * 3600 + 60)

    trio.run(main, clock=clock)
    assert len(leases["a"]) == len(leases["b"]) == 3, leases
    # Every job's lease, as its body begins, is the whole of the worker's lease.
    assert len({*leases["a"], *leases["b"]}) == 1, leases
