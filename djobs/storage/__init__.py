"""The storage layer: where instances, alarms and the queue live.

`Storage` is the protocol every implementation provides; `sqlite(path)`
opens an APSW SQLite file (WAL), `memory()` an in-memory SQLite database
for tests. Storage methods raise `StorageError` (and `DuplicateEventError`
from `commit`); the client and the execution service turn those into
values at their edge.
"""

from ._base import Alarm as Alarm
from ._base import Checkin as Checkin
from ._base import ClearAlarm as ClearAlarm
from ._base import InstanceRecord as InstanceRecord
from ._base import SetAlarm as SetAlarm
from ._base import Storage as Storage
from ._base import StorageLayer as StorageLayer
from ._sqlite import SCHEMA_VERSION as SCHEMA_VERSION
from ._sqlite import SqliteStorage as SqliteStorage
from ._sqlite import memory as memory
from ._sqlite import sqlite as sqlite

__all__ = [
    "SCHEMA_VERSION",
    "Alarm",
    "Checkin",
    "ClearAlarm",
    "InstanceRecord",
    "SetAlarm",
    "SqliteStorage",
    "Storage",
    "StorageLayer",
    "memory",
    "sqlite",
]
