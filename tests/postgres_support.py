"""Finding the test PostgreSQL server, and a throwaway schema per test.

The tests find the server through ``DJOBS_TEST_POSTGRES_DSN`` (CI sets it in
``.ci/run``). Without it every PostgreSQL test is skipped from the one line in
`require_postgres`, so pytest's summary shows one line saying why.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import hypothesis
import pytest

import djobs

DSN_VARIABLE = "DJOBS_TEST_POSTGRES_DSN"


def postgres_dsn() -> str | None:
    """The test server's DSN, or ``None`` if none is configured."""
    return os.environ.get(DSN_VARIABLE, "").strip() or None


def require_postgres() -> str:
    """The test server's DSN; skips the calling test (or module) if none is configured."""
    dsn = postgres_dsn()
    if dsn is None:
        pytest.skip(
            f"PostgreSQL tests skipped: {DSN_VARIABLE} is not set (e.g. postgresql://postgres@127.0.0.1:5432/test)",
            allow_module_level=True,
        )
    return dsn


def new_schema_name() -> str:
    """A schema name no other run (parallel or earlier) uses."""
    return f"djobs_test_{uuid.uuid4().hex[:16]}"


def drop_schema(dsn: str, schema: str) -> None:
    """Drop `schema` and everything in it (the end of a test)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextmanager
def throwaway_schema(dsn: str) -> Iterator[str]:
    """A fresh schema name, dropped with its tables when the block exits."""
    schema = new_schema_name()
    try:
        yield schema
    finally:
        drop_schema(dsn, schema)


@contextmanager
def linguistic_database(dsn: str) -> Iterator[str | None]:
    """The DSN of a new database on `dsn`'s server whose default collation sorts text by
    language (ICU ``en-US``: ``"b-1"`` before ``"B-2"``, punctuation ignored), dropped when
    the block exits; ``None`` if the server was built without ICU."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_collation WHERE collprovider = 'i' LIMIT 1").fetchone() is None:
            yield None
            return
        database = f"djobs_test_icu_{uuid.uuid4().hex[:12]}"
        conn.execute(
            f"CREATE DATABASE {database} LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8' TEMPLATE template0"
        )
    try:
        yield psycopg.conninfo.make_conninfo(dsn, dbname=database)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {database} WITH (FORCE)")


@contextmanager
def dropped_after(schema: str | None) -> Iterator[None]:
    """Drop `schema` (made with `new_schema_name`) from the test server once the block ends, however
    it ends; ``None`` (a storage kind that is not PostgreSQL) drops nothing."""
    try:
        yield
    finally:
        if schema is not None:
            drop_schema(postgres_dsn() or "", schema)


def storage_layer(kind: str, directory: str, schema: str | None) -> djobs.storage.StorageLayer:
    """The storage layer of `kind` (``memory``, ``sqlite`` or ``postgres``) for one test: a
    SQLite file in `directory`, or the test server's `schema` (made with `new_schema_name`)."""
    if kind == "memory":
        return djobs.storage.memory()
    if kind == "sqlite":
        return djobs.sqlite(f"{directory}/jobs.db")
    assert schema is not None
    return djobs.postgres(postgres_dsn() or "", schema=schema)


def storage_settings(kind: str, *, examples: int, postgres_examples: int) -> hypothesis.settings:
    """Hypothesis's settings for a property run once per storage `kind`: `postgres_examples`
    on PostgreSQL (each example makes round trips to the server), `examples` elsewhere; no
    deadline (a storage's first open is slow), no example database, and a function-scoped
    fixture (``tmp_path``, shared by the examples of one kind) allowed."""
    return hypothesis.settings(
        max_examples=postgres_examples if kind == "postgres" else examples,
        deadline=None,
        database=None,
        suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
    )


#: The storages a test runs on, for `pytest.mark.parametrize`: PostgreSQL is skipped, with the
#: reason, where no server is configured.
STORAGE_KINDS = [
    "memory",
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.skipif(postgres_dsn() is None, reason=f"{DSN_VARIABLE} is not set")),
]


@contextmanager
def fresh_storage_layer(kind: str) -> Iterator[djobs.storage.StorageLayer]:
    """`storage_layer` of `kind` (one of `STORAGE_KINDS`) in a temporary directory or a new schema,
    both removed when the block ends: a storage that outlives the engines opened on it (a restart)."""
    schema = new_schema_name() if kind == "postgres" else None
    with tempfile.TemporaryDirectory() as directory, dropped_after(schema):
        yield storage_layer(kind, directory, schema)
