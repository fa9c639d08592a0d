"""`djobs.postgres(dsn)`: the storage layer for several processes and machines on one PostgreSQL database.

This module is importable without psycopg: the driver is imported when the
layer opens (``pip install "djobs-trio[postgres]"`` brings it).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Final, Literal, final

from .._durations import DurationLike, check_at_least
from .._errors import StorageError, ValidationError, safe_repr
from .._input import MAX_LIMIT, os_text_problem

if TYPE_CHECKING:
    from ._pgstore import PostgresStorage

#: `PostgresStorage`'s own async operations, beyond the storage protocols' (what a `faulty` rule
#: may name besides those): kept here, where psycopg is not imported, and checked against the
#: class by the tests.
POSTGRES_OPERATIONS: Final = frozenset({"watch_enqueues", "aclose"})

#: Which clock judges leases on PostgreSQL (see `postgres`).
LeaseClock = Literal["auto", "database", "engine"]

# An unquoted PostgreSQL identifier: the schema name appears in logs, channels and
# operators' psql sessions, where anything fancier needs quoting at every use.
_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}", re.ASCII)


@final
class PostgresLayer:
    """A storage layer on a PostgreSQL schema. Made by `postgres`."""

    def __init__(
        self, dsn: str, schema: str, pool_size: int, connect_timeout_s: int, lease_clock: LeaseClock = "auto"
    ) -> None:
        self.dsn = dsn
        self.lease_clock: LeaseClock = lease_clock
        self.schema = schema
        self.pool_size = pool_size
        self.connect_timeout_s = connect_timeout_s

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[PostgresStorage]:
        if importlib.util.find_spec("psycopg") is None or importlib.util.find_spec("psycopg_pool") is None:
            raise StorageError(
                'djobs.postgres needs the psycopg driver and psycopg_pool: pip install "djobs-trio[postgres]"'
                ' (or "psycopg[binary]>=3.1" "psycopg-pool>=3.2")'
            )
        from ._pgstore import open_postgres

        storage = await open_postgres(self.dsn, self.schema, self.pool_size, self.connect_timeout_s, self.lease_clock)
        try:
            yield storage
        finally:
            await storage.aclose()

    def open(self) -> AbstractAsyncContextManager[PostgresStorage]:
        """Connect, create or migrate the schema, and open a pool of connections for one engine.

        Raises:
            StorageError: The server is unreachable, refused the credentials,
                the schema holds other tables, or its djobs version is newer
                than this code.
        """
        return self._open()

    def __repr__(self) -> str:
        try:
            from ._pgconn import server_name
        except ImportError:  # no driver: never show the DSN, it may hold a password
            return f"postgres(schema={self.schema!r})"
        return f"postgres({server_name(self.dsn)!r}, schema={self.schema!r})"


def postgres(
    dsn: str,
    *,
    schema: str = "djobs",
    pool_size: int = 5,
    connect_timeout: DurationLike = "10 seconds",
    lease_clock: LeaseClock = "auto",
) -> PostgresLayer:
    """A storage layer on a PostgreSQL database, shared by any number of engine processes.

    The one line that changes when an application outgrows one SQLite file:
    every engine process, on any machine, opens the same DSN and schema. The
    schema is created (or migrated) on first use, under an advisory lock.
    Claims use ``FOR UPDATE SKIP LOCKED``; idle workers ``LISTEN`` for
    enqueues in other processes. Needs ``pip install "djobs-trio[postgres]"``.

    Args:
        dsn: A libpq connection string or URL, e.g.
            ``"postgresql://app:secret@db:5432/app"``; libpq's environment
            variables (``PGPASSWORD``, ...) and ``~/.pgpass`` apply.
        schema: The schema that holds djobs's tables (created if missing). It
            must hold nothing else; a separate schema per application or per
            test keeps their rows apart. Lower-case letters, digits and ``_``.
        pool_size: How many connections (and worker threads) one engine uses
            at most, besides the one that listens.
        connect_timeout: How long to wait for the server when connecting
            (unless the DSN sets ``connect_timeout``): at least 1 second, and
            whole seconds, rounded up (libpq's unit, where 0 would mean
            waiting forever).
        lease_clock: Which clock judges job and instance leases.
            ``"database"``: the server's ``clock_timestamp()``, so engines
            whose clocks disagree (by more than a lease, even) still agree on
            whose lease has ended; an engine's clock gives only a lease's
            length. ``"engine"``: the times the engine passes. ``"auto"``
            (the default): ``"database"``, except under
            ``trio.testing.MockClock``, whose virtual time the server's
            clock cannot follow (there every engine of the test shares the
            one virtual clock). Due times and alarms always follow the
            engine's clock.

    Raises:
        ValidationError: A DSN that is not a str or is empty (or only spaces), a bad
            schema name, pool size or timeout.

    Examples:
        >>> postgres("postgresql://app:secret@db.internal/app")
        postgres('app@db.internal:5432/app', schema='djobs')
    """
    if not isinstance(dsn, str):
        raise ValidationError(
            f"postgres(dsn=...): expected a str (a libpq connection string or URL), got {type(dsn).__name__}"
        )
    if not dsn.strip():  # libpq would read an empty one as "every default": a silent guess at the server
        raise ValidationError(
            "postgres(dsn=...): expected a libpq connection string or URL such as"
            f" 'postgresql://app:secret@db:5432/app', got {dsn!r}"
        )
    problem = os_text_problem(dsn)
    if problem is not None:  # the DSN is not shown: it may hold a password
        raise ValidationError(f"postgres(dsn=...): {problem}")
    if not isinstance(schema, str) or not _SCHEMA_RE.fullmatch(schema) or schema.startswith("pg_"):
        raise ValidationError(
            f"postgres(schema={safe_repr(schema):.80}): expected a lower-case identifier"
            " (letters, digits, _), not starting with pg_"
        )
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or not 1 <= pool_size <= MAX_LIMIT:
        raise ValidationError(f"postgres(pool_size={safe_repr(pool_size):.40}): expected an int from 1 to {MAX_LIMIT}")
    timeout_s = -(-check_at_least(connect_timeout, "postgres(connect_timeout=...)", 1000, "1 second") // 1000)
    if type(lease_clock) is not str or lease_clock not in ("auto", "database", "engine"):
        raise ValidationError(
            f"postgres(lease_clock={safe_repr(lease_clock)}): expected 'auto', 'database' or 'engine'"
        )
    return PostgresLayer(dsn, schema, pool_size, timeout_s, lease_clock)
