"""postgres_enqueue: jobs enqueued with ``client.job(j).later(...)`` from 8 Trio tasks into PostgreSQL.

Each enqueue is one transaction (the row and a NOTIFY) on one of the
storage's pooled connections, run on a worker thread. Floor: the same
single-row INSERTs into the same table, each its own transaction, from as
many threads as djobs has connections, with plain psycopg.
"""

from __future__ import annotations

import threading
import time
import uuid

import msgspec
import psycopg
import trio
from psycopg import sql

import djobs

from _common import cpu_seconds, median, parse_args, peak_rss_mb, report
from _postgres import bench_dsn, server_version, throwaway_schema


class Item(msgspec.Struct):
    n: int


def noop(params: Item, ctx: djobs.JobContext) -> None:
    pass


item = djobs.Job.make("item", params=Item, execute=noop)


async def djobs_run(dsn: str, schema: str, jobs: int, tasks: int, pool: int) -> float:
    storage = djobs.postgres(dsn, schema=schema, pool_size=pool)
    async with djobs.open_engine([item], storage=storage, worker=None) as engine:
        client = engine.client.job(item)

        async def caller(t: int) -> None:
            for n in range(t, jobs, tasks):
                await client.later(Item(n))

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for t in range(tasks):
                nursery.start_soon(caller, t)
        return time.perf_counter() - start


def floor_run(dsn: str, schema: str, jobs: int, threads: int) -> float:
    insert = (
        "INSERT INTO jobs (id, name, params, max_attempts, scheduled_for, created_at, updated_at)"
        " VALUES (%s, 'item', %s, 1, 0, 0, 0)"
    )

    def inserter(t: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            for n in range(t, jobs, threads):
                conn.execute(insert, (str(uuid.uuid4()), b'{"n":%d}' % n))

    workers = [threading.Thread(target=inserter, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - start


async def create_schema(dsn: str, schema: str) -> None:
    async with djobs.postgres(dsn, schema=schema).open():
        pass


def main() -> None:
    args = parse_args(__doc__ or "", quick={"jobs": 200}, jobs=5_000, tasks=8, pool=5, dsn="")
    dsn = bench_dsn(args.dsn, "postgres_enqueue")
    rates, floors = [], []
    cpu0 = cpu_seconds()
    for _ in range(args.runs):
        with throwaway_schema(dsn) as schema:
            rates.append(args.jobs / trio.run(djobs_run, dsn, schema, args.jobs, args.tasks, args.pool))
        with throwaway_schema(dsn) as schema:
            trio.run(create_schema, dsn, schema)
            floors.append(args.jobs / floor_run(dsn, schema, args.jobs, args.pool))
    cpu = cpu_seconds() - cpu0
    rate, floor = median(rates), median(floors)
    report(
        "postgres_enqueue",
        jobs_per_s=round(rate),
        floor_jobs_per_s=round(floor),
        ratio_to_floor=round(rate / floor, 3),
        jobs=args.jobs,
        tasks=args.tasks,
        pool=args.pool,
        runs=args.runs,
        postgres=server_version(dsn),
        peak_rss_mb=round(peak_rss_mb(), 1),
        cpu_ms_per_1000=round(cpu / (args.runs * args.jobs) * 1_000_000, 1),
    )


if __name__ == "__main__":
    main()
