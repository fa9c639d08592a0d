"""The quick start's token refresher keeps the user's refresh token through an outage.

The page's program runs as written in ``test_docs.py``; this test takes its
definition (retry policy and ``on_exhausted``) and gives it a token endpoint
that is down long enough to spend every attempt of one run: the refresh token
must survive as a dead letter and come back with ``dead_letters.retry``, as
the quick start says. With the definition's default, ``"terminate"``, the
instance and its token would be deleted.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

import djobs
from djobs.testing import open_test_engine, success

QUICKSTART = Path(__file__).resolve().parent.parent / "docs" / "quickstart.md"


def quickstart_namespace(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The quick start's first python block, run as a module without its closing ``trio.run(main)``."""
    block = re.search(r"```python\n(.*?)```", QUICKSTART.read_text(encoding="utf-8"), re.S)
    assert block is not None
    source = block[1].replace("\ntrio.run(main)\n", "\n")
    module = types.ModuleType("quickstart")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # msgspec resolves the structs' annotations there
    exec(compile(source, str(QUICKSTART), "exec"), module.__dict__)
    return module.__dict__


@pytest.mark.trio
async def test_a_short_outage_leaves_the_quick_starts_refresh_token_as_a_dead_letter(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = quickstart_namespace(monkeypatch)
    shown: djobs.Continuous[Any, Any] = page["token_refresher"]
    tokens = page["Tokens"]
    up = True

    async def refresh(ctx: djobs.ContinuousContext[Any]) -> None:
        if not up:
            raise ConnectionError("token endpoint unreachable")
        ctx.set_state(msgspec.structs.replace(ctx.state, access_token="at_" + ctx.state.refresh_token))

    refresher = djobs.Continuous.make(
        shown.name,
        state=shown.state,
        schedule=shown.schedule,
        retry=shown.retry,
        on_exhausted=shown.on_exhausted,
        execute=refresh,
    )
    async with open_test_engine([refresher]) as engine:
        client = engine.client.continuous(refresher)
        success(await client.start(id="user-123", input=tokens("", "rt_abc")))
        await trio.sleep(60)
        up = False
        await trio.sleep(30 * 60 + 60)  # every attempt of the 30-minute run fails
        up = True
        assert success(await client.status("user-123")).status == "not_found"  # the instance ended; its state is kept
        (letter,) = success(await engine.client.dead_letters.list(kind="continuous"))
        success(await engine.client.dead_letters.retry(letter.id))
        await trio.sleep(1)
        state = success(await client.get_state("user-123")).state
    assert (state.refresh_token, state.access_token) == ("rt_abc", "at_rt_abc")
