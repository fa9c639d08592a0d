"""Every option of `open_engine` and `open_test_engine`, and of the option objects they take, is
checked when the engine opens: a value of the wrong kind is a `ValidationError` naming the option,
before anything runs, never a bare ``TypeError``/``AttributeError``, an ``ExceptionGroup`` out of
the engine's nursery, or a background task that fails ("bug: ...") for as long as the engine runs.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import djobs
import djobs.metrics
from djobs.testing import open_test_engine
from djobs.tracking import HttpBatchTracker


class S(msgspec.Struct):
    n: int = 0


class Hostile:
    """A value whose repr, ==, hash and bool raise: refused like any other, in words of its own."""

    def __repr__(self) -> str:
        raise RuntimeError("repr")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")

    def __hash__(self) -> int:
        raise RuntimeError("hash")

    def __bool__(self) -> bool:
        raise RuntimeError("bool")


class HostileText(str):
    """A name whose repr raises (a str subclass's own)."""

    __slots__ = ()

    def __repr__(self) -> str:
        raise RuntimeError("repr")


ticker = djobs.Continuous.make("ticker", state=S, schedule=djobs.every("1 hour"), execute=lambda ctx: None)

#: Values of every kind: for each option, those it accepts are filtered out below.
anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.timedeltas(),
    st.datetimes(),
    st.builds(object),
    st.builds(Hostile),
    st.sampled_from(
        [
            *(djobs.WorkerOptions, djobs.Retention, djobs.Layers, logging.Logger, str),
            # a layer's class, or the function that makes one, where the layer is taken
            *(djobs.memory, djobs.VirtualClock, djobs.WallClock, djobs.NoopTracker),
            *(djobs.InMemoryTracker, djobs.JitteredRetries, djobs.RandomIds),
        ]
    ),
)

MAX = 2**31 - 1


def _duration(*, optional: bool = False, zero: bool = False) -> Any:
    """What a duration option does not accept: any other kind, and bad durations of its own kinds."""

    def accepted(v: object) -> bool:
        return (optional and v is None) or (type(v) in (str, int, timedelta))

    bad = ["soon", "", "-1 s", -1, 10**30, timedelta(seconds=-1), timedelta(days=40_000)]
    if not zero:
        bad += [0, "0 s", timedelta(0)]
    return st.one_of(anything.filter(lambda v: not accepted(v)), st.sampled_from(bad))


def _count(low: int, high: int) -> Any:
    return anything.filter(lambda v: not (type(v) is int and low <= v <= high))


def _not_one_of(*accepted: str) -> Any:
    return anything.filter(lambda v: type(v) is not str or v not in accepted)


def _instance(cls: type, *, optional: bool = True) -> Any:
    return anything.filter(lambda v: not (isinstance(v, cls) or (optional and v is None)))


#: Each option of open_engine, with values it must refuse (`services` takes anything).
ENGINE_OPTIONS: dict[str, Any] = {
    "storage": _instance(type(None)),
    "clock": _instance(type(None)),
    "tracker": _instance(type(None)),
    "layers": _instance(djobs.Layers),
    "max_concurrency": _count(1, MAX),
    "alarm_lease": _duration(),
    "alarm_poll_interval": _duration(optional=True),
    "shutdown_grace": _duration(zero=True),
    "seed": anything.filter(lambda v: not (v is None or type(v) is int)),
    "logger": _instance(logging.Logger),
    "worker": _instance(djobs.WorkerOptions),
    "tenancy": _not_one_of("optional", "required"),
    "max_payload_bytes": _count(1024, 1 << 30),
    "instance_lease": _duration(),
    "retention": _instance(djobs.Retention),
}

#: Each option only open_test_engine has (it passes the others to open_engine).
TEST_ENGINE_OPTIONS: dict[str, Any] = {
    "start": anything.filter(lambda v: not (v is None or (isinstance(v, datetime) and v.tzinfo is not None))),
    "seed": anything.filter(lambda v: not (v is None or type(v) is int)),
    "retries": _instance(type(None)),
    "ids": _instance(type(None)),
}


def run(scenario: Any) -> None:
    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


def _refused(opener: Any, option: str, value: object, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="djobs"), pytest.raises(djobs.ValidationError) as raised:
            async with opener(**{option: value}):
                pass
        assert option in raised.value.message, raised.value.message
        assert not caplog.records  # no background task failed while it was open

    run(scenario)


@pytest.mark.parametrize("option", sorted(ENGINE_OPTIONS))
@settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_open_engine_refuses_an_option_of_the_wrong_kind(
    option: str, data: st.DataObject, caplog: pytest.LogCaptureFixture
) -> None:
    value = data.draw(ENGINE_OPTIONS[option], label=option)
    base: dict[str, Any] = {} if option in ("storage", "layers") else {"storage": djobs.memory()}

    def opener(**kw: Any) -> Any:
        return djobs.open_engine([ticker], **base, **kw)

    _refused(opener, option, value, caplog)


@pytest.mark.parametrize("option", sorted(ENGINE_OPTIONS.keys() - {"seed"} | TEST_ENGINE_OPTIONS.keys()))
@settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_open_test_engine_refuses_an_option_of_the_wrong_kind(
    option: str, data: st.DataObject, caplog: pytest.LogCaptureFixture
) -> None:
    value = data.draw({**ENGINE_OPTIONS, **TEST_ENGINE_OPTIONS}[option], label=option)

    def opener(**kw: Any) -> Any:
        return open_test_engine([ticker], **kw)

    _refused(opener, option, value, caplog)


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("worker", djobs.WorkerOptions, "worker must be a djobs.WorkerOptions(...), got the class itself"),
        ("retention", djobs.Retention, "retention must be a djobs.Retention(...), got the class itself"),
        ("logger", "myapp.jobs", "logger must be a logging.Logger (logging.getLogger('myapp.jobs'))"),
        ("worker", "x", "worker must be a djobs.WorkerOptions(...) or None, got str 'x'"),
        ("retention", 5, "retention must be a djobs.Retention(...) or None, got int 5"),
        ("clock", djobs.VirtualClock, "clock must be a Clock, got the class VirtualClock itself: call it"),
        ("seed", math.nan, "seed must be an int or None, got float nan"),
        ("alarm_lease", 0, "alarm_lease must be at least 1 second, got 0"),
        ("alarm_poll_interval", "0 s", "alarm_poll_interval must be at least 1 millisecond, got '0 s'"),
    ],
)
def test_the_message_says_what_the_option_takes(option: str, value: object, says: str) -> None:
    async def scenario() -> None:
        with pytest.raises(djobs.ValidationError) as raised:
            async with djobs.open_engine([ticker], storage=djobs.memory(), **{option: value}):
                pass
        assert says in raised.value.message

    run(scenario)


def test_open_test_engine_names_itself_for_an_unknown_keyword() -> None:
    with pytest.raises(TypeError, match=r"^open_test_engine\(\) got an unexpected keyword argument 'bogus'"):
        open_test_engine([ticker], bogus=1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("make", "fields"),
    [
        (djobs.WorkerOptions, {"max_concurrency": _count(1, MAX), "batch_size": _count(1, MAX)}),
        (djobs.WorkerOptions, {"lock_timeout": _duration(), "poll_interval": _duration(optional=True)}),
        (
            djobs.Retention,
            {
                name: _duration(optional=True)
                for name in ("completed", "failed", "cancelled", "idempotency_keys", "event_ids", "dead_letters")
            },
        ),
        (djobs.Retention, {"every": _duration()}),
        (djobs.Layers, {name: anything for name in ("storage", "clock", "tracker", "retries", "ids")}),
        (djobs.JitteredRetries, {"seed": anything.filter(lambda v: not (v is None or type(v) is int))}),
        (
            functools.partial(djobs.sqlite, ":memory:"),
            {
                "synchronous": _not_one_of("NORMAL", "FULL", "OFF", "EXTRA"),
                "busy_timeout": _count(0, 600_000),
                "lease_clock": _not_one_of("auto", "host", "engine"),
            },
        ),
        (djobs.sqlite, {"path": anything.filter(lambda v: type(v) is not str)}),
        (
            functools.partial(djobs.postgres, "postgresql://app@db.invalid/app"),
            {
                "schema": anything,
                "pool_size": _count(1, MAX),
                "connect_timeout": _duration(zero=True),
                "lease_clock": _not_one_of("auto", "database", "engine"),
            },
        ),
        (
            functools.partial(HttpBatchTracker, "http://127.0.0.1:1/events", "test", "key"),
            {
                "batch_size": _count(1, MAX),
                "max_buffer": _count(1, MAX),
                "max_retries": anything.filter(lambda v: not (v is None or (type(v) is int and 0 <= v <= MAX))),
                "flush_interval": _duration(zero=True),
                "timeout": _duration(zero=True),
                "close_timeout": _duration(zero=True),
                "backoff": _instance(djobs.Backoff),
            },
        ),
        (djobs.RandomIds, {"seed": anything.filter(lambda v: not (v is None or type(v) is int))}),
    ],
)
@settings(deadline=None, max_examples=40)
@given(data=st.data())
def test_an_option_object_refuses_a_field_of_the_wrong_kind(make: Any, fields: dict[str, Any], data: Any) -> None:
    name = data.draw(st.sampled_from(sorted(fields)), label="field")
    value = data.draw(fields[name], label=name)
    if make is djobs.Layers and value is None:
        return  # None keeps the default layer
    with pytest.raises(djobs.ValidationError) as raised:
        make(**{name: value})
    assert name in raised.value.message, raised.value.message


def test_a_naive_or_non_datetime_start_is_refused_by_name() -> None:
    for start in (datetime(2026, 1, 1), "2026-01-01", 0):  # the mistake under test
        with pytest.raises(djobs.ValidationError, match="start"):
            open_test_engine([ticker], start=start)  # type: ignore[arg-type]
    assert open_test_engine([ticker], start=datetime(2026, 1, 1, tzinfo=UTC)) is not None


class Unreadable(list[Any]):
    def __iter__(self) -> Any:
        raise RuntimeError("iter")


@pytest.mark.parametrize(
    ("definitions", "says"),
    [
        (Unreadable([ticker]), "definitions could not be read: iterating the Unreadable raised RuntimeError: iter"),
        ([ticker, Hostile()], "<unprintable Hostile object: repr() raised RuntimeError> is not a job definition"),
        ("ticker", "definitions must be a list of job definitions, got str"),
    ],
)
def test_definitions_that_cannot_be_read_are_refused_by_name(definitions: Any, says: str) -> None:
    async def scenario() -> None:
        for opener in (djobs.open_engine, open_test_engine):
            kw: dict[str, Any] = {"storage": djobs.memory()} if opener is djobs.open_engine else {}
            with pytest.raises(djobs.ValidationError) as raised:
                async with opener(definitions, **kw):
                    pass
            assert says in raised.value.message

    run(scenario)


class EqBoom:
    """A value whose == raises."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")

    __hash__ = object.__hash__


def test_a_name_or_option_whose_own_methods_raise_is_refused_in_words_of_its_own() -> None:
    """A job name, a definition's on_exhausted, a logger, a storage or a tracker's env whose repr
    or == raises is a ValidationError, never the object's own exception (each raised it before)."""

    def body(ctx: djobs.ContinuousContext[S]) -> None:
        pass

    refusals: list[Any] = [
        lambda: djobs.Continuous.make(HostileText("a:b"), state=S, schedule=djobs.every("1 hour"), execute=body),
        lambda: djobs.Continuous.make(
            "c", state=S, schedule=djobs.every("1 hour"), execute=body, on_exhausted=EqBoom()
        ),
        lambda: djobs.Continuous.make(
            "c", state=S, schedule=djobs.every("1 hour"), execute=body, on_exhausted=HostileText("x")
        ),
        lambda: djobs.Layers(storage=HostileText("jobs.db")),
        lambda: HttpBatchTracker("https://example.test/events", HostileText("\ud800"), "key"),
    ]
    for refused in refusals:
        with pytest.raises(djobs.ValidationError, match=r"unprintable HostileText|on_exhausted"):
            refused()

    async def scenario() -> None:
        with pytest.raises(djobs.ValidationError, match=r"logging\.getLogger\(<unprintable HostileText"):
            async with djobs.open_engine([ticker], storage=djobs.memory(), logger=HostileText("jobs")):
                pass

    run(scenario)


def _collector_run(every: object) -> None:
    """`StorageCollector.run(every=...)` up to its first check; a collector that spins fails at its third refresh."""

    async def scenario() -> None:
        async with open_test_engine([ticker]) as engine:
            collector = djobs.metrics.StorageCollector(engine.storage)
            refreshes = 0

            async def counted() -> None:
                nonlocal refreshes
                refreshes += 1
                assert refreshes < 3, "the collector refreshed again without waiting"

            collector.refresh = counted  # type: ignore[method-assign]
            await collector.run(every=every)  # type: ignore[arg-type]

    run(scenario)


ZERO_MEANS_SPIN: dict[str, tuple[Callable[[object], object], str]] = {
    # libpq reads connect_timeout=0 as "wait forever"; the sender and the collector would spin.
    "postgres connect_timeout": (
        lambda v: djobs.postgres("postgresql://nobody@127.0.0.1/none", connect_timeout=v),  # type: ignore[arg-type]
        "postgres(connect_timeout=...) must be at least 1 second",
    ),
    "HttpBatchTracker flush_interval": (
        lambda v: djobs.tracking.HttpBatchTracker("http://collector.invalid/e", "t", "k", flush_interval=v),  # type: ignore[arg-type]
        "HttpBatchTracker flush_interval must be at least 1 millisecond",
    ),
    "HttpBatchTracker timeout": (
        lambda v: djobs.tracking.HttpBatchTracker("http://collector.invalid/e", "t", "k", timeout=v),  # type: ignore[arg-type]
        "HttpBatchTracker timeout must be at least 1 millisecond",
    ),
    "StorageCollector.run every": (_collector_run, "every must be at least 1 millisecond"),
}


@pytest.mark.parametrize("setting", sorted(ZERO_MEANS_SPIN))
@pytest.mark.parametrize("value", [0, "0 s", timedelta(0)])
def test_a_setting_where_zero_would_spin_or_wait_forever_refuses_zero(setting: str, value: object) -> None:
    make, says = ZERO_MEANS_SPIN[setting]
    with pytest.raises(djobs.ValidationError) as raised:
        make(value)
    assert says in raised.value.message


def test_a_connect_timeout_is_whole_seconds_rounded_up() -> None:
    with pytest.raises(djobs.ValidationError, match="at least 1 second"):
        djobs.postgres("postgresql://nobody@127.0.0.1/none", connect_timeout="999 ms")
    layer = djobs.postgres("postgresql://nobody@127.0.0.1/none", connect_timeout="1500 ms")
    assert layer.connect_timeout_s == 2  # type: ignore[attr-defined]


def test_an_http_tracker_close_timeout_fits_the_engines_bound_on_a_tracker_close() -> None:
    with pytest.raises(djobs.ValidationError, match="close_timeout must be at most 30 seconds"):
        HttpBatchTracker("http://collector.invalid/e", "t", "k", close_timeout="31 seconds")
    HttpBatchTracker("http://collector.invalid/e", "t", "k", close_timeout="30 seconds")


class _EmitOnly:
    def emit(self, event: object) -> None:
        pass


class _SyncClose(_EmitOnly):
    def aclose(self) -> None:
        pass


@pytest.mark.parametrize("tracker", [_EmitOnly(), _SyncClose()], ids=["no aclose", "sync aclose"])
def test_a_tracker_without_an_async_aclose_is_refused_at_open(tracker: object) -> None:
    """The engine awaits tracker.aclose() at close: one without it failed (and logged an error) at every close."""

    async def scenario() -> None:
        with pytest.raises(djobs.ValidationError, match=r"tracker must be a Tracker \(with emit\(\) and an async"):
            async with djobs.open_engine([], storage=djobs.memory(), tracker=tracker, worker=None):  # type: ignore[call-overload]
                pass

    trio.run(scenario)
    with pytest.raises(djobs.ValidationError, match=r"^tracker must be a Tracker"):
        djobs.Layers(tracker=tracker)  # type: ignore[arg-type]


@pytest.mark.parametrize("endpoint", ["not a url", "ftp://collector.test/e", "collector.test/events", "file:///x"])
def test_an_http_tracker_needs_an_http_url(endpoint: str) -> None:
    with pytest.raises(djobs.ValidationError, match=r"expected an http:// or https:// URL"):
        HttpBatchTracker(endpoint, "test", "key")
    assert HttpBatchTracker("HTTPS://collector.test/e", "test", "key").endpoint == "HTTPS://collector.test/e"
