"""nan and ±inf floats: refused with a `ValidationError` naming the field, wherever a payload is stored.

JSON has no form for them (and PostgreSQL's jsonb none either): msgspec's encoder writes each as
``null``, so without the check a ``float | None`` field was stored as ``None`` and a ``float``
field refused as "Expected `float`, got `null`", a null the caller never passed.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import struct
from typing import Any

import msgspec
import pytest
import trio
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
import djobs.storage
from djobs._codec import holds_no_float
from djobs.testing import failure, open_test_engine, success


class Reading(msgspec.Struct):
    label: str = ""
    value: float | None = None
    exact: float = 0.0
    values: list[float] = []
    extra: dict[str, Any] = {}


class Wrapped(msgspec.Struct):
    reading: Reading | None = None


#: nan (signed, and with a payload: a nan is any of 2**53 bit patterns), inf and -inf.
non_finite = st.one_of(
    st.sampled_from([math.nan, -math.nan, math.inf, -math.inf]),
    st.integers(1, 2**51 - 1).map(lambda bits: struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_0000_0000 | bits))[0]),
)


class FloatMember(float, enum.Enum):
    """A float enum's members: msgspec writes each as its value, a nan or ±inf one as ``null``."""

    NAN = math.nan
    INF = math.inf
    NEG_INF = -math.inf


class PlainMember(enum.Enum):
    """A plain enum's members with float values: written as their values too."""

    NAN = math.nan
    INF = math.inf
    NESTED = (1.0, -math.inf)


@st.composite
def readings(draw: st.DrawFn) -> tuple[Any, str]:
    """A payload holding one non-finite float somewhere, and the path the error must name."""
    x = draw(non_finite)
    where = draw(
        st.sampled_from(["value", "exact", "values", "extra", "dict", "nested", "member", "member_key", "plain"])
    )
    if where == "member":  # only an ``Any`` field takes one: msgspec cannot decode a float enum
        return Reading(extra={"deep": [draw(st.sampled_from(FloatMember))]}), "$.extra['deep'][0]"
    if where == "member_key":  # written as the text "nan", "inf" or "-inf", as a float key is
        return Reading(extra={"deep": {draw(st.sampled_from(FloatMember)): 1}}), "$.extra['deep']"
    if where == "plain":
        member = draw(st.sampled_from(PlainMember))
        return Reading(extra={"m": member}), "$.extra['m']" + ("[1]" if member is PlainMember.NESTED else "")
    if where == "value":
        return Reading(value=x), "$.value"
    if where == "exact":
        return Reading(exact=x), "$.exact"
    if where == "values":
        return Reading(values=[1.0, x]), "$.values[1]"
    if where == "extra":
        return Reading(extra={"deep": [{"x": x}]}), "$.extra['deep'][0]['x']"
    if where == "dict":
        return {"label": "d", "value": x}, "$['value']"
    return Wrapped(Reading(value=x)), "$.reading.value"


def measure(params: Reading, ctx: djobs.JobContext) -> Reading:
    return Reading(value=float(params.label)) if params.label else params


def keep(ctx: djobs.ContinuousContext[Reading]) -> None:
    if ctx.state.label:
        ctx.set_state(Reading(value=float(ctx.state.label)))


def fold(ctx: djobs.DebounceEventContext[Reading, Reading]) -> Reading:
    return Reading(value=float(ctx.event.label)) if ctx.event.label else ctx.event


def flush(ctx: djobs.DebounceContext[Reading]) -> None:
    pass


def on_reading(event: Reading, ctx: djobs.TaskEventContext[Reading]) -> None:
    ctx.set_state(Reading(value=float(event.label)) if event.label else event)


def run_task(ctx: djobs.TaskContext[Reading]) -> None:
    pass


async def observe(params: Reading, ctx: djobs.WorkflowContext) -> Reading:
    if params.label.startswith("step:"):
        return await ctx.step("read", lambda: Reading(value=float(params.label[5:])), result=Reading)
    if params.label.startswith("signal"):
        return await ctx.wait_for_signal("reading", Reading)
    return Reading(value=float(params.label)) if params.label else params


measurer = djobs.Job.make(
    "measurer", params=Reading, result=Reading, execute=measure, on="reading", retry=djobs.Retry(1)
)
wrapped_job = djobs.Job.make("wrapped", params=Wrapped, execute=lambda params, ctx: None, retry=djobs.Retry(1))
keeper = djobs.Continuous.make("keeper", state=Reading, schedule=djobs.every("1 hour"), execute=keep)
gatherer = djobs.Debounce.make(
    "gatherer", event=Reading, state=Reading, on_event=fold, execute=flush, flush_after="1 hour"
)
tasker = djobs.Task.make("tasker", state=Reading, event=Reading, on_event=on_reading, execute=run_task)
observer = djobs.Workflow.make("observer", input=Reading, result=Reading, execute=observe)
definitions: list[Any] = [measurer, wrapped_job, keeper, gatherer, tasker, observer]


def refused(result: Any, path: str) -> None:
    error = failure(result)
    assert isinstance(error, djobs.ValidationError), error
    assert f"`{path}`" in error.message and "non-finite" in error.message, error.message


async def every_verb_with(engine: Any, value: Any, path: str) -> None:
    """Every verb taking a payload, given `value` (a non-finite float at `path`): refused, nothing stored."""
    client = engine.client
    job = client.job(wrapped_job if isinstance(value, Wrapped) else measurer)
    refused(await job.later(value), path)
    refused(await job.later_many([value]), path)
    refused(await job.now(value), path)
    refused(await job.now(value, persist=True), path)
    refused(await job.batch([value]), path)
    if not isinstance(value, Wrapped):
        refused(await client.send_event("reading", value), path)
        refused(await client.continuous(keeper).start(id="k", input=value), path)
        refused(await client.debounce(gatherer).add(id="d", event=value), path)
        refused(await client.task(tasker).send(id="t", event=value), path)
        refused(await client.workflow(observer).start(id="w", input=value), path)
    # A signal's payload is stored before any workflow reads it with its type: checked as it is.
    refused(await client.workflow(observer).signal("waiting", "reading", value), path)
    assert success(await client.jobs.list()) == []
    for status in (
        await client.continuous(keeper).status("k"),
        await client.task(tasker).status("t"),
        await client.workflow(observer).status("w"),
    ):
        assert success(status).status == "not_found"


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_non_finite_float_is_refused_by_every_verb_on_every_storage(kind: str, tmp_path: Any) -> None:
    schema = new_schema_name() if kind == "postgres" else None

    @storage_settings(kind, examples=25, postgres_examples=10)
    @given(payloads=st.lists(readings(), min_size=1, max_size=3))
    def property(payloads: list[tuple[Any, str]]) -> None:
        async def scenario() -> None:
            async with open_test_engine(definitions, storage=storage_layer(kind, str(tmp_path), schema)) as engine:
                assert success(await engine.client.workflow(observer).start(id="waiting", input=Reading("signal")))
                await engine.wait_idle()
                for value, path in payloads:
                    await every_verb_with(engine, value, path)
                await engine.client.workflow(observer).cancel("waiting")
                await engine.wait_idle()

        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))

    with dropped_after(schema):
        property()


@pytest.mark.parametrize("kind", STORAGE_KINDS)
@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_a_non_finite_float_a_body_produces_fails_its_run_and_keeps_what_was_stored(
    kind: str, text: str, tmp_path: Any
) -> None:
    """A job's result, a state a body sets or returns, a step's result, a workflow's result."""
    schema = new_schema_name() if kind == "postgres" else None

    async def scenario() -> None:
        async with open_test_engine(definitions, storage=storage_layer(kind, str(tmp_path), schema)) as engine:
            client = engine.client
            ran = success(await client.job(measurer).now(Reading(text)))
            assert ran.status == "failed" and ran.error is not None and "non-finite" in ran.error.message, ran
            job_id = success(await client.job(measurer).later(Reading(text)))
            assert success(await client.continuous(keeper).start(id="k", input=Reading(text)))
            # on_event runs in the call: the call is refused.
            refused(await client.debounce(gatherer).add(id="d", event=Reading(text)), "$.value")
            refused(await client.task(tasker).send(id="t", event=Reading(text)), "$.value")
            for id, label in (("w-result", text), ("w-step", f"step:{text}")):
                assert success(await client.workflow(observer).start(id=id, input=Reading(label)))
            await client.continuous(keeper).trigger("k")
            await engine.wait_idle()
            info = success(await client.jobs.status(job_id))
            assert info.status == "failed" and info.error is not None
            assert "non-finite" in info.error.message, info.error.message
            # The state the caller stored is kept: not a None where the nan was.
            assert success(await client.continuous(keeper).get_state("k")).state == Reading(text)
            assert success(await client.debounce(gatherer).status("d")).status == "not_found"
            assert success(await client.task(tasker).status("t")).status == "not_found"
            for id in ("w-result", "w-step"):
                status = success(await client.workflow(observer).status(id))
                assert status.status == "failed", status
                assert status.error is not None and "non-finite" in status.error["message"], status.error

    with dropped_after(schema):
        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_cron_job_with_non_finite_params_is_refused_at_make() -> None:
    with pytest.raises(djobs.ValidationError, match=r"`\$\.value`.*non-finite"):
        djobs.CronJob.make("nightly", schedule=djobs.cron("0 3 * * *"), job=measurer, params=Reading(value=math.inf))


def test_finite_floats_and_none_still_round_trip() -> None:
    async def scenario() -> None:
        async with open_test_engine(definitions) as engine:
            value = Reading(value=None, exact=1e308, values=[-0.0, 5e-324], extra={"n": None})
            assert success(await engine.client.continuous(keeper).start(id="k", input=value))
            assert success(await engine.client.continuous(keeper).get_state("k")).state == value

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


@dataclasses.dataclass
class Point:
    x: float
    y: float


@pytest.mark.parametrize(
    ("value", "path"),
    [
        (Point(1.0, math.nan), "$.y"),
        ({"points": (Point(0.0, 0.0), Point(math.inf, 0.0))}, "$['points'][1].x"),
        ([-math.inf], "$[0]"),
        ({"s": frozenset([math.nan])}, "$['s'][0]"),
        ({math.nan: 1}, "$"),
        ({"by": {1.0: 0, -math.inf: 1}}, "$['by']"),
        # Enum members are written as their values: an ``Any`` took these as null, silently.
        ([FloatMember.NAN], "$[0]"),
        ({"m": PlainMember.NESTED}, "$['m'][1]"),
        ({"by": {FloatMember.INF: 1}}, "$['by']"),
        ({"by": {PlainMember.NAN: 1}}, "$['by']"),
    ],
)
def test_a_non_finite_float_is_found_in_whatever_msgspec_encodes(value: Any, path: str) -> None:
    from djobs._codec import encode

    error = failure_of(encode(Any, value, what="payload", strict=False))  # type: ignore[arg-type]
    assert f"`{path}`" in error.message, error.message


def failure_of(result: Any) -> djobs.ValidationError:
    error = result.failure()
    assert isinstance(error, djobs.ValidationError), error
    return error


class Series(msgspec.Struct):
    xs: list[float] = []
    y: float | None = 0.0


def spoil(state: Series, how: str) -> None:
    """Change `state` in place after it was set: a nan, a value of another type."""
    if how == "nan":
        state.xs.append(math.nan)
        state.y = math.inf
    else:
        state.xs.append("oops")  # type: ignore[arg-type]


def set_then_spoil(ctx: djobs.ContinuousContext[Series]) -> None:
    ctx.set_state(Series(xs=[float(ctx.run_count)]))
    spoil(ctx.state, ctx.instance_id.split("-")[0])


async def set_then_spoil_async(ctx: djobs.ContinuousContext[Series]) -> None:
    set_then_spoil(ctx)


def task_set_then_spoil(event: Reading, ctx: djobs.TaskEventContext[Series]) -> None:
    state = Series(xs=[1.0])
    ctx.set_state(state)
    spoil(state, event.label)
    ctx.schedule("1 hour")


def task_execute_set_then_spoil(ctx: djobs.TaskContext[Series]) -> None:
    state = Series(xs=[2.0])
    ctx.set_state(state)
    spoil(state, ctx.instance_id)


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_state_changed_after_set_state_is_stored_as_set_and_the_instance_stays_on_schedule(
    kind: str, tmp_path: Any
) -> None:
    """Continuous (fired in a batch, fired alone, triggered) and Task (on_event, execute): the
    state stored is the one `set_state` validated; a nan or a str put into it afterwards is not
    stored, and the check-in does not fail (it once raised past the handler and paused the instance)."""
    schema = new_schema_name() if kind == "postgres" else None
    batched = djobs.Continuous.make("batched", state=Series, schedule=djobs.every("1 hour"), execute=set_then_spoil)
    alone = djobs.Continuous.make("alone", state=Series, schedule=djobs.every("1 hour"), execute=set_then_spoil_async)
    task = djobs.Task.make(
        "spoiled", event=Reading, state=Series, on_event=task_set_then_spoil, execute=task_execute_set_then_spoil
    )

    async def scenario() -> None:
        async with open_test_engine([batched, alone, task], storage=storage_layer(kind, str(tmp_path), schema)) as e:
            for job in (batched, alone):
                client = e.client.continuous(job)
                for how in ("nan", "type"):
                    assert success(await client.start(id=f"{how}-1", input=Series()))
                await e.wait_idle()
                for how in ("nan", "type"):
                    status = success(await client.status(f"{how}-1"))
                    assert (status.status, status.run_count) == ("running", 1), status
                    assert status.next_run_at is not None
                    assert success(await client.get_state(f"{how}-1")).state == Series(xs=[1.0])
                    assert success(await client.trigger(f"{how}-1")).outcome == "succeeded"
                    assert success(await client.get_state(f"{how}-1")).state == Series(xs=[2.0])
                await trio.sleep(3601)  # the next run, fired by its alarm
                assert success(await client.get_state("nan-1")).state == Series(xs=[3.0])
            tasks = e.client.task(task)
            for how in ("nan", "type"):
                assert success(await tasks.send(id=how, event=Reading(how)))
                assert success(await tasks.get_state(how)).state == Series(xs=[1.0])
            await trio.sleep(3601)  # execute, fired by the alarm on_event set
            for how in ("nan", "type"):
                assert success(await tasks.get_state(how)).state == Series(xs=[2.0])
            assert e.tracker.of_type("job.failed") == []

    with dropped_after(schema):
        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


class Keyed(msgspec.Struct):
    counts: dict[float, int] = {}


def fold_keyed(ctx: djobs.DebounceEventContext[Keyed, Keyed]) -> Keyed:
    return ctx.event


@pytest.mark.parametrize("key", [math.nan, math.inf, -math.inf])
def test_a_non_finite_dict_key_is_refused_too(key: float) -> None:
    """msgspec writes a float key as text ("nan"), which read back as nan: refused like a value."""
    keyed = djobs.Continuous.make("keyed", state=Keyed, schedule=djobs.every("1 hour"), execute=lambda ctx: None)
    batch = djobs.Debounce.make("batch", event=Keyed, on_event=fold_keyed, execute=lambda ctx: None, flush_after="1h")
    tasks = djobs.Task.make(
        "keyed_task", event=Keyed, state=Keyed, on_event=lambda e, ctx: None, execute=lambda ctx: None
    )

    async def scenario() -> None:
        async with open_test_engine([keyed, batch, tasks]) as engine:
            value = Keyed({1.5: 1, key: 2})
            refused(await engine.client.continuous(keyed).start(id="k", input=value), "$.counts")
            refused(await engine.client.debounce(batch).add(id="d", event=value), "$.counts")
            refused(await engine.client.task(tasks).send(id="t", event=value), "$.counts")
            fine = Keyed({1.5: 1, -0.0: 2})
            assert success(await engine.client.continuous(keyed).start(id="f", input=fine))
            assert success(await engine.client.continuous(keyed).get_state("f")).state == fine

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


class _Plain(msgspec.Struct):
    n: int
    name: str = ""
    tags: list[str] = []
    when: dict[int, tuple[bool, bytes | None]] = {}


class _Tree(msgspec.Struct):
    label: str
    children: list[_Tree] = []


class _Nested(msgspec.Struct):
    inner: _Plain
    maybe: Reading | None = None


@dataclasses.dataclass(eq=False)
class _Entity:
    """An entity compared by its id alone, as ORMs' entities are: its other fields do not count."""

    id: int
    score: int | None = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Entity) and other.id == self.id

    __hash__ = None  # type: ignore[assignment]


class _PlainEq(msgspec.Struct):
    n: int | None = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _PlainEq)

    __hash__ = None  # type: ignore[assignment]


class _Holder(msgspec.Struct):
    who: _Entity


@pytest.mark.parametrize(
    ("tp", "holds_none"),
    [
        (_Plain, True),
        (list[_Plain], True),
        (_Tree, True),  # a type that holds itself
        (int | str | None, True),
        (Reading, False),  # float fields, and Any
        (_Nested, False),  # a float two structs down
        (dict[float, int], False),  # a float key ("nan": in JSON)
        (list[Any], False),
        (float | None, False),
        # A class whose `__eq__` may not compare every field: a quick check's `==` would not see
        # a nan read back as None, so a search is needed.
        (_Holder, False),
        (_Entity, False),
        (_PlainEq, False),
        (list[_PlainEq], False),
    ],
)
def test_a_type_holds_no_float_only_when_none_can_hide_anywhere_in_it(tp: Any, holds_none: bool) -> None:
    """Where no float can be, an encoding needs no search for a hidden nan (the Debounce add's quick checks)."""
    assert holds_no_float(tp) is holds_none


@pytest.mark.trio
async def test_a_debounce_with_a_float_in_its_state_still_refuses_a_nan_its_reducer_returns() -> None:
    class Tick(msgspec.Struct):
        n: int

    def fold(ctx: djobs.DebounceEventContext[Tick, Reading]) -> Reading:
        return Reading(exact=math.nan if ctx.event.n else 1.0)

    job = djobs.Debounce.make("ticks", event=Tick, state=Reading, on_event=fold, execute=lambda ctx: None)
    async with open_test_engine([job]) as engine:
        client = engine.client.debounce(job)
        assert success(await client.add(id="a", event=Tick(0))).event_count == 1
        refused = failure(await client.add(id="a", event=Tick(1)))
        assert isinstance(refused, djobs.ValidationError) and "nan" in refused.message, refused


@pytest.mark.trio
async def test_a_debounce_refuses_a_nan_in_a_floatless_type_whose_equality_is_the_users() -> None:
    """An entity compared by its id holds a nan where an `int | None` belongs: refused, not stored as None."""

    def fold(ctx: djobs.DebounceEventContext[_Holder, _Holder]) -> _Holder:
        return _Holder(_Entity(1, math.nan if ctx.event.who.id == 2 else 3))  # type: ignore[arg-type]

    job = djobs.Debounce.make("entities", event=_Holder, state=_Holder, on_event=fold, execute=lambda ctx: None)
    async with open_test_engine([job]) as engine:
        client = engine.client.debounce(job)
        spoilt = _Holder(_Entity(1, math.nan))  # type: ignore[arg-type]
        refused(await client.add(id="a", event=spoilt), "$.who.score")  # the event
        assert success(await client.status("a")).status == "not_found"
        assert success(await client.add(id="a", event=_Holder(_Entity(1)))).event_count == 1
        refused(await client.add(id="a", event=_Holder(_Entity(2))), "$.who.score")  # the state it makes
        state = success(await client.get_state("a")).state
        assert state is not None and state.who.score == 3
