"""Every layer swapped for a fake, the engine driven through the swap.

Each test gives the engine one layer of its own (a clock, a storage, a
tracker, a retry policy, an ids source) and checks that the engine's
behaviour follows it, so a user's fake is known to be enough.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
import trio
import trio.testing

import djobs
from djobs.storage import (
    Alarm,
    Checkin,
    ClearAlarm,
    InstanceExistsError,
    InstanceRecord,
    LeaseLostError,
    SetAlarm,
    Storage,
)
from djobs.testing import check_storage, default_layers, failure, open_test_engine, success


class Beat(msgspec.Struct):
    n: int = 0
    seen: list[str] = []


def bump(ctx: djobs.ContinuousContext[Beat]) -> Beat:
    return Beat(ctx.state.n + 1, [*ctx.state.seen, ctx.now().isoformat()])


every_minute = djobs.Continuous.make("beat", state=Beat, schedule=djobs.every("1 minute"), execute=bump)


class Ping(msgspec.Struct):
    label: str


# -- clock ---------------------------------------------------------------------------------


class FastClock:
    """A fake clock on which one second of Trio's clock is one hour, from 2030-01-01 UTC."""

    START_MS = 1_893_456_000_000

    def now_ms(self) -> int:
        return self.START_MS + int(trio.current_time() * 3_600_000)

    async def sleep_until(self, epoch_ms: int) -> None:
        # Rounded up to Trio's next microsecond, so the wake-up is never early.
        await trio.sleep_until(math.ceil((epoch_ms - self.START_MS) / 3.6) / 1_000_000)


@pytest.mark.trio
async def test_a_fake_clock_drives_schedules_and_ctx_now(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([every_minute], clock=FastClock()) as engine:
        success(await engine.client.continuous(every_minute).start(id="x", input=Beat()))
        await trio.sleep(1 / 60 * 10 + 1e-4)  # ten minutes on the fake clock
        state = success(await engine.client.continuous(every_minute).get_state("x")).state
    assert state.n == 11  # the start's run, then one a minute
    assert state.seen[0] == "2030-01-01T00:00:00+00:00"
    assert state.seen[-1].startswith("2030-01-01T00:10:00")  # within the millisecond the fake rounds to


# -- storage: an instance store with its alarms, written without SQL -------------------------


@dataclass
class DictStorage:
    """A fake `Storage` on plain dicts: instances, alarms, idempotency keys and leases; no job queue."""

    records: dict[str, InstanceRecord] = field(default_factory=dict)
    alarms: dict[str, Alarm] = field(default_factory=dict)
    claimed_until: dict[int, int] = field(default_factory=dict)
    event_ids: set[tuple[str, str]] = field(default_factory=set)
    leases: dict[str, tuple[str, int]] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    calls: list[str] = field(default_factory=list)

    async def load(self, key: str) -> tuple[InstanceRecord, Alarm | None] | None:
        self.calls.append("load")
        record = self.records.get(key)
        return None if record is None else (msgspec.structs.replace(record), self.alarms.get(key))

    async def commit(self, checkin: Checkin) -> None:
        self.calls.append("commit")
        key = checkin.key
        if checkin.lease_owner is not None and self.leases.get(key, (checkin.lease_owner, 0))[0] != checkin.lease_owner:
            raise LeaseLostError(key)
        if checkin.create and key in self.records:  # a new instance is stored only over nothing
            raise InstanceExistsError((msgspec.structs.replace(self.records[key]), self.alarms.get(key)))
        if checkin.event_id is not None:
            if (key, checkin.event_id) in self.event_ids:
                raise djobs.DuplicateEventError(key, checkin.event_id)
            self.event_ids.add((key, checkin.event_id))
        if checkin.record is None:
            self.records.pop(key, None)
            self.alarms.pop(key, None)
            self.event_ids = {(k, e) for k, e in self.event_ids if k != key}
            return
        new = msgspec.structs.replace(checkin.record)
        old = self.records.get(key)
        if old is not None:  # identity and birth are written once
            new.kind, new.name, new.instance_id, new.created_at = old.kind, old.name, old.instance_id, old.created_at
            new.tenant_id = old.tenant_id
        self.records[key] = new
        if isinstance(checkin.alarm, SetAlarm):
            alarm = Alarm(id=next(self.ids), key=key, fire_at=checkin.alarm.fire_at, purpose=checkin.alarm.purpose)
            self.alarms[key] = alarm
            self.claimed_until[alarm.id] = alarm.fire_at
        elif isinstance(checkin.alarm, ClearAlarm):
            self.alarms.pop(key, None)

    async def has_event_id(self, key: str, event_id: str) -> bool:
        return (key, event_id) in self.event_ids

    def _due_at(self, alarm: Alarm) -> int:
        return self.claimed_until.get(alarm.id, alarm.fire_at)

    async def claim_alarms(
        self, now_ms: int, lease_ms: int, limit: int, prefixes: Sequence[str] | None = None
    ) -> list[Alarm]:
        mine = [a for a in self.alarms.values() if prefixes is None or a.key.startswith(tuple(prefixes))]
        due = sorted((a for a in mine if self._due_at(a) <= now_ms), key=self._due_at)[:limit]
        for alarm in due:
            self.claimed_until[alarm.id] = now_ms + lease_ms
        return due

    async def release_alarms(self, ids: list[int]) -> None:
        for alarm in self.alarms.values():
            if alarm.id in ids:
                self.claimed_until[alarm.id] = alarm.fire_at

    async def next_alarm_at(self, prefixes: Sequence[str] | None = None) -> int | None:
        mine = [a for a in self.alarms.values() if prefixes is None or a.key.startswith(tuple(prefixes))]
        return min((self._due_at(a) for a in mine), default=None)

    async def acquire_instance_lease(self, key: str, owner: str, now_ms: int, ttl_ms: int) -> bool:
        holder = self.leases.get(key)
        if holder is not None and holder[0] != owner and holder[1] > now_ms:
            return False
        self.leases[key] = (owner, now_ms + ttl_ms)
        return True

    async def instance_lease_holder(self, key: str, now_ms: int | None = None) -> tuple[str, int] | None:
        return self.leases.get(key)

    async def renew_instance_leases(
        self, keys: list[str], owner: str, until_ms: int, now_ms: int | None = None
    ) -> None:
        for key in keys:
            if self.leases.get(key, ("", 0))[0] == owner:
                self.leases[key] = (owner, until_ms)

    async def release_instance_leases(self, keys: list[str], owner: str) -> None:
        for key in keys:
            if self.leases.get(key, ("", 0))[0] == owner:
                del self.leases[key]

    async def healthcheck(self) -> bool:
        return True


@dataclass
class DictLayer:
    """The storage layer of a `DictStorage`: its `open` yields the one storage."""

    storage: DictStorage = field(default_factory=DictStorage)

    def open(self) -> AbstractAsyncContextManager[Storage]:
        @asynccontextmanager
        async def opened() -> AsyncIterator[Storage]:
            yield self.storage

        return opened()


@pytest.mark.trio
async def test_an_in_memory_store_of_plain_dicts_runs_instances_and_alarms(
    autojump_clock: trio.testing.MockClock,
) -> None:
    layer = DictLayer()
    async with open_test_engine([every_minute], storage=layer) as engine:
        client = engine.client.continuous(every_minute)
        success(await client.start(id="x", input=Beat()))
        await trio.sleep(5 * 60 + 1)
        assert success(await client.get_state("x")).state.n == 6
        assert await engine.healthcheck()
        success(await client.terminate("x"))
    assert layer.storage.records == {} and layer.storage.alarms == {}
    assert layer.storage.calls.count("commit") >= 7  # every run went through the fake
    assert layer.storage.leases == {}  # the engine gave its leases back on close


@pytest.mark.trio
async def test_the_dict_store_passes_the_storage_conformance_suite() -> None:
    # The fake is a storage like any other: djobs's shipped suite proves its
    # instances, idempotency keys, alarms and leases (it holds no job queue).
    await check_storage(DictLayer, queue=False)


@pytest.mark.trio
async def test_a_store_without_a_queue_refuses_queued_jobs(autojump_clock: trio.testing.MockClock) -> None:
    job = djobs.Job.make("ping", params=Ping, execute=lambda p, ctx: None)
    with pytest.raises(djobs.StorageError, match="holds no job queue"):
        async with open_test_engine([job], storage=DictLayer()):
            pass


# -- tracker -------------------------------------------------------------------------------


@dataclass
class RecordingTracker:
    """A fake tracker that keeps the type of every event it is handed."""

    types: list[str] = field(default_factory=list)
    closed: bool = False

    def emit(self, event: djobs.TrackedEvent) -> None:
        self.types.append(event.type)

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.trio
async def test_a_recording_tracker_receives_every_event(autojump_clock: trio.testing.MockClock) -> None:
    tracker = RecordingTracker()
    async with open_test_engine([every_minute], tracker=tracker) as engine:
        success(await engine.client.continuous(every_minute).start(id="x", input=Beat()))
        await trio.sleep(2 * 60 + 1)
    assert tracker.types.count("job.executed") == 3
    assert "job.started" in tracker.types
    assert tracker.closed  # the engine closed its tracker


# -- retry policy ---------------------------------------------------------------------------


@dataclass
class NoWaitRetries:
    """A fake retry policy: every retry is due at once; the attempts asked about are kept."""

    asked: list[tuple[int, int]] = field(default_factory=list)

    def delay_before(self, retry: djobs.Retry, attempt: int) -> timedelta:
        self.asked.append((retry.max_attempts, attempt))
        return timedelta(0)


@pytest.mark.trio
async def test_a_retry_policy_fake_sets_the_wait_between_attempts(autojump_clock: trio.testing.MockClock) -> None:
    tries: list[datetime] = []

    def flaky(params: Ping, ctx: djobs.JobContext) -> Ping:
        tries.append(ctx.now())
        if len(tries) < 3:
            raise RuntimeError("not yet")
        return params

    hourly_retries = djobs.Retry(max_attempts=5, delay="1 hour")
    job = djobs.Job.make("flaky", params=Ping, result=Ping, execute=flaky, retry=hourly_retries)
    retries = NoWaitRetries()
    async with open_test_engine([job], retries=retries) as engine:
        run = success(await engine.client.job(job).now(Ping("x")))
    assert run.status == "completed" and run.result == Ping("x")
    assert retries.asked == [(5, 2), (5, 3)]
    assert tries[-1] - tries[0] < timedelta(seconds=1)  # not the definition's hour between attempts


# -- ids ------------------------------------------------------------------------------------


class CountingIds:
    """A fake ids source: deterministic engine id, job ids, uuids and draws."""

    def __init__(self) -> None:
        self._jobs = itertools.count(1)
        self._uuids = itertools.count(1)

    def engine_id(self) -> str:
        return "engine-a"

    def job_id(self, now_ms: int) -> str:
        return f"job-{next(self._jobs):04d}"

    def uuid(self) -> str:
        return f"00000000-0000-4000-8000-{next(self._uuids):012d}"

    def random(self) -> float:
        return 0.25


@pytest.mark.trio
async def test_an_ids_fake_gives_deterministic_job_and_engine_ids(autojump_clock: trio.testing.MockClock) -> None:
    job = djobs.Job.make("ping", params=Ping, execute=lambda p, ctx: None)
    async with open_test_engine([job], ids=CountingIds(), worker=None) as engine:
        ids = [success(await engine.client.job(job).later(Ping(str(n)))) for n in range(3)]
        assert ids == ["job-0001", "job-0002", "job-0003"]
        assert engine.worker_id == "engine-a"


@pytest.mark.trio
async def test_an_ids_fake_feeds_a_workflows_recorded_values(autojump_clock: trio.testing.MockClock) -> None:
    class Drawn(msgspec.Struct):
        uuid: str
        draw: float

    async def run(_: Ping, ctx: djobs.WorkflowContext) -> Drawn:
        return Drawn(ctx.uuid(), ctx.random())

    flow = djobs.Workflow.make("drawn", input=Ping, result=Drawn, execute=run)
    async with open_test_engine([flow], ids=CountingIds()) as engine:
        client = engine.client.workflow(flow)
        success(await client.start(id="w", input=Ping("x")))
        await engine.wait_idle()
        done = success(await client.result("w"))
    assert done == Drawn("00000000-0000-4000-8000-000000000001", 0.25)


# -- the layers whole -------------------------------------------------------------------------


@pytest.mark.trio
async def test_open_engine_takes_the_layers_whole(autojump_clock: trio.testing.MockClock) -> None:
    tracker = RecordingTracker()
    layers = djobs.Layers(storage=djobs.memory(), clock=djobs.VirtualClock(datetime(2030, 1, 1, tzinfo=UTC)))
    async with djobs.open_engine([every_minute], layers=layers.replace(tracker=tracker)) as engine:
        assert engine.tracker is tracker and engine.clock is layers.clock
        success(await engine.client.continuous(every_minute).start(id="x", input=Beat()))
        await trio.sleep(60 + 0.5)
        state = success(await engine.client.continuous(every_minute).get_state("x")).state
    assert state.seen == ["2030-01-01T00:00:00+00:00", "2030-01-01T00:01:00+00:00"]
    assert tracker.types.count("job.executed") == 2


@pytest.mark.trio
async def test_layers_and_a_single_layer_together_are_refused() -> None:
    with pytest.raises(djobs.ValidationError, match=r"layers= or clock=, not both"):
        async with djobs.open_engine([every_minute], layers=djobs.Layers(), clock=djobs.VirtualClock()):
            pass
    with pytest.raises(djobs.ValidationError, match=r"layers must be a djobs\.Layers"):
        async with djobs.open_engine([every_minute], layers={"clock": djobs.VirtualClock()}):  # type: ignore[call-overload]
            pass


def test_replace_swaps_only_the_layers_given() -> None:
    layers = default_layers()
    clock = djobs.VirtualClock()
    swapped = layers.replace(clock=clock)
    assert swapped.clock is clock
    assert (swapped.storage, swapped.tracker, swapped.retries, swapped.ids) == (
        layers.storage,
        layers.tracker,
        layers.retries,
        layers.ids,
    )
    assert layers.clock is not clock  # frozen: replace builds new layers
    with pytest.raises(AttributeError):
        layers.clock = clock  # type: ignore[misc]


@pytest.mark.trio
async def test_the_test_engine_starts_from_given_layers(autojump_clock: trio.testing.MockClock) -> None:
    tracker = RecordingTracker()
    base = default_layers(datetime(2031, 6, 1, tzinfo=UTC)).replace(tracker=tracker)
    async with open_test_engine([every_minute], layers=base) as engine:
        success(await engine.client.continuous(every_minute).start(id="x", input=Beat()))
        await engine.wait_idle()
        state = success(await engine.client.continuous(every_minute).get_state("x")).state
        assert state.seen == ["2031-06-01T00:00:00+00:00"]
        failure(await engine.client.continuous(every_minute).get_state("missing"))
    assert tracker.types.count("job.executed") == 1
