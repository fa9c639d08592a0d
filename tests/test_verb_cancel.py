"""A verb awaited in a cancelled scope, and a verb awaited again after a cancelled await.

Trio's rule: a cancelled scope raises ``Cancelled`` at the first checkpoint. A verb's
first await is one, on every storage: in a scope already cancelled it raises before
the verb starts, so nothing is written (or read), and the verb stays unspent: awaited
again outside the scope, it runs and answers. A first await cancelled once the verb
had begun leaves it spent: a second await raises ``RuntimeError`` saying to call the
verb again, not Python's bare "cannot reuse already awaited coroutine".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from postgres_support import STORAGE_KINDS, fresh_storage_layer
from returns.future import FutureResult

import djobs
from djobs._future import AWAITED_AFTER_CANCEL
from djobs.testing import open_test_engine, success


class Named(msgspec.Struct):
    name: str


async def slow(params: Named, ctx: djobs.JobContext) -> str:
    await trio.sleep(10)
    return params.name


def keep(ctx: djobs.ContinuousContext[Named]) -> None:
    pass


def fold(ctx: djobs.DebounceEventContext[Named, Named]) -> Named:
    return ctx.event


def on_named(event: Named, ctx: djobs.TaskEventContext[Named]) -> None:
    ctx.set_state(event)


async def visit(params: Named, ctx: djobs.WorkflowContext) -> str:
    return params.name


greeter = djobs.Job.make("greeter", params=Named, result=str, execute=slow)
watcher = djobs.Continuous.make("watcher", state=Named, schedule=djobs.every("1 hour"), execute=keep)
gatherer = djobs.Debounce.make(
    "gatherer", event=Named, state=Named, on_event=fold, execute=lambda ctx: None, flush_after="1 hour"
)
keeper = djobs.Task.make("keeper", state=Named, event=Named, on_event=on_named, execute=lambda ctx: None)
visitor = djobs.Workflow.make("visitor", input=Named, result=str, execute=visit)
JOBS: list[Any] = [greeter, watcher, gatherer, keeper, visitor]

#: A verb of each kind, and what it has left in the storage (read after each await).
Verb = Callable[[djobs.Client], FutureResult[Any, Any]]
Seen = Callable[[djobs.Client], Awaitable[object]]


async def pending_jobs(client: djobs.Client) -> object:
    return len(success(await client.jobs.list(status="pending")))


async def continuous_status(client: djobs.Client) -> object:
    return success(await client.continuous(watcher).status("w")).status


async def debounce_status(client: djobs.Client) -> object:
    return success(await client.debounce(gatherer).status("d")).status


async def task_status(client: djobs.Client) -> object:
    return success(await client.task(keeper).status("t")).status


async def workflow_status(client: djobs.Client) -> object:
    return success(await client.workflow(visitor).status("f")).status


async def nothing(client: djobs.Client) -> object:
    return None


VERBS: dict[str, tuple[Verb, Seen]] = {
    "job.later": (lambda c: c.job(greeter).later(Named("a")), pending_jobs),
    "jobs.list": (lambda c: c.jobs.list(), nothing),
    "continuous.start": (lambda c: c.continuous(watcher).start(id="w", input=Named("a")), continuous_status),
    "debounce.add": (lambda c: c.debounce(gatherer).add(id="d", event=Named("a")), debounce_status),
    "task.send": (lambda c: c.task(keeper).send(id="t", event=Named("a")), task_status),
    "workflow.start": (lambda c: c.workflow(visitor).start(id="f", input=Named("a")), workflow_status),
}
NOTHING_DONE: dict[str, object] = {
    "job.later": 0,
    "jobs.list": None,
    "continuous.start": "not_found",
    "debounce.add": "not_found",
    "task.send": "not_found",
    "workflow.start": "not_found",
}


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_verb_in_a_cancelled_scope_raises_cancelled_before_doing_anything_and_runs_when_awaited_again(
    kind: str,
) -> None:
    async def main() -> None:
        with fresh_storage_layer(kind) as layer:
            async with open_test_engine(JOBS, storage=layer, worker=None) as engine:
                client = engine.client
                for name, (make, seen) in VERBS.items():
                    verb = make(client)
                    with trio.CancelScope() as scope:
                        scope.cancel()
                        await verb
                    assert scope.cancelled_caught, name
                    assert await seen(client) == NOTHING_DONE[name], name
                    success(await verb)  # unspent: this await runs it
                    success(await verb)  # and then keeps its answer
                    if NOTHING_DONE[name] is not None:
                        assert await seen(client) != NOTHING_DONE[name], name

    trio.run(main)


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_verb_cancelled_once_begun_says_to_call_it_again(kind: str) -> None:
    async def main() -> None:
        with fresh_storage_layer(kind) as layer:
            async with open_test_engine(JOBS, storage=layer, worker=None) as engine:
                verb = engine.client.job(greeter).now(Named("a"))  # runs its body in this task
                with trio.move_on_after(1):
                    await verb
                with pytest.raises(RuntimeError) as raised:
                    await verb
                assert str(raised.value) == AWAITED_AFTER_CANCEL
                assert "call the verb again" in AWAITED_AFTER_CANCEL
                # As the message says: a new call is a new attempt.
                assert success(await engine.client.job(greeter).now(Named("b"))).result == "b"

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
