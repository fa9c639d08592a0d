"""Reading a verb's result in application code: `djobs.unwrap_or_raise`.

What mypy says about results (the value type kept, a failure that must be an
exception, a verb never awaited) is in tests/typing/results.py, checked with
the other type-level cases by tests/test_typing.py.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing
from returns.io import IOFailure, IOSuccess
from returns.result import Failure, Success

import djobs
from djobs.testing import open_test_engine

ROOT = Path(__file__).resolve().parent.parent


class Ping(msgspec.Struct):
    text: str


ping = djobs.Job.make("ping", params=Ping, execute=lambda p, c: None)


def test_unwrap_or_raise_gives_the_value_of_a_success() -> None:
    assert djobs.unwrap_or_raise(IOSuccess(3)) == 3
    assert djobs.unwrap_or_raise(Success("x")) == "x"
    assert djobs.unwrap_or_raise(IOSuccess(None)) is None


def test_unwrap_or_raise_raises_the_failure_itself() -> None:
    error = djobs.InstanceNotFoundError("job", "j-1")
    with pytest.raises(djobs.InstanceNotFoundError) as raised:
        djobs.unwrap_or_raise(IOFailure(error))
    assert raised.value is error and raised.value.tag == "instance_not_found"
    with pytest.raises(djobs.ValidationError, match="bad id"):
        djobs.unwrap_or_raise(Failure(djobs.ValidationError("bad id")))


def test_unwrap_or_raise_refuses_a_failure_that_is_not_an_exception() -> None:
    with pytest.raises(TypeError, match="'boom'"):
        djobs.unwrap_or_raise(IOFailure("boom"))  # type: ignore[type-var]


@pytest.mark.trio
async def test_unwrap_or_raise_on_real_verbs(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([ping]) as engine:
        job_id = djobs.unwrap_or_raise(await engine.client.job(ping).later(Ping("hi")))
        await engine.wait_idle()
        assert djobs.unwrap_or_raise(await engine.client.jobs.status(job_id)).status == "completed"
        with pytest.raises(djobs.InstanceNotFoundError):
            djobs.unwrap_or_raise(await engine.client.jobs.status("0190a000-0000-7000-8000-000000000000"))
        with pytest.raises(djobs.JobNotFoundError):
            djobs.unwrap_or_raise(await engine.client.job("nope").later({}))


@pytest.mark.trio
async def test_a_verb_not_awaited_is_a_type_error_that_says_to_await_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The quick start's idiom minus its `await`: the message says what to write, for each
    # helper that reads a result, instead of an AttributeError about a method never called.
    from djobs.testing import failure, success

    async with open_test_engine([ping]) as engine:
        for helper in (djobs.unwrap_or_raise, success, failure):
            verb = engine.client.jobs.list()
            with pytest.raises(TypeError, match=rf"{helper.__name__} got a FutureResult.*await the verb first"):
                helper(verb)  # type: ignore[arg-type]  # what untyped code and tests can do
            await verb  # the verb itself is untouched: awaited now, it runs
        with pytest.raises(TypeError, match="needs an IOResult"):
            success(3)  # type: ignore[arg-type]
