"""Tenant isolation of stateful instances: client.for_tenant(t) sees and changes only t's instances."""

from __future__ import annotations

import enum

import msgspec
import pytest
import trio
import trio.testing

import djobs
from djobs.testing import failure, open_test_engine, success


class Count(msgspec.Struct):
    n: int = 0


def bump(ctx: djobs.ContinuousContext[Count]) -> None:
    ctx.update_state(lambda s: Count(s.n + 1))


counter = djobs.Continuous.make("counter", state=Count, schedule=djobs.every("1 hour"), execute=bump)


def fold(ctx: djobs.DebounceEventContext[Count, Count]) -> Count:
    return Count((ctx.state.n if ctx.state else 0) + ctx.event.n)


def flush(ctx: djobs.DebounceContext[Count]) -> None:
    pass


adder = djobs.Debounce.make("adder", event=Count, state=Count, on_event=fold, execute=flush, flush_after="1 hour")


def remember(event: Count, ctx: djobs.TaskEventContext[Count]) -> None:
    ctx.set_state(event)


def nothing(ctx: djobs.TaskContext[Count]) -> None:
    pass


keeper = djobs.Task.make("keeper", state=Count, event=Count, on_event=remember, execute=nothing)


@pytest.mark.trio
async def test_tenants_share_ids_without_seeing_each_other(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([counter, adder, keeper]) as engine:
        t1, t2 = engine.client.for_tenant("t1"), engine.client.for_tenant("t2")
        # The same id in two tenants is two instances.
        assert success(await t1.continuous(counter).start(id="u", input=Count(10))).created
        assert success(await t2.continuous(counter).start(id="u", input=Count(20))).created
        await engine.wait_idle()
        assert success(await t1.continuous(counter).get_state("u")).state.n == 11
        assert success(await t2.continuous(counter).get_state("u")).state.n == 21
        # Neither is visible without the tenant, nor to the other tenant after it is gone.
        assert success(await engine.client.continuous(counter).status("u")).status == "not_found"
        assert success(await t1.continuous(counter).terminate("u")).terminated
        assert success(await t2.continuous(counter).status("u")).status == "running"

        await t1.debounce(adder).add(id="b", event=Count(1))
        await t2.debounce(adder).add(id="b", event=Count(5))
        await t2.debounce(adder).add(id="b", event=Count(5))
        assert success(await t1.debounce(adder).status("b")).event_count == 1
        assert success(await t2.debounce(adder).get_state("b")).state == Count(10)
        assert success(await engine.client.debounce(adder).status("b")).status == "not_found"

        await t1.task(keeper).send(id="k", event=Count(7))
        assert success(await t1.task(keeper).get_state("k")).state == Count(7)
        assert isinstance(failure(await t2.task(keeper).get_state("k")), djobs.InstanceNotFoundError)

        # Stored rows carry their tenant.
        loaded = await engine.storage.load(djobs.kinds._common.instance_key("task", "keeper", "k", "t1"))
        assert loaded is not None and loaded[0].tenant_id == "t1"


@pytest.mark.trio
async def test_a_plain_id_cannot_reach_into_a_tenant(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([counter]) as engine:
        await engine.client.for_tenant("t1").continuous(counter).start(id="u", input=Count())
        sneaky = "t1\x1fu"
        assert isinstance(failure(await engine.client.continuous(counter).status(sneaky)), djobs.ValidationError)


class Ref(msgspec.Struct):
    n: int = 0


def noop(params: Ref, ctx: djobs.JobContext) -> None:
    pass


queued = djobs.Job.make("queued", params=Ref, execute=noop)
flow = djobs.Workflow.make("flow", input=Ref, result=Ref, execute=lambda i, ctx: i)


@pytest.mark.trio
async def test_a_client_for_no_tenant_or_another_tenant_reaches_no_tenant(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """for_tenant(None) (an id missing from an untyped request) and a scoped client re-scoped to
    another tenant are refused at every verb with ValidationError: neither is the unscoped client."""
    async with open_test_engine([counter, adder, keeper, queued, flow], tenancy="required") as engine:
        acme = engine.client.for_tenant("acme")
        job_id = success(await acme.job(queued).later(Ref(1), delay="1 hour"))
        success(await acme.continuous(counter).start(id="u", input=Count()))
        missing: str | None = None
        for client in (
            engine.client.for_tenant(missing),  # type: ignore[arg-type]
            acme.for_tenant(missing),  # type: ignore[arg-type]
            acme.for_tenant("globex"),
            engine.client.for_tenant("globex").for_tenant("acme"),
        ):
            verbs = [
                client.jobs.list(),
                client.jobs.status(job_id),
                client.jobs.cancel(job_id),
                client.job(queued).later(Ref(2)),
                client.send_event("ev", {}),
                client.crons.list(),
                client.dead_letters.list(),
                client.continuous(counter).status("u"),
                client.continuous(counter).terminate("u"),
                client.debounce(adder).add(id="b", event=Count(1)),
                client.task(keeper).send(id="k", event=Count(1)),
                client.workflow(flow).list(),
            ]
            # Every verb's message names the value given (never a private stand-in's class), and
            # the client's tenant_id says it acts for no tenant rather than pass for None (every tenant).
            with pytest.raises(djobs.ValidationError) as caught:
                _ = client.tenant_id
            given = caught.value.message
            assert given.startswith("the client's tenant id ") and ("None" in given or "'globex'" in given)
            assert "Refused" not in given and "_Bad" not in given
            for verb in verbs:
                error = failure(await verb)
                assert isinstance(error, djobs.ValidationError), error
                assert error.message == given, error.message
        assert (engine.client.tenant_id, acme.tenant_id) == (None, "acme")
        # Nothing was changed: acme's job is pending, its instance running; its own scope still works.
        assert success(await acme.for_tenant("acme").jobs.status(job_id)).status == "pending"
        assert success(await acme.continuous(counter).status("u")).status == "running"


class _Tenant(enum.StrEnum):
    ACME = "acme"


@pytest.mark.trio
async def test_a_scoped_client_rescoped_to_its_own_tenant_as_a_str_subclass_works(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # An application's tenant enum: the verbs take a str subclass by its value, so for_tenant does.
    async with open_test_engine([queued, counter], tenancy="required") as engine:
        acme = engine.client.for_tenant(_Tenant.ACME)
        job_id = success(await acme.job(queued).later(Ref(1), delay="1 hour"))
        success(await acme.continuous(counter).start(id="u", input=Count()))
        for again in (
            acme.for_tenant(_Tenant.ACME),
            acme.for_tenant("acme"),
            engine.client.for_tenant("acme").for_tenant(_Tenant.ACME),
        ):
            assert again.tenant_id == "acme"
            assert success(await again.jobs.status(job_id)).status == "pending"
            assert success(await again.continuous(counter).status("u")).status == "running"
