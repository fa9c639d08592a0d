"""drain: 10,000 pending no-op jobs drained by one engine with default settings, beside Huey's SQLite queue.

Targets (the engine's-core issue): >= 2.5x Huey at ``synchronous=NORMAL``
(djobs's default durability), >= 10x Huey as shipped (``synchronous=FULL``),
and <= 25 ms of CPU per 1,000 jobs.

djobs: the jobs are enqueued with ``later_many`` before the clock starts. The
clock runs from opening the engine, ``open_engine([item], storage=sqlite(path))``
with every other setting at its default, until the last body has run and the
worker is idle, i.e. every row's completion is committed. Afterwards the file
is checked: every row must be ``completed``.

Huey (``bench/_huey.py``): ``SqliteHuey`` holding the same number of pending
tasks, drained by its consumer's own worker loop with one worker thread, at
NORMAL and as shipped, in the same run. CPU is measured for each the same way
(process CPU time over the drain, per 1,000 jobs).

Floor: raw APSW claiming 200 rows at a time with ``UPDATE … RETURNING`` (one
transaction) and marking them completed (a second transaction), as a worker
that commits its claims and its results must.

djobs and its floor are taken with 10k, 100k and (by default) 1M completed
rows already in the jobs table (``--stored``), to show claims stay indexed as
the table grows; Huey and the ratios to it at the first size.
"""

from __future__ import annotations

import functools
import time

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
from _jobqueue import CLAIM, COMPLETE, Item, copy, count_status, item, remove, reset_counter, stored_databases

TARGETS = {"ratio_to_huey_normal": 2.5, "ratio_to_huey_shipped": 10.0, "cpu_ms_per_1000": 25.0}


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


async def djobs_run(path: str, jobs: int) -> float:
    all_done = reset_counter(jobs)
    start = time.perf_counter()
    async with djobs.open_engine([item], storage=djobs.sqlite(path)) as engine:  # default settings
        await all_done.wait()
        await engine.wait_idle()  # the last completions are committed
        elapsed = time.perf_counter() - start
    return elapsed


def floor_run(path: str, jobs: int, batch: int = 200) -> float:
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
    args = parse_args(
        __doc__ or "", peers=True, quick={"jobs": 1000, "stored": "1000"}, jobs=10_000, stored="10000,100000,1000000"
    )
    if args.peers:
        require_peer("huey")
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
                rates.append(args.jobs / trio.run(djobs_run, path, args.jobs))
                cpu += cpu_seconds() - cpu0
                completed = count_status(path, "completed")
                if completed != stored + args.jobs:
                    raise SystemExit(f"{completed - stored} of {args.jobs} jobs completed")
                remove(path)
                path = copy(pending)
                floors.append(args.jobs / floor_run(path, args.jobs))
                remove(path)
        rate, floor = median(rates), median(floors)
        by_stored[stored] = {
            "jobs_per_s": round(rate),
            "floor_jobs_per_s": round(floor),
            "ratio_to_floor": round(rate / floor, 3),
        }
    head = by_stored[stored_sizes[0]]
    peer = None
    if args.peers:
        from _huey import drain as huey_drain

        peer = functools.partial(huey_drain, jobs=args.jobs)
    huey = huey_figures(peer, args.jobs, args.runs, head["jobs_per_s"])
    cpu_ms = round(cpu / (len(stored_sizes) * args.runs * args.jobs) * 1_000_000, 1)
    report(
        "drain",
        **head,
        cpu_ms_per_1000=cpu_ms,
        **huey,
        targets={"ratio_to_huey_normal": ">= 2.5", "ratio_to_huey_shipped": ">= 10", "cpu_ms_per_1000": "<= 25"},
        met={
            "ratio_to_huey_normal": at_least(huey["ratio_to_huey_normal"], TARGETS["ratio_to_huey_normal"]),
            "ratio_to_huey_shipped": at_least(huey["ratio_to_huey_shipped"], TARGETS["ratio_to_huey_shipped"]),
            "cpu_ms_per_1000": cpu_ms <= TARGETS["cpu_ms_per_1000"],
        },
        stored=stored_sizes[0],
        jobs=args.jobs,
        settings="open_engine defaults",
        by_stored=by_stored,
        runs=args.runs,
        peak_rss_mb=round(peak_rss_mb(), 1),
    )


if __name__ == "__main__":
    main()
