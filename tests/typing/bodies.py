"""Bodies are typed by what they return: every accepted form passes, anything else fails.

Lines ending in ``# E: <code>`` must fail mypy with that error code; every other line must pass.
"""

from typing import Protocol

import msgspec
from returns.context import (
    RequiresContext,
    RequiresContextFutureResult,
    RequiresContextIOResult,
    RequiresContextResult,
)
from returns.future import FutureResult
from returns.io import IOResult, IOSuccess
from returns.maybe import Maybe, Some
from returns.result import Result, Success

import djobs


class Email(msgspec.Struct):
    to: str


class Sent(msgspec.Struct):
    message_id: str


class Count(msgspec.Struct):
    n: int = 0


class Ping(msgspec.Struct, tag=True):
    pass


class Clock(Protocol):
    def today(self) -> str: ...


# -- Job[P, R, D]: the body returns R in one of the accepted forms ---------------------


def plain(params: Email, ctx: djobs.JobContext) -> Sent:
    return Sent("m-1")


async def awaited(params: Email, ctx: djobs.JobContext) -> Sent:
    return Sent("m-1")


def result(params: Email, ctx: djobs.JobContext) -> Result[Sent, ValueError]:
    return Success(Sent("m-1"))


async def awaited_result(params: Email, ctx: djobs.JobContext) -> Result[Sent, ValueError]:
    return Success(Sent("m-1"))


def io_result(params: Email, ctx: djobs.JobContext) -> IOResult[Sent, ValueError]:
    return IOSuccess(Sent("m-1"))


def future_result(params: Email, ctx: djobs.JobContext) -> FutureResult[Sent, ValueError]:
    return FutureResult.from_value(Sent("m-1"))


def requires(params: Email, ctx: djobs.JobContext[Clock]) -> RequiresContext[Sent, Clock]:
    return RequiresContext(lambda clock: Sent(clock.today()))


def requires_result(params: Email, ctx: djobs.JobContext[Clock]) -> RequiresContextResult[Sent, ValueError, Clock]:
    return RequiresContextResult(lambda clock: Success(Sent(clock.today())))


def requires_io(params: Email, ctx: djobs.JobContext[Clock]) -> RequiresContextIOResult[Sent, ValueError, Clock]:
    return RequiresContextIOResult(lambda clock: IOSuccess(Sent(clock.today())))


def requires_future(
    params: Email, ctx: djobs.JobContext[Clock]
) -> RequiresContextFutureResult[Sent, ValueError, Clock]:
    return RequiresContextFutureResult(lambda clock: FutureResult.from_value(Sent(clock.today())))


djobs.Job.make("ok", params=Email, result=Sent, execute=plain)
djobs.Job.make("ok", params=Email, result=Sent, execute=awaited)
djobs.Job.make("ok", params=Email, result=Sent, execute=result)
djobs.Job.make("ok", params=Email, result=Sent, execute=awaited_result)
djobs.Job.make("ok", params=Email, result=Sent, execute=io_result)
djobs.Job.make("ok", params=Email, result=Sent, execute=future_result)
djobs.Job.make("ok", params=Email, result=Sent, execute=requires)
djobs.Job.make("ok", params=Email, result=Sent, execute=requires_result)
djobs.Job.make("ok", params=Email, result=Sent, execute=requires_io)
djobs.Job.make("ok", params=Email, result=Sent, execute=requires_future)
djobs.Job.make("ok", params=Email, result=Sent, execute=lambda params, ctx: Sent(params.to))


def nothing(params: Email, ctx: djobs.JobContext) -> None:
    pass


djobs.Job.make("ok", params=Email, execute=nothing)


def an_int(params: Email, ctx: djobs.JobContext) -> int:
    return 1


async def an_awaited_int(params: Email, ctx: djobs.JobContext) -> int:
    return 1


def a_result_of_int(params: Email, ctx: djobs.JobContext) -> Result[int, ValueError]:
    return Success(1)


def a_maybe(params: Email, ctx: djobs.JobContext) -> Maybe[Sent]:
    return Some(Sent("m-1"))


djobs.Job.make("bad", params=Email, result=Sent, execute=an_int)  # E: arg-type
djobs.Job.make("bad", params=Email, result=Sent, execute=an_awaited_int)  # E: arg-type
djobs.Job.make("bad", params=Email, result=Sent, execute=a_result_of_int)  # E: arg-type
djobs.Job.make("bad", params=Email, result=Sent, execute=a_maybe)  # E: arg-type
djobs.Job.make("bad", params=Email, execute=plain)  # E: arg-type


# -- Continuous and Task bodies may return the new state ---------------------------------


def count(ctx: djobs.ContinuousContext[Count]) -> Count:
    return Count(ctx.state.n + 1)


def count_later(ctx: djobs.ContinuousContext[Count]) -> FutureResult[Count, ValueError]:
    return FutureResult.from_value(Count(ctx.state.n + 1))


def keep(ctx: djobs.ContinuousContext[Count]) -> None:
    ctx.set_state(Count(ctx.state.n + 1))


def a_wrong_state(ctx: djobs.ContinuousContext[Count]) -> Email:
    return Email("x")


every = djobs.every("1 minute")
djobs.Continuous.make("ok", state=Count, schedule=every, execute=count)
djobs.Continuous.make("ok", state=Count, schedule=every, execute=count_later)
djobs.Continuous.make("ok", state=Count, schedule=every, execute=keep)
djobs.Continuous.make("ok", state=Count, schedule=every, execute=lambda ctx: Count(ctx.state.n + 1))
djobs.Continuous.make("bad", state=Count, schedule=every, execute=a_wrong_state)  # E: arg-type


def on_ping(event: Ping, ctx: djobs.TaskEventContext[Count]) -> Count:
    return Count((ctx.state or Count()).n + 1)


def run(ctx: djobs.TaskContext[Count]) -> None:
    ctx.schedule("1 hour")


def a_wrong_task_state(event: Ping, ctx: djobs.TaskEventContext[Count]) -> str:
    return "x"


djobs.Task.make("ok", state=Count, event=Ping, on_event=on_ping, execute=run)
djobs.Task.make("bad", state=Count, event=Ping, on_event=a_wrong_task_state, execute=run)  # E: arg-type


# -- Debounce: on_event returns the state; a flush returns None or a container ---------


def fold(ctx: djobs.DebounceEventContext[Ping, Count]) -> Count:
    return Count((ctx.state or Count()).n + 1)


def flush(ctx: djobs.DebounceContext[Count]) -> FutureResult[str, ValueError]:
    return FutureResult.from_value(f"sent {ctx.state.n}")


def flush_returning_a_value(ctx: djobs.DebounceContext[Count]) -> str:
    return "dropped"


def fold_to_none(ctx: djobs.DebounceEventContext[Ping, Count]) -> None:
    pass


djobs.Debounce.make("ok", event=Ping, state=Count, on_event=fold, execute=flush)
djobs.Debounce.make("bad", event=Ping, state=Count, on_event=fold, execute=flush_returning_a_value)  # E: arg-type
djobs.Debounce.make("bad", event=Ping, state=Count, on_event=fold_to_none, execute=flush)  # E: arg-type
