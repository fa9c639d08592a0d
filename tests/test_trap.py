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

from djobs._trap import RUN_CONTEXT, WOKEN, WaitTaskRescheduled, shared_trap, wakes_inline


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


class _SharedPark(_Park):
    """Awaited, parks its task on one trap shared by every `_SharedPark` of `fields`' trap."""

    def __init__(self, trap: WaitTaskRescheduled, fields: dict[str, Any]) -> None:
        super().__init__()
        self.trap, self.fields = trap, fields

    def __await__(self) -> Generator[Any, Any, str]:
        self.task = RUN_CONTEXT.task
        self.fields["abort_func"] = self.abort  # read by Trio in the step that yields the trap
        woken = yield self.trap
        if woken is not WOKEN:
            woken.unwrap()
        return "woken"


@pytest.mark.trio
async def test_tasks_park_on_one_shared_trap_each_with_its_own_abort() -> None:
    trap, fields = shared_trap()
    parks = [_SharedPark(trap, fields) for _ in range(3)]
    got: dict[int, str] = {}
    async with trio.open_nursery() as nursery:
        scopes = []
        for i, park in enumerate(parks):
            scope = trio.CancelScope()
            scopes.append(scope)

            async def parked(i: int = i, park: _SharedPark = park, scope: trio.CancelScope = scope) -> None:
                with scope:
                    got[i] = await park

            nursery.start_soon(parked)
            await trio.testing.wait_all_tasks_blocked()
        scopes[0].cancel()  # the first park's abort runs, though the trap names the last's now
        await trio.testing.wait_all_tasks_blocked()
        assert [p.aborted for p in parks] == [True, False, False]
        for park in parks[1:]:
            assert park.task is not None
            RUN_CONTEXT.runner.reschedule(park.task, WOKEN)
    assert got == {1: "woken", 2: "woken"}


class _HearsScheduled(trio.abc.Instrument):
    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        pass


def test_wake_ups_are_inline_unless_an_instrument_hears_each_task_scheduled() -> None:
    async def main() -> list[bool]:
        runner = RUN_CONTEXT.runner
        inline = [wakes_inline(runner)]
        instrument = _HearsScheduled()
        trio.lowlevel.add_instrument(instrument)
        inline.append(wakes_inline(runner))
        trio.lowlevel.remove_instrument(instrument)
        inline.append(wakes_inline(runner))
        return inline

    assert trio.run(main) == [True, False, True]
