"""A refusal says what is wrong in the words a person acts on, the same words on every verb.

A negative duration says it is negative (not "not a duration"), whichever verb took it; a
client made for a job of another kind names the kind and the client to use; a workflow's
errors call it a workflow; a signal's wrong payload is refused in the words every typed
verb uses; a workflow that calls a verb on itself is not told to use calls it does not have.
"""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import djobs
from djobs._durations import parse_duration
from djobs.testing import failure, open_test_engine, success


class Item(msgspec.Struct):
    n: int = 0


class Shipped(msgspec.Struct):
    tracking: str


class Click(msgspec.Struct):
    page: str


_units = st.sampled_from(["ms", "s", "seconds", "m", "minutes", "h", "hour", "d", "days", "w"])
durations_text = st.builds(
    lambda n, space, unit: f"{n}{space}{unit}",
    st.integers(min_value=0, max_value=5_217),  # 5,217 weeks: within the 36,525 days of every duration
    st.sampled_from(["", " "]),
    _units,
)


@given(text=durations_text, space=st.sampled_from(["", " "]))
def test_a_duration_with_a_minus_sign_is_refused_as_negative(text: str, space: str) -> None:
    assert isinstance(parse_duration(text).unwrap(), timedelta)
    message = parse_duration(f"-{space}{text}", what="delay").failure().message
    assert "must not be negative" in message, message
    with pytest.raises(djobs.ValidationError, match="must not be negative"):
        djobs.every(f"-{text}")
    with pytest.raises(djobs.ValidationError, match="must not be negative"):
        djobs.Retry(3, delay=f"-{text}")


@pytest.mark.trio
async def test_a_negative_delay_string_says_so_on_every_verb(autojump_clock: trio.testing.MockClock) -> None:
    async def sleeper(item: Item, ctx: djobs.WorkflowContext) -> int:
        await ctx.sleep("-5 seconds")
        return 1

    def plan(event: Item, ctx: djobs.TaskEventContext[Item]) -> None:
        ctx.schedule("-5 seconds")

    job = djobs.Job.make("later", params=Item, execute=lambda p, c: None)
    flow = djobs.Workflow.make("flow", input=Item, result=int, execute=sleeper)
    task = djobs.Task.make("planner", state=Item, event=Item, on_event=plan, execute=lambda ctx: None)
    async with open_test_engine([job, flow, task]) as engine:
        refused = failure(await engine.client.job(job).later(Item(), delay="-5 seconds"))
        assert "delay '-5 seconds': must not be negative" in refused.message, refused
        refused = failure(await engine.client.task(task).send(id="t", event=Item()))
        assert "a delay must not be negative" in refused.message, refused
        success(await engine.client.workflow(flow).start(id="w", input=Item()))
        await trio.sleep(60)
        status = success(await engine.client.workflow(flow).status("w"))
        assert status.error is not None and "ctx.sleep() got '-5 seconds'" in status.error["message"]
        assert "a delay must not be negative" in status.error["message"], status.error


def _definitions() -> dict[str, Any]:
    return {
        "job": djobs.Job.make("a-job", params=Item, execute=lambda p, c: None),
        "continuous": djobs.Continuous.make(
            "a-continuous", state=Item, schedule=djobs.every("1 hour"), execute=lambda ctx: None
        ),
        "debounce": djobs.Debounce.make("a-debounce", event=Item, flush_after="1 minute", execute=lambda ctx: None),
        "task": djobs.Task.make("a-task", state=Item, event=Item, on_event=lambda e, ctx: None, execute=lambda c: None),
        "workflow": djobs.Workflow.make("a-workflow", input=Item, result=int, execute=lambda i, ctx: 1),
        "cron": djobs.CronJob.make("a-cron", schedule="0 3 * * *", execute=lambda fire, ctx: None),
    }


#: What each client verb is asked on a definition of another kind (one verb suffices: they share the lookup).
_ASK = {
    "job": lambda client, d: client.job(d).later(Item()),
    "continuous": lambda client, d: client.continuous(d).status("x"),
    "debounce": lambda client, d: client.debounce(d).status("x"),
    "task": lambda client, d: client.task(d).status("x"),
    "workflow": lambda client, d: client.workflow(d).status("x"),
}
_CLIENT_OF = {
    "job": "job",
    "continuous": "continuous",
    "debounce": "debounce",
    "task": "task",
    "workflow": "workflow",
    "cron": "crons.get",
}


#: Every client asked for a job of another kind (a cron job's body is also a one-off job, of CronFire params).
_MISMATCHES = [(a, r) for a in _ASK for r in _CLIENT_OF if a != r and (a, r) != ("job", "cron")]


@pytest.mark.trio
@pytest.mark.parametrize(("asked", "registered"), _MISMATCHES)
async def test_a_client_for_a_job_of_another_kind_names_its_kind_and_client(
    autojump_clock: trio.testing.MockClock, asked: str, registered: str
) -> None:
    definitions = _definitions()
    definition = definitions[registered]
    async with open_test_engine(list(definitions.values())) as engine:
        for given_as in (definition, definition.name):
            error = failure(await _ASK[asked](engine.client, given_as))
            assert isinstance(error, djobs.JobNotFoundError), error
            assert f"{definition.name!r} is a " in error.message, error.message
            assert f"use client.{_CLIENT_OF[registered]}({definition.name!r})" in error.message, error.message


@pytest.mark.trio
async def test_a_client_for_another_definition_of_the_name_says_so(autojump_clock: trio.testing.MockClock) -> None:
    definitions = _definitions()
    twin = djobs.Job.make("a-job", params=Item, execute=lambda p, c: None)
    async with open_test_engine(list(definitions.values())) as engine:
        error = failure(await engine.client.job(twin).later(Item()))
        assert "another definition" in error.message, error.message
        error = failure(await engine.client.job("nobody").later(Item()))
        assert error == djobs.JobNotFoundError("nobody")


@pytest.mark.trio
async def test_a_workflows_errors_call_it_a_workflow(autojump_clock: trio.testing.MockClock) -> None:
    definitions = _definitions()
    async with open_test_engine(list(definitions.values())) as engine:
        workflows = engine.client.workflow(definitions["workflow"])
        error = failure(await workflows.signal("nope", "go", Item()))
        assert isinstance(error, djobs.InstanceNotFoundError)
        assert error.message == "workflow 'a-workflow' has no instance with id 'nope'", error.message
        error = failure(await engine.client.task(definitions["task"]).trigger("nope"))
        assert error.message.startswith("task 'a-task' has no instance"), error.message


@pytest.mark.trio
async def test_a_failed_workflows_result_names_the_workflow_and_the_instance(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def bad(item: Item, ctx: djobs.WorkflowContext) -> str:
        raise ValueError("no result")

    workflow = djobs.Workflow.make("badresult", input=Item, result=str, execute=bad)
    async with open_test_engine([workflow]) as engine:
        client = engine.client.workflow(workflow)
        success(await client.start(id="order-7", input=Item()))
        await engine.wait_idle()
        error = failure(await client.result("order-7"))
        assert isinstance(error, djobs.WorkflowFailedError)
        assert error.message.startswith("workflow 'badresult' instance 'order-7' ended failed: "), error.message
        assert (error.workflow, error.instance_id, error.status) == ("badresult", "order-7", "failed")


@pytest.mark.trio
async def test_a_wrong_signal_payload_is_refused_in_the_words_of_every_typed_verb(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def wait(item: Item, ctx: djobs.WorkflowContext) -> str:
        shipped = await ctx.wait_for_signal("shipped", Shipped)
        return shipped.tracking

    flow = djobs.Workflow.make("flow", input=Shipped, result=str, execute=wait)
    async with open_test_engine([flow]) as engine:
        workflows = engine.client.workflow(flow)
        success(await workflows.start(id="w", input=Shipped("t")))
        await trio.sleep(1)
        for payload in (Click("x"), {"trackin": "x"}):
            signal_error = failure(await workflows.signal("w", "shipped", payload))
            start_error = failure(await workflows.start(id="other", input=payload))
            # The same reason as start's, for the same payload.
            reason = start_error.message.split(": ", 1)[1]
            assert signal_error.message.endswith(reason), (signal_error.message, reason)
        assert (
            "got a Click struct, expected Shipped"
            in failure(await workflows.signal("w", "shipped", Click("x"))).message
        )
        assert "unknown field `trackin`" in failure(await workflows.signal("w", "shipped", {"trackin": "x"})).message
        success(await workflows.signal("w", "shipped", {"tracking": "T9"}))
        assert success(await workflows.result("w")) == "T9"


@pytest.mark.trio
async def test_a_workflow_that_is_its_own_child_is_told_what_a_workflow_can_do(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body(item: Item, ctx: djobs.WorkflowContext) -> int:
        return await ctx.child(flow, "self", Item())

    flow = djobs.Workflow.make("flow", input=Item, result=int, execute=body)
    async with open_test_engine([flow]) as engine:
        success(await engine.client.workflow(flow).start(id="self", input=Item()))
        await trio.sleep(60)
        status = success(await engine.client.workflow(flow).status("self"))
        assert status.error is not None
        message = status.error["message"]
        assert "a verb on workflow 'flow' instance 'self' was called from a handler of that instance" in message, (
            message
        )
        assert "give ctx.child another id" in message and "ctx.set_state" not in message, message


@pytest.mark.trio
async def test_a_whole_input_of_another_type_names_the_struct_and_the_type_given(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Where a struct is taken and something else is given whole (a datetime, bytes, a huge int),
    the message names the struct and the type given, on every verb that takes one; msgspec's own
    words were "Expected `object`, got `str`" (of the value's JSON form: a datetime is a JSON
    string, 10**30 a float)."""

    def body(params: Item, ctx: djobs.JobContext) -> None:
        pass

    async def visit(item: Item, ctx: djobs.WorkflowContext) -> Item:
        return item

    def on_item(item: Item, ctx: djobs.TaskEventContext[Item]) -> None:
        pass

    job = djobs.Job.make("job", params=Item, execute=body)
    cont = djobs.Continuous.make("cont", state=Item, schedule=djobs.every("1 hour"), execute=lambda ctx: None)
    deb = djobs.Debounce.make("deb", event=Item, state=Item, execute=lambda ctx: None, flush_after="1 hour")
    task = djobs.Task.make("task", state=Item, event=Item, on_event=on_item, execute=lambda ctx: None)
    flow = djobs.Workflow.make("flow", input=Item, result=Item, execute=visit)
    async with open_test_engine([job, cont, deb, task, flow]) as engine:
        c = engine.client
        verbs = {
            "params of job 'job'": lambda x: c.job(job).later(x),
            "input of 'cont'": lambda x: c.continuous(cont).start(id="a", input=x),
            "event of 'deb'": lambda x: c.debounce(deb).add(id="a", event=x),
            "event for task 'task'": lambda x: c.task(task).send(id="a", event=x),
            "input of workflow 'flow'": lambda x: c.workflow(flow).start(id="a", input=x),
        }
        given: list[tuple[object, str]] = [
            (datetime(2026, 1, 1, tzinfo=UTC), "datetime"),
            (b"ab", "bytes"),
            (timedelta(days=1), "timedelta"),
            (10**30, "int"),
            ("x", "str"),
            (Item, "the class Item itself (make one: Item(...))"),
        ]
        for what, verb in verbs.items():
            for value, kind in given:
                error = failure(await verb(value))
                assert error == djobs.ValidationError(
                    f"{what} does not match Item: expected the struct Item (or a dict of its fields), got {kind}"
                ), error


class Mood(enum.Enum):
    CALM = "calm"
    CROSS = "cross"


class Subclassed(str):
    pass


class Whole(int):
    pass


class Fields(msgspec.Struct):
    n: int = 0
    s: str = ""
    x: float = 0.0
    kind: Literal["a", "b"] = "a"
    rank: Literal[1, 2] | None = None
    mood: Mood = Mood.CALM
    day: date = date(2026, 1, 1)
    ns: list[int] = []
    counts: dict[int, int] = {}


_WRONG: list[tuple[str, object, str]] = [
    ("n", Subclassed("1"), "Expected `int`, got `Subclassed` (a str subclass) - at `$.n`"),
    ("s", Subclassed("a"), "Expected `str`, got `Subclassed` (a str subclass) - at `$.s`"),
    ("x", Whole(1), "Expected `float`, got `Whole` (an int subclass) - at `$.x`"),
    ("kind", Subclassed("a"), "Expected one of 'a', 'b', got `Subclassed` (a str subclass) - at `$.kind`"),
    ("ns", [1, Subclassed("2")], "Expected `int`, got `Subclassed` (a str subclass) - at `$.ns[1]`"),
    ("kind", "c", "Expected one of 'a', 'b', got 'c' - at `$.kind`"),
    ("rank", 3, "Expected one of 1, 2, None, got 3 - at `$.rank`"),
    ("mood", "happy", "Expected `Mood`, got `str` - at `$.mood`"),
    ("day", datetime(2026, 1, 1, tzinfo=UTC), "Expected `date`, got `datetime` - at `$.day`"),
    ("day", "someday", "Expected `date`, got `str` - at `$.day`"),
    ("counts", {"a": 1}, "Expected `int`, got `str` - at `key` in `$.counts`"),  # the key, not its dict
]


@pytest.mark.trio
@pytest.mark.parametrize(("field", "value", "expected"), _WRONG)
async def test_a_field_of_the_wrong_type_or_value_is_named_as_passed_at_its_path(
    autojump_clock: trio.testing.MockClock, field: str, value: object, expected: str
) -> None:
    """A value of the wrong type names the declared type and the type given, at its path, in
    the caller's terms: a str subclass msgspec cannot encode (it said "Encoding objects of
    type Subclassed is unsupported", with no path), a value outside a Literal or an enum (it
    said "Expected `a member of the enum`, got `str`"), a datetime for a date (it added
    "Invalid RFC3339 encoded date", the JSON form's words)."""

    def body(params: Fields, ctx: djobs.JobContext) -> None:
        pass

    async def visit(fields: Fields, ctx: djobs.WorkflowContext) -> int:
        return 1

    job = djobs.Job.make("job", params=Fields, execute=body)
    flow = djobs.Workflow.make("flow", input=Fields, result=int, execute=visit)
    async with open_test_engine([job, flow]) as engine:
        refusals = {
            "params of job 'job'": [
                failure(await engine.client.job(job).later(Fields(**{field: value}))),
                failure(await engine.client.job(job).later({field: value})),
            ],
            "input of workflow 'flow'": [
                failure(await engine.client.workflow(flow).start(id="f", input=Fields(**{field: value}))),
            ],
        }
        for what, errors in refusals.items():
            for error in errors:
                assert error == djobs.ValidationError(f"{what} does not match Fields: {expected}"), error
        assert success(await engine.client.jobs.list()) == []


class UnreadableList(list[str]):
    def __iter__(self) -> Any:
        raise RuntimeError("no reading me")


@pytest.mark.trio
async def test_a_status_list_that_cannot_be_read_says_so_and_names_its_type(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A list of statuses whose own iteration raises is refused as unreadable, naming its type,
    where the message showed its contents as if they were a wrong status ("got ['completed']")."""

    def body(params: Item, ctx: djobs.JobContext) -> None:
        pass

    job = djobs.Job.make("job", params=Item, execute=body)
    async with open_test_engine([job]) as engine:
        assert success(await engine.client.jobs.purge(older_than="1 day", status=["completed"])) == 0
        purge = failure(await engine.client.jobs.purge(older_than="1 day", status=UnreadableList(["completed"])))
        assert purge == djobs.ValidationError(
            "status must be completed, failed or cancelled (or a list of them): reading the given "
            "UnreadableList raised RuntimeError: no reading me"
        ), purge
        # list takes one status: a list of them (readable or not) is refused as one, not read.
        for given in (["completed"], UnreadableList(["completed"])):
            listed = failure(await engine.client.jobs.list(status=given))  # type: ignore[arg-type]
            assert listed == djobs.ValidationError(
                "status must be one of pending, running, completed, failed or cancelled "
                f"(one status, not a list of them), got a {type(given).__name__}"
            ), listed
