"""Concurrency and rate limits (``Job.make(concurrency=, rate_limit=, limit_key=)``) on every storage.

Times are virtual (``MockClock``) except in the process tests
(``test_limit_processes.py``). What a test counts is what the bodies saw: how
many ran at once, and when each started.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import hypothesis
import msgspec
import pytest
import trio
import trio.testing
from hypothesis import strategies as st
from postgres_support import postgres_dsn, throwaway_schema

import djobs
from djobs.storage import StorageLayer
from djobs.testing import failure, open_test_engine, success


class Work(msgspec.Struct):
    n: int
    account: str = "a"
    seconds: float = 1.0


#: Where the test engine's virtual clock starts.
START = datetime(2026, 1, 1, tzinfo=UTC)


def clock_s(ctx: djobs.JobContext) -> float:
    """Seconds since `START` on the engine's clock, which the limits are kept by (a virtual
    clock reaches a due time a microsecond of Trio time before Trio's clock does)."""
    return (ctx.now() - START).total_seconds()


class Bodies:
    """What the bodies saw: who runs now, the most at once (per key), and each start's time."""

    def __init__(self) -> None:
        self.running: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.starts: list[tuple[float, int, str, int]] = []  # (`clock_s`, n, key, attempt)
        self.done: list[int] = []
        self._watch: tuple[set[int], trio.Event] | None = None

    async def all_done(self, numbers: set[int]) -> None:
        """Return once every job in `numbers` has completed."""
        self._watch = (numbers, trio.Event())
        if not numbers <= set(self.done):
            await self._watch[1].wait()

    def job(
        self, name: str = "work", *, key: Callable[[Work], str] | None = None, fail_first: bool = False, **limits: Any
    ) -> djobs.Job[Work, None]:
        async def work(params: Work, ctx: djobs.JobContext) -> None:
            who = key(params) if key is not None else name
            self.starts.append((clock_s(ctx), params.n, who, ctx.attempt))
            self.running[who] += 1
            self.running["*"] += 1
            self.most[who] = max(self.most[who], self.running[who])
            self.most["*"] = max(self.most["*"], self.running["*"])
            try:
                await trio.sleep(params.seconds)
            finally:
                self.running[who] -= 1
                self.running["*"] -= 1
            if fail_first and ctx.attempt == 1:
                raise RuntimeError("first attempts fail")
            self.done.append(params.n)
            if self._watch is not None and self._watch[0] <= set(self.done):
                self._watch[1].set()

        retry = djobs.Retry(max_attempts=2, delay=djobs.Backoff.fixed("1 second")) if fail_first else None
        return djobs.Job.make(name, params=Work, execute=work, limit_key=key, retry=retry, **limits)

    def most_in_window(self, seconds: float, key: str | None = None) -> int:
        """The most starts (of `key`, or all) in any window of `seconds` (half-open: [t, t + seconds))."""
        times = sorted(t for t, _, who, _ in self.starts if key is None or who == key)
        best, first = 0, 0
        for last, t in enumerate(times):
            while times[first] <= t - seconds:
                first += 1
            best = max(best, last - first + 1)
        return best


STORAGES = ["memory", "sqlite", "postgres"]


async def drain(engine: djobs.Engine[Any]) -> None:
    """Return once no job is pending or running (limited jobs may wait past `wait_idle`,
    which returns once nothing is due *now*)."""
    while True:
        await engine.wait_idle()
        pending = success(await engine.client.jobs.list(status="pending", limit=1))
        running = success(await engine.client.jobs.list(status="running", limit=1))
        if not pending and not running:
            return
        await trio.sleep(0.25)  # virtual time: the rows are in storage, there is no event to wait on


@asynccontextmanager
async def storage_for(kind: str, tmp_path: Path) -> AsyncIterator[StorageLayer]:
    if kind == "memory":
        yield djobs.memory()
    elif kind == "sqlite":
        yield djobs.sqlite(tmp_path / "limits.db")
    else:
        dsn = postgres_dsn()
        if dsn is None:
            pytest.skip("PostgreSQL tests skipped: DJOBS_TEST_POSTGRES_DSN is not set")
        with throwaway_schema(dsn) as schema:
            yield djobs.postgres(dsn, schema=schema)


# -- definitions and enqueues -------------------------------------------------------------


async def _noop(params: Work, ctx: djobs.JobContext) -> None:
    return None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency": 0}, "concurrency must be an int from 1 to 2147483647"),
        ({"concurrency": True}, "concurrency must be an int from 1 to 2147483647"),
        ({"concurrency": "3"}, "concurrency must be an int from 1 to 2147483647"),
        ({"concurrency": 2**31}, "concurrency must be an int from 1 to 2147483647"),
        ({"concurrency": 10**20}, "concurrency must be an int from 1 to 2147483647"),
        ({"rate_limit": "3000000000/second"}, "RateLimit(count=3000000000): expected an int from 1 to 2147483647"),
        ({"rate_limit": "5/fortnight"}, "expected 'N/second', 'N/minute', 'N/hour' or 'N/day'"),
        ({"rate_limit": "0/minute"}, "RateLimit(count=0)"),
        ({"rate_limit": "fast"}, "expected 'N/second'"),
        ({"rate_limit": 5}, "rate_limit must be"),
        ({"rate_limit": djobs.RateLimit(1, "1 second"), "limit_key": "account"}, "limit_key must be a function"),
        ({"limit_key": lambda p: p.account}, "limit_key needs concurrency= or rate_limit="),
    ],
)
def test_bad_limits_are_refused_when_the_job_is_defined(options: dict[str, Any], message: str) -> None:
    with pytest.raises(djobs.ValidationError, match=None) as raised:
        djobs.Job.make("work", params=Work, execute=_noop, **options)
    assert message in raised.value.message


def test_rate_limits_parse_from_text_or_a_typed_value() -> None:
    assert djobs.RateLimit.parse("100/minute") == djobs.RateLimit(100, timedelta(minutes=1))
    assert djobs.RateLimit.parse(" 5 / Second ").period_ms == 1000
    assert djobs.RateLimit.parse("3/hour").period_ms == 3_600_000
    assert djobs.RateLimit.parse("1/day").period_ms == 86_400_000
    assert djobs.RateLimit(7, "10 seconds").period_ms == 10_000
    for bad in ("5/fortnight", "-1/minute", "5", "/minute", "1.5/second"):
        with pytest.raises(djobs.ValidationError):
            djobs.RateLimit.parse(bad)
    assert djobs.RateLimit(2**31 - 1, "1 second").count == 2**31 - 1
    for count in (2**31, 2**63, 10**20):
        with pytest.raises(djobs.ValidationError, match="expected an int from 1 to 2147483647"):
            djobs.RateLimit(count, "1 second")
    with pytest.raises(djobs.ValidationError, match="from 1 millisecond to 1 day"):
        djobs.RateLimit(1, "2 days")
    with pytest.raises(djobs.ValidationError, match="from 1 millisecond to 1 day"):
        djobs.RateLimit(1, 0)


@pytest.mark.trio
async def test_a_key_function_that_fails_fails_that_enqueue_only(autojump_clock: trio.testing.MockClock) -> None:
    bodies = Bodies()

    def key(params: Work) -> str:
        if params.n == 1:
            raise KeyError("no account")
        if params.n == 2:
            return 42  # type: ignore[return-value]
        if params.n == 3:
            return "bad\x00key"
        if params.n == 4:
            return ""
        return params.account

    job = bodies.job(key=key, concurrency=1)
    async with open_test_engine([job]) as engine:
        client = engine.client.job(job)
        for n, why in [(1, "raised KeyError"), (2, "must be a str"), (3, "NUL"), (4, "must not be empty")]:
            error = failure(await client.later(Work(n)))
            assert isinstance(error, djobs.ValidationError), error
            assert why in error.message
        assert failure(await client.later(Work(1))).message.startswith("job 'work': its limit_key function raised")
        error = failure(await client.later_many([Work(5), Work(1)]))
        assert isinstance(error, djobs.ValidationError)
        # The batch names the params and the job once: no "job 'work': job 'work': ...".
        assert error.message.startswith("params[1] of job 'work': its limit_key function raised KeyError")
        assert error.message.count("'work'") == 1
        assert success(await engine.client.jobs.list()) == []  # nothing stored, not even params[0]
        success(await client.later(Work(5, seconds=0)))
        await drain(engine)
    assert bodies.done == [5]


@pytest.mark.trio
async def test_the_key_function_is_called_when_a_row_is_enqueued_only(autojump_clock: trio.testing.MockClock) -> None:
    called: list[int] = []

    def key(params: Work) -> str:
        called.append(params.n)
        if params.n == 1:
            raise KeyError("no account")
        return params.account

    job = djobs.Job.make("keyed", params=Work, execute=_noop, concurrency=1, limit_key=key)
    async with open_test_engine([job]) as engine:
        client = engine.client.job(job)
        # now and batch run in the caller's task, unlimited: no key, so the key function is not called.
        assert success(await client.now(Work(1))).status == "completed"
        assert [run.status for run in success(await client.batch([Work(1)]))] == ["completed"]
        assert called == []
        assert isinstance(failure(await client.later(Work(1))), djobs.ValidationError)
        success(await client.later(Work(2)))
        await drain(engine)
        assert success(await engine.client.jobs.list(status="completed", name="keyed"))
    assert called == [1, 2]  # once per enqueue; never when the row runs


# -- concurrency ---------------------------------------------------------------------------


@pytest.mark.trio
@pytest.mark.parametrize("kind", STORAGES)
async def test_never_more_than_n_run_at_once(kind: str, tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    bodies = Bodies()
    job = bodies.job(concurrency=3)
    async with storage_for(kind, tmp_path) as storage, open_test_engine([job], storage=storage) as engine:
        ids = success(await engine.client.job(job).later_many([Work(n, seconds=1 + n % 3) for n in range(20)]))
        await drain(engine)
    assert sorted(bodies.done) == list(range(20)) and len(ids) == 20
    assert bodies.most["work"] == 3  # the limit, reached and never passed


@pytest.mark.trio
@pytest.mark.parametrize("kind", STORAGES)
async def test_a_limit_per_key(kind: str, tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    bodies = Bodies()
    job = bodies.job(key=lambda p: p.account, concurrency=2)
    async with storage_for(kind, tmp_path) as storage, open_test_engine([job], storage=storage) as engine:
        work = [Work(n, account="abc"[n % 3], seconds=2) for n in range(18)]
        success(await engine.client.job(job).later_many(work))
        started = trio.current_time()
        await drain(engine)
        took = trio.current_time() - started
    assert sorted(bodies.done) == list(range(18))
    assert [bodies.most[k] for k in "abc"] == [2, 2, 2]
    assert bodies.most["*"] == 6  # three keys, two each, at once
    assert took == pytest.approx(6, abs=0.1)  # 6 per key, 2 at a time, 2 s each: no waiting between


@pytest.mark.trio
async def test_waiting_jobs_start_as_a_slot_frees_without_polling(autojump_clock: trio.testing.MockClock) -> None:
    """With no poll at all, each waiting job starts the moment the one before it ends,
    and the worker's claims do not grow with the time waited."""
    bodies = Bodies()
    job = bodies.job(concurrency=1)
    worker = djobs.WorkerOptions(poll_interval=None)
    async with open_test_engine([job], worker=worker) as engine:
        storage = engine.storage
        claims = 0
        real_claim = storage.claim_jobs  # type: ignore[attr-defined]

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal claims
            claims += 1
            return await real_claim(*args, **kwargs)

        storage.claim_jobs = counted  # type: ignore[attr-defined]
        begin = (engine.clock.now_ms() - engine.clock.start_ms) / 1000
        success(await engine.client.job(job).later_many([Work(n, seconds=600) for n in range(4)]))
        await drain(engine)
    assert [round(t - begin, 3) for t, *_ in bodies.starts] == [0, 600, 1200, 1800]
    # A few per start (a poke that lands while the loop reads adds a look), not one per
    # poll or per millisecond of the 1,800 s waited.
    assert claims <= 16


# -- rate limits ---------------------------------------------------------------------------


@pytest.mark.trio
@pytest.mark.parametrize("kind", STORAGES)
async def test_a_rate_limit_holds_over_every_window(
    kind: str, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    bodies = Bodies()
    job = bodies.job(rate_limit="5/minute")
    worker = djobs.WorkerOptions(poll_interval=None)  # the window's end wakes the worker, not a poll
    async with storage_for(kind, tmp_path) as storage, open_test_engine([job], storage=storage, worker=worker) as e:
        begin = (e.clock.now_ms() - e.clock.start_ms) / 1000
        success(await e.client.job(job).later_many([Work(n, seconds=0.5) for n in range(12)]))
        await drain(e)
    assert sorted(bodies.done) == list(range(12))
    assert bodies.most_in_window(60) == 5
    starts = sorted(round(t - begin, 3) for t, *_ in bodies.starts)
    assert starts == [0] * 5 + [60] * 5 + [120] * 2  # each as soon as the window lets it


@pytest.mark.trio
async def test_rate_limited_retries_count_every_attempt(autojump_clock: trio.testing.MockClock) -> None:
    bodies = Bodies()
    job = bodies.job(rate_limit=djobs.RateLimit(2, "10 seconds"), fail_first=True)
    async with open_test_engine([job]) as engine:
        success(await engine.client.job(job).later_many([Work(n, seconds=0) for n in range(4)]))
        await drain(engine)
    assert sorted(bodies.done) == [0, 1, 2, 3]
    assert sorted((n, attempt) for _, n, _, attempt in bodies.starts) == [(n, a) for n in range(4) for a in (1, 2)]
    assert bodies.most_in_window(10) == 2


@pytest.mark.trio
async def test_a_rate_limit_per_key_with_a_concurrency_limit(autojump_clock: trio.testing.MockClock) -> None:
    bodies = Bodies()
    job = bodies.job(key=lambda p: p.account, rate_limit="3/second", concurrency=2)
    async with open_test_engine([job]) as engine:
        work = [Work(n, account="ab"[n % 2], seconds=0.7) for n in range(20)]
        success(await engine.client.job(job).later_many(work))
        await drain(engine)
    assert sorted(bodies.done) == list(range(20))
    for key in "ab":
        assert bodies.most[key] == 2
        assert bodies.most_in_window(1, key) <= 3


# -- priorities and limits together (item 7) ----------------------------------------------


@pytest.mark.trio
@pytest.mark.parametrize("kind", STORAGES)
async def test_a_limited_backlog_never_holds_up_another_name_or_key(
    kind: str, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    bodies = Bodies()
    limited = bodies.job("limited", key=lambda p: p.account, concurrency=1)
    rated = bodies.job("rated", rate_limit="1/hour")
    free = bodies.job("free")
    worker = djobs.WorkerOptions(max_concurrency=4, batch_size=4)
    async with (
        storage_for(kind, tmp_path) as storage,
        open_test_engine([limited, rated, free], storage=storage, worker=worker) as engine,
    ):
        begin = trio.current_time()
        client = engine.client
        # A high-priority backlog of one key and of a rate-limited job, enqueued first.
        backlog = [Work(n, account="big", seconds=60) for n in range(30)]
        success(await client.job(limited).later_many(backlog, priority=9))
        success(await client.job(rated).later_many([Work(100 + n, seconds=1) for n in range(30)], priority=9))
        success(await client.job(limited).later(Work(200, account="small", seconds=1), priority=1))
        success(await client.job(free).later_many([Work(300 + n, seconds=1) for n in range(10)]))
        with trio.move_on_after(30):
            await bodies.all_done({200, *range(300, 310)})
        waited = trio.current_time() - begin
    assert waited < 30, "the other key's job and the other name's jobs ran behind the backlog"
    assert bodies.most["big"] == 1


# -- every job runs exactly once per attempt, whatever the limits ---------------------------


class _Spec(msgspec.Struct, frozen=True):
    concurrency: int | None
    rate: tuple[int, int] | None  # (count, seconds)
    keyed: bool


_specs = st.builds(
    _Spec,
    concurrency=st.one_of(st.none(), st.integers(1, 3)),
    rate=st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 20))),
    keyed=st.booleans(),
)
_jobs = st.lists(
    st.tuples(
        st.integers(0, 2),  # which definition
        st.sampled_from("xyz"),  # account
        st.integers(-2, 2),  # priority
        st.integers(0, 3),  # seconds the body takes
        st.booleans(),  # whether its first attempt fails
        st.integers(0, 5),  # delay in seconds
    ),
    min_size=1,
    max_size=25,
)


async def _run_mix(storage: StorageLayer, specs: list[_Spec], jobs: list[tuple[int, str, int, int, bool, int]]) -> None:
    running: Counter[str] = Counter()
    starts: Counter[tuple[int, int]] = Counter()
    start_times: dict[str, list[float]] = {}
    definitions = []
    for index, spec in enumerate(specs):
        name = f"mix{index}"

        def body(spec: _Spec = spec, name: str = name) -> Callable[[Work, djobs.JobContext], Any]:
            async def work(params: Work, ctx: djobs.JobContext) -> None:
                who = f"{name}:{params.account}" if spec.keyed else name
                starts[params.n, ctx.attempt] += 1
                start_times.setdefault(who, []).append(clock_s(ctx))
                running[who] += 1
                try:
                    assert spec.concurrency is None or running[who] <= spec.concurrency, (who, running[who])
                    await trio.sleep(params.seconds)
                finally:
                    running[who] -= 1
                if params.account.isupper() and ctx.attempt == 1:
                    raise RuntimeError("first attempt fails")

            return work

        rate = None if spec.rate is None else djobs.RateLimit(spec.rate[0], timedelta(seconds=spec.rate[1]))
        if spec.concurrency is None and rate is None:
            key = None
        else:
            key = (lambda p: p.account.lower()) if spec.keyed else None
        definitions.append(
            djobs.Job.make(
                name,
                params=Work,
                execute=body(),
                concurrency=spec.concurrency,
                rate_limit=rate,
                limit_key=key,
                retry=djobs.Retry(max_attempts=2, delay=djobs.Backoff.fixed("1 second")),
            )
        )
    expected: Counter[tuple[int, int]] = Counter()
    worker = djobs.WorkerOptions(max_concurrency=4, batch_size=4, poll_interval=None)
    async with open_test_engine(definitions, storage=storage, worker=worker) as engine:
        for n, (which, account, priority, seconds, fails, delay) in enumerate(jobs):
            job = definitions[which % len(definitions)]
            params = Work(n, account=account.upper() if fails else account, seconds=seconds)
            success(await engine.client.job(job).later(params, priority=priority, delay=timedelta(seconds=delay)))
            expected[n, 1] += 1
            if fails:
                expected[n, 2] += 1
        with trio.fail_after(24 * 3600):
            await drain(engine)
        statuses = Counter(info.status for info in success(await engine.client.jobs.list(limit=1000)))
    assert starts == expected  # every attempt ran, and ran once
    assert statuses == Counter({"completed": len(jobs)})
    for index, spec in enumerate(specs):
        if spec.rate is not None:
            count, seconds = spec.rate
            for who, times in start_times.items():
                if who.split(":")[0] == f"mix{index}":
                    times.sort()
                    assert all(b - a >= seconds - 1e-9 for a, b in zip(times, times[count:], strict=False)), who


@pytest.mark.parametrize("kind", STORAGES)
@hypothesis.settings(max_examples=40, deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(specs=st.lists(_specs, min_size=1, max_size=3), jobs=_jobs)
# Once found: the virtual clock floored 1.0019999999999998 s to 1001 ms, so a retry and a
# delayed job of a 1/second job started 0.999 s apart.
@hypothesis.example(
    specs=[_Spec(concurrency=None, rate=None, keyed=False), _Spec(concurrency=None, rate=(1, 1), keyed=False)],
    jobs=[
        (0, "x", 0, 0, False, 0),
        (0, "x", 0, 0, False, 0),
        (0, "x", 0, 1, False, 0),
        (1, "x", 0, 0, True, 0),
        (0, "x", 0, 0, False, 1),
        (1, "x", 0, 0, False, 1),
    ],
)
def test_whatever_the_limits_every_attempt_runs_exactly_once(
    kind: str, tmp_path_factory: pytest.TempPathFactory, specs: list[_Spec], jobs: list[Any]
) -> None:
    if kind == "postgres" and postgres_dsn() is None:
        pytest.skip("PostgreSQL tests skipped: DJOBS_TEST_POSTGRES_DSN is not set")

    async def main() -> None:
        async with storage_for(kind, tmp_path_factory.mktemp("mix")) as storage:
            await _run_mix(storage, specs, jobs)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.trio
@pytest.mark.parametrize("kind", STORAGES)
async def test_a_job_revived_from_its_dead_letter_keeps_its_limit(
    kind: str, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    running: list[int] = []
    most = 0
    down = True

    async def work(params: Work, ctx: djobs.JobContext) -> None:
        nonlocal most
        if params.n == 0 and down:
            raise RuntimeError("down")
        running.append(params.n)
        most = max(most, len(running))
        await trio.sleep(params.seconds)
        running.remove(params.n)

    job = djobs.Job.make(
        "work", params=Work, execute=work, limit_key=lambda p: p.account, concurrency=1, max_attempts=1
    )
    async with storage_for(kind, tmp_path) as storage, open_test_engine([job], storage=storage) as engine:
        failed = success(await engine.client.job(job).later(Work(0)))
        await drain(engine)
        await trio.sleep(10)
        assert success(await engine.client.jobs.purge(older_than="1 second", status="failed")) == 1
        down = False
        success(await engine.client.job(job).later(Work(1, seconds=100)))
        await trio.sleep(1)  # job 1 runs, holding the key's one slot
        success(await engine.client.dead_letters.retry(failed))
        await drain(engine)
        assert success(await engine.client.jobs.status(failed)).status == "completed"
    assert most == 1  # the revived job waited for the key's slot


@pytest.mark.trio
@pytest.mark.parametrize("kind", STORAGES)
async def test_the_largest_limits_claim_beside_an_unlimited_job(
    kind: str, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # The bounds are what every storage holds: PostgreSQL's claim casts the limits to integer.
    bodies = Bodies()
    big = bodies.job("big", concurrency=2**31 - 1)
    rated = bodies.job("rated", rate_limit=djobs.RateLimit(2**31 - 1, "1 day"), key=lambda p: p.account)
    free = bodies.job("free")
    async with storage_for(kind, tmp_path) as storage, open_test_engine([big, rated, free], storage=storage) as engine:
        for n, job in enumerate((big, rated, free)):
            success(await engine.client.job(job).later(Work(n, seconds=0)))
        await drain(engine)
    assert sorted(bodies.done) == [0, 1, 2]


@pytest.mark.trio
async def test_a_cron_fire_whose_key_function_fails_is_logged_and_the_engine_goes_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    bodies = Bodies()

    def key(params: Work) -> str:
        if params.account == "broken":
            raise LookupError("no such account")
        return params.account

    job = bodies.job(key=key, concurrency=1)
    cron = djobs.CronJob.make("sweep", schedule=djobs.every("1 minute"), job=job, params=Work(0, account="broken"))
    caplog.set_level(logging.ERROR, logger="djobs")
    async with open_test_engine([job, cron]) as engine:
        await trio.sleep(3 * 60 + 1)  # three fires
        success(await engine.client.job(job).later(Work(1, seconds=0)))
        await drain(engine)
        assert [info.status for info in success(await engine.client.jobs.list())] == ["completed"]
    assert bodies.done == [1]
    logged = [r.getMessage() for r in caplog.records if "sweep" in r.getMessage()]
    assert len(logged) >= 3 and all("raised LookupError: no such account" in m for m in logged), logged
