"""Concurrency and rate limits hold across two engine processes, on one SQLite file and on one PostgreSQL schema.

Real subprocesses (``tests/limits_process.py``) on the wall clock; what is
checked is what their bodies recorded: how many ran at once, and when each
started.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from limits_process import Item, definitions, storage_of
from postgres_support import postgres_dsn, throwaway_schema

import djobs
from djobs.testing import success

HELPER = Path(__file__).with_name("limits_process.py")
LIMITED = 30
RATED = 16


async def enqueue(spec: str) -> None:
    limited, rated = definitions(None)
    async with djobs.open_engine([limited, rated], storage=storage_of(spec), worker=None) as engine:
        # Two accounts: "a" gets most, so its limit of 3 is what the processes contend for.
        items = [Item(n, account="b" if n % 5 == 0 else "a") for n in range(LIMITED)]
        success(await engine.client.job(limited).later_many(items))
        success(await engine.client.job(rated).later_many([Item(n) for n in range(RATED)]))


def run_two_processes(spec: str, out: Path) -> dict[str, list[tuple[str, str, int, int]]]:
    trio.run(enqueue, spec)
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(HELPER), spec, str(out), name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for name in ("p1", "p2")
    }
    try:
        deadline = time.monotonic() + 30
        while not all((out / f"{name}.ready").exists() for name in procs):
            assert time.monotonic() < deadline, "the processes did not start"
            time.sleep(0.02)
        (out / "go").touch()
        for proc in procs.values():
            output, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, output.decode()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    lines: dict[str, list[tuple[str, str, int, int]]] = {}
    for name in procs:
        path = out / f"{name}.runs"
        rows = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
        lines[name] = [(what, job, int(n), int(ns)) for what, job, n, ns in rows]
    return lines


def most_at_once(events: list[tuple[int, int]]) -> int:
    """The most bodies running at once, from (time, +1 start / -1 end) pairs; an end at a
    start's instant counts first (a slot is freed before it is taken)."""
    running = best = 0
    for _, step in sorted(events):
        running += step
        best = max(best, running)
    return best


def check(lines: dict[str, list[tuple[str, str, int, int]]]) -> None:
    everything = [row for rows in lines.values() for row in rows]
    starts = Counter((job, n) for what, job, n, _ in everything if what == "start")
    assert starts == Counter({**{("limited", n): 1 for n in range(LIMITED)}, **{("rated", n): 1 for n in range(RATED)}})
    assert all(any(job == "limited" for _, job, _, _ in rows) for rows in lines.values()), "both processes ran some"
    # Concurrency: account "a" at most 3 at once, across both processes, as the bodies saw it.
    a = {n for n in range(LIMITED) if n % 5 != 0}
    events = [(ns, 1 if what == "start" else -1) for what, job, n, ns in everything if job == "limited" and n in a]
    assert most_at_once(events) == 3
    # Rate: 5 starts a second across both processes. A start is the claim; the body begins a
    # moment later, so windows of 0.8 s leave it 200 ms to do so.
    times = sorted(ns for what, job, _, ns in everything if what == "start" and job == "rated")
    assert all(later - earlier >= 0.8e9 for earlier, later in zip(times, times[5:], strict=False)), times
    assert times[-1] - times[0] >= 2.8e9  # 16 starts at 5 a second need three windows after the first


def test_two_processes_on_one_sqlite_file_share_the_limits(tmp_path: Path) -> None:
    check(run_two_processes(str(tmp_path / "limits.db"), tmp_path))


@pytest.fixture
def postgres_spec() -> Iterator[str]:
    dsn = postgres_dsn()
    if dsn is None:
        pytest.skip("PostgreSQL tests skipped: DJOBS_TEST_POSTGRES_DSN is not set")
    with throwaway_schema(dsn) as schema:
        yield f"{dsn}#{schema}"


def test_two_processes_on_one_postgres_schema_share_the_limits(tmp_path: Path, postgres_spec: str) -> None:
    check(run_two_processes(postgres_spec, tmp_path))
