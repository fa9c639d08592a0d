"""A SIGKILLed engine process's claimed alarms fire as soon as an engine opens on its host.

The killed process (``tests/exited_process.py``) runs on the wall clock; the
engine that opens after it runs under a `MockClock` from the wall time of
its opening, so "at once" is a virtual second, not the five minutes of the
alarm lease.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
from exited_process import Batch, definitions

import djobs
from djobs.testing import open_test_engine, success

HELPER = Path(__file__).with_name("exited_process.py")


def wait_for(path: Path, child: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert child.poll() is None, f"the process exited: {child.communicate()[0].decode()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_processs_workflow_guard_and_debounce_flush_fire_at_once(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    child = subprocess.Popen(
        [sys.executable, str(HELPER), str(db), str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for(tmp_path / "step", child, "the workflow's step to run")
        wait_for(tmp_path / "flush", child, "the flush to run")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    flushed: list[list[int]] = []

    def flush(ctx: djobs.DebounceContext[Batch]) -> None:
        flushed.append(ctx.state.ks)

    workflow, debounce = definitions(lambda: 1, flush)

    async def reopen() -> None:
        async with open_test_engine([workflow, debounce], storage=djobs.sqlite(db), start=datetime.now(UTC)) as engine:
            await trio.sleep(1)
            # Both ran again within a second, not after the five minutes of their alarms' lease.
            assert success(await engine.client.workflow(workflow).status("w")).status == "completed"
            assert flushed == [[1]]

    trio.run(reopen, clock=trio.testing.MockClock(autojump_threshold=0))
