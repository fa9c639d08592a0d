"""Trio's park and wake-up in its own pieces (`djobs._trap`), as a Debounce add uses them.

The pieces are Trio's internals: these tests fail first should a Trio release
the project allows move or change one.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
import trio
import trio.testing

from djobs._trap import RUN_CONTEXT, WOKEN, WaitTaskRescheduled


class _Park:
    """Awaited, parks its task on Trio's trap until `wake` (or a cancel)."""

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.aborted = False

    def abort(self, _: object) -> trio.lowlevel.Abort:
        self.aborted = True
        self.task = None
        return trio.lowlevel.Abort.SUCCEEDED

    def __await__(self) -> Generator[Any, Any, str]:
        self.task = RUN_CONTEXT.task
        woken = yield WaitTaskRescheduled(self.abort)
        if woken is not WOKEN:
            woken.unwrap()
        return "woken"

    def wake(self) -> None:
        assert self.task is not None
        RUN_CONTEXT.runner.reschedule(self.task, WOKEN)


def test_the_run_context_is_the_running_task_and_its_runner() -> None:
    async def main() -> None:
        assert RUN_CONTEXT.task is trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()  # made when first asked for (an engine asks at its start)
        assert RUN_CONTEXT.runner.trio_token is token

    trio.run(main)
    with pytest.raises(AttributeError):
        _ = RUN_CONTEXT.runner  # outside a run


@pytest.mark.trio
async def test_a_parked_task_wakes_with_the_shared_outcome_again_and_again() -> None:
    got: list[str] = []
    for _ in range(3):  # one `WOKEN` serves every wake-up: it is never unwrapped
        park = _Park()
        async with trio.open_nursery() as nursery:

            async def parked(p: _Park = park) -> None:
                got.append(await p)

            nursery.start_soon(parked)
            await trio.testing.wait_all_tasks_blocked()
            park.wake()
    assert got == ["woken"] * 3


@pytest.mark.trio
async def test_a_cancel_ends_the_park_through_its_abort() -> None:
    park = _Park()
    with trio.move_on_after(1) as scope:
        await park
    assert scope.cancelled_caught and park.aborted
