"""The PostgreSQL peer ``postgres_drain`` runs beside djobs: procrastinate (psycopg-based).

Its app lives in this module rather than the script, so the worker processes
(the script run with ``--procrastinate-worker``) import it by name, as
procrastinate asks of an app (it warns about one defined in ``__main__``).
The no-op task is ``async def``: the worker runs it on its event loop, not in
a thread.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import procrastinate
import psycopg


def procrastinate_app(dsn: str) -> procrastinate.App:
    """An app on `dsn` with one no-op task, ``item``."""
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="item")
    async def procrastinate_noop(n: int) -> None:
        pass

    return app


async def procrastinate_worker_main(dsn: str, folder: Path, name: str) -> None:
    """One worker process: say ready, wait for go, open the app and run the worker at its defaults until caught up.

    The app is opened on "go", as djobs's engines are (whose workers claim as soon as they are open).
    """
    app = procrastinate_app(dsn)
    (folder / f"{name}.ready").touch()
    while not (folder / "go").exists():  # noqa: ASYNC110 - the parent makes the file; no event to wait on
        await asyncio.sleep(0.005)
    async with app.open_async():
        await app.run_worker_async(wait=False, name=name)


async def procrastinate_fill(dsn: str, jobs: int) -> None:
    """Procrastinate's schema in the (empty) database `dsn`, and `jobs` deferred tasks (not timed)."""
    app = procrastinate_app(dsn)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        task = app.tasks["item"]
        for start in range(0, jobs, 5000):
            await task.batch_defer_async(*({"n": n} for n in range(start, min(jobs, start + 5000))))


def procrastinate_done(dsn: str) -> int:
    """How many of the tasks have succeeded."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'").fetchone()
        return int(row[0]) if row else 0
