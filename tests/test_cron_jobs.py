"""Cron jobs: one run per fire time, across engines, restarts and daylight-saving changes."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import msgspec
import pytest
import trio
import trio.testing

import djobs
from djobs.storage import QueueStorage, Storage, StorageLayer
from djobs.testing import failure, open_test_engine, success

START = datetime(2026, 1, 1, tzinfo=UTC)


class Report(msgspec.Struct):
    kind: str = "daily"


def report_job(fires: list[tuple[str, datetime]]) -> djobs.Job[Report, None]:
    def build(params: Report, ctx: djobs.JobContext) -> None:
        fires.append((params.kind, ctx.now()))

    return djobs.Job.make("report", params=Report, execute=build)


def own_body_cron(name: str, schedule: djobs.Schedule, fires: list[datetime], **options: object) -> djobs.CronJob:
    def tick(fire: djobs.CronFire, ctx: djobs.JobContext) -> None:
        assert fire.cron == name
        fires.append(fire.scheduled_at)

    return djobs.CronJob.make(name, schedule=schedule, execute=tick, **options)  # type: ignore[arg-type]


@pytest.mark.trio
async def test_a_week_of_every_15_minutes_is_672_runs(autojump_clock: trio.testing.MockClock) -> None:
    fires: list[tuple[str, datetime]] = []
    report = report_job(fires)
    quarterly = djobs.CronJob.make(
        "quarterHour", schedule=djobs.cron("*/15 * * * *"), job=report, params=Report("quarter")
    )
    async with open_test_engine([quarterly]) as engine:  # the job comes with the cron job
        await trio.sleep(7 * 24 * 3600 + 60)
        assert len(fires) == 672
        assert fires[0] == ("quarter", START + timedelta(minutes=15))
        assert fires[-1] == ("quarter", START + timedelta(days=7))
        assert len({when for _, when in fires}) == 672
        assert engine.tracker.count("cron.fired") == 672
        [info] = success(await engine.client.crons.list())
        assert info.next_run_at == START + timedelta(days=7, minutes=15)
        assert info.last_run_at == START + timedelta(days=7)
        assert info.last_job_id is not None
        runs = success(await engine.client.jobs.list(correlation_id="cron:quarterHour", limit=1000))
        assert len(runs) == 672 and {r.status for r in runs} == {"completed"}


@pytest.mark.trio
async def test_two_engines_on_one_file_fire_each_time_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    fires: list[datetime] = []
    db = djobs.sqlite(tmp_path / "jobs.db")
    worker = djobs.WorkerOptions(poll_interval="5 minutes")
    every_5 = own_body_cron("every5", djobs.cron("*/5 * * * *"), fires)
    async with (
        open_test_engine([every_5], storage=db, worker=worker) as one,
        open_test_engine([every_5], storage=db, worker=worker) as two,
    ):
        await trio.sleep(24 * 3600 + 30)
        assert len(fires) == 288
        assert Counter(fires).most_common(1)[0][1] == 1  # no fire time twice
        fired = one.tracker.count("cron.fired") + two.tracker.count("cron.fired")
        assert fired == 288
        assert one.tracker.count("cron.fired") > 0 and two.tracker.count("cron.fired") > 0
        runs = success(await one.client.jobs.list(limit=1000))
        assert len(runs) == 288 and {r.status for r in runs} == {"completed"}


@pytest.mark.trio
async def test_a_fire_starts_its_job_in_the_engine_that_fired_it(autojump_clock: trio.testing.MockClock) -> None:
    started: list[datetime] = []

    async def slow(fire: djobs.CronFire, ctx: djobs.JobContext) -> None:
        started.append(ctx.now())
        await trio.sleep(600)

    hourly = djobs.CronJob.make("hourly", schedule=djobs.cron("0 * * * *"), execute=slow)
    async with open_test_engine([hourly]) as engine:
        await trio.sleep(3600 + 1)
        assert started == [START + timedelta(hours=1)]
        [run] = success(await engine.client.jobs.list(correlation_id="cron:hourly"))
        assert (run.status, run.attempts, run.started_at) == ("running", 1, START + timedelta(hours=1))
        assert [t for t in engine.tracker.types() if t.startswith(("cron.", "job."))] == [
            "cron.fired",
            "job.enqueued",
            "job.claimed",
        ]
        await trio.sleep(600)
        [run] = success(await engine.client.jobs.list(correlation_id="cron:hourly"))
        assert (run.status, run.attempts) == ("completed", 1)


def local_wall_times(fires: list[datetime], zone: str) -> list[str]:
    return [f.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M") for f in fires]


@pytest.mark.trio
@pytest.mark.parametrize("start", [datetime(2026, 3, 26, tzinfo=UTC), datetime(2026, 10, 22, tzinfo=UTC)])
async def test_dst_in_berlin_a_fixed_time_fires_once_and_hourly_keeps_the_hours(
    autojump_clock: trio.testing.MockClock, start: datetime
) -> None:
    nightly_fires: list[datetime] = []
    hourly_fires: list[datetime] = []
    nightly = own_body_cron("nightly", djobs.cron("30 2 * * *", tz="Europe/Berlin"), nightly_fires)
    hourly = own_body_cron("hourly", djobs.cron("0 * * * *", tz="Europe/Berlin"), hourly_fires)
    async with open_test_engine([nightly, hourly], start=start):
        await trio.sleep(7 * 24 * 3600)
    days = Counter(w[:10] for w in local_wall_times(nightly_fires, "Europe/Berlin"))
    assert len(nightly_fires) == 7 and set(days.values()) == {1}
    # An hourly cron runs every hour of elapsed time, whatever the wall clock does.
    assert {b - a for a, b in pairwise(hourly_fires)} == {timedelta(hours=1)}
    walls = Counter(w[:10] for w in local_wall_times(hourly_fires, "Europe/Berlin"))
    if start.month == 10:
        # 02:30 happens twice on 25 October; the fixed-time job fires at the first (CEST) one only.
        assert datetime(2026, 10, 25, 0, 30, tzinfo=UTC) in nightly_fires
        assert datetime(2026, 10, 25, 1, 30, tzinfo=UTC) not in nightly_fires
        assert walls["2026-10-25"] == 25  # 02:00 CEST and 02:00 CET
    else:
        # 02:30 does not exist on 29 March; it fires at 03:30 CEST, once.
        assert datetime(2026, 3, 29, 1, 30, tzinfo=UTC) in nightly_fires
        assert walls["2026-03-29"] == 23


# The two cases of the Vixie/cronie rule the issue names, in both directions: (zone, expression,
# start, the local day, fires that day, the one gap between consecutive fires).
REPEATED_HOUR_CASES = [
    ("US/Pacific", "0 * * * *", datetime(2026, 11, 1, 6, tzinfo=UTC), "2026-11-01", 25, timedelta(hours=1)),
    ("US/Pacific", "0 * * * *", datetime(2026, 3, 8, 7, tzinfo=UTC), "2026-03-08", 23, timedelta(hours=1)),
    (
        "Europe/Paris",
        "*/5 * * * *",
        datetime(2026, 10, 24, 21, 55, tzinfo=UTC),
        "2026-10-25",
        300,
        timedelta(minutes=5),
    ),
    ("Europe/Paris", "*/5 * * * *", datetime(2026, 3, 28, 22, 55, tzinfo=UTC), "2026-03-29", 276, timedelta(minutes=5)),
]


@pytest.mark.trio
@pytest.mark.parametrize(("zone", "expression", "start", "day", "count", "gap"), REPEATED_HOUR_CASES)
async def test_an_interval_cron_keeps_elapsed_time_across_dst(
    autojump_clock: trio.testing.MockClock,
    zone: str,
    expression: str,
    start: datetime,
    day: str,
    count: int,
    gap: timedelta,
) -> None:
    fires: list[datetime] = []
    frequent = own_body_cron("frequent", djobs.cron(expression, tz=zone), fires)
    async with open_test_engine([frequent], start=start, worker=djobs.WorkerOptions(poll_interval="1 hour")):
        await trio.sleep(26 * 3600)
    assert {b - a for a, b in pairwise(fires)} == {gap}  # no 65-minute (or two-hour) hole, nothing twice
    assert Counter(w[:10] for w in local_wall_times(fires, zone))[day] == count


@pytest.mark.trio
async def test_a_fixed_time_cron_fires_once_in_the_repeated_hour_of_us_pacific(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fires: list[datetime] = []
    job = own_body_cron("at0130", djobs.cron("30 1 * * *", tz="US/Pacific"), fires)
    async with open_test_engine([job], start=datetime(2026, 10, 31, 12, tzinfo=UTC)):
        await trio.sleep(2 * 24 * 3600)
    # 01:30 PDT on 1 November, then 01:30 PST on 2 November; not 01:30 PST on 1 November.
    assert fires == [datetime(2026, 11, 1, 8, 30, tzinfo=UTC), datetime(2026, 11, 2, 9, 30, tzinfo=UTC)]


@pytest.mark.trio
@pytest.mark.parametrize(("missed", "catch_up"), [("once", 1), ("all", 5), ("skip", 0)])
async def test_fire_times_missed_while_no_engine_ran(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, missed: str, catch_up: int
) -> None:
    fires: list[datetime] = []
    db = djobs.sqlite(tmp_path / "jobs.db")
    hourly = own_body_cron("hourly", djobs.cron("0 * * * *"), fires, missed=missed)
    async with open_test_engine([hourly], storage=db):
        await trio.sleep(3600 + 1)
        assert fires == [START + timedelta(hours=1)]
    # Down from 01:00:01 to 06:30: the fires of 02:00 to 06:00 were missed.
    async with open_test_engine([hourly], storage=db, start=START + timedelta(hours=6, minutes=30)) as engine:
        await engine.wait_idle()
        assert len(fires) == 1 + catch_up
        if missed == "all":
            assert sorted(fires[1:]) == [START + timedelta(hours=h) for h in range(2, 7)]  # run concurrently
        if missed == "once":
            assert fires[1] == START + timedelta(hours=6)  # the latest missed time, as APScheduler's coalesce
        await trio.sleep(30 * 60 + 1)
        assert fires[-1] == START + timedelta(hours=7)  # then on schedule
        assert len(fires) == 2 + catch_up
        skipped = engine.tracker.count("cron.skipped")
        assert skipped == (1 if missed == "skip" else 0)


@pytest.mark.trio
@pytest.mark.parametrize(("missed", "catch_up"), [("once", [5]), ("all", [2, 3, 4, 5]), ("skip", [])])
@pytest.mark.parametrize("schedule", [djobs.every("1 hour"), djobs.cron("37 * * * *")])
async def test_after_an_outage_every_mode_keeps_the_schedule_s_fire_times(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    missed: str,
    catch_up: list[int],
    schedule: djobs.Schedule,
) -> None:
    """An ``every`` counts its intervals from its first fire time through an outage in every
    ``missed`` mode (APScheduler's IntervalTrigger keeps its start-anchored grid), as a cron does."""
    fires: list[datetime] = []
    db = djobs.sqlite(tmp_path / "jobs.db")
    job = own_body_cron("hourly", schedule, fires, missed=missed)
    at_37 = [START + timedelta(hours=h, minutes=37) for h in range(12)]
    async with open_test_engine([job], storage=db, start=START + timedelta(minutes=37)):
        await trio.sleep(3600 + 1)
        assert fires == [at_37[1]]
    # Down from 01:37:01 to 06:10: the fires of 02:37 to 05:37 were missed.
    async with open_test_engine([job], storage=db, start=START + timedelta(hours=6, minutes=10)) as engine:
        await engine.wait_idle()
        assert sorted(fires) == [at_37[1], *(at_37[h] for h in catch_up)]
        assert success(await engine.client.crons.get(job)).next_run_at == at_37[6]
        await trio.sleep(2 * 3600)
        assert sorted(fires)[-2:] == at_37[6:8]


@pytest.mark.trio
@pytest.mark.parametrize(
    ("schedule", "down_for", "latest"),
    [
        # Up at START + 1 s (the first fire is START + 7 min), then down for a year: 75,000 fires
        # of a 7-minute interval missed; the one run is for the last of them, counted from the first.
        (djobs.every("7 minutes"), timedelta(days=365), START + timedelta(minutes=7 * 75_085)),
        # Every minute of 03:00 only, down until 10:00: the last of those minutes, not 03:00.
        (djobs.cron("* 3 * * *"), timedelta(hours=10), START + timedelta(hours=3, minutes=59)),
        # Every minute, down for a year: the minute before the engine came back.
        (djobs.cron("* * * * *"), timedelta(days=365, seconds=30), START + timedelta(days=365)),
    ],
)
async def test_once_runs_for_the_latest_missed_fire_time(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    schedule: djobs.Schedule,
    down_for: timedelta,
    latest: datetime,
) -> None:
    fires: list[datetime] = []
    db = djobs.sqlite(tmp_path / "jobs.db")
    job = own_body_cron("coalesced", schedule, fires, missed="once")
    async with open_test_engine([job], storage=db):
        await trio.sleep(1)
    assert fires == []
    async with open_test_engine([job], storage=db, start=START + down_for) as engine:
        await engine.wait_idle()
        assert fires == [latest]
        [info] = success(await engine.client.crons.list())
        assert info.next_run_at is not None and info.next_run_at > START + down_for


@pytest.mark.trio
async def test_enable_disable_list_and_next_runs(autojump_clock: trio.testing.MockClock) -> None:
    fires: list[tuple[str, datetime]] = []
    report = report_job(fires)
    nine = djobs.CronJob.make("morning", schedule=djobs.cron("0 9 * * *", tz="Europe/Berlin"), job=report)
    async with open_test_engine([report, nine]) as engine:
        crons = engine.client.crons
        [info] = success(await crons.list())
        assert (info.name, info.job_name, info.schedule, info.tz, info.enabled) == (
            "morning",
            "report",
            "0 9 * * *",
            "Europe/Berlin",
            True,
        )
        assert success(await crons.next_runs(nine, 3)) == [datetime(2026, 1, d, 8, tzinfo=UTC) for d in (1, 2, 3)]
        assert not success(await crons.disable("morning")).enabled
        await trio.sleep(3 * 24 * 3600)
        assert fires == []
        enabled = success(await crons.enable(nine))
        assert enabled.enabled and enabled.next_run_at == datetime(2026, 1, 4, 8, tzinfo=UTC)
        await trio.sleep(24 * 3600)
        assert fires == [("daily", datetime(2026, 1, 4, 8, tzinfo=UTC))]  # no catch-up for days it was off
        assert success(await crons.get("morning")).last_run_at == datetime(2026, 1, 4, 8, tzinfo=UTC)
        unknown = failure(await crons.enable("evening"))
        assert unknown == djobs.JobNotFoundError(
            "evening", "no cron job named 'evening' is registered with this engine"
        )
        assert isinstance(failure(await crons.next_runs(nine, 0)), djobs.ValidationError)


@pytest.mark.trio
async def test_a_changed_schedule_replaces_the_stored_next_run(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    fires: list[datetime] = []
    db = djobs.sqlite(tmp_path / "jobs.db")
    async with open_test_engine([own_body_cron("c", djobs.cron("0 12 * * *"), fires)], storage=db) as engine:
        assert success(await engine.client.crons.get("c")).next_run_at == datetime(2026, 1, 1, 12, tzinfo=UTC)
    async with open_test_engine([own_body_cron("c", djobs.cron("0 6 * * *"), fires)], storage=db) as engine:
        assert success(await engine.client.crons.get("c")).next_run_at == datetime(2026, 1, 1, 6, tzinfo=UTC)
        await trio.sleep(7 * 3600)
        assert fires == [datetime(2026, 1, 1, 6, tzinfo=UTC)]


@pytest.mark.trio
async def test_a_client_only_engine_fires_nothing(autojump_clock: trio.testing.MockClock) -> None:
    fires: list[datetime] = []
    async with open_test_engine([own_body_cron("c", djobs.every("1 minute"), fires)], worker=None) as engine:
        await trio.sleep(600)
        assert fires == []
        assert len(success(await engine.client.crons.list())) == 1


@pytest.mark.trio
async def test_bad_cron_definitions_fail_and_store_nothing(autojump_clock: trio.testing.MockClock) -> None:
    fires: list[tuple[str, datetime]] = []
    report = report_job(fires)
    for expression in ("61 * * * *", "every day", "* * * *", "0 0 30 2 *"):
        with pytest.raises(djobs.ValidationError, match="cron expression"):
            djobs.cron(expression)
        with pytest.raises(djobs.ValidationError, match="cron expression"):
            djobs.CronJob.make("bad", schedule=expression, job=report)
    with pytest.raises(djobs.ValidationError, match="unknown time zone"):
        djobs.cron("0 9 * * *", tz="Mars/Olympus")
    with pytest.raises(djobs.ValidationError, match="Report"):
        djobs.CronJob.make("bad", schedule="0 9 * * *", job=report, params={"kind": 5})  # type: ignore[misc]
    with pytest.raises(djobs.ValidationError, match="either job"):
        djobs.CronJob.make("bad", schedule="0 9 * * *")
    with pytest.raises(djobs.ValidationError, match="missed"):
        djobs.CronJob.make("bad", schedule="0 9 * * *", job=report, missed="sometimes")  # type: ignore[arg-type]
    other_report = djobs.Job.make("report", params=Report, execute=lambda p, c: None)
    clash = djobs.CronJob.make("clash", schedule="0 9 * * *", job=other_report)
    with pytest.raises(djobs.ValidationError, match="report"):
        async with open_test_engine([report, clash]):
            pass  # pragma: no cover
    async with open_test_engine([report]) as engine:
        assert isinstance(engine.storage, QueueStorage)
        assert await engine.storage.list_cron_jobs() == []


@pytest.mark.trio
async def test_a_cron_job_with_concurrency_1_never_overlaps_a_slow_run(autojump_clock: trio.testing.MockClock) -> None:
    # Fires every minute, each run takes 150 s: without a limit runs overlap (APScheduler's max_instances).
    spans: list[tuple[float, float]] = []

    async def slow(fire: djobs.CronFire, ctx: djobs.JobContext) -> None:
        began = trio.current_time()
        await trio.sleep(150)
        spans.append((began, trio.current_time()))

    for limit, overlaps in ((None, True), (1, False)):
        spans.clear()
        cron = djobs.CronJob.make("slow", schedule="* * * * *", execute=slow, concurrency=limit)
        async with open_test_engine([cron]):
            await trio.sleep(20 * 60)
        assert len(spans) >= 5
        ordered = sorted(spans)
        assert any(b < a_end for (_, a_end), (b, _) in pairwise(ordered)) is overlaps


class Idle(msgspec.Struct):
    pass


@pytest.mark.trio
async def test_a_cron_fires_on_time_while_every_alarm_handler_allowed_in_flight_still_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The alarm task fires the cron jobs too: its back-pressure (claimed handlers at their
    # limit, 400, none finishing) must not hold up a fire past its time.
    fires: list[datetime] = []
    release = trio.Event()
    finished = 0

    async def hang(ctx: djobs.ContinuousContext[Idle]) -> None:
        nonlocal finished
        await release.wait()
        finished += 1

    stuck = djobs.Continuous.make("stuck", state=Idle, schedule=djobs.every("1 day"), execute=hang)
    minutely = own_body_cron("minutely", djobs.cron("* * * * *"), fires, missed="skip")
    async with open_test_engine([stuck, minutely], max_concurrency=1000) as engine:
        for i in range(450):
            success(await engine.client.continuous(stuck).start(id=f"i{i}", input=Idle()))
        await trio.sleep(5 * 60 + 30)
        assert fires == [START + timedelta(minutes=m) for m in range(1, 6)]
        assert finished == 0
        release.set()
        await engine.wait_idle()
        assert finished == 450


def test_cron_limits_go_with_execute_not_with_job() -> None:
    report = report_job([])
    for option in ({"concurrency": 1}, {"rate_limit": "1/minute"}):
        with pytest.raises(djobs.ValidationError, match="go with execute="):
            djobs.CronJob.make("bad", schedule="0 9 * * *", job=report, **option)
    with pytest.raises(djobs.ValidationError, match="concurrency"):
        djobs.CronJob.make("bad", schedule="0 9 * * *", execute=lambda f, c: None, concurrency=0)


class SlowFireLayer:
    """A storage layer whose `fire_cron` transaction takes `seconds` (of the test's clock)
    before it writes, as a fire waiting on a busy database does; every other call passes through."""

    def __init__(self, inner: StorageLayer, seconds: float) -> None:
        self._inner = inner
        self._seconds = seconds

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[Storage]:
        async with self._inner.open() as inner:
            yield cast(Storage, _SlowFire(inner, self._seconds))

    def open(self) -> AbstractAsyncContextManager[Storage]:
        return self._open()


class _SlowFire:
    def __init__(self, inner: Storage, seconds: float) -> None:
        self._inner = inner
        self._seconds = seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def fire_cron(self, *args: Any) -> bool:
        await trio.sleep(self._seconds)
        fired: bool = await self._inner.fire_cron(*args)  # type: ignore[attr-defined]
        return fired


@pytest.mark.trio
@pytest.mark.parametrize("on_file", [False, True], ids=["memory", "sqlite-file"])
async def test_a_fire_whose_slot_was_taken_while_it_was_written_waits_pending_and_runs_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, on_file: bool
) -> None:
    # One slot. The fire at 01:00 finds it free and is written running under this worker's
    # lease; while its transaction takes 1 s, a 10-minute job due at 01:00:00.5 takes the slot.
    # The fire's row is then handed back pending (attempt not counted) and runs once the slot frees.
    ran: list[tuple[str, datetime, int]] = []

    async def block(params: Report, ctx: djobs.JobContext) -> None:
        ran.append(("blocker", ctx.now(), ctx.attempt))
        await trio.sleep(600)

    def tick(fire: djobs.CronFire, ctx: djobs.JobContext) -> None:
        ran.append(("cron", ctx.now(), ctx.attempt))

    blocker = djobs.Job.make("blocker", params=Report, execute=block)
    hourly = djobs.CronJob.make("hourly", schedule=djobs.cron("0 * * * *"), execute=tick)
    inner = djobs.sqlite(tmp_path / "jobs.db") if on_file else djobs.memory()
    worker = djobs.WorkerOptions(max_concurrency=1, poll_interval=None)
    async with open_test_engine([blocker, hourly], storage=SlowFireLayer(inner, 1.0), worker=worker) as engine:
        success(await engine.client.job(blocker).later(Report(), delay=timedelta(hours=1, milliseconds=500)))
        await trio.sleep(3600 + 2)
        assert ran == [("blocker", START + timedelta(hours=1, milliseconds=500), 1)]
        [fired] = success(await engine.client.jobs.list(correlation_id="cron:hourly"))
        assert (fired.status, fired.attempts, fired.started_at) == ("pending", 0, None)
        await trio.sleep(600)
        assert ran[1:] == [("cron", START + timedelta(hours=1, minutes=10, milliseconds=500), 1)]
        fired_info = success(await engine.client.jobs.status(fired.id))
        assert (fired_info.status, fired_info.attempts) == ("completed", 1)
        assert {r.status for r in success(await engine.client.jobs.list(limit=100))} == {"completed"}
        assert engine.tracker.count("job.claimed") == 2


@pytest.mark.trio
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_fire_whose_body_runs_past_the_job_lease_runs_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, kind: str
) -> None:
    # The fire's row is stored running under the worker's lease and started at once: while its
    # body awaits, the lease is renewed, so it is never reclaimed and run a second time.
    starts: list[datetime] = []

    async def slow(fire: djobs.CronFire, ctx: djobs.JobContext) -> None:
        starts.append(fire.scheduled_at)
        await trio.sleep(5 * 60)  # five lease lengths

    cron = djobs.CronJob.make("slow", schedule=djobs.cron("0 * * * *"), execute=slow)
    layer = djobs.memory() if kind == "memory" else djobs.sqlite(tmp_path / "jobs.db")
    worker = djobs.WorkerOptions(poll_interval=None, lock_timeout="1 minute")
    async with open_test_engine([cron], storage=layer, worker=worker) as engine:
        await trio.sleep(60 * 60 + 10 * 60)
        assert starts == [START + timedelta(hours=1)]
        [run] = success(await engine.client.jobs.list(correlation_id="cron:slow"))
        info = success(await engine.client.jobs.status(run.id))
        assert (info.status, info.attempts) == ("completed", 1)
        assert engine.tracker.of_type("job.lease_expired") == []


@pytest.mark.trio
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("missed", ["skip", "once"])
async def test_a_fire_due_with_a_slow_sibling_is_on_time_not_missed(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, kind: str, missed: str
) -> None:
    # Two cron jobs due together, fired in name order; the first one's synchronous body takes
    # 90 s (past the misfire grace). The engine ran all along: the second's fire is on time,
    # neither skipped nor a catch-up (`missed` is about fire times missed while no engine ran).
    fires: dict[str, list[datetime]] = {"first": [], "second": []}

    def tick(fire: djobs.CronFire, ctx: djobs.JobContext) -> None:
        fires[fire.cron].append(fire.scheduled_at)
        if fire.cron == "first":
            autojump_clock.jump(90)  # a synchronous body of 90 seconds

    hourly = djobs.cron("0 * * * *")
    first = djobs.CronJob.make("first", schedule=hourly, execute=tick)
    second = djobs.CronJob.make("second", schedule=hourly, execute=tick, missed=missed)  # type: ignore[arg-type]
    layer = djobs.memory() if kind == "memory" else djobs.sqlite(tmp_path / "jobs.db")
    async with open_test_engine([first, second], storage=layer) as engine:
        await trio.sleep(3 * 3600 + 10 * 60)
        hours = [START + timedelta(hours=h) for h in (1, 2, 3)]
        assert fires == {"first": hours, "second": hours}
        assert engine.tracker.count("cron.skipped") == 0
        on_time = {(e.job_name, e.data["on_time"]) for e in engine.tracker.of_type("cron.fired")}
        assert on_time == {("first", True), ("second", True)}


class _SteppedClock:
    """The virtual clock, plus time a synchronous body says it took (`spent_ms`): Trio's clock
    cannot move while a body runs without awaiting, a wall clock would."""

    def __init__(self) -> None:
        self.virtual = djobs.VirtualClock(START)
        self.spent_ms = 0

    def now_ms(self) -> int:
        return self.virtual.now_ms() + self.spent_ms

    async def sleep_until(self, epoch_ms: int) -> None:
        await self.virtual.sleep_until(epoch_ms - self.spent_ms)


@pytest.mark.trio
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_fire_stamps_its_events_before_the_body_and_the_job_s_end_after_it(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, kind: str
) -> None:
    clock = _SteppedClock()

    def slow(fire: djobs.CronFire, ctx: djobs.JobContext) -> None:
        clock.spent_ms += 250  # a synchronous body that takes a quarter of a second

    cron = djobs.CronJob.make("hourly", schedule=djobs.cron("0 * * * *"), execute=slow)
    layer = djobs.memory() if kind == "memory" else djobs.sqlite(tmp_path / "jobs.db")
    async with open_test_engine([cron], storage=layer, clock=clock) as engine:
        await trio.sleep(3600 + 1)
        fire = START + timedelta(hours=1)
        stamps = {e.type: e.at for e in engine.tracker.events if e.type.startswith(("cron.", "job."))}
        assert stamps == {
            "cron.fired": fire,
            "job.enqueued": fire,
            "job.claimed": fire,
            "job.executed": fire + timedelta(milliseconds=250),
            "job.completed": fire + timedelta(milliseconds=250),
        }
        [run] = success(await engine.client.jobs.list(correlation_id="cron:hourly"))
        info = success(await engine.client.jobs.status(run.id))
        assert (info.status, info.completed_at) == ("completed", fire + timedelta(milliseconds=250))


@pytest.mark.parametrize("tenant_id", ["", "t" * 513, "a\x00b"], ids=["empty", "513-characters", "nul"])
def test_a_cron_jobs_tenant_id_is_checked_as_an_enqueues_is(tenant_id: str) -> None:
    """Its fires' jobs are stored under it: one longer than 512 characters (or holding NUL) is
    refused at definition, as ``later(tenant_id=...)`` refuses it, not at each fire's enqueue."""
    with pytest.raises(djobs.ValidationError, match="CronJob 'nightly': tenant_id"):
        own_body_cron("nightly", djobs.cron("0 3 * * *"), [], tenant_id=tenant_id)
