"""One engine process for ``test_queue_processes.py``: drain the queue of a SQLite file, then exit.

Usage: ``python tests/queue_process.py DB OUT_DIR NAME MAX_CONCURRENCY LOCK_TIMEOUT JOB_SLEEP_MS``

Each job ``record`` appends its number to ``OUT_DIR/NAME.runs`` (one line per
execution, flushed at once, so a killed process leaves what it ran). The
process writes its worker id to ``NAME.id``, waits for ``OUT_DIR/go``, runs
until the file has no pending or running job, and writes how many leases it
saw expire to ``NAME.expired``. The wall clock and real sleeps: this is a
real process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import msgspec
import trio

import djobs
from djobs.testing import success


class Item(msgspec.Struct):
    n: int


def record_job(runs_file: Path, sleep_ms: int) -> djobs.Job[Item, None]:
    out = runs_file.open("a", buffering=1)  # line-buffered: each line reaches the file at once

    async def record(params: Item, ctx: djobs.JobContext) -> None:
        out.write(f"{params.n}\n")
        out.flush()
        if sleep_ms:
            await trio.sleep(sleep_ms / 1000)

    return djobs.Job.make("record", params=Item, execute=record)


async def main(db: str, out_dir: Path, name: str, max_concurrency: int, lock_timeout: str, sleep_ms: int) -> None:
    job = record_job(out_dir / f"{name}.runs", sleep_ms)
    tracker = djobs.InMemoryTracker()
    worker = djobs.WorkerOptions(max_concurrency=max_concurrency, lock_timeout=lock_timeout, poll_interval="50ms")
    # Hold back the worker until every process is up, so they all start on a full queue.
    go = out_dir / "go"
    (out_dir / f"{name}.ready").write_text(str(os.getpid()))
    while not go.exists():  # noqa: ASYNC110 - another process makes the file; there is no event to wait on
        await trio.sleep(0.01)
    async with djobs.open_engine([job], storage=djobs.sqlite(db), worker=worker, tracker=tracker) as engine:
        (out_dir / f"{name}.id").write_text(engine.worker_id or "")
        while True:
            await trio.sleep(0.1)
            pending = success(await engine.client.jobs.list(status="pending", limit=1))
            running = success(await engine.client.jobs.list(status="running", limit=1))
            if not pending and not running:
                break
    (out_dir / f"{name}.expired").write_text(str(tracker.count("job.lease_expired")))


if __name__ == "__main__":
    db_path, out, worker_name, concurrency, lease, job_sleep = sys.argv[1:7]
    trio.run(main, db_path, Path(out), worker_name, int(concurrency), lease, int(job_sleep))
