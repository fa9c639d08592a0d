"""Task jobs: the seed's order processor, schedule forms, on_idle/on_error, concurrency, restarts, bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo

import msgspec
import pytest
import trio
from returns.context import RequiresContextFutureResult
from returns.future import FutureResult
from returns.result import Failure, Result, Success

import djobs
import djobs.storage
from djobs.testing import TestEngine, failure, open_test_engine, success

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ACCEPTED = 'expected a timedelta, a duration string like "5 minutes", or a timezone-aware datetime'


async def advance_to(engine: TestEngine, moment: datetime) -> None:
    """Let virtual time run until `moment`, then let due work finish."""
    delay = (moment.timestamp() * 1000 - engine.clock.now_ms()) / 1000
    assert delay >= 0, f"{moment} is in the past"
    await trio.sleep(delay)
    await engine.wait_idle()


# -- the seed's order processor ----------------------------------------------------------


class OrderPlaced(msgspec.Struct, tag=True):
    order_id: str


class PaymentReceived(msgspec.Struct, tag=True):
    pass


class Shipped(msgspec.Struct, tag=True):
    tracking_number: str


OrderEvent = OrderPlaced | PaymentReceived | Shipped


class Order(msgspec.Struct):
    order_id: str
    status: Literal["pending", "processing", "shipped", "delivered"]
    reminders: int = 0


class FakeShop:
    """The application's services: payment reminders and a carrier that delivers on the 2nd check."""

    def __init__(self, delivered_on_check: int = 2) -> None:
        self.reminders: list[tuple[str, datetime]] = []
        self.checks: list[tuple[str, datetime]] = []
        self.delivered_on_check = delivered_on_check

    async def send_payment_reminder(self, order_id: str, at: datetime) -> None:
        await trio.lowlevel.checkpoint()
        self.reminders.append((order_id, at))

    async def check_delivery(self, order_id: str, at: datetime) -> bool:
        await trio.lowlevel.checkpoint()
        self.checks.append((order_id, at))
        return len(self.checks) >= self.delivered_on_check


def on_order_event(event: OrderEvent, ctx: djobs.TaskEventContext[Order]) -> None:
    match event:
        case OrderPlaced(order_id=order_id):
            ctx.set_state(Order(order_id=order_id, status="pending"))
            ctx.schedule(timedelta(minutes=5))  # check payment in 5 minutes
        case PaymentReceived():
            ctx.update_state(lambda s: msgspec.structs.replace(s, status="processing"))
        case Shipped():
            ctx.update_state(lambda s: msgspec.structs.replace(s, status="shipped"))
            ctx.schedule("24 hours")  # check delivery tomorrow


async def check_order(ctx: djobs.TaskContext[Order]) -> None:
    state = ctx.state
    if state is None:
        return
    shop: FakeShop = ctx.services
    if state.status == "pending":
        await shop.send_payment_reminder(state.order_id, ctx.now())
        ctx.set_state(msgspec.structs.replace(state, reminders=state.reminders + 1))
        ctx.schedule(timedelta(minutes=30))  # check again
    elif state.status == "shipped":
        if await shop.check_delivery(state.order_id, ctx.now()):
            ctx.update_state(lambda s: msgspec.structs.replace(s, status="delivered"))
            ctx.terminate(reason="delivered")
        ctx.schedule(timedelta(hours=24))  # check again tomorrow


order_processor = djobs.Task.make(
    "orderProcessor", state=Order, event=OrderEvent, on_event=on_order_event, execute=check_order
)


@pytest.mark.trio
async def test_order_processor_from_placed_to_delivered(autojump_clock: trio.testing.MockClock) -> None:
    shop = FakeShop(delivered_on_check=2)
    async with open_test_engine([order_processor], services=shop) as engine:
        orders = engine.client.task(order_processor)

        async def expect(
            status: Literal["active", "idle"], scheduled_at: datetime | None, events: int, state: Order
        ) -> None:
            assert success(await orders.status("order-789")) == djobs.TaskStatus(status, scheduled_at, events)
            assert success(await orders.get_state("order-789")) == djobs.StateResult(state, scheduled_at)

        # Placed: the payment check is due in 5 minutes.
        placed = success(await orders.send(id="order-789", event=OrderPlaced("order-789")))
        assert placed == djobs.SendResult(created=True, instance_id="order-789", scheduled_at=T0 + timedelta(minutes=5))
        await expect("active", T0 + timedelta(minutes=5), 1, Order("order-789", "pending"))
        assert engine.tracker.count("job.started") == 1

        # 5 minutes on, still unpaid: a reminder, and another check in 30 minutes.
        await advance_to(engine, T0 + timedelta(minutes=6))
        assert shop.reminders == [("order-789", T0 + timedelta(minutes=5))]
        await expect("active", T0 + timedelta(minutes=35), 1, Order("order-789", "pending", reminders=1))

        # Paid: the state moves on; the pending check stays as it was.
        paid = success(await orders.send(id="order-789", event=PaymentReceived()))
        assert paid == djobs.SendResult(False, "order-789", T0 + timedelta(minutes=35))
        await expect("active", T0 + timedelta(minutes=35), 2, Order("order-789", "processing", reminders=1))

        # Shipped at 00:20: the delivery check replaces the payment check.
        await advance_to(engine, T0 + timedelta(minutes=20))
        shipped_at = T0 + timedelta(minutes=20)
        shipped = success(await orders.send(id="order-789", event=Shipped("TRK-1")))
        assert shipped.scheduled_at == shipped_at + timedelta(hours=24)
        await expect("active", shipped_at + timedelta(hours=24), 3, Order("order-789", "shipped", reminders=1))
        await advance_to(engine, T0 + timedelta(hours=1))
        assert len(shop.reminders) == 1  # the replaced 00:35 check never ran
        assert engine.tracker.count("job.executed") == 1

        # The first daily check: not delivered yet, check again tomorrow.
        await advance_to(engine, shipped_at + timedelta(hours=24, seconds=1))
        assert shop.checks == [("order-789", shipped_at + timedelta(hours=24))]
        await expect("active", shipped_at + timedelta(hours=48), 3, Order("order-789", "shipped", reminders=1))

        # The second: delivered, and the task terminates itself.
        await advance_to(engine, shipped_at + timedelta(hours=48, seconds=1))
        assert shop.checks[-1] == ("order-789", shipped_at + timedelta(hours=48))
        assert success(await orders.status("order-789")) == djobs.TaskStatus("not_found")
        assert failure(await orders.get_state("order-789")) == djobs.InstanceNotFoundError(
            "orderProcessor", "order-789"
        )
        [terminated] = engine.tracker.of_type("job.terminated")
        assert terminated.data["reason"] == "delivered"
        scheduled = engine.tracker.of_type("task.scheduled")
        assert [(e.data["trigger"], e.data["scheduled_at"]) for e in scheduled] == [
            ("event", "2026-01-01T00:05:00+00:00"),
            ("execute", "2026-01-01T00:35:00+00:00"),
            ("event", "2026-01-02T00:20:00+00:00"),
            ("execute", "2026-01-03T00:20:00+00:00"),
        ]
        # Nothing else is left to fire.
        await trio.sleep(7 * 24 * 3600)
        assert len(shop.checks) == 2


# -- schedule(when) --------------------------------------------------------------------


class Plan(msgspec.Struct, tag=True):
    note: str


class Notes(msgspec.Struct):
    note: str


def planner(whens: list[object], seen: list[datetime | None]) -> djobs.Task[Notes, Plan]:
    """A task whose on_event writes the note, then schedules the next of `whens`."""

    def on_event(event: Plan, ctx: djobs.TaskEventContext[Notes]) -> None:
        ctx.set_state(Notes(event.note))
        ctx.schedule(whens.pop(0))  # type: ignore[arg-type]  # bad forms on purpose
        seen.append(ctx.scheduled_at)

    def execute(ctx: djobs.TaskContext[Notes]) -> None:
        seen.append(ctx.now())

    return djobs.Task.make("planner", state=Notes, event=Plan, on_event=on_event, execute=execute)


@pytest.mark.trio
@pytest.mark.parametrize(
    ("when", "due"),
    [
        (timedelta(minutes=5), T0 + timedelta(minutes=5)),
        ("5 minutes", T0 + timedelta(minutes=5)),
        ("1h30m", T0 + timedelta(hours=1, minutes=30)),
        (datetime(2026, 1, 1, 3, 0, tzinfo=ZoneInfo("Europe/Berlin")), T0 + timedelta(hours=2)),
        (T0 + timedelta(days=3), T0 + timedelta(days=3)),
    ],
)
async def test_schedule_accepts_a_delay_or_an_aware_datetime(
    autojump_clock: trio.testing.MockClock, when: object, due: datetime
) -> None:
    seen: list[datetime | None] = []
    job = planner([when], seen)
    async with open_test_engine([job]) as engine:
        sent = success(await engine.client.task(job).send(id="a", event=Plan("x")))
        assert sent.scheduled_at == due
        assert seen == [due]  # ctx.scheduled_at reflects the handler's own schedule
        await advance_to(engine, due - timedelta(milliseconds=1))
        assert len(seen) == 1
        await advance_to(engine, due)
        assert seen == [due, due]
        assert success(await engine.client.task(job).status("a")) == djobs.TaskStatus("idle", None, 1)


@pytest.mark.trio
async def test_a_time_in_the_past_fires_at_once(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[datetime | None] = []
    job = planner([datetime(2020, 1, 1, tzinfo=UTC)], seen)
    async with open_test_engine([job]) as engine:
        sent = success(await engine.client.task(job).send(id="a", event=Plan("x")))
        assert sent.scheduled_at == T0  # due now, not in 2020
        await engine.wait_idle()
        assert seen == [T0, T0]
        assert engine.clock.now_ms() == T0.timestamp() * 1000


@pytest.mark.trio
@pytest.mark.parametrize(
    ("when", "why"),
    [
        (datetime(2026, 1, 1, 12, 0), "naive"),
        (300, "a bare number is ambiguous (seconds or milliseconds?)"),
        (1.5, "a bare number is ambiguous"),
        (True, "a bare number is ambiguous"),
        ("soon", "not a duration"),
        ("300", "not a duration"),
        ("-5 minutes", "a delay must not be negative"),
        (timedelta(seconds=-1), "must not be negative"),
        (timedelta(days=3_000_000), "at most 36525 days"),
        (timedelta(days=36_526), "at most 36525 days"),
        ("36526 days", "at most 36525 days"),
        (datetime(9999, 12, 31, 12, tzinfo=UTC), "after 9999-12-31T00:00:00Z, the latest time djobs schedules"),
        (None, ""),
    ],
)
async def test_schedule_refuses_other_forms_and_nothing_changes(
    autojump_clock: trio.testing.MockClock, when: object, why: str
) -> None:
    seen: list[datetime | None] = []
    job = planner(["1 hour", when], seen)
    async with open_test_engine([job]) as engine:
        tasks = engine.client.task(job)
        await tasks.send(id="a", event=Plan("first"), event_id="e1")
        error = failure(await tasks.send(id="a", event=Plan("second"), event_id="e2"))
        assert isinstance(error, djobs.ValidationError)
        assert ACCEPTED in error.message and why in error.message
        # State, alarm, event count and idempotency keys are as before the failed event.
        assert success(await tasks.get_state("a")) == djobs.StateResult(Notes("first"), T0 + timedelta(hours=1))
        assert success(await tasks.status("a")) == djobs.TaskStatus("active", T0 + timedelta(hours=1), 1)
        assert not await engine.storage.has_event_id("task:planner:a", "e2")
        assert engine.tracker.count("task.scheduled") == 1


@pytest.mark.trio
async def test_a_bad_schedule_in_execute_fails_the_execute_and_keeps_the_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def on_event(event: Plan, ctx: djobs.TaskEventContext[Notes]) -> None:
        ctx.set_state(Notes(event.note))
        ctx.schedule("1 minute")

    def execute(ctx: djobs.TaskContext[Notes]) -> None:
        ctx.set_state(Notes("changed"))
        ctx.schedule(60)  # type: ignore[arg-type]  # seconds or milliseconds? refused

    job = djobs.Task.make("bad", state=Notes, event=Plan, on_event=on_event, execute=execute)
    async with open_test_engine([job]) as engine:
        await engine.client.task(job).send(id="a", event=Plan("kept"))
        await advance_to(engine, T0 + timedelta(minutes=2))
        [failed] = engine.tracker.of_type("job.failed")
        assert failed.data["error"]["tag"] == "validation"
        assert ACCEPTED in failed.data["error"]["message"]
        assert success(await engine.client.task(job).get_state("a")) == djobs.StateResult(Notes("kept"), None)


@pytest.mark.trio
async def test_cancel_schedule_and_scheduled_at_inside_handlers(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[tuple[str, datetime | None]] = []

    class Go(msgspec.Struct, tag=True):
        action: str

    def on_event(event: Go, ctx: djobs.TaskEventContext[Notes]) -> None:
        seen.append(("before", ctx.scheduled_at))
        if event.action == "schedule":
            ctx.schedule("10 minutes")
        elif event.action == "cancel":
            ctx.cancel_schedule()
        seen.append(("after", ctx.scheduled_at))

    job = djobs.Task.make("canceller", state=Notes, event=Go, on_event=on_event, execute=lambda ctx: None)
    async with open_test_engine([job]) as engine:
        tasks = engine.client.task(job)
        await tasks.send(id="a", event=Go("schedule"))
        await trio.sleep(60)
        assert success(await tasks.send(id="a", event=Go("nothing"))).scheduled_at == T0 + timedelta(minutes=10)
        assert success(await tasks.send(id="a", event=Go("cancel"))).scheduled_at is None
        assert success(await tasks.status("a")) == djobs.TaskStatus("idle", None, 3)
        ten = T0 + timedelta(minutes=10)
        assert seen == [
            ("before", None),
            ("after", ten),
            ("before", ten),
            ("after", ten),
            ("before", ten),
            ("after", None),
        ]
        await trio.sleep(3600)
        assert engine.tracker.count("job.executed") == 0


# -- counters and context fields -----------------------------------------------------------


class Tick(msgspec.Struct, tag=True):
    pass


class Count(msgspec.Struct):
    n: int = 0


@pytest.mark.trio
async def test_context_counters(autojump_clock: trio.testing.MockClock) -> None:
    events: list[tuple[int, bool, Count | None]] = []
    executes: list[tuple[int, int, datetime, int, bool, datetime | None]] = []

    def on_event(event: Tick, ctx: djobs.TaskEventContext[Count]) -> None:
        events.append((ctx.event_count, ctx.is_first_event, ctx.state))
        ctx.set_state(Count((ctx.state or Count()).n + 1))
        ctx.schedule("1 minute")

    def execute(ctx: djobs.TaskContext[Count]) -> None:
        executes.append(
            (ctx.execute_count, ctx.event_count, ctx.created_at, ctx.attempt, ctx.is_retry, ctx.scheduled_at)
        )

    job = djobs.Task.make("counter", state=Count, event=Tick, on_event=on_event, execute=execute)
    async with open_test_engine([job]) as engine:
        tasks = engine.client.task(job)
        await trio.sleep(30)
        await tasks.send(id="a", event=Tick())
        await tasks.send(id="a", event=Tick())
        await trio.sleep(120)
        await tasks.send(id="a", event=Tick())
        await trio.sleep(120)
        created = T0 + timedelta(seconds=30)
        assert events == [(1, True, None), (2, False, Count(1)), (3, False, Count(2))]
        # The alarm that fired is consumed: scheduled_at starts as None in execute.
        assert executes == [(1, 2, created, 1, False, None), (2, 3, created, 1, False, None)]
        assert success(await tasks.get_state("a")).state == Count(3)


@pytest.mark.trio
async def test_update_state_before_any_state_is_an_invalid_state_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job: djobs.Task[Count, Tick] = djobs.Task.make(
        "early",
        state=Count,
        event=Tick,
        execute=lambda ctx: None,
        on_event=lambda event, ctx: ctx.update_state(lambda s: Count(s.n + 1)),
    )
    async with open_test_engine([job]) as engine:
        error = failure(await engine.client.task(job).send(id="a", event=Tick()))
        assert isinstance(error, djobs.InvalidStateError)
        assert "call set_state first" in error.message
        assert success(await engine.client.task(job).status("a")).status == "not_found"


# -- on_idle ----------------------------------------------------------------------------


@pytest.mark.trio
async def test_on_idle_runs_when_a_step_leaves_no_alarm(autojump_clock: trio.testing.MockClock) -> None:
    idle_calls: list[tuple[datetime, Count | None, datetime | None]] = []

    class Ev(msgspec.Struct, tag=True):
        schedule: bool

    def on_event(event: Ev, ctx: djobs.TaskEventContext[Count]) -> None:
        ctx.set_state(Count((ctx.state or Count()).n + 1))
        if event.schedule:
            ctx.schedule("10 minutes")

    def execute(ctx: djobs.TaskContext[Count]) -> None:
        ctx.update_state(lambda s: Count(s.n + 100))  # no schedule: the task goes idle

    def on_idle(ctx: djobs.TaskContext[Count]) -> None:
        idle_calls.append((ctx.now(), ctx.state, ctx.scheduled_at))
        if len(idle_calls) == 1:
            ctx.schedule("1 hour")  # the seed's cleanup later

    job = djobs.Task.make("idler", state=Count, event=Ev, on_event=on_event, execute=execute, on_idle=on_idle)
    async with open_test_engine([job]) as engine:
        tasks = engine.client.task(job)
        # A new task whose first event schedules nothing is idle at once: on_idle runs, in the same commit.
        sent = success(await tasks.send(id="a", event=Ev(schedule=False)))
        assert sent.scheduled_at == T0 + timedelta(hours=1)
        assert idle_calls == [(T0, Count(1), None)]
        [scheduled] = engine.tracker.of_type("task.scheduled")
        assert scheduled.data["trigger"] == "idle"
        # The idle alarm fires; execute schedules nothing: on_idle again, sees execute's state.
        await advance_to(engine, T0 + timedelta(hours=1))
        assert idle_calls[1] == (T0 + timedelta(hours=1), Count(101), None)
        # on_idle scheduled nothing this time: idle, and it is not called again for its own outcome.
        assert success(await tasks.status("a")) == djobs.TaskStatus("idle", None, 1)
        # Already idle, an event that schedules nothing is no transition: on_idle does not run.
        await tasks.send(id="a", event=Ev(schedule=False))
        assert len(idle_calls) == 2
        # Active, then idle again when the alarm is consumed.
        await tasks.send(id="a", event=Ev(schedule=True))
        assert len(idle_calls) == 2
        await trio.sleep(24 * 3600)
        assert len(idle_calls) == 3
        assert success(await tasks.get_state("a")).state == Count(203)


@pytest.mark.trio
async def test_a_failing_on_idle_keeps_the_step(autojump_clock: trio.testing.MockClock) -> None:
    def on_idle(ctx: djobs.TaskContext[Count]) -> None:
        ctx.set_state(Count(-1))
        ctx.schedule("1 minute")
        raise RuntimeError("idle broke")

    job: djobs.Task[Count, Tick] = djobs.Task.make(
        "idlefail",
        state=Count,
        event=Tick,
        execute=lambda ctx: None,
        on_idle=on_idle,
        on_event=lambda event, ctx: ctx.set_state(Count(7)),
    )
    async with open_test_engine([job]) as engine:
        sent = success(await engine.client.task(job).send(id="a", event=Tick()))
        assert sent == djobs.SendResult(True, "a", None)
        assert success(await engine.client.task(job).get_state("a")) == djobs.StateResult(Count(7), None)
        [failed] = engine.tracker.of_type("job.failed")
        assert failed.data["handler"] == "on_idle"
        assert "RuntimeError: idle broke" in failed.data["error"]["message"]


# -- failures, retries and on_error ----------------------------------------------------------


class Attempts(msgspec.Struct):
    attempts: int = 0
    done: bool = False


@pytest.mark.trio
async def test_on_error_gets_the_typed_error_and_schedules_a_retry(autojump_clock: trio.testing.MockClock) -> None:
    errors: list[tuple[djobs.JobError, Attempts | None, int, datetime]] = []
    outcomes = [Failure(djobs.ExecutionError("carrier down")), Success(None)]

    def on_event(event: Tick, ctx: djobs.TaskEventContext[Attempts]) -> None:
        ctx.set_state(Attempts())
        ctx.schedule("5 minutes")

    def execute(ctx: djobs.TaskContext[Attempts]) -> Result[None, djobs.ExecutionError]:
        ctx.update_state(lambda s: msgspec.structs.replace(s, done=True))  # dropped if this fails
        return outcomes.pop(0)

    def on_error(error: djobs.JobError, ctx: djobs.TaskContext[Attempts]) -> None:
        errors.append((error, ctx.state, ctx.execute_count, ctx.now()))
        ctx.update_state(lambda s: msgspec.structs.replace(s, attempts=s.attempts + 1))
        ctx.schedule(timedelta(seconds=30))  # retry

    job = djobs.Task.make("shipper", state=Attempts, event=Tick, on_event=on_event, execute=execute, on_error=on_error)
    async with open_test_engine([job]) as engine:
        tasks = engine.client.task(job)
        await tasks.send(id="a", event=Tick())
        await advance_to(engine, T0 + timedelta(minutes=5))
        assert errors == [(djobs.ExecutionError("carrier down"), Attempts(), 1, T0 + timedelta(minutes=5))]
        assert success(await tasks.get_state("a")) == djobs.StateResult(
            Attempts(attempts=1), T0 + timedelta(minutes=5, seconds=30)
        )
        assert engine.tracker.of_type("task.scheduled")[-1].data["trigger"] == "error"
        [failed] = engine.tracker.of_type("job.failed")
        assert failed.data["error"] == {"tag": "execution", "message": "carrier down"}
        await advance_to(engine, T0 + timedelta(minutes=6))
        assert success(await tasks.get_state("a")) == djobs.StateResult(Attempts(attempts=1, done=True), None)
        assert engine.tracker.count("job.executed") == 1
        assert len(errors) == 1


@pytest.mark.trio
async def test_the_retry_policy_comes_first_then_on_error(autojump_clock: trio.testing.MockClock) -> None:
    tries: list[tuple[int, int, bool, datetime]] = []
    errors: list[djobs.JobError] = []

    def on_event(event: Tick, ctx: djobs.TaskEventContext[Attempts]) -> None:
        ctx.set_state(Attempts())
        ctx.schedule("1 minute")

    def execute(ctx: djobs.TaskContext[Attempts]) -> None:
        tries.append((ctx.execute_count, ctx.attempt, ctx.is_retry, ctx.now()))
        raise RuntimeError("still down")

    job = djobs.Task.make(
        "retrier",
        state=Attempts,
        event=Tick,
        on_event=on_event,
        execute=execute,
        on_error=lambda error, ctx: errors.append(error),
        retry=djobs.Retry(max_attempts=3, delay=djobs.Backoff.fixed("10 seconds")),
    )
    async with open_test_engine([job]) as engine:
        tasks = engine.client.task(job)
        await tasks.send(id="a", event=Tick())
        await advance_to(engine, T0 + timedelta(minutes=1))
        # The first retry is an alarm of its own.
        assert success(await tasks.status("a")) == djobs.TaskStatus("active", T0 + timedelta(minutes=1, seconds=10), 1)
        await advance_to(engine, T0 + timedelta(minutes=5))
        minute = T0 + timedelta(minutes=1)
        assert tries == [
            (1, 1, False, minute),
            (1, 2, True, minute + timedelta(seconds=10)),
            (1, 3, True, minute + timedelta(seconds=20)),
        ]
        [error] = errors
        assert isinstance(error, djobs.ExecutionError) and isinstance(error.cause, RuntimeError)
        assert engine.tracker.count("job.retry_exhausted") == 1
        # on_error scheduled nothing: the task keeps its state, idle, until an event or a trigger.
        assert success(await tasks.get_state("a")) == djobs.StateResult(Attempts(), None)
        assert success(await tasks.status("a")).status == "idle"


@pytest.mark.trio
async def test_without_on_error_or_retry_a_failed_execute_keeps_the_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def execute(ctx: djobs.TaskContext[Count]) -> Result[None, str]:
        ctx.set_state(Count(99))
        ctx.schedule("1 minute")
        return Failure("nope")

    def on_event(event: Tick, ctx: djobs.TaskEventContext[Count]) -> None:
        ctx.set_state(Count(1))
        ctx.schedule("1 minute")

    job = djobs.Task.make("plain", state=Count, event=Tick, execute=execute, on_event=on_event)
    async with open_test_engine([job]) as engine:
        await engine.client.task(job).send(id="a", event=Tick())
        await advance_to(engine, T0 + timedelta(hours=1))
        [failed] = engine.tracker.of_type("job.failed")
        assert failed.data["will_retry"] is False
        assert failed.data["error"]["message"] == "job returned a failure: 'nope'"
        assert success(await engine.client.task(job).get_state("a")) == djobs.StateResult(Count(1), None)


@pytest.mark.trio
async def test_a_failing_on_event_is_returned_to_the_sender_and_nothing_is_stored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Bad(msgspec.Struct, tag=True):
        how: str

    def on_event(event: Bad, ctx: djobs.TaskEventContext[Count]) -> Result[None, djobs.JobError]:
        ctx.set_state(Count(5))
        ctx.schedule("1 minute")
        if event.how == "raise":
            raise RuntimeError("kaboom")
        if event.how == "transition":
            return Failure(djobs.InvalidStateError("cannot ship an unpaid order"))
        if event.how == "other":
            return Failure(djobs.SchedulerError("odd"))
        return Success(None)

    job = djobs.Task.make("rejecting", state=Count, event=Bad, on_event=on_event, execute=lambda ctx: None)
    async with open_test_engine([job]) as engine:
        tasks = engine.client.task(job)
        raised = failure(await tasks.send(id="a", event=Bad("raise")))
        assert isinstance(raised, djobs.ExecutionError) and "RuntimeError: kaboom" in raised.message
        assert failure(await tasks.send(id="a", event=Bad("transition"))) == djobs.InvalidStateError(
            "cannot ship an unpaid order"
        )
        other = failure(await tasks.send(id="a", event=Bad("other")))
        assert isinstance(other, djobs.ExecutionError) and other.cause == djobs.SchedulerError("odd")
        assert success(await tasks.status("a")) == djobs.TaskStatus("not_found")
        assert engine.tracker.types() == []


# -- trigger and terminate --------------------------------------------------------------------


@pytest.mark.trio
async def test_trigger_runs_execute_now_and_consumes_the_alarm(autojump_clock: trio.testing.MockClock) -> None:
    ran: list[datetime] = []

    def execute(ctx: djobs.TaskContext[Count]) -> None:
        ran.append(ctx.now())

    job: djobs.Task[Count, Tick] = djobs.Task.make(
        "trig",
        state=Count,
        event=Tick,
        execute=execute,
        on_event=lambda event, ctx: ctx.schedule("1 hour"),
    )
    async with open_test_engine([job]) as engine:
        tasks = engine.client.task(job)
        await tasks.send(id="a", event=Tick())
        await trio.sleep(60)
        triggered = success(await tasks.trigger("a"))
        assert triggered == djobs.TaskTriggerResult("a", 1, "succeeded", None)
        assert ran == [T0 + timedelta(minutes=1)]
        assert success(await tasks.get_state("a")) == djobs.StateResult(None, None)  # never set_state
        await trio.sleep(2 * 3600)
        assert len(ran) == 1
        assert failure(await tasks.trigger("nobody")) == djobs.InstanceNotFoundError("trig", "nobody")


@pytest.mark.trio
async def test_terminate_frees_the_id_and_its_event_ids(autojump_clock: trio.testing.MockClock) -> None:
    firsts: list[bool] = []

    def on_event(event: Tick, ctx: djobs.TaskEventContext[Count]) -> None:
        firsts.append(ctx.is_first_event)
        ctx.schedule("1 minute")

    job = djobs.Task.make("term", state=Count, event=Tick, on_event=on_event, execute=lambda ctx: None)
    async with open_test_engine([job]) as engine:
        tasks = engine.client.task(job)
        await tasks.send(id="a", event=Tick(), event_id="e1")
        assert success(await tasks.terminate("a", reason="cancelled")) == djobs.TerminateResult(True, "a")
        assert success(await tasks.terminate("a")) == djobs.TerminateResult(False, "a")
        assert success(await tasks.status("a")) == djobs.TaskStatus("not_found")
        await trio.sleep(120)
        assert engine.tracker.count("job.executed") == 0
        # Event ids live as long as the task: a new task under the id accepts "e1" again.
        again = success(await tasks.send(id="a", event=Tick(), event_id="e1"))
        assert again.created is True
        assert firsts == [True, True]


@pytest.mark.trio
async def test_terminate_inside_on_event(autojump_clock: trio.testing.MockClock) -> None:
    class Cancel(msgspec.Struct, tag=True):
        pass

    def on_event(event: Tick | Cancel, ctx: djobs.TaskEventContext[Count]) -> None:
        if isinstance(event, Cancel):
            ctx.terminate(reason="customer cancelled")
        ctx.set_state(Count(1))
        ctx.schedule("1 hour")

    job = djobs.Task.make("cancellable", state=Count, event=Tick | Cancel, on_event=on_event, execute=lambda ctx: None)
    async with open_test_engine([job]) as engine:
        tasks = engine.client.task(job)
        await tasks.send(id="a", event=Tick())
        assert success(await tasks.send(id="a", event=Cancel())) == djobs.SendResult(False, "a", None)
        assert success(await tasks.status("a")) == djobs.TaskStatus("not_found")
        assert [e.data["reason"] for e in engine.tracker.of_type("job.terminated")] == ["customer cancelled"]


# -- concurrency ---------------------------------------------------------------------------


@pytest.mark.trio
async def test_concurrent_sends_are_all_counted_and_never_interleave(autojump_clock: trio.testing.MockClock) -> None:
    in_flight = 0
    most = 0

    async def on_event(event: Tick, ctx: djobs.TaskEventContext[Count]) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        before = (ctx.state or Count()).n
        await trio.sleep(0.01)  # a window in which another handler could run, if any were allowed to
        ctx.set_state(Count(before + 1))
        in_flight -= 1

    job = djobs.Task.make("busy", state=Count, event=Tick, on_event=on_event, execute=lambda ctx: None)
    async with open_test_engine([job]) as engine:
        tasks = engine.client.task(job)
        created: list[bool] = []

        async def send(i: int) -> None:
            created.append(success(await tasks.send(id="one", event=Tick(), event_id=f"e{i}")).created)

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(send, i)
        assert most == 1
        assert created.count(True) == 1
        assert success(await tasks.get_state("one")).state == Count(50)
        assert success(await tasks.status("one")).event_count == 50


# -- restarts on a real file -----------------------------------------------------------------


@pytest.mark.trio
@pytest.mark.parametrize("reopen_after", [timedelta(minutes=3), timedelta(hours=5)])
async def test_a_pending_task_alarm_survives_a_restart_and_fires_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, reopen_after: timedelta
) -> None:
    fired: list[datetime] = []

    def on_event(event: Plan, ctx: djobs.TaskEventContext[Notes]) -> None:
        ctx.set_state(Notes(event.note))
        ctx.schedule("10 minutes")

    def execute(ctx: djobs.TaskContext[Notes]) -> None:
        fired.append(ctx.now())
        ctx.update_state(lambda s: Notes(s.note + " done"))

    job = djobs.Task.make("durable", state=Notes, event=Plan, on_event=on_event, execute=execute)
    db = djobs.sqlite(tmp_path / "jobs.db")
    async with open_test_engine([job], storage=db) as engine:
        await engine.client.task(job).send(id="a", event=Plan("placed"), event_id="p1")
        await trio.sleep(60)
    reopened = T0 + reopen_after
    async with open_test_engine([job], storage=db, start=reopened) as engine:
        tasks = engine.client.task(job)
        assert success(await tasks.status("a")).event_count == 1
        await trio.sleep(24 * 3600)
        # Due at 00:10: on time if the engine was back by then, else at once when it reopened.
        assert fired == [max(T0 + timedelta(minutes=10), reopened)]
        assert success(await tasks.get_state("a")) == djobs.StateResult(Notes("placed done"), None)
        # The idempotency key outlived the restart too.
        assert failure(await tasks.send(id="a", event=Plan("again"), event_id="p1")) == djobs.DuplicateEventError(
            "a", "p1"
        )


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.trio
async def test_bad_input_gets_typed_errors_and_changes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    calls: list[object] = []

    def on_event(event: OrderEvent, ctx: djobs.TaskEventContext[Order]) -> None:
        calls.append(event)
        on_order_event(event, ctx)

    job = djobs.Task.make("orders", state=Order, event=OrderEvent, on_event=on_event, execute=check_order)
    async with open_test_engine([job], services=FakeShop()) as engine:
        orders = engine.client.task(job)
        # An event that does not match the schema: nothing is created.
        for bad in [{"type": "Refunded"}, {"type": "OrderPlaced", "order_id": 5}, Notes("x"), "OrderPlaced"]:
            error = failure(await orders.send(id="o1", event=bad))  # type: ignore[arg-type]
            assert isinstance(error, djobs.ValidationError), bad
            assert "event for task 'orders'" in error.message
        assert success(await orders.status("o1")) == djobs.TaskStatus("not_found")
        # A dict with the tag is converted like an instance.
        sent = success(await orders.send(id="o1", event={"type": "OrderPlaced", "order_id": "o1"}, event_id="k1"))  # type: ignore[arg-type]
        assert sent.created and calls == [OrderPlaced("o1")]
        # A repeated event id: DuplicateEventError, and on_event is not called again.
        dup = failure(await orders.send(id="o1", event=PaymentReceived(), event_id="k1"))
        assert dup == djobs.DuplicateEventError("o1", "k1")
        assert len(calls) == 1
        assert success(await orders.get_state("o1")).state == Order("o1", "pending")
        assert success(await orders.status("o1")).event_count == 1
        # Bad ids and event ids.
        for bad_id in ["", "x" * 513, 7, "a\x00b"]:
            assert isinstance(failure(await orders.send(id=bad_id, event=PaymentReceived())), djobs.ValidationError)  # type: ignore[arg-type]
            for verb in (orders.status, orders.get_state, orders.trigger, orders.terminate):
                assert isinstance(failure(await verb(bad_id)), djobs.ValidationError)  # type: ignore[arg-type]
        for bad_event_id in ["", 5, "k" * 600]:
            error = failure(await orders.send(id="o1", event=PaymentReceived(), event_id=bad_event_id))  # type: ignore[arg-type]
            assert isinstance(error, djobs.ValidationError) and "event_id" in error.message
        assert len(calls) == 1
        # Unknown jobs, by name and by a definition this engine does not run.
        assert failure(await engine.client.task("nope").send(id="o1", event=PaymentReceived())) == (
            djobs.JobNotFoundError("nope")
        )
        assert failure(await engine.client.task(order_processor).status("o1")) == djobs.JobNotFoundError(
            "orderProcessor"
        )
        assert failure(await engine.client.task("orders").trigger("missing")) == djobs.InstanceNotFoundError(
            "orders", "missing"
        )


def test_definition_mistakes_raise_at_make() -> None:
    with pytest.raises(djobs.ValidationError, match=r"state must be a msgspec\.Struct"):
        djobs.Task.make("t", state=dict, event=Tick, on_event=lambda e, c: None, execute=lambda c: None)

    class Untagged(msgspec.Struct):
        a: int

    class Untagged2(msgspec.Struct):
        b: int

    with pytest.raises(djobs.ValidationError, match="union of structs made with tag=True"):
        djobs.Task.make(
            "t", state=Count, event=Untagged | Untagged2, on_event=lambda e, c: None, execute=lambda c: None
        )
    with pytest.raises(djobs.ValidationError, match="job name"):
        djobs.Task.make("a:b", state=Count, event=Tick, on_event=lambda e, c: None, execute=lambda c: None)


# -- body forms --------------------------------------------------------------------------------


@pytest.mark.trio
async def test_handlers_take_every_body_form(autojump_clock: trio.testing.MockClock) -> None:
    class Deps(msgspec.Struct):
        step: int

    def on_event(event: Tick, ctx: djobs.TaskEventContext[Count]) -> FutureResult[None, djobs.ExecutionError]:
        ctx.set_state(Count(1))
        ctx.schedule("1 minute")
        return FutureResult.from_value(None)

    def execute(ctx: djobs.TaskContext[Count]) -> RequiresContextFutureResult[None, djobs.ExecutionError, Deps]:
        def use(deps: Deps) -> FutureResult[None, djobs.ExecutionError]:
            ctx.update_state(lambda s: Count(s.n + deps.step))
            return FutureResult.from_value(None)

        return RequiresContextFutureResult(use)

    async def on_idle(ctx: djobs.TaskContext[Count]) -> Result[None, Any]:
        ctx.update_state(lambda s: Count(s.n * 10))
        return Success(None)

    job = djobs.Task.make("forms", state=Count, event=Tick, on_event=on_event, execute=execute, on_idle=on_idle)
    async with open_test_engine([job], services=Deps(step=4)) as engine:
        await engine.client.task(job).send(id="a", event=Tick())
        await advance_to(engine, T0 + timedelta(minutes=2))
        assert success(await engine.client.task(job).get_state("a")).state == Count(50)


# -- an alarm's lease and row come with its claim ----------------------------------------------


class _SlowClaimLayer:
    """A storage layer whose claims of alarm runs take `seconds` after their transaction."""

    def __init__(self, inner: djobs.storage.StorageLayer, seconds: float) -> None:
        self._inner = inner
        self._seconds = seconds

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[djobs.storage.Storage]:
        async with self._inner.open() as inner:
            yield cast(djobs.storage.Storage, _SlowClaim(inner, self._seconds))

    def open(self) -> AbstractAsyncContextManager[djobs.storage.Storage]:
        return self._open()


class _SlowClaim:
    def __init__(self, inner: djobs.storage.Storage, seconds: float) -> None:
        self._inner = inner
        self._seconds = seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def claim_alarm_runs(self, *args: Any) -> list[djobs.storage.ClaimedAlarm]:
        claimed: list[djobs.storage.ClaimedAlarm] = await self._inner.claim_alarm_runs(*args)  # type: ignore[attr-defined]
        await trio.sleep(self._seconds)
        return claimed


class Log(msgspec.Struct):
    entries: list[str] = msgspec.field(default_factory=list)


def log_event(event: str, ctx: djobs.TaskEventContext[Log]) -> None:
    state = ctx.state or Log()
    ctx.set_state(Log([*state.entries, event]))
    if event == "first":
        ctx.schedule(timedelta(hours=1))


def log_execute(ctx: djobs.TaskContext[Log]) -> Log:
    assert ctx.state is not None
    return Log([*ctx.state.entries, "execute"])


logger_task = djobs.Task.make("logger", state=Log, event=str, on_event=log_event, execute=log_execute)


@pytest.mark.trio
@pytest.mark.parametrize("on_file", [False, True], ids=["memory", "sqlite-file"])
async def test_an_event_sent_while_its_alarm_is_claimed_runs_after_the_execute_on_its_state(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, on_file: bool
) -> None:
    # The claim takes the instance's lease and row; while it commits (1 s here) an event
    # arrives. The execute runs first, from the row the claim read, and the event after it,
    # from the execute's state: none of the three changes is lost or reordered.
    inner = djobs.sqlite(tmp_path / "jobs.db") if on_file else djobs.memory()
    async with open_test_engine([logger_task], storage=_SlowClaimLayer(inner, 1.0)) as engine:
        client = engine.client.task(logger_task)
        success(await client.send(id="a", event="first"))
        await trio.sleep(3600 + 0.5)  # the alarm is claimed; its claim is still returning
        success(await client.send(id="a", event="second"))
        await engine.wait_idle()
        assert success(await client.get_state("a")).state == Log(["first", "execute", "second"])
        assert success(await client.status("a")) == djobs.TaskStatus("idle", None, 2)


@pytest.mark.trio
async def test_events_sent_to_one_instance_at_once_are_handled_in_the_order_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handled: list[str] = []

    async def on_event(event: Plan, ctx: djobs.TaskEventContext[Notes]) -> None:
        if event.note == "first":
            await trio.sleep(1)  # the other events arrive meanwhile and wait on the instance
        handled.append(event.note)
        ctx.set_state(Notes(event.note))

    def execute(ctx: djobs.TaskContext[Notes]) -> None:
        return None

    job = djobs.Task.make("ordered", state=Notes, event=Plan, on_event=on_event, execute=execute)
    async with open_test_engine([job]) as engine:
        client = engine.client.task(job)

        async def send(note: str) -> None:
            success(await client.send(id="a", event=Plan(note)))

        async with trio.open_nursery() as senders:
            for note in ["first", "second", "third", "fourth"]:
                senders.start_soon(send, note)
                await trio.sleep(0.1)  # each sent after the one before
        assert handled == ["first", "second", "third", "fourth"]
        assert success(await client.get_state("a")).state == Notes("fourth")


@pytest.mark.trio
@pytest.mark.parametrize("on_file", [False, True], ids=["memory", "sqlite-file"])
async def test_an_event_sent_while_a_claimed_alarm_waits_for_a_slot_survives_the_execute(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, on_file: bool
) -> None:
    # The claim took the instance's lease and row, and its execute waits for the one
    # concurrency slot (another instance's event holds it). An event sent meanwhile must run
    # after the execute: run first, its acknowledged change was written over by the execute's
    # commit of the row the claim had read (the crash harness's "acknowledged event is not
    # in the task's state").
    gate = trio.Event()

    async def hold_or_log(event: str, ctx: djobs.TaskEventContext[Log]) -> None:
        if event == "hold":
            await gate.wait()
        log_event(event, ctx)

    gated = djobs.Task.make("gated", state=Log, event=str, on_event=hold_or_log, execute=log_execute)
    storage = djobs.sqlite(tmp_path / "jobs.db") if on_file else djobs.memory()
    async with open_test_engine([gated], storage=storage, max_concurrency=1) as engine:
        client = engine.client.task(gated)
        success(await client.send(id="a", event="first"))  # its alarm is due in an hour

        async def send(instance: str, event: str) -> None:
            success(await client.send(id=instance, event=event))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, "b", "hold")  # takes the only slot until the gate opens
            await trio.sleep(3600 + 0.5)  # "a"'s alarm is claimed; its execute waits for the slot
            nursery.start_soon(send, "a", "second")
            await trio.sleep(1)
            gate.set()
        await engine.wait_idle()
        assert success(await client.get_state("a")).state == Log(["first", "execute", "second"])
        assert success(await client.status("a")) == djobs.TaskStatus("idle", None, 2)
