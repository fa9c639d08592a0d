"""What importing and running djobs loads: no test framework in a production process.

``trio.testing`` imports pytest when pytest is installed (its ``RaisesGroup``), so a
process that imports djobs, opens an engine and runs a job must not import
``trio.testing``: djobs only needs to know whether the running clock is a
``MockClock``, and one can only be running once a test imported ``trio.testing``.
Each check runs in a fresh interpreter, since this one has pytest loaded already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from djobs._clock import current_mock_clock
from djobs.storage._common import resolve

ROOT = Path(__file__).resolve().parent.parent

#: Modules a production process should never load through djobs.
TEST_MODULES = ("pytest", "_pytest", "trio.testing", "hypothesis")

_REPORT = """
import json, sys
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("pytest", "_pytest", "hypothesis")
                        or m == "trio.testing" or m.startswith("trio.testing."))))
"""

_RUN_A_JOB = """
import sys
from pathlib import Path
import msgspec
import trio
import djobs

class Hello(msgspec.Struct):
    name: str

async def main() -> None:
    async def hello(params: Hello, ctx: djobs.JobContext) -> None:
        done.set()

    done = trio.Event()
    job = djobs.Job.make("hello", params=Hello, execute=hello)
    async with djobs.open_engine([job], storage=djobs.sqlite(Path(sys.argv[1]) / "jobs.db")) as engine:
        await engine.client.job(job).later(Hello("you"))
        with trio.fail_after(60):
            await done.wait()

trio.run(main)
"""


def _loaded_by(code: str, *args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", code + _REPORT, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


@pytest.mark.parametrize(
    "modules", ["djobs", "djobs.storage", "djobs.tracking", "djobs.cli", "djobs.dashboard", "djobs.metrics"]
)
def test_importing_djobs_loads_no_test_framework(modules: str) -> None:
    assert _loaded_by(f"import {modules}") == []


def test_an_engine_running_a_job_on_sqlite_loads_no_test_framework(tmp_path: Path) -> None:
    assert _loaded_by(_RUN_A_JOB, str(tmp_path)) == []


def test_the_check_sees_a_test_framework_when_one_is_loaded() -> None:
    # The probe itself can fail: a process that imports trio.testing reports it.
    assert "trio.testing" in _loaded_by("import djobs, trio.testing")


def test_a_mock_clock_is_found_only_while_it_runs() -> None:
    assert current_mock_clock() is None  # outside trio.run
    assert resolve("auto") == "own"
    seen: list[object] = []

    async def look() -> None:
        seen.append(current_mock_clock())
        seen.append(resolve("auto"))

    trio.run(look)
    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(look, clock=clock)
    assert seen == [None, "own", clock, "engine"]
