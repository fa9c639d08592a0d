"""Reading a verb's result in application code: `djobs.unwrap_or_raise`, and what mypy says about results.

The type-level cases run mypy (with this project's configuration: strict, the
``returns`` plugin, ``unused-awaitable``) over small programs that must pass
or must fail with one named error code.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing
from mypy import api as mypy_api
from returns.io import IOFailure, IOSuccess
from returns.result import Failure, Success

import djobs
from djobs.testing import open_test_engine

ROOT = Path(__file__).resolve().parent.parent


class Ping(msgspec.Struct):
    text: str


ping = djobs.Job.make("ping", params=Ping, execute=lambda p, c: None)


def test_unwrap_or_raise_gives_the_value_of_a_success() -> None:
    assert djobs.unwrap_or_raise(IOSuccess(3)) == 3
    assert djobs.unwrap_or_raise(Success("x")) == "x"
    assert djobs.unwrap_or_raise(IOSuccess(None)) is None


def test_unwrap_or_raise_raises_the_failure_itself() -> None:
    error = djobs.InstanceNotFoundError("job", "j-1")
    with pytest.raises(djobs.InstanceNotFoundError) as raised:
        djobs.unwrap_or_raise(IOFailure(error))
    assert raised.value is error and raised.value.tag == "instance_not_found"
    with pytest.raises(djobs.ValidationError, match="bad id"):
        djobs.unwrap_or_raise(Failure(djobs.ValidationError("bad id")))


def test_unwrap_or_raise_refuses_a_failure_that_is_not_an_exception() -> None:
    with pytest.raises(TypeError, match="'boom'"):
        djobs.unwrap_or_raise(IOFailure("boom"))  # type: ignore[type-var]


@pytest.mark.trio
async def test_unwrap_or_raise_on_real_verbs(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_engine([ping]) as engine:
        job_id = djobs.unwrap_or_raise(await engine.client.job(ping).later(Ping("hi")))
        await engine.wait_idle()
        assert djobs.unwrap_or_raise(await engine.client.jobs.status(job_id)).status == "completed"
        with pytest.raises(djobs.InstanceNotFoundError):
            djobs.unwrap_or_raise(await engine.client.jobs.status("0190a000-0000-7000-8000-000000000000"))
        with pytest.raises(djobs.JobNotFoundError):
            djobs.unwrap_or_raise(await engine.client.job("nope").later({}))


# -- type level ----------------------------------------------------------------------------------

_PRELUDE = """\
import msgspec
from returns.result import Result

import djobs


class Ping(msgspec.Struct):
    text: str

"""

#: name -> (program, the error codes mypy must report for it, in order).
CASES: dict[str, tuple[str, list[str]]] = {
    "reads_values": (
        """
        async def read(client: djobs.Client, job_id: str) -> djobs.JobInfo:
            return djobs.unwrap_or_raise(await client.jobs.status(job_id))


        def plain(result: Result[int, djobs.ValidationError]) -> int:
            return djobs.unwrap_or_raise(result)


        async def enqueue(client: djobs.Client, job: djobs.Job[Ping, None]) -> str:
            return djobs.unwrap_or_raise(await client.job(job).later(Ping("x")))
        """,
        [],
    ),
    "value_type_is_kept": (
        """
        async def read(client: djobs.Client, job_id: str) -> str:
            return djobs.unwrap_or_raise(await client.jobs.status(job_id))
        """,
        ["return-value"],
    ),
    "failure_must_be_an_exception": (
        """
        def plain(result: Result[int, str]) -> int:
            return djobs.unwrap_or_raise(result)
        """,
        ["type-var"],
    ),
    "verb_never_awaited": (
        """
        async def forget(client: djobs.Client, job: djobs.Job[Ping, None]) -> None:
            client.job(job).later(Ping("x"))
        """,
        ["unused-awaitable"],
    ),
}


def test_mypy_types_results_and_catches_a_verb_never_awaited(tmp_path: Path) -> None:
    files = {}
    for name, (body, _) in CASES.items():
        path = tmp_path / f"case_{name}.py"
        path.write_text(_PRELUDE + textwrap.dedent(body), encoding="utf-8")
        files[name] = path
    out, err, _ = mypy_api.run(
        [
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "--no-error-summary",
            *map(str, files.values()),
        ]
    )
    assert not err, err
    reported: dict[str, list[str]] = {name: [] for name in CASES}
    for line in out.splitlines():
        match = re.match(r"^.*case_(\w+)\.py:\d+: error: .*\[([\w-]+)\]$", line)
        if match:
            reported[match[1]].append(match[2])
    assert reported == {name: codes for name, (_, codes) in CASES.items()}, out
