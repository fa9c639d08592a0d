"""The djobs demo: every job kind working on ./djobs-demo.db, in real time.

Run it with ``make demo``. It prints what happens and ends by itself.
"""

from __future__ import annotations

import os
from datetime import datetime

import msgspec
import trio

import djobs
from djobs.testing import success

DB = "djobs-demo.db"


def say(text: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S.%f')[:-3]}] {text}", flush=True)


# -- Continuous: a heartbeat with state that survives a restart -------------------------


class Beat(msgspec.Struct):
    count: int = 0
    last_at: datetime | None = None


def beat(ctx: djobs.ContinuousContext[Beat]) -> None:
    ctx.set_state(Beat(ctx.state.count + 1, ctx.now()))
    say(f"  heartbeat {ctx.instance_id!r}: run {ctx.run_count}, beats so far {ctx.state.count}")


heartbeat = djobs.Continuous.make("heartbeat", state=Beat, schedule=djobs.every("1 second"), execute=beat)


async def continuous_demo() -> None:
    say("Continuous: start a heartbeat every second, then close the engine")
    async with djobs.open_engine([heartbeat], storage=djobs.sqlite(DB)) as engine:
        client = engine.client.continuous(heartbeat)
        started = success(await client.start(id="demo", input=Beat()))
        say(f"  started: {started}")
        await trio.sleep(2.5)
        before = success(await client.get_state("demo")).state.count
    say(f"  engine closed with {before} beats stored; opening a new engine on the same file")
    async with djobs.open_engine([heartbeat], storage=djobs.sqlite(DB)) as engine:
        client = engine.client.continuous(heartbeat)
        again = success(await client.start(id="demo", input=Beat()))
        say(f"  start again: created={again.created} (the instance survived the restart)")
        await trio.sleep(2.2)
        after = success(await client.get_state("demo")).state.count
        say(f"  beats now {after} (continued from {before})")
        assert after > before
        success(await client.terminate("demo", reason="demo over"))
        say(f"  terminated; status is now {success(await client.status('demo')).status!r}")


def remove_old_database() -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(DB + suffix):
            os.remove(DB + suffix)


async def main() -> None:
    remove_old_database()
    say(f"djobs demo on {DB}")
    await continuous_demo()
    say("demo finished")


if __name__ == "__main__":
    trio.run(main)
