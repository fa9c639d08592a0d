"""Dead letters: failed jobs, failed Debounce batches and exhausted instances are kept,
listed, retried and discarded, on the memory, SQLite and PostgreSQL storages."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from postgres_support import STORAGE_KINDS, drop_schema, fresh_storage_layer, new_schema_name, postgres_dsn

import djobs
import djobs.storage
from djobs.cli import main
from djobs.testing import failure, open_test_engine, success


class Mail(msgspec.Struct):
    to: str


class Batch(msgspec.Struct):
    items: list[str] = []


class Count(msgspec.Struct):
    n: int = 0


class Ping(msgspec.Struct, tag=True):
    pass


@pytest.fixture(params=STORAGE_KINDS)
def layer(request: pytest.FixtureRequest) -> Iterator[djobs.storage.StorageLayer]:
    with fresh_storage_layer(request.param) as made:
        yield made


class Outage:
    """A service that is down until `fixed`."""

    def __init__(self) -> None:
        self.down = True
        self.calls: list[str] = []

    def call(self, what: str) -> None:
        self.calls.append(what)
        if self.down:
            raise ConnectionError(f"{what}: service unavailable")


def mail_job(outage: Outage) -> djobs.Job[Mail, None]:
    async def send(params: Mail, ctx: djobs.JobContext) -> None:
        outage.call(params.to)

    return djobs.Job.make("mail", params=Mail, execute=send, retry=djobs.Retry(max_attempts=2, delay="1 second"))


# -- jobs --------------------------------------------------------------------------------


@pytest.mark.trio
async def test_a_job_whose_retries_are_exhausted_is_a_dead_letter_and_retries_under_its_id(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    outage = Outage()
    mail = mail_job(outage)
    async with open_test_engine([mail], storage=layer) as engine:
        job_id = success(await engine.client.job(mail).later(Mail("a@x.test"), correlation_id="c-1", priority=3))
        ok_id = success(await engine.client.job(mail).later(Mail("b@x.test"), delay="1 hour"))
        await trio.sleep(10)
        letters = success(await engine.client.dead_letters.list())
        assert [(le.id, le.kind, le.name, le.ref, le.attempts) for le in letters] == [
            (job_id, "job", "mail", job_id, 2)
        ]
        letter = success(await engine.client.dead_letters.get(job_id))
        assert letter.payload == Mail("a@x.test")
        assert letter.error is not None and letter.error.tag == "retry_exhausted"
        assert "service unavailable" in letter.error.message
        assert success(await engine.client.dead_letters.list(kind="debounce")) == []

        outage.down = False
        retried = success(await engine.client.dead_letters.retry(job_id))
        assert (retried.kind, retried.ref) == ("job", job_id)
        await engine.wait_idle()
        info = success(await engine.client.jobs.status(job_id))
        assert info.status == "completed" and info.priority == 3 and info.correlation_id == "c-1"
        assert success(await engine.client.dead_letters.list()) == []
        assert isinstance(failure(await engine.client.dead_letters.retry(job_id)), djobs.InstanceNotFoundError)
        assert success(await engine.client.jobs.status(ok_id)).status == "pending"
        assert outage.calls == ["a@x.test", "a@x.test", "a@x.test"]


@pytest.mark.trio
async def test_a_purged_failed_job_comes_back_from_its_letter(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    outage = Outage()
    mail = mail_job(outage)
    async with open_test_engine([mail], storage=layer) as engine:
        job_id = success(await engine.client.job(mail).later(Mail("a@x.test"), correlation_id="c-2"))
        await trio.sleep(10)
        assert success(await engine.client.jobs.purge(older_than="1 second", status="failed")) == 1
        assert isinstance(failure(await engine.client.jobs.status(job_id)), djobs.InstanceNotFoundError)
        # The letter outlives the row: it is what a person looks at after the queue is cleaned.
        assert [le.id for le in success(await engine.client.dead_letters.list(kind="job"))] == [job_id]
        outage.down = False
        success(await engine.client.dead_letters.retry(job_id))
        await engine.wait_idle()
        info = success(await engine.client.jobs.status(job_id))
        assert (info.status, info.attempts, info.max_attempts, info.correlation_id) == ("completed", 1, 2, "c-2")


@pytest.mark.trio
async def test_retrying_the_failed_job_itself_removes_its_letter_and_discard_keeps_the_job(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    outage = Outage()
    mail = mail_job(outage)
    async with open_test_engine([mail], storage=layer) as engine:
        first = success(await engine.client.job(mail).later(Mail("a@x.test")))
        second = success(await engine.client.job(mail).later(Mail("b@x.test")))
        await trio.sleep(10)
        assert {le.id for le in success(await engine.client.dead_letters.list())} == {first, second}
        success(await engine.client.jobs.retry(first))
        assert [le.id for le in success(await engine.client.dead_letters.list())] == [second]
        discarded = success(await engine.client.dead_letters.discard(second))
        assert discarded.payload == Mail("b@x.test")
        assert success(await engine.client.dead_letters.list()) == []
        assert success(await engine.client.jobs.status(second)).status == "failed"  # the row is the job's history
        assert isinstance(failure(await engine.client.dead_letters.discard(second)), djobs.InstanceNotFoundError)
        await trio.sleep(10)  # the retried job fails again: a new letter
        assert [le.id for le in success(await engine.client.dead_letters.list())] == [first]


@pytest.mark.trio
async def test_a_job_lost_with_its_worker_on_its_last_attempt_is_a_dead_letter(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    once = djobs.Job.make("once", params=Mail, execute=lambda p, ctx: None, max_attempts=1)
    async with open_test_engine([once], storage=layer, worker=None) as engine:
        storage = engine.storage
        assert isinstance(storage, djobs.storage.QueueStorage)
        job_id = success(await engine.client.job(once).later(Mail("a@x.test")))
        now = engine.clock.now_ms()
        # A worker that claims the row and dies: its lease runs out on the last attempt.
        claimed = await storage.claim_jobs(now, now + 1000, "gone-worker", ["once"], 10)
        assert [c.id for c in claimed] == [job_id]
        await storage.reclaim_expired(
            now + 5000, b"{}", b'{"tag": "lease_expired", "message": "its worker stopped"}', 10
        )
        letter = success(await engine.client.dead_letters.get(job_id))
        assert (letter.kind, letter.attempts) == ("job", 1)


# -- debounce ----------------------------------------------------------------------------


def batcher(outage: Outage, *, retry: djobs.Retry | None) -> djobs.Debounce[Ping, Batch]:
    def reduce(ctx: djobs.DebounceEventContext[Ping, Batch]) -> Batch:
        items = [] if ctx.state is None else ctx.state.items
        return Batch([*items, f"e{ctx.event_count}"])

    def flush(ctx: djobs.DebounceContext[Batch]) -> None:
        outage.call(",".join(ctx.state.items))

    return djobs.Debounce.make(
        "batcher", event=Ping, state=Batch, on_event=reduce, execute=flush, flush_after="1 minute", retry=retry
    )


@pytest.mark.trio
@pytest.mark.parametrize("retry", [None, djobs.Retry(max_attempts=2, delay="1 second")], ids=["no-retry", "exhausted"])
async def test_a_failed_debounce_batch_is_kept_and_flushes_again_on_retry(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer, retry: djobs.Retry | None
) -> None:
    outage = Outage()
    job = batcher(outage, retry=retry)
    async with open_test_engine([job], storage=layer) as engine:
        client = engine.client.debounce(job)
        for _ in range(3):
            success(await client.add(id="acct-1", event=Ping()))
        await trio.sleep(70)
        (letter,) = success(await engine.client.dead_letters.list())
        assert (letter.kind, letter.name, letter.ref, letter.event_count) == ("debounce", "batcher", "acct-1", 3)
        assert letter.payload == Batch(["e1", "e2", "e3"])
        assert letter.attempts == (1 if retry is None else 2)
        assert letter.error is not None and "service unavailable" in letter.error.message

        outage.down = False
        before = len(outage.calls)
        success(await engine.client.dead_letters.retry(letter.id))
        # An add right after the retry joins the batch brought back (or starts the next
        # one, if the flush came first); it never replaces it.
        success(await client.add(id="acct-1", event=Ping()))
        await trio.sleep(70)
        flushed = outage.calls[before:]
        assert flushed in (["e1,e2,e3,e4"], ["e1,e2,e3", "e1"])
        assert success(await engine.client.dead_letters.list()) == []
        assert success(await client.status("acct-1")).status == "idle"


@pytest.mark.trio
async def test_a_debounce_letter_does_not_overwrite_a_new_batch(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    outage = Outage()
    job = batcher(outage, retry=None)
    async with open_test_engine([job], storage=layer) as engine:
        client = engine.client.debounce(job)
        success(await client.add(id="acct-1", event=Ping()))
        await trio.sleep(70)
        (letter,) = success(await engine.client.dead_letters.list())
        success(await client.add(id="acct-1", event=Ping()))  # a new batch collects
        error = failure(await engine.client.dead_letters.retry(letter.id))
        assert isinstance(error, djobs.InvalidStateError)
        assert [le.id for le in success(await engine.client.dead_letters.list())] == [letter.id]
        outage.down = False
        await trio.sleep(70)  # the new batch flushes; now the old one can come back
        success(await engine.client.dead_letters.retry(letter.id))
        await engine.wait_idle()
        assert outage.calls[-2:] == ["e1", "e1"]


# -- continuous and task ------------------------------------------------------------------


def refresher(outage: Outage, on_exhausted: Any) -> djobs.Continuous[Count]:
    def refresh(ctx: djobs.ContinuousContext[Count]) -> Count:
        outage.call(f"refresh {ctx.state.n}")
        return Count(ctx.state.n + 1)

    return djobs.Continuous.make(
        "refresher",
        state=Count,
        schedule=djobs.every("1 hour"),
        execute=refresh,
        retry=djobs.Retry(max_attempts=3, delay="1 second"),
        on_exhausted=on_exhausted,
    )


@pytest.mark.trio
async def test_a_continuous_instance_ended_by_exhausted_retries_keeps_its_state_by_option(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    outage = Outage()
    outage.down = False
    job = refresher(outage, "dead_letter")
    async with open_test_engine([job], storage=layer) as engine:
        client = engine.client.continuous(job)
        success(await client.start(id="tok", input=Count(41)))
        await trio.sleep(1)
        assert success(await client.get_state("tok")).state == Count(42)
        outage.down = True
        await trio.sleep(3600 + 10)
        assert success(await client.status("tok")).status == "not_found"  # terminated, as the seed says
        (letter,) = success(await engine.client.dead_letters.list(kind="continuous"))
        assert (letter.ref, letter.payload, letter.attempts) == ("tok", Count(42), 3)
        # An instance under the same id makes the letter wait.
        success(await client.start(id="tok", input=Count(0)))
        assert isinstance(failure(await engine.client.dead_letters.retry(letter.id)), djobs.InvalidStateError)
        success(await client.terminate("tok"))
        outage.down = False
        success(await engine.client.dead_letters.retry(letter.id))
        await engine.wait_idle()
        assert success(await client.get_state("tok")).state == Count(43)  # ran at once, from the kept state
        assert success(await client.status("tok")).status == "running"


@pytest.mark.trio
async def test_terminate_is_the_default_and_keeps_nothing(autojump_clock: trio.testing.MockClock) -> None:
    outage = Outage()
    job = refresher(outage, "terminate")
    async with open_test_engine([job]) as engine:
        success(await engine.client.continuous(job).start(id="tok", input=Count()))
        await trio.sleep(10)
        assert success(await engine.client.continuous(job).status("tok")).status == "not_found"
        assert success(await engine.client.dead_letters.list()) == []


@pytest.mark.trio
async def test_a_task_terminated_after_exhausted_retries_is_a_dead_letter_by_option(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    outage = Outage()

    def on_event(event: Ping, ctx: djobs.TaskEventContext[Count]) -> Count:
        ctx.schedule("1 minute")
        return Count((ctx.state or Count()).n + 1)

    def work(ctx: djobs.TaskContext[Count]) -> None:
        assert ctx.state is not None
        outage.call(f"work {ctx.state.n}")

    def give_up(error: djobs.JobError, ctx: djobs.TaskContext[Count]) -> None:
        ctx.terminate(reason=f"gave up: {error.tag}")

    task = djobs.Task.make(
        "worker",
        state=Count,
        event=Ping,
        on_event=on_event,
        execute=work,
        on_error=give_up,
        retry=djobs.Retry(max_attempts=2, delay="1 second"),
        on_exhausted="dead_letter",
    )
    async with open_test_engine([task], storage=layer) as engine:
        client = engine.client.task(task)
        success(await client.send(id="w1", event=Ping()))
        success(await client.send(id="w1", event=Ping()))
        await trio.sleep(120)
        assert success(await client.status("w1")).status == "not_found"
        (letter,) = success(await engine.client.dead_letters.list())
        assert (letter.kind, letter.ref, letter.payload, letter.attempts) == ("task", "w1", Count(2), 2)
        outage.down = False
        success(await engine.client.dead_letters.retry(letter.id))
        await engine.wait_idle()
        assert outage.calls[-1] == "work 2"
        assert success(await client.get_state("w1")).state == Count(2)


# -- the same work failing again --------------------------------------------------------------


@pytest.mark.trio
async def test_work_that_fails_again_shows_its_newest_failure_and_keeps_every_batch(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    outage = Outage()
    mail = mail_job(outage)
    job = batcher(outage, retry=None)
    async with open_test_engine([mail, job], storage=layer) as engine:
        letters = engine.client.dead_letters
        # A job retried through the jobs verbs and exhausted again: one letter, the newest failure.
        job_id = success(await engine.client.job(mail).later(Mail("a@x.test")))
        await trio.sleep(10)
        first = success(await letters.get(job_id))
        success(await engine.client.jobs.retry(job_id))
        await trio.sleep(60)
        again = success(await letters.get(job_id))
        assert again.attempts == first.attempts == 2 and again.failed_at > first.failed_at
        assert [le.id for le in success(await letters.list(kind="job"))] == [job_id]

        # A Debounce batch brought back by its letter and failing again: a new letter with
        # the same events; the instance's next failed batch: a letter of its own.
        debounce = engine.client.debounce(job)
        for _ in range(2):
            success(await debounce.add(id="acct-1", event=Ping()))
        await trio.sleep(70)
        (batch,) = success(await letters.list(kind="debounce"))
        success(await letters.retry(batch.id))
        await trio.sleep(70)
        (flushed_again,) = success(await letters.list(kind="debounce"))
        assert flushed_again.id != batch.id and flushed_again.failed_at > batch.failed_at
        assert (flushed_again.payload, flushed_again.event_count) == (Batch(["e1", "e2"]), 2)
        success(await debounce.add(id="acct-1", event=Ping()))
        await trio.sleep(70)
        kept = success(await letters.list(kind="debounce"))
        assert [(le.payload, le.event_count) for le in kept] == [(Batch(["e1"]), 1), (Batch(["e1", "e2"]), 2)]
        assert outage.calls[-3:] == ["e1,e2", "e1,e2", "e1"]


@pytest.mark.trio
async def test_an_instance_ended_again_is_a_new_letter_and_the_old_state_stays(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer
) -> None:
    outage = Outage()
    job = refresher(outage, "dead_letter")
    async with open_test_engine([job], storage=layer) as engine:
        client, letters = engine.client.continuous(job), engine.client.dead_letters
        success(await client.start(id="tok", input=Count(41)))
        await trio.sleep(10)
        (ended,) = success(await letters.list())
        # Revived and ended again: the first letter went with the revival, the second is new.
        success(await letters.retry(ended.id))
        await trio.sleep(10)
        (ended_again,) = success(await letters.list())
        assert ended_again.id != ended.id and ended_again.failed_at > ended.failed_at
        assert (ended_again.payload, ended_again.attempts) == (Count(41), 3)
        # A new instance under the id, ended too: both states are kept, newest first.
        success(await client.start(id="tok", input=Count(7)))
        await trio.sleep(10)
        assert [(le.ref, le.payload) for le in success(await letters.list())] == [("tok", Count(7)), ("tok", Count(41))]


# -- scope and input ------------------------------------------------------------------------


@pytest.mark.trio
async def test_a_tenant_sees_only_its_own_letters(autojump_clock: trio.testing.MockClock) -> None:
    outage = Outage()
    mail = mail_job(outage)
    async with open_test_engine([mail]) as engine:
        acme = engine.client.for_tenant("acme")
        mine = success(await acme.job(mail).later(Mail("a@acme.test")))
        theirs = success(await engine.client.for_tenant("other").job(mail).later(Mail("b@other.test")))
        await trio.sleep(10)
        assert [le.id for le in success(await acme.dead_letters.list())] == [mine]
        assert success(await acme.dead_letters.get(mine)).tenant_id == "acme"
        for verb in (acme.dead_letters.get, acme.dead_letters.retry, acme.dead_letters.discard):
            assert isinstance(failure(await verb(theirs)), djobs.InstanceNotFoundError)
        assert len(success(await engine.client.dead_letters.list())) == 2
        assert isinstance(failure(await acme.dead_letters.purge(older_than="1 day")), djobs.ValidationError)


@pytest.mark.trio
async def test_letters_page_newest_first_and_purge_by_age(autojump_clock: trio.testing.MockClock) -> None:
    outage = Outage()
    mail = mail_job(outage)
    async with open_test_engine([mail]) as engine:
        ids = []
        for n in range(5):
            ids.append(success(await engine.client.job(mail).later(Mail(f"{n}@x.test"))))
            await trio.sleep(60)
        first = success(await engine.client.dead_letters.list(limit=2))
        rest = success(await engine.client.dead_letters.list(limit=10, after=first[-1].id))
        assert [le.id for le in first + rest] == ids[::-1]
        assert success(await engine.client.dead_letters.purge(older_than="200 seconds")) == 2
        assert [le.id for le in success(await engine.client.dead_letters.list())] == ids[:1:-1]


@pytest.mark.trio
@pytest.mark.parametrize(
    "call",
    [
        {"kind": "jobs"},
        {"limit": 0},
        {"name": 3},
        {"after": ""},
    ],
)
async def test_bad_listing_options_are_validation_errors(
    autojump_clock: trio.testing.MockClock, call: dict[str, Any]
) -> None:
    async with open_test_engine([]) as engine:
        assert isinstance(failure(await engine.client.dead_letters.list(**call)), djobs.ValidationError)
        assert isinstance(failure(await engine.client.dead_letters.get("")), djobs.ValidationError)


def test_on_exhausted_is_checked_when_the_job_is_defined() -> None:
    with pytest.raises(djobs.ValidationError, match="on_exhausted"):
        djobs.Continuous.make(
            "c",
            state=Count,
            schedule=djobs.every("1 hour"),
            execute=lambda ctx: None,
            on_exhausted="keep",  # type: ignore[arg-type]
        )


# -- the command line ------------------------------------------------------------------------


@pytest.fixture(params=STORAGE_KINDS[1:])
def database(request: pytest.FixtureRequest) -> Iterator[tuple[djobs.storage.StorageLayer, list[str]]]:
    """A storage layer and the ``--db`` (and ``--schema``) arguments naming it."""
    if request.param == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            yield djobs.sqlite(f"{directory}/jobs.db"), ["--db", f"{directory}/jobs.db"]
        return
    dsn, schema = postgres_dsn() or "", new_schema_name()
    try:
        yield djobs.postgres(dsn, schema=schema), ["--db", dsn, "--schema", schema]
    finally:
        drop_schema(dsn, schema)


class StoppedClock:
    def __init__(self, at_ms: int) -> None:
        self.at_ms = at_ms

    def now_ms(self) -> int:
        return self.at_ms

    async def sleep_until(self, epoch_ms: int) -> None:
        await trio.sleep_forever()


def test_the_command_line_retries_a_debounce_batch_an_engine_then_flushes(
    database: tuple[djobs.storage.StorageLayer, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    layer, where = database
    outage = Outage()
    job = batcher(outage, retry=None)

    async def fail_a_batch() -> int:
        async with open_test_engine([job], storage=layer) as engine:
            success(await engine.client.debounce(job).add(id="acct-1", event=Ping()))
            success(await engine.client.debounce(job).add(id="acct-1", event=Ping()))
            await trio.sleep(70)
            return engine.clock.now_ms()

    async def flush_it() -> None:
        async with open_test_engine([job], storage=layer) as engine:
            await engine.wait_idle()
            assert outage.calls[-1] == "e1,e2"
            assert success(await engine.client.dead_letters.list()) == []

    now = trio.run(fail_a_batch, clock=trio.testing.MockClock(autojump_threshold=0))
    capsys.readouterr()
    assert main(["dead-letters", "list", "--json", *where], clock=StoppedClock(now)) == 0
    (letter,) = json.loads(capsys.readouterr().out)
    assert (letter["kind"], letter["ref"], letter["event_count"]) == ("debounce", "acct-1", 2)
    assert letter["payload"] == {"items": ["e1", "e2"]}
    assert main(["dead-letters", "retry", letter["id"], *where], clock=StoppedClock(now)) == 0
    assert "due again now" in capsys.readouterr().out
    outage.down = False
    trio.run(flush_it, clock=trio.testing.MockClock(autojump_threshold=0))
