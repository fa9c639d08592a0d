"""Storage is typed: what a layer is, which protocols are optional, and the storage calls' parameters.

Lines ending in ``# E: <code>`` must fail mypy with that error code; every other line must pass.
``djobs.memory()`` is a `StorageLayer` wherever one is taken (``open_engine``, the test
engine, `Layers`); the store it opens is not. A store with only the `Storage` methods
is a storage (`InstanceLeaseLoader` and the other single-write protocols are optional,
found with ``isinstance``), and it is no `InstanceLeaseLoader`.
"""

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import djobs
import djobs.testing
from djobs.storage import (
    Alarm,
    CancelRequests,
    Checkin,
    InstanceExistsError,
    InstanceLeaseLoader,
    InstanceRecord,
    JobRecord,
    MemoryStorage,
    NewJob,
    QueueStorage,
    Storage,
    StorageLayer,
)

# -- djobs.memory() is a storage layer wherever one is taken ------------------------------

as_layer: StorageLayer = djobs.memory()
in_layers = djobs.Layers(storage=djobs.memory())
in_test_layers: djobs.Layers = djobs.testing.default_layers().replace(storage=djobs.memory())


async def engines_on_memory() -> None:
    async with djobs.open_engine([], storage=djobs.memory()) as engine:
        assert engine.client is not None
    async with djobs.testing.open_test_engine([], storage=djobs.memory()) as test_engine:
        assert test_engine.clock.now_ms() >= 0


async def an_opened_store_is_not_a_layer() -> None:
    async with djobs.memory().open() as store:
        opened: Storage = store
        djobs.Layers(storage=store)  # E: arg-type
        async with djobs.open_engine([], storage=store):  # E: call-overload
            pass
        async with djobs.testing.open_test_engine([], storage=store):  # E: call-overload
            pass
        assert opened is store


djobs.Layers(storage=djobs.memory)  # E: arg-type
djobs.testing.default_layers().replace(storage="jobs.db")  # E: arg-type
not_a_layer: StorageLayer = MemoryStorage()  # E: assignment


# -- a store without the optional protocols is still a storage ----------------------------


class PlainStore:
    """The `Storage` methods and nothing more: no `lease_and_load`."""

    async def load(self, key: str) -> tuple[InstanceRecord, Alarm | None] | None:
        return None

    async def commit(self, checkin: Checkin) -> None:
        return None

    async def has_event_id(self, key: str, event_id: str) -> bool:
        return False

    async def acquire_instance_lease(self, key: str, owner: str, now_ms: int, ttl_ms: int) -> bool:
        return True

    async def instance_lease_holder(self, key: str, now_ms: int | None = None) -> tuple[str, int] | None:
        return None

    async def renew_instance_leases(
        self, keys: list[str], owner: str, until_ms: int, now_ms: int | None = None
    ) -> None:
        return None

    async def release_instance_leases(self, keys: list[str], owner: str) -> None:
        return None

    async def claim_alarms(
        self, now_ms: int, lease_ms: int, limit: int, prefixes: Sequence[str] | None = None
    ) -> list[Alarm]:
        return []

    async def release_alarms(self, ids: list[int]) -> None:
        return None

    async def next_alarm_at(self, prefixes: Sequence[str] | None = None) -> int | None:
        return None

    async def healthcheck(self) -> bool:
        return True


class PlainLayer:
    @asynccontextmanager
    async def open(self) -> AsyncIterator[PlainStore]:
        yield PlainStore()


class LeaseOnlyLoader:
    """`lease_and_load` answering only whether the lease was taken: not the protocol's shape."""

    async def lease_and_load(self, key: str, owner: str, now_ms: int, ttl_ms: int) -> bool:
        return True


plain: Storage = PlainStore()
plain_layer: StorageLayer = PlainLayer()
plain_layers = djobs.Layers(storage=PlainLayer())
memory_loads: InstanceLeaseLoader = MemoryStorage()
plain_loads: InstanceLeaseLoader = PlainStore()  # E: assignment
wrong_loader: InstanceLeaseLoader = LeaseOnlyLoader()  # E: assignment


async def the_engine_finds_the_optional_protocol(store: Storage) -> None:
    if isinstance(store, InstanceLeaseLoader):
        taken, loaded = await store.lease_and_load("job:a:1", "engine-a", 0, 30_000)
        held: bool = taken
        record: tuple[InstanceRecord, Alarm | None] | None = loaded
        assert held or record is None
    await store.lease_and_load("job:a:1", "engine-a", 0, 30_000)  # E: attr-defined


async def lease_and_load_parameters(loader: InstanceLeaseLoader) -> None:
    await loader.lease_and_load("job:a:1", "engine-a", 0, 30_000)
    await loader.lease_and_load("job:a:1", "engine-a", 0, "30 seconds")  # E: arg-type
    await loader.lease_and_load("job:a:1", None, 0, 30_000)  # E: arg-type


# -- fire_cron: a worker id and the lease's end (epoch ms), or neither ----------------------


async def fire_cron_parameters(queue: QueueStorage, job: NewJob) -> None:
    fired: bool = await queue.fire_cron("nightly", 0, 86_400_000, 0, job)
    started: bool = await queue.fire_cron("nightly", 0, 86_400_000, 0, job, worker_id="engine-a", lease_until=30_000)
    skipped: bool = await queue.fire_cron("nightly", 0, 86_400_000, 0, None, worker_id=None, lease_until=None)
    assert fired or started or skipped
    await queue.fire_cron("nightly", 0, 86_400_000, 0, job, worker_id=7, lease_until=30_000)  # E: arg-type
    await queue.fire_cron("nightly", 0, 86_400_000, 0, job, worker_id="a", lease_until="30 seconds")  # E: arg-type
    await queue.fire_cron("nightly", 0, 86_400_000, 0, job, worker_id="a", lease_until=30.5)  # E: arg-type
    await queue.fire_cron("nightly", 0, 86_400_000, 0, job, lease_ms=30_000)  # E: call-arg
    said: str = await queue.fire_cron("nightly", 0, 86_400_000, 0, job)  # E: assignment
    assert said


# -- fire_cron's next_run_at: epoch ms, or None when the schedule has no fire left ---------


async def fire_cron_without_a_next_fire(queue: QueueStorage, job: NewJob) -> None:
    last: bool = await queue.fire_cron("nightly", 0, None, 0, job)
    assert last
    await queue.fire_cron("nightly", 0, "never", 0, job)  # E: arg-type
    await queue.fire_cron("nightly", None, None, 0, job)  # E: arg-type


# -- request_cancel: whether this call wrote the note (None: unknown, taken as written) ----


async def request_cancel_answers(requests: CancelRequests) -> None:
    wrote: bool | None = await requests.request_cancel("wf:checkout:o", "changed their mind", 0)
    assert wrote is not False
    first: bool = await requests.request_cancel("wf:checkout:o", None, 0)  # E: assignment
    assert first


# -- InstanceExistsError: the instance stored under the key, as `load` answers one ----------


def the_stored_instance(error: InstanceExistsError) -> None:
    stored: tuple[InstanceRecord, Alarm | None] = error.stored
    key: str = stored[0].key
    del key
    record: InstanceRecord = error.stored  # E: assignment
    del record


# -- cancel_job: the row afterwards and whether this call's write changed it, or None ------


async def cancel_job_answers(queue: QueueStorage) -> None:
    answer = await queue.cancel_job("j-1", 0, b"cancelled")
    if answer is not None:
        row, changed = answer
        status: str = row.status
        wrote: bool = changed
        assert status or wrote
    unpacked, at_once = await queue.cancel_job("j-1", 0, b"cancelled")  # E: misc '"None" object is not iterable'
    the_row_alone: JobRecord | None = await queue.cancel_job("j-1", 0, b"cancelled")  # E: assignment
    print(unpacked, at_once, the_row_alone)
