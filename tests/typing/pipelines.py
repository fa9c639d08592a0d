"""A services-typed pipeline body for every kind, written with djobs's helpers and no type arguments.

Lines ending in ``# E: <code>`` must fail mypy with that error code; every other line must pass.
"""

from typing import Protocol

import msgspec
from returns.context import RequiresContextFutureResult
from returns.future import FutureResult
from returns.pipeline import flow
from returns.pointfree import alt, map_

import djobs


class ApiError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Api(Protocol):
    def refresh(self, refresh_token: str) -> FutureResult[str, ApiError]: ...
    def post(self, events: list[str]) -> FutureResult[int, ApiError]: ...
    def send(self, to: str) -> FutureResult[str, ApiError]: ...


class HasApi(Protocol):
    @property
    def api(self) -> Api: ...


class Tokens(msgspec.Struct):
    access_token: str = ""
    refresh_token: str = ""


class Batch(msgspec.Struct):
    events: list[str] = []


class Hook(msgspec.Struct):
    name: str


class Email(msgspec.Struct):
    to: str


class Sent(msgspec.Struct):
    message_id: str


class Order(msgspec.Struct, tag=True):
    id: str


class Seen(msgspec.Struct):
    orders: int = 0


def give_up_on_client_errors(error: ApiError) -> ApiError | djobs.ExecutionError:
    return djobs.non_retryable(error) if error.status < 500 else error


# Continuous: the new state is the pipeline's value.
def refresh(ctx: djobs.ContinuousContext[Tokens, HasApi]) -> FutureResult[Tokens, ApiError | djobs.ExecutionError]:
    state = ctx.state
    return (
        ctx.services.api.refresh(state.refresh_token)
        .map(lambda access: Tokens(access, state.refresh_token))
        .alt(give_up_on_client_errors)
    )


# Debounce: a flush as a RequiresContextFutureResult, run with the engine's services.
def fold(ctx: djobs.DebounceEventContext[Hook, Batch]) -> Batch:
    return Batch([*(ctx.state or Batch()).events, ctx.event.name])


def deliver(ctx: djobs.DebounceContext[Batch, HasApi]) -> RequiresContextFutureResult[int, ApiError, HasApi]:
    return djobs.ask(ctx, lambda services: services.api.post(ctx.state.events))


# Task: an event handler that returns the new state.
def on_order(event: Order, ctx: djobs.TaskEventContext[Seen, HasApi]) -> FutureResult[Seen, ApiError]:
    seen = ctx.state or Seen()
    return ctx.services.api.send(event.id).map(lambda _: Seen(seen.orders + 1))


def remind(ctx: djobs.TaskContext[Seen, HasApi]) -> None:
    ctx.schedule("1 day")


# Job: flow(...) with pointfree steps, progress as a step, typed ask.
def send_email(params: Email, ctx: djobs.JobContext[HasApi]) -> FutureResult[Sent, ApiError | djobs.ExecutionError]:
    return flow(
        ctx.services.api.send(params.to).bind_awaitable(djobs.progress(ctx, 90, "sent")),
        map_(Sent),
        alt(give_up_on_client_errors),
    )


def send_email_later(
    params: Email, ctx: djobs.JobContext[HasApi]
) -> RequiresContextFutureResult[Sent, ApiError, HasApi]:
    return djobs.ask(ctx, lambda services: services.api.send(params.to)).map(Sent)


def services_of(params: Email, ctx: djobs.JobContext[HasApi]) -> RequiresContextFutureResult[str, ApiError, HasApi]:
    return djobs.ask(ctx).map(lambda services: services.api.no_such_call())  # E: attr-defined


def a_pipeline_of_the_wrong_result(
    params: Email, ctx: djobs.JobContext[HasApi]
) -> RequiresContextFutureResult[Sent, ApiError, HasApi]:
    return djobs.ask(ctx, lambda services: services.api.send(params.to))  # E: arg-type  # E: return-value


every = djobs.every("30 minutes")
refresher = djobs.Continuous.make("refresher", state=Tokens, schedule=every, execute=refresh)
batcher = djobs.Debounce.make("batcher", event=Hook, state=Batch, on_event=fold, execute=deliver)
orders = djobs.Task.make("orders", state=Seen, event=Order, on_event=on_order, execute=remind)
mailer = djobs.Job.make("mailer", params=Email, result=Sent, execute=send_email)
later = djobs.Job.make("later", params=Email, result=Sent, execute=send_email_later)
nightly = djobs.CronJob.make("nightly", schedule="0 3 * * *", job=mailer, params=Email("ops@example.com"))


class Live:
    api: Api


async def one_engine_runs_them_all(live: Live) -> None:
    async with djobs.open_engine([refresher, batcher, orders, mailer, later, nightly], services=live) as engine:
        run = await engine.client.job(mailer).now(Email("a@example.com"))
        assert run is not None
