"""The exact error union of each verb of ``client.workflow(...)``.

Lines ending in ``# E: <code>`` must fail mypy with that error code; every other line must pass.
Every verb may fail with ``TenantError`` (an unscoped client of a
``tenancy="required"`` engine), as an instance client's do; a union without it is
refused. ``result`` is typed by the workflow's result type.
"""

from typing import assert_never, assert_type

import msgspec
from returns.io import IOResult

import djobs
from djobs import (
    InstanceNotFoundError,
    InvalidStateError,
    JobNotFoundError,
    SignalResult,
    StorageError,
    TenantError,
    ValidationError,
    WorkflowCancelResult,
    WorkflowFailedError,
    WorkflowStartResult,
    WorkflowStatus,
    WorkflowSummary,
)
from djobs.testing import failure


class Order(msgspec.Struct):
    order_id: str


async def ship(order: Order, ctx: djobs.WorkflowContext) -> int:
    return len(order.order_id)


shipping = djobs.Workflow.make("shipping", input=Order, result=int, execute=ship)

#: Every verb of a workflow may fail with these.
Base = JobNotFoundError | TenantError | ValidationError | StorageError
#: `Base` before TenantError.
BaseWithoutTenants = JobNotFoundError | ValidationError | StorageError
#: What `result` may fail with.
Outcome = Base | InstanceNotFoundError | InvalidStateError | WorkflowFailedError
#: What `signal` and `result` failed with before TenantError.
SignalWithoutTenants = BaseWithoutTenants | InstanceNotFoundError | InvalidStateError
OutcomeWithoutTenants = SignalWithoutTenants | WorkflowFailedError


async def each_verb_has_its_exact_union(client: djobs.Client) -> None:
    workflows = client.workflow(shipping)
    assert_type(workflows, djobs.WorkflowClient[Order, int])
    assert_type(await workflows.start(id="w", input=Order("o")), IOResult[WorkflowStartResult, Base])
    assert_type(await workflows.status("w"), IOResult[WorkflowStatus, Base])
    assert_type(await workflows.result("w"), IOResult[int, Outcome])
    assert_type(
        await workflows.signal("w", "go"), IOResult[SignalResult, Base | InstanceNotFoundError | InvalidStateError]
    )
    assert_type(await workflows.cancel("w"), IOResult[WorkflowCancelResult, Base])
    assert_type(await workflows.list(), IOResult[list[WorkflowSummary], Base])


async def a_union_without_tenants_is_refused(client: djobs.Client) -> None:
    workflows = client.workflow(shipping)
    started = await workflows.start(id="w", input=Order("o"))
    start: IOResult[WorkflowStartResult, BaseWithoutTenants] = started  # E: assignment "TenantError"
    status: IOResult[WorkflowStatus, BaseWithoutTenants] = await workflows.status("w")  # E: assignment "TenantError"
    result: IOResult[int, OutcomeWithoutTenants] = await workflows.result("w")  # E: assignment "TenantError"
    signal: IOResult[SignalResult, SignalWithoutTenants] = await workflows.signal("w", "go")  # E: assignment
    cancelled = await workflows.cancel("w")
    cancel: IOResult[WorkflowCancelResult, BaseWithoutTenants] = cancelled  # E: assignment "TenantError"
    listed: IOResult[list[WorkflowSummary], BaseWithoutTenants] = await workflows.list()  # E: assignment "TenantError"
    print(start, status, result, signal, cancel, listed)


async def a_wrong_value_type_is_refused(client: djobs.Client) -> None:
    workflows = client.workflow(shipping)
    as_text: IOResult[str, Outcome] = await workflows.result("w")  # E: assignment "IOResult[int"
    cancelled: IOResult[bool, Base] = await workflows.cancel("w")  # E: assignment "WorkflowCancelResult"
    print(as_text, cancelled)
    await workflows.start(id="w", input={"order_id": "o"})  # E: arg-type


# -- the errors, matched ------------------------------------------------------------------


def why_no_result(error: Outcome) -> str:
    match error:
        case InvalidStateError():
            return "still going"
        case WorkflowFailedError(message=message):
            return f"ended without a result: {message}"
        case InstanceNotFoundError() | JobNotFoundError() | TenantError() | ValidationError() | StorageError():
            return error.message
        case _:
            assert_never(error)


def why_no_result_before_tenants(error: Outcome) -> str:
    match error:
        case InvalidStateError() | WorkflowFailedError():
            return "not done"
        case InstanceNotFoundError() | JobNotFoundError() | ValidationError() | StorageError():
            return error.message
        case _:
            assert_never(error)  # E: arg-type 'incompatible type "TenantError"'


async def handled(client: djobs.Client) -> str:
    return why_no_result(failure(await client.workflow(shipping).result("w")))
