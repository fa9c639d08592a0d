"""``djobs workflows list|show``: workflows and their step logs, read from a database file.

Kept in a module of its own: it opens the database as the other read
commands do (a SQLite file or a PostgreSQL DSN, never created, migrated or
written), and shows a
workflow with `describe_workflow`, the same view as a client's ``status``.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

import msgspec

from .._clock import Clock, to_epoch_ms
from ..kinds._common import instance_key
from ..kinds._workflow_log import KIND, describe_workflow
from ..storage._inspect import InstanceFilter
from ._actions import key_candidates
from ._exit import CommandError, ExitCode
from ._output import fields, next_page_hint, note, print_json, table, when, when_relative
from ._read import _open


def _ms(at: datetime | None) -> int | None:
    return None if at is None else to_epoch_ms(at)


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: list[argparse.ArgumentParser], limit: Any
) -> None:
    """Add ``workflows list`` and ``workflows show`` to the ``djobs`` parser."""
    group = commands.add_parser("workflows", help="list workflows or show one with its steps")
    group.set_defaults(run=None)
    sub = group.add_subparsers(title="commands", metavar="COMMAND", required=True)
    p = sub.add_parser("list", help="list workflows in key order", parents=common)
    p.set_defaults(run=workflows_list)
    p.add_argument("--name", help="only this workflow's instances")
    p.add_argument("--after", metavar="KEY", help="start after this key (the next page)")
    p.add_argument("--limit", type=limit, default=50, help="at most this many (default 50)")
    p = sub.add_parser("show", help="one workflow: status, wake-up, result or error, and every step", parents=common)
    p.set_defaults(run=workflows_show)
    p.add_argument("name", metavar="NAME", help="the workflow's name")
    p.add_argument("id", metavar="ID", help="the workflow's id")
    p.set_defaults(id_what="instance id")
    p.add_argument("--tenant", help="the tenant the workflow belongs to")


async def workflows_list(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs workflows list``: stored workflows in key order."""
    # A key as the next-page hint prints it (a control as its Control Picture), as instances list reads it.
    after = None if args.after is None else key_candidates(args.after)[-1]
    where = InstanceFilter(kind=KIND, name=args.name, after=after, limit=args.limit)
    async with _open(args) as db:
        views = await db.inspect.instances(where)
    described = [(v.record, describe_workflow(v.record, v.alarm)) for v in views]
    if args.json:
        print_json(
            [
                {"key": r.key, "name": r.name, "id": r.instance_id, "tenant_id": r.tenant_id} | msgspec.to_builtins(d)
                for r, d in described
            ]
        )
        return ExitCode.OK
    if not described:
        note("no workflows match")
        return ExitCode.OK
    rows = [
        [
            r.name,
            r.instance_id,
            r.tenant_id,
            d.status,
            d.steps_finished,
            d.current_step,
            when(_ms(d.wake_at)),
            when(r.updated_at),
        ]
        for r, d in described
    ]
    print(table(["NAME", "ID", "TENANT", "STATUS", "STEPS", "CURRENT", "WAKE", "UPDATED"], rows, right=[4]))
    if len(views) == args.limit:
        note(next_page_hint(args.limit, views[-1].record.key))
    return ExitCode.OK


async def workflows_show(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs workflows show NAME ID``: one workflow's status and step log."""
    now = clock.now_ms()
    key = instance_key(KIND, args.name, args.id, args.tenant)
    async with _open(args) as db:
        views = await db.inspect.instances(InstanceFilter(key=key, limit=1))
    if not views:
        raise CommandError(f"no workflow {args.name!r} with id {args.id!r} is stored", ExitCode.NOT_FOUND)
    record = views[0].record
    d = describe_workflow(record, views[0].alarm)
    if args.json:
        print_json({"key": key, "name": record.name, "id": record.instance_id} | msgspec.to_builtins(d))
        return ExitCode.OK
    error = None if d.error is None else f"{d.error['tag']}: {d.error['message']}"
    print(
        fields(
            [
                ("workflow", record.name),
                ("id", record.instance_id),
                ("tenant", record.tenant_id),
                ("status", d.status),
                ("steps finished", d.steps_finished),
                ("current", d.current_step),
                ("wakes", when_relative(_ms(d.wake_at), now)),
                ("runs", record.run_count),
                ("signals", record.event_count),
                ("error", error),
                ("created", when(record.created_at)),
                ("updated", when(record.updated_at)),
            ]
        )
    )
    if d.steps:
        rows = []
        for i, s in enumerate(d.steps, 1):
            if s.cancelled:
                outcome = "cancelled"
            elif s.error is not None:
                outcome = ("failed: " if s.done else "retrying: ") + s.error["message"]
            elif s.timed_out:
                outcome = "timed out"
            else:
                outcome = "done" if s.done else "pending"
            until = when(_ms(s.until)) if not s.done else None
            rows.append([i, s.kind, s.name, outcome, s.attempts or None, until, when(_ms(s.at))])
        print(table(["#", "KIND", "NAME", "OUTCOME", "ATTEMPTS", "UNTIL", "AT"], rows, right=[0, 4]))
    return ExitCode.OK
