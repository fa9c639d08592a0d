"""The ids layer: where an engine's fresh identifiers and random draws come from.

An engine needs three kinds of fresh value: its own id (the owner of every
lease it holds), the ids of the jobs it enqueues, and the values a workflow
records with ``ctx.uuid()`` and ``ctx.random()``. They all come from one
`Ids` layer, so a test can swap in one that gives deterministic ids
(``djobs.testing.open_test_engine(..., ids=...)``).

`RandomIds` is the default: readable engine ids (``host:pid:token:random``),
UUIDv7 job ids, random UUIDs, and random draws from a generator seeded with
``open_engine(seed=...)``.
"""

from __future__ import annotations

import hashlib
import os
import random
import secrets
import socket
import sys
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
    """A new engine's id, ``host:pid:token:random``: the owner of every lease it holds.

    Readable, so ``djobs status`` and the lease columns say which machine and
    process hold a lease; the random part (8 hex digits) tells apart engines of
    one process. The token (`process_token`, Linux) names the boot, PID and time
    namespaces and the process's start time, so that another process can tell
    that the holder shares its process table and whether it has exited
    (`djobs._leases.dead_local_owner`); where it cannot be read the id is
    ``host:pid:random`` (no process judges such an owner dead on Linux).
    """
    token = process_token()
    head = f"{socket.gethostname()}:{os.getpid()}"
    return f"{head}:{token}:{secrets.token_hex(4)}" if token else f"{head}:{secrets.token_hex(4)}"


def process_token() -> str | None:
    """This process's ``<namespaces>-<start>`` token, or ``None`` where it cannot be read (not Linux, no /proc).

    ``<namespaces>`` is 12 hex digits of a hash of the boot id
    (``/proc/sys/kernel/random/boot_id``) and the PID and time namespaces
    (``/proc/self/ns/pid``, ``/proc/self/ns/time``: device and inode); ``<start>``
    is the process's start time in clock ticks since boot (field 22 of
    ``/proc/self/stat``). ``None`` too when /proc is not of this process's PID
    namespace (``/proc/self`` is not our pid).
    """
    namespaces = namespaces_token()
    if namespaces is None:
        return None
    start = start_time(os.getpid())
    return None if start is None else f"{namespaces}-{start}"


_namespaces: tuple[int, str | None] | None = None


def namespaces_token() -> str | None:
    """The ``<namespaces>`` part of `process_token` (read once per process), or ``None``."""
    global _namespaces
    pid = os.getpid()
    if _namespaces is None or _namespaces[0] != pid:  # a forked child reads its own
        _namespaces = (pid, _read_namespaces(pid))
    return _namespaces[1]


def _read_namespaces(pid: int) -> str | None:
    if sys.platform != "linux":
        return None
    try:
        if os.readlink("/proc/self") != str(pid):
            return None  # a /proc of another PID namespace: its pids are not ours
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        pid_ns = os.stat("/proc/self/ns/pid")
        try:
            time_ns = os.stat("/proc/self/ns/time")
            time_part = f"{time_ns.st_dev}:{time_ns.st_ino}"
        except FileNotFoundError:
            time_part = ""  # a kernel without time namespaces (before 5.6): one clock for all
    except (OSError, UnicodeError):
        return None
    if not boot:
        return None
    seen = f"{boot}|{pid_ns.st_dev}:{pid_ns.st_ino}|{time_part}".encode()
    return hashlib.sha256(seen).hexdigest()[:12]


def proc_stat(pid: int) -> tuple[str, int] | None:
    """The state letter (``R``, ``S``, ``Z``...) and start time (clock ticks since boot) of
    process `pid` from ``/proc/<pid>/stat`` (fields 3 and 22), or ``None`` when unreadable.

    Raises:
        FileNotFoundError: No such entry in /proc (the process is gone, or hidden from us).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except FileNotFoundError:
        raise
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces and parentheses.
    fields = text[text.rfind(b")") + 1 :].split()
    if len(fields) < 20 or not fields[19].isdigit():
        return None
    return fields[0].decode("ascii", "replace"), int(fields[19])


def start_time(pid: int) -> int | None:
    """Process `pid`'s start time (clock ticks since boot), or ``None`` when unreadable."""
    try:
        stat = proc_stat(pid)
    except FileNotFoundError:
        return None
    return None if stat is None else stat[1]


@final
class Uuid7:
    """UUIDv7 job ids from the clock layer's milliseconds and random bits.

    Ids from one generator strictly increase, even within a millisecond or if
    the wall clock steps back (the 74 random bits then count up from the last
    id), so ordering by id is ordering by creation within a process.

    A UUIDv7 holds no time before 1970: a clock before the epoch (a test's
    ``VirtualClock(datetime(1960, ...))``; djobs keeps times back to the year 1)
    mints ids of the epoch's first millisecond, counting up from a random start
    as within any millisecond, so they stay unique across engines and increase
    within one.

    Examples:
        >>> ids = Uuid7()
        >>> a, b = ids(1_767_225_600_000), ids(1_767_225_600_000)
        >>> a < b and a[:15] == "019b76da-a800-7"
        True
        >>> Uuid7()(-315_619_200_000)[:15]  # 1960: the epoch's first millisecond
        '00000000-0000-7'
    """

    __slots__ = ("_last_ms", "_prefix", "_random", "_seq")

    _SEQ_BITS = 74

    def __init__(self) -> None:
        # Seeded from the OS, not the engine's seed: two test engines on one
        # file, seeded alike, must not mint the same ids.
        self._random = random.Random()
        self._last_ms = -(2**63)  # below any time: the first id starts a millisecond, even before 1970
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
        # Before 1970: the epoch's first millisecond (a UUIDv7's 48 time bits are unsigned), counted
        # up from here on until the clock passes it, so the ids still increase.
        ms = self._last_ms = max(ms, 0)
        # Start in the lower half so a millisecond has room to count up.
        self._seq = self._random.getrandbits(self._SEQ_BITS - 1)
        high = f"{ms & 0xFFFFFFFFFFFF:012x}"
        self._prefix = f"{high[:8]}-{high[8:]}-7"


@final
class RandomIds:
    """The default `Ids` layer.

    Engine ids are `engine_id`'s ``host:pid:token:random``; job ids are UUIDv7
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
