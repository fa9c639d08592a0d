"""Database files djobs must not use: a clear `StorageError` at open, and the file left as it was.

``tests/test_storage.py`` covers a text file, another program's database, a
newer schema's message and a directory. Here: more files that are not
databases, a newer schema left untouched, a read-only file (by permissions, as
an immutable file, on a read-only file system), a file another program keeps
locked, and several processes creating one new file at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import apsw
import msgspec
import pytest
import trio

import djobs
import djobs.storage._sqlite as sqlite_module
from djobs.cli import ExitCode, main
from djobs.storage import SCHEMA_VERSION, Checkin, InstanceRecord
from djobs.storage._inspect import open_existing
from djobs.testing import success


def fingerprint(path: Path) -> tuple[str, list[str]]:
    """The file's bytes (hashed) and the names of the files beside it."""
    return hashlib.sha256(path.read_bytes()).hexdigest(), sorted(os.listdir(path.parent))


async def make_djobs_file(path: Path) -> None:
    async with djobs.sqlite(path).open() as storage:
        for i in range(50):
            key = f"continuous:j:{i}"
            record = InstanceRecord(
                key=key, kind="continuous", name="j", instance_id=str(i), status="running", state=b'{"n":1}' * 50
            )
            await storage.commit(Checkin(key=key, record=record))


async def djobs_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "source" / "jobs.db"
    path.parent.mkdir()
    await make_djobs_file(path)
    data = path.read_bytes()
    shutil.rmtree(path.parent)
    return data


async def refused(path: Path, match: str, **options: object) -> djobs.StorageError:
    """Open `path` with the storage layer and with an engine: both must raise a `StorageError` matching `match`."""
    with pytest.raises(djobs.StorageError, match=match) as raised:
        async with djobs.sqlite(path, **options).open():  # type: ignore[arg-type]
            pass  # pragma: no cover
    # An engine reports it as itself, not wrapped in an ExceptionGroup.
    with pytest.raises(djobs.StorageError, match=match):
        async with djobs.open_engine([], storage=djobs.sqlite(path, **options)):  # type: ignore[arg-type]
            pass  # pragma: no cover
    return raised.value


# -- files that are not djobs databases -------------------------------------------------

NOT_DATABASES = {
    "random bytes": lambda _db: os.urandom(8192),
    "a SQLite header, then garbage": lambda _db: b"SQLite format 3\x00" + os.urandom(4080),
    "a djobs database cut in half": lambda db: db[: len(db) // 2],
    "only a djobs database's header": lambda db: db[:100],
    "a djobs database with garbage in its first page": lambda db: db[:100] + b"\xff" * 3996 + db[4096:],
}


@pytest.mark.trio
@pytest.mark.parametrize("what", list(NOT_DATABASES))
async def test_a_file_that_is_no_database_is_refused_and_left_untouched(tmp_path: Path, what: str) -> None:
    path = tmp_path / "jobs.db"
    path.write_bytes(NOT_DATABASES[what](await djobs_bytes(tmp_path)))
    before = fingerprint(path)
    error = await refused(path, "not a database|malformed")
    assert str(path) in error.message  # which file, for the person reading the log
    assert fingerprint(path) == before


@pytest.mark.trio
async def test_a_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    await make_djobs_file(path)
    db = apsw.Connection(str(path))
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    before = fingerprint(path)
    await refused(path, f"schema version {SCHEMA_VERSION + 1}, newer than this djobs understands")
    assert fingerprint(path) == before


# -- read-only files --------------------------------------------------------------------


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[str]:
    """Make `path` read-only for this process; yields how.

    Permission bits do not stop root, so as root the file is made immutable
    (``chattr +i``), which stops root too, where the file system allows it.
    """
    if os.geteuid() != 0:
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        try:
            yield "chmod 0444"
        finally:
            path.chmod(stat.S_IRUSR | stat.S_IWUSR)
        return
    chattr = shutil.which("chattr")
    made = chattr is not None and subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode == 0
    if not made:
        pytest.skip(
            "running as root, where chmod does not stop writes, and chattr +i is not available here; "
            "test_a_read_only_file_system_is_refused covers read-only files"
        )
    try:
        yield "chattr +i"
    finally:
        subprocess.run([str(chattr), "-i", str(path)], check=True)


@pytest.mark.trio
async def test_a_read_only_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    await make_djobs_file(path)
    before = fingerprint(path)
    with read_only(path):
        with pytest.raises(OSError):
            path.open("r+b")  # truly read-only for this process, root or not
        await refused(path, "read-only")
        # Refused before a read could leave -wal and -shm files beside it.
        assert fingerprint(path) == before


class ReadOnlyFileSystem(apsw.VFS):
    """The default VFS, except that one file opens read-only, as on a read-only mount."""

    def __init__(self, path: Path) -> None:
        self.path = os.path.realpath(path)
        super().__init__("djobs-test-readonly", "unix", makedefault=True)

    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> apsw.VFSFile:
        filename = name.filename() if isinstance(name, apsw.URIFilename) else name
        if filename and os.path.realpath(filename) == self.path:
            # What SQLite's own VFS does when opening for writing fails: fall back to reading.
            flags[0] = (flags[0] & ~(apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)) | apsw.SQLITE_OPEN_READONLY
        return apsw.VFSFile("unix", name, flags)


@pytest.mark.trio
async def test_a_read_only_file_system_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    await make_djobs_file(path)
    before = fingerprint(path)
    default = apsw.vfs_names()[0]
    vfs = ReadOnlyFileSystem(path)
    try:
        await refused(path, "read-only")
    finally:
        vfs.unregister()
        apsw.set_default_vfs(default)  # unregistering the default picks an arbitrary one
    assert fingerprint(path) == before


# -- a file another program keeps locked ---------------------------------------------------


@pytest.mark.trio
@pytest.mark.parametrize("how", ["BEGIN EXCLUSIVE", "exclusive locking mode", "BEGIN EXCLUSIVE, rollback journal"])
async def test_a_file_another_program_keeps_locked_is_refused(tmp_path: Path, how: str) -> None:
    path = tmp_path / "jobs.db"
    await make_djobs_file(path)
    other = apsw.Connection(str(path))
    if how == "exclusive locking mode":
        other.execute("PRAGMA locking_mode=EXCLUSIVE")
    elif how.endswith("rollback journal"):
        other.execute("PRAGMA journal_mode=DELETE")
    other.execute("BEGIN EXCLUSIVE")
    other.execute("INSERT INTO instance_leases (key, owner, expires_at) VALUES ('other', 'program', 1)")
    before = fingerprint(path)
    error = await refused(path, "locked by another connection", busy_timeout=100)
    assert isinstance(error.cause, apsw.BusyError)
    assert fingerprint(path) == before
    # The other program's transaction was not disturbed: it commits, and djobs opens once it is done.
    other.execute("COMMIT")
    other.close()
    async with djobs.sqlite(path).open() as storage:
        assert isinstance(storage, djobs.storage.SqliteStorage)
        rows = list(storage.connection.execute("SELECT owner FROM instance_leases WHERE key = 'other'"))
        assert rows == [("program",)]


@pytest.mark.trio
async def test_a_short_write_by_another_process_only_delays_the_open(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    await make_djobs_file(path)
    other = apsw.Connection(str(path))
    other.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.2, lambda: other.execute("COMMIT"))  # another engine's transaction, ending soon
    timer.start()
    try:
        async with djobs.sqlite(path, busy_timeout=5000).open() as storage:
            assert await storage.healthcheck()
    finally:
        timer.join()
        other.close()


# -- several processes creating one new file ------------------------------------------------


def test_a_file_being_created_by_another_process_is_not_taken_for_a_foreign_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Opening reads the application id, the schema version and the tables. Another
    # process creating the schema between those reads made a new djobs file look like
    # another program's database. Let one do exactly that, between the first two reads.
    path = tmp_path / "new.db"
    real_scalar = sqlite_module._scalar
    interloper_errors: list[BaseException] = []
    interloper: threading.Thread | None = None

    def create_schema() -> None:
        async def open_and_close() -> None:
            async with djobs.sqlite(path).open():
                pass

        try:
            trio.run(open_and_close)
        except BaseException as exc:  # reported by the test below
            interloper_errors.append(exc)

    def scalar(db: apsw.Connection, sql: str) -> object:
        nonlocal interloper
        value = real_scalar(db, sql)
        if sql == "PRAGMA application_id" and interloper is None:
            interloper = threading.Thread(target=create_schema)
            interloper.start()
            interloper.join(timeout=1.0)  # long enough to create the schema, were it not kept out
        return value

    monkeypatch.setattr(sqlite_module, "_scalar", scalar)

    async def open_new() -> None:
        async with djobs.sqlite(path).open() as storage:
            assert await storage.healthcheck()

    trio.run(open_new)
    assert interloper is not None
    interloper.join()
    assert interloper_errors == []
    db = apsw.Connection(str(path))
    assert next(iter(db.execute("PRAGMA user_version")))[0] == SCHEMA_VERSION
    db.close()


@pytest.mark.parametrize(
    ("path", "says"),
    [("", "path is empty"), ("postgresql://postgres@127.0.0.1/test", r"use djobs\.postgres\(dsn\)"), (b"x.db", "path")],
)
def test_a_path_that_names_no_file_is_refused_when_the_layer_is_made(path: object, says: str) -> None:
    with pytest.raises(djobs.ValidationError, match=says):
        djobs.sqlite(path)  # type: ignore[arg-type]


SQLITE_URIS = ["file::memory:?cache=shared", "file:jobs.db?mode=ro", "file:jobs.db", "file:///tmp/jobs.db"]


@pytest.mark.parametrize("uri", SQLITE_URIS)
def test_a_sqlite_uri_is_refused_saying_what_to_give_and_creates_no_file(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Taken as a path, it was a file of that literal name in the working directory, its parameters ignored.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(djobs.ValidationError) as made:
        djobs.sqlite(uri)
    assert made.value.message.startswith(f"{uri!r} is a SQLite URI; djobs takes a database file's path")
    assert "give the path (e.g. 'jobs.db'), or ':memory:'" in made.value.message
    assert made.value.message.endswith("djobs.memory() is a store in memory for tests")

    async def inspect() -> None:
        async with open_existing(uri):
            pass  # pragma: no cover

    # The command line and the dashboard open a database through open_existing: the same refusal.
    with pytest.raises(djobs.ValidationError, match="is a SQLite URI"):
        trio.run(inspect)
    assert main(["status", "--db", uri]) == ExitCode.USAGE
    assert "is a SQLite URI" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_a_file_whose_name_starts_with_file_colon_is_named_as_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    async def open_both() -> None:
        for layer in (djobs.sqlite("./file:a.db"), djobs.sqlite(Path("file:b.db"))):
            async with layer.open() as storage:
                assert await storage.healthcheck()

    trio.run(open_both)
    assert {"file:a.db", "file:b.db"} <= set(os.listdir(tmp_path))


@pytest.mark.trio
async def test_a_missing_directory_is_named_in_the_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(djobs.StorageError, match=f"its directory '{tmp_path / 'no' / 'such' / 'dir'}' does not exist"):
        async with djobs.open_engine([], storage=djobs.sqlite(missing / "jobs.db")):
            pass  # pragma: no cover
    assert not (tmp_path / "no").exists()


@pytest.mark.trio
@pytest.mark.parametrize("layer", ["storage", "clock", "tracker"])
async def test_a_layer_of_the_wrong_kind_is_refused_with_its_name(tmp_path: Path, layer: str) -> None:
    # storage="jobs.db" was an AttributeError from inside the engine.
    with pytest.raises(djobs.ValidationError, match=f"{layer} must be a .* got str 'jobs.db'") as raised:
        async with djobs.open_engine([], **{layer: "jobs.db"}):  # type: ignore[arg-type]
            pass  # pragma: no cover
    if layer == "storage":
        assert "did you mean djobs.sqlite('jobs.db')" in raised.value.message
        with pytest.raises(djobs.ValidationError, match=r"did you mean djobs\.postgres\(dsn\)\?$"):
            djobs.Layers(storage="postgresql://postgres@127.0.0.1/test")  # type: ignore[arg-type]
    with pytest.raises(djobs.ValidationError, match=f"{layer} must be a"):
        djobs.Layers(**{layer: 42})  # type: ignore[arg-type]


class Ping(msgspec.Struct):
    n: int


@pytest.mark.trio
async def test_a_relative_path_names_the_same_file_after_the_application_changes_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``djobs.sqlite("jobs.db")`` names the file in the working directory at open, as SQLite
    reads it. The replaced-file check re-read the relative path in the new working directory
    (a daemon's ``chdir("/")``), found no file there and failed every write ("deleted or
    replaced"); the checkpoint thread would have opened the path there too."""
    first, later = tmp_path / "first", tmp_path / "later"
    first.mkdir()
    later.mkdir()
    ping = djobs.Job.make("ping", params=Ping, execute=lambda params, ctx: None)
    monkeypatch.chdir(first)
    async with djobs.open_engine([ping], storage=djobs.sqlite("jobs.db"), worker=None) as engine:
        monkeypatch.chdir(later)
        ids = [success(await engine.client.job(ping).later(Ping(n), delay="1 hour")) for n in range(3)]
        listed = success(await engine.client.jobs.list(name="ping"))
        assert sorted(job.id for job in listed) == sorted(ids)
    assert os.listdir(later) == []  # nothing opened or made in the new working directory
    async with djobs.sqlite(first / "jobs.db").open() as storage:
        assert all([await storage.get_job(job_id) for job_id in ids])
