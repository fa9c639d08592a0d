"""Reading a value out of a verb's result in application code."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import NoReturn, TypeVar

from returns.future import FutureResult
from returns.io import IOResult
from returns.result import Result
from returns.unsafe import unsafe_perform_io

V = TypeVar("V")
E = TypeVar("E", bound=BaseException)


def unwrap_or_raise(result: IOResult[V, E] | Result[V, E]) -> V:
    """The value of a successful result; the error itself, raised, otherwise.

    For application code that treats a failed call as exceptional (a
    script, a request handler whose framework turns exceptions into error
    responses): ``job_id = djobs.unwrap_or_raise(await jobs.later(params))``.
    Code that handles each error in its own way matches on ``IOSuccess`` /
    ``IOFailure`` instead (see the errors reference); tests use
    ``djobs.testing.success``, which fails the test with the error.

    Args:
        result: An ``IOResult`` (what an awaited client verb gives) or a
            ``Result``, whose failure is an exception: every djobs error is
            a `JobError`, an ``Exception``. A failure that is not an
            exception is refused by the type checker.

    Returns:
        The success value. A queued job that failed is still a successful
        call: ``now`` gives a `JobRun` whose ``status`` is ``"failed"``.

    Raises:
        JobError: The failure's own error (``InstanceNotFoundError``,
            ``ValidationError``, ``StorageError``, ...), with its ``tag`` and
            ``message``, so ``except djobs.ValidationError`` works.
        TypeError: `result` is not a result: a verb not awaited (a
            ``FutureResult``; the message says to await it), or the failure
            is not an exception (only from untyped code).

    Examples:
        >>> from returns.io import IOFailure, IOSuccess
        >>> from djobs import ValidationError
        >>> unwrap_or_raise(IOSuccess(3))
        3
        >>> try:
        ...     unwrap_or_raise(IOFailure(ValidationError("instance id must not be empty")))
        ... except ValidationError as error:
        ...     print(f"{error.tag}: {error}")
        validation: instance id must not be empty
    """
    check_result(result, "unwrap_or_raise")
    if isinstance(result, IOResult):
        # An IOResult's value is an IO container, which unsafe_perform_io
        # opens (this is the program's edge, where effects end).
        return unsafe_perform_io(result.alt(_raise).unwrap())
    return result.alt(_raise).unwrap()


def check_result(result: object, helper: str) -> None:
    """Raise `TypeError` if `result`, given to `helper`, is not a result: a verb's ``FutureResult``
    (or any awaitable) not yet awaited gets a message saying to await it, not an ``AttributeError``
    about a method the caller never called."""
    if isinstance(result, IOResult | Result):
        return
    if isinstance(result, FutureResult | Awaitable):
        what = "a FutureResult" if isinstance(result, FutureResult) else f"an awaitable ({type(result).__name__})"
        raise TypeError(
            f"{helper} got {what}, not its answer: await the verb first, as in {helper}(await client.jobs.list())"
        )
    raise TypeError(f"{helper} needs an IOResult (an awaited verb's answer) or a Result, got {type(result).__name__}")


def _raise(error: object) -> NoReturn:
    if isinstance(error, BaseException):
        raise error
    raise TypeError(f"unwrap_or_raise needs a failure that is an exception, got {error!r}")
