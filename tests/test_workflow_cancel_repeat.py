"""A workflow cancelled twice: one cancel is the one that cancelled it; the other says an earlier cancel
was accepted, and the first reason stands (as Temporal answers a repeated cancel request), before the
workflow's end or after it.

Before, two cancels at once both answered ``cancelled=True``.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
from postgres_support import STORAGE_KINDS, drop_schema, new_schema_name, postgres_dsn, storage_layer

import djobs
from djobs.testing import failure, open_test_engine, success


class Nothing(msgspec.Struct):
    pass


async def nap(params: Nothing, ctx: djobs.WorkflowContext) -> Nothing:
    await ctx.sleep("1 hour")
    return params


napper = djobs.Workflow.make("napper", input=Nothing, result=Nothing, execute=nap)


def run_on(kind: str, tmp_path: Any, scenario: Any) -> None:
    schema = new_schema_name() if kind == "postgres" else None
    try:
        trio.run(
            scenario, storage_layer(kind, str(tmp_path), schema), clock=trio.testing.MockClock(autojump_threshold=0)
        )
    finally:
        if schema is not None:
            drop_schema(postgres_dsn() or "", schema)


def error_message(status: djobs.WorkflowStatus) -> str:
    assert status.status == "cancelled" and status.error is not None, status
    message = status.error["message"]
    assert isinstance(message, str)
    return message


@pytest.mark.parametrize("kind", STORAGE_KINDS)
@pytest.mark.parametrize("woken", [False, True], ids=["sleeping", "running"])
def test_two_cancels_at_once_cancel_once_and_keep_the_first_reason(kind: str, woken: bool, tmp_path: Any) -> None:
    async def scenario(layer: djobs.storage.StorageLayer) -> None:
        async with open_test_engine([napper], storage=layer) as engine:
            client = engine.client.workflow(napper)
            assert success(await client.start(id="n", input=Nothing()))
            if not woken:
                await engine.wait_idle()  # asleep: the cancels go through the storage
            answers: dict[str, djobs.WorkflowCancelResult] = {}

            async def cancel(reason: str) -> None:
                answers[reason] = success(await client.cancel("n", reason=reason))

            async with trio.open_nursery() as nursery:
                for reason in ("first", "second"):
                    nursery.start_soon(cancel, reason)
            winners = [r for r, a in answers.items() if a.cancelled]
            assert len(winners) == 1, answers
            [loser] = set(answers) - set(winners)
            assert answers[loser].already_requested and not answers[loser].cancelled, answers
            assert not answers[winners[0]].already_requested
            await engine.wait_idle()
            message = error_message(success(await client.status("n")))
            assert message.endswith(f"was cancelled: {winners[0]}"), message
            # After the end: still a repeat of the cancel that ended it.
            after = success(await client.cancel("n", reason="third"))
            assert after == djobs.WorkflowCancelResult("n", False, "cancelled", already_requested=True)
            assert error_message(success(await client.status("n"))).endswith(winners[0])

    run_on(kind, tmp_path, scenario)


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_cancel_after_one_was_accepted_is_a_repeat(kind: str, tmp_path: Any) -> None:
    """One after the other, before the run the first woke has ended."""

    async def scenario(layer: djobs.storage.StorageLayer) -> None:
        async with open_test_engine([napper], storage=layer) as engine:
            client = engine.client.workflow(napper)
            assert success(await client.start(id="n", input=Nothing()))
            await engine.wait_idle()
            first = success(await client.cancel("n", reason="first"))
            assert first.cancelled and not first.already_requested
            second = success(await client.cancel("n", reason="second"))
            # A repeat whether or not the woken run has ended yet.
            assert (second.cancelled, second.already_requested) == (False, True), second
            await engine.wait_idle()
            assert error_message(success(await client.status("n"))).endswith("was cancelled: first")
            third = success(await client.cancel("n", reason="third"))  # after the end
            assert third == djobs.WorkflowCancelResult("n", False, "cancelled", already_requested=True)

    run_on(kind, tmp_path, scenario)


@pytest.mark.parametrize("kind", ["sqlite", STORAGE_KINDS[2]])
def test_cancels_from_two_engines_cancel_once(kind: str, tmp_path: Any) -> None:
    async def scenario(layer: djobs.storage.StorageLayer) -> None:
        async with open_test_engine([napper], storage=layer) as a, open_test_engine([napper], storage=layer) as b:
            assert success(await a.client.workflow(napper).start(id="n", input=Nothing()))
            await a.wait_idle()
            answers: list[tuple[str, djobs.WorkflowCancelResult]] = []

            async def cancel(engine: Any, reason: str) -> None:
                answers.append((reason, success(await engine.client.workflow(napper).cancel("n", reason=reason))))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel, a, "from a")
                nursery.start_soon(cancel, b, "from b")
            winners = [reason for reason, answer in answers if answer.cancelled]
            assert len(winners) == 1, answers
            await a.wait_idle()
            await b.wait_idle()
            message = error_message(success(await a.client.workflow(napper).status("n")))
            assert message.endswith(winners[0]), (message, answers)

    run_on(kind, tmp_path, scenario)


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_second_cancel_while_the_first_reads_the_row_is_its_repeat(kind: str, tmp_path: Any) -> None:
    """The first cancel is still reading the row when the second arrives.

    Before, the second (known as a repeat) went on and recorded the cancel itself, with the
    first's reason, while the first was reading; the first then read that cancel back. Both
    answered that an earlier cancel had been accepted, and neither was the one that cancelled
    (seen in CI on PostgreSQL, whose reads are slow enough, with a run waking meanwhile).
    """

    async def scenario(layer: djobs.storage.StorageLayer) -> None:
        async with open_test_engine([napper], storage=layer) as engine:
            client = engine.client.workflow(napper)
            storage: Any = engine.storage
            real_load = storage.load
            slowed = [True]

            async def slow_load(key: str) -> Any:
                if slowed[0]:  # the first read: slow, so the second cancel arrives meanwhile
                    slowed[0] = False
                    await trio.sleep(1)
                return await real_load(key)

            assert success(await client.start(id="n", input=Nothing()))
            await engine.wait_idle()
            storage.load = slow_load
            answers: dict[str, djobs.WorkflowCancelResult] = {}

            async def cancel(reason: str, after: float) -> None:
                await trio.sleep(after)
                answers[reason] = success(await client.cancel("n", reason=reason))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel, "first", 0)
                nursery.start_soon(cancel, "second", 0.5)
            storage.load = real_load
            assert answers["first"].cancelled and not answers["first"].already_requested, answers
            assert not answers["second"].cancelled and answers["second"].already_requested, answers
            await engine.wait_idle()
            assert error_message(success(await client.status("n"))).endswith("was cancelled: first")

    run_on(kind, tmp_path, scenario)


def one() -> int:
    return 1


async def cancels_itself(params: Nothing, ctx: djobs.WorkflowContext) -> Nothing:
    await ctx.step("a", one)
    await trio.sleep(1)  # the outside cancel arrives meanwhile, between steps
    own[ctx.instance_id] = await ctx.client.workflow(self_canceller).cancel(ctx.instance_id, reason="own")
    await ctx.step("b", one)
    return params


self_canceller = djobs.Workflow.make("selfcanceller", input=Nothing, result=Nothing, execute=cancels_itself)
own: dict[str, Any] = {}


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_workflow_cancelling_itself_while_another_cancel_waits_is_refused(kind: str, tmp_path: Any) -> None:
    """Before, the body's own cancel waited behind the outside one, which waited for the body's
    run: both for ever. The body's cancel is refused at once, and the outside one cancels."""

    async def scenario(layer: djobs.storage.StorageLayer) -> None:
        own.clear()
        async with open_test_engine([self_canceller], storage=layer) as engine:
            client = engine.client.workflow(self_canceller)
            assert success(await client.start(id="w", input=Nothing()))
            await trio.sleep(0.5)
            with trio.fail_after(60):
                outside = success(await client.cancel("w", reason="outside"))
            assert outside.cancelled and not outside.already_requested, outside
            assert isinstance(failure(own["w"]), djobs.InvalidStateError), own
            await engine.wait_idle()
            assert error_message(success(await client.status("w"))).endswith("was cancelled: outside")

    run_on(kind, tmp_path, scenario)
