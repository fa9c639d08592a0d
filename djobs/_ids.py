"""The ids layer: where an engine's fresh identifiers and random draws come from.

An engine needs three kinds of fresh value: its own id (the owner of every
lease it holds), the ids of the jobs it enqueues, and the values a workflow
records with ``ctx.uuid()`` and ``ctx.random()``. They all come from one
`Ids` layer, so a test can swap in one that gives deterministic ids
(``djobs.testing.open_test_engine(..., ids=...)``).

`RandomIds` is the default: readable engine ids (``host:pid:random``),
UUIDv7 job ids, random UUIDs, and random draws from a generator seeded with
``open_engine(seed=...)``.
"""

from __future__ import annotations

import os
import random
import secrets
import socket
import uuid
from typing import Protocol, final

from ._input import seeded


class Ids(Protocol):
    """Fresh identifiers and random draws for one engine.

    Job ids must be unique across every engine sharing a database (they are
    primary keys) and should increase with `now_ms` (listings order by id).
    """

    def engine_id(self) -> str:
        """A new engine's id: the owner of its instance and job leases (at most 200 characters)."""
        ...

    def job_id(self, now_ms: int) -> str:
        """A new, unique job (or run) id; `now_ms` is the clock layer's epoch milliseconds."""
        ...

    def uuid(self) -> str:
        """A new UUID in its canonical text form, for a workflow's ``ctx.uuid()``."""
        ...

    def random(self) -> float:
        """A random float in ``[0, 1)``, for a workflow's ``ctx.random()``."""
        ...


def engine_id() -> str:
    """A new engine's id, ``host:pid:random`` (8 hex digits): the owner of every lease it holds.

    Readable, so ``djobs status`` and the lease columns say which machine and
    process hold a lease; the random part tells apart engines of one process.
    """
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@final
class Uuid7:
    """UUIDv7 job ids from the clock layer's milliseconds and random bits.

    Ids from one generator strictly increase, even within a millisecond or if
    the wall clock steps back (the 74 random bits then count up from the last
    id), so ordering by id is ordering by creation within a process.

    Examples:
        >>> ids = Uuid7()
        >>> a, b = ids(1_767_225_600_000), ids(1_767_225_600_000)
        >>> a < b and a[:15] == "019b76da-a800-7"
        True
    """

    __slots__ = ("_last_ms", "_prefix", "_random", "_seq")

    _SEQ_BITS = 74

    def __init__(self) -> None:
        # Seeded from the OS, not the engine's seed: two test engines on one
        # file, seeded alike, must not mint the same ids.
        self._random = random.Random()
        self._last_ms = -1
        self._seq = 0
        self._prefix = ""

    def __call__(self, ms: int) -> str:
        if ms > self._last_ms:
            self._new_ms(ms)
        else:
            self._seq += 1
            if self._seq >> self._SEQ_BITS:
                self._new_ms(self._last_ms + 1)
        seq = self._seq
        # The millisecond's part of the text is made once per millisecond (`_new_ms`); per id
        # only the 74 counting bits are written out: 12, the variant (0b10), then 62, as 19 hex
        # digits after a leading 0 (bytes.hex: a third cheaper than a format spec).
        low = ((seq >> 62) << 64 | 0b10 << 62 | seq & 0x3FFFFFFFFFFFFFFF).to_bytes(10).hex()
        return self._prefix + low[1:4] + "-" + low[4:8] + "-" + low[8:]

    def _new_ms(self, ms: int) -> None:
        self._last_ms = ms
        # Start in the lower half so a millisecond has room to count up.
        self._seq = self._random.getrandbits(self._SEQ_BITS - 1)
        high = f"{ms & 0xFFFFFFFFFFFF:012x}"
        self._prefix = f"{high[:8]}-{high[8:]}-7"


@final
class RandomIds:
    """The default `Ids` layer.

    Engine ids are `engine_id`'s ``host:pid:random``; job ids are UUIDv7
    (`Uuid7`, from OS randomness, so engines seeded alike never mint the same
    id); ``uuid()`` is a random UUID (version 4); ``random()`` draws from a
    generator seeded with `seed` (``None``: from the OS), so a workflow's
    recorded draws repeat from run to run in tests.

    Args:
        seed: Seed for ``random()``; ``open_engine(seed=...)`` passes its own.

    Examples:
        >>> RandomIds(seed=1).random() == RandomIds(seed=1).random()
        True
        >>> len(RandomIds().uuid())
        36
    """

    __slots__ = ("_job_ids", "_rng")

    def __init__(self, seed: int | None = None) -> None:
        self._rng = seeded(seed, "RandomIds(seed=...)")
        self._job_ids = Uuid7()

    def engine_id(self) -> str:
        return engine_id()

    def job_id(self, now_ms: int) -> str:
        return self._job_ids(now_ms)

    def uuid(self) -> str:
        return str(uuid.uuid4())

    def random(self) -> float:
        return self._rng.random()

    def __repr__(self) -> str:
        return "RandomIds()"
