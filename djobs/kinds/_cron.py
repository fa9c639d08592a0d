"""Cron jobs: a schedule that enqueues one job per fire time, however many engines run.

Each cron job is a row in ``cron_jobs`` holding its ``next_run_at``. The
engine's alarm task sleeps until the earliest one, then advances the row with
a compare-and-set on ``next_run_at`` *in the same transaction* as the
enqueue: of two engines on one database that wake for the same fire time,
exactly one moves the row on, and only that one's job is stored.

A fire time is *on time* when it is the only one that has passed and it is at
most a minute late. Otherwise fire times were missed (no engine ran, or the
cron was disabled), and the cron job's ``missed`` policy decides:

- ``"once"`` (default): one run for the whole missed span, for its latest fire time
  (the last one not after now: its `CronFire.scheduled_at`, its job's scheduled time),
  as APScheduler's ``coalesce=True`` runs; then on schedule;
- ``"all"``: one run per missed fire time (beware long outages of frequent crons);
- ``"skip"``: no run for the missed span; the next run is the next fire time after now.

In every mode the fire times stay those of the schedule: a ``djobs.every(...)`` one keeps
counting its intervals from its first fire time through an outage (APScheduler's
``IntervalTrigger`` keeps its start-anchored grid through coalescing and misfires alike).

Daylight-saving changes are handled by the schedule (`djobs.cron`): a
fixed-time expression fires once per wall time, an interval one (``*/5``,
``@hourly``) in elapsed time through a repeated hour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import msgspec
import trio
from returns.future import FutureResult
from returns.result import Failure, Result, Success

from .._bodies import Returns, check_body
from .._clock import LATEST_MS, LATEST_TEXT, to_datetime, utc_isoformat
from .._codec import encode
from .._durations import DurationLike
from .._errors import JobNotFoundError, StorageError, TenantError, ValidationError, raise_error, safe_repr
from .._execution import Env
from .._input import check_attempts
from .._limits import definition_limits
from .._logging import LoggingOption, check_logging
from .._printable import printable
from .._queue_limits import RateLimit, job_limits
from .._retry import Retry, check_retry
from .._schedule import Cron, Schedule, next_fire, parse_cron, resume_fire, runs_from
from .._wakeup import Wakeup
from ..storage import CronRecord, CronSpec, QueueStorage
from ..storage._base import writes_inline
from ._common import D_contra, Definition, bind_async, check_name, effect, name_of
from ._job import Job, JobContext
from ._job_queue import JobQueue, check_short_text

if TYPE_CHECKING:
    from .._runtime import Runtime
    from ..storage import Alarm

P = TypeVar("P")

KIND = "cron"

#: What a cron job does about fire times that passed while it could not run.
MissedFires = Literal["once", "all", "skip"]

#: How late a fire may be and still count as on time (not missed).
MISFIRE_GRACE_MS = 60_000

#: Why a cron job has no next fire: its schedule has none before djobs's last time.
_ENDED = f"its schedule has no fire by {LATEST_TEXT}, the latest time djobs schedules anything for"


class CronFire(msgspec.Struct, frozen=True):
    """The params of a cron job's own body: which cron fired, for which fire time.

    After an outage under ``missed="once"``, `scheduled_at` is the latest fire time
    missed (the last one not after the engine's clock when it fired), not the first.
    """

    cron: str
    scheduled_at: datetime


#: The encoder of a fire's `CronFire` params (msgspec's JSON, as `djobs._codec.encode` writes it).
_fire_encoder = msgspec.json.Encoder()


def _stored_schedule(schedule: Schedule) -> tuple[str, str]:
    if isinstance(schedule, Cron):
        return schedule.expression, schedule.tz
    return schedule.describe(), "UTC"


@dataclass(frozen=True, eq=False)
class CronJob(Definition[D_contra], Generic[D_contra]):
    """A schedule that enqueues a job once per fire time. Make one with `CronJob.make`.

    ``CronJob[D]``: its job's body needs services `D` (``object`` for none).

    Examples:
        >>> import msgspec, djobs
        >>> class Report(msgspec.Struct):
        ...     kind: str
        >>> def build(params: Report, ctx: djobs.JobContext) -> None: ...
        >>> report = djobs.Job.make("report", params=Report, execute=build)
        >>> nightly = djobs.CronJob.make("nightlyReport", schedule=djobs.cron("0 3 * * *", tz="Europe/Berlin"),
        ...                              job=report, params=Report("daily"))
        >>> nightly.job.name
        'report'
    """

    kind: ClassVar[str] = KIND
    name: str
    schedule: Schedule
    job: Job[Any, Any, D_contra]
    #: The JSON params every fire enqueues; ``None`` when the job is the cron's
    #: own body, which gets a `CronFire` per fire.
    params: bytes | None
    missed: MissedFires = "once"
    tenant_id: str | None = None

    @classmethod
    def make(
        cls,
        name: str,
        *,
        schedule: Schedule | str,
        job: Job[P, Any, D_contra] | None = None,
        params: P | None = None,
        execute: Callable[[CronFire, JobContext[D_contra]], Returns[None, D_contra]] | None = None,
        missed: MissedFires = "once",
        tenant_id: str | None = None,
        retry: Retry | None = None,
        max_attempts: int | None = None,
        logging: LoggingOption = False,
        timeout: DurationLike | None = None,
        blocking: bool = False,
        concurrency: int | None = None,
        rate_limit: str | RateLimit | None = None,
    ) -> CronJob[D_contra]:
        """Define a cron job: either a `Job` with its `params`, or its own `execute`.

        Args:
            name: The cron job's unique name (no ``:``).
            schedule: ``djobs.cron("0 9 * * *", tz="Europe/Berlin")``, a cron
                expression (read in UTC), or ``djobs.every(...)``.
            job: The job each fire enqueues. It is registered with the engine
                if it is not among the definitions already.
            params: The params each fire enqueues `job` with (validated now);
                default the params struct built with no arguments.
            execute: Instead of `job`: a body ``execute(fire, ctx)`` taking a
                `CronFire`; it becomes a job named like the cron job.
            missed: What to do about fire times missed while no engine ran:
                ``"once"`` (one run, for the latest missed fire time, as
                APScheduler's ``coalesce=True``), ``"all"`` or ``"skip"`` (see
                the module notes).
            tenant_id: The tenant the enqueued jobs belong to.
            retry: With `execute`: the job's retry policy.
            max_attempts: With `execute`: the job's attempt budget.
            logging: With `execute`: the job's logging option.
            timeout: With `execute`: the longest one run may take (`Job.make`'s
                ``timeout``: a longer one fails with `JobTimeoutError`, retried).
            blocking: With `execute`: run a synchronous body in a worker thread.
            concurrency: With `execute`: at most this many of its runs at once,
                across every engine process on the database (`Job.make`'s
                ``concurrency``); ``1`` keeps a slow run from overlapping the
                next fire: the fire's job waits, pending, until the run before
                it ends (APScheduler's ``max_instances=1`` skips it instead, so
                a body slower than its interval for good builds a backlog here).
            rate_limit: With `execute`: `Job.make`'s ``rate_limit``.

        Raises:
            ValidationError: A bad name, schedule, params or option.
        """
        check_name(name, "CronJob")
        if isinstance(schedule, str):
            schedule = parse_cron(schedule).alt(raise_error).unwrap()
        if not hasattr(schedule, "next_after"):
            raise ValidationError(f"CronJob {name!r}: schedule must come from djobs.cron() or djobs.every()")
        if missed not in ("once", "all", "skip"):
            raise ValidationError(f"CronJob {name!r}: missed must be 'once', 'all' or 'skip', got {missed!r}")
        if tenant_id is not None:
            # As an enqueue's tenant id is checked: the fires' jobs are stored under it.
            match check_short_text(tenant_id, "tenant_id"):
                case Failure(error):
                    raise ValidationError(f"CronJob {name!r}: {error.message}")
        if (job is None) == (execute is None):
            raise ValidationError(f"CronJob {name!r}: give either job= (with params=) or execute=, not both or neither")
        own_options = (retry, max_attempts, timeout, concurrency, rate_limit)
        if job is not None and (any(o is not None for o in own_options) or blocking or logging is not False):
            raise ValidationError(
                f"CronJob {name!r}: retry=, max_attempts=, logging=, timeout=, blocking=, concurrency= and"
                " rate_limit= go with execute=; give them to Job.make for job="
            )
        if execute is not None and params is not None:
            raise ValidationError(
                f"CronJob {name!r}: params= goes with job=; an execute= body takes the CronFire of each fire"
            )
        if job is not None:
            if not isinstance(job, Job):
                raise ValidationError(f"CronJob {name!r}: job must be a djobs.Job, got {job!r}")
            try:
                value = params if params is not None else job.params()
            except TypeError as exc:
                raise ValidationError(f"CronJob {name!r}: params= is required for job {job.name!r}: {exc}") from None
            raw = encode(job.params, value, what=f"params of cron job {name!r}").alt(raise_error).unwrap()
            return cls(name, schedule, job, raw, missed, tenant_id)
        assert execute is not None
        what = f"CronJob {name!r}"
        check_retry(retry, what)
        check_logging(logging, what)
        # Job.make checks these again, naming a Job: checked first here, a bad one names the CronJob.
        check_body(execute, f"{what}: execute", ("fire", "ctx"))
        attempts = max_attempts if max_attempts is not None else (retry.max_attempts if retry is not None else 3)
        check_attempts(attempts, f"{what}: max_attempts")
        definition_limits(timeout, blocking, {"execute": execute}, what)
        job_limits(name, concurrency, rate_limit, None, what)
        own = Job.make(
            name,
            params=CronFire,
            execute=execute,
            retry=retry,
            max_attempts=max_attempts,
            logging=logging,
            timeout=timeout,
            blocking=blocking,
            concurrency=concurrency,
            rate_limit=rate_limit,
        )
        return cls(name, schedule, own, None, missed, tenant_id)

    def bind(self, runtime: Runtime) -> CronHandler:
        """The handler of this cron job inside an engine (used by the engine)."""
        return CronHandler(self)


class CronHandler:
    """A cron job as registered with an engine; the engine's `CronScheduler` fires it."""

    def __init__(self, cron: CronJob[Any]) -> None:
        self.job = cron

    async def on_alarm(self, alarm: Alarm) -> None:
        """Cron jobs use no alarms; the engine routes none here."""


class CronInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A stored cron job, as ``client.crons`` reports it.

    Attributes:
        name: The cron job's name.
        job_name: The job each fire enqueues.
        schedule: The cron expression (or interval) as stored.
        tz: The time zone its expression is read in.
        enabled: Whether it fires.
        next_run_at: The next fire time (kept while disabled, recomputed on enable);
            ``None`` where the schedule has no fire left by 9999-12-31T00:00:00Z,
            the latest time djobs schedules anything for.
        last_run_at: When it last fired.
        last_job_id: The job its last fire enqueued.
    """

    name: str
    job_name: str
    schedule: str
    tz: str
    enabled: bool
    next_run_at: datetime | None = None
    last_run_at: datetime | None = None
    last_job_id: str | None = None
    tenant_id: str | None = None


def _info(record: CronRecord) -> CronInfo:
    return CronInfo(
        name=record.name,
        job_name=record.job_name,
        schedule=record.expression,
        tz=record.tz,
        enabled=record.enabled,
        tenant_id=record.tenant_id,
        last_job_id=record.last_job_id,
        next_run_at=None if record.next_run_at is None else to_datetime(record.next_run_at),
        last_run_at=None if record.last_run_at is None else to_datetime(record.last_run_at),
    )


class CronScheduler:
    """The cron jobs of one engine: stored at open, fired by the alarm task (`AlarmSleeper.loop`),
    which sleeps until the earlier of its next alarm and their next run (`due_at`)."""

    def __init__(
        self,
        env: Env,
        storage: QueueStorage,
        queue: JobQueue,
        handlers: list[CronHandler],
        poll_ms: int | None,
        wakeup: Wakeup,
    ) -> None:
        self.env = env
        self.storage = storage
        self.queue = queue
        self.crons: dict[str, CronJob[Any]] = {h.job.name: h.job for h in handlers}
        self._names = sorted(self.crons)
        self._log = env.logger.getChild("cron")
        # Another process may enable a cron job or change a schedule: poll_ms bounds the wait.
        self._poll_ms = poll_ms
        #: What the task that fires the cron jobs sleeps on (the alarm sleeper's): a poke wakes it.
        self._wakeup = wakeup
        #: Its writes run to their end without a checkpoint (`writes_inline`): a fire needs no
        #: hand-off count around its write, and the caller's reading serves its events.
        self._inline = writes_inline(storage)
        #: When to look next: at once on opening, then the earliest stored next run (or the
        #: poll interval, or a second after a storage error); ``None`` when no cron job is enabled.
        self._due: int | None = 0 if self._names else None
        for cron in self.crons.values():
            if cron.tenant_id is None and queue.tenancy == "required":
                raise TenantError(f"cron job {cron.name!r} has no tenant_id, and this engine requires one")

    @property
    def names(self) -> list[str]:
        """The names of this engine's cron jobs, sorted."""
        return self._names

    async def sync(self) -> None:
        """Write the definitions to storage; an unchanged schedule keeps its stored next run."""
        now = self.env.now_ms()
        specs = []
        for cron in self.crons.values():
            expression, tz = _stored_schedule(cron.schedule)
            params = cron.params if cron.params is not None else b"null"
            specs.append(
                CronSpec(
                    name=cron.name,
                    job_name=cron.job.name,
                    expression=expression,
                    tz=tz,
                    params=params,
                    tenant_id=cron.tenant_id,
                    first_run_at=next_fire(cron.schedule, now),
                    now=now,
                )
            )
        if specs:
            await self.storage.sync_cron_jobs(specs)

    def poke(self, at_ms: int) -> None:
        """Look again at `at_ms` (a cron job was enabled): wake the task that fires them if it sleeps past that."""
        if self._due is None or at_ms < self._due:
            self._due = at_ms
        self._wakeup.poke(at_ms)

    async def has_due(self) -> bool:
        """Whether a cron job of this engine is due now."""
        if not self._names:
            return False
        now = self.env.now_ms()
        if not await self.storage.due_cron_jobs(self._names, now):
            return False
        self.poke(now)
        return True

    def due_at(self) -> int | None:
        """When the cron jobs next need a look (epoch ms), ``None`` for never (until a poke)."""
        return self._due

    async def run_due(self, now: int) -> None:
        """Fire the cron jobs due at `now`, then note when to look next (`due_at`).

        Run by the alarm sleeper's task (`AlarmSleeper.loop`), which sleeps until the
        earlier of its next alarm and `due_at`: one task and one wake-up where an hourly
        cron and an hourly schedule fire together. Never raises but for a cancel: a storage
        error (or a bug) is logged and the cron jobs are looked at again a second later.
        `now`: the engine clock's reading, taken with no checkpoint since; read again before
        each further fire of the pass (a fire may have run a synchronous body in this task),
        for its job's lease and events; whether a fire was missed is judged against `now` as
        given: the engine ran all through the pass, and `missed` is about fire times missed
        while no engine ran (a sibling's long body makes no fire due with it a missed one).
        """
        storage = self.storage
        self._due = None  # a poke while this runs sets it (below: the earlier of the two counts)
        # With writes that never checkpoint (`writes_inline`), nothing but this task runs from
        # the caller's reading `now` until the checkpoint below: it stamps the fires' events and
        # starts, where another storage's write lets time pass (a reading is taken after it).
        stamp = now if self._inline else None
        judged = now  # the pass's reading: what a fire's lateness is judged against
        try:
            due = await storage.due_cron_jobs(self._names, now)
            # The next run each fire here stored (0: another engine's; None: none left).
            stored: dict[str, int | None] = {}
            fired = False
            while due:
                again = False
                for record in due:
                    if fired:
                        # The fire before may have run its job's synchronous body in this task,
                        # for as long as it took: this fire's job's lease and events start now.
                        now = self.env.clock.now_ms()
                        if stamp is not None:
                            stamp = now
                    fired = True
                    # Read again only when a fire leaves its job due (missed fires run one by
                    # one) or another engine fired it first (its next time unknown here).
                    following = stored[record.name] = await self._fire(record, now, stamp, judged)
                    if following is not None and following <= now:
                        again = True
                if again:
                    await trio.lowlevel.checkpoint()  # a long run of missed fires lets the other tasks run
                    stamp = None
                    due = await storage.due_cron_jobs(self._names, now)
                else:
                    due = []
            next_at: int | None = None  # the earliest next run stored here
            for following in stored.values():
                if following is not None and (next_at is None or following < next_at):
                    next_at = following
            if len(stored) != len(self._names) or (next_at is not None and next_at <= now):
                # Unless every cron job of this engine fired here just now: then its next run
                # is the one it stored, so there is nothing to read (a change made elsewhere
                # since shows at the next wake-up or poll, as it would after a read).
                next_at = await storage.next_cron_at(self._names)
        except StorageError as exc:
            self._log.error("cron task: %s; trying again in 1 s", printable(exc.message))
            next_at = now + 1000
        except Exception:
            self._log.exception("bug: firing the cron jobs raised; trying again in 1 s")
            next_at = now + 1000
        if next_at is not None and next_at <= now:
            # A job due now was left (another process fired it meanwhile): look again in a
            # millisecond rather than spin without letting time pass.
            next_at = now + 1
        if self._poll_ms is not None:
            polled = now + self._poll_ms
            next_at = polled if next_at is None else min(next_at, polled)
        poked = self._due
        self._due = next_at if poked is None or (next_at is not None and next_at < poked) else poked

    async def _fire(self, record: CronRecord, now: int, stamp: int | None, judged: int) -> int | None:
        """Fire `record` (enqueue its job, or skip a missed time) and store its next run time.
        `now`: a clock reading, the job's enqueue time and lease start. `stamp`: a clock reading
        still current after the write (``None``: read one then), the time of the fire's events
        and of its job's start. `judged`: the reading the fire's pass began with, against which
        its lateness is judged (`missed`): a fire due then is on time, whatever ran before it.

        Returns that next run time (``None`` where its schedule has none by `LATEST_MS`:
        it stays enabled with no next run), or ``0`` when another engine fired
        this time first.
        """
        cron = self.crons[record.name]
        due = record.next_run_at
        assert due is not None
        following = next_fire(cron.schedule, due)
        on_time = (following is None or following > judged) and judged - due <= MISFIRE_GRACE_MS
        fire_time = due
        if on_time or cron.missed == "all":
            run, next_run_at = True, following
        else:
            # One run for the span, for its latest fire time (APScheduler's coalesce does the same),
            # or none; either way the schedule goes on from that time: an `every` keeps its grid.
            latest, next_run_at = resume_fire(cron.schedule, due, judged)
            run = cron.missed == "once"
            if run:
                fire_time = latest
        fire_moment = to_datetime(fire_time)
        queue = self.queue
        row = None
        if run:
            handler = queue.handlers[cron.job.name]
            params = cron.params
            if params is None:
                # A CronFire of a registered cron job's (checked) name and a UTC time always encodes
                # and matches itself: encoded as `encode` would, without its validating decode.
                params = _fire_encoder.encode(CronFire(cron.name, fire_moment))
            made = queue.row(
                handler,
                params,
                scheduled_for=fire_time,
                now=now,
                correlation_id=f"cron:{cron.name}",
                tenant_id=cron.tenant_id,
            )
            if isinstance(made, ValidationError):
                # The job's limit_key refused these params: this fire enqueues nothing (logged);
                # the schedule goes on.
                self._log.error(
                    "cron %s: the fire due at %s enqueues nothing: %s",
                    cron.name,
                    fire_moment.isoformat(),
                    printable(made.message),
                )
            else:
                row = made
        worker = queue.worker
        # Stored running under this engine's worker and handed to it, where it can be: no
        # claim, no wake-up of the claim loop (else stored pending, and the loop is poked).
        at_once = row is not None and worker.takes_at_once(row)
        inline = self._inline
        handoffs = queue.env.handoffs
        if not inline:  # (a write that never checkpoints lets no one see it half done)
            handoffs.begin()  # the job row exists before the worker is poked to run it
        try:
            if at_once:
                fired = await self.storage.fire_cron(
                    cron.name, due, next_run_at, now, row, worker.id, now + worker.lease_ms
                )
            else:
                fired = await self.storage.fire_cron(cron.name, due, next_run_at, now, row)
        finally:
            if not inline:
                handoffs.end()
        if not fired:
            return 0  # another engine fired this time first
        fired_at = utc_isoformat(fire_time)
        if next_run_at is None:
            self._log.warning("cron %s has no next fire: %s", cron.name, _ENDED)
        if row is None:
            self._log.info("cron %s: skipped the missed fire time %s", cron.name, fired_at)
            worker.emit(
                [
                    self.env.event(
                        "cron.skipped",
                        cron.name,
                        KIND,
                        cron.name,
                        fire_at=fired_at,
                        next_run_at=None if next_run_at is None else utc_isoformat(next_run_at),
                    )
                ]
            )
            return next_run_at
        if not at_once:
            worker.poke(now)
        # One clock reading for the fire's events and its job's start: nothing runs between them.
        at = stamp if stamp is not None else self.env.clock.now_ms() if worker.tracking or at_once else None
        events = None
        if worker.tracking:
            events = [
                self.env.event(
                    "cron.fired", cron.name, KIND, cron.name, at, job_id=row.id, fire_at=fired_at, on_time=on_time
                ),
                self.env.event(
                    "job.enqueued",
                    row.id,
                    "job",
                    row.name,
                    at,
                    scheduled_for=fired_at,
                    tenant_id=row.tenant_id,
                    correlation_id=row.correlation_id,
                ),
            ]
        if at_once:
            # No await since the commit: the engine never looked idle. The events go with the start's.
            await worker.start_stored(row, at, events)
        elif events:
            worker.emit(events)
        return next_run_at

    # -- client operations -------------------------------------------------------------

    def _cron(self, scope: str | None, cron: object) -> Result[CronJob[Any], JobNotFoundError | ValidationError]:
        match check_short_text(scope, "the client's tenant id"):
            case Failure(bad):
                return Failure(bad)
        name = name_of(cron)
        found = self.crons.get(name)
        hidden = scope is not None and found is not None and found.tenant_id != scope
        if found is None or hidden or (not isinstance(cron, str) and found is not cron):
            # Another tenant's cron job is answered as an unknown one: no existence oracle.
            return Failure(JobNotFoundError(name, f"no cron job named {name!r} is registered with this engine"))
        return Success(found)

    async def _record(self, name: str) -> CronRecord:
        for record in await self.storage.list_cron_jobs():
            if record.name == name:
                return record
        raise StorageError(f"cron job {name!r} is missing from storage; reopen the engine to store it again")

    async def list_crons(self, scope: str | None) -> Result[list[CronInfo], StorageError | ValidationError]:
        match check_short_text(scope, "the client's tenant id"):
            case Failure(bad):
                return Failure(bad)
        records = await self.storage.list_cron_jobs()
        return Success([_info(r) for r in records if r.name in self.crons and (scope is None or r.tenant_id == scope)])

    async def get(self, scope: str | None, cron: object) -> Result[CronInfo, Any]:
        async def info(job: CronJob[Any]) -> Result[CronInfo, Any]:
            return Success(_info(await self._record(job.name)))

        return await bind_async(self._cron(scope, cron), info)

    async def set_enabled(self, scope: str | None, cron: object, enabled: bool) -> Result[CronInfo, Any]:
        return await bind_async(self._cron(scope, cron), lambda job: self._set_enabled(job, enabled))

    async def _set_enabled(self, job: CronJob[Any], enabled: bool) -> Result[CronInfo, Any]:
        now = self.env.now_ms()
        # Enabling starts from now: fire times that passed while disabled are not "missed".
        next_run_at = next_fire(job.schedule, now) if enabled else None
        record = await self.storage.set_cron_enabled(job.name, enabled, next_run_at, now)
        if record is None:
            raise StorageError(f"cron job {job.name!r} is missing from storage; reopen the engine to store it again")
        if enabled and next_run_at is not None:
            self.poke(next_run_at)
        return Success(_info(record))

    async def next_runs(self, scope: str | None, cron: object, n: object) -> Result[list[datetime], Any]:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1000:
            return Failure(ValidationError(f"n must be an int from 1 to 1000, got {safe_repr(n)}"))
        return await bind_async(self._cron(scope, cron), lambda job: self._next_runs(job, n))

    async def _next_runs(self, job: CronJob[Any], n: int) -> Result[list[datetime], Any]:
        record = await self._record(job.name)
        if record.enabled and record.next_run_at is not None:
            first: int | None = record.next_run_at
        else:
            first = next_fire(job.schedule, self.env.now_ms())
        # The runs past `LATEST_MS` are not shown.
        return Success([to_datetime(t) for t in runs_from(job.schedule, first, n) if t <= LATEST_MS])


class CronsClient:
    """The verbs on an engine's cron jobs; get it as ``engine.client.crons``.

    A cron job is named by its definition or its name; one the engine does
    not register gives `JobNotFoundError`. A tenant-scoped client sees only
    that tenant's cron jobs.
    """

    def __init__(self, scheduler: CronScheduler, tenant: str | None = None) -> None:
        self._scheduler = scheduler
        self._tenant = tenant

    def get(
        self, cron: CronJob[Any] | str
    ) -> FutureResult[CronInfo, JobNotFoundError | ValidationError | StorageError]:
        """One cron job: schedule, enabled, next and last run."""
        s, scope = self._scheduler, self._tenant
        return effect(lambda: s.get(scope, cron), s.env)

    def enable(
        self, cron: CronJob[Any] | str
    ) -> FutureResult[CronInfo, JobNotFoundError | ValidationError | StorageError]:
        """Fire again, from the next fire time after now (times missed while disabled are not run)."""
        s, scope = self._scheduler, self._tenant
        return effect(lambda: s.set_enabled(scope, cron, True), s.env)

    def disable(
        self, cron: CronJob[Any] | str
    ) -> FutureResult[CronInfo, JobNotFoundError | ValidationError | StorageError]:
        """Stop firing (in every engine on this database) until enabled again."""
        s, scope = self._scheduler, self._tenant
        return effect(lambda: s.set_enabled(scope, cron, False), s.env)

    def next_runs(
        self, cron: CronJob[Any] | str, n: int = 5
    ) -> FutureResult[list[datetime], JobNotFoundError | ValidationError | StorageError]:
        """The next `n` fire times (from the stored next run; from now if disabled)."""
        s, scope = self._scheduler, self._tenant
        return effect(lambda: s.next_runs(scope, cron, n), s.env)

    def list(self) -> FutureResult[list[CronInfo], StorageError | ValidationError]:
        """Every cron job of this engine, by name."""
        s, scope = self._scheduler, self._tenant
        return effect(lambda: s.list_crons(scope), s.env)
