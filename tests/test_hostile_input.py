"""Hostile input: every client verb returns its typed error or succeeds; nothing else escapes,
and storage stays consistent."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from returns.io import IOFailure, IOSuccess

import djobs
from djobs.testing import open_test_engine, success


class Profile(msgspec.Struct):
    name: str
    tags: list[str] = []
    score: int = 0
    seen_at: datetime | None = None


def keep(ctx: djobs.ContinuousContext[Profile]) -> None:
    pass


profiles = djobs.Continuous.make("profiles", state=Profile, schedule=djobs.every("1 hour"), execute=keep)

hostile_ids = st.one_of(
    st.text(max_size=40),
    st.just(""),
    st.just("x" * 10_240),
    st.just("nul\x00byte"),
    st.just("'; DROP TABLE instances; --"),
    st.just("continuous:profiles:other"),
    st.sampled_from(["\u202e", "🙂" * 50, "\ud7ff", " ", "%s", "\\", "a:b:c"]),
    st.integers(),
    st.none(),
    st.binary(max_size=10),
)


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"name": value}
    return value


hostile_inputs = st.one_of(
    st.builds(Profile, name=st.text(max_size=20), tags=st.lists(st.text(max_size=5), max_size=5)),
    st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=8), st.none()), max_size=4),
    st.just({"name": "x" * 1_000_000}),
    st.just(nested(10_000)),
    st.just({"name": 1}),
    st.just(Profile(name=123)),  # type: ignore[arg-type]  # msgspec does not check at construction
    st.just({"name": "ok", "score": 2**70}),
    st.just({"name": "ok", "seen_at": "not a date"}),
    st.just(float("nan")),
    st.just(object()),
    st.none(),
)


async def check_call(call: Any) -> Any:
    result = await call
    assert isinstance(result, IOSuccess | IOFailure), result
    if isinstance(result, IOFailure):
        error = djobs.testing.failure(result)
        assert isinstance(error, djobs.JobError), error
        assert error.message
    return result


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ids=st.lists(hostile_ids, min_size=1, max_size=4), inputs=st.lists(hostile_inputs, min_size=1, max_size=3))
def test_continuous_verbs_never_raise(ids: list[Any], inputs: list[Any]) -> None:
    async def scenario() -> None:
        async with open_test_engine([profiles], start=datetime(2026, 1, 1, tzinfo=UTC)) as engine:
            client = engine.client.continuous(profiles)
            started: set[str] = set()
            for instance_id in ids:
                for value in inputs:
                    result = await check_call(client.start(id=instance_id, input=value))
                    if isinstance(result, IOSuccess):
                        started.add(instance_id)
                await check_call(client.status(instance_id))
                await check_call(client.get_state(instance_id))
                await check_call(client.trigger(instance_id))
                await check_call(engine.client.continuous("no such job").status(instance_id))
            await engine.wait_idle()
            # Storage is consistent: every started instance reads back valid state; terminate cleans up.
            for instance_id in started:
                state = success(await client.get_state(instance_id)).state
                assert isinstance(state, Profile) and isinstance(state.name, str)
                assert success(await client.terminate(instance_id)).terminated
                assert success(await client.status(instance_id)).status == "not_found"

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.trio
async def test_sql_fragments_are_just_ids(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([profiles]) as engine:
        client = engine.client.continuous(profiles)
        evil = "x'; DELETE FROM instances; --"
        await client.start(id="innocent", input=Profile("a"))
        assert success(await client.start(id=evil, input=Profile("b"))).created
        assert success(await client.get_state(evil)).state.name == "b"
        assert success(await client.get_state("innocent")).state.name == "a"


@pytest.mark.trio
async def test_huge_state_round_trips(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([profiles]) as engine:
        client = engine.client.continuous(profiles)
        big = Profile("big", tags=["t" * 100] * 10_000)
        assert success(await client.start(id="big", input=big)).created
        assert success(await client.get_state("big")).state == big
