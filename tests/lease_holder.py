"""One engine process for ``test_lease_holders.py``: run a job that never ends, then wait.

Usage: ``python tests/lease_holder.py DB OUT``

It enqueues a ``hold`` job and runs it; the body writes the engine's id (the
job lease's owner) to ``OUT`` once it runs, then sleeps until the process is
killed. The wall clock and real sleeps: this is a real process.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import msgspec
import trio

import djobs


class Hold(msgspec.Struct):
    n: int = 0


def definition(body: Any) -> djobs.Job[Hold, None, object]:
    """The job ``hold``, with the given body."""
    job: djobs.Job[Hold, None, object] = djobs.Job.make("hold", params=Hold, execute=body)
    return job


async def main(db: str, out: Path) -> None:
    owner: list[str] = []

    async def body(params: Hold, ctx: djobs.JobContext) -> None:
        out.with_suffix(".tmp").write_text(owner[0])
        out.with_suffix(".tmp").rename(out)
        await trio.sleep_forever()

    job = definition(body)
    async with djobs.open_engine([job], storage=djobs.sqlite(db)) as engine:
        owner.append(str(engine.worker_id))
        await engine.client.job(job).later(Hold(1))
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], Path(sys.argv[2]))
