"""workflow: workflows of three no-op steps, completed per second, on SQLite; DBOS beside it.

Target: >= 5,000 workflows/s end to end (start to completed) and >= 10x DBOS
Transact on its SQLite system database, measured in the same run. Each
djobs workflow is started through the client (one transaction, which also
takes its lease), runs at once on its actor (its alarm is only a guard
against a crash), runs three steps (each checkpointed in its own commit,
shared with the other workflows in flight) and commits its result; the
figure counts the ``workflow.completed`` events, which are emitted after that
commit. CPU seconds per 1,000 workflows (each side's median) is the steadier
figure on a shared machine. DBOS (``pip install dbos``, an optional
bench-only dependency, in the ``bench`` extra) runs the same workflow, called
directly; ``--no-peers`` measures djobs alone and leaves DBOS's figures ``null``.
"""

from __future__ import annotations

import time

import msgspec
import trio

import djobs

from _common import cpu_seconds, median, parse_args, report, require_peer, temp_db


class Nothing(msgspec.Struct):
    pass


def noop(i: int) -> int:
    return i


async def three_steps(_: Nothing, ctx: djobs.WorkflowContext) -> int:
    a = await ctx.step("one", noop, 1)
    b = await ctx.step("two", noop, a)
    return await ctx.step("three", noop, b)


flow = djobs.Workflow.make("bench", input=Nothing, result=int, execute=three_steps)


class Counter:
    """A tracker that counts completed workflows and says when `target` are done."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.completed = 0
        self.done = trio.Event()

    def emit(self, event: djobs.TrackedEvent) -> None:
        if event.type == "workflow.completed":
            self.completed += 1
            if self.completed == self.target:
                self.done.set()

    async def aclose(self) -> None:
        pass


async def djobs_run(path: str, count: int, concurrency: int) -> float:
    counter = Counter(count)
    async with djobs.open_engine(
        [flow], storage=djobs.sqlite(path), tracker=counter, alarm_poll_interval=None, max_concurrency=concurrency
    ) as engine:
        client = engine.client.workflow(flow)
        started = time.perf_counter()

        async def starter(ids: range) -> None:
            for i in ids:
                await client.start(id=f"w{i}", input=Nothing())

        async with trio.open_nursery() as nursery:
            per = -(-count // concurrency)
            for k in range(concurrency):
                nursery.start_soon(starter, range(k * per, min(count, (k + 1) * per)))
        await counter.done.wait()
        elapsed = time.perf_counter() - started
    return count / elapsed


def dbos_run(path: str, count: int) -> float:
    """The same workflow on DBOS Transact, SQLite system database; workflows completed per second."""
    from dbos import DBOS, DBOSConfig

    config: DBOSConfig = {"name": "djobs-bench", "system_database_url": f"sqlite:///{path}", "log_level": "WARNING"}
    DBOS(config=config)

    @DBOS.step()
    def dbos_noop(i: int) -> int:
        return i

    @DBOS.workflow()
    def dbos_three_steps() -> int:
        a = dbos_noop(1)
        b = dbos_noop(a)
        return dbos_noop(b)

    DBOS.launch()
    try:
        # Called directly: each workflow runs to its end in the caller's thread, durably; DBOS's
        # fastest path on SQLite (start_workflow's threads contend for SQLite's write lock).
        started = time.perf_counter()
        for _ in range(count):
            dbos_three_steps()
        elapsed = time.perf_counter() - started
    finally:
        DBOS.destroy(destroy_registry=True)
    return count / elapsed


def main() -> None:
    args = parse_args(
        __doc__ or "",
        peers=True,
        quick={"count": 200, "concurrency": 16, "dbos_count": 50},
        count=5_000,
        concurrency=64,
        dbos_count=1_000,
    )
    if args.peers:
        require_peer("dbos")
    cpu0 = cpu_seconds()
    rates, cpus = [], []
    for _ in range(args.runs):
        with temp_db() as path:
            before = cpu_seconds()
            rates.append(trio.run(djobs_run, path, args.count, args.concurrency))
            cpus.append((cpu_seconds() - before) / args.count * 1000)
    rate = median(rates)
    dbos_rate: int | None = None
    dbos_cpu: float | None = None
    dbos_version: str | None = None
    if args.peers:
        from importlib.metadata import version

        dbos_rates, dbos_cpus = [], []
        for _ in range(args.runs):
            with temp_db() as path:
                before = cpu_seconds()
                dbos_rates.append(dbos_run(path, args.dbos_count))
                dbos_cpus.append((cpu_seconds() - before) / args.dbos_count * 1000)
        dbos_rate = round(median(dbos_rates))
        dbos_cpu = round(median(dbos_cpus), 3)
        dbos_version = version("dbos")
    ratio = None if dbos_rate is None else round(rate / dbos_rate, 1)
    report(
        "workflow",
        count=args.count,
        workflows_per_s=round(rate),
        cpu_s_per_1000=round(median(cpus), 3),
        dbos_workflows_per_s=dbos_rate,
        dbos_cpu_s_per_1000=dbos_cpu,
        dbos_version=dbos_version,
        ratio_to_dbos=ratio,
        targets={"workflows_per_s": 5_000, "ratio_to_dbos": 10},
        met={"workflows_per_s": rate >= 5_000, "ratio_to_dbos": None if ratio is None else ratio >= 10},
        runs=args.runs,
        cpu_s=round(cpu_seconds() - cpu0, 2),
    )


if __name__ == "__main__":
    main()
