"""Every body form runs for every kind, or is refused with a ValidationError that names the accepted forms.

The forms are djobs/_bodies.py's: a value, ``Result``, ``IOResult``, an
awaitable of those, ``FutureResult``, and the four ``RequiresContext*``
flavours, which are called with the engine's services. The type-level half
of the same promise is tests/typing/bodies.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from returns.context import (
    RequiresContext,
    RequiresContextFutureResult,
    RequiresContextIOResult,
    RequiresContextResult,
)
from returns.future import FutureResult
from returns.io import IO, IOFailure, IOSuccess
from returns.maybe import Maybe, Some
from returns.result import Failure, Result, Success

import djobs
from djobs.testing import failure, open_test_engine, success


class Services:
    """Fakes that count how often a RequiresContext* body read them."""

    def __init__(self) -> None:
        self.reads = 0

    def read(self, value: Any) -> Any:
        self.reads += 1
        return value


async def _later(value: Any) -> Any:
    await trio.lowlevel.checkpoint()
    return value


async def _later_future(value: Any) -> Any:
    return FutureResult.from_value(value)


#: Each accepted form, as a function from the body's value to what the body returns.
FORMS: dict[str, Callable[[Any], Any]] = {
    "value": lambda v: v,
    "result": Success,
    "io_result": IOSuccess,
    "async_value": _later,
    "async_result": lambda v: _later(Success(v)),
    "async_io_result": lambda v: _later(IOSuccess(v)),
    "async_future_result": _later_future,
    "future_result": FutureResult.from_value,
    "requires_context": lambda v: RequiresContext(lambda s: s.read(v)),
    "requires_context_result": lambda v: RequiresContextResult(lambda s: Success(s.read(v))),
    "requires_context_io_result": lambda v: RequiresContextIOResult(lambda s: IOSuccess(s.read(v))),
    "requires_context_future_result": lambda v: RequiresContextFutureResult(
        lambda s: FutureResult.from_value(s.read(v))
    ),
}

#: Each form as a failure with `error` (the forms that can carry one).
FAILURES: dict[str, Callable[[Exception], Any]] = {
    "result": Failure,
    "io_result": IOFailure,
    "async_result": lambda e: _later(Failure(e)),
    "future_result": FutureResult.from_failure,
    "requires_context_result": lambda e: RequiresContextResult.from_failure(e),
    "requires_context_io_result": lambda e: RequiresContextIOResult.from_failure(e),
    "requires_context_future_result": lambda e: RequiresContextFutureResult.from_failure(e),
    "raised": lambda e: (_ for _ in ()).throw(e),
}

#: Forms no run can come from: refused when the body returns them.
REFUSED: dict[str, Callable[[Any], Any]] = {
    "maybe": Some,
    "io": IO,
    "generator": lambda v: (x for x in [v]),
    "requires_context_of_a_container": lambda v: RequiresContext(lambda s: Some(v)),
}


def _reads(form: str) -> int:
    return 1 if form.startswith("requires_context") else 0


class Email(msgspec.Struct):
    to: str


class Sent(msgspec.Struct):
    message_id: str


class Count(msgspec.Struct):
    n: int = 0


class Ping(msgspec.Struct, tag=True):
    pass


# -- Job --------------------------------------------------------------------------------


@pytest.mark.trio
@pytest.mark.parametrize("form", FORMS)
async def test_a_job_body_runs_in_every_form(form: str, autojump_clock: trio.testing.MockClock) -> None:
    def send(params: Email, ctx: djobs.JobContext[Services]) -> Any:
        return FORMS[form](Sent(f"m-{params.to}"))

    job = djobs.Job.make("send", params=Email, result=Sent, execute=send)
    services = Services()
    async with open_test_engine([job], services=services) as engine:
        run = success(await engine.client.job(job).now(Email("a")))
    assert (run.status, run.result) == ("completed", Sent("m-a"))
    assert services.reads == _reads(form)


@pytest.mark.trio
@pytest.mark.parametrize("form", FAILURES)
async def test_a_job_body_fails_in_every_form(form: str, autojump_clock: trio.testing.MockClock) -> None:
    class Bounced(Exception):
        pass

    def send(params: Email, ctx: djobs.JobContext[Services]) -> Any:
        return FAILURES[form](Bounced("no such mailbox"))

    job = djobs.Job.make("send", params=Email, result=Sent, execute=send, max_attempts=1)
    async with open_test_engine([job], services=Services()) as engine:
        run = success(await engine.client.job(job).now(Email("a")))
    assert run.status == "failed" and isinstance(run.error, djobs.RetryExhaustedError)
    last = run.error.last_error
    assert isinstance(last, djobs.ExecutionError) and isinstance(last.cause, Bounced)


@pytest.mark.trio
async def test_an_error_from_a_nursery_names_its_leaves_not_the_group(autojump_clock: trio.testing.MockClock) -> None:
    class Bounced(Exception):
        pass

    async def bounce(text: str) -> None:
        raise Bounced(text)

    async def send(params: Email, ctx: djobs.JobContext[Services]) -> Sent:
        async with trio.open_nursery() as nursery:
            for to in params.to.split(","):
                nursery.start_soon(bounce, f"no mailbox {to}")
        return Sent("never")

    job = djobs.Job.make("send", params=Email, result=Sent, execute=send, max_attempts=1)
    async with open_test_engine([job], services=Services()) as engine:
        one = success(await engine.client.job(job).now(Email("a")))
        two = success(await engine.client.job(job).now(Email("a,b")))
    assert isinstance(one.error, djobs.RetryExhaustedError)
    assert isinstance(two.error, djobs.RetryExhaustedError)
    # One error in the group: that error, as if raised alone.
    alone = one.error.last_error
    assert isinstance(alone, djobs.ExecutionError) and isinstance(alone.cause, Bounced)
    assert alone.message == "Bounced: no mailbox a"
    # Several: each named, with its type.
    both = two.error.last_error
    assert isinstance(both, djobs.ExecutionError) and isinstance(both.cause, ExceptionGroup)
    assert "Bounced: no mailbox a" in both.message and "Bounced: no mailbox b" in both.message
    assert "Trio nursery" not in both.message


@pytest.mark.trio
@pytest.mark.parametrize("form", REFUSED)
async def test_a_job_body_returning_an_unknown_form_fails_naming_the_accepted_ones(
    form: str, autojump_clock: trio.testing.MockClock
) -> None:
    def send(params: Email, ctx: djobs.JobContext[Services]) -> Any:
        return REFUSED[form](Sent("m"))

    job = djobs.Job.make("send", params=Email, result=Sent, execute=send)
    async with open_test_engine([job], services=Services()) as engine:
        run = success(await engine.client.job(job).now(Email("a")))
    assert run.status == "failed" and run.attempts == 1  # a ValidationError is not retried
    assert isinstance(run.error, djobs.ValidationError)
    assert "which djobs cannot run" in run.error.message
    assert "RequiresContextFutureResult" in run.error.message


@pytest.mark.trio
@pytest.mark.parametrize("form", FORMS)
async def test_a_cron_jobs_own_body_runs_in_every_form(form: str, autojump_clock: trio.testing.MockClock) -> None:
    fired: list[str] = []

    def tick(fire: djobs.CronFire, ctx: djobs.JobContext[Services]) -> Any:
        fired.append(fire.cron)
        return FORMS[form](None)

    nightly = djobs.CronJob.make("nightly", schedule=djobs.every("1 hour"), execute=tick)
    services = Services()
    async with open_test_engine([nightly], services=services) as engine:
        await trio.sleep(2 * 3600 + 1)
        await engine.wait_idle()
        [info] = success(await engine.client.jobs.list(name="nightly", status="completed", limit=1))
    assert fired[:1] == ["nightly"] and info.status == "completed"
    assert services.reads == len(fired) * _reads(form)


# -- Continuous: the body's value is the new state ---------------------------------------


@pytest.mark.trio
@pytest.mark.parametrize("form", FORMS)
async def test_a_continuous_body_returns_the_new_state_in_every_form(
    form: str, autojump_clock: trio.testing.MockClock
) -> None:
    def tick(ctx: djobs.ContinuousContext[Count, Services]) -> Any:
        return FORMS[form](Count(ctx.state.n + 1))

    job = djobs.Continuous.make("tick", state=Count, schedule=djobs.every("1 hour"), execute=tick)
    services = Services()
    async with open_test_engine([job], services=services) as engine:
        client = engine.client.continuous(job)
        success(await client.start(id="c", input=Count()))
        await engine.wait_idle()
        assert success(await client.get_state("c")).state == Count(1)
        assert success(await client.trigger("c")).outcome == "succeeded"
        assert success(await client.get_state("c")).state == Count(2)
    assert services.reads == 2 * _reads(form)


@pytest.mark.trio
@pytest.mark.parametrize("form", ["value", "future_result", "requires_context_future_result"])
async def test_a_continuous_body_returning_none_keeps_the_state(
    form: str, autojump_clock: trio.testing.MockClock
) -> None:
    def tick(ctx: djobs.ContinuousContext[Count, Services]) -> Any:
        ctx.set_state(Count(7))
        return FORMS[form](None)

    job = djobs.Continuous.make("tick", state=Count, schedule=djobs.every("1 hour"), execute=tick)
    async with open_test_engine([job], services=Services()) as engine:
        client = engine.client.continuous(job)
        success(await client.start(id="c", input=Count()))
        await engine.wait_idle()
        assert success(await client.get_state("c")).state == Count(7)


@pytest.mark.trio
async def test_a_continuous_body_returning_what_is_not_its_state_fails_and_keeps_the_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def tick(ctx: djobs.ContinuousContext[Count]) -> Any:
        return FutureResult.from_value(Email("not a count"))

    job = djobs.Continuous.make("tick", state=Count, schedule=djobs.every("1 hour"), execute=tick)
    async with open_test_engine([job]) as engine:
        client = engine.client.continuous(job)
        success(await client.start(id="c", input=Count(3)))
        await engine.wait_idle()
        assert success(await client.get_state("c")).state == Count(3)
        [failed] = [e for e in engine.tracker.events if e.type == "job.failed"]
        assert failed.data["error"]["tag"] == "validation"


@pytest.mark.trio
@pytest.mark.parametrize("form", REFUSED)
async def test_a_continuous_body_returning_an_unknown_form_fails(
    form: str, autojump_clock: trio.testing.MockClock
) -> None:
    def tick(ctx: djobs.ContinuousContext[Count]) -> Any:
        return REFUSED[form](Count(9))

    job = djobs.Continuous.make("tick", state=Count, schedule=djobs.every("1 hour"), execute=tick)
    async with open_test_engine([job]) as engine:
        client = engine.client.continuous(job)
        success(await client.start(id="c", input=Count()))
        await engine.wait_idle()
        assert success(await client.get_state("c")).state == Count()
        [failed] = [e for e in engine.tracker.events if e.type == "job.failed"]
        assert failed.data["error"]["tag"] == "validation"
        assert "which djobs cannot run" in failed.data["error"]["message"]


# -- Task: every handler may return the new state ----------------------------------------


@pytest.mark.trio
@pytest.mark.parametrize("form", FORMS)
async def test_task_handlers_return_the_new_state_in_every_form(
    form: str, autojump_clock: trio.testing.MockClock
) -> None:
    def on_event(event: Ping, ctx: djobs.TaskEventContext[Count, Services]) -> Any:
        ctx.schedule("1 minute")
        return FORMS[form](Count((ctx.state or Count()).n + 1))

    def execute(ctx: djobs.TaskContext[Count, Services]) -> Any:
        return FORMS[form](Count((ctx.state or Count()).n + 10))

    def on_idle(ctx: djobs.TaskContext[Count, Services]) -> Any:
        return FORMS[form](Count((ctx.state or Count()).n + 100))

    job = djobs.Task.make("t", state=Count, event=Ping, on_event=on_event, execute=execute, on_idle=on_idle)
    services = Services()
    async with open_test_engine([job], services=services) as engine:
        client = engine.client.task(job)
        success(await client.send(id="t", event=Ping()))
        assert success(await client.get_state("t")).state == Count(1)
        await trio.sleep(120)
        await engine.wait_idle()
        assert success(await client.get_state("t")).state == Count(111)
    assert services.reads == 3 * _reads(form)


@pytest.mark.trio
@pytest.mark.parametrize("form", ["result", "future_result", "requires_context_future_result"])
async def test_task_on_error_returns_the_new_state(form: str, autojump_clock: trio.testing.MockClock) -> None:
    def on_event(event: Ping, ctx: djobs.TaskEventContext[Count, Services]) -> Any:
        return Count(1)

    def execute(ctx: djobs.TaskContext[Count, Services]) -> Any:
        return FutureResult.from_failure(ValueError("down"))

    def on_error(error: djobs.JobError, ctx: djobs.TaskContext[Count, Services]) -> Any:
        return FORMS[form](Count(-1))

    job = djobs.Task.make("t", state=Count, event=Ping, on_event=on_event, execute=execute, on_error=on_error)
    async with open_test_engine([job], services=Services()) as engine:
        client = engine.client.task(job)
        success(await client.send(id="t", event=Ping()))
        assert success(await client.trigger("t")).outcome == "failed"
        assert success(await client.get_state("t")).state == Count(-1)


@pytest.mark.trio
@pytest.mark.parametrize("form", REFUSED)
async def test_a_task_handler_returning_an_unknown_form_is_refused_to_the_sender(
    form: str, autojump_clock: trio.testing.MockClock
) -> None:
    job = djobs.Task.make(
        "t", state=Count, event=Ping, on_event=lambda event, ctx: REFUSED[form](Count(1)), execute=lambda ctx: None
    )
    async with open_test_engine([job]) as engine:
        error = failure(await engine.client.task(job).send(id="t", event=Ping()))
        assert isinstance(error, djobs.ValidationError) and "which djobs cannot run" in error.message
        assert success(await engine.client.task(job).status("t")).status == "not_found"


# -- Debounce: on_event returns the state in any form; a flush's value is dropped -------


class Batch(msgspec.Struct):
    pings: int = 0


@pytest.mark.trio
@pytest.mark.parametrize("form", FORMS)
async def test_debounce_bodies_run_in_every_form(form: str, autojump_clock: trio.testing.MockClock) -> None:
    flushed: list[int] = []

    def fold(ctx: djobs.DebounceEventContext[Ping, Batch, Services]) -> Any:
        return FORMS[form](Batch((ctx.state or Batch()).pings + 1))

    def flush(ctx: djobs.DebounceContext[Batch, Services]) -> Any:
        flushed.append(ctx.state.pings)
        return FORMS[form](None if form in ("value", "async_value") else "a value the flush drops")

    job = djobs.Debounce.make("d", event=Ping, state=Batch, on_event=fold, execute=flush)
    services = Services()
    async with open_test_engine([job], services=services) as engine:
        client = engine.client.debounce(job)
        for _ in range(3):
            success(await client.add(id="d", event=Ping()))
        assert success(await client.flush("d")).outcome == "succeeded"
    assert flushed == [3]
    assert services.reads == 4 * _reads(form)


@pytest.mark.trio
@pytest.mark.parametrize("form", REFUSED)
async def test_a_debounce_reducer_returning_an_unknown_form_is_refused(
    form: str, autojump_clock: trio.testing.MockClock
) -> None:
    job = djobs.Debounce.make(
        "d", event=Ping, state=Batch, on_event=lambda ctx: REFUSED[form](Batch(1)), execute=lambda ctx: None
    )
    async with open_test_engine([job]) as engine:
        error = failure(await engine.client.debounce(job).add(id="d", event=Ping()))
        assert isinstance(error, djobs.ValidationError) and "which djobs cannot run" in error.message


# -- refused at definition time ---------------------------------------------------------


def _generator(*args: Any) -> Any:
    yield None


async def _async_generator(*args: Any) -> Any:
    yield None


def _maybe(*args: Any) -> Maybe[int]:
    return Some(1)


def _io(*args: Any) -> IO[int]:
    return IO(1)


async def _awaited_maybe(*args: Any) -> Maybe[int]:
    return Some(1)


@pytest.mark.parametrize(
    "body",
    [_generator, _async_generator, "not callable", _maybe, _io, _awaited_maybe],
    ids=["gen", "async_gen", "str", "maybe", "io", "async_maybe"],
)
def test_bodies_that_can_never_run_are_refused_at_definition_time(body: Any) -> None:
    makers: list[Callable[[], object]] = [
        lambda: djobs.Job.make("j", params=Email, execute=body),
        lambda: djobs.Continuous.make("c", state=Count, schedule=djobs.every("1 hour"), execute=body),
        lambda: djobs.Task.make("t", state=Count, event=Ping, on_event=body, execute=lambda ctx: None),
        lambda: djobs.Task.make("t", state=Count, event=Ping, on_event=lambda e, c: None, execute=body),
        lambda: djobs.Task.make(
            "t", state=Count, event=Ping, on_event=lambda e, c: None, execute=lambda c: None, on_idle=body
        ),
        lambda: djobs.Debounce.make("d", event=Ping, execute=body),
        lambda: djobs.Debounce.make("d", event=Ping, on_event=body, execute=lambda ctx: None),
        lambda: djobs.CronJob.make("cr", schedule="* * * * *", execute=body),
    ]
    for make in makers:
        with pytest.raises(djobs.ValidationError) as raised:
            make()
        assert "callable" in raised.value.message or "RequiresContextFutureResult" in raised.value.message


def _annotated_result(*args: Any) -> Result[int, str]:
    return Success(1)


async def _annotated_future(*args: Any) -> FutureResult[int, str]:
    return FutureResult.from_value(1)


def _unresolvable(*args: Any) -> NoSuchName:  # type: ignore[name-defined]  # noqa: F821
    return 1


@pytest.mark.parametrize("body", [_annotated_result, _annotated_future, _unresolvable])
def test_bodies_annotated_with_an_accepted_form_or_unresolvable_are_accepted(body: Any) -> None:
    # An annotation that cannot be resolved is left to the run-time check, never refused on a guess.
    djobs.Job.make("j", params=Email, execute=body)
    djobs.Continuous.make("c", state=Count, schedule=djobs.every("1 hour"), execute=body)


@pytest.mark.trio
@pytest.mark.parametrize("definitions", [["not a job"], "heartbeat", [object()]], ids=["str_item", "str", "object"])
async def test_open_engine_refuses_what_is_not_a_list_of_definitions(definitions: Any) -> None:
    with pytest.raises(djobs.ValidationError):
        async with open_test_engine(definitions):
            pass


def test_djobs_reads_no_private_attribute_of_returns() -> None:
    """Results are opened with returns' public verbs (unwrap, failure, unsafe_perform_io), never its internals.

    One module is the exception, by design: ``_future.py`` builds the ``FutureResult`` every client
    verb returns in fewer calls and relies on returns' container layout; returns is pinned to the
    minor version it is tested with, and ``tests/test_future.py`` checks it against returns' own.
    """
    package = Path(djobs.__file__).parent
    readers = [str(p.relative_to(package)) for p in package.rglob("*.py") if "_inner_value" in p.read_text()]
    assert readers == ["_future.py"]
