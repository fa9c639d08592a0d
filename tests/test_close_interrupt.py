"""A Ctrl-C that arrives while the engine closes: the close runs to its end, then it is raised.

Trio delivers a Ctrl-C to the main task at its next wait, shielded or not. The engine's close
waits there for the running handlers and jobs (shielded, for up to ``shutdown_grace``); the
interrupt used to cancel that wait's nursery, cutting the close short and leaving the engine's
shielded tasks running, so the host's exit waited for them past the grace: for the whole of a
long job, or for ever (a worker's idle loop: the process hung until SIGKILL). Now the close
runs to its end, and the `KeyboardInterrupt` is raised as itself after it, as Trio raises one
that arrived while a nursery waited for its tasks.
"""

from __future__ import annotations

import math
import signal

import msgspec
import pytest
import trio
import trio.testing

import djobs
from djobs.testing import open_test_engine, success


class Nap(msgspec.Struct):
    seconds: float


async def nap(params: Nap, ctx: djobs.JobContext) -> None:
    await trio.sleep(params.seconds)


napper = djobs.Job.make("nap", params=Nap, execute=nap)

#: Virtual seconds after which a close that never ends counts as hung (the test then fails, not hangs).
HUNG_AFTER = 10_000


async def ctrl_c_at(at: float) -> None:
    """A real SIGINT to this process at virtual time `at` (from a system task: Trio's handler
    then delivers it to the main task at its next wait, as it does a Ctrl-C at the terminal)."""
    await trio.sleep_until(at)
    signal.raise_signal(signal.SIGINT)


async def fail_if_hung() -> None:
    await trio.sleep_until(HUNG_AFTER)
    raise AssertionError(f"the engine's close was still running after {HUNG_AFTER} virtual seconds")


@pytest.mark.parametrize("signals", [1, 2])
def test_a_ctrl_c_during_the_close_is_raised_after_the_close_has_run_to_its_end(signals: int) -> None:
    seen: dict[str, float] = {}

    async def main() -> None:
        trio.lowlevel.spawn_system_task(fail_if_hung)
        start = trio.current_time()
        for n in range(signals):
            trio.lowlevel.spawn_system_task(ctrl_c_at, start + 3 + n)  # both within the 8-second grace
        try:
            with trio.move_on_after(1):  # the host leaves the block at 1 s: the close begins
                async with open_test_engine([napper], shutdown_grace="8 seconds") as engine:
                    success(await engine.client.job(napper).later(Nap(60)))
                    await trio.sleep(10)
        finally:
            seen["closed_after"] = trio.current_time() - start

    with pytest.raises(KeyboardInterrupt):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # The grace ran out (at 1 + 8 s), not the interrupt: the close was not cut short.
    assert seen["closed_after"] == pytest.approx(9, abs=0.5)


def _job_after_a_ctrl_c(*, host_leaves_at: float) -> djobs.JobInfo:
    """Queue a job whose body naps 60 s, send a Ctrl-C at 3 s while the host's block leaves at
    `host_leaves_at` (``math.inf``: it waits on), and the job as the next engine finds it."""
    storage = djobs.storage.memory()
    seen: dict[str, str] = {}

    async def main() -> None:
        trio.lowlevel.spawn_system_task(fail_if_hung)
        trio.lowlevel.spawn_system_task(ctrl_c_at, trio.current_time() + 3)
        with trio.move_on_after(host_leaves_at):
            async with open_test_engine([napper], storage=storage, shutdown_grace="8 seconds") as engine:
                seen["job"] = success(await engine.client.job(napper).later(Nap(60)))
                await trio.sleep(30)

    with pytest.raises(KeyboardInterrupt):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    async def look() -> djobs.JobInfo:
        async with open_test_engine([napper], storage=storage, worker=None) as engine:
            return success(await engine.client.jobs.status(seen["job"]))

    return trio.run(look, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_ctrl_c_during_the_close_still_hands_the_running_job_back() -> None:
    """What the close does after the grace (hand a cut-off job back) still happens."""
    info = _job_after_a_ctrl_c(host_leaves_at=1)  # the close begins at 1 s, the Ctrl-C comes during it
    assert (info.status, info.attempts) == ("pending", 0), info


@pytest.mark.parametrize("signals", [1, 2, 3])
@pytest.mark.parametrize("in_handler", [False, True])
def test_a_ctrl_c_during_the_close_keeps_the_error_the_block_raised(in_handler: bool, signals: int) -> None:
    """The interrupt is raised (a host's ``except KeyboardInterrupt`` still stops it), with the
    block's own error as its context, as Python chains an interrupt that lands in a ``finally``:
    the traceback shows both. Also when the host opened the engine while handling an error of its own."""

    async def block() -> None:
        for n in range(signals):  # the last one lands as the grace runs out, as the job is handed back
            trio.lowlevel.spawn_system_task(ctrl_c_at, trio.current_time() + 3 + 3 * n)
        async with open_test_engine([napper], shutdown_grace="8 seconds") as engine:
            success(await engine.client.job(napper).later(Nap(60)))
            await trio.sleep(1)
            raise LookupError("the block's own error")

    async def main() -> None:
        trio.lowlevel.spawn_system_task(fail_if_hung)
        if not in_handler:
            await block()
            return
        try:
            raise OSError("the host's error")
        except OSError:
            await block()

    with pytest.raises(KeyboardInterrupt) as caught:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    kept = caught.value.__context__
    assert isinstance(kept, LookupError) and str(kept) == "the block's own error", repr(kept)
    assert not caught.value.__suppress_context__
    if in_handler:
        assert isinstance(kept.__context__, OSError)


class SlowTracker:
    """A tracker whose close takes 5 seconds (within its 30), and says whether it ran to its end."""

    def __init__(self) -> None:
        self.closed = False

    def emit(self, event: djobs.TrackedEvent) -> None:
        pass

    async def aclose(self) -> None:
        await trio.sleep(5)
        self.closed = True


def test_a_ctrl_c_during_the_trackers_close_lets_it_run_to_its_end() -> None:
    tracker = SlowTracker()
    seen: dict[str, float] = {}

    async def main() -> None:
        trio.lowlevel.spawn_system_task(fail_if_hung)
        layers = djobs.Layers(storage=djobs.storage.memory(), tracker=tracker)
        start = trio.current_time()
        trio.lowlevel.spawn_system_task(ctrl_c_at, start + 3)
        try:
            with trio.move_on_after(1):
                async with djobs.open_engine([napper], layers=layers, shutdown_grace="1 second"):
                    await trio.sleep(10)
        finally:
            seen["closed_after"] = trio.current_time() - start

    with pytest.raises(KeyboardInterrupt):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert tracker.closed
    assert seen["closed_after"] == pytest.approx(6, abs=0.5)  # the block's 1 s, then the tracker's 5


def test_a_ctrl_c_while_a_job_runs_hands_it_back_uncounted() -> None:
    """A real Ctrl-C (Trio's delivery to the main task) while a job's body waits stops the host's
    block; the close cuts the run off and hands the row back, its attempt not counted: unlike a
    KeyboardInterrupt the body raises itself, a crash whose attempt counts (test_base_exceptions.py)."""
    info = _job_after_a_ctrl_c(host_leaves_at=math.inf)
    assert (info.status, info.attempts) == ("pending", 0), info
