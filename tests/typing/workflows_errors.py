"""Workflow calls that must not type-check; each line ending in `# E: <code>` fails with that code."""

from __future__ import annotations

import msgspec

import djobs


class Order(msgspec.Struct):
    order_id: str


class Receipt(msgspec.Struct):
    charge_id: str


class Shipped(msgspec.Struct):
    tracking: str


class Deps:
    pass


async def run(order: Order, ctx: djobs.WorkflowContext[Deps]) -> Receipt:
    shipped = await ctx.wait_for_signal("shipped", Shipped)
    print(shipped.tracking)  # E: union-attr "TimedOut"
    count: int = ctx.services  # E: assignment
    return Receipt(count)  # E: arg-type


checkout = djobs.Workflow.make("checkout", input=Order, result=Receipt, execute=run)


async def parent(order: Order, ctx: djobs.WorkflowContext[Deps]) -> str:
    await ctx.child(checkout, "c", Receipt("x"))  # E: misc "Cannot infer value of type parameter"
    return await ctx.child(checkout, "c", order)  # E: arg-type "Workflow[Order, str, Any]"


async def use(engine: djobs.Engine) -> None:
    client = engine.client.workflow(checkout)
    await client.start(id="o", input=Receipt("x"))  # E: arg-type
    wrong: str = (await client.result("o")).unwrap()  # E: assignment
    del wrong


def tax(amount: int, rate: float) -> int:
    return round(amount * rate)


async def an_int(order: Order, ctx: djobs.WorkflowContext) -> int:
    return 5


async def steps(order: Order, ctx: djobs.WorkflowContext) -> str:
    # mypy reports a step's overloads as one call: the arguments, then a count against the first.
    await ctx.step("tax", tax, "100", 0.2)  # E: arg-type "Callable[[int, float], int]"  # E: call-arg
    await ctx.step("tax", tax, 100)  # E: arg-type "Callable[[int, float], int]"
    await ctx.step("tax", tax, 100, 0.2, 3)  # E: arg-type  # E: call-arg
    wrong: str = await ctx.step("tax", tax, 100, 0.2)  # E: arg-type  # E: call-arg
    del wrong
    return await ctx.step("tax", tax, 100, 0.2)  # E: arg-type  # E: call-arg


djobs.Workflow.make("bad", input=Order, result=str, execute=an_int)  # E: arg-type
djobs.Workflow.make("bad", input=Order, result=Receipt, execute=steps)  # E: arg-type
