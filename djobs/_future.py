"""The `FutureResult` every client verb returns, built and awaited in fewer calls.

A client verb's answer is a returns ``FutureResult`` (the public type of
every verb). Made by returns' own constructor and awaited, one costs a
dozen Python calls beside the verb's work: the ``ReAwaitable`` that lets it
be awaited twice, the ``awaitable()`` coroutine, an ``IOResult`` made anew
from the verb's ``Result`` (``IOResult.from_result``, ``IOSuccess``,
``Success``). `VerbResult` is a ``FutureResult`` (a subclass: ``isinstance``
holds, and every method is returns' own, inherited) that keeps the verb's
coroutine and, awaited the first time, drives it directly and keeps its
answer: an ``IOResult`` holding the very ``Result`` the coroutine returned.
Awaited again (or through ``map``, ``bind``, ``awaitable()``, ...) it gives
that answer without running anything again, as returns' own does. A
Debounce ``add`` costs 12 calls and 14k instructions fewer so.

It leans on how returns lays out its containers, so ``pyproject.toml``
pins returns to 0.30, the minor version it is tested with: a container's
one slot is ``_inner_value``; an ``IOSuccess``'s is the ``Success`` it
holds, and a ``FutureResult``'s an awaitable of its ``Result`` that every
method of the class awaits, as many times as it likes. ``tests/test_future.py`` checks each method against
returns' own ``FutureResult``.

Awaited from two tasks at once, the second await raises ``RuntimeError``
(returns' own raises one too: its coroutine "is being awaited already");
once the first is answered, every await gives the answer.

A verb is a checkpoint where its first await begins, as a Trio function is:
awaited in a cancelled scope, it raises ``trio.Cancelled`` there, on every
storage, before its coroutine starts (nothing is read or written), and the
verb stays unspent: awaited again, it runs. A first await ended by an
exception once the verb had begun (a cancel while it waited) leaves it spent:
awaiting it again raises ``RuntimeError`` with `AWAITED_AFTER_CANCEL`, which
says to call the verb again (returns' own raises Python's bare "cannot reuse
already awaited coroutine").
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from types import CoroutineType
from typing import Any, Generic, TypeVar

from returns.future import FutureResult
from returns.io import IOResult, IOSuccess
from returns.primitives.container import BaseContainer
from returns.result import Result, Success
from trio.lowlevel import checkpoint

from ._trap import checkpoint_due

__all__ = [
    "AWAITED_AFTER_CANCEL",
    "AWAITED_TWICE",
    "VerbResult",
    "new",
    "result_of",
    "set_cell",
    "set_inner",
    "set_slot",
    "success",
]

T = TypeVar("T")
V = TypeVar("V", covariant=True)
E = TypeVar("E", covariant=True)

_new = new = object.__new__
_set = set_slot = object.__setattr__  # the containers are immutable: returns sets their slots so too
#: What a second await raises while the first still runs (from another task).
AWAITED_TWICE = "this FutureResult is being awaited by another task already: await it again once that await is done"
#: What an await raises after a first await that was cancelled (or interrupted) once the verb had begun.
AWAITED_AFTER_CANCEL = (
    "the first await of this call was cancelled (or interrupted) before it answered, so this FutureResult "
    "has no answer to give: call the verb again for a new attempt. What the first had begun may have taken "
    "effect (a write is committed whole or not at all): look (status, list) before repeating one that must "
    "happen once"
)
#: `BaseContainer`'s slot, which `VerbResult._inner_value` stands in front of.
_INNER = BaseContainer.__dict__["_inner_value"]
#: Its setter, called directly: ``object.__setattr__`` on a container first walks the class's long
#: MRO (its check that no class's own ``__setattr__`` is bypassed), about 300 ns a store; this, a third.
_set_inner = set_inner = _INNER.__set__


# returns marks FutureResult @final for type checkers only (it is an ordinary class at runtime);
# this subclass is a FutureResult in every respect the type promises, so it stays private and is
# typed as a FutureResult wherever it is returned.
class VerbResult(FutureResult[V, E]):  # type: ignore[misc]
    """A ``FutureResult`` of `coroutine`, which returns a ``Result``: awaited, its ``IOResult``.

    ``_cell[0]`` is the coroutine until its first await is answered, then the answer (an
    ``IOResult``): a list set once, whose item is stored without ``object.__setattr__``'s call.
    """

    __slots__ = ("_cell",)

    _cell: list[Coroutine[Any, Any, Result[V, E]] | IOResult[V, E]]

    def __init__(self, coroutine: Coroutine[Any, Any, Result[V, E]]) -> None:
        _set_cell(self, [coroutine])

    def __await__(self) -> Generator[Any, Any, IOResult[V, E]]:
        cell = self._cell
        state = cell[0]
        if type(state) is not CoroutineType:  # not `isinstance(state, IOResult)`: an ABC's check costs calls
            return state  # type: ignore[return-value]  # the answer
        if state.cr_suspended:  # what a slot set and reset around the first await would say, without them
            raise RuntimeError(AWAITED_TWICE)
        if state.cr_frame is None:  # spent by a first await that raised (a cancel) after it began
            raise RuntimeError(AWAITED_AFTER_CANCEL)
        if checkpoint_due():
            # Trio's rule: a cancelled scope raises at the first checkpoint. Raised before the
            # coroutine starts, so on every storage nothing is done and the verb stays unspent.
            yield from checkpoint().__await__()  # noqa: ASYNC105  # awaited: a generator awaits by yield from
            return (yield from self.__await__())  # not cancelled after all: look again (another task may have begun)
        result = yield from state.__await__()
        if type(result) is Success:
            # `IOResult.from_result`'s answer without its calls: an IOSuccess holding this Success.
            answer: IOResult[V, E] = _new(IOSuccess)
            _set_inner(answer, result)
        else:
            answer = IOResult.from_result(result)
        cell[0] = answer
        return answer

    def __repr__(self) -> str:
        """``<FutureResult: ...>`` with the coroutine, or the answer once awaited."""
        return f"<FutureResult: {self._cell[0]!r}>"

    # In front of BaseContainer's slot (filled when first read), for the inherited methods to await.
    @property
    def _inner_value(self) -> _Result[V, E]:  # type: ignore[override]
        """The awaitable of the ``Result`` every inherited method awaits (made once, when first asked for)."""
        try:
            inner: _Result[V, E] = _INNER.__get__(self, VerbResult)
        except AttributeError:
            inner = _Result(self)
            _INNER.__set__(self, inner)
        return inner


#: The setter of `VerbResult`'s slot, called directly (as `_set_inner`): ``set_cell(verb, cell)``.
_set_cell = set_cell = VerbResult.__dict__["_cell"].__set__


class _Result(Generic[V, E]):
    """The ``Result`` of a `VerbResult`, awaitable any number of times (returns' `ReAwaitable` in its own)."""

    __slots__ = ("_verb",)

    def __init__(self, verb: VerbResult[V, E]) -> None:
        self._verb = verb

    def __await__(self) -> Generator[Any, Any, Result[V, E]]:
        answer = yield from self._verb.__await__()
        return answer._inner_value

    def __repr__(self) -> str:
        return repr(self._verb._cell[0])


def success(value: T) -> Success[T]:
    """``Success(value)`` without returns' two Python calls (``Success.__init__``, then
    ``BaseContainer.__init__`` through ``super()``): about 3.2k instructions where the constructor
    takes 5k (callgrind), for a result made per event (each add of a Debounce round)."""
    made: Success[T] = _new(Success)
    _set_inner(made, value)
    return made


def result_of(answer: IOResult[V, E]) -> Result[V, E]:
    """The ``Result`` an ``IOResult`` holds (what ``unsafe_perform_io`` reads from an ``IO``)."""
    return answer._inner_value
