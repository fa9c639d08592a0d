"""One engine process for ``test_limit_processes.py``: run limited jobs from a shared database, then exit.

Usage: ``python tests/limits_process.py STORAGE OUT_DIR NAME`` where STORAGE is a SQLite
file's path or ``postgresql://...#SCHEMA``.

Two jobs: ``limited`` (at most 3 at once per account, across processes; each body
sleeps 50 ms) and ``rated`` (at most 5 starts a second). Each body appends
``start <job> <n> <monotonic ns>`` and ``end ...`` lines to ``OUT_DIR/NAME.runs``
(the monotonic clock is one clock for every process of the machine). The process
waits for ``OUT_DIR/go``, runs until no job is pending or running, and exits.
The wall clock and real sleeps: this is a real process.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import msgspec
import trio

import djobs
from djobs.testing import success


class Item(msgspec.Struct):
    n: int
    account: str = "a"


def definitions(runs_file: Path | None) -> tuple[djobs.Job[Item, None], djobs.Job[Item, None]]:
    """The two jobs; with no file, bodies that do nothing (an enqueuing client)."""
    out = runs_file.open("a", buffering=1) if runs_file is not None else None  # line-buffered

    def note(what: str, job: str, n: int) -> None:
        if out is not None:
            out.write(f"{what} {job} {n} {time.monotonic_ns()}\n")

    async def limited(params: Item, ctx: djobs.JobContext) -> None:
        note("start", "limited", params.n)
        await trio.sleep(0.05)
        note("end", "limited", params.n)

    async def rated(params: Item, ctx: djobs.JobContext) -> None:
        note("start", "rated", params.n)
        note("end", "rated", params.n)

    return (
        djobs.Job.make("limited", params=Item, execute=limited, concurrency=3, limit_key=lambda p: p.account),
        djobs.Job.make("rated", params=Item, execute=rated, rate_limit="5/second"),
    )


def storage_of(spec: str) -> djobs.storage.StorageLayer:
    if spec.startswith("postgresql://"):
        dsn, schema = spec.rsplit("#", 1)
        return djobs.postgres(dsn, schema=schema)
    return djobs.sqlite(spec)


async def main(spec: str, out_dir: Path, name: str) -> None:
    jobs = definitions(out_dir / f"{name}.runs")
    # Two slots each: the key's three can only be filled by both processes at once.
    worker = djobs.WorkerOptions(max_concurrency=2, poll_interval="50ms")
    go = out_dir / "go"
    (out_dir / f"{name}.ready").write_text(str(os.getpid()))
    while not go.exists():  # noqa: ASYNC110 - another process makes the file; there is no event to wait on
        await trio.sleep(0.01)
    async with djobs.open_engine(list(jobs), storage=storage_of(spec), worker=worker) as engine:
        while True:
            await trio.sleep(0.1)
            pending = success(await engine.client.jobs.list(status="pending", limit=1))
            running = success(await engine.client.jobs.list(status="running", limit=1))
            if not pending and not running:
                break


if __name__ == "__main__":
    trio.run(main, sys.argv[1], Path(sys.argv[2]), sys.argv[3])
