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
    # Its output (the engine's warnings) goes to a file: a diagnosis quotes it.
    with (out / f"{name}.log").open("wb") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def records(out: Path, name: str, kind: str) -> list[list[str]]:
    """The fields after `kind` of each of `name`'s lines of that kind."""
    path = out / f"{name}.runs"
    if not path.exists():
        return []
    return [
        fields[1:] for fields in (line.split() for line in path.read_text().splitlines() if line) if fields[0] == kind
    ]


def lines(out: Path, name: str, kind: str) -> list[int]:
    return [int(fields[0]) for fields in records(out, name, kind)]


def expiries(out: Path, ids: dict[str, str]) -> str:
    """Whose leases each survivor saw expire, and how many: a survivor's own expiring means a
    live process lost its leases (its renewals stalled), not only the killed one."""
    owners = {worker_id: name for name, worker_id in ids.items()}
    seen: Counter[tuple[str, str]] = Counter()
    for name in NAMES[1:]:
        path = out / f"{name}.leases"
        if path.exists():
            for line in path.read_text().splitlines():
                kind, _, _, worker_id, _ = line.split()
                if kind == "job.lease_expired":
                    seen[name, owners.get(worker_id, worker_id)] += 1
    return "leases seen expiring: " + (
        ", ".join(f"{name} took {n} of {owner}'s" for (name, owner), n in sorted(seen.items())) or "none"
    )


def twice_diagnosis(out: Path, schema: str, twice: list[int], ids: dict[str, str]) -> str:
    """Who ran each job of `twice` and when, the lease events each process saw of it, its row,
    and the processes' warnings: what a job that ran twice needs to be explained."""
    said: list[str] = []
    for n in twice[:5]:
        said.append(f"job {n}:")
        job_ids: set[str] = set()
        for name in NAMES:
            for fields in records(out, name, "job"):
                if int(fields[0]) == n:
                    said.append(
                        f"  ran in {name} ({ids.get(name)}): attempt {fields[1]}, id {fields[2]}, at {fields[3]}"
                    )
                    job_ids.add(fields[2])
        for name in NAMES:
            path = out / f"{name}.leases"
            if path.exists():
                said.extend(
                    f"  {name} saw: {line}" for line in path.read_text().splitlines() if line.split()[1] in job_ids
                )
        for job_id in sorted(job_ids):
            said.append(
                f"  row: {query(schema, 'SELECT status, attempt_count, worker_id FROM jobs WHERE id = %s', job_id)}"
            )
    for name in NAMES[1:]:  # the warnings other than the victim's leases expiring, the last 40
        log = out / f"{name}.log"
        kept = [line for line in log.read_text().splitlines() if ids["victim"] not in line] if log.exists() else []
        if kept:
            said.append(f"{name}'s output:\n" + "\n".join(kept[-40:]))
    said.append(expiries(out, ids))
    return "\n".join(said)


def query(schema: str, text: str, *args: object) -> list[tuple[object, ...]]:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        return conn.execute(text.encode(), args).fetchall()


def finish(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"worker process did not finish:\n{log.read_text()}") from None
    assert proc.returncode == 0, log.read_text()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
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
            finish(procs[name], tmp_path / f"{name}.log", 180)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()

    # Every job completed; only jobs the victim held when it died ran twice.
    ids = {name: (tmp_path / f"{name}.id").read_text() for name in NAMES}
    statuses = dict(query(schema, "SELECT status, count(*) FROM jobs WHERE name = 'record' GROUP BY status"))
    assert statuses == {"completed": N}, f"{statuses}; {expiries(tmp_path, ids)}"
    counts = Counter(n for name in NAMES for n in lines(tmp_path, name, "job"))
    assert sorted(counts) == list(range(N)), "every job ran"
    assert all(lines(tmp_path, name, "job") for name in NAMES), "all four processes took part"
    twice = [n for n, c in counts.items() if c > 1]
    victims = set(lines(tmp_path, "victim", "job"))
    not_victims = sorted(n for n in twice if n not in victims or counts[n] > 2)
    assert not not_victims, "a job ran twice only because the victim died running it:\n" + twice_diagnosis(
        tmp_path, schema, not_victims, ids
    )
    assert len(twice) <= len(held) and set(counts.values()) <= {1, 2}
    expired = sum(int((tmp_path / f"{name}.expired").read_text()) for name in NAMES[1:])
    assert expired >= len(held), "the survivors reclaimed the victim's leases"
    # Of every name: a cron fire stores its job running under the firing process, so the victim
    # may also have held a 'beat' job when it died.
    again = {row[0] for row in query(schema, "SELECT id FROM jobs WHERE attempt_count > 1")}
    assert held <= again, "each job the victim held was claimed again, as a second attempt"

    # The cron job: one job per fire time, one second apart with none missing, whoever fired it.
    fired = sorted(int(str(r[0])) for r in query(schema, "SELECT scheduled_for FROM jobs WHERE name = 'beat'"))
    assert len(fired) >= 3
    assert [b - a for a, b in itertools.pairwise(fired)] == [1000] * (len(fired) - 1)
    beats = Counter(at for name in NAMES for at in lines(tmp_path, name, "beat"))
    assert set(beats) <= set(fired)
    assert all(c == 1 or at in set(lines(tmp_path, "victim", "beat")) for at, c in beats.items())
