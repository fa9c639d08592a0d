"""Names a workflow's calls derive from a job's or a workflow's name and an id: the log names a
``ctx.job`` call ``enqueue job <name>`` and a ``ctx.child`` call ``start child <name>:<id>``, in at
most 200 characters, and ``ctx.job`` enqueues under an idempotency key made of the workflow's name
and id (at most 512 characters). A name or id too long for what is derived from it is refused at
the call with a `ValidationError` naming the field and its limit; an idempotency key that would be
too long is a digest instead, so a workflow with a long id can wait for jobs.

Before, a job name of 189 to 200 characters failed the workflow with "step name is 201 characters
long", a step the caller never named, and a workflow id of about 490 characters or more failed
every ``ctx.job`` step with "idempotency_key must be ... at most 512 characters".
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from postgres_support import STORAGE_KINDS, dropped_after, new_schema_name, storage_layer

import djobs
from djobs.testing import open_test_engine, success

#: The longest recorded call name, and what the log puts before a job's name and a child's name.
MAX_CALL = 200
JOB_STEP = "enqueue job "
CHILD_STEP = "start child "


class Nothing(msgspec.Struct):
    pass


def one(params: Nothing, ctx: djobs.JobContext) -> int:
    return 1


def waiting_for(job: djobs.Job[Nothing, int]) -> djobs.Workflow[Nothing, int]:
    async def wait(params: Nothing, ctx: djobs.WorkflowContext) -> int:
        return await ctx.job(job, Nothing()) + 1

    return djobs.Workflow.make("waiter", input=Nothing, result=int, execute=wait)


async def child_body(params: Nothing, ctx: djobs.WorkflowContext) -> int:
    return 1


def parent_of(child: djobs.Workflow[Nothing, int], child_id: str) -> djobs.Workflow[Nothing, int]:
    async def parent(params: Nothing, ctx: djobs.WorkflowContext) -> int:
        return await ctx.child(child, child_id, Nothing()) + 1

    return djobs.Workflow.make("parent", input=Nothing, result=int, execute=parent)


async def outcome(layer: djobs.storage.StorageLayer, definitions: list[Any], flow: Any, id: str) -> Any:
    async with open_test_engine(definitions, storage=layer) as engine:
        client = engine.client.workflow(flow)
        success(await client.start(id=id, input=Nothing()))
        await trio.sleep(60)  # the job runs, and the workflow's next look at it finds it ended
        return success(await client.status(id)), (await client.result(id))


def check_job_wait(layer: djobs.storage.StorageLayer, name: str, workflow_id: str) -> None:
    job = djobs.Job.make(name, params=Nothing, result=int, execute=one)
    flow = waiting_for(job)

    async def scenario() -> None:
        status, result = await outcome(layer, [job, flow], flow, workflow_id)
        if len(JOB_STEP + name) <= MAX_CALL:
            assert status.status == "completed", status
            assert success(result) == 2
        else:
            assert status.status == "failed" and status.error is not None, status
            assert status.error["tag"] == "validation", status.error
            message = status.error["message"]
            assert f"the job's name is {len(name)} characters long" in message, message
            assert f"at most {MAX_CALL - len(JOB_STEP)} characters" in message, message

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


def check_child(layer: djobs.storage.StorageLayer, name: str, child_id: str) -> None:
    child = djobs.Workflow.make(name, input=Nothing, result=int, execute=child_body)
    flow = parent_of(child, child_id)

    async def scenario() -> None:
        status, result = await outcome(layer, [child, flow], flow, "p")
        if len(f"{CHILD_STEP}{name}:{child_id}") <= MAX_CALL:
            assert status.status == "completed", status
            assert success(result) == 2
        else:
            assert status.status == "failed" and status.error is not None, status
            assert status.error["tag"] == "validation", status.error
            message = status.error["message"]
            assert f"the id is {len(child_id)} characters long" in message, message
            assert f"at most {MAX_CALL - len(CHILD_STEP) - len(name) - 1} characters long" in message, message

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


#: Names of every length a definition takes (1 to 200 characters, no ':'), of one- to four-byte characters.
names = st.integers(1, 200).flatmap(lambda n: st.text(st.sampled_from("jZ_-é日\U0001d11e"), min_size=n, max_size=n))
#: Ids of every length a verb takes (1 to 512 characters).
ids = st.integers(1, 512).flatmap(lambda n: st.text(st.sampled_from("x9-é\U0001d11e"), min_size=n, max_size=n))


@settings(max_examples=60, deadline=None)
@given(name=names, workflow_id=ids)
def test_ctx_job_takes_every_name_it_can_log_and_refuses_longer_ones_at_the_call(name: str, workflow_id: str) -> None:
    check_job_wait(djobs.storage.memory(), name, workflow_id)


@settings(max_examples=60, deadline=None)
@given(name=names, child_id=ids)
def test_ctx_child_takes_every_name_and_id_it_can_log_and_refuses_longer_ones_at_the_call(
    name: str, child_id: str
) -> None:
    check_child(djobs.storage.memory(), name, child_id)


@pytest.mark.parametrize("kind", STORAGE_KINDS)
@pytest.mark.parametrize(
    ("length", "id_length"), [(188, 512), (189, 1), (200, 512)], ids=["longest", "one-too-long", "longest-name"]
)
def test_ctx_job_at_the_limits_on_every_storage(kind: str, length: int, id_length: int, tmp_path: Any) -> None:
    schema = new_schema_name() if kind == "postgres" else None
    with dropped_after(schema):
        check_job_wait(storage_layer(kind, str(tmp_path), schema), "j" * length, "w" * id_length)


#: A tenant id of 400 four-byte characters (1,600 UTF-8 bytes): its keys come near what a stored key may hold.
WIDE_TENANT = "\U0001d11e" * 400


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_a_child_whose_keys_are_too_long_to_store_is_refused_at_the_call(kind: str, tmp_path: Any) -> None:
    """The child's key, and its parent's beside it (the event id of the child's outcome), are
    at most 2,600 UTF-8 bytes: a longer pair is refused at ``ctx.child``, on every storage (it
    failed on PostgreSQL only, past an index's limit, and ran elsewhere)."""
    child = djobs.Workflow.make("child", input=Nothing, result=int, execute=child_body)
    flow = parent_of(child, "\U0001d11e" * 150)
    schema = new_schema_name() if kind == "postgres" else None

    async def scenario() -> None:
        async with open_test_engine([child, flow], storage=storage_layer(kind, str(tmp_path), schema)) as engine:
            client = engine.client.for_tenant(WIDE_TENANT).workflow(flow)
            success(await client.start(id="p", input=Nothing()))
            await trio.sleep(60)
            status = success(await client.status("p"))
            assert status.status == "failed" and status.error is not None, status
            assert status.error["tag"] == "validation", status.error
            assert "UTF-8 bytes; at most 2600" in status.error["message"], status.error

    with dropped_after(schema):
        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_ctx_job_of_a_workflow_whose_idempotency_key_is_too_long_to_store_enqueues_under_a_digest(
    kind: str, tmp_path: Any
) -> None:
    job = djobs.Job.make("j", params=Nothing, result=int, execute=one)
    flow = waiting_for(job)
    schema = new_schema_name() if kind == "postgres" else None

    async def scenario() -> None:
        async with open_test_engine([job, flow], storage=storage_layer(kind, str(tmp_path), schema)) as engine:
            client = engine.client.for_tenant(WIDE_TENANT).workflow(flow)
            workflow_id = "\U0001d11e" * 200  # with the tenant id, its key is 2,418 bytes: storable
            success(await client.start(id=workflow_id, input=Nothing()))
            await trio.sleep(60)
            assert success(await client.result(workflow_id)) == 2

    with dropped_after(schema):
        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


def test_ctx_job_whose_key_cannot_fit_beside_its_tenant_and_name_is_refused_at_the_call() -> None:
    """A tenant id of 512 four-byte characters and a job name of 188 leave no room even for the
    digest: the call is refused, as the enqueue would refuse it, not a step failing for good."""
    job = djobs.Job.make("\U0001d11e" * 188, params=Nothing, result=int, execute=one)
    flow = waiting_for(job)

    async def scenario() -> None:
        async with open_test_engine([job, flow]) as engine:
            client = engine.client.for_tenant("\U0001d11e" * 512).workflow(flow)
            success(await client.start(id="w", input=Nothing()))
            await trio.sleep(60)
            status = success(await client.status("w"))
            assert status.status == "failed" and status.error is not None, status
            assert status.error["tag"] == "validation" and status.steps == [], status
            assert "UTF-8 bytes; at most 2600" in status.error["message"], status.error

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
