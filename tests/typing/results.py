"""Reading a verb's result in application code: `djobs.unwrap_or_raise`, and a verb never awaited.

Lines ending in ``# E: <code>`` must fail mypy with that error code; every other line must pass.
(``unused-awaitable`` is enabled in the project's mypy configuration.)
"""

import msgspec
from returns.result import Result

import djobs


class Ping(msgspec.Struct):
    text: str


async def read(client: djobs.Client, job_id: str) -> djobs.JobInfo:
    return djobs.unwrap_or_raise(await client.jobs.status(job_id))


def plain(result: Result[int, djobs.ValidationError]) -> int:
    return djobs.unwrap_or_raise(result)


async def enqueue(client: djobs.Client, job: djobs.Job[Ping, None]) -> str:
    return djobs.unwrap_or_raise(await client.job(job).later(Ping("x")))


async def the_value_type_is_kept(client: djobs.Client, job_id: str) -> str:
    return djobs.unwrap_or_raise(await client.jobs.status(job_id))  # E: return-value


def a_failure_must_be_an_exception(result: Result[int, str]) -> int:
    return djobs.unwrap_or_raise(result)  # E: type-var


async def a_verb_never_awaited(client: djobs.Client, job: djobs.Job[Ping, None]) -> None:
    client.job(job).later(Ping("x"))  # E: unused-awaitable


# A job's result may be any storable type; the body must return it, and the run is typed by it.
def count(params: Ping, ctx: djobs.JobContext) -> int:
    return len(params.text)


def pings(params: Ping, ctx: djobs.JobContext) -> list[Ping]:
    return [params]


counter: djobs.Job[Ping, int] = djobs.Job.make("count", params=Ping, result=int, execute=count)
listed: djobs.Job[Ping, list[Ping]] = djobs.Job.make("pings", params=Ping, result=list[Ping], execute=pings)
wrong_result = djobs.Job.make("bad", params=Ping, result=str, execute=count)  # E: arg-type


async def count_now(client: djobs.Client) -> int | None:
    run = djobs.unwrap_or_raise(await client.job(counter).now(Ping("x")))
    return run.result


async def count_as_text(client: djobs.Client) -> str | None:
    run = djobs.unwrap_or_raise(await client.job(counter).now(Ping("x")))
    return run.result  # E: return-value


# A cancel says whether an earlier one was accepted, as a workflow's cancel does.
async def cancel_was_a_repeat(client: djobs.Client, job_id: str) -> bool:
    answer = djobs.unwrap_or_raise(await client.jobs.cancel(job_id))
    return answer.already_requested and answer.status == "cancelled"


async def cancel_repeat_is_a_flag(client: djobs.Client, job_id: str) -> str:
    return djobs.unwrap_or_raise(await client.jobs.cancel(job_id)).already_requested  # E: return-value
