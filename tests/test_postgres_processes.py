"""Four real engine processes on one PostgreSQL database: 20,000 jobs each run once, a killed
process's jobs come back, and a cron job fires once per time across all four.

The processes (``tests/postgres_process.py``) run on the wall clock, so this
test waits in real time (polling the database and the processes' files);
it takes some ten to thirty seconds.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import psycopg.conninfo
import pytest
import trio
from postgres_process import Item, definitions
from postgres_support import require_postgres, throwaway_schema
from psycopg import sql

import djobs
from djobs.testing import success

DSN = require_postgres()
HELPER = Path(__file__).with_name("postgres_process.py")
N = 20_000
NAMES = ("victim", "p1", "p2", "p3")


@pytest.fixture
def schema() -> Iterator[str]:
    with throwaway_schema(DSN) as name:
        yield name


async def enqueue(schema: str, n: int) -> None:
    job, _ = definitions(None)
    async with djobs.open_engine([job], storage=djobs.postgres(DSN, schema=schema), worker=None) as engine:
        client = engine.client.job(job)

        async def some(start: int) -> None:
            for i in range(start, n, 8):
                success(await client.later(Item(i)))

        async with trio.open_nursery() as nursery:  # eight callers at once, as a web app's requests would be
            for start in range(8):
                nursery.start_soon(some, start)


def start(schema: str, out: Path, name: str, *, sleep_ms: int) -> subprocess.Popen[bytes]:
    # Each process's sessions carry its name, so the test can tell when the server has closed them.
    dsn = psycopg.conninfo.make_conninfo(DSN, application_name=f"djobs-test-{schema}-{name}")
    args = [sys.executable, str(HELPER), dsn, schema, str(out), name, "50", "3 seconds", str(sleep_ms)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def lines(out: Path, name: str, kind: str) -> list[int]:
    path = out / f"{name}.runs"
    if not path.exists():
        return []
    return [int(value) for k, value in (line.split() for line in path.read_text().splitlines() if line) if k == kind]


def query(schema: str, text: str, *args: object) -> list[tuple[object, ...]]:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        return conn.execute(text.encode(), args).fetchall()


def finish(proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        raise AssertionError(f"worker process did not finish:\n{output.decode()}") from None
    assert proc.returncode == 0, output.decode()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.xfail(
    strict=False,
    reason="known open defect: about one run in three on a quiet machine, a job runs twice in two "
    "surviving processes (not the killed one); under investigation, see the reliability guide",
)
def test_four_processes_drain_20000_jobs_once_reclaim_a_killed_ones_and_fire_cron_once(
    schema: str, tmp_path: Path
) -> None:
    trio.run(enqueue, schema, N)
    # The victim's jobs take 20 ms, so it always dies in the middle of some (it holds up to 100 rows).
    procs = {name: start(schema, tmp_path, name, sleep_ms=20 if name == "victim" else 0) for name in NAMES}
    try:
        wait_for(lambda: all((tmp_path / f"{n}.ready").exists() for n in procs), 60, "the processes to start")
        (tmp_path / "go").touch()
        # Kill one process mid-run; a 3-second lease brings its jobs back soon after.
        wait_for(lambda: len(lines(tmp_path, "victim", "job")) >= 500, 60, "the victim to get going")
        os.kill(procs["victim"].pid, signal.SIGKILL)
        procs["victim"].wait()
        # A COMMIT the victim sent just before it died still lands on the server: read what it
        # held only once the server has closed its sessions.
        victim_app = f"djobs-test-{schema}-victim"
        wait_for(
            lambda: not query(schema, "SELECT 1 FROM pg_stat_activity WHERE application_name = %s", victim_app),
            30,
            "the server to close the victim's sessions",
        )
        victim_id = (tmp_path / "victim.id").read_text()
        held = {
            row[0]
            for row in query(schema, "SELECT id FROM jobs WHERE status = 'running' AND worker_id = %s", victim_id)
        }
        assert held, "the victim died holding leases"
        for name in NAMES[1:]:
            finish(procs[name], 180)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()

    # Every job completed; only jobs the victim held when it died ran twice.
    statuses = dict(query(schema, "SELECT status, count(*) FROM jobs WHERE name = 'record' GROUP BY status"))
    assert statuses == {"completed": N}
    counts = Counter(n for name in NAMES for n in lines(tmp_path, name, "job"))
    assert sorted(counts) == list(range(N)), "every job ran"
    assert all(lines(tmp_path, name, "job") for name in NAMES), "all four processes took part"
    twice = [n for n, c in counts.items() if c > 1]
    assert len(twice) <= len(held) and set(counts.values()) <= {1, 2}
    victims = set(lines(tmp_path, "victim", "job"))
    assert all(n in victims for n in twice), "a job ran twice only because the victim died running it"
    expired = sum(int((tmp_path / f"{name}.expired").read_text()) for name in NAMES[1:])
    assert expired >= len(held), "the survivors reclaimed the victim's leases"
    again = {row[0] for row in query(schema, "SELECT id FROM jobs WHERE name = 'record' AND attempt_count > 1")}
    assert held <= again, "each job the victim held was claimed again, as a second attempt"

    # The cron job: one job per fire time, one second apart with none missing, whoever fired it.
    fired = sorted(int(str(r[0])) for r in query(schema, "SELECT scheduled_for FROM jobs WHERE name = 'beat'"))
    assert len(fired) >= 3
    assert [b - a for a, b in itertools.pairwise(fired)] == [1000] * (len(fired) - 1)
    beats = Counter(at for name in NAMES for at in lines(tmp_path, name, "beat"))
    assert set(beats) <= set(fired)
    assert all(c == 1 or at in set(lines(tmp_path, "victim", "beat")) for at, c in beats.items())
