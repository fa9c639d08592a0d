"""A Debounce instance's batch kept in memory under its lease: adds stay correct when the lease is
lost to another engine, when two engines add to one instance, and when many adds of one instance
are applied together."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import trio
from postgres_support import DSN_VARIABLE, drop_schema, new_schema_name, postgres_dsn
from test_timeouts import layer  # noqa: F401  # the memory / SQLite / PostgreSQL fixture

import djobs
import djobs.storage
from djobs.storage import Checkin
from djobs.testing import failure, open_test_engine, success


class Hit(msgspec.Struct):
    n: int


class Seen(msgspec.Struct):
    ns: list[int] = []


def collect(ctx: djobs.DebounceEventContext[Hit, Seen]) -> Seen:
    return Seen([*(ctx.state.ns if ctx.state else []), ctx.event.n])


flushed: list[list[int]] = []


def keep(ctx: djobs.DebounceContext[Seen]) -> None:
    flushed.append(ctx.state.ns)


hits = djobs.Debounce.make("hits", event=Hit, state=Seen, on_event=collect, execute=keep, flush_after="1 hour")
KEY = "debounce:hits:x"


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.skipif(postgres_dsn() is None, reason=f"{DSN_VARIABLE} is not set")),
    ]
)
def shared(request: pytest.FixtureRequest) -> Iterator[djobs.storage.StorageLayer]:
    """One database two engines open, as two processes would."""
    if request.param == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            yield djobs.sqlite(f"{directory}/shared.db")
    else:
        dsn, schema = postgres_dsn() or "", new_schema_name()
        try:
            yield djobs.postgres(dsn, schema=schema)
        finally:
            drop_schema(dsn, schema)


@pytest.mark.trio
async def test_an_add_after_the_lease_was_lost_sees_the_other_engines_writes(
    mock_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
) -> None:
    # A frozen clock: this engine keeps its lease (and its copy of the batch) throughout.
    async with open_test_engine([hits], storage=layer) as engine:
        client = engine.client.debounce(hits)
        for n in range(3):
            assert success(await client.add(id="x", event=Hit(n))).event_count == n + 1
        storage, owner = engine.storage, engine.worker_id
        held = await storage.instance_lease_holder(KEY)
        assert held is not None and held[0] == owner
        # Meanwhile this engine's lease lapsed (say its renewals failed) and another
        # engine took the instance over, added two events and let the lease go.
        await storage.release_instance_leases([KEY], owner)
        assert await storage.acquire_instance_lease(KEY, "elsewhere:1:0", engine.clock.now_ms(), 30_000)
        loaded = await storage.load(KEY)
        assert loaded is not None
        record = loaded[0]
        record.state, record.event_count = msgspec.json.encode(Seen([0, 1, 2, 100, 101])), 5
        await storage.commit(Checkin(key=KEY, record=record, lease_owner="elsewhere:1:0"))
        await storage.release_instance_leases([KEY], "elsewhere:1:0")

        # The copy in memory is stale: the fenced write refuses it, and the add is
        # applied afresh under a new lease, on the row the other engine left.
        added = success(await client.add(id="x", event=Hit(3)))
        assert added.event_count == 6 and not added.created
        assert success(await client.get_state("x")).state == Seen([0, 1, 2, 100, 101, 3])
        held = await storage.instance_lease_holder(KEY)
        assert held is not None and held[0] == owner


@pytest.mark.trio
async def test_an_add_waits_for_a_lease_another_engine_holds_and_builds_on_its_writes(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
) -> None:
    async with open_test_engine([hits], storage=layer) as engine:
        client = engine.client.debounce(hits)
        assert success(await client.add(id="x", event=Hit(0))).event_count == 1
        storage, owner = engine.storage, engine.worker_id
        await trio.sleep(1)  # idle: the engine gives the lease up; its copy is no longer trusted
        assert await storage.instance_lease_holder(KEY) is None
        assert await storage.acquire_instance_lease(KEY, "elsewhere:1:0", engine.clock.now_ms(), 5_000)
        loaded = await storage.load(KEY)
        assert loaded is not None
        record = loaded[0]
        record.state, record.event_count = msgspec.json.encode(Seen([0, 7])), 2
        await storage.commit(Checkin(key=KEY, record=record, lease_owner="elsewhere:1:0"))
        started = trio.current_time()
        added = success(await client.add(id="x", event=Hit(1)))  # waits for the other lease to end (5 s)
        assert 5 <= trio.current_time() - started < 6
        assert added.event_count == 3
        assert success(await client.get_state("x")).state == Seen([0, 7, 1])
        held = await storage.instance_lease_holder(KEY)
        assert held is not None and held[0] == owner


@pytest.mark.trio
async def test_two_engines_adding_to_one_instance_lose_no_event(
    autojump_clock: trio.testing.MockClock, shared: djobs.storage.StorageLayer
) -> None:
    async with open_test_engine([hits], storage=shared) as a, open_test_engine([hits], storage=shared) as b:
        first, second = a.client.debounce(hits), b.client.debounce(hits)
        # In turns: each engine's copy of the batch goes stale while the other adds.
        expected: list[int] = []
        for turn in range(6):
            client = first if turn % 2 == 0 else second
            for n in range(turn * 10, turn * 10 + 10):
                expected.append(n)
                assert success(await client.add(id="x", event=Hit(n))).event_count == len(expected)
        assert success(await a.client.debounce(hits).get_state("x")).state == Seen(expected)

        # At once, from many tasks of both engines.
        async def send(client: Any, n: int) -> None:
            success(await client.add(id="y", event=Hit(n)))

        async with trio.open_nursery() as nursery:
            for n in range(200):
                nursery.start_soon(send, first if n % 2 else second, n)
        state = success(await b.client.debounce(hits).get_state("y")).state
        assert state is not None and sorted(state.ns) == list(range(200))
        assert success(await a.client.debounce(hits).status("y")).event_count == 200


def failing_on_13(ctx: djobs.DebounceEventContext[Hit, Seen]) -> Seen:
    state = ctx.state if ctx.state is not None else Seen()
    state.ns.append(ctx.event.n)  # changes the state it was given in place, then fails
    if ctx.event.n == 13:
        raise ValueError("unlucky")
    return state


fussy = djobs.Debounce.make(
    "fussy", event=Hit, state=Seen, on_event=failing_on_13, execute=keep, flush_after="1 hour", max_events=25
)


@pytest.mark.trio
async def test_adds_applied_together_answer_each_as_if_alone(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
) -> None:
    flushed.clear()
    async with open_test_engine([fussy], storage=layer) as engine:
        client = engine.client.debounce(fussy)
        results: dict[int, Any] = {}

        async def send(n: int) -> None:
            results[n] = await client.add(id="x", event=Hit(n), event_id=f"e{n}" if n % 10 == 5 else None)

        async with trio.open_nursery() as nursery:
            for n in range(30):
                nursery.start_soon(send, n)
                if n == 0:
                    await trio.testing.wait_all_tasks_blocked()  # the first add is on its way; the rest queue
        assert "unlucky" in failure(results[13]).message
        await engine.wait_idle()
        # Batch one took 25 events (max_events) and flushed; the rest started batch two.
        # The failed event left no trace, although its reducer changed the state in place.
        assert len(flushed) == 1 and len(flushed[0]) == 25
        state = success(await client.get_state("x")).state
        assert state is not None and sorted(flushed[0] + state.ns) == [n for n in range(30) if n != 13]
        # Each add was answered as if it had been alone: its place in its batch.
        for batch in (flushed[0], state.ns):
            for place, n in enumerate(batch, 1):
                added = success(results[n])
                assert (added.event_count, added.created) == (place, place == 1)
        # An event id is remembered by the add that carried it.
        duplicate = await client.add(id="x", event=Hit(99), event_id="e15")
        assert isinstance(failure(duplicate), djobs.DuplicateEventError)
