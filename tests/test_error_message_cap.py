"""An error's message is bounded wherever djobs records it, as payloads are.

A body that raises ``ValueError(<a whole response body>)`` must not store, log or
track megabytes: the message keeps its first characters and ends with a marker
saying how many were cut, on every path that records an error (a job's row and
run, a continuous, task or debounce instance's dead letter, a workflow's step
and end, the log lines and tracked events).
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import djobs
from djobs._errors import MAX_MESSAGE_LENGTH, capped_message
from djobs.testing import open_test_engine, success

BIG = 1_000_000


class S(msgspec.Struct):
    n: int = 0


def loud_failure() -> ValueError:
    return ValueError("x" * BIG)


def job_body(p: S, ctx: djobs.JobContext) -> None:
    raise loud_failure()


def continuous_body(ctx: djobs.ContinuousContext[S]) -> None:
    raise loud_failure()


def task_event(event: S, ctx: djobs.TaskEventContext[S]) -> None:
    ctx.schedule("1 second")


def task_body(ctx: djobs.TaskContext[S]) -> None:
    raise loud_failure()


def task_error(error: djobs.JobError, ctx: djobs.TaskContext[S]) -> None:
    assert len(error.message) <= MAX_MESSAGE_LENGTH  # the handler sees the cut message too
    ctx.terminate("gave up")


def flush_body(ctx: djobs.DebounceContext[S]) -> None:
    raise loud_failure()


def failing_step() -> None:
    raise loud_failure()


async def workflow_body(i: S, ctx: djobs.WorkflowContext) -> str:
    await ctx.step("fails", failing_step)
    return "never"


once = djobs.Retry(max_attempts=1)
job = djobs.Job.make("loud-job", params=S, execute=job_body, retry=once)
continuous = djobs.Continuous.make(
    "loud-continuous",
    state=S,
    schedule=djobs.every("1 hour"),
    execute=continuous_body,
    retry=once,
    on_exhausted="dead_letter",
)
task = djobs.Task.make(
    "loud-task",
    state=S,
    event=S,
    on_event=task_event,
    execute=task_body,
    on_error=task_error,
    retry=once,
    on_exhausted="dead_letter",
)
debounce = djobs.Debounce.make("loud-debounce", event=S, flush_after="1 second", execute=flush_body, retry=once)
workflow = djobs.Workflow.make("loud-workflow", input=S, result=str, execute=workflow_body, retry=once)


def bounded(message: str) -> None:
    assert len(message) <= MAX_MESSAGE_LENGTH, len(message)
    assert message.endswith(" more characters cut]"), message[-60:]
    assert "xxxx" in message


@pytest.mark.trio
async def test_every_recorded_error_is_cut_to_the_limit_with_a_marker(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="djobs")
    async with open_test_engine([job, continuous, task, debounce, workflow]) as engine:
        client = engine.client
        run = success(await client.job(job).now(S()))
        assert run.error is not None
        bounded(run.error.message)
        job_id = success(await client.job(job).later(S()))
        success(await client.continuous(continuous).start(id="c", input=S()))
        success(await client.task(task).send(id="t", event=S()))
        success(await client.debounce(debounce).add(id="d", event=S()))
        success(await client.workflow(workflow).start(id="w", input=S()))
        await trio.sleep(60)
        await engine.wait_idle()

        info = success(await client.jobs.status(job_id))
        assert info.status == "failed" and info.error is not None
        bounded(info.error.message)
        letters = success(await client.dead_letters.list())
        assert {letter.kind for letter in letters} >= {"continuous", "task", "debounce"}
        for letter in letters:
            assert letter.error is not None
            bounded(letter.error.message)
        status = success(await client.workflow(workflow).status("w"))
        assert status.error is not None
        assert len(status.error["message"]) <= MAX_MESSAGE_LENGTH
        for step in status.steps:
            if step.error is not None:
                bounded(step.error["message"])
        ended = await client.workflow(workflow).result("w")
        assert len(djobs.testing.failure(ended).message) <= MAX_MESSAGE_LENGTH

        for event in engine.tracker.events:
            error: Any = event.data.get("error")
            if isinstance(error, dict):
                assert len(error["message"]) <= MAX_MESSAGE_LENGTH
            reason = event.data.get("reason")
            if isinstance(reason, str):
                assert len(reason) <= MAX_MESSAGE_LENGTH
    longest = max(len(record.getMessage()) for record in caplog.records)
    assert longest <= MAX_MESSAGE_LENGTH + 1_000  # the line's own words around the message


@given(st.integers(min_value=0, max_value=3 * MAX_MESSAGE_LENGTH))
def test_a_message_is_kept_whole_up_to_the_limit_and_cut_with_a_true_count_beyond(length: int) -> None:
    message = "é" * length
    kept = capped_message(message)
    assert len(kept) <= MAX_MESSAGE_LENGTH
    if length <= MAX_MESSAGE_LENGTH:
        assert kept == message
        assert djobs.ExecutionError(message).message == message
    else:
        head, _, marker = kept.partition("… [")
        assert marker == f"{length - len(head):,} more characters cut]"
        assert djobs.ExecutionError(message).message == kept
        assert djobs.ValidationError(message).message == kept


def nul_body(p: S, ctx: djobs.JobContext) -> None:
    raise ValueError("\x00" * MAX_MESSAGE_LENGTH)  # each NUL is stored as the four characters \x00


nul_job = djobs.Job.make("nul-job", params=S, execute=nul_body, retry=once)


@pytest.mark.trio
async def test_a_message_whose_escapes_lengthen_it_is_stored_within_the_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_engine([nul_job], storage=djobs.sqlite(":memory:")) as engine:
        job_id = success(await engine.client.job(nul_job).later(S()))
        await engine.wait_idle()
        info = success(await engine.client.jobs.status(job_id))
        assert info.error is not None
        assert len(info.error.message) <= MAX_MESSAGE_LENGTH
        assert "\\x00\\x00" in info.error.message  # the NULs, escaped


def test_a_wrapped_cut_message_counts_every_character_cut() -> None:
    """RetryExhaustedError around a cut message: N is the characters cut from the whole
    ("gave up after 1 attempt(s): " + 100,000), not only the few the wrapper cut again."""
    from djobs._errors import RetryExhaustedError

    inner = djobs.JobError("y" * 100_000)
    outer = RetryExhaustedError(1, inner)
    for error, whole in ((inner, 100_000), (outer, len("gave up after 1 attempt(s): ") + 100_000)):
        head, _, tail = error.message.rpartition("… [")
        assert len(error.message) <= MAX_MESSAGE_LENGTH
        assert tail.endswith(" more characters cut]")
        assert len(head) + int(tail.split(" ")[0].replace(",", "")) == whole
