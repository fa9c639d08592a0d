"""The storage conformance suite, shipped: `check_storage` proves a storage layer.

Every storage djobs ships passes it (memory, SQLite files, PostgreSQL), run
from djobs's own tests; someone writing a storage layer of their own calls it
from theirs, as trio's ``check_two_way_stream`` proves a stream. Each check
writes and reads rows through the `Storage`, `QueueStorage` and
`InstanceLister` protocols alone (and `DeadLetterStorage`, when the storage
keeps dead letters) and asserts what the engine relies on: atomic check-ins,
idempotency keys, alarm and job claims, lease fences, concurrency and rate
limits, cancel and retry, cron compare-and-set, listing order, purge, dead
letters (written again under an id, listed, revived, discarded, purged).

Times passed to the storage are small epoch-millisecond numbers chosen by each
check: a storage judges leases and due times by the times it is given. A
storage that judges leases by a clock of its own (djobs's SQLite and
PostgreSQL outside a ``MockClock``) is checked in its mode that takes the
caller's times (``lease_clock="engine"``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any, Final, Protocol

import msgspec
import trio

from .._errors import DuplicateEventError, StorageError, ValidationError
from ..storage import (
    AlarmRunStore,
    CancelRequests,
    Checkin,
    ClearAlarm,
    InstanceCheckpointer,
    InstanceCreator,
    InstanceExistsError,
    InstanceLeaseLoader,
    InstanceLister,
    InstanceRecord,
    LeaseFreer,
    LeaseLostError,
    QueueStorage,
    SetAlarm,
    Storage,
    StorageLayer,
)
from ..storage._base import (
    CronSpec,
    DeadLetter,
    DeadLetterFilter,
    DeadLetterStorage,
    InstanceRevival,
    JobFilter,
    JobRevival,
    JobSettlement,
    NewJob,
    QueueLimit,
)


class _Full(Storage, QueueStorage, Protocol):
    """A storage with the queue, as the queue checks use it."""


_Check = Callable[[Any], Awaitable[None]]
_SharedCheck = Callable[[StorageLayer], Awaitable[None]]

#: What `check_storage` is given: a function that makes a layer on a new, empty
#: database; or an async context manager function that yields one and drops the
#: database afterwards.
NewDatabase = Callable[[], StorageLayer | AbstractAsyncContextManager[StorageLayer]]


async def check_storage(new_database: NewDatabase, *, queue: bool = True, shared: bool = False) -> None:
    """Prove a storage layer: run every conformance check against it, each on a new, empty database.

    Args:
        new_database: Called once per check: returns a `StorageLayer` on a new,
            empty database (``djobs.memory``), or an async context manager that
            yields one and cleans up after it (a throwaway schema or file).
        queue: Also check the job queue and cron jobs (`QueueStorage`); the
            opened storage must implement that protocol.
        shared: Also check two connections to one database, as two engine
            processes have: the layer's ``open()`` is entered twice at once and
            both must see one database (``djobs.memory`` does: every open of
            one layer is a store on its tables).

    Raises:
        AssertionError: A check failed; the message names it and what differed.
        ValidationError: `new_database` is not callable (a layer given where a function
            that makes one is taken).

    Examples:
        ```python
        @pytest.mark.trio
        async def test_my_storage_conforms(tmp_path):
            paths = iter(tmp_path / f"{n}.db" for n in range(1000))
            await djobs.testing.check_storage(lambda: djobs.sqlite(next(paths)), shared=True)
        ```
    """
    if not callable(new_database):
        raise ValidationError(
            "check_storage takes a function that makes a new database each call (djobs.memory, or"
            f" lambda: djobs.sqlite(next(paths))), not a layer: got {type(new_database).__name__}"
        )
    checks: list[tuple[str, Callable[[StorageLayer], Awaitable[None]]]] = []
    for check in _INSTANCE_CHECKS + (_QUEUE_CHECKS if queue else ()):
        checks.append((check.__name__, _opened(check, queue)))
    checks.append(("an InstanceLister lists instances", _listed))
    checks.append(("CancelRequests notes cancels", _cancel_notes))
    checks.append(("an InstanceCreator creates once, with the lease", _created))
    checks.append(("an InstanceCheckpointer writes over a row only under its lease", _checkpointed))
    checks.append(("an InstanceLeaseLoader takes a lease and reads the row in one", _lease_loaded))
    checks.append(("an AlarmRunStore claims with leases and rows, writes back in one", _alarm_runs))
    checks.append(("DeadLetterStorage keeps dead letters", _dead_letters(queue)))
    checks.append(("a LeaseFreer frees every lease of an exited owner", _leases_freed(queue)))
    if shared:
        checks += [(c.__name__, c) for c in _SHARED_CHECKS + (_SHARED_QUEUE_CHECKS if queue else ())]
    for name, run in checks:
        async with _database(new_database) as layer:
            try:
                await run(layer)
            except AssertionError as exc:
                what = name.strip("_").replace("_", " ")
                raise AssertionError(f"storage check failed: {what}: {exc}".rstrip(": ")) from exc


def _opened(check: _Check, queue: bool) -> Callable[[StorageLayer], Awaitable[None]]:
    async def run(layer: StorageLayer) -> None:
        async with layer.open() as storage:
            if queue:
                assert isinstance(storage, QueueStorage), f"{storage!r} does not implement QueueStorage"
            await check(storage)

    return run


async def _listed(layer: StorageLayer) -> None:
    async with layer.open() as storage:
        if isinstance(storage, InstanceLister):  # optional: workflow clients' ``list`` needs it
            for check in _LISTER_CHECKS:
                await check(storage)


async def _cancel_notes(layer: StorageLayer) -> None:
    async with layer.open() as storage:
        if isinstance(storage, CancelRequests):  # optional: a workflow's cancel from another process needs it
            await _a_cancel_request_is_noted_without_the_lease_kept_once_and_cleared(storage)


async def _a_cancel_request_is_noted_without_the_lease_kept_once_and_cleared(storage: Any) -> None:
    assert await storage.cancel_requests([]) == {}
    assert await storage.acquire_instance_lease("workflow:w:a", "engine-a", 0, 30_000)
    # The lease is another engine's. Whether the call wrote the note (None: the storage does not say).
    assert await storage.request_cancel("workflow:w:a", "first reason", 10) in (True, None)
    assert await storage.request_cancel("workflow:w:a", "second reason", 20) in (False, None)  # the first stands
    assert await storage.request_cancel("workflow:w:b", None, 30) in (True, None)
    noted = await storage.cancel_requests(["workflow:w:a", "workflow:w:b", "workflow:w:c"])
    assert noted == {"workflow:w:a": "first reason", "workflow:w:b": None}, noted
    await storage.clear_cancel_request("workflow:w:a")
    await storage.clear_cancel_request("workflow:w:nobody")  # nothing to clear is not an error
    assert await storage.cancel_requests(["workflow:w:a", "workflow:w:b"]) == {"workflow:w:b": None}


async def _created(layer: StorageLayer) -> None:
    async with layer.open() as storage:
        if isinstance(storage, InstanceCreator):  # optional: a workflow's start is one write with it
            await _an_instance_is_created_once_with_its_lease_or_not_at_all(storage)


async def _an_instance_is_created_once_with_its_lease_or_not_at_all(storage: Any) -> None:
    new = Checkin(key="workflow:w:a", record=_record("workflow:w:a", state=b"1"), alarm=SetAlarm(500, "run"))
    assert await storage.create_instance(new, "engine-a", 0, 1000) is None
    stored = await storage.load("workflow:w:a")
    assert stored is not None and stored[0].state == b"1" and stored[1] is not None and stored[1].fire_at == 500
    assert not await storage.acquire_instance_lease("workflow:w:a", "engine-b", 999, 100)  # created with a's lease
    # A second create writes nothing, not even the lease: it answers what is stored.
    again = Checkin(key="workflow:w:a", record=_record("workflow:w:a", state=b"2"), alarm=SetAlarm(900, "run"))
    await storage.release_instance_leases(["workflow:w:a"], "engine-a")
    existing = await storage.create_instance(again, "engine-b", 10, 1000)
    assert existing is not None and existing[0].state == b"1" and existing[1] is not None, existing
    assert existing[1].fire_at == 500
    assert await storage.acquire_instance_lease("workflow:w:a", "engine-c", 20, 100)  # b did not keep it
    # A key whose lease another engine holds is not created.
    assert await storage.acquire_instance_lease("workflow:w:b", "engine-c", 0, 1000)
    with _raises(LeaseLostError):
        await storage.create_instance(Checkin(key="workflow:w:b", record=_record("workflow:w:b")), "engine-a", 10, 1000)
    assert await storage.load("workflow:w:b") is None


async def _lease_loaded(layer: StorageLayer) -> None:
    async with layer.open() as storage:
        if isinstance(storage, InstanceLeaseLoader):  # optional: an instance's first add is one write with it
            await _a_lease_is_taken_with_the_row_or_nothing_is(storage)


async def _a_lease_is_taken_with_the_row_or_nothing_is(storage: Any) -> None:
    key = "debounce:d:a"
    assert await storage.lease_and_load(key, "engine-a", 0, 1000) == (True, None)  # nothing stored yet
    record = _record(key, state=b"1")
    await storage.commit(Checkin(key=key, record=record, alarm=SetAlarm(500, "flush_after"), lease_owner="engine-a"))
    taken, stored = await storage.lease_and_load(key, "engine-a", 10, 1000)  # held already: renewed
    assert taken and stored is not None and stored[0] == record, stored
    assert stored[1] is not None and stored[1].fire_at == 500 and stored[1].purpose == "flush_after", stored
    # Another engine gets neither the lease nor the row while a holds it; once a gives it up, both.
    assert await storage.lease_and_load(key, "engine-b", 500, 1000) == (False, None)
    holder = await storage.instance_lease_holder(key)
    assert holder is not None and holder[0] == "engine-a", holder
    await storage.release_instance_leases([key], "engine-a")
    taken, stored = await storage.lease_and_load(key, "engine-b", 600, 1000)
    assert taken and stored is not None and stored[0] == record, stored
    # A's check-in after b took the lease, and one on a key nobody leased, write nothing: no row, no alarm.
    stale = _record(key, state=b"2")
    with _raises(LeaseLostError):
        await storage.commit(Checkin(key=key, record=stale, alarm=SetAlarm(900, "flush_after"), lease_owner="engine-a"))
    stored = await storage.load(key)
    assert stored is not None and stored[0] == record and stored[1] is not None and stored[1].fire_at == 500, stored
    unleased = Checkin(
        key="debounce:d:b", record=_record("debounce:d:b"), alarm=SetAlarm(9, "run"), lease_owner="engine-a"
    )
    with _raises(LeaseLostError):
        await storage.commit(unleased)
    assert await storage.load("debounce:d:b") is None


async def _checkpointed(layer: StorageLayer) -> None:
    async with layer.open() as storage:
        if isinstance(storage, InstanceCheckpointer):  # optional: a workflow's checkpoint is one statement with it
            await _a_checkpoint_writes_its_columns_under_the_lease_and_nothing_without_it(storage)


async def _a_checkpoint_writes_its_columns_under_the_lease_and_nothing_without_it(storage: Any) -> None:
    key = "workflow:w:a"
    first = _record(key, state=b"1", tenant_id="acme", data=b"[]", created_at=5, updated_at=5)
    assert (
        await storage.create_instance(Checkin(key=key, record=first, alarm=SetAlarm(500, "run")), "engine-a", 0, 1000)
        is None
    )
    step = _record(key, state=b"1", tenant_id="acme", data=b"[1]", created_at=5, updated_at=20)
    step.status, step.run_count, step.execute_count = "sleeping", 2, 1
    await storage.checkpoint_instance(step, "engine-a")
    stored = await storage.load(key)
    assert stored is not None and stored[0] == step, stored
    assert stored[1] is not None and stored[1].fire_at == 500, "a checkpoint leaves the alarm as it is"
    # Another engine's checkpoint writes nothing, and neither does one under a lease released.
    late = _record(key, state=b"1", tenant_id="acme", data=b"[1,2]", created_at=5, updated_at=30)
    with _raises(LeaseLostError):
        await storage.checkpoint_instance(late, "engine-b")
    await storage.release_instance_leases([key], "engine-a")
    with _raises(LeaseLostError):
        await storage.checkpoint_instance(late, "engine-a")
    stored = await storage.load(key)
    assert stored is not None and stored[0] == step, stored
    # A key leased and not stored is stored whole.
    assert await storage.acquire_instance_lease("workflow:w:b", "engine-a", 0, 1000)
    whole = _record("workflow:w:b", state=b"2", data=b"[]", created_at=7, updated_at=8)
    await storage.checkpoint_instance(whole, "engine-a")
    stored = await storage.load("workflow:w:b")
    assert stored is not None and stored[0] == whole and stored[1] is None, stored
    # An end clears the alarm with the row; refused, it clears nothing.
    ended = _record(key, state=b"1", tenant_id="acme", data=b"[1]", created_at=5, updated_at=40)
    ended.status = "completed"
    with _raises(LeaseLostError):
        await storage.checkpoint_instance(ended, "engine-a", clear_alarm=True)
    stored = await storage.load(key)
    assert stored is not None and stored[0] == step and stored[1] is not None, stored
    assert await storage.acquire_instance_lease(key, "engine-a", 50, 1000)
    await storage.checkpoint_instance(ended, "engine-a", clear_alarm=True)
    stored = await storage.load(key)
    assert stored is not None and stored[0] == ended and stored[1] is None, stored


async def _alarm_runs(layer: StorageLayer) -> None:
    async with layer.open() as storage:
        if isinstance(storage, AlarmRunStore):  # optional: due alarms then fire in batches
            await _a_batch_claim_takes_the_leases_and_rows_of_the_keys_it_runs_here_only(storage)
            await _check_ins_written_back_together_fail_one_by_one_before_they_write(storage)


async def _a_batch_claim_takes_the_leases_and_rows_of_the_keys_it_runs_here_only(storage: Any) -> None:
    for key, at in [("continuous:j:a", 100), ("continuous:j:b", 200), ("continuous:j:c", 300), ("task:t:d", 50)]:
        await storage.commit(Checkin(key=key, record=_record(key, state=b"1"), alarm=SetAlarm(at, "run")))
    await storage.commit(Checkin(key="continuous:j:gone", record=None))
    assert await storage.acquire_instance_lease("continuous:j:b", "engine-b", 0, 10_000)  # another engine's
    asked: list[str] = []

    def runs_here(key: str) -> bool:
        asked.append(key)
        return key != "continuous:j:c"  # c is busy in this engine: not leased, not loaded

    claimed = await storage.claim_alarm_runs(1000, 60_000, 10, ["continuous:j:"], "engine-a", 5000, runs_here)
    by_key = {c.alarm.key: c for c in claimed}
    assert sorted(by_key) == sorted(asked) == ["continuous:j:a", "continuous:j:b", "continuous:j:c"]
    a, b, c = by_key["continuous:j:a"], by_key["continuous:j:b"], by_key["continuous:j:c"]
    assert a.leased and a.stored is not None and a.stored[0].state == b"1" and a.stored[1] == a.alarm
    assert not b.leased and b.stored is None  # engine-b holds it: left to the actor, which waits
    assert not c.leased and c.stored is None
    assert await storage.instance_lease_holder("continuous:j:a") == ("engine-a", 6000)
    assert await storage.instance_lease_holder("continuous:j:c") is None
    # The claim hid the alarms as claim_alarms does; the other definition's is still due.
    assert await storage.claim_alarm_runs(2000, 60_000, 10, ["continuous:j:"], "engine-a", 5000, runs_here) == []
    assert [x.key for x in await storage.claim_alarms(2000, 60_000, 10)] == ["task:t:d"]
    # The run's write-back sets its next alarm: told from the claim, due at its own fire time
    # (the claim's lease, a minute, does not hide it), and the lease is given up with it.
    assert a.stored[0] is not None
    nxt = Checkin(key=a.alarm.key, record=a.stored[0], alarm=SetAlarm(7000, "run"), lease_owner="engine-a")
    assert await storage.commit_checkins([nxt], release_leases=True) == [None]
    loaded = await storage.load("continuous:j:a")
    assert loaded is not None and loaded[1] is not None and loaded[1] != a.alarm and loaded[1].fire_at == 7000
    assert await storage.instance_lease_holder("continuous:j:a") is None
    assert await storage.claim_alarms(6999, 60_000, 10, ["continuous:j:a"]) == []
    assert await storage.claim_alarms(7000, 60_000, 10, ["continuous:j:a"]) == [loaded[1]]


async def _check_ins_written_back_together_fail_one_by_one_before_they_write(storage: Any) -> None:
    x, y, z, new = keys = ["continuous:j:x", "continuous:j:y", "continuous:j:z", "continuous:j:new"]
    for key in keys[:3]:
        first = Checkin(key=key, record=_record(key, state=b"0"), alarm=SetAlarm(100, "run"), event_id="e")
        await storage.commit(first)
        assert await storage.acquire_instance_lease(key, "engine-a", 0, 10_000)
    assert await storage.acquire_instance_lease(new, "engine-a", 0, 10_000)
    await storage.release_instance_leases([y], "engine-a")
    assert await storage.acquire_instance_lease(y, "engine-b", 0, 10_000)

    def write(key: str, **kw: Any) -> Checkin:
        return Checkin(key=key, record=_record(key, state=b"1"), lease_owner="engine-a", **kw)

    errors = await storage.commit_checkins(
        [write(x, alarm=SetAlarm(500, "run")), write(y), write(z, event_id="e"), write(new, alarm=SetAlarm(900, "run"))]
    )
    kinds = [type(e).__name__ for e in errors]
    assert kinds == ["NoneType", "LeaseLostError", "DuplicateEventError", "NoneType"], errors
    stored = {key: await storage.load(key) for key in keys}
    assert [None if v is None else v[0].state for v in stored.values()] == [b"1", b"0", b"0", b"1"]
    # y: engine-b's lease, z: a repeated event id; nothing of either was written.
    fire_at = {k: None if v is None or v[1] is None else v[1].fire_at for k, v in stored.items()}
    assert fire_at == {x: 500, y: 100, z: 100, new: 900}, fire_at
    assert await storage.commit_checkins([]) == []
    # Written back with release_leases: the leases of the check-ins written are given up
    # with them; one that failed keeps its lease, and another engine's lease stays its own.
    assert await storage.acquire_instance_lease(z, "engine-a", 0, 10_000)
    errors = await storage.commit_checkins(
        [write(x, alarm=SetAlarm(600, "run")), write(y), write(z, event_id="e")], release_leases=True
    )
    assert [type(e).__name__ for e in errors] == ["NoneType", "LeaseLostError", "DuplicateEventError"], errors
    assert await storage.instance_lease_holder(x) is None
    assert (await storage.instance_lease_holder(y) or ("",))[0] == "engine-b"
    assert (await storage.instance_lease_holder(z) or ("",))[0] == "engine-a"
    loaded = await storage.load(x)
    assert loaded is not None and loaded[1] is not None and loaded[1].fire_at == 600


def _leases_freed(queue: bool) -> Callable[[StorageLayer], Awaitable[None]]:
    async def run(layer: StorageLayer) -> None:
        async with layer.open() as storage:
            if isinstance(storage, LeaseFreer):  # optional: an exited engine's leases end at once with it
                await _an_exited_owners_leases_are_freed_and_no_one_elses(storage, queue)

    return run


async def _an_exited_owners_leases_are_freed_and_no_one_elses(storage: Any, queue: bool) -> None:
    exited, alive, foreign = "host-1:7:a", "host-1:8:b", "host-2:7:a"
    for key in ("k1", "k4"):
        await storage.commit(Checkin(key=key, record=_record(key), alarm=SetAlarm(100, "run")))
    # k2: a guard, set at 150 as if claimed until 60,150 (a workflow's verb); k3: an alarm set for later.
    await storage.commit(Checkin(key="k2", record=_record("k2"), alarm=SetAlarm(150, "run", 60_150)))
    await storage.commit(Checkin(key="k3", record=_record("k3"), alarm=SetAlarm(5_000, "run")))
    assert sorted(a.key for a in await storage.claim_alarms(now_ms=200, lease_ms=60_000, limit=10)) == ["k1", "k4"]
    for key, owner in (("k1", exited), ("k2", exited), ("k3", exited), ("k4", alive), ("k5", foreign)):
        assert await storage.acquire_instance_lease(key, owner, now_ms=200, ttl_ms=30_000)
    jobs = 0
    if queue:
        await storage.enqueue_jobs([_job(1), _job(2)])
        assert [j.id for j in await storage.claim_jobs(10, 100_000, exited, ["send"], 1)] == ["job-0001"]
        assert [j.id for j in await storage.claim_jobs(10, 100_000, alive, ["send"], 1)] == ["job-0002"]
        jobs = 1
    assert await storage.lease_owners("host-1") == [exited, alive]
    assert await storage.lease_owners("host") == []  # a host is the whole part before the pid
    # Two alarm claims (k1's, k2's guard), three instance leases, and the job's lease.
    assert await storage.free_leases([exited], 300) == 5 + jobs
    assert await storage.free_leases([], 300) == 0
    assert await storage.free_leases([exited], 300) == 0  # nothing left to free
    again = await storage.claim_alarms(now_ms=300, lease_ms=60_000, limit=10)
    assert sorted((a.key, a.fire_at) for a in again) == [("k1", 100), ("k2", 150)]  # due at their fire times
    loaded = await storage.load("k3")
    assert loaded is not None and loaded[1] is not None and loaded[1].fire_at == 5_000, loaded  # not claimed: as set
    assert [await storage.instance_lease_holder(k) for k in ("k1", "k2", "k3")] == [None, None, None]
    for key, owner in (("k4", alive), ("k5", foreign)):
        holder = await storage.instance_lease_holder(key)
        assert holder is not None and holder[0] == owner, holder
    if queue:
        reclaimed = await storage.reclaim_expired(300, _CANCELLED, _LEASE_LOST, 10)
        assert [(r.id, r.worker_id) for r in reclaimed] == [("job-0001", exited)]
    assert await storage.lease_owners("host-1") == [alive]  # its job's row reclaimed: nothing of it left


def _dead_letters(queue: bool) -> Callable[[StorageLayer], Awaitable[None]]:
    async def run(layer: StorageLayer) -> None:
        async with layer.open() as storage:
            if isinstance(storage, DeadLetterStorage):  # optional: ``client.dead_letters`` needs it
                await _a_letter_written_again_under_its_id_replaces_it_and_a_replay_changes_nothing(storage)
                await _letters_list_newest_first_then_by_id_in_code_point_order(storage)
                await _an_instance_letter_is_revived_only_over_nothing_or_its_status_and_no_others_lease(storage)
                await _letters_are_filtered_discarded_and_purged_by_age(storage)
                if queue:
                    await _a_jobs_letter_shows_its_newest_failure_whatever_was_stored_before(storage)

    return run


@asynccontextmanager
async def _database(new_database: NewDatabase) -> AsyncIterator[StorageLayer]:
    made = new_database()
    if isinstance(made, AbstractAsyncContextManager):
        async with made as layer:
            yield layer
    else:
        yield made


@contextmanager
def _raises(error: type[BaseException]) -> Iterator[None]:
    """Like ``pytest.raises``, without pytest: the block must raise `error`."""
    try:
        yield
    except error:
        return
    raise AssertionError(f"expected {error.__name__}, nothing was raised")


# -- instances, alarms, idempotency keys, instance leases --------------------------------


def _record(key: str = "continuous:j:a", **kw: object) -> InstanceRecord:
    return InstanceRecord(key=key, kind="continuous", name="j", instance_id="a", status="running", **kw)  # type: ignore[arg-type]


async def _a_missing_instance_loads_as_none_and_the_database_answers(storage: _Full) -> None:
    assert await storage.load("continuous:j:nobody") is None
    assert await storage.healthcheck()


async def _every_field_of_an_instance_round_trips(storage: _Full) -> None:
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
    bare = _record("debounce:d:y", state=None)
    await storage.commit(Checkin(key=bare.key, record=bare))
    assert await storage.load(bare.key) == (bare, None)


async def _a_record_changed_by_its_caller_after_a_commit_or_a_load_stays_as_stored(storage: _Full) -> None:
    record = _record("k", state=b"1", run_count=1)
    await storage.commit(Checkin(key="k", record=record))
    record.run_count, record.status = 99, "changed"  # the caller's object, not the stored row
    loaded = await storage.load("k")
    assert loaded is not None and (loaded[0].run_count, loaded[0].status) == (1, "running"), loaded
    loaded[0].run_count = 42
    again = await storage.load("k")
    assert again is not None and again[0].run_count == 1, again


async def _a_second_commit_updates_the_row_but_keeps_what_never_changes(storage: _Full) -> None:
    await storage.commit(Checkin(key="k", record=_record("k", state=b"1", created_at=10, updated_at=10)))
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


async def _checkin_is_atomic_with_its_idempotency_key(storage: _Full) -> None:
    await storage.commit(Checkin(key="continuous:j:a", record=_record(state=b"1"), event_id="e1"))
    with _raises(DuplicateEventError):
        await storage.commit(
            Checkin(key="continuous:j:a", record=_record(state=b"2"), alarm=SetAlarm(5, "run"), event_id="e1")
        )
    loaded = await storage.load("continuous:j:a")
    assert loaded is not None
    assert loaded[0].state == b"1" and loaded[1] is None  # nothing of the refused check-in was written
    assert await storage.has_event_id("continuous:j:a", "e1")
    assert not await storage.has_event_id("continuous:j:a", "e2")


async def _a_create_stores_once_and_never_writes_over_what_is_stored(storage: _Full) -> None:
    key = "workflow:w:a"
    await storage.commit(Checkin(key=key, record=_record(key, state=b"1"), alarm=SetAlarm(5, "run"), create=True))
    try:
        await storage.commit(
            Checkin(key=key, record=_record(key, state=b"2"), alarm=SetAlarm(9, "run"), event_id="e", create=True)
        )
    except InstanceExistsError as refused:
        stored = refused.stored
    else:
        raise AssertionError("a create over a stored instance was not refused with InstanceExistsError")
    assert stored[0].state == b"1" and stored[1] is not None and stored[1].fire_at == 5, stored
    loaded = await storage.load(key)
    assert loaded is not None and loaded[0].state == b"1" and loaded[1] is not None and loaded[1].fire_at == 5
    assert not await storage.has_event_id(key, "e")  # nothing of the refused check-in was written
    # Many at once (a start of one id from many tasks): exactly one stores its record.
    created = await _create_at_once("workflow:w:b", [storage])
    loaded = await storage.load("workflow:w:b")
    assert len(created) == 1 and loaded is not None and loaded[0].state == created[0], (created, loaded)


async def _idempotency_keys_belong_to_one_instance(storage: _Full) -> None:
    await storage.commit(Checkin(key="a", record=_record("a"), event_id="same"))
    await storage.commit(Checkin(key="b", record=_record("b"), event_id="same"))  # another instance: accepted
    assert await storage.has_event_id("a", "same") and await storage.has_event_id("b", "same")
    # A refused delete deletes nothing.
    with _raises(DuplicateEventError):
        await storage.commit(Checkin(key="a", record=None, event_id="same"))
    assert await storage.load("a") is not None


async def _alarms_are_claimed_with_a_lease_and_fire_again_if_not_handled(storage: _Full) -> None:
    await storage.commit(Checkin(key="k1", record=_record("k1"), alarm=SetAlarm(100, "run")))
    await storage.commit(Checkin(key="k2", record=_record("k2"), alarm=SetAlarm(300, "run")))
    assert await storage.next_alarm_at() == 100
    [claimed] = await storage.claim_alarms(now_ms=150, lease_ms=1000, limit=10)
    assert (claimed.key, claimed.fire_at) == ("k1", 100)
    assert await storage.claim_alarms(now_ms=200, lease_ms=1000, limit=10) == []  # leased
    assert await storage.next_alarm_at() == 300
    again = await storage.claim_alarms(now_ms=1200, lease_ms=1000, limit=10)
    assert sorted(a.key for a in again) == ["k1", "k2"]  # k1's lease ran out
    await storage.commit(Checkin(key="k1", record=_record("k1"), alarm=ClearAlarm()))
    await storage.release_alarms([a.id for a in again])
    assert await storage.next_alarm_at() == 300


async def _a_claim_is_told_from_the_alarm_set_after_it(storage: _Full) -> None:
    # A handler compares the alarm it was woken for with the stored one, whole (`Alarm`):
    # a set may keep the id (a rewrite in place), never the time and purpose of the one before.
    await storage.commit(Checkin(key="k", record=_record("k"), alarm=SetAlarm(100, "run")))
    [claimed] = await storage.claim_alarms(now_ms=150, lease_ms=1000, limit=10)
    loaded = await storage.load("k")
    assert loaded is not None and loaded[1] == claimed  # unchanged since the claim: it fires
    await storage.commit(Checkin(key="k", record=_record("k"), alarm=SetAlarm(5000, "run")))
    moved = await storage.load("k")
    assert moved is not None and moved[1] is not None and moved[1] != claimed
    # Due at its new fire time: the old claim's lease running out does not make it due earlier.
    assert await storage.next_alarm_at() == 5000
    assert await storage.claim_alarms(now_ms=1200, lease_ms=1000, limit=10) == []
    await storage.commit(Checkin(key="k", record=_record("k"), alarm=SetAlarm(5000, "retry")))
    retry = await storage.load("k")
    assert retry is not None and retry[1] is not None and retry[1] not in (claimed, moved[1])
    [again] = await storage.claim_alarms(now_ms=5000, lease_ms=1000, limit=10)
    assert again == retry[1]
    # Releasing the first claim's id makes no alarm due before its fire time.
    await storage.release_alarms([claimed.id])
    assert (await storage.next_alarm_at() or 0) >= 5000


async def _claims_take_the_earliest_alarms_first_up_to_the_limit(storage: _Full) -> None:
    for n, at in enumerate([500, 100, 400, 200, 300]):
        await storage.commit(Checkin(key=f"k{n}", record=_record(f"k{n}"), alarm=SetAlarm(at, f"p{n}")))
    first = await storage.claim_alarms(now_ms=1000, lease_ms=10_000, limit=2)
    # Which alarms a claim takes is promised; the order of the list is not.
    assert sorted((a.key, a.fire_at, a.purpose) for a in first) == [("k1", 100, "p1"), ("k3", 200, "p3")]
    rest = await storage.claim_alarms(now_ms=1000, lease_ms=10_000, limit=10)
    assert sorted(a.fire_at for a in rest) == [300, 400, 500]
    # Claimed alarms still count for when the sleeper next looks: at the end of their lease.
    assert await storage.next_alarm_at() == 11_000


async def _claims_with_prefixes_take_only_the_alarms_of_those_definitions(storage: _Full) -> None:
    # An engine that registered some definitions (a script, a rolling deploy) claims theirs only.
    for key, at in [("continuous:mine:a", 300), ("continuous:other:b", 100), ("task:mine:c", 200)]:
        await storage.commit(Checkin(key=key, record=_record(key), alarm=SetAlarm(at, "run")))
    mine = ["continuous:mine:", "task:mine:"]
    assert await storage.next_alarm_at(mine) == 200
    assert await storage.next_alarm_at(["debounce:nobody:"]) is None
    claimed = await storage.claim_alarms(now_ms=1000, lease_ms=10_000, limit=10, prefixes=mine)
    assert sorted(a.key for a in claimed) == ["continuous:mine:a", "task:mine:c"]
    assert await storage.claim_alarms(now_ms=1000, lease_ms=10_000, limit=10, prefixes=[]) == []
    assert await storage.next_alarm_at() == 100  # the other definition's alarm is still due
    [other] = await storage.claim_alarms(now_ms=1000, lease_ms=10_000, limit=10)
    assert other.key == "continuous:other:b"


async def _an_instance_has_one_alarm_and_none_leaves_it_alone(storage: _Full) -> None:
    await storage.commit(Checkin(key="k", record=_record("k"), alarm=SetAlarm(100, "first")))
    before = await storage.load("k")
    assert before is not None and before[1] is not None
    await storage.commit(Checkin(key="k", record=_record("k", run_count=1), alarm=None))
    kept = await storage.load("k")
    assert kept is not None and kept[1] == before[1]
    await storage.commit(Checkin(key="k", record=_record("k"), alarm=SetAlarm(50, "second")))
    after = await storage.load("k")
    assert after is not None and after[1] is not None
    assert (after[1].fire_at, after[1].purpose) == (50, "second") and after[1] != before[1]
    assert [a.purpose for a in await storage.claim_alarms(now_ms=1000, lease_ms=10, limit=10)] == ["second"]
    await storage.commit(Checkin(key="k", record=_record("k"), alarm=ClearAlarm()))
    cleared = await storage.load("k")
    assert cleared is not None and cleared[1] is None
    assert await storage.next_alarm_at() is None


async def _a_released_alarm_is_due_again_at_its_fire_time(storage: _Full) -> None:
    await storage.commit(Checkin(key="k", record=_record("k"), alarm=SetAlarm(100, "run")))
    [alarm] = await storage.claim_alarms(now_ms=150, lease_ms=60_000, limit=10)
    assert await storage.next_alarm_at() == 60_150
    await storage.release_alarms([alarm.id])
    assert await storage.next_alarm_at() == 100
    assert await storage.claim_alarms(now_ms=150, lease_ms=60_000, limit=10) == [alarm]
    await storage.release_alarms([])  # nothing to release is not an error


async def _deleting_an_instance_removes_its_alarm_and_event_ids(storage: _Full) -> None:
    await storage.commit(Checkin(key="k", record=_record("k"), alarm=SetAlarm(1, "run"), event_id="e"))
    await storage.commit(Checkin(key="k", record=None))
    assert await storage.load("k") is None
    assert await storage.next_alarm_at() is None
    assert not await storage.has_event_id("k", "e")


async def _an_instance_lease_is_free_expired_or_ours(storage: _Full) -> None:
    assert await storage.acquire_instance_lease("k", "a", now_ms=0, ttl_ms=100)  # free
    assert await storage.acquire_instance_lease("k", "a", now_ms=50, ttl_ms=100)  # ours: extended to 150
    assert not await storage.acquire_instance_lease("k", "b", now_ms=149, ttl_ms=100)  # a's, not expired
    assert await storage.acquire_instance_lease("k", "b", now_ms=150, ttl_ms=100)  # expired: b takes it
    assert not await storage.acquire_instance_lease("k", "a", now_ms=200, ttl_ms=100)
    assert await storage.acquire_instance_lease("other", "a", now_ms=200, ttl_ms=100)  # per instance


async def _only_the_holder_renews_or_releases_an_instance_lease(storage: _Full) -> None:
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


async def _two_processes_never_claim_one_alarm(shared_layer: StorageLayer) -> None:
    async with shared_layer.open() as one, shared_layer.open() as two:
        for n in range(60):
            await one.commit(Checkin(key=f"k{n}", record=_record(f"k{n}"), alarm=SetAlarm(n, "run")))
        claimed: list[list[int]] = [[], []]

        async def claim(storage: Storage, into: list[int]) -> None:
            while batch := await storage.claim_alarms(now_ms=100, lease_ms=60_000, limit=7):
                into.extend(a.id for a in batch)
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(claim, one, claimed[0])
                nursery.start_soon(claim, two, claimed[1])
        everything = claimed[0] + claimed[1]
        assert len(everything) == len(set(everything)) == 60


async def _two_processes_never_hold_one_instance_lease(shared_layer: StorageLayer) -> None:
    async with shared_layer.open() as one, shared_layer.open() as two:
        winners: list[str] = []

        async def take(storage: Storage, owner: str) -> None:
            if await storage.acquire_instance_lease("k", owner, now_ms=0, ttl_ms=1000):
                winners.append(owner)

        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(take, one if n % 2 else two, f"owner-{n}")
        assert len(winners) == 1
        # The other process sees the holder's lease, and takes it once it expires.
        assert not await one.acquire_instance_lease("k", "late", now_ms=999, ttl_ms=1000)
        assert await two.acquire_instance_lease("k", "late", now_ms=1000, ttl_ms=1000)


async def _create_at_once(key: str, stores: Sequence[Storage]) -> list[bytes]:
    """Ten create check-ins of `key` at once, taking turns over `stores`: the states stored
    (each create's state is its number), the refused ones (`InstanceExistsError`) left out."""
    created: list[bytes] = []

    async def create(storage: Storage, n: int) -> None:
        state = str(n).encode()
        try:
            await storage.commit(Checkin(key=key, record=_record(key, state=state), create=True))
        except InstanceExistsError:
            return
        created.append(state)

    async with trio.open_nursery() as nursery:
        for n in range(10):
            nursery.start_soon(create, stores[n % len(stores)], n)
    return created


async def _two_processes_never_both_create_one_instance(shared_layer: StorageLayer) -> None:
    async with shared_layer.open() as one, shared_layer.open() as two:
        created = await _create_at_once("workflow:w:a", [two, one])
        for storage in (one, two):
            loaded = await storage.load("workflow:w:a")
            assert len(created) == 1 and loaded is not None and loaded[0].state == created[0], (created, loaded)


# -- listing instances (workflow clients' ``list``) -------------------------------------------------


async def _instances_are_listed_by_kind_and_name_in_key_order_with_filters_and_a_cursor(
    storage: _Full,
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


_CANCELLED = b'{"tag":"job_cancelled"}'
_LEASE_LOST = b'{"tag":"execution"}'


def _job(n: int, *, name: str = "send", at: int = 0, **kw: object) -> NewJob:
    fields: dict[str, object] = {"max_attempts": 3, "created_at": 0, **kw}
    return NewJob(id=f"job-{n:04d}", name=name, params=b'{"n":%d}' % n, scheduled_for=at, **fields)  # type: ignore[arg-type]


def _settle(
    job_id: str, status: str, *, worker: str = "w", attempt: int = 1, at: int = 50, **kw: object
) -> JobSettlement:
    return JobSettlement(job_id=job_id, worker_id=worker, attempt=attempt, status=status, at=at, **kw)  # type: ignore[arg-type]


async def _an_enqueued_job_is_pending_with_what_was_given(storage: _Full) -> None:
    row = _job(1, at=10, priority=2, correlation_id="order-7", tenant_id="acme", created_at=5, max_attempts=4)
    assert await storage.enqueue_jobs([row]) == [("job-0001", True)]
    stored = await storage.get_job("job-0001")
    assert stored is not None
    assert (stored.status, stored.params, stored.max_attempts, stored.scheduled_for, stored.priority) == (
        "pending",
        b'{"n":1}',
        4,
        10,
        2,
    )
    assert (stored.correlation_id, stored.tenant_id, stored.created_at, stored.updated_at) == ("order-7", "acme", 5, 5)
    assert (stored.attempt_count, stored.progress, stored.worker_id, stored.result, stored.error) == (
        0,
        0,
        None,
        None,
        None,
    )
    assert not stored.cancel_requested and stored.completed_at is None
    assert await storage.get_job("job-9999") is None
    assert await storage.enqueue_jobs([]) == []


async def _an_enqueue_of_many_jobs_is_all_or_none(storage: _Full) -> None:
    await storage.enqueue_jobs([_job(1)])
    # The second row's id is taken: the whole batch fails, the third row and the key included.
    with _raises(StorageError):
        await storage.enqueue_jobs([_job(2, idempotency_key="k"), _job(1), _job(3)])
    assert [r.id for r in await storage.list_jobs(JobFilter())] == ["job-0001"]
    assert await storage.enqueue_jobs([_job(4, idempotency_key="k")]) == [("job-0004", True)]


async def _an_idempotency_key_enqueues_once_per_tenant_and_name(storage: _Full) -> None:
    rows = [
        _job(1, idempotency_key="k"),
        _job(2, idempotency_key="k"),  # the same key in the same batch
        _job(3, idempotency_key="k", tenant_id="acme"),  # another tenant
        _job(4, idempotency_key="k", name="other"),  # another job name
        _job(5),
    ]
    assert await storage.enqueue_jobs(rows) == [
        ("job-0001", True),
        ("job-0001", False),
        ("job-0003", True),
        ("job-0004", True),
        ("job-0005", True),
    ]
    assert await storage.enqueue_jobs([_job(6, idempotency_key="k")]) == [("job-0001", False)]
    assert await storage.get_job("job-0002") is None and await storage.get_job("job-0006") is None


async def _claims_take_due_rows_by_priority_then_time_and_count_an_attempt(storage: _Full) -> None:
    await storage.enqueue_jobs(
        [
            _job(1, at=30),
            _job(2, at=10),
            _job(3, at=20, priority=5),
            _job(4, at=5, priority=-1),
            _job(5, at=999),
            _job(6, at=0, name="elsewhere"),
            _job(7, at=40),
        ]
    )
    [top] = await storage.claim_jobs(100, 60_100, "w", ["send"], 1)
    assert top.id == "job-0003"  # the highest priority, though not the earliest
    [earliest] = await storage.claim_jobs(100, 60_100, "w", ["send"], 1)
    assert earliest.id == "job-0002"  # then priority 0 by time
    claimed = [top, earliest, *await storage.claim_jobs(100, 60_100, "w", ["send"], 1)]
    # Which rows a claim takes is promised; the order of the list is not (the worker sorts it).
    assert sorted(c.id for c in claimed) == ["job-0001", "job-0002", "job-0003"]
    first = next(c for c in claimed if c.id == "job-0003")
    assert (first.attempt, first.max_attempts, first.priority, first.params) == (1, 3, 5, b'{"n":3}')
    stored = await storage.get_job("job-0003")
    assert stored is not None
    assert (stored.status, stored.worker_id, stored.worker_started_at, stored.worker_expires_at) == (
        "running",
        "w",
        100,
        60_100,
    )
    assert stored.attempt_count == 1
    # Then the rest of priority 0, then the negative priority; never the row due later or another name's.
    assert sorted(c.id for c in await storage.claim_jobs(100, 60_100, "w", ["send"], 10)) == ["job-0004", "job-0007"]
    assert [c.id for c in await storage.claim_jobs(100, 60_100, "w", ["send"], 10)] == []
    await storage.enqueue_jobs([_job(8, at=50), _job(9, at=60, priority=-1)])
    assert [c.id for c in await storage.claim_jobs(100, 60_100, "w", ["send"], 1)] == ["job-0008"]
    both = await storage.claim_jobs(100, 60_100, "w", ["send", "elsewhere"], 10)
    assert sorted(c.id for c in both) == ["job-0006", "job-0009"]


async def _a_job_can_start_running_in_the_callers_task(storage: _Full) -> None:
    await storage.start_job(_job(1, created_at=7), "caller", 60_007)
    stored = await storage.get_job("job-0001")
    assert stored is not None
    assert (stored.status, stored.worker_id, stored.attempt_count, stored.worker_expires_at) == (
        "running",
        "caller",
        1,
        60_007,
    )
    assert await storage.claim_jobs(100, 200, "w", ["send"], 10) == []


async def _settling_is_fenced_by_worker_and_attempt(storage: _Full) -> None:
    await storage.enqueue_jobs([_job(1), _job(2), _job(3)])
    await storage.claim_jobs(0, 1000, "w", ["send"], 10)
    applied = await storage.settle_jobs(
        [
            _settle("job-0001", "completed", result=b"1"),
            _settle("job-0002", "completed", worker="impostor", result=b"2"),
            _settle("job-0003", "completed", attempt=2, result=b"3"),
        ]
    )
    assert applied == [True, False, False]
    done = await storage.get_job("job-0001")
    assert done is not None
    assert (done.status, done.result, done.completed_at, done.worker_expires_at) == ("completed", b"1", 50, None)
    for other in ("job-0002", "job-0003"):
        untouched = await storage.get_job(other)
        assert untouched is not None and untouched.status == "running" and untouched.result is None
    # A settled row takes no second settlement.
    assert await storage.settle_jobs([_settle("job-0001", "failed", error=b"x")]) == [False]
    assert await storage.settle_jobs([]) == []


async def _a_batch_of_settlements_applies_each_to_its_own_row_under_its_own_fence(storage: _Full) -> None:
    # As a worker's settle task writes them: many rows ending together, some whose
    # lease was lost (another holder now), one that failed, each with its own result.
    count = 300
    await storage.enqueue_jobs([_job(n) for n in range(1, count + 1)])
    assert len(await storage.claim_jobs(0, 1000, "w", ["send"], count)) == count
    lost = {n for n in range(1, count + 1) if n % 7 == 0}
    # The lost rows' leases ran out and another worker holds them at their second attempt.
    assert len(await storage.reclaim_expired(2000, b"c", b"l", count)) == count
    back = await storage.claim_jobs(2000, 9000, "other", ["send"], count)
    assert len(back) == count
    mine = [c for c in back if int(c.id[4:]) not in lost]
    assert all(
        await storage.settle_jobs([_settle(c.id, "pending", worker="other", attempt=2, release=True) for c in mine])
    )
    await storage.claim_jobs(2000, 9000, "w", ["send"], count)  # the rest come back to "w" at attempt 2
    settlements = [
        _settle(
            f"job-{n:04d}",
            "failed" if n == 5 else "completed",
            attempt=2,
            at=3000 + n,
            result=None if n == 5 else b'{"r":%d}' % n,
            error=b"bad" if n == 5 else None,
        )
        for n in range(1, count + 1)
    ]
    assert await storage.settle_jobs(settlements) == [n not in lost for n in range(1, count + 1)]
    for n in range(1, count + 1):
        row = await storage.get_job(f"job-{n:04d}")
        assert row is not None
        if n in lost:
            assert (row.status, row.worker_id, row.result) == ("running", "other", None)
        elif n == 5:
            assert (row.status, row.error, row.completed_at) == ("failed", b"bad", 3005)
        else:
            assert (row.status, row.result, row.completed_at, row.updated_at) == (
                "completed",
                b'{"r":%d}' % n,
                3000 + n,
                3000 + n,
            )


async def _each_way_an_attempt_can_end(storage: _Full) -> None:
    await storage.enqueue_jobs([_job(n) for n in range(1, 6)])
    await storage.claim_jobs(0, 1000, "w", ["send"], 10)
    assert (
        await storage.settle_jobs(
            [
                _settle("job-0001", "failed", error=b"boom"),
                _settle("job-0002", "cancelled", error=_CANCELLED),
                _settle("job-0003", "pending", error=b"flaky", scheduled_for=5000),  # a retry later: the attempt counts
                _settle("job-0004", "pending", release=True, error=_CANCELLED),  # handed back: it does not
                _settle("job-0005", "running", error=b"again", lease_until=9000),  # the next attempt, at once
            ]
        )
        == [True] * 5
    )
    rows = {r.id: r for r in await storage.list_jobs(JobFilter())}
    assert (rows["job-0001"].status, rows["job-0001"].error, rows["job-0001"].completed_at) == ("failed", b"boom", 50)
    assert (rows["job-0002"].status, rows["job-0002"].error) == ("cancelled", _CANCELLED)
    retry = rows["job-0003"]
    assert (retry.status, retry.error, retry.scheduled_for, retry.attempt_count) == ("pending", b"flaky", 5000, 1)
    assert retry.completed_at is None and retry.worker_expires_at is None
    back = rows["job-0004"]
    assert (back.status, back.attempt_count, back.worker_started_at, back.error) == ("pending", 0, None, None)
    again = rows["job-0005"]
    assert (again.status, again.attempt_count, again.worker_expires_at, again.error) == ("running", 2, 9000, b"again")
    # The retry is due at its time, not before.
    assert [c.id for c in await storage.claim_jobs(4999, 9999, "w", ["send"], 10)] == ["job-0004"]
    [retried] = await storage.claim_jobs(5000, 9999, "w", ["send"], 10)
    assert (retried.id, retried.attempt) == ("job-0003", 2)


async def _a_requested_cancel_wins_over_a_retry_or_a_hand_back(storage: _Full) -> None:
    await storage.enqueue_jobs([_job(1), _job(2)])
    await storage.claim_jobs(0, 1000, "w", ["send"], 10)
    for job_id in ("job-0001", "job-0002"):
        outcome = await storage.cancel_job(job_id, 10, _CANCELLED)
        assert outcome is not None
        running, changed = outcome
        assert running.status == "running" and running.cancel_requested and changed
        # Asked again: the row stays as the first request left it, and the call says it changed nothing.
        assert await storage.cancel_job(job_id, 20, _CANCELLED) == (running, False)
    assert sorted(await storage.renew_leases("w", 2000)) == [("job-0001", True), ("job-0002", True)]
    assert await storage.settle_jobs(
        [
            _settle("job-0001", "pending", error=b"flaky", scheduled_for=5000),
            _settle("job-0002", "pending", release=True, error=_CANCELLED),
        ]
    ) == [True, True]
    for job_id in ("job-0001", "job-0002"):
        row = await storage.get_job(job_id)
        assert row is not None and row.status == "cancelled" and row.completed_at == 50
    row = await storage.get_job("job-0002")
    assert row is not None and row.error == _CANCELLED


async def _cancel_and_retry(storage: _Full) -> None:
    await storage.enqueue_jobs([_job(1), _job(2)])
    outcome = await storage.cancel_job("job-0001", 10, _CANCELLED)
    assert outcome is not None and outcome[1]  # this call's write cancelled it
    cancelled = outcome[0]
    assert (cancelled.status, cancelled.error, cancelled.completed_at, cancelled.cancel_requested) == (
        "cancelled",
        _CANCELLED,
        10,
        False,
    )
    assert await storage.claim_jobs(20, 1000, "w", ["send"], 10) != []  # job 2 only
    again = await storage.cancel_job("job-0001", 30, b"other")  # already final: unchanged
    assert again == (cancelled, False)
    assert await storage.cancel_job("job-9999", 30, _CANCELLED) is None
    retried = await storage.retry_job("job-0001", 40)
    assert retried is not None
    assert (retried.status, retried.scheduled_for, retried.attempt_count, retried.error, retried.completed_at) == (
        "pending",
        40,
        0,
        None,
        None,
    )
    # Retrying a row that is not failed or cancelled changes nothing.
    running = await storage.get_job("job-0002")
    assert await storage.retry_job("job-0002", 50) == running
    assert await storage.retry_job("job-9999", 50) is None


async def _expired_leases_are_reclaimed_as_pending_failed_or_cancelled(storage: _Full) -> None:
    await storage.enqueue_jobs([_job(1, at=1), _job(2, at=2, max_attempts=1), _job(3, at=3), _job(4, at=4)])
    await storage.claim_jobs(10, 1000, "dead", ["send"], 3)
    await storage.cancel_job("job-0003", 20, _CANCELLED)
    await storage.claim_jobs(10, 5000, "alive", ["send"], 3)  # job 4, leased longer
    assert await storage.reclaim_expired(999, _CANCELLED, _LEASE_LOST, 10) == []
    reclaimed = await storage.reclaim_expired(1000, _CANCELLED, _LEASE_LOST, 10)
    assert sorted((r.id, r.status, r.worker_id, r.attempt) for r in reclaimed) == [
        ("job-0001", "pending", "dead", 1),
        ("job-0002", "failed", "dead", 1),
        ("job-0003", "cancelled", "dead", 1),
    ]
    rows = {r.id: r for r in await storage.list_jobs(JobFilter())}
    assert rows["job-0001"].scheduled_for == 1 and rows["job-0001"].completed_at is None
    assert (rows["job-0002"].error, rows["job-0002"].completed_at) == (_LEASE_LOST, 1000)
    assert rows["job-0003"].error == _CANCELLED
    assert rows["job-0004"].status == "running"
    # The dead worker's late settlement is refused; the row runs again, attempt 2.
    assert await storage.settle_jobs([_settle("job-0001", "completed", worker="dead", result=b"late")]) == [False]
    [again] = await storage.claim_jobs(1000, 2000, "alive", ["send"], 10)
    assert (again.id, again.attempt) == ("job-0001", 2)


async def _renewing_extends_only_the_workers_own_running_leases(storage: _Full) -> None:
    await storage.enqueue_jobs([_job(1), _job(2), _job(3)])
    await storage.claim_jobs(0, 1000, "a", ["send"], 2)
    await storage.claim_jobs(0, 1000, "b", ["send"], 1)
    # Which rows a renewal extends is promised; the order of the list is not (RETURNING has none).
    assert sorted(await storage.renew_leases("a", 5000)) == [("job-0001", False), ("job-0002", False)]
    assert [r.id for r in await storage.reclaim_expired(1000, _CANCELLED, _LEASE_LOST, 10)] == ["job-0003"]
    await storage.settle_jobs([_settle("job-0001", "completed", worker="a", result=b"")])
    assert await storage.renew_leases("a", 6000) == [("job-0002", False)]
    assert await storage.renew_leases("nobody", 6000) == []


async def _progress_is_fenced_and_stays_within_0_to_100(storage: _Full) -> None:
    await storage.enqueue_jobs([_job(1)])
    await storage.claim_jobs(0, 1000, "w", ["send"], 1)
    assert await storage.set_progress("job-0001", "w", 1, 40, "halfway", 20)
    assert not await storage.set_progress("job-0001", "other", 1, 90, "no", 20)
    row = await storage.get_job("job-0001")
    assert row is not None and (row.progress, row.progress_message, row.updated_at) == (40, "halfway", 20)
    with _raises(StorageError):
        await storage.set_progress("job-0001", "w", 1, 101, None, 30)


async def _listing_filters_and_pages_in_id_order(storage: _Full) -> None:
    await storage.enqueue_jobs(
        [
            _job(3, correlation_id="c"),
            _job(1, tenant_id="t"),
            _job(2, name="other", correlation_id="c"),
            _job(4),
        ]
    )
    await storage.claim_jobs(0, 1000, "w", ["other"], 10)
    assert [r.id for r in await storage.list_jobs(JobFilter())] == ["job-0001", "job-0002", "job-0003", "job-0004"]
    assert [r.id for r in await storage.list_jobs(JobFilter(status="pending"))] == ["job-0001", "job-0003", "job-0004"]
    assert [r.id for r in await storage.list_jobs(JobFilter(name="other"))] == ["job-0002"]
    assert [r.id for r in await storage.list_jobs(JobFilter(correlation_id="c"))] == ["job-0002", "job-0003"]
    assert [r.id for r in await storage.list_jobs(JobFilter(tenant_id="t"))] == ["job-0001"]
    page = await storage.list_jobs(JobFilter(limit=2))
    assert [r.id for r in page] == ["job-0001", "job-0002"]
    rest = await storage.list_jobs(JobFilter(after=page[-1].id, limit=2))
    assert [r.id for r in rest] == ["job-0003", "job-0004"]
    assert await storage.list_jobs(JobFilter(status="pending", name="other")) == []


async def _the_next_wakeup_is_the_earliest_due_row_or_lease_end(storage: _Full) -> None:
    assert await storage.next_job_wakeup(["send"]) is None
    await storage.enqueue_jobs([_job(1, at=500), _job(2, at=100, name="other")])
    assert await storage.next_job_wakeup(["send"]) == 500
    assert await storage.next_job_wakeup(["send", "other"]) == 100
    await storage.claim_jobs(100, 300, "w", ["other"], 10)
    # Any running row's lease end counts (its worker may have died), whatever its name.
    assert await storage.next_job_wakeup(["send"]) == 300


def _cron_spec(name: str = "nightly", *, expression: str = "0 3 * * *", first: int = 1000, now: int = 0) -> CronSpec:
    return CronSpec(
        name=name,
        job_name="send",
        expression=expression,
        tz="UTC",
        params=b"{}",
        tenant_id=None,
        first_run_at=first,
        now=now,
    )


async def _cron_jobs_are_synced_fired_once_and_listed(storage: _Full) -> None:
    await storage.sync_cron_jobs([_cron_spec(), _cron_spec("hourly", expression="0 * * * *", first=500)])
    assert [c.name for c in await storage.list_cron_jobs()] == ["hourly", "nightly"]
    assert await storage.next_cron_at(["nightly", "hourly"]) == 500
    assert await storage.next_cron_at(["nightly"]) == 1000
    assert await storage.due_cron_jobs(["nightly", "hourly"], 999) != []
    assert [c.name for c in await storage.due_cron_jobs(["nightly", "hourly"], 1000)] == ["hourly", "nightly"]
    # An unchanged schedule keeps its stored next run; a changed one takes the new first run.
    await storage.sync_cron_jobs([_cron_spec(first=7777), _cron_spec("hourly", expression="30 * * * *", first=800)])
    rows = {c.name: c for c in await storage.list_cron_jobs()}
    assert (rows["nightly"].next_run_at, rows["hourly"].next_run_at, rows["hourly"].expression) == (
        1000,
        800,
        "30 * * * *",
    )
    fired = _job(1, at=1000)
    assert await storage.fire_cron("nightly", 1000, 2000, 1001, fired)
    assert not await storage.fire_cron("nightly", 1000, 2000, 1002, _job(2, at=1000))  # someone was first
    assert await storage.get_job("job-0001") is not None and await storage.get_job("job-0002") is None
    nightly = next(c for c in await storage.list_cron_jobs() if c.name == "nightly")
    assert (nightly.next_run_at, nightly.last_run_at, nightly.last_job_id) == (2000, 1001, "job-0001")
    assert await storage.fire_cron("nightly", 2000, 3000, 2001, None)  # a skipped fire: no job
    nightly = next(c for c in await storage.list_cron_jobs() if c.name == "nightly")
    assert (nightly.next_run_at, nightly.last_job_id) == (3000, "job-0001")


async def _a_cron_fire_can_store_its_job_running_under_the_firing_worker(storage: _Full) -> None:
    await storage.sync_cron_jobs([_cron_spec()])
    fired = _job(1, at=1000, created_at=1001)
    assert await storage.fire_cron("nightly", 1000, 2000, 1001, fired, "w", 61_001)
    # The fire time was taken: a second fire stores nothing, running or not.
    assert not await storage.fire_cron("nightly", 1000, 2000, 1002, _job(2, at=1000, created_at=1002), "v", 61_002)
    assert await storage.get_job("job-0002") is None
    stored = await storage.get_job("job-0001")
    assert stored is not None
    assert (stored.status, stored.worker_id, stored.attempt_count, stored.worker_expires_at, stored.scheduled_for) == (
        "running",
        "w",
        1,
        61_001,
        1000,
    )
    nightly = next(c for c in await storage.list_cron_jobs() if c.name == "nightly")
    assert (nightly.next_run_at, nightly.last_run_at, nightly.last_job_id) == (2000, 1001, "job-0001")
    # Never claimed again while its lease holds; settled by its holder at attempt 1.
    assert await storage.claim_jobs(1002, 9000, "v", ["send"], 10) == []
    assert await storage.settle_jobs([_settle("job-0001", "completed", at=1003, result=b"1")]) == [True]
    done = await storage.get_job("job-0001")
    assert done is not None and (done.status, done.result) == ("completed", b"1")


async def _cron_jobs_list_and_fall_due_by_name_in_code_point_order(storage: _Full) -> None:
    # Code-point order whatever the database's collation: capitals before "_" before small letters.
    names = ["beta", "alpha", "_tidy", "Alpha", "Beta"]
    await storage.sync_cron_jobs([_cron_spec(name, first=1000 if name.lower() == "alpha" else 500) for name in names])
    assert [c.name for c in await storage.list_cron_jobs()] == ["Alpha", "Beta", "_tidy", "alpha", "beta"]
    due = await storage.due_cron_jobs(names, 1000)
    assert [c.name for c in due] == ["Beta", "_tidy", "beta", "Alpha", "alpha"]  # by next run, then name


async def _a_disabled_cron_job_is_never_due(storage: _Full) -> None:
    await storage.sync_cron_jobs([_cron_spec()])
    disabled = await storage.set_cron_enabled("nightly", False, None, 5)
    assert disabled is not None and not disabled.enabled and disabled.updated_at == 5
    assert await storage.due_cron_jobs(["nightly"], 10_000) == []
    assert await storage.next_cron_at(["nightly"]) is None
    assert not await storage.fire_cron("nightly", 1000, 2000, 1001, _job(1))
    enabled = await storage.set_cron_enabled("nightly", True, 4000, 6)
    assert enabled is not None and enabled.enabled and enabled.next_run_at == 4000
    assert await storage.set_cron_enabled("missing", True, 1, 1) is None
    await storage.sync_cron_jobs([])


async def _two_processes_never_claim_one_job(shared_layer: StorageLayer) -> None:
    async with shared_layer.open() as one, shared_layer.open() as two:
        assert isinstance(one, QueueStorage) and isinstance(two, QueueStorage)
        await one.enqueue_jobs([_job(n) for n in range(300)])
        claimed: list[str] = []

        async def claim(storage: QueueStorage, worker: str) -> None:
            while batch := await storage.claim_jobs(10, 60_000, worker, ["send"], 13):
                claimed.extend(j.id for j in batch)
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            for n in range(3):
                nursery.start_soon(claim, one, f"one-{n}")
                nursery.start_soon(claim, two, f"two-{n}")
        assert len(claimed) == len(set(claimed)) == 300


async def _two_processes_never_pass_a_keys_limit(shared_layer: StorageLayer) -> None:
    async with shared_layer.open() as one, shared_layer.open() as two:
        assert isinstance(one, QueueStorage) and isinstance(two, QueueStorage)
        await one.enqueue_jobs([_keyed(n, "a") for n in range(40)])
        limits = [QueueLimit("send", concurrency=3, rate=5, period_ms=60_000)]
        claimed: list[str] = []

        async def claim(storage: QueueStorage, worker: str) -> None:
            for _ in range(5):
                claimed.extend(
                    j.id for j in await storage.claim_jobs(10, 60_000, worker, ["send"], 10, None, limits, 2)
                )
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            for n in range(3):
                nursery.start_soon(claim, one, f"one-{n}")
                nursery.start_soon(claim, two, f"two-{n}")
        assert len(claimed) == len(set(claimed)) == 3  # the key's three, one claim at a time


async def _two_processes_fire_one_cron_time_once(shared_layer: StorageLayer) -> None:
    async with shared_layer.open() as one, shared_layer.open() as two:
        assert isinstance(one, QueueStorage) and isinstance(two, QueueStorage)
        await one.sync_cron_jobs([_cron_spec()])
        await two.sync_cron_jobs([_cron_spec(first=5555)])  # the second engine to open keeps the stored time
        wins: list[str] = []

        async def fire(storage: QueueStorage, n: int) -> None:
            if await storage.fire_cron("nightly", 1000, 2000, 1000, _job(n, at=1000)):
                wins.append(f"job-{n:04d}")

        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(fire, one if n % 2 else two, n)
        assert len(wins) == 1
        assert [r.id for r in await one.list_jobs(JobFilter())] == wins


_MINUTE = 60_000


def numbered_job(n: int, *, name: str = "send", tenant: str | None = None, key: str | None = None) -> NewJob:
    """Job ``job-{n:04d}`` named `name`, due at 0 with one attempt (the purge check's and
    djobs's own inspection tests' rows)."""
    return NewJob(
        id=f"job-{n:04d}",
        name=name,
        params=b"{}",
        max_attempts=1,
        scheduled_for=0,
        created_at=0,
        tenant_id=tenant,
        idempotency_key=key,
    )


async def finish_jobs(storage: _Full, ids: list[str], status: str, at: int) -> None:
    """Claim the due ``send`` and ``other`` jobs at `at` and settle those in `ids` as `status`
    (``completed``, ``failed``), handing the others back unstarted."""
    claimed = await storage.claim_jobs(at, at + _MINUTE, "w", ["send", "other"], 100)
    wanted = {c.id for c in claimed} & set(ids)
    settlements = [
        JobSettlement(job_id=c.id, worker_id="w", attempt=c.attempt, status=status, at=at, result=b"1", error=b"{}")  # type: ignore[arg-type]
        for c in claimed
        if c.id in wanted
    ]
    assert all(await storage.settle_jobs(settlements))
    # Hand the rest back unstarted.
    rest = [
        JobSettlement(job_id=c.id, worker_id="w", attempt=c.attempt, status="pending", at=at, release=True)
        for c in claimed
        if c.id not in wanted
    ]
    if rest:
        assert all(await storage.settle_jobs(rest))


async def _purge_deletes_old_finished_jobs_of_the_given_statuses_only(storage: _Full) -> None:
    await storage.enqueue_jobs(
        [numbered_job(1, key="k1"), numbered_job(2), numbered_job(3, tenant="acme"), numbered_job(4), numbered_job(5)]
    )
    await finish_jobs(storage, ["job-0001", "job-0003"], "completed", _MINUTE)
    await finish_jobs(storage, ["job-0002"], "failed", 2 * _MINUTE)
    await finish_jobs(storage, ["job-0004"], "completed", 10 * _MINUTE)  # too recent
    # job-0005 stays pending: never purged, however old.
    assert await storage.purge_jobs(5 * _MINUTE, ["pending", "running"], 100) == 0
    assert await storage.purge_jobs(5 * _MINUTE, ["completed"], 100, tenant_id="acme") == 1
    assert await storage.get_job("job-0003") is None
    assert await storage.purge_jobs(5 * _MINUTE, ["completed", "failed", "pending"], 1) == 1  # a batch of one
    assert await storage.purge_jobs(5 * _MINUTE, ["completed", "failed"], 100) == 1
    left = {r.id: r.status for r in await storage.list_jobs(JobFilter())}
    assert left == {"job-0004": "completed", "job-0005": "pending"}
    # The purged job's idempotency key went with it: the key enqueues anew.
    assert await storage.enqueue_jobs([numbered_job(9, key="k1")]) == [("job-0009", True)]


async def _a_held_row_starts_only_while_its_holder_still_holds_it(storage: _Full) -> None:
    await storage.enqueue_jobs([_job(1, at=1), _job(2, at=2), _job(3, at=3), _job(4, at=4)])
    [one] = await storage.claim_jobs(10, 1000, "w", ["send"], 1)
    two_three = await storage.claim_jobs(10, 5000, "w", ["send"], 2)
    assert (one.id, sorted(j.id for j in two_three)) == ("job-0001", ["job-0002", "job-0003"])
    await storage.cancel_job("job-0002", 20, _CANCELLED)  # cancelled elsewhere while held
    # The holder stalled past job 1's lease: another worker reclaimed it and took it (attempt 2).
    assert [r.id for r in await storage.reclaim_expired(1000, _CANCELLED, _LEASE_LOST, 10)] == ["job-0001"]
    [taken] = await storage.claim_jobs(1000, 9000, "v", ["send"], 1)
    assert (taken.id, taken.attempt) == ("job-0001", 2)
    # Enqueued after the claims: an urgent row, and one below the floor.
    await storage.enqueue_jobs([_job(9, at=1003, priority=9), _job(10, at=1003, priority=-1)])
    held = [("job-0001", 1), ("job-0002", 1), ("job-0003", 1)]
    starts = await storage.start_held_jobs("w", held, 1500, 9500, _CANCELLED, ["send"], 0)
    assert (starts.started, starts.cancelled) == (["job-0003"], ["job-0002"])
    assert [(u.id, u.attempt, u.priority) for u in starts.urgent] == [("job-0009", 1, 9)]
    rows = {r.id: r for r in await storage.list_jobs(JobFilter())}
    started = rows["job-0003"]
    assert (started.status, started.worker_started_at, started.worker_expires_at) == ("running", 1500, 9500)
    cancelled = rows["job-0002"]
    assert (cancelled.status, cancelled.error, cancelled.completed_at) == ("cancelled", _CANCELLED, 1500)
    lost = rows["job-0001"]
    assert (lost.status, lost.worker_id, lost.attempt_count, lost.worker_expires_at) == ("running", "v", 2, 9000)
    assert (rows["job-0009"].status, rows["job-0009"].worker_id) == ("running", "w")
    assert (rows["job-0004"].status, rows["job-0010"].status) == ("pending", "pending")
    empty = await storage.start_held_jobs("w", [], 1600, 9600, _CANCELLED, ["send"], 0)
    assert (empty.started, empty.cancelled, empty.urgent) == ([], [], [])


def _keyed(n: int, key: str, *, name: str = "send", at: int = 0, priority: int = 0) -> NewJob:
    return _job(n, name=name, at=at, priority=priority, limit_key=f"{name}\x1f{key}")


async def _limited_rows_are_claimed_only_under_their_keys_limits(storage: _Full) -> None:
    two = [QueueLimit("send", concurrency=2)]
    await storage.enqueue_jobs(
        [_keyed(n, "a", at=n) for n in range(1, 5)]
        + [_keyed(5, "b", at=5, priority=1), _keyed(6, "b", at=60), _job(7, at=7), _keyed(8, "c", name="other")]
    )
    # With no free slot, only the unlimited row; the urgent claim of a start never takes a keyed row.
    [free] = await storage.claim_jobs(10, 1000, "w", ["send"], 10, limits=two, slots=0)
    assert (free.id, free.limit_key) == ("job-0007", None)
    starts = await storage.start_held_jobs("w", [("job-0007", 1)], 10, 1000, _CANCELLED, ["send"], -5)
    assert (starts.started, starts.urgent) == (["job-0007"], [])
    # Two of key a, b's due row (its other is not due); the best first, each with its key.
    claimed = await storage.claim_jobs(10, 1000, "w", ["send"], 10, limits=two, slots=10)
    assert [(j.id, j.limit_key) for j in claimed] == [
        ("job-0005", "send\x1fb"),
        ("job-0001", "send\x1fa"),
        ("job-0002", "send\x1fa"),
    ]
    assert await storage.claim_jobs(20, 1000, "w", ["send"], 10, limits=two, slots=10) == []
    # A key under its limit but no free slot: nothing; a next wake-up only at b's next row
    # (a is at its limit: the end of a run wakes the worker) or a lease's end.
    assert await storage.next_job_wakeup(["send"], 20, two) == 60
    # One of a's runs ends: one more of a, and at most `slots` at a time.
    assert all(await storage.settle_jobs([_settle("job-0001", "completed", at=30)]))
    assert await storage.next_job_wakeup(["send"], 30, two) == 30
    [third] = await storage.claim_jobs(30, 1000, "w", ["send"], 10, limits=two, slots=1)
    assert (third.id, third.limit_key) == ("job-0003", "send\x1fa")
    # A name the claim does not limit: its keyed rows are claimed as any row.
    [other] = await storage.claim_jobs(30, 1000, "w", ["other"], 10, limits=two, slots=10)
    assert (other.id, other.limit_key) == ("job-0008", None)


async def _a_rate_limit_counts_claims_in_a_sliding_window(storage: _Full) -> None:
    rated = [QueueLimit("send", rate=2, period_ms=1000)]
    await storage.enqueue_jobs([_keyed(n, "a") for n in range(1, 6)] + [_keyed(9, "b")])
    first = await storage.claim_jobs(100, 9000, "w", ["send"], 10, limits=rated, slots=10)
    assert sorted(j.id for j in first) == ["job-0001", "job-0002", "job-0009"]
    # Ended at once, they still count: a rate counts starts, not runs.
    assert all(await storage.settle_jobs([_settle(j.id, "completed", attempt=j.attempt, at=200) for j in first]))
    assert await storage.claim_jobs(600, 9000, "w", ["send"], 10, limits=rated, slots=10) == []
    assert await storage.next_job_wakeup(["send"], 600, rated) == 1100  # when the window lets one go
    assert await storage.claim_jobs(1099, 9000, "w", ["send"], 10, limits=rated, slots=10) == []

    async def claim(at: int) -> list[str]:
        return [j.id for j in await storage.claim_jobs(at, 9000, "w", ["send"], 10, limits=rated, slots=1)]

    assert await claim(1100) == ["job-0003"]
    assert await claim(1500) == ["job-0004"]  # the window (500, 1500] holds one start
    assert await claim(1600) == []  # (600, 1600] holds two
    assert await storage.next_job_wakeup(["send"], 1600, rated) == 2100
    assert await claim(2100) == ["job-0005"]  # the window slides: (1100, 2100] holds one


# -- dead letters -----------------------------------------------------------------------


def _letter(letter_id: str, **kw: Any) -> DeadLetter:
    fields: dict[str, Any] = {"kind": "debounce", "name": "d", "ref": "a", "payload": b"[1,2,3]", **kw}
    return DeadLetter(id=letter_id, **fields)


async def _a_letter_written_again_under_its_id_replaces_it_and_a_replay_changes_nothing(storage: Any) -> None:
    first = _letter("letter-1", tenant_id="acme", error=b'{"tag":"e","message":"one"}', attempts=3, event_count=3)
    first.revive, first.created_at = b'{"key":"debounce:d:a"}', 10
    batch = Checkin(key="debounce:d:a", record=None, dead_letter=first)
    await storage.commit(batch)
    await storage.commit(batch)  # the very same check-in again: one letter, as it was
    assert await storage.get_dead_letter("letter-1") == first
    # The instance's next failed batch is a letter of its own: both batches' events are kept.
    second = _letter("letter-2", tenant_id="acme", payload=b"[4,5]", event_count=2, created_at=20)
    await storage.commit(Checkin(key="debounce:d:a", record=None, dead_letter=second))
    assert await storage.list_dead_letters(DeadLetterFilter()) == [second, first]
    # Under a stored id, the newest letter replaces the stored one, every column.
    newest = DeadLetter(
        id="letter-1",
        kind="continuous",
        name="c",
        ref="b",
        tenant_id=None,
        payload=b'{"n":2}',
        error=b'{"tag":"e","message":"two"}',
        attempts=5,
        event_count=0,
        revive=b'{"key":"continuous:c:b"}',
        created_at=30,
    )
    await storage.commit(Checkin(key="continuous:c:b", record=None, dead_letter=newest))
    assert await storage.get_dead_letter("letter-1") == newest
    assert await storage.list_dead_letters(DeadLetterFilter()) == [newest, second]


async def _letters_list_newest_first_then_by_id_in_code_point_order(storage: Any) -> None:
    # Letters written at one time come in id order, descending, by code point whatever the
    # database's collation; a page starts right after the given letter, ties included.
    ids = ["b-1", "B-2", "a_1", "A-3", "_2"]
    for n, letter_id in enumerate(ids):
        at = 20 if n < 4 else 10
        letter = _letter(letter_id, name="o", created_at=at)
        await storage.commit(Checkin(key=f"debounce:d:{n}", record=None, dead_letter=letter))
    expected = ["b-1", "a_1", "B-2", "A-3", "_2"]
    listed = await storage.list_dead_letters(DeadLetterFilter(name="o"))
    assert [d.id for d in listed] == expected
    pages: list[str] = []
    after = None
    while True:
        page = await storage.list_dead_letters(DeadLetterFilter(name="o", after=after, limit=2))
        pages += [d.id for d in page]
        if len(page) < 2:
            break
        after = page[-1].id
    assert pages == expected
    # Paged by a letter's time and id, each page's last letter discarded before the next page
    # is asked for: the listing goes on from where that letter stood, ties included.
    pages, where = [], DeadLetterFilter(name="o", limit=2)
    while True:
        page = await storage.list_dead_letters(where)
        pages += [d.id for d in page]
        if len(page) < 2:
            break
        assert await storage.discard_dead_letter(page[-1].id)
        where = msgspec.structs.replace(where, after=page[-1].id, after_created_at=page[-1].created_at)
    assert pages == expected


async def _an_instance_letter_is_revived_only_over_nothing_or_its_status_and_no_others_lease(storage: Any) -> None:
    key = "debounce:r:a"
    batch = InstanceRecord(key=key, kind="debounce", name="r", instance_id="a", status="debouncing", state=b"[1]")
    revive = msgspec.json.encode(InstanceRevival(key=key, record=batch, purpose="flush_after", over="idle"))
    for n in (1, 2, 3):
        letter = _letter(f"revive-{n}", name="r", revive=revive, created_at=n)
        await storage.commit(Checkin(key=key, record=None, dead_letter=letter))
    # Nothing stored under the key: the record is stored with an alarm due at once.
    assert await storage.revive_dead_letter("revive-1", 100, None) == "revived"
    assert await storage.get_dead_letter("revive-1") is None
    stored = await storage.load(key)
    assert stored is not None and stored[1] is not None
    assert (stored[0].status, stored[0].state, stored[0].updated_at) == ("debouncing", b"[1]", 100)
    assert (stored[1].fire_at, stored[1].purpose) == (100, "flush_after")
    assert await storage.revive_dead_letter("revive-1", 100, None) == "missing"
    # A live instance there (not in the status the letter may replace): nothing changes.
    assert await storage.revive_dead_letter("revive-2", 110, None) == "occupied"
    assert await storage.get_dead_letter("revive-2") is not None
    # An instance in that status, leased by another engine: occupied; by the caller: revived.
    await storage.commit(Checkin(key=key, record=msgspec.structs.replace(batch, status="idle"), alarm=ClearAlarm()))
    assert await storage.acquire_instance_lease(key, "engine-b", 120, 1000)
    assert await storage.revive_dead_letter("revive-2", 130, "engine-a") == "occupied"
    assert await storage.revive_dead_letter("revive-2", 130, "engine-b") == "revived"
    assert await storage.revive_dead_letter("revive-3", 1200, None) == "occupied"  # debouncing again


async def _letters_are_filtered_discarded_and_purged_by_age(storage: Any) -> None:
    for n, (kind, name, tenant) in enumerate(
        [("debounce", "f", "acme"), ("task", "f", None), ("task", "g", "acme"), ("continuous", "f", "acme")]
    ):
        letter = _letter(f"filter-{n}", kind=kind, name=name, tenant_id=tenant, created_at=1000 + n)
        await storage.commit(Checkin(key=f"{kind}:{name}:{n}", record=None, dead_letter=letter))

    async def ids(**where: Any) -> list[str]:
        return [d.id for d in await storage.list_dead_letters(DeadLetterFilter(**where)) if d.id.startswith("filter")]

    assert await ids(kind="task") == ["filter-2", "filter-1"]
    assert await ids(name="f", tenant_id="acme") == ["filter-3", "filter-0"]
    assert await ids(kind="task", name="g", tenant_id="acme") == ["filter-2"]
    assert await ids(limit=2) == ["filter-3", "filter-2"]
    assert await ids(after="filter-gone") == []  # a letter no longer stored ends the listing
    assert await storage.discard_dead_letter("filter-3")
    assert not await storage.discard_dead_letter("filter-3")
    assert await storage.get_dead_letter("filter-3") is None
    # Letters written before the time go, at most `limit` a call.
    before = len(await storage.list_dead_letters(DeadLetterFilter(limit=1000)))
    assert await storage.purge_dead_letters(1002, 1) == 1
    assert await storage.purge_dead_letters(1002, 1000) == before - 2  # the rest but filter-2
    assert await ids() == ["filter-2"]


async def _job_letter(storage: Any, job_id: str) -> tuple[DeadLetter, JobRevival]:
    """The letter of `job_id`, every column, with its ``revive`` read apart (its JSON's spacing is the dialect's)."""
    letter = await storage.get_dead_letter(job_id)
    assert letter is not None, f"no letter for {job_id}"
    revive = msgspec.json.decode(letter.revive or b"", type=JobRevival)
    return msgspec.structs.replace(letter, revive=None), revive


async def _a_jobs_letter_shows_its_newest_failure_whatever_was_stored_before(storage: Any) -> None:
    first = b'{"tag":"e","message":"first"}'
    await storage.enqueue_jobs([_job(1, max_attempts=1, priority=2, correlation_id="c", tenant_id="acme")])
    [claimed] = await storage.claim_jobs(0, _MINUTE, "w", ["send"], 1)
    assert await storage.settle_jobs([_settle(claimed.id, "failed", error=first)]) == [True]
    assert await _job_letter(storage, "job-0001") == (
        DeadLetter(
            id="job-0001",
            kind="job",
            name="send",
            ref="job-0001",
            tenant_id="acme",
            payload=b'{"n":1}',
            error=first,
            attempts=1,
            created_at=50,
        ),
        JobRevival(priority=2, correlation_id="c"),
    )
    # A retry of the job takes its letter away; failing again writes the newest failure.
    assert await storage.retry_job("job-0001", 60) is not None
    assert await storage.get_dead_letter("job-0001") is None
    [claimed] = await storage.claim_jobs(60, 60 + _MINUTE, "w", ["send"], 1)
    assert await storage.settle_jobs([_settle(claimed.id, "failed", error=b"second", at=70)]) == [True]
    letter = await storage.get_dead_letter("job-0001")
    assert letter is not None and (letter.error, letter.created_at) == (b"second", 70)
    # The row purged, its letter stays; a row stored again under the id fails: its letter
    # replaces the old one, every column (name and tenant too).
    assert await storage.purge_jobs(100, ["failed"], 10) == 1
    assert await storage.get_dead_letter("job-0001") is not None
    again = NewJob(id="job-0001", name="other", params=b'{"m":1}', max_attempts=2, scheduled_for=200, created_at=200)
    assert await storage.enqueue_jobs([again]) == [("job-0001", True)]
    for attempt, at in ((1, 210), (2, 230)):
        [claimed] = await storage.claim_jobs(at - 5, at + _MINUTE, "w", ["other"], 1)
        assert claimed.attempt == attempt
        status = "failed" if attempt == 2 else "pending"
        assert await storage.settle_jobs(
            [_settle(claimed.id, status, attempt=attempt, error=b"third", at=at, scheduled_for=at)]
        ) == [True]
    assert await _job_letter(storage, "job-0001") == (
        DeadLetter(
            id="job-0001",
            kind="job",
            name="other",
            ref="job-0001",
            payload=b'{"m":1}',
            error=b"third",
            attempts=2,
            created_at=230,
        ),
        JobRevival(max_attempts=2),
    )
    assert [d.id for d in await storage.list_dead_letters(DeadLetterFilter(kind="job"))] == ["job-0001"]


#: What every `Storage` must do, each on a fresh database.
_INSTANCE_CHECKS: Final[tuple[_Check, ...]] = (
    _a_missing_instance_loads_as_none_and_the_database_answers,
    _every_field_of_an_instance_round_trips,
    _a_record_changed_by_its_caller_after_a_commit_or_a_load_stays_as_stored,
    _a_second_commit_updates_the_row_but_keeps_what_never_changes,
    _checkin_is_atomic_with_its_idempotency_key,
    _a_create_stores_once_and_never_writes_over_what_is_stored,
    _idempotency_keys_belong_to_one_instance,
    _alarms_are_claimed_with_a_lease_and_fire_again_if_not_handled,
    _a_claim_is_told_from_the_alarm_set_after_it,
    _claims_take_the_earliest_alarms_first_up_to_the_limit,
    _claims_with_prefixes_take_only_the_alarms_of_those_definitions,
    _an_instance_has_one_alarm_and_none_leaves_it_alone,
    _a_released_alarm_is_due_again_at_its_fire_time,
    _deleting_an_instance_removes_its_alarm_and_event_ids,
    _an_instance_lease_is_free_expired_or_ours,
    _only_the_holder_renews_or_releases_an_instance_lease,
)
#: What an `InstanceLister` must do.
_LISTER_CHECKS: Final[tuple[_Check, ...]] = (
    _instances_are_listed_by_kind_and_name_in_key_order_with_filters_and_a_cursor,
)
#: What every `QueueStorage` must do.
_QUEUE_CHECKS: Final[tuple[_Check, ...]] = (
    _a_held_row_starts_only_while_its_holder_still_holds_it,
    _an_enqueued_job_is_pending_with_what_was_given,
    _an_enqueue_of_many_jobs_is_all_or_none,
    _an_idempotency_key_enqueues_once_per_tenant_and_name,
    _claims_take_due_rows_by_priority_then_time_and_count_an_attempt,
    _a_job_can_start_running_in_the_callers_task,
    _settling_is_fenced_by_worker_and_attempt,
    _a_batch_of_settlements_applies_each_to_its_own_row_under_its_own_fence,
    _each_way_an_attempt_can_end,
    _a_requested_cancel_wins_over_a_retry_or_a_hand_back,
    _cancel_and_retry,
    _expired_leases_are_reclaimed_as_pending_failed_or_cancelled,
    _renewing_extends_only_the_workers_own_running_leases,
    _progress_is_fenced_and_stays_within_0_to_100,
    _listing_filters_and_pages_in_id_order,
    _the_next_wakeup_is_the_earliest_due_row_or_lease_end,
    _cron_jobs_are_synced_fired_once_and_listed,
    _a_cron_fire_can_store_its_job_running_under_the_firing_worker,
    _a_disabled_cron_job_is_never_due,
    _cron_jobs_list_and_fall_due_by_name_in_code_point_order,
    _purge_deletes_old_finished_jobs_of_the_given_statuses_only,
    _limited_rows_are_claimed_only_under_their_keys_limits,
    _a_rate_limit_counts_claims_in_a_sliding_window,
)
#: Two connections to one database (two processes), instances and alarms.
_SHARED_CHECKS: Final[tuple[_SharedCheck, ...]] = (
    _two_processes_never_claim_one_alarm,
    _two_processes_never_hold_one_instance_lease,
    _two_processes_never_both_create_one_instance,
)
#: Two connections to one database, the queue.
_SHARED_QUEUE_CHECKS: Final[tuple[_SharedCheck, ...]] = (
    _two_processes_never_claim_one_job,
    _two_processes_never_pass_a_keys_limit,
    _two_processes_fire_one_cron_time_once,
)
