"""The storage conformance suite: the same tests against every storage implementation.

The protocol-level checks ship as `djobs.testing.check_storage`
(``test_storage_checks.py`` runs them against every storage). What stays here
needs more than the protocols: the inspector and whole engines on each storage;
`conftest.py` gives their layers (``storage_layer``: each storage in turn;
``shared_layer``: those several processes can open at once).
"""

from __future__ import annotations

from typing import Protocol

from djobs.storage import QueueStorage, Storage


class FullStorage(Storage, QueueStorage, Protocol):
    """What both production storages provide: instances, alarms, leases, the queue and cron jobs."""
