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
