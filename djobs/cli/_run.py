"""The commands that open an engine: worker, enqueue, batch, instances pause and resume.

``djobs worker`` opens the engine the user's factory describes and runs it
until SIGINT or SIGTERM. ``enqueue`` opens a client-only engine on ``--db``
that registers just the one job, runs no queue worker and fires no alarms;
``batch`` opens the same, or the user's own engine (``--engine
module:factory``) when its jobs need the application's services.
``instances pause`` and ``resume`` open a client-only engine that registers
the one continuous job (resume needs its schedule).
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import secrets
import signal
import sys
import typing
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import msgspec
import trio
from returns.io import IOResult
from returns.unsafe import unsafe_perform_io

from .._clock import Clock
from .._engine import Engine, open_engine
from .._errors import JobError
from ..kinds._job import Job, JobContext, JobRun
from ..storage._inspect import Inspector, inspector, open_existing, storage_layer
from ._exit import CommandError, ExitCode, raise_command_error
from ._output import ProgressBar, note, print_json, table
from ._targets import check_engine, load_continuous, load_factory, load_job, open_factory

T = TypeVar("T")

# -- worker ------------------------------------------------------------------------------


async def worker(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs worker module:factory``: run the user's engine until SIGINT or SIGTERM.

    The first signal closes the engine gracefully: it stops claiming, lets
    running handlers and jobs finish within its ``shutdown_grace``, hands
    back what it did not finish and releases claimed alarms. A second signal
    exits at once (what is leased then runs again after its lease).
    """
    factory = load_factory(args.target)
    if args.log_level is not None:
        # Does nothing if the application configured logging itself (a root handler exists).
        logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = trio.Event()
    error: Exception | None = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, signals, stop)
            try:
                async with open_factory(factory, args.target) as opened:
                    engine = check_engine(opened, args.target)
                    who = f" as {engine.worker_id}" if engine.worker_id else ""
                    note(f"djobs worker: {args.target} running{who}; press Ctrl-C to stop")
                    await stop.wait()
                    note(
                        "djobs worker: stopping; running jobs get the engine's shutdown grace to finish "
                        "(Ctrl-C again to quit at once)"
                    )
            except Exception as exc:
                # Kept, not raised: inside the nursery it would arrive wrapped in an ExceptionGroup.
                error = exc
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error
    note("djobs worker: stopped")
    return ExitCode.OK


async def _watch_signals(signals: AsyncIterator[int], stop: trio.Event) -> None:
    async for signum in signals:
        if not stop.is_set():
            stop.set()
            continue
        # The engine's close is shielded from cancellation, so a second signal can only end the process.
        note(f"djobs worker: {signal.Signals(signum).name} again; exiting now without waiting")
        sys.stderr.flush()
        os._exit(128 + signum)


# -- the engine enqueue and batch use ------------------------------------------------------


@asynccontextmanager
async def _engine_for(
    args: argparse.Namespace, job: Job[Any, Any, Any], clock: Clock
) -> AsyncIterator[tuple[Engine, Inspector | None]]:
    """The engine to enqueue or run `job` with, and an inspector of its storage if it has one."""
    if getattr(args, "engine", None) is not None:
        factory = load_factory(args.engine)
        async with open_factory(factory, args.engine) as opened:
            engine = check_engine(opened, args.engine)
            try:
                inspect_ = inspector(engine.storage)
            except JobError:
                inspect_ = None
            yield engine, inspect_
        return
    async with open_existing(args.db, schema=args.schema):
        pass  # refuse a missing, foreign or other-version database before an engine would create or migrate it
    # worker=None: a client-only engine; it claims no job and fires no alarm.
    async with open_engine([job], storage=storage_layer(args.db, args.schema), clock=clock, worker=None) as engine:
        yield engine, inspector(engine.storage)


def _params(decoder: msgspec.json.Decoder[Any], raw: bytes, what: str) -> Any:
    """`raw` JSON validated as a job's params struct (`decoder` is for that struct)."""
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError: both are bad input
        problem = _lone_surrogate(raw) if not isinstance(exc, msgspec.ValidationError) else None
        if problem is not None:
            raise CommandError(f"{what} is not storable: {problem}", ExitCode.USAGE) from None
        raise CommandError(f"{what} does not match {decoder.type.__name__}: {exc}", ExitCode.USAGE) from None


def _lone_surrogate(raw: bytes) -> str | None:
    """What is wrong with JSON `raw` that msgspec refused, if it is a lone surrogate escape
    (``"\\ud800"``, which msgspec calls "Input data was truncated"): the standard library's
    decoder reads one, and UTF-8 then cannot encode it. ``None`` for anything else."""
    try:
        json.dumps(json.loads(raw), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"a string holds a lone surrogate ({exc.object[exc.start]!r}: half of a UTF-16 pair),"
            " which UTF-8 cannot encode and no storage can hold"
        )
    except (ValueError, RecursionError):  # not JSON at all: msgspec's own words say why
        return None
    return None


# -- enqueue -----------------------------------------------------------------------------


async def enqueue(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs enqueue module:job``: store one pending job; prints its id."""
    job = load_job(args.target)
    params = _params(msgspec.json.Decoder(job.params), args.params.encode(), f"--params of job {job.name!r}")
    at = None
    if args.at is not None:
        try:
            at = datetime.fromisoformat(args.at)
        except ValueError:
            raise CommandError(
                f"--at must be an ISO 8601 time with a UTC offset, got {args.at!r}", ExitCode.USAGE
            ) from None
        if at.tzinfo is None:
            raise CommandError(f"--at needs a UTC offset (e.g. {args.at}Z or {args.at}+02:00)", ExitCode.USAGE)
    async with _engine_for(args, job, clock) as (engine, _):
        enqueued = await engine.client.job(job).later(
            params,
            at=at,
            delay=args.delay,
            priority=args.priority,
            correlation_id=args.correlation_id,
            tenant_id=args.tenant,
            idempotency_key=args.idempotency_key,
        )
        job_id = _unwrap(enqueued)
        info = _unwrap(await engine.client.jobs.status(job_id))
    if args.json:
        print_json(info)
    else:
        print(job_id)
        due = info.scheduled_for.strftime("%Y-%m-%d %H:%M:%SZ") if info.scheduled_for else "now"
        note(f"enqueued {job.name} as {job_id}, due {due}")
    return ExitCode.OK


def _unwrap(result: IOResult[T, JobError]) -> T:
    """The value of an awaited client verb, or its error as a `CommandError`."""
    # The command line is the edge of the program: this is where effects end.
    return unsafe_perform_io(result.alt(raise_command_error).unwrap())


# -- instances pause / resume ----------------------------------------------------------


async def pause(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs instances pause module:job ID``: take a continuous instance off its schedule."""
    return await _pause_or_resume(args, clock, resume=False)


async def resume(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs instances resume module:job ID``: put it back on, at the next fire time after now."""
    return await _pause_or_resume(args, clock, resume=True)


async def _pause_or_resume(args: argparse.Namespace, clock: Clock, *, resume: bool) -> ExitCode:
    job = load_continuous(args.target)
    async with open_existing(args.db, schema=args.schema):
        pass  # refuse a missing, foreign or other-version database before an engine would create or migrate it
    async with open_engine([job], storage=storage_layer(args.db, args.schema), clock=clock, worker=None) as engine:
        client = engine.client if args.tenant is None else engine.client.for_tenant(args.tenant)
        verbs = client.continuous(job)
        status = _unwrap(await (verbs.resume(args.id) if resume else verbs.pause(args.id)))
    if args.json:
        print_json(status)
    else:
        due = status.next_run_at.strftime("%Y-%m-%d %H:%M:%SZ") if status.next_run_at else "-"
        print(f"{job.name}:{args.id} {status.status}, next run {due}")
    return ExitCode.OK


# -- batch -------------------------------------------------------------------------------


def _read_params_file(path: str, job: Job[Any, Any, Any]) -> list[Any]:
    """One params struct per non-blank line of a JSON Lines file (``-`` is stdin)."""
    try:
        if path == "-":
            lines = sys.stdin.buffer.read().splitlines()
        else:
            with open(path, "rb") as f:
                lines = f.read().splitlines()
    except OSError as exc:
        raise CommandError(f"cannot read --params-file {path!r}: {exc.strerror}", ExitCode.USAGE) from None
    decoder = msgspec.json.Decoder(job.params)
    return [_params(decoder, line, f"{path}, line {n},") for n, line in enumerate(lines, 1) if line.strip()]


def services_needed(job: Job[Any, Any, Any]) -> str | None:
    """The services `job`'s body declares it needs, as its annotation names them, or ``None``.

    Read from the annotation of the body's context parameter:
    ``JobContext[Mailer]`` needs a ``Mailer``; ``JobContext``,
    ``JobContext[object]`` or ``JobContext[Any]`` (or no annotation, or one
    that cannot be resolved) needs none that can be told.
    """
    try:
        parameters = list(inspect.signature(job.execute).parameters.values())
        hints = typing.get_type_hints(job.execute)
    except Exception:  # no signature, or an annotation that names what cannot be imported here
        return None
    if len(parameters) < 2:
        return None
    annotation = hints.get(parameters[1].name)
    origin = typing.get_origin(annotation)
    if not (isinstance(origin, type) and issubclass(origin, JobContext)):
        return None
    services = typing.get_args(annotation)[0]
    if services in (object, Any, type(None)):
        return None
    return getattr(services, "__name__", None) or repr(services).replace("typing.", "")


async def batch(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs batch module:job --params-file F``: run the job for each line, with a progress bar."""
    job = load_job(args.target)
    needed = services_needed(job) if getattr(args, "engine", None) is None else None
    if needed is not None:
        raise CommandError(
            f"job {job.name!r} needs the application's services (its body takes JobContext[{needed}]), "
            "which only your engine gives: add --engine MODULE:FACTORY",
            ExitCode.USAGE,
        )
    params = _read_params_file(args.params_file, job)
    correlation = f"batch-{secrets.token_hex(6)}"
    async with _engine_for(args, job, clock) as (engine, inspect_):
        live = sys.stderr.isatty() and not args.no_progress
        bar = ProgressBar(job.name, len(params), sys.stderr, live=live)
        note(f"running {len(params)} {job.name} job(s), {args.concurrency} at a time (correlation id {correlation})")
        runs: Sequence[JobRun[Any]] = []
        async with trio.open_nursery() as nursery:
            if live and inspect_ is not None:
                nursery.start_soon(_follow, inspect_, correlation, bar)
            result = await engine.client.job(job).batch(
                params,
                concurrency=args.concurrency,
                stop_on_error=args.stop_on_error,
                correlation_id=correlation,
                tenant_id=args.tenant,
            )
            nursery.cancel_scope.cancel()
        runs = _unwrap(result)
    failed = [r for r in runs if not r.ok]
    if not args.no_progress:
        bar.finish(len(runs), len(failed))
    if args.json:
        print_json([_run_json(r) for r in runs])
    else:
        counts = {s: sum(1 for r in runs if r.status == s) for s in ("completed", "failed", "cancelled")}
        skipped = len(params) - len(runs)
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        print(f"{len(runs)} job(s): {summary or 'none ran'}" + (f"; {skipped} not started" if skipped else ""))
        if failed:
            print(
                table(
                    ["ID", "STATUS", "ATTEMPTS", "ERROR"],
                    [[r.job_id, r.status, r.attempts, _run_error(r)] for r in failed],
                    right=[2],
                )
            )
    return ExitCode.OK if not failed and len(runs) == len(params) else ExitCode.FAILED


async def _follow(inspect_: Inspector, correlation: str, bar: ProgressBar) -> None:
    """Redraw the bar from the batch's rows (they share a correlation id) until cancelled."""
    while True:
        counts = await inspect_.job_counts(correlation)
        bar.update(counts["completed"] + counts["failed"] + counts["cancelled"], counts["failed"] + counts["cancelled"])
        await trio.sleep(0.2)


def _run_error(run: JobRun[Any]) -> str | None:
    return None if run.error is None else f"{run.error.tag}: {run.error.message}"


def _run_json(run: JobRun[Any]) -> dict[str, Any]:
    error = None if run.error is None else {"tag": run.error.tag, "message": run.error.message}
    return {
        "job_id": run.job_id,
        "status": run.status,
        "result": run.result,
        "error": error,
        "attempts": run.attempts,
        "duration_ms": run.duration_ms,
    }


# -- dashboard ---------------------------------------------------------------------------


async def dashboard(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs dashboard``: serve the web dashboard over ``--db`` until SIGINT or SIGTERM."""
    try:
        from .. import dashboard as web
    except ImportError as exc:
        message = f'the dashboard needs its extra: pip install "djobs-trio[dashboard]" ({exc})'
        raise CommandError(message, ExitCode.USAGE) from None
    token = args.token or os.environ.get("DJOBS_DASHBOARD_TOKEN") or None
    if token is not None and len(token) < 8:
        raise CommandError("--token must be at least 8 characters", ExitCode.USAGE)
    async with open_existing(args.db, schema=args.schema) as db:
        where = db.where  # refuse a missing, foreign or other-version database before serving
    cannot_listen: OSError | None = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            try:
                urls: list[str] = await nursery.start(
                    partial(
                        web.serve,
                        args.db,
                        host=args.host,
                        port=args.port,
                        schema=args.schema,
                        token=token,
                        clock=clock,
                        refresh=args.refresh,
                    )
                )
            except OSError as exc:  # in use, an unknown host, an address not of this machine
                cannot_listen = exc
            else:
                mode = "actions on with the token" if token else "read-only (give --token to allow actions)"
                note(f"djobs dashboard: {where} at {', '.join(urls)}; {mode}; press Ctrl-C to stop")
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()
    if cannot_listen is not None:  # raised out here: inside the nursery it would come wrapped in a group
        reason = cannot_listen.strerror or str(cannot_listen)
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {reason}", ExitCode.FAILED)
    note("djobs dashboard: stopped")
    return ExitCode.OK
