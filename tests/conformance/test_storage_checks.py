"""`djobs.testing.check_storage` against every storage djobs ships, and against broken ones.

The checks themselves live in ``djobs/testing/_storage.py``, shipped so that
a storage layer written elsewhere can be proved the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from itertools import count
from pathlib import Path
from typing import Any

import msgspec
import pytest
from postgres_support import linguistic_database, postgres_dsn, throwaway_schema

import djobs
from djobs.storage import Checkin, StorageLayer
from djobs.storage._memory import memory as memory_store
from djobs.testing import check_storage

pytestmark = pytest.mark.trio


async def test_memory_storage_passes_with_two_stores_on_each_layer() -> None:
    # Every open of one memory() layer is a store on the same tables, as two connections to one file.
    await check_storage(memory_store, shared=True)


async def test_sqlite_in_memory_passes() -> None:
    await check_storage(lambda: djobs.sqlite(":memory:", lease_clock="engine"))


async def test_sqlite_files_pass_with_two_connections_each(tmp_path: Path) -> None:
    numbers = count()
    # The checks pass explicit times: leases on the engine's clock (the host's is tested in test_lease_clock.py).
    await check_storage(lambda: djobs.sqlite(tmp_path / f"{next(numbers)}.db", lease_clock="engine"), shared=True)


@pytest.mark.skipif(postgres_dsn() is None, reason="PostgreSQL tests need DJOBS_TEST_POSTGRES_DSN")
async def test_postgres_passes_with_two_connections_each() -> None:
    dsn = postgres_dsn()
    assert dsn is not None

    @asynccontextmanager
    async def new_schema() -> AsyncIterator[StorageLayer]:
        with throwaway_schema(dsn) as schema:
            # The checks pass explicit times; leases judged by the server's clock are tested in test_leases.py.
            yield djobs.postgres(dsn, schema=schema, lease_clock="engine")

    await check_storage(new_schema, shared=True)


@pytest.mark.skipif(postgres_dsn() is None, reason="PostgreSQL tests need DJOBS_TEST_POSTGRES_DSN")
async def test_postgres_passes_on_a_database_that_sorts_text_by_language() -> None:
    # Made with a language's collation, a database still lists and pages in code-point
    # order, as SQLite does: the checks' mixed-case ids and names.
    dsn = postgres_dsn()
    assert dsn is not None
    with linguistic_database(dsn) as linguistic:
        if linguistic is None:
            pytest.skip("this PostgreSQL server was built without ICU collations")

        @asynccontextmanager
        async def new_schema() -> AsyncIterator[StorageLayer]:
            with throwaway_schema(linguistic) as schema:
                yield djobs.postgres(linguistic, schema=schema, lease_clock="engine")

        await check_storage(new_schema)


# -- the checks catch what is wrong ----------------------------------------------------------


class _Wrapped:
    """A storage that passes every call through to in-memory SQLite."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


class _ForgetsEventIds(_Wrapped):
    """Answers that no idempotency key was ever seen: a retried event would be applied twice."""

    async def has_event_id(self, key: str, event_id: str) -> bool:
        return False


class _BrokenLayer:
    def __init__(self, wrap: type[_Wrapped]) -> None:
        self._wrap = wrap

    @asynccontextmanager
    async def open(self) -> AsyncIterator[object]:
        async with djobs.memory().open() as inner:
            yield self._wrap(inner)


async def test_a_storage_that_breaks_the_contract_fails_with_the_check_named() -> None:
    with pytest.raises(AssertionError, match="storage check failed: checkin is atomic with its idempotency key"):
        await check_storage(lambda: _BrokenLayer(_ForgetsEventIds))  # type: ignore[arg-type,return-value]


async def test_a_storage_without_the_queue_is_refused_unless_queue_is_false() -> None:
    with pytest.raises(AssertionError, match="does not implement QueueStorage"):
        await check_storage(lambda: _BrokenLayer(_NoQueueStorage))  # type: ignore[arg-type,return-value]
    await check_storage(lambda: _BrokenLayer(_NoQueueStorage), queue=False)  # type: ignore[arg-type,return-value]


class _NoQueueStorage(_Wrapped):
    """Only the `Storage` protocol: the queue's methods are not there."""

    def __getattr__(self, name: str) -> object:
        if name in {"enqueue_jobs", "claim_jobs", "start_job", "purge_jobs", "list_jobs"}:
            raise AttributeError(name)
        return getattr(self._inner, name)


class _ListsInAnotherOrder(_Wrapped):
    """Gives back what a RETURNING clause returns in reverse: an order no dialect promises."""

    async def renew_leases(self, *args: Any) -> list[tuple[str, bool]]:
        return list(reversed(await self._inner.renew_leases(*args)))  # type: ignore[attr-defined]

    async def reclaim_expired(self, *args: Any) -> list[Any]:
        return list(reversed(await self._inner.reclaim_expired(*args)))  # type: ignore[attr-defined]

    async def claim_alarms(self, *args: Any, **kwargs: Any) -> list[Any]:
        return list(reversed(await self._inner.claim_alarms(*args, **kwargs)))  # type: ignore[attr-defined]


async def test_the_checks_ask_no_order_of_what_returning_gives_back() -> None:
    await check_storage(lambda: _BrokenLayer(_ListsInAnotherOrder))  # type: ignore[arg-type,return-value]


class _KeepsTheFirstLetter(_Wrapped):
    """Writes a check-in's dead letter only if none is stored under its id (``DO NOTHING``)."""

    async def commit(self, checkin: Checkin) -> None:
        letter = checkin.dead_letter
        if letter is not None and await self._inner.get_dead_letter(letter.id) is not None:  # type: ignore[attr-defined]
            checkin = msgspec.structs.replace(checkin, dead_letter=None)
        await self._inner.commit(checkin)  # type: ignore[attr-defined]


async def test_a_storage_that_keeps_the_first_letter_under_an_id_fails() -> None:
    with pytest.raises(AssertionError, match="storage check failed: DeadLetterStorage keeps dead letters"):
        await check_storage(lambda: _BrokenLayer(_KeepsTheFirstLetter))  # type: ignore[arg-type,return-value]
