"""debounce: 20,000 events into 1,000 debounce instances from 100 Trio tasks.

Targets (the engine's-core issue): >= 50,000 events/s and >= 1.5x the floor.
The engine is ``open_engine([hits], storage=sqlite(path))`` with default settings.

Floor: the same number of single-row upserts into one table, each its own
transaction (one upsert per event), with raw APSW.

Also reported, with no target: ``spread_events_per_s``, the same engine with each
event sent to a random one of the instances (``--spread-events`` events in all, a
few per instance, seconds apart), where an instance is cold at nearly every add: its
lease was given up after its idle moment, so the add takes it again and loads the row.
"""

from __future__ import annotations

import random
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


async def djobs_run(path: str, events: int, instances: int, tasks: int, spread: bool = False) -> float:
    async with djobs.open_engine([hits], storage=djobs.sqlite(path)) as engine:
        client = engine.client.debounce(hits)
        per_task = events // tasks

        async def sender(t: int) -> None:
            pick = random.Random(t)
            for i in range(per_task):
                n = pick.randrange(instances) if spread else (t * per_task + i) % instances
                await client.add(id=f"i{n}", event=Hit(i))

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
    args = parse_args(
        __doc__ or "",
        quick={"events": 1000, "instances": 100, "tasks": 20, "spread_events": 200},
        events=20_000,
        instances=1_000,
        tasks=100,
        spread_events=4_000,
    )
    rates, floors = [], []
    cpu = 0.0
    for _ in range(args.runs):
        with temp_db() as path:
            cpu0 = cpu_seconds()
            rates.append(args.events / trio.run(djobs_run, path, args.events, args.instances, args.tasks))
            cpu += cpu_seconds() - cpu0
        with temp_db() as path:
            floors.append(args.events / floor_run(path, args.events, args.instances))
    spread = []
    for _ in range(args.runs):
        with temp_db() as path:
            spread.append(
                args.spread_events / trio.run(djobs_run, path, args.spread_events, args.instances, args.tasks, True)
            )
    rate, floor = median(rates), median(floors)
    report(
        "debounce",
        events_per_s=round(rate),
        floor_events_per_s=round(floor),
        ratio_to_floor=round(rate / floor, 3),
        spread_events_per_s=round(median(spread)),
        targets={"events_per_s": ">= 50000", "ratio_to_floor": ">= 1.5"},
        met={"events_per_s": rate >= 50_000, "ratio_to_floor": rate / floor >= 1.5},
        events=args.events,
        instances=args.instances,
        tasks=args.tasks,
        runs=args.runs,
        peak_rss_mb=round(peak_rss_mb(), 1),
        cpu_ms_per_1000=round(cpu / (args.runs * args.events) * 1_000_000, 1),
    )


if __name__ == "__main__":
    main()
