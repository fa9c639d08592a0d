"""The storage layer: where instances, alarms and the queue live.

`Storage` is the protocol every implementation provides (`QueueStorage`
adds the job queue and cron jobs); `sqlite(path)`
opens an APSW SQLite file (WAL; ``sqlite(":memory:")`` a private in-memory
SQLite database), `memory()` a store in Python's own data structures for
tests (no SQL), `postgres(dsn)` a PostgreSQL schema shared by many processes.
Storage methods raise `StorageError` (and `DuplicateEventError` from
`commit`); the client and the execution service turn those into values at
their edge.
"""

from ._base import Alarm as Alarm
from ._base import AlarmRunStore as AlarmRunStore
from ._base import AlarmStore as AlarmStore
from ._base import CancelRequests as CancelRequests
from ._base import Checkin as Checkin
from ._base import ClaimedAlarm as ClaimedAlarm
from ._base import ClaimedJob as ClaimedJob
from ._base import ClearAlarm as ClearAlarm
from ._base import CronRecord as CronRecord
from ._base import CronSpec as CronSpec
from ._base import ExpiredLease as ExpiredLease
from ._base import HeldStarts as HeldStarts
from ._base import InstanceCheckpointer as InstanceCheckpointer
from ._base import InstanceCreator as InstanceCreator
from ._base import InstanceExistsError as InstanceExistsError
from ._base import InstanceLeaseLoader as InstanceLeaseLoader
from ._base import InstanceLister as InstanceLister
from ._base import InstanceRecord as InstanceRecord
from ._base import InstanceStore as InstanceStore
from ._base import JobFilter as JobFilter
from ._base import JobRecord as JobRecord
from ._base import JobSettlement as JobSettlement
from ._base import JobStatusName as JobStatusName
from ._base import LeaseFreer as LeaseFreer
from ._base import LeaseLostError as LeaseLostError
from ._base import NewJob as NewJob
from ._base import QueueStorage as QueueStorage
from ._base import SetAlarm as SetAlarm
from ._base import Storage as Storage
from ._base import StorageLayer as StorageLayer
from ._faults import FaultyLayer as FaultyLayer
from ._faults import FaultyStorage as FaultyStorage
from ._faults import faulty as faulty
from ._memory import MemoryStorage as MemoryStorage
from ._memory import memory as memory
from ._postgres import PostgresLayer as PostgresLayer
from ._postgres import postgres as postgres
from ._sqlite import SCHEMA_VERSION as SCHEMA_VERSION
from ._sqlite import SqliteStorage as SqliteStorage
from ._sqlite import sqlite as sqlite

__all__ = [
    "SCHEMA_VERSION",
    "Alarm",
    "AlarmRunStore",
    "AlarmStore",
    "CancelRequests",
    "Checkin",
    "ClaimedAlarm",
    "ClearAlarm",
    "FaultyLayer",
    "FaultyStorage",
    "InstanceCheckpointer",
    "InstanceCreator",
    "InstanceExistsError",
    "InstanceLeaseLoader",
    "InstanceLister",
    "InstanceRecord",
    "InstanceStore",
    "LeaseFreer",
    "LeaseLostError",
    "MemoryStorage",
    "PostgresLayer",
    "SetAlarm",
    "SqliteStorage",
    "Storage",
    "StorageLayer",
    "faulty",
    "memory",
    "postgres",
    "sqlite",
]
