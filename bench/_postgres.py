"""Shared helpers for the PostgreSQL benchmarks: which server, and a throwaway schema per run.

The server is ``--dsn``, else ``DJOBS_BENCH_POSTGRES_DSN``, else
``DJOBS_TEST_POSTGRES_DSN`` (what the tests use). Each run gets a schema of
its own (a peer, a database of its own), dropped afterwards; with no server
named, a script prints one line saying it was skipped.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import conninfo, sql


def bench_dsn(given: str, benchmark: str) -> str:
    """The server to measure on; with none named, print the one line saying it was skipped and exit 0."""
    dsn = given or os.environ.get("DJOBS_BENCH_POSTGRES_DSN") or os.environ.get("DJOBS_TEST_POSTGRES_DSN")
    if not dsn:
        reason = "no PostgreSQL server: give --dsn postgresql://user@host:5432/db or set DJOBS_TEST_POSTGRES_DSN"
        print(json.dumps({"benchmark": benchmark, "skipped": reason}), flush=True)
        sys.exit(0)
    return dsn


@contextmanager
def throwaway_schema(dsn: str) -> Iterator[str]:
    schema = f"djobs_bench_{uuid.uuid4().hex[:12]}"
    try:
        yield schema
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextmanager
def throwaway_database(dsn: str) -> Iterator[str]:
    """A new database on `dsn`'s server for a peer whose schema is not ours; yields its DSN, drops it after."""
    name = f"djobs_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield conninfo.make_conninfo(dsn, dbname=name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def server_version(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
