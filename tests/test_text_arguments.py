"""Every text argument of every verb is refused the same way, and so is every count.

One rule (`djobs._input.check_text`): a non-empty `str` of at most 512 characters (a name: 200,
a reason: 1000) without NUL, a lone surrogate or the unit separator ``\\x1f`` (which djobs keeps
to separate a tenant id from an id in its keys; a workflow list's ``after=`` takes a cursor, one
tenant id and one id joined by it). Before, ``\\x1f`` passed in tenant ids,
correlation ids, idempotency and unique keys, event names and list filters; a workflow list's
``after=`` took two million characters; ``terminate(reason=)`` took any object, a NUL and a lone
surrogate; ``batch(concurrency=10**30)`` was taken though every count is at most 2**31 - 1.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

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
from returns.pipeline import is_successful

import djobs
from djobs.testing import failure, open_test_engine, success


class P(msgspec.Struct):
    n: int = 0


def run(ctx: Any) -> None:
    pass


async def flow(input: P, ctx: djobs.WorkflowContext) -> None:
    await ctx.wait_for_signal("go", P)


job = djobs.Job.make("job", params=P, execute=lambda params, ctx: None, on="ping")
continuous = djobs.Continuous.make("cont", state=P, schedule=djobs.every("1 hour"), execute=run)
task = djobs.Task.make("task", state=P, event=P, on_event=lambda event, ctx: None, execute=run)
debounce = djobs.Debounce.make("deb", event=P, on_event=lambda ctx: ctx.event, execute=run, flush_after="1 hour")
workflow = djobs.Workflow.make("wf", input=P, result=type(None), execute=flow)
DEFINITIONS: list[Any] = [job, continuous, task, debounce, workflow]

#: Each text argument: its longest length, and the verb given a value for it.
TextVerb = Callable[[Any, object], Awaitable[Any]]
TEXT_VERBS: dict[str, tuple[int, TextVerb]] = {
    "later(tenant_id=)": (512, lambda c, v: c.job(job).later(P(), tenant_id=v)),
    "later(correlation_id=)": (512, lambda c, v: c.job(job).later(P(), correlation_id=v)),
    "later(idempotency_key=)": (512, lambda c, v: c.job(job).later(P(), idempotency_key=v)),
    "later(unique=)": (512, lambda c, v: c.job(job).later(P(), unique=v)),
    "now(correlation_id=)": (512, lambda c, v: c.job(job).now(P(), correlation_id=v)),
    "jobs.list(name=)": (512, lambda c, v: c.jobs.list(name=v)),
    "jobs.list(after=)": (512, lambda c, v: c.jobs.list(after=v)),
    "jobs.list(correlation_id=)": (512, lambda c, v: c.jobs.list(correlation_id=v)),
    "jobs.list(tenant_id=)": (512, lambda c, v: c.jobs.list(tenant_id=v)),
    "send_event(name)": (200, lambda c, v: c.send_event(v, P())),
    "send_event(tenant_id=)": (512, lambda c, v: c.send_event("ping", P(), tenant_id=v)),
    "send_event(correlation_id=)": (512, lambda c, v: c.send_event("ping", P(), correlation_id=v)),
    "send_event(idempotency_key=)": (512, lambda c, v: c.send_event("ping", P(), idempotency_key=v)),
    "continuous.status(id)": (512, lambda c, v: c.continuous(continuous).status(v)),
    "continuous.terminate(reason=)": (1000, lambda c, v: c.continuous(continuous).terminate("i", reason=v)),
    "task.terminate(reason=)": (1000, lambda c, v: c.task(task).terminate("i", reason=v)),
    "task.send(event_id=)": (512, lambda c, v: c.task(task).send(id="i", event=P(), event_id=v)),
    "debounce.add(event_id=)": (512, lambda c, v: c.debounce(debounce).add(id="i", event=P(), event_id=v)),
    "workflow.cancel(reason=)": (1000, lambda c, v: c.workflow(workflow).cancel("w", reason=v)),
    "workflow.list(after=)": (512, lambda c, v: c.workflow(workflow).list(after=v)),
    "workflow.signal(name)": (200, lambda c, v: c.workflow(workflow).signal("w", v, P())),
    "for_tenant(tenant)": (512, lambda c, v: c.for_tenant(v).continuous(continuous).status("i")),
}

#: A bad value of each class, for an argument of at most `longest` characters.
BAD_TEXT: dict[str, Callable[[int], object]] = {
    "not a str": lambda longest: 5,
    "bytes": lambda longest: b"acme",
    "an object": lambda longest: object(),
    "empty": lambda longest: "",
    "too long": lambda longest: "x" * (longest + 1),
    "far too long": lambda longest: "x" * 2_000_000,
    "NUL": lambda longest: "a\x00b",
    "lone surrogate": lambda longest: "a\ud800b",
    # Two: a workflow list's `after=` takes one, between a tenant id and an id (a cursor).
    "unit separator": lambda longest: "acme\x1fb\x1fc",
}

COUNT_VERBS: dict[str, tuple[int, Callable[[Any, object], Awaitable[Any]]]] = {
    "batch(concurrency=)": (2**31 - 1, lambda c, v: c.job(job).batch([P()], concurrency=v)),
    "jobs.list(limit=)": (10_000, lambda c, v: c.jobs.list(limit=v)),
    "workflow.list(limit=)": (10_000, lambda c, v: c.workflow(workflow).list(limit=v)),
}

BAD_COUNT: dict[str, Callable[[int], object]] = {
    "zero": lambda highest: 0,
    "negative": lambda highest: -1,
    "one too many": lambda highest: highest + 1,
    "10**30": lambda highest: 10**30,
    "a bool": lambda highest: True,
    "a float": lambda highest: 1.0,
    "a str": lambda highest: "3",
}


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_every_text_and_count_argument_is_refused_the_same_way(kind: str, tmp_path: Any) -> None:
    schema = new_schema_name() if kind == "postgres" else None

    @storage_settings(kind, examples=40, postgres_examples=15)
    @given(
        texts=st.lists(st.tuples(st.sampled_from(sorted(TEXT_VERBS)), st.sampled_from(sorted(BAD_TEXT))), max_size=12),
        counts=st.lists(
            st.tuples(st.sampled_from(sorted(COUNT_VERBS)), st.sampled_from(sorted(BAD_COUNT))), max_size=4
        ),
    )
    def property(texts: list[tuple[str, str]], counts: list[tuple[str, str]]) -> None:
        async def scenario() -> None:
            async with open_test_engine(DEFINITIONS, storage=storage_layer(kind, str(tmp_path), schema)) as engine:
                c = engine.client
                before = success(await c.jobs.list(limit=10_000))
                for verb, bad in texts:
                    longest, call = TEXT_VERBS[verb]
                    error = failure(await call(c, BAD_TEXT[bad](longest)))
                    assert isinstance(error, djobs.ValidationError), (verb, bad, error)
                for verb, bad in counts:
                    highest, call = COUNT_VERBS[verb]
                    error = failure(await call(c, BAD_COUNT[bad](highest)))
                    assert isinstance(error, djobs.ValidationError), (verb, bad, error)
                    assert "must be an int from 1 to" in error.message, error.message
                assert success(await c.jobs.list(limit=10_000)) == before  # nothing was stored

        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))

    with dropped_after(schema):
        property()


def test_each_argument_takes_its_longest_text_and_its_counts_edges() -> None:
    """The limits are the ones refused one past: a text of the longest length, a count at each end."""

    async def scenario() -> None:
        async with open_test_engine(DEFINITIONS) as engine:
            c = engine.client
            assert success(await c.workflow(workflow).start(id="w", input=P()))
            await engine.wait_idle()
            for verb, (longest, call) in TEXT_VERBS.items():
                result = await call(c, "x" * longest)
                if not is_successful(result):  # a name nothing listens to may be answered so; never refused
                    assert not isinstance(failure(result), djobs.ValidationError), (verb, failure(result))
            assert success(await c.job(job).batch([P()], concurrency=2**31 - 1))
            assert success(await c.jobs.list(limit=10_000)) is not None
            assert success(await c.workflow(workflow).list(limit=1)) is not None

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_definition_or_event_name_with_the_unit_separator_is_refused() -> None:
    with pytest.raises(djobs.ValidationError, match="x1f"):
        djobs.Job.make("a\x1fb", params=P, execute=lambda params, ctx: None)
    with pytest.raises(djobs.ValidationError, match="x1f"):
        djobs.Event("order\x1fcreated", P)
