"""Workflows' typed calls: a child job's result type reaches the workflow's body.

Lines ending in ``# E: <code>`` must fail mypy with that error code; every other line must pass.
mypy solves the job's types from the expected result, so a result taken as the
wrong type is reported at the job argument (``arg-type``), and params of the
wrong type leave the params type unsolvable (``misc``).
"""

import msgspec

import djobs


class Order(msgspec.Struct):
    order_id: str


class Label(msgspec.Struct):
    tracking: str


async def make_label(order: Order, ctx: djobs.JobContext) -> Label:
    return Label(order.order_id)


label_job = djobs.Job.make("label", params=Order, result=Label, execute=make_label)


async def ship(order: Order, ctx: djobs.WorkflowContext) -> str:
    label = await ctx.job(label_job, order)
    tracking: str = label.tracking  # the job's result type, not Any
    as_int: int = await ctx.job(label_job, order)  # E: arg-type
    print(as_int)
    await ctx.job(label_job, Label("x"))  # E: misc
    await ctx.job(label_job, order, poll="1 minute")
    await ctx.job(label_job, order, poll=1.5)  # E: arg-type
    print(label.weight)  # E: attr-defined
    return tracking


shipping = djobs.Workflow.make("shipping", input=Order, result=str, execute=ship)
