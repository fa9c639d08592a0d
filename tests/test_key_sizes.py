"""Keys made of a job's name and ids fit every storage's index: what one is made of (an
instance's key, with an event id beside it; a job's idempotency key or unique key, with its name
and tenant id) is at most 2,600 UTF-8 bytes, or the verb is refused with a `ValidationError`
naming the fields and the limit, on every storage alike.

Before, PostgreSQL refused such a row (its btree index rows are at most 2,704 bytes) as
"the connection to the server was lost", and SQLite and memory took it: ids of a few hundred
four-byte characters with a tenant id started instances on SQLite that PostgreSQL could not hold.
"""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from postgres_support import STORAGE_KINDS, dropped_after, new_schema_name, storage_layer
from returns.pipeline import is_successful

import djobs
from djobs.testing import open_test_engine

LIMIT = 2600


class Count(msgspec.Struct):
    n: int = 0


class Nothing(msgspec.Struct):
    pass


def tick(ctx: djobs.ContinuousContext[Count]) -> Count:
    return Count(ctx.state.n + 1)


def added(ctx: djobs.DebounceEventContext[Nothing, Count]) -> Count:
    return Count((ctx.state.n if ctx.state else 0) + 1)


def flushed(ctx: djobs.DebounceContext[Count]) -> None:
    pass


def on_event(event: Nothing, ctx: djobs.TaskEventContext[Count]) -> Count:
    return Count(ctx.state.n + 1)


def check(ctx: djobs.TaskContext[Count]) -> None:
    pass


def nothing(params: Nothing, ctx: djobs.JobContext) -> None:
    pass


NAME = "n\u00e9\U0001d11e" * 66  # 198 characters, 462 bytes: a long name, of every width
counter = djobs.Continuous.make(NAME + "c", state=Count, schedule=djobs.every("1 hour"), execute=tick)
batcher = djobs.Debounce.make(
    NAME + "d", event=Nothing, state=Count, on_event=added, flush_after="1 hour", execute=flushed
)
task = djobs.Task.make(NAME + "t", state=Count, event=Nothing, on_event=on_event, execute=check)
job = djobs.Job.make(NAME + "j", params=Nothing, execute=nothing)


@pytest.fixture(params=STORAGE_KINDS)
def layer(request: pytest.FixtureRequest) -> Iterator[djobs.storage.StorageLayer]:
    """One database for the whole property test (its examples add instances side by side)."""
    kind = request.param
    schema = new_schema_name() if kind == "postgres" else None
    with tempfile.TemporaryDirectory() as directory, dropped_after(schema):
        yield storage_layer(kind, directory, schema)


#: Text of every length up to 512 characters (what an id may have), of one- to four-byte characters.
texts = st.integers(1, 512).flatmap(lambda n: st.text(st.sampled_from("x9-é日\U0001d11e"), min_size=n, max_size=n))


def size(*parts: str) -> int:
    return len("".join(parts).encode())


def expect(answer: Any, too_long: bool) -> None:
    """A verb's answer: refused for its key's size exactly when `too_long`, never a storage failure."""
    error = None if is_successful(answer) else djobs.testing.failure(answer)
    if too_long:
        assert isinstance(error, djobs.ValidationError), answer
        assert "UTF-8 bytes" in error.message and f"at most {LIMIT}" in error.message, error.message
    else:
        assert error is None or not isinstance(error, djobs.StorageError | djobs.ValidationError), answer


def run(layer: djobs.storage.StorageLayer, scenario: Callable[[djobs.Engine], Awaitable[None]]) -> None:
    async def main() -> None:
        async with open_test_engine([counter, batcher, task, job], storage=layer) as engine:
            await scenario(engine)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_instance_keys(layer: djobs.storage.StorageLayer) -> None:
    @settings(max_examples=25, deadline=None)
    @given(tenant=st.none() | texts, id=texts, event_id=texts)
    def check(tenant: str | None, id: str, event_id: str) -> None:
        async def scenario(engine: djobs.Engine) -> None:
            client = engine.client if tenant is None else engine.client.for_tenant(tenant)
            key = size("continuous:", counter.name, ":", tenant or "", "\x1f" if tenant else "", id)
            expect(await client.continuous(counter).start(id=id, input=Count()), key > LIMIT)
            key = size("debounce:", batcher.name, ":", tenant or "", "\x1f" if tenant else "", id)
            expect(await client.debounce(batcher).add(id=id, event=Nothing()), key > LIMIT)
            added = await client.debounce(batcher).add(id=id, event=Nothing(), event_id=event_id)
            expect(added, key + size(event_id) > LIMIT)
            key = size("task:", task.name, ":", tenant or "", "\x1f" if tenant else "", id)
            expect(
                await client.task(task).send(id=id, event=Nothing(), event_id=event_id), key + size(event_id) > LIMIT
            )

        run(layer, scenario)

    check()


def test_job_keys(layer: djobs.storage.StorageLayer) -> None:
    @settings(max_examples=25, deadline=None)
    @given(tenant=st.none() | texts, key=texts, unique=texts)
    def check(tenant: str | None, key: str, unique: str) -> None:
        async def scenario(engine: djobs.Engine) -> None:
            jobs = engine.client.job(job)
            later = await jobs.later(Nothing(), tenant_id=tenant, idempotency_key=key, delay="1 hour")
            expect(later, size(tenant or "", job.name, key) > LIMIT)
            expect(await jobs.later(Nothing(), unique=unique, delay="1 hour"), size(job.name, "key:", unique) > LIMIT)

        run(layer, scenario)

    check()


class Id(str):
    """Text of a str subclass (a StrEnum's member, say)."""

    __slots__ = ()


def test_a_str_subclass_is_sized_as_its_text(layer: djobs.storage.StorageLayer) -> None:
    """An id or tenant id of a str subclass makes the key its text makes: refused past the limit
    too (a subclass's id was not sized, and PostgreSQL failed the verb as a lost connection)."""
    wide = "\U0001d11e" * 300  # 1,200 bytes: an id and a tenant id of it are too long together

    async def scenario(engine: djobs.Engine) -> None:
        for tenant, id in ((wide, Id(wide)), (Id(wide), wide), (Id(wide), Id(wide))):
            client = engine.client.for_tenant(tenant)
            expect(await client.continuous(counter).start(id=id, input=Count()), True)
            expect(await client.task(task).send(id=id, event=Nothing()), True)

    run(layer, scenario)


WIDE = "\U0001d11e" * 199  # with a letter, the longest name, of four-byte characters: 797 bytes


async def flow(input: Nothing, ctx: djobs.WorkflowContext) -> None:
    pass


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_the_untenanted_paths_of_add_and_start_refuse_a_key_too_long(kind: str, tmp_path: Any) -> None:
    """Debounce add and workflow start, without a tenant, check ids apart from the other verbs:
    an id of wide characters beside the longest wide name is refused there too (both took it)."""
    wide_batcher = djobs.Debounce.make(
        WIDE + "d", event=Nothing, state=Count, on_event=added, flush_after="1 hour", execute=flushed
    )
    wide_flow = djobs.Workflow.make(WIDE + "w", input=Nothing, result=type(None), execute=flow)
    schema = new_schema_name() if kind == "postgres" else None

    async def main() -> None:
        layer = storage_layer(kind, str(tmp_path), schema)
        async with open_test_engine([wide_batcher, wide_flow], storage=layer) as engine:
            for id in ("é" * 512, "\U0001d11e" * 448, "\U0001d11e" * 449):
                key = size("debounce:", wide_batcher.name, ":", id)
                expect(await engine.client.debounce(wide_batcher).add(id=id, event=Nothing()), key > LIMIT)
                key = size("workflow:", wide_flow.name, ":", id)
                expect(await engine.client.workflow(wide_flow).start(id=id, input=Nothing()), key > LIMIT)

    with dropped_after(schema):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_an_event_id_of_a_str_subclass_is_sized_as_its_text(layer: djobs.storage.StorageLayer) -> None:
    """A Task send's event id of a str subclass makes the key its text makes: refused past the
    limit (it was not sized, and PostgreSQL failed the send as a lost connection)."""
    wide, id = "\U0001d11e" * 512, "\u00e9" * 200  # 2,048 and 400 bytes: too long beside the name

    async def scenario(engine: djobs.Engine) -> None:
        assert size("task:", task.name, ":", id, wide) > LIMIT
        expect(await engine.client.task(task).send(id=id, event=Nothing(), event_id=Id(wide)), True)
        expect(await engine.client.debounce(batcher).add(id=id, event=Nothing(), event_id=Id(wide)), True)

    run(layer, scenario)
