"""The SQLite storage layer: opening files safely and migrations.

What every storage guarantees (check-ins, alarms, leases, the queue) is tested
once for all of them in ``tests/conformance/``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path

import apsw
import msgspec
import pytest
import trio

import djobs
from djobs.storage import SCHEMA_VERSION, SqliteStorage
from djobs.testing import open_test_engine


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.trio
async def test_a_new_file_gets_the_schema_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    async with djobs.sqlite(path).open() as storage:
        assert isinstance(storage, SqliteStorage)
        db = storage.connection
        assert next(iter(db.execute("PRAGMA journal_mode")))[0] == "wal"
        assert next(iter(db.execute("PRAGMA synchronous")))[0] == 1  # NORMAL
        assert next(iter(db.execute("PRAGMA user_version")))[0] == SCHEMA_VERSION
        assert await storage.healthcheck()
    # Reopening an up-to-date file changes nothing.
    async with djobs.sqlite(path).open() as storage:
        assert await storage.load("nothing") is None


@pytest.mark.trio
async def test_full_synchronous_is_an_option(tmp_path: Path) -> None:
    async with djobs.sqlite(tmp_path / "f.db", synchronous="FULL").open() as storage:
        assert isinstance(storage, SqliteStorage)
        assert next(iter(storage.connection.execute("PRAGMA synchronous")))[0] == 2


@pytest.mark.trio
async def test_a_file_that_is_not_a_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database " * 200)
    before = digest(path)
    with pytest.raises(djobs.StorageError, match="not a database"):
        async with djobs.sqlite(path).open():
            pass  # pragma: no cover
    assert digest(path) == before


@pytest.mark.trio
async def test_another_programs_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    other = apsw.Connection(str(path))
    other.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    other.execute("INSERT INTO customers (name) VALUES ('Ada')")
    other.close()
    before = digest(path)
    with pytest.raises(djobs.StorageError, match="not a djobs database"):
        async with djobs.sqlite(path).open():
            pass  # pragma: no cover
    assert digest(path) == before


@pytest.mark.trio
async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    async with djobs.sqlite(path).open():
        pass
    db = apsw.Connection(str(path))
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(djobs.StorageError, match="newer than this djobs understands"):
        async with djobs.sqlite(path).open():
            pass  # pragma: no cover


@pytest.mark.trio
async def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(djobs.StorageError, match="directory"):
        async with djobs.sqlite(tmp_path).open():
            pass  # pragma: no cover


@pytest.mark.trio
async def test_a_path_that_is_not_a_regular_file_is_refused_at_open_saying_so(tmp_path: Path) -> None:
    # /dev/null opened, and failed only at the first read with "a disk I/O error occurred"; a FIFO
    # is the same class (and may block). The engine's open and the CLI's/dashboard's both refuse it.
    from djobs.storage._inspect import open_existing

    fifo = tmp_path / "pipe.db"
    os.mkfifo(fifo)
    for path, kind in (("/dev/null", "a character device"), (str(fifo), "a FIFO")):
        with pytest.raises(djobs.StorageError, match=f"cannot open '{path}': it is {kind}, not a regular file"):
            async with djobs.sqlite(path).open():
                pass  # pragma: no cover
        with pytest.raises(djobs.StorageError, match=f"it is {kind}, not a regular file"):
            async with open_existing(path):
                pass  # pragma: no cover
    # A symlink to a regular file is a regular file.
    (tmp_path / "link.db").symlink_to(tmp_path / "real.db")
    async with djobs.sqlite(tmp_path / "link.db").open():
        pass
    assert (tmp_path / "real.db").is_file()


@pytest.mark.trio
async def test_open_engine_reports_a_bad_file_as_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.db"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(djobs.StorageError):
        async with djobs.open_engine([], storage=djobs.sqlite(path)):
            pass  # pragma: no cover


class S(msgspec.Struct):
    n: int = 0


@pytest.mark.trio
async def test_per_job_logging_levels(autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="djobs")

    def body(ctx: djobs.ContinuousContext[S]) -> None:
        ctx.log.debug("debug line")
        ctx.log.info("info line")
        ctx.log.error("error line")

    jobs = [
        djobs.Continuous.make("chatty", state=S, schedule=djobs.every("1 hour"), execute=body, logging=True),
        djobs.Continuous.make("quiet", state=S, schedule=djobs.every("1 hour"), execute=body),
        djobs.Continuous.make("mute", state=S, schedule=djobs.every("1 hour"), execute=body, logging=None),
        djobs.Continuous.make("info", state=S, schedule=djobs.every("1 hour"), execute=body, logging=logging.INFO),
    ]
    async with open_test_engine(jobs) as engine:
        for job in jobs:
            await engine.client.continuous(job).start(id="i-1", input=S())
        await engine.wait_idle()

    def lines(name: str) -> list[str]:
        return [r.getMessage().split("] ", 1)[1] for r in caplog.records if r.name == f"djobs.continuous.{name}"]

    assert lines("chatty")[:3] == ["debug line", "info line", "error line"]
    assert lines("chatty")[3].startswith("executed in")
    assert lines("quiet") == ["error line"]
    assert lines("mute") == []
    assert lines("info") == ["info line", "error line"]
    chatty = next(r for r in caplog.records if r.name == "djobs.continuous.chatty")
    assert "instance=i-1" in chatty.getMessage() and "run=1" in chatty.getMessage()
    assert "attempt=1" in chatty.getMessage()


@pytest.mark.trio
async def test_a_read_is_not_starved_by_writers_that_never_pause(tmp_path: Path) -> None:
    # A read waits for the open group commit to end (it would see its uncommitted
    # writes); writers always ready must not open batch after batch before it runs.
    from djobs.storage import Checkin, InstanceRecord

    async with djobs.sqlite(tmp_path / "busy.db").open() as storage:
        writes = 0
        reads_done = False

        async def writer(n: int) -> None:
            nonlocal writes
            record = InstanceRecord(key=f"k{n}", kind="task", name="w", instance_id=f"k{n}", status="idle")
            while not reads_done and writes < 20_000:
                await storage.commit(Checkin(key=record.key, record=record))
                writes += 1

        async def reader() -> None:
            nonlocal reads_done
            for _ in range(50):
                assert await storage.load("k0") is not None or writes == 0
            reads_done = True

        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(writer, n)
            while writes < 100:  # the writers are at it
                await trio.lowlevel.checkpoint()
            started_at = writes
            nursery.start_soon(reader)
        # Each read waited for about one batch of the 20 writers, not for all of them to stop.
        assert reads_done and writes - started_at < 50 * 20 * 3


@pytest.mark.trio
async def test_an_alarm_claim_commits_before_the_ready_tasks_run(tmp_path: Path) -> None:
    # The alarm sleeper's claim commits in the task step that makes it: the handlers of the
    # alarms it claims wait for that commit, not for every ready task's turn first (the
    # sleeper checkpoints right after). Other writes checkpoint before they commit, but
    # whether a ready task then runs first is Trio's choice (it shuffles each batch of ready
    # tasks), so nothing here counts on it.
    async with djobs.sqlite(tmp_path / "claims.db").open() as storage:
        assert isinstance(storage, SqliteStorage)
        ran: list[str] = []

        async def ready() -> None:
            ran.append("ready")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ready)
            assert await storage.claim_alarms(0, 1000, 10) == []
            assert await storage.claim_alarm_runs(0, 1000, 10, ["task:t:"], "me", 1000, lambda _: True) == []
            assert ran == [] and not storage.connection.in_transaction


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_the_per_minute_counts_read_finished_jobs_through_their_index(dialect: str, tmp_path: Path) -> None:
    """The overview's chart reads the last hour of finished jobs by ``completed_at``, never every row."""
    from postgres_support import require_postgres, throwaway_schema

    from djobs.storage._inspect import _PER_MINUTE_SQLITE, _PG_PER_MINUTE

    async def sqlite_plan() -> str:
        async with djobs.sqlite(tmp_path / "plan.db").open() as storage:
            sql = "EXPLAIN QUERY PLAN " + _PER_MINUTE_SQLITE
            return " ".join(str(r) for r in storage.connection.execute(sql, (0, 1)))

    async def postgres_plan(dsn: str, schema: str) -> str:
        import psycopg

        async with djobs.postgres(dsn, schema=schema).open():
            pass  # migrated
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{schema}"')
            conn.execute("SET enable_seqscan = off")  # an empty table: ask whether the index fits at all
            rows = conn.execute(b"EXPLAIN " + _PG_PER_MINUTE, (0, 1)).fetchall()
            return " ".join(r[0] for r in rows)

    if dialect == "sqlite":
        plan = trio.run(sqlite_plan)
    else:
        dsn = require_postgres()
        with throwaway_schema(dsn) as schema:
            plan = trio.run(postgres_plan, dsn, schema)
    assert "jobs_finished" in plan, plan


@pytest.mark.trio
@pytest.mark.parametrize("keyed", [False, True])
async def test_a_failing_enqueue_in_a_group_commit_takes_nothing_of_the_others_with_it(
    tmp_path: Path, keyed: bool
) -> None:
    # One enqueue is one INSERT, written without a savepoint of its own (SQLite undoes a
    # failing statement by itself); with an idempotency key it is two, in a savepoint.
    # Either way, a writer that fails in a shared transaction leaves the others' rows.
    from djobs.storage import NewJob

    def row(job_id: str) -> NewJob:
        key = f"key-{job_id}-{trio.current_time()}" if keyed else None
        return NewJob(
            id=job_id, name="j", params=b"{}", max_attempts=1, scheduled_for=0, created_at=0, idempotency_key=key
        )

    async with djobs.sqlite(tmp_path / "q.db").open() as storage:
        assert isinstance(storage, SqliteStorage)
        await storage.enqueue_jobs([row("taken")])
        outcomes: dict[str, object] = {}

        async def enqueue(job_id: str) -> None:
            try:
                outcomes[job_id] = await storage.enqueue_jobs([row(job_id)])
            except djobs.StorageError as exc:
                outcomes[job_id] = exc

        async with trio.open_nursery() as nursery:
            for job_id in ("a", "taken", "b"):  # "taken" breaks the primary key
                nursery.start_soon(enqueue, job_id)
        assert outcomes["a"] == [("a", True)] and outcomes["b"] == [("b", True)]
        assert isinstance(outcomes["taken"], djobs.StorageError)
        ids = sorted(r[0] for r in storage.connection.execute("SELECT id FROM jobs"))
        assert ids == ["a", "b", "taken"]
        if keyed:  # the failed writer's key went with its row
            keys = [r[0] for r in storage.connection.execute("SELECT job_id FROM job_keys ORDER BY job_id")]
            assert keys == ["a", "b", "taken"]


@pytest.mark.trio
@pytest.mark.parametrize("step", ["create", "end"])
async def test_a_write_that_fails_partway_takes_its_whole_group_commit_back(tmp_path: Path, step: str) -> None:
    # A workflow's start (lease, row, alarm) and end (row, alarm's delete) are written without
    # a savepoint: when a statement after the first fails, what came before it cannot be undone
    # alone, so the shared transaction is rolled back whole and every writer in it is told.
    from djobs.storage import Checkin, InstanceRecord, SetAlarm

    def record(key: str, status: str = "running") -> InstanceRecord:
        return InstanceRecord(key=key, kind="workflow", name="w", instance_id=key, status=status, data=b"{}")

    async with djobs.sqlite(tmp_path / "w.db").open() as storage:
        assert isinstance(storage, SqliteStorage)
        db = storage.connection
        if step == "end":
            for key in ("a", "boom", "b"):
                checkin = Checkin(key=key, record=record(key), alarm=SetAlarm(10, "run"))
                assert await storage.create_instance(checkin, "me", 0, 60_000) is None
            db.execute(
                "CREATE TEMP TRIGGER boom BEFORE DELETE ON alarms WHEN OLD.key = 'boom'"
                " BEGIN SELECT RAISE(ABORT, 'boom'); END"
            )
        else:
            db.execute(
                "CREATE TEMP TRIGGER boom BEFORE INSERT ON alarms WHEN NEW.key = 'boom'"
                " BEGIN SELECT RAISE(ABORT, 'boom'); END"
            )
        outcomes: dict[str, object] = {}

        async def write(key: str) -> None:
            try:
                if step == "create":
                    checkin = Checkin(key=key, record=record(key), alarm=SetAlarm(10, "run"))
                    outcomes[key] = await storage.create_instance(checkin, "me", 0, 60_000)
                else:
                    outcomes[key] = await storage.checkpoint_instance(record(key, "completed"), "me", clear_alarm=True)
            except djobs.StorageError as exc:
                outcomes[key] = exc

        async with trio.open_nursery() as nursery:
            for key in ("a", "boom", "b"):
                nursery.start_soon(write, key)
        assert all(isinstance(outcome, djobs.StorageError) for outcome in outcomes.values()), outcomes
        assert "boom" in str(outcomes["boom"])
        # Nothing of any of them: not the failed one's first statements, not the others'.
        statuses = dict(db.execute("SELECT key, status FROM instances"))
        alarms = {key for (key,) in db.execute("SELECT key FROM alarms")}
        leases = {key for (key,) in db.execute("SELECT key FROM instance_leases")}
        if step == "create":
            assert statuses == {} and alarms == set() and leases == set()
        else:
            assert statuses == dict.fromkeys(("a", "boom", "b"), "running") and alarms == {"a", "boom", "b"}
        # The next transaction is not affected.
        db.execute("DROP TRIGGER boom")
        await write("a")
        assert outcomes["a"] is None


class _SyncsVfs(apsw.VFS):
    """The default VFS, noting which thread syncs (a checkpoint syncs the WAL, then the database) or
    truncates which file (``"truncate <name>"``)."""

    def __init__(self, syncs: list[tuple[int, str]]) -> None:
        self.syncs = syncs
        super().__init__("syncs-seen", "unix", makedefault=True)

    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> apsw.VFSFile:
        return _SyncsFile(self.syncs, name, flags)


class _SyncsFile(apsw.VFSFile):
    def __init__(self, syncs: list[tuple[int, str]], name: str | apsw.URIFilename | None, flags: list[int]) -> None:
        self.syncs = syncs
        filename = name.filename() if isinstance(name, apsw.URIFilename) else name
        self.name = str(filename)
        super().__init__("unix", name, flags)

    def xSync(self, flags: int) -> None:
        self.syncs.append((threading.get_ident(), self.name))
        super().xSync(flags)

    def xTruncate(self, newsize: int) -> None:
        self.syncs.append((threading.get_ident(), f"truncate {self.name}"))
        super().xTruncate(newsize)


@pytest.mark.trio
async def test_the_wal_is_checkpointed_off_the_engines_thread(tmp_path: Path) -> None:
    # A checkpoint syncs the WAL and the database file: in the committing thread, each one
    # held the event loop (and every timer due meanwhile) for milliseconds. Commits go on
    # in the engine's thread without a sync (synchronous=NORMAL), and their data is all there.
    from djobs.storage import Checkin, InstanceRecord

    syncs: list[tuple[int, str]] = []
    vfs = _SyncsVfs(syncs)
    try:
        path = tmp_path / "busy.db"
        async with djobs.sqlite(path).open() as storage:
            syncs.clear()  # the opening's own (a migration syncs)
            # About 1,530 pages of WAL (9 a commit): past the mark (1,024), short of the 2,048
            # past which the writer checkpoints itself (its WAL bounded should the thread fall
            # behind) even if the thread never gets to run on a busy machine.
            for n in range(170):
                state = bytes([n % 256]) * 20_000
                record = InstanceRecord(
                    key=f"k{n}", kind="task", name="w", instance_id=f"k{n}", status="idle", state=state
                )
                await storage.commit(Checkin(key=record.key, record=record))

            def copy_back() -> None:  # all of the WAL, as the thread does when no commit comes meanwhile
                other = apsw.Connection(str(path))
                try:
                    while True:
                        try:
                            frames, copied = other.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
                        except apsw.BusyError:  # the storage's thread checkpoints now
                            frames, copied = 1, 0
                        if frames == copied:
                            return
                        time.sleep(0.001)
                finally:
                    other.close()

            await trio.to_thread.run_sync(copy_back)
            # Starts the WAL over (all of it is in the database file now): SQLite writes a new header.
            await storage.commit(
                Checkin(key="last", record=msgspec.structs.replace(record, key="last", instance_id="last"))
            )
            here = [name for thread, name in syncs if thread == threading.get_ident()]
            # No checkpoint ran here: a checkpoint syncs the database file. What the engine's
            # thread may sync is the WAL's header, once each time a commit starts the WAL over
            # after the thread's checkpoint copied all of it back (SQLite syncs a new header).
            assert not [name for name in here if not name.endswith("-wal")], here
            # Nor is the WAL cut back when it starts over (an ftruncate, then its blocks allocated
            # again): ordinary commits keep it below the size a start-over cuts it to.
            assert not [name for name in here if name.startswith("truncate")], here
            assert len(here) <= 2, here  # one a start-over at most: 1,530 pages are one mark
        async with djobs.sqlite(path).open() as storage:
            for n in range(170):
                loaded = await storage.load(f"k{n}")
                assert loaded is not None and loaded[0].state == bytes([n % 256]) * 20_000
    finally:
        vfs.unregister()
