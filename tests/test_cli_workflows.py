"""``djobs workflows list|show`` against a database a test engine built."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

import djobs
from djobs.cli import ExitCode, main
from djobs.testing import open_test_engine

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Parcel(msgspec.Struct):
    ref: str


def pack(ref: str) -> str:
    return f"box-{ref}"


def weigh(ref: str) -> int:
    raise ValueError("scale offline")


async def ship(parcel: Parcel, ctx: djobs.WorkflowContext) -> str:
    box = await ctx.step("pack", pack, parcel.ref)
    with contextlib.suppress(djobs.StepFailedError):  # weighing is optional
        await ctx.step("weigh", weigh, parcel.ref)
    await ctx.sleep("2 days")
    return box


shipping = djobs.Workflow.make("shipping", input=Parcel, result=str, execute=ship)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "wf.db"

    async def build() -> None:
        async with open_test_engine([shipping], storage=djobs.sqlite(path), start=T0) as engine:
            await engine.client.workflow(shipping).start(id="p-1", input=Parcel("p-1"))
            await engine.client.for_tenant("acme").workflow(shipping).start(id="p-2", input=Parcel("p-2"))
            await trio.sleep(1)
            await engine.wait_idle()

    trio.run(build, clock=trio.testing.MockClock(autojump_threshold=0))
    return path


def test_workflows_list_shows_each_with_its_status_and_steps(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    assert main(["workflows", "list", "--db", str(db), "--json"]) == ExitCode.OK
    listed = json.loads(capsys.readouterr().out)
    assert [(w["id"], w["tenant_id"], w["status"], w["steps_finished"]) for w in listed] == [
        ("p-2", "acme", "sleeping", 2),  # key order: a tenant's keys sort before plain ids
        ("p-1", None, "sleeping", 2),
    ]
    assert main(["workflows", "list", "--db", str(db)]) == ExitCode.OK
    out = capsys.readouterr().out
    assert "shipping" in out and "sleeping" in out and "acme" in out


def test_workflows_show_lists_every_step(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    assert main(["workflows", "show", "shipping", "p-1", "--db", str(db), "--json"]) == ExitCode.OK
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "sleeping"
    assert shown["wake_at"] == (T0 + timedelta(days=2)).isoformat().replace("+00:00", "Z")
    assert [(s["kind"], s["name"], s["done"]) for s in shown["steps"]] == [
        ("step", "pack", True),
        ("step", "weigh", True),
        ("sleep", "sleep", False),
    ]
    assert main(["workflows", "show", "shipping", "p-1", "--db", str(db)]) == ExitCode.OK
    out = capsys.readouterr().out
    assert "failed: ValueError: scale offline" in out and "pending" in out
    numbered = [line.split()[:3] for line in out.splitlines() if line[:1].isdigit()]
    assert numbered == [["1", "step", "pack"], ["2", "step", "weigh"], ["3", "sleep", "sleep"]]  # as the dashboard
    assert main(["workflows", "show", "shipping", "p-2", "--tenant", "acme", "--db", str(db)]) == ExitCode.OK
    capsys.readouterr()
    assert main(["workflows", "show", "shipping", "nope", "--db", str(db)]) == ExitCode.NOT_FOUND
    assert "no workflow 'shipping' with id 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["1", "2"])
@pytest.mark.parametrize("command", [("workflows", "list"), ("instances", "list")])
def test_paging_by_the_printed_after_lists_each_workflow_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: tuple[str, ...], limit: str
) -> None:
    """The next-page hint, typed back into a shell, goes on from the last row shown, tenants'
    rows too: ``workflows list`` printed a key's \\x1f as Python's ``'\\x1f'`` escape, which a
    shell passes as four characters, so the next page started past the rest of that tenant's
    rows and never showed them. Python's repr also doubled a backslash (which a shell's quotes
    keep: the next page began with the same workflow again, for ever with ``--limit 1``) and
    escaped a quote when an id held both kinds."""
    import shlex

    path = tmp_path / "tenants.db"
    ids = ("a", "b", "c", "C:\\a", "C:\\b", 'it\'s "q"')
    started = {(tenant, i) for tenant in (None, "acme", "acme b") for i in ids}

    async def build() -> None:
        async with open_test_engine([shipping], storage=djobs.sqlite(path), start=T0) as engine:
            for tenant, instance_id in started:
                client = engine.client if tenant is None else engine.client.for_tenant(tenant)
                await client.workflow(shipping).start(id=instance_id, input=Parcel(instance_id))
            await engine.wait_idle()

    trio.run(build, clock=trio.testing.MockClock(autojump_threshold=0))
    seen: list[tuple[str | None, str]] = []
    after: list[str] = []
    for _ in range(len(started) + 1):
        assert main([*command, "--db", str(path), "--limit", limit, *after]) == ExitCode.OK
        err = capsys.readouterr().err
        assert main([*command, "--db", str(path), "--limit", limit, *after, "--json"]) == ExitCode.OK
        rows = json.loads(capsys.readouterr().out)
        seen += [(row["tenant_id"], row.get("id") or row["instance_id"]) for row in rows]
        if "see more with" not in err:
            break
        after = shlex.split(err.split("see more with ", 1)[1])  # as a shell would pass it
    assert sorted(seen, key=str) == sorted(started, key=str)
