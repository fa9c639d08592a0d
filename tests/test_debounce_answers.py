"""Each Debounce ``add`` gets the answer for its own event, in bounded time, also while the
engine closes: on memory, SQLite and PostgreSQL, under a virtual clock."""

from __future__ import annotations

import logging
import threading
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from returns.io import IOFailure
from test_timeouts import layer  # noqa: F401  # the memory / SQLite / PostgreSQL fixture

import djobs
import djobs.storage
from djobs.testing import failure, open_test_engine, success


class N(msgspec.Struct):
    n: int


class Ns(msgspec.Struct):
    ns: list[int] = []


async def _slow_append(ctx: djobs.DebounceEventContext[N, Ns]) -> Ns:
    await trio.sleep(0.01)  # each round takes (virtual) time: other adds queue behind it
    return Ns([*(ctx.state.ns if ctx.state else []), ctx.event.n])


flushed: list[int] = []


def _keep(ctx: djobs.DebounceContext[Ns]) -> None:
    flushed.extend(ctx.state.ns)


def _job(name: str = "answers", **options: Any) -> djobs.Debounce[N, Ns]:
    return djobs.Debounce.make(
        name, event=N, state=Ns, flush_after="1 hour", on_event=_slow_append, execute=_keep, **options
    )


@pytest.mark.trio
@pytest.mark.parametrize("with_event_id", [True, False], ids=["event_id", "no_event_id"])
async def test_an_add_stored_as_the_engine_closes_is_answered_applied(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
    with_event_id: bool,
) -> None:
    """Ten callers add to one instance without pause until the engine closes under them: an add
    answered with a success is in the batch after a restart, and an add whose event is in the
    batch was answered with a success (a caller that retries a failure adds nothing twice); the
    others are answered with a StorageError, and none is left without an answer. Without event
    ids, batches of three (a round ends at the add that fills one, so adds keep waiting)."""
    job = _job(max_events=None if with_event_id else 3)
    flushed.clear()
    answers: dict[int, Any] = {}

    async def adder(c: int, client: djobs.DebounceClient[N, Ns]) -> None:
        for k in range(1000):
            n = c * 10_000 + k
            event_id = f"e{n}" if with_event_id else None
            answers[n] = added = await client.add(id="same", event=N(n), event_id=event_id)
            if isinstance(added, IOFailure):
                return

    async with trio.open_nursery() as outer, open_test_engine([job], storage=layer) as engine:
        client = engine.client.debounce(job)
        for c in range(10):
            outer.start_soon(adder, c, client)
        await trio.sleep(0.3)
    async with open_test_engine([job], storage=layer) as engine:
        await trio.sleep(1)  # a full batch's alarm, due now, fires
        success(await engine.client.debounce(job).flush("same"))
    stored = set(flushed)
    assert len(stored) == len(flushed)
    applied = {n for n, added in answers.items() if not isinstance(added, IOFailure)}
    assert len(answers) > 20  # adds were applied before the close, and some were waiting at it
    assert stored == applied
    for n, added in answers.items():
        if n not in applied:
            assert isinstance(failure(added), djobs.StorageError), (n, added)


@pytest.mark.trio
async def test_a_caller_waits_only_for_the_rounds_before_its_own(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
) -> None:
    """Ten callers add to one instance for 3 s, each add with an event id (a round of its own):
    no add waits much longer than the ten rounds of the callers ahead of it; the caller that
    began the first round does not go on applying the others' adds until nobody adds."""
    job = _job()
    waits: list[float] = []
    stop = False

    async def adder(c: int, client: djobs.DebounceClient[N, Ns]) -> None:
        k = 0
        while not stop:
            began = trio.current_time()
            success(await client.add(id="same", event=N(c * 10_000 + k), event_id=f"{c}-{k}"))
            waits.append(trio.current_time() - began)
            k += 1

    async with open_test_engine([job], storage=layer) as engine:
        client = engine.client.debounce(job)
        async with trio.open_nursery() as nursery:
            for c in range(10):
                nursery.start_soon(adder, c, client)
            await trio.sleep(3)
            stop = True
        assert success(await client.status("same")).event_count == len(waits)
    assert len(waits) > 100
    assert max(waits) < 0.5  # one round takes 0.01 s of the reducer's; ten callers queue


async def _stuck_append(ctx: djobs.DebounceEventContext[N, Ns]) -> Ns:
    started.append(ctx.event.n)
    await trio.sleep(20)
    return Ns([*(ctx.state.ns if ctx.state else []), ctx.event.n])


started: list[int] = []


@pytest.mark.trio
async def test_a_close_cancels_a_stuck_reducer_after_its_grace_and_starts_no_other(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
) -> None:
    """Three adds to one instance whose reducer takes 20 s, the engine closing with a grace of
    1 s: after the grace the running reducer is cancelled and the adds queued behind it are
    answered with a StorageError without their reducers starting; the close holds the
    application's nursery no longer than the grace, and nothing was stored."""
    job = djobs.Debounce.make(
        "stuck", event=N, state=Ns, flush_after="1 hour", on_event=_stuck_append, execute=lambda c: None
    )
    started.clear()
    answered: dict[int, tuple[Any, float]] = {}

    async def adder(n: int, client: djobs.DebounceClient[N, Ns]) -> None:
        added = await client.add(id="x", event=N(n))
        answered[n] = added, trio.current_time()

    began = trio.current_time()
    async with trio.open_nursery() as outer:
        async with open_test_engine([job], storage=layer, shutdown_grace="1 second") as engine:
            client = engine.client.debounce(job)
            for n in range(3):
                outer.start_soon(adder, n, client)
            await trio.sleep(0.5)
        closed = trio.current_time()
    assert closed - began < 3
    assert trio.current_time() - began < 3  # the adders' nursery ended with the engine
    assert len(started) == 1
    assert sorted(answered) == [0, 1, 2]
    for added, at in answered.values():
        assert isinstance(failure(added), djobs.StorageError)
        assert at <= closed
    async with open_test_engine([job], storage=layer) as engine:
        assert success(await engine.client.debounce(job).status("x")).status == "not_found"


@pytest.mark.trio
async def test_an_add_queued_behind_a_stuck_flush_is_answered_at_the_close(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An add whose round waits on the instance's actor behind a manual flush that takes 20 s:
    past the shutdown grace the flush is cancelled, and the add is answered with a StorageError
    without its reducer starting (no bug logged); the close holds the application no longer
    than the grace, and the batch keeps only the first add."""
    caplog.set_level(logging.ERROR, logger="djobs")
    reduced: list[int] = []

    def keep(ctx: djobs.DebounceEventContext[N, Ns]) -> Ns:
        reduced.append(ctx.event.n)
        return Ns([*(ctx.state.ns if ctx.state else []), ctx.event.n])

    async def stuck_flush(ctx: djobs.DebounceContext[Ns]) -> None:
        await trio.sleep(20)

    job = djobs.Debounce.make("held", event=N, state=Ns, flush_after="1 hour", on_event=keep, execute=stuck_flush)
    answered: dict[str, Any] = {}

    async def call(what: str, verb: Any) -> None:
        answered[what] = await verb()

    began = trio.current_time()
    async with trio.open_nursery() as outer:
        async with open_test_engine([job], storage=layer, shutdown_grace="1 second") as engine:
            client = engine.client.debounce(job)
            success(await client.add(id="x", event=N(1)))
            outer.start_soon(call, "flush", lambda: client.flush("x"))
            await trio.sleep(0.1)  # the flush runs on the actor
            outer.start_soon(call, "add", lambda: client.add(id="x", event=N(2)))
            await trio.sleep(0.1)  # the add's round is queued behind it
        assert trio.current_time() - began < 3
    assert trio.current_time() - began < 3
    assert reduced == [1]
    assert isinstance(failure(answered["flush"]), djobs.StorageError)
    assert isinstance(failure(answered["add"]), djobs.StorageError)
    assert not [r for r in caplog.records if "bug" in r.getMessage()]
    async with open_test_engine([job], storage=layer) as engine:
        assert success(await engine.client.debounce(job).get_state("x")).state == Ns([1])


@pytest.mark.trio
async def test_an_add_whose_round_commits_on_the_actor_past_the_grace_is_answered_as_stored(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An add whose round runs on the instance's actor (behind a short flush) and whose commit,
    which no cancel interrupts, is still in flight when the close's grace ends: the add waits
    for that commit and is answered applied, as stored; no bug is logged."""
    caplog.set_level(logging.ERROR, logger="djobs")

    async def short_flush(ctx: djobs.DebounceContext[Ns]) -> None:
        await trio.sleep(0.5)

    job = djobs.Debounce.make(
        "slowcommit", event=N, state=Ns, flush_after="1 hour", on_event=_slow_append, execute=short_flush
    )
    answered: dict[str, Any] = {}

    async def call(what: str, verb: Any) -> None:
        answered[what] = await verb()

    engine_opened = open_test_engine([job], storage=layer, shutdown_grace="1 second")
    async with trio.open_nursery() as outer, engine_opened as engine:
        client = engine.client.debounce(job)
        success(await client.add(id="x", event=N(1)))
        real_commit = engine.storage.commit  # type: ignore[attr-defined]

        async def slow_commit(checkin: djobs.storage.Checkin) -> None:
            if checkin.record is not None and checkin.record.state is not None:
                with trio.CancelScope(shield=True):  # like a database write that must finish
                    await trio.sleep(3)
            await real_commit(checkin)

        engine.storage.commit = slow_commit  # type: ignore[attr-defined]
        outer.start_soon(call, "flush", lambda: client.flush("x"))
        await trio.sleep(0.1)  # the flush runs on the actor for 0.5 s
        outer.start_soon(call, "add", lambda: client.add(id="x", event=N(2)))
        await trio.sleep(0.1)  # the add's round is queued behind it; the close begins
    assert success(answered["flush"]).flushed
    assert not [r for r in caplog.records if "bug" in r.getMessage()]
    async with open_test_engine([job], storage=layer) as engine:
        state = success(await engine.client.debounce(job).get_state("x")).state
    stored = state is not None and 2 in state.ns
    assert stored == (not isinstance(answered["add"], IOFailure)), answered["add"]


@pytest.mark.trio
async def test_a_blocking_reducer_abandoned_past_its_timeout_sees_only_its_own_event(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A `blocking` reducer past its `timeout` runs on in its thread: it reads and changes only its own add's context.

    Adds 2 and 3 queue behind add 1 and are applied in one round: add 2's reducer times out and
    its thread goes on while add 3's runs; what it then reads is event 2, and what it appends to
    its state is not in the batch stored (only 1 and 3 are).
    """
    go: dict[int, threading.Event] = {n: threading.Event() for n in (1, 2)}
    started_2, done_2 = threading.Event(), threading.Event()
    seen_late: list[int] = []

    def reduce(ctx: djobs.DebounceEventContext[N, Ns]) -> Ns:
        n = ctx.event.n
        if n == 2:  # blocks past its timeout; its thread is abandoned and ends during add 3's reducer
            started_2.set()
            go[2].wait(10)
            seen_late.append(ctx.event.n)
            if ctx.state is not None:
                ctx.state.ns.append(ctx.event.n)
            done_2.set()
            return ctx.state or Ns()
        if n == 1:
            go[1].wait(10)
        else:
            go[2].set()  # add 2's abandoned thread goes on now
            done_2.wait(10)
        return Ns([*(ctx.state.ns if ctx.state else []), n])

    job = djobs.Debounce.make(
        "abandoned",
        event=N,
        state=Ns,
        flush_after="1 hour",
        on_event=reduce,
        execute=_keep,
        blocking=True,
        timeout="300 ms",
    )
    answered: dict[int, Any] = {}
    async with open_test_engine([job]) as engine:
        client = engine.client.debounce(job)

        async def add(n: int) -> None:
            answered[n] = await client.add(id="x", event=N(n))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(add, 1)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(add, 2)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(add, 3)
            await trio.testing.wait_all_tasks_blocked()  # both queued behind add 1, in this order
            go[1].set()
            await trio.to_thread.run_sync(started_2.wait)  # the next round runs add 2's reducer
            mock_clock.jump(1)  # past its timeout (the clock moves only here)
        assert isinstance(failure(answered[2]), djobs.ExecutionError)
        assert success(answered[3]).event_count == 2
        assert seen_late == [2]
        assert success(await client.get_state("x")).state == Ns([1, 3])


@pytest.mark.trio
async def test_a_writer_cancelled_while_its_reducer_awaits_applies_its_round_and_the_adds_behind_it(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
) -> None:
    """The first add of an instance (its writer) is cancelled while its reducer awaits, and two adds
    queue behind it meanwhile: no cancel of the writer's caller stops its work, so all three
    events are applied (the writer's first) and the two queued adds are answered with a success."""
    job = _job("cancelledwriter")
    answered: dict[int, Any] = {}
    async with open_test_engine([job], storage=layer) as engine:
        client = engine.client.debounce(job)

        async def add(n: int, cancel_after: float = float("inf")) -> None:
            with trio.move_on_after(cancel_after):
                answered[n] = await client.add(id="x", event=N(n))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(add, 1, 0.005)  # its reducer sleeps 0.01 s: cancelled in there
            await trio.sleep(0.001)
            nursery.start_soon(add, 2)
            nursery.start_soon(add, 3)
        assert sorted(success(answered[n]).event_count for n in (2, 3)) == [2, 3]
        state = success(await client.get_state("x")).state
        assert state is not None
        assert state.ns[0] == 1
        assert sorted(state.ns) == [1, 2, 3]


def _lock_holder(path: str) -> Any:
    """Another connection to the SQLite file at `path`, holding its write lock until it commits."""
    import apsw

    other = apsw.Connection(path)
    other.execute("BEGIN IMMEDIATE")
    return other


@pytest.mark.trio
async def test_a_writer_cancelled_while_another_connection_holds_the_write_lock_still_applies_its_queue(
    autojump_clock: trio.testing.MockClock, tmp_path: Any
) -> None:
    """SQLite: the first add of an instance waits for the file's write lock, which another connection
    holds for 0.2 s; its caller is cancelled meanwhile and two adds queue behind it. The wait is
    shielded for the writer: once the lock is free, all three events are applied and the queued
    adds are answered with a success."""
    path = str(tmp_path / "jobs.db")
    job = djobs.Debounce.make("locked", event=N, state=Ns, flush_after="1 hour", on_event=_append, execute=_keep)
    answered: dict[int, Any] = {}
    async with open_test_engine([job], storage=djobs.sqlite(path)) as engine:
        client = engine.client.debounce(job)
        other = _lock_holder(path)

        async def add(n: int, cancel_after: float = float("inf")) -> None:
            with trio.move_on_after(cancel_after):
                answered[n] = await client.add(id="x", event=N(n))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(add, 1, 0.05)
            await trio.sleep(0.01)
            nursery.start_soon(add, 2)
            nursery.start_soon(add, 3)
            await trio.sleep(0.2)
            other.execute("COMMIT")
        other.close()
        assert sorted(success(answered[n]).event_count for n in (2, 3)) == [2, 3]
        state = success(await client.get_state("x")).state
        assert state is not None
        assert state.ns[0] == 1
        assert sorted(state.ns) == [1, 2, 3]


@pytest.mark.trio
async def test_the_close_stops_a_writer_waiting_for_another_connections_write_lock(
    autojump_clock: trio.testing.MockClock, tmp_path: Any
) -> None:
    """SQLite: the first add of an instance waits for the file's write lock (to take the instance's
    lease), which another connection holds past the engine's close (for up to the 5 s busy
    timeout): the close, its grace of 1 s over at once (no round runs), stops the wait, and the
    add is answered with the closed StorageError within that grace; nothing is stored."""
    path = str(tmp_path / "jobs.db")
    job = djobs.Debounce.make("stuckwrite", event=N, state=Ns, flush_after="1 hour", on_event=_append, execute=_keep)
    answered: dict[str, Any] = {}
    began = trio.current_time()
    async with trio.open_nursery() as outer:
        async with open_test_engine([job], storage=djobs.sqlite(path), shutdown_grace="1 second") as engine:
            client = engine.client.debounce(job)
            other = _lock_holder(path)

            async def add() -> None:
                answered["add"] = await client.add(id="x", event=N(1))
                answered["at"] = trio.current_time()

            outer.start_soon(add)
            await trio.sleep(0.1)
        closed = trio.current_time()
    other.execute("COMMIT")
    other.close()
    assert closed - began < 2.5
    error = failure(answered["add"])
    assert isinstance(error, djobs.StorageError)
    assert "closed" in error.message and "unexpectedly" not in error.message, error.message
    assert answered["at"] - began < 2.5
    async with open_test_engine([job], storage=djobs.sqlite(path)) as engine:
        assert success(await engine.client.debounce(job).status("x")).status == "not_found"


def _append(ctx: djobs.DebounceEventContext[N, Ns]) -> Ns:
    return Ns([*(ctx.state.ns if ctx.state else []), ctx.event.n])


class _P(msgspec.Struct):
    x: int


def _ignore(ctx: djobs.JobContext[None], params: _P) -> None:
    return None


_side = djobs.Job.make("side", params=_P, execute=_ignore)


async def _reducer_enqueueing_under_lock(path: str, own_scope: bool, **options: Any) -> tuple[Any, dict[str, Any]]:
    """A writer's own reducer (the instance's first add, so its caller's task is the marked
    writer) enqueues a job while another connection holds the SQLite write lock for 2 s; with
    `own_scope`, under the reducer's ``move_on_after(0.1)``. The add's answer and what the
    reducer saw."""
    seen: dict[str, Any] = {}

    async def reducer(ctx: djobs.DebounceEventContext[N, Ns]) -> Ns:
        began = trio.current_time()
        other = _lock_holder(path)
        seen["nursery"].start_soon(release, other)
        with trio.move_on_after(0.1 if own_scope else float("inf")) as scope:
            await seen["client"].job(_side).later(_P(1))
        seen["waited"] = trio.current_time() - began
        seen["cancelled_caught"] = scope.cancelled_caught
        return Ns([ctx.event.n])

    async def release(other: Any) -> None:
        await trio.sleep(2)
        other.execute("COMMIT")
        other.close()

    job = djobs.Debounce.make(
        "scoped", event=N, state=Ns, flush_after="1 hour", on_event=reducer, execute=_keep, **options
    )
    async with trio.open_nursery() as nursery:
        seen["nursery"] = nursery
        async with open_test_engine([job, _side], storage=djobs.sqlite(path)) as engine:
            seen["client"] = engine.client
            answer = await engine.client.debounce(job).add(id="x", event=N(1))
    return answer, seen


@pytest.mark.trio
async def test_a_writers_own_reducer_scope_ends_its_wait_for_another_connections_write_lock(
    autojump_clock: trio.testing.MockClock, tmp_path: Any
) -> None:
    """SQLite: the reducer of an instance's first add (run in the writer's own task) waits under its
    own ``move_on_after(0.1)`` for the write lock another connection holds for 2 s: its scope ends
    the wait at 0.1 s (the writer's shield covers the reducer as a whole, not the reducer's scopes),
    and the add is applied."""
    answer, seen = await _reducer_enqueueing_under_lock(str(tmp_path / "jobs.db"), own_scope=True)
    assert seen["cancelled_caught"] is True
    assert seen["waited"] == pytest.approx(0.1)
    assert success(answer).event_count == 1


@pytest.mark.trio
async def test_a_writers_own_reducer_is_cut_off_at_the_jobs_timeout_while_waiting_for_the_write_lock(
    autojump_clock: trio.testing.MockClock, tmp_path: Any
) -> None:
    """SQLite: as above with no scope of the reducer's but the job's ``timeout="100 ms"``: the
    reducer is cancelled at 0.1 s and the add fails with the timeout's ExecutionError."""
    answer, seen = await _reducer_enqueueing_under_lock(str(tmp_path / "jobs.db"), own_scope=False, timeout="100 ms")
    assert "waited" not in seen
    error = failure(answer)
    assert isinstance(error, djobs.ExecutionError)
    assert "did not finish within its timeout of 0.1 s" in error.message, error.message
