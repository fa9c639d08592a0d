"""PostgreSQL storage: what is particular to it (opening, errors, migrations, LISTEN/NOTIFY, threads),
and every job kind running on it under the virtual clock.

What both storages guarantee alike is in ``tests/conformance/``. Each test
gets a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import msgspec
import psycopg
import pytest
import trio
import trio.testing
from postgres_support import require_postgres, throwaway_schema
from psycopg import sql
from returns.result import Failure, Result, Success

import djobs
from djobs.storage import Checkin, InstanceRecord, NewJob, QueueStorage, SetAlarm
from djobs.storage import _pgstore as pg
from djobs.storage._pgstore import MIGRATIONS, SCHEMA_VERSION, PostgresStorage
from djobs.testing import open_test_engine, success

DSN = require_postgres()
START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def schema() -> Iterator[str]:
    with throwaway_schema(DSN) as name:
        yield name


@pytest.fixture
def layer(schema: str) -> djobs.storage.PostgresLayer:
    return djobs.postgres(DSN, schema=schema)


def admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(DSN, autocommit=True)


def record(key: str) -> InstanceRecord:
    return InstanceRecord(key=key, kind="continuous", name="j", instance_id="a", status="running")


# -- opening and errors ------------------------------------------------------------------


async def open_and_close(layer: djobs.storage.StorageLayer) -> None:
    async with layer.open():
        pass  # pragma: no cover


@pytest.mark.trio
async def test_an_unreachable_server_is_a_storage_error_that_says_so() -> None:
    # Port 1 on localhost: nothing listens there, the connection is refused at once.
    expected = r"cannot reach the PostgreSQL server at postgres@127\.0\.0\.1:1/test \(Connection refused\); is it"
    with pytest.raises(djobs.StorageError, match=expected):
        await open_and_close(djobs.postgres("postgresql://postgres@127.0.0.1:1/test"))


@pytest.mark.trio
async def test_wrong_credentials_are_a_storage_error_that_says_so() -> None:
    bad = psycopg.conninfo.make_conninfo(DSN, user="no_such_djobs_user", password="wrong")
    with pytest.raises(djobs.StorageError, match="refused the credentials") as caught:
        await open_and_close(djobs.postgres(bad))
    assert "wrong" not in caught.value.message  # the password is never repeated


@pytest.mark.trio
async def test_a_missing_database_and_a_bad_dsn_are_storage_errors() -> None:
    missing = psycopg.conninfo.make_conninfo(DSN, dbname="no_such_djobs_database")
    with pytest.raises(djobs.StorageError, match=r"does not exist.*createdb"):
        await open_and_close(djobs.postgres(missing))
    with pytest.raises(djobs.StorageError, match="DSN is not valid"):
        await open_and_close(djobs.postgres("this is = not a dsn"))


@pytest.mark.trio
async def test_open_engine_reports_an_unreachable_server_as_storage_error() -> None:
    with pytest.raises(djobs.StorageError, match="cannot reach"):
        async with djobs.open_engine([], storage=djobs.postgres("postgresql://postgres@127.0.0.1:1/test")):
            pass  # pragma: no cover


def test_bad_options_fail_when_the_layer_is_made() -> None:
    # An empty DSN would connect wherever libpq's defaults point: it is refused, not guessed at.
    for empty in ("", "  \t"):
        with pytest.raises(djobs.ValidationError, match=r"postgres\(dsn=\.\.\.\): expected a libpq connection string"):
            djobs.postgres(empty)
    for bad in ("Upper", "has-dash", "pg_catalog", "", "x" * 64):
        with pytest.raises(djobs.ValidationError, match="schema"):
            djobs.postgres(DSN, schema=bad)
    with pytest.raises(djobs.ValidationError, match="pool_size"):
        djobs.postgres(DSN, pool_size=0)
    with pytest.raises(djobs.ValidationError, match="connect_timeout"):
        djobs.postgres(DSN, connect_timeout="soon")
    # The layer's repr names the server, never the password.
    assert repr(djobs.postgres("postgresql://app:hunter2@db:6432/jobs", schema="app_jobs")) == (
        "postgres('app@db:6432/jobs', schema='app_jobs')"
    )


# -- schema and migrations ---------------------------------------------------------------


@pytest.mark.trio
async def test_a_new_schema_is_created_at_the_current_version(layer: djobs.storage.PostgresLayer, schema: str) -> None:
    async with layer.open() as storage:
        assert isinstance(storage, PostgresStorage) and isinstance(storage, QueueStorage)
        assert await storage.healthcheck()
    with admin() as conn:
        [(version,)] = conn.execute(sql.SQL("SELECT version FROM {}.djobs_schema").format(sql.Identifier(schema)))
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))}
    assert version == SCHEMA_VERSION
    assert {"instances", "alarms", "event_ids", "instance_leases", "jobs", "job_keys", "cron_jobs"} <= tables
    # Nothing lands in the default schema.
    with admin() as conn:
        assert conn.execute("SELECT to_regclass('public.instances')").fetchone() == (None,)


@pytest.mark.trio
async def test_an_older_schema_is_migrated_and_keeps_its_rows(schema: str) -> None:
    with admin() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        conn.execute("CREATE TABLE djobs_schema (version integer NOT NULL, migrated_at timestamptz NOT NULL)")
        conn.execute("INSERT INTO djobs_schema VALUES (1, now())")
        conn.execute(MIGRATIONS[0].encode())
        conn.execute(
            "INSERT INTO instances (key, kind, name, instance_id, status, created_at, updated_at)"
            " VALUES ('continuous:j:old', 'continuous', 'j', 'old', 'running', 1, 1)"
        )
    async with djobs.postgres(DSN, schema=schema).open() as storage:
        loaded = await storage.load("continuous:j:old")
        assert loaded is not None and loaded[0].instance_id == "old"
        assert isinstance(storage, QueueStorage)
        assert await storage.next_job_wakeup(["any"]) is None  # the queue's tables exist now
    with admin() as conn:
        query = sql.SQL("SELECT version FROM {}.djobs_schema").format(sql.Identifier(schema))
        assert conn.execute(query).fetchone() == (SCHEMA_VERSION,)


@pytest.mark.trio
async def test_a_newer_schema_is_refused(layer: djobs.storage.PostgresLayer, schema: str) -> None:
    await open_and_close_quietly(layer)
    with admin() as conn:
        conn.execute(
            sql.SQL("UPDATE {}.djobs_schema SET version = %s").format(sql.Identifier(schema)), (SCHEMA_VERSION + 1,)
        )
    with pytest.raises(djobs.StorageError, match=r"newer than this djobs understands.*upgrade djobs"):
        await open_and_close(layer)


async def open_and_close_quietly(layer: djobs.storage.StorageLayer) -> None:
    async with layer.open():
        pass


@pytest.mark.trio
async def test_a_schema_holding_other_tables_is_refused_and_left_untouched(schema: str) -> None:
    with admin() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE TABLE {}.customers (id int)").format(sql.Identifier(schema)))
    with pytest.raises(djobs.StorageError, match=r"not a djobs schema.*customers"):
        await open_and_close(djobs.postgres(DSN, schema=schema))
    with admin() as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))]
    assert tables == ["customers"]


@pytest.mark.trio
async def test_processes_opening_together_migrate_once(layer: djobs.storage.PostgresLayer, schema: str) -> None:
    opened: list[bool] = []

    async def open_one() -> None:
        async with layer.open() as storage:
            opened.append(await storage.healthcheck())

    # Each open is a connection of its own, as another process's would be; without
    # the advisory lock, two would race to CREATE the same tables and one would fail.
    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(open_one)
    assert opened == [True] * 6


# -- connections and threads -------------------------------------------------------------


@pytest.mark.trio
async def test_a_query_waiting_on_a_lock_does_not_block_the_event_loop(schema: str) -> None:
    # The leases here are judged by the times the test gives (0, then 100 ms): with the server's
    # clock, "b" would find "a"'s 10 ms lease still live whenever the calls run within 10 ms.
    async with djobs.postgres(DSN, schema=schema, lease_clock="engine").open() as storage:
        assert await storage.acquire_instance_lease("k", "a", now_ms=0, ttl_ms=10)
        blocker = admin()
        blocker.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        blocker.execute("BEGIN")
        blocker.execute("SELECT * FROM instance_leases WHERE key = 'k' FOR UPDATE")
        done = trio.Event()

        async def blocked_call() -> None:
            assert await storage.acquire_instance_lease("k", "b", now_ms=100, ttl_ms=10)
            done.set()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(blocked_call)
                # While that call waits in the database, other tasks and other calls go on.
                with trio.fail_after(10):
                    while not await blocked_by(storage, blocker.info.backend_pid):
                        await trio.lowlevel.checkpoint()
                assert not done.is_set()
                assert await storage.load("nothing") is None
                await trio.to_thread.run_sync(blocker.rollback)
                with trio.fail_after(10):
                    await done.wait()
        finally:
            blocker.close()


async def blocked_by(storage: djobs.storage.Storage, blocker_pid: int) -> bool:
    """Whether one of `storage`'s connections waits for a lock `blocker_pid` holds."""
    assert isinstance(storage, PostgresStorage)

    def run(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
        query = "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
        row = conn.execute(query, (blocker_pid,)).fetchone()
        return row is not None and row[0] == 1

    return await storage._run(run, "test")


@pytest.mark.trio
async def test_a_lease_renewal_does_not_wait_for_a_row_another_transaction_locked(schema: str) -> None:
    # Waiting there left every lease after that row (in id order) unrenewed for as long as
    # the lock lasted: with four processes draining a queue, a slow statement elsewhere let
    # the other processes reclaim live rows, and jobs ran twice in processes that never died.
    async with djobs.postgres(DSN, schema=schema, lease_clock="engine").open() as storage:
        await storage.enqueue_jobs([new_job(f"job-{n}") for n in range(5)])
        ids = sorted(job.id for job in await storage.claim_jobs(0, 1000, "a", ["send"], 5))
        blocker = admin()
        blocker.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        blocker.execute("BEGIN")
        blocker.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (ids[1],))
        renewed: list[tuple[str, bool]] = []
        waited = False
        try:
            async with trio.open_nursery() as nursery:

                async def renew() -> None:
                    renewed.extend(await storage.renew_leases("a", 5000, now=500))

                nursery.start_soon(renew)
                try:
                    with trio.fail_after(10):
                        while not renewed and not waited:
                            waited = await blocked_by(storage, blocker.info.backend_pid)
                            await trio.lowlevel.checkpoint()
                finally:
                    # Let a renewal that waits go on, so a failure here is reported, not a hang.
                    await trio.to_thread.run_sync(blocker.rollback)
        finally:
            blocker.close()
        assert not waited, "the renewal waited for the row lock"
        # The locked row is still this worker's: reported as held, extended at the next renewal.
        assert sorted(renewed) == [(job_id, False) for job_id in ids]
        leases = {job_id: (await storage.get_job(job_id)).worker_expires_at for job_id in ids}  # type: ignore[union-attr]
        assert leases == {job_id: 1000 if job_id == ids[1] else 5000 for job_id in ids}
        assert sorted(await storage.renew_leases("a", 6000, now=600)) == [(job_id, False) for job_id in ids]
        assert {(await storage.get_job(job_id)).worker_expires_at for job_id in ids} == {6000}  # type: ignore[union-attr]


def locking_loops(plan: object) -> list[int]:
    """How many times each LockRows node of an ``EXPLAIN (ANALYZE, FORMAT JSON)`` plan ran."""
    loops: list[int] = []
    if isinstance(plan, dict):
        if plan.get("Node Type") == "LockRows":
            loops.append(plan["Actual Loops"])
        for value in plan.values():
            loops += locking_loops(value)
    elif isinstance(plan, list):
        for value in plan:
            loops += locking_loops(value)
    return loops


@pytest.mark.trio
async def test_statements_that_lock_rows_first_lock_each_row_once_whatever_the_plan(schema: str) -> None:
    # A locking subquery under ``IN`` is rescanned once per outer row in a nested loop (the
    # plan a table gets before it has statistics, as in a fresh schema): every row is locked
    # and rechecked again each time, n² steps for n rows, seconds of CPU under contention
    # while the statement holds its locks. Nested loops are forced here; each LockRows must
    # still run once.
    n = 30
    async with djobs.postgres(DSN, schema=schema).open() as storage:
        assert isinstance(storage, PostgresStorage)
        await storage.enqueue_jobs([new_job(f"job-{i:02d}") for i in range(n)])
        held = [(job.id, job.attempt) for job in await storage.claim_jobs(0, 10**13, "a", ["send"], n)]
        keys = [f"continuous:j:{i:02d}" for i in range(n)]
        for key in keys:
            assert await storage.acquire_instance_lease(key, "a", 0, 10**13)
    statements: dict[str, tuple[str, object]] = {
        "renew": (pg._LEASES["database"]["renew"], {"worker": "a", "until": 2000, "now": 1000}),
        "renew (engine clock)": (pg._LEASES["engine"]["renew"], {"worker": "a", "until": 2000, "now": 1000}),
        "start_held": (
            pg._LEASES["database"]["start_held"],
            {
                "ids": [job_id for job_id, _ in held],
                "attempts": [attempt for _, attempt in held],
                "now": 1000,
                "until": 2000,
                "worker": "a",
                "cancel_error": b"{}",
            },
        ),
        "renew_instance_leases": (
            pg._LEASES["database"]["renew_instances"],
            {"keys": keys, "owner": "a", "until": 2000, "now": 1000},
        ),
        "release_instance_leases": (pg._RELEASE_INSTANCE_LEASES, {"keys": keys, "owner": "a"}),
        "release_alarms": (pg._RELEASE_ALARMS, (list(range(1, n + 1)),)),
        "purge_event_ids": (pg._PURGE_EVENT_IDS, (10, n)),
        "purge_job_keys": (pg._PURGE_JOB_KEYS, (10, n)),
        "purge_dead_letters": (pg._PURGE_DEAD_LETTERS, (10, n)),
    }
    with admin() as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        conn.execute(
            "INSERT INTO alarms (key, fire_at, due_at, purpose) SELECT 'continuous:j:' || g, 0, 0, 'run'"
            " FROM generate_series(1, %s) AS g",
            (n,),
        )
        conn.execute(
            "INSERT INTO event_ids (key, event_id, created_at) SELECT 'continuous:j:1', 'e' || g, 0"
            " FROM generate_series(1, %s) AS g",
            (n,),
        )
        conn.execute(
            "INSERT INTO job_keys (tenant_id, name, key, job_id, created_at) SELECT '', 'send', 'k' || g, 'gone', 0"
            " FROM generate_series(1, %s) AS g",
            (n,),
        )
        conn.execute(
            "INSERT INTO dead_letters (id, kind, name, ref, created_at) SELECT 'l' || g, 'job', 'send', 'r', 0"
            " FROM generate_series(1, %s) AS g",
            (n,),
        )
        for name, (statement, args) in statements.items():
            with conn.transaction(force_rollback=True):
                conn.execute("SET LOCAL enable_hashjoin = off")
                conn.execute("SET LOCAL enable_mergejoin = off")
                row = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}".encode(), args).fetchone()
                assert row is not None
                loops = locking_loops(row[0])
                assert loops and set(loops) == {1}, f"{name}: LockRows ran {loops} times"


def scanned_indexes(plan: object) -> list[str]:
    """The indexes an ``EXPLAIN (FORMAT JSON)`` plan scans, in plan order."""
    found: list[str] = []
    if isinstance(plan, dict):
        if "Index Name" in plan:
            found.append(plan["Index Name"])
        for value in plan.values():
            found += scanned_indexes(value)
    elif isinstance(plan, list):
        for value in plan:
            found += scanned_indexes(value)
    return found


@pytest.mark.trio
async def test_a_fenced_write_finds_its_row_by_primary_key_in_a_fresh_schema(schema: str) -> None:
    # Without statistics the planner took the index of running rows by worker for
    # ``WHERE id = ? AND worker_id = ? ...``, walking every version of every row the worker
    # ever held once per write: a settle batch of 200 took seconds, holding its locks.
    async with djobs.postgres(DSN, schema=schema).open() as storage:
        # As in four processes draining a queue: many rows, a few hundred running under the worker.
        await storage.enqueue_jobs([new_job(f"job-{i:05d}") for i in range(20_000)])
        claimed = await storage.claim_jobs(0, 10**13, "a", ["send"], 200)
        job_id, attempt = claimed[0].id, claimed[0].attempt
    fence = (job_id, "a", attempt)
    statements = {
        "completed": (pg._SETTLE_COMPLETED, (b"null", 1, 1, *fence)),
        "final": (pg._SETTLE_FINAL, ("failed", b"{}", 1, 1, *fence)),
        "retry": (pg._SETTLE_RETRY, (b"{}", 1, 1, 1, *fence)),
        "release": (pg._SETTLE_RELEASE, (b"{}", 1, 1, *fence)),
        "again": (pg._LEASES["database"]["again"], (b"{}", 1000, 1, *fence)),
        "progress": (pg._SET_PROGRESS, (50, None, 1, *fence)),
    }
    with admin() as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        for name, (statement, args) in statements.items():
            row = conn.execute(f"EXPLAIN (FORMAT JSON) {statement}".encode(), args).fetchone()
            assert row is not None
            assert scanned_indexes(row[0]) == ["jobs_pkey"], f"{name}: {scanned_indexes(row[0])}"


@pytest.mark.trio
async def test_a_broken_connection_fails_one_call_then_the_pool_reconnects(schema: str) -> None:
    # A name of this test's own: only its pool's connections are cut, not another test's.
    name = f"djobs-test-{schema}"
    layer = djobs.postgres(psycopg.conninfo.make_conninfo(DSN, application_name=name), schema=schema)
    async with layer.open() as storage:
        assert await storage.load("x") is None
        assert isinstance(storage, PostgresStorage)
        with admin() as conn:  # the server restarts, or a proxy drops idle connections
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (name,))
        with pytest.raises(djobs.StorageError, match="connection"):
            await storage.load("x")
        assert not await storage.healthcheck() or await storage.load("x") is None
        assert await storage.load("x") is None


# -- LISTEN / NOTIFY ---------------------------------------------------------------------


@pytest.mark.trio
async def test_an_enqueue_in_another_process_wakes_a_listening_worker(layer: djobs.storage.PostgresLayer) -> None:
    async with layer.open() as here, layer.open() as elsewhere:
        assert isinstance(here, PostgresStorage) and isinstance(elsewhere, PostgresStorage)
        woken: list[int] = []
        arrived = trio.Event()

        def wake(at_ms: int) -> None:
            woken.append(at_ms)
            if at_ms == 222:
                arrived.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(here.watch_enqueues, wake)
            # Our own enqueue is not reported (this process pokes its worker directly);
            # notifications arrive in commit order, so it would come before the other one.
            await here.enqueue_jobs([new_job("own", at=111)])
            await elsewhere.enqueue_jobs([new_job("theirs", at=222), new_job("theirs-2", at=333)])
            with trio.fail_after(10):
                await arrived.wait()
            nursery.cancel_scope.cancel()
        assert woken == [0, 222]  # 0: "look now", once LISTEN is in place


@pytest.mark.trio
async def test_the_listener_reconnects_and_says_look_now(layer: djobs.storage.PostgresLayer) -> None:
    async with layer.open() as here:
        assert isinstance(here, PostgresStorage)
        woken: list[int] = []
        changed = trio.Event()

        def wake(at_ms: int) -> None:
            woken.append(at_ms)
            changed.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(here.watch_enqueues, wake)
            assert woken == [0]
            changed = trio.Event()
            with admin() as conn:  # this test's listener only: parallel runs have their own
                listening = sql.SQL("LISTEN {}").format(sql.Identifier(here.channel)).as_string(conn)
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = %s", (listening,))
            with trio.fail_after(10):
                await changed.wait()
            nursery.cancel_scope.cancel()
        assert woken == [0, 0]


def new_job(job_id: str, *, at: int = 0, name: str = "send") -> NewJob:
    return NewJob(id=job_id, name=name, params=b"{}", max_attempts=3, scheduled_for=at, created_at=0)


class Tick(msgspec.Struct):
    n: int = 0


@pytest.mark.trio
async def test_a_worker_sleeping_until_its_poll_runs_a_job_enqueued_elsewhere_at_once(
    layer: djobs.storage.PostgresLayer,
) -> None:
    # Wall-clock time: a wake-up that arrives over a socket cannot race an autojumping clock.
    ran = trio.Event()

    def body(params: Tick, ctx: djobs.JobContext) -> None:
        ran.set()

    job = djobs.Job.make("tick", params=Tick, execute=body)
    sleepy = djobs.WorkerOptions(poll_interval="1 hour")
    async with djobs.open_engine([job], storage=layer, worker=sleepy) as worker_engine:
        await worker_engine.wait_idle()
        async with djobs.open_engine([job], storage=layer, worker=None) as client_only:
            success(await client_only.client.job(job).later(Tick(1)))
            with trio.fail_after(5):  # far less than the hour the worker would otherwise sleep
                await ran.wait()


# -- every job kind on PostgreSQL, under the virtual clock ---------------------------------


class Tokens(msgspec.Struct):
    access_token: str
    refresh_token: str


async def refresh(ctx: djobs.ContinuousContext[Tokens]) -> None:
    ctx.set_state(msgspec.structs.replace(ctx.state, access_token=f"at-{ctx.run_count}"))


token_refresher = djobs.Continuous.make(
    "tokenRefresher", state=Tokens, schedule=djobs.every("30 minutes"), execute=refresh
)


@pytest.mark.trio
async def test_continuous_a_day_of_every_30_minutes_is_49_runs(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.PostgresLayer
) -> None:
    async with open_test_engine([token_refresher], storage=layer) as engine:
        client = engine.client.continuous(token_refresher)
        success(await client.start(id="user-123", input=Tokens("", "rt")))
        await trio.sleep(24 * 3600 + 1)
        assert engine.tracker.count("job.executed") == 49
        status = success(await client.status("user-123"))
        assert (status.status, status.run_count) == ("running", 49)
        # Database time is not virtual time: 49 runs' worth of queries cost no virtual seconds.
        assert status.next_run_at == datetime(2026, 1, 2, 0, 30, tzinfo=UTC)
    # A restart continues from what is stored.
    async with open_test_engine([token_refresher], storage=layer, start=START + timedelta(days=1, seconds=1)) as again:
        await trio.sleep(30 * 60)
        state = success(await again.client.continuous(token_refresher).get_state("user-123")).state
        assert state == Tokens("at-50", "rt")


class Click(msgspec.Struct):
    n: int


class Clicks(msgspec.Struct):
    seen: list[int] = []


@pytest.mark.trio
async def test_debounce_a_burst_flushes_by_count_then_by_time(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.PostgresLayer
) -> None:
    flushed: list[tuple[list[int], str, datetime]] = []

    def collect(ctx: djobs.DebounceEventContext[Click, Clicks]) -> Clicks:
        return Clicks([*(ctx.state.seen if ctx.state else []), ctx.event.n])

    def flush(ctx: djobs.DebounceContext[Clicks]) -> None:
        flushed.append((ctx.state.seen, ctx.flush_reason, ctx.now()))

    clicks = djobs.Debounce.make(
        "clicks", event=Click, state=Clicks, on_event=collect, execute=flush, flush_after="5 seconds", max_events=20
    )
    async with open_test_engine([clicks], storage=layer) as engine:
        client = engine.client.debounce(clicks)
        for n in range(50):
            success(await client.add(id="page", event=Click(n)))
        await engine.wait_idle()
        assert [(len(seen), reason) for seen, reason, _ in flushed] == [(20, "max_events"), (20, "max_events")]
        await trio.sleep(5.1)
        assert [(len(seen), reason) for seen, reason, _ in flushed][2:] == [(10, "flush_after")]
        assert flushed[2][2] == START + timedelta(seconds=5)
        assert [n for seen, _, _ in flushed for n in seen] == list(range(50))


class Ping(msgspec.Struct, tag=True):
    pass


class Count(msgspec.Struct):
    pings: int = 0
    checks: int = 0


@pytest.mark.trio
async def test_task_schedules_itself_and_terminates(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.PostgresLayer
) -> None:
    checks: list[datetime] = []

    def on_event(event: Ping, ctx: djobs.TaskEventContext[Count]) -> None:
        ctx.set_state(Count(pings=(ctx.state.pings if ctx.state else 0) + 1))
        ctx.schedule("10 minutes")

    def execute(ctx: djobs.TaskContext[Count]) -> None:
        assert ctx.state is not None
        checks.append(ctx.now())
        if len(checks) == 3:
            ctx.terminate(reason="done")
        else:
            ctx.schedule(timedelta(hours=1))

    task = djobs.Task.make("checker", state=Count, event=Ping, on_event=on_event, execute=execute)
    async with open_test_engine([task], storage=layer) as engine:
        client = engine.client.task(task)
        sent = success(await client.send(id="t", event=Ping()))
        assert sent.scheduled_at == START + timedelta(minutes=10)
        await trio.sleep(3 * 3600)
        assert checks == [START + timedelta(minutes=10), START + timedelta(minutes=70), START + timedelta(minutes=130)]
        assert success(await client.status("t")).status == "not_found"  # terminated: purged


class Order(msgspec.Struct):
    order_id: str
    fail_until: int = 0


class Receipt(msgspec.Struct):
    order_id: str
    attempt: int


@pytest.mark.trio
async def test_queued_jobs_run_at_their_time_by_priority_with_retries(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.PostgresLayer
) -> None:
    calls: list[tuple[str, int, datetime]] = []

    async def charge(params: Order, ctx: djobs.JobContext) -> Result[Receipt, djobs.ExecutionError]:
        calls.append((params.order_id, ctx.attempt, ctx.now()))
        await ctx.update_progress(50, "charging")
        if ctx.attempt <= params.fail_until:
            return Failure(djobs.ExecutionError(f"try {ctx.attempt} failed"))
        return Success(Receipt(params.order_id, ctx.attempt))

    job = djobs.Job.make(
        "charge",
        params=Order,
        result=Receipt,
        execute=charge,
        retry=djobs.Retry(max_attempts=3, delay=djobs.Backoff.fixed("10 seconds")),
    )
    worker = djobs.WorkerOptions(max_concurrency=1, poll_interval=None)
    async with open_test_engine([job], storage=layer, worker=worker) as engine:
        client = engine.client.job(job)
        later = success(await client.later(Order("in-10-min"), delay="10 minutes"))
        # Due together a minute from now, so that all three wait when the worker claims.
        for name, priority in [("low", -1), ("normal", 0), ("urgent", 10)]:
            success(await client.later(Order(name), priority=priority, delay="1 minute"))
        flaky = success(await client.later(Order("flaky", fail_until=2), delay="1 hour"))
        await trio.sleep(2 * 3600)
        assert [(oid, t - START) for oid, _, t in calls] == [
            ("urgent", timedelta(minutes=1)),
            ("normal", timedelta(minutes=1)),
            ("low", timedelta(minutes=1)),
            ("in-10-min", timedelta(minutes=10)),
            ("flaky", timedelta(hours=1)),
            ("flaky", timedelta(hours=1, seconds=10)),
            ("flaky", timedelta(hours=1, seconds=20)),
        ]
        info = success(await engine.client.jobs.status(flaky))
        assert (info.status, info.attempts, info.result) == ("completed", 3, Receipt("flaky", 3))
        assert success(await engine.client.jobs.status(later)).progress == 50
        # now() runs in the caller's task, on the same rows.
        run = success(await client.now(Order("right-now")))
        assert run.ok and success(await engine.client.jobs.status(run.job_id)).status == "completed"


def recording_cron(name: str, expression: str) -> tuple[djobs.CronJob, list[datetime]]:
    """A cron job whose body records each fire time it ran for."""
    fires: list[datetime] = []

    def tick(fire: djobs.CronFire, ctx: djobs.JobContext) -> None:
        fires.append(fire.scheduled_at)

    return djobs.CronJob.make(name, schedule=djobs.cron(expression), execute=tick), fires


@pytest.mark.trio
async def test_cron_every_15_minutes_for_a_day_is_96_runs(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.PostgresLayer
) -> None:
    quarterly, fires = recording_cron("quarterHour", "*/15 * * * *")
    async with open_test_engine([quarterly], storage=layer) as engine:
        await trio.sleep(24 * 3600 + 60)
        assert fires == [START + timedelta(minutes=15 * n) for n in range(1, 97)]
        [info] = success(await engine.client.crons.list())
        assert info.next_run_at == START + timedelta(days=1, minutes=15)


# -- several engines on one database, as several processes would be -----------------------


@pytest.mark.trio
async def test_two_engines_never_run_one_instance_at_once(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.PostgresLayer
) -> None:
    running = 0
    overlaps = 0
    flushed: list[list[int]] = []

    async def collect(ctx: djobs.DebounceEventContext[Click, Clicks]) -> Clicks:
        nonlocal running, overlaps
        running += 1
        overlaps += running > 1
        await trio.sleep(0.01)  # a reducer that awaits: a window for another engine to barge in
        running -= 1
        return Clicks([*(ctx.state.seen if ctx.state else []), ctx.event.n])

    async def flush(ctx: djobs.DebounceContext[Clicks]) -> None:
        nonlocal running, overlaps
        running += 1
        overlaps += running > 1
        await trio.sleep(0.5)
        flushed.append(ctx.state.seen)
        running -= 1

    clicks = djobs.Debounce.make(
        "clicks", event=Click, state=Clicks, on_event=collect, execute=flush, flush_after="1 second", max_events=25
    )
    async with open_test_engine([clicks], storage=layer) as a, open_test_engine([clicks], storage=layer) as b:

        async def send(engine: djobs.Engine, n: int) -> None:
            success(await engine.client.debounce(clicks).add(id="page", event=Click(n)))

        async with trio.open_nursery() as nursery:
            for n in range(100):
                nursery.start_soon(send, a if n % 2 else b, n)
        await trio.sleep(5)
        await a.wait_idle()
        await b.wait_idle()
    assert overlaps == 0
    assert sorted(n for batch in flushed for n in batch) == list(range(100))


@pytest.mark.trio
async def test_two_engines_fire_each_cron_time_once_and_share_the_queue(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.PostgresLayer
) -> None:
    every_5, fires = recording_cron("every5", "*/5 * * * *")
    worker = djobs.WorkerOptions(poll_interval="5 minutes")
    async with (
        open_test_engine([every_5], storage=layer, worker=worker) as one,
        open_test_engine([every_5], storage=layer, worker=worker) as two,
    ):
        await trio.sleep(6 * 3600 + 30)
        assert len(fires) == 72
        assert Counter(fires).most_common(1)[0][1] == 1  # no fire time twice
        assert one.tracker.count("cron.fired") + two.tracker.count("cron.fired") == 72
        runs = success(await one.client.jobs.list(limit=1000))
        assert len(runs) == 72 and {r.status for r in runs} == {"completed"}


@pytest.mark.trio
async def test_an_alarm_set_in_one_process_fires_in_another(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.PostgresLayer
) -> None:
    async with layer.open() as storage:
        key = "continuous:tokenRefresher:from-elsewhere"
        row = InstanceRecord(
            key=key,
            kind="continuous",
            name="tokenRefresher",
            instance_id="from-elsewhere",
            status="running",
            state=msgspec.json.encode(Tokens("", "rt")),
            created_at=1,
            updated_at=1,
        )
        await storage.commit(Checkin(key=key, record=row, alarm=SetAlarm(1, "run")))
    async with open_test_engine([token_refresher], storage=layer, alarm_poll_interval="1 second") as engine:
        await trio.sleep(2)
        state = success(await engine.client.continuous(token_refresher).get_state("from-elsewhere")).state
        assert state.access_token == "at-1"


class Hold(msgspec.Struct):
    n: int


class LockWatch:
    """Holds a row lock in a transaction of its own, and lets it go at once (from a thread,
    in real time) if any statement waits for it: a waiting query stops the virtual clock,
    so without this a test of "nothing waits" would hang instead of failing."""

    def __init__(self, schema: str, job_id: str) -> None:
        self.conn = admin()
        self.conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        self.conn.execute("BEGIN")
        self.conn.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
        self.waiters: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        with admin() as probe:
            query = "SELECT query FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
            while not self._stop.wait(0.01):
                waiting = [str(row[0]) for row in probe.execute(query, (self.conn.info.backend_pid,))]
                if waiting:
                    self.waiters = waiting
                    self.conn.rollback()
                    return

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        self.conn.rollback()
        self.conn.close()


@pytest.mark.trio
async def test_two_engines_a_row_locked_elsewhere_costs_its_worker_no_other_lease(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.PostgresLayer, schema: str
) -> None:
    # Engine one runs five jobs; another transaction holds one of their rows locked through
    # a renewal. One's renewal goes on without that row, so engine two reclaims nothing and
    # every job runs once; the locked row is renewed once the lock is gone.
    release, all_running = trio.Event(), trio.Event()
    runs: list[tuple[int, int]] = []

    async def hold(params: Hold, ctx: djobs.JobContext) -> None:
        runs.append((params.n, ctx.attempt))
        if len(runs) == 5:
            all_running.set()
        await release.wait()

    job = djobs.Job.make("hold", params=Hold, execute=hold)
    worker = djobs.WorkerOptions(lock_timeout="30 seconds", poll_interval="1 second")
    async with open_test_engine([job], storage=layer, worker=worker) as one:
        ids = [success(await one.client.job(job).later(Hold(n))) for n in range(5)]
        await all_running.wait()
        async with open_test_engine([job], storage=layer, worker=worker) as two:
            lock = LockWatch(schema, sorted(ids)[1])
            try:
                await trio.sleep(15)  # one renewal (at 10 s) while the row is locked
            finally:
                lock.release()  # on the Trio thread: no virtual time passes until the lock is gone
            assert not lock.waiters, f"a statement waited for the lock: {lock.waiters}"
            await trio.sleep(60)  # two leases more: renewed, the locked row too
            release.set()
            await one.wait_idle()
            assert two.tracker.count("job.lease_expired") == 0
        assert one.tracker.count("job.lease_expired") == 0
        assert sorted(runs) == [(n, 1) for n in range(5)]
        assert {info.status for info in success(await one.client.jobs.list(limit=10))} == {"completed"}
