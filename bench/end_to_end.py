"""end_to_end: 50,000 jobs enqueued and drained at once by one engine (target >= 25,000 jobs/s).

100 Trio tasks call ``client.job(j).later(params)`` (each call durable when it
returns) while the same engine's worker (``batch_size=200``,
``poll_interval=None``, ``max_concurrency`` from ``--concurrency``) claims and
runs them. The clock runs from the first enqueue until the last completion is
committed; afterwards every row must be ``completed``.

Floor: the same work with raw APSW on one connection: the rows inserted as
single-row transactions, and after every 200 of them a claim of up to 200
(``UPDATE … RETURNING``, one transaction) and their completion (another).
"""

from __future__ import annotations

import time

import trio
from returns.pipeline import is_successful

import djobs

from _common import cpu_seconds, median, parse_args, peak_rss_mb, raw_connection, report
from _jobqueue import CLAIM, COMPLETE, INSERT, Item, count_status, floor_rows, item, remove, reset_counter
from _jobqueue import stored_databases

TARGET = 25_000


async def djobs_run(path: str, jobs: int, tasks: int, concurrency: int, batch: int) -> float:
    all_done = reset_counter(jobs)
    worker = djobs.WorkerOptions(max_concurrency=concurrency, batch_size=batch, poll_interval=None)
    async with djobs.open_engine([item], storage=djobs.sqlite(path), worker=worker, alarm_poll_interval=None) as engine:
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
        if failures:
            raise SystemExit(f"{len(failures)} enqueues failed, the first: {failures[0]}")
        await all_done.wait()
        await engine.wait_idle()  # the last completions are committed
        elapsed = time.perf_counter() - start
    return elapsed


def floor_run(path: str, rows: list[tuple[object, ...]], batch: int) -> float:
    db = raw_connection(path)

    def claim_and_complete() -> int:
        now = int(time.time() * 1000)
        db.execute("BEGIN IMMEDIATE")
        claimed = list(db.execute(CLAIM, (now, now + 300_000, "floor", batch)))
        db.execute("COMMIT")
        if claimed:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(COMPLETE, [(now, now, job_id, "floor", attempt) for job_id, _, _, attempt in claimed])
            db.execute("COMMIT")
        return len(claimed)

    start = time.perf_counter()
    done = 0
    for i, row in enumerate(rows, 1):
        db.execute("BEGIN IMMEDIATE")
        db.execute(INSERT, row)
        db.execute("COMMIT")
        if i % batch == 0:
            done += claim_and_complete()
    while done < len(rows):
        done += claim_and_complete()
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


def main() -> None:
    args = parse_args(
        __doc__ or "",
        quick={"jobs": 1000, "stored": 1000},
        jobs=50_000,
        tasks=100,
        concurrency=100,
        batch=200,
        stored=10_000,
    )
    rows = floor_rows(args.jobs)
    rates, floors, cpu = [], [], 0.0
    with stored_databases(args.stored) as fresh:
        for _ in range(args.runs):
            path = fresh()
            cpu0 = cpu_seconds()
            rates.append(args.jobs / trio.run(djobs_run, path, args.jobs, args.tasks, args.concurrency, args.batch))
            cpu += cpu_seconds() - cpu0
            completed = count_status(path, "completed")
            if completed != args.stored + args.jobs:
                raise SystemExit(f"{completed - args.stored} of {args.jobs} jobs completed")
            remove(path)
            path = fresh()
            floors.append(args.jobs / floor_run(path, rows, args.batch))
            remove(path)
    rate, floor = median(rates), median(floors)
    report(
        "end_to_end",
        jobs_per_s=round(rate),
        floor_jobs_per_s=round(floor),
        ratio_to_floor=round(rate / floor, 3),
        targets={"jobs_per_s": f">= {TARGET}"},
        met={"jobs_per_s": rate >= TARGET},
        stored=args.stored,
        jobs=args.jobs,
        tasks=args.tasks,
        concurrency=args.concurrency,
        batch=args.batch,
        runs=args.runs,
        peak_rss_mb=round(peak_rss_mb(), 1),
        cpu_ms_per_1000=round(cpu / (args.runs * args.jobs) * 1_000_000, 1),
    )


if __name__ == "__main__":
    main()
