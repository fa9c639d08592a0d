"""The workload: one engine process on a SQLite file or a PostgreSQL schema, doing a bit of everything djobs does.

Run by the driver (and by ``tests/test_processes.py``) as::

    python -m crash.workload (--db FILE | --postgres DSN --schema S) --journals DIR --tag TAG --seed N
        --mode MODE [--profile crash|peer] [--slot K]

It uses the wall clock and ``djobs.sqlite(FILE)`` (or ``djobs.postgres``), like an application. What
it journals (``DIR/acks-TAG.jsonl`` and ``DIR/exec-TAG.jsonl``):

- every client call: an ``intent`` line before the call, then an ``ack`` line
  (``fsync``'d) once it returned success, or a ``fail`` line;
- every run of user code: what it saw and decided, written *before* the
  engine commits the run's outcome, so a committed outcome is always journaled.

It talks to the driver on stdout, one line each: ``READY <worker id>`` once the
engine is open, ``KILLPOINT <kind>`` when it reached the kill point it was asked
to stop at (then it blocks, so the driver's SIGKILL lands there), ``LOADED``
when its clients stopped calling (after ``--load-seconds``), ``SHUTDOWN``
when SIGTERM made it leave the engine, ``CLOSED`` when the engine has closed.

Modes: ``run`` (no kill point: the driver kills at a moment of its choosing, if at all), ``user``,
``commit_hook`` (just before a commit), ``wal_hook`` (just after a commit, before
the call returns), ``wal_write`` (in the middle of writing a transaction to the
WAL), ``quiet`` (no client calls: let the engine catch up). Every mode ends
cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw
import msgspec
import trio
from returns.future import FutureResult
from returns.io import IOSuccess

import djobs
import djobs.storage
from djobs import Backoff, Retry
from djobs.testing import failure, success

from .journal import Journal

# Everything is short, so that a cycle of a second sees every kind of work and a
# killed process's leases run out within the next cycle.
INSTANCE_LEASE = "1500 ms"
ALARM_LEASE = "1500 ms"
JOB_LOCK = "1500 ms"
POLL = "200 ms"
FLUSH_AFTER = "400 ms"
TASK_DELAY = "300 ms"
TICK_EVERY = {"crash": "300 ms", "peer": "100 ms"}
PULSE_EVERY_MS = 1_000
PULSE_EVERY = f"{PULSE_EVERY_MS} ms"
#: Jobs whose seq is a multiple of this take a while: a shutdown has one to wait for.
SLOW_JOB = 9

KILL_MODES = ("user", "commit_hook", "wal_hook", "wal_write")
#: ``CRASH_MUTANT`` names a defect to plant in this process (tests of the harness itself; see `MUTANTS`).
MUTANT = os.environ.get("CRASH_MUTANT", "")


@dataclass
class World:
    """What the job bodies of this process reach: its journals, its rng and its kill point."""

    tag: str
    acks: Journal
    execs: Journal
    rng: random.Random
    pause: tuple[float, float]
    killpoint: str | None = None
    countdown: int = 0
    calls: int = 0

    def record(self, kind: str, **fields: Any) -> None:
        self.execs.write(k=kind, tag=self.tag, pid=os.getpid(), at=now_ns(), **fields)

    def reached(self, kind: str, *, planted: bool = False) -> None:
        """A kill point of `kind`: announce it and block when its countdown runs out."""
        if self.killpoint != kind:
            return
        if MUTANT in ("no_reclaim", "lazy_checkpoint", "job_without_key") and not planted:
            return  # those defects' kill points are their own (`now`); elsewhere they would show nothing
        self.countdown -= 1
        if self.countdown > 0:
            return
        self.killpoint = None
        print(f"KILLPOINT {kind}", flush=True)
        # Block the whole process (the Trio thread, inside user code or inside
        # SQLite) until the driver's SIGKILL lands here. Never carry on: a process
        # frozen past its leases and then thawed is another experiment.
        while True:
            time.sleep(60)

    def now(self) -> None:
        """Reach this process's kill point now, whatever its countdown (a planted defect's own kill point)."""
        if self.killpoint is not None:
            self.countdown = 1
            self.reached(self.killpoint, planted=True)

    async def nap(self) -> None:
        await trio.sleep(self.rng.uniform(*self.pause))


WORLD: World


def now_ns() -> int:
    # CLOCK_MONOTONIC is system-wide on Linux: intervals from several processes compare.
    return time.monotonic_ns()


# -- the jobs ---------------------------------------------------------------------------


class Tick(msgspec.Struct):
    n: int = 0


async def tick(ctx: djobs.ContinuousContext[Tick]) -> None:
    t0 = now_ns()
    await WORLD.nap()
    n = ctx.state.n + 1
    ok = not (n % 7 == 0 and ctx.attempt == 1)  # a flaky run, retried with the same run number
    WORLD.record(
        "tick",
        key=f"continuous:{ctx.instance_id}",
        id=ctx.instance_id,
        n=n,
        run=ctx.run_count,
        attempt=ctx.attempt,
        ok=ok,
        t0=t0,
        t1=now_ns(),
    )
    WORLD.reached("user")
    if not ok:
        raise RuntimeError("a flaky tick")
    ctx.set_state(Tick(n))


class Ev(msgspec.Struct):
    seq: int


class Batch(msgspec.Struct):
    seqs: list[int] = []


async def collect(ctx: djobs.DebounceEventContext[Ev, Batch]) -> Batch:
    t0 = now_ns()
    await WORLD.nap()
    seqs = [*(ctx.state.seqs if ctx.state is not None else []), ctx.event.seq]
    WORLD.record(
        "collect", key=f"debounce:{ctx.instance_id}", id=ctx.instance_id, seq=ctx.event.seq, t0=t0, t1=now_ns()
    )
    WORLD.reached("user")
    return Batch(seqs)


async def flush(ctx: djobs.DebounceContext[Batch]) -> None:
    t0 = now_ns()
    await WORLD.nap()
    seqs = ctx.state.seqs
    ok = not (min(seqs) % 5 == 0 and ctx.attempt == 1)
    WORLD.record(
        "flush",
        key=f"debounce:{ctx.instance_id}",
        id=ctx.instance_id,
        seqs=seqs,
        attempt=ctx.attempt,
        reason=ctx.flush_reason,
        ok=ok,
        t0=t0,
        t1=now_ns(),
    )
    WORLD.reached("user")
    if not ok:
        raise RuntimeError("a flaky flush")


class Poke(msgspec.Struct, tag=True):
    seq: int


class Seen(msgspec.Struct):
    seqs: list[int] = []
    executed: int = 0


async def on_poke(event: Poke, ctx: djobs.TaskEventContext[Seen]) -> None:
    t0 = now_ns()
    await WORLD.nap()
    state = ctx.state or Seen()
    ctx.set_state(Seen([*state.seqs, event.seq], state.executed))
    if ctx.scheduled_at is None:
        ctx.schedule(TASK_DELAY)
    WORLD.record("poke", key=f"task:{ctx.instance_id}", id=ctx.instance_id, seq=event.seq, t0=t0, t1=now_ns())
    WORLD.reached("user")


async def run_task(ctx: djobs.TaskContext[Seen]) -> None:
    t0 = now_ns()
    await WORLD.nap()
    state = ctx.state or Seen()
    upto = len(state.seqs)
    ok = not (upto % 5 == 0 and ctx.attempt == 1)
    WORLD.record(
        "task",
        key=f"task:{ctx.instance_id}",
        id=ctx.instance_id,
        upto=upto,
        attempt=ctx.attempt,
        ok=ok,
        t0=t0,
        t1=now_ns(),
    )
    WORLD.reached("user")
    if not ok:
        raise RuntimeError("a flaky execute")
    ctx.set_state(Seen(state.seqs, upto))


class Work(msgspec.Struct):
    seq: int


class Done(msgspec.Struct):
    seq: int


async def work(params: Work, ctx: djobs.JobContext) -> Done:
    t0 = now_ns()
    WORLD.record("job_start", key=f"job:{ctx.job_id}", job=ctx.job_id, seq=params.seq, attempt=ctx.attempt, t0=t0)
    try:
        await WORLD.nap()
        if params.seq % SLOW_JOB == 0:
            await trio.sleep(0.3)
    except trio.Cancelled:
        # A shutdown interrupts the run and hands the row back: this attempt's number is used again.
        WORLD.record("job_interrupted", key=f"job:{ctx.job_id}", job=ctx.job_id, attempt=ctx.attempt)
        raise
    if MUTANT == "no_reclaim":
        WORLD.now()  # die while a job runs: without reclaims it never runs again
    ok = not (params.seq % 4 == 0 and ctx.attempt == 1)
    WORLD.record(
        "job_end",
        key=f"job:{ctx.job_id}",
        job=ctx.job_id,
        seq=params.seq,
        attempt=ctx.attempt,
        ok=ok,
        t0=t0,
        t1=now_ns(),
    )
    WORLD.reached("user")
    if not ok:
        raise RuntimeError("a flaky job")
    return Done(params.seq)


async def pulse(fire: djobs.CronFire, ctx: djobs.JobContext) -> None:
    # One job per fire time, whatever crashed when: the cron's advance and its job commit together.
    WORLD.record(
        "pulse", key=f"job:{ctx.job_id}", job=ctx.job_id, fire=fire.scheduled_at.isoformat(), attempt=ctx.attempt
    )


class Flow(msgspec.Struct):
    seq: int


WF_SLEEP = "200 ms"
WF_TIMEOUT = "600 ms"
_tokens = iter(range(1, 1 << 62))


async def wf_effect(wid: str, step: str) -> str:
    """A step's side effect: journaled (with a token unique to this run of it) before it returns."""
    t0 = now_ns()
    await WORLD.nap()
    token = f"{os.getpid()}-{next(_tokens)}"
    ok = not (step == "b" and int(wid.rsplit("-", 1)[1]) % 3 == 0 and token.endswith(("1", "3", "5", "7", "9")))
    WORLD.record("wf_step", key=f"workflow:{wid}", id=wid, step=step, token=token, ok=ok, t0=t0, t1=now_ns())
    WORLD.reached("user")
    if not ok:
        raise RuntimeError("a flaky step")
    return token


class Parcel(msgspec.Struct):
    wid: str


async def wf_job(params: Parcel, ctx: djobs.JobContext) -> Parcel:
    """The job a child workflow enqueues and waits for (``ctx.job``): one row per workflow, ever.

    Journaled as the ``chore`` jobs are (``job_start``, ``job_interrupted``, ``job_end``), so the
    checker holds it to the same rules: an attempt runs once unless a kill or a close interrupted it.
    """
    t0 = now_ns()
    key = f"job:{ctx.job_id}"
    WORLD.record("job_start", key=key, job=ctx.job_id, wid=params.wid, attempt=ctx.attempt, t0=t0)
    try:
        await WORLD.nap()
    except trio.Cancelled:
        WORLD.record("job_interrupted", key=key, job=ctx.job_id, attempt=ctx.attempt)
        raise
    WORLD.record("job_end", key=key, job=ctx.job_id, wid=params.wid, attempt=ctx.attempt, ok=True, t0=t0, t1=now_ns())
    WORLD.reached("user")
    return Parcel(f"job-{params.wid}")


WF_JOB = djobs.Job.make(
    "wfjob", params=Parcel, result=Parcel, execute=wf_job, retry=Retry(max_attempts=50, delay="100 ms"), logging=None
)


async def flow_child(params: Flow, ctx: djobs.WorkflowContext) -> str:
    token = await ctx.step("d", wf_effect, ctx.instance_id, "d")
    WORLD.record("wf_committed", id=ctx.instance_id, step="d", token=token)
    # A job enqueued once through every kill, whose result must reach the workflow.
    done = await ctx.job(WF_JOB, Parcel(ctx.instance_id), poll="200 ms")
    if done.wid != f"job-{ctx.instance_id}":
        raise RuntimeError(f"the job's result came back as {done!r}")
    return token


FLOW_CHILD = djobs.Workflow.make("flowchild", input=Flow, result=str, execute=flow_child, logging=None)


async def flow(params: Flow, ctx: djobs.WorkflowContext) -> list[str]:
    wid, tokens = ctx.instance_id, []
    for step in ("a", "b", "c"):
        token = await ctx.step(step, wf_effect, wid, step)
        # After the step returned, its checkpoint is committed: it must never run again.
        WORLD.record("wf_committed", id=wid, step=step, token=token)
        if MUTANT == "lazy_checkpoint":
            WORLD.now()  # die after a step its defect did not checkpoint
        tokens.append(token)
        if step == "a":
            await ctx.sleep(WF_SLEEP)
        elif step == "b":
            await ctx.wait_for_signal("go", int, timeout=WF_TIMEOUT)
    # A child whose ending must reach this workflow through every kill.
    tokens.append(await ctx.child(FLOW_CHILD, f"{wid}-child", params))
    # The body returns the last step's value at once: that step's checkpoint also completes it.
    return await ctx.step("e", wf_last, wid, tokens)


async def wf_last(wid: str, tokens: list[str]) -> list[str]:
    """The last step: its side effect's token after the others (the workflow's result)."""
    return [*tokens, await wf_effect(wid, "e")]


def definitions(profile: str) -> list[Any]:
    retry = Retry(max_attempts=20, delay=Backoff.fixed("100 ms"))
    return [
        djobs.Continuous.make(
            "ticker", state=Tick, schedule=djobs.every(TICK_EVERY[profile]), execute=tick, retry=retry, logging=None
        ),
        djobs.Debounce.make(
            "pile",
            event=Ev,
            state=Batch,
            on_event=collect,
            execute=flush,
            flush_after=FLUSH_AFTER,
            max_events=6,
            retry=retry,
            logging=None,
        ),
        djobs.Task.make("poker", state=Seen, event=Poke, on_event=on_poke, execute=run_task, retry=retry, logging=None),
        djobs.Job.make(
            "chore", params=Work, result=Done, execute=work, retry=Retry(max_attempts=50, delay="100 ms"), logging=None
        ),
        # "all": every fire time runs once, also those that passed while the process was dead.
        djobs.CronJob.make(
            "pulse", schedule=djobs.every(PULSE_EVERY), execute=pulse, missed="all", max_attempts=50, logging=None
        ),
        djobs.Workflow.make("flow", input=Flow, result=list[str], execute=flow, retry=retry, logging=None),
        FLOW_CHILD,
        WF_JOB,
    ]


# -- the client side ---------------------------------------------------------------------


@dataclass
class Ids:
    """The instance ids one client task uses (disjoint between tasks of one process in the crash profile)."""

    continuous: list[str]
    debounce: list[str]
    task: list[str]


#: (operation, weight) per profile.
OPS = {
    "crash": [
        ("add", 28),
        ("send", 22),
        ("later", 20),
        ("start", 8),
        ("trigger", 5),
        ("flush", 5),
        ("terminate", 3),
        ("clear", 2),
        ("task_trigger", 3),
        ("read", 4),
        ("wf_start", 4),
        ("wf_signal", 3),
    ],
    "peer": [("add", 30), ("send", 20), ("later", 25), ("trigger", 10), ("flush", 5), ("read", 10)],
}


class Client:
    """One client task's calls, each journaled as intent, then ack or fail."""

    def __init__(self, engine: djobs.Engine, world: World, ids: Ids, seqs: Callable[[], int], profile: str) -> None:
        self.engine = engine
        self.world = world
        self.ids = ids
        self.seqs = seqs
        ops = OPS[profile]
        self.ops = [op for op, _ in ops]
        self.weights = [w for _, w in ops]
        self.workflows: list[str] = []

    async def call(self, op: str, id: str | None, seq: int | None, verb: FutureResult[Any, Any]) -> None:
        """Make one call (`verb` does its work when awaited), journaling it."""
        acks, world = self.world.acks, self.world
        world.calls += 1
        n = world.calls  # pairs the outcome with its intent (calls of several tasks interleave)
        acks.write(i="intent", n=n, op=op, id=id, seq=seq, sync=False)
        if MUTANT == "ack_early" and op in ("add", "send"):
            # A lie for the harness's own test: acknowledged before it is stored.
            acks.write(i="ack", n=n, result=None)
            world.now()  # die between the lie and the commit
            await verb
            return
        result = await verb
        if isinstance(result, IOSuccess):
            acks.write(i="ack", n=n, result=msgspec.to_builtins(success(result)))
        else:
            error = failure(result)
            acks.write(i="fail", n=n, error=type(error).__name__, message=str(error))

    async def start_all(self) -> None:
        ticker = self.engine.client.continuous("ticker")
        for cid in self.ids.continuous:
            await self.call("start", cid, None, ticker.start(id=cid, input=Tick()))

    async def run(self, until: float, min_calls: int = 0) -> None:
        """Call away until Trio's clock reaches `until` and `min_calls` calls were made; a call
        once begun is awaited to its end."""
        rng, client = self.world.rng, self.engine.client
        ticker, pile, poker = client.continuous("ticker"), client.debounce("pile"), client.task("poker")
        chore = client.job("chore")
        calls = 0
        while trio.current_time() < until or calls < min_calls:
            calls += 1
            op = rng.choices(self.ops, self.weights)[0]
            cid, did, tid = rng.choice(self.ids.continuous), rng.choice(self.ids.debounce), rng.choice(self.ids.task)
            seq = self.seqs()
            if op == "add":
                await self.call(op, did, seq, pile.add(id=did, event=Ev(seq), event_id=f"e{seq}"))
            elif op == "send":
                await self.call(op, tid, seq, poker.send(id=tid, event=Poke(seq), event_id=f"p{seq}"))
            elif op == "later":
                delay = rng.choice([None, "50 ms", "300 ms"])
                await self.call(op, None, seq, chore.later(Work(seq), delay=delay, idempotency_key=f"j{seq}"))
            elif op == "start":
                await self.call(op, cid, None, ticker.start(id=cid, input=Tick()))
            elif op == "trigger":
                await self.call(op, cid, None, ticker.trigger(cid))
            elif op == "terminate":
                await self.call(op, cid, None, ticker.terminate(cid, reason="workload"))
            elif op == "flush":
                await self.call(op, did, None, pile.flush(did))
            elif op == "clear":
                await self.call(op, did, None, pile.clear(did))
            elif op == "task_trigger":
                await self.call(op, tid, None, poker.trigger(tid))
            elif op == "wf_start":
                wid = f"{self.world.tag}-{seq}"
                self.workflows.append(wid)
                await self.call(op, wid, seq, client.workflow("flow").start(id=wid, input=Flow(seq)))
            elif op == "wf_signal":
                if self.workflows:
                    wid = rng.choice(self.workflows)
                    await self.call(op, wid, seq, client.workflow("flow").signal(wid, "go", seq))
            else:
                which = rng.randrange(4)
                if which == 0:
                    await self.call("read", None, None, ticker.status(cid))
                elif which == 1:
                    await self.call("read", None, None, pile.get_state(did))
                elif which == 2:
                    await self.call("read", None, None, poker.status(tid))
                else:
                    await self.call("read", None, None, client.jobs.list(status="pending", limit=5))
            await trio.sleep(rng.uniform(0, 0.02))


# -- kill points inside SQLite ------------------------------------------------------------


class _KillVfs(apsw.VFS):
    """The default VFS, wrapped so a write to a WAL file can be a kill point."""

    def __init__(self) -> None:
        super().__init__("crash-kill", "unix", makedefault=True)

    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> apsw.VFSFile:
        return _KillFile(name, flags)


class _KillFile(apsw.VFSFile):
    def __init__(self, name: str | apsw.URIFilename | None, flags: list[int]) -> None:
        filename = name.filename() if isinstance(name, apsw.URIFilename) else name
        self.wal = bool(filename) and str(filename).endswith("-wal")
        super().__init__("unix", name, flags)

    def xWrite(self, data: bytes, offset: int) -> None:
        if self.wal:
            # Frames written so far are in the WAL; the commit frame (and the sync) are not.
            WORLD.reached("wal_write")
        super().xWrite(data, offset)


def arm(engine: djobs.Engine, world: World) -> None:
    """Install the SQLite hooks behind the ``commit_hook`` and ``wal_hook`` kill points."""
    storage = engine.storage
    if not isinstance(storage, djobs.storage.SqliteStorage):
        return
    db = storage.connection
    if world.killpoint == "commit_hook":

        def before_commit() -> bool:
            world.reached("commit_hook")
            return False  # go ahead with the commit

        db.set_commit_hook(before_commit, id="crash.killpoint")
    elif world.killpoint == "wal_hook":

        def after_commit(_db: apsw.Connection, _name: str, _pages: int) -> int:
            world.reached("wal_hook")
            return apsw.SQLITE_OK

        # Replaces SQLite's auto-checkpoint hook for this process: the WAL grows a little.
        db.set_wal_hook(after_commit)


# -- mutants: deliberately broken engines, to show the checks catch what they claim to ----------


def plant_mutant(name: str) -> None:
    """Break the engine the way `name` says (see `MUTANTS`)."""
    sqlite_storage = djobs.storage.SqliteStorage
    if name == "split_commit":
        commit = sqlite_storage.commit

        async def split(self: djobs.storage.SqliteStorage, checkin: djobs.storage.Checkin) -> None:
            # An instance's row and its alarm in two transactions instead of one.
            if checkin.record is not None and checkin.alarm is not None:
                await commit(self, msgspec.structs.replace(checkin, alarm=None))
                WORLD.now()  # die between the two halves
                await commit(self, msgspec.structs.replace(checkin, event_id=None))
            else:
                await commit(self, checkin)

        sqlite_storage.commit = split  # type: ignore[method-assign]
    elif name == "no_reclaim":

        async def never(self: Any, *args: Any) -> list[Any]:
            return []  # a crashed worker's jobs stay leased forever

        sqlite_storage.reclaim_expired = never  # type: ignore[method-assign]
    elif name == "no_instance_lease":

        async def always(self: Any, *args: Any) -> bool:
            return True  # every process believes it holds every instance

        sqlite_storage.acquire_instance_lease = always  # type: ignore[method-assign]
    elif name == "lazy_checkpoint":
        checkpoint = sqlite_storage.checkpoint_instance

        async def later(self: Any, record: Any, owner: str, clear_alarm: bool = False) -> None:
            if record.status == "running" and not clear_alarm:
                return  # a step's result is kept in memory until the workflow suspends
            await checkpoint(self, record, owner, clear_alarm)

        sqlite_storage.checkpoint_instance = later  # type: ignore[method-assign]
    elif name == "job_without_key":
        from djobs.kinds._job_client import JobClient

        later = JobClient.later

        def keyless(self: Any, params: Any, **options: Any) -> Any:
            if not isinstance(params, Parcel):
                return later(self, params, **options)
            options.pop("idempotency_key", None)  # ctx.job's enqueue, without the key that makes it once
            return later(self, params, **options).map(lambda job_id: (WORLD.now(), job_id)[1])

        JobClient.later = keyless  # type: ignore[method-assign]
    elif name not in ("", "ack_early"):
        raise SystemExit(f"unknown mutant {name!r}")


#: What each mutant breaks, and which check should notice.
MUTANTS = {
    "ack_early": "acknowledges adds and sends before they are stored: lost acknowledged events",
    "split_commit": "commits an instance and its alarm separately: a batch or task without its alarm",
    "no_reclaim": "never reclaims expired job leases: jobs of a killed worker never run again",
    "no_instance_lease": "lets every process run every instance: handlers overlap across processes",
    "lazy_checkpoint": "records a workflow's steps only when it suspends: a finished step runs again",
    "job_without_key": "enqueues a ctx.job's job without its idempotency key: a step run again enqueues another",
}


# -- main ------------------------------------------------------------------------------


async def amain(args: argparse.Namespace) -> None:
    global WORLD
    journals = Path(args.journals)
    rng = random.Random(args.seed)
    pause = (0.0, 0.01) if args.profile == "crash" else (0.005, 0.015)
    WORLD = world = World(
        args.tag,
        Journal(journals / f"acks-{args.tag}.jsonl", sync=True),
        Journal(journals / f"exec-{args.tag}.jsonl", sync=False),
        rng,
        pause,
    )
    if args.mode in KILL_MODES:
        world.killpoint = args.mode
        world.countdown = rng.randint(1, 80 if args.mode == "wal_write" else 25)
    if args.mode == "wal_write":
        vfs = _KillVfs()  # noqa: F841 - registered as the default VFS while it lives
    plant_mutant(MUTANT)
    counter = iter(range(args.seq_base, args.seq_base + 1_000_000))

    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with djobs.open_engine(
            definitions(args.profile),
            storage=djobs.sqlite(args.db) if args.db else djobs.postgres(args.postgres, schema=args.schema),
            alarm_lease=ALARM_LEASE,
            instance_lease=INSTANCE_LEASE,
            alarm_poll_interval=POLL,
            # Long enough that a clean close on a loaded machine lets running jobs end (with
            # 1 second a job was sometimes cut off and left leased after a clean close).
            shutdown_grace="5 seconds",
            seed=args.seed,
            worker=djobs.WorkerOptions(max_concurrency=4, lock_timeout=JOB_LOCK, poll_interval=POLL),
        ) as engine:
            arm(engine, world)
            print(f"READY {engine.worker_id}", flush=True)
            clients = []
            if args.mode != "quiet":
                for i in range(args.clients):
                    if args.profile == "crash":
                        # Several processes at once (--slot) each call on their own ids: the order
                        # of the calls on one instance is then the order of its slot's journals.
                        own = f"s{args.slot}" if args.slot is not None else ""
                        ids = Ids(
                            [f"{own}c{i}{k}" for k in range(2)],
                            [f"{own}d{i}{k}" for k in range(2)],
                            [f"{own}t{i}{k}" for k in range(2)],
                        )
                    else:  # every peer process uses the same few instances: contention is the point
                        ids = Ids([f"c{k}" for k in range(4)], ["d0", "d1"], ["t0", "t1"])
                    clients.append(Client(engine, world, ids, lambda: next(counter), args.profile))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_clients, clients, args.load_seconds, args.min_calls)
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()
            print("SHUTDOWN", flush=True)
    print("CLOSED", flush=True)


async def _clients(clients: list[Client], load_seconds: float | None, min_calls: int = 0) -> None:
    """Run the client tasks for `load_seconds` and at least `min_calls` calls each (or until
    SIGTERM), then say ``LOADED``."""

    until = trio.current_time() + (load_seconds if load_seconds is not None else math.inf)

    async def one(client: Client) -> None:
        await client.start_all()
        await client.run(until, min_calls)

    # No cancel scope: a call cut short would still run in the engine after LOADED.
    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(one, client)
    print("LOADED", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m crash.workload")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", help="a SQLite file")
    where.add_argument("--postgres", help="a PostgreSQL DSN (with --schema)")
    parser.add_argument("--schema", default="djobs")
    parser.add_argument("--slot", type=int, default=None, help="this process's place among several at once")
    parser.add_argument("--journals", required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seq-base", type=int, default=0)
    parser.add_argument("--mode", default="run", choices=["run", "quiet", *KILL_MODES])
    parser.add_argument("--profile", default="crash", choices=["crash", "peer"])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--load-seconds", type=float, default=None)
    # A floor on the work done, however slow the machine: a loaded machine made too few calls in the seconds.
    parser.add_argument("--min-calls", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    trio.run(amain, args)


if __name__ == "__main__":
    main()
