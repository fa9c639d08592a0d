"""``ctx.client``: a job talks to other jobs through the same typed client, scoped to its run's tenant."""

from __future__ import annotations

import msgspec
import pytest
import trio
from returns.future import FutureResult

import djobs
from djobs.testing import failure, open_test_engine, success


class Hook(msgspec.Struct):
    contact: str


class Batch(msgspec.Struct):
    contacts: list[str] = []


class Synced(msgspec.Struct, tag=True):
    contacts: list[str]


class Inbox(msgspec.Struct):
    received: list[str] = []


def on_synced(event: Synced, ctx: djobs.TaskEventContext[Inbox]) -> Inbox:
    return Inbox([*(ctx.state or Inbox()).received, *event.contacts])


inbox = djobs.Task.make("inbox", state=Inbox, event=Synced, on_event=on_synced, execute=lambda ctx: None)


def fold(ctx: djobs.DebounceEventContext[Hook, Batch]) -> Batch:
    return Batch([*(ctx.state or Batch()).contacts, ctx.event.contact])


def forward(ctx: djobs.DebounceContext[Batch]) -> FutureResult[djobs.SendResult, djobs.JobError]:
    # A flush sends its batch on to a Task through the run's own client.
    return ctx.client.task(inbox).send(id=ctx.instance_id, event=Synced(ctx.state.contacts))


batcher = djobs.Debounce.make("batcher", event=Hook, state=Batch, on_event=fold, execute=forward)


@pytest.mark.trio
async def test_a_debounce_flush_sends_to_a_task(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([batcher, inbox]) as engine:
        for contact in ("a", "b"):
            success(await engine.client.debounce(batcher).add(id="crm", event=Hook(contact)))
        await trio.sleep(10)
        await engine.wait_idle()
        assert success(await engine.client.task(inbox).get_state("crm")).state == Inbox(["a", "b"])


@pytest.mark.trio
async def test_ctx_client_acts_for_the_runs_tenant(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([batcher, inbox]) as engine:
        acme = engine.client.for_tenant("acme")
        success(await acme.debounce(batcher).add(id="crm", event=Hook("a")))
        success(await acme.debounce(batcher).flush("crm"))
        assert success(await acme.task(inbox).get_state("crm")).state == Inbox(["a"])
        # Another tenant's (and the tenant-less) namespace never saw it.
        assert success(await engine.client.task(inbox).status("crm")).status == "not_found"
        assert success(await engine.client.for_tenant("other").task(inbox).status("crm")).status == "not_found"


class Email(msgspec.Struct):
    to: str


@pytest.mark.trio
async def test_a_job_enqueues_another_for_its_own_tenant(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[tuple[str, str | None]] = []

    def note(params: Email, ctx: djobs.JobContext) -> None:
        seen.append((params.to, ctx.tenant_id))

    welcome_job = djobs.Job.make("welcome", params=Email, execute=note)

    async def signup(params: Email, ctx: djobs.JobContext) -> None:
        success(await ctx.client.job(welcome_job).later(Email(params.to)))

    signup_job = djobs.Job.make("signup", params=Email, execute=signup)
    # Several rounds: wait_idle once returned while the second job was claimed in
    # storage but not yet started by the worker (about one round in twelve).
    for round in range(20):
        async with open_test_engine([signup_job, welcome_job]) as engine:
            success(await engine.client.for_tenant("acme").job(signup_job).later(Email(f"{round}@acme.test")))
            await engine.wait_idle()
            assert seen == [(f"{round}@acme.test", "acme")], f"round {round}"
        seen.clear()


# -- a verb on the instance that is running the caller --------------------------------


class Count(msgspec.Struct):
    n: int = 0


async def trigger_myself(ctx: djobs.ContinuousContext[Count]) -> None:
    error = failure(await ctx.client.continuous("selfish").trigger(ctx.instance_id))
    assert isinstance(error, djobs.InvalidStateError)
    assert "same instance" in error.message
    ctx.set_state(Count(ctx.state.n + 1))


selfish = djobs.Continuous.make("selfish", state=Count, schedule=djobs.every("1 hour"), execute=trigger_myself)


@pytest.mark.trio
async def test_a_handler_calling_its_own_instance_fails_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([selfish]) as engine:
        with trio.fail_after(5):  # a deadlock would wait forever
            success(await engine.client.continuous(selfish).start(id="me", input=Count()))
            await engine.wait_idle()
        assert success(await engine.client.continuous(selfish).get_state("me")).state == Count(1)
        # The body ran to its end: no failure was reported.
        assert not [e for e in engine.tracker.events if e.type == "job.failed"]


class Ping(msgspec.Struct, tag=True):
    pass


@pytest.mark.trio
async def test_a_cycle_of_two_instances_fails_at_once_instead_of_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Task a's on_event sends to b, whose on_event sends back to a: a waits for b, b would wait for a."""
    errors: list[djobs.JobError] = []

    async def bounce(event: Ping, ctx: djobs.TaskEventContext[Count]) -> Count:
        other = "b" if ctx.instance_id == "a" else "a"
        if ctx.instance_id == "b":
            result = await ctx.client.task(ping_pong).send(id=other, event=Ping())
            errors.append(failure(result))
        else:
            success(await ctx.client.task(ping_pong).send(id=other, event=Ping()))
        return Count((ctx.state or Count()).n + 1)

    ping_pong = djobs.Task.make("pingPong", state=Count, event=Ping, on_event=bounce, execute=lambda ctx: None)
    async with open_test_engine([ping_pong]) as engine:
        with trio.fail_after(5):
            success(await engine.client.task(ping_pong).send(id="a", event=Ping()))
    assert len(errors) == 1 and isinstance(errors[0], djobs.InvalidStateError)
