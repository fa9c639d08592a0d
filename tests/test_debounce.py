"""Debounce jobs: the seed's webhook batcher, retries, concurrency, restarts and bad input, under a virtual clock."""

from __future__ import annotations

import gc
import logging
import random
import warnings
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from returns.future import FutureResult
from returns.io import IOFailure
from returns.result import Failure, Result, Success

import djobs
from djobs._trap import RUN_CONTEXT, WOKEN
from djobs.storage import Checkin, InstanceRecord, SetAlarm
from djobs.testing import failure, open_test_engine, success

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Webhook(msgspec.Struct):
    type: str
    contact_id: str
    data: dict[str, Any] = {}


class Batch(msgspec.Struct):
    events: list[Webhook]
    count: int


def append(ctx: djobs.DebounceEventContext[Webhook, Batch]) -> Batch:
    """The seed's reducer: append the event to the batch's list and count it."""
    batch = ctx.state or Batch(events=[], count=0)
    return Batch(events=[*batch.events, ctx.event], count=batch.count + 1)


class Flushed(msgspec.Struct):
    """What one execute saw."""

    events: list[Webhook]
    count: int
    event_count: int
    reason: str
    started_at: datetime
    at: datetime
    attempt: int
    is_retry: bool
    run_count: int


def make_batcher(
    flushed: list[Flushed],
    *,
    fail_times: int = 0,
    retry: djobs.Retry | None = None,
    max_events: int | None = 100,
    name: str = "webhookBatcher",
) -> djobs.Debounce[Webhook, Batch]:
    """The seed's webhook batcher; its first `fail_times` flushes fail."""
    failures = [fail_times]

    async def send_batch(ctx: djobs.DebounceContext[Batch]) -> Result[None, djobs.ExecutionError]:
        flushed.append(
            Flushed(
                ctx.state.events,
                ctx.state.count,
                ctx.event_count,
                ctx.flush_reason,
                ctx.debounce_started_at,
                ctx.now(),
                ctx.attempt,
                ctx.is_retry,
                ctx.run_count,
            )
        )
        if failures[0]:
            failures[0] -= 1
            return Failure(djobs.ExecutionError("webhook endpoint returned 503"))
        return Success(None)

    return djobs.Debounce.make(
        name,
        event=Webhook,
        state=Batch,
        flush_after="5 seconds",
        max_events=max_events,
        on_event=append,
        execute=send_batch,
        retry=retry,
    )


def hook(i: int) -> Webhook:
    return Webhook("contact.updated", "456", {"n": i})


@pytest.mark.trio
async def test_a_burst_of_250_flushes_100_100_then_50_after_flush_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flushed: list[Flushed] = []
    batcher = make_batcher(flushed)
    async with open_test_engine([batcher]) as engine:
        client = engine.client.debounce(batcher)
        results = [success(await client.add(id="contact-456", event=hook(i))) for i in range(250)]
        # The first event starts a batch due 5 s later; the 100th fills it and flushes it now.
        assert results[0] == djobs.AddResult(created=True, event_count=1, will_flush_at=T0 + timedelta(seconds=5))
        assert results[1] == djobs.AddResult(created=False, event_count=2, will_flush_at=T0 + timedelta(seconds=5))
        assert results[99] == djobs.AddResult(created=False, event_count=100, will_flush_at=T0)
        assert results[100] == djobs.AddResult(created=True, event_count=1, will_flush_at=T0 + timedelta(seconds=5))
        assert [r.event_count for r in results[200:]] == list(range(1, 51))
        await engine.wait_idle()
        assert [(f.event_count, f.reason) for f in flushed] == [(100, "max_events"), (100, "max_events")]
        assert success(await client.status("contact-456")) == djobs.DebounceStatus(
            "debouncing", event_count=50, will_flush_at=T0 + timedelta(seconds=5)
        )
        await trio.sleep(4.9)
        assert len(flushed) == 2
        await trio.sleep(0.2)
        assert [(f.event_count, f.count, f.reason) for f in flushed] == [
            (100, 100, "max_events"),
            (100, 100, "max_events"),
            (50, 50, "flush_after"),
        ]
        assert flushed[2].at == T0 + timedelta(seconds=5)
        assert flushed[2].started_at == T0
        assert [f.run_count for f in flushed] == [1, 2, 3]
        # Every event was processed once, in order.
        assert [e.data["n"] for f in flushed for e in f.events] == list(range(250))
        assert success(await client.status("contact-456")) == djobs.DebounceStatus("idle", event_count=0)
        assert success(await client.get_state("contact-456")) == djobs.StateResult(None)
        flushed_events = engine.tracker.of_type("debounce.flushed")
        assert [(e.data["event_count"], e.data["reason"]) for e in flushed_events] == [
            (100, "max_events"),
            (100, "max_events"),
            (50, "flush_after"),
        ]
        started = engine.tracker.of_type("debounce.started")
        assert [e.data["flush_at"] for e in started] == [(T0 + timedelta(seconds=5)).isoformat()] * 3
        assert engine.tracker.count("job.executed") == 3
        assert engine.tracker.count("job.started") == 1  # the instance was created once


@pytest.mark.trio
async def test_flush_after_counts_from_the_first_event(autojump_clock: trio.testing.MockClock) -> None:
    flushed: list[Flushed] = []
    batcher = make_batcher(flushed)
    async with open_test_engine([batcher]) as engine:
        client = engine.client.debounce(batcher)
        for _ in range(4):  # an event every 1.5 s: a sliding window would never flush
            added = success(await client.add(id="c", event=hook(0)))
            assert added.will_flush_at == T0 + timedelta(seconds=5)
            await trio.sleep(1.5)
        await trio.sleep(0.6)
        assert [(f.event_count, f.at) for f in flushed] == [(4, T0 + timedelta(seconds=5))]
        # The next event starts a new batch, 5 s from itself.
        added = success(await client.add(id="c", event=hook(1)))
        assert added == djobs.AddResult(True, 1, T0 + timedelta(seconds=11.6))


@pytest.mark.trio
async def test_manual_flush_and_clear(autojump_clock: trio.testing.MockClock) -> None:
    flushed: list[Flushed] = []
    batcher = make_batcher(flushed)
    async with open_test_engine([batcher]) as engine:
        client = engine.client.debounce(batcher)
        for i in range(3):
            await client.add(id="c", event=hook(i))
        await trio.sleep(1)
        result = success(await client.flush("c"))
        assert result == djobs.FlushResult(instance_id="c", flushed=True, event_count=3, outcome="succeeded")
        assert [(f.event_count, f.reason, f.at) for f in flushed] == [(3, "manual", T0 + timedelta(seconds=1))]
        # Idle now: nothing to flush, and the old flush_after alarm is gone.
        assert success(await client.flush("c")) == djobs.FlushResult("c", flushed=False, event_count=0)
        await trio.sleep(10)
        assert len(flushed) == 1
        assert failure(await client.flush("nobody")) == djobs.InstanceNotFoundError("webhookBatcher", "nobody")

        # clear drops a batch without executing it.
        await client.add(id="c", event=hook(3))
        await client.add(id="c", event=hook(4))
        assert success(await client.clear("c")) == djobs.ClearResult(instance_id="c", cleared=True, event_count=2)
        assert success(await client.status("c")) == djobs.DebounceStatus("idle", event_count=0)
        await trio.sleep(10)
        assert len(flushed) == 1
        assert success(await client.clear("c")) == djobs.ClearResult("c", cleared=False, event_count=0)
        assert success(await client.clear("nobody")) == djobs.ClearResult("nobody", cleared=False, event_count=0)
        # After a clear the next event starts a fresh batch.
        added = success(await client.add(id="c", event=hook(5)))
        assert added.created and added.event_count == 1
        await trio.sleep(5)
        await engine.wait_idle()
        assert [[e.data["n"] for e in f.events] for f in flushed] == [[0, 1, 2], [5]]


@pytest.mark.trio
async def test_a_flush_that_fails_twice_keeps_every_event(autojump_clock: trio.testing.MockClock) -> None:
    flushed: list[Flushed] = []
    retry = djobs.Retry(max_attempts=3, delay=djobs.Backoff.fixed("1 second"))
    batcher = make_batcher(flushed, fail_times=2, retry=retry)
    async with open_test_engine([batcher]) as engine:
        client = engine.client.debounce(batcher)
        for i in range(3):
            await client.add(id="c", event=hook(i))
        await trio.sleep(5.5)  # the flush at +5 s failed; its retry is due at +6 s
        assert success(await client.status("c")) == djobs.DebounceStatus(
            "debouncing", event_count=3, will_flush_at=T0 + timedelta(seconds=6)
        )
        added = success(await client.add(id="c", event=hook(3)))  # joins the batch being retried
        assert added == djobs.AddResult(created=False, event_count=4, will_flush_at=T0 + timedelta(seconds=6))
        await trio.sleep(1)  # the retry at +6 s failed too; the next is due at +7 s
        await client.add(id="c", event=hook(4))
        await trio.sleep(1)
        assert [(f.event_count, f.attempt, f.is_retry, f.reason, f.at) for f in flushed] == [
            (3, 1, False, "flush_after", T0 + timedelta(seconds=5)),
            (4, 2, True, "flush_after", T0 + timedelta(seconds=6)),
            (5, 3, True, "flush_after", T0 + timedelta(seconds=7)),
        ]
        assert [e.data["n"] for e in flushed[-1].events] == [0, 1, 2, 3, 4]
        assert {f.run_count for f in flushed} == {1}
        assert [e.data["will_retry"] for e in engine.tracker.of_type("job.failed")] == [True, True]
        [done] = engine.tracker.of_type("debounce.flushed")
        assert done.data["event_count"] == 5 and done.data["reason"] == "flush_after"
        assert success(await client.status("c")) == djobs.DebounceStatus("idle", event_count=0)
        # The next batch starts from attempt 1 and is flush number 2.
        await client.add(id="c", event=hook(5))
        await trio.sleep(5)
        await engine.wait_idle()
        assert (flushed[-1].attempt, flushed[-1].run_count) == (1, 2)


@pytest.mark.trio
async def test_a_retry_keeps_the_max_events_reason(autojump_clock: trio.testing.MockClock) -> None:
    flushed: list[Flushed] = []
    retry = djobs.Retry(max_attempts=2, delay=djobs.Backoff.fixed("1 second"))
    batcher = make_batcher(flushed, fail_times=1, retry=retry, max_events=2)
    async with open_test_engine([batcher]) as engine:
        client = engine.client.debounce(batcher)
        await client.add(id="c", event=hook(0))
        await client.add(id="c", event=hook(1))
        await engine.wait_idle()
        # While the retry waits, more events join the batch without flushing it early.
        for i in range(2, 5):
            added = success(await client.add(id="c", event=hook(i)))
            assert added.will_flush_at == T0 + timedelta(seconds=1)
        await trio.sleep(1)
        await engine.wait_idle()
        assert [(f.event_count, f.reason, f.attempt) for f in flushed] == [(2, "max_events", 1), (5, "max_events", 2)]


@pytest.mark.trio
async def test_flush_and_clear_while_a_retry_waits(autojump_clock: trio.testing.MockClock) -> None:
    flushed: list[Flushed] = []
    retry = djobs.Retry(max_attempts=5, delay=djobs.Backoff.fixed("1 minute"))
    batcher = make_batcher(flushed, fail_times=2, retry=retry)
    async with open_test_engine([batcher]) as engine:
        client = engine.client.debounce(batcher)
        for instance in ("a", "b"):
            await client.add(id=instance, event=hook(0))
        await trio.sleep(6)  # both flushes failed; their retries are due a minute later
        assert [f.attempt for f in flushed] == [1, 1]
        # A manual flush runs the waiting retry now, as its next attempt.
        result = success(await client.flush("a"))
        assert result == djobs.FlushResult("a", flushed=True, event_count=1, outcome="succeeded")
        assert (flushed[-1].attempt, flushed[-1].is_retry, flushed[-1].reason) == (2, True, "manual")
        # clear drops the other batch and its pending retry.
        assert success(await client.clear("b")) == djobs.ClearResult("b", cleared=True, event_count=1)
        await trio.sleep(600)
        assert len(flushed) == 3
        assert [success(await client.status(i)).status for i in ("a", "b")] == ["idle", "idle"]


@pytest.mark.trio
async def test_exhausted_retries_purge_the_instance(autojump_clock: trio.testing.MockClock) -> None:
    flushed: list[Flushed] = []
    retry = djobs.Retry(max_attempts=3, delay=djobs.Backoff.fixed("1 second"))
    batcher = make_batcher(flushed, fail_times=99, retry=retry)
    async with open_test_engine([batcher]) as engine:
        client = engine.client.debounce(batcher)
        await client.add(id="c", event=hook(0), event_id="evt-1")
        await trio.sleep(60)
        assert [f.attempt for f in flushed] == [1, 2, 3]
        [exhausted] = engine.tracker.of_type("job.retry_exhausted")
        assert exhausted.data["attempts"] == 3
        assert "503" in exhausted.data["reason"]
        assert engine.tracker.count("debounce.flushed") == 0
        assert success(await client.status("c")) == djobs.DebounceStatus("not_found")
        assert failure(await client.get_state("c")) == djobs.InstanceNotFoundError("webhookBatcher", "c")
        # The purge forgot the event ids too: the same id is accepted by the new instance.
        again = success(await client.add(id="c", event=hook(1), event_id="evt-1"))
        assert again.created and again.event_count == 1


@pytest.mark.trio
async def test_a_failed_flush_without_retry_drops_its_batch(autojump_clock: trio.testing.MockClock) -> None:
    flushed: list[Flushed] = []
    batcher = make_batcher(flushed, fail_times=1)
    async with open_test_engine([batcher]) as engine:
        client = engine.client.debounce(batcher)
        await client.add(id="c", event=hook(0), event_id="e0")
        await client.add(id="c", event=hook(1))
        await trio.sleep(5)
        await engine.wait_idle()
        [failed] = engine.tracker.of_type("job.failed")
        assert failed.data["will_retry"] is False
        assert engine.tracker.count("debounce.flushed") == 0
        assert success(await client.status("c")) == djobs.DebounceStatus("idle", event_count=0)
        await trio.sleep(60)
        assert len(flushed) == 1  # not tried again
        # The instance takes new events; it still remembers the ids it accepted.
        assert isinstance(failure(await client.add(id="c", event=hook(2), event_id="e0")), djobs.DuplicateEventError)
        await client.add(id="c", event=hook(3))
        await trio.sleep(5)
        await engine.wait_idle()
        assert [e.data["n"] for e in flushed[-1].events] == [3]
        assert engine.tracker.count("debounce.flushed") == 1


@pytest.mark.trio
async def test_terminate_in_execute_purges(autojump_clock: trio.testing.MockClock) -> None:
    def stop(ctx: djobs.DebounceContext[Webhook]) -> None:
        ctx.terminate(reason="contact deleted")

    job = djobs.Debounce.make("stopper", event=Webhook, execute=stop)
    async with open_test_engine([job]) as engine:
        client = engine.client.debounce(job)
        await client.add(id="c", event=hook(0), event_id="x")
        result = success(await client.flush("c"))
        assert result == djobs.FlushResult("c", flushed=True, event_count=1, outcome="terminated")
        assert success(await client.status("c")).status == "not_found"
        assert [e.data["reason"] for e in engine.tracker.of_type("job.terminated")] == ["contact deleted"]
        assert success(await client.add(id="c", event=hook(0), event_id="x")).created


@pytest.mark.trio
async def test_concurrent_adds_are_all_counted_and_handlers_never_interleave(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inside = 0
    overlaps = 0
    batches: list[tuple[int, list[int]]] = []

    async def enter_and_leave() -> None:
        nonlocal inside, overlaps
        inside += 1
        if inside > 1:
            overlaps += 1
        await trio.sleep(0.01)  # give another handler of the instance a chance to run, were it allowed to
        inside -= 1

    async def reduce(ctx: djobs.DebounceEventContext[Webhook, Batch]) -> Batch:
        await enter_and_leave()
        return append(ctx)

    async def send(ctx: djobs.DebounceContext[Batch]) -> None:
        await enter_and_leave()
        batches.append((ctx.event_count, [e.data["n"] for e in ctx.state.events]))

    job = djobs.Debounce.make(
        "concurrent",
        event=Webhook,
        state=Batch,
        max_events=50,
        flush_after="1 minute",
        on_event=reduce,
        execute=send,
    )
    async with open_test_engine([job]) as engine:
        client = engine.client.debounce(job)
        results: list[djobs.AddResult] = []

        async def add(i: int) -> None:
            results.append(success(await client.add(id="one", event=hook(i))))

        async with trio.open_nursery() as nursery:
            for i in range(230):
                nursery.start_soon(add, i)
        await engine.wait_idle()
        assert overlaps == 0
        assert sorted(r.event_count for r in results) == sorted([*range(1, 51)] * 4 + [*range(1, 31)])
        assert [count for count, _ in batches] == [50, 50, 50, 50]
        status = success(await client.status("one"))
        assert status.event_count == 30
        await trio.sleep(60)
        assert [count for count, _ in batches] == [50, 50, 50, 50, 30]
        # No event was lost or processed twice.
        assert sorted(n for _, ns in batches for n in ns) == list(range(230))


@pytest.mark.trio
async def test_events_added_during_a_flush_go_to_the_next_batch(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[list[int]] = []

    async def slow_send(ctx: djobs.DebounceContext[Batch]) -> None:
        await trio.sleep(2)  # a slow webhook endpoint
        seen.append([e.data["n"] for e in ctx.state.events])

    job = djobs.Debounce.make("slow", event=Webhook, state=Batch, on_event=append, execute=slow_send)
    async with open_test_engine([job]) as engine:
        client = engine.client.debounce(job)
        await client.add(id="c", event=hook(0))
        await trio.sleep(5.5)  # the flush started at +5 s and runs until +7 s
        added = success(await client.add(id="c", event=hook(1)))  # waits for the flush, then starts a new batch
        assert added == djobs.AddResult(created=True, event_count=1, will_flush_at=T0 + timedelta(seconds=12))
        await trio.sleep(10)
        assert seen == [[0], [1]]


@pytest.mark.trio
async def test_restart_in_the_middle_of_a_window(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    flushed: list[Flushed] = []
    batcher = make_batcher(flushed)
    db = djobs.sqlite(tmp_path / "jobs.db")
    async with open_test_engine([batcher], storage=db) as engine:
        for i in range(3):
            await engine.client.debounce(batcher).add(id="c", event=hook(i), event_id=f"e{i}")
        await trio.sleep(2)
    assert flushed == []
    # A new engine (a new process, in real life) on the same file, two seconds later.
    async with open_test_engine([batcher], storage=db, start=T0 + timedelta(seconds=2)) as engine:
        client = engine.client.debounce(batcher)
        assert success(await client.status("c")) == djobs.DebounceStatus(
            "debouncing", event_count=3, will_flush_at=T0 + timedelta(seconds=5)
        )
        assert isinstance(failure(await client.add(id="c", event=hook(0), event_id="e0")), djobs.DuplicateEventError)
        await client.add(id="c", event=hook(3), event_id="e3")
        await trio.sleep(2.9)
        assert flushed == []
        await trio.sleep(0.2)
        assert [[e.data["n"] for e in f.events] for f in flushed] == [[0, 1, 2, 3]]
        assert flushed[0].at == T0 + timedelta(seconds=5)
        assert flushed[0].started_at == T0
        await trio.sleep(60)
        assert len(flushed) == 1  # the alarm fired once
        assert engine.tracker.count("debounce.flushed") == 1


@pytest.mark.trio
async def test_a_full_batch_flushes_after_a_restart(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """The max_events flush is a durable alarm: a crash between the add and the flush loses nothing."""
    flushed: list[Flushed] = []
    batcher = make_batcher(flushed, max_events=2)
    db = djobs.sqlite(tmp_path / "jobs.db")
    # Simulate the crash: the rows the filling add commits, without the engine that would flush them.
    async with db.open() as storage:
        key = "debounce:webhookBatcher:c"
        state = msgspec.json.encode(Batch(events=[hook(0), hook(1)], count=2))
        now = int(T0.timestamp() * 1000)
        record = InstanceRecord(
            key=key,
            kind="debounce",
            name="webhookBatcher",
            instance_id="c",
            status="debouncing",
            state=state,
            event_count=2,
            started_at=now,
        )
        await storage.commit(Checkin(key=key, record=record, alarm=SetAlarm(now, "max_events")))
    async with open_test_engine([batcher], storage=db, start=T0 + timedelta(seconds=1)) as engine:
        await engine.wait_idle()
        assert [(f.event_count, f.reason) for f in flushed] == [(2, "max_events")]
        assert success(await engine.client.debounce(batcher).status("c")).status == "idle"


@pytest.mark.trio
async def test_default_reducer_keeps_the_latest_event(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[tuple[Webhook, int]] = []

    def send(ctx: djobs.DebounceContext[Webhook]) -> None:
        seen.append((ctx.state, ctx.event_count))

    job = djobs.Debounce.make("latest", event=Webhook, flush_after="10 seconds", execute=send)
    async with open_test_engine([job]) as engine:
        client = engine.client.debounce(job)
        await client.add(id="c", event=Webhook("a", "1"))
        await trio.sleep(1)
        await client.add(id="c", event=Webhook("b", "1"))
        state = success(await client.get_state("c"))
        assert state == djobs.StateResult(Webhook("b", "1"), scheduled_at=T0 + timedelta(seconds=10))
        assert success(await client.status("c")) == djobs.DebounceStatus(
            "debouncing", event_count=2, will_flush_at=T0 + timedelta(seconds=10)
        )
        await trio.sleep(10)
        assert seen == [(Webhook("b", "1"), 2)]


@pytest.mark.trio
async def test_the_event_context(autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[int, str, str, datetime, bool]] = []

    def reduce(ctx: djobs.DebounceEventContext[Webhook, Batch]) -> Batch:
        seen.append((ctx.event_count, ctx.instance_id, ctx.job_name, ctx.now(), ctx.state is None))
        if ctx.event_count == 2:
            ctx.log.info("folding %s", ctx.event.type, source="test")
        return append(ctx)

    def send(ctx: djobs.DebounceContext[Batch]) -> None:
        pass

    job = djobs.Debounce.make("ctx", event=Webhook, state=Batch, on_event=reduce, execute=send, logging=True)
    async with open_test_engine([job]) as engine:
        client = engine.client.debounce(job)
        with caplog.at_level(logging.INFO, logger="djobs"):
            await client.add(id="c", event=hook(0))
            await trio.sleep(1)
            await client.add(id="c", event=hook(1))
            await trio.sleep(5)
            await client.add(id="c", event=hook(2))
        assert seen == [
            (1, "c", "ctx", T0, True),
            (2, "c", "ctx", T0 + timedelta(seconds=1), False),
            (1, "c", "ctx", T0 + timedelta(seconds=6), True),  # a new batch starts from nothing
        ]
        # ctx.log carries the event's place in its batch, as a run's log carries its run.
        logged = [r for r in caplog.records if "folding" in r.getMessage()]
        assert [r.getMessage() for r in logged] == ["[job=ctx instance=c event=2] folding contact.updated"]
        assert logged[0].djobs == {"job": "ctx", "instance": "c", "event": 2, "source": "test"}


@pytest.mark.trio
async def test_reducer_forms_and_failures(autojump_clock: trio.testing.MockClock) -> None:
    def as_result(ctx: djobs.DebounceEventContext[Webhook, Batch]) -> Result[Batch, djobs.ExecutionError]:
        if ctx.event.type == "bad":
            return Failure(djobs.ExecutionError("refused"))
        return Success(append(ctx))

    def as_future(ctx: djobs.DebounceEventContext[Webhook, Batch]) -> FutureResult[Batch, djobs.ExecutionError]:
        return FutureResult.from_value(append(ctx))

    def raising(ctx: djobs.DebounceEventContext[Webhook, Batch]) -> Batch:
        raise KeyError("oops")

    def wrong_type(ctx: djobs.DebounceEventContext[Webhook, Batch]) -> Any:
        return {"events": "not a list", "count": 1}

    def forgot_return(ctx: djobs.DebounceEventContext[Webhook, Batch]) -> None:
        append(ctx)

    def send(ctx: djobs.DebounceContext[Batch]) -> None:
        pass

    def make(name: str, reducer: Any) -> djobs.Debounce[Webhook, Batch]:
        return djobs.Debounce.make(name, event=Webhook, state=Batch, on_event=reducer, execute=send)

    jobs = {f.__name__: make(f.__name__, f) for f in (as_result, as_future, raising, wrong_type, forgot_return)}
    async with open_test_engine(list(jobs.values())) as engine:
        for name in ("as_result", "as_future"):
            assert success(await engine.client.debounce(jobs[name]).add(id="c", event=hook(0))).event_count == 1
        client = engine.client.debounce(jobs["as_result"])
        refused = failure(await client.add(id="c", event=Webhook("bad", "1")))
        assert refused == djobs.ExecutionError("refused")
        assert success(await client.status("c")).event_count == 1  # nothing stored
        raised = failure(await engine.client.debounce(jobs["raising"]).add(id="c", event=hook(0)))
        assert isinstance(raised, djobs.ExecutionError) and isinstance(raised.cause, KeyError)
        invalid = failure(await engine.client.debounce(jobs["wrong_type"]).add(id="c", event=hook(0)))
        assert isinstance(invalid, djobs.ValidationError) and "Batch" in invalid.message
        none = failure(await engine.client.debounce(jobs["forgot_return"]).add(id="c", event=hook(0)))
        assert isinstance(none, djobs.ValidationError) and "returned None" in none.message
        for name in ("raising", "wrong_type", "forgot_return"):
            assert success(await engine.client.debounce(jobs[name]).status("c")).status == "not_found"


@pytest.mark.trio
async def test_bad_input_changes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    flushed: list[Flushed] = []
    batcher = make_batcher(flushed)
    async with open_test_engine([batcher]) as engine:
        client = engine.client.debounce(batcher)
        # An event that does not match its struct, as a dict or as an unchecked instance.
        for bad in ({"type": "x"}, {"type": 1, "contact_id": "c"}, Webhook(type=5, contact_id="c")):  # type: ignore[arg-type]
            err = failure(await client.add(id="c", event=bad))  # type: ignore[arg-type]
            assert isinstance(err, djobs.ValidationError) and "Webhook" in err.message
        assert success(await client.status("c")) == djobs.DebounceStatus("not_found")
        # A dict that matches is accepted and validated into the struct.
        await client.add(id="c", event={"type": "t", "contact_id": "c"})  # type: ignore[arg-type]
        # Unknown jobs, by name and by a definition the engine was not opened with.
        assert await engine.client.debounce("nope").add(id="c", event=hook(0)) == IOFailure(
            djobs.JobNotFoundError("nope")
        )
        stranger = make_batcher([], name="stranger")
        for verb in (
            engine.client.debounce(stranger).add(id="c", event=hook(0)),
            engine.client.debounce(stranger).flush("c"),
            engine.client.debounce(stranger).clear("c"),
            engine.client.debounce(stranger).status("c"),
            engine.client.debounce(stranger).get_state("c"),
        ):
            assert await verb == IOFailure(djobs.JobNotFoundError("stranger"))
        # A continuous client does not reach a debounce job of the same name, and says which client does.
        wrong_kind = failure(await engine.client.continuous("webhookBatcher").status("c"))
        assert isinstance(wrong_kind, djobs.JobNotFoundError) and wrong_kind.name == "webhookBatcher"
        assert "is a debounce job; use client.debounce('webhookBatcher')" in wrong_kind.message
        # Bad instance ids and event ids.
        for bad_id in ["", "x" * 10_000, "nul\x00byte", 42]:
            assert isinstance(failure(await client.add(id=bad_id, event=hook(0))), djobs.ValidationError)  # type: ignore[arg-type]
            assert isinstance(failure(await client.flush(bad_id)), djobs.ValidationError)  # type: ignore[arg-type]
            assert isinstance(failure(await client.status(bad_id)), djobs.ValidationError)  # type: ignore[arg-type]
        for bad_event_id in ["", 7, "e" * 10_000]:
            err = failure(await client.add(id="c", event=hook(0), event_id=bad_event_id))  # type: ignore[arg-type]
            assert isinstance(err, djobs.ValidationError) and "event_id" in err.message
        # With more than one problem, the first checked is the answer: the event id's, then the event's.
        bad_event = Webhook(type=5, contact_id="c")  # type: ignore[arg-type]
        for bad_event_id in ["nul\x00byte", 7]:
            err = failure(await client.add(id="c", event=bad_event, event_id=bad_event_id))  # type: ignore[arg-type]
            assert isinstance(err, djobs.ValidationError) and "event_id" in err.message, err
        long_id = "\u20ac" * 500  # 1,500 UTF-8 bytes: with the event id, a stored key too long
        err = failure(await client.add(id=long_id, event=hook(0), event_id=long_id))
        assert isinstance(err, djobs.ValidationError) and "stored key" in err.message, err
        err = failure(await client.add(id=long_id, event=bad_event, event_id=long_id))
        assert isinstance(err, djobs.ValidationError) and "Webhook" in err.message, err
        state = success(await client.get_state("c")).state
        assert state is not None and state.count == 1


class Tally(msgspec.Struct):
    """A struct whose fields hold no struct: its values are checked with one decode."""

    n: int
    tags: list[str] = []


class TallyPlus(Tally):
    extra: str = "x"


@pytest.mark.trio
async def test_a_flat_struct_is_checked_as_strictly_as_any(autojump_clock: trio.testing.MockClock) -> None:
    def fold(ctx: djobs.DebounceEventContext[Tally, Tally]) -> Tally:
        if ctx.event.n == 7:
            return TallyPlus(7)  # a subclass with a field the state does not have
        if ctx.event.n == 8:
            return Tally(n="eight")  # type: ignore[arg-type]  # built unchecked, the mistake under test
        return Tally((ctx.state.n if ctx.state else 0) + ctx.event.n, [*(ctx.state.tags if ctx.state else []), "t"])

    def send(ctx: djobs.DebounceContext[Tally]) -> None:
        pass

    tallies = djobs.Debounce.make("tallies", event=Tally, on_event=fold, execute=send)
    async with open_test_engine([tallies], max_payload_bytes=1024) as engine:
        client = engine.client.debounce(tallies)
        assert success(await client.add(id="a", event=Tally(1))).event_count == 1
        refusals: list[tuple[Any, str]] = [
            (TallyPlus(1), "extra"),  # an event of a subclass with an unknown field
            ({"n": 1, "nn": 2}, "nn"),  # a dict with an unknown key
            (Tally(n="1"), "Tally"),  # type: ignore[arg-type]  # built unchecked
            (Tally(1, ["x" * 2000]), "1024"),  # past the payload limit
            (Tally(7), "extra"),  # the reducer returns a subclass's instance
            (Tally(8), "Tally"),  # the reducer returns a state built unchecked
        ]
        for event, named in refusals:
            error = failure(await client.add(id="a", event=event))
            assert isinstance(error, djobs.ValidationError) and named in error.message, error
        assert success(await client.add(id="a", event=Tally(2))).event_count == 2
        state = success(await client.get_state("a")).state
        assert state == Tally(3, ["t", "t"]) and type(state) is Tally


@pytest.mark.trio
async def test_a_duplicate_event_id_changes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    flushed: list[Flushed] = []
    reduced: list[int] = []

    def counting(ctx: djobs.DebounceEventContext[Webhook, Batch]) -> Batch:
        reduced.append(ctx.event.data["n"])
        return append(ctx)

    batcher = make_batcher(flushed)
    job = djobs.Debounce.make("dedup", event=Webhook, state=Batch, on_event=counting, execute=batcher.execute)
    async with open_test_engine([job]) as engine:
        client = engine.client.debounce(job)
        first = success(await client.add(id="c", event=hook(0), event_id="delivery-1"))
        before = success(await client.get_state("c"))
        dup = failure(await client.add(id="c", event=hook(1), event_id="delivery-1"))
        assert dup == djobs.DuplicateEventError("c", "delivery-1")
        assert reduced == [0]  # the reducer did not run
        assert success(await client.get_state("c")) == before
        assert success(await client.status("c")).event_count == first.event_count == 1
        # Another instance has its own ids.
        assert success(await engine.client.debounce(job).add(id="d", event=hook(2), event_id="delivery-1")).created
        # Ids outlive the batch: after the flush the instance still refuses a seen id.
        await trio.sleep(5)
        await engine.wait_idle()
        assert len(flushed) == 2
        assert isinstance(
            failure(await client.add(id="c", event=hook(3), event_id="delivery-1")), djobs.DuplicateEventError
        )
        assert success(await client.status("c")) == djobs.DebounceStatus("idle", event_count=0)


@pytest.mark.trio
async def test_max_events_of_one_flushes_every_event(autojump_clock: trio.testing.MockClock) -> None:
    flushed: list[Flushed] = []
    batcher = make_batcher(flushed, max_events=1)
    async with open_test_engine([batcher]) as engine:
        client = engine.client.debounce(batcher)
        for i in range(3):
            assert success(await client.add(id="c", event=hook(i))) == djobs.AddResult(True, 1, T0)
        await engine.wait_idle()
        assert [(f.event_count, f.reason) for f in flushed] == [(1, "max_events")] * 3
        [started, *_] = engine.tracker.of_type("debounce.started")
        assert started.data["flush_at"] == T0.isoformat()


def test_bad_definitions_raise_at_make() -> None:
    def send(ctx: djobs.DebounceContext[Any]) -> None:
        pass

    bad: list[dict[str, Any]] = [
        {"name": "has:colon"},
        {"name": ""},
        {"flush_after": 0},
        {"flush_after": "0 seconds"},
        {"flush_after": "-5 seconds"},
        {"flush_after": "soon"},
        {"max_events": 0},
        {"max_events": True},
        {"max_events": 2.5},
        {"state": Batch},  # the default reducer keeps the latest Webhook, which is not a Batch
        {"event": dict},
    ]
    for override in bad:
        args: dict[str, Any] = {"name": "ok", "event": Webhook, "execute": send, **override}
        name = args.pop("name")
        with pytest.raises(djobs.ValidationError):
            djobs.Debounce.make(name, **args)
    ok = djobs.Debounce.make("ok", event=Webhook, state=Batch, on_event=append, execute=send, max_events=1)
    assert (ok.flush_after_ms, ok.max_events, ok.state) == (5000, 1, Batch)


@pytest.mark.trio
async def test_a_bug_below_add_is_a_storage_error_and_the_next_add_works(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = djobs.storage.faulty(djobs.memory())
    batcher = make_batcher([], max_events=None)
    async with open_test_engine([batcher], storage=storage) as engine:
        client = engine.client.debounce(batcher)
        storage.fail("acquire_instance_lease", kind="bug", times=1)  # the first add's lease: a RuntimeError
        failed = failure(await client.add(id="a", event=hook(1)))
        assert isinstance(failed, djobs.StorageError) and "failed unexpectedly" in failed.message, failed
        assert "injected bug" in failed.message
        added = success(await client.add(id="a", event=hook(2)))
        assert added.created and added.event_count == 1


@pytest.mark.trio
async def test_an_add_never_awaited_warns_with_its_own_name(autojump_clock: trio.testing.MockClock) -> None:
    batcher = make_batcher([])
    async with open_test_engine([batcher]) as engine:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engine.client.debounce(batcher).add(id="a", event=hook(1))  # dropped at once, never awaited
            gc.collect()
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert messages == ["coroutine 'djobs.DebounceClient.add' was never awaited"], messages
        status = success(await engine.client.debounce(batcher).status("a"))
        assert status.status == "not_found"  # nothing was added


class Counted(msgspec.Struct):
    n: int


class Seen(msgspec.Struct):
    ns: list[int] = []


async def _slow_append(ctx: djobs.DebounceEventContext[Counted, Seen]) -> Seen:
    await trio.sleep(0.01)  # a checkpoint: other adds join the queue while this round runs
    return Seen([*(ctx.state.ns if ctx.state else []), ctx.event.n])


def _future_append(ctx: djobs.DebounceEventContext[Counted, Seen]) -> FutureResult[Seen, djobs.ExecutionError]:
    async def run() -> Result[Seen, djobs.ExecutionError]:
        return Success(await _slow_append(ctx))

    return FutureResult(run())


@pytest.mark.trio
@pytest.mark.parametrize("storage", ["memory", "file"])
@pytest.mark.parametrize("reducer", [_slow_append, _future_append], ids=["async", "future"])
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_concurrent_adds_with_an_awaiting_reducer_each_count_once_in_order(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, storage: str, reducer: Any, seed: int
) -> None:
    """Adds that arrive while a round awaits its reducer wait for the next round: each add is
    applied once, durable when it returns, and each caller's adds keep their order."""
    flushed: list[list[int]] = []

    def execute(ctx: djobs.DebounceContext[Seen]) -> None:
        flushed.append(ctx.state.ns)

    job = djobs.Debounce.make(
        "slow", event=Counted, state=Seen, flush_after="1 hour", on_event=reducer, execute=execute
    )
    db = djobs.sqlite(tmp_path / "jobs.db") if storage == "file" else None
    rnd = random.Random(seed)
    failed: list[object] = []
    async with open_test_engine([job], storage=db) as engine:
        client = engine.client.debounce(job)

        async def adder(base: int) -> None:
            for i in range(20):
                added = await client.add(id="x", event=Counted(base + i))
                if isinstance(added, IOFailure):
                    failed.append(added)
                    continue
                # Durable on return: the stored batch holds at least this many events.
                count = success(await client.status("x")).event_count
                assert count is not None
                assert count >= success(added).event_count
                await trio.sleep(rnd.random() * 0.05)

        async with trio.open_nursery() as nursery:
            for a in range(5):
                nursery.start_soon(adder, a * 100)
        assert failed == []
        status = success(await client.status("x"))
        assert status.event_count == 100
        assert success(await client.flush("x")).outcome == "succeeded"
        [seen] = flushed
        assert sorted(seen) == sorted(a * 100 + i for a in range(5) for i in range(20))
        for a in range(5):
            assert [n for n in seen if n // 100 == a] == [a * 100 + i for i in range(20)]


class Step(msgspec.Struct):
    n: int
    fail: bool = False


async def _slow_count(ctx: djobs.DebounceEventContext[Step, Seen]) -> Seen:
    await trio.sleep(0.01)
    if ctx.event.fail:
        raise ValueError("refused")
    return Seen([*(ctx.state.ns if ctx.state else []), ctx.event.n])


_callers = st.lists(
    st.lists(
        st.tuples(st.integers(0, 30), st.sampled_from([None, None, "a", "b", "c"]), st.booleans()),
        min_size=1,
        max_size=8,
    ),
    min_size=2,
    max_size=5,
)


async def _batch_holds_exactly(client: djobs.DebounceClient[Any, Any], applied: list[int], callers: int) -> None:
    """Instance "x"'s batch counts exactly the `applied` adds (event n of caller n // 100), each
    caller's in the order it made them; no batch if none applied."""
    if not applied:
        assert success(await client.status("x")).status == "not_found"
        return
    assert success(await client.status("x")).event_count == len(applied)
    state = success(await client.get_state("x")).state
    assert state is not None
    assert sorted(state.ns) == sorted(applied)
    for c in range(callers):
        assert [n for n in state.ns if n // 100 == c] == [n for n in applied if n // 100 == c]


@settings(max_examples=100, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(callers=_callers)
def test_any_interleaving_of_adds_with_an_awaiting_reducer_answers_each_once(
    callers: list[list[tuple[int, str | None, bool]]],
) -> None:
    """Adds with and without event ids, some refused by the reducer, from callers at any pace:
    each is answered once (applied, the reducer's failure, or a duplicate id), none with an
    internal error, and the batch counts exactly the applied ones, each caller's in order."""
    job = djobs.Debounce.make(
        "slow", event=Step, state=Seen, flush_after="1 hour", on_event=_slow_count, execute=lambda c: None
    )
    applied: list[int] = []
    accepted_ids: list[str] = []
    duplicates: list[str | None] = []

    async def main() -> None:
        async with open_test_engine([job]) as engine:
            client = engine.client.debounce(job)

            async def caller(c: int, steps: list[tuple[int, str | None, bool]]) -> None:
                for i, (pause_ms, event_id, fail) in enumerate(steps):
                    n = c * 100 + i
                    added = await client.add(id="x", event=Step(n, fail), event_id=event_id)
                    if not isinstance(added, IOFailure):
                        assert not fail
                        applied.append(n)
                        if event_id is not None:
                            accepted_ids.append(event_id)
                    elif isinstance(failure(added), djobs.DuplicateEventError):  # checked before the reducer
                        assert failure(added) == djobs.DuplicateEventError("x", event_id)
                        duplicates.append(event_id)
                    else:
                        assert fail
                        assert isinstance(failure(added), djobs.ExecutionError)
                    await trio.sleep(pause_ms / 1000)

            async with trio.open_nursery() as nursery:
                for c, steps in enumerate(callers):
                    nursery.start_soon(caller, c, steps)
            await _batch_holds_exactly(client, applied, len(callers))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(accepted_ids) == len(set(accepted_ids))
    assert set(duplicates) <= set(accepted_ids)


class Raising(msgspec.Struct):
    n: int
    #: What the reducer does with this event: ``""`` adds it; else raises that kind of exception.
    raises: str = ""


def _raise_for(kind: str) -> None:
    if kind == "ki":
        raise KeyboardInterrupt
    if kind == "ki_group":  # a reducer's own nursery: only the KeyboardInterrupt propagates
        raise BaseExceptionGroup("reducer's nursery", [KeyboardInterrupt(), ValueError("beside it")])
    if kind == "sysexit":
        raise SystemExit(2)
    if kind == "value":
        raise ValueError("refused")


def _sync_reduce(ctx: djobs.DebounceEventContext[Raising, Seen]) -> Seen:
    _raise_for(ctx.event.raises)
    return Seen([*(ctx.state.ns if ctx.state else []), ctx.event.n])


async def _async_reduce(ctx: djobs.DebounceEventContext[Raising, Seen]) -> Seen:
    await trio.sleep(0.01)
    return _sync_reduce(ctx)


_raising_callers = st.lists(
    st.lists(
        st.tuples(st.integers(0, 30), st.sampled_from(["", "", "", "ki", "ki_group", "sysexit", "value"])),
        min_size=1,
        max_size=4,
    ),
    min_size=1,
    max_size=7,
)


@settings(max_examples=100, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(callers=_raising_callers, awaiting=st.booleans())
def test_a_reducer_that_raises_answers_its_own_add_and_no_other(
    callers: list[list[tuple[int, str]]], awaiting: bool
) -> None:
    """Concurrent adds to one instance whose reducer (awaiting or not) raises a KeyboardInterrupt,
    a SystemExit or an Exception for some events: an add whose event made it raise a
    KeyboardInterrupt re-raises it in its own caller's task, one whose event made it raise
    anything else fails with an ExecutionError, and every other add is applied and answered so,
    though a round batched it with one that raised: the batch holds exactly the adds answered
    applied, and nothing else escapes into the callers' nursery."""
    job = djobs.Debounce.make(
        "raising",
        event=Raising,
        state=Seen,
        flush_after="1 hour",
        on_event=_async_reduce if awaiting else _sync_reduce,
        execute=lambda c: None,
    )
    applied: list[int] = []
    interrupted: list[int] = []
    failed: list[int] = []

    async def main() -> None:
        async with open_test_engine([job]) as engine:
            client = engine.client.debounce(job)

            async def caller(c: int, steps: list[tuple[int, str]]) -> None:
                for i, (pause_ms, raises) in enumerate(steps):
                    n = c * 100 + i
                    added = None
                    try:
                        added = await client.add(id="x", event=Raising(n, raises))
                    except* KeyboardInterrupt:
                        assert raises in ("ki", "ki_group")
                        interrupted.append(n)
                    if added is None:
                        pass
                    elif raises in ("", "sysexit", "value"):
                        if raises:
                            error = failure(added)
                            assert isinstance(error, djobs.ExecutionError)
                            assert ("SystemExit" if raises == "sysexit" else "refused") in error.message
                            failed.append(n)
                        else:
                            assert success(added).event_count >= 1
                            applied.append(n)
                    else:
                        raise AssertionError(f"event {n} made the reducer raise {raises}; its add answered {added}")
                    await trio.sleep(pause_ms / 1000)

            async with trio.open_nursery() as nursery:
                for c, steps in enumerate(callers):
                    nursery.start_soon(caller, c, steps)
            await _batch_holds_exactly(client, applied, len(callers))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    expected = {c * 100 + i: raises for c, steps in enumerate(callers) for i, (_, raises) in enumerate(steps)}
    assert sorted(interrupted) == sorted(n for n, r in expected.items() if r in ("ki", "ki_group"))
    assert sorted(failed) == sorted(n for n, r in expected.items() if r in ("sysexit", "value"))
    assert sorted(applied) == sorted(n for n, r in expected.items() if not r)


@pytest.mark.trio
async def test_a_keyboard_interrupt_for_a_cancelled_callers_add_reaches_the_writer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A caller cancelled while its add waits has no task to take its reducer's KeyboardInterrupt:
    the writer of the round re-raises it once every add queued is applied and answered."""
    job = djobs.Debounce.make(
        "raising", event=Raising, state=Seen, flush_after="1 hour", on_event=_async_reduce, execute=lambda c: None
    )
    answers: dict[int, Any] = {}
    async with open_test_engine([job]) as engine:
        client = engine.client.debounce(job)

        async def add(n: int, raises: str = "", cancel_after: float | None = None) -> None:
            try:
                with trio.move_on_after(cancel_after if cancel_after is not None else float("inf")):
                    answers[n] = await client.add(id="x", event=Raising(n, raises))
            except KeyboardInterrupt as exc:
                answers[n] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(add, 0)  # the writer: its reducer awaits while the others join
            await trio.lowlevel.checkpoint()
            nursery.start_soon(add, 1, "ki", 0.001)  # cancelled while it waits
            await trio.lowlevel.checkpoint()
            nursery.start_soon(add, 2)
        assert isinstance(answers[0], KeyboardInterrupt)
        assert 1 not in answers
        assert success(answers[2]).event_count == 2
        assert success(await client.get_state("x")).state == Seen([0, 2])


class _HearsAddsScheduled(trio.abc.Instrument):
    def __init__(self) -> None:
        self.woken: list[str] = []

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("<locals>.add") and task._next_send is WOKEN:  # woken with a round's answer
            self.woken.append(task.name)


@pytest.mark.trio
async def test_an_instrument_hears_each_waiting_caller_of_add_woken(autojump_clock: trio.testing.MockClock) -> None:
    """A round wakes its callers with the steps of Trio's own ``reschedule``, but through it
    while an instrument hears each task scheduled: the instrument misses none of them."""
    job = djobs.Debounce.make(
        "heard", event=Counted, state=Seen, flush_after="1 hour", on_event=_slow_append, execute=lambda c: None
    )
    instrument = _HearsAddsScheduled()
    async with open_test_engine([job]) as engine:
        client = engine.client.debounce(job)
        answers: dict[int, int] = {}

        async def add(n: int) -> None:
            answers[n] = success(await client.add(id="x", event=Counted(n))).event_count

        trio.lowlevel.add_instrument(instrument)
        try:
            async with trio.open_nursery() as nursery:
                for n in range(6):  # the first writes; the others wait in its queue for its rounds
                    nursery.start_soon(add, n)
        finally:
            trio.lowlevel.remove_instrument(instrument)
    assert sorted(answers.values()) == [1, 2, 3, 4, 5, 6]
    assert len(instrument.woken) == 5


@pytest.mark.trio
async def test_a_round_wakes_its_waiting_callers_protected_from_keyboard_interrupt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The round puts each waiting caller's task back on Trio's run queue with KeyboardInterrupt
    protection on, as ``trio.lowlevel.reschedule`` does: a Ctrl-C delivered there would leave the
    caller parked for good, neither woken nor cancellable. Trio checks the protection where the
    signal lands, so it is checked where each caller of `add` joins the run queue (Trio's own
    wake-ups are all protected); both wake-ups are covered: with an answer, and with the
    KeyboardInterrupt that the caller's own event made the reducer raise."""
    protected: list[bool] = []  # at each wake-up of a caller of `add`
    answered: list[bool] = []  # at each wake-up with the round's answer

    class WatchedRunQueue(deque[trio.lowlevel.Task]):
        def append(self, task: trio.lowlevel.Task) -> None:
            if task.name.endswith("<locals>.add") and task._next_send is not None:  # None: a new task's start
                protected.append(trio.lowlevel.currently_ki_protected())
                if task._next_send is WOKEN:
                    answered.append(protected[-1])
            super().append(task)

    job = djobs.Debounce.make(
        "woken", event=Raising, state=Seen, flush_after="1 hour", on_event=_async_reduce, execute=lambda c: None
    )
    answers: dict[int, Any] = {}
    async with open_test_engine([job]) as engine:
        client = engine.client.debounce(job)

        async def add(n: int, raises: str = "") -> None:
            try:
                answers[n] = await client.add(id="x", event=Raising(n, raises))
            except KeyboardInterrupt as exc:
                answers[n] = exc

        runner = RUN_CONTEXT.runner
        runner.runq = WatchedRunQueue(runner.runq)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(add, 0)  # its reducer awaits while the others join its queue
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(add, 1)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(add, 2, "ki")
        finally:
            runner.runq = deque(runner.runq)
        assert success(answers[1]).event_count == 2
        assert isinstance(answers[2], KeyboardInterrupt)
        assert answered and all(protected), protected
