"""An exception past user code that is not an `Exception` is that attempt's counted failure.

A body that raised ``SystemExit``, ``asyncio.CancelledError``, ``GeneratorExit``,
a custom `BaseException`, or a `BaseExceptionGroup` of them (a body's own
nursery) used to pass every ``except Exception`` of the engine: it reached the
engine's nursery and the host application, and the row it ran for went back
to pending uncounted, so every restart crashed again. Now every place user
code runs treats such an exception as it treats an `Exception`: the same
failure, named after the exception. A cancel of djobs's own scopes and a real
``KeyboardInterrupt`` still propagate (docs/guides/reliability.md).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from postgres_support import STORAGE_KINDS, fresh_storage_layer
from returns.result import Failure

import djobs
import djobs.storage
from djobs.testing import TestEngine, VirtualClock, failure, open_test_engine, success


class Boom(BaseException):
    """A library's own `BaseException` subclass."""


class BadStr(Exception):
    """An exception whose ``__str__`` raises: djobs must still describe it."""

    def __str__(self) -> str:
        raise RuntimeError("str exploded")


class Unprintable(BaseException):
    """A `BaseException` whose ``__str__``, ``__repr__`` and ``args`` all raise."""

    def __str__(self) -> str:
        raise RuntimeError("str exploded")

    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")

    @property  # type: ignore[override]
    def args(self) -> tuple[object, ...]:
        raise RuntimeError("args exploded")


#: How djobs describes each hostile exception (as the traceback module falls back).
UNPRINTABLE = {
    "BadStr": "BadStr: <unprintable BadStr object: str() raised RuntimeError>",
    "Unprintable": "Unprintable: <unprintable Unprintable object: str() raised RuntimeError>",
}


def make_exception(kind: str) -> BaseException:
    if kind == "ValueError":  # the control: an ordinary exception
        return ValueError("bad value")
    if kind == "BadStr":
        return BadStr()
    if kind == "Unprintable":
        return Unprintable()
    if kind == "Boom":
        return Boom("boom")
    if kind == "SystemExit":
        return SystemExit(3)
    if kind == "CancelledError":
        return asyncio.CancelledError("an asyncio cancel")
    if kind == "GeneratorExit":
        return GeneratorExit("closed")
    assert kind == "BaseExceptionGroup"
    return BaseExceptionGroup("a body's nursery", [Boom("in a group")])


KINDS = [
    "ValueError",
    "Boom",
    "SystemExit",
    "CancelledError",
    "GeneratorExit",
    "BaseExceptionGroup",
    "BadStr",
    "Unprintable",
]


class Nothing(msgspec.Struct):
    pass


class Count(msgspec.Struct):
    n: int = 0


class Ping(msgspec.Struct, tag=True):
    pass


# Each place runs user code that raises `make_exception(kind)`, and returns what the
# application sees of it: an error message, with the exception's name in it.
Place = Callable[[str], Awaitable[str]]


def job_message(info: djobs.JobInfo) -> str:
    assert info.status == "failed", info
    assert info.error is not None
    return f"{info.status}/{info.attempts}: {info.error.message}"


def failed_events(engine: TestEngine, name: str) -> str:
    failed = [e for e in engine.tracker.of_type("job.failed") if e.job_name == name]
    return " | ".join(f"{e.data['attempt']}:{e.data['will_retry']}:{e.data['error']['message']}" for e in failed)


async def queued_job(kind: str, *, sync: bool = False, limit: str | None = None, blocking: bool = False) -> str:
    def sync_body(params: Nothing, ctx: djobs.JobContext) -> None:
        raise make_exception(kind)

    async def async_body(params: Nothing, ctx: djobs.JobContext) -> None:
        await trio.sleep(1)
        raise make_exception(kind)

    job = djobs.Job.make(
        "poison",
        params=Nothing,
        execute=sync_body if sync or blocking else async_body,
        retry=djobs.Retry(max_attempts=2, delay="1 second"),
        timeout=limit,
        blocking=blocking,
    )
    async with open_test_engine([job]) as engine:
        job_id = success(await engine.client.job(job).later(Nothing()))
        # A day of virtual time: a blocking body's thread runs in real time, and under a loaded
        # machine the autojumping clock moves on while it runs (a shorter guard fired spuriously).
        with trio.fail_after(24 * 3600):
            await engine.wait_idle()
        await trio.sleep(2)
        await engine.wait_idle()
        return job_message(success(await engine.client.jobs.status(job_id)))


async def untracked_queued_job(kind: str) -> str:
    """A queued synchronous body on an engine with no tracker and quiet logs (the drain's shortest path)."""

    def body(params: Nothing, ctx: djobs.JobContext) -> None:
        raise make_exception(kind)

    job = djobs.Job.make("poison", params=Nothing, execute=body, retry=djobs.Retry(max_attempts=2, delay="1 second"))
    async with open_test_engine([job], tracker=djobs.NoopTracker()) as engine:
        job_id = success(await engine.client.job(job).later(Nothing()))
        await trio.sleep(5)
        await engine.wait_idle()
        return job_message(success(await engine.client.jobs.status(job_id)))


async def job_now(kind: str) -> str:
    async def body(params: Nothing, ctx: djobs.JobContext) -> None:
        raise make_exception(kind)

    job = djobs.Job.make("poison", params=Nothing, execute=body, retry=djobs.Retry(max_attempts=2, delay="1 second"))
    async with open_test_engine([job]) as engine:
        run = success(await engine.client.job(job).now(Nothing()))
        assert run.job_id is not None
        stored = job_message(success(await engine.client.jobs.status(run.job_id)))
        assert run.error is not None
        return f"{stored} / {run.status}: {run.error.message}"


async def event_listener(kind: str) -> str:
    async def body(params: Nothing, ctx: djobs.JobContext) -> None:
        raise make_exception(kind)

    job = djobs.Job.make("listener", params=Nothing, execute=body, on="thing.happened", max_attempts=1)
    async with open_test_engine([job]) as engine:
        sent = success(await engine.client.send_event("thing.happened", Nothing()))
        await trio.sleep(1)
        await engine.wait_idle()
        (job_id,) = sent.job_ids
        return job_message(success(await engine.client.jobs.status(job_id)))


async def cron_body(kind: str) -> str:
    def body(fire: djobs.CronFire, ctx: djobs.JobContext) -> None:
        raise make_exception(kind)

    cron = djobs.CronJob.make("nightly", schedule="0 3 * * *", execute=body)
    async with open_test_engine([cron]) as engine:
        await trio.sleep(24 * 3600)
        await engine.wait_idle()
        (info,) = success(await engine.client.jobs.list())
        return job_message(info)


async def limit_key(kind: str) -> str:
    def key(params: Nothing) -> str:
        raise make_exception(kind)

    async def body(params: Nothing, ctx: djobs.JobContext) -> None:
        return None

    job = djobs.Job.make("keyed", params=Nothing, execute=body, concurrency=1, limit_key=key)
    async with open_test_engine([job]) as engine:
        error = failure(await engine.client.job(job).later(Nothing()))
        assert isinstance(error, djobs.ValidationError)
        return error.message


async def continuous(kind: str) -> str:
    def body(ctx: djobs.ContinuousContext[Count]) -> Count:
        raise make_exception(kind)

    job = djobs.Continuous.make(
        "ticker",
        state=Count,
        schedule=djobs.every("1 hour"),
        execute=body,
        retry=djobs.Retry(max_attempts=2, delay="1 minute"),
    )
    async with open_test_engine([job]) as engine:
        success(await engine.client.continuous(job).start(id="a", input=Count()))
        await trio.sleep(3 * 3600)
        return failed_events(engine, "ticker")


async def debounce_flush(kind: str) -> str:
    async def flush(ctx: djobs.DebounceContext[Count]) -> None:
        raise make_exception(kind)

    job = djobs.Debounce.make(
        "batcher", event=Count, flush_after="10 seconds", execute=flush, retry=djobs.Retry(max_attempts=2)
    )
    async with open_test_engine([job]) as engine:
        success(await engine.client.debounce(job).add(id="d", event=Count(1)))
        await trio.sleep(3600)
        return failed_events(engine, "batcher")


async def debounce_on_event(kind: str) -> str:
    def reduce(ctx: djobs.DebounceEventContext[Count, Count]) -> Count:
        raise make_exception(kind)

    job = djobs.Debounce.make("batcher", event=Count, flush_after="10 seconds", on_event=reduce, execute=lambda c: None)
    async with open_test_engine([job]) as engine:
        return failure(await engine.client.debounce(job).add(id="d", event=Count(1))).message


def task_of(kind: str, where: str) -> djobs.Task[Count, Ping]:
    def handler(*_args: Any) -> Count | None:
        raise make_exception(kind)

    def on_event(event: Ping, ctx: djobs.TaskEventContext[Count]) -> None:
        if where == "on_event":
            raise make_exception(kind)
        if where != "on_idle":
            ctx.schedule("1 second")

    return djobs.Task.make(
        "worker",
        state=Count,
        event=Ping,
        on_event=on_event,
        execute=handler if where in ("execute", "on_error") else (lambda ctx: None),
        on_idle=handler if where == "on_idle" else None,
        on_error=handler if where == "on_error" else None,
    )


async def task(kind: str, where: str) -> str:
    job = task_of(kind, where)
    async with open_test_engine([job]) as engine:
        sent = await engine.client.task(job).send(id="t", event=Ping())
        if where == "on_event":
            return failure(sent).message
        await trio.sleep(3600)
        return failed_events(engine, "worker")


async def workflow(kind: str, where: str) -> str:
    def step() -> int:
        raise make_exception(kind)

    async def body(_input: Nothing, ctx: djobs.WorkflowContext) -> int:
        if where == "step":
            value: int = await ctx.step("s", step, retry=djobs.Retry(max_attempts=1))
            return value
        raise make_exception(kind)

    flow = djobs.Workflow.make("flow", input=Nothing, result=int, execute=body)
    async with open_test_engine([flow]) as engine:
        success(await engine.client.workflow(flow).start(id="w", input=Nothing()))
        await trio.sleep(3600)
        status = success(await engine.client.workflow(flow).status("w"))
        assert status.error is not None
        return f"{status.status}: {status.error['message']}"


PLACES: dict[str, Place] = {
    "queued job": queued_job,
    "queued job, synchronous": lambda kind: queued_job(kind, sync=True),
    "queued job, with a timeout": lambda kind: queued_job(kind, limit="1 minute"),
    "queued job, blocking (thread)": lambda kind: queued_job(kind, blocking=True),
    "queued job, synchronous, untracked": untracked_queued_job,
    "job now()": job_now,
    "event listener": event_listener,
    "cron body": cron_body,
    "limit_key": limit_key,
    "continuous": continuous,
    "debounce flush": debounce_flush,
    "debounce on_event": debounce_on_event,
    "task on_event": lambda kind: task(kind, "on_event"),
    "task execute": lambda kind: task(kind, "execute"),
    "task on_idle": lambda kind: task(kind, "on_idle"),
    "task on_error": lambda kind: task(kind, "on_error"),
    "workflow body": lambda kind: workflow(kind, "body"),
    "workflow step": lambda kind: workflow(kind, "step"),
}


def named(kind: str) -> str:
    """How an error message names the exception of `kind` (a group of one error is that error)."""
    if kind in UNPRINTABLE:
        return UNPRINTABLE[kind]
    exc = make_exception(kind)
    if isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def shape(message: str, kind: str) -> str:
    """`message` with what names the exception taken out: what every kind must share with ValueError.

    A `limit_key`'s group is named as a group (it is not a body's nursery)."""
    if kind in UNPRINTABLE:
        return message.replace(named(kind), "<exception>")
    return message.replace(named(kind), "<exception>").replace(f"{kind}: {make_exception(kind)}", "<exception>")


@pytest.mark.trio
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("place", list(PLACES))
async def test_every_place_user_code_runs_makes_a_base_exception_a_counted_failure(
    autojump_clock: trio.testing.MockClock, place: str, kind: str
) -> None:
    autojump_clock.autojump_threshold = 0.01  # a blocking body's thread runs in real time
    async with trio.open_nursery():  # the host's nursery: nothing may reach it
        with trio.fail_after(10 * 24 * 3600):
            message = await PLACES[place](kind)
    assert named(kind) in message or kind in message
    # The same failure, with the same attempts counted, as an ordinary exception at that place.
    assert shape(message, kind) == shape(await PLACES[place]("ValueError"), "ValueError")
    assert "<exception>" in shape(message, kind)


@pytest.mark.trio
async def test_a_poison_job_is_failed_once_not_rerun_at_every_restart(autojump_clock: trio.testing.MockClock) -> None:
    runs: list[int] = []

    async def body(params: Nothing, ctx: djobs.JobContext) -> None:
        runs.append(ctx.attempt)
        raise Boom(f"boom attempt {ctx.attempt}")

    job = djobs.Job.make("poison", params=Nothing, execute=body, retry=djobs.Retry(max_attempts=1))
    with tempfile.TemporaryDirectory() as directory:
        path = f"{directory}/jobs.db"
        async with trio.open_nursery():  # the host
            async with djobs.open_engine([job], storage=djobs.sqlite(path)) as engine:
                job_id = success(await engine.client.job(job).later(Nothing()))
                await trio.sleep(5)
            for _restart in range(3):
                async with djobs.open_engine([job], storage=djobs.sqlite(path)) as engine:
                    await trio.sleep(3600)
                    info = success(await engine.client.jobs.status(job_id))
        assert runs == [1]
        assert info.status == "failed" and info.attempts == 1
        assert info.error is not None and "Boom: boom attempt 1" in info.error.message


@pytest.mark.trio
async def test_a_group_holding_the_timeouts_cancel_and_a_base_exception_is_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The cancel decides: the run timed out (retried as a timeout); the rest of the group is dropped."""

    async def raise_on_cancel() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise Boom("while cancelled")

    async def body(params: Nothing, ctx: djobs.JobContext) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(raise_on_cancel)

    job = djobs.Job.make("slow", params=Nothing, execute=body, timeout="1 minute", max_attempts=2)
    async with trio.open_nursery(), open_test_engine([job]) as engine:  # in the host's nursery
        job_id = success(await engine.client.job(job).later(Nothing()))
        await trio.sleep(3600)
        info = success(await engine.client.jobs.status(job_id))
    assert info.status == "failed" and info.attempts == 2
    assert info.error is not None and "timeout of 60 s" in info.error.message


@pytest.mark.trio
async def test_a_body_raising_keyboard_interrupt_stops_the_application(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body(params: Nothing, ctx: djobs.JobContext) -> None:
        raise KeyboardInterrupt

    job = djobs.Job.make("ctrl-c", params=Nothing, execute=body)
    with pytest.raises(BaseException) as raised:  # a group, or the interrupt itself
        async with open_test_engine([job]) as engine:
            success(await engine.client.job(job).later(Nothing()))
            await trio.sleep(3600)
    caught = raised.value
    if isinstance(caught, BaseExceptionGroup):
        assert caught.split(KeyboardInterrupt)[0] is not None, caught
    else:
        assert isinstance(caught, KeyboardInterrupt), caught


class RaisingTracker:
    """A user's tracker whose ``emit`` raises a `BaseException`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def emit(self, event: djobs.TrackedEvent) -> None:
        raise make_exception(self.kind)

    async def aclose(self) -> None:
        raise make_exception(self.kind)


@pytest.mark.trio
@pytest.mark.parametrize("kind", KINDS)
async def test_a_tracker_raising_any_exception_does_not_fail_the_job_nor_reach_the_host(
    autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    async def body(params: Nothing, ctx: djobs.JobContext) -> None:
        return None

    job = djobs.Job.make("fine", params=Nothing, execute=body)
    layers = djobs.Layers(storage=djobs.memory(), tracker=RaisingTracker(kind))
    async with trio.open_nursery(), djobs.open_engine([job], layers=layers) as engine:  # in the host's nursery
        job_id = success(await engine.client.job(job).later(Nothing()))
        run = success(await engine.client.job(job).now(Nothing()))
        await trio.sleep(5)
        assert success(await engine.client.jobs.status(job_id)).status == "completed"
        assert run.status == "completed"


@pytest.mark.trio
async def test_a_group_holding_the_closes_cancel_and_a_base_exception_hands_the_job_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cut off by the engine's close, a body whose nursery also raised is handed back uncounted, as any run."""
    runs: list[int] = []

    async def raise_on_cancel() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise Boom("while cancelled")

    async def body(params: Nothing, ctx: djobs.JobContext) -> None:
        runs.append(ctx.attempt)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(raise_on_cancel)

    job = djobs.Job.make("slow", params=Nothing, execute=body, max_attempts=1)
    with tempfile.TemporaryDirectory() as directory:
        path = f"{directory}/jobs.db"
        async with trio.open_nursery():  # the host
            async with djobs.open_engine([job], storage=djobs.sqlite(path), shutdown_grace="1 second") as engine:
                job_id = success(await engine.client.job(job).later(Nothing()))
                await trio.sleep(5)
            async with djobs.open_engine([job], storage=djobs.sqlite(path), worker=None) as engine:
                info = success(await engine.client.jobs.status(job_id))
    assert runs == [1]
    assert info.status == "pending" and info.attempts == 0


# -- exceptions that cannot be printed ------------------------------------------------------

_RAISED_BY_DUNDER: list[type[BaseException]] = [RuntimeError, ValueError, Boom, SystemExit]


@st.composite
def unprintable_exceptions(draw: st.DrawFn) -> type[BaseException]:
    """A class of exception some of whose ``__str__``, ``__repr__`` and ``args`` raise (any of them)."""
    base = draw(st.sampled_from([Exception, ValueError, BaseException, SystemExit, GeneratorExit, Boom]))
    broken = draw(st.sets(st.sampled_from(["__str__", "__repr__", "args"]), min_size=1))
    raised = draw(st.sampled_from(_RAISED_BY_DUNDER))

    def explode(self: BaseException) -> str:
        raise raised("exploded")

    namespace: dict[str, object] = {name: explode for name in broken if name != "args"}
    if "args" in broken:
        namespace["args"] = property(explode)
    return type("Hostile", (base,), namespace)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cls=unprintable_exceptions())
def test_an_exception_that_cannot_be_printed_is_still_a_described_failure(cls: type[BaseException]) -> None:
    """Raised alone or two in a body's nursery, by a job, a reducer or a step: a failure naming its
    type, whose repr prints, never an escape; the stdlib's fallback stands in for its text."""

    def reduce(ctx: djobs.DebounceEventContext[Count, Count]) -> Count:
        raise cls()

    async def two(params: Nothing, ctx: djobs.JobContext) -> None:
        async def boom() -> None:
            raise cls()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(boom)
            nursery.start_soon(boom)

    # Trio itself formats a nursery child's exception with repr() (its cancel reason), and a repr
    # that raises there is a TrioInternalError of the whole run: a body's own nursery cannot be helped.
    in_nursery = "__repr__" not in cls.__dict__
    batcher = djobs.Debounce.make("b", event=Count, flush_after="10 seconds", on_event=reduce, execute=lambda c: None)
    pair = djobs.Job.make("pair", params=Nothing, execute=two, retry=djobs.Retry(max_attempts=2, delay="1 second"))

    async def main() -> None:
        async with trio.open_nursery(), open_test_engine([batcher, pair]) as engine:  # the host's nursery
            error = failure(await engine.client.debounce(batcher).add(id="d", event=Count(1)))
            assert isinstance(error, djobs.ExecutionError) and isinstance(error.cause, cls)
            assert error.message.startswith("Hostile"), error.message
            assert "Hostile" in repr(error)
            if not in_nursery:
                return
            run = success(await engine.client.job(pair).now(Nothing()))
            assert run.status == "failed" and run.attempts == 2, run
            assert run.error is not None
            assert run.error.message.startswith("gave up after 2 attempt(s): 2 errors at once: Hostile"), run.error
            assert "Hostile" in repr(run)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_failure_value_that_cannot_be_printed_is_described() -> None:
    """A body's failure value (not an exception) whose repr raises, and `non_retryable` of one."""

    class Opaque:
        def __repr__(self) -> str:
            raise RuntimeError("repr exploded")

    def body(params: Nothing, ctx: djobs.JobContext) -> Failure[Opaque]:
        return Failure(Opaque())

    job = djobs.Job.make("opaque", params=Nothing, execute=body)

    async def main() -> None:
        async with open_test_engine([job]) as engine:
            run = success(await engine.client.job(job).now(Nothing()))
            assert run.error is not None
            assert run.error.message.endswith(
                ": job returned a failure: <unprintable Opaque object: repr() raised RuntimeError>"
            )

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert djobs.non_retryable(BadStr()).message == UNPRINTABLE["BadStr"]
    assert "unprintable Opaque" in djobs.non_retryable(Opaque()).message


class HangingTracker:
    """A user's tracker whose ``aclose`` never returns."""

    def emit(self, event: djobs.TrackedEvent) -> None:
        pass

    async def aclose(self) -> None:
        await trio.sleep_forever()


@pytest.mark.trio
async def test_a_tracker_whose_close_hangs_does_not_hang_the_host_exit(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The engine cancels a tracker's close a second past its 30 seconds and logs it; the host's block then ends."""

    async def body(params: Nothing, ctx: djobs.JobContext) -> None:
        return None

    job = djobs.Job.make("fine", params=Nothing, execute=body)
    layers = djobs.Layers(storage=djobs.memory(), tracker=HangingTracker())
    with caplog.at_level(logging.ERROR, logger="djobs"):
        async with djobs.open_engine([job], layers=layers, shutdown_grace="1 second") as engine:
            assert success(await engine.client.job(job).now(Nothing())).status == "completed"
            closing_from = trio.current_time()
    assert trio.current_time() - closing_from == pytest.approx(31, abs=0.01)
    assert "did not close within 30 seconds; cancelled" in caplog.text


# -- a KeyboardInterrupt a body raises itself: a crash, its attempt counted --------------------


@pytest.fixture(params=STORAGE_KINDS)
def layer(request: pytest.FixtureRequest) -> Iterator[djobs.storage.StorageLayer]:
    """One storage that outlives the engines opened on it (a restart of the process)."""
    with fresh_storage_layer(request.param) as made:
        yield made


async def _stopped_by_its_body(engine_block: Callable[[], Any]) -> None:
    """Run `engine_block` (an engine's whole life) and check a body's KeyboardInterrupt stopped it."""
    with pytest.raises(BaseException) as raised:
        await engine_block()
    caught = raised.value
    if isinstance(caught, BaseExceptionGroup):
        assert caught.split(KeyboardInterrupt)[0] is not None, caught
    else:
        assert isinstance(caught, KeyboardInterrupt), caught


@pytest.mark.trio
@pytest.mark.parametrize("synchronous", [False, True], ids=["async", "sync"])
async def test_a_job_whose_body_raises_keyboard_interrupt_counts_the_attempt_across_restarts(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer, synchronous: bool
) -> None:
    """reliability.md: the run it stopped is a crash; with max_attempts=2, two processes stopped
    this way leave the job failed. An awaited body's row used to be handed back uncounted:
    attempt 1 at every restart. (A synchronous body ends where it starts, in another path.)"""
    runs: list[int] = []

    async def body(params: Nothing, ctx: djobs.JobContext) -> None:
        runs.append(ctx.attempt)
        raise KeyboardInterrupt

    def sync_body(params: Nothing, ctx: djobs.JobContext) -> None:
        runs.append(ctx.attempt)
        raise KeyboardInterrupt

    retry = djobs.Retry(max_attempts=2, delay="1 second")
    job = djobs.Job.make("ctrl-c", params=Nothing, execute=sync_body if synchronous else body, retry=retry)
    job_ids: list[str] = []
    clock = VirtualClock()  # one for every engine: each restart goes on from the last one's time

    async def first() -> None:
        async with open_test_engine([job], storage=layer, clock=clock) as engine:
            job_ids.append(success(await engine.client.job(job).later(Nothing())))
            await trio.sleep(3600)

    async def again() -> None:
        async with open_test_engine([job], storage=layer, clock=clock):
            await trio.sleep(3600)

    await _stopped_by_its_body(first)
    await _stopped_by_its_body(again)
    async with open_test_engine([job], storage=layer, clock=clock) as engine:
        await trio.sleep(3600)
        info = success(await engine.client.jobs.status(job_ids[0]))
    assert runs == [1, 2]
    assert info.status == "failed" and info.attempts == 2, info
    assert info.error is not None and "stopped renewing its lease" in info.error.message, info.error


@pytest.mark.trio
async def test_a_cron_jobs_run_stopped_by_its_bodys_keyboard_interrupt_counts_the_attempt(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    """A cron job's own body runs as a queued row: the same crash, its attempt counted."""
    runs: list[int] = []

    async def body(fire: djobs.CronFire, ctx: djobs.JobContext) -> None:
        runs.append(ctx.attempt)
        raise KeyboardInterrupt

    cron = djobs.CronJob.make(
        "ctrl-c", schedule=djobs.every("1000 days"), execute=body, retry=djobs.Retry(max_attempts=2, delay="1 second")
    )

    clock = VirtualClock()  # one for every engine: each restart goes on from the last one's time

    async def life(seconds: float) -> None:
        async with open_test_engine([cron], storage=layer, clock=clock):
            await trio.sleep(seconds)

    await _stopped_by_its_body(functools.partial(life, 1001 * 86400))
    await _stopped_by_its_body(functools.partial(life, 3600))
    async with open_test_engine([cron], storage=layer, clock=clock) as engine:
        await trio.sleep(3600)
        jobs = success(await engine.client.jobs.list())
    assert runs == [1, 2]
    assert [(info.status, info.attempts) for info in jobs] == [("failed", 2)], jobs
