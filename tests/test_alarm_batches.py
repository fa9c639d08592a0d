"""Due alarms of a synchronous Continuous body run in batches: the claim takes their
instances' leases and rows, and their outcomes are written back together. What a user
relies on stays: another engine's lease is waited for, one instance's runs never
interleave, and each run's context variables are its own."""

from __future__ import annotations

import contextlib
import contextvars
import os
import socket
from collections.abc import Awaitable
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest
import trio
from test_timeouts import layer  # noqa: F401  # the memory / SQLite / PostgreSQL fixture

import djobs
import djobs.storage
from djobs.testing import open_test_engine, success

HOUR = 3600


class Count(msgspec.Struct):
    n: int = 0


@pytest.mark.trio
async def test_a_due_alarm_waits_for_the_lease_another_live_engine_holds(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
) -> None:
    runs: list[float] = []

    def tick(ctx: djobs.ContinuousContext[Count]) -> Count:
        runs.append(trio.current_time())
        return Count(ctx.state.n + 1)

    job = djobs.Continuous.make("counter", state=Count, schedule=djobs.every("1 hour"), execute=tick)
    alive = f"{socket.gethostname()}:{os.getppid()}:0badc0de"
    async with open_test_engine([job], storage=layer) as engine:
        client = engine.client.continuous(job)
        success(await client.start(id="a", input=Count()))
        await engine.wait_idle()
        await trio.sleep(1)  # this engine gives its idle lease up
        # Another engine (a live process) holds the lease past the next hourly run.
        taken_at = trio.current_time()
        held_ms = (HOUR + 100) * 1000
        assert await engine.storage.acquire_instance_lease(
            "continuous:counter:a", alive, engine.clock.now_ms(), held_ms
        )
        await trio.sleep(HOUR)
        assert len(runs) == 1  # due, claimed, and not run here while the other engine holds it
        await trio.sleep(200)
        assert len(runs) == 2 and runs[1] >= taken_at + held_ms / 1000
        assert success(await client.get_state("a")).state == Count(2)


@pytest.mark.trio
async def test_a_batch_gives_its_instances_leases_up_with_its_write_back(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    runs: list[float] = []

    def tick(ctx: djobs.ContinuousContext[Count]) -> Count:
        runs.append(trio.current_time())
        return Count(ctx.state.n + 1)

    job = djobs.Continuous.make("counter", state=Count, schedule=djobs.every("1 hour"), execute=tick)
    async with open_test_engine([job], storage=djobs.sqlite(tmp_path / "jobs.db")) as engine:
        client = engine.client.continuous(job)
        success(await client.start(id="a", input=Count()))
        await engine.wait_idle()
        await trio.sleep(HOUR - 0.5)  # the hourly run is due half a second from now
        await trio.sleep(0.51)
        assert len(runs) == 2 and runs[1] <= trio.current_time() - 0.005  # the start's run, the hourly one
        # Ten milliseconds after the run (an idle actor's lease lingers 50): free for another engine.
        assert await engine.storage.instance_lease_holder("continuous:counter:a") is None
        assert success(await client.get_state("a")).state == Count(2)
        # The next call takes the lease afresh and runs as before.
        assert success(await client.trigger("a")).run_count == 3


@pytest.mark.trio
async def test_a_verb_waits_for_an_alarm_run_whose_body_gave_an_awaitable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def tick(ctx: djobs.ContinuousContext[Count]) -> Awaitable[Count]:
        async def slowly() -> Count:
            await trio.sleep(5)
            return Count(ctx.state.n + 1)

        return slowly()  # a plain def whose value needs an await

    job = djobs.Continuous.make("slow", state=Count, schedule=djobs.every("1 hour"), execute=tick)
    async with open_test_engine([job], storage=djobs.memory()) as engine:
        client = engine.client.continuous(job)
        success(await client.start(id="a", input=Count()))
        await engine.wait_idle()
        await trio.sleep(HOUR + 1)  # the hourly run is in its body's await now
        triggered = success(await client.trigger("a"))
        # The trigger ran after the alarm's run was committed, from its state: no lost update.
        assert (triggered.run_count, triggered.outcome) == (3, "succeeded")
        assert success(await client.get_state("a")).state == Count(3)


@pytest.mark.trio
async def test_each_run_in_a_batch_has_its_own_context_variables(autojump_clock: trio.testing.MockClock) -> None:
    last: contextvars.ContextVar[str | None] = contextvars.ContextVar("last", default=None)
    seen: list[str | None] = []

    def tick(ctx: djobs.ContinuousContext[Count]) -> None:
        seen.append(last.get())
        last.set(ctx.instance_id)

    job = djobs.Continuous.make("ctx", state=Count, schedule=djobs.every("1 hour"), execute=tick)
    async with open_test_engine([job], storage=djobs.memory()) as engine:
        client = engine.client.continuous(job)
        for name in "abcd":
            success(await client.start(id=name, input=Count()))
        await engine.wait_idle()
        seen.clear()
        await trio.sleep(HOUR + 1)  # the four hourly runs, due together
        assert seen == [None] * 4


@pytest.mark.trio
async def test_an_alarm_run_whose_body_awaits_past_the_instance_lease_keeps_its_lease(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
) -> None:
    def tick(ctx: djobs.ContinuousContext[Count]) -> Awaitable[Count]:
        async def slowly() -> Count:
            await trio.sleep(60)  # twelve lease lengths
            return Count(ctx.state.n + 1)

        return slowly()  # a plain def whose value needs an await: its run leaves the batch

    job = djobs.Continuous.make("slow", state=Count, schedule=djobs.every("1 hour"), execute=tick)
    key = "continuous:slow:a"
    async with open_test_engine([job], storage=layer, instance_lease="5 seconds") as engine:
        client = engine.client.continuous(job)
        success(await client.start(id="a", input=Count()))
        await trio.sleep(61)  # the start's run
        await engine.wait_idle()
        await trio.sleep(HOUR - 61 + 30)  # the hourly run, claimed with its lease, awaits in its body
        held = await engine.storage.instance_lease_holder(key)
        # Renewed every third of the lease while the body awaits: never free for another engine.
        assert held is not None and held[0] == engine.worker_id
        assert 0 < held[1] - engine.clock.now_ms() <= 5000
        await trio.sleep(31)
        assert success(await client.get_state("a")).state == Count(2)


@pytest.mark.trio
async def test_a_batch_run_is_stamped_as_its_body_ends(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
) -> None:
    from test_cron_jobs import START, _SteppedClock

    clock = _SteppedClock()

    def tick(ctx: djobs.ContinuousContext[Count]) -> Count:
        clock.spent_ms += 250  # a synchronous body that takes a quarter of a second
        return Count(ctx.state.n + 1)

    job = djobs.Continuous.make("counter", state=Count, schedule=djobs.every("1 hour"), execute=tick)
    async with open_test_engine([job], storage=layer, clock=clock) as engine:
        client = engine.client.continuous(job)
        success(await client.start(id="a", input=Count()))
        await engine.wait_idle()
        engine.tracker.clear()
        await trio.sleep(HOUR)  # the hourly run, fired in a batch
        [executed] = engine.tracker.of_type("job.executed")
        ended = START + timedelta(hours=1, milliseconds=250)  # due at 01:00 by this clock, 250 ms in the body
        assert executed.at == ended
        loaded = await engine.storage.load("continuous:counter:a")
        assert loaded is not None and loaded[0].updated_at == int(ended.timestamp() * 1000)


@pytest.mark.trio
@pytest.mark.parametrize(
    ("form", "stored_n", "outcome"),
    [
        ("none", 0, "job.executed"),
        ("state", 5, "job.executed"),
        ("success", 6, "job.executed"),
        ("not_a_state", 0, "job.failed"),
        ("raises", 0, "job.failed"),
        ("swallowed_terminate", None, "job.terminated"),
    ],
)
async def test_a_batch_run_judges_each_form_of_what_its_body_gives(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
    form: str,
    stored_n: int | None,
    outcome: str,
) -> None:
    from returns.result import Success

    def tick(ctx: djobs.ContinuousContext[Count]) -> object:
        if ctx.run_count == 1:
            return None  # the start's run
        if form == "state":
            return Count(5)
        if form == "success":
            return Success(Count(6))
        if form == "not_a_state":
            return "no"
        if form == "raises":
            raise RuntimeError("boom")
        if form == "swallowed_terminate":
            with contextlib.suppress(BaseException):  # the signal swallowed: the run ends all the same
                ctx.terminate(reason="done")
        return None

    job = djobs.Continuous.make("forms", state=Count, schedule=djobs.every("1 hour"), execute=tick)  # type: ignore[arg-type]
    async with open_test_engine([job], storage=layer) as engine:
        client = engine.client.continuous(job)
        success(await client.start(id="a", input=Count()))
        await engine.wait_idle()
        engine.tracker.clear()
        await trio.sleep(HOUR + 1)  # the hourly run, fired in a batch
        [event] = [e for e in engine.tracker.events if e.type.startswith("job.")]
        assert event.type == outcome
        assert event.data.get("run_count", 2) == 2
        loaded = await engine.storage.load("continuous:forms:a")
        if stored_n is None:
            assert loaded is None
        else:
            assert loaded is not None and loaded[0].run_count == 2
            assert msgspec.json.decode(loaded[0].state or b"", type=Count).n == stored_n
            assert loaded[1] is not None and loaded[1].purpose == "run"  # on its schedule still
