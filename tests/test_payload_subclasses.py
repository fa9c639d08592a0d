"""A payload given as a subclass of its declared struct: taken if it adds no field, else refused
with a message that names the subclass, the fields it adds and what to pass instead.

mypy takes a subclass wherever its base is declared (it is one), and the events guide said "a
subclass of the payload type is accepted". One that adds a field was refused at run time by
every verb with msgspec's "Object contains unknown field `source`", which reads as a misspelt
dict key: the declared struct cannot store the field, and dropping it would lose what the
caller passed, so it stays refused, and the message says why and what to do.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import djobs
from djobs.testing import failure, open_test_engine, success


class OrderCreated(msgspec.Struct):
    order_id: str


class OrderCreatedV2(OrderCreated):
    source: str = "web"


class OrderAlias(OrderCreated):
    """A subclass that adds no field: an `OrderCreated` in all it stores."""


class Batch(msgspec.Struct):
    orders: list[OrderCreated]


order_created = djobs.Event("order.created", OrderCreated)
received: list[object] = []


def confirm(params: OrderCreated, ctx: djobs.JobContext) -> None:
    received.append(params)


async def flow(input: OrderCreated, ctx: djobs.WorkflowContext) -> None:
    received.append(input)


def idle(ctx: Any) -> None:
    pass


def heard(event: OrderCreated, ctx: djobs.TaskEventContext[OrderCreated, Any]) -> None:
    pass


confirmation = djobs.Job.make("confirm", params=OrderCreated, execute=confirm, on=order_created)
batches = djobs.Job.make("batches", params=Batch, execute=lambda params, ctx: None)
state = djobs.Continuous.make("state", state=OrderCreated, schedule=djobs.every("1 hour"), execute=idle)
workflow = djobs.Workflow.make("flow", input=OrderCreated, result=type(None), execute=flow)


task = djobs.Task.make("task", state=OrderCreated, event=OrderCreated, on_event=heard, execute=idle)


def verbs(c: djobs.Client, value: Any) -> dict[str, Any]:
    return {
        "send_event": c.send_event(order_created, value),
        "later": c.job(confirmation).later(value),
        "later (nested)": c.job(batches).later(Batch([OrderCreated("o-0"), value])),
        "continuous.start": c.continuous(state).start(id="s", input=value),
        "workflow.start": c.workflow(workflow).start(id="w", input=value),
        "task.send": c.task(task).send(id="t", event=value),
    }


@pytest.mark.trio
async def test_a_subclass_adding_fields_is_refused_naming_them_and_what_to_pass(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_engine([confirmation, batches, state, workflow, task]) as engine:
        for verb, call in verbs(engine.client, OrderCreatedV2("o-1")).items():
            error = failure(await call)
            assert isinstance(error, djobs.ValidationError), (verb, error)
            assert "`OrderCreatedV2` is a subclass of `OrderCreated` that adds the field `source`" in error.message
            assert "pass `OrderCreated(...)`, or declare the type as `OrderCreatedV2`" in error.message
            assert "unknown field" not in error.message, error.message
        assert success(await engine.client.jobs.list()) == []  # nothing was stored


@pytest.mark.trio
async def test_a_subclass_adding_no_field_is_taken_as_the_declared_struct(
    autojump_clock: trio.testing.MockClock,
) -> None:
    received.clear()
    async with open_test_engine([confirmation, batches, state, workflow, task]) as engine:
        for verb, call in verbs(engine.client, OrderAlias("o-1")).items():
            assert success(await call), verb
        await engine.wait_idle()
    # The body gets the declared struct (what is stored), equal in its fields.
    assert received and all(type(value) is OrderCreated and value == OrderCreated("o-1") for value in received)


def test_a_misspelt_dict_key_keeps_the_unknown_field_message() -> None:
    from djobs._codec import encode

    error = encode(OrderCreated, {"order_id": "o", "sorce": "web"}, what="params").failure()
    assert "unknown field `sorce`" in error.message
