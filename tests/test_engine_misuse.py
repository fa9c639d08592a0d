"""An engine used past its block, or its block entered twice: a clear answer, not a crash from inside."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio

import djobs
from djobs.testing import open_test_engine, success


class Item(msgspec.Struct):
    name: str = ""


job = djobs.Job.make("job", params=Item, execute=lambda params, ctx: None)
watcher = djobs.Continuous.make("watcher", state=Item, schedule=djobs.every("1 hour"), execute=lambda ctx: None)


def layers(kind: str, tmp_path: Any) -> dict[str, Any]:
    return {"storage": djobs.sqlite(str(tmp_path / "jobs.db"))} if kind == "sqlite" else {}


@pytest.mark.trio
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_wait_idle_after_the_engine_closed_returns(
    kind: str, tmp_path: Any, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_test_engine([job, watcher], **layers(kind, tmp_path)) as engine:
        assert success(await engine.client.continuous(watcher).start(id="w", input=Item()))
        assert success(await engine.client.job(job).later(Item()))
    await engine.wait_idle()  # closed: nothing can start, so it is idle; it raised StorageError


@pytest.mark.trio
async def test_wait_idle_while_the_engine_closes_returns(autojump_clock: trio.testing.MockClock) -> None:
    async def slow(ctx: djobs.ContinuousContext[Item]) -> None:
        await trio.sleep(5)

    sleeper = djobs.Continuous.make("sleeper", state=Item, schedule=djobs.every("1 hour"), execute=slow)
    waited = trio.Event()
    async with trio.open_nursery() as nursery, open_test_engine([sleeper]) as engine:
        assert success(await engine.client.continuous(sleeper).start(id="s", input=Item()))
        await engine.client.continuous(sleeper).trigger("s")

        async def wait() -> None:
            await engine.wait_idle()
            waited.set()

        nursery.start_soon(wait)
    with trio.fail_after(60):
        await waited.wait()


@pytest.mark.trio
@pytest.mark.parametrize("opener", ["open_engine", "open_test_engine"])
async def test_entering_one_open_engine_twice_is_an_invalid_state_error(opener: str, tmp_path: Any) -> None:
    if opener == "open_engine":
        opened: Any = djobs.open_engine([job], storage=djobs.sqlite(str(tmp_path / "jobs.db")))
    else:
        opened = open_test_engine([job])
    async with opened as engine:
        assert success(await engine.client.job(job).later(Item()))
        with pytest.raises(djobs.InvalidStateError, match=f"{opener}.*entered already"):
            async with opened:
                pass  # pragma: no cover
        # The first block goes on unharmed.
        assert success(await engine.client.job(job).later(Item()))
    with pytest.raises(djobs.InvalidStateError, match="entered already"):
        async with opened:
            pass  # pragma: no cover
