"""Instances, alarms, idempotency keys and instance leases: what every storage guarantees.

Each test runs against every storage (see ``conftest.py``); those that need
two processes on one database run against the storages that can be shared.
"""

from __future__ import annotations

import pytest
import trio

import djobs
from djobs.storage import Checkin, ClearAlarm, InstanceLister, InstanceRecord, SetAlarm, StorageLayer

from . import FullStorage

pytestmark = pytest.mark.trio


def record(key: str = "continuous:j:a", **kw: object) -> InstanceRecord:
    return InstanceRecord(key=key, kind="continuous", name="j", instance_id="a", status="running", **kw)  # type: ignore[arg-type]


async def test_a_missing_instance_loads_as_none_and_the_database_answers(storage: FullStorage) -> None:
    assert await storage.load("continuous:j:nobody") is None
    assert await storage.healthcheck()


async def test_every_field_of_an_instance_round_trips(storage: FullStorage) -> None:
    full = InstanceRecord(
        key="task:t:x",
        kind="task",
        name="t",
        instance_id="x",
        status="active",
        state=b'{"n":1}',
        tenant_id="acme",
        run_count=7,
        attempt=3,
        event_count=2**40,
        execute_count=5,
        started_at=1_767_225_600_123,
        data=b"\x00\xffbinary",
        created_at=1_767_225_600_000,
        updated_at=1_767_225_601_000,
        version=9,
    )
    await storage.commit(Checkin(key=full.key, record=full))
    loaded = await storage.load(full.key)
    assert loaded == (full, None)
    bare = record("debounce:d:y", state=None)
    await storage.commit(Checkin(key=bare.key, record=bare))
    assert await storage.load(bare.key) == (bare, None)


async def test_a_second_commit_updates_the_row_but_keeps_what_never_changes(storage: FullStorage) -> None:
    await storage.commit(Checkin(key="k", record=record("k", state=b"1", created_at=10, updated_at=10)))
    changed = InstanceRecord(
        key="k",
        kind="other",
        name="other",
        instance_id="other",
        status="stopped",
        state=b"2",
        run_count=1,
        created_at=99,
        updated_at=20,
        version=1,
    )
    await storage.commit(Checkin(key="k", record=changed))
    loaded = await storage.load("k")
    assert loaded is not None
    row = loaded[0]
    assert (row.status, row.state, row.run_count, row.updated_at, row.version) == ("stopped", b"2", 1, 20, 1)
    # Identity and birth are written once.
    assert (row.kind, row.name, row.instance_id, row.created_at) == ("continuous", "j", "a", 10)


async def test_checkin_is_atomic_with_its_idempotency_key(storage: FullStorage) -> None:
    await storage.commit(Checkin(key="continuous:j:a", record=record(state=b"1"), event_id="e1"))
    with pytest.raises(djobs.DuplicateEventError):
        await storage.commit(
            Checkin(key="continuous:j:a", record=record(state=b"2"), alarm=SetAlarm(5, "run"), event_id="e1")
        )
    loaded = await storage.load("continuous:j:a")
    assert loaded is not None
    assert loaded[0].state == b"1" and loaded[1] is None  # nothing of the refused check-in was written
    assert await storage.has_event_id("continuous:j:a", "e1")
    assert not await storage.has_event_id("continuous:j:a", "e2")


async def test_idempotency_keys_belong_to_one_instance(storage: FullStorage) -> None:
    await storage.commit(Checkin(key="a", record=record("a"), event_id="same"))
    await storage.commit(Checkin(key="b", record=record("b"), event_id="same"))  # another instance: accepted
    assert await storage.has_event_id("a", "same") and await storage.has_event_id("b", "same")
    # A refused delete deletes nothing.
    with pytest.raises(djobs.DuplicateEventError):
        await storage.commit(Checkin(key="a", record=None, event_id="same"))
    assert await storage.load("a") is not None


async def test_alarms_are_claimed_with_a_lease_and_fire_again_if_not_handled(storage: FullStorage) -> None:
    await storage.commit(Checkin(key="k1", record=record("k1"), alarm=SetAlarm(100, "run")))
    await storage.commit(Checkin(key="k2", record=record("k2"), alarm=SetAlarm(300, "run")))
    assert await storage.next_alarm_at() == 100
    [claimed] = await storage.claim_alarms(now_ms=150, lease_ms=1000, limit=10)
    assert (claimed.key, claimed.fire_at) == ("k1", 100)
    assert await storage.claim_alarms(now_ms=200, lease_ms=1000, limit=10) == []  # leased
    assert await storage.next_alarm_at() == 300
    again = await storage.claim_alarms(now_ms=1200, lease_ms=1000, limit=10)
    assert sorted(a.key for a in again) == ["k1", "k2"]  # k1's lease ran out
    await storage.commit(Checkin(key="k1", record=record("k1"), alarm=ClearAlarm()))
    await storage.release_alarms([a.id for a in again])
    assert await storage.next_alarm_at() == 300
    # Setting an alarm gives it a new id, so an old claim can be told from it.
    await storage.commit(Checkin(key="k2", record=record("k2"), alarm=SetAlarm(300, "run")))
    loaded = await storage.load("k2")
    assert loaded is not None and loaded[1] is not None
    assert loaded[1].id not in {a.id for a in again}


async def test_claims_take_the_earliest_alarms_first_up_to_the_limit(storage: FullStorage) -> None:
    for n, at in enumerate([500, 100, 400, 200, 300]):
        await storage.commit(Checkin(key=f"k{n}", record=record(f"k{n}"), alarm=SetAlarm(at, f"p{n}")))
    first = await storage.claim_alarms(now_ms=1000, lease_ms=10_000, limit=2)
    # Which alarms a claim takes is promised; the order of the list is not.
    assert sorted((a.key, a.fire_at, a.purpose) for a in first) == [("k1", 100, "p1"), ("k3", 200, "p3")]
    rest = await storage.claim_alarms(now_ms=1000, lease_ms=10_000, limit=10)
    assert sorted(a.fire_at for a in rest) == [300, 400, 500]
    # Claimed alarms still count for when the sleeper next looks: at the end of their lease.
    assert await storage.next_alarm_at() == 11_000


async def test_claims_with_prefixes_take_only_the_alarms_of_those_definitions(storage: FullStorage) -> None:
    # An engine that registered some definitions (a script, a rolling deploy) claims theirs only.
    for key, at in [("continuous:mine:a", 300), ("continuous:other:b", 100), ("task:mine:c", 200)]:
        await storage.commit(Checkin(key=key, record=record(key), alarm=SetAlarm(at, "run")))
    mine = ["continuous:mine:", "task:mine:"]
    assert await storage.next_alarm_at(mine) == 200
    assert await storage.next_alarm_at(["debounce:nobody:"]) is None
    claimed = await storage.claim_alarms(now_ms=1000, lease_ms=10_000, limit=10, prefixes=mine)
    assert sorted(a.key for a in claimed) == ["continuous:mine:a", "task:mine:c"]
    assert await storage.claim_alarms(now_ms=1000, lease_ms=10_000, limit=10, prefixes=[]) == []
    assert await storage.next_alarm_at() == 100  # the other definition's alarm is still due
    [other] = await storage.claim_alarms(now_ms=1000, lease_ms=10_000, limit=10)
    assert other.key == "continuous:other:b"


async def test_an_instance_has_one_alarm_and_none_leaves_it_alone(storage: FullStorage) -> None:
    await storage.commit(Checkin(key="k", record=record("k"), alarm=SetAlarm(100, "first")))
    before = await storage.load("k")
    assert before is not None and before[1] is not None
    await storage.commit(Checkin(key="k", record=record("k", run_count=1), alarm=None))
    kept = await storage.load("k")
    assert kept is not None and kept[1] == before[1]
    await storage.commit(Checkin(key="k", record=record("k"), alarm=SetAlarm(50, "second")))
    after = await storage.load("k")
    assert after is not None and after[1] is not None
    assert (after[1].fire_at, after[1].purpose) == (50, "second") and after[1].id != before[1].id
    assert [a.purpose for a in await storage.claim_alarms(now_ms=1000, lease_ms=10, limit=10)] == ["second"]
    await storage.commit(Checkin(key="k", record=record("k"), alarm=ClearAlarm()))
    cleared = await storage.load("k")
    assert cleared is not None and cleared[1] is None
    assert await storage.next_alarm_at() is None


async def test_a_released_alarm_is_due_again_at_its_fire_time(storage: FullStorage) -> None:
    await storage.commit(Checkin(key="k", record=record("k"), alarm=SetAlarm(100, "run")))
    [alarm] = await storage.claim_alarms(now_ms=150, lease_ms=60_000, limit=10)
    assert await storage.next_alarm_at() == 60_150
    await storage.release_alarms([alarm.id])
    assert await storage.next_alarm_at() == 100
    assert await storage.claim_alarms(now_ms=150, lease_ms=60_000, limit=10) == [alarm]
    await storage.release_alarms([])  # nothing to release is not an error


async def test_deleting_an_instance_removes_its_alarm_and_event_ids(storage: FullStorage) -> None:
    await storage.commit(Checkin(key="k", record=record("k"), alarm=SetAlarm(1, "run"), event_id="e"))
    await storage.commit(Checkin(key="k", record=None))
    assert await storage.load("k") is None
    assert await storage.next_alarm_at() is None
    assert not await storage.has_event_id("k", "e")


async def test_an_instance_lease_is_free_expired_or_ours(storage: FullStorage) -> None:
    assert await storage.acquire_instance_lease("k", "a", now_ms=0, ttl_ms=100)  # free
    assert await storage.acquire_instance_lease("k", "a", now_ms=50, ttl_ms=100)  # ours: extended to 150
    assert not await storage.acquire_instance_lease("k", "b", now_ms=149, ttl_ms=100)  # a's, not expired
    assert await storage.acquire_instance_lease("k", "b", now_ms=150, ttl_ms=100)  # expired: b takes it
    assert not await storage.acquire_instance_lease("k", "a", now_ms=200, ttl_ms=100)
    assert await storage.acquire_instance_lease("other", "a", now_ms=200, ttl_ms=100)  # per instance


async def test_only_the_holder_renews_or_releases_an_instance_lease(storage: FullStorage) -> None:
    assert await storage.acquire_instance_lease("k1", "a", now_ms=0, ttl_ms=100)
    assert await storage.acquire_instance_lease("k2", "a", now_ms=0, ttl_ms=100)
    assert await storage.acquire_instance_lease("k3", "b", now_ms=0, ttl_ms=100)
    await storage.renew_instance_leases(["k1", "k2", "k3"], "a", until_ms=1000)
    assert not await storage.acquire_instance_lease("k1", "b", now_ms=500, ttl_ms=100)  # renewed
    assert await storage.acquire_instance_lease("k3", "c", now_ms=500, ttl_ms=100)  # b's was not renewed by a
    await storage.release_instance_leases(["k1", "k3"], "a")  # k3 is c's: untouched
    assert await storage.acquire_instance_lease("k1", "b", now_ms=500, ttl_ms=100)  # released
    assert not await storage.acquire_instance_lease("k3", "b", now_ms=550, ttl_ms=100)
    await storage.renew_instance_leases([], "a", until_ms=1000)
    await storage.release_instance_leases([], "a")
    # The holder of a lease, expired or not, for the engine's dead-owner check and its wait log.
    assert await storage.instance_lease_holder("k1") == ("b", 600)
    assert await storage.instance_lease_holder("k3") == ("c", 600)
    assert await storage.instance_lease_holder("nobody") is None


async def test_two_processes_never_claim_one_alarm(shared_layer: StorageLayer) -> None:
    async with shared_layer.open() as one, shared_layer.open() as two:
        for n in range(60):
            await one.commit(Checkin(key=f"k{n}", record=record(f"k{n}"), alarm=SetAlarm(n, "run")))
        claimed: list[list[int]] = [[], []]

        async def claim(storage: djobs.storage.Storage, into: list[int]) -> None:
            while batch := await storage.claim_alarms(now_ms=100, lease_ms=60_000, limit=7):
                into.extend(a.id for a in batch)
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(claim, one, claimed[0])
                nursery.start_soon(claim, two, claimed[1])
        everything = claimed[0] + claimed[1]
        assert len(everything) == len(set(everything)) == 60


async def test_two_processes_never_hold_one_instance_lease(shared_layer: StorageLayer) -> None:
    async with shared_layer.open() as one, shared_layer.open() as two:
        winners: list[str] = []

        async def take(storage: djobs.storage.Storage, owner: str) -> None:
            if await storage.acquire_instance_lease("k", owner, now_ms=0, ttl_ms=1000):
                winners.append(owner)

        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(take, one if n % 2 else two, f"owner-{n}")
        assert len(winners) == 1
        # The other process sees the holder's lease, and takes it once it expires.
        assert not await one.acquire_instance_lease("k", "late", now_ms=999, ttl_ms=1000)
        assert await two.acquire_instance_lease("k", "late", now_ms=1000, ttl_ms=1000)


# -- listing instances (workflow clients' ``list``) -------------------------------------------------


async def test_instances_are_listed_by_kind_and_name_in_key_order_with_filters_and_a_cursor(
    storage: FullStorage,
) -> None:
    assert isinstance(storage, InstanceLister)
    rows = [
        InstanceRecord(key="workflow:w:b", kind="workflow", name="w", instance_id="b", status="sleeping"),
        InstanceRecord(key="workflow:w:a", kind="workflow", name="w", instance_id="a", status="completed"),
        InstanceRecord(
            key="workflow:w:acme\x1fa", kind="workflow", name="w", instance_id="a", status="sleeping", tenant_id="acme"
        ),
        InstanceRecord(key="workflow:other:a", kind="workflow", name="other", instance_id="a", status="sleeping"),
        InstanceRecord(key="task:w:a", kind="task", name="w", instance_id="a", status="idle"),
    ]
    for row in rows:
        await storage.commit(Checkin(key=row.key, record=row))
    everything = await storage.list_instances("workflow", "w", None, None, None, 100)
    assert [r.key for r in everything] == ["workflow:w:a", "workflow:w:acme\x1fa", "workflow:w:b"]
    assert everything[0] == rows[1]
    sleeping = await storage.list_instances("workflow", "w", None, "sleeping", None, 100)
    assert [r.key for r in sleeping] == ["workflow:w:acme\x1fa", "workflow:w:b"]
    acme = await storage.list_instances("workflow", "w", "acme", None, None, 100)
    assert [r.instance_id for r in acme] == ["a"]
    page = await storage.list_instances("workflow", "w", None, None, "workflow:w:a", 1)
    assert [r.key for r in page] == ["workflow:w:acme\x1fa"]
