"""Workflows: steps that run once, durable sleeps and signals, compensation, replay and its
divergence, restarts; on every storage (memory, SQLite file, PostgreSQL), as tests/conformance does."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args, get_type_hints

import msgspec
import pytest
import trio
from postgres_support import postgres_dsn, require_postgres, throwaway_schema
from returns.context import RequiresContextFutureResult
from returns.future import FutureResult
from returns.result import Failure, Result, Success

import djobs
from djobs.storage import StorageLayer
from djobs.testing import TestEngine, failure, open_test_engine, success

T0 = datetime(2026, 1, 1, tzinfo=UTC)
_POSTGRES = ["postgres"] if postgres_dsn() else []


def _layer(kind: str, tmp_path: Path) -> Iterator[StorageLayer]:
    if kind == "memory":
        yield djobs.memory()
    elif kind == "sqlite-file":
        yield djobs.sqlite(tmp_path / "workflows.db")
    else:
        dsn = require_postgres()
        with throwaway_schema(dsn) as schema:
            yield djobs.postgres(dsn, schema=schema)


@pytest.fixture(params=["memory", "sqlite-file", *_POSTGRES])
def layer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageLayer]:
    """Each storage in turn."""
    yield from _layer(request.param, tmp_path)


@pytest.fixture(params=["sqlite-file", *_POSTGRES])
def durable_layer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageLayer]:
    """Each storage that outlives an engine (a restart reopens it)."""
    yield from _layer(request.param, tmp_path)


# -- the order workflow ----------------------------------------------------------------------


class Order(msgspec.Struct):
    order_id: str
    amount: int


class Shipped(msgspec.Struct):
    tracking: str


class Receipt(msgspec.Struct):
    order_id: str
    charge_id: str
    outcome: str
    tracking: str | None = None


@dataclass
class Shop:
    """The application's services: a card processor and a mailer, counting their calls."""

    charges: list[str] = field(default_factory=list)
    refunds: list[str] = field(default_factory=list)
    mails: list[str] = field(default_factory=list)
    fail_charges: int = 0
    charge_calls: int = 0

    def charge(self, order: Order) -> str:
        self.charge_calls += 1
        if self.charge_calls <= self.fail_charges:
            raise ConnectionError("card processor unreachable")
        self.charges.append(order.order_id)
        return f"ch-{order.order_id}"

    def refund(self, charge_id: str) -> None:
        self.refunds.append(charge_id)

    async def notify(self, order_id: str, text: str) -> None:
        self.mails.append(f"{order_id}: {text}")


async def run_order(order: Order, ctx: djobs.WorkflowContext[Shop]) -> Receipt:
    shop = ctx.services
    charge_id = await ctx.step("charge", shop.charge, order)
    await ctx.sleep("1 day")
    shipped = await ctx.wait_for_signal("shipped", Shipped, timeout="7 days")
    if isinstance(shipped, djobs.TimedOut):
        await ctx.step("refund", shop.refund, charge_id)
        await ctx.step("notify", shop.notify, order.order_id, "not shipped, refunded")
        return Receipt(order.order_id, charge_id, "refunded")
    await ctx.step("notify", shop.notify, order.order_id, f"shipped {shipped.tracking}")
    return Receipt(order.order_id, charge_id, "shipped", shipped.tracking)


order_flow = djobs.Workflow.make(
    "order",
    input=Order,
    result=Receipt,
    execute=run_order,
    retry=djobs.Retry(max_attempts=3, delay=djobs.Backoff.fixed("1 minute")),
)


async def until(engine: TestEngine, moment: datetime) -> None:
    """Let virtual time run to `moment`, then let due work finish."""
    await trio.sleep((moment.timestamp() * 1000 - engine.clock.now_ms()) / 1000)
    await settle(engine)


async def settle(engine: TestEngine) -> None:
    """Let the alarm sleeper pick up what was just committed (a second), then let it finish."""
    await trio.sleep(1)
    await engine.wait_idle()


def types(engine: TestEngine) -> list[str]:
    return [e.type for e in engine.tracker.events if e.type.startswith("workflow.")]


@pytest.mark.trio
async def test_the_order_workflow_completes_in_milliseconds_of_real_time(
    autojump_clock: trio.testing.MockClock, layer: StorageLayer
) -> None:
    shop = Shop()
    real = time.perf_counter()
    async with open_test_engine([order_flow], storage=layer, services=shop, start=T0) as engine:
        client = engine.client.workflow(order_flow)
        started = success(await client.start(id="o-1", input=Order("o-1", 100)))
        assert (started.created, started.status) == (True, "running")
        await settle(engine)
        status = success(await client.status("o-1"))
        assert status.status == "sleeping"
        assert status.steps_finished == 1
        assert status.wake_at == T0 + timedelta(days=1)
        await until(engine, T0 + timedelta(days=2))
        status = success(await client.status("o-1"))
        assert (status.status, status.current_step) == ("waiting", "shipped")
        assert status.wake_at == T0 + timedelta(days=8)
        assert success(await client.signal("o-1", "shipped", Shipped("TRK-9"))).waiting
        await settle(engine)
        assert success(await client.result("o-1")) == Receipt("o-1", "ch-o-1", "shipped", "TRK-9")
        status = success(await client.status("o-1"))
        assert (status.status, status.steps_finished, status.wake_at) == ("completed", 2, None)
        assert [(s.kind, s.name) for s in status.steps] == [
            ("step", "charge"),
            ("sleep", "sleep"),
            ("signal", "shipped"),
            ("step", "notify"),
        ]
        again = success(await client.start(id="o-1", input=Order("o-1", 100)))
        assert (again.created, again.status) == (False, "completed")
        assert types(engine) == [
            "workflow.started",
            "workflow.step_completed",
            "workflow.sleeping",
            "workflow.waiting",
            "workflow.signal_received",
            "workflow.step_completed",
            "workflow.completed",
        ]
        step = next(e for e in engine.tracker.events if e.type == "workflow.step_completed")
        assert step.data["step"] == "charge" and step.data["attempt"] == 1 and "duration_ms" in step.data
    assert shop.charges == ["o-1"]  # replayed three times, charged once
    assert shop.mails == ["o-1: shipped TRK-9"]
    assert time.perf_counter() - real < 5  # eight virtual days


@pytest.mark.trio
async def test_without_the_signal_the_workflow_ends_by_its_timeout_branch(
    autojump_clock: trio.testing.MockClock, layer: StorageLayer
) -> None:
    shop = Shop()
    async with open_test_engine([order_flow], storage=layer, services=shop, start=T0) as engine:
        client = engine.client.workflow(order_flow)
        await client.start(id="o-2", input=Order("o-2", 5))
        await until(engine, T0 + timedelta(days=8, minutes=1))
        assert success(await client.result("o-2")) == Receipt("o-2", "ch-o-2", "refunded")
        status = success(await client.status("o-2"))
        assert status.steps[2].timed_out
    assert shop.refunds == ["ch-o-2"]
    assert shop.mails == ["o-2: not shipped, refunded"]


@pytest.mark.trio
async def test_a_signal_sent_before_the_wait_is_kept_and_delivered(
    autojump_clock: trio.testing.MockClock, layer: StorageLayer
) -> None:
    shop = Shop()
    async with open_test_engine([order_flow], storage=layer, services=shop, start=T0) as engine:
        client = engine.client.workflow(order_flow)
        await client.start(id="o-3", input=Order("o-3", 5))
        await settle(engine)
        sent = success(await client.signal("o-3", "shipped", {"tracking": "EARLY"}))
        assert not sent.waiting  # still sleeping: kept for the wait
        await until(engine, T0 + timedelta(days=1, minutes=1))
        assert success(await client.result("o-3")).tracking == "EARLY"
        refused = failure(await client.signal("o-3", "shipped", {"tracking": "LATE"}))
        assert isinstance(refused, djobs.InvalidStateError)
        assert isinstance(failure(await client.signal("nope", "shipped", {})), djobs.InstanceNotFoundError)


@pytest.mark.trio
async def test_a_signal_whose_payload_is_not_the_waits_type_is_refused_to_its_sender_and_the_wait_goes_on(
    autojump_clock: trio.testing.MockClock, layer: StorageLayer
) -> None:
    async with open_test_engine([order_flow], storage=layer, services=Shop(), start=T0) as engine:
        client = engine.client.workflow(order_flow)
        await client.start(id="o-w", input=Order("o-w", 5))
        await until(engine, T0 + timedelta(days=1, minutes=1))
        assert success(await client.status("o-w")).status == "waiting"
        refused = failure(await client.signal("o-w", "shipped", Order("o-w", 5)))
        assert isinstance(refused, djobs.ValidationError)
        assert "Shipped" in refused.message and "nothing was stored" in refused.message
        assert "workflow.signal_received" not in types(engine)
        await settle(engine)
        assert success(await client.status("o-w")).status == "waiting"
        assert success(await client.signal("o-w", "shipped", Shipped("T"))).waiting
        await settle(engine)
        assert success(await client.result("o-w")).tracking == "T"


@pytest.mark.trio
async def test_a_kept_signal_whose_payload_is_not_the_waits_type_is_dropped_at_the_wait_which_goes_on(
    autojump_clock: trio.testing.MockClock, layer: StorageLayer, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_test_engine([order_flow], storage=layer, services=Shop(), start=T0) as engine:
        client = engine.client.workflow(order_flow)
        await client.start(id="o-k", input=Order("o-k", 5))
        await settle(engine)
        # Sent while it sleeps: kept, and looked at when the wait takes it.
        assert not success(await client.signal("o-k", "shipped", {"tracking": 42})).waiting
        with caplog.at_level(logging.WARNING, logger="djobs"):
            await until(engine, T0 + timedelta(days=1, minutes=1))
        assert success(await client.status("o-k")).status == "waiting"
        [rejected] = [e for e in engine.tracker.events if e.type == "workflow.signal_rejected"]
        assert rejected.data["signal"] == "shipped" and rejected.data["error"]["tag"] == "validation"
        assert "Shipped" in rejected.data["error"]["message"]
        assert any("dropped a signal" in r.getMessage() for r in caplog.records)
        assert success(await client.signal("o-k", "shipped", Shipped("T"))).waiting
        await settle(engine)
        assert success(await client.result("o-k")).tracking == "T"


@pytest.mark.trio
async def test_a_wait_whose_type_the_sender_cannot_name_drops_a_payload_that_is_not_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Approved(msgspec.Struct):  # a local class: no importable name to check a sender against
        by: str

    async def body(_: Nothing, ctx: djobs.WorkflowContext) -> str:
        approved = await ctx.wait_for_signal("approved", Approved)
        assert not isinstance(approved, djobs.TimedOut)
        return approved.by

    flow = djobs.Workflow.make("approval", input=Nothing, result=str, execute=body)
    async with open_test_engine([flow], start=T0) as engine:
        client = engine.client.workflow(flow)
        await client.start(id="a", input=Nothing())
        await settle(engine)
        assert success(await client.signal("a", "approved", Shipped("T"))).waiting
        await settle(engine)
        assert success(await client.status("a")).status == "waiting"
        assert "workflow.signal_rejected" in types(engine)
        await client.signal("a", "approved", {"by": "ann"})
        await settle(engine)
        assert success(await client.result("a")) == "ann"


@pytest.mark.trio
async def test_a_step_that_fails_twice_then_succeeds_runs_three_times_and_the_workflow_goes_on(
    autojump_clock: trio.testing.MockClock, layer: StorageLayer
) -> None:
    shop = Shop(fail_charges=2)
    async with open_test_engine([order_flow], storage=layer, services=shop, start=T0) as engine:
        client = engine.client.workflow(order_flow)
        await client.start(id="o-4", input=Order("o-4", 5))
        await settle(engine)
        status = success(await client.status("o-4"))
        assert (status.status, status.current_step) == ("running", "charge")
        assert status.wake_at == T0 + timedelta(minutes=1)  # the retry is an alarm
        # The retries are due about 1 and 3 minutes in; a storage whose calls let the virtual
        # clock jump (PostgreSQL's threads) starts each a little later, so look at 4 minutes.
        await until(engine, T0 + timedelta(minutes=4))
        status = success(await client.status("o-4"))
        assert status.status == "sleeping"
        assert status.steps[0].attempts == 3
        failed = [e for e in engine.tracker.events if e.type == "workflow.step_failed"]
        assert [e.data["attempt"] for e in failed] == [1, 2]
        completed = next(e for e in engine.tracker.events if e.type == "workflow.step_completed")
        assert completed.data["attempt"] == 3
    assert shop.charge_calls == 3
    assert shop.charges == ["o-4"]


# -- compensation ------------------------------------------------------------------------------


class Trip(msgspec.Struct):
    who: str


@dataclass
class Agency:
    log: list[str] = field(default_factory=list)

    def book_flight(self, trip: Trip) -> str:
        self.log.append("flight")
        return "F1"

    def book_hotel(self, trip: Trip) -> Result[str, str]:
        self.log.append("hotel?")
        return Failure("no rooms")

    def cancel_flight(self, flight: str) -> None:
        self.log.append(f"cancel {flight}")


async def book_trip(trip: Trip, ctx: djobs.WorkflowContext[Agency]) -> str:
    agency = ctx.services
    flight = await ctx.step("flight", agency.book_flight, trip)
    try:
        hotel = await ctx.step("hotel", agency.book_hotel, trip, retry=djobs.Retry(2, "10 seconds"))
    except djobs.StepFailedError as exc:
        await ctx.step("cancel flight", agency.cancel_flight, flight)
        return f"cancelled: {exc.error_message}"
    return f"{flight}+{hotel}"


trip_flow = djobs.Workflow.make("trip", input=Trip, result=str, execute=book_trip)


@pytest.mark.trio
async def test_a_step_that_exhausts_its_retries_lets_the_body_compensate(
    autojump_clock: trio.testing.MockClock, layer: StorageLayer
) -> None:
    agency = Agency()
    async with open_test_engine([trip_flow], storage=layer, services=agency, start=T0) as engine:
        client = engine.client.workflow(trip_flow)
        await client.start(id="t", input=Trip("ann"))
        await until(engine, T0 + timedelta(minutes=1))
        assert success(await client.result("t")) == "cancelled: job returned a failure: 'no rooms'"
        status = success(await client.status("t"))
        assert status.steps[1].error == {"tag": "execution", "message": "job returned a failure: 'no rooms'"}
    assert agency.log == ["flight", "hotel?", "hotel?", "cancel F1"]


async def fail_the_trip(trip: Trip, ctx: djobs.WorkflowContext[Agency]) -> str:
    return await ctx.step("hotel", ctx.services.book_hotel, trip)


failing_trip = djobs.Workflow.make("failing-trip", input=Trip, result=str, execute=fail_the_trip)


@pytest.mark.trio
async def test_a_step_failure_the_body_lets_through_fails_the_workflow(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([failing_trip], services=Agency(), start=T0) as engine:
        client = engine.client.workflow(failing_trip)
        await client.start(id="t", input=Trip("ann"))
        await settle(engine)
        error = failure(await client.result("t"))
        assert isinstance(error, djobs.WorkflowFailedError)
        assert (error.status, error.error_tag) == ("failed", "step_failed")
        assert success(await client.status("t")).status == "failed"
        assert "workflow.failed" in types(engine)


# -- replay: determinism and divergence --------------------------------------------------------


class Nothing(msgspec.Struct):
    pass


calls: list[str] = []


def record(name: str) -> str:
    calls.append(name)
    return name


async def first_version(_: Nothing, ctx: djobs.WorkflowContext) -> str:
    await ctx.step("a", record, "a")
    await ctx.sleep("1 hour")
    await ctx.step("b", record, "b")
    return "done"


async def second_version(_: Nothing, ctx: djobs.WorkflowContext) -> str:
    await ctx.step("a", record, "a")
    await ctx.step("inserted", record, "inserted")  # where the log has the sleep
    await ctx.sleep("1 hour")
    await ctx.step("b", record, "b")
    return "done"


@pytest.mark.trio
async def test_a_body_changed_in_flight_fails_with_a_typed_error_naming_the_first_divergent_step(
    autojump_clock: trio.testing.MockClock, durable_layer: StorageLayer
) -> None:
    calls.clear()
    v1 = djobs.Workflow.make("evolving", input=Nothing, result=str, execute=first_version)
    v2 = djobs.Workflow.make("evolving", input=Nothing, result=str, execute=second_version)
    async with open_test_engine([v1], storage=durable_layer, start=T0) as engine:
        await engine.client.workflow(v1).start(id="w", input=Nothing())
        await settle(engine)
    async with open_test_engine([v2], storage=durable_layer, start=T0 + timedelta(hours=2)) as engine:
        await settle(engine)
        client = engine.client.workflow(v2)
        error = failure(await client.result("w"))
        assert isinstance(error, djobs.WorkflowFailedError)
        assert error.error_tag == "non_determinism"
        assert "call #2" in error.error_message
        assert "step 'inserted'" in error.error_message and "sleep 'sleep'" in error.error_message
    assert calls == ["a"]  # nothing new ran, nothing recorded was mixed with new results


async def shorter_version(_: Nothing, ctx: djobs.WorkflowContext) -> str:
    await ctx.step("a", record, "a")
    return "done"


@pytest.mark.trio
async def test_a_body_that_returns_before_its_recorded_calls_diverges(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    calls.clear()
    v1 = djobs.Workflow.make("shrinking", input=Nothing, result=str, execute=first_version)
    v2 = djobs.Workflow.make("shrinking", input=Nothing, result=str, execute=shorter_version)
    layer = djobs.sqlite(tmp_path / "shrinking.db")
    async with open_test_engine([v1], storage=layer, start=T0) as engine:
        await engine.client.workflow(v1).start(id="w", input=Nothing())
        await settle(engine)
    async with open_test_engine([v2], storage=layer, start=T0 + timedelta(hours=2)) as engine:
        await settle(engine)
        error = failure(await engine.client.workflow(v2).result("w"))
        assert isinstance(error, djobs.WorkflowFailedError)
        assert error.error_tag == "non_determinism"
        assert "returned before reaching the recorded sleep 'sleep'" in error.error_message
    assert calls == ["a"]


def plain_str() -> str:
    return "s"


class Stamp(msgspec.Struct):
    at: datetime
    token: str
    dice: float


async def stamped(_: Nothing, ctx: djobs.WorkflowContext) -> Stamp:
    at, token, dice = ctx.now(), ctx.uuid(), ctx.random()
    await ctx.sleep("1 hour")
    assert ctx.now() > at  # a new call: the time now
    return Stamp(at, token, dice)


stamp_flow = djobs.Workflow.make("stamp", input=Nothing, result=Stamp, execute=stamped)


@pytest.mark.trio
async def test_time_ids_and_random_values_taken_through_the_context_are_the_same_on_replay(
    autojump_clock: trio.testing.MockClock, layer: StorageLayer
) -> None:
    async with open_test_engine([stamp_flow], storage=layer, start=T0) as engine:
        client = engine.client.workflow(stamp_flow)
        await client.start(id="s", input=Nothing())
        await settle(engine)
        first = success(await client.status("s")).steps
        await until(engine, T0 + timedelta(hours=2))
        stamp = success(await client.result("s"))
        assert stamp.at == T0
        assert [s.kind for s in first] == ["now", "uuid", "random", "sleep"]
        assert len(stamp.token) == 36 and 0 <= stamp.dice < 1


# -- restarts ----------------------------------------------------------------------------------


@pytest.mark.trio
async def test_a_restart_resumes_without_running_finished_steps_again(
    autojump_clock: trio.testing.MockClock, durable_layer: StorageLayer
) -> None:
    shop = Shop()
    async with open_test_engine([order_flow], storage=durable_layer, services=shop, start=T0) as engine:
        await engine.client.workflow(order_flow).start(id="o-5", input=Order("o-5", 1))
        await settle(engine)
    # A new engine (another process, in real life) thirty days later on the same database.
    later = T0 + timedelta(days=30)
    async with open_test_engine([order_flow], storage=durable_layer, services=shop, start=later) as engine:
        client = engine.client.workflow(order_flow)
        await settle(engine)
        assert success(await client.status("o-5")).status == "waiting"
        await client.signal("o-5", "shipped", Shipped("T"))
        await settle(engine)
        assert success(await client.result("o-5")).outcome == "shipped"
    assert shop.charges == ["o-5"]


gate: trio.Event | None = None
slow_calls: list[str] = []


async def slow(name: str) -> str:
    slow_calls.append(name)
    if name == "stuck" and gate is not None:
        await gate.wait()
    return name


async def stuck_body(_: Nothing, ctx: djobs.WorkflowContext) -> str:
    await ctx.step("first", slow, "first")
    await ctx.step("stuck", slow, "stuck")
    return "ok"


stuck_flow = djobs.Workflow.make("stuck", input=Nothing, result=str, execute=stuck_body)


@pytest.mark.trio
async def test_an_engine_closed_mid_step_leaves_that_step_to_run_again_and_no_finished_one(
    autojump_clock: trio.testing.MockClock, durable_layer: StorageLayer
) -> None:
    global gate
    slow_calls.clear()
    gate = trio.Event()
    async with open_test_engine([stuck_flow], storage=durable_layer, start=T0, shutdown_grace="1 second") as engine:
        await engine.client.workflow(stuck_flow).start(id="x", input=Nothing())
        await trio.sleep(0.5)
    gate = None
    async with open_test_engine([stuck_flow], storage=durable_layer, start=T0 + timedelta(minutes=10)) as engine:
        await settle(engine)
        assert success(await engine.client.workflow(stuck_flow).result("x")) == "ok"
    assert slow_calls == ["first", "stuck", "stuck"]


# -- a step whose value the body returns at once ends the workflow in its own write --------------

marks: list[str] = []


def mark(name: str) -> str:
    marks.append(name)
    return name


async def returns_its_last_step(_: Nothing, ctx: djobs.WorkflowContext) -> str:
    await ctx.step("a", mark, "a")
    return await ctx.step("b", mark, "b")


async def last_step_of(ctx: djobs.WorkflowContext) -> str:
    return await ctx.step("b", mark, "b")


async def returns_through_a_helper(_: Nothing, ctx: djobs.WorkflowContext) -> str:
    await ctx.step("a", mark, "a")
    return await last_step_of(ctx)


async def works_on_after_its_last_step(_: Nothing, ctx: djobs.WorkflowContext) -> str:
    await ctx.step("a", mark, "a")
    b = await ctx.step("b", mark, "b")
    return b + "!"


async def fails_in_a_finally(_: Nothing, ctx: djobs.WorkflowContext) -> str:
    await ctx.step("a", mark, "a")
    try:
        return await ctx.step("b", mark, "b")
    finally:
        raise RuntimeError("cleanup failed")


@pytest.mark.trio
@pytest.mark.parametrize(
    ("execute", "result", "outcome", "writes"),
    [
        # The end is in the last step's write: its checkpoint commits the completion too.
        (returns_its_last_step, str, "b", ["running", "completed"]),
        (returns_through_a_helper, str, "b", ["running", "completed"]),
        # Code of the body's own after the step decides the end, in a write of its own.
        (works_on_after_its_last_step, str, "b!", ["running", "running", "completed"]),
        (fails_in_a_finally, str, "cleanup failed", ["running", "running", "failed"]),
        (returns_its_last_step, int, "does not match int", ["running", "running", "failed"]),
    ],
)
async def test_a_body_that_returns_a_steps_value_at_once_is_ended_by_that_steps_write(
    autojump_clock: trio.testing.MockClock,
    layer: StorageLayer,
    monkeypatch: pytest.MonkeyPatch,
    execute: Callable[..., Any],
    result: type,
    outcome: str,
    writes: list[str],
) -> None:
    from djobs.kinds._workflow_context import Run

    staged: list[str] = []
    stage = Run.stage

    def counted(self: Run, status: Any, now: int | None = None) -> list[djobs.TrackedEvent]:
        staged.append(status)  # one per write of the run
        return stage(self, status, now)

    monkeypatch.setattr(Run, "stage", counted)
    marks.clear()
    flow = djobs.Workflow.make("ends", input=Nothing, result=result, execute=execute)
    async with open_test_engine([flow], storage=layer, start=T0) as engine:
        client = engine.client.workflow(flow)
        await client.start(id="w", input=Nothing())
        await settle(engine)
        ended = await client.result("w")
        status = success(await client.status("w"))
        end = "workflow.completed" if outcome in ("b", "b!") else "workflow.failed"
        assert types(engine) == ["workflow.started", *["workflow.step_completed"] * 2, end]
    if end == "workflow.completed":
        assert success(ended) == outcome and status.status == "completed"
    else:
        error = failure(ended)
        assert isinstance(error, djobs.WorkflowFailedError) and outcome in error.error_message, error
        assert status.status == "failed"
    assert staged == writes
    assert marks == ["a", "b"]


async def async_mark(name: str) -> str:
    await trio.lowlevel.checkpoint()
    return mark(name)


async def returns_its_last_step_after_a_sleep(_: Nothing, ctx: djobs.WorkflowContext) -> str:
    await ctx.step("a", mark, "a")
    await ctx.sleep("1 minute")
    return await ctx.step("b", async_mark, "b")


@pytest.mark.trio
async def test_an_async_step_returned_at_once_after_a_replay_ends_the_workflow_in_its_write(
    autojump_clock: trio.testing.MockClock, layer: StorageLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from djobs.kinds._workflow_context import Run

    staged: list[str] = []
    stage = Run.stage

    def counted(self: Run, status: Any, now: int | None = None) -> list[djobs.TrackedEvent]:
        staged.append(status)
        return stage(self, status, now)

    monkeypatch.setattr(Run, "stage", counted)
    marks.clear()
    flow = djobs.Workflow.make("ends", input=Nothing, result=str, execute=returns_its_last_step_after_a_sleep)
    async with open_test_engine([flow], storage=layer, start=T0) as engine:
        client = engine.client.workflow(flow)
        await client.start(id="w", input=Nothing())
        await until(engine, T0 + timedelta(minutes=2))
        assert success(await client.result("w")) == "b"
        assert types(engine)[-2:] == ["workflow.step_completed", "workflow.completed"]
    # The step before the sleep, the sleep, then the step after it with the end (the run woken
    # by the sleep's alarm replays the first two).
    assert staged == ["running", "sleeping", "completed"]
    assert marks == ["a", "b"]


@pytest.mark.trio
async def test_a_workflow_ended_by_its_last_steps_write_is_not_run_again_after_a_restart(
    autojump_clock: trio.testing.MockClock, durable_layer: StorageLayer
) -> None:
    marks.clear()
    flow = djobs.Workflow.make("ends", input=Nothing, result=str, execute=returns_its_last_step)
    async with open_test_engine([flow], storage=durable_layer, start=T0) as engine:
        await engine.client.workflow(flow).start(id="w", input=Nothing())
        await settle(engine)
    # Its alarm went with that write: a new engine a day later finds nothing to run.
    async with open_test_engine([flow], storage=durable_layer, start=T0 + timedelta(days=1)) as engine:
        await settle(engine)
        assert success(await engine.client.workflow(flow).result("w")) == "b"
        assert types(engine) == []
    assert marks == ["a", "b"]


# -- cancel, list, tenants, bad input ------------------------------------------------------------


@pytest.mark.trio
async def test_cancel_reaches_the_body_which_may_run_cleanup_steps(
    autojump_clock: trio.testing.MockClock, layer: StorageLayer
) -> None:
    shop = Shop()

    async def cancellable(order: Order, ctx: djobs.WorkflowContext[Shop]) -> Receipt:
        charge_id = await ctx.step("charge", ctx.services.charge, order)
        try:
            await ctx.sleep("30 days")
        except djobs.WorkflowCancelledError:
            await ctx.step("refund", ctx.services.refund, charge_id)
            raise
        return Receipt(order.order_id, charge_id, "kept")

    flow = djobs.Workflow.make("cancellable", input=Order, result=Receipt, execute=cancellable)
    async with open_test_engine([flow], storage=layer, services=shop, start=T0) as engine:
        client = engine.client.workflow(flow)
        await client.start(id="c", input=Order("c", 1))
        await settle(engine)
        cancelled = success(await client.cancel("c", reason="customer changed their mind"))
        assert cancelled.cancelled
        await settle(engine)
        status = success(await client.status("c"))
        assert status.status == "cancelled"
        # The sleep the cancel reached did not end; the two steps finished.
        assert [(s.name, s.done, s.cancelled) for s in status.steps] == [
            ("charge", True, False),
            ("sleep", False, True),
            ("refund", True, False),
        ]
        assert status.steps_finished == 2
        error = failure(await client.result("c"))
        assert isinstance(error, djobs.WorkflowFailedError) and error.status == "cancelled"
        assert not success(await client.cancel("c")).cancelled
        assert "workflow.cancelled" in types(engine)
    assert shop.refunds == ["ch-c"]


@pytest.mark.trio
async def test_cancel_of_a_sleeping_workflow_says_it_is_running_to_take_the_cancel(
    autojump_clock: trio.testing.MockClock, layer: StorageLayer
) -> None:
    async def napper(_: Nothing, ctx: djobs.WorkflowContext) -> str:
        await ctx.sleep("30 days")
        return "woke"

    flow = djobs.Workflow.make("napper", input=Nothing, result=str, execute=napper)
    async with open_test_engine([flow], storage=layer, start=T0) as engine:
        client = engine.client.workflow(flow)
        await client.start(id="n", input=Nothing())
        await settle(engine)
        assert success(await client.status("n")).status == "sleeping"
        accepted = success(await client.cancel("n"))
        assert (accepted.cancelled, accepted.status) == (True, "running")
        assert success(await client.status("n")).status in ("running", "cancelled")
        await settle(engine)
        assert success(await client.status("n")).status == "cancelled"
        repeat = success(await client.cancel("n"))  # the cancel that ended it was accepted before
        assert repeat == djobs.WorkflowCancelResult("n", False, "cancelled", already_requested=True)


async def slow_step(x: int) -> int:
    await trio.sleep(2)
    return x


async def nap_then_slow_step(_: Nothing, ctx: djobs.WorkflowContext) -> int:
    await ctx.sleep("200 ms")
    value: int = await ctx.step("slow", slow_step, 7)
    return value


@pytest.mark.trio
async def test_status_while_a_step_runs_after_a_sleep_is_running_with_the_sleep_done(
    autojump_clock: trio.testing.MockClock, layer: StorageLayer
) -> None:
    flow = djobs.Workflow.make("nap-slow", input=Nothing, result=int, execute=nap_then_slow_step)
    async with open_test_engine([flow], storage=layer, start=T0) as engine:
        client = engine.client.workflow(flow)
        await client.start(id="s", input=Nothing())
        await trio.sleep(0.1)
        asleep = success(await client.status("s"))
        assert (asleep.status, asleep.current_step, asleep.wake_at) == (
            "sleeping",
            "sleep",
            T0 + timedelta(milliseconds=200),
        )
        await trio.sleep(0.7)  # the sleep is over; the step runs for 2 seconds
        busy = success(await client.status("s"))
        assert (busy.status, busy.current_step, busy.wake_at) == ("running", "slow", None)
        assert [(s.kind, s.name, s.done) for s in busy.steps] == [("sleep", "sleep", True), ("step", "slow", False)]
        await trio.sleep(2)
        assert success(await client.result("s")) == 7
        done = success(await client.status("s"))
        assert (done.status, done.steps_finished) == ("completed", 1)


@pytest.mark.trio
async def test_cancel_cancels_a_running_step(autojump_clock: trio.testing.MockClock) -> None:
    global gate
    slow_calls.clear()
    gate = trio.Event()  # never set: the step runs until cancelled
    async with open_test_engine([stuck_flow], start=T0) as engine:
        client = engine.client.workflow(stuck_flow)
        await client.start(id="x", input=Nothing())
        await trio.sleep(1)
        assert success(await client.status("x")).current_step == "stuck"
        assert success(await client.cancel("x")).cancelled
        await settle(engine)
        ended = success(await client.status("x"))
        assert ended.status == "cancelled"
        # The step did not finish: it is not done (nor counted) but cancelled, with no error of its own.
        assert [(s.name, s.done, s.cancelled, s.error) for s in ended.steps] == [
            ("first", True, False, None),
            ("stuck", False, True, None),
        ]
        assert ended.steps_finished == 1
    gate = None


@pytest.mark.trio
async def test_list_and_tenants(autojump_clock: trio.testing.MockClock, layer: StorageLayer) -> None:
    async with open_test_engine([stamp_flow], storage=layer, start=T0) as engine:
        acme = engine.client.for_tenant("acme").workflow(stamp_flow)
        globex = engine.client.for_tenant("globex").workflow(stamp_flow)
        for i in range(3):
            await acme.start(id=f"a{i}", input=Nothing())
        await globex.start(id="a0", input=Nothing())  # the same id in another tenant is another workflow
        await settle(engine)
        listed = success(await acme.list())
        assert [(w.instance_id, w.tenant_id, w.status) for w in listed] == [
            ("a0", "acme", "sleeping"),
            ("a1", "acme", "sleeping"),
            ("a2", "acme", "sleeping"),
        ]
        assert [w.instance_id for w in success(await acme.list(after="a0", limit=1))] == ["a1"]
        assert len(success(await globex.list())) == 1
        assert len(success(await engine.client.workflow(stamp_flow).list())) == 4
        assert success(await engine.client.workflow(stamp_flow).list(status="completed")) == []
        assert success(await engine.client.workflow(stamp_flow).status("a0")).status == "not_found"
        assert isinstance(failure(await acme.list(limit=0)), djobs.ValidationError)


@pytest.mark.trio
async def test_bad_input_is_a_typed_error(autojump_clock: trio.testing.MockClock) -> None:
    async def unannotated(_: Nothing, ctx: djobs.WorkflowContext) -> str:
        return str(await ctx.step("lambda", lambda: 1))

    async def unstorable(_: Nothing, ctx: djobs.WorkflowContext) -> str:
        return str(await ctx.step("object", object, result=object))

    async def badly_named(_: Nothing, ctx: djobs.WorkflowContext) -> str:
        return await ctx.step(42, plain_str)  # type: ignore[arg-type]

    async def bad_wait(_: Nothing, ctx: djobs.WorkflowContext) -> str:
        await ctx.wait_for_signal("s", object(), timeout="1 hour")  # type: ignore[call-overload]
        return "?"

    async def bad_retry(_: Nothing, ctx: djobs.WorkflowContext) -> str:
        return await ctx.step("retry", plain_str, retry=3)  # type: ignore[arg-type]

    async def bad_sleep(_: Nothing, ctx: djobs.WorkflowContext) -> str:
        await ctx.sleep(30)  # type: ignore[arg-type]  # seconds? milliseconds?
        return "?"

    flows = [
        djobs.Workflow.make("unannotated", input=Nothing, result=str, execute=unannotated),
        djobs.Workflow.make("unstorable", input=Nothing, result=str, execute=unstorable),
        djobs.Workflow.make("badly-named", input=Nothing, result=str, execute=badly_named),
        djobs.Workflow.make("bad-wait", input=Nothing, result=str, execute=bad_wait),
        djobs.Workflow.make("bad-sleep", input=Nothing, result=str, execute=bad_sleep),
        djobs.Workflow.make("bad-retry", input=Nothing, result=str, execute=bad_retry),
    ]
    async with open_test_engine([*flows, order_flow], start=T0) as engine:
        for flow in flows:
            client = engine.client.workflow(flow)
            await client.start(id="x", input=Nothing())
            await settle(engine)
            error = failure(await client.result("x"))
            assert isinstance(error, djobs.WorkflowFailedError) and error.error_tag == "validation"
        client = engine.client.workflow(flows[0])
        assert isinstance(failure(await client.start(id="", input=Nothing())), djobs.ValidationError)
        wrong = Trip("ann")
        assert isinstance(
            failure(await engine.client.workflow(order_flow).start(id="y", input=wrong)), djobs.ValidationError
        )  # type: ignore[arg-type]
        assert isinstance(failure(await client.signal("x", "", None)), djobs.ValidationError)
        assert isinstance(failure(await client.signal("x", "s", object())), djobs.ValidationError)
        assert isinstance(failure(await client.cancel("x", reason=7)), djobs.ValidationError)  # type: ignore[arg-type]
        assert isinstance(failure(await client.list(status="asleep")), djobs.ValidationError)  # type: ignore[arg-type]
        assert isinstance(failure(await engine.client.workflow("nope").status("x")), djobs.JobNotFoundError)
    with pytest.raises(djobs.ValidationError):
        djobs.Workflow.make("bad:name", input=Nothing, result=str, execute=unannotated)
    with pytest.raises(djobs.ValidationError):
        djobs.Workflow.make("bad", input=dict, result=str, execute=unannotated)  # type: ignore[arg-type]


# -- step forms and pipelines ----------------------------------------------------------------------


def plain(x: int) -> int:
    return x + 1


async def coroutine(x: int) -> int:
    return x * 2


def as_result(x: int) -> Result[int, str]:
    return Success(x + 3)


@pytest.mark.trio
async def test_steps_take_every_body_form_and_compose_as_pipelines(autojump_clock: trio.testing.MockClock) -> None:
    async def body(_: Nothing, ctx: djobs.WorkflowContext) -> list[int]:
        a = await ctx.step("plain", plain, 1)
        b = await ctx.step("coroutine", coroutine, a)
        c = await ctx.step("result", as_result, b)
        d = await ctx.step("piped", plain, c).bind(lambda v: ctx.step("then", coroutine, v)).map(lambda v: v - 1)
        e = success(await ctx.step("future", plain, d).result())
        await ctx.sleep("1 minute")  # everything above replays from the log
        return [a, b, c, d, e]

    flow = djobs.Workflow.make("forms", input=Nothing, result=list[int], execute=body)
    async with open_test_engine([flow], start=T0) as engine:
        client = engine.client.workflow(flow)
        await client.start(id="f", input=Nothing())
        await until(engine, T0 + timedelta(minutes=2))
        assert success(await client.result("f")) == [2, 4, 7, 15, 16]


async def nap(name: str) -> str:
    await trio.sleep(1)
    return name


@pytest.mark.trio
async def test_steps_started_together_in_a_nursery_fail_the_workflow_with_the_guards_validation_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body(names: Trip, ctx: djobs.WorkflowContext) -> str:
        async def one(name: str) -> None:
            await ctx.step(name, nap, name)

        async with trio.open_nursery() as nursery:
            for name in names.who:
                nursery.start_soon(one, name)
        return "never"

    flow = djobs.Workflow.make("together", input=Trip, result=str, execute=body)
    async with open_test_engine([flow], start=T0) as engine:
        client = engine.client.workflow(flow)
        for id, names in (("two", "ab"), ("three", "abc")):
            await client.start(id=id, input=Trip(names))
        await settle(engine)
        for id in ("two", "three"):
            error = failure(await client.result(id))
            assert isinstance(error, djobs.WorkflowFailedError)
            assert error.error_tag == "validation", error.error_message
            assert "a workflow's calls run one at a time" in error.error_message


#: The arguments of the steps that ran, in order (the steps below record them).
ran: list[str] = []


def ran_plain(x: str) -> str:
    ran.append(x)
    return x


async def ran_async(x: str) -> str:
    ran.append(x)
    return x


def ran_result(x: str) -> Result[str, str]:
    ran.append(x)
    return Success(x)


def ran_future(x: str) -> FutureResult[str, str]:
    ran.append(x)
    return FutureResult.from_value(x)


def ran_services(x: str) -> RequiresContextFutureResult[str, str, object]:
    ran.append(x)
    return RequiresContextFutureResult.from_value(x)


@pytest.mark.trio
@pytest.mark.parametrize("fn", [ran_plain, ran_async, ran_result, ran_future, ran_services], ids=lambda f: f.__name__)
async def test_a_second_step_awaited_while_one_is_in_flight_is_refused_whatever_the_step_functions_form(
    fn: Callable[[str], object], autojump_clock: trio.testing.MockClock
) -> None:
    # A step whose function needs no await still awaits its checkpoint: the step is in flight until
    # its result is committed, so the other step awaited at once is refused, never run and logged in
    # whichever order the scheduler picked (which a replay could not follow).
    ran.clear()

    async def body(trip: Trip, ctx: djobs.WorkflowContext) -> str:
        id = trip.who
        s1, s2 = ctx.step("one", fn, f"{id}:1", result=str), ctx.step("two", fn, f"{id}:2", result=str)

        async def wait(step: Any) -> None:
            await step

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait, s1)
            nursery.start_soon(wait, s2)
        await ctx.sleep("1 minute")  # a replay, were the body let through
        return "ok"

    flow = djobs.Workflow.make("at-once", input=Trip, result=str, execute=body)
    ids = ["a", "b", "c", "d"]
    async with open_test_engine([flow], start=T0) as engine:
        client = engine.client.workflow(flow)
        for id in ids:
            await client.start(id=id, input=Trip(id))
        await until(engine, T0 + timedelta(minutes=2))
        for id in ids:
            error = failure(await client.result(id))
            assert isinstance(error, djobs.WorkflowFailedError)
            assert error.error_tag == "validation", error.error_message
            assert "was called while another call of this workflow was in flight" in error.error_message
            # One step ran, once; the other never did.
            assert len([x for x in ran if x.startswith(f"{id}:")]) == 1, ran


@pytest.mark.trio
async def test_a_recorded_value_taken_while_a_step_is_in_flight_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # ctx.now() beside a step in flight would take the log position the scheduler gave it.
    refused: list[str] = []

    async def body(_: Nothing, ctx: djobs.WorkflowContext) -> str:
        async def step() -> None:
            await ctx.step("one", nap, "x")  # a second of virtual time in flight

        async def now() -> None:
            await trio.sleep(0.5)
            try:
                ctx.now()
            except djobs.ValidationError as exc:
                refused.append(exc.message)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(step)
            nursery.start_soon(now)
        return "ok"

    flow = djobs.Workflow.make("now-at-once", input=Nothing, result=str, execute=body)
    async with open_test_engine([flow], start=T0) as engine:
        client = engine.client.workflow(flow)
        await client.start(id="n", input=Nothing())
        await settle(engine)
        assert success(await client.result("n")) == "ok"
    assert len(refused) == 1 and "ctx.now('now') was called while another call" in refused[0], refused


# -- several engines on one database ------------------------------------------------------------

effects: list[tuple[str, str]] = []
in_flight: set[str] = set()
overlaps: list[str] = []


async def effect(workflow: str, step: str) -> str:
    if workflow in in_flight:
        overlaps.append(workflow)
    in_flight.add(workflow)
    await trio.sleep(0.05)  # a window for another engine to barge in
    in_flight.discard(workflow)
    effects.append((workflow, step))
    return step


async def three_steps(name: Trip, ctx: djobs.WorkflowContext) -> int:
    await ctx.step("one", effect, name.who, "one")
    await ctx.sleep("1 minute")
    await ctx.step("two", effect, name.who, "two")
    go = await ctx.wait_for_signal("go", int, timeout="1 hour")
    await ctx.step("three", effect, name.who, "three")
    return 0 if isinstance(go, djobs.TimedOut) else go


shared_flow = djobs.Workflow.make("shared", input=Trip, result=int, execute=three_steps)


@pytest.mark.trio
async def test_two_engines_on_one_database_run_each_workflow_in_one_place_at_a_time_and_each_step_once(
    autojump_clock: trio.testing.MockClock, durable_layer: StorageLayer
) -> None:
    effects.clear()
    overlaps.clear()
    ids = [f"w{i}" for i in range(20)]
    options: dict[str, Any] = {"alarm_poll_interval": "1 second", "start": T0}
    async with (
        open_test_engine([shared_flow], storage=durable_layer, **options) as a,
        open_test_engine([shared_flow], storage=durable_layer, **options) as b,
    ):
        for i, wid in enumerate(ids):
            engine = a if i % 2 else b
            success(await engine.client.workflow(shared_flow).start(id=wid, input=Trip(wid)))
        await trio.sleep(120)
        for i, wid in enumerate(ids):
            engine = b if i % 2 else a  # signalled through the other engine
            await engine.client.workflow(shared_flow).signal(wid, "go", i)
        await trio.sleep(60)
        await a.wait_idle()
        await b.wait_idle()
        results = [success(await a.client.workflow(shared_flow).result(wid)) for wid in ids]
    assert results == list(range(20))
    assert overlaps == []
    assert sorted(effects) == sorted((wid, step) for wid in ids for step in ("one", "two", "three"))


@pytest.mark.trio
async def test_a_client_only_engine_starts_and_signals_workflows_a_worker_engine_runs(
    autojump_clock: trio.testing.MockClock, durable_layer: StorageLayer
) -> None:
    shop = Shop()
    options: dict[str, Any] = {"storage": durable_layer, "services": shop, "start": T0}
    async with (
        open_test_engine([order_flow], worker=None, **options) as client_only,
        # Polls for alarms other engines set (the client-only one's start and signal) once an hour.
        open_test_engine([order_flow], alarm_poll_interval="1 hour", **options) as worker,
    ):
        orders = client_only.client.workflow(order_flow)
        assert success(await orders.start(id="o-6", input=Order("o-6", 1))).created
        await settle(client_only)
        assert shop.charges == []  # a client-only engine runs nothing itself
        await until(worker, T0 + timedelta(days=1, hours=2))
        assert success(await orders.status("o-6")).status == "waiting"
        assert success(await orders.signal("o-6", "shipped", Shipped("T6"))).waiting
        await until(worker, T0 + timedelta(days=1, hours=4))
        assert success(await orders.result("o-6")).tracking == "T6"
    assert shop.charges == ["o-6"]


body_runs: list[int] = []


async def wait_forever(_: Nothing, ctx: djobs.WorkflowContext) -> int:
    body_runs.append(ctx.run_count)
    await ctx.sleep("1 minute")
    return await ctx.wait_for_signal("go", int)  # type: ignore[return-value]  # no timeout: never TimedOut


forever_flow = djobs.Workflow.make("forever", input=Nothing, result=int, execute=wait_forever)


@pytest.mark.trio
async def test_a_wait_without_timeout_holds_no_alarm_and_the_body_is_not_run_meanwhile(
    autojump_clock: trio.testing.MockClock, layer: StorageLayer
) -> None:
    body_runs.clear()
    async with open_test_engine([forever_flow], storage=layer, start=T0) as engine:
        client = engine.client.workflow(forever_flow)
        await client.start(id="f", input=Nothing())
        await until(engine, T0 + timedelta(days=3))
        status = success(await client.status("f"))
        assert (status.status, status.wake_at) == ("waiting", None)
        assert body_runs == [1, 2]  # started, then woken by the sleep's end; not since
        await client.signal("f", "go", 7)
        await settle(engine)
        assert success(await client.result("f")) == 7
    assert body_runs == [1, 2, 3]


# -- child workflows -------------------------------------------------------------------------------


class Parcel(msgspec.Struct):
    ref: str
    fail: bool = False


async def deliver_parcel(parcel: Parcel, ctx: djobs.WorkflowContext[Shop]) -> str:
    await ctx.sleep("1 day")
    if parcel.fail:
        raise RuntimeError("lost in transit")
    return await ctx.step("hand over", ctx.services.notify, parcel.ref, "delivered", result=None) or "delivered"


delivery = djobs.Workflow.make("delivery", input=Parcel, result=str, execute=deliver_parcel)


async def ship_two(order: Order, ctx: djobs.WorkflowContext[Shop]) -> list[str]:
    first = await ctx.child(delivery, f"{order.order_id}-1", Parcel(f"{order.order_id}-1"))
    try:
        second = await ctx.child(delivery, f"{order.order_id}-2", Parcel(f"{order.order_id}-2", fail=True))
    except djobs.ChildWorkflowError as exc:
        second = f"{exc.status}: {exc.error_message}"
    return [first, second]


shipping_flow = djobs.Workflow.make("shipping", input=Order, result=list[str], execute=ship_two)


@pytest.mark.trio
async def test_a_parent_starts_children_and_waits_for_their_results_durably(
    autojump_clock: trio.testing.MockClock, layer: StorageLayer
) -> None:
    shop = Shop()
    async with open_test_engine([shipping_flow, delivery], storage=layer, services=shop, start=T0) as engine:
        parent = engine.client.for_tenant("acme").workflow(shipping_flow)
        await parent.start(id="s-1", input=Order("s-1", 1))
        await until(engine, T0 + timedelta(hours=1))
        status = success(await parent.status("s-1"))
        assert (status.status, status.current_step) == ("waiting", "child delivery:s-1-1")
        children = engine.client.for_tenant("acme").workflow(delivery)
        assert success(await children.status("s-1-1")).status == "sleeping"  # in the parent's tenant
        await until(engine, T0 + timedelta(days=3))
        assert success(await parent.result("s-1")) == ["delivered", "failed: RuntimeError: lost in transit"]
        child = success(await children.status("s-1-2"))
        assert (child.status, child.wake_at) == ("failed", None)
    assert shop.mails == ["s-1-1: delivered"]


@pytest.mark.trio
async def test_a_child_that_ends_after_a_restart_still_tells_its_parent(
    autojump_clock: trio.testing.MockClock, durable_layer: StorageLayer
) -> None:
    shop = Shop()
    flows = [shipping_flow, delivery]
    async with open_test_engine(flows, storage=durable_layer, services=shop, start=T0) as engine:
        await engine.client.workflow(shipping_flow).start(id="s-2", input=Order("s-2", 1))
        await settle(engine)
    later = T0 + timedelta(days=5)
    async with open_test_engine(flows, storage=durable_layer, services=shop, start=later) as engine:
        await until(engine, later + timedelta(days=2))
        result = success(await engine.client.workflow(shipping_flow).result("s-2"))
        assert result == ["delivered", "failed: RuntimeError: lost in transit"]
        assert success(await engine.client.workflow(delivery).status("s-2-1")).wake_at is None
    assert shop.mails == ["s-2-1: delivered"]


# -- the edges' rules: unstorable text, unknown fields, the payload limit, a closed engine, tenancy ---


def surrogate_error(order: Order) -> str:
    raise ValueError("bad \ud800 text")


async def odd_failure(order: Order, ctx: djobs.WorkflowContext) -> str:
    try:
        return await ctx.step("odd", surrogate_error, order)
    except djobs.StepFailedError as exc:
        return exc.error_message


odd_flow = djobs.Workflow.make("odd", input=Order, result=str, execute=odd_failure)


@pytest.mark.trio
async def test_every_verb_refuses_what_no_storage_holds_and_a_closed_engine_refuses_all(
    autojump_clock: trio.testing.MockClock, layer: StorageLayer
) -> None:
    async with open_test_engine([odd_flow], storage=layer, start=T0, max_payload_bytes=4096) as engine:
        client = engine.client.workflow(odd_flow)
        bad = [
            client.start(id="x\ud800", input=Order("a", 1)),
            client.start(id="y", input={"order_id": "a", "amount": 1, "amonut": 2}),  # type: ignore[arg-type]
            client.start(id="y", input=Order("a" * 5000, 1)),  # over max_payload_bytes
            client.signal("y", "\ud800", 1),
            client.signal("y", "s", "\ud800"),
            client.signal("y", "s", "x" * 5000),
            client.cancel("y", reason="a\x00"),
        ]
        for verb in bad:
            assert isinstance(failure(await verb), djobs.ValidationError)
        await client.start(id="ok", input=Order("a", 1))
        await settle(engine)
        # An error message user code raised with unstorable text is kept, made storable.
        assert success(await client.result("ok")) == "ValueError: bad \\ud800 text"
    closed = [client.status("ok"), client.result("ok"), client.signal("ok", "s", 1), client.cancel("ok"), client.list()]
    for verb in closed:
        assert isinstance(failure(await verb), djobs.StorageError)


@pytest.mark.trio
async def test_required_tenancy_covers_workflows(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([stamp_flow], tenancy="required", start=T0) as engine:
        unscoped = engine.client.workflow(stamp_flow)
        verbs = {
            unscoped.start: unscoped.start(id="s", input=Nothing()),
            unscoped.status: unscoped.status("s"),
            unscoped.result: unscoped.result("s"),
            unscoped.signal: unscoped.signal("s", "go"),
            unscoped.cancel: unscoped.cancel("s"),
            unscoped.list: unscoped.list(),
        }
        for verb, answer in verbs.items():
            assert isinstance(failure(await answer), djobs.TenantError)
            # ... an error each verb's type names, so mypy sees a match that handles it.
            declared = get_args(get_type_hints(verb)["return"])[1]
            assert djobs.TenantError in get_args(declared), f"{verb.__name__} returns {declared}"
        scoped = engine.client.for_tenant("acme").workflow(stamp_flow)
        assert success(await scoped.start(id="s", input=Nothing())).created
        assert [w.instance_id for w in success(await scoped.list())] == ["s"]


# -- child jobs ------------------------------------------------------------------------------------


class Label(msgspec.Struct):
    tracking: str


label_gate: trio.Event | None = None
labels_made: list[str] = []


async def make_label(order: Order, ctx: djobs.JobContext) -> Label:
    if label_gate is not None:
        await label_gate.wait()
    if order.amount < 0:
        raise ValueError("no label for a refund")
    labels_made.append(order.order_id)
    return Label(f"T-{order.order_id}")


label_job = djobs.Job.make("label", params=Order, result=Label, execute=make_label, retry=djobs.Retry(max_attempts=1))


async def ship_with_label(order: Order, ctx: djobs.WorkflowContext) -> str:
    try:
        label = await ctx.job(label_job, order)
    except djobs.ChildJobError as exc:
        await ctx.step("apologise", plain_str)  # compensation
        return f"no label: {exc.status} {exc.error_tag}"
    return await ctx.step("ship", lambda: f"shipped {label.tracking}", result=str)


label_flow = djobs.Workflow.make("labelled", input=Order, result=str, execute=ship_with_label)


@pytest.mark.trio
async def test_a_workflow_enqueues_a_job_and_waits_for_its_typed_result_holding_no_lease(
    autojump_clock: trio.testing.MockClock, layer: StorageLayer
) -> None:
    global label_gate
    labels_made.clear()
    label_gate = trio.Event()
    try:
        async with open_test_engine([label_flow, label_job], storage=layer, start=T0) as engine:
            client = engine.client.for_tenant("acme").workflow(label_flow)
            await client.start(id="l-1", input=Order("l-1", 5))
            await trio.sleep(5)
            status = success(await client.status("l-1"))
            [job] = success(await engine.client.jobs.list(name="label"))
            assert (job.status, job.tenant_id) == ("running", "acme")  # in the workflow's tenant
            assert (status.status, status.current_step) == ("waiting", f"label:{job.id}")
            assert status.wake_at is not None and status.wake_at <= T0 + timedelta(seconds=15)
            assert engine.active_instances == 0  # no task and no lease while the job runs
            assert await engine.storage.instance_lease_holder("workflow:labelled:acme\x1fl-1") is None
            label_gate.set()
            await until(engine, T0 + timedelta(seconds=30))
            assert success(await client.result("l-1")) == "shipped T-l-1"
            assert [s.kind for s in success(await client.status("l-1")).steps] == ["step", "job", "step"]
            assert len(success(await engine.client.jobs.list(name="label"))) == 1
    finally:
        label_gate = None
    assert labels_made == ["l-1"]


@pytest.mark.trio
async def test_a_failed_job_is_a_typed_error_the_body_may_handle(
    autojump_clock: trio.testing.MockClock, layer: StorageLayer
) -> None:
    async with open_test_engine([label_flow, label_job], storage=layer, start=T0) as engine:
        client = engine.client.workflow(label_flow)
        await client.start(id="l-2", input=Order("l-2", -1))
        await until(engine, T0 + timedelta(minutes=1))
        assert success(await client.result("l-2")) == "no label: failed retry_exhausted"  # as the job row stores it


class FailTheNextCheckpoint:
    """A tracker that makes the commit after the first job enqueue fail: the enqueue step's checkpoint."""

    def __init__(self) -> None:
        self.storage: Any = None

    def emit(self, event: djobs.TrackedEvent) -> None:
        if event.type == "job.enqueued" and self.storage is not None:
            self.storage.fail("commit", kind="io", at="commit", times=1)
            self.storage = None

    async def aclose(self) -> None:
        pass


@pytest.mark.trio
async def test_an_enqueue_step_run_again_after_its_checkpoint_failed_finds_its_job(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The job was enqueued but the step's checkpoint was not stored (as after a crash): the step
    runs again on the guard alarm, and its idempotency key gives back the same job."""
    labels_made.clear()
    tracker = FailTheNextCheckpoint()
    layer = djobs.storage.faulty(djobs.sqlite(tmp_path / "faulty.db"))
    async with open_test_engine([label_flow, label_job], storage=layer, start=T0, tracker=tracker) as engine:
        tracker.storage = engine.storage
        client = engine.client.workflow(label_flow)
        await client.start(id="l-4", input=Order("l-4", 5))
        await until(engine, T0 + timedelta(minutes=5))
        assert tracker.storage is None  # the fault fired
        assert success(await client.result("l-4")) == "shipped T-l-4"
        [job] = success(await engine.client.jobs.list(name="label"))
        [enqueue, wait, _] = success(await client.status("l-4")).steps
        assert enqueue.name == "enqueue job label" and wait.name == f"label:{job.id}"
    assert labels_made == ["l-4"]


@pytest.mark.trio
async def test_cancelling_a_workflow_that_waits_for_a_job_cancels_the_job(
    autojump_clock: trio.testing.MockClock, layer: StorageLayer
) -> None:
    global label_gate
    label_gate = trio.Event()  # never set: the job runs until cancelled
    try:
        async with open_test_engine([label_flow, label_job], storage=layer, start=T0) as engine:
            client = engine.client.workflow(label_flow)
            await client.start(id="l-3", input=Order("l-3", 5))
            await trio.sleep(5)
            assert success(await client.cancel("l-3")).cancelled
            await settle(engine)
            assert success(await client.status("l-3")).status == "cancelled"
            [job] = success(await engine.client.jobs.list(name="label"))
            assert job.status == "cancelled"
    finally:
        label_gate = None


@pytest.mark.trio
async def test_ctx_job_refuses_a_poll_shorter_than_its_first_look(autojump_clock: trio.testing.MockClock) -> None:
    async def eager(order: Order, ctx: djobs.WorkflowContext) -> str:
        label = await ctx.job(label_job, order, poll="10 ms")
        return label.tracking

    flow = djobs.Workflow.make("eager", input=Order, result=str, execute=eager)
    async with open_test_engine([flow, label_job], start=T0) as engine:
        client = engine.client.workflow(flow)
        await client.start(id="e", input=Order("e", 1))
        await settle(engine)
        error = failure(await client.result("e"))
        assert isinstance(error, djobs.WorkflowFailedError) and error.error_tag == "validation"
        assert "poll must be a duration from 100 ms to 36525 days" in error.error_message


async def nap_then_label(order: Order, ctx: djobs.WorkflowContext) -> str:
    await ctx.sleep("1 day")
    label = await ctx.job(label_job, order)
    return label.tracking


napping_flow = djobs.Workflow.make("napping", input=Order, result=str, execute=nap_then_label)


@pytest.mark.trio
async def test_a_body_woken_as_the_engine_opens_has_its_client(
    autojump_clock: trio.testing.MockClock, durable_layer: StorageLayer
) -> None:
    """An alarm due when an engine opens fires at once: ctx.client must exist by then."""
    labels_made.clear()
    flows = [napping_flow, label_job]
    async with open_test_engine(flows, storage=durable_layer, start=T0) as engine:
        await engine.client.workflow(napping_flow).start(id="n", input=Order("n", 1))
        await settle(engine)
    later = T0 + timedelta(days=2)
    async with open_test_engine(flows, storage=durable_layer, start=later) as engine:
        await until(engine, later + timedelta(minutes=1))
        assert success(await engine.client.workflow(napping_flow).result("n")) == "T-n"


# -- cancel from another process ---------------------------------------------------------------------


async def cleanup_after_cancel(_: Nothing, ctx: djobs.WorkflowContext) -> str:
    await ctx.step("first", slow, "first")
    try:
        await ctx.step("stuck", slow, "stuck")
    except djobs.WorkflowCancelledError:
        await ctx.step("cleanup", slow, "cleanup")
        raise
    return "ok"


cleanup_flow = djobs.Workflow.make("cleanup", input=Nothing, result=str, execute=cleanup_after_cancel)


@pytest.mark.trio
async def test_a_cancel_from_another_engine_cancels_the_running_step_within_a_poll(
    autojump_clock: trio.testing.MockClock, durable_layer: StorageLayer
) -> None:
    """Engine a runs the step and holds the lease; engine b's cancel notes the request, a reads it
    within CANCEL_POLL_SECONDS and cancels the step's scope, and b's cancel then returns."""
    global gate
    slow_calls.clear()
    gate = trio.Event()  # never set: the step runs until cancelled
    try:
        async with (
            open_test_engine([cleanup_flow], storage=durable_layer, start=T0) as a,
            open_test_engine([cleanup_flow], storage=durable_layer, start=T0) as b,
        ):
            await a.client.workflow(cleanup_flow).start(id="x", input=Nothing())
            await trio.sleep(5)
            assert success(await a.client.workflow(cleanup_flow).status("x")).current_step == "stuck"
            asked = trio.current_time()
            with trio.fail_after(30):  # virtual seconds; without the poll it would wait for ever
                cancelled = success(await b.client.workflow(cleanup_flow).cancel("x", reason="from b"))
            took = trio.current_time() - asked
            assert (cancelled.cancelled, cancelled.status) == (True, "cancelled")
            assert took <= djobs.kinds._workflow.CANCEL_POLL_SECONDS + 1  # one poll, then the lease
            status = success(await a.client.workflow(cleanup_flow).status("x"))
            assert status.status == "cancelled" and status.error is not None
            assert "from b" in status.error["message"]
            assert await a.storage.cancel_requests(["workflow:cleanup:x"]) == {}  # the note is gone
            assert [e.type for e in a.tracker.events if e.type == "workflow.cancelled"] == ["workflow.cancelled"]
    finally:
        gate = None
    assert slow_calls == ["first", "stuck", "cleanup"]  # in a: the cleanup step ran where the body ran


@pytest.mark.trio
async def test_a_cancel_from_another_engine_of_a_sleeping_workflow_takes_the_lease_and_ends_it(
    autojump_clock: trio.testing.MockClock, durable_layer: StorageLayer
) -> None:
    shop = Shop()
    async with (
        open_test_engine([order_flow], storage=durable_layer, services=shop, start=T0) as a,
        open_test_engine([order_flow], storage=durable_layer, services=shop, start=T0) as b,
    ):
        await a.client.workflow(order_flow).start(id="s", input=Order("s", 1))
        await settle(a)
        assert success(await b.client.workflow(order_flow).status("s")).status == "sleeping"
        assert success(await b.client.workflow(order_flow).cancel("s")).cancelled
        await settle(b)
        assert success(await a.client.workflow(order_flow).status("s")).status == "cancelled"
        assert await a.storage.cancel_requests(["workflow:order:s"]) == {}
        assert not success(await b.client.workflow(order_flow).cancel("s")).cancelled  # ended before


# -- a step made but never awaited ------------------------------------------------------------


class _Plan(msgspec.Struct):
    shape: str


def _double(n: int) -> int:
    return 2 * n


async def _planned(plan: _Plan, ctx: djobs.WorkflowContext) -> int:
    if plan.shape == "forgotten":
        ctx.step("forgotten", _double, 1)  # type: ignore[unused-awaitable]
        return await ctx.step("kept", _double, 2)
    if plan.shape == "two forgotten":
        ctx.step("a", _double, 1)  # type: ignore[unused-awaitable]
        ctx.step("b", _double, 2)  # type: ignore[unused-awaitable]
        return await ctx.step("c", _double, 3)
    if plan.shape == "made early":  # made, then awaited after a sleep (a replay) and out of order
        first, second = ctx.step("first", _double, 1), ctx.step("second", _double, 2)
        await ctx.sleep("1 hour")
        return await second + await first
    assert plan.shape == "composed"
    return await ctx.step("one", _double, 1).bind(lambda n: ctx.step("two", _double, n)).map(lambda n: n + 1)


_planner = djobs.Workflow.make("planner", input=_Plan, result=int, execute=_planned)


@pytest.mark.trio
@pytest.mark.parametrize(
    ("shape", "result", "forgotten"),
    [
        ("forgotten", 4, ["forgotten"]),
        ("two forgotten", 6, ["a", "b"]),
        ("made early", 6, []),
        ("composed", 5, []),
    ],
)
async def test_a_step_never_awaited_warns_as_a_coroutine_never_awaited_does(
    autojump_clock: trio.testing.MockClock, shape: str, result: int, forgotten: list[str]
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with open_test_engine([_planner]) as engine:
            workflows = engine.client.workflow(_planner)
            success(await workflows.start(id="p", input=_Plan(shape)))
            await trio.sleep(2 * 3600)
            assert success(await workflows.result("p")) == result
    warned = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert [m.split("'")[1] for m in warned] == forgotten, warned
    for message in warned:
        assert "of workflow 'planner' instance 'p' was never awaited: the step did not run" in message


# -- a refused call is refused the same way on every run ---------------------------------------------

bad_results: list[str] = []


def nan_charge() -> float:
    bad_results.append("nan")
    return float("nan")  # JSON has no NaN: stored as null, which is no float


def text_count() -> int:
    bad_results.append("text")
    return "seven"  # type: ignore[return-value]


@pytest.mark.trio
@pytest.mark.parametrize("fn", [nan_charge, text_count])
@pytest.mark.parametrize("retry", [None, djobs.Retry(3, delay="1 minute")])
async def test_a_step_whose_result_cannot_be_stored_runs_once_and_every_replay_raises_its_validation_error(
    autojump_clock: trio.testing.MockClock, fn: Callable[[], object], retry: djobs.Retry | None
) -> None:
    bad_results.clear()
    caught: list[tuple[int, str]] = []

    async def body(_: Nothing, ctx: djobs.WorkflowContext) -> str:
        try:
            await ctx.step("charge", fn, retry=retry)
        except djobs.ValidationError as exc:
            caught.append((ctx.run_count, exc.message))
        await ctx.sleep("1 hour", name="nap")
        await ctx.sleep("1 hour", name="nap2")
        return "ok"

    flow = djobs.Workflow.make("bad-result", input=Nothing, result=str, execute=body)
    async with open_test_engine([flow], start=T0) as engine:
        client = engine.client.workflow(flow)
        await client.start(id="b", input=Nothing())
        await until(engine, T0 + timedelta(hours=3))
        assert success(await client.result("b")) == "ok"
        status = success(await client.status("b"))
    assert len(bad_results) == 1  # not retried (a bug, not a passing failure), not run again on replay
    assert [run for run, _ in caught] == [1, 2, 3]
    assert len({message for _, message in caught}) == 1 and "result of step 'charge'" in caught[0][1]
    charge = status.steps[0]
    assert (charge.kind, charge.name, charge.done, charge.attempts) == ("step", "charge", True, 1)
    assert charge.error is not None and charge.error["tag"] == "validation"
    assert status.steps_finished == 1


class NotAWorkflow(msgspec.Struct):
    ref: str


def _unregistered(order: Order, ctx: djobs.JobContext) -> Label:
    return Label("never")


def unannotated():  # type: ignore[no-untyped-def]
    return 1


NOT_A_TYPE = object()


class Opaque:
    """A plain class: msgspec neither encodes nor decodes one without hooks."""

    def __init__(self) -> None:
        self.made = True


def make_opaque() -> Opaque:
    return Opaque()


unregistered_job = djobs.Job.make("unregistered", params=Order, result=Label, execute=_unregistered)

#: Each context call with a bad argument, and the error it raises at the call.
BAD_CALLS: dict[str, tuple[Callable[[djobs.WorkflowContext], Any], type[djobs.JobError]]] = {
    "sleep tomorrow": (lambda ctx: ctx.sleep("tomorrow"), djobs.ValidationError),
    "sleep soon": (lambda ctx: ctx.sleep("soon"), djobs.ValidationError),
    "sleep a bare number": (lambda ctx: ctx.sleep(30), djobs.ValidationError),
    "sleep a naive datetime": (lambda ctx: ctx.sleep(datetime(2026, 1, 2)), djobs.ValidationError),
    "sleep a negative delay": (lambda ctx: ctx.sleep(timedelta(seconds=-1)), djobs.ValidationError),
    "sleep past 9999": (lambda ctx: ctx.sleep(timedelta(days=3_000_000)), djobs.ValidationError),
    "sleep an empty name": (lambda ctx: ctx.sleep("1 second", name=""), djobs.ValidationError),
    "wait timeout soon": (lambda ctx: ctx.wait_for_signal("s", str, timeout="soon"), djobs.ValidationError),
    "wait a naive timeout": (
        lambda ctx: ctx.wait_for_signal("s", str, timeout=datetime(2026, 1, 2)),
        djobs.ValidationError,
    ),
    "wait an empty name": (lambda ctx: ctx.wait_for_signal("", str), djobs.ValidationError),
    "wait a type no payload is": (lambda ctx: ctx.wait_for_signal("s", NOT_A_TYPE), djobs.ValidationError),
    "wait a class msgspec cannot store": (lambda ctx: ctx.wait_for_signal("s", Opaque), djobs.ValidationError),
    "wait a class it cannot resolve": (lambda ctx: ctx.wait_for_signal("s", trio.Lock), djobs.ValidationError),
    "step unannotated": (lambda ctx: ctx.step("unannotated", unannotated), djobs.ValidationError),
    "step a type no result is": (lambda ctx: ctx.step("step", plain_str, result=NOT_A_TYPE), djobs.ValidationError),
    "step a class msgspec cannot store": (lambda ctx: ctx.step("opaque", make_opaque), djobs.ValidationError),
    "step a class it cannot resolve": (
        lambda ctx: ctx.step("lock", plain_str, result=trio.Lock),
        djobs.ValidationError,
    ),
    "step a name that is no str": (lambda ctx: ctx.step(42, plain_str), djobs.ValidationError),
    "step a long name": (lambda ctx: ctx.step("x" * 201, plain_str), djobs.ValidationError),
    "step a bad retry": (lambda ctx: ctx.step("retry", plain_str, retry=3), djobs.ValidationError),
    "step not callable": (lambda ctx: ctx.step("call", "plain_str"), djobs.ValidationError),
    "child an empty id": (lambda ctx: ctx.child(delivery, "", Parcel("p")), djobs.ValidationError),
    "child an id of 513": (lambda ctx: ctx.child(delivery, "p" * 513, Parcel("p")), djobs.ValidationError),
    "child an id too long to name": (lambda ctx: ctx.child(delivery, "p" * 190, Parcel("p")), djobs.ValidationError),
    "child a NUL id": (lambda ctx: ctx.child(delivery, "p\x00", Parcel("p")), djobs.ValidationError),
    "child the wrong input": (lambda ctx: ctx.child(delivery, "p", NotAWorkflow("p")), djobs.ValidationError),
    "child input over the limit": (lambda ctx: ctx.child(delivery, "p", Parcel("p" * 5000)), djobs.ValidationError),
    "child a job": (lambda ctx: ctx.child(label_job, "p", Parcel("p")), djobs.ValidationError),
    "child not registered": (lambda ctx: ctx.child(order_flow, "p", Order("o", 1)), djobs.JobNotFoundError),
    "job the wrong params": (lambda ctx: ctx.job(label_job, Parcel("p")), djobs.ValidationError),
    "job params over the limit": (lambda ctx: ctx.job(label_job, Order("o" * 5000, 1)), djobs.ValidationError),
    "job a workflow": (lambda ctx: ctx.job(delivery, Parcel("p")), djobs.ValidationError),
    "job not registered": (lambda ctx: ctx.job(unregistered_job, Order("o", 1)), djobs.JobNotFoundError),
    "job a short poll": (lambda ctx: ctx.job(label_job, Order("o", 1), poll="1 ms"), djobs.ValidationError),
}


@pytest.mark.trio
@pytest.mark.parametrize("call", list(BAD_CALLS))
async def test_a_call_with_a_bad_argument_raises_at_the_call_on_the_first_run_and_every_replay(
    autojump_clock: trio.testing.MockClock, call: str
) -> None:
    # The arguments are checked before the log is consulted: a replay raises what the first run
    # raised, where it raised it, and the refused call takes no place in the log.
    make, error_type = BAD_CALLS[call]
    caught: list[tuple[int, djobs.JobError]] = []

    async def body(_: Nothing, ctx: djobs.WorkflowContext) -> str:
        try:
            await make(ctx)
        except djobs.JobError as exc:
            caught.append((ctx.run_count, exc))
            await ctx.step("warn", plain_str)
        await ctx.sleep("1 second", name="nap")
        await ctx.sleep("1 hour", name="nap2")
        return "ok"

    flow = djobs.Workflow.make("bad-call", input=Nothing, result=str, execute=body)
    async with open_test_engine([flow, delivery, label_job], start=T0, max_payload_bytes=4096) as engine:
        client = engine.client.workflow(flow)
        await client.start(id="b", input=Nothing())
        await until(engine, T0 + timedelta(hours=2))
        assert success(await client.result("b")) == "ok"
        status = success(await client.status("b"))
        assert success(await engine.client.workflow(delivery).list()) == []  # no child was started
    assert [run for run, _ in caught] == [1, 2, 3]
    assert all(type(exc) is error_type for _, exc in caught), caught
    assert len({exc.message for _, exc in caught}) == 1, caught
    assert [(s.kind, s.name, s.done) for s in status.steps] == [
        ("step", "warn", True),
        ("sleep", "nap", True),
        ("sleep", "nap2", True),
    ]
    # The nap took its second, not a slot of another sleep's.
    assert status.steps[1].until == T0 + timedelta(seconds=1)


class _Captured:
    """Stands for what a step function defined in a workflow body closes over."""


class _N(msgspec.Struct):
    n: int


@pytest.mark.trio
async def test_step_functions_defined_in_a_body_are_not_kept_for_ever(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step function made afresh in each run is a new object each time: the cache of step result
    types keeps a bounded number of them (here 8), not one per run with what it closes over."""
    import gc
    import weakref

    from djobs.kinds import _workflow_context

    monkeypatch.setattr(_workflow_context, "_step_types", {})
    monkeypatch.setattr(_workflow_context, "_STORABLE_TYPES_LIMIT", 8)
    captured: list[weakref.ref[_Captured]] = []

    async def body(params: _N, ctx: djobs.WorkflowContext) -> int:
        n, held = params.n, _Captured()
        captured.append(weakref.ref(held))

        def step() -> int:
            return n if held is not None else 0

        return await ctx.step("s", step)

    flow = djobs.Workflow.make("fresh-steps", input=_N, result=int, execute=body)
    async with open_test_engine([flow]) as engine:
        client = engine.client.workflow(flow)
        for i in range(40):
            success(await client.start(id=f"w{i}", input=_N(i)))
        await engine.wait_idle()
        assert success(await client.result("w39")) == 39
    gc.collect()
    assert sum(ref() is not None for ref in captured) <= 8
