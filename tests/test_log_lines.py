"""Text from callers in djobs's log lines: an instance id, a tenant id, a reason or an error message
holding a newline, another control character or a bidirectional override cannot forge a log line
or show one reversed (CWE-117). Such text is shown as the command line and the dashboard show it
(`printable`), on every stateful kind and every storage."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import msgspec
import pytest
import trio
import trio.testing
from postgres_support import STORAGE_KINDS, fresh_storage_layer

import djobs
import djobs.storage
from djobs.testing import open_test_engine, success

#: An id that, logged raw, ends its line and starts a well-formed one for another job; then shows
#: the rest of the line reversed (U+202E), with a C1 NEL and a line separator for good measure.
FORGED = "u1 run=1 attempt=1] ok\n[job=payments instance=acct-42 run=7 attempt=1] refund sent\u202e\x85\u2028"
SHOWN = "u1 run=1 attempt=1] ok␊[job=payments instance=acct-42 run=7 attempt=1] refund sent<U+202E><U+0085><U+2028>"
#: What no djobs log line may hold: line breaks (str.splitlines' set) and bidirectional controls.
BREAKING = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


class Count(msgspec.Struct):
    n: int = 0


class Ping(msgspec.Struct):
    pass


def boom(*_: object) -> None:
    raise RuntimeError("no\nway\u202e")


@pytest.fixture(params=STORAGE_KINDS)
def layer(request: pytest.FixtureRequest) -> Iterator[djobs.storage.StorageLayer]:
    with fresh_storage_layer(request.param) as made:
        yield made


def lines_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("djobs")]


@pytest.mark.trio
async def test_caller_text_in_log_lines_is_shown_not_obeyed(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="djobs")

    async def step_fails(_: Count, ctx: djobs.WorkflowContext) -> None:
        await ctx.step("fails", boom)

    def on_event(event: Ping, ctx: djobs.TaskEventContext[Count]) -> Count:
        ctx.schedule("1 minute")
        return Count()

    def ends(ctx: djobs.ContinuousContext[Count]) -> None:
        ctx.terminate(reason="done\n[job=x] forged\u202e")

    continuous = djobs.Continuous.make("c", state=Count, schedule=djobs.every("1 hour"), execute=boom, logging=True)
    ending = djobs.Continuous.make("e", state=Count, schedule=djobs.every("1 hour"), execute=ends, logging=True)
    debounce = djobs.Debounce.make(
        "d", event=Ping, state=Count, on_event=lambda ctx: Count(), execute=boom, flush_after="1 minute", logging=True
    )
    task = djobs.Task.make("t", state=Count, event=Ping, on_event=on_event, execute=boom, logging=True)
    workflow = djobs.Workflow.make("w", input=Count, result=type(None), execute=step_fails, logging=True)
    async with open_test_engine([continuous, ending, debounce, task, workflow], storage=layer) as engine:
        client = engine.client.for_tenant("acme\u202e\n")
        success(await client.continuous(continuous).start(id=FORGED, input=Count()))
        success(await client.debounce(debounce).add(id=FORGED, event=Ping()))
        success(await client.task(task).send(id=FORGED, event=Ping()))
        success(await client.continuous(ending).start(id=FORGED, input=Count()))
        success(await client.workflow(workflow).start(id=FORGED, input=Count()))
        await trio.sleep(120)
    lines = lines_of(caplog)
    forged = [line for line in lines if any(c in line for c in BREAKING)]
    assert forged == []
    for kind in ("c", "e", "d", "t", "w"):  # each kind's run lines carry the id, shown
        assert any(line.startswith(f"[job={kind} instance={SHOWN}") for line in lines), (kind, lines)
    assert any("no␊way<U+202E>" in line for line in lines)  # a body's error message
    assert any("done␊[job=x] forged<U+202E>" in line for line in lines)  # a body's reason


def test_the_command_line_and_the_dashboard_show_bidirectional_controls_as_they_log_them() -> None:
    from djobs.cli._actions import key_candidates
    from djobs.cli._output import fields, table

    key = "task:t:acme\x1f" + "invoice-\u202egpj.exe\x85"
    shown = "task:t:acme␟invoice-<U+202E>gpj.exe<U+0085>"
    assert table(["KEY"], [[key]]).splitlines()[1] == shown
    assert fields([("tenant", "acme\u2066x\n")]) == "tenant  acme<U+2066>x␊"
    assert key in key_candidates(shown)  # what was shown names the key again


@pytest.mark.trio
async def test_a_key_in_the_engines_own_lines_is_shown_not_obeyed(
    autojump_clock: trio.testing.MockClock, layer: djobs.storage.StorageLayer, caplog: pytest.LogCaptureFixture
) -> None:
    # An instance's key (kind:name:tenant + U+001F + id) in a line of the engine's own: here the
    # wait for an instance lease another live engine holds.
    caplog.set_level(logging.DEBUG, logger="djobs")
    job = djobs.Continuous.make("c", state=Count, schedule=djobs.every("1 hour"), execute=lambda ctx: None)
    async with open_test_engine([job], storage=layer) as engine:
        client = engine.client.for_tenant("acme").continuous(job)
        success(await client.start(id=FORGED, input=Count()))
        await engine.wait_idle()
        await trio.sleep(1)  # the engine lets the lease go
        key = f"continuous:c:acme\x1f{FORGED}"
        assert await engine.storage.acquire_instance_lease(key, "other-host:1:0badc0de", engine.clock.now_ms(), 5000)
        success(await client.trigger(FORGED))
    lines = lines_of(caplog)
    assert [line for line in lines if any(c in line for c in BREAKING)] == []
    assert any(f"waiting for the lease of continuous:c:acme␟{SHOWN}, held by" in line for line in lines), lines
