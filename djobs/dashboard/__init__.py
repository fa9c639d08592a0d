"""The djobs dashboard: a web page over a djobs database, on SQLite or PostgreSQL.

An ASGI application on Starlette, served by Hypercorn's Trio worker. It reads
storage directly (the same `Inspector` the command line uses), so a dashboard
process needs no engine; its actions write through storage as ``djobs jobs
retry`` does, and engines elsewhere see them at their next poll.

- ``djobs dashboard --db PATH_OR_DSN [--host 127.0.0.1] [--port 8000] [--token T]``
  runs it from the command line;
- `serve` runs it in your own nursery, beside your engine;
- `app` gives the ASGI application to mount in yours
  (``Mount("/jobs-admin", app=djobs.dashboard.app("jobs.db"))``).

Without an access token it is read-only. With one, a person logs in with the
token (``/login``) and may cancel, retry, enable, disable and run now. Those
are POSTs that a page on another site cannot forge: the session cookie is
``SameSite=Strict`` and ``HttpOnly``, every form carries a per-session CSRF
token (an HMAC of the session id under a key made at start), and the request's
``Origin`` (or ``Referer``) must be this host. No page shows a secret: the
database is shown as ``user@host:port/db``, never with its password.

``/metrics`` serves Prometheus's text format from a `djobs.metrics.StorageCollector`
read at each scrape. Needs ``pip install "djobs-trio[dashboard]"``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, cast, get_args
from urllib.parse import parse_qsl, urlencode, urlsplit

import jinja2
import msgspec
import trio
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from .._clock import Clock, WallClock
from .._errors import InstanceNotFoundError, InvalidStateError, JobError, StorageError, ValidationError
from .._ids import engine_id
from .._input import clean_text, text_problem, whole_number
from .._printable import printable
from ..cli import _actions
from ..cli._exit import CommandError, ExitCode
from ..cli._output import span, when
from ..kinds._workflow_log import KIND as WORKFLOW
from ..kinds._workflow_log import WorkflowStatus, WorkflowStatusName, cancel_stored, describe_workflow
from ..metrics import StorageCollector, render
from ..storage import JobFilter, JobRecord, JobStatusName, Storage
from ..storage._base import DeadLetter, DeadLetterFilter, DeadLetterKind, dead_letter_cursor, split_dead_letter_cursor
from ..storage._inspect import JOB_STATUSES, InstanceFilter, InstanceView, Opened, describe, open_existing
from ._templates import TEMPLATES

__all__ = ["PAGES", "Page", "app", "serve"]

Endpoint = Callable[["Dashboard", Request], Awaitable[Response]]

_COOKIE = "djobs_session"
_INSTANCE_KINDS = ("continuous", "debounce", "task", "workflow")
#: The kinds of work a dead letter holds (`DeadLetterKind`).
_LETTER_KINDS: tuple[str, ...] = get_args(DeadLetterKind)
#: The statuses a workflow's page filters by.
WORKFLOW_STATUSES: tuple[str, ...] = get_args(WorkflowStatusName)
_any_json = msgspec.json.Decoder()


@dataclass(frozen=True)
class Page:
    """A page of the dashboard: its path, its label in the navigation, and what renders it.

    `PAGES` is the list the navigation and routes are built from; a new kind of
    work (workflows) adds its page there, or passes ``pages=[*PAGES, Page(...)]`` to `app`.
    """

    path: str
    label: str
    endpoint: Endpoint


def _pretty(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return msgspec.json.format(msgspec.json.encode(_any_json.decode(raw)), indent=2).decode()
    except msgspec.DecodeError:
        return raw.decode("utf-8", "replace")


def _shown(value: object) -> object:
    """Every value a template writes, with controls and bidirectional formatting characters
    shown as `printable` shows them (lines and tabs kept: HTML shows them as spaces, and a
    ``<pre>`` of JSON as lines): a tenant id, an error or a payload holding U+202E cannot show
    the rest of its cell reversed. Markup (the chart) is the page's own and passes as it is."""
    if isinstance(value, str) and not hasattr(value, "__html__"):
        return printable(value, keep_lines=True)
    return value


def _error_text(record: JobRecord | DeadLetter) -> str | None:
    if record.error is None:
        return None
    try:
        error = _any_json.decode(record.error)
    except msgspec.DecodeError:
        return record.error.decode("utf-8", "replace")
    if isinstance(error, dict):
        return f"{error.get('tag', '?')}: {error.get('message', '')}"
    return str(error)


class BadQuery(Exception):
    """A query parameter no page accepts: answered with a 400 page that says what is accepted."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _limit(request: Request, default: int = 50) -> int:
    """The ``limit`` parameter: rows per page, an int from 1 to 500 (`default` when absent)."""
    text = request.query_params.get("limit") or None
    if text is None:
        return default
    value = whole_number(text)
    if value is None or not 1 <= value <= 500:
        raise BadQuery(f"limit {printable(text)!r:.40} is not a number of rows from 1 to 500")
    return value


def _choice(request: Request, name: str, accepted: Sequence[str]) -> str | None:
    """The parameter `name`, which must be one of `accepted` (or absent or empty: any)."""
    value = request.query_params.get(name) or None
    if value is not None and value not in accepted:
        raise BadQuery(f"{name} {printable(value)!r:.60} is not one of: {', '.join(accepted)}")
    return value


def _chart(minutes: list[Any], now: int) -> str:
    """An inline SVG bar chart of completed (green) and failed (red) jobs for each of the last 60 minutes."""
    start = (now // 60_000 - 59) * 60_000
    counts = {m.minute: (m.completed, m.failed) for m in minutes}
    top = max([c + f for c, f in counts.values()] + [1])
    width, height, bar = 600, 120, 10
    parts = [
        f'<svg id="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 20}" '
        f'role="img" aria-label="jobs completed and failed per minute over the last hour">',
        f'<line x1="0" y1="{height}" x2="{width}" y2="{height}" stroke="#bbb"/>',
    ]
    for i in range(60):
        minute = start + i * 60_000
        completed, failed = counts.get(minute, (0, 0))
        x = i * bar
        h_ok = round(completed / top * (height - 4))
        h_bad = round(failed / top * (height - 4))
        label = f"{when(minute)}: {completed} completed, {failed} failed"
        parts.append(
            f'<g><title>{label}</title><rect x="{x}" y="{height - h_ok}" width="{bar - 2}" height="{h_ok}" '
            f'fill="#3c9d5d"/><rect x="{x}" y="{height - h_ok - h_bad}" width="{bar - 2}" height="{h_bad}" '
            f'fill="#d64545"/></g>'
        )
    parts.append(f'<text x="0" y="{height + 15}" font-size="11">{when(start)}</text>')
    parts.append(f'<text x="{width}" y="{height + 15}" font-size="11" text-anchor="end">now · max {top}/min</text>')
    parts.append("</svg>")
    return "".join(parts)


class Dashboard:
    """The application's state: the database (opened on first use), the clock, sessions."""

    def __init__(
        self, db: str, *, schema: str, token: str | None, clock: Clock, pages: Sequence[Page], refresh_s: int
    ) -> None:
        self.db = db
        self.schema = schema
        self.token = token
        self.clock = clock
        self.pages = list(pages)
        self.refresh_s = refresh_s
        # Shown on every page: a name read from bytes that are not UTF-8 is shown escaped, as HTML must be UTF-8.
        self.where = clean_text(describe(db, schema))
        self._key = secrets.token_bytes(32)
        #: The lease owner this dashboard takes a workflow's lease as, to cancel it (`engine_id`).
        self.owner = engine_id()
        # Session ids of people who logged in, oldest first; a session lasts until the
        # dashboard restarts (its CSRF key is made at start) or 1000 newer logins push it out.
        self._sessions: dict[str, None] = {}
        self._opened: Opened | None = None
        self._stack = AsyncExitStack()
        self._lock = trio.Lock()
        self.registry = CollectorRegistry(auto_describe=True)
        self.collector: StorageCollector | None = None
        self.env = jinja2.Environment(loader=jinja2.DictLoader(TEMPLATES), autoescape=True, finalize=_shown)
        self.env.globals.update(when=when, printable=printable, error_text=_error_text)

    async def database(self) -> Opened:
        """The opened database (opened once, on first use; writable only with a token)."""
        async with self._lock:
            if self._opened is None:
                self._opened = await self._stack.enter_async_context(
                    open_existing(self.db, schema=self.schema, write=self.token is not None)
                )
                self.collector = StorageCollector(self._opened.inspect, self.clock)
                self.registry.register(self.collector)
            return self._opened

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._opened = None

    # -- sessions and CSRF ------------------------------------------------------------

    def session(self, request: Request) -> str | None:
        sid = request.cookies.get(_COOKIE)
        return sid if sid is not None and sid in self._sessions else None

    def csrf(self, sid: str | None) -> str:
        return "" if sid is None else hmac.new(self._key, sid.encode(), hashlib.sha256).hexdigest()

    def can_act(self, request: Request) -> bool:
        return self.token is not None and self.session(request) is not None

    @staticmethod
    def same_origin(request: Request) -> bool:
        """Whether the POST came from a page of this host (``Origin``, else ``Referer``)."""
        source = request.headers.get("origin") or request.headers.get("referer")
        if not source or source == "null":
            return False
        return urlsplit(source).netloc == request.headers.get("host", "")

    async def check_post(self, request: Request) -> str | None:
        """Why a POST action is refused, or ``None`` if it may go ahead."""
        if self.token is None:
            return "this dashboard is read-only (start it with an access token to act)"
        sid = self.session(request)
        if sid is None:
            return "log in with the access token first"
        if not self.same_origin(request):
            return "refused: the request did not come from this dashboard's pages"
        form = await request.form()
        sent = form.get("csrf")
        if not isinstance(sent, str) or not hmac.compare_digest(sent, self.csrf(sid)):
            return "refused: the form's CSRF token is missing or wrong (reload the page)"
        return None

    # -- rendering ----------------------------------------------------------------------

    def render(self, request: Request, template: str, title: str, status_code: int = 200, **values: Any) -> Response:
        base = request.scope.get("root_path", "")
        sid = self.session(request)
        rel = request.url.path[len(base) :] or "/"
        # The page a path belongs to: /jobs/ID to Jobs, /instance?key=... to Instances.
        active = next(
            (
                p.path
                for p in self.pages
                if p.path != "/" and (rel.startswith(p.path + "/") or rel in (p.path, p.path[:-1]))
            ),
            rel,
        )
        html = self.env.get_template(template).render(
            title=title,
            base=base,
            nav=[(p.path, p.label) for p in self.pages],
            active=active,
            where=self.where,
            can_act=self.can_act(request),
            login=self.token is not None,
            csrf=self.csrf(sid),
            flash=request.query_params.get("done"),
            refresh=values.pop("refresh", None),
            **values,
        )
        return HTMLResponse(html, status_code=status_code, headers={"Cache-Control": "no-store"})


# -- pages --------------------------------------------------------------------------------


async def overview(d: Dashboard, request: Request) -> Response:
    db = await d.database()
    now = d.clock.now_ms()
    s = await db.inspect.summary(now)
    by_name: dict[str, dict[str, int]] = {}
    for c in await db.inspect.job_counts_by_name():
        by_name.setdefault(c.name, {})[c.status] = c.count
    minutes = await db.inspect.finished_per_minute((now // 60_000 - 59) * 60_000, now)
    lateness = "none due" if s.oldest_pending is None else span(now - s.oldest_pending.scheduled_for)
    return d.render(
        request,
        "overview",
        "Overview",
        jobs=s.jobs,
        due=s.jobs_due,
        lateness=lateness,
        chart=_chart(minutes, now),
        statuses=JOB_STATUSES,
        by_name=sorted(by_name.items()),
        instances=s.instances,
        alarms=s.alarms,
    )


async def jobs(d: Dashboard, request: Request) -> Response:
    db = await d.database()
    q = request.query_params
    status = _choice(request, "status", JOB_STATUSES)
    limit = _limit(request)
    f = {
        "status": status,
        "name": q.get("name") or None,
        "tenant": q.get("tenant") or None,
        "correlation_id": q.get("correlation_id") or None,
        "limit": limit,
    }
    where = JobFilter(
        status=cast(JobStatusName | None, status),  # one of JOB_STATUSES (checked above)
        name=f["name"],  # type: ignore[arg-type]
        tenant_id=f["tenant"],  # type: ignore[arg-type]
        correlation_id=f["correlation_id"],  # type: ignore[arg-type]
        after=q.get("after") or None,
        limit=limit,
    )
    records = await db.storage.list_jobs(where)
    next_page = None
    if len(records) == limit:
        next_page = urlencode({k: v for k, v in f.items() if v is not None} | {"after": records[-1].id})
    title = f"{status.capitalize()} jobs" if status else "Jobs"
    return d.render(request, "jobs", title, jobs=records, f=f, statuses=JOB_STATUSES, next_page=next_page)


async def job(d: Dashboard, request: Request) -> Response:
    db = await d.database()
    job_id = request.path_params["job_id"]
    record = await db.storage.get_job(job_id)
    if record is None:
        return d.render(request, "message", "Not found", 404, message=f"no job with id {job_id!r} is stored")
    live = record.status in ("pending", "running")
    return d.render(
        request,
        "job",
        f"Job {record.name}",
        j=record,
        params=_pretty(record.params),
        result=_pretty(record.result),
        error=_pretty(record.error),
        refresh=d.refresh_s if live else None,
    )


async def instances(d: Dashboard, request: Request) -> Response:
    db = await d.database()
    q = request.query_params
    limit = _limit(request)
    f = {
        "kind": _choice(request, "kind", _INSTANCE_KINDS),
        "name": q.get("name") or None,
        "tenant": q.get("tenant") or None,
        "status": q.get("status") or None,
    }
    where = InstanceFilter(
        kind=f["kind"],
        name=f["name"],
        tenant_id=f["tenant"],
        status=f["status"],
        after=q.get("after") or None,
        limit=limit,
    )
    views = await db.inspect.instances(where)
    next_page = None
    if len(views) == limit:
        next_page = urlencode({k: v for k, v in f.items() if v is not None} | {"after": views[-1].record.key})
    return d.render(request, "instances", "Instances", views=views, f=f, kinds=_INSTANCE_KINDS, next_page=next_page)


async def instance(d: Dashboard, request: Request) -> Response:
    db = await d.database()
    key = request.query_params.get("key", "")
    found = [
        v for k in _actions.key_candidates(key) for v in await db.inspect.instances(InstanceFilter(key=k, limit=1))
    ]
    if not found:
        return d.render(request, "message", "Not found", 404, message=f"no instance with key {printable(key)!r}")
    v = found[0]
    return d.render(
        request,
        "instance",
        f"Instance {printable(v.record.key)}",
        v=v,
        state=_pretty(v.record.state) or "null",
        data=_pretty(v.record.data),
    )


async def crons(d: Dashboard, request: Request) -> Response:
    db = await d.database()
    now = d.clock.now_ms()
    rows = []
    for record in await db.storage.list_cron_jobs():
        try:
            runs = _actions.next_runs(record, now, 3)
        except StorageError:
            runs = []
        rows.append((record, runs))
    return d.render(request, "cron", "Cron jobs", crons=rows)


async def failed(d: Dashboard, request: Request) -> Response:
    db = await d.database()
    records = await db.storage.list_jobs(JobFilter(status="failed", limit=100))
    views = await db.inspect.instances(InstanceFilter(status="failed", limit=100))
    return d.render(request, "failed", "Failed work", jobs=records, views=views, more=len(records) == 100)


async def dead_letters(d: Dashboard, request: Request) -> Response:
    db = await d.database()
    q = request.query_params
    limit = _limit(request)
    f = {
        "kind": _choice(request, "kind", _LETTER_KINDS),
        "name": q.get("name") or None,
        "tenant": q.get("tenant") or None,
        "limit": limit,
    }
    # A letter's cursor (its time and id: the next page goes on whether or not it is still
    # stored), or a letter id (looked up).
    after: tuple[str | None, int | None] = (None, None)
    if q.get("after"):
        split = split_dead_letter_cursor(q["after"])
        if split is None:
            raise BadQuery(f"after {printable(q['after'])!r:.80} is neither a letter id nor a page's cursor")
        after = split
    where = DeadLetterFilter(
        kind=cast(DeadLetterKind | None, f["kind"]),  # one of _LETTER_KINDS (checked above)
        name=f["name"],  # type: ignore[arg-type]
        tenant_id=f["tenant"],  # type: ignore[arg-type]
        after=after[0],
        after_created_at=after[1],
        limit=limit,
    )
    try:
        letters = await _actions.dead_letter_store(db.storage, db.where).list_dead_letters(where)
    except CommandError as exc:
        return d.render(request, "message", "No dead letters", 404, message=exc.message)
    next_page = None
    if len(letters) == limit:
        next_page = urlencode(
            {k: v for k, v in f.items() if v is not None} | {"after": dead_letter_cursor(letters[-1])}
        )
    return d.render(
        request, "dead_letters", "Dead letters", letters=letters, f=f, kinds=_LETTER_KINDS, next_page=next_page
    )


async def dead_letter(d: Dashboard, request: Request) -> Response:
    db = await d.database()
    letter_id = request.path_params["letter_id"]
    try:
        letter = await _actions.get_dead_letter(_actions.dead_letter_store(db.storage, db.where), letter_id)
    except CommandError as exc:
        return d.render(request, "message", "Not found", 404, message=exc.message)
    return d.render(
        request,
        "dead_letter",
        f"Dead letter {letter.id}",
        le=letter,
        payload=_pretty(letter.payload) or "null",
        error=_pretty(letter.error),
    )


async def workflows(d: Dashboard, request: Request) -> Response:
    db = await d.database()
    q = request.query_params
    limit = _limit(request)
    f = {
        "name": q.get("name") or None,
        "tenant": q.get("tenant") or None,
        "status": _choice(request, "status", WORKFLOW_STATUSES),
        "limit": limit,
    }
    where = InstanceFilter(
        kind=WORKFLOW,
        name=f["name"],  # type: ignore[arg-type]
        tenant_id=f["tenant"],  # type: ignore[arg-type]
        status=f["status"],  # type: ignore[arg-type]
        after=q.get("after") or None,
        limit=limit,
    )
    views = await db.inspect.instances(where)
    rows = [(v, _described(v)) for v in views]
    next_page = None
    if len(views) == limit:
        next_page = urlencode({k: v for k, v in f.items() if v is not None} | {"after": views[-1].record.key})
    title = f"{f['status'].capitalize()} workflows" if f["status"] else "Workflows"  # type: ignore[union-attr]
    return d.render(request, "workflows", title, rows=rows, f=f, statuses=WORKFLOW_STATUSES, next_page=next_page)


def _described(view: InstanceView) -> WorkflowStatus | None:
    """The view `describe_workflow` gives (``None`` for a step log this djobs cannot read)."""
    try:
        return describe_workflow(view.record, view.alarm)
    except ValidationError:
        return None


async def workflow(d: Dashboard, request: Request) -> Response:
    db = await d.database()
    key = request.query_params.get("key", "")
    found = [
        v
        for k in _actions.key_candidates(key)
        for v in await db.inspect.instances(InstanceFilter(key=k, kind=WORKFLOW, limit=1))
    ]
    if not found:
        return d.render(request, "message", "Not found", 404, message=f"no workflow with key {printable(key)!r}")
    v = found[0]
    status = _described(v)
    return d.render(
        request,
        "workflow",
        f"Workflow {v.record.name} {printable(v.record.instance_id)}",
        v=v,
        w=status,
        input=_pretty(v.record.state) or "null",
        log=None if status is not None else _pretty(v.record.data),
        refresh=d.refresh_s if v.record.status not in ("completed", "failed", "cancelled") else None,
    )


async def metrics(d: Dashboard, request: Request) -> Response:
    await d.database()
    assert d.collector is not None
    with contextlib.suppress(StorageError):  # djobs_storage_up 0 says so
        await d.collector.refresh()
    return Response(render(d.registry), media_type="text/plain; version=0.0.4; charset=utf-8")


#: The pages, in navigation order.
PAGES: list[Page] = [
    Page("/", "Overview", overview),
    Page("/jobs", "Jobs", jobs),
    Page("/failed", "Failed", failed),
    Page("/instances", "Instances", instances),
    Page("/workflows", "Workflows", workflows),
    Page("/dead-letters", "Dead letters", dead_letters),
    Page("/cron", "Cron", crons),
]


def _unstorable_input(request: Request) -> str | None:
    """Why a path or query value cannot name anything stored, or ``None``.

    A NUL character or a lone surrogate is text no storage holds (`djobs._input.text_problem`);
    refused with a 400 before any read, so SQLite and PostgreSQL (which would refuse the query
    itself, and the page would say the database is unavailable) answer it the same way.
    """
    # The query decoded as Starlette does, but keeping bytes that are not UTF-8 (``%ED%A0%80``,
    # a lone surrogate's encoding) as lone surrogates that `text_problem` refuses, where
    # Starlette's decoding made them U+FFFD, which then named nothing (a 404).
    query = request.scope.get("query_string", b"").decode("latin-1")
    raw = parse_qsl(query, keep_blank_values=True, encoding="utf-8", errors="surrogateescape")
    values = [*request.path_params.items(), *request.query_params.multi_items(), *raw]
    for name, value in values:
        problem = text_problem(value) if isinstance(value, str) else None
        if problem is not None:
            return f"{name} {printable(value)!r:.80} {problem}"
    return None


# -- actions ------------------------------------------------------------------------------


def _back(request: Request, path: str, done: str) -> Response:
    base = request.scope.get("root_path", "")
    joint = "&" if "?" in path else "?"
    return RedirectResponse(f"{base}{path}{joint}{urlencode({'done': done})}", status_code=303)


#: An action's failure as an HTTP answer, by the exit code ``djobs`` gives the same failure:
#: nothing stored under the id or name is a 404, as the GET of its page is; bad input a 400;
#: anything else (retrying a job that did not fail, running a disabled cron job now) a 409.
_ANSWERS: Final[dict[ExitCode, tuple[int, str]]] = {
    ExitCode.NOT_FOUND: (404, "Not found"),
    ExitCode.USAGE: (400, "Bad request"),
    ExitCode.DATABASE: (503, "Database unavailable"),
}


async def _act(d: Dashboard, request: Request, path: str, act: Callable[[Opened, int], Awaitable[str]]) -> Response:
    refused = await d.check_post(request)
    if refused is not None:
        return d.render(request, "message", "Refused", 403, message=refused)
    db = await d.database()
    try:
        done = await act(db, d.clock.now_ms())
    except CommandError as exc:
        status, title = _ANSWERS.get(exc.code, (409, "Not done"))
        return d.render(request, "message", title, status, message=exc.message)
    return _back(request, path, done)


async def job_action(d: Dashboard, request: Request) -> Response:
    job_id, verb = request.path_params["job_id"], request.path_params["verb"]

    async def act(db: Opened, now: int) -> str:
        if verb == "retry":
            await _actions.retry_job(db.storage, job_id, now)
            return "retried: pending again, due now"
        if verb == "cancel":
            after, _ = await _actions.cancel_job(db.storage, job_id, now)
            return "cancelled" if after.status == "cancelled" else f"cancel: {after.status}"
        raise CommandError(f"no action {verb!r} on jobs", ExitCode.NOT_FOUND)

    return await _act(d, request, f"/jobs/{job_id}", act)


async def cron_action(d: Dashboard, request: Request) -> Response:
    name, verb = request.path_params["name"], request.path_params["verb"]

    async def act(db: Opened, now: int) -> str:
        if verb in ("enable", "disable"):
            await _actions.set_cron_enabled(db.storage, name, verb == "enable", now)
            return f"{name}: {verb}d"
        if verb == "run-now":
            await _actions.run_cron_now(db.storage, name, now)
            return f"{name}: due now; a running engine enqueues it at its next poll"
        raise CommandError(f"no action {verb!r} on cron jobs", ExitCode.NOT_FOUND)

    return await _act(d, request, "/cron", act)


async def dead_letter_action(d: Dashboard, request: Request) -> Response:
    letter_id, verb = request.path_params["letter_id"], request.path_params["verb"]

    async def act(db: Opened, now: int) -> str:
        store = _actions.dead_letter_store(db.storage, db.where)
        if verb == "retry":
            letter = await _actions.retry_dead_letter(store, letter_id, now)
            what = "job" if letter.kind == "job" else f"{letter.kind} instance"
            return f"{what} {printable(letter.ref)} ({letter.name}): due again now; dead letter {letter.id} removed"
        if verb == "discard":
            letter = await _actions.discard_dead_letter(store, letter_id)
            return f"dead letter {letter.id} ({letter.kind} {letter.name}) discarded"
        raise CommandError(f"no action {verb!r} on dead letters", ExitCode.NOT_FOUND)

    # Either way the letter is gone: back to the list.
    return await _act(d, request, "/dead-letters", act)


async def workflow_cancel(d: Dashboard, request: Request) -> Response:
    key = request.query_params.get("key", "")
    back = "/workflow?" + urlencode({"key": key})

    async def act(db: Opened, now: int) -> str:
        storage = cast(Storage, db.storage)  # both storages are a Storage as well as a QueueStorage
        try:
            return await cancel_stored(storage, key, "cancelled from the dashboard", now, d.owner)
        except InstanceNotFoundError as exc:
            raise CommandError(printable(exc.message), ExitCode.NOT_FOUND) from None
        except InvalidStateError as exc:
            raise CommandError(printable(exc.message), ExitCode.FAILED) from None

    return await _act(d, request, back, act)


async def login(d: Dashboard, request: Request) -> Response:
    if d.token is None:
        return d.render(request, "message", "Read-only", 403, message="this dashboard has no access token: read-only")
    if request.method == "GET":
        return d.render(request, "login", "Log in")
    if not d.same_origin(request):
        return d.render(request, "message", "Refused", 403, message="refused: not from this dashboard's pages")
    form = await request.form()
    token = form.get("token")
    if not isinstance(token, str) or not hmac.compare_digest(token.encode(), d.token.encode()):
        return d.render(request, "login", "Log in", 401, bad=True)
    sid = secrets.token_urlsafe(32)
    d._sessions[sid] = None
    while len(d._sessions) > 1000:
        del d._sessions[next(iter(d._sessions))]
    response = _back(request, "/", "logged in: actions are on")
    base = request.scope.get("root_path", "") or "/"
    response.set_cookie(_COOKIE, sid, httponly=True, samesite="strict", secure=request.url.scheme == "https", path=base)
    return response


# -- the application ---------------------------------------------------------------------


def app(
    db: str,
    *,
    schema: str = "djobs",
    token: str | None = None,
    clock: Clock | None = None,
    pages: Sequence[Page] | None = None,
    refresh: int = 2,
) -> Starlette:
    """The dashboard as an ASGI application (Starlette), to serve or mount.

    Args:
        db: A SQLite file's path or a PostgreSQL DSN; opened on the first
            request, never created or migrated (as the command line does).
        schema: The PostgreSQL schema.
        token: The access token that turns actions on; ``None`` (default) is read-only.
        clock: Where "now" comes from; the wall clock by default.
        pages: The pages (default `PAGES`).
        refresh: Seconds between reloads of a pending or running job's page.

    Raises:
        ValidationError: A token shorter than 8 characters; a refresh below 1 second. A database that
            cannot be used (missing, foreign, of another version, unreachable,
            a bad schema name) raises nothing here: every page answers 503
            with the reason, and works once the database does.
    """
    if token is not None and (not isinstance(token, str) or len(token) < 8):
        raise ValidationError("the dashboard's access token must be a string of at least 8 characters")
    if isinstance(refresh, bool) or not isinstance(refresh, int) or refresh < 1:
        raise ValidationError(f"the dashboard's refresh must be a whole number of seconds, at least 1, not {refresh!r}")
    state = Dashboard(
        db, schema=schema, token=token, clock=clock or WallClock(), pages=pages or PAGES, refresh_s=refresh
    )

    def bind(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def call(request: Request) -> Response:
            refused = _unstorable_input(request)
            if refused is not None:
                return state.render(request, "message", "Bad request", 400, message=refused)
            try:
                return await endpoint(state, request)
            except BadQuery as exc:
                return state.render(request, "message", "Bad request", 400, message=exc.message)
            except JobError as exc:
                return state.render(request, "message", "Database unavailable", 503, message=exc.message)

        return call

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await state.aclose()

    routes = [Route(p.path, bind(p.endpoint)) for p in state.pages]
    routes += [
        # ``:path``: an id holding a ``/`` reaches its page (or its 404), not the POST-only action route.
        Route("/jobs/{job_id:path}", bind(job)),
        Route("/instance", bind(instance)),
        Route("/workflow", bind(workflow)),
        Route("/workflows/cancel", bind(workflow_cancel), methods=["POST"]),
        Route("/metrics", bind(metrics)),
        Route("/login", bind(login), methods=["GET", "POST"]),
        Route("/jobs/{job_id:path}/{verb}", bind(job_action), methods=["POST"]),
        Route("/cron/{name}/{verb}", bind(cron_action), methods=["POST"]),
        Route("/dead-letters/{letter_id:path}", bind(dead_letter)),
        Route("/dead-letters/{letter_id:path}/{verb}", bind(dead_letter_action), methods=["POST"]),
    ]
    application = Starlette(routes=routes, lifespan=lifespan)
    application.state.dashboard = state
    return application


async def serve(
    db: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    schema: str = "djobs",
    token: str | None = None,
    clock: Clock | None = None,
    refresh: int = 2,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the dashboard with Hypercorn's Trio worker until cancelled; run it in your nursery
    (``await nursery.start(djobs.dashboard.serve, "jobs.db")``, which returns the bound URLs).
    The other arguments are `app`'s; ``refresh`` is the seconds between reloads of a live job's page.

    Raises:
        ValidationError: `port` is not an int from 0 to 65535, or `host` is not a non-empty str.
        OSError: The address is in use, the host unknown, or it cannot be bound otherwise
            (the one error, not Hypercorn's exception group).
    """
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValidationError(f"port must be an int from 0 to 65535, got {port!r:.40}")
    if not isinstance(host, str) or not host:
        raise ValidationError(f"host must be a non-empty str, got {host!r:.80}")

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    # Server errors (a request that raised) go to the application's logging, not to stderr.
    config.errorlog = logging.getLogger("djobs.dashboard")
    application = app(db, schema=schema, token=token, clock=clock, refresh=refresh)
    try:
        await hypercorn_serve(application, config, task_status=task_status, mode="asgi")  # type: ignore[arg-type]
    except BaseExceptionGroup as group:
        cannot_bind = _lone_os_error(group)
        if cannot_bind is None:
            raise
        raise cannot_bind from None


def _lone_os_error(group: BaseExceptionGroup[BaseException]) -> OSError | None:
    """The one `OSError` Hypercorn's nursery wrapped (a bind that failed), or ``None``."""
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
        inner = inner.exceptions[0]
    return inner if isinstance(inner, OSError) else None
