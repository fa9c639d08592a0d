"""Several engines on one database (as several processes on one file would be): an instance's
handlers never run in two engines at once, and no update is lost. The same on one SQLite file
and on one `djobs.memory()` layer, which every engine opened on it shares."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

import djobs
import djobs.storage
import djobs.testing
from djobs._errors import CLOSED_MESSAGE
from djobs.testing import open_test_engine, success


class Click(msgspec.Struct):
    n: int


class Clicks(msgspec.Struct):
    seen: list[int] = []


running = 0
overlaps = 0


async def collect(ctx: djobs.DebounceEventContext[Click, Clicks]) -> Clicks:
    global running, overlaps
    running += 1
    overlaps += running > 1
    await trio.sleep(0.01)  # a reducer that awaits: a window for another engine to barge in
    running -= 1
    return Clicks([*(ctx.state.seen if ctx.state else []), ctx.event.n])


flushed: list[list[int]] = []


async def flush(ctx: djobs.DebounceContext[Clicks]) -> None:
    global running, overlaps
    running += 1
    overlaps += running > 1
    await trio.sleep(0.5)  # a slow flush, while events keep arriving from the other engine
    flushed.append(ctx.state.seen)
    running -= 1


@pytest.fixture(params=["sqlite-file", "memory"])
def shared_db(request: pytest.FixtureRequest, tmp_path: Path) -> djobs.storage.StorageLayer:
    """One database for every engine of the test: a file, or one memory() layer opened by each."""
    return djobs.sqlite(tmp_path / "shared.db") if request.param == "sqlite-file" else djobs.memory()


clicks = djobs.Debounce.make(
    "clicks", event=Click, state=Clicks, on_event=collect, execute=flush, flush_after="1 second", max_events=50
)


@pytest.mark.trio
async def test_two_engines_never_run_one_instance_at_once(
    autojump_clock: trio.testing.MockClock, shared_db: djobs.storage.StorageLayer
) -> None:
    global overlaps
    overlaps = 0
    flushed.clear()
    db = shared_db
    async with open_test_engine([clicks], storage=db) as a, open_test_engine([clicks], storage=db) as b:

        async def send(engine: djobs.Engine, n: int) -> None:
            success(await engine.client.debounce(clicks).add(id="page", event=Click(n)))

        async with trio.open_nursery() as nursery:
            for n in range(300):
                nursery.start_soon(send, a if n % 2 else b, n)
        await trio.sleep(5)
        await a.wait_idle()
        await b.wait_idle()
        assert success(await a.client.debounce(clicks).status("page")).status == "idle"
    assert overlaps == 0
    # Every event was flushed exactly once, whichever engine took it.
    everything = sorted(n for batch in flushed for n in batch)
    assert everything == list(range(300))


digested: list[list[int]] = []


async def digest(ctx: djobs.DebounceContext[Clicks]) -> None:
    digested.append(ctx.state.seen)


async def collect_now(ctx: djobs.DebounceEventContext[Click, Clicks]) -> Clicks:
    return Clicks([*(ctx.state.seen if ctx.state else []), ctx.event.n])


digests = djobs.Debounce.make(
    "digests", event=Click, state=Clicks, on_event=collect_now, execute=digest, flush_after="1 second"
)
unrelated = djobs.Debounce.make(
    "unrelated", event=Click, state=Clicks, on_event=collect_now, execute=digest, flush_after="1 second"
)


@pytest.mark.trio
async def test_a_partial_engine_leaves_the_alarms_of_definitions_it_did_not_register(
    autojump_clock: trio.testing.MockClock, shared_db: djobs.storage.StorageLayer
) -> None:
    # A helper script (or an old version in a rolling deploy) registers only `unrelated`: it
    # must not claim the alarms of `digests`, or they would wait out its alarm lease.
    digested.clear()
    db = shared_db
    options: dict[str, Any] = {"alarm_lease": "1 minute", "alarm_poll_interval": "100 ms"}
    async with open_test_engine([digests], storage=db, **options) as full:
        success(await full.client.debounce(digests).add(id="page", event=Click(1)))
    async with open_test_engine([unrelated], storage=db, **options) as partial:
        await trio.sleep(5)  # the flush is due after 1 s, while only the partial engine runs
        assert digested == []
        async with open_test_engine([digests], storage=db, **options) as full:
            await trio.sleep(1)
            await full.wait_idle()
            assert digested == [[1]]  # fired at once, not a minute later
        assert await partial.wait_idle() is None


@pytest.mark.trio
async def test_wait_idle_passes_over_the_due_alarms_of_definitions_it_did_not_register(
    autojump_clock: trio.testing.MockClock, shared_db: djobs.storage.StorageLayer
) -> None:
    # No engine here will ever claim a `digests` alarm: waiting for it would never end.
    digested.clear()
    db = shared_db
    async with open_test_engine([digests], storage=db) as full:
        success(await full.client.debounce(digests).add(id="page", event=Click(1)))
    async with open_test_engine([unrelated], storage=db) as partial:
        await trio.sleep(5)  # the flush of `digests` is due after 1 s
        with trio.fail_after(60):
            await partial.wait_idle()
        success(await partial.client.debounce(unrelated).add(id="page", event=Click(2)))
        await trio.sleep(1)  # its own flush is due now
        with trio.fail_after(60):
            await partial.wait_idle()  # and counts: wait_idle waits until it has run
        assert digested == [[2]]
    async with open_test_engine([digests], storage=db) as full:
        await trio.sleep(1)  # each test engine's clock starts at the same moment
        await full.wait_idle()
        assert digested == [[2], [1]]  # the other definition's batch was left whole for its engine


class Note(msgspec.Struct):
    text: str


@pytest.mark.trio
async def test_engines_on_one_memory_layer_share_it_and_each_closes_on_its_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two engines opened on one djobs.memory() layer see one database, as two on one SQLite file do
    (each used to get a private store, silently): a job enqueued through one is run by the other, and
    an engine's close ends only its own store; a third engine opened later finds what they left."""
    ran: list[str] = []
    note = djobs.Job.make("note", params=Note, execute=lambda p, c: ran.append(p.text))
    db = djobs.memory()
    async with open_test_engine([note], storage=db, worker=None) as writer:  # enqueues, runs nothing
        async with open_test_engine([note], storage=db, worker=djobs.WorkerOptions(poll_interval="1 second")) as runner:
            job_id = success(await writer.client.job(note).later(Note("from the writer")))
            await trio.sleep(2)  # the runner's next poll
            await runner.wait_idle()
            assert ran == ["from the writer"]
            assert success(await writer.client.jobs.status(job_id)).status == "completed"
        # The runner closed: its store refuses, the writer's still answers.
        assert success(await writer.client.jobs.status(job_id)).status == "completed"
        closed = djobs.testing.failure(await runner.client.jobs.status(job_id))
        assert closed == djobs.StorageError(CLOSED_MESSAGE)
    async with open_test_engine([note], storage=db) as later:
        assert success(await later.client.jobs.status(job_id)).status == "completed"
    async with open_test_engine([note], storage=djobs.memory()) as elsewhere:  # another layer: another database
        missing = djobs.testing.failure(await elsewhere.client.jobs.status(job_id))
        assert isinstance(missing, djobs.InstanceNotFoundError)


def test_one_memory_layer_is_not_open_in_two_trio_runs_at_once() -> None:
    """Its tables are plain dicts: two threads' runs would race on them. The second run's open is refused
    while the first holds it (a ValidationError that says what to do), and allowed once it is closed."""
    db = djobs.memory()
    held, release = threading.Event(), threading.Event()

    async def hold() -> None:
        async with db.open():
            held.set()
            await trio.to_thread.run_sync(release.wait)

    first = threading.Thread(target=trio.run, args=(hold,))
    first.start()
    try:
        assert held.wait(10)

        async def second() -> None:
            async with db.open():
                pass  # pragma: no cover

        with pytest.raises(djobs.ValidationError, match=r"another trio\.run .* its own djobs\.memory\(\)"):
            trio.run(second)
    finally:
        release.set()
        first.join(10)

    async def after() -> None:
        async with db.open() as store:
            assert await store.healthcheck()

    trio.run(after)
