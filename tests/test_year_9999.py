"""Nothing is scheduled after the year 9999: a time djobs computes from a schedule or a
duration past that limit is refused where the caller gave it (start, resume, add), and
ends a schedule where it arises inside a run, on every storage."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import trio
from postgres_support import STORAGE_KINDS, drop_schema, new_schema_name, postgres_dsn, storage_layer

import djobs
from djobs._schedule import next_fire
from djobs.testing import failure, open_test_engine, success


class Count(msgspec.Struct):
    n: int = 0


def tick(ctx: djobs.ContinuousContext[Count]) -> None:
    ctx.set_state(Count(ctx.state.n + 1))


def flush(ctx: Any) -> None:
    pass


century = djobs.Continuous.make("century", state=Count, schedule=djobs.every("36525 days"), execute=tick)
century_later = djobs.Continuous.make(
    "century_later", state=Count, schedule=djobs.every("36525 days"), execute=tick, start_immediately=False
)
new_year = djobs.Continuous.make("new_year", state=Count, schedule=djobs.cron("0 0 1 1 *"), execute=tick)
slow = djobs.Debounce.make("slow", event=Count, flush_after="36525 days", execute=flush)
JOBS = [century, century_later, new_year, slow]


def run_on(
    kind: str,
    tmp_path: Any,
    start: datetime,
    scenario: Any,
    caplog: pytest.LogCaptureFixture,
    jobs: Sequence[Any] = JOBS,
) -> None:
    schema = new_schema_name() if kind == "postgres" else None

    async def main() -> None:
        async with open_test_engine(jobs, storage=storage_layer(kind, str(tmp_path), schema), start=start) as engine:
            await scenario(engine)

    try:
        with caplog.at_level(logging.WARNING, logger="djobs"):
            trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        if schema is not None:
            drop_schema(postgres_dsn() or "", schema)
    # Nothing escaped a handler: the engine logs no bug.
    assert not [r for r in caplog.records if "bug" in r.getMessage()], caplog.text


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_continuous_whose_next_run_is_after_9999_runs_once_and_has_no_next_run(
    kind: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(engine: Any) -> None:
        client = engine.client.continuous(century)
        assert success(await client.start(id="c", input=Count())).created
        await trio.sleep(1)
        status = success(await client.status("c"))
        assert (status.status, status.run_count, status.next_run_at) == ("stopped", 1, None)
        assert success(await client.get_state("c")).state == Count(1)
        # Resumed after a pause, its next run would still be after 9999: refused, and it stays paused.
        success(await client.pause("c"))
        error = failure(await client.resume("c"))
        assert isinstance(error, djobs.ValidationError) and LIMIT in error.message
        assert success(await client.status("c")).status == "stopped"

    run_on(kind, tmp_path, datetime(9990, 1, 1, tzinfo=UTC), scenario, caplog)
    assert "has no next run" in caplog.text


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_start_whose_first_run_is_after_9999_is_refused_and_stores_nothing(
    kind: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(engine: Any) -> None:
        client = engine.client.continuous(century_later)
        error = failure(await client.start(id="c", input=Count()))
        assert isinstance(error, djobs.ValidationError) and LIMIT in error.message
        assert success(await client.status("c")).status == "not_found"

    run_on(kind, tmp_path, datetime(9990, 1, 1, tzinfo=UTC), scenario, caplog)


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_cron_with_no_occurrence_left_before_9999_ends_after_its_run(
    kind: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(engine: Any) -> None:
        client = engine.client.continuous(new_year)
        assert success(await client.start(id="c", input=Count())).created
        await trio.sleep(1)
        status = success(await client.status("c"))
        assert (status.status, status.run_count, status.next_run_at) == ("stopped", 1, None)

    run_on(kind, tmp_path, datetime(9999, 6, 1, tzinfo=UTC), scenario, caplog)
    assert "has no next run" in caplog.text


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_debounce_add_whose_flush_is_after_9999_is_refused_and_stores_nothing(
    kind: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(engine: Any) -> None:
        client = engine.client.debounce(slow)
        error = failure(await client.add(id="d", event=Count()))
        assert isinstance(error, djobs.ValidationError) and LIMIT in error.message
        assert success(await client.status("d")).status == "not_found"

    run_on(kind, tmp_path, datetime(9990, 1, 1, tzinfo=UTC), scenario, caplog)


fired: list[datetime] = []


def cron_body(fire: djobs.CronFire, ctx: djobs.JobContext) -> None:
    fired.append(fire.scheduled_at)


new_year_cron = djobs.CronJob.make("new_year_cron", schedule="0 0 1 1 *", execute=cron_body)
noon = djobs.CronJob.make("noon", schedule="0 12 * * *", execute=cron_body)


def run_crons_on(kind: str, tmp_path: Any, start: datetime, scenario: Any, caplog: pytest.LogCaptureFixture) -> None:
    fired.clear()
    run_on(kind, tmp_path, start, scenario, caplog, jobs=[new_year_cron, noon])


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_cron_job_with_no_fire_left_before_9999_fires_what_is_due_then_has_no_next_fire(
    kind: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(engine: Any) -> None:
        await trio.sleep(36 * 3600 + 60)  # past 9999-12-31 12:00, the next noon, which is after the limit
        crons = {c.name: c for c in success(await engine.client.crons.list())}
        assert crons["noon"].next_run_at is None and crons["new_year_cron"].next_run_at is None
        assert success(await engine.client.crons.next_runs("noon", 3)) == []

    run_crons_on(kind, tmp_path, datetime(9999, 12, 30, tzinfo=UTC), scenario, caplog)
    # The one noon before the limit ran; the cron job that ends says so once, not every second.
    assert fired == [datetime(9999, 12, 30, 12, tzinfo=UTC)]
    assert caplog.text.count("cron noon has no next fire") == 1, caplog.text


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_cron_job_whose_schedule_raises_for_no_fire_left_fires_once_then_has_no_next_fire(
    kind: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(engine: Any) -> None:
        await trio.sleep(3600)  # past 9999-01-01 00:00, the last new year
        crons = {c.name: c for c in success(await engine.client.crons.list())}
        assert crons["new_year_cron"].next_run_at is None
        assert success(await engine.client.crons.next_runs("new_year_cron", 3)) == []

    run_crons_on(kind, tmp_path, datetime(9998, 12, 31, 23, 30, tzinfo=UTC), scenario, caplog)
    assert datetime(9999, 1, 1, tzinfo=UTC) in fired
    assert caplog.text.count("cron new_year_cron has no next fire") == 1, caplog.text


crossed: list[object] = []


async def cross_the_limit(params: Count, ctx: djobs.JobContext) -> None:
    await trio.sleep(2 * 86400)  # from 9999-12-30 to past the last instant a datetime holds
    try:
        crossed.append(ctx.now())
    except djobs.SchedulerError as error:
        crossed.append(error)


crossing = djobs.Job.make("crossing", params=Count, execute=cross_the_limit)
hourly = djobs.Continuous.make("hourly", state=Count, schedule=djobs.every("1 hour"), execute=tick)
hourly_cron = djobs.Continuous.make("hourly_cron", state=Count, schedule=djobs.cron("0 * * * *"), execute=tick)


async def echo(input: Count, ctx: djobs.WorkflowContext) -> Count:
    return input


echoing = djobs.Workflow.make("echoing", input=Count, result=Count, execute=echo)


def after_9999(outcome: Any) -> bool:
    # A StorageError, which every verb's type allows (the engine cannot serve), saying why.
    error = failure(outcome)
    return (
        isinstance(error, djobs.StorageError)
        and "clock reads" in error.message
        and "after the year 9999" in error.message
    )


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_clock_past_the_end_of_9999_refuses_verbs_and_stamps_nothing_without_a_bug(
    kind: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    crossed.clear()

    async def scenario(engine: Any) -> None:
        for job in (hourly, hourly_cron):
            assert success(await engine.client.continuous(job).start(id="c", input=Count())).created
        success(await engine.client.job(crossing).later(Count()))
        await trio.sleep(86400 + 1)
        # The schedules stopped at the limit, 9999-12-31 00:00: runs from 9999-12-30 00:00 to it.
        for job in (hourly, hourly_cron):
            status = success(await engine.client.continuous(job).status("c"))
            assert (status.status, status.run_count, status.next_run_at) == ("stopped", 25, None)
        await trio.sleep(2 * 86400)  # 10000-01-02: no datetime holds the clock's time
        # Every verb says why it is refused; none is a bug, and nothing is written.
        assert after_9999(await engine.client.continuous(hourly).status("c"))
        assert after_9999(await engine.client.continuous(hourly).start(id="d", input=Count()))
        assert after_9999(await engine.client.job(crossing).later(Count()))
        assert after_9999(await engine.client.job(crossing).now(Count()))
        assert after_9999(await engine.client.crons.list())
        # A workflow's start and a Debounce add (their own paths past `effect`) too: the start
        # stored the workflow before, and the add said its batch would flush too late.
        assert after_9999(await engine.client.workflow(echoing).start(id="w", input=Count()))
        assert after_9999(await engine.client.debounce(slow).add(id="d", event=Count()))
        await trio.sleep(3600)

    jobs = [hourly, hourly_cron, crossing, echoing, slow]
    run_on(kind, tmp_path, datetime(9999, 12, 30, tzinfo=UTC), scenario, caplog, jobs=jobs)
    # The body that slept past it was told by ctx.now(), with the same error.
    [error] = crossed
    assert isinstance(error, djobs.SchedulerError) and "after the year 9999" in error.message


def test_a_memory_layer_reopened_after_its_clock_passed_9999_refuses_verbs_without_a_bug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    layer = djobs.memory()

    async def past_the_end() -> None:
        async with open_test_engine([hourly], storage=layer):
            await trio.sleep(8000 * 366 * 86400)  # from 2026 to past the end of 9999

    async def reopened() -> None:
        # Its clock goes on from where the last engine on the layer left it.
        async with open_test_engine([hourly], storage=layer) as engine:
            assert after_9999(await engine.client.continuous(hourly).status("c"))

    with caplog.at_level(logging.WARNING, logger="djobs"):
        trio.run(past_the_end, clock=trio.testing.MockClock(autojump_threshold=0))
        trio.run(reopened, clock=trio.testing.MockClock(autojump_threshold=0))
    assert not [r for r in caplog.records if "bug" in r.getMessage()], caplog.text


def test_no_schedule_has_a_run_after_a_time_past_9999() -> None:
    # A reading past the limit (a clock that went on) has no next run, where a cron's
    # calendar walk raised OverflowError past datetime's last day.
    past = 253_402_387_200_000  # 10000-01-02
    for schedule in (djobs.every("1 hour"), djobs.cron("0 * * * *"), djobs.cron("30 1 * * *", tz="Europe/Paris")):
        assert next_fire(schedule, past) is None
    with pytest.raises(djobs.SchedulerError, match="after the year 9999"):
        djobs.cron("0 * * * *").next_after(past)


async def late_sleeper(params: Count, ctx: djobs.WorkflowContext) -> str:
    await ctx.sleep("20 hours")
    return "woke"


async def late_waiter(params: Count, ctx: djobs.WorkflowContext) -> str:
    got = await ctx.wait_for_signal("go", Count, timeout="20 hours")
    return "timed out" if isinstance(got, djobs.TimedOut) else "signalled"


async def dated_sleeper(params: Count, ctx: djobs.WorkflowContext) -> str:
    await ctx.sleep(datetime(9999, 12, 30, tzinfo=UTC))  # its start: over at once
    await ctx.wait_for_signal("go", Count)
    return "signalled"


sleeper = djobs.Workflow.make("sleeper", input=Count, result=str, execute=late_sleeper)
waiter = djobs.Workflow.make("waiter", input=Count, result=str, execute=late_waiter)
dated = djobs.Workflow.make("dated", input=Count, result=str, execute=dated_sleeper)


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_workflow_replays_a_sleep_and_a_wait_its_first_run_took_near_9999(
    kind: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Started 9999-12-30 00:00, a 20-hour sleep and wait end by the limit (9999-12-31 00:00) and
    # are taken; the replay that wakes at 20:00 (or takes the signal at 19:00) reads them again,
    # judged from when they were first taken, not from its own time (where they would end past it).
    async def scenario(engine: Any) -> None:
        for workflow, id in ((sleeper, "s"), (waiter, "timed"), (waiter, "signalled")):
            assert success(await engine.client.workflow(workflow).start(id=id, input=Count())).created
        await trio.sleep(19 * 3600)
        success(await engine.client.workflow(waiter).signal("signalled", "go", Count()))
        await trio.sleep(3600 + 1)
        assert success(await engine.client.workflow(sleeper).result("s")) == "woke"
        assert success(await engine.client.workflow(waiter).result("timed")) == "timed out"
        assert success(await engine.client.workflow(waiter).result("signalled")) == "signalled"
        # A sleep until a time already past is over at once; replayed past the limit (a signal
        # at 9999-12-31 06:00), it is the replay's time that is after it, not the sleep.
        assert success(await engine.client.workflow(dated).start(id="d", input=Count())).created
        await trio.sleep(6 * 3600)
        success(await engine.client.workflow(dated).signal("d", "go", Count()))
        await trio.sleep(1)
        assert success(await engine.client.workflow(dated).result("d")) == "signalled"

    run_on(kind, tmp_path, datetime(9999, 12, 30, tzinfo=UTC), scenario, caplog, jobs=[sleeper, waiter, dated])


#: What every refusal of a time past djobs's limit says: the limit instant itself, exactly.
LIMIT = "after 9999-12-31T00:00:00Z, the latest time djobs schedules anything for"
AT_LIMIT = datetime(9999, 12, 31, tzinfo=UTC)


class Note(msgspec.Struct):
    when: datetime


def plan(event: Note, ctx: djobs.TaskEventContext[Count]) -> None:
    ctx.schedule(event.when)


async def sleep_past(params: Count, ctx: djobs.WorkflowContext) -> int:
    await ctx.sleep(timedelta(days=1, milliseconds=1))
    return 1


planned = djobs.Task.make("planned", state=Count, event=Note, on_event=plan, execute=flush)


def nothing(params: Any, ctx: Any) -> None:
    pass


job = djobs.Job.make("later", params=Count, execute=nothing)
sleeps_past = djobs.Workflow.make("sleeps_past", input=Count, result=int, execute=sleep_past)
daily = djobs.CronJob.make("daily", schedule=djobs.every("1 day"), execute=nothing)
flush_in_a_day = djobs.Debounce.make("day", event=Count, flush_after="1 day 1 ms", execute=flush)


@pytest.mark.trio
async def test_every_refusal_and_warning_states_the_limit_instant(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    definitions = [planned, job, sleeps_past, daily, flush_in_a_day, century_later]
    with caplog.at_level(logging.WARNING, logger="djobs"):
        async with open_test_engine(definitions, start=datetime(9999, 12, 30, tzinfo=UTC)) as engine:
            jobs, tasks = engine.client.job(job), engine.client.task(planned)
            # The limit itself is taken; a millisecond past it is refused, saying where it is.
            assert success(await jobs.later(Count(), at=AT_LIMIT))
            assert success(await tasks.send(id="at", event=Note(AT_LIMIT)))
            refusals = [
                failure(await jobs.later(Count(), at=AT_LIMIT + timedelta(milliseconds=1))),
                failure(await jobs.later(Count(), at=datetime(9999, 12, 31, 23, 59, tzinfo=UTC))),
                failure(await jobs.later(Count(), delay=timedelta(days=1, milliseconds=1))),
                failure(await tasks.send(id="past", event=Note(datetime(9999, 12, 31, 23, 59, tzinfo=UTC)))),
                failure(await engine.client.debounce(flush_in_a_day).add(id="d", event=Count())),
                failure(await engine.client.continuous(century_later).start(id="c", input=Count())),
            ]
            for error in refusals:
                assert isinstance(error, djobs.ValidationError) and LIMIT in error.message, error
            assert success(await engine.client.workflow(sleeps_past).start(id="w", input=Count()))
            await engine.wait_idle()
            status = success(await engine.client.workflow(sleeps_past).status("w"))
            assert status.error is not None and LIMIT in status.error["message"], status
            await trio.sleep(86_400 + 1)  # the daily cron job fires at the limit, 9999-12-31 00:00
    # The daily cron job's next fire (9999-12-31 00:00 plus a day) is past the limit: it has none.
    [ended] = [r.getMessage() for r in caplog.records if "daily" in r.getMessage()]
    assert "no fire by 9999-12-31T00:00:00Z, the latest time djobs schedules anything for" in ended, ended


listener = djobs.Job.make("listener", params=Count, execute=nothing, on="counted")


async def wait_for_go(params: Count, ctx: djobs.WorkflowContext) -> int:
    return (await ctx.wait_for_signal("go", Count)).n


waits = djobs.Workflow.make("waits", input=Count, result=int, execute=wait_for_go)


@pytest.mark.trio
async def test_every_verb_that_starts_work_now_is_taken_after_the_limit_instant(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Between the limit instant and the end of 9999, work due now is not "scheduled after"
    # it: every verb that starts work now takes it, as `later()` with no time does.
    definitions = [job, listener, planned, waits]
    async with open_test_engine(definitions, start=datetime(9999, 12, 31, 1, tzinfo=UTC)) as engine:
        jobs = engine.client.job(job)
        assert success(await jobs.later(Count()))
        assert success(await jobs.later(Count(), delay=timedelta(0)))
        assert success(await jobs.later(Count(), at=AT_LIMIT))  # a past time means now
        assert success(await jobs.now(Count())).status == "completed"
        assert len(success(await jobs.later_many([Count(), Count()]))) == 2
        assert [run.status for run in success(await jobs.batch([Count()]))] == ["completed"]
        assert success(await engine.client.send_event("counted", Count(1))).job_names == ["listener"]
        assert success(await engine.client.send_event("nobody", {})).job_ids == []
        assert success(await engine.client.task(planned).send(id="t", event=Note(AT_LIMIT))).created
        assert success(await engine.client.workflow(waits).start(id="w", input=Count())).created
        assert success(await engine.client.workflow(waits).signal("w", "go", Count(7))).waiting
        await engine.wait_idle()
        assert success(await engine.client.workflow(waits).result("w")) == 7
        # A time after the limit is still refused, and the refusal cites only what was given.
        later = failure(await jobs.later(Count(), delay="1 ms"))
        assert isinstance(later, djobs.ValidationError) and LIMIT in later.message
        assert "got delay='1 ms'" in later.message and "at=" not in later.message, later
        many = failure(await jobs.later_many([Count()], at=datetime(9999, 12, 31, 2, tzinfo=UTC)))
        assert isinstance(many, djobs.ValidationError) and LIMIT in many.message
        assert "got at=" in many.message and "delay=" not in many.message, many
        event = failure(await engine.client.send_event("nobody", {}, delay="1 hour"))
        assert isinstance(event, djobs.ValidationError) and LIMIT in event.message, event
        assert event.message.startswith("an event cannot"), event  # no listener: no job to blame
