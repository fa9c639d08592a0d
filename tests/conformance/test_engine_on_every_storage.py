"""Engine-level promises that depend on what storage keeps: checked on every storage.

The restart tests close the engine and open a new one (a new process, in
real life) on the same database under the virtual clock, on each storage
several processes can share.
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


class Beat(msgspec.Struct):
    runs: int = 0


def beat_job(ran: list[datetime]) -> djobs.Continuous[Beat]:
    def tick(ctx: djobs.ContinuousContext[Beat]) -> None:
        ran.append(ctx.now())
        ctx.update_state(lambda s: Beat(s.runs + 1))

    return djobs.Continuous.make("beat", state=Beat, schedule=djobs.every("10 minutes"), execute=tick)


async def test_pause_and_resume_a_continuous_instance(
    autojump_clock: trio.testing.MockClock, storage_layer: StorageLayer
) -> None:
    ran: list[datetime] = []
    beat = beat_job(ran)
    async with open_test_engine([beat], storage=storage_layer, start=START) as engine:
        client = engine.client.continuous(beat)
        success(await client.start(id="b", input=Beat()))
        await trio.sleep(15 * 60)  # runs at 00:00 and 00:10
        paused = success(await client.pause("b"))
        assert (paused.status, paused.run_count, paused.next_run_at) == ("stopped", 2, None)
        assert success(await client.status("b")) == paused
        assert success(await client.pause("b")) == paused  # pausing again changes nothing
        assert success(await client.get_state("b")).state == Beat(2)  # the state is kept
        assert success(await client.start(id="b", input=Beat())) == djobs.StartResult(False, "b", "stopped")
        refused = djobs.testing.failure(await client.trigger("b"))
        assert isinstance(refused, djobs.InvalidStateError)
        await trio.sleep(60 * 60)  # 00:15 to 01:15: nothing runs while paused
        assert len(ran) == 2
        resumed = success(await client.resume("b"))
        # The schedule picks up at its next fire time after now; the six missed runs are not replayed.
        assert resumed == djobs.ContinuousStatus("running", 2, START + timedelta(hours=1, minutes=25))
        await trio.sleep(11 * 60)
        assert ran[2:] == [START + timedelta(hours=1, minutes=25)]
        assert success(await client.resume("b")).status == "running"  # resuming a running one: no change
        assert engine.tracker.count("job.paused") == 1 and engine.tracker.count("job.resumed") == 1
        missing = djobs.testing.failure(await client.pause("nobody"))
        assert isinstance(missing, djobs.InstanceNotFoundError)


async def test_a_paused_instance_stays_paused_across_a_restart(
    autojump_clock: trio.testing.MockClock, shared_layer: StorageLayer
) -> None:
    ran: list[datetime] = []
    beat = beat_job(ran)
    async with open_test_engine([beat], storage=shared_layer, start=START) as engine:
        client = engine.client.continuous(beat)
        success(await client.start(id="b", input=Beat()))
        await engine.wait_idle()
        success(await client.pause("b"))
    async with open_test_engine([beat], storage=shared_layer, start=START + timedelta(hours=3)) as engine:
        client = engine.client.continuous(beat)
        await trio.sleep(3600)
        assert ran == [START]
        assert success(await client.status("b")).status == "stopped"
        success(await client.resume("b"))
        await trio.sleep(11 * 60)
        assert ran == [START, START + timedelta(hours=4, minutes=10)]
        assert success(await client.get_state("b")).state == Beat(2)


class Order(msgspec.Struct):
    n: int = 0


def sleepy_workflow(ran: list[int]) -> djobs.Workflow[Order, Order]:
    async def body(order: Order, ctx: djobs.WorkflowContext) -> Order:
        ran.append(order.n)
        await ctx.sleep("1 hour")
        return order

    return djobs.Workflow.make("ship", input=Order, result=Order, execute=body)


async def test_starts_of_one_workflow_id_at_once_create_it_once(
    autojump_clock: trio.testing.MockClock, storage_layer: StorageLayer
) -> None:
    ran: list[int] = []
    ship = sleepy_workflow(ran)
    async with open_test_engine([ship], storage=storage_layer, start=START) as engine:
        client = engine.client.workflow(ship)
        created: list[int] = []

        async def start(n: int) -> None:
            if success(await client.start(id="o-1", input=Order(n))).created:
                created.append(n)

        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(start, n)
        await trio.sleep(60)
        # One start stored it and its body ran once; the other nine were told it exists.
        assert len(created) == 1 and ran == created, (created, ran)


async def test_starts_of_one_workflow_id_from_two_engines_create_it_once(
    autojump_clock: trio.testing.MockClock, shared_layer: StorageLayer
) -> None:
    ran: list[int] = []
    ship = sleepy_workflow(ran)
    async with (
        open_test_engine([ship], storage=shared_layer, start=START) as one,
        open_test_engine([ship], storage=shared_layer, start=START) as two,
    ):
        created: list[int] = []

        async def start(engine: djobs.Engine, n: int) -> None:
            if success(await engine.client.workflow(ship).start(id="o-1", input=Order(n))).created:
                created.append(n)

        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(start, one if n % 2 else two, n)
        await trio.sleep(60)
        assert len(created) == 1 and ran == created, (created, ran)
