"""Paging a listing with ``after=`` lists each item once and ends, on every storage.

A workflow listing paged with ``after=page[-1].instance_id`` on a client for every tenant went
round for ever where tenants reuse ids: rows come in storage-key order (the tenant inside the
key) and an id alone named the workflow without a tenant, so the next page started behind the
last one, and some tenants' workflows were never listed. A `WorkflowSummary` now carries its
``cursor``, which names one workflow whichever tenant it belongs to.
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
