"""One rule for every duration djobs takes: at most 36,525 days (100 years).

Every parameter that takes a duration (a definition's option, a client verb's delay or age, a
Task's ``ctx.schedule``, a workflow's ``ctx.sleep``, ``wait_for_signal(timeout=)`` and
``ctx.job(poll=)``) refuses a longer one with a `ValidationError`, the same at definition time,
in a verb and in a context call; the bound itself is accepted. A workflow's ``ctx.sleep`` once
slept until the year 3025 and a Task's ``ctx.schedule`` scheduled for 4764.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from returns.io import IOResult
from returns.pipeline import is_successful
from returns.result import Result

import djobs
import djobs.metrics
import djobs.tracking
from djobs.cli import main as cli_main
from djobs.testing import failure, open_test_engine, success

LONGEST = timedelta(days=36_525)
TOO_LONG: list[object] = [timedelta(days=36_526), "36526 days", "5218 weeks", 36_526 * 86_400_000, "99999999 weeks"]


class Params(msgspec.Struct):
    n: int = 0


class Event(msgspec.Struct):
    delay: str = ""


class State(msgspec.Struct):
    n: int = 0


def noop(params: Params, ctx: djobs.JobContext) -> None:
    pass


job = djobs.Job.make("noop", params=Params, execute=noop, on="ping")


def refused(outcome: Any) -> bool:
    """Whether `outcome` (a raised error, a failed result or a stored failure) is a ValidationError."""
    if isinstance(outcome, djobs.ValidationError):
        return "36525 days" in outcome.message or "100 years" in outcome.message
    return False


async def run(call: Callable[[], object]) -> object:
    """What `call` gives: its error if it raises, its failure if it fails, else what it returned."""
    try:
        value = call()
        if isinstance(value, Awaitable):
            value = await value
    except djobs.ValidationError as error:
        return error
    if isinstance(value, Result) and not is_successful(value):
        return value.failure()
    if isinstance(value, IOResult) and not is_successful(value):
        return failure(value)
    return value


def definitions(value: Any) -> dict[str, Callable[[], object]]:
    """Each definition-time duration option, given `value`."""
    return {
        "every": lambda: djobs.every(value),
        "Every": lambda: djobs.Every(value),
        "Job timeout": lambda: djobs.Job.make("j", params=Params, execute=noop, timeout=value),
        "Continuous timeout": lambda: djobs.Continuous.make(
            "c", state=State, schedule=djobs.every("1 hour"), execute=lambda ctx: None, timeout=value
        ),
        "Debounce flush_after": lambda: djobs.Debounce.make(
            "d", event=State, on_event=lambda ctx: ctx.event, execute=lambda ctx: None, flush_after=value
        ),
        "Debounce timeout": lambda: djobs.Debounce.make(
            "d", event=State, on_event=lambda ctx: ctx.event, execute=lambda ctx: None, timeout=value
        ),
        "Task timeout": lambda: djobs.Task.make(
            "t", event=Event, state=State, on_event=lambda e, ctx: None, execute=lambda ctx: None, timeout=value
        ),
        "CronJob timeout": lambda: djobs.CronJob.make(
            "cr", schedule=djobs.cron("0 3 * * *"), execute=lambda fire, ctx: None, timeout=value
        ),
        "Retry delay": lambda: djobs.Retry(3, delay=value),
        "Retry initial_delay": lambda: djobs.Retry(3, backoff="exponential", initial_delay=value),
        "Retry max_delay": lambda: djobs.Retry(3, backoff="exponential", max_delay=value),
        "Backoff.exponential base": lambda: djobs.Backoff.exponential(base=value),
        "Backoff.exponential max": lambda: djobs.Backoff.exponential(max=value),
        "Backoff.linear base": lambda: djobs.Backoff.linear(base=value),
        "Backoff.linear increment": lambda: djobs.Backoff.linear(increment=value),
        "Backoff.linear max": lambda: djobs.Backoff.linear(max=value),
        "Backoff.fixed": lambda: djobs.Backoff.fixed(value),
        "Retention completed": lambda: djobs.Retention(completed=value),
        "Retention failed": lambda: djobs.Retention(failed=value),
        "Retention cancelled": lambda: djobs.Retention(cancelled=value),
        "Retention idempotency_keys": lambda: djobs.Retention(idempotency_keys=value),
        "Retention event_ids": lambda: djobs.Retention(event_ids=value),
        "Retention dead_letters": lambda: djobs.Retention(dead_letters=value),
        "Retention every": lambda: djobs.Retention(every=value),
        "WorkerOptions lock_timeout": lambda: djobs.WorkerOptions(lock_timeout=value),
        "WorkerOptions poll_interval": lambda: djobs.WorkerOptions(poll_interval=value),
        "RateLimit per": lambda: djobs.RateLimit(1, per=value),
        "postgres connect_timeout": lambda: djobs.postgres("postgresql://nobody@127.0.0.1/none", connect_timeout=value),
        "HttpBatchTracker flush_interval": lambda: djobs.tracking.HttpBatchTracker(
            "http://collector.invalid/e", "test", "key", flush_interval=value
        ),
        "HttpBatchTracker timeout": lambda: djobs.tracking.HttpBatchTracker(
            "http://collector.invalid/e", "test", "key", timeout=value
        ),
        "HttpBatchTracker close_timeout": lambda: djobs.tracking.HttpBatchTracker(
            "http://collector.invalid/e", "test", "key", close_timeout=value
        ),
        "parse_duration": lambda: djobs.parse_duration(value),
    }


#: Not a 100-year limit of their own: a rate limit's window is at most a day, a tracker's close
#: at most the engine's 30 seconds.
BOUNDED_LOWER = {"RateLimit per", "HttpBatchTracker close_timeout"}


@pytest.mark.parametrize("option", list(definitions(None)))
def test_every_definition_time_duration_refuses_more_than_36525_days(option: str) -> None:
    if option == "Every":
        values: list[object] = [v for v in TOO_LONG if isinstance(v, timedelta)]  # Every takes a timedelta
    else:
        values = TOO_LONG
    for value in values:
        outcome = trio.run(run, definitions(value)[option])
        if option in BOUNDED_LOWER:
            assert isinstance(outcome, djobs.ValidationError), (option, value, outcome)
        else:
            assert refused(outcome), (option, value, outcome)
    if option not in BOUNDED_LOWER:
        assert not isinstance(trio.run(run, definitions(LONGEST)[option]), djobs.ValidationError)


@pytest.mark.parametrize(
    "option", ["engine alarm_lease", "engine alarm_poll_interval", "engine shutdown_grace", "engine instance_lease"]
)
def test_every_engine_duration_option_refuses_more_than_36525_days(option: str) -> None:
    name = option.split()[1]

    async def scenario(value: object) -> object:
        try:
            async with open_test_engine([job], **{name: value}):
                return None
        except djobs.ValidationError as error:
            return error

    for value in TOO_LONG:
        assert refused(trio.run(scenario, value, clock=trio.testing.MockClock(autojump_threshold=0))), value


def context_task(value: object) -> djobs.Task[Any, Any, Any]:
    def on_event(event: Event, ctx: djobs.TaskEventContext[State]) -> None:
        ctx.schedule(value)  # type: ignore[arg-type]
        ctx.set_state(State())

    return djobs.Task.make("scheduler", event=Event, state=State, on_event=on_event, execute=lambda ctx: None)


def context_workflow(call: str, value: object) -> djobs.Workflow[Any, Any, Any]:
    async def body(params: Params, ctx: djobs.WorkflowContext) -> int:
        if call == "sleep":
            await ctx.sleep(value)  # type: ignore[arg-type]
        elif call == "wait_for_signal":
            await ctx.wait_for_signal("go", Params, timeout=value)  # type: ignore[arg-type]
        else:
            await ctx.job(job, Params(), poll=value)  # type: ignore[arg-type]
        return 1

    return djobs.Workflow.make("flow", input=Params, result=int, execute=body)


RUN_TIME = [
    "job later delay",
    "job later_many delay",
    "send_event delay",
    "jobs purge older_than",
    "dead_letters purge older_than",
    "Collector run every",
    "cli --older-than",
    "Task ctx.schedule",
    "workflow ctx.sleep",
    "workflow ctx.wait_for_signal timeout",
    "workflow ctx.job poll",
]


@pytest.mark.parametrize("where", RUN_TIME)
def test_every_run_time_duration_refuses_more_than_36525_days(where: str, tmp_path: Any) -> None:
    """A verb answers a ValidationError; a context call fails its run with one, before anything is recorded."""

    async def scenario(value: object) -> object:
        task, flow = context_task(value), context_workflow(where.split()[-1] if "ctx." in where else "", value)
        if "ctx.wait_for_signal" in where:
            flow = context_workflow("wait_for_signal", value)
        elif "ctx.job" in where:
            flow = context_workflow("job", value)
        elif "ctx.sleep" in where:
            flow = context_workflow("sleep", value)
        storage = djobs.sqlite(str(tmp_path / "jobs.db"))
        async with open_test_engine([job, task, flow], storage=storage) as engine:
            client = engine.client
            if where == "job later delay":
                return await run(lambda: client.job(job).later(Params(), delay=value))  # type: ignore[arg-type]
            if where == "job later_many delay":
                return await run(lambda: client.job(job).later_many([Params()], delay=value))  # type: ignore[arg-type]
            if where == "send_event delay":
                return await run(lambda: client.send_event("ping", Params(), delay=value))  # type: ignore[arg-type]
            if where == "jobs purge older_than":
                return await run(lambda: client.jobs.purge(older_than=value))  # type: ignore[arg-type]
            if where == "dead_letters purge older_than":
                return await run(lambda: client.dead_letters.purge(older_than=value))  # type: ignore[arg-type]
            if where == "Collector run every":
                with trio.move_on_after(60):  # an accepted interval would refresh for ever
                    return await run(
                        lambda: djobs.metrics.StorageCollector(engine.storage).run(every=value)  # type: ignore[arg-type]
                    )
                return None
            if where == "cli --older-than":
                return None
            if where == "Task ctx.schedule":
                return await run(lambda: client.task(task).send(id="t", event=Event()))
            success(await client.workflow(flow).start(id="w", input=Params()))
            await engine.wait_idle()
            status = success(await client.workflow(flow).status("w"))
            if status.status != "failed":
                return status
            assert status.error is not None
            return djobs.ValidationError(status.error["message"])

    for value in TOO_LONG:
        if "ctx." in where and isinstance(value, int):
            continue  # a bare number is refused there as ambiguous (seconds or milliseconds?)
        if where == "cli --older-than":
            if not isinstance(value, str):
                continue
            trio.run(scenario, LONGEST, clock=trio.testing.MockClock(autojump_threshold=0))  # makes the file
            code = cli_main(["jobs", "purge", "--older-than", value, "--db", str(tmp_path / "jobs.db"), "--json"])
            assert code == 2, value
            continue
        outcome = trio.run(scenario, value, clock=trio.testing.MockClock(autojump_threshold=0))
        assert refused(outcome), (where, value, outcome)


LIMIT_MS = 36_525 * 86_400_000


@st.composite
def durations(draw: st.DrawFn, *, numbers: bool) -> tuple[object, int]:
    """A duration of a day up to twice the limit, in one of the forms djobs takes, and its length in ms."""
    ms = draw(st.one_of(st.integers(86_400_000, 2 * LIMIT_MS), st.integers(LIMIT_MS - 2, LIMIT_MS + 2)))
    days, rest = divmod(ms, 86_400_000)
    forms: list[object] = [timedelta(milliseconds=ms), f"{ms} ms", f"{days} days {rest} ms" if rest else f"{days} days"]
    if numbers:
        forms.append(ms)  # an int is milliseconds
    return draw(st.sampled_from(forms)), ms


@given(
    option=st.sampled_from([o for o in definitions(None) if o not in BOUNDED_LOWER and o != "Every"]),
    duration=durations(numbers=True),
)
@settings(max_examples=300, deadline=None)
def test_a_definition_time_duration_is_refused_exactly_when_it_is_longer_than_36525_days(
    option: str, duration: tuple[object, int]
) -> None:
    value, ms = duration
    outcome = trio.run(run, definitions(value)[option])
    if ms > LIMIT_MS:
        assert refused(outcome), (option, value, outcome)
    else:
        assert not isinstance(outcome, djobs.ValidationError), (option, value, outcome)
