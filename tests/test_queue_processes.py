"""Two real engine processes on one SQLite file share a queue: each job once; a killed one's jobs come back.

These tests run real subprocesses (``tests/queue_process.py``) on the wall
clock, so they wait in real time; together they take a few seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import apsw
import msgspec
import pytest
import trio

import djobs
from djobs.testing import success

HELPER = Path(__file__).with_name("queue_process.py")
N = 5_000


class Item(msgspec.Struct):
    n: int


async def enqueue(db: Path, n: int) -> None:
    job = djobs.Job.make("record", params=Item, execute=lambda params, ctx: None)
    async with djobs.open_engine([job], storage=djobs.sqlite(db), worker=None) as engine:
        client = engine.client.job(job)
        for i in range(n):
            success(await client.later(Item(i)))


def start(db: Path, out: Path, name: str, *, concurrency: int, lease: str, sleep_ms: int) -> subprocess.Popen[bytes]:
    args = [sys.executable, str(HELPER), str(db), str(out), name, str(concurrency), lease, str(sleep_ms)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def runs(out: Path, name: str) -> list[int]:
    path = out / f"{name}.runs"
    return [int(line) for line in path.read_text().split("\n") if line.strip()] if path.exists() else []


def statuses(db: Path) -> Counter[str]:
    conn = apsw.Connection(str(db))
    try:
        return Counter(
            {status: count for status, count in conn.execute("SELECT status, count(*) FROM jobs GROUP BY status")}
        )
    finally:
        conn.close()


def finish(proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        raise AssertionError(f"worker process did not finish:\n{output.decode()}") from None
    assert proc.returncode == 0, output.decode()


def test_two_processes_drain_5000_jobs_each_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    trio.run(enqueue, db, N)
    procs = {name: start(db, tmp_path, name, concurrency=20, lease="5 seconds", sleep_ms=1) for name in ("a", "b")}
    try:
        wait_for(lambda: all((tmp_path / f"{n}.ready").exists() for n in procs), 30, "both processes to start")
        (tmp_path / "go").touch()
        for proc in procs.values():
            finish(proc, 60)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    a, b = runs(tmp_path, "a"), runs(tmp_path, "b")
    assert len(a) > 0 and len(b) > 0, "both processes took part"
    counts = Counter(a + b)
    assert sorted(counts) == list(range(N))
    assert set(counts.values()) == {1}, "no job ran twice"
    assert statuses(db) == Counter({"completed": N})


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_processs_leased_jobs_are_reclaimed_and_complete(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    trio.run(enqueue, db, N)
    # Slow-ish jobs and a one-second lease: the victim always holds leases when it dies.
    procs = {
        name: start(db, tmp_path, name, concurrency=25, lease="1 second", sleep_ms=10)
        for name in ("victim", "survivor")
    }
    try:
        wait_for(lambda: all((tmp_path / f"{n}.ready").exists() for n in procs), 30, "both processes to start")
        (tmp_path / "go").touch()
        wait_for(lambda: len(runs(tmp_path, "victim")) >= 300, 30, "the victim to get going")
        os.kill(procs["victim"].pid, signal.SIGKILL)
        procs["victim"].wait()
        victim_id = (tmp_path / "victim.id").read_text()
        conn = apsw.Connection(str(db))
        held = {
            row[0]
            for row in conn.execute("SELECT id FROM jobs WHERE status = 'running' AND worker_id = ?", (victim_id,))
        }
        conn.close()
        assert held, "the victim died holding leases"
        finish(procs["survivor"], 60)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    assert statuses(db) == Counter({"completed": N})
    counts = Counter(runs(tmp_path, "victim") + runs(tmp_path, "survivor"))
    assert sorted(counts) == list(range(N)), "every job ran"
    twice = [n for n, c in counts.items() if c > 1]
    # Only jobs the victim was running when it died can have run twice (each at most twice).
    assert len(twice) <= len(held) and set(counts.values()) <= {1, 2}
    assert int((tmp_path / "survivor.expired").read_text()) >= len(held)
