"""postgres_drain: N queued jobs drained by 1, 2 and 4 engine processes sharing one PostgreSQL database.

The jobs do nothing, so what is measured is the queue: claims (``FOR UPDATE
SKIP LOCKED`` in batches), lease renewals and batched settlements, plus each
process's own Python. Every process is started and its engine opened before
the clock starts. Floor: the same number of threads (one connection each)
claiming batches of rows with ``SKIP LOCKED`` and marking them completed,
with plain psycopg and no framework: the database's own limit on this machine.
The line reports jobs/s per process count and the speed-up from one process to
four; where it flattens, the machine (CPUs shared with the server) or the
database is the limit, not the number of workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import msgspec
import psycopg
import trio
from psycopg import sql

import djobs
from djobs.storage import NewJob
from djobs.testing import success

from _common import median, parse_args, report
from _postgres import bench_dsn, server_version, throwaway_schema


class Item(msgspec.Struct):
    n: int


def noop(params: Item, ctx: djobs.JobContext) -> None:
    pass


item = djobs.Job.make("item", params=Item, execute=noop, max_attempts=1)


# -- one worker process (this file run with --worker) ----------------------------------------


async def worker_main(dsn: str, schema: str, folder: Path, name: str, concurrency: int) -> None:
    options = djobs.WorkerOptions(max_concurrency=concurrency, poll_interval="20ms", batch_size=200)
    async with djobs.open_engine(
        [item], storage=djobs.postgres(dsn, schema=schema), worker=options, alarm_poll_interval=None
    ) as engine:
        (folder / f"{name}.ready").touch()
        while not (folder / "go").exists():  # noqa: ASYNC110 - the parent makes the file; no event to wait on
            await trio.sleep(0.005)
        jobs = engine.client.jobs
        while True:
            await trio.sleep(0.05)
            if not success(await jobs.list(status="pending", limit=1)) and not success(
                await jobs.list(status="running", limit=1)
            ):
                break


# -- the parent --------------------------------------------------------------------------------


async def fill(dsn: str, schema: str, jobs: int) -> None:
    async with djobs.postgres(dsn, schema=schema).open() as storage:
        assert isinstance(storage, djobs.storage.QueueStorage)
        rows = [
            NewJob(
                id=str(uuid.uuid4()), name="item", params=b'{"n":%d}' % n, max_attempts=1, scheduled_for=0, created_at=0
            )
            for n in range(jobs)
        ]
        for start in range(0, jobs, 5000):
            await storage.enqueue_jobs(rows[start : start + 5000])


def completed(dsn: str, schema: str) -> int:
    with psycopg.connect(dsn) as conn:
        query = sql.SQL("SELECT count(*) FROM {}.jobs WHERE status = 'completed'").format(sql.Identifier(schema))
        row = conn.execute(query).fetchone()
        return int(row[0]) if row else 0


def djobs_run(dsn: str, jobs: int, processes: int, concurrency: int) -> float:
    with throwaway_schema(dsn) as schema, tempfile.TemporaryDirectory(prefix="djobs-bench-") as tmp:
        folder = Path(tmp)
        trio.run(fill, dsn, schema, jobs)
        procs = [
            subprocess.Popen([sys.executable, __file__, "--worker", dsn, schema, tmp, f"w{i}", str(concurrency)])
            for i in range(processes)
        ]
        try:
            while not all((folder / f"w{i}.ready").exists() for i in range(processes)):
                time.sleep(0.01)
            start = time.perf_counter()
            (folder / "go").touch()
            while completed(dsn, schema) < jobs:
                time.sleep(0.02)
            elapsed = time.perf_counter() - start
            for proc in procs:
                proc.wait(timeout=60)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        return elapsed


def floor_run(dsn: str, jobs: int, threads: int) -> float:
    claim = """
        WITH picked AS MATERIALIZED (SELECT id FROM jobs WHERE status = 'pending' ORDER BY priority DESC,
                                     scheduled_for, id LIMIT 100 FOR UPDATE SKIP LOCKED)
        UPDATE jobs SET status = 'running' FROM picked WHERE jobs.id = picked.id RETURNING jobs.id
    """

    def drain(schema: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            while ids := [r[0] for r in conn.execute(claim)]:
                conn.execute("UPDATE jobs SET status = 'completed' WHERE id = ANY(%s)", (ids,))

    with throwaway_schema(dsn) as schema:
        trio.run(fill, dsn, schema, jobs)
        workers = [threading.Thread(target=drain, args=(schema,)) for _ in range(threads)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return time.perf_counter() - start


def main() -> None:
    args = parse_args(__doc__ or "", jobs=10_000, processes="1,2,4", concurrency=50, dsn="")
    dsn = bench_dsn(args.dsn)
    counts = [int(p) for p in args.processes.split(",")]
    rates: dict[str, int] = {}
    floors: dict[str, int] = {}
    for p in counts:
        rates[str(p)] = round(
            median([args.jobs / djobs_run(dsn, args.jobs, p, args.concurrency) for _ in range(args.runs)])
        )
        floors[str(p)] = round(median([args.jobs / floor_run(dsn, args.jobs, p) for _ in range(args.runs)]))
    first, last = str(counts[0]), str(counts[-1])
    report(
        "postgres_drain",
        jobs_per_s=rates,
        floor_jobs_per_s=floors,
        speedup=round(rates[last] / rates[first], 2),
        ideal_speedup=counts[-1] / counts[0],
        ratio_to_floor={p: round(rates[p] / floors[p], 3) for p in rates},
        jobs=args.jobs,
        concurrency_per_process=args.concurrency,
        runs=args.runs,
        postgres=server_version(dsn),
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        dsn_, schema_, folder_, name_, concurrency_ = sys.argv[2:7]
        trio.run(worker_main, dsn_, schema_, Path(folder_), name_, int(concurrency_))
        os._exit(0)
    main()
