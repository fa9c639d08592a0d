"""The client verbs' `FutureResult` (`djobs._future.VerbResult`) answers as returns' own does.

Every verb returns one; a caller composes it with returns' methods, awaits it
twice, or awaits it after a ``map``. Each case below is run on a returns
``FutureResult`` and on a `VerbResult` of the same coroutine (a success or a
failure), and both must give the same answers, in the same orders of awaits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from returns.future import Future, FutureResult
from returns.io import IO, IOFailure, IOSuccess
from returns.result import Failure, Result, Success

import djobs
from djobs._future import AWAITED_AFTER_CANCEL, AWAITED_TWICE, VerbResult, success
from djobs.testing import open_test_engine


async def _later(result: Result[int, int]) -> Result[int, int]:
    await trio.lowlevel.checkpoint()  # parks once, as a verb does
    return result


async def _double(x: int) -> FutureResult[int, int]:
    return FutureResult.from_value(x * 2)


async def _inc(x: int) -> int:
    return x + 1


async def _future(x: int) -> Future[int]:
    return Future.from_value(x - 1)


async def _iterate(f: FutureResult[int, int]) -> list[int]:
    return [x async for x in f]


#: What a caller does with a verb's result: each gives an awaitable, made anew per await.
USES: dict[str, Callable[[FutureResult[int, int]], Awaitable[Any]]] = {
    "await": lambda f: f,
    "awaitable": lambda f: f.awaitable(),
    "swap": lambda f: f.swap(),
    "map": lambda f: f.map(lambda x: x * 2),
    "apply": lambda f: f.apply(FutureResult.from_value(lambda x: x + 1)),
    "bind": lambda f: f.bind(lambda x: FutureResult.from_value(x) if x % 2 else FutureResult.from_failure(x)),
    "bind_async": lambda f: f.bind_async(_double),
    "bind_awaitable": lambda f: f.bind_awaitable(_inc),
    "bind_result": lambda f: f.bind_result(lambda x: Success(x) if x % 2 else Failure(-x)),
    "bind_ioresult": lambda f: f.bind_ioresult(lambda x: IOSuccess(x + 3)),
    "bind_io": lambda f: f.bind_io(lambda x: IO(x * 5)),
    "bind_future": lambda f: f.bind_future(lambda x: Future.from_value(x + 7)),
    "bind_async_future": lambda f: f.bind_async_future(_future),
    "alt": lambda f: f.alt(lambda e: e * 3),
    "lash": lambda f: f.lash(lambda e: FutureResult.from_value(e + 1)),
    "compose_result": lambda f: f.compose_result(lambda r: FutureResult.from_result(r.map(str))),
    "do": lambda f: FutureResult.do(x + 1 async for x in f),
    "async iteration": _iterate,
    "from_future_result": lambda f: FutureResult.from_future_result(f),
}


async def _outcome(awaitable: Awaitable[Any]) -> object:
    try:
        return await awaitable
    except Exception as exc:  # what a use raises is compared too
        return (type(exc), str(exc))


async def _answers(f: FutureResult[int, int], use: Callable[[FutureResult[int, int]], Awaitable[Any]]) -> list[object]:
    """The answers of `use` awaited twice, then of the container itself and its awaitable(), then `use` again."""
    return [
        await _outcome(use(f)),
        await _outcome(use(f)),
        await _outcome(f),
        await _outcome(f.awaitable()),
        await _outcome(use(f)),
    ]


@pytest.mark.parametrize("use", USES, ids=list(USES))
@settings(max_examples=20, deadline=None)
@given(value=st.integers(), succeeds=st.booleans())
def test_each_use_answers_as_returns_own(use: str, value: int, succeeds: bool) -> None:
    result: Result[int, int] = Success(value) if succeeds else Failure(value)

    async def main() -> None:
        own = await _answers(FutureResult(_later(result)), USES[use])
        verb = await _answers(VerbResult(_later(result)), USES[use])
        assert verb == own

    trio.run(main)


def test_awaited_first_then_used_answers_as_returns_own() -> None:
    async def main() -> None:
        for result in (Success(4), Failure(5)):
            own, verb = FutureResult(_later(result)), VerbResult(_later(result))
            assert await verb == await own == _io_of(result)
            for use in USES.values():
                assert await _outcome(use(verb)) == await _outcome(use(own))

    trio.run(main)


def _io_of(result: Result[int, int]) -> object:
    return IOSuccess(result.unwrap()) if isinstance(result, Success) else IOFailure(result.failure())


def test_awaited_answer_holds_the_coroutines_result() -> None:
    async def main() -> None:
        success: Result[int, int] = Success(1)
        answer = await VerbResult(_later(success))
        assert answer == IOSuccess(1)
        assert isinstance(answer, IOSuccess)
        assert answer._inner_value is success  # the very Result, not a copy
        failed = await VerbResult(_later(Failure(2)))
        assert failed == IOFailure(2)
        assert isinstance(failed, IOFailure)

    trio.run(main)


async def _parked(result: Result[int, int]) -> Result[int, int]:
    await trio.sleep(1)
    return result


@pytest.mark.parametrize("kind", [FutureResult, VerbResult], ids=["returns", "djobs"])
def test_awaited_from_two_tasks_at_once_the_second_raises(kind: type[FutureResult[int, int]]) -> None:
    """Both raise ``RuntimeError`` in the second task; the first gets the answer, and later awaits too."""

    async def main() -> None:
        f = kind(_parked(Success(1)))
        got: dict[str, object] = {}

        async def first() -> None:
            got["first"] = await f

        async def second() -> None:
            got["second"] = await _outcome(f)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(second)
        assert got["first"] == IOSuccess(1)
        assert got["second"][0] is RuntimeError  # type: ignore[index]
        assert await f == IOSuccess(1)
        assert await f.map(lambda x: x + 1) == IOSuccess(2)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("kind", [FutureResult, VerbResult], ids=["returns", "djobs"])
def test_a_first_await_cancelled_leaves_it_spent(kind: type[FutureResult[int, int]]) -> None:
    async def main() -> None:
        f = kind(_parked(Success(1)))
        with trio.move_on_after(0.5):
            await f
        with pytest.raises(RuntimeError) as raised:
            await f
        # returns' own gives Python's bare message; djobs's says what to do.
        assert str(raised.value) == (
            "cannot reuse already awaited coroutine" if kind is FutureResult else AWAITED_AFTER_CANCEL
        )

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class Hit(msgspec.Struct):
    n: int


class Hits(msgspec.Struct):
    count: int = 0


hits = djobs.Debounce.make(
    "hits",
    event=Hit,
    state=Hits,
    on_event=lambda ctx: Hits((ctx.state.count if ctx.state else 0) + 1),
    execute=lambda ctx: None,
    flush_after="1 hour",
)
ping = djobs.Job.make("ping", params=Hit, execute=lambda p, c: None)


def test_client_verbs_return_future_results_that_compose() -> None:
    async def main() -> None:
        async with open_test_engine([hits, ping]) as engine:
            added = engine.client.debounce(hits).add(id="a", event=Hit(1))
            later = engine.client.job(ping).later(Hit(1))
            status = engine.client.debounce(hits).status("a")
            for verb in (added, later, status):
                assert isinstance(verb, FutureResult)
                assert isinstance(verb, VerbResult)
            assert await added.map(lambda r: r.event_count) == IOSuccess(1)
            assert djobs.unwrap_or_raise(await added).created
            assert isinstance(djobs.unwrap_or_raise(await later.awaitable()), str)
            assert (await status.map(lambda s: s.status)) == IOSuccess("debouncing")

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(max_examples=50)
@given(value=st.integers() | st.text() | st.none())
def test_success_is_returns_success(value: object) -> None:
    made = success(value)
    assert type(made) is Success
    assert made == Success(value)
    assert hash(made) == hash(Success(value))
    assert repr(made) == repr(Success(value))
    assert made.map(str) == Success(str(value))
    assert made.unwrap() == value
    assert made.value_or(0) == value


def test_an_add_parked_behind_another_answers_once_and_is_spent_by_a_cancel() -> None:
    """A Debounce add is its own awaitable (no coroutine under it): awaited again while it waits
    for its round, it raises; a cancel while it waits leaves it spent, and the add applied."""
    gate = trio.Event()

    async def held(ctx: djobs.DebounceEventContext[Hit, Hits]) -> Hits:
        if ctx.event.n == 1:
            await gate.wait()  # the writer's round waits here: the adds after it queue and park
        return Hits((ctx.state.count if ctx.state else 0) + 1)

    slow = djobs.Debounce.make("slow", event=Hit, state=Hits, on_event=held, execute=lambda ctx: None)

    async def main() -> None:
        async with open_test_engine([slow]) as engine:
            client = engine.client.debounce(slow)
            got: dict[str, object] = {}
            first, second, third = (client.add(id="a", event=Hit(n)) for n in (1, 2, 3))
            scope = trio.CancelScope()

            async def await_into(name: str, verb: FutureResult[object, object]) -> None:
                got[name] = await _outcome(verb)

            async def cancelled() -> None:
                with scope:
                    await third

            async with trio.open_nursery() as nursery:
                nursery.start_soon(await_into, "first", first)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(await_into, "second", second)
                nursery.start_soon(cancelled)
                await trio.testing.wait_all_tasks_blocked()  # both parked in the first one's queue
                got["again"] = await _outcome(second)
                scope.cancel()
                await trio.testing.wait_all_tasks_blocked()
                gate.set()
            assert got["again"] == (RuntimeError, AWAITED_TWICE)
            assert scope.cancelled_caught
            assert await second == got["second"]
            assert djobs.unwrap_or_raise(await second).event_count in (2, 3)  # Trio runs the two in either order
            with pytest.raises(RuntimeError) as raised:
                await third
            assert str(raised.value) == AWAITED_AFTER_CANCEL
            status = djobs.unwrap_or_raise(await client.status("a"))
            assert status.event_count == 3  # the cancelled caller's add was applied all the same

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
