"""A lease holder is judged exited only when it shares our process table: a live engine
process in another PID namespace (a container sharing the host's name) keeps its job, and a
killed one not yet reaped (a zombie) gives it up at once.

The holder (``tests/lease_holder.py``) is a real process on the wall clock; the engine that
opens after it runs under a `MockClock` from the wall time of its opening.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
from lease_holder import Hold, definition

import djobs
from djobs._ids import proc_stat
from djobs._leases import dead_local_owner
from djobs._worker import FREE_EXITED_EVERY_MS
from djobs.testing import open_test_engine

HELPER = Path(__file__).with_name("lease_holder.py")


def holding(child: subprocess.Popen[bytes], out: Path) -> str:
    """Wait until `child` runs its job; its engine's id (the job lease's owner)."""
    deadline = time.monotonic() + 60
    while not out.exists():
        assert child.poll() is None, f"the holder exited: {child.communicate()[0].decode()}"
        assert time.monotonic() < deadline, "timed out waiting for the holder's job to run"
        time.sleep(0.02)
    return out.read_text()


def runs_after_an_engine_opens(db: Path) -> list[int]:
    """The ``hold`` jobs an engine of this process runs within a reclaim period of opening on `db`."""
    runs: list[int] = []

    def body(params: Hold, ctx: djobs.JobContext) -> None:
        runs.append(params.n)

    async def reopen() -> None:
        start = datetime.now(UTC)
        async with open_test_engine(
            [definition(body)], storage=djobs.sqlite(db), start=start, worker=djobs.WorkerOptions()
        ):
            await trio.sleep(FREE_EXITED_EVERY_MS / 1000 + 2)  # past the worker's look for exited holders

    trio.run(reopen, clock=trio.testing.MockClock(autojump_threshold=0))
    return runs


def unshare_works() -> bool:
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-pf", "--mount-proc", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not unshare_works(), reason="needs Linux and `unshare -pf --mount-proc` (root or user namespaces)")
def test_a_live_holder_in_another_pid_namespace_keeps_its_job(tmp_path: Path) -> None:
    db, out = tmp_path / "jobs.db", tmp_path / "owner"
    # A pid free in our process table: the holder gets it in its own namespace (the pid
    # before it written to ns_last_pid), so "no such process here" cannot tell it is alive.
    free = subprocess.Popen([sys.executable, "-c", "pass"])
    free.wait()
    script = 'echo $(($1 - 1)) > /proc/sys/kernel/ns_last_pid; "$0" "$2" "$3" "$4"; exit $?'
    command = [sys.executable, str(HELPER), str(db), str(out)]
    child = subprocess.Popen(
        ["unshare", "-pf", "--mount-proc", "sh", "-c", script, command[0], str(free.pid), *command[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        owner = holding(child, out)
        pid = int(owner.split(":")[1])
        assert pid == free.pid
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # no such process in our table: it lives in another
        assert not dead_local_owner(owner)
        assert runs_after_an_engine_opens(db) == []  # its job's lease is left alone: it runs once
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(sys.platform != "linux", reason="a zombie is told from /proc")
def test_a_killed_holder_not_yet_reaped_gives_its_job_up_at_once(tmp_path: Path) -> None:
    db, out = tmp_path / "jobs.db", tmp_path / "owner"
    child = subprocess.Popen(
        [sys.executable, str(HELPER), str(db), str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        owner = holding(child, out)
        os.kill(child.pid, signal.SIGKILL)  # not waited for: a zombie, which os.kill(pid, 0) finds
        while (proc_stat(child.pid) or ("?", 0))[0] != "Z":
            time.sleep(0.01)
        assert dead_local_owner(owner)
        assert runs_after_an_engine_opens(db) == [1]  # within a minute, not the job's 5-minute lease
    finally:
        child.kill()
        child.wait()
