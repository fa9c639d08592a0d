"""The queue worker: one claim loop per engine that leases due jobs and runs them.

- The *claim loop* leases due rows in batches (``UPDATE … RETURNING``). It
  keeps up to ``batch_size`` (at least ``max_concurrency``) rows in hand, started or
  not, and tops up once half of them are gone, so the number of claims (and
  commits) does not grow with the number of slots. It reclaims rows whose
  lease ran out (their worker crashed) on a timer, not before every claim.
  Then it sleeps until the earliest due row or lease end, or until an
  enqueue in this process pokes it (the alarm sleeper's pattern);
  ``poll_interval`` caps the sleep for rows other processes add.
- Rows a claim brings back start at once while slots are free. A row that
  waited in hand starts only through the *start task*, whose one statement
  (`start_held_jobs`) starts it only if this worker still holds it at that
  attempt, extending its lease from then; a row whose cancel was requested
  meanwhile ends ``cancelled`` there and never starts, one another worker
  reclaimed is dropped, and a due row more urgent than the best one in hand is
  claimed in the same transaction and starts first. A row in hand therefore
  never runs twice: its start and a reclaim cannot both succeed.
- The *settle task* writes how attempts ended in batches: jobs that finish
  together share one transaction.
- The *lease loop* renews every lease this process holds (rows in hand too)
  in one statement, three times per ``lock_timeout``. The same statement
  reports cancels requested by other processes, and rows lost to a reclaim.
- Every running job has a cancel scope here, so ``client.jobs.cancel`` of a
  job running in this process cancels it through Trio.
- Closing stops claiming, hands back rows claimed but not started, lets
  running jobs finish within the grace period, and then interrupts and hands
  back the rest (their attempt does not count).

The worker runs each job body on the Trio thread, in the engine's nursery: a
job that blocks the thread blocks the engine, as any Trio code would.
"""

from __future__ import annotations

import contextvars
import heapq
import math
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import msgspec
import trio

from ._durations import DurationLike, duration, to_ms
from ._errors import JobCancelledError, StorageError, ValidationError
from ._execution import Env, holds_interrupt
from ._input import check_count, check_interval, clean_message
from ._leases import free_exited
from ._printable import printable
from ._wakeup import Wakeup
from .storage import ClaimedJob, ExpiredLease, HeldStarts, JobSettlement, NewJob, QueueStorage
from .storage._base import QueueLimit, writes_inline
from .tracking import NoopTracker, TrackedEvent

__all__ = ["AttemptEnd", "AttemptRunner", "RunHandle", "Worker", "WorkerOptions"]

_error_encoder = msgspec.json.Encoder()


def error_json(tag: str, message: str) -> bytes:
    """The stored form of a job's error: ``{"tag": ..., "message": ...}``."""
    return _error_encoder.encode({"tag": tag, "message": clean_message(message)})


#: How often, at most, the reclaim looks for the leases of this host's exited processes
#: (`djobs._leases.free_exited`), in engine ms: one read of the leases held, no more often
#: than this, since an engine that opens looks at once (a restart is the usual case).
FREE_EXITED_EVERY_MS = 60_000
#: What a cancelled row stores as its error.
CANCELLED_ERROR = error_json("job_cancelled", "the job was cancelled")
_LEASE_ERROR = error_json(
    "execution", "the worker running the job's last attempt stopped renewing its lease (it crashed or hung)"
)


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How an engine's worker runs the job queue; pass it as ``open_engine(worker=...)``.

    Args:
        max_concurrency: How many queued jobs run at once in this process.
            The default, 100, suits Trio bodies that await I/O: a running job
            costs one Trio task (a few kilobytes), and a body that waits 100 ms
            on an HTTP call holds its slot that long, so 5 slots would cap such
            jobs at 50 a second where 100 allow 1,000. Bodies that compute on
            the Trio thread gain nothing from more slots; lower it for them, or
            to bound what the jobs' own services (a connection pool, an API's
            rate limit) can take.
        lock_timeout: How long a claimed job's lease lasts without renewal; a
            crashed worker's jobs run again after this. Leases are renewed
            three times per timeout while a job runs.
        poll_interval: The longest the worker sleeps before looking for jobs
            that other processes enqueued (jobs enqueued in this process wake
            it at once). ``None`` trusts this process alone.
        batch_size: The most rows the worker holds leased, started or not
            (both are ints from 1 to 2,147,483,647, and the durations at most
            36,525 days; a `batch_size` below `max_concurrency` is raised to
            it, so every slot can hold a row): it claims up to this many at once
            and tops up when half are gone, so claims (and commits) do not
            grow with the number of jobs. A row held but not started starts
            only if this worker still holds it (never twice), an urgent row
            enqueued later goes before it, and one whose cancel was requested
            never starts.

    Raises:
        ValidationError: An option is out of range or not a duration.

    Examples:
        >>> WorkerOptions(max_concurrency=10, lock_timeout="1 minute").lock_timeout_ms
        60000
    """

    max_concurrency: int = 100
    lock_timeout: DurationLike = "5 minutes"
    poll_interval: DurationLike | None = "1 second"
    batch_size: int = 200
    lock_timeout_ms: int = field(init=False, repr=False)
    poll_interval_ms: int | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("max_concurrency", "batch_size"):
            check_count(getattr(self, name), f"WorkerOptions {name}")
        check_interval(duration(self.lock_timeout, what="lock_timeout"), "WorkerOptions lock_timeout")
        if self.poll_interval is not None:
            check_interval(duration(self.poll_interval, what="poll_interval"), "WorkerOptions poll_interval")
        lock_ms = to_ms(duration(self.lock_timeout, what="lock_timeout"))
        if lock_ms < 3:
            raise ValidationError(f"WorkerOptions(lock_timeout={self.lock_timeout!r}): must be at least 3 milliseconds")
        poll_ms = None if self.poll_interval is None else to_ms(duration(self.poll_interval, what="poll_interval"))
        if poll_ms is not None and poll_ms < 1:
            raise ValidationError(
                f"WorkerOptions(poll_interval={self.poll_interval!r}): must be at least 1 millisecond"
            )
        if self.batch_size < self.max_concurrency:  # every slot needs a row in hand to start
            object.__setattr__(self, "batch_size", self.max_concurrency)
        object.__setattr__(self, "lock_timeout_ms", lock_ms)
        object.__setattr__(self, "poll_interval_ms", poll_ms)


class AttemptEnd(msgspec.Struct):
    """How a claimed attempt ended, as its runner says; the worker writes it.

    `status` is ``completed`` (with `result`), ``failed`` (with `error`, the
    stored ``{"tag", "message"}`` JSON), or ``pending``: the attempt failed
    and the next one is due at `retry_at`. (``cancelled`` is the worker's own:
    a run it cancelled.) `events` are emitted once the row is written.
    (A struct: one is built per attempt, without a Python call.)
    """

    status: Literal["completed", "failed", "pending", "cancelled"]
    result: bytes | None = None
    error: bytes | None = None
    retry_at: int | None = None
    events: Sequence[TrackedEvent] = ()
    #: When it ended (epoch ms), if the runner read the clock for it; else the worker reads it.
    at: int | None = None


class AttemptRunner(Protocol):
    """The worker's runner seam: what runs a claimed row's attempt (one per job name).

    The worker owns the row: its lease, its cancel scope and its settlement.
    The runner runs the body and returns a value; it never reaches back into
    the worker.
    """

    def start_attempt(
        self, job: ClaimedJob, lease: tuple[QueueStorage, str], now_ms: int | None = None
    ) -> AttemptEnd | Callable[[trio.CancelScope], Awaitable[AttemptEnd]]:
        """Start the leased attempt `job` (`lease`: the storage and the holder's id, for
        progress writes; `now_ms`: the clock's reading the worker took as it started it,
        ``None`` to read it here). Raises nothing but cancellation.

        If the attempt ends without awaiting (a synchronous body), how it ended;
        the worker then writes it without a task of its own. Otherwise the rest of
        the attempt, which the worker awaits in a task, passing the run's cancel
        scope: whatever it awaits runs inside that scope (``cancel`` and the
        engine's close reach the job through it), and the worker reads
        ``scope.cancelled_caught`` afterwards.
        """
        ...

    def counted_failure(self, job: ClaimedJob, exc: Exception) -> AttemptEnd:
        """How an attempt ends that an unexpected exception `exc` ended: a counted
        failure, retried by the job's policy if attempts are left."""
        ...


@dataclass(slots=True, eq=False)
class RunHandle:
    """A job running in this process: its cancel scope and why it was cancelled."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    #: Set once the run is over and its row settled; made only when someone waits (`ended`).
    _done: trio.Event | None = None
    #: Whether the run is over and its row settled.
    over: bool = False
    #: Another worker reclaimed the row: whatever this run ends with is not written.
    lost: bool = False
    #: Claimed by the worker (not a ``now`` run in a caller's task).
    claimed: bool = False
    #: Its settlement waits in the worker's batch; `ended` is set once it is written.
    settling: bool = False
    #: Its hold: (job id, attempt), or (job id, 0) for a ``now`` run.
    key: tuple[str, int] = ("", 0)

    def ended(self) -> trio.Event:
        """An event set once the run is over and its row settled (already set if it is)."""
        if self._done is None:
            self._done = trio.Event()
            if self.over:
                self._done.set()
        return self._done

    def end(self) -> None:
        """The run is over and its row settled: wake whoever waits on `ended`."""
        self.over = True
        if self._done is not None:
            self._done.set()


class Worker:
    """The queue side of one engine: leases, running jobs, and (if enabled) the claim loop.

    Exists in every engine, also a client-only one (``worker=None``), because
    ``now`` runs jobs in the caller's task under a lease this renews.
    """

    def __init__(
        self,
        env: Env,
        storage: QueueStorage,
        nursery: trio.Nursery,
        options: WorkerOptions,
        *,
        claiming: bool,
        worker_id: str,
    ) -> None:
        self.env = env
        self.storage = storage
        self.options = options
        self.claiming = claiming
        #: The engine's id (``host:pid:token:random``), the owner of the job leases it holds.
        self.id = worker_id
        self._lease = (storage, worker_id)
        #: Its settles run to their end without a checkpoint (`writes_inline`): no shield around them.
        self._inline = writes_inline(storage)
        self.lease_ms = options.lock_timeout_ms
        #: Whether events are worth building (not with the `NoopTracker`).
        self.tracking = not isinstance(env.tracker, NoopTracker)
        self.closing = False
        self._log = env.logger.getChild("worker")
        self._nursery = nursery
        self._runners: dict[str, AttemptRunner] = {}
        self._names: list[str] = []
        # The limits of the names that have some; their rows are claimed only under them.
        self._limits: list[QueueLimit] = []
        # Limited rows may wait for a slot here: the end of a run looks for them at once.
        self._slot_wanted = False
        self._running: dict[str, RunHandle] = {}
        # ``now`` runs with a row, in their callers' tasks: `close` waits for them as for claimed runs.
        self._now_runs = 0
        self._now_over = trio.Event()
        # Rows this process holds a lease on: claimed (started or not) and ``now`` runs.
        # Keyed by (job id, attempt): a row this worker lost and then claimed again is a new hold.
        # A ``now`` run holds (job id, 0) for all its attempts.
        self._held: set[tuple[str, int]] = set()
        # Rows in hand, not started, best first: (-priority, scheduled_for, id, claim round, row);
        # UUIDv7 ids put rows due together in the order they were enqueued.
        self._ready: list[tuple[int, int, str, int, ClaimedJob]] = []
        self._round = 0  # the claim that brought rows in: a row of the current claim starts without a check
        # Rows the start task is checking now, and local cancels that reached them meanwhile.
        self._starting: dict[str, ClaimedJob] = {}
        self._starting_done = trio.Event()
        self._cancel_wanted: set[str] = set()
        self._start_wanted = trio.Event()
        #: Re-claimed rows waiting for an earlier attempt of theirs, still running here, to end.
        self._deferred: dict[str, ClaimedJob] = {}
        self._claimed_runs = 0  # rows in hand: started, waiting, or settling
        #: Concurrency slots free now: a run in a task holds one (`_launch` to `_run_over`); a plain
        #: count, read where a `CapacityLimiter`'s property cost three calls (a cron fire reads it thrice).
        self._free_slots: int = options.max_concurrency
        # Rows in hand are decoupled from the slots: a claim tops up to `_max_held`
        # once in hand falls to `_low_water`, so a claim carries about half a batch.
        self._max_held = options.batch_size  # at least max_concurrency (WorkerOptions raises it)
        self._low_water = self._max_held // 2
        # Reclaims run on a timer (and after every sleep), not before every claim.
        self._reclaim_every_ms = max(1, min(self.lease_ms // 3, 1000))
        self._reclaim_at = 0
        #: When the reclaim next looks for leases of this host's exited processes (`free_exited`;
        #: the engine looked as it opened): at most once a `FREE_EXITED_EVERY_MS`.
        self._free_exited_at = env.clock.now_ms() + FREE_EXITED_EVERY_MS
        self._capacity = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self._wakeup = Wakeup(env.clock, options.poll_interval_ms)
        #: The claim loop was woken to read its next due time again (`_none_held`).
        self._rechecking = False
        #: The lease loop's sleep, while it sleeps: its deadline is the next renewal.
        self._renewal: trio.CancelScope | None = None
        self._renew_every_s = max(self.lease_ms // 3, 1) / 1000
        # (settlement, its events, the run's handle (None: ended in `_launch`), its hold, the poke after it)
        self._settling: list[
            tuple[JobSettlement, Sequence[TrackedEvent], RunHandle | None, tuple[str, int], int | None]
        ] = []
        self._unsettled: set[tuple[str, int]] = set()
        self._settle_wanted = trio.Event()
        #: A caller that started rows itself writes how the ones that ended at once ended
        #: (`start_stored`): the settle task is not woken for them.
        self._settle_here = False

    # -- registration and pokes ---------------------------------------------------------

    def register(self, name: str, runner: AttemptRunner, limit: QueueLimit | None = None) -> None:
        """Claim and run rows named `name` with `runner`, under `limit` (its definition's
        concurrency and rate limits) if given."""
        self._runners[name] = runner
        self._names = sorted(self._runners)
        self._limits = [lim for lim in self._limits if lim.name != name]
        if limit is not None:
            self._limits.append(limit)

    @property
    def names(self) -> Sequence[str]:
        """The job names this worker runs."""
        return self._names

    def new_id(self) -> str:
        """A fresh job (or run) id from the ids layer, at the clock layer's current time."""
        return self.env.ids.job_id(self.env.clock.now_ms())

    def poke(self, at_ms: int) -> None:
        """A job was enqueued due at `at_ms`: wake the claim loop if it sleeps past that."""
        self._wakeup.poke(at_ms)

    def takes_at_once(self, job: NewJob) -> bool:
        """Whether `job`, a row this engine is about to store (a cron fire's), may be stored
        ``running`` under this worker's lease and handed to it (`start_stored`) instead of
        stored ``pending`` for the claim loop: this worker claims rows of its name, has a
        free slot and no row waiting in hand (a busy worker leaves the row to whichever
        process has room first), is not closing, and the row carries no key a claim or an
        enqueue must check (limit, unique, idempotency)."""
        return (
            self.claiming
            and not self.closing
            and job.name in self._runners
            and self._free_slots > 0
            and not self._ready
            and self._claimed_runs < self._max_held
            and job.limit_key is None
            and job.unique_key is None
            and job.idempotency_key is None
        )

    async def start_stored(
        self, job: NewJob, at_ms: int | None = None, events: list[TrackedEvent] | None = None
    ) -> None:
        """Run `job`, which the caller's transaction stored ``running`` (attempt 1) under this
        worker's lease (its end a lock timeout from `job`'s creation), as if the claim loop had
        claimed it: started now if a slot is free; if its slot was taken while it was stored,
        handed back ``pending`` (its attempt not counted) for whichever worker has room first.

        If its attempt ended at once (a synchronous body), how it ended is written here, in
        the caller's task, before this returns (the settle task is not woken for it).
        `at_ms`: the clock's reading the caller took since it stored the row (its events'
        time and the attempt's start), ``None`` to read it here. `events`: the caller's own
        events about the row (emitted first, with ``job.claimed``, in one hand-over)."""
        claimed = ClaimedJob(
            id=job.id,
            name=job.name,
            params=job.params,
            attempt=1,
            max_attempts=job.max_attempts,
            scheduled_for=job.scheduled_for,
            priority=job.priority,
            correlation_id=job.correlation_id,
            tenant_id=job.tenant_id,
        )
        emitted = [] if events is None else events
        if self.closing or self._free_slots <= 0 or self._ready:
            if events:
                self.emit(emitted)
            if self.closing:
                self._accept([claimed], at_ms=at_ms)  # claimed while closing: handed back at once
                return
            # Its slot was taken while it was stored: handed back pending (the attempt does not
            # count), for whichever worker has room first, rather than waiting in this one's hand.
            self._claimed_runs += 1
            self._held.add((claimed.id, claimed.attempt))
            if self._idle.is_set():
                self._idle = trio.Event()
            self._nursery.start_soon(self._hand_back, [claimed])
            return
        # The claim loop's `_accept` and `_start_fresh` for one fresh row that starts at once:
        # a new id (no earlier attempt runs here), no limit key, nothing in hand to go first.
        key = (claimed.id, 1)
        self._claimed_runs += 1
        self._held.add(key)
        if self.tracking:
            emitted.append(
                self.env.event("job.claimed", claimed.id, "job", claimed.name, at_ms, attempt=1, worker_id=self.id)
            )
        if emitted:
            self.env.emit(emitted)
        waking = self._settle_wanted.is_set()  # the settle task takes what waits, ours too
        inline = self._inline
        if not inline:
            # Its end is written across an await: held (renewed) and in hand until then.
            self._renew_soon()
            self._busy()
        self._settle_here = True
        try:
            launched = self._launch(claimed, at_ms)
        finally:
            self._settle_here = False
        if launched:
            if inline:
                self._busy()
                self._renew_soon()
            return  # its task settles it
        # Ended at once, holding no slot: its count goes (no await since the +1 above: nothing
        # waited on a capacity or a slot it never took); its row stays held until its end is
        # written, here or (`waking`) by the settle task.
        self._claimed_runs -= 1
        if waking:
            self._busy()  # a settlement waits for the settle task
        else:
            # With writes that never checkpoint, nothing runs until this is written: the engine
            # never looks idle meanwhile, and a renewal is needed only if something is still held.
            await self.flush()
        if inline and self._held:
            self._renew_soon()

    def _busy(self) -> None:
        """Something is in hand or settling: not idle (`wait_idle` waits) until `_check_idle`."""
        if self._idle.is_set():
            self._idle = trio.Event()

    def emit(self, events: list[TrackedEvent]) -> None:
        """Hand events to the tracker (after the commit they describe)."""
        if events:
            self.env.emit(events)

    def event(self, type: str, job_id: str, name: str, at_ms: int | None = None, **data: Any) -> TrackedEvent:
        """A queue event: the instance id is the job id, the job type ``job`` (stamped with the
        clock's time, or `at_ms`, a reading the caller took)."""
        return self.env.event(type, job_id, "job", name, at_ms, **data)

    # -- running jobs -------------------------------------------------------------------

    @contextmanager
    def running(self, job_id: str, *, attempt: int | None = None) -> Iterator[RunHandle]:
        """Register a run of `job_id` in this process: its lease is renewed and
        ``cancel`` reaches its scope until the block exits.

        `attempt` is a claimed attempt's number; ``None`` for a ``now`` run.
        """
        key = (job_id, 0 if attempt is None else attempt)
        # A claimed run is shielded from a cancel of the scope around the engine: `close`
        # lets it finish for the grace period, then cancels it. A ``now`` run is its caller's.
        handle = RunHandle(claimed=attempt is not None, key=key, scope=trio.CancelScope(shield=attempt is not None))
        self._running[job_id] = handle
        self._hold(key)
        if attempt is None:
            self._now_runs += 1
        try:
            yield handle
        finally:
            if self._running.get(job_id) is handle:  # not replaced by a later claim of a lost row
                del self._running[job_id]
            if not handle.settling:
                self._held.discard(key)
                handle.end()
            if attempt is None:
                self._now_runs -= 1
                if not self._now_runs:
                    self._now_over.set()

    def cancel_local(self, job_id: str) -> trio.Event | None:
        """Cancel `job_id` if it runs (or waits to run) here; the event is set once its row is settled."""
        handle = self._running.get(job_id)
        if handle is not None:
            handle.scope.cancel()
            return handle.ended()
        if job_id in self._starting:
            # The start task is checking it: the check ends it cancelled (the cancel is
            # stored), or, if the start won, its run is cancelled as it starts.
            self._cancel_wanted.add(job_id)
            return self._starting_done
        for entry in self._ready:
            if entry[4].id == job_id:
                self._ready.remove(entry)
                heapq.heapify(self._ready)
                done = trio.Event()
                self._nursery.start_soon(self._hand_back, [entry[4]], done)
                return done
        return None

    def _hold(self, key: tuple[str, int]) -> None:
        self._held.add(key)
        self._renew_soon()

    def _renew_soon(self) -> None:
        """Rows are held: if the lease loop sleeps with none to renew, it renews a third
        of a lease from now (its deadline moved, without waking it)."""
        renewal = self._renewal
        if renewal is not None and renewal.deadline == math.inf:
            renewal.deadline = trio.current_time() + self._renew_every_s

    def _push_ready(self, job: ClaimedJob, claim_round: int = 0) -> None:
        heapq.heappush(self._ready, (-job.priority, job.scheduled_for, job.id, claim_round, job))
        self._start_wanted.set()

    def _start_now(self, job: ClaimedJob) -> bool:
        """Start `job` if a slot is free (no await: the caller has just checked it may start)."""
        if self._free_slots <= 0:
            return False
        if not self._launch(job):
            self._ended_at_once(1)
        return True

    def _launch(self, job: ClaimedJob, at_ms: int | None = None) -> bool:
        """Run `job`, a slot being free: to its end now if its runner needs no await (a
        synchronous body, which never holds the slot), else in a task of its own that
        takes the slot (nothing else ran meanwhile, so it is still free).

        Returns whether it took the slot; if not (it ended here), the caller
        calls `_ended_at_once` (once for several, as `_start_fresh` does).
        """
        runner = self._runners[job.name]
        try:
            # In a context of its own, as a task would be: a body's contextvars stay its own.
            started = contextvars.copy_context().run(runner.start_attempt, job, self._lease, at_ms)
        except Exception as exc:
            self._log.exception(
                "bug: attempt %d of job %s raised past its runner; it counts as failed", job.attempt, job.id
            )
            started = runner.counted_failure(job, exc)
        if isinstance(started, AttemptEnd):
            # No task, no handle (nothing can wait on or cancel it): its row stays held,
            # its lease renewed, until the settle task has written its end.
            self._record(job, started, None)
            return False
        self._free_slots -= 1
        self._nursery.start_soon(self._run, job, runner, started)
        return True

    def _ended_at_once(self, count: int) -> None:
        """`count` attempts started by `_launch` ended there (`_run_over` for runs that held no slot)."""
        self._claimed_runs -= count
        if self._slot_wanted:
            self._slot_wanted = False
            self.poke(self.env.clock.now_ms())
        if self._ready:
            self._start_wanted.set()
        self._capacity.set()  # never idle here: their settlements wait in the batch

    def _start_fresh(self, fresh: list[tuple[int, int, str, int, ClaimedJob]], at_ms: int | None = None) -> None:
        """Start the rows of the claim just made (`fresh`), best first, while slots are
        free and no row that waited in hand is better: leased moments ago, they need
        no check. The rest wait in hand, for the start task. `at_ms`: as `_accept`'s."""
        if not fresh:
            return
        fresh.sort()
        ready = self._ready
        free = self._free_slots  # only `_launch` takes slots meanwhile (no await)
        ended = started = 0
        for entry in fresh:
            if free <= 0 or (ready and ready[0] < entry):
                break
            started += 1
            if self._launch(entry[4], at_ms):
                free -= 1
            else:
                ended += 1
        if started < len(fresh):
            for entry in fresh[started:]:
                heapq.heappush(ready, entry)
            self._start_wanted.set()
        if ended:
            self._ended_at_once(ended)

    async def start_loop(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start rows that waited in hand as slots free up; the engine's single start task.

        Each round takes the best waiting rows, as many as slots are free, and
        starts them through one `start_held_jobs` transaction: only those this
        worker still holds at their attempt start (their leases extended from
        now), those whose cancel was requested end ``cancelled`` unstarted, and
        due rows more urgent than the best one taken are claimed there and
        start first.
        """
        storage = self.storage
        task_status.started()
        while True:
            free = self._free_slots
            if not self._ready or free <= 0 or self.closing:
                self._start_wanted = trio.Event()
                await self._start_wanted.wait()
                continue
            taken = [heapq.heappop(self._ready)[4] for _ in range(min(free, len(self._ready)))]
            self._starting = {job.id: job for job in taken}
            now = self.env.now_ms()
            try:
                # Shielded: once the transaction ran, its outcome must be applied here.
                with trio.CancelScope(shield=True):
                    starts = await storage.start_held_jobs(
                        self.id,
                        [(job.id, job.attempt) for job in taken],
                        now,
                        now + self.lease_ms,
                        CANCELLED_ERROR,
                        self._names,
                        taken[0].priority,
                    )
            except StorageError as exc:
                for job in taken:
                    self._push_ready(job)
                self._end_starting()
                self._log.error("start task: %s; trying again in 1 s", printable(exc.message))
                await trio.sleep(1)
                continue
            self._apply_starts(taken, starts)
            await trio.lowlevel.checkpoint()

    def _apply_starts(self, taken: list[ClaimedJob], starts: HeldStarts) -> None:
        started, cancelled = set(starts.started), set(starts.cancelled)
        gone: list[ClaimedJob] = []
        events: list[TrackedEvent] = []
        if starts.urgent:
            self._accept(starts.urgent)  # best first: they start before the rows taken
        for job in taken:
            if job.id in started:
                if self.closing:
                    self._push_ready(job)  # close hands back what is in hand
                elif not self._start_now(job):
                    self._push_ready(job)  # the urgent rows took its slot: checked again next round
                elif job.id in self._cancel_wanted:
                    handle = self._running.get(job.id)
                    if handle is not None:
                        handle.scope.cancel()
            else:
                gone.append(job)  # ended cancelled, or reclaimed by another worker: never started here
                if job.id in cancelled:
                    events.append(self.event("job.cancelled", job.id, job.name, attempt=job.attempt))
        for job in gone:
            self._held.discard((job.id, job.attempt))
        self._claimed_runs -= len(gone)
        self._end_starting()
        self.emit(events)
        if self.closing and self._ready:
            self._nursery.start_soon(self._hand_back_ready)
        if gone:
            self._capacity.set()
            self._check_idle()

    def _end_starting(self) -> None:
        self._starting = {}
        self._cancel_wanted.clear()
        self._starting_done.set()
        self._starting_done = trio.Event()

    async def _run(
        self, job: ClaimedJob, runner: AttemptRunner, rest: Callable[[trio.CancelScope], Awaitable[AttemptEnd]]
    ) -> None:
        """Await the rest of a started attempt (`rest`) in this task, under the run's scope."""
        key = (job.id, job.attempt)
        # Shielded from a cancel of the scope around the engine: `close` lets the run
        # finish for the grace period, then cancels it.
        run = RunHandle(claimed=True, key=key, scope=trio.CancelScope(shield=True))
        running = self._running
        running[job.id] = run
        try:
            await self._attempt(job, runner, run, rest)
        except Exception:
            self._log.exception("bug: the run of job %s (%s) raised; its lease will expire", job.id, job.name)
        finally:
            if running.get(job.id) is run:  # not replaced by a later claim of a lost row
                del running[job.id]
            if not run.settling:
                run.end()
            self._run_over(key)

    def _run_over(self, key: tuple[str, int], *, slot: bool = True) -> None:
        """A started attempt is over (its end handed to the settle task, or dropped): free
        its slot (`slot`: it held one, as a run in a task does)."""
        if slot:
            self._free_slots += 1
        if key not in self._unsettled:  # else the row stays held (renewed) until its batch is written
            self._held.discard(key)
        self._claimed_runs -= 1
        if self._slot_wanted:
            self._slot_wanted = False
            self.poke(self.env.clock.now_ms())
        if self._ready:
            self._start_wanted.set()
        self._capacity.set()
        self._check_idle()

    async def _attempt(
        self,
        job: ClaimedJob,
        runner: AttemptRunner,
        run: RunHandle,
        rest: Callable[[trio.CancelScope], Awaitable[AttemptEnd]],
    ) -> None:
        """Await one started attempt under its cancel scope and settle its row (fenced by holder and attempt)."""
        try:
            end = await rest(run.scope)
        except Exception as exc:
            # A bug after (or around) the user's code: the attempt counts, the row is not handed back.
            self._log.exception(
                "bug: attempt %d of job %s raised past its runner; it counts as failed", job.attempt, job.id
            )
            end = runner.counted_failure(job, exc)
        except BaseException as exc:
            if not holds_interrupt(exc):
                # Cancelled from outside (the engine is being torn down): hand the row
                # back; its attempt does not count.
                with trio.CancelScope(shield=True):
                    await self._release(job)
            # A KeyboardInterrupt raised inside the body (by the body itself, or a Ctrl-C that
            # Trio raised in its code) stopped this run as a crash would: the row is left
            # leased, and the next worker to take it counts this attempt as expired
            # (reliability.md, "Exceptions past a body"). A Ctrl-C delivered to the host's
            # task instead reaches a run as the close's cancel, and is handed back above.
            raise
        else:
            if run.scope.cancelled_caught:
                if run.lost:
                    return  # the row belongs to another worker now
                if self.closing:
                    # Cut off by a clean close (the grace period ran out): handed back, the
                    # attempt not counted. Shielded: the scope around the engine may be cancelled.
                    with trio.CancelScope(shield=True):
                        await self._release(job)
                    return
                cancelled = [self.event("job.cancelled", job.id, job.name, attempt=job.attempt)]
                stopped = JobCancelledError(job.id)
                end = AttemptEnd("cancelled", error=error_json(stopped.tag, stopped.message), events=cancelled)
        self._record(job, end, run)

    def _record(self, job: ClaimedJob, end: AttemptEnd, run: RunHandle | None) -> None:
        """Hand how an attempt ended to the settle task (`run`: ``None`` for one that ended
        where it started, in `_launch`)."""
        at = end.at if end.at is not None else self.env.clock.now_ms()
        limited = job.limit_key is not None
        settlement = JobSettlement(
            job_id=job.id,
            worker_id=self.id,
            attempt=job.attempt,
            status=end.status,
            at=at,
            result=end.result,
            error=end.error,
            scheduled_for=end.retry_at,
            limited=limited,
        )
        # A limited row's end frees a slot of its key: look for rows waiting on it once this is written.
        poke_at = at if limited else end.retry_at
        if run is None:
            # Else the settle task has been woken already and not yet taken the batch, or the
            # caller writes it (`start_stored`).
            if not self._settling and not self._settle_here:
                self._settle_wanted.set()
            self._settling.append((settlement, end.events, None, (job.id, job.attempt), poke_at))
            return
        self.settle(settlement, end.events, run, poke_at=poke_at)

    async def _release(self, job: ClaimedJob) -> None:
        """Hand back an attempt interrupted from outside; it does not count."""
        settlement = JobSettlement(
            job_id=job.id,
            worker_id=self.id,
            attempt=job.attempt,
            status="pending",
            at=self.env.now_ms(),
            release=True,
            error=CANCELLED_ERROR,
        )
        try:
            await self.storage.settle_jobs([settlement])
        except StorageError as exc:
            self._log.warning(
                "job %s: could not hand back an interrupted attempt; it runs after its lease: %s",
                job.id,
                printable(exc.message),
            )

    def _check_idle(self) -> None:
        if self._claimed_runs == 0 and not self._settling:
            self._idle.set()

    # -- settling claimed runs ----------------------------------------------------------

    def settle(
        self,
        settlement: JobSettlement,
        events: Sequence[TrackedEvent],
        handle: RunHandle,
        *,
        poke_at: int | None = None,
    ) -> None:
        """Write how a claimed attempt ended, batched with others ending about now.

        The batch is written by the settle task in one transaction as soon as
        the finished jobs yield to it; until then the row stays leased here
        (a crash before the write runs the attempt again, as any crash after
        the body and before its commit would). Events are emitted, and
        `poke_at` (a retry's due time) wakes the claim loop, after the write.
        """
        handle.settling = True
        self._unsettled.add(handle.key)
        self._settling.append((settlement, events, handle, handle.key, poke_at))
        self._settle_wanted.set()

    async def settle_loop(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write batched settlements whenever there are some; the engine's single settle task."""
        task_status.started()
        while True:
            await self._settle_wanted.wait()
            self._settle_wanted = trio.Event()
            await self.flush()

    async def flush(self) -> None:
        """Write the settlements waiting now, in one transaction."""
        batch, self._settling = self._settling, []
        if not batch:
            return
        applied: Sequence[bool | None]
        try:
            settlements = [item[0] for item in batch]
            if self._inline:  # no checkpoint in it, so no cancel can reach it: a shield would change nothing
                applied = await self.storage.settle_jobs(settlements)
            else:
                # Shielded: a batch taken must be written (or its rows let go) even when the
                # engine's tasks are cancelled.
                with trio.CancelScope(shield=True):
                    applied = await self.storage.settle_jobs(settlements)
        except StorageError as exc:
            # The rows stay as they are: their leases lapse and they run again.
            self._log.error(
                "could not record how %d job attempt(s) ended; they run again after their lease: %s",
                len(batch),
                printable(exc.message),
            )
            applied = [None] * len(batch)
        except Exception:
            # A bug in the settle path: the rows are let go, so their leases lapse and the
            # reclaim counts the attempts (failed if they were the last), never renewed forever.
            self._log.exception("bug: could not record how %d job attempt(s) ended; they count", len(batch))
            applied = [None] * len(batch)
        events: list[TrackedEvent] = []
        held, unsettled = self._held, self._unsettled
        for (settlement, job_events, handle, key, poke_at), ok in zip(batch, applied, strict=True):
            held.discard(key)
            if handle is not None:
                unsettled.discard(key)
                handle.end()
            if ok:
                if job_events:
                    events.extend(job_events)
                if poke_at is not None:
                    self.poke(poke_at)
            elif ok is not None:
                self._log.warning(
                    "job %s: attempt %d lost its lease before it ended; its outcome is dropped",
                    settlement.job_id,
                    settlement.attempt,
                )
        if events:
            self.env.emit(events)
        if not self._held:
            self._none_held()
        self._check_idle()

    def _none_held(self) -> None:
        """Every row this worker held has settled: nothing to renew, and the lease end
        the claim loop may sleep for is gone, so it reads its next due time again."""
        renewal = self._renewal
        if renewal is not None and renewal.deadline != math.inf:
            renewal.deadline = math.inf  # no wake-up for the lease loop until rows are held
        if self._wakeup.recheck():
            self._rechecking = True

    async def _hand_back(self, jobs: list[ClaimedJob], done: trio.Event | None = None) -> None:
        """Release claimed rows that never started (their attempt does not count); with
        `done`, they are handed back because a cancel was requested, so they end cancelled."""
        now = self.env.now_ms()
        settlements = [
            JobSettlement(
                job_id=j.id,
                worker_id=self.id,
                attempt=j.attempt,
                status="pending",
                at=now,
                release=True,
                error=CANCELLED_ERROR,
            )
            for j in jobs
        ]
        try:
            with trio.CancelScope(shield=True):
                applied = await self.storage.settle_jobs(settlements)
            if done is not None:  # handed back because it was cancelled: the row ends cancelled
                self.emit(
                    [
                        self.event("job.cancelled", j.id, j.name, attempt=j.attempt)
                        for j, ok in zip(jobs, applied, strict=True)
                        if ok
                    ]
                )
        except StorageError as exc:
            self._log.warning(
                "could not hand back %d claimed job(s); they run after their lease: %s",
                len(jobs),
                printable(exc.message),
            )
        finally:
            for j in jobs:
                self._held.discard((j.id, j.attempt))
            self._claimed_runs -= len(jobs)
            self._capacity.set()
            self._check_idle()
            if done is not None:
                done.set()

    async def _hand_back_ready(self) -> None:
        """Hand back every row in hand that has not started (closing)."""
        ready = [entry[4] for entry in self._ready]
        self._ready = []
        if ready:
            await self._hand_back(ready)

    # -- the claim loop ---------------------------------------------------------------

    async def claim_loop(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reclaim (on a timer), claim, start, sleep; forever. The engine's single claim task."""
        storage, clock, batch = self.storage, self.env.clock, self.options.batch_size
        task_status.started()
        while True:
            if not self._names:
                await trio.sleep_forever()  # nothing registered to run here
            held = self._claimed_runs
            free = self._max_held - held
            # Top up once half the rows in hand are gone, or at once when slots wait for rows.
            wanted = held <= self._low_water or (not self._ready and self._free_slots > 0)
            if free <= 0 or not wanted:
                self._capacity = trio.Event()
                await self._capacity.wait()
                continue
            now = clock.now_ms()
            reclaim = now >= self._reclaim_at
            self.env.handoffs.begin()  # claimed rows are running in storage before _accept starts them
            try:
                # Shielded: rows a transaction claimed must reach `_accept` (and so be started
                # or handed back), even when the engine's close cancels this loop.
                with trio.CancelScope(shield=True):
                    expired: Sequence[ExpiredLease] = ()
                    if reclaim:
                        if now >= self._free_exited_at:
                            self._free_exited_at = now + FREE_EXITED_EVERY_MS
                            if await free_exited(storage, self.env.clock):
                                self.env.alarm_waker.poke(now)  # the alarms they had claimed are due
                        expired = await storage.reclaim_expired(now, CANCELLED_ERROR, _LEASE_ERROR, batch)
                        self._reclaim_at = now + self._reclaim_every_ms
                    claimed = await storage.claim_jobs(
                        now,
                        now + self.lease_ms,
                        self.id,
                        self._names,
                        free,
                        limits=self._limits,
                        slots=self._free_slots,
                    )
            except StorageError as exc:
                self.env.handoffs.end()
                self._log.error("claim loop: %s; trying again in 1 s", printable(exc.message))
                await trio.sleep(1)
                continue
            except BaseException:
                self.env.handoffs.end()  # a bug: the loop restarts (`_guarded`), no hand-off is left counted
                raise
            try:
                if expired:
                    self._report_expired(expired)
                if claimed:
                    self._accept(claimed)
            finally:
                self.env.handoffs.end()
            if len(claimed) == free or len(expired) == batch:
                if len(expired) == batch:
                    self._reclaim_at = 0  # more may be waiting
                await trio.lowlevel.checkpoint()
                continue
            try:
                # Limited rows start only into a free slot: with none free, the end of a run looks.
                slots = self._limits and self._free_slots > 0
                self._slot_wanted = bool(self._limits) and not slots
                next_at = await storage.next_job_wakeup(self._names, now, self._limits if slots else ())
            except StorageError as exc:
                self._log.error("claim loop: %s; trying again in 1 s", printable(exc.message))
                await trio.sleep(1)
                continue
            if next_at is not None:
                # A row due now was added after the claim (another process): look again
                # in a millisecond rather than spin without letting time pass.
                next_at = max(next_at, now + 1)
            await self._wakeup.sleep_until(next_at)
            while self._rechecking:
                # Woken because the rows held here settled: read the next due time again
                # (the lease end it slept for is gone), and claim only once something is due.
                self._rechecking = False
                now = clock.now_ms()
                try:
                    next_at = await storage.next_job_wakeup(self._names, now, self._limits if slots else ())
                except StorageError:
                    break  # the claim below reads it again (and logs a failure)
                if next_at is not None and next_at <= now:
                    break
                await self._wakeup.sleep_until(next_at)
            self._reclaim_at = 0  # woken: a lease may have run out (the sleep's target), look at once

    def _accept(self, claimed: list[ClaimedJob], *, renew: bool = True, at_ms: int | None = None) -> None:
        """Start or keep the rows just claimed (`claimed`); `renew`: schedule their lease's
        renewal now (``False``: the caller does once it knows they are still held); `at_ms`:
        a clock reading taken since the claim, for their events and starts (``None``: read)."""
        self._claimed_runs += len(claimed)
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._round += 1
        claim_round, held = self._round, self._held
        refused: list[ClaimedJob] = []
        fresh: list[tuple[int, int, str, int, ClaimedJob]] = []
        if renew:
            self._renew_soon()
        for job in claimed:
            held.add((job.id, job.attempt))
            if job.limit_key is not None and not self.closing:
                # Claimed under its key's limits, which count it as started: it starts now,
                # or (its slot taken meanwhile) is handed back, never held in hand.
                if job.id in self._running or not self._start_now(job):
                    refused.append(job)
                continue
            earlier = self._running.get(job.id)
            if earlier is not None and earlier.claimed:
                # An earlier attempt still runs here, its lease lapsed (renewals failed):
                # stop it, its outcome unwritten, and start this attempt only once it has ended.
                earlier.lost = True
                earlier.scope.cancel()
                self._deferred[job.id] = job
                self._nursery.start_soon(self._start_after, earlier.ended(), job)
            else:
                fresh.append((-job.priority, job.scheduled_for, job.id, claim_round, job))
        if self.tracking:
            self.emit(
                [self.event("job.claimed", j.id, j.name, at_ms, attempt=j.attempt, worker_id=self.id) for j in claimed]
            )
        if refused:
            self._nursery.start_soon(self._hand_back, refused)
        if self.closing:
            # Claimed while the worker closes (the claim was in flight): hand them back at once.
            for entry in fresh:
                heapq.heappush(self._ready, entry)
            self._nursery.start_soon(self._hand_back_ready)
            return
        self._start_fresh(fresh, at_ms)

    async def _start_after(self, ended: trio.Event, job: ClaimedJob) -> None:
        await ended.wait()
        if self._deferred.pop(job.id, None) is job:  # else close() handed it back meanwhile
            self._push_ready(job)

    def _report_expired(self, expired: Sequence[ExpiredLease]) -> None:
        events: list[TrackedEvent] = []
        for lease in expired:
            self._log.warning(
                "job %s (%s): the lease of attempt %d by %s expired; it is now %s",
                lease.id,
                lease.name,
                lease.attempt,
                lease.worker_id,
                lease.status,
            )
            events.append(
                self.event(
                    "job.lease_expired",
                    lease.id,
                    lease.name,
                    attempt=lease.attempt,
                    worker_id=lease.worker_id,
                    status=lease.status,
                )
            )
            if lease.status == "failed":
                error = {"tag": "execution", "message": "the lease of its last attempt expired"}
                events.append(
                    self.event("job.failed", lease.id, lease.name, attempt=lease.attempt, will_retry=False, error=error)
                )
            elif lease.status == "cancelled":
                events.append(self.event("job.cancelled", lease.id, lease.name, attempt=lease.attempt))
        self.emit(events)

    # -- leases -----------------------------------------------------------------------

    async def lease_loop(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew the leases this process holds, three times per lock timeout."""
        task_status.started()
        while True:
            # An interval on while rows are held; no deadline (no wake-up for an idle worker)
            # while none is: `_renew_soon` and `_none_held` move it without waking this task.
            # An interval is a duration, so it is timed on Trio's clock, as the lease keeper's.
            deadline = trio.current_time() + self._renew_every_s if self._held else math.inf
            with trio.CancelScope(deadline=deadline) as scope:
                self._renewal = scope
                await trio.sleep_forever()
            self._renewal = None
            if self._held:
                await self.renew()

    async def renew(self) -> None:
        """Renew every lease held now; cancel runs whose cancel was requested or whose row was lost."""
        before = set(self._held)
        try:
            now = self.env.now_ms()
            rows = await self.storage.renew_leases(self.id, now + self.lease_ms, now)
        except StorageError as exc:
            self._log.error("could not renew %d lease(s): %s", len(before), printable(exc.message))
            return
        seen: set[str] = set()
        for job_id, cancel_requested in rows:
            seen.add(job_id)
            if cancel_requested:
                self.cancel_local(job_id)
        lost = {key for key in before & self._held if key[0] not in seen}
        for key in lost:
            # Reclaimed by another worker (this process stalled past its lease):
            # stop the run; the row's new holder owns it now.
            handle = self._running.get(key[0])
            if handle is not None and handle.key == key:
                self._log.warning("job %s: lease lost to a reclaim; cancelling the run here", key[0])
                handle.lost = True
                handle.scope.cancel()
        if lost:
            self.poke(self.env.now_ms())  # the rows may be pending again already; look at once
        waiting = [entry for entry in self._ready if (entry[4].id, entry[4].attempt) in lost]
        for entry in waiting:  # claimed here but not started: forget them
            self._ready.remove(entry)
            self._held.discard((entry[4].id, entry[4].attempt))
            self._claimed_runs -= 1
        if waiting:
            heapq.heapify(self._ready)
            self._capacity.set()
            self._check_idle()

    # -- idle and shutdown ------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Whether no claimed job waits or runs in this process."""
        return self._idle.is_set()

    async def wait_idle(self) -> None:
        """Return once no claimed job waits or runs in this process."""
        while not self._idle.is_set():
            await self._idle.wait()

    async def has_due(self) -> bool:
        """Whether a row this worker would take is due now (or a lease has run out)."""
        if not self.claiming or not self._names:
            return False
        now = self.env.now_ms()
        next_at = await self.storage.next_job_wakeup(self._names, now, self._limits)
        if next_at is None or next_at > now:
            return False
        self.poke(now)  # written by another engine or behind this one's back: it was not told
        return True

    async def close(self, grace_seconds: float) -> None:
        """Hand back unstarted rows, let running jobs finish for up to `grace_seconds`,
        then interrupt the rest and hand their rows back.

        ``now`` runs with a row get the same grace; one still running after it is
        cancelled, and its caller's task settles its row ``cancelled`` (the call
        returns that `JobRun`) before this returns, so before the storage closes."""
        self.closing = True
        self._start_wanted.set()
        if self._ready or self._deferred:
            ready = [*(entry[4] for entry in self._ready), *self._deferred.values()]
            self._ready, self._deferred = [], {}
            await self._hand_back(ready)
        with trio.move_on_after(grace_seconds):
            await self._wait_runs()
            await self._wait_now_runs()
        if self._claimed_runs or self._now_runs:
            for handle in list(self._running.values()):
                # A ``now`` run too: its caller's task settles its row cancelled before the storage closes.
                handle.scope.cancel()
            with trio.move_on_after(max(grace_seconds, 1.0)):
                await self._wait_runs()
                await self._wait_now_runs()
        await self.flush()

    async def _wait_now_runs(self) -> None:
        while self._now_runs:
            self._now_over = trio.Event()
            await self._now_over.wait()

    async def _wait_runs(self) -> None:
        while self._claimed_runs:
            self._capacity = trio.Event()
            await self._capacity.wait()
