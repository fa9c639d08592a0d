"""debounce: events into 1,000 debounce instances from 100 Trio tasks (target >= 50,000 events/s).

Floor: the same number of single-row upserts into one table, each its own transaction.
"""

from __future__ import annotations

import time

import msgspec
import trio

import djobs

from _common import cpu_seconds, median, parse_args, peak_rss_mb, raw_connection, report, temp_db


class Hit(msgspec.Struct):
    n: int


class Hits(msgspec.Struct):
    count: int = 0


def count(ctx: djobs.DebounceEventContext[Hit, Hits]) -> Hits:
    return Hits((ctx.state.count if ctx.state else 0) + 1)


def flush(ctx: djobs.DebounceContext[Hits]) -> None:
    pass


hits = djobs.Debounce.make("hits", event=Hit, state=Hits, on_event=count, execute=flush, flush_after="1 hour")


async def djobs_run(path: str, events: int, instances: int, tasks: int) -> float:
    async with djobs.open_engine([hits], storage=djobs.sqlite(path), alarm_poll_interval=None) as engine:
        client = engine.client.debounce(hits)
        per_task = events // tasks

        async def sender(t: int) -> None:
            for i in range(per_task):
                await client.add(id=f"i{(t * per_task + i) % instances}", event=Hit(i))

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for t in range(tasks):
                nursery.start_soon(sender, t)
        return time.perf_counter() - start


def floor_run(path: str, events: int, instances: int) -> float:
    db = raw_connection(path)
    db.execute("CREATE TABLE batches (key TEXT PRIMARY KEY, state BLOB, n INTEGER) WITHOUT ROWID")
    start = time.perf_counter()
    for i in range(events):
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO batches VALUES (?, ?, 1) ON CONFLICT(key) DO UPDATE SET state = excluded.state, n = n + 1",
            (f"i{i % instances}", b'{"count":1}'),
        )
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


def main() -> None:
    args = parse_args(__doc__ or "", events=20_000, instances=1_000, tasks=100)
    rates, floors = [], []
    cpu0 = cpu_seconds()
    for _ in range(args.runs):
        with temp_db() as path:
            rates.append(args.events / trio.run(djobs_run, path, args.events, args.instances, args.tasks))
        with temp_db() as path:
            floors.append(args.events / floor_run(path, args.events, args.instances))
    cpu = cpu_seconds() - cpu0
    rate, floor = median(rates), median(floors)
    report(
        "debounce",
        events_per_s=round(rate),
        floor_events_per_s=round(floor),
        ratio_to_floor=round(rate / floor, 3),
        target_events_per_s=50_000,
        met=rate >= 50_000,
        events=args.events,
        instances=args.instances,
        tasks=args.tasks,
        runs=args.runs,
        peak_rss_mb=round(peak_rss_mb(), 1),
        cpu_s_per_1000=round(cpu / (2 * args.runs * args.events) * 1000, 4),
    )


if __name__ == "__main__":
    main()
