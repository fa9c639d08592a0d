"""The commands that look at a database: status, instances, jobs, cron.

They open a SQLite file or a PostgreSQL schema with `open_existing`: never
created, never migrated, and read-only except for the actions (``jobs cancel``,
``jobs retry``, ``jobs purge``, ``cron enable | disable | run-now``), which
change rows through the storage's own queue methods (see `_actions`). Keys
print with control characters as visible symbols (a tenant's ``␟``), and
``instances show`` reads them back.
"""

from __future__ import annotations

import argparse
from contextlib import AbstractAsyncContextManager
from typing import Any

import msgspec

from .._clock import Clock
from .._durations import parse_duration, to_ms
from .._printable import printable
from ..kinds._cron import _info as cron_info
from ..kinds._job_queue import job_info
from ..storage import JobFilter, JobRecord
from ..storage._inspect import Inspector, InstanceFilter, InstanceView, Opened, open_existing
from . import _actions
from ._exit import CommandError, ExitCode, raise_usage_error
from ._output import fields, iso, next_page_hint, note, print_json, relative, span, table, when, when_relative

#: The stateful kinds whose instances ``djobs instances`` lists.
INSTANCE_KINDS = ("continuous", "debounce", "task")

_any_json = msgspec.json.Decoder()


def _json_value(raw: bytes | None) -> Any:
    """Stored JSON as a value (text if it is not JSON, so ``show`` never fails on odd data)."""
    if raw is None:
        return None
    try:
        return _any_json.decode(raw)
    except msgspec.DecodeError:
        return raw.decode("utf-8", "replace")


def _compact(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _pretty(value: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def _indented(text: str) -> str:
    # Lines kept, every other control and U+202E shown as `printable` shows them (before the split:
    # str.splitlines also splits at U+2028 and \x1c-\x1e, which JSON leaves inside its strings).
    return "\n".join("  " + line for line in printable(text, keep_lines=True).splitlines())


def _open(args: argparse.Namespace, *, write: bool = False) -> AbstractAsyncContextManager[Opened]:
    """The database ``--db`` (a SQLite path or a PostgreSQL DSN) and ``--schema`` name, opened as it is."""
    return open_existing(args.db, schema=args.schema, write=write)


# -- status ------------------------------------------------------------------------------


async def status(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs status``: instances, alarms, queue, oldest pending job, leases."""
    now = clock.now_ms()
    async with _open(args) as db:
        s = await db.inspect.summary(now)
    oldest = s.oldest_pending
    if args.json:
        print_json(
            {
                "database": db.where,
                "schema_version": db.schema_version,
                "now": iso(now),
                "instances": s.instances,
                "alarms": {
                    "due": s.alarms.due,
                    "claimed": s.alarms.claimed,
                    "later": s.alarms.later,
                    "next_at": iso(s.alarms.next_at),
                },
                "jobs": s.jobs,
                "jobs_due": s.jobs_due,
                "oldest_pending": None
                if oldest is None
                else {
                    "id": oldest.id,
                    "name": oldest.name,
                    "scheduled_for": iso(oldest.scheduled_for),
                    "waiting_ms": now - oldest.scheduled_for,
                },
                "leases": s.leases,
            }
        )
        return ExitCode.OK
    out = [fields([("database", f"{db.where}, djobs schema {db.schema_version}"), ("now", when(now))]), ""]
    out.append("Instances")
    if s.instances:
        rows = [[c.kind, c.name, c.status, c.count] for c in s.instances]
        out.append(table(["KIND", "NAME", "STATUS", "COUNT"], rows, right=[3]))
    else:
        out.append("  none stored")
    a = s.alarms
    later = f"{a.later} later" + (f", next {when_relative(a.next_at, now)}" if a.next_at is not None else "")
    queue = ", ".join(
        f"{name} {n}" + (f" ({s.jobs_due} due)" if name == "pending" and n else "") for name, n in s.jobs.items()
    )
    waiting = (
        "none due"
        if oldest is None
        else (
            f"{oldest.id} ({oldest.name}), due {when(oldest.scheduled_for)}, waiting {span(now - oldest.scheduled_for)}"
        )
    )
    out += [
        "",
        fields(
            [
                ("Alarms", f"{a.due} due, {a.claimed} being handled, {later}"),
                ("Queue", queue),
                ("Oldest pending", waiting),
            ]
        ),
    ]
    out += ["", "Leases"]
    if s.leases:
        rows = [[h.owner, h.instances, h.jobs, h.expired] for h in s.leases]
        out.append(table(["OWNER", "INSTANCES", "JOBS", "EXPIRED"], rows, right=[1, 2, 3]))
    else:
        out.append("  none held")
    print("\n".join(out))
    return ExitCode.OK


# -- instances ---------------------------------------------------------------------------


def _instance_json(view: InstanceView, now: int) -> dict[str, Any]:
    r, alarm = view.record, view.alarm
    return {
        "key": r.key,
        "kind": r.kind,
        "name": r.name,
        "instance_id": r.instance_id,
        "status": r.status,
        "tenant_id": r.tenant_id,
        "run_count": r.run_count,
        "attempt": r.attempt,
        "event_count": r.event_count,
        "execute_count": r.execute_count,
        "started_at": iso(r.started_at),
        "created_at": iso(r.created_at),
        "updated_at": iso(r.updated_at),
        "version": r.version,
        "alarm": None
        if alarm is None
        else {
            "fire_at": iso(alarm.fire_at),
            "purpose": alarm.purpose,
            "due": alarm.fire_at <= now,
            "claimed_until": iso(view.alarm_claimed_until),
        },
        "lease": None
        if view.lease_owner is None
        else {
            "owner": view.lease_owner,
            "expires_at": iso(view.lease_expires_at),
            "expired": view.lease_expires_at is not None and view.lease_expires_at <= now,
        },
        "state": _json_value(r.state),
        "data": _json_value(r.data),
    }


async def instances_list(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs instances list``: stored instances in key order."""
    now = clock.now_ms()
    after = None if args.after is None else _actions.key_candidates(args.after)[-1]
    # The table shows no state: it is not read (a page of large states would be).
    where = InstanceFilter(
        kind=args.kind,
        name=args.name,
        tenant_id=args.tenant,
        status=args.status,
        after=after,
        limit=args.limit,
        payloads=args.json,
    )
    async with _open(args) as db:
        views = await db.inspect.instances(where)
    if args.json:
        print_json([_instance_json(v, now) for v in views])
        return ExitCode.OK
    if not views:
        note("no instances match")
        return ExitCode.OK
    rows = [
        [
            printable(v.record.key),
            v.record.status,
            v.record.run_count,
            v.record.event_count,
            when(v.alarm.fire_at) if v.alarm else None,
            when(v.record.updated_at),
        ]
        for v in views
    ]
    print(table(["KEY", "STATUS", "RUNS", "EVENTS", "ALARM", "UPDATED"], rows, right=[2, 3]))
    if len(views) == args.limit:
        note(next_page_hint(args.limit, views[-1].record.key))
    return ExitCode.OK


async def instances_show(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs instances show KEY``: one instance's state, alarm, lease and counters."""
    now = clock.now_ms()
    async with _open(args) as db:
        view = await _find_instance(db.inspect, args.key)
    if args.json:
        print_json(_instance_json(view, now))
        return ExitCode.OK
    r, alarm = view.record, view.alarm
    alarm_text = None
    if alarm is not None:
        alarm_text = f"{when_relative(alarm.fire_at, now)}, {alarm.purpose}"
        if view.alarm_claimed_until is not None and view.alarm_claimed_until > now:
            alarm_text += f", being handled (claimed until {when(view.alarm_claimed_until)})"
    lease_text = None
    if view.lease_owner is not None and view.lease_expires_at is not None:
        state = "expired" if view.lease_expires_at <= now else "until"
        lease_text = f"{view.lease_owner}, {state} {when(view.lease_expires_at)}"
    print(
        fields(
            [
                ("key", printable(r.key)),
                ("kind", r.kind),
                ("name", r.name),
                ("id", printable(r.instance_id)),
                ("status", r.status),
                ("tenant", None if r.tenant_id is None else printable(r.tenant_id)),
                ("runs", r.run_count),
                ("attempt", r.attempt),
                ("events", r.event_count),
                ("executions", r.execute_count),
                ("started", when(r.started_at)),
                ("created", when(r.created_at)),
                ("updated", when(r.updated_at)),
                ("version", r.version),
                ("alarm", alarm_text),
                ("lease", lease_text),
            ]
        )
    )
    print("state")
    print(_indented(_pretty(_json_value(r.state))))
    if r.data is not None:
        print("data")
        print(_indented(_pretty(_json_value(r.data))))
    return ExitCode.OK


async def _find_instance(inspect: Inspector, key: str) -> InstanceView:
    """The instance stored under `key` (as printed, control characters shown as symbols),
    or under ``{kind}:{key}`` for a key given as ``name:id``."""
    for candidate in _actions.key_candidates(key):
        found = await inspect.instances(InstanceFilter(key=candidate, limit=1))
        if found:
            return found[0]
    if key.partition(":")[0] not in INSTANCE_KINDS:
        candidates = [
            v
            for kind in INSTANCE_KINDS
            for candidate in _actions.key_candidates(f"{kind}:{key}")
            for v in await inspect.instances(InstanceFilter(key=candidate, limit=1))
        ]
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            keys = ", ".join(printable(v.record.key) for v in candidates)
            raise CommandError(f"{key!r} is ambiguous: it matches {keys}; give the whole key", ExitCode.USAGE)
    raise CommandError(
        f"no instance with key {key!r} is stored (a key is kind:name:id, e.g. continuous:tokenRefresher:user-123)",
        ExitCode.NOT_FOUND,
    )


# -- jobs --------------------------------------------------------------------------------


def _job_json(record: JobRecord) -> dict[str, Any]:
    info: dict[str, Any] = msgspec.to_builtins(job_info(record, None))
    info["worker_id"] = record.worker_id
    info["lease_expires_at"] = iso(record.worker_expires_at)
    return info


def _error_text(record: JobRecord) -> str | None:
    error = _json_value(record.error)
    if isinstance(error, dict):
        return f"{error.get('tag', '?')}: {error.get('message', '')}"
    return None if error is None else str(error)


def _clip(text: str | None, width: int) -> str | None:
    """`text` cut to `width` characters, marked with an ellipsis when cut."""
    if text is None or len(text) <= width:
        return text
    return text[: width - 1] + "…"


async def jobs_list(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs jobs list``: queued jobs in id (creation) order."""
    where = JobFilter(
        status=args.status,
        name=args.name,
        correlation_id=args.correlation_id,
        tenant_id=args.tenant,
        after=args.after,
        limit=args.limit,
        payloads=args.json,  # the table shows no params or result: they are not read
    )
    async with _open(args) as db:
        records = await db.storage.list_jobs(where)
    if args.json:
        print_json([_job_json(r) for r in records])
        return ExitCode.OK
    if not records:
        note("no jobs match")
        return ExitCode.OK
    rows = [
        [
            r.id,
            r.name,
            r.status,
            f"{r.attempt_count}/{r.max_attempts}",
            f"{r.progress}%",
            when(r.scheduled_for),
            when(r.updated_at),
            _clip(_error_text(r), 60),
        ]
        for r in records
    ]
    print(table(["ID", "NAME", "STATUS", "ATTEMPTS", "PROGRESS", "SCHEDULED", "UPDATED", "ERROR"], rows, right=[3, 4]))
    if len(records) == args.limit:
        note(next_page_hint(args.limit, records[-1].id))
    return ExitCode.OK


async def jobs_show(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs jobs show ID``: one queued job with its params, result or error."""
    now = clock.now_ms()
    async with _open(args) as db:
        r = await _actions.get_job(db.storage, args.id)
    if args.json:
        print_json(_job_json(r))
        return ExitCode.OK
    progress = f"{r.progress}%" + (f" {r.progress_message}" if r.progress_message else "")
    worker = None
    if r.status == "running" and r.worker_id is not None and r.worker_expires_at is not None:
        worker = (
            f"{r.worker_id}, lease {'expired' if r.worker_expires_at <= now else 'until'} {when(r.worker_expires_at)}"
        )
    print(
        fields(
            [
                ("id", r.id),
                ("name", r.name),
                ("status", r.status + (" (cancel requested)" if r.cancel_requested else "")),
                ("attempts", f"{r.attempt_count} of {r.max_attempts}"),
                ("progress", progress),
                ("priority", r.priority),
                ("tenant", r.tenant_id),
                ("correlation", r.correlation_id),
                ("scheduled", when_relative(r.scheduled_for, now)),
                ("created", when(r.created_at)),
                ("started", when(r.worker_started_at)),
                ("completed", when(r.completed_at)),
                ("worker", worker),
                ("params", _compact(_json_value(r.params))),
                ("result", None if r.result is None else _compact(_json_value(r.result))),
                ("error", _error_text(r)),
            ]
        )
    )
    return ExitCode.OK


async def jobs_cancel(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs jobs cancel ID``: a pending job never runs; a running one is stopped by its worker."""
    async with _open(args, write=True) as db:
        after, changed = await _actions.cancel_job(db.storage, args.id, clock.now_ms())
    if after.status == "cancelled":
        outcome, code = ("cancelled" if changed else "already cancelled"), ExitCode.OK
    elif after.status == "running" and after.cancel_requested:
        outcome, code = "cancel requested: its worker stops it at its next lease renewal", ExitCode.OK
    else:
        outcome, code = f"not cancelled: it had already {after.status}", ExitCode.FAILED
    if args.json:
        print_json(
            {
                "job_id": after.id,
                "status": after.status,
                "cancel_requested": after.cancel_requested,
                "cancelled": code == ExitCode.OK,
            }
        )
    else:
        print(f"job {after.id} ({after.name}): {outcome}")
    return code


async def jobs_retry(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs jobs retry ID``: a failed or cancelled job is pending again, due now, with fresh attempts."""
    async with _open(args, write=True) as db:
        after = await _actions.retry_job(db.storage, args.id, clock.now_ms())
    if args.json:
        print_json({"job_id": after.id, "status": after.status, "max_attempts": after.max_attempts})
    else:
        print(f"job {after.id} ({after.name}): pending again, due now, {after.max_attempts} attempt(s)")
    return ExitCode.OK


# -- cron --------------------------------------------------------------------------------


async def cron_list(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs cron list``: every stored cron job with its next and last run."""
    now = clock.now_ms()
    async with _open(args) as db:
        records = await db.storage.list_cron_jobs()
    if args.json:
        print_json([cron_info(r) for r in records])
        return ExitCode.OK
    if not records:
        note("no cron jobs are stored (an engine stores its cron jobs when it opens)")
        return ExitCode.OK
    rows = [
        [
            r.name,
            r.job_name,
            r.expression,
            r.tz,
            "yes" if r.enabled else "no",
            when(r.next_run_at) if r.enabled else None,
            None if r.last_run_at is None else f"{when(r.last_run_at)} ({relative(r.last_run_at, now)})",
            r.last_job_id,
        ]
        for r in records
    ]
    print(table(["NAME", "JOB", "SCHEDULE", "TZ", "ENABLED", "NEXT RUN", "LAST RUN", "LAST JOB"], rows))
    return ExitCode.OK


async def cron_set(args: argparse.Namespace, clock: Clock, *, enabled: bool) -> ExitCode:
    """``djobs cron enable | disable NAME``."""
    async with _open(args, write=True) as db:
        record = await _actions.set_cron_enabled(db.storage, args.name, enabled, clock.now_ms())
    if args.json:
        print_json(cron_info(record))
    elif enabled:
        print(f"cron job {record.name}: enabled, next run {when(record.next_run_at)}")
    else:
        print(f"cron job {record.name}: disabled")
    return ExitCode.OK


async def cron_enable(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs cron enable NAME``: fire again, from the next fire time after now."""
    return await cron_set(args, clock, enabled=True)


async def cron_disable(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs cron disable NAME``: stop firing, in every engine, until enabled."""
    return await cron_set(args, clock, enabled=False)


async def cron_run_now(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs cron run-now NAME``: the next fire is due now; a running engine enqueues it at its next poll."""
    async with _open(args, write=True) as db:
        record = await _actions.run_cron_now(db.storage, args.name, clock.now_ms())
    if args.json:
        print_json(cron_info(record))
    else:
        print(
            f"cron job {record.name}: due now; a running engine enqueues its job ({record.job_name}) "
            "at its next poll, then goes on with the schedule"
        )
    return ExitCode.OK


# -- purge -------------------------------------------------------------------------------


async def jobs_purge(args: argparse.Namespace, clock: Clock) -> ExitCode:
    """``djobs jobs purge --older-than DURATION [--status S]...``: delete old finished jobs."""
    older_than_ms = parse_duration(args.older_than, what="--older-than").map(to_ms).alt(raise_usage_error).unwrap()
    statuses = args.status or ["completed"]
    async with _open(args, write=True) as db:
        deleted = await _actions.purge_jobs(db.storage, older_than_ms, statuses, clock.now_ms(), args.tenant)
    if args.json:
        print_json({"deleted": deleted, "statuses": statuses, "older_than_ms": older_than_ms})
    else:
        print(f"deleted {deleted} job(s) ({', '.join(statuses)}) that finished more than {args.older_than} ago")
    return ExitCode.OK
