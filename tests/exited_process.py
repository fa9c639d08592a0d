"""One engine process for ``test_exited_process.py``: start runs that never end, then wait to be killed.

Usage: ``python tests/exited_process.py DB OUT_DIR``

It starts a workflow whose first step never returns and adds an event to a
Debounce instance whose flush never returns; each body touches a file in
``OUT_DIR`` (``step``, ``flush``) once it runs. Killed then, the process leaves
the workflow's guard alarm and the flush's claimed alarm behind, with their
instances' leases. The wall clock and real sleeps: this is a real process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec
import trio

import djobs
from djobs.testing import success


class Input(msgspec.Struct):
    n: int = 0


class Event(msgspec.Struct):
    k: int


class Batch(msgspec.Struct):
    ks: list[int]


def definitions(
    step: object, flush: object
) -> tuple[djobs.Workflow[Input, int, object], djobs.Debounce[Event, Batch, object]]:
    """The workflow ``steps`` and the Debounce ``batched``, with the given step and flush bodies."""

    async def body(params: Input, ctx: djobs.WorkflowContext) -> int:
        return await ctx.step("first", step, result=int)  # type: ignore[arg-type]

    def add(ctx: djobs.DebounceEventContext[Event, Batch]) -> Batch:
        return Batch([*(ctx.state.ks if ctx.state else []), ctx.event.k])

    workflow = djobs.Workflow.make("steps", input=Input, result=int, execute=body)
    debounce = djobs.Debounce.make(
        "batched",
        event=Event,
        state=Batch,
        on_event=add,
        execute=flush,
        flush_after="200 ms",  # type: ignore[arg-type]
    )
    return workflow, debounce


async def main(db: str, out: Path) -> None:
    async def step() -> int:
        (out / "step").touch()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def flush(ctx: djobs.DebounceContext[Batch]) -> None:
        (out / "flush").touch()
        await trio.sleep_forever()

    workflow, debounce = definitions(step, flush)
    async with djobs.open_engine([workflow, debounce], storage=djobs.sqlite(db)) as engine:
        success(await engine.client.workflow(workflow).start(id="w", input=Input()))
        success(await engine.client.debounce(debounce).add(id="d", event=Event(1)))
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], Path(sys.argv[2]))
