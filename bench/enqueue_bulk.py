"""enqueue_bulk: one ``client.job(j).later_many(params_list)`` call (target >= 500,000 jobs/s).

Measured with lists of 10,000 and 100,000 params (``--sizes``); the call
validates and encodes every params, mints every id, and commits all rows in
one transaction before it returns. The headline figure is the largest list.

Floor: ``executemany`` of the same rows (built before the clock starts) in
one transaction with raw APSW.

Also taken with 10k, 100k and (by default) 1M completed rows already in the
jobs table (``--stored``), for the largest list.
"""

from __future__ import annotations

import time

import trio
from returns.pipeline import is_successful

import djobs

from _common import cpu_seconds, median, parse_args, peak_rss_mb, raw_connection, report
from _jobqueue import INSERT, Item, floor_rows, item, remove, stored_databases

TARGET = 500_000


async def djobs_run(path: str, size: int) -> float:
    async with djobs.open_engine([item], storage=djobs.sqlite(path), worker=None, alarm_poll_interval=None) as engine:
        client = engine.client.job(item)
        params = [Item(n) for n in range(size)]
        start = time.perf_counter()
        result = await client.later_many(params)
        elapsed = time.perf_counter() - start
    if not is_successful(result):
        raise SystemExit(f"later_many failed: {result}")
    return elapsed


def floor_run(path: str, rows: list[tuple[object, ...]]) -> float:
    db = raw_connection(path)
    start = time.perf_counter()
    db.execute("BEGIN IMMEDIATE")
    db.executemany(INSERT, rows)
    db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


def measure(fresh: object, size: int, runs: int) -> tuple[float, float, float]:
    """Median djobs rate, median floor rate, and the CPU seconds the djobs runs took."""
    assert callable(fresh)
    rows = floor_rows(size)
    rates, floors, cpu = [], [], 0.0
    for _ in range(runs):
        path = fresh()
        cpu0 = cpu_seconds()
        rates.append(size / trio.run(djobs_run, path, size))
        cpu += cpu_seconds() - cpu0
        remove(path)
        path = fresh()
        floors.append(size / floor_run(path, rows))
        remove(path)
    return median(rates), median(floors), cpu


def main() -> None:
    args = parse_args(
        __doc__ or "", quick={"sizes": "1000", "stored": "1000"}, sizes="10000,100000", stored="10000,100000,1000000"
    )
    list_sizes = [int(s) for s in args.sizes.split(",")]
    stored_sizes = [int(s) for s in args.stored.split(",")]
    biggest = max(list_sizes)
    by_size: dict[int, dict[str, float]] = {}
    by_stored: dict[int, dict[str, float]] = {}
    cpu, jobs_run = 0.0, 0
    for index, stored in enumerate(stored_sizes):
        with stored_databases(stored) as fresh:
            for size in list_sizes if index == 0 else [biggest]:
                rate, floor, spent = measure(fresh, size, args.runs)
                cpu += spent
                jobs_run += size * args.runs
                figures = {
                    "jobs_per_s": round(rate),
                    "floor_jobs_per_s": round(floor),
                    "ratio_to_floor": round(rate / floor, 3),
                }
                if index == 0:
                    by_size[size] = figures
                if size == biggest:
                    by_stored[stored] = figures
    head = by_size[biggest]
    report(
        "enqueue_bulk",
        **head,
        targets={"jobs_per_s": f">= {TARGET}"},
        met={"jobs_per_s": head["jobs_per_s"] >= TARGET},
        list_size=biggest,
        stored=stored_sizes[0],
        by_list_size=by_size,
        by_stored=by_stored,
        runs=args.runs,
        peak_rss_mb=round(peak_rss_mb(), 1),
        cpu_ms_per_1000=round(cpu / jobs_run * 1_000_000, 1),
    )


if __name__ == "__main__":
    main()
