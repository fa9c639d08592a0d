"""The storage layers every conformance test runs against.

`storage_layer` is each storage djobs ships in turn: the in-memory store of
tests (Python's own data structures, no SQL), SQLite in memory, SQLite in a
file, and PostgreSQL (on a fresh schema per test, dropped afterwards),
also in a database whose collation sorts text by language (``postgres-icu``).
`shared_layer` is those that several processes can open at once: each
``open()`` is another connection to the same database, as another engine
process would have.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from postgres_support import linguistic_database, postgres_dsn, require_postgres, throwaway_schema

import djobs
from djobs.storage import QueueStorage, StorageLayer
from djobs.storage._memory import memory as memory_store

from . import FullStorage


def _layer(kind: str, tmp_path: Path, icu: str | None = None) -> Iterator[StorageLayer]:
    if kind == "memory":
        yield memory_store()
    elif kind == "sqlite-memory":
        yield djobs.sqlite(":memory:", lease_clock="engine")
    elif kind == "sqlite-file":
        yield djobs.sqlite(tmp_path / "conformance.db")
    else:
        dsn = require_postgres() if kind == "postgres" else icu
        if dsn is None:
            pytest.skip("this PostgreSQL server was built without ICU collations")
        with throwaway_schema(dsn) as schema:
            yield djobs.postgres(dsn, schema=schema)


@pytest.fixture(scope="session")
def icu_dsn() -> Iterator[str | None]:
    """A database whose collation sorts text by language, for the session (``None`` without ICU)."""
    dsn = postgres_dsn()
    assert dsn is not None
    with linguistic_database(dsn) as linguistic:
        yield linguistic


# Without a server the PostgreSQL cases are not generated at all: test_postgres.py
# reports the one skip line that says why.
_POSTGRES = ["postgres"] if postgres_dsn() else []


@pytest.fixture(params=["memory", "sqlite-memory", "sqlite-file", *_POSTGRES, *(["postgres-icu"] if _POSTGRES else [])])
def storage_layer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageLayer]:
    """Each storage implementation in turn."""
    icu = request.getfixturevalue("icu_dsn") if request.param == "postgres-icu" else None
    yield from _layer(request.param, tmp_path, icu)


@pytest.fixture(params=["sqlite-file", *_POSTGRES])
def shared_layer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageLayer]:
    """Each storage that several engine processes can share."""
    yield from _layer(request.param, tmp_path)


@pytest.fixture
async def storage(storage_layer: StorageLayer) -> AsyncIterator[FullStorage]:
    """`storage_layer`, opened."""
    async with storage_layer.open() as opened:
        assert isinstance(opened, QueueStorage)
        yield opened  # type: ignore[misc]  # a Storage that, as asserted, is also a QueueStorage
