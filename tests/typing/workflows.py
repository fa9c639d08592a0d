"""Workflow calls that must type-check: the client is typed by the definition's input and result,
the context by the application's services, a signal wait by its payload type."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from returns.future import FutureResult

import djobs


class Order(msgspec.Struct):
    order_id: str


class Receipt(msgspec.Struct):
    charge_id: str


class Shipped(msgspec.Struct):
    tracking: str


@dataclass
class Deps:
    def charge(self, order: Order) -> str:
        return "ch"


async def run(order: Order, ctx: djobs.WorkflowContext[Deps]) -> Receipt:
    deps: Deps = ctx.services
    charge_id = await ctx.step("charge", deps.charge, order)
    shipped = await ctx.wait_for_signal("shipped", Shipped, timeout="7 days")
    if not isinstance(shipped, djobs.TimedOut):
        tracking: str = shipped.tracking
        del tracking
    await ctx.sleep("1 day")
    return Receipt(str(charge_id))


checkout = djobs.Workflow.make("checkout", input=Order, result=Receipt, execute=run)


async def parent(order: Order, ctx: djobs.WorkflowContext[Deps]) -> str:
    receipt: Receipt = await ctx.child(checkout, f"{order.order_id}-checkout", order)
    return receipt.charge_id


async def use(engine: djobs.Engine) -> None:
    client = engine.client.workflow(checkout)
    started: FutureResult[djobs.WorkflowStartResult, djobs.JobError] = client.start(id="o", input=Order("o"))
    del started
    receipt: FutureResult[Receipt, djobs.JobError] = client.result("o")
    del receipt
    await client.signal("o", "shipped", Shipped("T"))
    await client.cancel("o", reason="changed their mind")
