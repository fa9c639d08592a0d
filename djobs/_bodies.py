"""What a job body may return, as types (for mypy) and as one run-time normaliser.

A body is the user's function: a Job's ``execute(params, ctx)``, a
Continuous's ``execute(ctx)``, a Debounce's ``on_event`` and ``execute``, a
Task's four handlers. Each is typed ``Callable[[..., Context[..., D]],
Returns[T, D]]``: it returns its value `T` in one of the forms below, and the
type checker refuses anything else. `normalise` is the same list at run time.

The accepted forms (``E`` is any error type; a failure that is not a
`JobError` becomes an `ExecutionError` whose ``cause`` it is):

- ``T`` itself, or a ``Result[T, E]`` / ``IOResult[T, E]``;
- an awaitable of any of those (an ``async def`` body);
- a ``FutureResult[T, E]``;
- a ``RequiresContext[T, D]``, ``RequiresContextResult[T, E, D]``,
  ``RequiresContextIOResult[T, E, D]`` or ``RequiresContextFutureResult[T, E,
  D]``: called with the engine's services (``open_engine(services=...)``),
  then treated as the form it gives.

Anything else from returns (``Maybe``, ``IO``, a ``RequiresContext*`` of a
form not listed) and a generator are refused with a `ValidationError` that
names these forms: a body never "succeeds" without having run. The refusal
comes when the job is defined for a generator function and for a body whose
return annotation names a refused form, and when it runs otherwise.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Awaitable
from typing import Any, Final, TypeAlias, TypeVar, cast

from returns.context import (
    RequiresContext,
    RequiresContextFutureResult,
    RequiresContextIOResult,
    RequiresContextResult,
)
from returns.future import FutureResult
from returns.io import IOResult, IOSuccess
from returns.primitives.container import BaseContainer
from returns.result import Failure, Result, Success
from returns.unsafe import unsafe_perform_io

from ._errors import ValidationError

T = TypeVar("T")
D = TypeVar("D")

#: Everything a body whose value is `T` and whose services are `D` may return.
Returns: TypeAlias = (
    T
    | Result[T, object]
    | IOResult[T, object]
    | Awaitable[T | Result[T, object] | IOResult[T, object]]
    | FutureResult[T, object]
    | RequiresContext[T, D]
    | RequiresContextResult[T, object, D]
    | RequiresContextIOResult[T, Any, D]  # its error type is invariant in returns
    | RequiresContextFutureResult[T, object, D]
)

#: What a body that has no value to give (a Debounce flush) may return: ``None``
#: (or an awaitable of it), or any container of the forms above; its value is dropped.
Done: TypeAlias = (
    Awaitable[Result[object, object] | IOResult[object, object] | None]
    | Result[object, object]
    | IOResult[object, object]
    | FutureResult[object, object]
    | RequiresContext[object, D]
    | RequiresContextResult[object, object, D]
    | RequiresContextIOResult[object, Any, D]
    | RequiresContextFutureResult[object, object, D]
    | None
)

ACCEPTED_FORMS = (
    "a value, a Result or IOResult, an awaitable of one of those (async def), a FutureResult, "
    "or a RequiresContext, RequiresContextResult, RequiresContextIOResult or RequiresContextFutureResult "
    "(called with the engine's services)"
)


def refused(what: str, value: object) -> ValidationError:
    """The error for a body that returned something no run can come from."""
    return ValidationError(f"{what} returned {type(value).__name__}, which djobs cannot run; return {ACCEPTED_FORMS}")


def check_body(fn: object, what: str, args: tuple[str, ...]) -> None:
    """Refuse, at definition time, a body that can never run: not callable, one that
    cannot be called with the positional arguments its kind passes (`args`, named as
    the docs name them: ``("params", "ctx")``; see `check_arity`), a generator
    function, or one whose return annotation names a form `normalise` refuses (``Maybe``,
    ``IO``, another container of returns that is neither a result nor awaitable).

    An unannotated body, or one whose annotation cannot be resolved (a forward
    reference to a name not importable here), is checked when it runs instead.

    Raises:
        ValidationError: naming the accepted forms, or the call the body cannot take.
    """
    check_arity(fn, what, args)
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise ValidationError(f"{what} is a generator function, which djobs cannot run; return {ACCEPTED_FORMS}")
    declared = _declared_return(fn)
    if declared is not None:
        raise ValidationError(
            f"{what} is annotated to return {declared.__name__}, which djobs cannot run; return {ACCEPTED_FORMS}"
        )


def check_arity(fn: object, what: str, args: tuple[str, ...]) -> None:
    """Refuse `fn` unless it is callable with ``len(args)`` positional arguments.

    A function with the wrong number of parameters would fail each time it
    is called, as a `TypeError` that a retry policy retries. Checked with
    ``inspect.signature(fn).bind``: a callable whose signature cannot be read
    (some builtins and C extensions) is accepted, and fails when called.

    Raises:
        ValidationError: `fn` is not callable, or cannot take those arguments.
    """
    if not callable(fn):
        raise ValidationError(f"{what} must be callable, got {fn!r}")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read: checked when it is called
        return
    try:
        signature.bind(*args)
    except TypeError as exc:
        called = f"({', '.join(args)})"
        raise ValidationError(
            f"{what} is called with {len(args)} positional argument{'s' if len(args) != 1 else ''} "
            f"{called}, which its signature {signature} cannot take: {exc}"
        ) from None


#: The containers of returns a body may give (their subclasses, e.g. ``Success``, too).
_ACCEPTED_CONTAINERS: tuple[type, ...] = (
    Result,
    IOResult,
    FutureResult,
    RequiresContext,
    RequiresContextResult,
    RequiresContextIOResult,
    RequiresContextFutureResult,
)


def _declared_return(fn: object) -> type | None:
    """The refused container class `fn`'s return annotation names, if it names one."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references, objects without annotations
        return None
    annotation = hints.get("return")
    if annotation is None:
        return None
    origin = typing.get_origin(annotation) or annotation
    if origin in (collections.abc.Awaitable, collections.abc.Coroutine):
        args = typing.get_args(annotation)
        annotation = args[-1] if args else None
        origin = typing.get_origin(annotation) or annotation
    if not isinstance(origin, type) or not issubclass(origin, BaseContainer):
        return None
    if issubclass(origin, _ACCEPTED_CONTAINERS) or hasattr(origin, "__await__"):
        return None
    return origin


async def normalise(value: object, services: object, what: str) -> Result[object, object]:
    """Turn what a body returned into a ``Result`` (a failure keeps its own error value).

    A ``RequiresContext*`` is called with `services`, an awaitable awaited,
    and what they give is normalised in turn. Raises only what running the
    body raises; a form no run can come from is a ``Failure`` of a
    `ValidationError` naming the accepted forms (see `refused`).
    """
    for _ in range(_MAX_NESTING):
        # The common forms, decided by type alone (one dict lookup, not a chain of
        # isinstance checks against abstract classes): a coroutine, a plain value.
        form = _FORMS.get(type(value))
        if form is _AWAIT:
            value = await cast(Awaitable[object], value)
            continue
        if form is _PLAIN:
            return Success(value)
        if form is _RESULT:
            return cast(Result[object, object], value)
        if form is None and _remember(type(value)):
            continue  # decided now; take the fast path above
        if isinstance(
            value, RequiresContext | RequiresContextResult | RequiresContextIOResult | RequiresContextFutureResult
        ):
            value = value(services)
        elif isinstance(value, FutureResult):
            value = await value
        elif isinstance(value, IOResult):
            return _from_io(value)
        elif isinstance(value, Result):
            return cast(Result[object, object], value)
        elif inspect.isawaitable(value):
            value = await value
        elif isinstance(value, BaseContainer) or inspect.isgenerator(value) or inspect.isasyncgen(value):
            return Failure(refused(what, value))
        else:
            return Success(value)
    return Failure(refused(what, value))


def immediate(value: object) -> Result[object, object] | None:
    """`normalise`'s answer for a value that needs no await (a plain value or a ``Result``),
    without awaiting; ``None`` for any other form (normalise it)."""
    if value is None:  # most synchronous bodies' value: one shared result, no container built
        return _SUCCESS_NONE
    form = _FORMS.get(type(value))
    if form is None and _remember(type(value)):
        form = _FORMS[type(value)]
    if form is _PLAIN:
        return Success(value)
    if form is _RESULT:
        return cast(Result[object, object], value)
    return None


def is_plain(value: object) -> bool:
    """Whether `value` is a plain value (no ``Result``, container or awaitable): `immediate`
    would give ``Success(value)``. Lets a hot path use the value without building that."""
    form = _FORMS.get(type(value))
    if form is None and _remember(type(value)):
        form = _FORMS[type(value)]
    return form is _PLAIN


#: ``Success(None)``, built once: containers are immutable, so every run may share it.
_SUCCESS_NONE: Final[Result[object, object]] = Success(None)

#: How many wrappers deep a body's value may be (an async def returning a FutureResult is two).
_MAX_NESTING = 4

_AWAIT, _PLAIN, _RESULT, _OTHER = "await", "plain", "result", "other"
#: The form of a body's value by its exact type, learnt as types are seen: whether a
#: value is a container, an awaitable or plain depends on its class only, except for
#: generators (a ``types.coroutine`` generator is awaitable), which are never cached.
_FORMS: dict[type, str] = {type(None): _PLAIN, Success: _RESULT, Failure: _RESULT}
_FORMS_LIMIT = 1024


def plain_type(tp: object) -> bool:
    """Whether every value of exactly the class `tp` is a plain value (`is_plain`): no
    container, generator or awaitable. ``False`` for what is not a class."""
    return isinstance(tp, type) and _form_of(tp) is _PLAIN


def _form_of(tp: type) -> str | None:
    """`tp`'s form by its class alone; ``None`` for a generator's (its form is per value)."""
    if tp is types.GeneratorType or tp is types.AsyncGeneratorType:
        return None
    if tp is types.CoroutineType:
        return _AWAIT
    if issubclass(tp, BaseContainer) or hasattr(tp, "__await__"):
        return _OTHER  # containers and other awaitables: the isinstance chain below
    return _PLAIN


def _remember(tp: type) -> bool:
    """Decide `tp`'s form for the fast path; whether it was (else the value takes the slow path)."""
    if len(_FORMS) >= _FORMS_LIMIT:
        return False
    form = _form_of(tp)
    if form is None:
        return False
    _FORMS[tp] = form
    return form is not _OTHER


def _from_io(value: IOResult[object, object]) -> Result[object, object]:
    # The Result inside the IOResult, through returns' `compose_result` (which sees it whole).
    return unsafe_perform_io(value.compose_result(IOSuccess).unwrap())
