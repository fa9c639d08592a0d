"""``djobs dead-letters list|show|retry|discard``: work that failed for good.

The database is opened as the other commands open it (a SQLite file or a
PostgreSQL DSN, never created or migrated). ``retry`` and ``discard`` write
through the storage's own dead-letter methods, the ones an engine's client
uses: a retried job is pending again at once (a running engine's worker
takes it at its next poll, or at once on PostgreSQL), a retried instance's
alarm is due now and fires in the engine that runs its definition. An
instance an engine holds right now (its lease is live) is refused; retry it
through that engine's client, or once the engine let it go.
"""

from __future__ import annotations

import argparse
from typing import Any

from .._clock import Clock
from .._printable import printable
from ..storage._base import (
    DeadLetter,
    DeadLetterFilter,
    DeadLetterStorage,
    dead_letter_cursor,
    split_dead_letter_cursor,
)
from ..storage._inspect import Opened
from . import _actions
from ._exit import CommandError, ExitCode
from ._output import fields, iso, next_page_hint, note, print_json, table, when
from ._read import _clip, _compact, _json_value, _open

KINDS = ("job", "debounce", "continuous", "task")


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: list[argparse.ArgumentParser], limit: Any
) -> None:
    """Add ``dead-letters list|show|retry|discard`` to the ``djobs`` parser."""
    group = commands.add_parser(
        "dead-letters", help="list, show, retry or discard work that failed for good (dead letters)"
    )
    group.set_defaults(run=None)
    sub = group.add_subparsers(title="commands", metavar="COMMAND", required=True)
    p = sub.add_parser("list", help="list dead letters, newest first", parents=common)
    p.set_defaults(run=letters_list)
    p.add_argument("--kind", choices=KINDS)
    p.add_argument("--name", help="only this definition's letters")
    p.add_argument("--tenant", help="only this tenant's letters")
    p.add_argument(
        "--after", metavar="CURSOR", help="start after this letter (the next page: the cursor a full page ends with)"
    )
    p.add_argument("--limit", type=limit, default=50, help="at most this many (default 50)")
    for name, run, help in (
        ("show", letters_show, "one letter: what failed, its payload and error"),
        ("retry", letters_retry, "bring the work back, due now, and delete the letter"),
        ("discard", letters_discard, "delete the letter for good"),
    ):
        p = sub.add_parser(name, help=help, description=help, parents=common)
        p.set_defaults(run=run)
        p.add_argument("id", metavar="ID", help="the letter's id (a job's letter has the job's id)")
        p.set_defaults(id_what="dead letter id")


def _store(db: Opened) -> DeadLetterStorage:
    return _actions.dead_letter_store(db.storage, db.where)


def _error_text(letter: DeadLetter) -> str | None:
    error = _json_value(letter.error)
    if isinstance(error, dict):
        return f"{error.get('tag', '?')}: {error.get('message', '')}"
    return None if error is None else str(error)


def _letter_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "kind": letter.kind,
        "name": letter.name,
        "ref": letter.ref,
        "tenant_id": letter.tenant_id,
        "payload": _json_value(letter.payload),
        "error": _json_value(letter.error),
        "attempts": letter.attempts,
        "event_count": letter.event_count,
        "failed_at": iso(letter.created_at),
        "cursor": dead_letter_cursor(letter),  # a page's next --after
    }


async def letters_list(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs dead-letters list``: letters, newest first."""
    after, after_created_at = _after(args.after)
    where = DeadLetterFilter(
        kind=args.kind,
        name=args.name,
        tenant_id=args.tenant,
        after=after,
        after_created_at=after_created_at,
        limit=args.limit,
    )
    async with _open(args) as db:
        letters = await _store(db).list_dead_letters(where)
    if args.json:
        print_json([_letter_json(letter) for letter in letters])
        return ExitCode.OK
    if not letters:
        note("no dead letters match")
        return ExitCode.OK
    rows = [
        [le.id, le.kind, le.name, printable(le.ref), le.attempts, when(le.created_at), _clip(_error_text(le), 60)]
        for le in letters
    ]
    print(table(["ID", "KIND", "NAME", "REF", "ATTEMPTS", "FAILED", "ERROR"], rows, right=[4]))
    if len(letters) == args.limit:
        note(next_page_hint(args.limit, dead_letter_cursor(letters[-1])))
    return ExitCode.OK


def _after(text: str | None) -> tuple[str | None, int | None]:
    """``--after``: the cursor a page's hint prints (a letter's time and id, `dead_letter_cursor`,
    its separator shown as a Control Picture), or a letter id (looked up)."""
    if text is None:
        return None, None
    split = split_dead_letter_cursor(_actions.key_candidates(text)[-1])
    if split is None:
        raise CommandError(
            f"--after {printable(text)!r:.80} is neither a letter id nor a page's cursor", ExitCode.USAGE
        )
    return split


async def letters_show(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs dead-letters show ID``: one letter with its payload and error."""
    async with _open(args) as db:
        letter = await _actions.get_dead_letter(_store(db), args.id)
    if args.json:
        print_json(_letter_json(letter))
        return ExitCode.OK
    print(
        fields(
            [
                ("id", letter.id),
                ("kind", letter.kind),
                ("name", letter.name),
                ("job id" if letter.kind == "job" else "instance", printable(letter.ref)),
                ("tenant", letter.tenant_id),
                ("attempts", letter.attempts),
                ("events", letter.event_count if letter.kind == "debounce" else None),
                ("failed", when(letter.created_at)),
                ("payload", _compact(_json_value(letter.payload))),
                ("error", _error_text(letter)),
            ]
        )
    )
    return ExitCode.OK


async def letters_retry(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs dead-letters retry ID``: the work is due again now; the letter is gone."""
    async with _open(args, write=True) as db:
        letter = await _actions.retry_dead_letter(_store(db), args.id, clock.now_ms())
    what = "job" if letter.kind == "job" else f"{letter.kind} instance"
    if args.json:
        print_json({"id": letter.id, "kind": letter.kind, "name": letter.name, "ref": letter.ref, "retried": True})
    else:
        print(f"{what} {printable(letter.ref)} ({letter.name}): due again now; dead letter {letter.id} removed")
    return ExitCode.OK


async def letters_discard(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs dead-letters discard ID``: the letter is deleted for good."""
    async with _open(args, write=True) as db:
        letter = await _actions.discard_dead_letter(_store(db), args.id)
    if args.json:
        print_json({"id": letter.id, "discarded": True})
    else:
        print(f"dead letter {letter.id} ({letter.kind} {letter.name}) discarded")
    return ExitCode.OK
