"""The exact error union of each verb of ``client.job(...)``, ``client.jobs`` and ``send_event``.

Lines ending in ``# E: <code>`` must fail mypy with that error code; every other line must pass.
Each verb's awaited answer is pinned with ``assert_type`` (an error more or less
fails it), and the same answer taken as the union the verb had before its last
widening (``TenantError``, ``ValidationError``) is refused: code written for the
narrower union must be looked at again. An exhaustive ``match`` (ending in
``assert_never``) that leaves an error out names the one it left out.
"""

from typing import assert_never, assert_type

import msgspec
from returns.io import IOResult

import djobs
from djobs import (
    CancelResult,
    EventResult,
    InstanceNotFoundError,
    InvalidStateError,
    JobInfo,
    JobNotFoundError,
    JobRun,
    RetryResult,
    StorageError,
    TenantError,
    ValidationError,
)
from djobs.testing import failure


class Ping(msgspec.Struct):
    text: str


def count(params: Ping, ctx: djobs.JobContext) -> int:
    return len(params.text)


counter = djobs.Job.make("count", params=Ping, result=int, execute=count)
pinged = djobs.Event("pinged", Ping)

#: What an enqueue (`later`, `later_many`, `now`, `batch`) may fail with.
Enqueue = JobNotFoundError | ValidationError | TenantError | StorageError
#: What a verb of one stored job (`status`, `cancel`) may fail with: another tenant's job is
#: an unknown one (InstanceNotFoundError), never a TenantError, so that no answer tells a
#: tenant which other ids exist.
OneJob = InstanceNotFoundError | ValidationError | StorageError
#: What `send_event` may fail with.
Send = ValidationError | TenantError | StorageError
#: What `jobs.list` may fail with.
Listing = TenantError | ValidationError | StorageError
#: The same unions without the error added last.
EnqueueWithoutTenants = JobNotFoundError | ValidationError | StorageError
OneJobWithoutValidation = InstanceNotFoundError | StorageError


async def each_verb_has_its_exact_union(client: djobs.Client) -> None:
    jobs = client.job(counter)
    assert_type(await jobs.later(Ping("x")), IOResult[str, Enqueue])
    assert_type(await jobs.later_many([Ping("x")]), IOResult[list[str], Enqueue])
    assert_type(await jobs.now(Ping("x")), IOResult[JobRun[int], Enqueue])
    assert_type(await jobs.batch([Ping("x")]), IOResult[list[JobRun[int]], Enqueue])
    assert_type(await client.jobs.status("j"), IOResult[JobInfo, OneJob])
    assert_type(await client.jobs.cancel("j"), IOResult[CancelResult, OneJob])
    assert_type(await client.jobs.retry("j"), IOResult[RetryResult, OneJob | InvalidStateError])
    assert_type(await client.jobs.list(), IOResult[list[JobInfo], Listing])
    assert_type(await client.jobs.purge(older_than="30 days"), IOResult[int, ValidationError | StorageError])
    assert_type(await client.send_event(pinged, Ping("x")), IOResult[EventResult, Send])


async def a_union_without_the_error_added_last_is_refused(client: djobs.Client) -> None:
    jobs = client.job(counter)
    later: IOResult[str, EnqueueWithoutTenants] = await jobs.later(Ping("x"))  # E: assignment "TenantError"
    many: IOResult[list[str], EnqueueWithoutTenants] = await jobs.later_many([])  # E: assignment "TenantError"
    now: IOResult[JobRun[int], EnqueueWithoutTenants] = await jobs.now(Ping("x"))  # E: assignment "TenantError"
    batch: IOResult[list[JobRun[int]], EnqueueWithoutTenants] = await jobs.batch([])  # E: assignment "TenantError"
    status: IOResult[JobInfo, OneJobWithoutValidation] = await client.jobs.status("j")  # E: assignment
    cancel: IOResult[CancelResult, OneJobWithoutValidation] = await client.jobs.cancel("j")  # E: assignment
    retried = await client.jobs.retry("j")
    retry: IOResult[RetryResult, OneJobWithoutValidation | InvalidStateError] = retried  # E: assignment
    listed: IOResult[list[JobInfo], ValidationError | StorageError] = await client.jobs.list()  # E: assignment
    purged: IOResult[int, StorageError] = await client.jobs.purge(older_than="1 day")  # E: assignment "ValidationError"
    answer = await client.send_event(pinged, Ping("x"))
    sent: IOResult[EventResult, ValidationError | StorageError] = answer  # E: assignment "TenantError"
    print(later, many, now, batch, status, cancel, retry, listed, purged, sent)
    # The pin is exact both ways: an error the verb cannot return fails it too.
    assert_type(await client.jobs.status("j"), IOResult[JobInfo, OneJob | InvalidStateError])  # E: assert-type


async def a_wrong_value_type_is_refused(client: djobs.Client) -> None:
    job_id: IOResult[int, Enqueue] = await client.job(counter).later(Ping("x"))  # E: assignment "IOResult[str"
    run: IOResult[JobRun[str], Enqueue] = await client.job(counter).now(Ping("x"))  # E: assignment "JobRun[int]"
    cancelled: IOResult[bool, OneJob] = await client.jobs.cancel("j")  # E: assignment "CancelResult"
    print(job_id, run, cancelled)


# A tenant's client is a Client: its verbs have the same unions (TenantError: another tenant named).
# A union with an error the verb never returns is refused: the pin is exact.
async def a_tenants_client_has_the_same_unions(client: djobs.Client) -> None:
    acme = client.for_tenant("acme")
    assert_type(acme, djobs.Client)
    assert_type(await acme.jobs.cancel("j"), IOResult[CancelResult, OneJob])
    assert_type(await acme.jobs.list(tenant_id="other"), IOResult[list[JobInfo], Listing])
    assert_type(await acme.job(counter).later(Ping("x")), IOResult[str, Enqueue])
    assert_type(await acme.jobs.cancel("j"), IOResult[CancelResult, OneJob | TenantError])  # E: assert-type


# -- the errors, matched ------------------------------------------------------------------


def what_to_do(error: Enqueue) -> str:
    match error:
        case JobNotFoundError() | TenantError():
            return "fix the program: an unknown job, or a tenant this client may not name"
        case ValidationError(message=message):
            return f"fix the input: {message}"
        case StorageError():
            return "try again later"
        case _:
            assert_never(error)


def written_before_tenants(error: Enqueue) -> str:
    match error:
        case JobNotFoundError() | ValidationError():
            return "fix the program"
        case StorageError():
            return "try again later"
        case _:
            assert_never(error)  # E: arg-type 'incompatible type "TenantError"'


def cancel_outcome(error: OneJob) -> str:
    match error:
        case InstanceNotFoundError(instance_id=job_id):
            return f"no job {job_id}"  # or another tenant's: the same answer
        case ValidationError() | StorageError():
            return error.message
        case _:
            assert_never(error)


async def handled(client: djobs.Client) -> list[str]:
    return [
        what_to_do(failure(await client.job(counter).later(Ping("x")))),
        cancel_outcome(failure(await client.jobs.cancel("j"))),
        cancel_outcome(failure(await client.jobs.retry("j"))),  # E: arg-type "InvalidStateError"
    ]
