"""Hostile input: every client verb returns its typed error or succeeds; nothing else escapes,
and storage stays consistent."""

from __future__ import annotations

import os
import random
import unicodedata
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from types import UnionType
from typing import Any, get_args, get_origin, get_type_hints

import httpx
import msgspec
import pytest
import trio
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from postgres_support import STORAGE_KINDS, drop_schema, dropped_after, new_schema_name, postgres_dsn, storage_layer
from returns.future import FutureResult
from returns.io import IOFailure, IOSuccess

import djobs
import djobs.storage
import djobs.testing
import djobs.tracking
from djobs._clock import to_datetime
from djobs.storage._inspect import is_dsn
from djobs.testing import failure, open_test_engine, success


class Profile(msgspec.Struct):
    name: str
    tags: list[str] = []
    score: int = 0
    seen_at: datetime | None = None


def keep(ctx: djobs.ContinuousContext[Profile]) -> None:
    pass


profiles = djobs.Continuous.make("profiles", state=Profile, schedule=djobs.every("1 hour"), execute=keep)

hostile_ids = st.one_of(
    st.text(max_size=40),
    st.just(""),
    st.just("x" * 10_240),
    st.just("nul\x00byte"),
    st.just("'; DROP TABLE instances; --"),
    st.just("continuous:profiles:other"),
    st.sampled_from(["\u202e", "🙂" * 50, "\ud7ff", " ", "%s", "\\", "a:b:c"]),
    st.integers(),
    st.none(),
    st.binary(max_size=10),
)


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"name": value}
    return value


hostile_inputs = st.one_of(
    st.builds(Profile, name=st.text(max_size=20), tags=st.lists(st.text(max_size=5), max_size=5)),
    st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=8), st.none()), max_size=4),
    st.just({"name": "x" * 1_000_000}),
    st.just(nested(10_000)),
    st.just({"name": 1}),
    st.just(Profile(name=123)),  # type: ignore[arg-type]  # msgspec does not check at construction
    st.just({"name": "ok", "score": 2**70}),
    st.just({"name": "ok", "seen_at": "not a date"}),
    st.just(float("nan")),
    st.just(object()),
    st.none(),
)


async def check_call(call: Any) -> Any:
    result = await call
    assert isinstance(result, IOSuccess | IOFailure), result
    if isinstance(result, IOFailure):
        error = djobs.testing.failure(result)
        assert isinstance(error, djobs.JobError), error
        assert error.message
    return result


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ids=st.lists(hostile_ids, min_size=1, max_size=4), inputs=st.lists(hostile_inputs, min_size=1, max_size=3))
def test_continuous_verbs_never_raise(ids: list[Any], inputs: list[Any]) -> None:
    async def scenario() -> None:
        async with open_test_engine([profiles], start=datetime(2026, 1, 1, tzinfo=UTC)) as engine:
            client = engine.client.continuous(profiles)
            started: set[str] = set()
            for instance_id in ids:
                for value in inputs:
                    result = await check_call(client.start(id=instance_id, input=value))
                    if isinstance(result, IOSuccess):
                        started.add(instance_id)
                await check_call(client.status(instance_id))
                await check_call(client.get_state(instance_id))
                await check_call(client.trigger(instance_id))
                await check_call(engine.client.continuous("no such job").status(instance_id))
            await engine.wait_idle()
            # Storage is consistent: every started instance reads back valid state; terminate cleans up.
            for instance_id in started:
                state = success(await client.get_state(instance_id)).state
                assert isinstance(state, Profile) and isinstance(state.name, str)
                assert success(await client.terminate(instance_id)).terminated
                assert success(await client.status(instance_id)).status == "not_found"

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.trio
async def test_sql_fragments_are_just_ids(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([profiles]) as engine:
        client = engine.client.continuous(profiles)
        evil = "x'; DELETE FROM instances; --"
        await client.start(id="innocent", input=Profile("a"))
        assert success(await client.start(id=evil, input=Profile("b"))).created
        assert success(await client.get_state(evil)).state.name == "b"
        assert success(await client.get_state("innocent")).state.name == "a"


@pytest.mark.trio
async def test_huge_state_round_trips(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([profiles]) as engine:
        client = engine.client.continuous(profiles)
        big = Profile("big", tags=["t" * 100] * 10_000)
        assert success(await client.start(id="big", input=big)).created
        assert success(await client.get_state("big")).state == big


# -- every kind's verbs: the typed error each one declares, or success --------------------------


def declared_errors(verb: Any) -> tuple[type[BaseException], ...]:
    """The error types a client verb's signature declares: ``FutureResult[T, E1 | E2 | ...]``."""
    returned = get_type_hints(verb)["return"]
    assert get_origin(returned) is FutureResult, returned
    errors = get_args(returned)[1]
    return tuple(get_args(errors)) if isinstance(errors, UnionType) else (errors,)


async def call(verb: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a client verb; it must succeed or fail with an error its signature names, with a message."""
    result = await verb(*args, **kwargs)
    assert isinstance(result, IOSuccess | IOFailure), result
    if isinstance(result, IOFailure):
        error = djobs.testing.failure(result)
        assert isinstance(error, declared_errors(verb)), f"{verb.__qualname__} gave {error!r}"
        assert isinstance(error.message, str) and error.message
    return result


def acked(result: Any) -> bool:
    return isinstance(result, IOSuccess)


def sqlite_in_memory() -> djobs.storage.StorageLayer:
    """SQLite in memory, for the tests of what SQLite itself does (its integrity check, its pages, its group commit)."""
    return djobs.sqlite(":memory:")


async def assert_consistent(engine: Any, definitions: list[Any]) -> None:
    """The database passes its integrity check and every stored row decodes as its job's types."""
    storage = engine.storage
    assert isinstance(storage, djobs.storage.SqliteStorage)
    db = storage.connection
    assert [r[0] for r in db.execute("PRAGMA integrity_check")] == ["ok"]
    by_key = {(d.kind, d.name): d for d in definitions}
    for key, kind, name, state in db.execute("SELECT key, kind, name, state FROM instances"):
        definition = by_key[(kind, name)]
        assert key.startswith(f"{kind}:{name}:")
        if state is not None:
            msgspec.json.decode(state, type=definition.state)
    jobs = {d.name: d for d in definitions if isinstance(d, djobs.Job)}
    jobs.update({d.job.name: d.job for d in definitions if isinstance(d, djobs.CronJob)})
    for name, params, result, error, status in db.execute("SELECT name, params, result, error, status FROM jobs"):
        job = jobs[name]
        msgspec.json.decode(params, type=job.params)
        if result is not None:
            msgspec.json.decode(result, type=job.result)
        if error is not None:
            decoded = msgspec.json.decode(error, type=dict[str, str])
            assert set(decoded) == {"tag", "message"}
        assert status in ("pending", "running", "completed", "failed", "cancelled")
    # Nothing dangles: alarms and idempotency keys belong to stored instances.
    dangling = (
        "SELECT key FROM alarms WHERE key NOT IN (SELECT key FROM instances) "
        "UNION SELECT key FROM event_ids WHERE key NOT IN (SELECT key FROM instances)"
    )
    orphans = list(db.execute(dangling))
    assert orphans == []


def mostly(valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid values three times in four: hostile ones early in a scenario must not hide the paths after them."""
    return st.one_of(valid, valid, valid, hostile)


usable_ids = mostly(st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s), hostile_ids)


def run_scenario(scenario: Any) -> None:
    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


class Tree(msgspec.Struct):
    label: str
    kids: list[Tree] = []


class Sample(msgspec.Struct):
    sensor: str
    value: float
    tree: Tree | None = None


class Samples(msgspec.Struct):
    sensors: list[str] = []
    total: float = 0.0


def fold(ctx: djobs.DebounceEventContext[Sample, Samples]) -> Samples:
    state = ctx.state or Samples()
    return Samples([*state.sensors, ctx.event.sensor], state.total + ctx.event.value)


def store_samples(ctx: djobs.DebounceContext[Samples]) -> None:
    pass


samples = djobs.Debounce.make(
    "samples", event=Sample, state=Samples, on_event=fold, execute=store_samples, flush_after="1 minute", max_events=3
)


def tree(depth: int) -> Any:
    value: Any = {"label": "leaf"}
    for _ in range(depth):
        value = {"label": "node", "kids": [value]}
    return value


hostile_samples = mostly(
    st.builds(Sample, sensor=st.text(max_size=10), value=st.floats(allow_nan=False, allow_infinity=False)),
    st.one_of(
        st.builds(Sample, sensor=st.just("big"), value=st.just(1.0), tree=st.just(Tree("x" * 1_000_000))),
        st.just({"sensor": "deep", "value": 1, "tree": tree(5_000)}),
        st.just({"sensor": "s", "value": "NaN"}),
        st.just({"sensor": "s", "value": float("inf")}),
        st.just({"sensor": "s"}),
        st.just({"sensor": 1, "value": 1}),
        st.just(Sample(sensor=None, value=1.0)),  # type: ignore[arg-type]  # msgspec does not check at construction
        st.just(Samples()),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
        st.none(),
        st.just(object()),
    ),
)
hostile_event_ids = mostly(
    st.one_of(st.none(), st.uuids().map(str)),
    st.one_of(st.text(max_size=12), st.just(""), st.just("e" * 10_000), st.integers(), st.just("nul\x00")),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_debounce_verbs_never_raise(data: st.DataObject) -> None:
    async def scenario() -> None:
        async with open_test_engine([samples], storage=sqlite_in_memory()) as engine:
            client = engine.client.debounce(samples)
            for instance_id in data.draw(st.lists(usable_ids, min_size=1, max_size=3)):
                added = 0
                for _ in range(data.draw(st.integers(1, 5))):
                    event, event_id = data.draw(hostile_samples), data.draw(hostile_event_ids)
                    added += acked(await call(client.add, id=instance_id, event=event, event_id=event_id))
                status = await call(client.status, instance_id)
                if acked(status) and added:
                    assert success(status).status in ("debouncing", "idle")
                await call(client.get_state, instance_id)
                await call(client.flush, instance_id)
                await call(client.add, id=instance_id, event=Sample("after", 1.0))
                await call(client.clear, instance_id)
                await call(engine.client.debounce("no such job").add, id=instance_id, event=Sample("s", 1.0))
            await trio.sleep(3600)  # every flush_after alarm fires
            await engine.wait_idle()
            await assert_consistent(engine, [samples])

    run_scenario(scenario)


class Note(msgspec.Struct, tag=True):
    text: str


class Plan(msgspec.Struct, tag=True):
    """Schedule ``execute``: after ``seconds``, at ``at``, or at ``when`` as given (whatever it is)."""

    when: str | int | None = None
    at: datetime | None = None
    seconds: float | None = None


class Agenda(msgspec.Struct):
    notes: list[str] = []
    executed: int = 0


def on_agenda(event: Note | Plan, ctx: djobs.TaskEventContext[Agenda]) -> None:
    state = ctx.state or Agenda()
    if isinstance(event, Note):
        ctx.set_state(Agenda([*state.notes, event.text], state.executed))
        return
    ctx.set_state(state)
    if event.seconds is not None:
        ctx.schedule(timedelta(seconds=event.seconds))  # may overflow: the sender gets an ExecutionError
    elif event.at is not None:
        ctx.schedule(event.at)
    else:
        ctx.schedule(event.when)  # type: ignore[arg-type]  # a bare number or bad text: a ValidationError


def run_agenda(ctx: djobs.TaskContext[Agenda]) -> None:
    state = ctx.state or Agenda()
    ctx.set_state(Agenda(state.notes, state.executed + 1))


agenda = djobs.Task.make("agenda", state=Agenda, event=Note | Plan, on_event=on_agenda, execute=run_agenda)

far_times = st.one_of(
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12))])),
    st.sampled_from(
        [
            datetime.min.replace(tzinfo=UTC),
            datetime.max.replace(tzinfo=UTC),
            datetime(9999, 12, 30, tzinfo=UTC),
            datetime(1970, 1, 1, tzinfo=UTC),
        ]
    ),
    st.datetimes(),  # naive: refused
)
hostile_durations = st.one_of(
    st.sampled_from(
        [
            "5 minutes",
            "0 s",
            "-5 minutes",
            "1e400 seconds",
            "99999999999999 weeks",
            "",
            "five minutes",
            "5",
            "\x00",
            "10 fortnights",
            "1h30m",
            "nan s",
            "∞ s",
            "\u0665 minutes",
        ]
    ),
    st.text(max_size=12),
    st.integers(min_value=-(2**70), max_value=2**70),
)
hostile_task_events = mostly(
    st.one_of(
        st.builds(Note, text=st.text(max_size=20)),
        st.builds(Plan, when=st.sampled_from(["1 minute", "2 hours", "1 day"])),
    ),
    st.one_of(
        st.just(Note("x" * 1_000_000)),
        st.builds(Plan, when=hostile_durations),
        st.builds(Plan, at=far_times),
        st.builds(Plan, seconds=st.floats()),
        st.just({"type": "Note", "text": "from a dict"}),
        st.just({"type": "Nope"}),
        st.just({"text": "no tag"}),
        st.just(tree(5_000)),
        st.none(),
    ),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_task_verbs_never_raise(data: st.DataObject) -> None:
    async def scenario() -> None:
        async with open_test_engine([agenda], storage=sqlite_in_memory()) as engine:
            client = engine.client.task(agenda)
            ids = data.draw(st.lists(usable_ids, min_size=1, max_size=3))
            for instance_id in ids:
                for _ in range(data.draw(st.integers(1, 5))):
                    event, event_id = data.draw(hostile_task_events), data.draw(hostile_event_ids)
                    before = await call(client.get_state, instance_id)
                    sent = await call(client.send, id=instance_id, event=event, event_id=event_id)
                    if not acked(sent) and acked(before):
                        # A refused event changes nothing (an execute may have run meanwhile: notes only).
                        after = success(await call(client.get_state, instance_id))
                        assert after.state.notes == success(before).state.notes
                await call(client.status, instance_id)
                await call(client.trigger, instance_id)
                await call(client.get_state, instance_id)
                await call(engine.client.task("no such job").send, id=instance_id, event=Note("n"))
            await trio.sleep(7 * 24 * 3600)  # alarms within a week fire
            await engine.wait_idle()
            await assert_consistent(engine, [agenda])
            for instance_id in ids:
                await call(client.terminate, instance_id, reason="done")

    run_scenario(scenario)


class Order(msgspec.Struct):
    id: str
    qty: int
    tree: Tree | None = None


class Receipt(msgspec.Struct):
    id: str
    total: int


def place_order(params: Order, ctx: djobs.JobContext) -> Receipt:
    if params.qty < 0:
        raise ValueError("negative quantity")
    return Receipt(params.id, params.qty * 2**40)  # may not fit: the result fails validation, the call does not


place = djobs.Job.make(
    "place",
    params=Order,
    result=Receipt,
    execute=place_order,
    on="order.created",
    retry=djobs.Retry(max_attempts=2, delay="1 second"),
)
nightly = djobs.CronJob.make("nightly", schedule=djobs.cron("0 3 * * *"), job=place, params=Order("nightly", 1))
queue_jobs: list[Any] = [place, nightly]

hostile_orders = mostly(
    st.builds(Order, id=st.text(max_size=10), qty=st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    st.one_of(
        st.just({"id": "deep", "qty": 1, "tree": tree(5_000)}),
        st.just(Order("huge", 1, Tree("x" * 1_000_000))),
        st.just({"id": "x", "qty": 2**64}),
        st.just({"id": "x", "qty": "1"}),
        st.just({"id": None, "qty": 1}),
        st.just(Receipt("wrong", 1)),
        st.none(),
        st.just(object()),
    ),
)
hostile_texts = mostly(
    st.one_of(st.none(), st.text(min_size=1, max_size=10).filter(lambda s: "\x00" not in s)),
    st.one_of(st.just(""), st.just("t" * 10_000), st.just("nul\x00"), st.integers(), st.just("'; DROP TABLE jobs; --")),
)
hostile_ats = mostly(
    st.none(),
    st.one_of(
        far_times, st.just(datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)), st.just("tomorrow"), st.integers()
    ),
)
queue_delays = st.one_of(hostile_durations, st.just(timedelta(days=3_000_000)), st.just(timedelta.max))
hostile_ints = mostly(
    st.integers(min_value=1, max_value=5),
    st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.booleans(), st.just("3"), st.none(), st.just(0)),
)
hostile_statuses = st.one_of(st.none(), st.sampled_from(["pending", "running", "done", "", "PENDING"]), st.integers())
hostile_crons = mostly(st.sampled_from(["nightly", nightly]), st.one_of(hostile_texts, st.just(place)))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_queue_verbs_never_raise(data: st.DataObject) -> None:
    def draw(strategy: st.SearchStrategy[Any]) -> Any:
        return data.draw(strategy)

    async def scenario() -> None:
        async with open_test_engine(queue_jobs, storage=sqlite_in_memory()) as engine:
            client = engine.client
            job = client.job(place)
            orders = draw(st.lists(hostile_orders, min_size=1, max_size=3))
            ids: list[Any] = [draw(hostile_texts), "0190b7a4-0000-7000-8000-000000000000"]
            for order in orders:
                await call(job.now, order, correlation_id=draw(hostile_texts), tenant_id=draw(hostile_texts))
                await call(job.now, order, persist=False)
                at, delay = draw(
                    st.one_of(
                        st.tuples(hostile_ats, st.none()),
                        st.tuples(st.none(), queue_delays),
                        st.tuples(hostile_ats, queue_delays),
                    )
                )
                enqueued = await call(
                    job.later,
                    order,
                    at=at,
                    delay=delay,
                    correlation_id=draw(hostile_texts),
                    tenant_id=draw(hostile_texts),
                    priority=draw(hostile_ints),
                    idempotency_key=draw(hostile_texts),
                )
                if acked(enqueued):
                    ids.append(success(enqueued))
                event = draw(mostly(st.just("order.created"), hostile_texts))
                await call(
                    client.send_event,
                    event,
                    order,
                    tenant_id=draw(hostile_texts),
                    correlation_id=draw(hostile_texts),
                    idempotency_key=draw(hostile_texts),
                )
            await call(
                job.batch,
                orders,
                concurrency=draw(hostile_ints),
                stop_on_error=draw(st.booleans()),
                correlation_id=draw(hostile_texts),
            )
            await call(client.job("no such job").later, orders[0])
            for job_id in ids:
                await call(client.jobs.status, job_id)
                await call(client.jobs.cancel, job_id)
                await call(client.jobs.retry, job_id)
            await call(
                client.jobs.list,
                status=draw(hostile_statuses),
                name=draw(hostile_texts),
                correlation_id=draw(hostile_texts),
                tenant_id=draw(hostile_texts),
                limit=draw(hostile_ints),
                after=draw(hostile_texts),
            )
            tenant = draw(hostile_texts)
            for crons in (client.crons, client.for_tenant(tenant).crons):
                cron = draw(hostile_crons)
                await call(crons.get, cron)
                await call(crons.next_runs, cron, draw(hostile_ints))
                await call(crons.disable, cron)
                await call(crons.enable, cron)
                await call(crons.list)
            scoped = client.for_tenant(tenant)
            await call(scoped.job(place).later, orders[0])
            await call(scoped.jobs.list)
            for job_id in ids:
                await call(scoped.jobs.status, job_id)
            await trio.sleep(2 * 24 * 3600)  # later jobs, retries and two nightly runs
            await engine.wait_idle()
            await assert_consistent(engine, queue_jobs)

    run_scenario(scenario)


cron_tokens = st.sampled_from(
    [
        "*",
        "0",
        "59",
        "60",
        "*/5",
        "1-5",
        "5-1",
        "L",
        "1#2",
        "MON",
        "jan",
        "?",
        "-1",
        "3,",
        ",",
        "/",
        "*/0",
        "0-59/15",
        "31",
        "2",
        "30",
        "@daily",
        "\x00",
        "\u0663",
    ]
)
cron_expressions = st.one_of(
    st.lists(cron_tokens, min_size=0, max_size=7).map(" ".join),
    st.text(max_size=30),
    st.integers(),
    st.none(),
)
zones = st.one_of(
    st.sampled_from(
        [
            "UTC",
            "Europe/Berlin",
            "America/New_York",
            "Australia/Lord_Howe",
            "America",
            "../../etc/passwd",
            "",
            "Mars/Olympus_Mons",
            "utc",
        ]
    ),
    st.text(max_size=20),
    st.none(),
    st.integers(),
)


@settings(max_examples=200, deadline=None)
# The day before the first moment is before datetime's range (its local time in New York too).
@example(expression="@daily", tz="America/New_York", after=datetime(1, 1, 2, tzinfo=UTC))
@given(
    expression=cron_expressions,
    tz=zones,
    after=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9000, 1, 1), timezones=st.just(UTC)),
)
def test_cron_expressions_parse_or_give_a_validation_error(expression: Any, tz: Any, after: datetime) -> None:
    try:
        schedule = djobs.cron(expression, tz=tz)
    except djobs.ValidationError as exc:
        assert exc.message
        with pytest.raises(djobs.ValidationError):
            djobs.CronJob.make("c", schedule=djobs.cron(expression, tz=tz), job=place, params=Order("c", 1))
        return
    # A schedule that parses has a next fire time after any moment, far past or far future.
    start = round(after.timestamp() * 1000)
    nxt = schedule.next_after(start)
    assert nxt > start
    assert djobs.CronJob.make("c", schedule=schedule, job=place, params=Order("c", 1)).schedule == schedule


@pytest.mark.trio
async def test_later_refuses_times_after_the_year_9999(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine(queue_jobs) as engine:
        job = engine.client.job(place)
        last_instant = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
        assert isinstance(djobs.testing.failure(await job.later(Order("o", 1), at=last_instant)), djobs.ValidationError)
        in_8000_years = timedelta(days=3_000_000)
        assert isinstance(
            djobs.testing.failure(await job.later(Order("o", 1), delay=in_8000_years)), djobs.ValidationError
        )
        assert success(await engine.client.jobs.list()) == []


# -- text no storage can hold, on every verb and every storage (issue: surrogates and NUL) ----------


class Named(msgspec.Struct):
    name: str
    note: str = ""


class Greeting(msgspec.Struct):
    to: str


def greet(params: Named, ctx: djobs.JobContext) -> Greeting:
    if params.name.startswith("fail"):
        # A message a storage cannot hold as it is (a lone surrogate, a NUL): recorded, cleaned.
        raise ValueError(f"cannot greet {params.name}" + ("\ud800\x00" if "surrogate" in params.name else ""))
    return Greeting(params.name)


def keep_named(ctx: djobs.ContinuousContext[Named]) -> None:
    pass


def fold_named(ctx: djobs.DebounceEventContext[Named, Named]) -> Named:
    return Named(ctx.event.name, (ctx.state or Named("")).note + "+")


def flush_named(ctx: djobs.DebounceContext[Named]) -> None:
    pass


def on_named(event: Named, ctx: djobs.TaskEventContext[Named]) -> None:
    ctx.set_state(event)


def run_named(ctx: djobs.TaskContext[Named]) -> None:
    pass


greeter = djobs.Job.make("greeter", params=Named, result=Greeting, execute=greet, on="greet", retry=djobs.Retry(1))
watcher = djobs.Continuous.make("watcher", state=Named, schedule=djobs.every("1 hour"), execute=keep_named)
gatherer = djobs.Debounce.make(
    "gatherer", event=Named, state=Named, on_event=fold_named, execute=flush_named, flush_after="1 hour"
)
keeper = djobs.Task.make("keeper", state=Named, event=Named, on_event=on_named, execute=run_named)
nightly_greeting = djobs.CronJob.make(
    "nightly-greeting", schedule=djobs.cron("0 3 * * *"), job=greeter, params=Named("night")
)


async def visit(params: Named, ctx: djobs.WorkflowContext) -> Named:
    return params


visitor = djobs.Workflow.make("visitor", input=Named, result=Named, execute=visit)
text_jobs: list[Any] = [greeter, watcher, gatherer, keeper, nightly_greeting, visitor]

UNSTORABLE = ["user-\ud800", "\udfff", "a\x00b", "\x00", "emoji-\ud83d", "x\udc80y"]


def unstorable(text: object) -> bool:
    """Whether `text` holds what no storage keeps in a text column: a NUL or a lone surrogate."""
    if not isinstance(text, str):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return "\x00" in text


def unencodable(text: object) -> bool:
    """Whether `text` cannot be written as UTF-8 at all (a lone surrogate); NUL is fine inside a payload."""
    return isinstance(text, str) and unstorable(text.replace("\x00", ""))


hostile_text = st.one_of(
    st.sampled_from(UNSTORABLE),
    st.tuples(st.text(max_size=4), st.sampled_from(["\ud800", "\x00", "\udbff", "\udc00"]), st.text(max_size=4)).map(
        "".join
    ),
    st.text(st.characters(exclude_categories=[]), max_size=8),  # surrogates included
    st.text(min_size=1, max_size=8),
)


async def expect(verb: Any, refused: bool, *args: Any, **kwargs: Any) -> Any:
    """Call a verb: a `ValidationError` if `refused`, else success or an error the verb declares."""
    result = await call(verb, *args, **kwargs)
    if refused:
        error = djobs.testing.failure(result)
        assert isinstance(error, djobs.ValidationError), f"{verb.__qualname__}: {error!r}"
    return result


async def seed(engine: Any, tag: str) -> str:
    """Store one of everything under `tag`; `assert_seeded` checks it is all still there."""
    client = engine.client
    assert success(await client.continuous(watcher).start(id=f"w-{tag}", input=Named(tag)))
    assert success(await client.debounce(gatherer).add(id=f"g-{tag}", event=Named(tag)))
    assert success(await client.task(keeper).send(id=f"k-{tag}", event=Named(tag)))
    return success(await client.job(greeter).later(Named(tag), delay="1 day", idempotency_key=tag))


async def assert_seeded(engine: Any, tag: str, job_id: str) -> None:
    client = engine.client
    assert success(await client.continuous(watcher).get_state(f"w-{tag}")).state == Named(tag)
    assert success(await client.debounce(gatherer).get_state(f"g-{tag}")).state == Named(tag, "+")
    assert success(await client.task(keeper).get_state(f"k-{tag}")).state == Named(tag)
    info = success(await client.jobs.status(job_id))
    assert info.status == "pending" and info.params == Named(tag)


async def every_verb_with(engine: Any, text: str) -> None:
    """Every client verb with `text` in each of its text parameters and inside its payloads."""
    bad, bad_payload = unstorable(text), unencodable(text)
    client = engine.client
    continuous, debounce, task = client.continuous(watcher), client.debounce(gatherer), client.task(keeper)
    job, jobs = client.job(greeter), client.jobs
    for verb in (
        continuous.status,
        continuous.get_state,
        continuous.trigger,
        continuous.pause,
        continuous.resume,
        continuous.terminate,
    ):
        await expect(verb, bad, text)
    await expect(continuous.start, bad, id=text, input=Named("ok"))
    await expect(continuous.start, bad_payload, id="fine", input=Named(text))
    await expect(continuous.start, bad_payload, id="fine-dict", input={"name": text})
    await expect(continuous.terminate, False, "fine", reason=text)  # a free-form reason is cleaned, not refused
    await expect(client.for_tenant(text).continuous(watcher).status, bad, "x")
    for verb in (debounce.status, debounce.get_state, debounce.flush, debounce.clear):
        await expect(verb, bad, text)
    await expect(debounce.add, bad, id=text, event=Named("ok"))
    await expect(debounce.add, bad, id="fine", event=Named("ok"), event_id=text)
    await expect(debounce.add, bad_payload, id="fine", event=Named(text))
    for verb in (task.status, task.get_state, task.trigger, task.terminate):
        await expect(verb, bad, text)
    await expect(task.send, bad, id=text, event=Named("ok"))
    await expect(task.send, bad, id="fine", event=Named("ok"), event_id=text)
    await expect(task.send, bad_payload, id="fine", event=Named(text))
    await expect(client.for_tenant(text).task(keeper).send, bad, id="x", event=Named("ok"))
    await expect(job.later, bad_payload, Named(text))
    await expect(job.later, bad, Named("ok"), correlation_id=text)
    await expect(job.later, bad, Named("ok"), tenant_id=text)
    await expect(job.later, bad, Named("ok"), idempotency_key=text)
    await expect(job.later_many, bad_payload, [Named("ok"), Named(text)])
    await expect(job.later_many, bad, [Named("ok")], correlation_id=text)
    await expect(job.now, bad_payload, Named(text), persist=True)
    await expect(job.now, bad, Named("ok"), tenant_id=text)
    await expect(job.batch, bad, [Named("ok")], correlation_id=text)
    await expect(client.for_tenant(text).job(greeter).later, bad, Named("ok"))
    await expect(client.send_event, bad_payload, "greet", Named(text))
    for name in ("tenant_id", "correlation_id", "idempotency_key"):
        await expect(client.send_event, bad, "greet", Named("ok"), **{name: text})
    for verb in (jobs.status, jobs.cancel, jobs.retry):
        await expect(verb, bad, text)
    for name in ("name", "correlation_id", "tenant_id", "after"):
        await expect(jobs.list, bad, **{name: text})
    await expect(client.for_tenant(text).jobs.list, bad)
    await expect(client.for_tenant(text).jobs.status, bad, "0190b7a4-0000-7000-8000-000000000000")
    flow = client.workflow(visitor)
    for verb in (flow.status, flow.result, flow.cancel):
        await expect(verb, bad, text)
    await expect(flow.start, bad, id=text, input=Named("ok"))
    await expect(flow.start, bad_payload, id="fine-flow", input=Named(text))
    await expect(flow.signal, bad, text, "go", None)
    await expect(flow.signal, bad, "fine-flow", text, None)
    await expect(flow.signal, bad_payload, "fine-flow", "go", Named(text))
    await expect(flow.list, bad, after=text)
    await expect(client.for_tenant(text).workflow(visitor).list, bad)
    letters = client.dead_letters
    for verb in (letters.get, letters.retry, letters.discard):
        await expect(verb, bad, text)
    for name in ("name", "tenant_id", "after"):
        await expect(letters.list, bad, **{name: text})
    await expect(client.for_tenant(text).dead_letters.list, bad)
    await call(client.crons.get, text)
    await call(client.crons.next_runs, text, 2)
    await call(client.for_tenant(text).crons.list)


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_unstorable_text_is_a_validation_error_on_every_verb_and_storage(kind: str, tmp_path: Any) -> None:
    schema = new_schema_name() if kind == "postgres" else None
    tags = iter(range(10_000))

    @settings(max_examples=15 if kind == "postgres" else 25, deadline=None, database=None)
    @given(texts=st.lists(hostile_text, min_size=1, max_size=3))
    def property(texts: list[str]) -> None:
        async def scenario() -> None:
            layer = storage_layer(kind, str(tmp_path), schema)
            async with open_test_engine(text_jobs, storage=layer) as engine:
                tag = f"seed-{next(tags)}"
                job_id = await seed(engine, tag)
                for text in texts:
                    await every_verb_with(engine, text)
                await assert_seeded(engine, tag, job_id)
                # The engine is alive: a new call after all that works.
                assert success(await engine.client.task(keeper).send(id=f"after-{tag}", event=Named("x")))

        trio.run(scenario)

    with dropped_after(schema):
        property()


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_job_error_holding_unstorable_text_is_recorded_cleaned(kind: str, tmp_path: Any) -> None:
    schema = new_schema_name() if kind == "postgres" else None

    async def scenario() -> None:
        async with open_test_engine(text_jobs, storage=storage_layer(kind, str(tmp_path), schema)) as engine:
            job = engine.client.job(greeter)
            job_id = success(await job.later({"name": "fail-x", "note": "n"}))
            run = success(await job.now(Named("fail-now")))
            assert run.status == "failed"
            await engine.wait_idle()
            info = success(await engine.client.jobs.status(job_id))
            assert info.status == "failed" and info.error is not None
            assert "cannot greet fail-x" in info.error.message

    async def with_surrogate() -> None:
        async with open_test_engine(text_jobs, storage=storage_layer(kind, str(tmp_path), schema)) as engine:
            job = engine.client.job(greeter)
            job_id = success(await job.later(Named("fail-surrogate")))
            run = success(await job.now(Named("fail-surrogate-now")))
            assert run.status == "failed" and run.error is not None
            await engine.wait_idle()
            info = success(await engine.client.jobs.status(job_id))
            assert info.status == "failed" and info.error is not None
            assert info.error.message.endswith("cannot greet fail-surrogate\\ud800\\x00")
            assert info.attempts == 1  # the failure is the job's own, not a lost lease

    try:
        trio.run(scenario)
        trio.run(with_surrogate)
    finally:
        if schema is not None:
            drop_schema(postgres_dsn() or "", schema)


# -- type confusion: a struct of another class, a misspelt key ----------------------------------


class Person(msgspec.Struct):
    name: str
    address: Address | None = None


class Address(msgspec.Struct):
    city: str = ""


class Pet(msgspec.Struct):
    name: str


def keep_person(ctx: djobs.ContinuousContext[Person]) -> None:
    if ctx.state.name == "swap":
        ctx.set_state(Pet("rex"))  # type: ignore[arg-type]  # the mistake under test


def fold_person(ctx: djobs.DebounceEventContext[Person, Person]) -> Person:
    return ctx.event


def flush_person(ctx: djobs.DebounceContext[Person]) -> None:
    pass


def on_person(event: Person, ctx: djobs.TaskEventContext[Person]) -> None:
    ctx.set_state(event)


def run_person(ctx: djobs.TaskContext[Person]) -> None:
    pass


def hire(params: Person, ctx: djobs.JobContext) -> None:
    pass


people = djobs.Continuous.make("people", state=Person, schedule=djobs.every("1 hour"), execute=keep_person)
people_batches = djobs.Debounce.make(
    "people-batches", event=Person, state=Person, on_event=fold_person, execute=flush_person, flush_after="1 hour"
)
people_tasks = djobs.Task.make("people-tasks", state=Person, event=Person, on_event=on_person, execute=run_person)
hiring = djobs.Job.make("hiring", params=Person, execute=hire, on="person.hired")
typed_jobs: list[Any] = [people, people_batches, people_tasks, hiring]

confusions = [
    (Pet("Ada"), "Pet"),
    ({"nmae": "Ada"}, "nmae"),
    ({"name": "Ada", "address": {"ctiy": "Paris"}}, "ctiy"),
    ({"name": "Ada", "address": Pet("x")}, "address"),
]


@pytest.mark.trio
@pytest.mark.parametrize(("value", "named"), confusions)
async def test_a_foreign_struct_or_unknown_key_is_refused_by_every_typed_verb(
    autojump_clock: trio.testing.MockClock, value: Any, named: str
) -> None:
    async with open_test_engine(typed_jobs) as engine:
        client = engine.client
        verbs: list[Any] = [
            client.continuous(people).start(id="a", input=value),
            client.debounce(people_batches).add(id="a", event=value),
            client.task(people_tasks).send(id="a", event=value),
            client.job(hiring).later(value),
            client.job(hiring).now(value),
            client.job(hiring).later_many([Person("ok"), value]),
            client.job(hiring).batch([Person("ok"), value]),
            client.send_event("person.hired", value),
        ]
        for verb in verbs:
            error = djobs.testing.failure(await verb)
            assert isinstance(error, djobs.ValidationError), error
            assert named in error.message, error.message
        # Nothing of it was stored.
        assert success(await client.jobs.list()) == []
        assert success(await client.continuous(people).status("a")).status == "not_found"
        assert success(await client.task(people_tasks).status("a")).status == "not_found"


@pytest.mark.trio
async def test_a_dict_of_the_fields_stays_accepted(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine(typed_jobs) as engine:
        value = {"name": "Ada", "address": {"city": "Paris"}}
        assert success(await engine.client.continuous(people).start(id="a", input=value)).created
        state = success(await engine.client.continuous(people).get_state("a")).state
        assert state == Person("Ada", Address("Paris"))
        assert success(await engine.client.job(hiring).later(value))
        # The docs say so of an event too (a dict is accepted at run time; the type names the struct).
        assert success(await engine.client.debounce(people_batches).add(id="b", event=value))  # type: ignore[arg-type]
        assert success(await engine.client.debounce(people_batches).get_state("b")).state == Person(
            "Ada", Address("Paris")
        )
        assert success(await engine.client.task(people_tasks).send(id="t", event=value))  # type: ignore[arg-type]
        assert success(await engine.client.task(people_tasks).get_state("t")).state == Person("Ada", Address("Paris"))


@pytest.mark.trio
async def test_set_state_with_a_foreign_struct_fails_the_run(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine(typed_jobs) as engine:
        client = engine.client.continuous(people)
        assert success(await client.start(id="s", input=Person("swap")))
        await client.trigger("s")
        # The run failed; the state is the caller's, not the Pet's defaults.
        assert success(await client.get_state("s")).state == Person("swap")


class Shipment(msgspec.Struct):
    order_id: str
    address: str


class OrderId(msgspec.Struct):
    order_id: str


def ship(params: Shipment, ctx: djobs.JobContext) -> None:
    pass


def count(params: OrderId, ctx: djobs.JobContext) -> None:
    pass


@pytest.mark.trio
async def test_an_event_field_no_listener_knows_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    shipping = djobs.Job.make("shipping", params=Shipment, execute=ship, on="order.paid")
    counting = djobs.Job.make("counting", params=OrderId, execute=count, on="order.paid")
    async with open_test_engine([shipping, counting]) as engine:
        # A listener may read a part of the payload (counting reads order_id only)...
        assert success(await engine.client.send_event("order.paid", {"order_id": "1", "address": "x"})).delivered
        # ...but a field no listener knows is a misspelling.
        misspelt = await engine.client.send_event("order.paid", {"order_id": "1", "adress": "x"})
        assert "adress" in djobs.testing.failure(misspelt).message
        assert len(success(await engine.client.jobs.list())) == 2


# -- size ----------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_a_payload_above_the_limit_is_a_validation_error(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine(typed_jobs) as engine:
        big = Person("x" * (1 << 20))
        for verb in (
            engine.client.continuous(people).start(id="big", input=big),
            engine.client.debounce(people_batches).add(id="big", event=big),
            engine.client.task(people_tasks).send(id="big", event=big),
            engine.client.job(hiring).later(big),
            engine.client.send_event("person.hired", big),
        ):
            error = djobs.testing.failure(await verb)
            assert isinstance(error, djobs.ValidationError) and "at most 1048576" in error.message
        assert success(await engine.client.job(hiring).later(Person("x" * 1_000_000)))  # under 1 MiB


@pytest.mark.trio
async def test_the_payload_limit_is_an_engine_option(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine(typed_jobs, max_payload_bytes=4096) as engine:
        refused = await engine.client.job(hiring).later(Person("x" * 5000))
        assert "at most 4096" in djobs.testing.failure(refused).message
        assert success(await engine.client.job(hiring).later(Person("x" * 4000)))
    for bad in (0, 10, -1, 2**40, "1 MiB", True):
        with pytest.raises(djobs.ValidationError, match="max_payload_bytes"):
            async with open_test_engine(typed_jobs, max_payload_bytes=bad):
                pass  # pragma: no cover


# -- unbounded arithmetic -----------------------------------------------------------------------


def test_backoff_is_capped_before_it_could_overflow() -> None:
    backoff = djobs.Backoff.exponential(base="79 seconds", max="1 hour")
    assert [backoff.delay(n) for n in (1, 42, 10**6)] == [timedelta(seconds=79), timedelta(hours=1), timedelta(hours=1)]
    huge = djobs.Backoff.exponential(base="1000 days", max="36500 days")
    assert huge.delay(10**6) == timedelta(days=36500)
    linear = djobs.Backoff.linear(base="1000 days", increment="36525 days")
    assert linear.delay(10**6) == timedelta(days=36_525)  # the longest interval djobs computes
    retry = djobs.Retry(max_attempts=50, delay=djobs.Backoff.exponential(base="79 seconds", max="10000 days"))
    assert retry.delay_before(42, random.Random(0)) == timedelta(days=10000)


def test_out_of_range_definitions_are_validation_errors() -> None:
    for make in (
        lambda: djobs.every("99999999 weeks"),
        lambda: djobs.every(timedelta(days=40_000)),
        lambda: djobs.Retry(max_attempts=2**40),
        lambda: djobs.Job.make("j", params=Named, execute=greet, max_attempts=2**40),
        lambda: djobs.Debounce.make(
            "d", event=Named, state=Named, on_event=fold_named, execute=flush_named, flush_after="99999999 weeks"
        ),
        lambda: djobs.WorkerOptions(lock_timeout="36526 days"),
        lambda: djobs.WorkerOptions(poll_interval=timedelta(days=40_000)),
        lambda: djobs.Retention(completed="36526 days"),
        lambda: djobs.Retention(every=timedelta(days=10**8)),
    ):
        with pytest.raises(djobs.ValidationError):
            make()
    assert djobs.WorkerOptions(lock_timeout="36525 days").lock_timeout_ms == 36_525 * 86_400_000


@pytest.mark.trio
@pytest.mark.parametrize(
    "option", ["max_concurrency", "alarm_lease", "alarm_poll_interval", "shutdown_grace", "instance_lease"]
)
async def test_out_of_range_engine_options_are_validation_errors(
    option: str, autojump_clock: trio.testing.MockClock
) -> None:
    value: object = 2**31 if option == "max_concurrency" else timedelta(days=36_526)
    with pytest.raises(djobs.ValidationError, match=option):
        async with open_test_engine(queue_jobs, **{option: value}):
            pass


class ThirtyHours(tzinfo):
    """A broken time zone: Python refuses offsets of a day or more when converting."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=30)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)


@pytest.mark.trio
async def test_a_broken_time_zone_is_a_validation_error(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine(text_jobs) as engine:
        at = datetime(2026, 6, 1, tzinfo=ThirtyHours())
        error = djobs.testing.failure(await engine.client.job(greeter).later(Named("x"), at=at))
        assert isinstance(error, djobs.ValidationError) and "UTC" in error.message
        assert success(await engine.client.jobs.list()) == []


class RetryLater(Exception):
    pass


def fail_always(params: Named, ctx: djobs.JobContext) -> None:
    raise RetryLater(params.name)


@pytest.mark.trio
async def test_a_huge_backoff_schedules_the_retry_at_the_last_moment(autojump_clock: trio.testing.MockClock) -> None:
    stubborn = djobs.Job.make(
        "stubborn",
        params=Named,
        execute=fail_always,
        retry=djobs.Retry(max_attempts=42, delay=djobs.Backoff.exponential(base="79 seconds", max="36525 days")),
    )
    async with open_test_engine([stubborn]) as engine:
        job_id = success(await engine.client.job(stubborn).later(Named("x")))
        for _ in range(40):  # each retry at its delay: 79 s * 2**40 would overflow a timedelta
            await engine.wait_idle()
            info = success(await engine.client.jobs.status(job_id))
            await trio.sleep((info.scheduled_for - to_datetime(engine.clock.now_ms())).total_seconds() + 1)
        await engine.wait_idle()
        info = success(await engine.client.jobs.status(job_id))
        assert info.status == "pending" and info.attempts == 41  # each attempt counted once
        assert info.scheduled_for - to_datetime(engine.clock.now_ms()) <= timedelta(days=36_525)


@pytest.mark.trio
async def test_next_runs_stops_at_the_year_9999(autojump_clock: trio.testing.MockClock) -> None:
    decade = djobs.CronJob.make("decade", schedule=djobs.every("520 weeks"), job=greeter, params=Named("d"))
    async with open_test_engine([greeter, decade]) as engine:
        runs = success(await engine.client.crons.next_runs("decade", 1000))
        assert 0 < len(runs) < 1000 and runs[-1].year <= 9999


# -- size: one large row does not tax the others; old files migrate with their rows -------------


def test_a_version_2_file_migrates_to_rowid_tables_and_keeps_its_rows(tmp_path: Any) -> None:
    import apsw

    from djobs.storage._sqlite import APPLICATION_ID, MIGRATIONS

    current, old = tmp_path / "current.db", tmp_path / "old.db"

    async def fill() -> str:
        async with open_test_engine(text_jobs, storage=djobs.sqlite(current)) as engine:
            return await seed(engine, "kept")

    job_id = trio.run(fill)
    # The same rows in a file of schema version 2 (instances and jobs WITHOUT ROWID).
    db = apsw.Connection(str(old))
    db.execute(MIGRATIONS[0] + MIGRATIONS[1])
    db.execute(f"PRAGMA application_id={APPLICATION_ID}; PRAGMA user_version=2")
    db.execute(f"ATTACH '{current}' AS current")
    for table in ("instances", "alarms", "event_ids", "jobs", "job_keys", "cron_jobs"):
        # The columns version 2 had (later versions add some).
        columns = ", ".join(r[1] for r in db.execute(f"PRAGMA main.table_info({table})"))
        db.execute(f"INSERT INTO main.{table} SELECT {columns} FROM current.{table}")
    db.execute("DETACH current")
    assert "WITHOUT ROWID" in next(iter(db.execute("SELECT sql FROM sqlite_master WHERE name = 'jobs'")))[0]
    db.close()

    async def reopen() -> None:
        async with open_test_engine(text_jobs, storage=djobs.sqlite(old)) as engine:
            await assert_seeded(engine, "kept", job_id)
            assert success(await engine.client.job(greeter).later(Named("new")))

    trio.run(reopen)
    db = apsw.Connection(str(old))
    assert next(iter(db.execute("PRAGMA user_version")))[0] == len(MIGRATIONS)
    for table in ("instances", "jobs"):
        sql = next(iter(db.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,))))[0]
        assert "WITHOUT ROWID" not in sql
    assert [r[0] for r in db.execute("PRAGMA integrity_check")] == ["ok"]
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"instances_kind_name", "jobs_status_scheduled", "jobs_name", "jobs_tenant"} <= names
    db.close()


def test_one_large_state_does_not_slow_writes_to_other_instances() -> None:
    """Each instance's row is its own: 100 adds beside a 10 MB state touch as many database pages
    as they do alone. With the instances table WITHOUT ROWID the large row sat inline in the
    table's B-tree, and the same adds touched hundreds of times more pages (they took ten times
    as long). Pages touched (SQLite's cache hits plus misses) is a count, not a timing, so the
    test holds on a loaded machine."""

    def pages_touched(db: Any) -> int:
        import apsw

        return int(db.status(apsw.SQLITE_DBSTATUS_CACHE_HIT)[0] + db.status(apsw.SQLITE_DBSTATUS_CACHE_MISS)[0])

    async def adds(big: int) -> int:
        async with open_test_engine(typed_jobs, max_payload_bytes=1 << 24, storage=sqlite_in_memory()) as engine:
            if big:
                assert success(await engine.client.continuous(people).start(id="big", input=Person("x" * big)))
                await engine.wait_idle()  # its first run (which reads and writes the large state) is over
            client = engine.client.debounce(people_batches)
            await client.add(id="small", event=Person("first"))  # the instance exists: every add below updates
            db = engine.storage._db  # type: ignore[attr-defined]
            before = pages_touched(db)
            for n in range(100):
                await client.add(id="small", event=Person(str(n)))
            return pages_touched(db) - before

    alone = trio.run(adds, 0)
    beside = trio.run(adds, 10_000_000)
    assert beside < 2 * alone, (alone, beside)


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_listing_that_shows_no_payloads_does_not_read_them(kind: str, tmp_path: Any) -> None:
    schema = new_schema_name() if kind == "postgres" else None

    async def scenario() -> None:
        async with open_test_engine(text_jobs, storage=storage_layer(kind, str(tmp_path), schema)) as engine:
            job_id = success(await engine.client.job(greeter).later(Named("x" * 500_000), delay="1 hour"))
            storage: Any = engine.storage
            [full] = await storage.list_jobs(djobs.storage.JobFilter())
            [bare] = await storage.list_jobs(djobs.storage.JobFilter(payloads=False))
            assert len(full.params) > 500_000 and bare.params == b"" and bare.result is None
            assert (bare.id, bare.name, bare.status, bare.scheduled_for) == (
                job_id,
                "greeter",
                "pending",
                full.scheduled_for,
            )

    with dropped_after(schema):
        trio.run(scenario)


# -- secrets and isolation ----------------------------------------------------------------------


@pytest.mark.trio
async def test_required_tenancy_covers_the_instance_kinds(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([watcher, gatherer, keeper], tenancy="required") as engine:
        client = engine.client
        for verb in (
            client.continuous(watcher).start(id="a", input=Named("x")),
            client.continuous(watcher).status("a"),
            client.debounce(gatherer).add(id="a", event=Named("x")),
            client.task(keeper).send(id="a", event=Named("x")),
            client.task(keeper).terminate("a"),
        ):
            assert isinstance(djobs.testing.failure(await verb), djobs.TenantError)
        acme = client.for_tenant("acme")
        assert success(await acme.continuous(watcher).start(id="a", input=Named("x"))).created
        assert success(await acme.task(keeper).send(id="a", event=Named("x")))


def test_sqlite_takes_only_the_documented_synchronous_levels() -> None:
    for bad in ("OFF; DROP TABLE jobs", "normal", "", None, 1):
        with pytest.raises(djobs.ValidationError, match="synchronous"):
            djobs.sqlite("x.db", synchronous=bad)  # type: ignore[arg-type]
    for bad_timeout in (-1, "5s", 10**9, True):
        with pytest.raises(djobs.ValidationError, match="busy_timeout"):
            djobs.sqlite("x.db", busy_timeout=bad_timeout)  # type: ignore[arg-type]
    for level in ("OFF", "NORMAL", "FULL", "EXTRA"):
        assert djobs.sqlite("x.db", synchronous=level).synchronous == level  # type: ignore[arg-type]


SECRET = "s3cret-pw"
LEAKY_DSNS = [
    f"postgresql://app:{SECRET}@127.0.0.1:abc/test",  # libpq quotes the bad port's DSN
    f"postgresql://app:{SECRET}@[bad/test",  # ... and an unparsable URI whole
    f"postgresql://app:{SECRET}@127.0.0.1:5432/test?sslmode=bogus",
    f"host=127.0.0.1 port=1 user=app password={SECRET} connect_timeout=1",
    f"host=127.0.0.1 port=abc password='{SECRET}'",
    f"postgresql://app:{SECRET}@127.0.0.1:1/test?connect_timeout=1",
]


@pytest.mark.parametrize("dsn", LEAKY_DSNS)
def test_a_dsn_password_never_appears_in_an_error(dsn: str) -> None:
    import traceback

    pytest.importorskip("psycopg")

    async def scenario() -> None:
        with pytest.raises(djobs.StorageError) as caught:
            async with open_test_engine(text_jobs, storage=djobs.postgres(dsn)):
                pass  # pragma: no cover
        shown = "".join(traceback.format_exception(caught.value)) + repr(caught.value) + repr(caught.value.cause)
        assert SECRET not in shown and caught.value.message

    trio.run(scenario)
    assert SECRET not in repr(djobs.postgres(dsn))


# -- storage faults ------------------------------------------------------------------------------


@pytest.mark.trio
async def test_no_read_sees_a_write_that_then_fails_at_commit(autojump_clock: trio.testing.MockClock) -> None:
    # SQLite's group commit keeps a transaction open across a scheduling round; the memory
    # store's writes never span an await, so only SQLite has the window this test looks into.
    layer = djobs.storage.faulty(sqlite_in_memory())
    async with open_test_engine(text_jobs, storage=layer) as engine:
        client = engine.client
        storage: Any = engine.storage
        sqlite_storage = storage.inner
        enqueued: list[Any] = []

        async def enqueue() -> None:
            enqueued.append(await client.job(greeter).later(Named("doomed"), delay="1 hour"))

        # The group commit is open for one scheduling round, and Trio shuffles the order ready tasks
        # run in: the list may miss the window (the batch opens and commits between two looks). Then
        # the enqueue has ended, and the scenario runs again (waiting on the batch alone spun forever).
        for _ in range(100):
            enqueued.clear()
            storage.fail("enqueue_jobs", kind="full", at="commit", times=1)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(enqueue)
                while sqlite_storage._batch is None and not enqueued:
                    await trio.lowlevel.checkpoint()
                inside = sqlite_storage._batch is not None  # the group commit is open, its COMMIT not yet run
                if inside:
                    listed = success(await client.jobs.list())  # concurrently with it
            if inside:
                break
        else:
            pytest.fail("the list never ran while a group commit was open")
        assert isinstance(djobs.testing.failure(enqueued[0]), djobs.StorageError)
        assert listed == []  # the list did not see the row its COMMIT then refused
        assert success(await client.jobs.list()) == []


def test_the_wal_is_bounded_after_a_large_transaction(tmp_path: Any) -> None:
    """One 12 MB state grows the WAL for its commit; the next checkpoint gives the space back."""

    from djobs.storage._sqlite import WAL_SIZE_LIMIT_BYTES

    path = tmp_path / "wal.db"

    async def scenario() -> None:
        async with open_test_engine(typed_jobs, storage=djobs.sqlite(path), max_payload_bytes=1 << 24) as engine:
            assert success(await engine.client.continuous(people).start(id="big", input=Person("x" * 12_000_000)))
            await engine.wait_idle()
            for n in range(50):
                assert success(await engine.client.job(hiring).later(Person(str(n))))
            sizes.append(await trio.Path(f"{path}-wal").stat())

    sizes: list[os.stat_result] = []
    trio.run(scenario)
    # The large transaction's pages all went to the WAL (12 MB and more); the first commit that
    # starts the WAL over cuts the file back to the limit (about 8 MiB: the size at which the
    # writer checkpoints itself), which the 50 small commits since stay within.
    assert WAL_SIZE_LIMIT_BYTES < 12_000_000 * 0.75
    assert sizes[0].st_size <= WAL_SIZE_LIMIT_BYTES


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_file_deleted_or_replaced_under_the_engine_acknowledges_nothing(how: str, tmp_path: Any) -> None:
    import shutil

    path = tmp_path / "jobs.db"

    async def scenario() -> None:
        async with open_test_engine(text_jobs, storage=djobs.sqlite(path)) as engine:
            client = engine.client
            job_id = await seed(engine, "before")
            if how == "deleted":
                os.unlink(path)
            else:
                older = tmp_path / "older.db"
                async with open_test_engine(text_jobs, storage=djobs.sqlite(older)):
                    pass
                shutil.copy(older, tmp_path / "restored.db")
                os.replace(tmp_path / "restored.db", path)  # an older copy restored over it
            calls = [
                client.continuous(watcher).start(id="after", input=Named("x")),
                client.task(keeper).send(id="k-before", event=Named("y")),
                client.job(greeter).later(Named("after")),
                client.jobs.status(job_id),
                client.jobs.list(),
            ]
            for _ in range(10):
                calls.append(client.job(greeter).later(Named("more")))
            for verb in calls:
                error = djobs.testing.failure(await verb)
                assert isinstance(error, djobs.StorageError) and "deleted or replaced" in error.message

    trio.run(scenario)


@pytest.mark.trio
async def test_a_bad_id_is_named_for_what_it_is(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine(queue_jobs) as engine:
        error = failure(await engine.client.jobs.status("a\x00"))
        assert error.message == "job id 'a\\x00' contains a NUL or unit-separator (\\x1f) character"
        error = failure(await engine.client.dead_letters.get(""))
        assert error.message == "dead letter id must not be empty"
        error = failure(await engine.client.jobs.cancel(7))
        assert error.message == "job id must be a str, got int"


edge_ints = st.one_of(
    st.sampled_from([0, 1, 2, 10_000, 10_001, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 10**20, -1, -(2**31) - 1]),
    st.integers(min_value=-(2**70), max_value=2**70),
)


def made(make: Any) -> Any | None:
    """What `make()` returns, or ``None`` if it refused its input with a `ValidationError`."""
    try:
        return make()
    except djobs.ValidationError:
        return None


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_out_of_range_integers_are_validation_errors_on_every_storage(kind: str, tmp_path: Any) -> None:
    # Every integer a user passes is bounded where it is given, the same on every storage; what
    # is accepted runs (PostgreSQL holds these as integer or bigint: a larger one stopped claims).
    # Each example has its own database: a rate window would count an earlier example's starts.
    examples = iter(range(10_000))

    @settings(max_examples=15 if kind == "postgres" else 30, deadline=None, database=None)
    @given(n=edge_ints)
    def property(n: int) -> None:
        count_fits = 1 <= n <= 2**31 - 1
        limited = made(lambda: djobs.Job.make("limited", params=Named, result=Greeting, execute=greet, concurrency=n))
        texted = made(
            lambda: djobs.Job.make("texted", params=Named, result=Greeting, execute=greet, rate_limit=f"{n}/s")
        )
        typed = made(
            lambda: djobs.Job.make(
                "typed", params=Named, result=Greeting, execute=greet, rate_limit=djobs.RateLimit(n, "1 day")
            )
        )
        worker = made(lambda: djobs.WorkerOptions(max_concurrency=n, batch_size=n))
        flusher = made(
            lambda: djobs.Debounce.make(
                "flusher", event=Named, state=Named, on_event=fold_named, execute=flush_named, max_events=n
            )
        )
        for definition in (limited, texted, typed, worker, flusher):
            assert (definition is not None) == count_fits, (definition, n)
        tries = made(lambda: djobs.Job.make("tries", params=Named, result=Greeting, execute=greet, max_attempts=n))
        assert (tries is not None) == (1 <= n <= 1_000_000)
        listing_fits = 1 <= n <= 10_000

        async def scenario(layer: djobs.storage.StorageLayer) -> None:
            jobs = [greeter, *(job for job in (limited, texted, typed, tries) if job is not None)]
            options = {} if worker is None else {"worker": worker, "max_concurrency": n}
            async with open_test_engine([*jobs, visitor], storage=layer, **options) as engine:
                client = engine.client
                ids = [success(await client.job(job).later(Named("ok"))) for job in jobs]
                await expect(client.job(greeter).later, not -(2**31) <= n < 2**31, Named("ranked"), priority=n)
                await expect(client.jobs.list, not listing_fits, limit=n)
                await expect(client.workflow(visitor).list, not listing_fits, limit=n)
                await expect(client.dead_letters.list, not listing_fits, limit=n)
                await engine.wait_idle()
                await trio.sleep(10)  # a limited job may wait for its key (wait_idle sees only what is due)
                # Every job of every name ran: no accepted number stopped the claim.
                statuses = [success(await client.jobs.status(job_id)).status for job_id in ids]
                assert statuses == ["completed"] * len(ids), (statuses, [job.name for job in jobs])

        schema = new_schema_name() if kind == "postgres" else None
        directory = tmp_path / str(next(examples))
        directory.mkdir()
        try:
            layer = storage_layer(kind, str(directory), schema)
            trio.run(scenario, layer, clock=trio.testing.MockClock(autojump_threshold=0))
        finally:
            if schema is not None:
                drop_schema(postgres_dsn() or "", schema)

    property()


# -- time zones whose code raises ------------------------------------------------------------

_TZ_FAULTS: list[Any] = [
    RuntimeError("tz boom"),
    ValueError("no offset"),
    ZeroDivisionError(),
    KeyError("zone"),
    "not a timedelta",
    timedelta(days=2),
]


@st.composite
def hostile_zones(draw: st.DrawFn) -> tzinfo:
    """A tzinfo whose utcoffset raises (or returns what is not an offset), its repr maybe raising too."""
    fault = draw(st.sampled_from(_TZ_FAULTS))
    bad_repr = draw(st.booleans())

    class Hostile(tzinfo):
        def utcoffset(self, dt: datetime | None) -> timedelta:
            if isinstance(fault, BaseException):
                raise fault
            return fault  # type: ignore[no-any-return]

        def dst(self, dt: datetime | None) -> timedelta:
            return self.utcoffset(dt)

        def __repr__(self) -> str:
            if bad_repr:
                raise RuntimeError("repr exploded")
            return "Hostile()"

    return Hostile()


class Stamp(msgspec.Struct):
    n: int = 0


def _stamp_body(params: Stamp, ctx: djobs.JobContext) -> None:
    return None


_stamped = djobs.Job.make("stamped", params=Stamp, execute=_stamp_body, on="stamp.sent")


@settings(max_examples=30, deadline=None)
@given(zone=hostile_zones())
def test_a_time_zone_whose_code_raises_is_a_validation_error_on_every_verb_taking_a_datetime(zone: tzinfo) -> None:
    """later(at=), later_many(at=), send_event(at=), a Task's ctx.schedule(moment), ctx.sleep(moment),
    ctx.wait_for_signal(timeout=moment) and VirtualClock(start): a typed refusal, nothing stored."""
    moment = datetime(2030, 1, 1, tzinfo=zone)

    def reschedule(event: Stamp, ctx: djobs.TaskEventContext[Stamp]) -> None:
        ctx.schedule(moment)

    async def sleeper(_input: Stamp, ctx: djobs.WorkflowContext) -> int:
        if _input.n == 0:
            await ctx.sleep(moment)
        else:
            await ctx.wait_for_signal("go", Stamp, timeout=moment)
        return 1

    ticker = djobs.Task.make("ticker", state=Stamp, event=Stamp, on_event=reschedule, execute=lambda ctx: None)
    flow = djobs.Workflow.make("flow", input=Stamp, result=int, execute=sleeper)

    async def main() -> None:
        async with trio.open_nursery(), open_test_engine([_stamped, ticker, flow]) as engine:  # the host's nursery
            jobs = engine.client.job(_stamped)
            for refused in (
                await jobs.later(Stamp(), at=moment),
                await jobs.later_many([Stamp()], at=moment),
                await engine.client.send_event("stamp.sent", Stamp(), at=moment),
            ):
                error = failure(refused)
                assert isinstance(error, djobs.ValidationError) and "UTC" in error.message, error
            assert success(await engine.client.jobs.list()) == []
            error = failure(await engine.client.task(ticker).send(id="t", event=Stamp()))
            assert isinstance(error, djobs.ValidationError) and "UTC" in error.message, error
            for n in (0, 1):
                success(await engine.client.workflow(flow).start(id=f"w{n}", input=Stamp(n)))
            await trio.sleep(60)
            for n in (0, 1):
                status = success(await engine.client.workflow(flow).status(f"w{n}"))
                assert status.status == "failed" and status.error is not None, status
                assert status.error["tag"] == "validation" and "UTC" in status.error["message"], status

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    with pytest.raises(djobs.ValidationError, match="UTC"):
        djobs.VirtualClock(moment)
    with pytest.raises(djobs.ValidationError, match="UTC"):
        djobs.testing.default_layers(moment)


# -- file names and connection strings the OS cannot take ----------------------------------------

#: A character no file name, connection string or URL can hold: a NUL (it ends a C string), or
#: any surrogate code point (in a Python str every surrogate is lone: UTF-8 has no form for it).
_unsayable_char = st.one_of(st.just("\x00"), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))
#: Any text at all, NUL and surrogates included.
_any_text = st.text(st.characters(exclude_categories=()), max_size=12)
#: Any text holding at least one of them, at any position.
_unsayable = st.builds(lambda head, bad, tail: head + bad + tail, _any_text, _unsayable_char, _any_text)
#: Any text without them.
_sayable = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30)
_REFUSAL = r"NUL|UTF-8"


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


async def _open_existing(where: str) -> None:
    from djobs.storage._inspect import open_existing

    async with open_existing(where):
        raise AssertionError(f"opened {where!r}")  # pragma: no cover


@settings(deadline=None)  # the first example imports the PostgreSQL and HTTP modules
@given(text=_unsayable)
def test_a_path_dsn_or_url_holding_a_nul_or_a_lone_surrogate_is_refused_wherever_it_is_taken(text: str) -> None:
    """Such text used to reach apsw or libpq (a raw ValueError or UnicodeEncodeError, or a DSN silently
    cut at its NUL): every public parameter that hands text to a C library as a file name, a connection
    string or a URL refuses it with a ValidationError when the layer is made (a DSN never shown), and
    opening an existing database (the command line's --db, the dashboard's db) refuses it likewise."""
    for path in (text, text + ".db", Path(text)):
        with pytest.raises(djobs.ValidationError, match=_REFUSAL):
            djobs.sqlite(path)
    for dsn in (text, f"postgresql://app:pw@127.0.0.1/{text}", f"host=127.0.0.1 password=pw dbname={text}"):
        with pytest.raises(djobs.ValidationError, match=_REFUSAL) as caught:
            djobs.postgres(dsn)
        assert "pw" not in caught.value.message
    for endpoint in (text, f"https://example.invalid/{text}", f"https://{text}.example/events"):
        with pytest.raises(djobs.ValidationError, match=_REFUSAL):
            djobs.tracking.HttpBatchTracker(endpoint, "test", "key")
    with pytest.raises(djobs.ValidationError, match="header"):
        djobs.tracking.HttpBatchTracker("https://example.invalid/", "test", text)
    for where in (text, f"postgresql://app:pw@127.0.0.1/{text}"):
        with pytest.raises(djobs.ValidationError, match=_REFUSAL) as caught:
            trio.run(_open_existing, where)
        assert "pw" not in caught.value.message
    # The environment name goes in a JSON body: a NUL is carried (as \u0000), a surrogate cannot be.
    if _has_surrogate(text):
        with pytest.raises(djobs.ValidationError, match="UTF-8"):
            djobs.tracking.HttpBatchTracker("https://example.invalid/", text, "key")
    else:
        assert djobs.tracking.HttpBatchTracker("https://example.invalid/", text, "key").env == text


@settings(deadline=None)
@given(text=_sayable)
def test_a_path_dsn_or_url_without_them_is_taken(text: str) -> None:
    """No other text is refused for holding what it holds: what the check refuses is exactly the class."""
    djobs.sqlite("x" + text.replace("://", "") + ".db")
    djobs.sqlite(Path("x" + text.replace("://", "")))
    if text.strip():  # a blank DSN is refused for being blank (libpq would guess every part)
        djobs.postgres(text)
    djobs.postgres(f"postgresql://app@127.0.0.1/{text}")
    # A URL carries no control character (httpx refuses the ASCII ones at every request) and no
    # whitespace at its end (a line read from a file): refused for that, in its own words, when the
    # tracker is made. Whitespace inside the path is taken: httpx sends it percent-encoded.
    endpoint = f"https://example.invalid/{text}"
    if any(unicodedata.category(c) == "Cc" for c in text) or endpoint != endpoint.strip():
        with pytest.raises(djobs.ValidationError, match=r"a control character|ends with whitespace"):
            djobs.tracking.HttpBatchTracker(endpoint, text, "key")
    else:
        djobs.tracking.HttpBatchTracker(endpoint, text, "key")
    # An existing-database open gets as far as the file system: a missing file, not bad text.
    where = "no-such-dir/" + text
    assume(not is_dsn(where))
    with pytest.raises(djobs.StorageError, match="no database at"):
        trio.run(_open_existing, where)


def test_a_database_file_whose_name_is_not_utf8_is_refused_not_crashed_on(tmp_path: Path) -> None:
    """A name read from bytes that are not UTF-8 (``os.fsdecode``: a lone surrogate) can name a file
    that exists; SQLite cannot open it by that name. Opening it as an existing database (the
    dashboard's db) raised the driver's UnicodeEncodeError, which escaped the dashboard's request as
    an internal error: now a ValidationError, a 503 page that says why."""
    from djobs.dashboard import app

    async def make() -> None:
        async with djobs.open_engine([], storage=djobs.sqlite(tmp_path / "good.db")):
            pass

    trio.run(make)
    raw = os.fsencode(tmp_path) + b"/bad\x80.db"
    os.rename(tmp_path / "good.db", raw)
    name = os.fsdecode(raw)
    assert os.path.exists(name) and _has_surrogate(name)
    with pytest.raises(djobs.ValidationError, match="UTF-8"):
        trio.run(_open_existing, name)

    async def page() -> httpx.Response:
        application = app(name)
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://dash.test") as client:
            return await client.get("/")

    response = trio.run(page)
    assert response.status_code == 503 and "UTF-8" in response.text


def test_a_dsn_that_is_not_text_is_a_validation_error() -> None:
    for dsn in (5, None, b"postgresql://x"):
        with pytest.raises(djobs.ValidationError, match="expected a str"):
            djobs.postgres(dsn)  # type: ignore[arg-type]


class Dated(msgspec.Struct):
    at: datetime


class Checked(msgspec.Struct):
    n: int = 0

    def __post_init__(self) -> None:
        if self.n < 0:
            raise RuntimeError("n must not be negative")


def _offset_or_none(zone: tzinfo) -> object:
    try:
        return zone.utcoffset(None)
    except Exception:
        return None  # a zone that raises: the case under test


@settings(max_examples=20, deadline=None)
@given(zone=hostile_zones())
def test_a_payload_whose_own_code_raises_is_a_validation_error_on_every_verb(zone: tzinfo) -> None:
    """msgspec calls user code while it encodes and checks a payload (a datetime field's tzinfo, a
    struct's __post_init__): what it raises is the verb's ValidationError, not 'djobs failed unexpectedly'.

    (A zone that returns an offset of a day or more raises nothing here: msgspec encodes such a
    datetime without asking Python to check the offset, so it is left out.)"""
    assume(not isinstance(_offset_or_none(zone), timedelta))
    dated = djobs.Job.make("dated", params=Dated, execute=lambda p, c: None)
    batcher = djobs.Debounce.make("batcher", event=Dated, flush_after="1 minute", execute=lambda ctx: None)
    keeper = djobs.Continuous.make("keeper", state=Dated, schedule=djobs.every("1 hour"), execute=lambda ctx: None)
    checked = djobs.Job.make("checked", params=Checked, execute=lambda p, c: None)
    bad = Dated(datetime(2030, 1, 1, tzinfo=zone))

    async def main() -> None:
        async with trio.open_nursery(), open_test_engine([dated, batcher, keeper, checked]) as engine:
            client = engine.client
            for refused in (
                await client.job(dated).later(bad),
                await client.debounce(batcher).add(id="b", event=bad),
                await client.continuous(keeper).start(id="k", input=bad),
                await client.job(checked).later({"n": -1}),
            ):
                error = failure(refused)
                assert isinstance(error, djobs.ValidationError), error
            assert success(await client.jobs.list()) == []

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
