"""A client verb that takes a collection refuses anything else with a ValidationError.

``later_many`` and ``batch`` take a sequence of params; one params struct, ``None``,
a number, a string, a set, a mapping or a generator is the caller's mistake, answered
with a `ValidationError` naming the verb, never the "unexpected" `StorageError` a bug
gets (and its ``bug:`` log line). Their flags take only a bool.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import djobs
from djobs.testing import failure, open_test_engine


class Order(msgspec.Struct):
    n: int = 0


def place(order: Order, ctx: djobs.JobContext) -> None:
    return None


job = djobs.Job.make("place", params=Order, execute=place)

not_sequences = st.one_of(
    st.builds(Order, n=st.integers(0, 9)),
    st.none(),
    st.integers(),
    st.floats(),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.sets(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
    st.just(iter([Order()])),
    st.builds(object),
)


def run(scenario: Any) -> None:
    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=not_sequences, verb=st.sampled_from(["batch", "later_many"]))
def test_a_collection_verb_given_no_sequence_is_a_validation_error(
    value: Any, verb: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with open_test_engine([job]) as engine:
            with caplog.at_level(logging.ERROR, logger="djobs"):
                caplog.clear()
                result = await getattr(engine.client.job(job), verb)(value)
            error = failure(result)
            assert isinstance(error, djobs.ValidationError), error
            assert f"{verb} takes a sequence of params" in error.message
            assert not [r for r in caplog.records if "bug:" in r.getMessage()]
            jobs = djobs.unwrap_or_raise(await engine.client.jobs.list())
            assert jobs == []  # nothing was enqueued or run

    run(scenario)


@settings(deadline=None, max_examples=40)
@given(value=st.one_of(st.text(max_size=5), st.integers(), st.none(), st.lists(st.booleans(), max_size=1)))
def test_a_flag_of_now_or_batch_that_is_no_bool_is_a_validation_error(value: Any) -> None:
    async def scenario() -> None:
        async with open_test_engine([job]) as engine:
            client = engine.client.job(job)
            for call, option in (
                (lambda: client.now(Order(), persist=value), "persist"),
                (lambda: client.batch([Order()], persist=value), "persist"),
                (lambda: client.batch([Order()], stop_on_error=value), "stop_on_error"),
            ):
                error = failure(await call())
                assert isinstance(error, djobs.ValidationError), error
                assert f"{option} must be True or False" in error.message
            assert djobs.unwrap_or_raise(await engine.client.jobs.list()) == []

    run(scenario)


@pytest.mark.trio
async def test_a_tuple_of_params_is_a_sequence(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([job]) as engine:
        runs = djobs.unwrap_or_raise(await engine.client.job(job).batch((Order(1), Order(2))))
        assert [r.ok for r in runs] == [True, True]
