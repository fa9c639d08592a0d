"""Shared pieces of the queue benchmarks (enqueue, enqueue_bulk, drain, end_to_end).

- One no-op job, ``item``, whose body can count completions.
- Databases with a number of finished rows already stored: each size is
  written once with SQL in one transaction (completed rows, like a queue that
  has run for a while), then copied for every measurement, so every run of
  every variant starts from the same file.
- The raw-APSW statements the floors use: the same table, the same indexes
  (the schema djobs creates), the same columns djobs writes.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import apsw
import msgspec
import trio

import djobs


class Item(msgspec.Struct):
    n: int


#: Completions seen by the job body; a benchmark resets it and may set `target`.
class Counter:
    done = 0
    target = 0
    all_done: trio.Event | None = None


def noop(params: Item, ctx: djobs.JobContext) -> None:
    Counter.done += 1
    if Counter.done == Counter.target and Counter.all_done is not None:
        Counter.all_done.set()


def reset_counter(target: int) -> trio.Event:
    """Count completions from zero; the event is set when `target` bodies have run (call inside trio.run)."""
    Counter.done, Counter.target, Counter.all_done = 0, target, trio.Event()
    return Counter.all_done


item = djobs.Job.make("item", params=Item, execute=noop, max_attempts=1)

_encoder = msgspec.json.Encoder()

#: What djobs writes for one ``later`` (see ``_INSERT_JOB`` in ``djobs/storage/_sqlite.py``).
INSERT = (
    "INSERT INTO jobs (id, name, params, max_attempts, scheduled_for, priority, correlation_id, tenant_id,"
    " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)"
)
#: A worker's claim, without the priority branches (every row here has priority 0).
CLAIM = """
    UPDATE jobs SET status = 'running', worker_id = ?3, worker_started_at = ?1, worker_expires_at = ?2,
                    attempt_count = attempt_count + 1, updated_at = ?1
    WHERE id IN (SELECT id FROM jobs WHERE status = 'pending' AND scheduled_for <= ?1 AND priority = 0
                 ORDER BY scheduled_for LIMIT ?4)
    RETURNING id, name, params, attempt_count
"""
#: Marking a claimed row completed, fenced by worker and attempt as djobs does.
COMPLETE = """
    UPDATE jobs SET status = 'completed', result = NULL, error = NULL, completed_at = ?, updated_at = ?,
                    worker_expires_at = NULL
    WHERE id = ? AND worker_id = ? AND attempt_count = ? AND status = 'running'
"""


def floor_rows(count: int, start: int = 0) -> list[tuple[object, ...]]:
    """`count` rows as djobs would insert them, ids in increasing order like UUIDv7s.

    Built before the clock starts: the floor is the database's share of the work.
    """
    now = int(time.time() * 1000)
    return [
        (f"01900000-0000-7000-8000-{i:012x}", "item", _encoder.encode(Item(i)), 1, now, 0, None, None, now, now)
        for i in range(start, start + count)
    ]


def create_schema(path: str) -> None:
    """An empty djobs database at `path` (djobs creates the tables and indexes)."""

    async def create() -> None:
        async with djobs.sqlite(path).open():
            pass

    trio.run(create)


def seed_finished(path: str, count: int) -> None:
    """Store `count` completed rows, in one transaction, with ids older than any new job's."""
    if not count:
        return
    now = int(time.time() * 1000) - 86_400_000
    db = apsw.Connection(path)
    db.execute("BEGIN IMMEDIATE")
    db.executemany(
        "INSERT INTO jobs (id, name, status, params, max_attempts, attempt_count, scheduled_for, created_at,"
        " updated_at, completed_at) VALUES (?, 'item', 'completed', ?, 1, 1, ?, ?, ?, ?)",
        ((f"00000000-0000-7000-8000-{i:012x}", b'{"n":0}', now, now, now, now) for i in range(count)),
    )
    db.execute("COMMIT")
    db.close()  # the last connection to close checkpoints the WAL into the file and removes it


@contextmanager
def stored_databases(stored: int) -> Iterator[Callable[[], str]]:
    """A factory of fresh copies of a database holding `stored` completed rows.

    The template is written once; each call of the factory copies it to a new
    path in a folder removed with the block.
    """
    with tempfile.TemporaryDirectory(prefix="djobs-bench-") as folder:
        template = os.path.join(folder, "template.db")
        create_schema(template)
        seed_finished(template, stored)
        yield lambda: copy(template)


_copies = itertools.count()


def copy(path: str) -> str:
    """A copy of the (closed) database `path`, beside it; `remove` it when done."""
    target = f"{path}.{next(_copies)}"
    shutil.copyfile(path, target)
    return target


def remove(path: str) -> None:
    """Delete a copy and its WAL files (keeps the disk from filling over many runs)."""
    for suffix in ("", "-wal", "-shm"):
        with suppress(FileNotFoundError):
            os.remove(path + suffix)


def count_status(path: str, status: str) -> int:
    db = apsw.Connection(path)
    try:
        for (n,) in db.execute("SELECT count(*) FROM jobs WHERE status = ?", (status,)):
            return int(n)
        return 0
    finally:
        db.close()


def sizes(large: bool, small: int = 10_000, medium: int = 100_000, big: int = 1_000_000) -> list[int]:
    """The stored-row counts to measure at: 10k and 100k, and 1M when asked for."""
    return [small, medium, big] if large else [small, medium]
