"""The ``djobs`` command line, run in-process with ``main([...])`` against databases a test engine built,
plus one real worker process that runs a job and stops on SIGINT.

The `db` fixture is parametrised: every test that takes it runs on a SQLite file and on a
throwaway PostgreSQL schema (``--db <dsn> --schema <schema>``; skipped, with one line,
when ``DJOBS_TEST_POSTGRES_DSN`` is not set)."""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apsw
import msgspec
import pytest
import trio
import trio.testing
from postgres_support import require_postgres, throwaway_schema

import djobs
from djobs.cli import ExitCode, _output, main
from djobs.storage import NewJob, QueueStorage, SqliteStorage, StorageLayer
from djobs.storage._inspect import open_existing, storage_layer
from djobs.testing import failure, open_test_engine, success

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T0_MS = 1_767_225_600_000
MINUTE = 60_000
OTHER_WORKER = "worker-b:4242:9f3c"
GUIDE = Path(__file__).parent.parent / "docs" / "guides" / "cli.md"
HERE = f"{__name__}:"  # this module, as a ``module:attribute`` target for the CLI


class FixedClock:
    """A clock stopped at one moment: what "now" the commands read."""

    def __init__(self, at_ms: int) -> None:
        self.at_ms = at_ms

    def now_ms(self) -> int:
        return self.at_ms

    async def sleep_until(self, epoch_ms: int) -> None:
        if epoch_ms > self.at_ms:
            await trio.sleep_forever()  # time never comes; the engine's close cancels the wait


AT_5M = FixedClock(T0_MS + 5 * MINUTE)


# -- the jobs the test databases hold --------------------------------------------------------


class Tokens(msgspec.Struct):
    token: str
    runs: int = 0


def refresh(ctx: djobs.ContinuousContext[Tokens]) -> None:
    ctx.set_state(Tokens(ctx.state.token, ctx.state.runs + 1))


class Hook(msgspec.Struct):
    id: str


def flush(ctx: djobs.DebounceContext[Hook]) -> None:
    pass


class Greet(msgspec.Struct):
    name: str


class Greeting(msgspec.Struct):
    text: str


def greet(params: Greet, ctx: djobs.JobContext) -> Greeting:
    if params.name == "fail":
        raise RuntimeError("no greeting for fail")
    return Greeting(f"Hello, {params.name}!")


refresher = djobs.Continuous.make("refresher", state=Tokens, schedule=djobs.every("30 minutes"), execute=refresh)
webhooks = djobs.Debounce.make("webhooks", event=Hook, flush_after="10 minutes", execute=flush)
greeter = djobs.Job.make("greet", params=Greet, result=Greeting, execute=greet, max_attempts=1)
nightly = djobs.CronJob.make("nightly", schedule=djobs.cron("0 3 * * *"), job=greeter, params=Greet("night"))
not_a_job = "just a string"


def not_a_factory() -> str:
    return "not an engine"


class Built(msgspec.Struct):
    path: Path  # the SQLite file, or (on PostgreSQL) a path nothing is written to
    args: list[str]  # --db and (PostgreSQL) --schema, as a person types them
    tmp: Path  # a directory for the test's other files
    completed: str
    failed: str
    due: str
    later: str
    cancelled: str
    running: str


def build(tmp: Path, storage: StorageLayer, args: list[str]) -> Built:
    """A database at 2026-01-01 00:00 UTC holding a bit of everything."""

    async def run() -> Built:
        definitions = [refresher, webhooks, greeter, nightly]
        async with open_test_engine(definitions, storage=storage) as engine:
            # An engine with a worker fires the instances' first runs...
            c = engine.client
            for user in ("user-1", "user-2"):
                success(await c.continuous(refresher).start(id=user, input=Tokens(f"t-{user[-1]}")))
            success(await c.debounce(webhooks).add(id="acct-1", event=Hook("h1")))
            await engine.wait_idle()
        # ...and a client-only one leaves the queued jobs pending.
        async with open_test_engine(definitions, storage=storage, worker=None) as engine:
            c = engine.client
            completed = success(await c.job(greeter).now(Greet("Ada"))).job_id
            failed = success(await c.job(greeter).now(Greet("fail"))).job_id
            due = success(await c.job(greeter).later(Greet("Bob")))
            later = success(await c.job(greeter).later(Greet("Cy"), delay="2 hours"))
            cancelled = success(await c.job(greeter).later(Greet("Di")))
            success(await c.jobs.cancel(cancelled))
        # Another worker holds an instance and runs a job: leases until 00:05 + 5 minutes.
        async with storage.open() as store:
            assert isinstance(store, QueueStorage)
            now = T0_MS + 5 * MINUTE
            running = "019b76da-0000-7000-8000-000000000001"
            row = NewJob(
                id=running, name="greet", params=b'{"name":"Eve"}', max_attempts=3, scheduled_for=now, created_at=now
            )
            await store.start_job(row, OTHER_WORKER, now + 5 * MINUTE)
            assert await store.acquire_instance_lease("continuous:refresher:user-1", OTHER_WORKER, now, 5 * MINUTE)
        assert completed is not None and failed is not None
        return Built(tmp / "jobs.db", args, tmp, completed, failed, due, later, cancelled, running)

    return trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Built:
    """The database on a SQLite file, for what only a file has (its bytes, foreign files)."""
    path = tmp_path / "jobs.db"
    return build(tmp_path, djobs.sqlite(path), ["--db", str(path)])


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Built]:
    """The database on each storage: a SQLite file, then a throwaway PostgreSQL schema."""
    if request.param == "sqlite":
        path = tmp_path / "jobs.db"
        yield build(tmp_path, djobs.sqlite(path), ["--db", str(path)])
        return
    dsn = require_postgres()
    with throwaway_schema(dsn) as schema:
        yield build(tmp_path, djobs.postgres(dsn, schema=schema), ["--db", dsn, "--schema", schema])


@pytest.fixture(autouse=True)
def _keep_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI makes the current directory importable; keep that from leaking into other tests.
    monkeypatch.setattr(sys, "path", list(sys.path))


def run(capsys: pytest.CaptureFixture[str], *argv: str, clock: Any = AT_5M) -> tuple[int, str, str]:
    code = main(list(argv), clock=clock)
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str, clock: Any = AT_5M) -> Any:
    code, out, err = run(capsys, *argv, "--json", clock=clock)
    assert code == 0, err
    return json.loads(out)  # exactly one document: anything else on stdout would fail here


def job_row(db: Built, job_id: str) -> dict[str, Any]:
    """The stored row of a job, read from either storage."""

    async def read() -> dict[str, Any]:
        async with open_existing(db.args[1], schema=db.args[3] if len(db.args) > 2 else "djobs") as opened:
            record = await opened.storage.get_job(job_id)
        assert record is not None
        return msgspec.structs.asdict(record)

    return trio.run(read)


# -- status ------------------------------------------------------------------------------------


def test_status_counts_instances_alarms_queue_and_leases(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    s = run_json(capsys, "status", *db.args)
    assert s["now"] == "2026-01-01T00:05:00.000Z"
    assert s["instances"] == [
        {"kind": "continuous", "name": "refresher", "status": "running", "count": 2},
        {"kind": "debounce", "name": "webhooks", "status": "debouncing", "count": 1},
    ]
    # Two refreshes at 00:30, the debounce flush at 00:10: all later.
    assert s["alarms"] == {"due": 0, "claimed": 0, "later": 3, "next_at": "2026-01-01T00:10:00.000Z"}
    assert s["jobs"] == {"pending": 2, "running": 1, "completed": 1, "failed": 1, "cancelled": 1}
    assert s["jobs_due"] == 1
    assert s["oldest_pending"] == {
        "id": db.due,
        "name": "greet",
        "scheduled_for": "2026-01-01T00:00:00.000Z",
        "waiting_ms": 5 * MINUTE,
    }
    assert s["leases"] == [{"owner": OTHER_WORKER, "instances": 1, "jobs": 1, "expired": 0}]


def test_status_later_sees_due_alarms_and_expired_leases(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    s = run_json(capsys, "status", *db.args, clock=FixedClock(T0_MS + 60 * MINUTE))
    assert s["alarms"] == {"due": 3, "claimed": 0, "later": 0, "next_at": None}
    assert s["jobs_due"] == 1  # the two-hour one is not due yet
    assert s["oldest_pending"]["waiting_ms"] == 60 * MINUTE
    assert s["leases"] == [{"owner": OTHER_WORKER, "instances": 0, "jobs": 0, "expired": 2}]


def test_status_table_for_people(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    code, out, err = run(capsys, "status", *db.args)
    assert code == 0 and err == ""
    assert re.search(r"continuous\s+refresher\s+running\s+2\n", out)
    assert re.search(r"debounce\s+webhooks\s+debouncing\s+1\n", out)
    assert "0 due, 0 being handled, 3 later, next 2026-01-01 00:10:00Z (in 5m)" in out
    assert "pending 2 (1 due), running 1, completed 1, failed 1, cancelled 1" in out
    assert f"{db.due} (greet), due 2026-01-01 00:00:00Z, waiting 5m" in out
    assert re.search(rf"{OTHER_WORKER}\s+1\s+1\s+0\n", out)
    # The guide's sample is this output: its schema version is the one this djobs writes.
    sample = re.search(r"\$ djobs status --db jobs.db\n(.*?)```", GUIDE.read_text(), re.S)
    assert sample is not None, "the CLI guide lost its status sample"
    [printed] = re.findall(r"djobs schema (\d+)\n", out)
    assert re.findall(r"djobs schema (\d+)\n", sample.group(1)) == [printed]


# -- databases that must not be used (or created) -----------------------------------------------


READ_COMMANDS = [
    ["status"],
    ["instances", "list"],
    ["instances", "show", "continuous:refresher:user-1"],
    ["jobs", "list"],
    ["jobs", "show", "x"],
    ["jobs", "cancel", "x"],
    ["jobs", "retry", "x"],
    ["cron", "list"],
]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_a_missing_database_is_reported_not_created(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: list[str]
) -> None:
    path = tmp_path / "typo.db"
    code, out, err = run(capsys, *command, "--db", str(path))
    assert code == ExitCode.DATABASE == 3
    assert out == ""
    assert err.startswith(f"djobs: no database at {str(path)!r}") and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_enqueue_does_not_create_a_database_either(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "enqueue", HERE + "greeter", "--params", '{"name": "a"}', "--db", str(tmp_path / "n.db"))
    assert code == 3 and "no database at" in err
    assert list(tmp_path.iterdir()) == []


def test_foreign_files_and_other_schema_versions_are_refused_untouched(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sqlite_db: Built
) -> None:
    db = sqlite_db
    text = tmp_path / "notes.db"
    text.write_bytes(b"not a database at all " * 100)
    other = tmp_path / "other.db"
    conn = apsw.Connection(str(other))
    conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.close()
    empty = tmp_path / "empty.db"
    empty.touch()
    cases = {
        text: "the file is not a database",
        other: "is not a djobs database (it holds other data)",
        empty: "is not a djobs database (an empty file)",
    }
    for path, message in cases.items():
        before = path.read_bytes()
        code, out, err = run(capsys, "status", "--db", str(path))
        assert (code, out) == (3, ""), err
        assert message in err and "Traceback" not in err
        assert path.read_bytes() == before
    for version, word in ((99, "newer"), (1, "older")):
        conn = apsw.Connection(str(db.path))
        conn.execute(f"PRAGMA user_version={version}")
        conn.close()
        code, _, err = run(capsys, "jobs", "list", *db.args)
        assert code == 3 and f"has schema version {version}, {word} than" in err
        conn = apsw.Connection(str(db.path))
        assert next(iter(conn.execute("PRAGMA user_version")))[0] == version  # not migrated
        conn.close()


def test_read_only_commands_do_not_write(capsys: pytest.CaptureFixture[str], sqlite_db: Built) -> None:
    db = sqlite_db
    before = db.path.read_bytes()
    for command in (["status"], ["instances", "list"], ["jobs", "list"], ["cron", "list"], ["jobs", "show", db.due]):
        assert run(capsys, *command, *db.args)[0] == 0
    assert db.path.read_bytes() == before


# -- instances -----------------------------------------------------------------------------------


def test_instances_list_filters_and_pages(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    code, out, err = run(capsys, "instances", "list", *db.args)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["KEY", "STATUS", "RUNS", "EVENTS", "ALARM", "UPDATED"]
    assert [line.split()[0] for line in lines[1:]] == [
        "continuous:refresher:user-1",
        "continuous:refresher:user-2",
        "debounce:webhooks:acct-1",
    ]
    assert "2026-01-01 00:30:00Z" in lines[1]
    only = run_json(capsys, "instances", "list", "--kind", "debounce", *db.args)
    assert [i["key"] for i in only] == ["debounce:webhooks:acct-1"]
    assert only[0]["event_count"] == 1 and only[0]["alarm"]["fire_at"] == "2026-01-01T00:10:00.000Z"
    code, out, err = run(capsys, "instances", "list", "--limit", "1", *db.args)
    assert len(out.splitlines()) == 2
    assert "see more with --after=continuous:refresher:user-1\n" in err  # one shell word, quoted only if needed
    page = run_json(
        capsys,
        "instances",
        "list",
        "--after",
        "continuous:refresher:user-1",
        "--name",
        "refresher",
        *db.args,
    )
    assert [i["key"] for i in page] == ["continuous:refresher:user-2"]
    nobody = run(capsys, "instances", "list", "--name", "nobody", *db.args)
    assert nobody == (0, "", "no instances match\n")


def test_instances_show_state_alarm_lease_and_counters(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    shown = run_json(capsys, "instances", "show", "continuous:refresher:user-1", *db.args)
    assert shown["state"] == {"token": "t-1", "runs": 1}
    assert shown["run_count"] == 1 and shown["status"] == "running"
    assert shown["alarm"] == {
        "fire_at": "2026-01-01T00:30:00.000Z",
        "purpose": "run",
        "due": False,
        "claimed_until": None,
    }
    assert shown["lease"] == {"owner": OTHER_WORKER, "expires_at": "2026-01-01T00:10:00.000Z", "expired": False}
    # name:id finds the one kind that has it.
    assert run_json(capsys, "instances", "show", "refresher:user-2", *db.args)["lease"] is None
    code, out, _ = run(capsys, "instances", "show", "webhooks:acct-1", *db.args)
    assert code == 0
    assert re.search(r"^events\s+1$", out, re.M)
    assert re.search(r"^alarm\s+2026-01-01 00:10:00Z \(in 5m\), flush_after$", out, re.M)
    assert re.search(r"^lease\s+-$", out, re.M)
    assert out.endswith('state\n  {\n    "id": "h1"\n  }\n')
    code, out, err = run(capsys, "instances", "show", "refresher:nobody", *db.args)
    assert (code, out) == (ExitCode.NOT_FOUND, "")
    assert "no instance with key 'refresher:nobody'" in err


# -- jobs ----------------------------------------------------------------------------------------


def test_jobs_list_in_creation_order_with_filters(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    listed = run_json(capsys, "jobs", "list", *db.args)
    assert [j["id"] for j in listed] == [db.running, db.completed, db.failed, db.due, db.later, db.cancelled]
    assert [j["status"] for j in listed] == ["running", "completed", "failed", "pending", "pending", "cancelled"]
    failed = run_json(capsys, "jobs", "list", "--status", "failed", *db.args)
    assert [j["id"] for j in failed] == [db.failed]
    assert failed[0]["error"]["tag"] == "retry_exhausted" and "no greeting for fail" in failed[0]["error"]["message"]
    code, out, _ = run(capsys, "jobs", "list", "--status", "pending", *db.args)
    assert code == 0
    rows = out.splitlines()
    assert rows[0].split()[:4] == ["ID", "NAME", "STATUS", "ATTEMPTS"]
    assert [r.split()[0] for r in rows[1:]] == [db.due, db.later]
    code, out, _ = run(capsys, "jobs", "list", "--status", "failed", *db.args)
    assert re.search(r"retry_exhausted: gave up after 1 attempt\(s\): RuntimeError: …$", out, re.M)  # clipped
    assert run_json(capsys, "jobs", "list", "--name", "other", *db.args) == []
    code, _, err = run(capsys, "jobs", "list", "--status", "bogus", *db.args)
    assert code == ExitCode.USAGE and "invalid choice: 'bogus'" in err


def test_jobs_show_params_result_and_error(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    done = run_json(capsys, "jobs", "show", db.completed, *db.args)
    assert (done["status"], done["params"], done["result"]) == ("completed", {"name": "Ada"}, {"text": "Hello, Ada!"})
    running = run_json(capsys, "jobs", "show", db.running, *db.args)
    assert running["worker_id"] == OTHER_WORKER and running["lease_expires_at"] == "2026-01-01T00:10:00.000Z"
    code, out, _ = run(capsys, "jobs", "show", db.failed, *db.args)
    assert code == 0
    assert re.search(r"^status\s+failed$", out, re.M)
    assert re.search(r"^attempts\s+1 of 1$", out, re.M)
    assert re.search(r'^params\s+\{"name":"fail"\}$', out, re.M)
    assert re.search(r"^error\s+retry_exhausted: .*no greeting for fail", out, re.M)
    code, out, err = run(capsys, "jobs", "show", "no-such-id", *db.args)
    assert (code, out, err) == (ExitCode.NOT_FOUND, "", "djobs: no job with id 'no-such-id' is stored\n")


def test_jobs_cancel(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    path = db.args
    code, out, _ = run(capsys, "jobs", "cancel", db.due, *path)
    assert (code, out) == (0, f"job {db.due} (greet): cancelled\n")
    assert job_row(db, db.due)["status"] == "cancelled"
    # Running in another process: its worker stops it at the next renewal.
    assert run_json(capsys, "jobs", "cancel", db.running, *path) == {
        "job_id": db.running,
        "status": "running",
        "cancel_requested": True,
        "cancelled": True,
    }
    assert job_row(db, db.running)["cancel_requested"] == 1
    code, out, _ = run(capsys, "jobs", "cancel", db.cancelled, *path)
    assert (code, out) == (0, f"job {db.cancelled} (greet): already cancelled\n")
    code, out, _ = run(capsys, "jobs", "cancel", db.completed, *path)
    assert (code, out) == (ExitCode.FAILED, f"job {db.completed} (greet): not cancelled: it had already completed\n")
    assert job_row(db, db.completed)["status"] == "completed"
    assert run(capsys, "jobs", "cancel", "nope", *path)[0] == ExitCode.NOT_FOUND


def test_jobs_retry(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    path = db.args
    code, out, _ = run(capsys, "jobs", "retry", db.failed, *path)
    assert (code, out) == (0, f"job {db.failed} (greet): pending again, due now, 1 attempt(s)\n")
    row = job_row(db, db.failed)
    assert (row["status"], row["attempt_count"], row["error"], row["scheduled_for"]) == (
        "pending",
        0,
        None,
        AT_5M.at_ms,
    )
    code, out, err = run(capsys, "jobs", "retry", db.due, *path)
    assert (code, out) == (ExitCode.FAILED, "")
    assert "is pending; only a failed or cancelled job can be retried" in err
    assert run_json(capsys, "jobs", "retry", db.cancelled, *path)["status"] == "pending"
    assert run(capsys, "jobs", "retry", "nope", *path)[0] == ExitCode.NOT_FOUND


def test_dead_letters_list_show_discard(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    path = db.args
    [letter] = run_json(capsys, "dead-letters", "list", *path)
    assert (letter["id"], letter["kind"], letter["name"], letter["ref"]) == (db.failed, "job", "greet", db.failed)
    assert letter["payload"] == {"name": "fail"} and letter["attempts"] == 1
    assert letter["error"]["tag"] == "retry_exhausted" and "no greeting for fail" in letter["error"]["message"]
    assert run_json(capsys, "dead-letters", "list", "--kind", "debounce", *path) == []
    code, out, _ = run(capsys, "dead-letters", "list", *path)
    assert code == 0 and db.failed in out and "retry_exhausted: gave up after 1 attempt(s)" in out
    # A full page ends with the next page's --after: the letter's cursor, which the JSON holds too.
    code, _, err = run(capsys, "dead-letters", "list", "--limit", "1", *path)
    [hint] = shlex.split(err.split("see more with --after=", 1)[1])
    assert hint == letter["cursor"].replace("\x1f", "\u241f") and hint.endswith(f"\u241f{db.failed}")
    assert run(capsys, "dead-letters", "list", "--after", "x\u241fy", *path)[0] == ExitCode.USAGE
    # Two minus signs (int() refuses them) or more milliseconds than a 64-bit integer holds (the
    # driver refuses them) before the separator: a usage error, never "failed: ValueError".
    for bad in ("--5", "9" * 19, "9" * 20):
        code, _, err = run(capsys, "dead-letters", "list", f"--after={bad}\u241f{db.failed}", *path)
        assert (code, "neither a letter id nor a page's cursor" in err) == (ExitCode.USAGE, True), err
    code, out, _ = run(capsys, "dead-letters", "show", db.failed, *path)
    assert code == 0 and '{"name":"fail"}' in out and "job id" in out
    assert run(capsys, "dead-letters", "show", "nope", *path)[0] == ExitCode.NOT_FOUND
    code, out, _ = run(capsys, "dead-letters", "discard", db.failed, *path)
    assert (code, out) == (0, f"dead letter {db.failed} (job greet) discarded\n")
    assert run_json(capsys, "dead-letters", "list", *path) == []
    assert job_row(db, db.failed)["status"] == "failed"  # the job's own row stays
    assert run(capsys, "dead-letters", "discard", db.failed, *path)[0] == ExitCode.NOT_FOUND
    # The cursor of a letter discarded since still says where the next page starts (here: none left).
    assert run(capsys, "dead-letters", "list", "--after", hint, *path) == (0, "", "no dead letters match\n")


def test_dead_letters_retry(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    path = db.args
    code, out, _ = run(capsys, "dead-letters", "retry", db.failed, *path)
    assert (code, out) == (0, f"job {db.failed} (greet): due again now; dead letter {db.failed} removed\n")
    row = job_row(db, db.failed)
    assert (row["status"], row["attempt_count"], row["scheduled_for"]) == ("pending", 0, AT_5M.at_ms)
    assert run_json(capsys, "dead-letters", "list", *path) == []
    assert run(capsys, "dead-letters", "retry", db.failed, *path)[0] == ExitCode.NOT_FOUND


def test_cron_list(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    [cron] = run_json(capsys, "cron", "list", *db.args)
    assert cron == {
        "name": "nightly",
        "job_name": "greet",
        "schedule": "0 3 * * *",
        "tz": "UTC",
        "enabled": True,
        "next_run_at": "2026-01-01T03:00:00Z",
        "last_run_at": None,
        "last_job_id": None,
        "tenant_id": None,
    }
    code, out, _ = run(capsys, "cron", "list", *db.args)
    assert code == 0 and re.search(r"nightly\s+greet\s+0 3 \* \* \*\s+UTC\s+yes\s+2026-01-01 03:00:00Z", out)


# -- enqueue ---------------------------------------------------------------------------------------


def test_enqueue_validates_and_prints_the_id(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    code, out, err = run(
        capsys,
        "enqueue",
        HERE + "greeter",
        "--params",
        '{"name": "Zoe"}',
        "--delay",
        "1 hour",
        "--priority",
        "5",
        *db.args,
    )
    assert code == 0, err
    job_id = out.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", job_id)
    assert "due 2026-01-01 01:05:00Z" in err
    row = job_row(db, job_id)
    assert (row["status"], row["params"], row["scheduled_for"], row["priority"]) == (
        "pending",
        b'{"name":"Zoe"}',
        AT_5M.at_ms + 60 * MINUTE,
        5,
    )
    info = run_json(
        capsys,
        "enqueue",
        HERE + "greeter",
        "--params",
        '{"name": "Al"}',
        "--at",
        "2026-02-01T09:00Z",
        "--tenant",
        "acme",
        *db.args,
    )
    assert (info["status"], info["tenant_id"], info["scheduled_for"]) == ("pending", "acme", "2026-02-01T09:00:00Z")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--params", '{"name": 3}'], "--params of job 'greet' does not match Greet: Expected `str`, got `int`"),
        (["--params", "{name"], "--params of job 'greet' does not match Greet: JSON is malformed"),
        (["--params", "{}"], "Object missing required field `name`"),
        # msgspec calls a lone surrogate escape "Input data was truncated"
        (["--params", '{"name": "\\ud800"}'], "is not storable: a string holds a lone surrogate ('\\ud800'"),
        (["--at", "2026-02-01T09:00"], "--at needs a UTC offset"),
        (["--delay", "soon"], "invalid delay 'soon'"),
    ],
)
def test_enqueue_refuses_bad_input(
    capsys: pytest.CaptureFixture[str], db: Built, argv: list[str], message: str
) -> None:
    argv = ["--params", '{"name": "x"}', *argv] if argv[0] != "--params" else argv
    code, out, err = run(capsys, "enqueue", HERE + "greeter", *argv, *db.args)
    assert (code, out) == (ExitCode.USAGE, "")
    assert message in err and "Traceback" not in err
    assert run_json(capsys, "status", *db.args)["jobs"]["pending"] == 2  # nothing stored


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("greeter", "must be given as module:attribute"),
        ("no_such_module_xyz:job", "cannot import 'no_such_module_xyz'"),
        (HERE + "missing", "has no attribute 'missing'"),
        (HERE + "not_a_job", "is a str, not a djobs.Job"),
    ],
)
def test_enqueue_refuses_bad_targets(capsys: pytest.CaptureFixture[str], db: Built, target: str, message: str) -> None:
    code, _, err = run(capsys, "enqueue", target, *db.args)
    assert code == ExitCode.USAGE and message in err


def test_enqueue_never_claims_an_alarm(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    # At 01:00 every alarm is due; an engine's sleeper would claim them (and, without a
    # handler, leave them claimed for minutes). The CLI's client-only engine must not.
    later = FixedClock(T0_MS + 60 * MINUTE)
    code, _, err = run(capsys, "enqueue", HERE + "greeter", "--params", '{"name": "x"}', *db.args, clock=later)
    assert code == 0, err
    assert run_json(capsys, "status", *db.args, clock=later)["alarms"]["due"] == 3


# -- batch -------------------------------------------------------------------------------------------


def test_batch_runs_each_line_and_reports_failures(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    params = db.tmp / "people.jsonl"
    params.write_text('{"name": "Ann"}\n\n{"name": "fail"}\n{"name": "Ben"}\n')
    code, out, err = run(
        capsys, "batch", HERE + "greeter", "--params-file", str(params), "--concurrency", "2", *db.args
    )
    assert code == ExitCode.FAILED
    assert out.startswith("3 job(s): 2 completed, 1 failed\n")
    assert re.search(r"failed\s+1\s+retry_exhausted: .*no greeting for fail", out)
    assert "running 3 greet job(s), 2 at a time (correlation id batch-" in err
    assert err.endswith("greet [" + "#" * 30 + "] 3/3 100% (1 failed)\n")  # stderr is no terminal: final line only
    correlation = re.search(r"correlation id (batch-[0-9a-f]+)", err)
    assert correlation is not None
    rows = run_json(capsys, "jobs", "list", "--correlation-id", correlation.group(1), *db.args)
    assert sorted(r["status"] for r in rows) == ["completed", "completed", "failed"]


def test_batch_json_and_all_completed(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    params = db.tmp / "two.jsonl"
    params.write_text('{"name": "Ann"}\n{"name": "Ben"}\n')
    code, out, err = run(
        capsys, "batch", HERE + "greeter", "--params-file", str(params), "--json", "--no-progress", *db.args
    )
    assert code == 0, err
    runs = json.loads(out)
    assert [(r["status"], r["result"], r["error"], r["attempts"]) for r in runs] == [
        ("completed", {"text": "Hello, Ann!"}, None, 1),
        ("completed", {"text": "Hello, Ben!"}, None, 1),
    ]
    assert "[" not in err  # no bar


def test_batch_refuses_a_bad_line_before_running_anything(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    params = db.tmp / "bad.jsonl"
    params.write_text('{"name": "Ann"}\n{"nom": "Ben"}\n')
    code, out, err = run(capsys, "batch", HERE + "greeter", "--params-file", str(params), *db.args)
    assert (code, out) == (ExitCode.USAGE, "")
    assert "bad.jsonl, line 2, does not match Greet: Object missing required field `name`" in err
    assert run_json(capsys, "status", *db.args)["jobs"]["completed"] == 1  # nothing ran
    code, _, err = run(
        capsys, "batch", HERE + "greeter", "--params-file", str(params.parent / "missing.jsonl"), *db.args
    )
    assert code == ExitCode.USAGE and "cannot read --params-file" in err


def test_batch_on_a_terminal_follows_its_rows_live(
    capsys: pytest.CaptureFixture[str], db: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = db.tmp / "many.jsonl"
    params.write_text("".join(f'{{"name": "p{i}"}}\n' for i in range(20)))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, out, err = run(
        capsys, "batch", HERE + "greeter", "--params-file", str(params), "--concurrency", "4", *db.args
    )
    assert code == 0, err
    assert out == "20 job(s): 20 completed\n"
    draws = err.split("\r")
    assert len(draws) >= 3  # drawn while running (from the rows' counts), then the final line
    assert draws[-1] == "greet [" + "#" * 30 + "] 20/20 100%\n"


def test_progress_bar_redraws_in_place_on_a_terminal() -> None:
    out = io.StringIO()
    bar = _output.ProgressBar("greet", 3, out, live=True, width=6)
    bar.update(0, 0)
    bar.update(1, 0)
    bar.update(1, 0)  # unchanged: not redrawn
    bar.update(2, 1)
    bar.finish(3, 1)
    assert out.getvalue() == (
        "\rgreet [......] 0/3 0%\rgreet [##....] 1/3 33%\rgreet [####..] 2/3 67% (1 failed)"
        "\rgreet [######] 3/3 100% (1 failed)\n"
    )


def test_inspector_is_found_for_sqlite_and_for_storages_that_implement_it() -> None:
    # The memory store is one of those: it answers the inspection itself.
    from djobs.storage._inspect import JOB_STATUSES, Inspector, SqliteInspector, inspector

    class Own:
        async def summary(self, now: int) -> Any: ...
        async def instances(self, where: Any) -> Any: ...
        async def job_counts(self, correlation_id: str | None = None) -> Any: ...
        async def job_counts_by_name(self) -> Any: ...
        async def finished_per_minute(self, since: int, until: int) -> Any: ...

    own = Own()
    assert isinstance(own, Inspector) and inspector(own) is own  # type: ignore[arg-type]
    with pytest.raises(djobs.StorageError, match="cannot be inspected"):
        inspector(object())  # type: ignore[arg-type]

    async def check() -> None:
        async with djobs.memory().open() as store:
            assert inspector(store) is store  # type: ignore[comparison-overlap]
            assert await inspector(store).job_counts() == dict.fromkeys(JOB_STATUSES, 0)
        async with djobs.sqlite(":memory:").open() as storage:
            assert isinstance(storage, SqliteStorage)
            found = inspector(storage)
            assert isinstance(found, SqliteInspector)
            assert await found.job_counts() == dict.fromkeys(JOB_STATUSES, 0)

    trio.run(check)


# -- the guide's example module: --engine, and a real worker process -----------------------------------


def guide_module() -> str:
    match = re.search(r'```python title="jobs_app.py"\n(.*?)```', GUIDE.read_text(), re.S)
    assert match is not None, "the CLI guide lost its jobs_app.py example"
    return match.group(1)


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The guide's jobs_app.py in a directory of its own, which is the current one, with an empty database."""
    (tmp_path / "jobs_app.py").write_text(guide_module())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JOBS_DB", str(tmp_path / "jobs.db"))
    monkeypatch.delitem(sys.modules, "jobs_app", raising=False)

    async def create() -> None:
        async with djobs.sqlite(tmp_path / "jobs.db").open():
            pass

    trio.run(create)
    yield tmp_path / "jobs.db"
    sys.modules.pop("jobs_app", None)


def test_batch_in_your_own_engine_gets_your_services(capsys: pytest.CaptureFixture[str], app: Path) -> None:
    (app.parent / "people.jsonl").write_text('{"name": "Ada"}\n')
    code, out, err = run(
        capsys,
        "batch",
        "jobs_app:send_greeting",
        "--params-file",
        "people.jsonl",
        "--engine",
        "jobs_app:make_engine",
        "--json",
        clock=None,
    )
    assert code == 0, err
    assert [r["result"] for r in json.loads(out)] == [{"text": "Hello, Ada!"}]  # "Hello" is the factory's service


def test_batch_of_a_job_that_needs_services_without_an_engine_is_refused(
    capsys: pytest.CaptureFixture[str], app: Path
) -> None:
    """Without --engine the job would run with no services, and fail each attempt (AttributeError)."""
    (app.parent / "people.jsonl").write_text('{"name": "Ada"}\n')
    code, out, err = run(capsys, "batch", "jobs_app:send_greeting", "--params-file", "people.jsonl", "--db", str(app))
    assert (code, out) == (ExitCode.USAGE, "")
    assert "needs the application's services (its body takes JobContext[Services])" in err
    assert "--engine MODULE:FACTORY" in err and len(err.strip().splitlines()) == 1


class Mailer:
    pass


def _typed(params: Greet, ctx: djobs.JobContext[Mailer]) -> None:
    pass


def _plain(params: Greet, ctx: djobs.JobContext) -> None:  # type: ignore[type-arg]
    pass


def _anything(params: Greet, ctx: djobs.JobContext[Any]) -> None:
    pass


def test_what_services_a_job_needs_is_read_from_its_context_annotation() -> None:
    from djobs.cli._run import services_needed

    def make(fn: Any) -> Any:
        return djobs.Job.make("j", params=Greet, execute=fn)

    assert services_needed(make(_typed)) == "Mailer"
    for fn in (_plain, _anything, lambda params, ctx: None):
        assert services_needed(make(fn)) is None


@pytest.mark.parametrize(
    ("target", "code", "message"),
    [
        ("jobs_app", ExitCode.USAGE, "must be given as module:attribute"),
        ("jobs_app:send_greeting", ExitCode.USAGE, "is a Job, not a callable that opens an engine"),
        ("jobs_app:Greeting", ExitCode.FAILED, "TypeError"),  # a class is callable; Greeting() raises
        (HERE + "not_a_factory", ExitCode.USAGE, "returned str, not an async context manager"),
    ],
)
def test_worker_refuses_what_is_not_an_engine_factory(
    capsys: pytest.CaptureFixture[str], app: Path, target: str, code: ExitCode, message: str
) -> None:
    got, out, err = run(capsys, "worker", target)
    assert (got, out) == (code, "")
    assert message in err


def test_worker_reports_an_unusable_database(
    capsys: pytest.CaptureFixture[str], app: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    foreign = app.parent / "foreign.db"
    foreign.write_bytes(b"definitely not sqlite " * 100)
    monkeypatch.setenv("JOBS_DB", str(foreign))
    code, out, err = run(capsys, "worker", "jobs_app:make_engine", clock=None)
    assert (code, out) == (ExitCode.DATABASE, "")
    assert "the file is not a database" in err and "Traceback" not in err


def test_worker_process_runs_jobs_and_stops_gracefully_on_sigint(capsys: pytest.CaptureFixture[str], app: Path) -> None:
    code, out, err = run(
        capsys, "enqueue", "jobs_app:send_greeting", "--params", '{"name": "Ada"}', "--db", str(app), clock=None
    )
    assert code == 0, err
    job_id = out.strip()
    env = {**os.environ, "JOBS_DB": str(app), "PYTHONUNBUFFERED": "1"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "djobs.cli", "worker", "jobs_app:make_engine"],
        cwd=app.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        status = None
        while time.monotonic() < deadline:
            status = run_json(capsys, "jobs", "show", job_id, "--db", str(app), clock=None)["status"]
            if status == "completed" or worker.poll() is not None:
                break
            time.sleep(0.05)
        assert status == "completed", worker.stderr.read() if worker.poll() is not None else status
        result = run_json(capsys, "jobs", "show", job_id, "--db", str(app), clock=None)["result"]
        assert result == {"text": "Hello, Ada!"}  # the factory's services reached the job
        started = time.monotonic()
        worker.send_signal(signal.SIGINT)
        stdout, stderr = worker.communicate(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, stderr
    assert time.monotonic() - started < 5
    assert "jobs_app:make_engine running as " in stderr
    assert "stopping" in stderr and stderr.rstrip().endswith("djobs worker: stopped")
    assert "Traceback" not in stderr and stdout == ""
    # The engine released what it held: no lease of the stopped worker is left.
    assert run_json(capsys, "status", "--db", str(app), clock=None)["leases"] == []


# -- usage -----------------------------------------------------------------------------------------------


def test_usage_errors_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys)[0] == ExitCode.USAGE
    assert run(capsys, "jobs")[0] == ExitCode.USAGE
    code, _, err = run(capsys, "jobs", "list", "--limit", "0")
    assert code == ExitCode.USAGE and "expected a number from 1 to 10000" in err
    # More digits than int() reads (4,300) are a usage error in the option's own words too.
    for argv in (["jobs", "list", "--limit"], ["dead-letters", "list", "--limit"], ["workflows", "list", "--limit"]):
        code, _, err = run(capsys, *argv, "1" * 5000)
        assert code == ExitCode.USAGE and "argument --limit: expected a whole number, got '111" in err, err
        assert len(err) < 1000  # the refused text is cut short
    for priority in ("1" * 5000, "1_0", "2147483648", "\u0663"):
        code, _, err = run(capsys, "enqueue", HERE + "greeter", "--db", "unused.db", f"--priority={priority}")
        assert code == ExitCode.USAGE and "argument --priority: expected a" in err, err
    assert run(capsys, "status", "--bogus")[0] == ExitCode.USAGE
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "exit codes: 0 ok" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"djobs {importlib.metadata.version('djobs-trio')}"  # not "unknown"


def test_the_guide_documents_every_exit_code() -> None:
    table = re.search(r"## Exit codes\n\n(.*?)\n\n", GUIDE.read_text(), re.S)
    assert table is not None
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", table.group(1), re.M)}
    assert documented == {int(c) for c in ExitCode}


def test_the_default_db_comes_from_the_environment(
    capsys: pytest.CaptureFixture[str], db: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DJOBS_DB", db.args[1])
    if len(db.args) > 2:
        monkeypatch.setenv("DJOBS_SCHEMA", db.args[3])
    assert run_json(capsys, "jobs", "show", db.due)["id"] == db.due


# -- instances pause / resume --------------------------------------------------------------------


def test_instances_pause_and_resume_a_continuous_instance(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    path = db.args
    paused = run_json(capsys, "instances", "pause", HERE + "refresher", "user-2", *path)
    assert paused == {"status": "stopped", "run_count": 1, "next_run_at": None}
    shown = run_json(capsys, "instances", "show", "refresher:user-2", *path)
    assert shown["status"] == "stopped" and shown["alarm"] is None
    # Resumed at 00:05: the next fire time of every 30 minutes after now.
    code, out, err = run(capsys, "instances", "resume", HERE + "refresher", "user-2", *path)
    assert code == 0, err
    assert out == "refresher:user-2 running, next run 2026-01-01 00:35:00Z\n"
    shown = run_json(capsys, "instances", "show", "refresher:user-2", *path)
    assert shown["status"] == "running" and shown["alarm"]["fire_at"] == "2026-01-01T00:35:00.000Z"


def test_instances_pause_refuses_what_it_cannot_find(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    path = db.args
    code, out, err = run(capsys, "instances", "pause", HERE + "refresher", "nobody", *path)
    assert (code, out) == (ExitCode.NOT_FOUND, "") and "nobody" in err
    code, _, err = run(capsys, "instances", "pause", HERE + "greeter", "user-2", *path)
    assert code == ExitCode.USAGE and "not a djobs.Continuous" in err


# -- every storage: tenants, cron actions, purge --------------------------------------------------


def layer_of(db: Built) -> StorageLayer:
    return storage_layer(db.args[1], db.args[3] if len(db.args) > 2 else "djobs")


def test_tenant_keys_print_readably_filter_and_show(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    async def add_tenant_instance() -> None:
        async with open_test_engine([refresher], storage=layer_of(db), worker=None) as engine:
            client = engine.client.for_tenant("acme").continuous(refresher)
            success(await client.start(id="user-9", input=Tokens("t-9")))

    trio.run(add_tenant_instance, clock=trio.testing.MockClock(autojump_threshold=0))
    code, out, err = run(capsys, "instances", "list", "--tenant", "acme", *db.args)
    assert code == 0, err
    printed = out.splitlines()[1].split()[0]
    assert printed == "continuous:refresher:acme\u241fuser-9"  # the unit separator as its visible symbol
    assert not any(ord(c) < 32 for c in out.replace("\n", ""))
    # What list prints, show accepts (whole, or without the kind).
    shown = run_json(capsys, "instances", "show", printed, *db.args)
    assert (shown["tenant_id"], shown["instance_id"], shown["state"]) == ("acme", "user-9", {"token": "t-9", "runs": 0})
    assert run_json(capsys, "instances", "show", "refresher:acme\u241fuser-9", *db.args)["key"] == shown["key"]
    code, out, _ = run(capsys, "instances", "show", printed, *db.args)
    assert re.search(r"^tenant\s+acme$", out, re.M) and "\x1f" not in out
    assert [i["tenant_id"] for i in run_json(capsys, "instances", "list", *db.args)].count("acme") == 1
    assert run_json(capsys, "instances", "list", "--tenant", "other", *db.args) == []


def test_cron_enable_and_next_runs_store_and_show_nothing_past_9999(
    capsys: pytest.CaptureFixture[str], db: Built
) -> None:
    """Enabled from the command line on the last day djobs schedules (9999-12-30, 04:00), the
    nightly 03:00 job has no fire left before the limit (9999-12-31 00:00): it is stored with no
    next run, and the next runs the command line and the dashboard show stop at the limit."""
    from djobs._clock import LATEST_MS
    from djobs.cli import _actions

    now = LATEST_MS - 20 * 60 * MINUTE  # 9999-12-30 04:00 UTC
    assert run(capsys, "cron", "disable", "nightly", *db.args)[0] == 0
    enabled = run_json(capsys, "cron", "enable", "nightly", *db.args, clock=FixedClock(now))
    assert (enabled["enabled"], enabled["next_run_at"]) == (True, None)
    record = djobs.storage.CronRecord(
        name="nightly", job_name="greet", expression="0 3 * * *", tz="UTC", params=b"{}", enabled=False
    )
    assert _actions.next_runs(record, now) == []
    assert _actions.next_runs(record, now - 24 * 60 * MINUTE) == [LATEST_MS - 21 * 60 * MINUTE]


def test_cron_enable_disable_and_run_now(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    code, out, _ = run(capsys, "cron", "disable", "nightly", *db.args)
    assert (code, out) == (0, "cron job nightly: disabled\n")
    assert run_json(capsys, "cron", "list", *db.args)[0]["enabled"] is False
    code, _, err = run(capsys, "cron", "run-now", "nightly", *db.args)
    assert code == ExitCode.FAILED and "is disabled; enable it first" in err
    # Enabled again at 04:00: the next fire is tomorrow's 03:00, not a run for the time missed.
    at_4h = FixedClock(T0_MS + 240 * MINUTE)
    enabled = run_json(capsys, "cron", "enable", "nightly", *db.args, clock=at_4h)
    assert (enabled["enabled"], enabled["next_run_at"]) == (True, "2026-01-02T03:00:00Z")
    assert run(capsys, "cron", "enable", "nobody", *db.args)[0] == ExitCode.NOT_FOUND
    # Run now: due at once; an engine's cron task enqueues the job, then goes on with the schedule.
    code, out, _ = run(capsys, "cron", "run-now", "nightly", *db.args)
    assert code == 0 and "due now" in out
    assert run_json(capsys, "cron", "list", *db.args)[0]["next_run_at"] == "2026-01-01T00:05:00Z"

    async def engine_fires() -> tuple[str | None, list[str]]:
        start = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
        async with open_test_engine([greeter, nightly], storage=layer_of(db), start=start) as engine:
            await trio.sleep(2)
            await engine.wait_idle()
            [cron] = success(await engine.client.crons.list())
            jobs = success(await engine.client.jobs.list(correlation_id="cron:nightly"))
        assert cron.next_run_at is not None
        return cron.last_job_id, [cron.next_run_at.isoformat(), *(j.status for j in jobs)]

    last_job, seen = trio.run(engine_fires, clock=trio.testing.MockClock(autojump_threshold=0))
    assert last_job is not None
    assert seen == ["2026-01-01T03:00:00+00:00", "completed"]


def test_jobs_purge_deletes_old_finished_jobs_only(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    # Finished at 00:00: nothing is older than an hour at 00:05.
    assert run_json(capsys, "jobs", "purge", "--older-than", "1 hour", *db.args)["deleted"] == 0
    later = FixedClock(T0_MS + 3 * 60 * MINUTE)
    code, out, _ = run(capsys, "jobs", "purge", "--older-than", "1 hour", *db.args, clock=later)
    assert (code, out) == (0, "deleted 1 job(s) (completed) that finished more than 1 hour ago\n")
    purged = run_json(
        capsys,
        "jobs",
        "purge",
        "--older-than",
        "1h",
        "--status",
        "failed",
        "--status",
        "cancelled",
        *db.args,
        clock=later,
    )
    assert purged["deleted"] == 2
    left = run_json(capsys, "jobs", "list", *db.args)
    assert sorted(j["status"] for j in left) == ["pending", "pending", "running"]  # never pending or running
    code, _, err = run(capsys, "jobs", "purge", "--older-than", "soon", *db.args)
    assert code == ExitCode.USAGE and "older-than" in err
    code, _, err = run(capsys, "jobs", "purge", "--older-than", "1h", "--status", "pending", *db.args)
    assert code == ExitCode.USAGE and "invalid choice" in err


def test_client_purge_with_tenants_and_idempotency_keys(db: Built) -> None:
    async def scenario() -> None:
        async with open_test_engine([greeter], storage=layer_of(db)) as engine:
            acme = engine.client.for_tenant("acme")
            first = success(await acme.job(greeter).later(Greet("A"), idempotency_key="k1"))
            success(await engine.client.job(greeter).later(Greet("B")))
            await trio.sleep(1)
            await engine.wait_idle()
            bad = failure(await engine.client.jobs.purge(older_than="1s", status="pending"))
            assert isinstance(bad, djobs.ValidationError) and "never purged" in bad.message
            await trio.sleep(3600)
            assert success(await acme.jobs.purge(older_than="30 minutes")) == 1  # acme's only
            assert success(await engine.client.jobs.purge(older_than="30 minutes", status=["completed"])) >= 1
            # The idempotency key went with its job: the same key enqueues anew.
            again = success(await acme.job(greeter).later(Greet("A"), idempotency_key="k1"))
            assert again != first

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


def test_postgres_databases_that_must_not_be_used(capsys: pytest.CaptureFixture[str]) -> None:
    dsn = require_postgres()
    code, out, err = run(capsys, "status", "--db", dsn, "--schema", "djobs_no_such_schema_here")
    assert (code, out) == (ExitCode.DATABASE, "")
    assert "no schema 'djobs_no_such_schema_here'" in err and "Traceback" not in err
    secret = "postgresql://nobody:hunter2@127.0.0.1:1/none?connect_timeout=2"
    code, _, err = run(capsys, "jobs", "list", "--db", secret)
    assert code == ExitCode.DATABASE and "hunter2" not in err and "127.0.0.1:1" in err
    code, _, err = run(capsys, "status", "--db", dsn, "--schema", "Bad-Name")
    assert code == ExitCode.USAGE and "schema" in err


# Bytes that are not UTF-8 in an argument reach Python as lone surrogates ("\udcff"); a key
# may hold "␀", which reads back as a NUL. Neither can name anything stored.
UNSTORABLE_ARGUMENTS = [
    ("jobs", "show", "\udcff"),
    ("jobs", "cancel", "job-\udcff"),
    ("jobs", "retry", "job-\udcff"),
    ("jobs", "list", "--tenant", "\udcff"),
    ("jobs", "list", "--name", "a\udcff"),
    ("instances", "show", "continuous:refresher:\udcff"),
    ("instances", "list", "--tenant", "\udcff"),
    ("cron", "disable", "nightly\udcff"),
]


@pytest.mark.parametrize(
    "argv", UNSTORABLE_ARGUMENTS, ids=[" ".join(a[:2]) + f" {i}" for i, a in enumerate(UNSTORABLE_ARGUMENTS)]
)
def test_an_argument_no_storage_holds_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], db: Built, argv: tuple[str, ...]
) -> None:
    code, out, err = run(capsys, *argv, *db.args)
    assert code == ExitCode.USAGE, err
    assert "lone surrogate" in err and "Traceback" not in err and out == ""


#: Every command that takes an id, and what the client verbs call that id.
ID_COMMANDS = [
    (("jobs", "show"), "job id"),
    (("jobs", "cancel"), "job id"),
    (("jobs", "retry"), "job id"),
    (("dead-letters", "show"), "dead letter id"),
    (("dead-letters", "retry"), "dead letter id"),
    (("dead-letters", "discard"), "dead letter id"),
    (("workflows", "show", "shipping"), "instance id"),
    (("instances", "pause", HERE + "refresher"), "instance id"),
    (("instances", "resume", HERE + "refresher"), "instance id"),
]


@pytest.mark.parametrize(("command", "what"), ID_COMMANDS, ids=[" ".join(c[:2]) for c, _ in ID_COMMANDS])
def test_an_id_the_api_refuses_is_a_usage_error_in_its_words(
    capsys: pytest.CaptureFixture[str], sqlite_db: Built, command: tuple[str, ...], what: str
) -> None:
    """An empty id, or one holding the unit separator, is what the client verbs answer with a
    ValidationError: a usage error (exit 2) in the same words, not a lookup that finds nothing."""
    for bad, says in (
        ("", f"{what} must not be empty"),
        ("a\x1fb", f"{what} 'a\\x1fb' contains a NUL or unit-separator"),
    ):
        code, out, err = run(capsys, *command, bad, *sqlite_db.args)
        assert (code, out) == (ExitCode.USAGE, ""), err
        assert err.startswith(f"djobs: {says}"), err


def test_a_key_whose_picture_reads_back_as_nul_is_not_found(capsys: pytest.CaptureFixture[str], db: Built) -> None:
    # "␀" is how a NUL prints; read back it would be a NUL, which PostgreSQL refuses in a query.
    code, _, err = run(capsys, "instances", "show", "continuous:refresher:user\u24001", *db.args)
    assert code == ExitCode.NOT_FOUND, err
    assert "no instance with key" in err


def test_python_m_djobs_runs_the_command_and_a_closed_pipe_ends_it_quietly(sqlite_db: Built) -> None:
    # `djobs ... | head -1`: the reader leaves after one line; no BrokenPipeError traceback.
    help_text = subprocess.run(
        [sys.executable, "-m", "djobs", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert help_text.returncode == 0 and "usage: djobs" in help_text.stdout
    reader = subprocess.Popen(
        [sys.executable, "-m", "djobs", "status", *sqlite_db.args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout is not None and reader.stderr is not None
    reader.stdout.close()  # the reader is gone before the command writes a line
    err = reader.stderr.read().decode()
    assert reader.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_SCHEMA = re.compile(r"djobs schema \d+")


def _sample_text(line: str) -> str:
    """`line` with what differs from database to database (ids, the schema's number) as placeholders."""
    return _SCHEMA.sub("djobs schema <n>", _UUID.sub("<id>", line))


def console_samples(text: str) -> list[tuple[str, list[str]]]:
    """Each ``$ djobs ...`` command of the page's console blocks with the lines it shows."""
    samples: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                samples.append((line[2:], []))
            elif samples:
                samples[-1][1].append(line)
    return samples


def test_the_guides_console_samples_are_what_the_commands_print(
    capsys: pytest.CaptureFixture[str], sqlite_db: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inspection samples in the CLI guide are real output on the database `build` makes
    (ids aside; ``...`` stands for lines left out), so the guide cannot go stale."""
    monkeypatch.chdir(sqlite_db.tmp)  # the samples say --db jobs.db
    checked = set()
    for command, shown in console_samples(GUIDE.read_text()):
        argv = shlex.split(command)
        if argv[0] != "djobs" or argv[1] not in ("status", "instances", "jobs", "cron"):
            continue  # other samples need other databases (workflows) or change this one
        argv = [_UUID.sub(sqlite_db.failed, arg) for arg in argv[1:]]
        code, out, err = run(capsys, *argv)
        assert code == 0, err
        pattern = "".join(r"(?:.*\n)*?" if line == "..." else re.escape(_sample_text(line)) + r"\n" for line in shown)
        assert re.fullmatch(pattern, _sample_text(out)), f"$ {command}\n{out}"
        checked.add(argv[0])
    assert checked == {"status", "instances", "jobs", "cron"}
