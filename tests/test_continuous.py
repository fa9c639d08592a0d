"""Continuous jobs: the seed's token refresher and health checker, under a virtual clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
import trio
from returns.future import FutureResult
from returns.io import IOFailure, IOSuccess
from returns.result import Failure, Result, Success
from test_timeouts import layer  # noqa: F401  # the memory / SQLite / PostgreSQL fixture

import djobs
import djobs.storage
from djobs.testing import failure, open_test_engine, success


class Tokens(msgspec.Struct):
    access_token: str
    refresh_token: str
    expires_at: datetime | None = None


async def refresh(ctx: djobs.ContinuousContext[Tokens]) -> Result[None, djobs.ExecutionError]:
    token = f"at-{ctx.run_count}"
    ctx.set_state(msgspec.structs.replace(ctx.state, access_token=token, expires_at=ctx.now() + timedelta(minutes=30)))
    return Success(None)


token_refresher = djobs.Continuous.make(
    "tokenRefresher",
    state=Tokens,
    schedule=djobs.every("30 minutes"),
    retry=djobs.Retry(max_attempts=3, delay=djobs.Backoff.exponential(base="1 second", max="30 seconds")),
    execute=refresh,
)


@pytest.mark.trio
async def test_a_day_of_every_30_minutes_is_49_runs(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([token_refresher]) as engine:
        started = await engine.client.continuous(token_refresher).start(id="user-123", input=Tokens("", "rt_abc"))
        assert started == IOSuccess(djobs.StartResult(created=True, instance_id="user-123", status="running"))
        await trio.sleep(24 * 3600 + 1)
        assert engine.tracker.count("job.executed") == 49
        state = success(await engine.client.continuous(token_refresher).get_state("user-123")).state
        assert state.access_token == "at-49"
        assert state.refresh_token == "rt_abc"
        status = success(await engine.client.continuous(token_refresher).status("user-123"))
        assert status.status == "running"
        assert status.run_count == 49
        assert status.next_run_at == datetime(2026, 1, 2, 0, 30, tzinfo=UTC)


@pytest.mark.trio
async def test_start_immediately_false_waits_for_the_first_interval(autojump_clock: trio.testing.MockClock) -> None:
    lazy = djobs.Continuous.make(
        "lazy", state=Tokens, schedule=djobs.every("1 hour"), start_immediately=False, execute=refresh
    )
    async with open_test_engine([lazy]) as engine:
        await engine.client.continuous(lazy).start(id="a", input=Tokens("", "r"))
        await trio.sleep(3599)
        assert engine.tracker.count("job.executed") == 0
        await trio.sleep(2)
        assert engine.tracker.count("job.executed") == 1


@pytest.mark.trio
async def test_starting_a_running_id_again_does_not_reset_it(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([token_refresher]) as engine:
        client = engine.client.continuous(token_refresher)
        await client.start(id="u", input=Tokens("", "first"))
        await trio.sleep(3600 + 1)
        again = await client.start(id="u", input=Tokens("", "second"))
        assert again == IOSuccess(djobs.StartResult(created=False, instance_id="u", status="running"))
        state = success(await client.get_state("u")).state
        assert state.refresh_token == "first"
        assert success(await client.status("u")).run_count == 3


class Health(msgspec.Struct):
    last_check_at: datetime | None = None
    consecutive_failures: int = 0


def make_health_checker(results: list[bool], seen: list[tuple[int, int, bool]]) -> djobs.Continuous[Health]:
    """The seed's health checker: counts failures and terminates itself after too many."""

    async def check(ctx: djobs.ContinuousContext[Health]) -> None:
        seen.append((ctx.run_count, ctx.attempt, ctx.is_retry))
        healthy = results.pop(0) if results else True
        if not healthy and ctx.state.consecutive_failures >= 2:
            ctx.terminate(reason="Too many failures")
        ctx.update_state(lambda s: Health(ctx.now(), 0 if healthy else s.consecutive_failures + 1))

    return djobs.Continuous.make("healthChecker", state=Health, schedule=djobs.every("5 minutes"), execute=check)


@pytest.mark.trio
async def test_terminate_inside_execute_purges_state_and_the_id_can_start_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[int, int, bool]] = []
    checker = make_health_checker([True, False, False, False], seen)
    async with open_test_engine([checker]) as engine:
        client = engine.client.continuous(checker)
        await client.start(id="api", input=Health())
        await trio.sleep(2 * 300 + 1)
        assert success(await client.get_state("api")).state.consecutive_failures == 2
        await trio.sleep(300)
        assert success(await client.status("api")) == djobs.ContinuousStatus("not_found")
        assert failure(await client.get_state("api")) == djobs.InstanceNotFoundError("healthChecker", "api")
        terminated = engine.tracker.of_type("job.terminated")
        assert [e.data["reason"] for e in terminated] == ["Too many failures"]
        assert [s[0] for s in seen] == [1, 2, 3, 4]
        # The id is free again, and starts from scratch.
        restarted = success(await client.start(id="api", input=Health()))
        assert restarted.created is True
        await engine.wait_idle()
        assert success(await client.status("api")).run_count == 1


@pytest.mark.trio
async def test_retries_follow_the_backoff_and_report_attempts(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[tuple[int, int, bool, datetime]] = []
    fail_times = 2

    async def flaky(ctx: djobs.ContinuousContext[Health]) -> Result[None, djobs.ExecutionError]:
        nonlocal fail_times
        seen.append((ctx.run_count, ctx.attempt, ctx.is_retry, ctx.now()))
        if fail_times:
            fail_times -= 1
            return Failure(djobs.ExecutionError("upstream down"))
        return Success(None)

    job = djobs.Continuous.make(
        "flaky",
        state=Health,
        schedule=djobs.every("1 hour"),
        execute=flaky,
        retry=djobs.Retry(max_attempts=3, delay=djobs.Backoff.exponential(base="1 second", max="30 seconds")),
    )
    async with open_test_engine([job]) as engine:
        t0 = engine.clock.now_ms()
        await engine.client.continuous(job).start(id="x", input=Health())
        await trio.sleep(10)
        assert [(r, a, is_retry) for r, a, is_retry, _ in seen] == [(1, 1, False), (1, 2, True), (1, 3, True)]
        offsets = [(when.timestamp() * 1000 - t0) / 1000 for *_, when in seen]
        assert offsets == [0, 1, 3]  # 1 s, then 2 s: exponential from 1 s
        failed = engine.tracker.of_type("job.failed")
        assert [e.data["will_retry"] for e in failed] == [True, True]
        assert engine.tracker.count("job.executed") == 1
        # The schedule goes on after the retried run succeeded.
        await trio.sleep(3600)
        assert len(seen) == 4 and seen[-1][:3] == (2, 1, False)


@pytest.mark.trio
async def test_exhausted_retries_terminate_the_instance(autojump_clock: trio.testing.MockClock) -> None:
    def always_fails(ctx: djobs.ContinuousContext[Health]) -> None:
        raise RuntimeError("boom")

    job = djobs.Continuous.make(
        "doomed",
        state=Health,
        schedule=djobs.every("1 minute"),
        execute=always_fails,
        retry=djobs.Retry(max_attempts=3, delay=djobs.Backoff.fixed("1 second")),
    )
    async with open_test_engine([job]) as engine:
        await engine.client.continuous(job).start(id="x", input=Health())
        await trio.sleep(60)
        assert engine.tracker.count("job.failed") == 3
        exhausted = engine.tracker.of_type("job.retry_exhausted")
        assert len(exhausted) == 1 and exhausted[0].data["attempts"] == 3
        assert "RuntimeError: boom" in exhausted[0].data["reason"]
        assert success(await engine.client.continuous(job).status("x")).status == "not_found"


@pytest.mark.trio
async def test_failed_state_changes_are_not_committed(autojump_clock: trio.testing.MockClock) -> None:
    async def half_done(ctx: djobs.ContinuousContext[Health]) -> Result[None, str]:
        ctx.set_state(Health(consecutive_failures=99))
        return Failure("nope")

    job = djobs.Continuous.make("half", state=Health, schedule=djobs.every("1 hour"), execute=half_done)
    async with open_test_engine([job]) as engine:
        await engine.client.continuous(job).start(id="x", input=Health())
        await engine.wait_idle()
        state = success(await engine.client.continuous(job).get_state("x")).state
        assert state.consecutive_failures == 0
        [failed] = engine.tracker.of_type("job.failed")
        assert failed.data["will_retry"] is False
        assert failed.data["error"]["message"] == "job returned a failure: 'nope'"
        # No retry policy: the run failed, the instance stays on its schedule.
        assert success(await engine.client.continuous(job).status("x")).status == "running"


@pytest.mark.trio
async def test_trigger_runs_now_and_keeps_the_schedule(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([token_refresher]) as engine:
        client = engine.client.continuous(token_refresher)
        await client.start(id="u", input=Tokens("", "r"))
        await trio.sleep(60)
        triggered = success(await client.trigger("u"))
        assert triggered == djobs.TriggerResult(instance_id="u", run_count=2, outcome="succeeded")
        status = success(await client.status("u"))
        assert status.next_run_at == datetime(2026, 1, 1, 0, 30, tzinfo=UTC)
        assert failure(await client.trigger("nobody")) == djobs.InstanceNotFoundError("tokenRefresher", "nobody")


@pytest.mark.trio
async def test_client_terminate(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([token_refresher]) as engine:
        client = engine.client.continuous(token_refresher)
        await client.start(id="u", input=Tokens("", "r"))
        await engine.wait_idle()
        assert success(await client.terminate("u", reason="user asked")) == djobs.TerminateResult(True, "u")
        assert success(await client.terminate("u")) == djobs.TerminateResult(False, "u")
        assert success(await client.status("u")).status == "not_found"
        await trio.sleep(3600)
        assert engine.tracker.count("job.executed") == 1  # only the immediate first run


@pytest.mark.trio
async def test_the_three_body_forms(autojump_clock: trio.testing.MockClock) -> None:
    from returns.context import RequiresContextFutureResult

    class Deps(msgspec.Struct):
        greeting: str

    calls: list[str] = []

    def plain(ctx: djobs.ContinuousContext[Health]) -> FutureResult[None, djobs.ExecutionError]:
        calls.append("future")
        return FutureResult.from_value(None)

    def reader(ctx: djobs.ContinuousContext[Health]) -> RequiresContextFutureResult[None, djobs.ExecutionError, Deps]:
        def use(deps: Deps) -> FutureResult[None, djobs.ExecutionError]:
            calls.append(deps.greeting)
            return FutureResult.from_value(None)

        return RequiresContextFutureResult(use)

    jobs = [
        djobs.Continuous.make("future", state=Health, schedule=djobs.every("1 hour"), execute=plain),
        djobs.Continuous.make("reader", state=Health, schedule=djobs.every("1 hour"), execute=reader),
    ]
    async with open_test_engine(jobs, services=Deps("hello")) as engine:
        for job in jobs:
            await engine.client.continuous(job).start(id="x", input=Health())
        await engine.wait_idle()
        assert sorted(calls) == ["future", "hello"]
        assert engine.tracker.count("job.executed") == 2


@pytest.mark.trio
async def test_bad_input(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([token_refresher]) as engine:
        unknown = await engine.client.continuous("nope").start(id="x", input=None)
        assert unknown == IOFailure(djobs.JobNotFoundError("nope"))
        bad = failure(await engine.client.continuous(token_refresher).start(id="x", input={"access_token": 5}))
        assert isinstance(bad, djobs.ValidationError)
        assert "Tokens" in bad.message
        wrong_type = Tokens(access_token=123, refresh_token="r")  # type: ignore[arg-type]
        assert isinstance(
            failure(await engine.client.continuous(token_refresher).start(id="y", input=wrong_type)),
            djobs.ValidationError,
        )
        for bad_id in ["", "x" * 10_000, "nul\x00byte", 42]:
            err = failure(await engine.client.continuous(token_refresher).start(id=bad_id, input=Tokens("", "r")))  # type: ignore[arg-type]
            assert isinstance(err, djobs.ValidationError), bad_id
        # Nothing was stored by any of those calls.
        for some_id in ["x", "y", ""]:
            status = success(await engine.client.continuous(token_refresher).status(some_id or "z"))
            assert status.status == "not_found"


@pytest.mark.trio
async def test_state_set_in_a_run_is_validated(autojump_clock: trio.testing.MockClock) -> None:
    def corrupting(ctx: djobs.ContinuousContext[Health]) -> None:
        ctx.set_state(Health(consecutive_failures="many"))  # type: ignore[arg-type]

    job = djobs.Continuous.make("corrupt", state=Health, schedule=djobs.every("1 hour"), execute=corrupting)
    async with open_test_engine([job]) as engine:
        await engine.client.continuous(job).start(id="x", input=Health(consecutive_failures=1))
        await engine.wait_idle()
        [failed] = engine.tracker.of_type("job.failed")
        assert failed.data["error"]["tag"] == "validation"
        assert success(await engine.client.continuous(job).get_state("x")).state.consecutive_failures == 1


@pytest.mark.trio
async def test_a_state_returned_by_a_scheduled_run_is_validated_and_stored_as_returned_or_set(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def returning(ctx: djobs.ContinuousContext[Health]) -> Health:
        n = ctx.state.consecutive_failures
        if ctx.run_count == 3:
            return Health(consecutive_failures="many")  # type: ignore[arg-type]
        if ctx.run_count == 4:
            kept = Health(consecutive_failures=n + 1)
            ctx.set_state(kept)
            kept.consecutive_failures = 40  # changed in place after set_state: not stored
            return None  # type: ignore[return-value]
        return Health(consecutive_failures=n + 1)

    job = djobs.Continuous.make("returning", state=Health, schedule=djobs.every("1 hour"), execute=returning)
    async with open_test_engine([job]) as engine:
        client = engine.client.continuous(job)
        await client.start(id="x", input=Health(consecutive_failures=0))
        await trio.sleep(3600 + 1)  # the second run, fired by its alarm
        assert success(await client.get_state("x")).state.consecutive_failures == 2
        await trio.sleep(3600)  # the third returns a state of the wrong shape: the run fails, nothing stored
        [failed] = engine.tracker.of_type("job.failed")
        assert failed.data["error"]["tag"] == "validation"
        assert success(await client.get_state("x")).state.consecutive_failures == 2
        await trio.sleep(3600)
        assert success(await client.get_state("x")).state.consecutive_failures == 3


@pytest.mark.trio
async def test_two_jobs_with_one_name_fail_at_open() -> None:
    twin = djobs.Continuous.make("tokenRefresher", state=Health, schedule=djobs.every("1 hour"), execute=refresh)
    with pytest.raises(djobs.ValidationError, match="tokenRefresher"):
        async with open_test_engine([token_refresher, twin]):
            pass  # pragma: no cover


@pytest.mark.trio
async def test_pause_drops_a_pending_retry_and_resume_starts_a_fresh_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[int, int, datetime]] = []

    async def flaky(ctx: djobs.ContinuousContext[Health]) -> Result[None, djobs.ExecutionError]:
        seen.append((ctx.run_count, ctx.attempt, ctx.now()))
        if len(seen) == 1:
            return Failure(djobs.ExecutionError("upstream down"))
        return Success(None)

    job = djobs.Continuous.make(
        "flaky",
        state=Health,
        schedule=djobs.cron("0 * * * *"),
        execute=flaky,
        retry=djobs.Retry(max_attempts=3, delay="1 minute"),
    )
    async with open_test_engine([job]) as engine:
        start = datetime.fromtimestamp(engine.clock.now_ms() / 1000, UTC)
        client = engine.client.continuous(job)
        success(await client.start(id="x", input=Health()))
        await trio.sleep(10)  # the first try failed; its retry is due at 00:01
        assert success(await client.status("x")).next_run_at == start + timedelta(minutes=1)
        assert success(await client.pause("x")).next_run_at is None
        await trio.sleep(3 * 3600)  # neither the retry nor the hourly runs happen
        assert len(seen) == 1
        resumed = success(await client.resume("x"))
        assert resumed.next_run_at == start + timedelta(hours=4)  # the next fire time after 03:00:10
        await trio.sleep(3600)
        assert seen[1:] == [(2, 1, start + timedelta(hours=4))]  # a new run, first attempt


@pytest.mark.trio
async def test_an_alarm_moved_while_its_claim_waits_fires_at_its_new_time(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
) -> None:
    # The hourly alarm falls due while a triggered run holds the instance, so its claim waits
    # behind that run; the run fails and sets its retry, ten minutes on (the stored alarm
    # rewritten in place, its id kept). The claim that waited must not run the retry early.
    gate = trio.Event()
    seen: list[tuple[float, bool]] = []

    async def flaky(ctx: djobs.ContinuousContext[Health]) -> Result[None, djobs.ExecutionError]:
        seen.append((trio.current_time(), ctx.is_retry))
        if len(seen) == 2:  # the triggered run
            await gate.wait()
            return Failure(djobs.ExecutionError("upstream down"))
        return Success(None)

    job = djobs.Continuous.make(
        "flaky",
        state=Health,
        schedule=djobs.every("1 hour"),
        execute=flaky,
        retry=djobs.Retry(max_attempts=3, delay="10 minutes"),
    )
    async with open_test_engine([job], storage=layer) as engine:
        client = engine.client.continuous(job)
        success(await client.start(id="x", input=Health()))
        await engine.wait_idle()
        t0 = seen[0][0]

        async def trigger() -> None:
            await client.trigger("x")

        await trio.sleep(3600 - 1 - (trio.current_time() - t0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trigger)
            await trio.sleep(2)  # the hourly alarm is due and claimed; its handler waits for the run
            gate.set()
        await trio.sleep(300)
        assert [(round(at - t0), retry) for at, retry in seen] == [(0, False), (3599, False)]
        await trio.sleep(600)
        assert [(round(at - t0), retry) for at, retry in seen[2:]] == [(3601 + 600, True)]
