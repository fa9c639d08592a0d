"""What must hold after any number of crashes: the journals of the workload against the database.

`History` gathers the journals of every incarnation of the workload, in the
order they ran. `check` compares them with the database file and returns one
line per broken promise (an empty list when all is well):

- the file passes ``PRAGMA integrity_check``, and every stored row decodes;
- every acknowledged client call is reflected in storage: a started
  continuous instance exists (unless a later terminate may have run), an
  added debounce event is in the pending batch or in a flush that succeeded
  (unless a later clear may have dropped it), a task event is in the task's
  state, an enqueued job's row exists;
- nothing is stored that no call asked for, and no state is half written
  (a run's state and its run count, a batch and its alarm, move together);
- a queued job: each attempt starts once (unless a shutdown handed it back),
  a completed job never runs again, an interrupted one runs again later;
- with ``final=True`` (after the workload ran undisturbed): every due alarm
  fired after the last restart, every batch was flushed, every job completed.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import apsw
import msgspec

from djobs.kinds._workflow_log import StepLog

from . import journal
from .workload import PULSE_EVERY_MS, Batch, Done, Parcel, Seen, Tick, Work

TICKER, PILE, POKER, FLOW = "continuous:ticker:", "debounce:pile:", "task:poker:", "workflow:flow:"
FLOW_CHILD = "workflow:flowchild:"
_INSTANCE_VERBS = (
    "start",
    "terminate",
    "trigger",
    "add",
    "flush",
    "clear",
    "send",
    "task_trigger",
    "wf_start",
    "wf_signal",
)
#: Failures a healthy single-process run may see (the instance was never created or was terminated).
EXPECTED_FAILURES = {
    ("trigger", "InstanceNotFoundError"),
    ("flush", "InstanceNotFoundError"),
    ("task_trigger", "InstanceNotFoundError"),
    ("read", "InstanceNotFoundError"),
    ("wf_signal", "InvalidStateError"),  # the workflow had ended
    # A process that stalls past its instance leases (1.5 s here; a loaded machine, a stopped
    # process) loses them to another; the stale commit is fenced and the call fails, unapplied:
    # a StorageError the caller can retry, never an acknowledgement.
    *((op, "LeaseLostError") for op in _INSTANCE_VERBS),
}
_KIND_OF_OP = {
    "start": "c",
    "terminate": "c",
    "trigger": "c",
    "add": "d",
    "flush": "d",
    "clear": "d",
    "send": "t",
    "task_trigger": "t",
}


@dataclass
class Op:
    """One client call: its intent and, if the process lived to see it, its outcome."""

    op: str
    id: str | None
    seq: int | None
    tag: str
    outcome: str = "unknown"  # "ack", "fail", or "unknown" (the process died during the call)
    result: Any = None
    error: str | None = None


@dataclass
class History:
    """Everything the workload's incarnations journaled, in the order they ran."""

    tags: list[str] = field(default_factory=list)
    #: Calls per (kind letter, instance id), in order.
    by_instance: dict[tuple[str, str], list[Op]] = field(default_factory=lambda: defaultdict(list))
    #: ``later`` calls by seq.
    enqueues: dict[int, Op] = field(default_factory=dict)
    failures: list[Op] = field(default_factory=list)
    #: Seqs of ``add``/``send`` intents per instance id (anything stored must be among them).
    intended: dict[tuple[str, str], set[int]] = field(default_factory=lambda: defaultdict(set))
    #: Exec records of user code, in order.
    ticks: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    #: (run_count, n) of every successful tick, per continuous id.
    tick_pairs: dict[str, set[tuple[int, int]]] = field(default_factory=lambda: defaultdict(set))
    ticked_in: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    flushed: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    job_runs: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    #: How often each (id, seq) was in a successful flush, each (id, seq) reached a task's on_event,
    #: and each (id, run) of a continuous instance succeeded: exactly once each when nothing crashes.
    flush_counts: Counter[tuple[str, int]] = field(default_factory=Counter)
    poke_counts: Counter[tuple[str, int]] = field(default_factory=Counter)
    tick_counts: Counter[tuple[str, int]] = field(default_factory=Counter)
    #: The incarnations in which the cron job's body ran.
    pulsed_in: set[str] = field(default_factory=set)
    #: Workflow ids whose start was acknowledged; runs of each (id, step) in time order
    #: (``wf_step`` records); when each (id, step) was first seen committed (ns).
    wf_started: set[str] = field(default_factory=set)
    wf_runs: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    wf_committed: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Handler intervals per instance key, for the overlap check.
    intervals: dict[str, list[tuple[int, int, int, str]]] = field(default_factory=lambda: defaultdict(list))

    def ingest(self, directory: Path, tag: str) -> None:
        """Read the journals of the incarnation `tag` (once it has ended)."""
        self.tags.append(tag)
        acks = directory / f"acks-{tag}.jsonl"
        open_calls: dict[int, Op] = {}
        if acks.exists():
            for r in journal.read(acks):
                if r["i"] == "intent":
                    op = Op(r["op"], r["id"], r["seq"], tag)
                    open_calls[r["n"]] = op
                    kind = _KIND_OF_OP.get(op.op)
                    if kind is not None and op.id is not None:
                        self.by_instance[(kind, op.id)].append(op)
                        if op.seq is not None:
                            self.intended[(kind, op.id)].add(op.seq)
                    elif op.op == "later" and op.seq is not None:
                        self.enqueues[op.seq] = op
                    continue
                op = open_calls.pop(r["n"])
                op.outcome = r["i"]
                op.result = r.get("result")
                if op.op == "wf_start" and op.outcome == "ack" and op.id is not None:
                    self.wf_started.add(op.id)
                if op.outcome == "fail":
                    op.error = r["error"]
                    if (op.op, op.error) not in EXPECTED_FAILURES:
                        self.failures.append(op)
        execs = directory / f"exec-{tag}.jsonl"
        if execs.exists():
            for r in journal.read(execs):
                self._exec(r, tag)

    def _exec(self, r: dict[str, Any], tag: str) -> None:
        k = r["k"]
        if "t1" in r:
            self.intervals[r["key"]].append((r["t0"], r["t1"], r["pid"], k))
        if k == "tick" and r["ok"]:
            self.ticks[r["id"]].add(r["n"])
            self.tick_pairs[r["id"]].add((r["run"], r["n"]))
            self.tick_counts[(r["id"], r["run"])] += 1
            self.ticked_in[r["id"]].add(tag)
        elif k == "flush" and r["ok"]:
            self.flushed[r["id"]].update(r["seqs"])
            self.flush_counts.update((r["id"], seq) for seq in r["seqs"])
        elif k == "poke":
            self.poke_counts[(r["id"], r["seq"])] += 1
        elif k == "pulse":
            self.pulsed_in.add(tag)
        elif k.startswith("job_"):
            self.job_runs[r["job"]].append(r)
        elif k == "wf_step":
            self.wf_runs[(r["id"], r["step"])].append(r)
        elif k == "wf_committed":
            self.wf_committed.setdefault((r["id"], r["step"]), r["at"])


@dataclass
class Snapshot:
    """The database, read once."""

    integrity: list[str]
    instances: dict[str, dict[str, Any]]
    alarms: dict[str, tuple[int, int, str]]
    event_ids: set[tuple[str, str]]
    jobs: dict[str, dict[str, Any]]


_INSTANCE_COLUMNS = [
    "key",
    "kind",
    "name",
    "instance_id",
    "status",
    "state",
    "run_count",
    "attempt",
    "event_count",
    "execute_count",
    "data",
]
_JOB_COLUMNS = [
    "id",
    "name",
    "status",
    "params",
    "result",
    "error",
    "attempt_count",
    "max_attempts",
    "worker_id",
    "worker_expires_at",
    "completed_at",
    "scheduled_for",
]


class Database(Protocol):
    """Where the workload keeps its rows: a SQLite file or a PostgreSQL schema."""

    def read(self) -> Snapshot:
        """The rows, read once (consistently: one transaction)."""
        ...

    def workload_args(self) -> list[str]:
        """The workload's command-line arguments that open this database."""
        ...


@dataclass(frozen=True)
class SqliteFile:
    """The workload's SQLite file."""

    path: Path

    def read(self) -> Snapshot:
        return read_db(self.path)

    def workload_args(self) -> list[str]:
        return ["--db", str(self.path)]


@dataclass(frozen=True)
class PostgresSchema:
    """The workload's PostgreSQL schema (created by the first process that opens it)."""

    dsn: str
    schema: str

    def read(self) -> Snapshot:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                tables = {
                    r[0]
                    for r in conn.execute(
                        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (self.schema,)
                    )
                }
                if not {"instances", "jobs"} <= tables:
                    return Snapshot(["ok"], {}, {}, set(), {})
                instances = {
                    r[0]: dict(zip(_INSTANCE_COLUMNS, r, strict=True))
                    for r in conn.execute(f"SELECT {', '.join(_INSTANCE_COLUMNS)} FROM instances".encode())
                }
                alarms = {
                    r[0]: (r[1], r[2], r[3]) for r in conn.execute(b"SELECT key, fire_at, due_at, purpose FROM alarms")
                }
                event_ids = {(r[0], r[1]) for r in conn.execute(b"SELECT key, event_id FROM event_ids")}
                jobs = {
                    r[0]: dict(zip(_JOB_COLUMNS, r, strict=True))
                    for r in conn.execute(f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs".encode())
                }
        return Snapshot(["ok"], instances, alarms, event_ids, jobs)

    @property
    def application_name(self) -> str:
        """The workload's sessions carry this name, so a check can wait for a killed one's to close."""
        return f"djobs-soak-{self.schema}"

    def drop(self) -> None:
        """Drop the schema and its tables."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema)))

    def workload_args(self) -> list[str]:
        import psycopg.conninfo

        dsn = psycopg.conninfo.make_conninfo(self.dsn, application_name=self.application_name)
        return ["--postgres", dsn, "--schema", self.schema]


def read_db(path: Path) -> Snapshot:
    """Read the SQLite file at `path`; a file the workload never got to create reads as empty."""
    if not path.exists():
        return Snapshot(["ok"], {}, {}, set(), {})
    db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
    try:
        # Leave the WAL as the crash left it: the next incarnation, not this check, recovers it.
        db.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        db.setbusytimeout(5000)
        integrity = [row[0] for row in db.execute("PRAGMA integrity_check")]
        with db:  # one read transaction: a consistent picture while other processes write
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"instances", "jobs"} <= tables:
                return Snapshot(integrity, {}, {}, set(), {})  # killed before the schema was committed
            rows = db.execute(f"SELECT {', '.join(_INSTANCE_COLUMNS)} FROM instances")
            instances = {r[0]: dict(zip(_INSTANCE_COLUMNS, r, strict=True)) for r in rows}
            alarms = {r[0]: (r[1], r[2], r[3]) for r in db.execute("SELECT key, fire_at, due_at, purpose FROM alarms")}
            event_ids = {(r[0], r[1]) for r in db.execute("SELECT key, event_id FROM event_ids")}
            rows = db.execute(f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs")
            jobs = {r[0]: dict(zip(_JOB_COLUMNS, r, strict=True)) for r in rows}
    finally:
        db.close()
    return Snapshot(integrity, instances, alarms, event_ids, jobs)


def _decode(raw: bytes | None, tp: type[Any], what: str, problems: list[str]) -> Any:
    if raw is None:
        problems.append(f"{what}: no stored value")
        return None
    try:
        return msgspec.json.decode(raw, type=tp)
    except msgspec.DecodeError as exc:
        problems.append(f"{what}: stored value does not decode as {tp.__name__}: {exc}")
        return None


def _possible(ops: list[Op], create: str, delete: str | None) -> set[bool]:
    """Whether the instance may exist after `ops`: acknowledged calls decide, unknown outcomes add a possibility."""
    states = {False}
    for op in ops:
        if op.op not in (create, delete) or op.outcome == "fail":
            continue
        exists = op.op == create
        states = {exists} if op.outcome == "ack" else states | {exists}
    return states


def check(
    database: Path | Database,
    history: History,
    *,
    final_tags: set[str] | None = None,
    clean_worker: str | None = None,
) -> list[str]:
    """Every invariant that `history` and the database break.

    Args:
        database: The database (a path is a SQLite file); no process may be writing to it.
        history: The journals of every incarnation so far.
        final_tags: The incarnations that ran last, undisturbed, until everything due
            was done: also check that it was (and that they ran every instance).
        clean_worker: The worker id of an incarnation that shut down cleanly: none
            of its job leases may be left.
    """
    problems: list[str] = []
    final = final_tags is not None
    snap = (SqliteFile(database) if isinstance(database, Path) else database).read()
    if snap.integrity != ["ok"]:
        problems.append(f"PRAGMA integrity_check: {snap.integrity[:5]}")
    for op in history.failures:
        problems.append(f"unexpected failure of {op.op}({op.id!r}, seq={op.seq}) in {op.tag}: {op.error}")
    _check_continuous(snap, history, problems, final_tags)
    _check_debounce(snap, history, problems, final)
    _check_tasks(snap, history, problems, final)
    _check_jobs(snap, history, problems, final, clean_worker)
    _check_cron(snap, history, problems, final_tags)
    _check_workflows(snap, history, problems, final)
    problems.extend(overlaps(history))
    if final:
        claimed = [k for k, (fire_at, due_at, _) in snap.alarms.items() if due_at != fire_at]
        if claimed:
            problems.append(f"after a clean shutdown, alarms are still claimed: {claimed[:5]}")
    for key, row in snap.instances.items():
        if not key.startswith((TICKER, PILE, POKER, FLOW, FLOW_CHILD)):
            problems.append(f"an instance no call created: {key}")
        elif row["instance_id"] != key.split(":", 2)[2]:
            problems.append(f"{key}: instance_id {row['instance_id']!r} does not match its key")
    return problems


def _check_continuous(snap: Snapshot, history: History, problems: list[str], final_tags: set[str] | None) -> None:
    ids = {i for (kind, i) in history.by_instance if kind == "c"}
    for key in snap.instances:
        if key.startswith(TICKER):
            ids.add(key[len(TICKER) :])
    for cid in sorted(ids):
        key = TICKER + cid
        ops = history.by_instance.get(("c", cid), [])
        row = snap.instances.get(key)
        if (row is not None) not in _possible(ops, "start", "terminate"):
            problems.append(f"{key}: {'exists' if row else 'is missing'} after calls {_show(ops)}")
        if row is None:
            continue
        alarm = snap.alarms.get(key)
        state = _decode(row["state"], Tick, f"{key} state", problems)
        if alarm is None:
            problems.append(f"{key}: a running continuous instance has no alarm")
        if state is None:
            continue
        n, runs = state.n, row["run_count"]
        # The state is the one the last successful run computed, committed with that run's number.
        # While a failed run waits for its retry, the count is that run's and the state an earlier one's.
        # (A trigger while a retry waits starts a new run: the failed one is never retried, so the
        # count may stay ahead of the state for good; it is never behind.)
        pairs = history.tick_pairs.get(cid, set())
        if alarm is not None and alarm[2] == "retry":
            consistent = row["attempt"] > 1 and (n == 0 or any(pn == n and pr < runs for pr, pn in pairs))
        else:
            consistent = (runs, n) in pairs or runs == n == 0
        if n > runs or not consistent:
            problems.append(
                f"{key}: state n={n} with run_count={runs} (attempt {row['attempt']}, alarm {alarm}) "
                "is not what any run committed: a run's state and count were not written together"
            )
        missing = set(range(1, n + 1)) - history.ticks.get(cid, set())
        if missing:
            problems.append(f"{key}: stored n={n}, but no journaled run computed {sorted(missing)[:5]}")
        # An acknowledged trigger's run is in the run count, unless the instance may have been replaced since.
        for i, op in enumerate(ops):
            if op.op == "trigger" and op.outcome == "ack":
                later = [o for o in ops[i + 1 :] if o.op in ("start", "terminate") and o.outcome != "fail"]
                acked_run = op.result["run_count"]
                if not later and runs < acked_run:
                    problems.append(f"{key}: trigger acknowledged run {acked_run}, stored run_count={runs}")
        if final_tags is not None and not final_tags & history.ticked_in.get(cid, set()):
            problems.append(f"{key}: did not run after the last restart (alarm {alarm})")


def _check_debounce(snap: Snapshot, history: History, problems: list[str], final: bool) -> None:
    ids = {i for (kind, i) in history.by_instance if kind == "d"}
    for key in snap.instances:
        if key.startswith(PILE):
            ids.add(key[len(PILE) :])
    for did in sorted(ids):
        key = PILE + did
        ops = history.by_instance.get(("d", did), [])
        row = snap.instances.get(key)
        alarm = snap.alarms.get(key)
        acked = [(i, op) for i, op in enumerate(ops) if op.op == "add" and op.outcome == "ack"]
        if row is None:
            if acked:
                problems.append(f"{key}: missing, but {len(acked)} add(s) were acknowledged")
            continue
        pending: list[int] = []
        if row["state"] is not None:
            batch = _decode(row["state"], Batch, f"{key} state", problems)
            pending = batch.seqs if batch is not None else []
            if alarm is None:
                problems.append(f"{key}: a waiting batch of {len(pending)} event(s) has no alarm: it would never flush")
            if row["event_count"] != len(pending):
                problems.append(f"{key}: event_count={row['event_count']} but the batch holds {len(pending)}")
            if final:
                problems.append(f"{key}: a batch of {len(pending)} event(s) was not flushed after the last restart")
        elif alarm is not None:
            problems.append(f"{key}: idle, but has an alarm {alarm}")
        if len(set(pending)) != len(pending):
            problems.append(f"{key}: the batch holds an event twice: {pending}")
        phantom = set(pending) - history.intended.get(("d", did), set())
        if phantom:
            problems.append(f"{key}: the batch holds events no call added: {sorted(phantom)[:5]}")
        flushed = history.flushed.get(did, set())
        for i, op in acked:
            assert op.seq is not None
            dropped = any(o.op == "clear" and o.outcome != "fail" for o in ops[i + 1 :])
            if not dropped and op.seq not in pending and op.seq not in flushed:
                problems.append(f"{key}: acknowledged event {op.seq} is neither pending nor flushed")
            if (key, f"e{op.seq}") not in snap.event_ids:
                problems.append(f"{key}: forgot the event id of acknowledged event {op.seq}")


def _check_tasks(snap: Snapshot, history: History, problems: list[str], final: bool) -> None:
    ids = {i for (kind, i) in history.by_instance if kind == "t"}
    for key in snap.instances:
        if key.startswith(POKER):
            ids.add(key[len(POKER) :])
    for tid in sorted(ids):
        key = POKER + tid
        ops = history.by_instance.get(("t", tid), [])
        row = snap.instances.get(key)
        acked = [op for op in ops if op.op == "send" and op.outcome == "ack"]
        if row is None:
            if acked:
                problems.append(f"{key}: missing, but {len(acked)} event(s) were acknowledged")
            continue
        state = _decode(row["state"], Seen, f"{key} state", problems)
        if state is None:
            continue
        seqs = set(state.seqs)
        if len(seqs) != len(state.seqs):
            problems.append(f"{key}: an event was applied twice")
        if row["event_count"] != len(state.seqs):
            problems.append(f"{key}: event_count={row['event_count']} but the state holds {len(state.seqs)} event(s)")
        phantom = seqs - history.intended.get(("t", tid), set())
        if phantom:
            problems.append(f"{key}: the state holds events no call sent: {sorted(phantom)[:5]}")
        for op in acked:
            if op.seq not in seqs:
                problems.append(f"{key}: acknowledged event {op.seq} is not in the task's state")
            if (key, f"p{op.seq}") not in snap.event_ids:
                problems.append(f"{key}: forgot the event id of acknowledged event {op.seq}")
        alarm = snap.alarms.get(key)
        if (alarm is None) == (row["status"] == "active"):
            problems.append(f"{key}: status {row['status']!r} but alarm {alarm}")
        if alarm is None and state.executed != len(state.seqs):
            problems.append(f"{key}: no alarm, but only {state.executed} of {len(state.seqs)} event(s) were executed")
        if final and alarm is not None:
            problems.append(f"{key}: its alarm {alarm} did not fire after the last restart")


def _check_jobs(snap: Snapshot, history: History, problems: list[str], final: bool, clean_worker: str | None) -> None:
    by_seq: dict[int, str] = {}
    for job_id, row in snap.jobs.items():
        if clean_worker is not None and row["status"] == "running" and row["worker_id"] == clean_worker:
            problems.append(f"job {job_id}: still leased by {clean_worker}, which shut down cleanly")
        if row["name"] == "pulse":
            continue  # the cron job's own jobs: _check_cron
        if row["name"] == "wfjob":
            parcel = _decode(row["params"], Parcel, f"job {job_id} params", problems)
            if parcel is not None:  # the child workflows' jobs (and _check_child_job)
                what = f"job {job_id} (of workflow {parcel.wid})"
                _check_job(what, row, Parcel(f"job-{parcel.wid}"), history.job_runs.get(job_id, []), problems, final)
            continue
        if row["name"] != "chore":
            problems.append(f"job {job_id}: a job named {row['name']!r}, which nothing enqueues")
            continue
        params = _decode(row["params"], Work, f"job {job_id} params", problems)
        if params is None:
            continue
        if params.seq in by_seq:
            problems.append(f"job seq {params.seq} is stored twice: {by_seq[params.seq]} and {job_id}")
        by_seq[params.seq] = job_id
        if params.seq not in history.enqueues:
            problems.append(f"job {job_id} (seq {params.seq}) was stored, but no call enqueued it")
        what = f"job {job_id} (seq {params.seq})"
        _check_job(what, row, Done(params.seq), history.job_runs.get(job_id, []), problems, final)
    for seq, op in history.enqueues.items():
        if op.outcome != "ack":
            continue
        job_id = op.result
        if job_id not in snap.jobs:
            problems.append(f"acknowledged job {job_id} (seq {seq}) is lost")
        elif by_seq.get(seq) != job_id:
            problems.append(f"acknowledged job {job_id} is stored with other params")


def _check_job(
    what: str,
    row: dict[str, Any],
    expected: Done | Parcel,
    runs: list[dict[str, Any]],
    problems: list[str],
    final: bool,
) -> None:
    """One job's runs: each attempt ran once unless a close handed it back, a completed job ran its
    last attempt to its end and never again, and one that died midway was run again."""
    # In time order: with several processes, journal order is not (a system-wide monotonic clock is).
    runs = sorted(runs, key=lambda r: r["at"])
    attempts = row["attempt_count"]
    starts = [(i, r["attempt"]) for i, r in enumerate(runs) if r["k"] == "job_start"]
    interrupted = {(i, r["attempt"]) for i, r in enumerate(runs) if r["k"] == "job_interrupted"}

    def was_interrupted(index: int, attempt: int) -> bool:
        return any(i > index and a == attempt for i, a in interrupted)

    seen: dict[int, int] = {}
    for i, attempt in starts:
        if attempt in seen and not was_interrupted(seen[attempt], attempt):
            problems.append(f"{what}: attempt {attempt} started twice (it was not handed back in between)")
        seen[attempt] = i
        if attempt > attempts and not was_interrupted(i, attempt):
            problems.append(f"{what}: attempt {attempt} ran, but the row counts {attempts} attempt(s)")
    status = row["status"]
    if status == "completed":
        result = _decode(row["result"], type(expected), f"{what} result", problems)
        if result is not None and result != expected:
            problems.append(f"{what}: result {result} is not this job's")
        if not starts:
            problems.append(f"{what}: completed, but no run of it was journaled")
        else:
            last_index, last_attempt = starts[-1]
            ended = any(r["k"] == "job_end" and r["ok"] and r["attempt"] == last_attempt for r in runs[last_index:])
            if last_attempt != attempts or not ended:
                problems.append(
                    f"{what}: completed in attempt {attempts}, but its last run was attempt "
                    f"{last_attempt} (ended: {ended}): it ran again after completing"
                )
            # Every run that died midway (no end, not handed back) was followed by another.
            for i, attempt in starts[:-1]:
                finished = any(r["k"] == "job_end" and r["attempt"] == attempt for r in runs[i:])
                if not finished and not was_interrupted(i, attempt) and attempt >= last_attempt:
                    problems.append(f"{what}: attempt {attempt} died midway and no later attempt ran")
    elif final:
        problems.append(f"{what}: {status} after the workload settled (attempts {attempts}, error {row['error']!r})")
    if status == "running" and row["worker_expires_at"] is None:
        problems.append(f"{what}: running without a lease")


def _check_cron(snap: Snapshot, history: History, problems: list[str], final_tags: set[str] | None) -> None:
    """The cron job (every second, missed fires all run) enqueued each fire time once: no repeats, no gaps."""
    fires = Counter(row["scheduled_for"] for row in snap.jobs.values() if row["name"] == "pulse")
    repeated = sorted(t for t, n in fires.items() if n > 1)
    if repeated:
        problems.append(f"cron fire times enqueued more than once: {repeated[:5]}")
    times = sorted(fires)
    gaps = [(a, b) for a, b in itertools.pairwise(times) if b - a != PULSE_EVERY_MS]
    if gaps:
        problems.append(f"cron fire times missing or off schedule between {gaps[:3]}")
    if final_tags is not None and not final_tags & history.pulsed_in:
        problems.append("the cron job did not fire after the last restart")


def _check_workflows(snap: Snapshot, history: History, problems: list[str], final: bool) -> None:
    """Every finished step's side effect happened, and none happened again after its checkpoint committed."""
    for wid in sorted(history.wf_started):
        if FLOW + wid not in snap.instances:
            problems.append(f"{FLOW}{wid}: its start was acknowledged, but it is missing")
    for key, row in snap.instances.items():
        child = key.startswith(FLOW_CHILD)
        if not key.startswith(FLOW) and not child:
            continue
        wid = row["instance_id"]
        if child and FLOW + wid.removesuffix("-child") not in snap.instances:
            problems.append(f"{key}: a child workflow whose parent is not stored")
        try:
            log = msgspec.json.decode(row["data"], type=StepLog)
        except msgspec.DecodeError as exc:
            problems.append(f"{key}: the step log does not decode: {exc}")
            continue
        for entry in log.entries:
            if entry.kind != "step" or not entry.done or entry.name not in ("a", "b", "c", "d", "e"):
                continue  # (the step that starts the child journals nothing of its own)
            runs = history.wf_runs.get((wid, entry.name), [])
            token = msgspec.json.decode(bytes(entry.value)) if entry.error is None else None
            if entry.name == "e" and isinstance(token, list) and token:
                # The last step ends the workflow in its own write (its value is the result, the
                # token last), so nothing is journaled after it returns: it is committed once
                # recorded, and no run of it may start after the run whose token is recorded.
                token = token[-1]
                done = [r for r in runs if r["token"] == token]
                again = [r for r in runs if done and r["t0"] > done[0]["t1"]]
                if again:
                    problems.append(f"{key}: step 'e' ran again (pid {again[0]['pid']}) after its checkpoint committed")
            if entry.error is None and not any(r["token"] == token and r["ok"] for r in runs):
                problems.append(
                    f"{key}: step {entry.name!r} is recorded with {token!r}, which no journaled run returned"
                )
        if child:
            _check_child_job(key, wid, row, log, snap, history, problems, final)
        for step in ("d",) if child else ("a", "b", "c"):
            committed = history.wf_committed.get((wid, step))
            again = [r for r in history.wf_runs.get((wid, step), []) if committed is not None and r["t0"] > committed]
            if again:
                problems.append(
                    f"{key}: step {step!r} ran again (pid {again[0]['pid']}) after its checkpoint committed"
                )
        if final and key in snap.alarms:
            problems.append(f"{key}: still has an alarm {snap.alarms[key]} after the workload settled")
        if final and row["status"] != "completed":
            problems.append(f"{key}: {row['status']} after the workload settled (log: {row['data'][:200]!r})")


def _check_child_job(
    key: str,
    wid: str,
    row: dict[str, Any],
    log: StepLog,
    snap: Snapshot,
    history: History,
    problems: list[str],
    final: bool,
) -> None:
    """A child workflow's ``ctx.job``: one job enqueued, ever, whatever was killed when; the recorded
    wait names that job; a wait recorded done saw a run of the job end; a completed workflow's job
    completed. (`_check_job` holds the job's own runs to once per attempt.)"""
    jobs = [j for j, r in snap.jobs.items() if r["name"] == "wfjob" and msgspec.json.decode(r["params"])["wid"] == wid]
    if len(jobs) > 1:
        problems.append(f"{key}: its ctx.job enqueued {len(jobs)} jobs: {sorted(jobs)}")
    waits = [e for e in log.entries if e.kind == "job"]
    if waits and (not jobs or waits[0].name != f"wfjob:{jobs[0]}"):
        problems.append(f"{key}: waits for {waits[0].name!r}, but the stored jobs are {sorted(jobs)}")
    if waits and waits[0].done and jobs:
        ended = [r for r in history.job_runs.get(jobs[0], []) if r["k"] == "job_end" and r["ok"]]
        if not ended:
            problems.append(f"{key}: its wait for job {jobs[0]} is done, but no run of that job ended")
    if final and row["status"] == "completed" and (len(jobs) != 1 or snap.jobs[jobs[0]]["status"] != "completed"):
        problems.append(f"{key}: completed, but its job is {[snap.jobs[j]['status'] for j in jobs]}")


def overlaps(history: History) -> list[str]:
    """Handlers of one instance (or one queued job) whose runs overlapped in time, in any processes."""
    problems: list[str] = []
    for key, spans in history.intervals.items():
        spans.sort()
        for (_, a1, apid, akind), (b0, _, bpid, bkind) in itertools.pairwise(spans):
            if b0 < a1:
                problems.append(
                    f"{key}: {akind} in pid {apid} and {bkind} in pid {bpid} ran at once "
                    f"({(a1 - b0) / 1e6:.1f} ms overlap)"
                )
    return problems


def _show(ops: list[Op]) -> str:
    return ", ".join(f"{o.op}:{o.outcome}@{o.tag}" for o in ops[-6:])
