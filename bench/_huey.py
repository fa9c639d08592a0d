"""The peer the queue benchmarks run beside djobs: Huey's SQLite queue (``huey.SqliteHuey``).

Huey is a bench-only dependency (the ``bench`` extra, which ``make bench``
installs). Two configurations are measured, in the same process and run as
djobs:

- ``"NORMAL"``: ``PRAGMA synchronous=NORMAL`` on Huey's WAL connection, the
  durability djobs ships with (durable across a process crash, not across
  power loss). Huey has no option for it: ``SqliteStorage(fsync=...)`` sets
  ``synchronous`` to 2 (FULL) or 0 (OFF), so a subclass sets 1 on the
  connection Huey creates.
- ``"shipped"``: ``SqliteHuey`` as its users get it. ``fsync=None`` (the
  default) sets no pragma, so the connection keeps the SQLite library's
  default, FULL (2) on the sqlite3 builds we know of; :func:`synchronous`
  reads it back and the JSON line reports what was in force.

Draining: Huey's consumer (``huey.create_consumer(workers=1)``) runs one
``huey.consumer.Worker`` in a thread, calling ``Worker.loop()`` forever:
``huey.dequeue()`` (a ``BEGIN EXCLUSIVE`` select-and-delete of one row),
then ``huey.execute(task)`` (signals, the body, the result store). We call
that same ``Worker.loop()`` here, in the calling thread, until the bodies have
all run. That is every per-task step the consumer takes, without what would
distort a timing from outside it: the consumer has no "queue empty" signal,
so a harness around it would poll for completion (up to the worker's 0.1 s
back-off, or a sleep of its own), and its scheduler thread waking each second
to read the schedule. Leaving those out favours Huey slightly, which keeps
djobs's ratio honest.

Enqueueing: 100 threads (Huey's callers are threads; its storage serialises
them on one connection under a lock) each call the task, which returns once
``storage.enqueue`` has committed its row: durable on return, as djobs's
``later()`` is.

CPU is the process's CPU time over the timed part only (not the filling), as
for djobs.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any, Literal

from huey import SqliteHuey
from huey.consumer import Worker
from huey.storage import SqliteStorage

from _common import cpu_seconds

Durability = Literal["NORMAL", "shipped"]


class NormalSqliteStorage(SqliteStorage):  # type: ignore[misc]
    """Huey's SQLite storage with ``synchronous=NORMAL``, djobs's default durability."""

    def _create_connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection = super()._create_connection()
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn


class _Done:
    count = 0
    target = 0
    event = threading.Event()


def make_huey(path: str, durability: Durability) -> tuple[Any, Any]:
    """A ``SqliteHuey`` on `path` and its no-op task (counts completions)."""
    if durability == "NORMAL":
        huey = SqliteHuey("bench", filename=path, storage_class=NormalSqliteStorage)
    else:
        huey = SqliteHuey("bench", filename=path)

    @huey.task()  # type: ignore[untyped-decorator]
    def noop(n: int) -> None:
        _Done.count += 1
        if _Done.count == _Done.target:
            _Done.event.set()

    return huey, noop


def synchronous(huey: Any) -> str:
    """The ``synchronous`` setting in force on Huey's connection, by name."""
    with huey.storage.db() as cursor:
        (level,) = cursor.execute("PRAGMA synchronous").fetchone()
    return {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[int(level)]


def fill(huey: Any, noop: Any, jobs: int) -> None:
    """`jobs` pending tasks, serialised by Huey and inserted in one transaction (not timed)."""
    rows = [(huey.storage.name, huey.serialize_task(noop.s(n)), 0) for n in range(jobs)]
    with huey.storage.db(commit=True) as cursor:
        cursor.executemany("INSERT INTO task (queue, data, priority) VALUES (?, ?, ?)", rows)


def drain(path: str, durability: Durability, jobs: int) -> tuple[float, float, str]:
    """Seconds for one Huey worker to run `jobs` no-op tasks, the CPU seconds it took, and the synchronous level."""
    huey, noop = make_huey(path, durability)
    fill(huey, noop, jobs)
    _Done.count, _Done.target = 0, jobs
    # The consumer's defaults: workers=1, initial_delay=0.1, max_delay=10.0, backoff=1.15.
    worker = Worker(huey, threading.Event(), 0.1, 10.0, 1.15)
    cpu0 = cpu_seconds()
    start = time.perf_counter()
    while _Done.count < jobs:
        worker.loop()
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds() - cpu0
    level = synchronous(huey)
    left = huey.storage.queue_size()
    huey.storage.close()
    if left:
        raise SystemExit(f"Huey left {left} tasks in its queue")
    return elapsed, cpu, level


def enqueue(path: str, durability: Durability, jobs: int, callers: int) -> tuple[float, float, str]:
    """Seconds for `callers` threads to enqueue `jobs` tasks (each committed on return), CPU seconds, sync level."""
    huey, noop = make_huey(path, durability)
    ready = threading.Barrier(callers + 1)

    def caller(t: int) -> None:
        ready.wait()
        for n in range(t, jobs, callers):
            noop(n)

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(callers)]
    for thread in threads:
        thread.start()
    cpu0 = cpu_seconds()
    ready.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds() - cpu0
    level = synchronous(huey)
    stored = huey.storage.queue_size()
    huey.storage.close()
    if stored != jobs:
        raise SystemExit(f"Huey stored {stored} of {jobs} tasks")
    return elapsed, cpu, level
