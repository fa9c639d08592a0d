"""Typed events fanned out to the jobs that listen, and tenant isolation of the queue."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import djobs
from djobs.testing import failure, open_test_engine, success


class OrderCreated(msgspec.Struct):
    order_id: str
    total: int


class OrderRef(msgspec.Struct):
    order_id: str


class Seen:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object, str | None]] = []


def listeners(seen: Seen) -> list[djobs.Job[object, None]]:
    def email(params: OrderCreated, ctx: djobs.JobContext) -> None:
        seen.calls.append(("email", params, ctx.tenant_id))

    def stock(params: OrderRef, ctx: djobs.JobContext) -> None:
        seen.calls.append(("stock", params, ctx.tenant_id))

    def refund(params: OrderRef, ctx: djobs.JobContext) -> None:
        seen.calls.append(("refund", params, ctx.tenant_id))

    return [
        djobs.Job.make("confirmationEmail", params=OrderCreated, execute=email, on="order.created"),
        djobs.Job.make("reserveStock", params=OrderRef, execute=stock, on="order.created"),
        djobs.Job.make("refund", params=OrderRef, execute=refund, on="order.cancelled"),
    ]  # type: ignore[list-item]


# -- events ------------------------------------------------------------------------------


@pytest.mark.trio
async def test_an_event_enqueues_one_job_per_listener(autojump_clock: trio.testing.MockClock) -> None:
    seen = Seen()
    async with open_test_engine(listeners(seen)) as engine:
        sent = success(
            await engine.client.send_event(
                "order.created", {"order_id": "o-1", "total": 30}, correlation_id="checkout-1"
            )
        )
        assert sent.delivered and sent.event == "order.created"
        assert sent.job_names == ["confirmationEmail", "reserveStock"]
        assert len(sent.job_ids) == 2
        await engine.wait_idle()
        assert sorted((name, params) for name, params, _ in seen.calls) == [
            ("email", OrderCreated("o-1", 30)),
            ("stock", OrderRef("o-1")),
        ]
        for job_id, name in zip(sent.job_ids, sent.job_names, strict=True):
            info = success(await engine.client.jobs.status(job_id))
            assert (info.name, info.status, info.correlation_id) == (name, "completed", "checkout-1")
        # A typed struct works as well as a dict.
        again = success(await engine.client.send_event("order.cancelled", OrderRef("o-1")))
        assert again.job_names == ["refund"]


@pytest.mark.trio
async def test_an_event_nobody_listens_to_is_not_an_error(autojump_clock: trio.testing.MockClock) -> None:
    seen = Seen()
    async with open_test_engine(listeners(seen)) as engine:
        sent = success(await engine.client.send_event("user.signed_up", {"anything": 1}))
        assert sent == djobs.EventResult(event="user.signed_up", job_ids=[], job_names=[], delivered=False)
        assert success(await engine.client.jobs.list()) == []


@pytest.mark.trio
async def test_a_payload_one_listener_rejects_enqueues_nothing(autojump_clock: trio.testing.MockClock) -> None:
    seen = Seen()
    async with open_test_engine(listeners(seen)) as engine:
        # reserveStock would take it (it only needs order_id); confirmationEmail needs a total.
        error = failure(await engine.client.send_event("order.created", {"order_id": "o-1"}))
        assert isinstance(error, djobs.ValidationError)
        assert "confirmationEmail" in error.message and "OrderCreated" in error.message
        for bad_name in ("", "   ", 42):
            assert isinstance(failure(await engine.client.send_event(bad_name, {})), djobs.ValidationError)  # type: ignore[arg-type]
        await engine.wait_idle()
        assert success(await engine.client.jobs.list()) == [] and seen.calls == []


@pytest.mark.trio
async def test_a_repeated_event_with_an_idempotency_key_enqueues_once(autojump_clock: trio.testing.MockClock) -> None:
    seen = Seen()
    async with open_test_engine(listeners(seen)) as engine:
        payload = {"order_id": "o-1", "total": 1}
        first = success(await engine.client.send_event("order.created", payload, idempotency_key="webhook-77"))
        again = success(await engine.client.send_event("order.created", payload, idempotency_key="webhook-77"))
        assert again.job_ids == first.job_ids
        await engine.wait_idle()
        assert len(seen.calls) == 2


# -- tenants -----------------------------------------------------------------------------


@pytest.mark.trio
async def test_required_tenancy_refuses_jobs_without_a_tenant(autojump_clock: trio.testing.MockClock) -> None:
    seen = Seen()
    jobs = listeners(seen)
    async with open_test_engine(jobs, tenancy="required") as engine:
        ref = OrderRef("o-1")
        stock = engine.client.job(jobs[1])
        calls = (stock.later(ref), stock.now(ref), stock.batch([ref]), engine.client.send_event("order.cancelled", ref))
        for call in calls:
            error = failure(await call)
            assert isinstance(error, djobs.TenantError) and "tenant" in error.message
        assert success(await engine.client.jobs.list()) == []
        job_id = success(await engine.client.job(jobs[1]).later(ref, tenant_id="acme"))
        acme = success(await engine.client.for_tenant("acme").send_event("order.cancelled", ref))
        await engine.wait_idle()
        assert sorted((name, tenant) for name, _, tenant in seen.calls) == [("refund", "acme"), ("stock", "acme")]
        assert success(await engine.client.jobs.status(job_id)).tenant_id == "acme"
        assert success(await engine.client.jobs.status(acme.job_ids[0])).tenant_id == "acme"
    with pytest.raises(djobs.ValidationError, match="tenancy"):
        async with open_test_engine(jobs, tenancy="sometimes"):  # type: ignore[arg-type]
            pass  # pragma: no cover


@pytest.mark.trio
async def test_a_tenant_client_sees_and_changes_only_its_own_jobs(autojump_clock: trio.testing.MockClock) -> None:
    seen = Seen()
    jobs = listeners(seen)
    stock = jobs[1]
    async with open_test_engine(jobs, worker=None) as engine:
        acme, globex = engine.client.for_tenant("acme"), engine.client.for_tenant("globex")
        assert acme.tenant_id == "acme"
        acme_ids = [success(await acme.job(stock).later(OrderRef(f"a{i}"))) for i in range(2)]
        globex_id = success(await globex.job(stock).later(OrderRef("g")))
        assert [j.id for j in success(await acme.jobs.list())] == acme_ids
        assert [j.id for j in success(await globex.jobs.list())] == [globex_id]
        assert len(success(await engine.client.jobs.list())) == 3  # the unscoped client sees every tenant
        assert [j.id for j in success(await engine.client.jobs.list(tenant_id="globex"))] == [globex_id]
        assert success(await acme.jobs.status(acme_ids[0])).tenant_id == "acme"
        unknown_id = "0190b7a4-0000-7000-8000-000000000000"
        for verb in (acme.jobs.status, acme.jobs.cancel, acme.jobs.retry):
            # Another tenant's job is answered as an unknown id is: no existence oracle.
            error = failure(await verb(globex_id))
            assert (
                isinstance(error, djobs.InstanceNotFoundError)
                and error.message == f"no job with id {globex_id!r} is stored"
            )
            assert type(failure(await verb(unknown_id))) is type(error)
        assert isinstance(failure(await acme.jobs.list(tenant_id="globex")), djobs.TenantError)
        # Naming another tenant in a listing's filter is a TenantError for dead letters too (for_tenant's rule).
        assert isinstance(failure(await acme.dead_letters.list(tenant_id="globex")), djobs.TenantError)
        assert success(await acme.dead_letters.list(tenant_id="acme")) == []
        assert isinstance(failure(await acme.job(stock).later(OrderRef("x"), tenant_id="globex")), djobs.TenantError)
        assert success(await acme.job(stock).later(OrderRef("x"), tenant_id="acme"))  # naming itself is fine
        assert success(await globex.jobs.status(globex_id)).status == "pending"  # untouched
        for bad in ("", "x" * 600):
            assert isinstance(failure(await engine.client.for_tenant(bad).jobs.list()), djobs.ValidationError)
            assert isinstance(
                failure(await engine.client.for_tenant(bad).job(stock).later(OrderRef("x"))), djobs.ValidationError
            )
        # Idempotency keys are per tenant: the same key in two tenants is two jobs.
        a = success(await acme.job(stock).later(OrderRef("k"), idempotency_key="k1"))
        g = success(await globex.job(stock).later(OrderRef("k"), idempotency_key="k1"))
        assert a != g


@pytest.mark.trio
async def test_a_tenant_client_runs_now_jobs_as_that_tenant(autojump_clock: trio.testing.MockClock) -> None:
    seen = Seen()
    jobs = listeners(seen)
    async with open_test_engine(jobs) as engine:
        run = success(await engine.client.for_tenant("acme").job(jobs[1]).now(OrderRef("o")))
        assert seen.calls == [("stock", OrderRef("o"), "acme")]
        assert run.job_id is not None
        other = failure(await engine.client.for_tenant("globex").jobs.status(run.job_id))
        assert isinstance(other, djobs.InstanceNotFoundError)
        bad = failure(await engine.client.job(jobs[1]).later(OrderRef("o"), tenant_id=""))
        assert isinstance(bad, djobs.ValidationError)


@pytest.mark.trio
async def test_cron_jobs_under_required_tenancy_need_a_tenant(autojump_clock: trio.testing.MockClock) -> None:
    def tick(fire: djobs.CronFire, ctx: djobs.JobContext) -> None:
        ticks.append(ctx.tenant_id)

    ticks: list[str | None] = []
    anonymous = djobs.CronJob.make("tick", schedule=djobs.every("1 hour"), execute=tick)
    with pytest.raises(djobs.TenantError, match="tick"):
        async with open_test_engine([anonymous], tenancy="required"):
            pass  # pragma: no cover
    owned = djobs.CronJob.make("tick", schedule=djobs.every("1 hour"), execute=tick, tenant_id="acme")
    async with open_test_engine([owned], tenancy="required") as engine:
        await trio.sleep(3601)
        assert ticks == ["acme"]
        assert len(success(await engine.client.for_tenant("acme").crons.list())) == 1
        assert success(await engine.client.for_tenant("globex").crons.list()) == []
        hidden = failure(await engine.client.for_tenant("globex").crons.disable("tick"))
        unknown = failure(await engine.client.for_tenant("globex").crons.disable("nope"))
        assert isinstance(hidden, djobs.JobNotFoundError) and type(unknown) is type(hidden)


# -- typed events and delayed events -----------------------------------------------------

order_created = djobs.Event("order.created", OrderCreated)


@pytest.mark.trio
async def test_a_typed_event_reaches_the_listeners_of_its_name(autojump_clock: trio.testing.MockClock) -> None:
    seen = Seen()

    def audit(params: OrderCreated, ctx: djobs.JobContext) -> None:
        seen.calls.append(("audit", params, ctx.tenant_id))

    typed_listener = djobs.Job.make("audit", params=OrderCreated, execute=audit, on=order_created)
    assert typed_listener.on == "order.created"
    async with open_test_engine([*listeners(seen), typed_listener]) as engine:
        sent = success(await engine.client.send_event(order_created, OrderCreated("o-1", 30)))
        assert sent.event == "order.created"
        assert sent.job_names == ["confirmationEmail", "reserveStock", "audit"]  # by name and by Event alike
        await engine.wait_idle()
        assert sorted(name for name, _, _ in seen.calls) == ["audit", "email", "stock"]
        # The event's own type is checked at run time too (for callers mypy does not see).
        wrong = failure(await engine.client.send_event(order_created, OrderRef("o-2")))  # type: ignore[misc]
        assert isinstance(wrong, djobs.ValidationError) and "payload of event 'order.created'" in wrong.message


def test_an_event_definition_is_checked() -> None:
    with pytest.raises(djobs.ValidationError, match="event name"):
        djobs.Event("", OrderCreated)
    with pytest.raises(djobs.ValidationError, match=r"msgspec\.Struct"):
        djobs.Event("order.created", dict)
    assert repr(order_created) == "Event('order.created', OrderCreated)"
    assert order_created == djobs.Event("order.created", OrderCreated)


@pytest.mark.parametrize("name", ["order\x00created", "order.\ud800"])
def test_an_event_name_no_storage_holds_is_refused_everywhere(name: str) -> None:
    # The same rule as every other name: no NUL, no lone surrogate.
    with pytest.raises(djobs.ValidationError, match="event name"):
        djobs.Event(name, OrderCreated)
    with pytest.raises(djobs.ValidationError, match="event name"):
        djobs.Job.make("listener", params=OrderCreated, execute=lambda p, ctx: None, on=name)

    async def send() -> None:
        async with open_test_engine(listeners(Seen())) as engine:
            refused = failure(await engine.client.send_event(name, {"order_id": "o-1", "total_cents": 1}))
            assert isinstance(refused, djobs.ValidationError) and "event name" in refused.message

    trio.run(send, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_listener_of_a_typed_event_takes_its_payload_type() -> None:
    # A listener whose params are another struct would fail every send of the event at run time.
    def audit(params: OrderRef, ctx: djobs.JobContext) -> None: ...

    with pytest.raises(djobs.ValidationError, match="whose payload is not a OrderRef"):
        djobs.Job.make("audit", params=OrderRef, execute=audit, on=order_created)  # type: ignore[misc]

    class BigOrder(OrderCreated):
        pass

    # A listener of a wider type than the payload takes every payload (mypy asks for the exact type).
    listener = djobs.Job.make(
        "wide",
        params=OrderCreated,
        execute=lambda p, ctx: None,
        on=djobs.Event("order.big", BigOrder),  # type: ignore[misc]
    )
    assert listener.on == "order.big"


@pytest.mark.trio
async def test_a_delayed_event_runs_its_jobs_when_due(autojump_clock: trio.testing.MockClock) -> None:
    seen = Seen()
    async with open_test_engine(listeners(seen)) as engine:
        start = engine.clock.now_ms()
        later = success(await engine.client.send_event("order.cancelled", OrderRef("o-1"), delay="10 minutes"))
        at = datetime.fromtimestamp(start / 1000 + 3600, UTC)
        at_hour = success(await engine.client.send_event(order_created, OrderCreated("o-2", 5), at=at))
        await trio.sleep(9 * 60)
        assert seen.calls == []
        [pending] = later.job_ids
        info = success(await engine.client.jobs.status(pending))
        assert info.status == "pending" and info.scheduled_for == datetime.fromtimestamp(start / 1000 + 600, UTC)
        await trio.sleep(2 * 60)
        assert [name for name, _, _ in seen.calls] == ["refund"]
        await trio.sleep(3600)
        assert sorted(name for name, _, _ in seen.calls) == ["email", "refund", "stock"]
        for job_id in at_hour.job_ids:
            assert success(await engine.client.jobs.status(job_id)).started_at == at


@pytest.mark.trio
async def test_a_delayed_event_refuses_what_later_refuses(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine(listeners(Seen())) as engine:
        now = datetime(2026, 1, 1, tzinfo=UTC)
        cases: list[dict[str, Any]] = [
            {"delay": "10 minutes", "at": now},
            {"delay": "-5 minutes"},
            {"delay": 1.5},
            {"at": datetime(2026, 1, 1)},  # naive
            {"delay": timedelta(days=3_000_000)},  # after the year 9999
        ]
        for options in cases:
            error = failure(await engine.client.send_event("order.cancelled", OrderRef("o"), **options))
            assert isinstance(error, djobs.ValidationError), options
        assert success(await engine.client.jobs.list()) == []
