"""Calls that must not type-check; each line ending in `# E: <code>` fails with that code.

A payload of another type than the event's leaves no type for the event's
parameter that fits both arguments, which mypy reports as ``misc`` ("Cannot
infer value of type parameter"); a call that fits no form at all (a float
delay, an int name) is ``call-overload``.
"""

from __future__ import annotations

import msgspec

import djobs


class OrderCreated(msgspec.Struct):
    order_id: str


class RefundIssued(msgspec.Struct):
    refund_id: str


order_created = djobs.Event("order.created", OrderCreated)


async def send(engine: djobs.Engine) -> None:
    client = engine.client
    await client.send_event(order_created, RefundIssued("r-1"))  # E: misc "Cannot infer"
    await client.send_event(order_created, {"order_id": "o-1"})  # E: misc "Cannot infer"
    await client.send_event(order_created, None)  # E: misc "Cannot infer"
    await engine.client.send_event(order_created, OrderCreated("o-1"), delay=1.5)  # E: call-overload
    await engine.client.send_event(42, OrderCreated("o-1"))  # E: call-overload
    wrong_type: type[RefundIssued] = order_created.payload  # E: assignment
    print(wrong_type)


def audit(params: RefundIssued, ctx: djobs.JobContext) -> None: ...


# A listener of a typed event takes the event's payload type as its params.
listener = djobs.Job.make("audit", params=RefundIssued, execute=audit, on=order_created)  # E: misc "Cannot infer"
