"""The exact error union of each verb of a Continuous, Debounce and Task client.

Lines ending in ``# E: <code>`` must fail mypy with that error code; every other line must pass.
Each verb's awaited answer is pinned with ``assert_type``; taken as the union
without ``TenantError`` (what an unscoped client of a ``tenancy="required"``
engine fails with), it is refused; a state read as another type is refused.
"""

from typing import assert_never, assert_type

import msgspec
from returns.io import IOResult

import djobs
from djobs import (
    AddResult,
    ClearResult,
    ContinuousStatus,
    DebounceStatus,
    DuplicateEventError,
    ExecutionError,
    FlushResult,
    InstanceNotFoundError,
    InvalidStateError,
    JobNotFoundError,
    SendResult,
    StartResult,
    StateResult,
    StorageError,
    TaskStatus,
    TaskTriggerResult,
    TenantError,
    TerminateResult,
    TriggerResult,
    ValidationError,
)
from djobs.testing import failure


class Count(msgspec.Struct):
    n: int = 0


class Ping(msgspec.Struct):
    text: str


#: Every verb of an instance may fail with these.
Base = JobNotFoundError | TenantError | ValidationError | StorageError
#: The verbs that change or read one instance that must exist.
Existing = Base | InstanceNotFoundError
#: An event taken in (`add`, `send`): its fold or on_event may fail, an event id may repeat.
Taken = Base | InvalidStateError | ExecutionError | DuplicateEventError
#: `Base` before TenantError.
BaseWithoutTenants = JobNotFoundError | ValidationError | StorageError


async def continuous(client: djobs.Client, definition: djobs.Continuous[Count]) -> None:
    instances = client.continuous(definition)
    assert_type(instances, djobs.ContinuousClient[Count])
    assert_type(await instances.start(id="i", input=Count()), IOResult[StartResult, Base | InvalidStateError])
    assert_type(await instances.status("i"), IOResult[ContinuousStatus, Base])
    assert_type(await instances.get_state("i"), IOResult[StateResult[Count], Existing])
    assert_type(await instances.trigger("i"), IOResult[TriggerResult, Existing | InvalidStateError])
    assert_type(await instances.pause("i"), IOResult[ContinuousStatus, Existing | InvalidStateError])
    assert_type(await instances.resume("i"), IOResult[ContinuousStatus, Existing | InvalidStateError])
    assert_type(await instances.terminate("i"), IOResult[TerminateResult, Base | InvalidStateError])


async def debounce(client: djobs.Client, definition: djobs.Debounce[Ping, Count]) -> None:
    instances = client.debounce(definition)
    assert_type(instances, djobs.DebounceClient[Ping, Count])
    assert_type(await instances.add(id="i", event=Ping("x")), IOResult[AddResult, Taken])
    assert_type(await instances.status("i"), IOResult[DebounceStatus, Base])
    assert_type(await instances.get_state("i"), IOResult[StateResult[Count | None], Existing])
    assert_type(await instances.flush("i"), IOResult[FlushResult, Existing | InvalidStateError])
    assert_type(await instances.clear("i"), IOResult[ClearResult, Base | InvalidStateError])


async def task(client: djobs.Client, definition: djobs.Task[Count, Ping]) -> None:
    instances = client.task(definition)
    assert_type(instances, djobs.TaskClient[Count, Ping])
    assert_type(await instances.send(id="i", event=Ping("x")), IOResult[SendResult, Taken])
    assert_type(await instances.status("i"), IOResult[TaskStatus, Base])
    assert_type(await instances.get_state("i"), IOResult[StateResult[Count | None], Existing])
    assert_type(await instances.trigger("i"), IOResult[TaskTriggerResult, Existing | InvalidStateError])
    assert_type(await instances.terminate("i"), IOResult[TerminateResult, Base | InvalidStateError])


async def a_union_without_tenants_is_refused(
    client: djobs.Client,
    counter: djobs.Continuous[Count],
    batcher: djobs.Debounce[Ping, Count],
    orders: djobs.Task[Count, Ping],
) -> None:
    c, d, t = client.continuous(counter), client.debounce(batcher), client.task(orders)
    c_status: IOResult[ContinuousStatus, BaseWithoutTenants] = await c.status("i")  # E: assignment "TenantError"
    started, state = await c.start(id="i", input=Count()), await c.get_state("i")
    c_start: IOResult[StartResult, BaseWithoutTenants | InvalidStateError] = started  # E: assignment "TenantError"
    c_state: IOResult[StateResult[Count], BaseWithoutTenants | InstanceNotFoundError] = state  # E: assignment
    d_status: IOResult[DebounceStatus, BaseWithoutTenants] = await d.status("i")  # E: assignment "TenantError"
    d_clear: IOResult[ClearResult, BaseWithoutTenants | InvalidStateError] = await d.clear("i")  # E: assignment
    t_status: IOResult[TaskStatus, BaseWithoutTenants] = await t.status("i")  # E: assignment "TenantError"
    t_end: IOResult[TerminateResult, BaseWithoutTenants | InvalidStateError] = await t.terminate("i")  # E: assignment
    print(c_status, c_start, c_state, d_status, d_clear, t_status, t_end)
    # An add can fail in the fold (ExecutionError) or repeat an event id: a union without them is refused.
    added: IOResult[AddResult, Base | InvalidStateError] = await d.add(id="i", event=Ping("x"))  # E: assignment
    sent: IOResult[SendResult, Base | InvalidStateError] = await t.send(id="i", event=Ping("x"))  # E: assignment
    print(added, sent)


async def a_state_of_another_type_is_refused(
    client: djobs.Client,
    counter: djobs.Continuous[Count],
    batcher: djobs.Debounce[Ping, Count],
    orders: djobs.Task[Count, Ping],
) -> None:
    state: IOResult[StateResult[Ping], Existing] = await client.continuous(counter).get_state("i")  # E: assignment
    # A task has no state before its first set_state: the state is Count | None, not Count.
    task_state: IOResult[StateResult[Count], Existing] = await client.task(orders).get_state("i")  # E: assignment
    print(state, task_state)
    await client.continuous(counter).start(id="i", input=Ping("x"))  # E: arg-type
    await client.debounce(batcher).add(id="i", event=Count())  # E: arg-type
    await client.task(orders).send(id="i", event=Count())  # E: arg-type


# -- the errors, matched ------------------------------------------------------------------


def after_an_add(error: Taken) -> str:
    match error:
        case DuplicateEventError():
            return "already taken: nothing to do"
        case ExecutionError() | InvalidStateError():
            return "the fold refused it"
        case ValidationError() | TenantError() | JobNotFoundError() | StorageError():
            return error.message
        case _:
            assert_never(error)


def after_an_add_written_before_duplicates(error: Taken) -> str:
    match error:
        case ExecutionError() | InvalidStateError():
            return "the fold refused it"
        case ValidationError() | TenantError() | JobNotFoundError() | StorageError():
            return error.message
        case _:
            assert_never(error)  # E: arg-type 'incompatible type "DuplicateEventError"'


async def handled(client: djobs.Client, batcher: djobs.Debounce[Ping, Count], orders: djobs.Task[Count, Ping]) -> None:
    print(after_an_add(failure(await client.debounce(batcher).add(id="i", event=Ping("x")))))
    print(after_an_add(failure(await client.task(orders).send(id="i", event=Ping("x")))))
