"""postgres_drain: jobs drained by 1 and 2 engine processes on one PostgreSQL database, beside procrastinate.

djobs: each process is ``open_engine([item], storage=postgres(dsn, schema=...))``
with every other setting at its default. The jobs do nothing, so what is
measured is the queue: claims (``FOR UPDATE SKIP LOCKED`` in batches), lease
renewals and batched settlements, plus each process's own Python. Every
process is started (Python and its imports loaded) before the clock starts,
and opens its engine when told to go: an engine's worker claims as soon as it
is open, so one opened early would drain the queue while the others start.
The clock stops when every row is ``completed`` (the parent polls the count
every 20 ms).

procrastinate (the psycopg-based PostgreSQL queue; a bench-only dependency,
the ``bench`` extra): the same number of deferred no-op tasks (``async def``,
so its worker runs them on its event loop rather than in a thread), in a
throwaway database of its own on the same server, in the same run, drained by
as many worker processes, each running ``app.run_worker_async()`` at its
defaults (``concurrency=1``, LISTEN/NOTIFY on) with ``wait=False`` (stop once
caught up, which changes nothing while jobs remain). Each worker process is
started before the clock starts and opens its app when told to go, as djobs's
do, and the clock stops the same way: when every job has status
``succeeded``.

Floor: the same number of threads (one connection each) claiming batches of
rows with ``SKIP LOCKED`` and marking them completed, with plain psycopg and
no framework: the database's own limit on this machine. The line reports
jobs/s per process count, the ratios to procrastinate and to the floor, and
the speed-up from the first process count to the last; where it flattens,
the machine (CPUs shared with the server) or the database is the limit, not
the number of workers.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import msgspec
import psycopg
import trio
from psycopg import sql

import djobs
from djobs.storage import NewJob
from djobs.testing import success

from _common import median, parse_args, report, require_peer
from _postgres import bench_dsn, server_version, throwaway_database, throwaway_schema


class Item(msgspec.Struct):
    n: int


def noop(params: Item, ctx: djobs.JobContext) -> None:
    pass


item = djobs.Job.make("item", params=Item, execute=noop, max_attempts=1)


# -- one djobs worker process (this file run with --worker) ------------------------------------


async def worker_main(dsn: str, schema: str, folder: Path, name: str) -> None:
    # The engine's worker starts claiming as soon as it is open, so it is opened on "go": a process
    # opened earlier would drain the queue while the others still start.
    (folder / f"{name}.ready").touch()
    while not (folder / "go").exists():  # noqa: ASYNC110 - the parent makes the file; no event to wait on
        await trio.sleep(0.005)
    async with djobs.open_engine([item], storage=djobs.postgres(dsn, schema=schema)) as engine:  # default settings
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


def run_processes(commands: list[list[str]], folder: Path, done: Callable[[], int], jobs: int) -> float:
    """Start the worker processes, wait until each is ready, say go, and time until ``done()`` reaches `jobs`."""
    procs = [subprocess.Popen([sys.executable, __file__, *command]) for command in commands]
    try:
        while not all((folder / f"w{i}.ready").exists() for i in range(len(commands))):
            if any(proc.poll() is not None for proc in procs):
                raise SystemExit("a worker process exited before it was ready")
            time.sleep(0.01)
        start = time.perf_counter()
        (folder / "go").touch()
        while (count := done()) < jobs:
            if all(proc.poll() is not None for proc in procs) and done() < jobs:
                raise SystemExit(f"the workers exited with {count} of {jobs} jobs done")
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
        for proc in procs:
            proc.wait(timeout=60)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return elapsed


def djobs_run(dsn: str, jobs: int, processes: int) -> float:
    with throwaway_schema(dsn) as schema, tempfile.TemporaryDirectory(prefix="djobs-bench-") as tmp:
        trio.run(fill, dsn, schema, jobs)
        commands = [["--worker", dsn, schema, tmp, f"w{i}"] for i in range(processes)]
        return run_processes(commands, Path(tmp), lambda: completed(dsn, schema), jobs)


def procrastinate_run(dsn: str, jobs: int, processes: int) -> float:
    from _procrastinate import procrastinate_done, procrastinate_fill

    with throwaway_database(dsn) as peer_dsn, tempfile.TemporaryDirectory(prefix="djobs-bench-") as tmp:
        asyncio.run(procrastinate_fill(peer_dsn, jobs))
        commands = [["--procrastinate-worker", peer_dsn, tmp, f"w{i}"] for i in range(processes)]
        return run_processes(commands, Path(tmp), lambda: procrastinate_done(peer_dsn), jobs)


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
    args = parse_args(__doc__ or "", peers=True, quick={"jobs": 100}, jobs=10_000, processes="1,2", dsn="")
    dsn = bench_dsn(args.dsn, "postgres_drain")
    if args.peers:
        require_peer("procrastinate")
    counts = [int(p) for p in args.processes.split(",")]
    rates: dict[str, int] = {}
    peers: dict[str, int] = {}
    floors: dict[str, int] = {}
    for p in counts:
        djobs_rates, peer_rates, floor_rates = [], [], []
        for _ in range(args.runs):
            djobs_rates.append(args.jobs / djobs_run(dsn, args.jobs, p))
            if args.peers:
                peer_rates.append(args.jobs / procrastinate_run(dsn, args.jobs, p))
            floor_rates.append(args.jobs / floor_run(dsn, args.jobs, p))
        rates[str(p)] = round(median(djobs_rates))
        if peer_rates:
            peers[str(p)] = round(median(peer_rates))
        floors[str(p)] = round(median(floor_rates))
    first, last = str(counts[0]), str(counts[-1])
    report(
        "postgres_drain",
        jobs_per_s=rates,
        procrastinate_jobs_per_s=peers or None,
        ratio_to_procrastinate={p: round(rates[p] / peers[p], 3) for p in peers} or None,
        floor_jobs_per_s=floors,
        ratio_to_floor={p: round(rates[p] / floors[p], 3) for p in rates},
        speedup=round(rates[last] / rates[first], 2),
        ideal_speedup=counts[-1] / counts[0],
        jobs=args.jobs,
        settings="open_engine defaults; procrastinate worker defaults",
        procrastinate=version("procrastinate") if args.peers else None,
        runs=args.runs,
        postgres=server_version(dsn),
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        dsn_, schema_, folder_, name_ = sys.argv[2:6]
        trio.run(worker_main, dsn_, schema_, Path(folder_), name_)
        os._exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "--procrastinate-worker":
        from _procrastinate import procrastinate_worker_main

        dsn_, folder_, name_ = sys.argv[2:5]
        asyncio.run(procrastinate_worker_main(dsn_, Path(folder_), name_))
        os._exit(0)
    main()
