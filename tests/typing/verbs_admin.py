"""The exact error union of each verb of ``client.crons`` and ``client.dead_letters``.

Lines ending in ``# E: <code>`` must fail mypy with that error code; every other line must pass.
Another tenant's cron job is answered as an unknown one (`JobNotFoundError`) and
another tenant's letter as a missing one (`InstanceNotFoundError`): only the
verbs that take a ``tenant_id`` may fail with `TenantError`.
"""

from datetime import datetime
from typing import assert_never, assert_type

from returns.io import IOResult

import djobs
from djobs import (
    CronInfo,
    DeadLetterInfo,
    DeadLetterRetryResult,
    InstanceNotFoundError,
    InvalidStateError,
    JobNotFoundError,
    StorageError,
    TenantError,
    ValidationError,
)
from djobs.testing import failure

#: What a verb of one cron job (`get`, `enable`, `disable`, `next_runs`) may fail with.
OneCron = JobNotFoundError | ValidationError | StorageError
#: What a verb of one dead letter (`get`, `discard`) may fail with.
OneLetter = InstanceNotFoundError | ValidationError | StorageError


async def each_verb_has_its_exact_union(client: djobs.Client, nightly: djobs.CronJob) -> None:
    assert_type(await client.crons.get(nightly), IOResult[CronInfo, OneCron])
    assert_type(await client.crons.enable("nightly"), IOResult[CronInfo, OneCron])
    assert_type(await client.crons.disable(nightly), IOResult[CronInfo, OneCron])
    assert_type(await client.crons.next_runs(nightly, 3), IOResult[list[datetime], OneCron])
    assert_type(await client.crons.list(), IOResult[list[CronInfo], ValidationError | StorageError])
    letters = client.dead_letters
    assert_type(await letters.get("l"), IOResult[DeadLetterInfo, OneLetter])
    assert_type(await letters.discard("l"), IOResult[DeadLetterInfo, OneLetter])
    assert_type(await letters.retry("l"), IOResult[DeadLetterRetryResult, OneLetter | InvalidStateError])
    assert_type(await letters.list(), IOResult[list[DeadLetterInfo], TenantError | ValidationError | StorageError])
    assert_type(await letters.purge(older_than="30 days"), IOResult[int, ValidationError | StorageError])
    acme = client.for_tenant("acme")
    assert_type(
        await acme.dead_letters.list(tenant_id="other"),
        IOResult[list[DeadLetterInfo], TenantError | ValidationError | StorageError],
    )
    assert_type(await acme.crons.get(nightly), IOResult[CronInfo, OneCron])


async def a_union_without_the_error_added_last_is_refused(client: djobs.Client, nightly: djobs.CronJob) -> None:
    letters: IOResult[
        list[DeadLetterInfo], ValidationError | StorageError
    ] = await client.dead_letters.list()  # E: assignment
    crons: IOResult[list[CronInfo], StorageError] = await client.crons.list()  # E: assignment "ValidationError"
    next_runs = await client.crons.next_runs(nightly)
    runs: IOResult[list[datetime], JobNotFoundError | StorageError] = next_runs  # E: assignment "ValidationError"
    retried: IOResult[DeadLetterRetryResult, OneLetter] = await client.dead_letters.retry("l")  # E: assignment
    print(letters, crons, runs, retried)
    # Exact both ways: a union naming an error the verb never returns fails the pin.
    assert_type(await client.crons.get(nightly), IOResult[CronInfo, OneCron | TenantError])  # E: assert-type
    assert_type(await client.dead_letters.get("l"), IOResult[DeadLetterInfo, OneLetter | TenantError])  # E: assert-type


async def a_wrong_value_type_is_refused(client: djobs.Client) -> None:
    info: IOResult[DeadLetterInfo, OneCron] = await client.crons.get("nightly")  # E: assignment "CronInfo"
    purge = await client.dead_letters.purge(older_than="1 day")
    purged: IOResult[list[str], ValidationError | StorageError] = purge  # E: assignment "IOResult[int"
    print(info, purged)
    await client.crons.next_runs("nightly", "3")  # E: arg-type


# -- the errors, matched ------------------------------------------------------------------


def why_not_listed(error: TenantError | ValidationError | StorageError) -> str:
    match error:
        case TenantError():
            return "this client may not read that tenant's letters"
        case ValidationError() | StorageError():
            return error.message
        case _:
            assert_never(error)


def why_not_listed_before_tenants(error: TenantError | ValidationError | StorageError) -> str:
    match error:
        case ValidationError() | StorageError():
            return error.message
        case _:
            assert_never(error)  # E: arg-type 'incompatible type "TenantError"'


async def handled(client: djobs.Client) -> str:
    return why_not_listed(failure(await client.for_tenant("acme").dead_letters.list(tenant_id="other")))
