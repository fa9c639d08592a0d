"""What a newcomer meets first: the wrong event loop, who holds a lease, a verb never awaited."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import socket
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import djobs
from djobs.storage._inspect import LeaseHolder, inspector
from djobs.testing import open_test_engine, success


class Beat(msgspec.Struct):
    n: int = 0


class Ping(msgspec.Struct):
    text: str


# -- djobs runs on Trio --------------------------------------------------------------------------


def test_open_engine_under_asyncio_says_djobs_runs_on_trio(tmp_path: Path) -> None:
    async def main() -> None:
        async with djobs.open_engine([], storage=djobs.sqlite(tmp_path / "jobs.db")):
            raise AssertionError("the engine must not open under asyncio")

    with pytest.raises(RuntimeError, match=r"djobs runs on Trio.*open_engine.*under asyncio.*trio\.run\(main\)"):
        asyncio.run(main())
    assert not (tmp_path / "jobs.db").exists()  # refused before anything was touched


def test_open_test_engine_under_asyncio_says_djobs_runs_on_trio() -> None:
    async def main() -> None:
        async with open_test_engine([]):
            raise AssertionError("the engine must not open under asyncio")

    with pytest.raises(RuntimeError, match=r"djobs runs on Trio.*open_test_engine.*under asyncio"):
        asyncio.run(main())


def test_open_engine_outside_any_event_loop_says_so() -> None:
    manager = djobs.open_engine([], storage=djobs.memory())
    # Driven by hand, as a coroutine run with no event loop at all would be.
    with pytest.raises(RuntimeError, match=r"djobs runs on Trio.*outside trio\.run"):
        manager.__aenter__().send(None)


# -- lease owners --------------------------------------------------------------------------------


@pytest.mark.trio
async def test_an_engine_holds_instance_and_job_leases_under_one_readable_id(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    release = trio.Event()

    async def busy_beat(ctx: djobs.ContinuousContext[Beat]) -> None:
        await release.wait()

    async def busy_ping(params: Ping, ctx: djobs.JobContext) -> None:
        await release.wait()

    beat = djobs.Continuous.make("beat", state=Beat, schedule=djobs.every("1 hour"), execute=busy_beat)
    ping = djobs.Job.make("ping", params=Ping, execute=busy_ping)
    path = tmp_path / "jobs.db"
    async with open_test_engine([beat, ping], storage=djobs.sqlite(path)) as engine:
        success(await engine.client.continuous(beat).start(id="b1", input=Beat()))
        success(await engine.client.job(ping).later(Ping("hi")))
        await trio.sleep(1)  # both bodies are now running, each under its lease
        owner = engine.worker_id
        assert owner is not None
        host, pid, *token, random_part = owner.split(":")
        assert (host, pid) == (socket.gethostname(), str(os.getpid()))
        assert re.fullmatch(r"[0-9a-f]{8}", random_part)
        if sys.platform == "linux":  # the boot, namespaces and start time (`dead_local_owner`)
            assert len(token) == 1 and re.fullmatch(r"[0-9a-f]{12}-[0-9]+", token[0])
        async with djobs.sqlite(path).open() as reader:
            summary = await inspector(reader).summary(engine.clock.now_ms())
        assert summary.leases == [LeaseHolder(owner=owner, instances=1, jobs=1, expired=0)]
        release.set()


@pytest.mark.trio
async def test_two_engines_have_different_ids(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([]) as one, open_test_engine([]) as two:
        assert one.worker_id != two.worker_id


# -- a verb never awaited ------------------------------------------------------------------------


@pytest.mark.trio
async def test_a_verb_never_awaited_warns_with_its_own_name(autojump_clock: trio.testing.MockClock) -> None:
    beat = djobs.Continuous.make("beat", state=Beat, schedule=djobs.every("1 hour"), execute=lambda ctx: None)
    ping = djobs.Job.make("ping", params=Ping, execute=lambda p, c: None)

    async def flow_body(_: Beat, ctx: djobs.WorkflowContext) -> None:
        pass

    flow = djobs.Workflow.make("flow", input=Beat, result=type(None), execute=flow_body)
    async with open_test_engine([beat, ping, flow]) as engine:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Each result is dropped at once, never awaited: the mistake mypy's unused-awaitable catches.
            engine.client.continuous(beat).start(id="b1", input=Beat())
            engine.client.continuous("nope").status("b1")
            engine.client.job(ping).later(Ping("hi"))
            engine.client.workflow(flow).start(id="f1", input=Beat())
            engine.client.jobs.list()
            engine.client.crons.list()
            engine.client.send_event("order.created", {})
            gc.collect()
        messages = sorted(str(w.message) for w in caught if issubclass(w.category, RuntimeWarning))
        assert messages == [
            f"coroutine 'djobs.{verb}' was never awaited"
            for verb in sorted(
                [
                    "ContinuousClient.start",
                    "ContinuousClient.status",
                    "JobClient.later",
                    "WorkflowClient.start",
                    "JobsClient.list",
                    "CronsClient.list",
                    "Client.send_event",
                ]
            )
        ]
        # Awaited, the same verbs work as ever.
        assert success(await engine.client.continuous(beat).start(id="b1", input=Beat())).created


class _Opaque:
    """A plain class: msgspec's decoder accepts it as a type, but cannot store its values."""


class _HoldsOpaque(msgspec.Struct):
    inner: list[_Opaque]


def _definitions_with(tp: Any) -> dict[str, Callable[[], object]]:
    def body(*args: object) -> None:
        return None

    return {
        "Job params": lambda: djobs.Job.make("j", params=tp, execute=body),
        "Job result": lambda: djobs.Job.make("j", params=_Plain, result=tp, execute=body),
        "Workflow input": lambda: djobs.Workflow.make("w", input=tp, result=int, execute=body),
        "Workflow result": lambda: djobs.Workflow.make("w", input=_Plain, result=tp, execute=body),
        "Continuous state": lambda: djobs.Continuous.make("c", state=tp, schedule=djobs.every("1 hour"), execute=body),
        "Debounce event": lambda: djobs.Debounce.make("d", event=tp, flush_after="1 second", execute=body),
        "Task state": lambda: djobs.Task.make("t", state=tp, event=_Plain, on_event=body, execute=body),
        "Task event": lambda: djobs.Task.make("t", state=_Plain, event=tp, on_event=body, execute=body),
        "Event payload": lambda: djobs.Event("e", tp),
    }


class _Plain(msgspec.Struct):
    n: int = 0


@pytest.mark.parametrize("where", list(_definitions_with(_Plain)))
def test_a_type_msgspec_cannot_store_fails_its_definition_when_made(where: str) -> None:
    # Before, such a struct was accepted and every write of it failed later, at run time.
    with pytest.raises(djobs.ValidationError, match=r"cannot be stored: _Opaque"):
        _definitions_with(_HoldsOpaque)[where]()
    _definitions_with(_Plain)[where]()  # the same definition with a storable type is made


def beat(ctx: djobs.ContinuousContext[Beat]) -> Beat:
    return Beat(ctx.state.n + 1)


heartbeat = djobs.Continuous.make("heartbeat", state=Beat, schedule=djobs.every("1 hour"), execute=beat)


def test_a_test_engine_reopened_on_one_memory_layer_goes_on_from_its_virtual_time() -> None:
    """Its VirtualClock went back to 2026-01-01 at each reopen: an alarm stored at a later time
    waited that long again, and `now()` went backwards. In one Trio run and in the next."""
    layer = djobs.memory()
    seen: list[int] = []

    async def session(hours: int) -> None:
        async with open_test_engine([heartbeat], storage=layer) as engine:
            start = engine.clock.now_ms()
            assert not seen or start >= seen[-1], (start, seen)
            client = engine.client.continuous(heartbeat)
            await client.start(id="h", input=Beat())
            await trio.sleep(hours * 3600 + 1)
            seen.append(engine.clock.now_ms())
            status = success(await client.status("h"))
            assert status.next_run_at is not None
            assert status.next_run_at.timestamp() * 1000 - engine.clock.now_ms() <= 3_600_000

    async def two_sessions() -> None:
        await session(2)
        await session(3)  # reopened in the same run

    trio.run(two_sessions, clock=trio.testing.MockClock(autojump_threshold=0))
    trio.run(session, 1, clock=trio.testing.MockClock(autojump_threshold=0))  # and in another run
    assert seen[0] >= 1767225600000 + 2 * 3_600_000 and seen[1] >= seen[0] + 3 * 3_600_000
    assert seen[2] >= seen[1] + 3_600_000


# -- recorded events -----------------------------------------------------------------------------


@pytest.mark.trio
async def test_recorded_events_add_no_work_for_the_cycle_collector(autojump_clock: trio.testing.MockClock) -> None:
    # A test engine keeps every event it records (about six a virtual hour here): a long virtual
    # span would otherwise fill Python's cycle collector with them and make its full passes slow.
    beat = djobs.Continuous.make(
        "beat", state=Beat, schedule=djobs.every("1 hour"), execute=lambda ctx: Beat(ctx.state.n + 1)
    )
    async with open_test_engine([beat]) as engine:
        success(await engine.client.continuous(beat).start(id="one", input=Beat()))
        await trio.sleep(3 * 3600 + 60)
        events = engine.tracker.events
    assert [e.type for e in events].count("job.executed") == 4  # at the start, then hourly
    assert not any(gc.is_tracked(e) for e in events)
    assert events[-1].data["run_count"] == 4
