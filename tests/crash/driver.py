"""The driver: run the workload, kill it, restart it on the same file, check, repeat.

Each cycle starts one incarnation of `crash.workload` and ends it one of these
ways (chosen by a seeded rng, so a failing run can be repeated with its seed):

- ``random``: SIGKILL at a random moment (sometimes before it even finished opening);
- ``user``: SIGKILL inside user code (the workload announces it and blocks there);
- ``commit_hook`` / ``wal_hook`` / ``wal_write``: SIGKILL just before a commit, just
  after one (before the client call returns), or halfway through writing one to the WAL;
- ``shutdown``: SIGTERM, then SIGKILL while the engine is shutting down;
- ``clean``: SIGTERM, and the engine must close by itself.

After each cycle the invariants are checked against the journals so far. At the
end one more incarnation runs undisturbed until all due work is done, and the
final invariants are checked.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import invariants
from .invariants import History

TESTS_DIR = Path(__file__).resolve().parent.parent
#: How a cycle ends, and how often.
ENDINGS = [
    ("random", 34),
    ("user", 16),
    ("commit_hook", 10),
    ("wal_hook", 8),
    ("wal_write", 10),
    ("shutdown", 14),
    ("clean", 8),
]
#: Endings at a kill point the workload announces (its mode).
AIMED = ("user", "commit_hook", "wal_hook", "wal_write")
#: Kill points inside SQLite (a commit hook, the WAL): not on PostgreSQL.
SQLITE_ONLY = ("commit_hook", "wal_hook", "wal_write")
#: How long the final incarnation may take to catch up.
SETTLE_TIMEOUT = 40.0


@dataclass
class Cycle:
    """What happened in one cycle."""

    tag: str
    ending: str
    outcome: str
    seconds: float
    #: From SIGTERM to exit, for the ``clean`` cycles of a fleet (a slow close is worth seeing).
    closing: float | None = None


@dataclass
class Report:
    """The result of a run: its cycles and the broken invariants (none, if all is well)."""

    seed: int
    cycles: list[Cycle] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for c in self.cycles:
            counts[f"{c.ending}/{c.outcome}"] = counts.get(f"{c.ending}/{c.outcome}", 0) + 1
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        closes = sorted(c.closing for c in self.cycles if c.closing is not None)
        timed = (
            f"; clean closes took median {statistics.median(closes):.2f} s, max {closes[-1]:.2f} s" if closes else ""
        )
        return f"seed {self.seed}: {len(self.cycles)} cycle(s) ({shown}){timed}; {len(self.problems)} problem(s)"


class Incarnation:
    """One run of the workload process, with its stdout read line by line on a thread."""

    def __init__(
        self,
        harness: Harness,
        tag: str,
        mode: str,
        seed: int,
        seq_base: int,
        extra: Sequence[str] = (),
        *,
        kill_at_point: bool = False,
    ) -> None:
        self.tag = tag
        self.mode = mode
        self.kill_at_point = kill_at_point
        self.hit_point = False
        self.stderr_path = harness.logs / f"{tag}.err"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
            "CRASH_MUTANT": harness.mutant,
        }
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "crash.workload",
                    *harness.database.workload_args(),
                    "--journals",
                    str(harness.journals),
                    "--tag",
                    tag,
                    "--seed",
                    str(seed),
                    "--seq-base",
                    str(seq_base),
                    "--mode",
                    mode,
                    *extra,
                ],
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                cwd=TESTS_DIR,
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.worker_id: str | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode().strip()
            if self.kill_at_point and line.startswith("KILLPOINT"):
                # Among other processes a kill point is killed at once: one blocked there (maybe
                # inside a commit, holding the file's write lock) must not stall the others.
                self.hit_point = True
                self.proc.send_signal(signal.SIGKILL)
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, *prefixes: str, timeout: float) -> str | None:
        """Wait for a line starting with one of `prefixes` and return it; ``None`` on timeout or if the
        process ended first."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                return None
            if line.startswith("READY "):
                self.worker_id = line.split(" ", 1)[1]
            if line.startswith(prefixes):
                return line
        return None

    def kill(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait()

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stderr_problems(self) -> list[str]:
        """Tracebacks and bug reports the process logged: an exception escaped where none may."""
        text = self.stderr_path.read_text(errors="replace")
        if "Traceback" in text or "bug:" in text:
            return [f"{self.tag} logged an error:\n{text[-3000:]}"]
        return []


class Harness:
    """A crash run on one database file in `workdir`."""

    def __init__(
        self,
        workdir: Path,
        seed: int,
        log: Callable[[str], None] | None = None,
        *,
        endings: Sequence[str] = (),
        mutant: str = "",
        settle_timeout: float = SETTLE_TIMEOUT,
        database: invariants.Database | None = None,
    ) -> None:
        self.db = workdir / "crash.db"
        self.database = database if database is not None else invariants.SqliteFile(self.db)
        self.journals = workdir / "journals"
        self.logs = workdir / "logs"
        self.journals.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.seed = seed
        self.endings = endings
        self.mutant = mutant
        self.settle_timeout = settle_timeout
        self.history = History()
        self.report = Report(seed)
        self.log = log or (lambda _line: None)
        self._seen: set[str] = set()

    def cycle(self, index: int, *, check: bool = True) -> Cycle:
        """Run, end and check one incarnation."""
        # One rng per cycle: what a cycle does depends on the seed and its index, not on how earlier ones went.
        rng = random.Random(f"{self.seed}:{index}")
        ending = self.choose_ending(index, rng)
        mode = ending if ending in AIMED else "run"
        tag = f"c{index:05d}"
        started = time.monotonic()
        inc = Incarnation(self, tag, mode, rng.randrange(2**31), seq_base=(index + 1) * 1_000_000)
        try:
            outcome = self._end(inc, ending, rng)
        finally:
            inc.kill()  # never leave a workload behind, whatever went wrong here
        self.history.ingest(self.journals, tag)
        cycle = Cycle(tag, ending, outcome, round(time.monotonic() - started, 2))
        self.report.cycles.append(cycle)
        problems = inc.stderr_problems()
        if outcome.startswith("exited"):
            problems.append(f"{tag}: the workload {outcome} during a {ending} cycle")
        if check:
            clean = inc.worker_id if outcome == "closed" else None
            problems += invariants.check(self.database, self.history, clean_worker=clean)
        self._add(problems, f"after {tag} ({ending}, {outcome})")
        self.log(f"{tag} {ending:<11} {outcome:<16} {cycle.seconds:5.2f}s  problems: {len(self.report.problems)}")
        return cycle

    def choose_ending(self, index: int, rng: random.Random) -> str:
        """The ending of cycle `index`: the given endings in turn, or a weighted draw."""
        if self.endings:
            return self.endings[index % len(self.endings)]
        sqlite = isinstance(self.database, invariants.SqliteFile)
        endings = [(e, w) for e, w in ENDINGS if sqlite or e not in SQLITE_ONLY]
        return rng.choices([e for e, _ in endings], [w for _, w in endings])[0]

    def _end(self, inc: Incarnation, ending: str, rng: random.Random) -> str:
        if ending == "random" and rng.random() < 0.15:
            time.sleep(rng.uniform(0.05, 0.6))  # maybe while it opens the file or migrates
            return self._killed(inc, "killed early")
        aimed = ending in AIMED
        # A kill point may come before READY: the engine works (and writes) while it opens.
        line = inc.expect("READY", "KILLPOINT", timeout=30)
        if line is None:
            return self._killed(inc, "never ready")
        if line.startswith("KILLPOINT"):
            return self._killed(inc, "killed at point")
        if ending == "random":
            time.sleep(rng.uniform(0.2, 1.4))
            return self._killed(inc, "killed")
        if aimed:
            hit = inc.expect("KILLPOINT", timeout=5)
            return self._killed(inc, "killed at point" if hit else "killed (no point)")
        time.sleep(rng.uniform(0.3, 1.0))
        inc.terminate()
        if ending == "shutdown":
            if not inc.expect("SHUTDOWN", timeout=5):
                return self._killed(inc, "killed (no shutdown)")
            # Every other shutdown is killed at once: a close with nothing to wait for now
            # takes milliseconds, and a random delay alone let every close of a run finish
            # first, so no cycle was killed while closing. The rest keep the random delay.
            self._shutdowns = getattr(self, "_shutdowns", 0) + 1
            time.sleep(0.0 if self._shutdowns % 2 else rng.uniform(0.0, 0.4))
            if inc.proc.poll() is not None:
                return "closed" if inc.proc.returncode == 0 else f"exited {inc.proc.returncode}"
            return self._killed(inc, "killed closing")
        rc = inc.wait(timeout=20)
        if rc is None:
            inc.kill()
            return "exited: hung on close"
        return "closed" if rc == 0 else f"exited {rc}"

    @staticmethod
    def _killed(inc: Incarnation, outcome: str) -> str:
        rc = inc.kill()
        if rc not in (-signal.SIGKILL, 0):
            return f"exited {rc} ({outcome})"
        return outcome

    def settle(self) -> None:
        """Run one undisturbed incarnation until every due thing is done, close it, and check everything."""
        tag = "final"
        inc = Incarnation(self, tag, "quiet", self.seed, seq_base=0)
        started = time.monotonic()
        problems: list[str] = []
        try:
            if inc.expect("READY", timeout=30):
                if not self.wait_settled([tag], self.settle_timeout):
                    problems.append(f"the final incarnation did not catch up within {self.settle_timeout:.0f} s")
            else:
                problems.append("the final incarnation never became ready")
            problems += close([inc])
        finally:
            inc.kill()
        self.history.ingest(self.journals, tag)
        problems += invariants.check(self.database, self.history, final_tags={tag}, clean_worker=inc.worker_id)
        self._add(problems, "after the final run")
        self.log(f"final settled in {time.monotonic() - started:.2f}s  problems: {len(self.report.problems)}")

    def wait_settled(self, tags: Sequence[str], timeout: float) -> bool:
        """Wait until the running incarnations `tags` have done everything due; false on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._settled(tags):
                return True
            time.sleep(0.25)
        return False

    def _settled(self, tags: Sequence[str]) -> bool:
        probe = History()
        for tag in tags:
            probe.ingest(self.journals, tag)  # their journals so far: which instances ran since they started
        try:
            snap = self.database.read()
        except Exception:  # the workload holds a lock for a moment: look again later
            return False
        if any(row["status"] in ("pending", "running") and row["name"] != "pulse" for row in snap.jobs.values()):
            return False  # (the cron job enqueues one every second: it is never done)
        if not probe.pulsed_in:
            return False
        for key, row in snap.instances.items():
            if key.startswith(invariants.PILE) and row["state"] is not None:
                return False
            if key.startswith(invariants.POKER) and key in snap.alarms:
                return False
            if key.startswith(invariants.TICKER) and row["instance_id"] not in probe.ticked_in:
                return False
            if key.startswith(invariants.FLOW) and row["status"] != "completed":
                return False
        return True

    def _add(self, problems: list[str], where: str) -> None:
        # A broken invariant stays broken: report it once, where it was first seen.
        for p in problems:
            if p not in self._seen:
                self._seen.add(p)
                self.report.problems.append(f"{where}: {p}")


def close(incarnations: Sequence[Incarnation], timeout: float = 20) -> list[str]:
    """SIGTERM each incarnation; each must close by itself and exit 0, having logged no error."""
    problems: list[str] = []
    for inc in incarnations:
        inc.terminate()
    for inc in incarnations:
        rc = inc.wait(timeout)
        if rc != 0:
            inc.kill()
            problems.append(f"{inc.tag} did not close cleanly (exit code {rc})")
        problems += inc.stderr_problems()
    return problems


def run(
    cycles: int,
    seed: int,
    workdir: Path,
    *,
    check_every: int = 1,
    log: Callable[[str], None] | None = None,
    endings: Sequence[str] = (),
    mutant: str = "",
    settle_timeout: float = SETTLE_TIMEOUT,
    stop_on_problem: bool = False,
    database: invariants.Database | None = None,
) -> Report:
    """Run `cycles` kill cycles and the final settle on a fresh database in `workdir`.

    Args:
        cycles: How many incarnations to end.
        seed: Decides each cycle's ending and timing (the kill moments also depend on real time).
        workdir: Where the database, the journals and the workload's stderr logs go.
        check_every: Check the invariants after every this many cycles (they grow with the journals).
        log: Called with one line per cycle.
        endings: Cycle through these endings instead of choosing them at random.
        mutant: Plant this defect in the workload's engine (see ``crash.workload.MUTANTS``).
        settle_timeout: How long the final incarnation may take to catch up.
        stop_on_problem: Stop at the first cycle that breaks an invariant.
        database: Where the workload keeps its rows (default: a SQLite file in `workdir`).
    """
    harness = Harness(
        workdir, seed, log, endings=endings, mutant=mutant, settle_timeout=settle_timeout, database=database
    )
    for i in range(cycles):
        harness.cycle(i, check=(i + 1) % check_every == 0 or i == cycles - 1)
        if stop_on_problem and harness.report.problems:
            return harness.report
    harness.settle()
    return harness.report


# -- several processes at once ---------------------------------------------------------------


class Fleet:
    """`processes` workload processes on one database at once; each cycle ends one of them and starts
    its successor, while the others go on working.

    Each process has a slot; the processes of one slot run one after another and call only on that
    slot's instance ids, so the journals of a slot give the order of the calls on its instances
    (across slots only the queue, the cron job and the handlers' leases are shared, and those are
    what the checks are about). Every `check_every` cycles all the processes are killed at once
    (a power cut), the invariants are checked, and the slots start again.
    """

    def __init__(self, harness: Harness, processes: int, check_every: int) -> None:
        self.harness = harness
        self.processes = processes
        self.check_every = check_every
        self.slots: list[Incarnation | None] = [None] * processes
        self.endings: dict[str, str] = {}
        self.started = 0  # incarnations started so far: their tags and seq ranges
        self.closing: float | None = None

    def start(self, slot: int, rng: random.Random, mode: str | None = None) -> Incarnation:
        index = self.started
        self.started += 1
        tag = f"s{slot}c{index:05d}"
        if mode is None:
            ending = self.harness.choose_ending(index, rng)
            mode = ending if ending in AIMED else "run"
        else:
            ending = "settle"
        inc = Incarnation(
            self.harness,
            tag,
            mode,
            rng.randrange(2**31),
            seq_base=(index + 1) * 1_000_000,
            extra=["--slot", str(slot)],
            kill_at_point=True,
        )
        self.endings[tag] = ending
        self.slots[slot] = inc
        return inc

    def end(self, slot: int, rng: random.Random) -> tuple[Incarnation, str, str]:
        """End the process in `slot` its chosen way; it, its ending and the outcome."""
        inc = self.slots[slot]
        assert inc is not None
        ending = self.endings[inc.tag]
        try:
            outcome = self._end(inc, ending, rng)
        finally:
            inc.kill()
        self.slots[slot] = None
        return inc, ending, outcome

    def _end(self, inc: Incarnation, ending: str, rng: random.Random) -> str:
        if ending in AIMED:
            # The reader kills it at its kill point; give it a few seconds to get there.
            rc = inc.wait(timeout=8)
            if inc.hit_point:
                return "killed at point"
            return Harness._killed(inc, "killed (no point)") if rc is None else f"exited {rc}"
        if ending == "random":
            time.sleep(rng.uniform(0.05, 1.4))
            return Harness._killed(inc, "killed")
        if not inc.worker_id and not inc.expect("READY", timeout=30):
            return Harness._killed(inc, "never ready")
        inc.terminate()
        if ending == "shutdown":
            if not inc.expect("SHUTDOWN", timeout=5):
                return Harness._killed(inc, "killed (no shutdown)")
            time.sleep(rng.choice([0.0, rng.uniform(0.0, 0.4)]))
            if inc.proc.poll() is not None:
                return "closed" if inc.proc.returncode == 0 else f"exited {inc.proc.returncode}"
            return Harness._killed(inc, "killed closing")
        began = time.monotonic()
        rc = inc.wait(timeout=20)
        self.closing = time.monotonic() - began
        if rc is None:
            inc.kill()
            return "exited: hung on close"
        return "closed" if rc == 0 else f"exited {rc}"

    def cycle(self, index: int) -> Cycle:
        """End one process (chosen by the seed) and start its successor."""
        harness = self.harness
        rng = random.Random(f"{harness.seed}:{index}")
        slot = rng.randrange(self.processes)
        # A process that died at its kill point is replaced first: the others keep the load up.
        dead = [k for k, inc in enumerate(self.slots) if inc is not None and inc.proc.poll() is not None]
        slot = dead[0] if dead else slot
        began = time.monotonic()
        self.closing = None
        inc, ending, outcome = self.end(slot, rng)
        harness.history.ingest(harness.journals, inc.tag)
        closing = round(self.closing, 2) if self.closing is not None else None
        cycle = Cycle(inc.tag, ending, outcome, round(time.monotonic() - began, 2), closing)
        harness.report.cycles.append(cycle)
        problems = inc.stderr_problems()
        if outcome.startswith("exited"):
            problems.append(f"{inc.tag}: the workload {outcome} during a {ending} cycle")
        if outcome == "closed" and inc.worker_id is not None:
            # A clean close hands back every job it held: none may stay leased to it.
            leased = [
                job_id
                for job_id, row in harness.database.read().jobs.items()
                if row["status"] == "running" and row["worker_id"] == inc.worker_id
            ]
            if leased:
                problems.append(f"{inc.tag} closed cleanly but still holds the lease of job(s) {leased[:5]}")
        harness._add(problems, f"after {inc.tag} ({ending}, {outcome})")
        self.start(slot, rng)
        closed = f" (closed in {closing:.2f}s)" if closing is not None else ""
        harness.log(
            f"{inc.tag} {ending:<11} {outcome:<16} {cycle.seconds:5.2f}s  problems: {len(harness.report.problems)}"
            + closed
        )
        return cycle

    def power_cut(self, where: str, *, final_tags: set[str] | None = None) -> None:
        """Kill every process at once, read their journals and check the invariants."""
        incs = [inc for inc in self.slots if inc is not None]
        for inc in incs:
            inc.kill()
        self.slots = [None] * self.processes
        self._after(incs, where, final_tags)

    def _after(self, incs: Sequence[Incarnation], where: str, final_tags: set[str] | None) -> None:
        harness = self.harness
        problems: list[str] = []
        for inc in incs:
            harness.history.ingest(harness.journals, inc.tag)
            problems += inc.stderr_problems()
        if isinstance(harness.database, invariants.PostgresSchema):
            problems += wait_for_sessions(harness.database, timeout=30)
        problems += invariants.check(harness.database, harness.history, final_tags=final_tags)
        harness._add(problems, where)

    def settle(self) -> None:
        """Start every slot undisturbed (no client calls) until all due work is done, close them, check."""
        harness = self.harness
        rng = random.Random(f"{harness.seed}:settle")
        incs = [self.start(slot, rng, mode="quiet") for slot in range(self.processes)]
        started = time.monotonic()
        problems: list[str] = []
        try:
            if all(inc.expect("READY", timeout=60) for inc in incs):
                if not harness.wait_settled([inc.tag for inc in incs], harness.settle_timeout):
                    problems.append(f"the final processes did not catch up within {harness.settle_timeout:.0f} s")
            else:
                problems.append("a final process never became ready")
            problems += close(incs)
        finally:
            for inc in incs:
                inc.kill()
        harness._add(problems, "after the final run")
        self.slots = [None] * self.processes
        self._after(incs, "after the final run", final_tags={inc.tag for inc in incs})
        harness.log(f"final settled in {time.monotonic() - started:.2f}s  problems: {len(harness.report.problems)}")


def wait_for_sessions(database: invariants.PostgresSchema, timeout: float) -> list[str]:
    """Wait until the server has closed the sessions of killed processes: a COMMIT one sent just
    before it died may still land, and the check must see it."""
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (database.application_name,)
            ).fetchone()
            if row is not None and row[0] == 0:
                return []
            time.sleep(0.05)
    return [f"the server kept sessions of killed processes open for {timeout:.0f} s"]


def run_fleet(
    cycles: int,
    seed: int,
    workdir: Path,
    *,
    processes: int = 3,
    check_every: int = 25,
    log: Callable[[str], None] | None = None,
    endings: Sequence[str] = (),
    mutant: str = "",
    settle_timeout: float = SETTLE_TIMEOUT,
    database: invariants.Database | None = None,
) -> Report:
    """Run `processes` workload processes on one database, ending one of them per cycle `cycles` times.

    Args:
        cycles: How many processes to end (each is replaced by a new one in its slot).
        seed: Decides which process each cycle ends, how, and when.
        workdir: Where the journals, the workload's stderr logs (and a SQLite file) go.
        processes: How many run at once.
        check_every: Kill them all at once and check the invariants every this many cycles.
        log: Called with one line per cycle.
        endings: Cycle through these endings instead of choosing them at random.
        mutant: Plant this defect in every process (see ``crash.workload.MUTANTS``).
        settle_timeout: How long the final processes may take to catch up.
        database: Where the workload keeps its rows (default: a SQLite file in `workdir`).
    """
    harness = Harness(
        workdir, seed, log, endings=endings, mutant=mutant, settle_timeout=settle_timeout, database=database
    )
    fleet = Fleet(harness, processes, check_every)
    rng = random.Random(f"{seed}:fleet")
    for slot in range(processes):
        fleet.start(slot, rng)
    for i in range(cycles):
        fleet.cycle(i)
        if (i + 1) % check_every == 0 and i + 1 < cycles:
            fleet.power_cut(f"after the power cut at cycle {i + 1}")
            for slot in range(processes):
                fleet.start(slot, rng)
    fleet.power_cut("after the last cycle")
    fleet.settle()
    return harness.report
