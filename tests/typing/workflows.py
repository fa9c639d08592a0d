"""Workflow calls that must type-check: the client is typed by the definition's input and result,
the context by the application's services, a signal wait by its payload type, a step by its
function's parameters and the value it gives (in every body form)."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from returns.context import RequiresContextFutureResult
from returns.future import FutureResult
from returns.result import Result, Success

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
    already: FutureResult[bool, djobs.JobError] = client.cancel("o").map(cancel_changed_nothing)
    del already


def cancel_changed_nothing(outcome: djobs.WorkflowCancelResult) -> bool:
    """An earlier cancel was accepted (the workflow may have ended since): its reason stands."""
    cancelled: bool = outcome.cancelled
    said: str = outcome.already_requested  # E: assignment
    del said
    return outcome.already_requested and not cancelled


def tax(amount: int, rate: float) -> Result[int, str]:
    return Success(round(amount * rate))


async def fetch(order: Order) -> Shipped:
    return Shipped(order.order_id)


async def a_result_later(order: Order) -> Result[bytes, ValueError]:
    return Success(order.order_id.encode())


def from_services(order: Order) -> RequiresContextFutureResult[float, Exception, Deps]:
    return RequiresContextFutureResult.from_value(1.5)


async def steps(order: Order, ctx: djobs.WorkflowContext[Deps]) -> int:
    total: int = await ctx.step("tax", tax, 100, 0.2)  # a Result's value
    shipped: Shipped = await ctx.step("fetch", fetch, order)  # an async def's value
    raw: bytes = await ctx.step("raw", a_result_later, order)
    ratio: float = await ctx.step("services", from_services, order)
    said: str = await ctx.step("hello", lambda: "hello")
    flag: bool = await ctx.step("flag", lambda: True, result=bool)
    doubled: int = await ctx.step("tax", tax, 1, 1.0).map(lambda n: n * 2)
    del shipped, raw, ratio, said, flag, doubled
    return await ctx.step("total", tax, total, 1.0)  # typed, so no Any is returned


totals = djobs.Workflow.make("totals", input=Order, result=int, execute=steps)
