"""A typed value is taken only if it is of its declared type: nothing is turned into a string.

JSON writes a UUID, a Decimal, a date, a time, a timedelta, an enum member and bytes as strings,
and a ``str`` field read such a string back: the body got ``'2026-01-01'`` or base64 where the
caller passed a date or bytes. Every verb that takes a typed value (params, inputs, events, states,
step and job results) now refuses such a value with a `ValidationError` naming its path and both
types, and a value that *is* of its type comes back as itself. msgspec's strict rules decide the
edges: a bool is not an int, an int is a float (if the float holds it exactly), a datetime is
not a date.
"""

from __future__ import annotations

import collections.abc
import enum
import functools
import typing
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from postgres_support import (
    STORAGE_KINDS,
    dropped_after,
    new_schema_name,
    storage_layer,
    storage_settings,
)

import djobs
from djobs._codec import encode
from djobs.testing import failure, open_test_engine, success


class Color(enum.Enum):
    RED = "red"


class Shade(enum.StrEnum):
    RED = "red"


TYPES: list[Any] = [
    str,
    int,
    float,
    bool,
    bytes,
    datetime,
    date,
    time,
    timedelta,
    UUID,
    Decimal,
    Color,
    Shade,
    list[int],
    tuple[int, ...],
    set[str],
    frozenset[str],
    dict[str, int],
    collections.abc.Sequence[int],  # a list or a tuple, read back as a list
    collections.abc.Set[str],  # a set or a frozenset, read back as a set
    datetime | None,
    str | None,
]

VALUES: list[Any] = [
    "x",
    "",
    "red",
    "2026-01-01",
    5,
    0,
    True,
    1.5,
    2.0,
    2**53 + 1,
    b"ab",
    bytearray(b"ab"),
    datetime(2026, 1, 1, tzinfo=UTC),
    datetime(2026, 1, 1),
    date(2026, 1, 1),
    time(1, 2),
    timedelta(days=1),
    UUID(int=1),
    Decimal("1.5"),
    Color.RED,
    Shade.RED,
    [1, 2],
    (1, 2),
    ["a"],
    {"a"},
    frozenset({"a"}),
    {"a": 1},
    {1: 1},
    {"a": True},
    None,
]


def fits(tp: Any, value: Any) -> bool:
    """The oracle: `value` is an instance of `tp`, with msgspec's strict rules at the edges."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or isinstance(tp, type(int | None)):
        return any(fits(arg, value) for arg in args)
    if origin in (list, set, frozenset) or (origin is tuple and args[1:] == (Ellipsis,)):
        return isinstance(value, origin) and all(fits(args[0], item) for item in value)
    if origin is collections.abc.Sequence:
        return isinstance(value, list | tuple) and all(fits(args[0], item) for item in value)
    if origin is collections.abc.Set:
        return isinstance(value, set | frozenset) and all(fits(args[0], item) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(fits(args[0], k) and fits(args[1], v) for k, v in value.items())
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)  # a bool is not an int
    if tp is float:  # an int is a float when the float holds it exactly
        return isinstance(value, float) or (
            isinstance(value, int) and not isinstance(value, bool) and float(value) == value
        )
    if tp is date:
        return type(value) is date  # msgspec reads a datetime's form as no date
    if value is None:
        return tp is type(None)
    return isinstance(value, tp)


def same(tp: Any, value: Any, back: Any) -> bool:
    """`back`, the value a body or a read received, is `value` as `tp` holds it."""
    if typing.get_origin(tp) is collections.abc.Sequence:
        value = list(value)  # as msgspec decodes a Sequence
    return back == value and (tp is float or fits(tp, back))


@functools.cache
def box(tp: Any) -> Any:
    return msgspec.defstruct(f"Box{TYPES.index(tp)}", [("v", tp)])


@functools.cache
def maybe(tp: Any) -> Any:
    return msgspec.defstruct(f"Maybe{TYPES.index(tp)}", [("v", tp | None, None)])


def test_the_oracle_is_not_isinstance_alone() -> None:
    # The edges the docs name, so the oracle cannot drift into isinstance.
    assert not fits(int, True) and fits(float, 5) and not fits(float, 2**53 + 1)
    assert not fits(date, datetime(2026, 1, 1)) and fits(str, Shade.RED) and not fits(Shade, "red")
    assert fits(collections.abc.Sequence[int], (1, 2)) and not fits(list[int], (1, 2))


@pytest.mark.parametrize(
    "tp", TYPES, ids=[typing.cast(Any, t).__name__ if isinstance(t, type) else repr(t) for t in TYPES]
)
def test_every_declared_type_takes_exactly_its_values(tp: Any) -> None:
    """The one check every verb runs, over every value: as a struct's field, as a dict of the
    struct's fields, and as a bare value (a Task's ``event=str``)."""
    for value in VALUES:
        for declared, given_value, path in (
            (box(tp), box(tp)(v=value), "$.v"),
            (box(tp), {"v": value}, "$.v"),
            (tp, value, "$"),
        ):
            result = encode(declared, given_value, what="payload")
            if fits(tp, value):
                assert isinstance(result.unwrap(), bytes), (tp, value)
                back = msgspec.json.decode(result.unwrap(), type=declared)
                assert same(tp, value, back.v if declared is not tp else back), (tp, value, back)
            else:
                error = result.failure()
                assert isinstance(error, djobs.ValidationError), (tp, value)
                if isinstance(value, list | tuple | set | frozenset | dict) and f"`{path}[" in error.message:
                    assert "Expected" in error.message, error.message  # an item of a container, named
                    continue
                shown = "None" if value is None else type(value).__name__
                assert f"got `{shown}`" in error.message or "does not keep its value" in error.message, error.message
                assert path == "$" or f"`{path}`" in error.message, error.message  # msgspec names no `$`


# -- every verb --------------------------------------------------------------------------------


@functools.cache
def definitions(tp: Any) -> dict[str, Any]:
    """One definition of each kind whose typed values are `tp` (in a `box`), or an index into
    `VALUES` for the values a body produces."""
    n, b = TYPES.index(tp), box(tp)

    def keep(params: Any, ctx: djobs.JobContext) -> Any:
        return params

    def produce(params: Any, ctx: djobs.JobContext) -> Any:
        return b(v=VALUES[params.v])

    def run(ctx: Any) -> None:
        pass

    def continuous_set(ctx: djobs.ContinuousContext[Any]) -> None:
        ctx.set_state(maybe(tp)(v=VALUES[int(ctx.instance_id[2:])]))

    def on_event(event: Any, ctx: djobs.TaskEventContext[Any]) -> None:
        ctx.set_state(b(v=event))

    def on_index(event: int, ctx: djobs.TaskEventContext[Any]) -> None:
        ctx.set_state(b(v=VALUES[event]))

    def fold(ctx: djobs.DebounceEventContext[Any, Any]) -> Any:
        return ctx.event

    def fold_index(ctx: djobs.DebounceEventContext[Any, Any]) -> Any:
        return b(v=VALUES[ctx.event.v])

    async def workflow(input: Any, ctx: djobs.WorkflowContext) -> Any:
        return input

    async def step_workflow(input: Any, ctx: djobs.WorkflowContext) -> Any:
        return await ctx.step("make", lambda: b(v=VALUES[input.v]), result=b)

    index = box(int)
    return {
        "job": djobs.Job.make(f"job{n}", params=b, result=b, execute=keep, on=f"event{n}", retry=djobs.Retry(1)),
        "result": djobs.Job.make(f"result{n}", params=index, result=b, execute=produce, retry=djobs.Retry(1)),
        "continuous": djobs.Continuous.make(f"cont{n}", state=b, schedule=djobs.every("1 hour"), execute=run),
        "continuous_set": djobs.Continuous.make(
            f"contset{n}", state=maybe(tp), schedule=djobs.every("1 hour"), execute=continuous_set
        ),
        "task": djobs.Task.make(f"task{n}", event=tp, state=b, on_event=on_event, execute=run),
        "task_set": djobs.Task.make(f"taskset{n}", event=int, state=b, on_event=on_index, execute=run),
        "debounce": djobs.Debounce.make(f"deb{n}", event=b, state=b, on_event=fold, execute=run, flush_after="1 hour"),
        "debounce_state": djobs.Debounce.make(
            f"debstate{n}", event=index, state=b, on_event=fold_index, execute=run, flush_after="1 hour"
        ),
        "workflow": djobs.Workflow.make(f"wf{n}", input=b, result=b, execute=workflow),
        "step": djobs.Workflow.make(f"step{n}", input=index, result=b, execute=step_workflow),
        "event": djobs.Event(f"typed{n}", b),
    }


def refused(result: Any, path: str, what: str) -> None:
    error = failure(result)
    assert isinstance(error, djobs.ValidationError), (what, error)
    assert "Expected" in error.message or "does not keep its value" in error.message, (what, error.message)
    assert path == "$" or f"`{path}" in error.message, (what, error.message)  # msgspec names no `$`


async def every_verb(engine: Any, tp: Any, i: int) -> None:
    """Every verb that takes a value of `tp`, given `VALUES[i]`: taken (and read back as itself)
    exactly when it fits, else refused naming its path; a body's value likewise fails its run."""
    c, d, value, b = engine.client, definitions(tp), VALUES[i], box(tp)
    ok = fits(tp, value)
    job = c.job(d["job"])
    calls: dict[str, Any] = {
        "now": job.now(b(v=value)),
        "later": job.later(b(v=value)),
        "later(dict)": job.later({"v": value}),
        "batch": job.batch([b(v=value)]),
        "send_event": c.send_event(d["event"], b(v=value)),
        "continuous.start": c.continuous(d["continuous"]).start(id=f"c{i}", input=b(v=value)),
        "debounce.add": c.debounce(d["debounce"]).add(id=f"d{i}", event=b(v=value)),
        "task.send": c.task(d["task"]).send(id=f"t{i}", event=value),
        "workflow.start": c.workflow(d["workflow"]).start(id=f"w{i}", input=b(v=value)),
        "task.set_state": c.task(d["task_set"]).send(id=f"ts{i}", event=i),
        "debounce state": c.debounce(d["debounce_state"]).add(id=f"ds{i}", event=box(int)(v=i)),
    }
    for what, call in calls.items():
        result = await call
        if ok:
            success(result)
        else:
            refused(result, "$" if what == "task.send" else "$.v", what)
    # Values a body produces: a job's result, a workflow step's result, a Continuous set_state.
    ran = success(await c.job(d["result"]).now(box(int)(v=i)))
    assert (ran.status == "completed") is ok, (tp, value, ran)
    if ok:
        assert same(tp, value, ran.result.v), ran
    else:
        assert ran.error is not None and "`$.v" in ran.error.message, ran.error
    assert success(await c.workflow(d["step"]).start(id=f"s{i}", input=box(int)(v=i)))
    assert success(await c.continuous(d["continuous_set"]).start(id=f"cs{i}", input=maybe(tp)()))
    await engine.wait_idle()
    step = success(await c.workflow(d["step"]).status(f"s{i}"))
    assert step.status == ("completed" if ok else "failed"), (tp, value, step)
    cont = c.continuous(d["continuous_set"])
    run = success(await cont.trigger(f"cs{i}"))  # its state is a `tp | None`
    assert (run.outcome == "succeeded") is fits(tp | None, value), (tp, value, run)
    if ok:  # read back as itself
        assert same(tp, value, success(await c.continuous(d["continuous"]).get_state(f"c{i}")).state.v)
        assert same(tp, value, success(await c.task(d["task"]).get_state(f"t{i}")).state.v)
        assert same(tp, value, success(await c.task(d["task_set"]).get_state(f"ts{i}")).state.v)
        assert same(tp, value, success(await c.debounce(d["debounce"]).get_state(f"d{i}")).state.v)
        assert same(tp, value, success(await c.debounce(d["debounce_state"]).get_state(f"ds{i}")).state.v)
        assert same(tp, value, success(await cont.get_state(f"cs{i}")).state.v)
    else:  # nothing was stored
        assert success(await c.continuous(d["continuous"]).status(f"c{i}")).status == "not_found"
        assert success(await c.task(d["task"]).status(f"t{i}")).status == "not_found"
        assert success(await c.workflow(d["workflow"]).status(f"w{i}")).status == "not_found"


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_every_verb_takes_a_typed_value_exactly_when_it_is_of_its_type(kind: str, tmp_path: Any) -> None:
    schema = new_schema_name() if kind == "postgres" else None

    @storage_settings(kind, examples=30, postgres_examples=10)
    @given(
        tp=st.sampled_from(TYPES),
        indexes=st.lists(st.sampled_from(range(len(VALUES))), min_size=1, max_size=8, unique=True),
    )
    def property(tp: Any, indexes: list[int]) -> None:
        async def scenario() -> None:
            defs = [d for d in definitions(tp).values() if not isinstance(d, djobs.Event)]
            async with open_test_engine(defs, storage=storage_layer(kind, str(tmp_path), schema)) as engine:
                for i in indexes:
                    await every_verb(engine, tp, i)

        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))

    with dropped_after(schema):
        property()


class Annotations(msgspec.Struct):
    n: typing.Annotated[int, ["any", "metadata"]] = 0
    seq: typing.Annotated[collections.abc.Sequence[int], {"unhashable": True}] = ()


def test_a_type_annotated_with_any_metadata_is_checked() -> None:
    """A field's Annotated metadata, which msgspec ignores unless it is a Meta, may be any object
    (an unhashable list or dict too): the check reads past it, as msgspec does."""
    assert encode(Annotations, Annotations(n=1, seq=(1, 2)), what="payload").unwrap() == b'{"n":1,"seq":[1,2]}'
    error = encode(Annotations, {"n": "1"}, what="payload").failure()
    assert "Expected `int`, got `str` - at `$.n`" in error.message, error
