"""Paging a listing with ``after=`` lists each item once and ends, on every storage.

A workflow listing paged with ``after=page[-1].instance_id`` on a client for every tenant went
round for ever where tenants reuse ids: rows come in storage-key order (the tenant inside the
key) and an id alone named the workflow without a tenant, so the next page started behind the
last one, and some tenants' workflows were never listed. A `WorkflowSummary` now carries its
``cursor``, which names one workflow whichever tenant it belongs to. Dead letters page by a
cursor that holds a letter's place once it is gone; jobs by their id (a primary key).
"""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from postgres_support import STORAGE_KINDS, dropped_after, new_schema_name, storage_layer, storage_settings

import djobs
from djobs.kinds._workflow_log import WorkflowStatusName
from djobs.testing import failure, open_test_engine, success


class Nothing(msgspec.Struct):
    pass


async def wait_a_day(input: Nothing, ctx: djobs.WorkflowContext) -> None:
    await ctx.sleep("1 day")


# Tenant ids and ids that interleave in key order: "a" < "a b" < "a\x1f..." < "ab" < "b".
tenants = st.none() | st.sampled_from(["a", "ab", "a b", "b", "é", "zeta"])
ids = st.text(alphabet="ab é~", min_size=1, max_size=3)


async def pages(list_page: Any, limits: list[int], follow: Any, bound: int) -> list[Any]:
    """Every item `list_page(after, limit)` gives, paged with `follow(last item)` as the next
    `after`, the limits taken in turn, until a short page; fails past `bound` pages."""
    seen: list[Any] = []
    after = None
    for turn, limit in enumerate(itertools.cycle(limits)):
        assert turn <= bound, f"still paging after {bound} pages: {seen}"
        page = success(await list_page(after, limit))
        seen += page
        if len(page) < limit:
            return seen
        after = follow(page[-1])
    raise AssertionError("unreachable")


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_workflow_listings_paged_by_cursor_list_each_workflow_once(kind: str, tmp_path: Any) -> None:
    schema = new_schema_name() if kind == "postgres" else None
    examples = itertools.count()

    @storage_settings(kind, examples=30, postgres_examples=8)
    @given(
        started=st.sets(st.tuples(tenants, ids), min_size=1, max_size=14),
        limits=st.lists(st.integers(1, 5), min_size=1, max_size=4),
        status=st.sampled_from([None, "sleeping"]),
    )
    def property(started: set[tuple[str | None, str]], limits: list[int], status: WorkflowStatusName | None) -> None:
        # A definition of its own per example: the SQLite file and the schema are shared.
        flow = djobs.Workflow.make(f"w{next(examples)}", input=Nothing, result=type(None), execute=wait_a_day)

        async def scenario() -> None:
            async with open_test_engine([flow], storage=storage_layer(kind, str(tmp_path), schema)) as engine:
                for tenant, instance_id in started:
                    client = engine.client if tenant is None else engine.client.for_tenant(tenant)
                    success(await client.workflow(flow).start(id=instance_id, input=Nothing()))
                await engine.wait_idle()
                bound = len(started) + 2

                def lister(client: djobs.Client) -> Any:
                    return lambda after, limit: client.workflow(flow).list(status=status, after=after, limit=limit)

                # Every tenant's, on the client for every tenant: by cursor.
                everything = await pages(lister(engine.client), limits, lambda w: w.cursor, bound)
                assert sorted((w.tenant_id or "", w.instance_id) for w in everything) == sorted(
                    (t or "", i) for t, i in started
                )
                cursors = [w.cursor for w in everything]
                assert cursors == sorted(cursors)  # the documented order: the cursors' code points

                # One tenant's, on its client: by cursor, and by id (each id is one of its workflows).
                for tenant in {t for t, _ in started if t is not None}:
                    client = engine.client.for_tenant(tenant)
                    mine = sorted(i for t, i in started if t == tenant)
                    for follow in (lambda w: w.cursor, lambda w: w.instance_id):
                        listed = await pages(lister(client), limits, follow, bound)
                        assert [w.instance_id for w in listed] == mine
                        assert {w.tenant_id for w in listed} == {tenant}
                    # Another tenant's cursor is not a place in this tenant's listing.
                    other = "a" if tenant != "a" else "b"
                    refused = failure(await client.workflow(flow).list(after=f"{other}\x1fx"))
                    assert isinstance(refused, djobs.TenantError), refused

        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))

    with dropped_after(schema):
        property()


@pytest.mark.trio
async def test_a_workflow_listing_refuses_an_after_that_names_no_workflow_place() -> None:
    flow = djobs.Workflow.make("w", input=Nothing, result=type(None), execute=wait_a_day)
    async with open_test_engine([flow]) as engine:
        workflows = engine.client.workflow(flow)
        for bad in ("\x1fa", "acme\x1f", "acme\x1fa\x1fb", "ac\x00me\x1fa", "x" * 513 + "\x1fa"):
            assert isinstance(failure(await workflows.list(after=bad)), djobs.ValidationError), bad


class Mail(msgspec.Struct):
    to: str


def bounce(params: Mail, ctx: djobs.JobContext) -> None:
    raise ConnectionError(f"{params.to}: mailbox unavailable")


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_dead_letters_paged_by_cursor_list_each_once_while_each_page_is_worked_off(kind: str, tmp_path: Any) -> None:
    """A dead-letter listing paged by id ended at the first page whose last letter was retried
    or discarded meanwhile (its place was looked up, and a letter gone ends the listing), so
    an operator's loop that works each page off never reached the rest. The cursor carries
    the letter's place; letters failing at one time (ties) and at others are paged alike."""
    schema = new_schema_name() if kind == "postgres" else None
    examples = itertools.count()

    @storage_settings(kind, examples=25, postgres_examples=6)
    @given(
        delays=st.lists(st.sampled_from([0, 0, 1, 5]), min_size=1, max_size=12),
        limits=st.lists(st.integers(1, 4), min_size=1, max_size=3),
        tenants=st.lists(st.sampled_from([None, "acme", "globex"]), min_size=12, max_size=12),
        work_off=st.sampled_from(["retry", "discard", "keep"]),
    )
    def property(delays: list[int], limits: list[int], tenants: list[str | None], work_off: str) -> None:
        mail = djobs.Job.make(f"mail{next(examples)}", params=Mail, execute=bounce, max_attempts=1)

        async def scenario() -> None:
            async with open_test_engine([mail], storage=storage_layer(kind, str(tmp_path), schema)) as engine:
                for n, delay in enumerate(delays):
                    tenant = tenants[n]
                    client = engine.client if tenant is None else engine.client.for_tenant(tenant)
                    success(await client.job(mail).later(Mail(f"{n}@x.test"), delay=f"{delay} seconds"))
                await trio.sleep(10)
                await engine.wait_idle()
                letters = engine.client.dead_letters
                stored = success(await letters.list(name=mail.name, limit=1000))
                assert len(stored) == len(delays)

                async def worked_off(last: Any) -> str:
                    if work_off == "retry":
                        success(await letters.retry(last.id))
                    elif work_off == "discard":
                        success(await letters.discard(last.id))
                    return str(last.cursor)

                seen: list[Any] = []
                after = None
                for turn, limit in enumerate(itertools.cycle(limits)):
                    assert turn <= len(delays) + 1, "still paging"
                    page = success(await letters.list(name=mail.name, after=after, limit=limit))
                    seen += page
                    if len(page) < limit:
                        break
                    after = await worked_off(page[-1])
                assert [le.id for le in seen] == [le.id for le in stored]  # each once, newest first

        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))

    with dropped_after(schema):
        property()


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_dead_letter_listing_refuses_an_after_that_is_no_id_or_cursor(kind: str, tmp_path: Any) -> None:
    """Two minus signs before the separator (int() refuses them) and more milliseconds than a
    64-bit integer holds (SQLite's and PostgreSQL's drivers refuse them) are a ValidationError
    too, never an unexpected failure."""
    schema = new_schema_name() if kind == "postgres" else None
    bad_afters = ("\x1fa", "12\x1f", "x\x1fa", "1\x1fa\x1fb", "1.5\x1fa", "", "a\x00", "--5\x1fa", "+5\x1fa")
    too_long = ("9" * 19 + "\x1fa", "9" * 20 + "\x1fa", "-" + "9" * 19 + "\x1fa")

    async def scenario() -> None:
        async with open_test_engine([], storage=storage_layer(kind, str(tmp_path), schema)) as engine:
            for bad in bad_afters + too_long:
                error = failure(await engine.client.dead_letters.list(after=bad))
                assert isinstance(error, djobs.ValidationError), (bad, error)
            assert success(await engine.client.dead_letters.list(after="no-such-letter")) == []
            assert success(await engine.client.dead_letters.list(after="0\x1fno-such-letter")) == []
            for edge in ("9" * 18, "-" + "9" * 18):
                assert success(await engine.client.dead_letters.list(after=edge + "\x1fa")) == []

    with dropped_after(schema):
        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_job_listings_paged_by_the_last_id_list_each_job_once(kind: str, tmp_path: Any) -> None:
    """``jobs.list(after=<last id>)``: a job's id is its primary key, so the id alone is a
    place in the listing, for every tenant's client and every filter."""
    schema = new_schema_name() if kind == "postgres" else None
    examples = itertools.count()

    @storage_settings(kind, examples=25, postgres_examples=6)
    @given(
        tenants=st.lists(tenants, min_size=1, max_size=14),
        limits=st.lists(st.integers(1, 5), min_size=1, max_size=4),
        status=st.sampled_from([None, "pending"]),
    )
    def property(tenants: list[str | None], limits: list[int], status: Any) -> None:
        mail = djobs.Job.make(f"mail{next(examples)}", params=Mail, execute=bounce)

        async def scenario() -> None:
            async with open_test_engine([mail], storage=storage_layer(kind, str(tmp_path), schema)) as engine:
                made: dict[str, str | None] = {}
                for n, tenant in enumerate(tenants):
                    client = engine.client if tenant is None else engine.client.for_tenant(tenant)
                    made[success(await client.job(mail).later(Mail(f"{n}"), delay="1 hour"))] = tenant

                def lister(client: djobs.Client) -> Any:
                    return lambda after, limit: client.jobs.list(
                        name=mail.name, status=status, after=after, limit=limit
                    )

                everything = await pages(lister(engine.client), limits, lambda j: j.id, len(made) + 2)
                assert [j.id for j in everything] == sorted(made)
                for tenant in {t for t in tenants if t is not None}:
                    mine = await pages(lister(engine.client.for_tenant(tenant)), limits, lambda j: j.id, len(made) + 2)
                    assert [j.id for j in mine] == sorted(i for i, t in made.items() if t == tenant)

        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))

    with dropped_after(schema):
        property()
