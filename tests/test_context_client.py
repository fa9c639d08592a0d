"""``ctx.client``: a job talks to other jobs through the same typed client, scoped to its run's tenant."""

from __future__ import annotations

import msgspec
import pytest
import trio
import trio.lowlevel
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
    assert "called from a handler of that instance" in error.message
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


@pytest.mark.trio
async def test_a_refused_terminate_or_clear_of_a_handlers_own_instance_changes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """terminate (Continuous, Task's execute and on_event), a debounce flush's clear, and B's
    terminate of A while A waits for B are refused with InvalidStateError and stop, delete and
    drop nothing: the run's state is committed, the flush's batch is sent, the event is kept."""
    errors: list[djobs.JobError] = []
    sent: list[list[int]] = []

    async def self_terminate(ctx: djobs.ContinuousContext[Count]) -> Count:
        if ctx.instance_id == "A":
            success(await ctx.client.continuous(cont).trigger("B"))
        elif ctx.instance_id == "me" or ctx.state.n > 0:  # B: not in its first run, before A exists
            target = "A" if ctx.instance_id == "B" else ctx.instance_id
            errors.append(failure(await ctx.client.continuous(cont).terminate(target)))
        await trio.lowlevel.checkpoint()  # a stopped run would be cancelled here
        return Count(ctx.state.n + 1)

    cont = djobs.Continuous.make("cont", state=Count, schedule=djobs.every("1 hour"), execute=self_terminate)

    async def on_event(event: Count, ctx: djobs.TaskEventContext[Count]) -> Count:
        errors.append(failure(await ctx.client.task(task).terminate(ctx.instance_id)))
        await trio.lowlevel.checkpoint()
        return Count((ctx.state or Count()).n + event.n)

    async def execute(ctx: djobs.TaskContext[Count]) -> None:
        errors.append(failure(await ctx.client.task(task).terminate(ctx.instance_id)))
        await trio.lowlevel.checkpoint()
        ctx.set_state(Count((ctx.state or Count()).n + 100))

    task = djobs.Task.make("task", state=Count, event=Count, on_event=on_event, execute=execute)

    async def flush(ctx: djobs.DebounceContext[Count]) -> None:
        errors.append(failure(await ctx.client.debounce(deb).clear(ctx.instance_id)))
        await trio.lowlevel.checkpoint()
        sent.append([ctx.state.n])

    deb = djobs.Debounce.make(
        "deb", event=Count, state=Count, on_event=lambda ctx: ctx.event, execute=flush, flush_after="1 second"
    )
    async with open_test_engine([cont, task, deb]) as engine:
        with trio.fail_after(60):
            client = engine.client
            success(await client.continuous(cont).start(id="me", input=Count(41)))
            success(await client.continuous(cont).start(id="B", input=Count()))
            await engine.wait_idle()
            success(await client.continuous(cont).start(id="A", input=Count()))
            assert success(await client.task(task).send(id="k", event=Count(1))).created
            success(await client.task(task).trigger("k"))
            success(await client.debounce(deb).add(id="d", event=Count(7)))
            await trio.sleep(2)
            await engine.wait_idle()
        assert len(errors) == 5 and all(isinstance(e, djobs.InvalidStateError) for e in errors), errors
        assert success(await client.continuous(cont).get_state("me")).state == Count(42)
        assert success(await client.continuous(cont).get_state("A")).state == Count(1)
        assert success(await client.continuous(cont).get_state("B")).state == Count(2)
        assert success(await client.task(task).get_state("k")).state == Count(101)
        assert sent == [[7]]
        assert not engine.tracker.of_type("job.terminated")
