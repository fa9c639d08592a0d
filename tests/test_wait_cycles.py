"""Handlers that call each other's instances through ``ctx.client`` never deadlock: a call that
would close a cycle of waits (A waits for B while B waits for A, a ring of three, across kinds) is
refused at once with ``InvalidStateError``, changes nothing, and the other handlers go on. Calls
that form no cycle wait their turn as before.

Each scenario runs under ``trio.fail_after``: a deadlock fails the test instead of hanging it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import trio
from postgres_support import STORAGE_KINDS, fresh_storage_layer
from returns.io import IOSuccess

import djobs
import djobs.storage
from djobs.testing import failure, open_test_engine, success


@pytest.fixture(params=STORAGE_KINDS)
def layer(request: pytest.FixtureRequest) -> Iterator[djobs.storage.StorageLayer]:
    with fresh_storage_layer(request.param) as made:
        yield made


async def _await(verb: Any) -> None:
    """Await the verb `verb()` makes (a task of a nursery: ``start_soon(_await, lambda: ...)``)."""
    await verb()


class Hop(msgspec.Struct):
    to: str
    first: bool = True


class Count(msgspec.Struct):
    n: int = 0


def ring(answers: dict[str, Any]) -> djobs.Task[Any, Any]:
    """A Task whose first event's handler waits a moment (all first handlers are then running),
    then sends an event to instance `to` and keeps what that send answered."""

    async def on_event(event: Hop, ctx: djobs.TaskEventContext[Count]) -> Count:
        if event.first:
            await trio.sleep(0.05)
            answers[ctx.instance_id] = await ctx.client.task(task).send(id=event.to, event=Hop("", first=False))
        return Count((ctx.state or Count()).n + 1)

    task: djobs.Task[Any, Any] = djobs.Task.make(
        "ring", state=Count, event=Hop, on_event=on_event, execute=lambda ctx: None
    )
    return task


@pytest.mark.trio
@pytest.mark.parametrize("size", [2, 3])
async def test_handlers_sending_to_each_other_in_a_ring_refuse_the_call_closing_it(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer, size: int
) -> None:
    """Instance i's handler sends to instance i+1 while each is running: the send that closes the
    ring fails with InvalidStateError naming the instances, the others wait for it and succeed."""
    answers: dict[str, Any] = {}
    task = ring(answers)
    ids = [str(i) for i in range(size)]
    async with open_test_engine([task], storage=layer) as engine:
        client = engine.client.task(task)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(size):
                    nursery.start_soon(_await, lambda i=i: client.send(id=ids[i], event=Hop(ids[(i + 1) % size])))
            await engine.wait_idle()
        refused = [i for i, answer in answers.items() if not isinstance(answer, IOSuccess)]
        assert sorted(answers) == ids and len(refused) == 1, answers
        error = failure(answers[refused[0]])
        assert isinstance(error, djobs.InvalidStateError)
        assert "would wait for each other forever" in error.message, error.message
        for instance in ids:  # every instance the ring passes through is named
            assert f"task 'ring' instance '{instance}'" in error.message, error.message
        # Nothing the refused send would have done was done; every handler committed.
        counts = sorted([success(await client.get_state(i)).state or Count() for i in ids], key=lambda c: c.n)
        assert [c.n for c in counts] == [1] + [2] * (size - 1)


@pytest.mark.trio
async def test_a_task_signalling_its_workflow_while_a_step_sends_to_the_task(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    """An order Task's on_event signals the order's workflow while the workflow's step sends the
    Task an event: the signal (the call closing the cycle) is refused, the step's send goes
    through, and a signal sent afterwards ends the workflow."""
    seen: dict[str, Any] = {}

    class Order(msgspec.Struct):
        order: str

    class Note(msgspec.Struct):
        kind: str

    async def on_event(event: Note, ctx: djobs.TaskEventContext[Count]) -> Count:
        if event.kind == "paid":
            await trio.sleep(0.05)
            seen["signal"] = await ctx.client.workflow(flow).signal(ctx.instance_id, "paid", {"ok": True})
        return Count((ctx.state or Count()).n + 1)

    order = djobs.Task.make("order", state=Count, event=Note, on_event=on_event, execute=lambda ctx: None)

    async def notify(client: djobs.Client, instance: str) -> str:
        seen["send"] = await client.task(order).send(id=instance, event=Note("shipping"))
        return "sent"

    async def fulfil(given: Order, ctx: djobs.WorkflowContext) -> str:
        await ctx.step("notify", notify, ctx.client, given.order)
        await ctx.wait_for_signal("paid", dict, timeout="1 hour")
        return "done"

    flow = djobs.Workflow.make("fulfil", input=Order, result=str, execute=fulfil)
    async with open_test_engine([order, flow], storage=layer) as engine:
        client = engine.client
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_await, lambda: client.task(order).send(id="o1", event=Note("paid")))
                await trio.sleep(0.01)
                success(await client.workflow(flow).start(id="o1", input=Order("o1")))
            await engine.wait_idle()
            error = failure(seen["signal"])
            assert isinstance(error, djobs.InvalidStateError), error
            assert "workflow 'fulfil' instance 'o1'" in error.message and "task 'order'" in error.message
            success(seen["send"])
            assert success(await client.task(order).get_state("o1")).state == Count(2)
            assert success(await client.workflow(flow).status("o1")).status == "waiting"
            success(await client.workflow(flow).signal("o1", "paid", {"ok": True}))
            await engine.wait_idle()
            assert success(await client.workflow(flow).result("o1")) == "done"


class Hit(msgspec.Struct):
    n: int


@pytest.mark.trio
@pytest.mark.parametrize("first", ["flush", "run", "joined"])
async def test_a_debounce_flush_and_a_continuous_run_calling_each_other(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer, first: str
) -> None:
    """A Continuous run adds to a Debounce instance whose flush triggers that Continuous instance.
    Whichever waits second is refused (`first` waits first): the flush's trigger, or the run's
    add (not applied); the other call goes through. ``joined``: the run's add joins the queue of
    another caller's add, which waits for the flush: the flush's trigger is refused."""
    seen: dict[str, Any] = {}
    flush_wait, run_wait = (0.01, 0.05) if first == "flush" else (0.05, 0.01)

    async def flush(ctx: djobs.DebounceContext[Count]) -> None:
        await trio.sleep(flush_wait)
        seen["trigger"] = await ctx.client.continuous(cont).trigger("c")

    deb = djobs.Debounce.make(
        "deb",
        event=Hit,
        state=Count,
        on_event=lambda ctx: Count((ctx.state or Count()).n + ctx.event.n),
        execute=flush,
        flush_after="1 hour",
    )

    async def run(ctx: djobs.ContinuousContext[Count]) -> Count:
        if ctx.state.n == 1:  # the run the test triggers (not the start's, nor the flush's)
            await trio.sleep(run_wait)
            seen["add"] = await ctx.client.debounce(deb).add(id="d", event=Hit(10))
        return Count(ctx.state.n + 1)

    cont = djobs.Continuous.make("cont", state=Count, schedule=djobs.every("1 day"), execute=run)
    # The callers' tasks outlive the engine: an add from outside waits, shielded, for its round,
    # so a deadlock ends only when the engine's close cancels its handlers past the grace.
    async with (
        trio.open_nursery() as callers,
        open_test_engine([deb, cont], storage=layer, shutdown_grace="1 second") as engine,
    ):
        client = engine.client
        with trio.fail_after(60):
            success(await client.continuous(cont).start(id="c", input=Count()))
            success(await client.debounce(deb).add(id="d", event=Hit(1)))
            await engine.wait_idle()
            callers.start_soon(_await, lambda: client.debounce(deb).flush("d"))
            callers.start_soon(_await, lambda: client.continuous(cont).trigger("c"))
            if first == "joined":  # an add from outside, waiting for the flush, before the run's
                await trio.sleep(0.005)
                callers.start_soon(_await, lambda: client.debounce(deb).add(id="d", event=Hit(5)))
            await trio.sleep(1)
            await engine.wait_idle()
            refused, passed = ("add", "trigger") if first == "flush" else ("trigger", "add")
            error = failure(seen[refused])
            assert isinstance(error, djobs.InvalidStateError), error
            assert "would wait for each other forever" in error.message
            success(seen[passed])
            # The refused call changed nothing: a refused add left no batch; a refused trigger ran nothing.
            state = success(await client.debounce(deb).get_state("d")).state
            assert state == {"flush": None, "run": Count(10), "joined": Count(15)}[first]
            runs = success(await client.continuous(cont).get_state("c")).state.n
            assert runs == (3 if first == "flush" else 2)


@pytest.mark.trio
async def test_calls_forming_no_cycle_wait_their_turn(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    """A -> B while C -> B (and B -> D): nobody waits for a caller, so every call waits and
    succeeds; and a handler whose wait for B was cancelled no longer counts as waiting for B,
    so B's handler calling it then waits for it rather than being refused."""
    answers: dict[str, Any] = {}

    async def on_event(event: Hop, ctx: djobs.TaskEventContext[Count]) -> Count:
        if event.to == "give-up":  # wait for B a moment only, then go on (B then calls this one)
            with trio.move_on_after(0.01):
                await ctx.client.task(task).send(id="B", event=Hop("", first=False))
            await trio.sleep(1)
        elif event.to:
            await trio.sleep(0.05)
            answers[ctx.instance_id] = await ctx.client.task(task).send(id=event.to, event=Hop("", first=False))
        elif ctx.instance_id == "B" and not event.first:
            await trio.sleep(0.1)
        return Count((ctx.state or Count()).n + 1)

    task: djobs.Task[Any, Any] = djobs.Task.make(
        "calls", state=Count, event=Hop, on_event=on_event, execute=lambda ctx: None
    )
    async with open_test_engine([task], storage=layer) as engine:
        client = engine.client.task(task)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_await, lambda: client.send(id="A", event=Hop("B")))
                nursery.start_soon(_await, lambda: client.send(id="C", event=Hop("B")))
                nursery.start_soon(_await, lambda: client.send(id="B", event=Hop("D")))
            await engine.wait_idle()
            assert all(isinstance(a, IOSuccess) for a in answers.values()) and len(answers) == 3, answers
            assert success(await client.get_state("B")).state == Count(3)

            answers.clear()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_await, lambda: client.send(id="E", event=Hop("give-up")))
                await trio.sleep(0.02)  # E gave up waiting for B, and sleeps on
                nursery.start_soon(_await, lambda: client.send(id="B", event=Hop("E")))
            await engine.wait_idle()
            assert isinstance(answers["B"], IOSuccess), answers
            assert success(await client.get_state("E")).state == Count(2)


@pytest.mark.trio
async def test_a_workflow_cancel_from_a_handler_its_step_waits_for_is_not_refused(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    """A cancel stops the workflow's running step first, which ends the step's wait for the
    caller: no cycle is left, so the cancel goes through (it is not refused as a signal is)."""
    seen: dict[str, Any] = {}

    class Note(msgspec.Struct):
        kind: str

    async def on_event(event: Note, ctx: djobs.TaskEventContext[Count]) -> Count:
        if event.kind == "void":
            await trio.sleep(0.05)
            seen["cancel"] = await ctx.client.workflow(flow).cancel(ctx.instance_id, reason="void")
        return Count((ctx.state or Count()).n + 1)

    order = djobs.Task.make("order", state=Count, event=Note, on_event=on_event, execute=lambda ctx: None)

    async def notify(client: djobs.Client, instance: str) -> str:
        await client.task(order).send(id=instance, event=Note("shipping"))
        return "sent"

    class Order(msgspec.Struct):
        order: str

    async def fulfil(given: Order, ctx: djobs.WorkflowContext) -> str:
        await ctx.step("notify", notify, ctx.client, given.order)
        return "done"

    flow = djobs.Workflow.make("fulfil", input=Order, result=str, execute=fulfil)
    async with open_test_engine([order, flow], storage=layer) as engine:
        client = engine.client
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_await, lambda: client.task(order).send(id="o1", event=Note("void")))
                await trio.sleep(0.01)
                success(await client.workflow(flow).start(id="o1", input=Order("o1")))
            await engine.wait_idle()
        assert success(seen["cancel"]).cancelled
        assert success(await client.workflow(flow).status("o1")).status == "cancelled"


@pytest.mark.trio
async def test_handlers_waiting_for_other_instances_lend_their_concurrency_slots(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    """With ``max_concurrency=2``, four handlers each send to another instance (no cycle): the
    two running wait for instances whose actors need a slot to run, which they lend meanwhile;
    every send succeeds, and no more than two handlers run at once."""
    answers: dict[str, Any] = {}
    running = [0, 0]  # now, most

    async def on_event(event: Hop, ctx: djobs.TaskEventContext[Count]) -> Count:
        running[0] += 1
        running[1] = max(running)
        try:
            await trio.sleep(0.05)
            if event.to:
                running[0] -= 1  # waiting, not running
                try:
                    answers[ctx.instance_id] = await ctx.client.task(task).send(id=event.to, event=Hop(""))
                finally:
                    running[0] += 1
        finally:
            running[0] -= 1
        return Count((ctx.state or Count()).n + 1)

    task: djobs.Task[Any, Any] = djobs.Task.make(
        "lenders", state=Count, event=Hop, on_event=on_event, execute=lambda ctx: None
    )
    async with open_test_engine([task], storage=layer, max_concurrency=2, shutdown_grace="1 second") as engine:
        client = engine.client.task(task)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(4):
                    nursery.start_soon(_await, lambda i=i: client.send(id=f"a{i}", event=Hop(f"b{i}")))
            await engine.wait_idle()
        assert len(answers) == 4 and all(isinstance(a, IOSuccess) for a in answers.values()), answers
        assert running[1] <= 2


@pytest.mark.trio
async def test_a_handlers_add_parked_in_another_callers_round_lends_its_slot(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    """``max_concurrency=1``: a Task's handler adds to a Debounce instance whose round (another
    caller's add) waits for the instance's actor, which needs the one slot to run a flush first.
    The handler's parked add lends the slot, so the flush, the round and the handler all end."""
    answers: dict[str, Any] = {}

    async def on_event(event: Hop, ctx: djobs.TaskEventContext[Count]) -> Count:
        await trio.sleep(0.05)
        answers["add"] = await ctx.client.debounce(deb).add(id="d", event=Hit(10))
        return Count((ctx.state or Count()).n + 1)

    task: djobs.Task[Any, Any] = djobs.Task.make(
        "adder", state=Count, event=Hop, on_event=on_event, execute=lambda ctx: None
    )
    flushed: list[int] = []

    def keep(ctx: djobs.DebounceContext[Count]) -> None:
        flushed.append(ctx.state.n)

    deb = djobs.Debounce.make(
        "deb",
        event=Hit,
        state=Count,
        on_event=lambda ctx: Count((ctx.state or Count()).n + ctx.event.n),
        execute=keep,
        flush_after="1 hour",
    )
    async with (
        trio.open_nursery() as callers,
        open_test_engine([task, deb], storage=layer, max_concurrency=1, shutdown_grace="1 second") as engine,
    ):
        client = engine.client
        with trio.fail_after(60):
            success(await client.debounce(deb).add(id="d", event=Hit(1)))
            await engine.wait_idle()
            callers.start_soon(_await, lambda: client.task(task).send(id="t", event=Hop("")))
            await trio.sleep(0.01)  # the handler holds the one slot: the flush waits for it
            callers.start_soon(_await, lambda: client.debounce(deb).flush("d"))
            await trio.sleep(0.01)  # an add whose round waits for the flush, on the actor
            callers.start_soon(_await, lambda: client.debounce(deb).add(id="d", event=Hit(5)))
            await trio.sleep(1)
            await engine.wait_idle()
            assert isinstance(answers.get("add"), IOSuccess), answers
            assert flushed == [1]
            assert success(await client.debounce(deb).get_state("d")).state == Count(15)


@pytest.mark.trio
async def test_a_handler_fanning_out_to_many_instances_lends_its_one_slot_once(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    """A handler holds one slot, however many of its tasks wait at once: with
    ``max_concurrency=1``, one that sends to three instances from a nursery lent a slot per
    send, and the three ran together. They run one at a time, and every send succeeds."""
    answers: list[Any] = []
    running = [0, 0]  # now, most

    async def on_event(event: Hop, ctx: djobs.TaskEventContext[Count]) -> Count:
        if event.to:
            async with trio.open_nursery() as nursery:
                for to in event.to.split(","):

                    async def send(to: str = to) -> None:
                        answers.append(await ctx.client.task(task).send(id=to, event=Hop("")))

                    nursery.start_soon(send)
        else:
            running[0] += 1
            running[1] = max(running)
            await trio.sleep(1)
            running[0] -= 1
        return Count((ctx.state or Count()).n + 1)

    task: djobs.Task[Any, Any] = djobs.Task.make(
        "fan", state=Count, event=Hop, on_event=on_event, execute=lambda ctx: None
    )
    async with open_test_engine([task], storage=layer, max_concurrency=1, shutdown_grace="1 second") as engine:
        with trio.fail_after(60):
            assert success(await engine.client.task(task).send(id="p", event=Hop("x,y,z")))
            await engine.wait_idle()
    assert len(answers) == 3 and all(isinstance(a, IOSuccess) for a in answers), answers
    assert running[1] == 1
