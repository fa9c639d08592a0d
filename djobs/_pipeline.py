"""Small typed helpers for writing job bodies as ``returns`` pipelines.

A body that returns a ``FutureResult`` or a ``RequiresContextFutureResult``
reads as one expression: a service call, then ``.map`` / ``.bind`` /
``.alt`` (or ``flow(...)`` with ``returns.pointfree``). These helpers fill
the three gaps that otherwise need type arguments or side effects:

- `ask`: the job's services as a ``RequiresContextFutureResult``, typed by
  the context (returns' own ``RequiresContextFutureResult.ask()`` needs its
  three type arguments spelled out);
- `non_retryable`: mark a failure as not worth retrying, in ``.alt``;
- `progress`: record a Job's progress as a step of the pipeline.

See the "Jobs as pipelines" guide for the seed's three jobs in this style.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Never, TypeVar, overload

from returns.context import RequiresContextFutureResult
from returns.future import FutureResult

from ._context import BaseContext
from ._errors import ExecutionError, JobError, describe, safe_repr

if TYPE_CHECKING:
    from .kinds._job import JobContext

V = TypeVar("V")
E = TypeVar("E")
D = TypeVar("D")


@overload
def ask(ctx: BaseContext[D]) -> RequiresContextFutureResult[D, Never, D]: ...
@overload
def ask(ctx: BaseContext[D], then: Callable[[D], FutureResult[V, E]]) -> RequiresContextFutureResult[V, E, D]: ...
def ask(ctx: BaseContext[Any], then: Callable[[Any], FutureResult[Any, Any]] | None = None) -> Any:
    """The job's services, read when the engine runs the pipeline (returns' ``ask``, typed by `ctx`).

    ``ask(ctx)`` is a ``RequiresContextFutureResult[D, Never, D]`` whose value
    is the services; ``ask(ctx, then)`` runs ``then(services)`` (a
    ``FutureResult[V, E]``) and is a ``RequiresContextFutureResult[V, E, D]``
    a pipeline can ``.map`` and ``.bind`` with its error type known. A body
    returning it is called with ``open_engine(services=...)``; a test calls
    it with fakes: ``await body(params, ctx)(fakes)``.

    Examples:
        ```python
        def send_email(
            params: Email, ctx: djobs.JobContext[HasMailer]
        ) -> RequiresContextFutureResult[Sent, MailError, HasMailer]:
            return djobs.ask(ctx, lambda services: services.mailer.send(params.to)).map(Sent)
        ```
    """
    asked: RequiresContextFutureResult[Any, Never, Any] = RequiresContextFutureResult.ask()
    if then is None:
        return asked
    return RequiresContextFutureResult(then)


def non_retryable(error: object) -> ExecutionError:
    """`error` as a failure that no retry policy retries: use it in ``.alt``.

    Returns an `ExecutionError` with ``retryable=False`` whose ``cause`` is
    `error` (so ``Retry(retry_on=...)``, a Task's ``on_error`` and the stored
    job error still see what happened); a djobs error keeps its message.

    Examples:
        >>> from returns.result import Failure
        >>> class NotFound(Exception): ...
        >>> failed = Failure(NotFound("no such user")).alt(non_retryable)
        >>> failed.failure().retryable, type(failed.failure().cause).__name__
        (False, 'NotFound')
    """
    if isinstance(error, ExecutionError) and not error.retryable:
        return error
    if isinstance(error, JobError):
        return ExecutionError(error.message, error, retryable=False)
    if isinstance(error, BaseException):
        return ExecutionError(describe(error), error, retryable=False)
    return ExecutionError(f"job returned a failure: {safe_repr(error)}", error, retryable=False)


def progress(ctx: JobContext[Any], percent: float, message: str | None = None) -> Callable[[V], Awaitable[V]]:
    """A step for ``.bind_awaitable(...)``: store the Job's progress, then go on with the same value.

    The progress is written when the pipeline reaches the step (not when it
    is built), as ``ctx.update_progress(percent, message)`` would: 0-100,
    clamped; a storage failure is logged, never the job's failure.

    Examples:
        ```python
        return (
            ctx.services.mailer.send(params.to, params.subject)
            .bind_awaitable(djobs.progress(ctx, 90, "sent"))
            .map(Sent)
        )
        ```
    """

    async def step(value: V) -> V:
        await ctx.update_progress(percent, message)
        return value

    return step
