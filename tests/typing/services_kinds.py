"""Every kind is typed by the services its bodies need, as Continuous, Job and Workflow are (services.py).

Lines ending in ``# E: <code>`` must fail mypy with that error code; every other line must pass.
A Debounce, a Task and a cron job whose bodies use a service are definitions of
those services: ``open_engine`` without them (or with others) is refused at the
list item that needs more, and a body cannot use a service its context does not name.
"""

from typing import Protocol

import msgspec

import djobs


class Hook(msgspec.Struct):
    url: str


class Batch(msgspec.Struct):
    urls: list[str] = []


class Poster(Protocol):
    def post(self, urls: list[str]) -> None: ...


class HasPoster(Protocol):
    @property
    def poster(self) -> Poster: ...


class Pinger(Protocol):
    def ping(self) -> None: ...


class HasPinger(Protocol):
    @property
    def pinger(self) -> Pinger: ...


class RealPoster:
    def post(self, urls: list[str]) -> None: ...


class RealPinger:
    def ping(self) -> None: ...


class Posting:
    poster = RealPoster()


class Pinging:
    pinger = RealPinger()


class Both:
    poster = RealPoster()
    pinger = RealPinger()


def fold(ctx: djobs.DebounceEventContext[Hook, Batch]) -> Batch:
    return Batch([*(ctx.state or Batch()).urls, ctx.event.url])


def deliver(ctx: djobs.DebounceContext[Batch, HasPoster]) -> None:
    ctx.services.poster.post(ctx.state.urls)


def on_hook(event: Hook, ctx: djobs.TaskEventContext[Batch]) -> Batch:
    return Batch([*(ctx.state or Batch()).urls, event.url])


def remind(ctx: djobs.TaskContext[Batch, HasPoster]) -> None:
    ctx.services.poster.post((ctx.state or Batch()).urls)


def tick(fire: djobs.CronFire, ctx: djobs.JobContext[HasPinger]) -> None:
    ctx.services.pinger.ping()


batcher = djobs.Debounce.make("batcher", event=Hook, state=Batch, on_event=fold, execute=deliver)
reminder = djobs.Task.make("reminder", state=Batch, event=Hook, on_event=on_hook, execute=remind)
ticker = djobs.CronJob.make("ticker", schedule="* * * * *", execute=tick)

as_inferred: tuple[djobs.Debounce[Hook, Batch, HasPoster], djobs.Task[Batch, Hook, HasPoster]] = (batcher, reminder)
cron_as_inferred: djobs.CronJob[HasPinger] = ticker
debounce_without: djobs.Debounce[Hook, Batch] = batcher  # E: assignment
task_without: djobs.Task[Batch, Hook] = reminder  # E: assignment
cron_without: djobs.CronJob = ticker  # E: assignment


async def with_their_services() -> None:
    async with djobs.open_engine([batcher, reminder], services=Posting()):
        pass
    async with djobs.open_engine([ticker], services=Pinging()):
        pass
    async with djobs.open_engine([batcher, reminder, ticker], services=Both()):
        pass


async def without_their_services() -> None:
    async with djobs.open_engine([batcher]):  # E: list-item
        pass
    async with djobs.open_engine([reminder]):  # E: list-item
        pass
    async with djobs.open_engine([ticker]):  # E: list-item
        pass
    posting = Posting()
    async with djobs.open_engine([batcher, ticker], services=posting):  # E: list-item 'expected "Definition[Posting]"'
        pass
    async with djobs.open_engine([reminder], services=Pinging()):  # E: misc "Services"
        pass


def a_flush_using_a_service_it_did_not_declare(ctx: djobs.DebounceContext[Batch]) -> None:
    ctx.services.poster.post([])  # E: attr-defined


def a_task_using_a_service_it_did_not_declare(ctx: djobs.TaskContext[Batch]) -> None:
    ctx.services.poster.post([])  # E: attr-defined


def a_cron_body_using_a_service_it_did_not_declare(fire: djobs.CronFire, ctx: djobs.JobContext) -> None:
    ctx.services.pinger.ping()  # E: attr-defined
