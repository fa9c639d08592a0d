"""drain: 50,000 pending no-op jobs drained by one engine (target >= 50,000 jobs/s).

The jobs are enqueued with ``later_many`` before the clock starts. The clock
runs from opening the engine (worker: ``batch_size=200``, ``poll_interval=None``,
``max_concurrency`` from ``--concurrency``) until the last body has run and
the worker is idle, i.e. every row's completion is committed. Afterwards the
file is checked: every row must be ``completed``.

Floor: raw APSW claiming 200 rows at a time with ``UPDATE … RETURNING`` (one
transaction) and marking them completed (a second transaction), as a worker
that commits its claims and its results must.

Both are taken with 10k, 100k and (by default) 1M completed rows already in
the jobs table (``--stored``), to show claims stay indexed as the table grows.
"""

from __future__ import annotations

import time

import trio
from returns.pipeline import is_successful

import djobs

from _common import cpu_seconds, median, parse_args, peak_rss_mb, raw_connection, report
from _jobqueue import CLAIM, COMPLETE, Item, copy, count_status, item, remove, reset_counter, stored_databases

TARGET = 50_000


def enqueue(path: str, jobs: int) -> None:
    """The pending rows, written by djobs itself (not timed)."""

    async def run() -> None:
        async with djobs.open_engine([item], storage=djobs.sqlite(path), worker=None) as engine:
            client = engine.client.job(item)
            for start in range(0, jobs, 50_000):
                result = await client.later_many([Item(n) for n in range(start, min(jobs, start + 50_000))])
                if not is_successful(result):
                    raise SystemExit(f"later_many failed: {result}")

    trio.run(run)


async def djobs_run(path: str, jobs: int, concurrency: int, batch: int) -> float:
    all_done = reset_counter(jobs)
    worker = djobs.WorkerOptions(max_concurrency=concurrency, batch_size=batch, poll_interval=None)
    start = time.perf_counter()
    async with djobs.open_engine([item], storage=djobs.sqlite(path), worker=worker, alarm_poll_interval=None) as engine:
        await all_done.wait()
        await engine.wait_idle()  # the last completions are committed
        elapsed = time.perf_counter() - start
    return elapsed


def floor_run(path: str, jobs: int, batch: int) -> float:
    db = raw_connection(path)
    start = time.perf_counter()
    done = 0
    while True:
        now = int(time.time() * 1000)
        db.execute("BEGIN IMMEDIATE")
        claimed = list(db.execute(CLAIM, (now, now + 300_000, "floor", batch)))
        db.execute("COMMIT")
        if not claimed:
            break
        db.execute("BEGIN IMMEDIATE")
        db.executemany(COMPLETE, [(now, now, job_id, "floor", attempt) for job_id, _, _, attempt in claimed])
        db.execute("COMMIT")
        done += len(claimed)
    elapsed = time.perf_counter() - start
    db.close()
    if done != jobs:
        raise SystemExit(f"the floor completed {done} rows, expected {jobs}")
    return elapsed


def main() -> None:
    args = parse_args(__doc__ or "", jobs=50_000, concurrency=100, batch=200, stored="10000,100000,1000000")
    stored_sizes = [int(s) for s in args.stored.split(",")]
    by_stored: dict[int, dict[str, float]] = {}
    cpu = 0.0
    for stored in stored_sizes:
        rates, floors = [], []
        with stored_databases(stored) as fresh:
            pending = fresh()
            enqueue(pending, args.jobs)  # one file with the pending rows, copied for each run
            for _ in range(args.runs):
                path = copy(pending)
                cpu0 = cpu_seconds()
                rates.append(args.jobs / trio.run(djobs_run, path, args.jobs, args.concurrency, args.batch))
                cpu += cpu_seconds() - cpu0
                completed = count_status(path, "completed")
                if completed != stored + args.jobs:
                    raise SystemExit(f"{completed - stored} of {args.jobs} jobs completed")
                remove(path)
                path = copy(pending)
                floors.append(args.jobs / floor_run(path, args.jobs, args.batch))
                remove(path)
        rate, floor = median(rates), median(floors)
        by_stored[stored] = {
            "jobs_per_s": round(rate),
            "floor_jobs_per_s": round(floor),
            "ratio_to_floor": round(rate / floor, 3),
        }
    head = by_stored[stored_sizes[0]]
    report(
        "drain",
        **head,
        target_jobs_per_s=TARGET,
        met=head["jobs_per_s"] >= TARGET,
        stored=stored_sizes[0],
        jobs=args.jobs,
        concurrency=args.concurrency,
        batch=args.batch,
        by_stored=by_stored,
        runs=args.runs,
        peak_rss_mb=round(peak_rss_mb(), 1),
        cpu_s_per_1000=round(cpu / (len(stored_sizes) * args.runs * args.jobs) * 1000, 4),
    )


if __name__ == "__main__":
    main()
