"""The ``djobs`` command: argument parsing and dispatch to the commands."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

import trio
from returns.result import Failure

from .._clock import Clock, WallClock
from .._errors import JobError, describe
from .._input import text_problem, whole_number
from .._printable import printable
from ..kinds._common import check_id
from ..storage._inspect import JOB_STATUSES
from . import _dead_letters, _read, _run, _workflows
from ._exit import CommandError, ExitCode, exit_code

Command = Callable[[argparse.Namespace, Clock], Awaitable[ExitCode]]

_DESCRIPTION = """\
Run and inspect djobs: durable background jobs for Trio applications.

  djobs worker jobs_app:make_engine        run your engine until Ctrl-C
  djobs status --db jobs.db                what is stored, due, queued and leased
  djobs enqueue jobs_app:send_email --params '{"to": "a@example.com"}'
"""

_EPILOG = """\
exit codes: 0 ok, 1 failed, 2 usage, 3 database unusable or missing, 4 not found, 130 interrupted,
143 worker stopped by a second SIGTERM.
--db is a SQLite file or a PostgreSQL DSN (with --schema); it defaults to $DJOBS_DB, else djobs.db.
Commands other than `worker` never create a database."""


#: Arguments that name a file to open, where bytes that are not UTF-8 are a valid name.
_FILE_ARGUMENTS = frozenset({"params_file"})


def _unstorable_argument(args: argparse.Namespace) -> str | None:
    """Why an argument cannot name or hold anything stored, or ``None``.

    A lone surrogate (how Python reads argument bytes that are not UTF-8) or a
    NUL is text no storage holds (`djobs._input.text_problem`): refused as a
    usage error before any database is read, the same on SQLite and
    PostgreSQL, instead of a traceback from the database driver.
    """
    for name, value in vars(args).items():
        if name in _FILE_ARGUMENTS:
            continue
        for item in value if isinstance(value, list) else [value]:
            problem = text_problem(item) if isinstance(item, str) else None
            if problem is not None:
                return f"{name.replace('_', '-')} {printable(item)!r:.80} {problem}"
    return None


def _bad_id(args: argparse.Namespace) -> str | None:
    """Why a command's ID argument is no id, in the words the client verbs answer it with
    (`djobs.kinds._common.check_id`: empty, too long, a NUL, a unit separator, a lone surrogate),
    or ``None``: refused as a usage error, as the API refuses it with a `ValidationError`, rather
    than looked up and "not found"."""
    given, what = getattr(args, "id", None), getattr(args, "id_what", None)
    if not isinstance(given, str) or what is None:
        return None
    checked = check_id(given, what)
    return checked.failure().message if isinstance(checked, Failure) else None


def _whole(low: int, high: int, what: str, between: str) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high`, its refusals in the words given."""

    def parse(text: str) -> int:
        value = whole_number(text)
        if value is None:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r:.80}")
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {between} from {low} to {high}, got {value}")
        return value

    return parse


_port = _whole(0, 65535, "a port number", "a port")
_positive = _whole(1, 10_000, "a whole number", "a number")
_seconds = _whole(1, 2**31 - 1, "a whole number of seconds", "a number of seconds")
_priority = _whole(-(2**31), 2**31 - 1, "a whole number", "a priority")


def _schema_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--schema",
        default=os.environ.get("DJOBS_SCHEMA", "djobs"),
        help="the PostgreSQL schema djobs's tables are in (default: $DJOBS_SCHEMA, else djobs); ignored for SQLite",
    )


def _djobs_version() -> str:
    try:
        return version("djobs-trio")  # the distribution's name; `djobs` on the index is another project
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The ``djobs`` argument parser (every command and option)."""
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument(
        "--db",
        metavar="PATH_OR_DSN",
        default=os.environ.get("DJOBS_DB", "djobs.db"),
        help="a SQLite file, or a PostgreSQL DSN such as postgresql://user@host/db (default: $DJOBS_DB, else djobs.db)",
    )
    _schema_option(db)
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    common = [db, as_json]

    parser = argparse.ArgumentParser(
        prog="djobs", description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"djobs {_djobs_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(
        name: str,
        run: Command | None,
        help: str,
        parents: Sequence[argparse.ArgumentParser] = (),
        group: argparse._SubParsersAction[argparse.ArgumentParser] = commands,
    ) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=help, description=help, parents=list(parents))
        sub.set_defaults(run=run)
        return sub

    p = command("worker", _run.worker, "run the engine your factory opens until SIGINT/SIGTERM (Ctrl-C)")
    p.add_argument(
        "target",
        metavar="MODULE:FACTORY",
        help="a callable returning an async context manager that opens a djobs.Engine",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="level of the stderr log handler set up if your code sets none (default INFO)",
    )

    command("status", _read.status, "instances, alarms, queue, oldest pending job and leases", common)

    instances = command(
        "instances", None, "list or show stateful instances (continuous, debounce, task); pause or resume one"
    )
    sub = instances.add_subparsers(title="commands", metavar="COMMAND", required=True)
    p = command("list", _read.instances_list, "list instances in key order", common, sub)
    p.add_argument("--kind", choices=_read.INSTANCE_KINDS)
    p.add_argument("--name", help="only this job's instances")
    p.add_argument("--tenant", help="only this tenant's instances")
    p.add_argument("--status", help="only instances with this status (e.g. running, failed, terminated)")
    p.add_argument("--after", metavar="KEY", help="start after this key (the next page)")
    p.add_argument("--limit", type=_positive, default=50, help="at most this many (default 50)")
    p = command("show", _read.instances_show, "one instance: state, alarm, lease, counters", common, sub)
    p.add_argument(
        "key", metavar="KEY", help="kind:name:id (as `instances list` prints it), or name:id when only one kind has it"
    )
    for name, run, help in (
        ("pause", _run.pause, "take a continuous instance off its schedule (status stopped, state kept)"),
        ("resume", _run.resume, "put a paused continuous instance back on, at its next fire time after now"),
    ):
        p = command(name, run, help, common, sub)
        p.add_argument("target", metavar="MODULE:JOB", help="the djobs.Continuous, e.g. jobs_app:token_refresher")
        p.add_argument("id", metavar="ID", help="the instance id")
        p.set_defaults(id_what="instance id")
        p.add_argument("--tenant", help="the tenant the instance belongs to")

    jobs = command("jobs", None, "list, show, cancel, retry or purge queued jobs")
    sub = jobs.add_subparsers(title="commands", metavar="COMMAND", required=True)
    p = command("list", _read.jobs_list, "list queued jobs, oldest first", common, sub)
    p.add_argument("--status", choices=JOB_STATUSES)
    p.add_argument("--name", help="only this job")
    p.add_argument("--correlation-id", help="only jobs with this correlation id (a batch's is printed when it starts)")
    p.add_argument("--tenant", help="only this tenant's jobs")
    p.add_argument("--after", metavar="ID", help="start after this job id (the next page)")
    p.add_argument("--limit", type=_positive, default=50, help="at most this many (default 50)")
    for name, run, help in (
        ("show", _read.jobs_show, "one job: status, attempts, params, result or error"),
        ("cancel", _read.jobs_cancel, "cancel a pending job, or ask the worker running it to stop it"),
        ("retry", _read.jobs_retry, "run a failed or cancelled job again, with a fresh attempt budget"),
    ):
        p = command(name, run, help, common, sub)
        p.add_argument("id", metavar="ID")
        p.set_defaults(id_what="job id")
    p = command(
        "purge", _read.jobs_purge, "delete jobs that finished long ago (never pending or running ones)", common, sub
    )
    p.add_argument(
        "--older-than", required=True, metavar="DURATION", help='finished more than this long ago, e.g. "7 days"'
    )
    p.add_argument(
        "--status",
        action="append",
        choices=("completed", "failed", "cancelled"),
        help="delete jobs with this status; repeat for several (default: completed)",
    )
    p.add_argument("--tenant", help="only this tenant's jobs")

    _workflows.add_commands(commands, common, _positive)
    _dead_letters.add_commands(commands, common, _positive)

    crons = command("cron", None, "list, enable, disable or run cron jobs")
    sub = crons.add_subparsers(title="commands", metavar="COMMAND", required=True)
    command("list", _read.cron_list, "every stored cron job with its next and last run", common, sub)
    for name, run, help in (
        ("enable", _read.cron_enable, "fire again, from the next fire time after now"),
        ("disable", _read.cron_disable, "stop firing in every engine until enabled"),
        ("run-now", _read.cron_run_now, "make the next fire due now (a running engine enqueues it at its next poll)"),
    ):
        command(name, run, help, common, sub).add_argument("name", metavar="NAME")

    p = command("dashboard", _run.dashboard, "serve the web dashboard (and /metrics) over the database", [db])
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=_port, default=8000, help="the port to listen on, 0 (any free one) to 65535 (default 8000)"
    )
    p.add_argument(
        "--refresh",
        type=_seconds,
        default=2,
        metavar="SECONDS",
        help="seconds between reloads of a pending or running job's page (default 2)",
    )
    p.add_argument(
        "--token",
        help="an access token (8+ characters) that allows actions after logging in; without one the dashboard "
        "is read-only (default: $DJOBS_DASHBOARD_TOKEN)",
    )

    def job_options(p: argparse.ArgumentParser, *, own_engine: bool) -> None:
        p.add_argument("target", metavar="MODULE:JOB", help="the djobs.Job, e.g. jobs_app:send_greeting")
        where = p.add_mutually_exclusive_group()
        where.add_argument(
            "--db",
            metavar="PATH_OR_DSN",
            default=os.environ.get("DJOBS_DB", "djobs.db"),
            help="the SQLite file or PostgreSQL DSN, opened by a client-only engine "
            "(default: $DJOBS_DB, else djobs.db)",
        )
        _schema_option(p)
        if own_engine:
            where.add_argument(
                "--engine",
                metavar="MODULE:FACTORY",
                help="open your own engine instead (your storage and services; it also works as "
                "your worker does while the batch runs); it must register the job",
            )
        p.add_argument("--tenant", help="the tenant the job(s) belong to")
        p.add_argument("--json", action="store_true", help="print one JSON document instead of text")

    p = command("enqueue", _run.enqueue, "enqueue one job; prints its id")
    job_options(p, own_engine=False)
    p.add_argument("--params", default="{}", metavar="JSON", help="the job's params as a JSON object (default {})")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--delay", metavar="DURATION", help='run after this long, e.g. "10 minutes"')
    when.add_argument("--at", metavar="TIME", help="run at this ISO 8601 time with an offset, e.g. 2026-05-01T09:00Z")
    p.add_argument("--priority", type=_priority, default=0, help="among due jobs, higher runs first (default 0)")
    p.add_argument("--correlation-id")
    p.add_argument("--idempotency-key", help="a repeat of the key enqueues nothing and prints the first job's id")

    p = command("batch", _run.batch, "run a job once per line of a JSON Lines file, in this process")
    job_options(p, own_engine=True)
    p.add_argument("--params-file", required=True, metavar="FILE", help="one JSON params object per line; - is stdin")
    p.add_argument("--concurrency", type=_positive, default=3, help="jobs running at once (default 3)")
    p.add_argument("--stop-on-error", action="store_true", help="start no new job once one has failed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def _reader_left(exc: Exception) -> bool:
    """Whether `exc` is only the output's reader having gone (``djobs ... | head -1``).

    Then the command ends quietly, as Python's documentation advises for a
    broken pipe: standard output is pointed at ``os.devnull`` so the flush at
    exit does not raise again.
    """
    if isinstance(exc, BaseExceptionGroup):
        if exc.split(BrokenPipeError)[1] is not None:
            return False
    elif not isinstance(exc, BrokenPipeError):
        return False
    with contextlib.suppress(OSError, ValueError):  # no real stdout (captured in a test): nothing to flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return True


def _unwrapped(fn: Callable[..., int], *args: object) -> int:
    """``fn(*args)``, with a group holding one exception (a nursery's, under strict
    exception groups) raised as that exception, so a `CommandError` or djobs error
    raised inside a nursery still ends the command with its one line."""
    try:
        return fn(*args)
    except BaseExceptionGroup as group:
        inner: BaseException = group
        while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
            inner = inner.exceptions[0]
        if isinstance(inner, CommandError | JobError | KeyboardInterrupt):
            raise inner from None
        raise


def main(argv: Sequence[str] | None = None, *, clock: Clock | None = None) -> int:
    """Run the ``djobs`` command line; returns the exit code (see `ExitCode`).

    Args:
        argv: The arguments after the program name; default ``sys.argv[1:]``.
        clock: The clock layer commands read "now" from and engines run on;
            default the wall clock (tests pass a fixed or virtual one).

    Example:
        ```python
        from djobs.cli import main
        assert main(["status", "--db", "jobs.db", "--json"]) == 0
        ```
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    run: Command | None = args.run
    if run is None:  # pragma: no cover - every group requires a subcommand
        parser.print_help()
        return ExitCode.USAGE
    refused = _bad_id(args) or _unstorable_argument(args)
    if refused is not None:
        print(f"djobs: {refused}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        return int(_unwrapped(trio.run, run, args, clock or WallClock()))
    except CommandError as exc:
        print(f"djobs: {exc.message}", file=sys.stderr)
        return exc.code
    except JobError as exc:
        # A djobs error raised rather than returned: a definition problem at engine open,
        # or a StorageError from a database that could not be opened or read.
        print(f"djobs: {exc.message}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("djobs: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as exc:
        if _reader_left(exc):
            return ExitCode.OK
        # Raised by the user's code (a factory, an engine that crashed) or a bug here: the
        # traceback is what whoever reads this needs.
        traceback.print_exc()
        print(f"djobs: failed: {describe(exc)}", file=sys.stderr)
        return ExitCode.FAILED
