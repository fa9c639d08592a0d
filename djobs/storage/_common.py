"""What the stores share beyond the protocol: the meaning of a claim's limits, the lease clock, error text.

The memory, SQLite and PostgreSQL stores each implement `QueueStorage` their own
way; these helpers are the parts where they must agree to the letter, so they
live once, here, and no store imports another's privates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import apsw

from .._clock import current_mock_clock
from .._errors import describe
from ._base import QueueLimit

#: No floor on a claim's priority: below every priority a job may have (a 32-bit int).
NO_FLOOR: Final = -(2**31) - 1


def limits_of(names: Sequence[str], limits: Sequence[QueueLimit]) -> list[QueueLimit]:
    """The limits of `limits` on one of `names` (none: a claim of `names` is unlimited)."""
    wanted = set(names)
    return [limit for limit in limits if limit.name in wanted]


def every_name_limited(names: Sequence[str], limits: Sequence[QueueLimit]) -> list[QueueLimit]:
    """`limits` of `names`, and no limit for the others: their keyed rows (enqueued while
    their definition had limits) are claimed with the limited rows, without a count."""
    given = {lim.name: lim for lim in limits}
    return [given.get(name) or QueueLimit(name) for name in names]


def resolve(lease_clock: str) -> str:
    """``"auto"`` made concrete: the engine's clock under a `trio.testing.MockClock` (virtual
    time, which no other clock follows), else the storage's own (``"host"``/``"database"``)."""
    if lease_clock != "auto":
        return lease_clock
    return "engine" if current_mock_clock() is not None else "own"


def describe_error(exc: BaseException) -> str:
    """What went wrong in a write, for a person: SQLite's errors in words (the memory store's
    commit meets them too, injected by `djobs.storage.faulty`), anything else as `describe` gives it."""
    if isinstance(exc, apsw.BusyError):
        return "the database is locked by another connection (busy)"
    if isinstance(exc, apsw.FullError):
        return "the disk is full"
    if isinstance(exc, apsw.ReadOnlyError):
        return "the database is read-only"
    if isinstance(exc, apsw.IOError):
        return "a disk I/O error occurred"
    if isinstance(exc, apsw.NotADBError):
        return "the file is not a database"
    return describe(exc)
