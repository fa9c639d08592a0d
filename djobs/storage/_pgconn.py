"""Connections to PostgreSQL for Trio: a `psycopg_pool` pool of synchronous
psycopg 3 connections used from worker threads, the errors they raise as
`StorageError`, and the one connection that LISTENs.

Why threads (the design page argues it at length): no PostgreSQL driver runs on
Trio, and psycopg's non-blocking API is either asyncio's (`AsyncConnection`) or
private generators. A blocking connection on a worker thread is psycopg's most
used, best tested path; the hop costs about 100 µs, small beside a round trip
and a commit's fsync. Each call takes a slot of a `trio.CapacityLimiter` and an
idle connection, runs one whole transaction in a thread, and gives the
connection back, so one connection is never used by two threads at once and the
event loop never waits for the database.

The listening connection is different: it never sends a query after ``LISTEN``,
so it is read without a thread, from Trio's own readiness wait on its socket
(``wait_readable`` then libpq's ``consume_input``/``notifies``, neither of
which blocks).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import urllib.parse
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

import outcome
import psycopg
import psycopg.errors
import psycopg_pool
import trio
from psycopg import conninfo, sql

from .._clock import current_mock_clock
from .._errors import CLOSED_MESSAGE, StorageError
from .._printable import printable

if TYPE_CHECKING:
    import trio.testing

T = TypeVar("T")
Connection = psycopg.Connection[tuple[Any, ...]]

_log = logging.getLogger("djobs.storage")

#: SQLSTATEs that mean "the whole transaction was rolled back; running it again may succeed".
_TRANSIENT: Final = frozenset({"40001", "40P01"})  # serialization failure, deadlock detected
_ATTEMPTS: Final = 3


# -- where, and what went wrong ---------------------------------------------------------


def server_name(dsn: str) -> str:
    """The server a DSN points at, for messages: ``user@host:port/dbname``, never the password.

    Examples:
        >>> server_name("postgresql://app:secret@db.internal:6432/jobs")
        'app@db.internal:6432/jobs'
    """
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "an unparsable DSN"
    host = str(params.get("host") or "localhost")
    port = str(params.get("port") or "5432")
    user = params.get("user")
    where = f"{host}:{port}"
    if params.get("dbname"):
        where += f"/{params['dbname']}"
    return f"{user}@{where}" if user else where


_URL_PASSWORD = re.compile(r"(://[^:/@\s\"']*:)[^@\s\"']*@")
_KEY_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'\"]+)", re.IGNORECASE)


def _passwords(dsn: str) -> list[str]:
    """The password(s) written in `dsn` (URL or key=value form), parsable or not, as written and decoded."""
    found = [m.group(0)[len(m.group(1)) : -1] for m in _URL_PASSWORD.finditer(dsn)]
    found += [m.group(2).strip("'") for m in _KEY_PASSWORD.finditer(dsn)]
    found += [urllib.parse.unquote(p) for p in found]
    return [p for p in found if p]


def redact(text: str, dsn: str | None = None) -> str:
    """`text` with every password it may hold replaced by ``***``: those in URLs and
    ``password=`` pairs, and (given the `dsn`) the DSN's own password wherever it appears.

    libpq quotes a DSN it cannot parse, so any message that may hold one goes through here.

    Examples:
        >>> redact('invalid URI: "postgresql://app:s3cret@db/x"')
        'invalid URI: "postgresql://app:***@db/x"'
        >>> redact("bad value 's3cret'", "host=db password=s3cret")
        "bad value '***'"
    """
    if dsn:
        for secret in sorted(_passwords(dsn), key=len, reverse=True):
            text = text.replace(secret, "***")
    text = _URL_PASSWORD.sub(r"\1***@", text)
    return _KEY_PASSWORD.sub(r"\1***", text)


def connect_error(exc: psycopg.Error, where: str) -> StorageError:
    """A `StorageError` a person can act on, from a failed connection attempt (passwords redacted)."""
    text = redact(str(exc).strip())
    # libpq says where, then why ("connection to server at ..., port 1 failed: Connection refused");
    # the where is in our message already, and its hints ("Is the server running ...") in our advice.
    if "FATAL:" in text:
        detail = text.rsplit("FATAL:", 1)[-1].strip().splitlines()[0]
    else:
        first = text.splitlines()[0] if text else type(exc).__name__
        detail = first.rsplit(" failed: ", 1)[-1]
    detail = " ".join(detail.split())
    lowered = text.lower()
    if isinstance(exc, psycopg.ProgrammingError) and not isinstance(exc, psycopg.errors.InsufficientPrivilege):
        message = f"the PostgreSQL DSN is not valid ({detail}); expected e.g. postgresql://user:password@host:5432/db"
    elif (
        "password authentication failed" in lowered
        or "no password supplied" in lowered
        or ("role" in lowered and "does not exist" in lowered)
        or "pg_hba.conf" in lowered
    ):
        message = (
            f"PostgreSQL at {where} refused the credentials ({detail}); "
            "check the user and password in the DSN (or PGPASSWORD, ~/.pgpass)"
        )
    elif "database" in lowered and "does not exist" in lowered:
        message = f"cannot open {where}: {detail}; create it (createdb) or fix the database name in the DSN"
    elif (
        "connection refused" in lowered
        or "timeout expired" in lowered
        or "could not translate host name" in lowered
        or "failed to resolve host" in lowered
        or "no route to host" in lowered
        or "network is unreachable" in lowered
        or "no such file or directory" in lowered
    ):
        message = (
            f"cannot reach the PostgreSQL server at {where} ({detail}); "
            "is it running, and are the host and port in the DSN right?"
        )
    else:
        message = f"cannot connect to PostgreSQL at {where}: {detail}"
    return StorageError(message, exc)


def query_error(exc: psycopg.Error, where: str, what: str) -> StorageError:
    """A `StorageError` for a statement that failed on an open connection."""
    detail = redact(" ".join(str(exc).split())) or type(exc).__name__
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return StorageError(f"{what} on {where} was refused: {detail}; grant the DSN's user the privilege", exc)
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        # The connection broke: whether a COMMIT in flight was applied is unknown.
        return StorageError(f"{what} on {where} failed: the connection to the server was lost ({detail})", exc)
    return StorageError(f"{what} on {where} failed: {detail}", exc)


# -- virtual time ---------------------------------------------------------------------

# MockClocks whose autojump is held off while queries run: clock -> [queries in flight, saved threshold].
_held: weakref.WeakKeyDictionary[trio.testing.MockClock, list[float]] = weakref.WeakKeyDictionary()


@contextmanager
def database_time() -> Iterator[None]:
    """Under an autojumping `trio.testing.MockClock`, keep virtual time still while a query runs.

    A test engine waits for a worker thread exactly as for any I/O, so the
    autojump would skip to the next timer while the database works, and a
    one-millisecond commit could cost minutes of virtual time. With SQLite on
    the Trio thread a transaction takes no virtual time; this keeps that true
    here. On any other clock it does nothing.
    """
    clock = current_mock_clock()
    if clock is None:
        yield
        return
    entry = _held.get(clock)
    if entry is None:
        entry = _held[clock] = [0, clock.autojump_threshold]
        clock.autojump_threshold = math.inf
    entry[0] += 1
    try:
        yield
    finally:
        entry[0] -= 1
        if entry[0] == 0:
            del _held[clock]
            clock.autojump_threshold = entry[1]


# -- the pool --------------------------------------------------------------------------


class Pool:
    """At most `size` connections (a `psycopg_pool.ConnectionPool`); each call borrows one
    for one transaction on a worker thread.

    psycopg_pool keeps the connections: it opens them (one at first, more on
    demand, up to `size`), drops one returned broken (server restart,
    network) and opens a replacement in the background, and closes idle ones
    after ten minutes. What this class adds is Trio's side: a
    `trio.CapacityLimiter` of `size`, so a worker thread never queues inside
    the pool; retries of transactions the server rolled back for a deadlock
    or a serialization failure; driver errors as `StorageError`; and
    `database_time` under a test clock.

    Args:
        conninfo: The libpq DSN (known to parse: the first connection was made with it).
        kwargs: Connection options (``autocommit=True`` and timeouts).
        configure: Called once on each new connection (``search_path``, read-only mode).
        size: The most connections open at once.
        where: The server, for messages (never the password).
        timeout_s: How long a call waits for a connection before it fails.
    """

    def __init__(
        self,
        conninfo: str,
        kwargs: dict[str, Any],
        configure: Callable[[Connection], None],
        size: int,
        where: str,
        timeout_s: float,
    ) -> None:
        self._conninfo = conninfo
        self._kwargs = kwargs
        self._limiter = trio.CapacityLimiter(size)
        self._closed = False
        self._timeout_s = timeout_s
        self.where = where
        self._pool: psycopg_pool.ConnectionPool[Connection] = psycopg_pool.ConnectionPool(
            conninfo,
            connection_class=_RedactingConnection,
            kwargs=kwargs,
            min_size=1,
            max_size=size,
            open=False,
            configure=configure,
            name=f"djobs {where}",
            timeout=timeout_s,
            num_workers=1,
        )

    def open(self) -> None:
        """Start the pool's background worker; connections are opened as calls need them."""
        self._pool.open(wait=False)

    def _call(self, fn: Callable[[Connection], T]) -> outcome.Outcome[T]:
        # Runs on a worker thread: the connection is this thread's alone until it is returned.
        try:
            with self._pool.connection() as conn:
                return outcome.capture(fn, conn)
        except psycopg_pool.PoolClosed:
            return outcome.Error(StorageError(CLOSED_MESSAGE))
        except psycopg_pool.PoolTimeout as exc:
            return outcome.Error(self._unreachable(exc))

    def _unreachable(self, exc: psycopg_pool.PoolTimeout) -> StorageError:
        """Why no connection came in time: one direct attempt says what libpq says."""
        try:
            psycopg.connect(self._conninfo, **self._kwargs).close()
        except psycopg.Error as cause:
            return connect_error(redacted(cause, self._conninfo), self.where)
        return StorageError(f"no connection to PostgreSQL at {self.where} came free within {self._timeout_s:g} s", exc)

    async def run(self, fn: Callable[[Connection], T], what: str) -> T:
        """Run `fn` with a connection of its own on a worker thread; driver errors become `StorageError`.

        `fn` is one transaction. One rolled back for a deadlock or a
        serialization failure runs again (up to three times in all).
        """
        if self._closed:
            raise StorageError(CLOSED_MESSAGE)
        async with self._limiter:
            for attempt in range(1, _ATTEMPTS + 1):
                with database_time():
                    # Not abandoned on cancel: the thread finishes its transaction and
                    # returns the connection before anyone else can take it.
                    result = await trio.to_thread.run_sync(self._call, fn)
                if isinstance(result, outcome.Error):
                    error = result.error
                    if isinstance(error, psycopg.Error):
                        if error.sqlstate in _TRANSIENT and attempt < _ATTEMPTS:
                            continue
                        raise query_error(error, self.where, what) from error
                return result.unwrap()
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """Refuse new calls and close the pool; connections in use close when their call returns."""
        self._closed = True
        with trio.CancelScope(shield=True):
            # Off the event loop: psycopg_pool joins its worker thread, which may be connecting.
            await trio.to_thread.run_sync(self._pool.close)


class _RedactingConnection(psycopg.Connection[tuple[Any, ...]]):
    """A psycopg connection whose connection errors never quote the DSN's password."""

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        try:
            return super().connect(conninfo, **kwargs)
        except psycopg.Error as exc:
            raise redacted(exc, conninfo) from None


def redacted(exc: psycopg.Error, dsn: str) -> psycopg.Error:
    """`exc` again, of the same class, with the DSN's password taken out of its message."""
    text = str(exc)
    clean = redact(text, dsn)
    if clean == text:
        return exc
    try:
        return type(exc)(clean)
    except Exception:  # a driver class that takes other arguments
        return psycopg.OperationalError(clean)


def connect(conninfo: str, kwargs: dict[str, Any], configure: Callable[[Connection], None]) -> Connection:
    """One connection outside the pool (the first, which migrates, and the one that LISTENs)."""
    conn = _RedactingConnection.connect(conninfo, **kwargs)
    try:
        configure(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def configure(conn: Connection, schema: str) -> None:
    """Point a fresh connection at djobs's schema: every statement names tables unqualified."""
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))


# -- LISTEN ----------------------------------------------------------------------------


async def listen(
    connect: Callable[[], Connection],
    channel: str,
    own: str,
    wake: Callable[[int], None],
    where: str,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """LISTEN on `channel` forever, calling ``wake(due)`` for each notification not sent by
    this storage (payload ``"<due ms> <sender token>"``; ours end in `own`); reconnects
    (with backoff) when the connection breaks.

    After every (re)connection `wake(0)` is called once: notifications sent
    while no one listened are lost, so the worker looks for work at once.
    """
    delay = 0.1
    started = False
    while True:
        try:
            with database_time():
                conn = await trio.to_thread.run_sync(_connect_listening, connect, channel)
        except psycopg.Error as exc:
            error = connect_error(exc, where)
            _log.warning(
                "cannot LISTEN for enqueued jobs (%s); trying again in %.1f s", printable(error.message), delay
            )
            if not started:
                started = True
                task_status.started()
            await trio.sleep(delay)
            delay = min(delay * 2, 30.0)
            continue
        delay = 0.1
        try:
            if not started:
                started = True
                task_status.started()
            wake(0)
            await _receive(conn, own, wake)
        except psycopg.Error as exc:
            _log.warning("lost the LISTEN connection to %s (%s); reconnecting", where, " ".join(str(exc).split()))
        finally:
            fd = conn.pgconn.socket if not conn.closed else -1
            if fd >= 0:
                trio.lowlevel.notify_closing(fd)
            with contextlib.suppress(Exception):
                conn.close()


def _connect_listening(connect: Callable[[], Connection], channel: str) -> Connection:
    conn = connect()
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    return conn


async def _receive(conn: Connection, own: str, wake: Callable[[int], None]) -> None:
    pgconn = conn.pgconn
    fd = pgconn.socket
    while True:
        await trio.lowlevel.wait_readable(fd)
        # Reads only what the socket already holds: never blocks the event loop.
        pgconn.consume_input()
        if pgconn.status != psycopg.pq.ConnStatus.OK:
            raise psycopg.OperationalError("the server closed the connection")
        while (note := pgconn.notifies()) is not None:
            due, _, sender = note.extra.decode(errors="replace").partition(" ")
            if sender == own:
                continue  # this storage's own enqueue: its worker was poked already
            try:
                at = int(due)
            except ValueError:
                at = 0
            wake(at)
