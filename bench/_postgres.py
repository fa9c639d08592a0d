"""Shared helpers for the PostgreSQL benchmarks: which server, and a throwaway schema per run.

The server is ``--dsn``, else ``DJOBS_BENCH_POSTGRES_DSN``, else
``DJOBS_TEST_POSTGRES_DSN`` (what the tests use). Each run gets a schema of
its own, dropped afterwards.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql


def bench_dsn(given: str) -> str:
    dsn = given or os.environ.get("DJOBS_BENCH_POSTGRES_DSN") or os.environ.get("DJOBS_TEST_POSTGRES_DSN")
    if not dsn:
        sys.exit("give a PostgreSQL server: --dsn postgresql://user@host:5432/db (or DJOBS_BENCH_POSTGRES_DSN)")
    return dsn


@contextmanager
def throwaway_schema(dsn: str) -> Iterator[str]:
    schema = f"djobs_bench_{uuid.uuid4().hex[:12]}"
    try:
        yield schema
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def server_version(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
