from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

import msgspec


class InstanceRecord(msgspec.Struct, kw_only=True):
    """One stored instance of a Continuous, Debounce or Task job.

    Times are epoch milliseconds. `state` is the JSON encoding of the job's
    state struct (or ``None`` before a Task's first state). `attempt` is the
    attempt number of the next or current try of the current run.
    """

    key: str
    kind: str
    name: str
    instance_id: str
    status: str
    state: bytes | None = None
    tenant_id: str | None = None
    run_count: int = 0
    attempt: int = 1
    event_count: int = 0
    execute_count: int = 0
    started_at: int | None = None
    data: bytes | None = None
    created_at: int = 0
    updated_at: int = 0
    version: int = 0


class Alarm(msgspec.Struct, frozen=True, kw_only=True):
    """A durable alarm: at `fire_at`, the instance `key` is woken for `purpose`.

    `id` changes every time the alarm is set, so a handler can tell the
    alarm it was woken for from one set after it.
    """

    id: int
    key: str
    fire_at: int
    purpose: str


class SetAlarm(msgspec.Struct, frozen=True):
    """Replace the instance's alarm with one at `fire_at`."""

    fire_at: int
    purpose: str


class ClearAlarm(msgspec.Struct, frozen=True):
    """Remove the instance's alarm, if any."""


class Checkin(msgspec.Struct, kw_only=True):
    """One atomic change to an instance: everything in it is committed, or nothing.

    Attributes:
        key: The instance's storage key.
        record: The instance's new row; ``None`` deletes the instance with its
            alarm and event ids (terminate, purge).
        alarm: ``SetAlarm``, ``ClearAlarm``, or ``None`` to leave the alarm as it is.
        event_id: An idempotency key to record; if the instance has seen it
            before, the commit fails with `DuplicateEventError` and writes nothing.
    """

    key: str
    record: InstanceRecord | None
    alarm: SetAlarm | ClearAlarm | None = None
    event_id: str | None = None


class Storage(Protocol):
    """What the engine needs from a database. Every method is one transaction."""

    async def load(self, key: str) -> tuple[InstanceRecord, Alarm | None] | None:
        """The instance stored under `key` and its alarm, or ``None``."""
        ...

    async def commit(self, checkin: Checkin) -> None:
        """Apply `checkin` atomically. Raises `StorageError` or `DuplicateEventError`."""
        ...

    async def has_event_id(self, key: str, event_id: str) -> bool:
        """Whether the instance `key` already accepted the idempotency key `event_id`."""
        ...

    async def claim_alarms(self, now_ms: int, lease_ms: int, limit: int) -> list[Alarm]:
        """Claim up to `limit` due alarms, hiding each for `lease_ms` (it fires again
        after the lease unless its handler replaced or cleared it)."""
        ...

    async def release_alarms(self, ids: list[int]) -> None:
        """Make claimed alarms due again at their fire time (their handlers will not run here)."""
        ...

    async def next_alarm_at(self) -> int | None:
        """When the earliest alarm (claimed or not) is next due, or ``None``."""
        ...

    async def healthcheck(self) -> bool:
        """Whether the database answers a trivial query."""
        ...


class StorageLayer(Protocol):
    """A storage constructor: opened when the engine opens, closed when it closes."""

    def open(self) -> AbstractAsyncContextManager[Storage]:
        """Open the database (creating or migrating its schema) for one engine."""
        ...
