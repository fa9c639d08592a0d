"""The storage conformance suite: the same tests against every storage implementation.

`conftest.py` gives the layers (``storage_layer``: each storage in turn;
``shared_layer``: those several processes can open at once); a new storage
is added there and must pass every test here.
"""

from __future__ import annotations

from typing import Protocol

from djobs.storage import QueueStorage, Storage


class FullStorage(Storage, QueueStorage, Protocol):
    """What both production storages provide: instances, alarms, leases, the queue and cron jobs."""
