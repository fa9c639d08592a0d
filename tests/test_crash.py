"""Crash safety: a real engine process is SIGKILLed again and again, and nothing it acknowledged is lost.

The harness lives in ``tests/crash`` (see its package docstring). This is the
CI-sized run: every kind of ending (a random moment, inside user code, just
before / just after / in the middle of a commit, during shutdown, a clean
shutdown) in turn, then a final undisturbed run that must catch up on
everything due. Then the same with three processes at once on one SQLite file
and on one PostgreSQL schema, one of them ended (and replaced) per cycle while
the others work on. ``make soak CYCLES=N [PROCESSES=P] [STORAGE=postgres]``
runs as many cycles as asked for.

``DJOBS_CRASH_CYCLES``, ``DJOBS_CRASH_FLEET_CYCLES`` and ``DJOBS_CRASH_SEED``
override the size and seed of the runs (the seed decides each cycle's ending and timing).
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing
from crash import invariants
from crash.driver import ENDINGS, Report, run, run_fleet
from postgres_support import require_postgres, throwaway_schema

import djobs
import djobs.storage
from djobs.testing import open_test_engine, success

CYCLES = int(os.environ.get("DJOBS_CRASH_CYCLES", "30"))
SEED = int(os.environ.get("DJOBS_CRASH_SEED", "2026"))
#: The several-process runs: how many processes are ended (and replaced), and how.
FLEET_CYCLES = int(os.environ.get("DJOBS_CRASH_FLEET_CYCLES", "7"))
#: Every ending, clean closes among them: a process that closed cleanly must hold no job's lease.
FLEET_ENDINGS = ["user", "random", "clean", "wal_write", "shutdown", "commit_hook", "wal_hook"]

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the harness kills processes with POSIX signals")


def test_kill_cycles_lose_nothing_acknowledged(tmp_path: Path) -> None:
    endings = [e for e, _ in ENDINGS]
    report = run(CYCLES, SEED, tmp_path, endings=endings)
    assert not report.problems, "\n".join([report.summary(), *report.problems[:40]])
    assert len(report.cycles) == CYCLES
    # The kill points were reached: the kills landed where each cycle meant them to.
    at_point = [c for c in report.cycles if c.outcome == "killed at point"]
    aimed = [c for c in report.cycles if c.ending in ("user", "commit_hook", "wal_hook", "wal_write")]
    assert len(at_point) >= len(aimed) * 3 // 4, report.summary()
    assert any(c.outcome == "killed closing" for c in report.cycles), report.summary()
    assert any(c.outcome == "closed" for c in report.cycles), report.summary()


@pytest.mark.parametrize(
    ("mutant", "expected"),
    [
        ("ack_early", "acknowledged"),  # "acknowledged event ... is not in", "missing, but ... acknowledged"
        ("split_commit", "alarm"),  # "a running continuous instance has no alarm", "a waiting batch ... no alarm"
        ("no_reclaim", "running after the workload settled"),
        ("lazy_checkpoint", "after its checkpoint committed"),
        ("job_without_key", "its ctx.job enqueued 2 jobs"),
    ],
)
def test_the_checks_catch_a_planted_defect(tmp_path: Path, mutant: str, expected: str) -> None:
    # A harness that cannot fail proves nothing: plant a defect and see it reported.
    report = run(2, SEED, tmp_path, endings=["user"], mutant=mutant, settle_timeout=4)
    assert any(expected in p for p in report.problems), "\n".join([report.summary(), *report.problems])


class Step(msgspec.Struct):
    n: int


@pytest.mark.trio
async def test_a_worker_does_not_run_its_own_job_twice_at_once(autojump_clock: trio.testing.MockClock) -> None:
    running = most = 0

    async def body(params: Step, ctx: djobs.JobContext) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await trio.sleep(10 if ctx.attempt == 1 else 1)
        finally:
            running -= 1

    job = djobs.Job.make("slow", params=Step, execute=body)
    storage = djobs.storage.faulty(djobs.memory())
    options = djobs.WorkerOptions(lock_timeout="3 seconds", poll_interval=None)
    async with open_test_engine([job], storage=storage, worker=options) as engine:
        storage.fail("renew_leases", kind="busy", times=4)  # the lease lapses while the first attempt runs
        job_id = success(await engine.client.job(job).later(Step(1)))
        await trio.sleep(30)
        await engine.wait_idle()
        assert success(await engine.client.jobs.status(job_id)).status == "completed"
    assert most == 1


# -- several processes at once ------------------------------------------------------------------


def fleet_problems(report: Report) -> str:
    return "\n".join([report.summary(), *report.problems[:40]])


def test_processes_killed_among_others_on_one_file_lose_nothing(tmp_path: Path) -> None:
    # Three processes on one SQLite file; one at a time is killed (at a random moment, inside user
    # code, inside a commit or the WAL, while closing) or closed, and replaced, while the others
    # work on; halfway all three die at once. Then the invariants, and a final run that catches up.
    report = run_fleet(FLEET_CYCLES, SEED, tmp_path, processes=3, check_every=FLEET_CYCLES // 2, endings=FLEET_ENDINGS)
    assert not report.problems, fleet_problems(report)
    assert len(report.cycles) == FLEET_CYCLES
    assert any(c.outcome == "killed at point" for c in report.cycles), report.summary()
    assert any(c.outcome == "closed" for c in report.cycles), report.summary()


def test_processes_killed_among_others_on_postgres_lose_nothing(tmp_path: Path) -> None:
    # The same on one PostgreSQL schema (no kill points inside SQLite here; the kills at once, in
    # user code and at random moments, are what PostgreSQL's sessions see), shorter: its processes
    # take longer to start.
    dsn = require_postgres()
    cycles = max(2, FLEET_CYCLES * 2 // 3)
    with throwaway_schema(dsn) as schema:
        database = invariants.PostgresSchema(dsn, schema)
        endings = ["user", "random", "shutdown", "clean"]
        report = run_fleet(cycles, SEED, tmp_path, processes=3, check_every=cycles, endings=endings, database=database)
    assert not report.problems, fleet_problems(report)
    assert len(report.cycles) == cycles
    assert any(c.outcome == "closed" for c in report.cycles), report.summary()
