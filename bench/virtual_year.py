"""virtual_year: a year of an hourly Continuous job and an hourly cron job under the test engine (target < 1 s).

What a test suite pays to check a schedule over a long span: the test
engine (in-memory storage, virtual clock) runs under
``trio.testing.MockClock(autojump_threshold=0)``, so the clock jumps to the
next alarm whenever every task is blocked. One Continuous instance runs
``every("1 hour")`` and one ``CronJob`` enqueues a no-op job at ``0 * * * *``:
8,760 runs of each over 365 days. The clock runs from opening the engine
until the virtual year has passed; afterwards the counts are checked.

Floor: the same number of virtual-clock wake-ups with no framework (one Trio
task sleeping an hour at a time under the same MockClock, twice per hour),
what the clock alone costs. ``--days`` shortens the span for a quick run.

Besides the times, one untimed run over two virtual days counts, per
virtual hour, the distinct virtual instants at which any task ran (each
past the first is a jump of the mock clock), the passes of Trio's run loop
and the task steps: the steady figures on a loaded machine.
"""

from __future__ import annotations

import time

import msgspec
import trio
import trio.testing

import djobs
from djobs.testing import open_test_engine, success

from _common import cpu_seconds, median, parse_args, peak_rss_mb, report

TARGET_S = 1.0
HOUR_S = 3600


class Beat(msgspec.Struct):
    n: int = 0


class Runs:
    continuous = 0
    cron = 0


def beat(ctx: djobs.ContinuousContext[Beat]) -> Beat:
    Runs.continuous += 1
    return Beat((ctx.state.n if ctx.state else 0) + 1)


def on_fire(fire: djobs.CronFire, ctx: djobs.JobContext) -> None:
    Runs.cron += 1


hourly = djobs.Continuous.make("hourly", state=Beat, schedule=djobs.every("1 hour"), execute=beat)
hourly_cron = djobs.CronJob.make("hourlyCron", schedule=djobs.cron("0 * * * *"), execute=on_fire)


async def djobs_run(days: int) -> float:
    Runs.continuous = Runs.cron = 0
    start = time.perf_counter()
    async with open_test_engine([hourly, hourly_cron]) as engine:
        success(await engine.client.continuous(hourly).start(id="one", input=Beat()))
        await trio.sleep(days * 24 * HOUR_S + 60)
    elapsed = time.perf_counter() - start
    hours = days * 24
    # Within one of the span's hour count: whether the first hour fires at the start depends on the kind.
    if abs(Runs.continuous - hours) > 1 or abs(Runs.cron - hours) > 1:
        raise SystemExit(f"expected about {hours} runs of each, got {Runs.continuous} continuous, {Runs.cron} cron")
    return elapsed


class _Steps(trio.abc.Instrument):
    """Counts the run loop's passes, the task steps and the distinct virtual instants of a step."""

    def __init__(self) -> None:
        self.passes = 0
        self.steps = 0
        self.instants: set[float] = set()

    def before_io_wait(self, timeout: float) -> None:
        self.passes += 1

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1
        self.instants.add(trio.current_time())


def count_steps(days: int) -> dict[str, float]:
    """Per virtual hour of an untimed run: wake instants, run-loop passes, task steps."""
    steps = _Steps()
    trio.run(djobs_run, days, clock=trio.testing.MockClock(autojump_threshold=0), instruments=[steps])
    hours = days * 24
    return {
        "wake_instants": round(len(steps.instants) / hours, 2),
        "loop_passes": round(steps.passes / hours, 1),
        "task_steps": round(steps.steps / hours, 1),
    }


async def floor_run(days: int) -> float:
    start = time.perf_counter()
    for _ in range(days * 24):
        await trio.sleep(HOUR_S / 2)
        await trio.sleep(HOUR_S / 2)
    return time.perf_counter() - start


def main() -> None:
    args = parse_args(__doc__ or "", quick={"days": 7}, days=365)
    times, floors = [], []
    cpu = 0.0
    for _ in range(args.runs):
        cpu0 = cpu_seconds()
        times.append(trio.run(djobs_run, args.days, clock=trio.testing.MockClock(autojump_threshold=0)))
        cpu += cpu_seconds() - cpu0
        floors.append(trio.run(floor_run, args.days, clock=trio.testing.MockClock(autojump_threshold=0)))
    seconds, floor = median(times), median(floors)
    continuous_runs, cron_runs = Runs.continuous, Runs.cron
    runs_per_span = continuous_runs + cron_runs
    per_hour = count_steps(min(args.days, 2))
    report(
        "virtual_year",
        real_s=round(seconds, 3),
        floor_real_s=round(floor, 4),
        ratio_to_floor=round(seconds / floor, 1) if floor else None,
        # The target is for a whole year; a shorter --days run is scaled up to one.
        year_real_s=round(seconds * 365 / args.days, 3),
        scaled_from_days=args.days if args.days != 365 else None,
        targets={"year_real_s": "< 1"},
        met={"year_real_s": seconds * 365 / args.days < TARGET_S},
        days=args.days,
        continuous_runs=continuous_runs,
        cron_runs=cron_runs,
        per_virtual_hour=per_hour,
        runs=args.runs,
        peak_rss_mb=round(peak_rss_mb(), 1),
        cpu_ms_per_1000=round(cpu / (args.runs * runs_per_span) * 1_000_000, 1),
    )


if __name__ == "__main__":
    main()
