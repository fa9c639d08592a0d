"""A body that cannot take the arguments its kind passes is refused at ``make``, naming the call.

Before, ``Job.make("j", params=S, execute=lambda p: None)`` was accepted, and each run failed as a
TypeError that the retry policy retried.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import djobs


class Item(msgspec.Struct):
    name: str = ""


def one(a: Any) -> None:
    pass


def two(a: Any, b: Any) -> None:
    pass


def zero() -> None:
    pass


def three(a: Any, b: Any, c: Any) -> None:
    pass


async def two_async(a: Any, b: Any) -> None:
    pass


def make_job(**fns: Any) -> Any:
    return djobs.Job.make("j", params=Item, **{"execute": two, **fns})


def make_continuous(**fns: Any) -> Any:
    return djobs.Continuous.make("c", state=Item, schedule=djobs.every("1 hour"), **{"execute": one, **fns})


def make_debounce(**fns: Any) -> Any:
    return djobs.Debounce.make("d", event=Item, flush_after="1 minute", **{"execute": one, **fns})


def make_task(**fns: Any) -> Any:
    return djobs.Task.make("t", state=Item, event=Item, **{"on_event": two, "execute": one, **fns})


def make_workflow(**fns: Any) -> Any:
    return djobs.Workflow.make("w", input=Item, result=Item, **{"execute": two_async, **fns})


def make_cron(**fns: Any) -> Any:
    return djobs.CronJob.make("cr", schedule=djobs.cron("0 3 * * *"), **{"execute": two, **fns})


def make_limited(**fns: Any) -> Any:
    return djobs.Job.make("l", params=Item, execute=two, concurrency=1, **fns)


#: Every callable option of every kind: how to make it, the option, and the arguments it is called with.
OPTIONS: list[tuple[Callable[..., Any], str, tuple[str, ...]]] = [
    (make_job, "execute", ("params", "ctx")),
    (make_limited, "limit_key", ("params",)),
    (make_continuous, "execute", ("ctx",)),
    (make_debounce, "execute", ("ctx",)),
    (make_debounce, "on_event", ("ctx",)),
    (make_task, "on_event", ("event", "ctx")),
    (make_task, "execute", ("ctx",)),
    (make_task, "on_idle", ("ctx",)),
    (make_task, "on_error", ("error", "ctx")),
    (make_workflow, "execute", ("input", "ctx")),
    (make_cron, "execute", ("fire", "ctx")),
]
BY_COUNT = {0: zero, 1: one, 2: two, 3: three}


@pytest.mark.parametrize(("make", "option", "args"), OPTIONS, ids=[f"{m.__name__}-{o}" for m, o, _ in OPTIONS])
def test_a_body_with_the_wrong_number_of_parameters_is_refused_at_make(
    make: Callable[..., Any], option: str, args: tuple[str, ...]
) -> None:
    for count, fn in BY_COUNT.items():
        if count == len(args):
            continue
        with pytest.raises(djobs.ValidationError) as raised:
            make(**{option: fn})
        message = raised.value.message
        assert f"{option} is called with {len(args)} positional argument" in message, message
        assert f"({', '.join(args)})" in message, message
    # The right number is accepted, and so is whatever can take them.
    make(**{option: BY_COUNT[len(args)]})
    make(**{option: lambda *a: None})
    make(**{option: lambda *a, **k: None})
    make(**{option: functools.partial(BY_COUNT[len(args) + 1], None)})


def test_a_lambda_with_an_optional_extra_parameter_is_accepted() -> None:
    djobs.Job.make("j", params=Item, execute=lambda params, ctx, retries=3: None)


def test_a_keyword_only_parameter_without_a_default_is_refused() -> None:
    def needs_flag(params: Item, ctx: djobs.JobContext, *, flag: bool) -> None:
        pass

    with pytest.raises(djobs.ValidationError, match="flag"):
        djobs.Job.make("j", params=Item, execute=needs_flag)


def test_callable_objects_and_methods_are_checked_as_called() -> None:
    class Handler:
        def __call__(self, ctx: Any) -> None:
            pass

        def run(self, params: Item, ctx: Any) -> None:
            pass

    djobs.Continuous.make("c", state=Item, schedule=djobs.every("1 hour"), execute=Handler())
    djobs.Job.make("j", params=Item, execute=Handler().run)
    with pytest.raises(djobs.ValidationError):
        djobs.Job.make("j", params=Item, execute=Handler())


def test_a_callable_whose_signature_cannot_be_read_is_accepted() -> None:
    class Opaque:
        @property
        def __signature__(self) -> Any:
            raise ValueError("no signature")

        def __call__(self, *args: Any) -> None:
            pass

    djobs.Job.make("j", params=Item, execute=Opaque())


@st.composite
def bodies(draw: st.DrawFn) -> Callable[..., Any]:
    """A function of any shape of parameters: required and defaulted positionals, ``*args``,
    keyword-only ones with and without defaults, ``**kwargs``."""
    required = [f"r{i}" for i in range(draw(st.integers(0, 4)))]
    defaulted = [f"d{i}=None" for i in range(draw(st.integers(0, 2)))]
    star = ["*args"] if draw(st.booleans()) else []
    keywords = [f"k{i}" + ("=None" if draw(st.booleans()) else "") for i in range(draw(st.integers(0, 2)))]
    if keywords and not star:
        star = ["*"]
    rest = ["**kwargs"] if draw(st.booleans()) else []
    namespace: dict[str, Any] = {}
    exec(f"def body({', '.join(required + defaulted + star + keywords + rest)}): pass", namespace)
    return namespace["body"]  # type: ignore[no-any-return]


def runs_with(fn: Callable[..., Any], count: int) -> bool:
    """Whether `fn` can be called with `count` positional arguments (what its kind will do)."""
    try:
        fn(*[None] * count)
    except TypeError:
        return False
    return True


@given(option=st.sampled_from(OPTIONS), fn=bodies())
@settings(max_examples=300, deadline=None)
def test_a_body_is_refused_at_make_exactly_when_its_kind_could_never_call_it(
    option: tuple[Callable[..., Any], str, tuple[str, ...]], fn: Callable[..., Any]
) -> None:
    make, name, args = option
    if runs_with(fn, len(args)):
        make(**{name: fn})
    else:
        with pytest.raises(djobs.ValidationError):
            make(**{name: fn})
