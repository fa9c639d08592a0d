"""Calls that must type-check: a typed event with its own payload type, and names as before."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

import djobs


class OrderCreated(msgspec.Struct):
    order_id: str
    total_cents: int


class PremiumOrderCreated(OrderCreated):
    tier: str = "gold"


order_created = djobs.Event("order.created", OrderCreated)


def reserve(params: OrderCreated, ctx: djobs.JobContext) -> None: ...


listener = djobs.Job.make("reserve", params=OrderCreated, execute=reserve, on=order_created)
by_name = djobs.Job.make("reserveByName", params=OrderCreated, execute=reserve, on="order.created")


async def send(engine: djobs.Engine) -> None:
    payload = OrderCreated("o-1", 4200)
    sent = await engine.client.send_event(order_created, payload)
    await engine.client.send_event(order_created, PremiumOrderCreated("o-2", 10))  # a subtype is a payload
    await engine.client.send_event(order_created, payload, delay="10 minutes", idempotency_key="k")
    await engine.client.send_event(order_created, payload, at=datetime(2026, 1, 1, tzinfo=UTC))
    # By name, as before: any payload type-checks and is validated when sent.
    await engine.client.send_event("order.created", {"order_id": "o-3", "total_cents": 1})
    await engine.client.for_tenant("acme").send_event(order_created, payload)
    typed_name: str = order_created.name
    payload_type: type[OrderCreated] = order_created.payload
    print(sent, typed_name, payload_type)
