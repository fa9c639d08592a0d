"""The guides' typing claims that no other case held, each with the program mypy must refuse.

Lines ending in ``# E: <code>`` must fail mypy with that error code; every other line must pass.
Each section names the page whose claim it checks.
"""

import msgspec
from returns.future import FutureResult
from returns.maybe import Maybe, Some

import djobs


class Count(msgspec.Struct):
    n: int = 0


class Ping(msgspec.Struct):
    text: str


class Sent(msgspec.Struct):
    message_id: str


def fold(ctx: djobs.DebounceEventContext[Ping, Count]) -> Count:
    return Count((ctx.state or Count()).n + 1)


def flush(ctx: djobs.DebounceContext[Count]) -> None: ...


def on_ping(event: Ping, ctx: djobs.TaskEventContext[Count]) -> Count:
    return Count((ctx.state or Count()).n + 1)


def run(ctx: djobs.TaskContext[Count]) -> None: ...


def send(params: Ping, ctx: djobs.JobContext) -> Sent:
    return Sent(params.text)


batcher = djobs.Debounce.make("batcher", event=Ping, state=Count, on_event=fold, execute=flush)
orders = djobs.Task.make("orders", state=Count, event=Ping, on_event=on_ping, execute=run)
pinger = djobs.Job.make("pinger", params=Ping, result=Sent, execute=send)


# -- debounce.md, task.md, reliability.md: a dict of the fields runs, but the verbs' types name the struct


async def a_dict_is_refused_where_the_struct_is_typed(client: djobs.Client) -> None:
    await client.debounce(batcher).add(id="i", event=Ping("x"))
    await client.debounce(batcher).add(id="i", event={"text": "x"})  # E: arg-type 'expected "Ping"'
    await client.task(orders).send(id="i", event=Ping("x"))
    await client.task(orders).send(id="i", event={"text": "x"})  # E: arg-type 'expected "Ping"'
    await client.job(pinger).later(Ping("x"))
    await client.job(pinger).later({"text": "x"})  # E: arg-type 'expected "Ping"'
    await client.job(pinger).later_many([{"text": "x"}])  # E: list-item
    await client.job(pinger).now({"text": "x"})  # E: arg-type 'expected "Ping"'


# -- continuous.md: a body of another form (a Maybe) fails at run time, and mypy refuses it first


def a_maybe(ctx: djobs.ContinuousContext[Count]) -> Maybe[Count]:
    return Some(Count(ctx.state.n + 1))


every = djobs.every("1 minute")
djobs.Continuous.make("maybe", state=Count, schedule=every, execute=a_maybe)  # E: arg-type


# -- pipelines.md: a body giving FutureResult[str, ...] where result=Sent is an arg-type error


def the_message_id(params: Ping, ctx: djobs.JobContext) -> FutureResult[str, ValueError]:
    return FutureResult.from_value("m-1")


def the_message(params: Ping, ctx: djobs.JobContext) -> FutureResult[Sent, ValueError]:
    return FutureResult.from_value(Sent("m-1"))


djobs.Job.make("sendEmail", params=Ping, result=Sent, execute=the_message)
djobs.Job.make("sendEmail", params=Ping, result=Sent, execute=the_message_id)  # E: arg-type 'Argument "execute"'


# -- workflows.md: a step made but never awaited is mypy's unused-awaitable


def charge(amount: int) -> int:
    return amount


async def a_step_never_awaited(order: Ping, ctx: djobs.WorkflowContext) -> None:
    await ctx.step("charge", charge, 5)
    ctx.step("charge", charge, 5)  # E: unused-awaitable
    ctx.sleep("1 hour")  # E: unused-coroutine
