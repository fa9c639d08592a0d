"""The small layers: retry policies, clocks, trackers, and the public namespace."""

from __future__ import annotations

import random
import re
import time
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from itertools import pairwise
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import djobs
import djobs.testing
from djobs import Backoff, Retry
from djobs._errors import ExecutionError, ValidationError
from djobs.testing import open_test_engine
from djobs.tracking._base import EVENT_TYPES


def test_backoff_delays() -> None:
    exp = Backoff.exponential(base="1 second", max="30 seconds")
    assert [exp.delay(n) / timedelta(seconds=1) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert exp.delay(10_000) == timedelta(seconds=30)  # no overflow for huge retry counts
    lin = Backoff.linear(base="2 seconds", increment="500ms")
    assert [lin.delay(n) / timedelta(seconds=1) for n in (1, 2, 3)] == [2, 2.5, 3]
    assert Backoff.fixed(timedelta(minutes=1)).delay(7) == timedelta(minutes=1)


def test_an_exponential_backoff_never_caps_below_its_base() -> None:
    # A base longer than the default cap of 30 seconds was silently cut to 30 seconds.
    assert Backoff.exponential(base="1 minute").delay(1) == timedelta(minutes=1)
    assert Backoff.exponential().delay(10) == timedelta(seconds=30)  # the default cap stays
    with pytest.raises(ValidationError, match="shorter than base"):
        Backoff.exponential(base="10 seconds", max="1 second")


def test_jitter_stays_within_the_delay_and_repeats_with_a_seed() -> None:
    policy = Retry(max_attempts=5, delay=Backoff.fixed("10 seconds"), jitter=True)
    first = [policy.delay_before(2, random.Random(7)) for _ in range(3)]
    again = [policy.delay_before(2, random.Random(7)) for _ in range(3)]
    assert first == again
    rng = random.Random(1)
    samples = [policy.delay_before(2, rng) for _ in range(200)]
    assert all(timedelta(0) <= s <= timedelta(seconds=10) for s in samples)
    assert len(set(samples)) > 150  # actually random, not a constant


def test_retry_policy_decides_by_error_type() -> None:
    policy = Retry(max_attempts=3)
    assert policy.should_retry(ExecutionError("flaky"))
    assert not policy.should_retry(ExecutionError("bad request", retryable=False))
    assert not policy.should_retry(ValidationError("bad state"))
    only_timeouts = Retry(max_attempts=3, retry_on=(TimeoutError,))
    assert only_timeouts.should_retry(ExecutionError("t", cause=TimeoutError()))
    assert not only_timeouts.should_retry(ExecutionError("k", cause=KeyError("x")))


class Busy(Exception):
    pass


def test_a_retry_policys_repr_shows_which_errors_it_retries() -> None:
    # retry_on decides whether a failure is retried; the repr left it out, so these four printed alike.
    shown = [
        repr(Retry(max_attempts=3, delay="2 seconds", retry_on=retry_on))
        for retry_on in (None, (), KeyError, (KeyError, Busy))
    ]
    head = "Retry(max_attempts=3, delay=Backoff.fixed(datetime.timedelta(seconds=2)), jitter=False, retry_on="
    assert shown == [f"{head}None)", f"{head}())", f"{head}(KeyError,))", f"{head}(KeyError, test_layers.Busy))"]


@pytest.mark.parametrize(
    "value",
    [
        Retry(max_attempts=2, retry_on=KeyError),
        djobs.Retention(),
        djobs.WorkerOptions(),
        djobs.RateLimit(3, "1 second"),
        djobs.Layers(),
    ],
    ids=lambda v: type(v).__name__,
)
def test_an_options_repr_names_every_field(value: object) -> None:
    fields = [name for name in getattr(type(value), "__slots__", ()) if not name.startswith("_")]
    fields = [name for name in fields if not name.endswith("_ms")]  # a field's milliseconds, shown as its duration
    assert fields and all(f"{name}=" in repr(value) for name in fields), (fields, repr(value))


def test_a_retry_on_of_no_types_retries_nothing() -> None:
    # As isinstance(x, ()) is False: an empty tuple is "retry no error", whatever max_attempts says.
    never = Retry(max_attempts=5, retry_on=())
    assert not never.should_retry(ExecutionError("flaky"))
    assert not never.should_retry(ExecutionError("t", cause=TimeoutError()))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_retry_rejects_bad_max_attempts(bad: Any) -> None:
    with pytest.raises(ValidationError, match="max_attempts"):
        Retry(max_attempts=bad)


def test_bad_backoff_durations_name_the_input() -> None:
    with pytest.raises(ValidationError, match="eventually"):
        Backoff.fixed("eventually")


def test_linear_backoff_has_a_maximum() -> None:
    capped = Backoff.linear(base="10 seconds", increment="5 seconds", max="30 seconds")
    assert [capped.delay(n) / timedelta(seconds=1) for n in (1, 2, 3, 4, 5, 6, 100)] == [10, 15, 20, 25, 30, 30, 30]
    assert "max=" in repr(capped) and "max=" not in repr(Backoff.linear())
    with pytest.raises(ValidationError, match="shorter than base"):
        Backoff.linear(base="1 minute", max="10 seconds")


@pytest.mark.parametrize(
    ("options", "seconds"),
    [
        ({"backoff": "exponential", "initial_delay": "2s", "max_delay": "20s"}, [2, 4, 8, 16, 20, 20]),
        ({"backoff": "exponential"}, [1, 2, 4, 8, 16, 30]),
        ({"initial_delay": "500ms"}, [0.5, 1, 2, 4, 8, 16]),  # the strategy defaults to exponential
        ({"backoff": "exponential", "initial_delay": "1 minute"}, [60, 60, 60, 60, 60, 60]),
        ({"backoff": "linear", "initial_delay": "5s", "max_delay": "12s"}, [5, 10, 12, 12, 12, 12]),
        ({"backoff": "linear", "initial_delay": "5s"}, [5, 10, 15, 20, 25, 30]),
        ({"backoff": "fixed", "initial_delay": "3s"}, [3, 3, 3, 3, 3, 3]),
        ({"backoff": "fixed", "initial_delay": 3000, "max_delay": "1 minute"}, [3, 3, 3, 3, 3, 3]),
    ],
)
def test_the_seed_spelling_of_a_backoff(options: dict[str, Any], seconds: list[float]) -> None:
    policy = Retry(max_attempts=7, **options)
    assert [policy.delay.delay(n) / timedelta(seconds=1) for n in range(1, 7)] == seconds


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backoff": "exponential", "delay": "1s"}, "not both"),
        ({"max_delay": "5s", "delay": Backoff.fixed("1s")}, "not both"),
        ({"backoff": "random"}, "must be 'exponential', 'linear' or 'fixed'"),
        ({"backoff": "linear", "initial_delay": "10s", "max_delay": "5s"}, "shorter than initial_delay"),
        ({"backoff": "fixed", "initial_delay": "soon"}, "initial_delay"),
        ({"backoff": "fixed", "max_delay": -5}, "max_delay"),
    ],
)
def test_the_seed_spelling_refuses_what_it_cannot_mean(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Retry(**options)


@pytest.mark.trio
async def test_a_job_retries_on_the_seed_spelled_backoff(autojump_clock: trio.testing.MockClock) -> None:
    class Try(msgspec.Struct):
        label: str

    tries: list[datetime] = []

    def always_fails(params: Try, ctx: djobs.JobContext) -> None:
        tries.append(ctx.now())
        raise RuntimeError("down")

    policy = Retry(max_attempts=5, backoff="linear", initial_delay="10 seconds", max_delay="25 seconds")
    job = djobs.Job.make("flaky", params=Try, execute=always_fails, retry=policy)
    async with open_test_engine([job]) as engine:
        run = djobs.testing.success(await engine.client.job(job).now(Try("x")))
    assert run.status == "failed" and run.attempts == 5
    assert [b - a for a, b in pairwise(tries)] == [
        timedelta(seconds=10),
        timedelta(seconds=20),
        timedelta(seconds=25),
        timedelta(seconds=25),
    ]


@pytest.mark.trio
async def test_virtual_clock_follows_trio_mock_time(autojump_clock: trio.testing.MockClock) -> None:
    clock = djobs.VirtualClock(datetime(2026, 3, 8, 6, 0, tzinfo=UTC))
    start = clock.now_ms()
    assert start == round(datetime(2026, 3, 8, 6, 0, tzinfo=UTC).timestamp() * 1000)
    await trio.sleep(3600)
    assert clock.now_ms() - start == 3_600_000
    await clock.sleep_until(start + 7_200_500)
    assert clock.now_ms() >= start + 7_200_500  # never early
    assert clock.now_ms() - (start + 7_200_500) < 5


@pytest.mark.trio
async def test_virtual_clock_never_reads_a_millisecond_early(autojump_clock: trio.testing.MockClock) -> None:
    # Trio's float clock reads 0.001 s + 1.001 s as 1.0019999999999998 s; whole milliseconds
    # taken by flooring read 1001, a millisecond before the deadline reached (a one-second
    # rate limit then let two starts through 0.999 s apart).
    clock = djobs.VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    start = clock.now_ms()
    await trio.sleep(0.001)
    await trio.sleep(1.001)
    assert clock.now_ms() - start == 1002


@pytest.mark.trio
async def test_a_poke_while_the_loop_is_awake_ends_its_next_sleep(autojump_clock: trio.testing.MockClock) -> None:
    # A loop reads its next due time, then sleeps; a poke that lands during the read (a
    # retry settled by another task, on PostgreSQL) must not be lost, or the loop sleeps
    # past the retry's due time (forever, without a poll interval).
    from djobs._wakeup import Wakeup

    clock = djobs.VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    wakeup = Wakeup(clock, poll_ms=None)
    start = clock.now_ms()
    wakeup.poke(start + 1000)  # while awake
    with trio.move_on_after(3600):
        await wakeup.sleep_until(None)
    assert clock.now_ms() == start + 1000
    with trio.move_on_after(5):  # the missed poke is spent: the next sleep is the asked one
        await wakeup.sleep_until(None)
    assert clock.now_ms() == start + 6000


@pytest.mark.trio
async def test_a_cancel_from_outside_at_the_due_time_ends_the_sleep(autojump_clock: trio.testing.MockClock) -> None:
    # The sleep's own deadline wakes it without raising: a cancel of the caller's scope that
    # comes at the same instant must still reach the caller (the engine's close).
    from djobs._wakeup import Wakeup

    clock = djobs.VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    wakeup = Wakeup(clock, poll_ms=None)
    due = clock.now_ms() + 1000
    reached = []
    with trio.CancelScope(deadline=clock.trio_deadline(due)) as outer:
        await wakeup.sleep_until(due)
        reached.append(True)
    assert outer.cancelled_caught
    assert not reached


@pytest.mark.trio
@pytest.mark.parametrize("virtual", [True, False])
async def test_a_sleep_says_whether_it_lasted_until_its_due_time(
    autojump_clock: trio.testing.MockClock, virtual: bool
) -> None:
    # The alarm sleeper claims without reading its due time again only after a sleep that
    # reached it: one a poke, a recheck or the poll interval cut short says so.
    from djobs._wakeup import Wakeup

    virtual_clock = djobs.VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    clock = virtual_clock if virtual else _TrioClock(virtual_clock)
    start = clock.now_ms()
    assert await Wakeup(clock, poll_ms=None).sleep_until(start + 1000)
    assert clock.now_ms() == start + 1000
    polled = Wakeup(clock, poll_ms=500)
    assert not await polled.sleep_until(start + 5000)  # the poll interval ended it
    assert clock.now_ms() == start + 1500
    poked = Wakeup(clock, poll_ms=None)
    async with trio.open_nursery() as nursery:
        ended: list[bool] = []

        async def sleep() -> None:
            ended.append(await poked.sleep_until(start + 9000))

        nursery.start_soon(sleep)
        await trio.sleep(1)
        poked.poke(start + 2000)  # earlier than its due time: cut short
    assert ended == [False] and clock.now_ms() == start + 2500
    poked.poke(start + 3000)  # while awake: the next sleep ends by then
    assert not await poked.sleep_until(start + 9000)
    assert clock.now_ms() == start + 3000
    assert await poked.sleep_until(start + 4000)


class _TrioClock:
    """A clock that is not a `VirtualClock` (the `Wakeup` path of `WallClock`), on Trio's time."""

    def __init__(self, clock: djobs.VirtualClock) -> None:
        self._clock = clock

    def now_ms(self) -> int:
        return self._clock.now_ms()

    async def sleep_until(self, epoch_ms: int) -> None:
        await self._clock.sleep_until(epoch_ms)


class _NoOffset(tzinfo):
    """A zone that cannot say its offset: its utcoffset raises."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        raise KeyError("Europe/Atlantis")

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "Atlantis"


class _NotAnOffset(tzinfo):
    """A zone whose utcoffset answers with what is no offset."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return "+02:00"  # type: ignore[return-value]

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "Text"


@pytest.mark.parametrize(
    ("start", "says"),
    [
        (datetime(2026, 1, 1), "got naive datetime"),
        (datetime(2026, 1, 1, tzinfo=_NoOffset()), "cannot be turned into UTC: KeyError"),
        (datetime(2026, 1, 1, tzinfo=_NotAnOffset()), "cannot be turned into UTC: TypeError"),
        ("2026-01-01T00:00:00Z", "timezone-aware datetime, got '2026-01-01"),
        (1_767_225_600_000, "timezone-aware datetime, got 1767225600000"),
        (0, "timezone-aware datetime, got 0"),
        (False, "timezone-aware datetime, got False"),
        (date(2026, 1, 1), "timezone-aware datetime, got datetime.date"),
    ],
)
def test_a_virtual_clock_refuses_a_bad_start_with_a_validation_error(start: Any, says: str) -> None:
    """VirtualClock(start=...), and the test engine's layers built on it: a ValidationError naming what
    was wrong, where it raised a bare ValueError (and took 0 or False for the default start)."""
    with pytest.raises(ValidationError, match="VirtualClock") as caught:
        djobs.VirtualClock(start)
    assert says in caught.value.message, caught.value.message
    with pytest.raises(ValidationError, match="VirtualClock"):
        djobs.testing.default_layers(start)
    with pytest.raises(ValidationError, match="VirtualClock"):
        open_test_engine([], start=start)


def test_a_virtual_clock_takes_any_aware_start() -> None:
    assert djobs.VirtualClock().start_ms == 1_767_225_600_000  # 2026-01-01 UTC
    berlin = datetime(2026, 3, 29, 3, 0, tzinfo=timezone(timedelta(hours=2)))
    assert djobs.VirtualClock(berlin).start_ms == 1_774_746_000_000
    assert djobs.VirtualClock(datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)).start_ms == -1000


def test_the_test_tools_refuse_bad_arguments_with_a_validation_error() -> None:
    """Seeds random.Random cannot take, layers that are not Layers, and a layer given to check_storage
    where a function making one is taken: each a ValidationError that says what is taken."""
    for seed in ([1], (1,), object()):
        with pytest.raises(ValidationError, match=r"seed=\.\.\.\) must be an int or None"):
            djobs.testing.default_layers(seed=seed)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match=r"seed=\.\.\.\) must be an int or None"):
            open_test_engine([], seed=seed)  # type: ignore[call-overload]
    assert djobs.testing.default_layers(seed=7).ids.random() == djobs.testing.default_layers(seed=7).ids.random()
    for layers in ("djobs.memory()", djobs.memory(), {"storage": djobs.memory()}):
        with pytest.raises(ValidationError, match=r"must be a djobs\.Layers"):
            open_test_engine([], layers=layers)  # type: ignore[call-overload]

    async def check() -> None:
        with pytest.raises(ValidationError, match=r"takes a function .* not a layer: got MemoryLayer"):
            await djobs.testing.check_storage(djobs.memory())  # type: ignore[arg-type]

    trio.run(check)


@pytest.mark.trio
async def test_wall_clock_reads_system_time() -> None:
    clock = djobs.WallClock()
    now = datetime.now(UTC).timestamp() * 1000
    assert abs(clock.now_ms() - now) < 1000
    target = clock.now_ms() + 20
    await clock.sleep_until(target)
    assert clock.now_ms() >= target


def test_wall_clock_wakes_at_its_due_time_not_a_millisecond_fraction_after(monkeypatch: pytest.MonkeyPatch) -> None:
    # The system clock is Trio's (mocked) clock, started 0.3 ms past a whole millisecond: a delay
    # reckoned from the floored now_ms overshot by that fraction (0.7 ms late, each sleep).
    base_ns = 1_767_225_600_000_000_000 + 300_000
    late_ms: list[float] = []

    async def check() -> None:
        anchor = trio.current_time()
        monkeypatch.setattr(time, "time_ns", lambda: base_ns + round((trio.current_time() - anchor) * 1e9))
        clock = djobs.WallClock()
        for step in (1, 2, 5, 1000):
            target = clock.now_ms() + step
            await clock.sleep_until(target)
            late_ms.append(time.time_ns() / 1e6 - target)

    trio.run(check, clock=trio.testing.MockClock(autojump_threshold=0))
    assert all(0 <= late < 0.001 for late in late_ms), late_ms


class Beat(msgspec.Struct):
    n: int = 0


def bump(ctx: djobs.ContinuousContext[Beat]) -> None:
    ctx.update_state(lambda s: Beat(s.n + 1))


beat = djobs.Continuous.make("beat", state=Beat, schedule=djobs.every("1 minute"), execute=bump)


@pytest.mark.trio
async def test_the_pytest_fixture_opens_a_test_engine(
    djobs_test_engine: Any, autojump_clock: trio.testing.MockClock
) -> None:
    real_start = trio.current_time()
    async with djobs_test_engine([beat]) as engine:
        await engine.client.continuous(beat).start(id="x", input=Beat())
        await trio.sleep(7 * 24 * 3600 + 1)  # a virtual week
        assert engine.tracker.count("job.executed") == 7 * 24 * 60 + 1
    assert trio.current_time() - real_start >= 7 * 24 * 3600  # the mock clock moved, not the wall


@pytest.mark.trio
async def test_a_tracker_that_raises_never_fails_a_job(autojump_clock: trio.testing.MockClock) -> None:
    class Broken:
        def emit(self, event: djobs.TrackedEvent) -> None:
            raise RuntimeError("tracker down")

        async def aclose(self) -> None:
            pass

    async with djobs.open_engine(
        [beat], storage=djobs.memory(), clock=djobs.VirtualClock(), tracker=Broken(), alarm_poll_interval=None
    ) as engine:
        await engine.client.continuous(beat).start(id="x", input=Beat())
        await trio.sleep(10 * 60 + 1)
        state = djobs.testing.success(await engine.client.continuous(beat).get_state("x")).state
        assert state.n == 11


def test_public_names_are_sorted_and_importable() -> None:
    assert djobs.__all__ == sorted(djobs.__all__)
    for name in djobs.__all__:
        assert getattr(djobs, name) is not None
    # Identifiers only: pytest's assertion rewriting may add names such as "@py_builtins" to a module.
    public = {n for n in dir(djobs) if n.isidentifier() and not n.startswith("_")} - {
        "cli",
        "dashboard",
        "kinds",
        "metrics",
        "storage",
        "testing",
        "tracking",
    }
    assert public == set(djobs.__all__)


def test_every_public_name_has_a_docstring() -> None:
    for name in djobs.__all__:
        obj = getattr(djobs, name)
        if callable(obj) and not isinstance(obj, type(int | str)):
            assert (obj.__doc__ or "").strip(), f"djobs.{name} has no docstring"


def test_the_in_memory_trackers_lookups_refuse_an_event_type_no_engine_emits() -> None:
    # A misspelt type counted 0: `assert tracker.count("job.excuted") == 0` held whatever the engine did.
    tracker = djobs.testing.InMemoryTracker()
    for wrong, says in (
        ("job.excuted", "no event type 'job.excuted' (did you mean 'job.executed'?)"),
        ("job_executed", "no event type 'job_executed' (did you mean 'job.executed'?)"),
        ("", "no event type ''"),
        (None, "no event type None"),
        (5, "no event type 5"),
    ):
        for lookup in (tracker.count, tracker.of_type):
            with pytest.raises(ValidationError) as refused:
                lookup(wrong)
            assert refused.value.message.startswith(says) and "job.executed, job.failed" in refused.value.message
    assert [tracker.count(t) for t in sorted(EVENT_TYPES)] == [0] * len(EVENT_TYPES)
    # A type a test emitted itself is one it may look up.
    mine = djobs.TrackedEvent(type="app.audit", instance_id="x", job_type="job", job_name="x", at=datetime.now(UTC))
    tracker.emit(mine)
    assert tracker.count("app.audit") == 1 and tracker.of_type("app.audit") == [mine]


def test_the_known_event_types_are_every_one_the_engine_emits_and_the_guide_lists() -> None:
    root = Path(__file__).resolve().parent.parent
    pattern = re.compile(r"\"((?:job|debounce|task|cron|workflow)\.[a-z_]+)\"")
    emitted = {m for path in (root / "djobs").rglob("*.py") for m in pattern.findall(path.read_text())}
    assert emitted == EVENT_TYPES
    guide = (root / "docs" / "guides" / "telemetry.md").read_text()
    assert [t for t in sorted(EVENT_TYPES) if f"`{t}`" not in guide] == []
