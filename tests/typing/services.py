"""The services type parameter: what open_engine accepts, and what a body may do with ``ctx.services``.

Lines ending in ``# E: <code>`` must fail mypy with that error code; every other line must pass.
Services that some definition cannot use are reported either as the list item
that needs more (``list-item``: "expected Definition[OnlyTokens]") or, when the
services are no candidate at all, as mypy's "Cannot infer value of type
parameter "Services" of "open_engine"" (``misc``).
"""

from typing import Protocol

import msgspec
from returns.future import FutureResult

import djobs


class Tokens(msgspec.Struct):
    access_token: str = ""
    refresh_token: str = ""


class TokenApi(Protocol):
    def refresh(self, refresh_token: str) -> FutureResult[str, Exception]: ...


class HasTokenApi(Protocol):
    @property
    def tokens(self) -> TokenApi: ...


class Mailer(Protocol):
    def send(self, to: str) -> FutureResult[str, Exception]: ...


class HasMailer(Protocol):
    @property
    def mailer(self) -> Mailer: ...


class AppServices(HasTokenApi, HasMailer, Protocol):
    """Both: the intersection of what the two jobs below need."""


class RealTokenApi:
    def refresh(self, refresh_token: str) -> FutureResult[str, Exception]:
        return FutureResult.from_value("at-" + refresh_token)


class RealMailer:
    def send(self, to: str) -> FutureResult[str, Exception]:
        return FutureResult.from_value("m-" + to)


class OnlyTokens:
    tokens = RealTokenApi()


class OnlyMail:
    mailer = RealMailer()


class Both:
    tokens = RealTokenApi()
    mailer = RealMailer()


def refresh(ctx: djobs.ContinuousContext[Tokens, HasTokenApi]) -> FutureResult[Tokens, Exception]:
    state = ctx.state
    return ctx.services.tokens.refresh(state.refresh_token).map(lambda token: Tokens(token, state.refresh_token))


class Email(msgspec.Struct):
    to: str


def send(params: Email, ctx: djobs.JobContext[HasMailer]) -> FutureResult[None, Exception]:
    return ctx.services.mailer.send(params.to).map(lambda _: None)


def tick(ctx: djobs.ContinuousContext[Tokens]) -> None:
    ctx.log.info("the one-parameter spelling: a body that needs no services")


every = djobs.every("30 minutes")
refresher = djobs.Continuous.make("refresher", state=Tokens, schedule=every, execute=refresh)
mailer = djobs.Job.make("mailer", params=Email, execute=send)
ticker = djobs.Continuous.make("ticker", state=Tokens, schedule=every, execute=tick)


# The definitions' types were inferred from their bodies; they are contravariant in the services.
as_inferred: djobs.Continuous[Tokens, HasTokenApi] = refresher
where_more_is_given: djobs.Continuous[Tokens, AppServices] = refresher
where_nothing_is_given: djobs.Continuous[Tokens, object] = refresher  # E: assignment
one_parameter_spelling: djobs.Continuous[Tokens] = ticker
needs_nothing_so_fits_anywhere: djobs.Continuous[Tokens, AppServices] = ticker
job_spelled_without_services: djobs.Job[Email, None] = mailer  # E: assignment


def contexts_are_covariant(ctx: djobs.ContinuousContext[Tokens, AppServices]) -> None:
    narrower: djobs.ContinuousContext[Tokens, HasTokenApi] = ctx
    assert narrower.services.tokens is not None


async def the_engine_is_typed_by_its_services() -> None:
    async with djobs.open_engine([refresher], services=OnlyTokens()) as engine:
        typed: djobs.Engine[OnlyTokens] = engine
        assert typed.services.tokens is not None
        wrong: djobs.Engine[OnlyMail] = engine  # E: assignment
        assert wrong is not None


async def a_definition_needing_no_services_accepts_any() -> None:
    async with djobs.open_engine([ticker], services=object()):
        pass
    async with djobs.open_engine([ticker]):
        pass


async def a_and_b_pass_with_services_that_are_both() -> None:
    async with djobs.open_engine([refresher, mailer, ticker], services=Both()):
        pass


async def a_and_b_pass_with_an_intersection_protocol(services: AppServices) -> None:
    async with djobs.open_engine([refresher, mailer], services=services):
        pass


async def a_list_built_apart_is_annotated_with_its_services() -> None:
    definitions: list[djobs.Definition[AppServices]] = [refresher, mailer, ticker]
    async with djobs.open_engine(definitions, services=Both()):
        pass


# -- the wrong programs ---------------------------------------------------------------


def no_such_service(ctx: djobs.ContinuousContext[Tokens]) -> None:
    ctx.services.no_such_thing()  # E: attr-defined '"object" has no attribute "no_such_thing"'


def no_such_method(ctx: djobs.ContinuousContext[Tokens, HasTokenApi]) -> None:
    ctx.services.tokens.no_such_thing()  # E: attr-defined


async def a_token_job_with_services_that_are_not_a_token_api() -> None:
    async with djobs.open_engine([refresher], services=object()):  # E: misc "Services"
        pass


async def a_token_job_without_services() -> None:
    async with djobs.open_engine([refresher]):  # E: list-item
        pass


async def a_and_b_with_services_that_are_only_a() -> None:
    only_a = OnlyTokens()
    async with djobs.open_engine([refresher, mailer], services=only_a):  # E: list-item '"Definition[OnlyTokens]"'
        pass


async def a_and_b_with_services_that_are_only_b() -> None:
    async with djobs.open_engine([refresher, mailer], services=OnlyMail()):  # E: list-item
        pass


async def a_list_annotated_with_too_little() -> None:
    definitions: list[djobs.Definition[HasMailer]] = [refresher, mailer]  # E: list-item
    async with djobs.open_engine(definitions, services=OnlyMail()):
        pass


async def the_test_engine_checks_its_fakes_too() -> None:
    from djobs.testing import open_test_engine

    async with open_test_engine([refresher], services=OnlyTokens()) as engine:
        assert engine.services.tokens is not None
    async with open_test_engine([refresher], services=OnlyMail()):  # E: misc "Services"
        pass


# -- workflows are definitions like the others ------------------------------------------


class Order(msgspec.Struct):
    order_id: str


async def mail_the_order(order: Order, ctx: djobs.WorkflowContext[HasMailer]) -> str:
    sent: str = await ctx.step("mail", ctx.services.mailer.send, order.order_id, result=str)
    return sent


async def quiet_workflow(order: Order, ctx: djobs.WorkflowContext) -> str:
    return order.order_id


order_mailer = djobs.Workflow.make("order-mailer", input=Order, result=str, execute=mail_the_order)
quiet = djobs.Workflow.make("quiet", input=Order, result=str, execute=quiet_workflow)
workflow_as_inferred: djobs.Workflow[Order, str, HasMailer] = order_mailer
workflow_where_more_is_given: djobs.Workflow[Order, str, AppServices] = order_mailer
workflow_where_nothing_is_given: djobs.Workflow[Order, str, object] = order_mailer  # E: assignment


async def a_workflow_with_its_services() -> None:
    async with djobs.open_engine([order_mailer, quiet], services=OnlyMail()):
        pass
    async with djobs.open_engine([quiet]):
        pass
    definitions: list[djobs.Definition[AppServices]] = [refresher, order_mailer]
    async with djobs.open_engine(definitions, services=Both()):
        pass


async def a_workflow_without_its_services() -> None:
    async with djobs.open_engine([order_mailer]):  # E: list-item
        pass


async def a_workflow_and_a_token_job_with_services_that_are_only_mail() -> None:
    async with djobs.open_engine([refresher, order_mailer], services=OnlyMail()):  # E: list-item
        pass


def a_workflow_body_using_a_service_it_did_not_declare(order: Order, ctx: djobs.WorkflowContext) -> None:
    ctx.services.mailer.send(order.order_id)  # E: attr-defined
