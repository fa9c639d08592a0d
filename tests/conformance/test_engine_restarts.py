"""What an engine promises across a restart, on every storage several processes can share.

Each test closes the engine and opens a new one (a new process, in real life)
on the same database under the virtual clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
import trio
import trio.testing

import djobs
from djobs.storage import StorageLayer
from djobs.testing import open_test_engine, success

pytestmark = pytest.mark.trio

START = datetime(2026, 1, 1, tzinfo=UTC)


class Shipped(msgspec.Struct):
    order_id: str


order_shipped = djobs.Event("order.shipped", Shipped)


async def test_a_delayed_event_survives_a_restart(
    autojump_clock: trio.testing.MockClock, shared_layer: StorageLayer
) -> None:
    ran: list[tuple[str, datetime]] = []

    def notify(params: Shipped, ctx: djobs.JobContext) -> None:
        ran.append((params.order_id, ctx.now()))

    listener = djobs.Job.make("notifyShipped", params=Shipped, execute=notify, on=order_shipped)
    async with open_test_engine([listener], storage=shared_layer, start=START) as engine:
        success(await engine.client.send_event(order_shipped, Shipped("o-1"), delay="1 hour"))
        success(await engine.client.send_event("order.shipped", Shipped("o-2"), at=START + timedelta(hours=2)))
        await trio.sleep(10 * 60)
    assert ran == []
    # Down from 00:10 to 01:30: the first event came due meanwhile and runs at once; the second on time.
    async with open_test_engine([listener], storage=shared_layer, start=START + timedelta(minutes=90)) as engine:
        await trio.sleep(60)
        assert ran == [("o-1", START + timedelta(minutes=90))]
        await trio.sleep(30 * 60)
        assert ran[1:] == [("o-2", START + timedelta(hours=2))]
        assert {j.status for j in success(await engine.client.jobs.list())} == {"completed"}
