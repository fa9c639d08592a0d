"""Every context method that takes a number, text or duration from a body answers bad input the same way.

The rule (queue.md's context table, reliability.md's "What djobs accepts"): a value a context
method takes either has its documented effect, or the call raises a `ValidationError` in the body,
which then fails with it (as ``ctx.set_state`` and ``ctx.schedule`` always have) — never a silent
no-op, never a value stored as something else, never another error. Text a job *produces* (a
progress message, a ``ctx.terminate`` reason) is kept, escaped and cut to its length, but must be
text. Before, ``ctx.update_progress(math.nan)`` stored 0, ``update_progress("50")`` did nothing,
``update_progress(True)`` stored 1, a message of ``5`` was stored as ``"5"``, and
``ctx.terminate(reason=b"x")`` (or any object) terminated with a reason that was no text.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from fractions import Fraction
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from postgres_support import STORAGE_KINDS, dropped_after, new_schema_name, storage_layer, storage_settings
from returns.pipeline import is_successful

import djobs
from djobs._input import clean_text
from djobs.testing import failure, open_test_engine, success


class P(msgspec.Struct):
    n: int = 0


@dataclass
class Called:
    """What one context call did in the body: returned, or raised `error`."""

    error: BaseException | None = None


# -- the values, and what each method is documented to make of them --------------------------

VALUES = st.one_of(
    st.floats(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.fractions(),
    st.booleans(),
    st.none(),
    st.text(st.characters(codec=None, exclude_categories=())),  # NUL and lone surrogates included
    st.sampled_from(["50", "5 minutes", "-1 second", "nan", "a\x00b", "\ud800", "x" * 600, "y" * 1200]),
    st.binary(max_size=4),
    st.timedeltas(),
    st.builds(object),
)


def is_finite_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return isinstance(value, int) or math.isfinite(float(value))
    except OverflowError:  # a Fraction no float holds
        return False


def percent_stored(value: object) -> int | None:
    """The progress `value` is stored as (rounded, clamped to 0-100), or ``None`` if it is refused."""
    return max(0, min(100, round(value))) if is_finite_number(value) else None  # type: ignore[call-overload]


def produced(limit: int) -> Callable[[object], tuple[bool, str | None]]:
    """Text a job produces: (taken, as kept) — escaped and cut to `limit` — or refused if not a str."""

    def model(value: object) -> tuple[bool, str | None]:
        if value is None:
            return True, None
        if isinstance(value, str):
            return True, clean_text(value)[:limit]
        return False, None

    return model


progress_message = produced(512)
terminate_reason = produced(1000)


def a_name(value: object) -> bool:
    """Whether `value` is a name a workflow's log takes (a text argument of at most 200 characters)."""
    if not isinstance(value, str) or not 0 < len(value) <= 200 or "\x00" in value or "\x1f" in value:
        return False
    return not any("\ud800" <= c <= "\udfff" for c in value)


def an_id(value: object) -> bool | None:
    """Whether `value` is an instance id (a text argument of at most 512 characters): ``None`` for
    one beyond ASCII, whose limit with its workflow's key is in UTF-8 bytes (their own tests')."""
    if not isinstance(value, str) or not 0 < len(value) <= 512 or "\x00" in value or "\x1f" in value:
        return False
    if any("\ud800" <= c <= "\udfff" for c in value):
        return False
    return True if value.isascii() else None


def a_poll(value: object) -> bool | None:
    """Whether `value` is a ``poll=`` (a duration option: an int is milliseconds) from 100 ms to 36,525 days."""
    if isinstance(value, int) and not isinstance(value, bool):
        return 100 <= value <= 36_525 * 86_400_000
    if isinstance(value, float):
        return None if math.isfinite(value) else False
    return a_delay(value, shortest=timedelta(milliseconds=100))


def a_delay(value: object, *, optional: bool = False, shortest: timedelta = timedelta(0)) -> bool | None:
    """Whether `value` is a delay a context call takes (``None`` too if `optional`): ``True`` or
    ``False``, or ``None`` for a string (read by the duration parser, whose own tests hold its grammar)."""
    if value is None:
        return optional
    if isinstance(value, timedelta):
        longest, ms = timedelta(days=36_525), timedelta(milliseconds=1)
        if abs(value - shortest) < ms or abs(value - longest) < ms:
            return None  # durations are read in whole milliseconds: within one of a bound, either
        return shortest <= value <= longest
    if isinstance(value, str):
        return None
    return False


# -- the definitions: each body makes one call with the value under test -------------------------

current: dict[str, Any] = {}
ids = itertools.count()
child_ids: set[str] = set()
calls: list[Called] = []


def record(call: Callable[[], object]) -> object:
    called = Called()
    calls.append(called)
    try:
        return call()
    except BaseException as exc:
        called.error = exc
        raise


async def record_async(call: Callable[[], Any]) -> object:
    called = Called()
    calls.append(called)
    try:
        return await call()
    except Exception as exc:  # not a workflow's suspension, which is a BaseException
        called.error = exc
        raise


async def progress_percent(params: P, ctx: djobs.JobContext) -> None:
    await record_async(lambda: ctx.update_progress(current["value"]))


async def progress_text(params: P, ctx: djobs.JobContext) -> None:
    await record_async(lambda: ctx.update_progress(37.6, current["value"]))


def continuous_terminate(ctx: djobs.ContinuousContext[P]) -> None:
    record(lambda: ctx.terminate(current["value"]))


def task_terminate(event: P, ctx: djobs.TaskEventContext[P]) -> None:
    ctx.set_state(P())
    record(lambda: ctx.terminate(current["value"]))


def task_schedule(event: P, ctx: djobs.TaskEventContext[P]) -> None:
    ctx.set_state(P())
    record(lambda: ctx.schedule(current["value"]))


def debounce_terminate(ctx: djobs.DebounceContext[P]) -> None:
    record(lambda: ctx.terminate(current["value"]))


async def workflow_body(input: P, ctx: djobs.WorkflowContext) -> None:
    value = current["value"]
    match current["method"]:
        case "WorkflowContext.sleep(when)":
            await record_async(lambda: ctx.sleep(value))
        case "WorkflowContext.sleep(name=)":
            await record_async(lambda: ctx.sleep("1 hour", name=value))
        case "WorkflowContext.step(name)":
            await record_async(lambda: ctx.step(value, lambda: 1, result=int))
        case "WorkflowContext.wait_for_signal(name)":
            await record_async(lambda: ctx.wait_for_signal(value, P))
        case "WorkflowContext.wait_for_signal(timeout=)":
            await record_async(lambda: ctx.wait_for_signal("go", P, timeout=value))
        case "WorkflowContext.job(poll=)":
            await record_async(lambda: ctx.job(plain_job, P(), poll=value))
        case "WorkflowContext.child(id)":
            await record_async(lambda: ctx.child(child_workflow, value, P()))


async def child_body(input: P, ctx: djobs.WorkflowContext) -> None:
    pass


job_percent = djobs.Job.make("percent", params=P, execute=progress_percent, max_attempts=1)
job_text = djobs.Job.make("text", params=P, execute=progress_text, max_attempts=1)
continuous = djobs.Continuous.make("cont", state=P, schedule=djobs.every("1 hour"), execute=continuous_terminate)
task_t = djobs.Task.make("taskT", state=P, event=P, on_event=task_terminate, execute=lambda ctx: None)
executed: set[str] = set()
task_s = djobs.Task.make(
    "taskS", state=P, event=P, on_event=task_schedule, execute=lambda ctx: executed.add(ctx.instance_id)
)
debounce = djobs.Debounce.make("deb", event=P, execute=debounce_terminate, flush_after="1 hour")
workflow = djobs.Workflow.make("wf", input=P, result=type(None), execute=workflow_body)
plain_job = djobs.Job.make("plain", params=P, execute=lambda params, ctx: None)
child_workflow = djobs.Workflow.make("child", input=P, result=type(None), execute=child_body)
DEFINITIONS: list[Any] = [
    job_percent,
    job_text,
    continuous,
    task_t,
    task_s,
    debounce,
    workflow,
    plain_job,
    child_workflow,
]


# -- each method: make the call with `value`, then check what it came to -------------------------


async def check(engine: Any, method: str, value: object) -> None:
    c, tracker = engine.client, engine.tracker
    current.update(value=value, method=method)
    calls.clear()
    id = f"i{next(ids)}"  # examples on one SQLite file or schema share it: a new id each
    if method.startswith("JobContext"):
        job = job_percent if method.endswith("(percent)") else job_text
        job_id = success(await c.job(job).later(P()))
        await engine.wait_idle()
        info = success(await c.jobs.status(job_id))
        [called] = calls
        taken, kept = (
            (percent_stored(value) is not None, percent_stored(value))
            if job is job_percent
            else progress_message(value)
        )
        if taken:
            assert called.error is None, (method, value, called.error)
            assert info.status == "completed", (method, value, info)
            stored = info.progress if job is job_percent else info.progress_message
            assert stored == kept, (method, value, stored)
            return
        assert info.status == "failed" and info.error is not None, (method, value, info)
        assert info.error.tag == "validation", (method, value, info.error)
        assert info.error.message.startswith("ctx.update_progress():"), info.error.message
    elif method.endswith("terminate(reason)"):
        if method.startswith("Continuous"):
            success(await c.continuous(continuous).start(id=id, input=P()))
            await engine.wait_idle()
            gone = success(await c.continuous(continuous).status(id)).status == "not_found"
        elif method.startswith("Task"):
            sent = await c.task(task_t).send(id=id, event=P())  # on_event's failure, if it fails
            await engine.wait_idle()
            assert success(await c.task(task_t).status(id)).status == "not_found"  # made by no event
            gone = is_successful(sent)
            if not gone:
                assert isinstance(failure(sent), djobs.ValidationError), (method, value, sent)
        else:
            success(await c.debounce(debounce).add(id=id, event=P()))
            success(await c.debounce(debounce).flush(id))
            await engine.wait_idle()
            gone = success(await c.debounce(debounce).status(id)).status == "not_found"
        [called] = calls
        taken, kept = terminate_reason(value)
        assert gone == taken, (method, value, called.error)
        if taken:
            [event] = [e for e in tracker.of_type("job.terminated") if e.instance_id.endswith(f":{id}")]
            assert event.data["reason"] == kept, (method, value, event)
            return
    elif method.startswith("TaskEventContext.schedule"):
        await c.task(task_s).send(id=id, event=P())
        await engine.wait_idle()
        [called] = calls
        if called.error is None:
            assert a_delay(value) is not False, (method, value)
            status = success(await c.task(task_s).status(id))
            assert status.scheduled_at is not None or id in executed, (method, value, status)  # due now: ran
            return
        assert a_delay(value) is not True, (method, value, called.error)
    else:
        if "child" in method:
            if value in child_ids:  # a child of an earlier example on this file or schema
                return
            if isinstance(value, str):
                child_ids.add(value)
        success(await c.workflow(workflow).start(id=id, input=P()))
        await engine.wait_idle()
        [called, *_] = calls  # a call that went on is made again when the workflow wakes
        status = success(await c.workflow(workflow).status(id))
        if "child" in method:
            accepts = an_id(value)
        elif "name" in method:
            accepts = a_name(value)
        elif "poll" in method:
            accepts = a_poll(value)
        else:
            accepts = a_delay(value, optional="timeout" in method)
        if called.error is None:
            assert accepts is not False, (method, value, status)
            assert status.status in ("sleeping", "waiting", "completed"), (method, value, status)
            return
        assert accepts is not True, (method, value, called.error)
        assert status.status == "failed", (method, value, status)
    assert isinstance(called.error, djobs.ValidationError), (method, value, called.error)


METHODS = [
    "JobContext.update_progress(percent)",
    "JobContext.update_progress(message)",
    "ContinuousContext.terminate(reason)",
    "TaskEventContext.terminate(reason)",
    "DebounceContext.terminate(reason)",
    "TaskEventContext.schedule(when)",
    "WorkflowContext.sleep(when)",
    "WorkflowContext.sleep(name=)",
    "WorkflowContext.step(name)",
    "WorkflowContext.wait_for_signal(name)",
    "WorkflowContext.wait_for_signal(timeout=)",
    "WorkflowContext.job(poll=)",
    "WorkflowContext.child(id)",
]


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_every_context_method_takes_its_value_or_fails_the_run_with_a_validation_error(
    kind: str, tmp_path: Any
) -> None:
    schema = new_schema_name() if kind == "postgres" else None

    @storage_settings(kind, examples=60, postgres_examples=15)
    @given(st.lists(st.tuples(st.sampled_from(METHODS), VALUES), min_size=1, max_size=12))
    def property(cases: list[tuple[str, object]]) -> None:
        async def scenario() -> None:
            async with open_test_engine(DEFINITIONS, storage=storage_layer(kind, str(tmp_path), schema)) as engine:
                for method, value in cases:
                    await check(engine, method, value)

        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))

    with dropped_after(schema):
        property()


@pytest.mark.parametrize(
    ("value", "stored"),
    [(math.nan, None), ("50", None), (True, None), (math.inf, None), (150, 100), (-3, 0), (Fraction(201, 4), 50)],
)
def test_progress_is_a_finite_number_rounded_and_clamped(value: object, stored: int | None) -> None:
    """The trial's cases one by one: nan stored 0, "50" did nothing, True stored 1."""

    async def scenario() -> None:
        async with open_test_engine(DEFINITIONS) as engine:
            await check(engine, "JobContext.update_progress(percent)", value)
            assert percent_stored(value) == stored

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


def test_progress_is_checked_on_a_job_that_is_not_persisted() -> None:
    """A mistake shows in the tests that run a job with ``now(persist=False)`` too."""

    async def scenario() -> None:
        async with open_test_engine(DEFINITIONS) as engine:
            current.update(value=math.nan)
            calls.clear()
            result = await engine.client.job(job_percent).now(P(), persist=False)
            [called] = calls
            assert isinstance(called.error, djobs.ValidationError)
            assert "nan" in called.error.message
            run = success(result)
            assert run.status == "failed" and isinstance(run.error, djobs.ValidationError), run

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
