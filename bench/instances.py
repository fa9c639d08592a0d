"""instances: an engine over many stored continuous instances (1,000,000 by default).

Targets: engine open to first alarm fired <= 1 s; peak RSS <= 300 MB; due
alarms fired >= 20,000/s (the last two from the engine's-core issue). The
engine is ``open_engine([ticker], storage=sqlite(path))`` with default settings.
``--instances`` sets how many are stored (smaller for a quick run). The figures are taken at 10k, 100k and the full
count of stored instances, to show they stay flat (indexed claims, no
scans). The stored rows are written with SQL in one transaction (making a
million through the client would take minutes and is not what is measured).
Floor: claiming and rewriting the same due alarms with raw SQL, in batches.
``cpu_ms_per_1000`` is the process's CPU from the first alarm fired to the last, per 1,000.
"""

from __future__ import annotations

import time

import apsw
import msgspec
import trio

import djobs

from _common import cpu_seconds, median, parse_args, peak_rss_mb, raw_connection, report, temp_db


class Tick(msgspec.Struct):
    n: int = 0


fired = 0
first_fire: float | None = None
first_fire_cpu = 0.0
all_fired = trio.Event()
expected = 0


def tick(ctx: djobs.ContinuousContext[Tick]) -> None:
    global fired, first_fire, first_fire_cpu
    fired += 1
    if first_fire is None:
        first_fire = time.perf_counter()
        first_fire_cpu = cpu_seconds()
    if fired == expected:
        all_fired.set()


ticker = djobs.Continuous.make("tick", state=Tick, schedule=djobs.every("1 day"), execute=tick)


def seed(path: str, stored: int, due: int) -> None:
    """`stored` instances; the first `due` have an alarm due now, the rest tomorrow."""

    async def create() -> None:
        async with djobs.sqlite(path).open():
            pass

    trio.run(create)
    now = int(time.time() * 1000)
    db = apsw.Connection(path)
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO instances (key, kind, name, instance_id, status, state, created_at, updated_at)"
        " VALUES (?, 'continuous', 'tick', ?, 'running', ?, ?, ?)",
        ((f"continuous:tick:i{i}", f"i{i}", b'{"n":0}', now, now) for i in range(stored)),
    )
    db.executemany(
        "INSERT INTO alarms (key, fire_at, due_at, purpose) VALUES (?, ?, ?, 'run')",
        ((f"continuous:tick:i{i}", t, t) for i in range(stored) for t in [now if i < due else now + 86_400_000]),
    )
    db.execute("COMMIT")
    db.close()


async def djobs_run(path: str, due: int) -> tuple[float, float, float]:
    global fired, first_fire, all_fired, expected
    fired, first_fire, all_fired, expected = 0, None, trio.Event(), due
    opened = time.perf_counter()
    async with djobs.open_engine([ticker], storage=djobs.sqlite(path)) as engine:
        await all_fired.wait()
        done = time.perf_counter()
        done_cpu = cpu_seconds()
        del engine
    assert first_fire is not None
    # CPU per 1,000 alarms from the first fire to the last: the steady figure on a shared machine.
    return first_fire - opened, due / (done - first_fire), (done_cpu - first_fire_cpu) * 1e6 / due


def floor_run(path: str, due: int) -> float:
    db = raw_connection(path)
    now = int(time.time() * 1000) + 1000
    start = time.perf_counter()
    left = due
    while left:
        db.execute("BEGIN IMMEDIATE")
        rows = list(
            db.execute(
                "UPDATE alarms SET due_at = ? WHERE id IN"
                " (SELECT id FROM alarms WHERE due_at <= ? ORDER BY due_at LIMIT 200) RETURNING id, key",
                (now + 86_400_000, now),
            )
        )
        for _, key in rows:
            db.execute("UPDATE instances SET state = ?, run_count = run_count + 1 WHERE key = ?", (b'{"n":1}', key))
        db.execute("COMMIT")
        left -= len(rows)
        if not rows:
            break
    elapsed = time.perf_counter() - start
    db.close()
    return due / elapsed


def main() -> None:
    args = parse_args(__doc__ or "", quick={"instances": 2000, "due": 500}, instances=1_000_000, due=20_000)
    sizes = sorted({min(10_000, args.instances), min(100_000, args.instances), args.instances})
    by_size = {}
    cpu0 = cpu_seconds()
    for stored in sizes:
        opens, rates, floors, cpus = [], [], [], []
        for _ in range(args.runs):
            due = min(args.due, stored)
            with temp_db() as path:
                seed(path, stored, due)
                to_first, rate, cpu_ms = trio.run(djobs_run, path, due)
                opens.append(to_first)
                rates.append(rate)
                cpus.append(cpu_ms)
            with temp_db() as path:
                seed(path, stored, due)
                floors.append(floor_run(path, due))
        by_size[stored] = {
            "open_to_first_alarm_s": round(median(opens), 3),
            "alarms_fired_per_s": round(median(rates)),
            "cpu_ms_per_1000": round(median(cpus), 1),
            "floor_alarms_per_s": round(median(floors)),
            "ratio_to_floor": round(median(rates) / median(floors), 3),
        }
    top = by_size[args.instances]
    rss = peak_rss_mb()
    report(
        "instances",
        instances=args.instances,
        due=args.due,
        **top,
        peak_rss_mb=round(rss, 1),
        targets={"open_to_first_alarm_s": "<= 1", "alarms_fired_per_s": ">= 20000", "peak_rss_mb": "<= 300"},
        met={
            "open_to_first_alarm_s": top["open_to_first_alarm_s"] <= 1,
            "alarms_fired_per_s": top["alarms_fired_per_s"] >= 20_000,
            "peak_rss_mb": rss <= 300,
        },
        by_stored=by_size,
        runs=args.runs,
        cpu_s=round(cpu_seconds() - cpu0, 2),
    )


if __name__ == "__main__":
    main()
