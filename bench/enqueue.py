"""enqueue: ``client.job(j).later(params)`` from 100 concurrent Trio tasks, beside Huey's SQLite queue.

Target (the engine's-core issue): >= 1.5x Huey at ``synchronous=NORMAL``
(djobs's default durability); the page's older absolute target, 50,000 jobs/s,
is reported too.

Every call returns only once its row is committed. The engine is
``open_engine([item], storage=sqlite(path), worker=None)``: default settings,
client-only, so nothing drains the queue while it fills, as Huey's producer
runs no consumer.

Huey (``bench/_huey.py``): 100 threads calling a ``SqliteHuey`` task, each call
committed on return, at NORMAL and as shipped (FULL), in the same run.

Floor: the same rows as single-row INSERT transactions with raw APSW, one
after another (what a program gets that commits each row on its own). Second
floor (informative): the same rows from the same number of Trio tasks with
group commit in raw APSW (each task queues its row and waits; one task
commits whatever is queued in one transaction, then wakes the callers).

Both are taken with 10k, 100k and (by default) 1M completed rows already in
the jobs table (``--stored``), to show the rate does not depend on how much
the table holds. ``synchronous=FULL`` (``djobs.sqlite(path, synchronous="FULL")``)
is measured at the first size, with its own single-row floor (on at most
``--full-floor-jobs`` rows: each of those commits waits for an fsync).
"""

from __future__ import annotations

import functools
import time
from typing import Literal

import trio
from returns.pipeline import is_successful

import djobs

from _common import (
    cpu_seconds,
    median,
    parse_args,
    peak_rss_mb,
    raw_connection,
    report,
    require_peer,
    huey_figures,
    at_least,
)
from _jobqueue import INSERT, Item, floor_rows, item, remove, stored_databases

TARGET = 50_000
TARGET_RATIO_TO_HUEY_NORMAL = 1.5


async def djobs_run(path: str, jobs: int, tasks: int, synchronous: Literal["NORMAL", "FULL"] = "NORMAL") -> float:
    storage = djobs.sqlite(path, synchronous=synchronous)
    async with djobs.open_engine([item], storage=storage, worker=None) as engine:
        client = engine.client.job(item)
        params = [Item(n) for n in range(jobs)]
        failures: list[object] = []

        async def caller(t: int) -> None:
            for n in range(t, jobs, tasks):
                result = await client.later(params[n])
                if not is_successful(result):
                    failures.append(result)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for t in range(tasks):
                nursery.start_soon(caller, t)
        elapsed = time.perf_counter() - start
    if failures:
        raise SystemExit(f"{len(failures)} enqueues failed, the first: {failures[0]}")
    return elapsed


def floor_run(path: str, rows: list[tuple[object, ...]], synchronous: str = "NORMAL") -> float:
    db = raw_connection(path)
    db.execute(f"PRAGMA synchronous={synchronous}")
    start = time.perf_counter()
    for row in rows:
        db.execute("BEGIN IMMEDIATE")
        db.execute(INSERT, row)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


async def group_floor_run(path: str, rows: list[tuple[object, ...]], tasks: int) -> float:
    db = raw_connection(path)
    queued: list[tuple[tuple[object, ...], trio.Event]] = []
    wanted = trio.Event()

    async def committer() -> None:
        nonlocal queued, wanted
        while True:
            await wanted.wait()
            wanted = trio.Event()
            batch, queued = queued, []
            db.execute("BEGIN IMMEDIATE")
            db.executemany(INSERT, [row for row, _ in batch])
            db.execute("COMMIT")
            for _, done in batch:
                done.set()

    async def caller(t: int) -> None:
        for row in rows[t::tasks]:
            done = trio.Event()
            queued.append((row, done))
            wanted.set()
            await done.wait()

    async with trio.open_nursery() as outer:
        outer.start_soon(committer)
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for t in range(tasks):
                nursery.start_soon(caller, t)
        elapsed = time.perf_counter() - start
        outer.cancel_scope.cancel()
    db.close()
    return elapsed


def main() -> None:
    args = parse_args(
        __doc__ or "",
        peers=True,
        quick={"jobs": 1000, "stored": "1000", "full_floor_jobs": 200},
        jobs=10_000,
        tasks=100,
        stored="10000,100000,1000000",
        full_floor_jobs=10_000,
    )
    if args.peers:
        require_peer("huey")
    stored_sizes = [int(s) for s in args.stored.split(",")]
    by_stored: dict[int, dict[str, float]] = {}
    full_rates: list[float] = []
    full_floors: list[float] = []
    cpu_djobs = 0.0
    rows = floor_rows(args.jobs)
    for size_index, stored in enumerate(stored_sizes):
        rates, floors, groups = [], [], []
        with stored_databases(stored) as fresh:
            for _ in range(args.runs):
                path = fresh()
                cpu0 = cpu_seconds()
                rates.append(args.jobs / trio.run(djobs_run, path, args.jobs, args.tasks))
                cpu_djobs += cpu_seconds() - cpu0
                remove(path)
                path = fresh()
                floors.append(args.jobs / floor_run(path, rows))
                remove(path)
                path = fresh()
                groups.append(args.jobs / trio.run(group_floor_run, path, rows, args.tasks))
                remove(path)
                if size_index == 0:
                    path = fresh()
                    full_rates.append(args.jobs / trio.run(djobs_run, path, args.jobs, args.tasks, "FULL"))
                    remove(path)
                    path = fresh()
                    some = rows[: args.full_floor_jobs]
                    full_floors.append(len(some) / floor_run(path, some, "FULL"))
                    remove(path)
        rate, floor, group = median(rates), median(floors), median(groups)
        by_stored[stored] = {
            "jobs_per_s": round(rate),
            "floor_jobs_per_s": round(floor),
            "ratio_to_floor": round(rate / floor, 3),
            "group_floor_jobs_per_s": round(group),
            "ratio_to_group_floor": round(rate / group, 3),
        }
    head = by_stored[stored_sizes[0]]
    full, full_floor = median(full_rates), median(full_floors)
    peer = None
    if args.peers:
        from _huey import enqueue as huey_enqueue

        peer = functools.partial(huey_enqueue, jobs=args.jobs, callers=args.tasks)
    huey = huey_figures(peer, args.jobs, args.runs, head["jobs_per_s"])
    report(
        "enqueue",
        jobs_per_s=head["jobs_per_s"],
        floor_jobs_per_s=head["floor_jobs_per_s"],
        ratio_to_floor=head["ratio_to_floor"],
        group_floor_jobs_per_s=head["group_floor_jobs_per_s"],
        ratio_to_group_floor=head["ratio_to_group_floor"],
        **huey,
        targets={"ratio_to_huey_normal": ">= 1.5", "jobs_per_s": f">= {TARGET}"},
        met={
            "ratio_to_huey_normal": at_least(huey["ratio_to_huey_normal"], TARGET_RATIO_TO_HUEY_NORMAL),
            "jobs_per_s": head["jobs_per_s"] >= TARGET,
        },
        stored=stored_sizes[0],
        jobs=args.jobs,
        tasks=args.tasks,
        full_jobs_per_s=round(full),
        full_floor_jobs_per_s=round(full_floor),
        full_ratio_to_floor=round(full / full_floor, 3),
        by_stored=by_stored,
        runs=args.runs,
        peak_rss_mb=round(peak_rss_mb(), 1),
        cpu_ms_per_1000=round(cpu_djobs / (len(stored_sizes) * args.runs * args.jobs) * 1_000_000, 1),
    )


if __name__ == "__main__":
    main()
