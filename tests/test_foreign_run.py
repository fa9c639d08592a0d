"""A client verb awaited outside the engine's Trio run is refused with a `StorageError`, and nothing
of it reaches the engine: no task in its nursery, no lease taken, no row written.

Before, ``trio.to_thread.run_sync(lambda: trio.run(call))`` around a verb started work in the
engine's nursery from the other run: the verb answered, then an AssertionError from the engine's
leases escaped the engine's nursery into the host application.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from returns.future import FutureResult

import djobs
from djobs.testing import failure, open_test_engine, success


class Item(msgspec.Struct):
    name: str


def keep(ctx: djobs.ContinuousContext[Item]) -> None:
    pass


def fold(ctx: djobs.DebounceEventContext[Item, Item]) -> Item:
    return ctx.event


def flush(ctx: djobs.DebounceContext[Item]) -> None:
    pass


def on_item(event: Item, ctx: djobs.TaskEventContext[Item]) -> None:
    ctx.set_state(event)


def run_task(ctx: djobs.TaskContext[Item]) -> None:
    pass


async def visit(params: Item, ctx: djobs.WorkflowContext) -> Item:
    return params


job = djobs.Job.make("job", params=Item, execute=lambda params, ctx: None, on="item")
watcher = djobs.Continuous.make("watcher", state=Item, schedule=djobs.every("1 hour"), execute=keep)
gatherer = djobs.Debounce.make("gatherer", event=Item, state=Item, on_event=fold, execute=flush, flush_after="1 hour")
keeper = djobs.Task.make("keeper", state=Item, event=Item, on_event=on_item, execute=run_task)
visitor = djobs.Workflow.make("visitor", input=Item, result=Item, execute=visit)
nightly = djobs.CronJob.make("nightly", schedule=djobs.cron("0 3 * * *"), job=job, params=Item("night"))
definitions: list[Any] = [job, watcher, gatherer, keeper, visitor, nightly]

CLIENTS = (
    djobs.ContinuousClient,
    djobs.DebounceClient,
    djobs.TaskClient,
    djobs.WorkflowClient,
    djobs.JobClient,
    djobs.JobsClient,
    djobs.CronsClient,
    djobs.DeadLettersClient,
)
LETTER = "0190b7a4-0000-7000-8000-000000000000"


def every_verb(client: djobs.Client) -> dict[str, Callable[[], FutureResult[Any, Any]]]:
    """Each client verb, by its class and name, with arguments that would succeed in the engine's run."""
    c, d, t, w = client.continuous(watcher), client.debounce(gatherer), client.task(keeper), client.workflow(visitor)
    j, jobs, crons, letters = client.job(job), client.jobs, client.crons, client.dead_letters
    tenant = client.for_tenant("acme")
    return {
        "ContinuousClient.start": lambda: c.start(id="c", input=Item("x")),
        "ContinuousClient.status": lambda: c.status("c"),
        "ContinuousClient.get_state": lambda: c.get_state("c"),
        "ContinuousClient.trigger": lambda: c.trigger("c"),
        "ContinuousClient.pause": lambda: c.pause("c"),
        "ContinuousClient.resume": lambda: c.resume("c"),
        "ContinuousClient.terminate": lambda: c.terminate("c"),
        "DebounceClient.add": lambda: d.add(id="d", event=Item("x")),
        "DebounceClient.add (tenant)": lambda: tenant.debounce(gatherer).add(id="d", event=Item("x")),
        "DebounceClient.status": lambda: d.status("d"),
        "DebounceClient.get_state": lambda: d.get_state("d"),
        "DebounceClient.flush": lambda: d.flush("d"),
        "DebounceClient.clear": lambda: d.clear("d"),
        "TaskClient.send": lambda: t.send(id="t", event=Item("x")),
        "TaskClient.status": lambda: t.status("t"),
        "TaskClient.get_state": lambda: t.get_state("t"),
        "TaskClient.trigger": lambda: t.trigger("t"),
        "TaskClient.terminate": lambda: t.terminate("t"),
        "WorkflowClient.start": lambda: w.start(id="w", input=Item("x")),
        "WorkflowClient.start (tenant)": lambda: tenant.workflow(visitor).start(id="w", input=Item("x")),
        "WorkflowClient.status": lambda: w.status("w"),
        "WorkflowClient.result": lambda: w.result("w"),
        "WorkflowClient.signal": lambda: w.signal("w", "go", None),
        "WorkflowClient.cancel": lambda: w.cancel("w"),
        "WorkflowClient.list": lambda: w.list(),
        "JobClient.now": lambda: j.now(Item("x")),
        "JobClient.later": lambda: j.later(Item("x")),
        "JobClient.later_many": lambda: j.later_many([Item("x")]),
        "JobClient.batch": lambda: j.batch([Item("x")]),
        "JobsClient.status": lambda: jobs.status(LETTER),
        "JobsClient.cancel": lambda: jobs.cancel(LETTER),
        "JobsClient.retry": lambda: jobs.retry(LETTER),
        "JobsClient.list": lambda: jobs.list(),
        "JobsClient.purge": lambda: jobs.purge(older_than="1 day"),
        "CronsClient.get": lambda: crons.get(nightly),
        "CronsClient.enable": lambda: crons.enable(nightly),
        "CronsClient.disable": lambda: crons.disable(nightly),
        "CronsClient.next_runs": lambda: crons.next_runs(nightly, 2),
        "CronsClient.list": lambda: crons.list(),
        "DeadLettersClient.list": lambda: letters.list(),
        "DeadLettersClient.get": lambda: letters.get(LETTER),
        "DeadLettersClient.retry": lambda: letters.retry(LETTER),
        "DeadLettersClient.discard": lambda: letters.discard(LETTER),
        "DeadLettersClient.purge": lambda: letters.purge(older_than="1 day"),
        "Client.send_event": lambda: client.send_event("item", Item("x")),
    }


def assert_every_verb_named(verbs: dict[str, Any]) -> None:
    """A verb added to a client must be added to `every_verb`."""
    named = {name.partition(" ")[0] for name in verbs}
    public = {
        f"{cls.__name__}.{name}"
        for cls in CLIENTS
        for name, _ in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }
    assert named == public | {"Client.send_event"}


async def assert_nothing_stored(engine: Any) -> None:
    client = engine.client
    assert success(await client.jobs.list()) == []
    assert success(await client.continuous(watcher).status("c")).status == "not_found"
    assert success(await client.task(keeper).status("t")).status == "not_found"
    assert success(await client.debounce(gatherer).status("d")).status == "not_found"
    assert success(await client.workflow(visitor).status("w")).status == "not_found"
    assert success(await client.crons.get(nightly)).enabled


def refused(result: Any, name: str) -> None:
    error = failure(result)
    assert isinstance(error, djobs.StorageError), (name, error)
    assert "outside the engine's Trio run" in error.message, (name, error)
    assert "trio.from_thread.run" in error.message, (name, error)


@pytest.mark.trio
async def test_every_verb_awaited_in_another_trio_run_is_refused_and_reaches_nothing() -> None:
    async with open_test_engine(definitions) as engine:
        verbs = every_verb(engine.client)
        assert_every_verb_named(verbs)
        for name, verb in verbs.items():

            async def call(verb: Callable[[], FutureResult[Any, Any]] = verb) -> Any:
                return await verb()

            refused(await trio.to_thread.run_sync(lambda: trio.run(call)), name)
        await assert_nothing_stored(engine)
        # The engine is unharmed: the same verbs work in its own run.
        assert success(await engine.client.continuous(watcher).start(id="c", input=Item("x"))).created
        assert success(await engine.client.debounce(gatherer).add(id="d", event=Item("x")))
        await engine.wait_idle()


@pytest.mark.trio
async def test_a_verb_made_in_another_run_and_awaited_there_is_refused_too() -> None:
    async with open_test_engine(definitions) as engine:

        async def in_other_run() -> Any:
            return await engine.client.workflow(visitor).start(id="w", input=Item("x"))

        refused(await trio.to_thread.run_sync(trio.run, in_other_run), "WorkflowClient.start")
        await assert_nothing_stored(engine)


@pytest.mark.trio
async def test_every_verb_awaited_outside_any_trio_run_is_refused() -> None:
    async with open_test_engine(definitions) as engine:
        for name, verb in every_verb(engine.client).items():

            async def call(verb: Callable[[], FutureResult[Any, Any]] = verb) -> Any:
                return await verb()

            refused(await trio.to_thread.run_sync(lambda: asyncio.run(call())), name)
        await assert_nothing_stored(engine)


@pytest.mark.trio
async def test_a_thread_reaches_the_engine_through_trio_from_thread() -> None:
    """What the refusal's message advises works."""
    async with open_test_engine(definitions) as engine:
        start = engine.client.continuous(watcher).start

        def in_thread() -> Any:
            return trio.from_thread.run(lambda: start(id="c", input=Item("x")).awaitable())

        assert success(await trio.to_thread.run_sync(in_thread)).created


@pytest.mark.trio
async def test_every_verb_of_a_closed_engine_awaited_from_another_run_says_the_engine_is_closed() -> None:
    """The closed engine's one error, as reliability.md promises for every verb, not the other run's."""
    async with open_test_engine(definitions) as engine:
        verbs = every_verb(engine.client)
    for name, verb in verbs.items():

        async def call(verb: Callable[[], FutureResult[Any, Any]] = verb) -> Any:
            return await verb()

        for elsewhere in (lambda: trio.run(call), lambda: asyncio.run(call())):
            error = failure(await trio.to_thread.run_sync(elsewhere))
            assert isinstance(error, djobs.StorageError), (name, error)
            assert error.message.startswith("the engine is closed"), (name, error.message)


def test_every_verb_awaited_from_the_host_loop_of_a_guest_run_is_refused_and_reaches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the engine in a Trio guest run on asyncio (``trio.lowlevel.start_guest_run``), the host
    thread has the guest's run (its token) but no Trio task: a verb awaited from an asyncio task
    passed the run's check, wrote, then failed on its first Trio trap ("djobs failed
    unexpectedly ... bad yield") with the job stored. It is refused first, as in any other loop;
    so is an engine opened there."""
    monkeypatch.chdir(tmp_path)  # open_engine's default database would be made here
    outcomes: dict[str, Any] = {}

    async def guest(ready: asyncio.Event, asked: trio.Event, loop: asyncio.AbstractEventLoop) -> None:
        async with open_test_engine(definitions) as engine:
            outcomes["engine"], outcomes["token"] = engine, trio.lowlevel.current_trio_token()
            loop.call_soon_threadsafe(ready.set)
            await asked.wait()
            await assert_nothing_stored(engine)
            outcomes["checked"] = True

    async def host() -> None:
        loop = asyncio.get_running_loop()
        ready, done, asked = asyncio.Event(), asyncio.Event(), trio.Event()

        def ended(result: Any) -> None:
            outcomes["guest"] = result
            done.set()

        trio.lowlevel.start_guest_run(
            guest,
            ready,
            asked,
            loop,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            done_callback=ended,
        )
        await asyncio.wait_for(ready.wait(), 10)
        verbs = every_verb(outcomes["engine"].client)
        for name, verb in verbs.items():
            outcomes[name] = await asyncio.wait_for(verb().awaitable(), 10)
        try:
            async with djobs.open_engine([]):
                pass  # pragma: no cover
        except RuntimeError as exc:
            outcomes["open_engine"] = str(exc)
        outcomes["token"].run_sync_soon(asked.set)  # the guest's own run sets it
        await asyncio.wait_for(done.wait(), 10)

    asyncio.run(host())
    outcomes["guest"].unwrap()  # the guest run ended without an error
    assert outcomes["checked"]
    names = [name for name in outcomes if "." in name]
    assert len(names) == len(every_verb(outcomes["engine"].client))
    for name in names:
        refused(outcomes[name], name)
    assert "under asyncio" in outcomes["open_engine"]
    assert list(tmp_path.iterdir()) == []  # refused before its database file was made
