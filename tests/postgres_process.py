"""One engine process for ``test_postgres_processes.py``: drain a queue on PostgreSQL, fire a cron job, exit.

Usage: ``python tests/postgres_process.py DSN SCHEMA OUT_DIR NAME MAX_CONCURRENCY LOCK_TIMEOUT JOB_SLEEP_MS``

Each ``record`` job appends ``job <n> <attempt> <job id> <wall ms>`` to
``OUT_DIR/NAME.runs``, and each fire of the ``beat`` cron job (every second)
appends ``beat <fire time ms>``: one line per execution, written at once, so a
killed process leaves what it ran. The process writes its worker id to
``NAME.id``, waits for ``OUT_DIR/go``, runs until no ``record`` job is pending
or running, and writes how many leases it saw expire to ``NAME.expired`` and
the lease events it saw (expiries it reclaimed, claims) to ``NAME.leases``, one
``<event> <job id> <attempt> <worker id> <wall ms>`` a line, for the test's
diagnosis of a job that ran twice. The wall clock and real sleeps: this is a
real process.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import msgspec
import trio

import djobs
from djobs.testing import success


class Item(msgspec.Struct):
    n: int


def definitions(runs_file: Path | None, sleep_ms: int = 0) -> tuple[djobs.Job[Item, None], djobs.CronJob]:
    """The record job and the beat cron job; with no file, bodies that do nothing (an enqueuing client)."""
    out = runs_file.open("a", buffering=1) if runs_file is not None else None  # line-buffered

    async def record(params: Item, ctx: djobs.JobContext) -> None:
        if out is not None:
            out.write(f"job {params.n} {ctx.attempt} {ctx.job_id} {time.time_ns() // 1_000_000}\n")
        if sleep_ms:
            await trio.sleep(sleep_ms / 1000)

    def beat(fire: djobs.CronFire, ctx: djobs.JobContext) -> None:
        if out is not None:
            out.write(f"beat {int(fire.scheduled_at.timestamp() * 1000)}\n")

    return (
        djobs.Job.make("record", params=Item, execute=record),
        djobs.CronJob.make("beat", schedule=djobs.every("1 second"), execute=beat),
    )


async def main(
    dsn: str, schema: str, out_dir: Path, name: str, max_concurrency: int, lock_timeout: str, sleep_ms: int
) -> None:
    job, beat = definitions(out_dir / f"{name}.runs", sleep_ms)
    tracker = djobs.InMemoryTracker()
    worker = djobs.WorkerOptions(max_concurrency=max_concurrency, lock_timeout=lock_timeout, poll_interval="50ms")
    go = out_dir / "go"
    (out_dir / f"{name}.ready").write_text(str(os.getpid()))
    while not go.exists():  # noqa: ASYNC110 - another process makes the file; there is no event to wait on
        await trio.sleep(0.01)
    storage = djobs.postgres(dsn, schema=schema)
    async with djobs.open_engine([job, beat], storage=storage, worker=worker, tracker=tracker) as engine:
        (out_dir / f"{name}.id").write_text(engine.worker_id or "")
        jobs = engine.client.jobs
        while True:
            await trio.sleep(0.1)
            pending = success(await jobs.list(status="pending", name="record", limit=1))
            running = success(await jobs.list(status="running", name="record", limit=1))
            if not pending and not running:
                break
    (out_dir / f"{name}.expired").write_text(str(tracker.count("job.lease_expired")))
    with (out_dir / f"{name}.leases").open("w") as leases:
        for event in tracker.events:
            if event.type in ("job.lease_expired", "job.claimed") and event.job_name == "record":
                at = int(event.at.timestamp() * 1000)
                leases.write(
                    f"{event.type} {event.instance_id} {event.data['attempt']} {event.data['worker_id']} {at}\n"
                )


if __name__ == "__main__":
    dsn_, schema_, out, worker_name, concurrency, lease, job_sleep = sys.argv[1:8]
    trio.run(main, dsn_, schema_, Path(out), worker_name, int(concurrency), lease, int(job_sleep))
