"""Every option of every kind's ``make`` and of the public options structs is checked when it is given.

A bad option is a bug in the program: it must be a `ValidationError` naming the option at
``make`` (or at the struct's construction), never a run that fails later, an engine that
does not open, or a retry policy that quietly does something else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import djobs
from djobs.tracking import HttpBatchTracker


class S(msgspec.Struct):
    a: int = 0


def _none(*args: object) -> None:
    return None


async def _workflow(i: S, ctx: djobs.WorkflowContext) -> str:
    return ""


MAKERS: dict[str, Callable[..., object]] = {
    "Continuous": lambda **kw: djobs.Continuous.make("c", state=S, schedule=djobs.every("1s"), execute=_none, **kw),
    "Debounce": lambda **kw: djobs.Debounce.make("d", event=S, flush_after="1s", execute=_none, **kw),
    "Task": lambda **kw: djobs.Task.make("t", state=S, event=S, on_event=_none, execute=_none, **kw),
    "Job": lambda **kw: djobs.Job.make("j", params=S, execute=_none, **kw),
    "CronJob": lambda **kw: djobs.CronJob.make("cj", schedule="* * * * *", execute=_none, **kw),
    "Workflow": lambda **kw: djobs.Workflow.make("w", input=S, result=str, execute=_workflow, **kw),
}

#: Values no option of a definition takes as they are: the mistakes a person makes.
junk = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["DEBUG", "loud", "3", "info"]),
    st.floats(allow_nan=True),
    st.lists(st.integers(), max_size=2),
    st.builds(object),
    st.just([ValueError]),
)


@pytest.mark.parametrize("kind", sorted(MAKERS))
@given(value=st.one_of(junk, st.integers()))
def test_a_retry_that_is_not_a_retry_policy_is_refused_at_make(kind: str, value: Any) -> None:
    with pytest.raises(djobs.ValidationError, match=rf"{kind} '\w+': retry must be a djobs.Retry"):
        MAKERS[kind](retry=value)


@pytest.mark.parametrize("kind", sorted(MAKERS))
@given(value=st.one_of(junk, st.integers(max_value=-1)))
def test_a_logging_option_that_is_no_level_is_refused_at_make(kind: str, value: Any) -> None:
    with pytest.raises(djobs.ValidationError, match=rf"{kind} '\w+': logging must be"):
        MAKERS[kind](logging=value)


@pytest.mark.parametrize("kind", sorted(MAKERS))
@given(value=st.one_of(st.booleans(), st.none(), st.integers(min_value=0, max_value=100)))
def test_every_documented_logging_option_is_accepted(kind: str, value: Any) -> None:
    assert MAKERS[kind](logging=value) is not None


def test_a_level_name_is_told_the_constant_to_pass() -> None:
    with pytest.raises(djobs.ValidationError, match=r"pass logging\.DEBUG"):
        MAKERS["Job"](logging="debug")
    assert MAKERS["Job"](logging=logging.DEBUG) is not None


@given(value=st.one_of(junk, st.integers()))
def test_start_immediately_must_be_a_bool(value: Any) -> None:
    with pytest.raises(djobs.ValidationError, match="start_immediately must be True or False"):
        MAKERS["Continuous"](start_immediately=value)


@pytest.mark.parametrize(
    "option",
    [
        {"retry": djobs.Retry()},
        {"max_attempts": 2},
        {"logging": True},
        {"timeout": "1s"},
        {"blocking": True},
        {"concurrency": 1},
        {"rate_limit": "1/second"},
    ],
)
def test_a_cron_job_of_a_job_refuses_the_options_that_go_with_execute(option: dict[str, Any]) -> None:
    job = djobs.Job.make("j", params=S, execute=_none)
    with pytest.raises(djobs.ValidationError, match="go with execute="):
        djobs.CronJob.make("cj", schedule="* * * * *", job=job, **option)


async def _async_none(*args: object) -> None:
    return None


@pytest.mark.parametrize(
    "option",
    [
        {"timeout": "banana"},
        {"max_attempts": 0},
        {"concurrency": 0},
        {"rate_limit": "often"},
        {"rate_limit": 5},
        {"blocking": "yes"},
        {"retry": "x"},
        {"logging": "loud"},
        {"execute": "not a body"},
        {"execute": _async_none, "blocking": True},
    ],
)
def test_a_cron_job_with_a_bad_option_names_itself_in_the_error(option: dict[str, Any]) -> None:
    # Its body becomes a Job, whose checks name a Job: the message names the CronJob the person wrote.
    option = {"execute": _none} | option
    with pytest.raises(djobs.ValidationError, match=r"^(invalid )?CronJob 'cj': "):
        djobs.CronJob.make("cj", schedule="* * * * *", **option)


def test_a_cron_job_with_its_own_body_refuses_params() -> None:
    with pytest.raises(djobs.ValidationError, match="params= goes with job="):
        djobs.CronJob.make("cj", schedule="* * * * *", execute=_none, params=S())


@given(value=st.one_of(junk, st.integers()))
def test_retry_jitter_must_be_a_bool(value: Any) -> None:
    with pytest.raises(djobs.ValidationError, match="jitter must be True or False"):
        djobs.Retry(jitter=value)


@given(
    value=st.one_of(
        junk,
        st.integers(),
        st.lists(st.sampled_from([ValueError, KeyError]), min_size=1, max_size=3),
        st.tuples(st.sampled_from([ValueError, int, str])).filter(lambda t: t[0] is not ValueError),
        st.sampled_from([int, str, S, ValueError("x")]),
    )
)
def test_retry_on_must_be_exception_types(value: Any) -> None:
    with pytest.raises(djobs.ValidationError, match="retry_on must be None, an exception type or a tuple"):
        djobs.Retry(retry_on=value)


def test_retry_on_takes_one_type_or_a_tuple_and_retries_by_them() -> None:
    one = djobs.Retry(retry_on=ValueError)
    two = djobs.Retry(retry_on=(ValueError, KeyError))
    assert one.retry_on == (ValueError,)
    assert two.retry_on == (ValueError, KeyError)
    assert one.should_retry(djobs.ExecutionError("x", cause=ValueError("x")))
    assert not one.should_retry(djobs.ExecutionError("x", cause=KeyError("x")))
    assert two.should_retry(djobs.ExecutionError("x", cause=KeyError("x")))


@given(
    value=st.one_of(
        st.text(max_size=10).filter(lambda t: t not in ("linear", "fixed")), st.integers(), st.floats(allow_nan=False)
    )
)
def test_a_backoff_name_that_is_not_one_is_refused_even_when_falsy(value: Any) -> None:
    with pytest.raises(djobs.ValidationError):
        djobs.Retry(backoff=value)


@pytest.mark.parametrize("option", ["backoff", "client"])
@given(value=st.one_of(junk, st.integers()))
def test_an_http_tracker_refuses_a_backoff_or_client_of_another_type(option: str, value: Any) -> None:
    with pytest.raises(djobs.ValidationError, match=option):
        HttpBatchTracker("http://collector.invalid/events", "test", "key", **{option: value})


@given(batch_size=st.integers(1, 1_000), max_concurrency=st.integers(1, 1_000))
def test_batch_size_is_at_least_max_concurrency_as_documented(batch_size: int, max_concurrency: int) -> None:
    options = djobs.WorkerOptions(batch_size=batch_size, max_concurrency=max_concurrency)
    assert options.batch_size == max(batch_size, max_concurrency)
    assert options.max_concurrency == max_concurrency


class Other(msgspec.Struct):
    b: int = 0


def test_a_task_event_type_msgspec_cannot_decode_is_refused_in_words_that_say_what_is_taken() -> None:
    with pytest.raises(djobs.ValidationError, match="event must be a type msgspec can decode") as raised:
        djobs.Task.make("t", state=S, event=S | Other, on_event=_none, execute=_none)
    assert "union of structs made with tag=True" in raised.value.message
    assert "such as int or list[Item]" in raised.value.message


def count(event: int, ctx: djobs.TaskEventContext[S]) -> S:
    return S(event)


@pytest.mark.trio
async def test_a_task_of_int_events_takes_them_as_the_message_says(autojump_clock: trio.testing.MockClock) -> None:
    from djobs.testing import open_test_engine, success

    counter = djobs.Task.make("counter", state=S, event=int, on_event=count, execute=_none)
    async with open_test_engine([counter]) as engine:
        success(await engine.client.task(counter).send(id="c", event=7))
        assert success(await engine.client.task(counter).get_state("c")).state == S(7)


@pytest.mark.parametrize("option", ["event", "on_event", "execute"])
def test_a_task_needs_its_event_type_and_both_handlers(option: str) -> None:
    options: dict[str, Any] = {"state": S, "event": S, "on_event": _none, "execute": _none, option: None}
    with pytest.raises(djobs.ValidationError, match=rf"Task 't': {option} "):
        djobs.Task.make("t", **options)
