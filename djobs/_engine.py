"""`open_engine`: the engine as an async context manager inside the caller's Trio program."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Generic, NoReturn, TypeVar, overload

import sniffio
import trio
from typing_extensions import TypeVar as DefaultTypeVar

from ._alarms import Timer
from ._client import Client
from ._clock import Clock, WallClock
from ._dead_letters import DeadLetters
from ._durations import DurationLike, check_at_least, duration
from ._errors import InvalidStateError, StorageError, ValidationError, describe, safe_repr
from ._execution import Env, body_failure
from ._ids import RandomIds
from ._input import DEFAULT_MAX_PAYLOAD_BYTES, check_count, check_interval, check_payload_limit, check_seed
from ._layers import Layers
from ._leases import DEFAULT_INSTANCE_LEASE, InstanceLeases, free_exited
from ._printable import printable
from ._retention import Retention, retention_loop
from ._retry import JitteredRetries
from ._runtime import Runtime
from ._wakeup import Wakeup
from ._worker import Worker, WorkerOptions
from .kinds._common import Definition
from .kinds._cron import CronHandler, CronScheduler
from .kinds._job import Tenancy
from .kinds._job_queue import JobQueue
from .kinds._job_runner import JobHandler
from .storage import QueueStorage, Storage, StorageLayer, sqlite
from .tracking import BackgroundTracker, NoopTracker, Tracker
from .tracking._base import TRACKER_CLOSE_LIMIT_S

#: The application's services an engine holds (``Engine[Services]``). Named for what it is: mypy
#: names it when services fit no definition ("Cannot infer value of type parameter "Services"").
Services = DefaultTypeVar("Services", default=object)
D_co = DefaultTypeVar("D_co", covariant=True, default=object)


class Engine(Generic[D_co]):
    """A running engine. Use `client` to talk to jobs.

    ``Engine[S]`` holds services of type `S`, as ``open_engine(services=...)`` was given.

    Attributes:
        client: The typed client verbs.
        storage: The open storage layer.
        clock: The clock layer.
        tracker: The tracker layer.
    """

    def __init__(
        self, runtime: Runtime, client: Client, worker: Worker | None = None, crons: CronScheduler | None = None
    ) -> None:
        self._runtime = runtime
        self._worker = worker
        self._crons = crons
        self.client = client
        env = runtime.env
        self.storage: Storage = env.storage
        self.clock: Clock = env.clock
        self.tracker: Tracker = env.tracker

    @property
    def services(self) -> D_co:
        """The application's services, given to every job context as ``ctx.services``."""
        return self._runtime.env.services  # type: ignore[return-value]  # open_engine's types made it a Services

    async def healthcheck(self) -> bool:
        """Whether storage answers."""
        return await self.storage.healthcheck()

    async def wait_idle(self) -> None:
        """Wait until no handler is queued or running and no alarm, queued job or cron job is due (useful in tests).

        Queued jobs count only in an engine with a worker, and only those it runs.
        Alarms count only for the definitions this engine registers: another
        definition's alarm (one removed from the code, or run by another process)
        is never claimed here, so waiting for it would never end.

        An engine that is closing or has closed starts no work: this returns
        once its handlers have ended (at once after the close), without
        asking its storage, and raises nothing.

        Raises:
            StorageError: The storage failed while the engine was open.
        """
        spins = 0
        worker = self._worker if self._worker is not None and self._worker.claiming else None
        runtime = self._runtime
        while True:
            await runtime.wait_idle()
            if runtime.actors.closing:
                return  # nothing due will run, and its storage may be closed
            if worker is not None:
                await worker.wait_idle()
            due = False
            try:
                if runtime.fires_alarms:  # a client-only engine leaves due alarms to another process
                    next_at = await self.storage.next_alarm_at(runtime.alarms.prefixes)
                    due = next_at is not None and next_at <= self.clock.now_ms()
                if not due and worker is not None:
                    due = await worker.has_due() or (self._crons is not None and await self._crons.has_due())
            except StorageError:
                if runtime.actors.closing:
                    return  # closed while we looked
                raise
            # Work may have been handed off while we waited for the worker (a job that
            # enqueued another, claimed in storage but not yet started): look again.
            busy = runtime.env.handoffs.count > 0 or not runtime.idle or (worker is not None and not worker.idle)
            if not due and not busy:
                return
            # A due alarm the sleeper has not claimed yet: let it run.
            spins += 1
            if spins < 10:
                await trio.lowlevel.checkpoint()
            else:
                await trio.sleep(0.001)

    @property
    def active_instances(self) -> int:
        """How many instances are in memory right now (those with work in flight)."""
        return self._runtime.active_instances

    @property
    def worker_id(self) -> str | None:
        """The id this engine's worker leases queued jobs under (``host:pid:token:random``), if it has a queue.

        The engine's instance leases are held under the same id, so ``djobs
        status`` shows one lease holder per engine.
        """
        return None if self._worker is None else self._worker.id


EngineT = TypeVar("EngineT", bound=Engine[Any])
T = TypeVar("T")


class EnterOnce(AbstractAsyncContextManager[T]):
    """An engine's ``async with`` block, which opens one engine and can be entered once.

    Entering it again (a second ``async with`` on the value one `open_engine`
    call gave) raises `InvalidStateError`: contextlib's own context manager
    raised a bare ``AttributeError`` from its internals there.
    """

    __slots__ = ("_entered", "_opened", "_what")

    def __init__(self, opened: AbstractAsyncContextManager[T], what: str) -> None:
        self._opened = opened
        self._what = what
        self._entered = False

    async def __aenter__(self) -> T:
        if self._entered:
            raise InvalidStateError(
                f"this {self._what}(...) was entered already: it opens one engine, for one `async with` block; "
                f"call {self._what}(...) again for another"
            )
        self._entered = True
        return await self._opened.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._opened.__aexit__(*exc_info)


#: The worker an engine runs unless told otherwise.
DEFAULT_WORKER = WorkerOptions()


def require_trio(what: str) -> None:
    """Raise `RuntimeError` saying djobs runs on Trio unless the caller runs inside ``trio.run``.

    Without it, ``open_engine`` under asyncio fails deep inside Trio with
    ``AttributeError: 'RunContext' object has no attribute 'runner'``. The
    running library is named by ``sniffio``, as Trio and AnyIO detect it.
    """
    try:
        # A task, not just a run: a Trio guest run's host thread (asyncio) has the run, no task.
        trio.lowlevel.current_task()
    except RuntimeError:
        try:
            library: str | None = sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            library = None
        where = f"under {library}" if library else "outside trio.run"
        instead = {"asyncio": " instead of asyncio.run(main)"}.get(library or "", "")
        raise RuntimeError(
            f"djobs runs on Trio, but {what} was called {where}: start the program with trio.run(main){instead}"
            " (an application on another event loop can run djobs in a thread of its own with trio.run)"
        ) from None


def check_definitions(definitions: Sequence[Definition[Any]]) -> None:
    """Reject two definitions with one name, or something that is not a definition (at open, not at the first run)."""
    if isinstance(definitions, str | bytes) or not isinstance(definitions, Sequence):
        raise ValidationError(f"definitions must be a list of job definitions, got {type(definitions).__name__}")
    try:  # read once: a sequence's own iteration may raise (the caller's mistake, not djobs')
        given = list(definitions)
    except Exception as exc:
        raise ValidationError(
            f"definitions could not be read: iterating the {type(definitions).__name__} raised {describe(exc)}"
        ) from None
    seen: dict[str, Definition[Any]] = {}
    for d in given:
        if not isinstance(d, Definition):
            raise ValidationError(
                f"{safe_repr(d):.80} is not a job definition (make one with Continuous.make, Job.make, ...)"
            )
        other = seen.get(d.name)
        if other is not None:
            raise ValidationError(
                f"two jobs are named {d.name!r} ({other.kind} and {d.kind}); job names must be unique per engine"
            )
        seen[d.name] = d


def check_option(value: object, cls: type, option: str, example: str) -> None:
    """Refuse an option that is neither ``None`` nor a `cls` (the class itself too, a
    forgotten call), naming the option and what it takes (`example`)."""
    if value is None or isinstance(value, cls):
        return
    if isinstance(value, type) and issubclass(value, cls):
        raise ValidationError(f"{option} must be a {example}, got the class itself: call it ({option}={example})")
    raise ValidationError(f"{option} must be a {example} or None, got {type(value).__name__} {safe_repr(value):.80}")


def check_logger(logger: object) -> logging.Logger | None:
    """`logger` if it is a `logging.Logger` or ``None``; a logger's name given instead says how to make one."""
    if logger is None or isinstance(logger, logging.Logger):
        return logger
    call = f"logging.getLogger({safe_repr(logger):.80})" if isinstance(logger, str) else "logging.getLogger(name)"
    raise ValidationError(
        f"logger must be a logging.Logger ({call}) or None, got {type(logger).__name__} {safe_repr(logger):.80}"
    )


def layers_from(
    layers: Layers | None,
    *,
    storage: StorageLayer | None,
    clock: Clock | None,
    tracker: Tracker | None,
    seed: int | None,
) -> Layers:
    """`open_engine`'s layers: `layers` whole, or built from the single-layer arguments and their defaults."""
    if layers is None:
        check_seed(seed)
        return Layers(
            storage=storage if storage is not None else sqlite("djobs.db"),
            clock=clock if clock is not None else WallClock(),
            tracker=tracker if tracker is not None else NoopTracker(),
            retries=JitteredRetries(seed),
            ids=RandomIds(seed),
        )
    if not isinstance(layers, Layers):
        raise ValidationError(f"layers must be a djobs.Layers, got {type(layers).__name__}")
    given = [
        name
        for name, value in (("storage", storage), ("clock", clock), ("tracker", tracker), ("seed", seed))
        if value is not None
    ]
    if given:
        raise ValidationError(
            f"open_engine takes layers= or {', '.join(given)}=, not both"
            f" (swap one layer with layers.replace({given[0]}=...))"
        )
    return layers


@overload
def open_engine(
    definitions: Sequence[Definition[object]],
    *,
    storage: StorageLayer | None = None,
    clock: Clock | None = None,
    tracker: Tracker | None = None,
    layers: Layers | None = None,
    services: None = None,
    max_concurrency: int = 100,
    alarm_lease: DurationLike = "5 minutes",
    alarm_poll_interval: DurationLike | None = "1 second",
    shutdown_grace: DurationLike = "10 seconds",
    seed: int | None = None,
    logger: logging.Logger | None = None,
    worker: WorkerOptions | None = DEFAULT_WORKER,
    tenancy: Tenancy = "optional",
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    instance_lease: DurationLike = DEFAULT_INSTANCE_LEASE,
    retention: Retention | None = None,
) -> AbstractAsyncContextManager[Engine[None]]: ...
@overload
def open_engine(
    definitions: Sequence[Definition[Services]],
    *,
    storage: StorageLayer | None = None,
    clock: Clock | None = None,
    tracker: Tracker | None = None,
    layers: Layers | None = None,
    services: Services,
    max_concurrency: int = 100,
    alarm_lease: DurationLike = "5 minutes",
    alarm_poll_interval: DurationLike | None = "1 second",
    shutdown_grace: DurationLike = "10 seconds",
    seed: int | None = None,
    logger: logging.Logger | None = None,
    worker: WorkerOptions | None = DEFAULT_WORKER,
    tenancy: Tenancy = "optional",
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    instance_lease: DurationLike = DEFAULT_INSTANCE_LEASE,
    retention: Retention | None = None,
) -> AbstractAsyncContextManager[Engine[Services]]: ...
def open_engine(
    definitions: Sequence[Definition[Any]],
    *,
    storage: StorageLayer | None = None,
    clock: Clock | None = None,
    tracker: Tracker | None = None,
    layers: Layers | None = None,
    services: Any = None,
    max_concurrency: int = 100,
    alarm_lease: DurationLike = "5 minutes",
    alarm_poll_interval: DurationLike | None = "1 second",
    shutdown_grace: DurationLike = "10 seconds",
    seed: int | None = None,
    logger: logging.Logger | None = None,
    worker: WorkerOptions | None = DEFAULT_WORKER,
    tenancy: Tenancy = "optional",
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    instance_lease: DurationLike = DEFAULT_INSTANCE_LEASE,
    retention: Retention | None = None,
) -> AbstractAsyncContextManager[Engine[Any]]:
    """Open an engine in the current Trio task; it runs until the block exits.

    Args:
        definitions: The jobs this engine runs. Two with one name raise `ValidationError`.
        storage: The storage layer; default ``djobs.sqlite("djobs.db")``.
        clock: The clock layer; default the wall clock.
        tracker: Where telemetry goes; default `NoopTracker`.
        layers: All the layers at once (`Layers`: storage, clock, tracker,
            retries, ids), instead of `storage`, `clock`, `tracker` and
            `seed`; giving both is a `ValidationError`.
        services: The application's services, reached by job bodies as
            ``ctx.services``. Typed: every definition must accept them (a
            definition whose bodies take ``ContinuousContext[S, HasTokens]``
            needs services that are a ``HasTokens``; one that needs none
            accepts any), else mypy reports the call. Without `services`,
            only definitions that need none are accepted.
        max_concurrency: How many instance handlers may run at once: an int
            from 1 to 2,147,483,647. A handler waiting for another instance
            through ``ctx.client`` does not count while it waits. Every duration here is at most 36,525 days.
        alarm_lease: How long a claimed alarm is hidden before it fires again
            if its handler never finished (a crash); at least 1 second. An
            engine that opens on the host of a crashed process fires that
            process's claims at once.
        alarm_poll_interval: How often the alarm sleeper looks for alarms set
            by other processes (at least 1 millisecond); ``None`` trusts this
            process alone.
        shutdown_grace: How long closing waits for running handlers.
        seed: Seed for retry jitter and a workflow's ``ctx.random()`` (tests):
            an int; ``None`` is random.
        logger: The parent logger, a `logging.Logger` (default
            ``logging.getLogger("djobs")``; a name is refused: pass
            ``logging.getLogger(name)``).
        worker: How this engine runs the job queue and cron jobs
            (`WorkerOptions`); ``None`` for a client-only process that
            enqueues and reads jobs but runs none (``now`` still runs in the
            caller's task), and fires no alarms: the instances it starts or
            sends events to run their scheduled work in a worker process.
        tenancy: ``"required"`` refuses to enqueue a job without a tenant id
            (`TenantError`); ``"optional"`` (default) allows it.
        max_payload_bytes: The largest encoded payload (params, event, input,
            state, result) accepted, in bytes; a larger one is a
            `ValidationError`. Default 1 MiB; from 1024 to 1 GiB.
        instance_lease: How long an instance's lease lasts without renewal
            (default 30 seconds, at least 1 second). A running engine renews
            its leases every third of it; a process that died holding one
            blocks that instance's verbs in other processes until it ends,
            unless the dead process ran on this host (same host name, so the
            same process table): such a lease is freed at once.
        retention: What this engine purges in the background, and after how
            long (`Retention`): finished jobs, idempotency keys, accepted
            event ids, dead letters. ``None`` (default) keeps everything. A
            client-only engine (``worker=None``) purges nothing.

    Raises:
        RuntimeError: Entered outside ``trio.run`` (under asyncio, say):
            djobs runs on Trio.
        InvalidStateError: The value one call returned is entered a second
            time (each ``async with`` block needs its own call).
        ValidationError: Two definitions share a name, an option is malformed
            or of the wrong kind (the message names it and what it takes; the
            class ``djobs.WorkerOptions`` where an instance is taken, say), or
            `layers` is given with `storage`, `clock`, `tracker` or `seed`.
            Every option is checked when the block is entered, before
            anything opens or runs.
        StorageError: The storage cannot be opened (a file that is not a
            djobs database, a newer schema, an unreachable server).

    Example:
        ```python
        async with djobs.open_engine([token_refresher], storage=djobs.sqlite("jobs.db")) as engine:
            await engine.client.continuous(token_refresher).start(id="user-123", input=Tokens("", "rt"))
        ```
    """
    opened = open_engine_as(
        Engine,
        definitions,
        layers=layers_from(layers, storage=storage, clock=clock, tracker=tracker, seed=seed),
        services=services,
        max_concurrency=max_concurrency,
        alarm_lease=alarm_lease,
        alarm_poll_interval=alarm_poll_interval,
        shutdown_grace=shutdown_grace,
        logger=logger,
        worker=worker,
        tenancy=tenancy,
        max_payload_bytes=max_payload_bytes,
        instance_lease=instance_lease,
        retention=retention,
    )
    return EnterOnce(opened, "open_engine")


@asynccontextmanager
async def open_engine_as(
    engine_type: type[EngineT],
    definitions: Sequence[Definition[Any]],
    *,
    layers: Layers,
    services: object,
    max_concurrency: int,
    alarm_lease: DurationLike,
    alarm_poll_interval: DurationLike | None,
    shutdown_grace: DurationLike,
    logger: logging.Logger | None,
    worker: WorkerOptions | None = DEFAULT_WORKER,
    tenancy: Tenancy = "optional",
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    instance_lease: DurationLike = DEFAULT_INSTANCE_LEASE,
    retention: Retention | None = None,
) -> AsyncIterator[EngineT]:
    """`open_engine`, yielding an `Engine` subclass (the test engine's typed attributes)."""
    require_trio("open_engine")
    # Every option, before anything opens: a wrong one is a ValidationError naming it, not an
    # AttributeError from deep inside, or a background task failing for as long as the engine runs.
    check_definitions(definitions)
    check_payload_limit(max_payload_bytes)
    check_count(max_concurrency, "max_concurrency")
    lease_ms = check_at_least(alarm_lease, "alarm_lease", 1000, "1 second")
    poll_ms = (
        None
        if alarm_poll_interval is None
        else check_at_least(alarm_poll_interval, "alarm_poll_interval", 1, "1 millisecond")
    )
    grace = check_interval(duration(shutdown_grace, what="shutdown_grace"), "shutdown_grace").total_seconds()
    instance_lease_ms = check_at_least(instance_lease, "instance_lease", 1000, "1 second")
    logger = check_logger(logger)
    check_option(worker, WorkerOptions, "worker", "djobs.WorkerOptions(...)")
    check_option(retention, Retention, "retention", "djobs.Retention(...)")
    if type(tenancy) is not str or tenancy not in ("optional", "required"):
        raise ValidationError(f"tenancy must be 'optional' or 'required', got {safe_repr(tenancy):.80}")
    the_tracker = layers.tracker
    # A Ctrl-C the close kept, to raise once it is done, with the block's error (if any) to chain it to.
    interrupted: list[tuple[KeyboardInterrupt, BaseException | None]] = []
    async with _raised_as_itself(interrupted), layers.storage.open() as store, trio.open_nursery() as nursery:
        # Built in dependency order, each with what it needs: the leases and the
        # alarm sleeper's wake-up first, since the env fences check-ins with the
        # one and pokes the other; the client last (the env's slot takes it).
        alarm_wakeup = Wakeup(layers.clock, poll_ms)
        leases = InstanceLeases(store, layers.clock, layers.ids.engine_id(), instance_lease_ms, alarm_wakeup)
        env = Env(
            storage=store,
            clock=layers.clock,
            tracker=the_tracker,
            services=services,
            retries=layers.retries,
            ids=layers.ids,
            logger=logger or logging.getLogger("djobs"),
            leases=leases,
            alarm_waker=alarm_wakeup,
            max_payload_bytes=max_payload_bytes,
        )
        runtime = Runtime(env, nursery, leases, alarm_wakeup, max_concurrency=max_concurrency, alarm_lease_ms=lease_ms)
        handlers: dict[str, Any] = {}
        for d in definitions:
            handler = d.bind(runtime)
            handlers[d.name] = handler
            runtime.register(f"{d.kind}:{d.name}:", handler)
        alarm_scope = trio.CancelScope()

        async def alarms(timer: Timer | None) -> None:
            with alarm_scope:
                await _guarded(functools.partial(runtime.alarm_loop, timer=timer))

        if isinstance(the_tracker, BackgroundTracker):
            # A tracker's own task (HttpBatchTracker's sender) lives in this nursery; aclose below stops it.
            await nursery.start(_tracker_task, the_tracker)
        if worker is not None:
            # A client-only engine (worker=None) runs no background work: another
            # process's engine fires the alarms its calls set (started below, once
            # the client that bodies reach as ctx.client exists).
            runtime.fires_alarms = True
        # The leases a process of this host held when it died are freed before anything here
        # claims or waits: its claimed alarms fire now, not one alarm lease later.
        await free_exited(store, layers.clock)
        nursery.start_soon(_guarded, runtime.lease_keeper)
        nursery.start_soon(_guarded, runtime.lease_releaser)
        body_error: BaseException | None = None
        queue_worker: Worker | None = None
        queue_scopes: list[trio.CancelScope] = []
        try:
            # The actors' nursery, shielded from a cancel of this one until the close below ends it.
            await nursery.start(runtime.actors.run)
            # Inside the try: a bad queue definition or a storage error here reaches
            # the caller as itself (below), like an error in the caller's block.
            queue, crons, queue_worker = await _open_queue(
                env, store, nursery, handlers, worker, tenancy, runtime.owner, alarm_wakeup
            )
            # Before any body can run (an alarm due at startup, a claimed job): ctx.client is this.
            client = Client(
                handlers, queue=queue, crons=crons, dead_letters=DeadLetters(runtime, handlers, queue), home=env
            )
            env.clients.fill(client)
            if runtime.fires_alarms:
                if retention is not None:
                    nursery.start_soon(_guarded, functools.partial(retention_loop, store, env.clock, retention))
                for handler in handlers.values():
                    # A kind's own loop (a workflow's watch for cancels noted by other processes).
                    background = getattr(handler, "background", None)
                    if background is not None:
                        nursery.start_soon(_guarded, background)
            if queue_worker is not None:
                await nursery.start(_guarded, queue_worker.lease_loop)
                await nursery.start(_guarded, queue_worker.settle_loop)
                watch = getattr(store, "watch_enqueues", None)
                if queue_worker.claiming and watch is not None:
                    # A storage that hears other processes' enqueues (PostgreSQL's
                    # LISTEN/NOTIFY) wakes the worker instead of its poll interval.
                    await nursery.start(
                        _scoped, queue_scopes, functools.partial(_guarded, functools.partial(watch, queue_worker.poke))
                    )
                if queue_worker.claiming and crons is not None:
                    await nursery.start(_scoped, queue_scopes, functools.partial(_guarded, queue_worker.claim_loop))
                    await nursery.start(_scoped, queue_scopes, functools.partial(_guarded, queue_worker.start_loop))
            if runtime.fires_alarms:
                # The cron jobs fire in the alarm task (once the worker that runs their jobs has
                # started), which sleeps until the earlier of its next alarm and their next run.
                nursery.start_soon(alarms, crons if crons is not None and crons.names else None)
            yield engine_type(runtime, client, queue_worker, crons)
        except BaseException as exc:
            # Re-raised below, outside the nursery, so an error in the caller's
            # block reaches the caller as itself, not wrapped in an ExceptionGroup.
            body_error = exc
        finally:
            alarm_scope.cancel()
            for scope in queue_scopes:
                scope.cancel()  # stop claiming and firing cron jobs before anything closes
            env.clients.closing = True
            # A Ctrl-C reaches this task wherever it waits below (Trio delivers it at the main
            # task's next wait, shielded or not). It must not cut the close short, which would
            # leave the shielded actors running and the nursery's exit waiting for them for ever:
            # it is kept and raised once the engine is closed, as Trio raises it after a nursery.
            interrupt: KeyboardInterrupt | None = None
            with trio.CancelScope(shield=True):
                try:
                    async with trio.open_nursery() as closing:
                        closing.start_soon(_to_the_end, runtime.close, grace)
                        if queue_worker is not None:
                            closing.start_soon(_to_the_end, queue_worker.close, grace)
                except BaseException as exc:
                    interrupt = _only_interrupt(exc)
                    if interrupt is None:
                        raise
                env.clients.closed = True  # nothing of the engine runs now: every verb is refused
                try:
                    # In a task of its own, as the parts above: a Ctrl-C delivered to this task
                    # while the tracker closes cancels the nursery, not the tracker's bounded close.
                    async with trio.open_nursery() as closing:
                        closing.start_soon(_to_the_end, _close_tracker, the_tracker)
                except BaseException as exc:
                    more = _only_interrupt(exc)
                    if more is None:
                        raise
                    interrupt = interrupt or more
            nursery.cancel_scope.cancel()
            if interrupt is not None:
                # The block's own error goes with it, to be chained (`_raised_as_itself`).
                interrupted.append((interrupt, body_error))
    if body_error is not None:
        raise body_error


@asynccontextmanager
async def _raised_as_itself(
    interrupted: list[tuple[KeyboardInterrupt, BaseException | None]],
) -> AsyncIterator[None]:
    """Raise the Ctrl-C the engine's close kept (`interrupted`: it and the error the caller's
    block raised, if any) once the storage has closed: as itself, as Trio raises one, over what
    the nursery raised with it (its tasks' cancels), chained to the block's error (`_chained`)."""
    try:
        yield
    except BaseException:
        if not interrupted:
            raise
        _chained(*interrupted[0])
    if interrupted:
        _chained(*interrupted[0])


def _chained(interrupt: KeyboardInterrupt, block_error: BaseException | None) -> NoReturn:
    """Raise `interrupt` with `block_error` (what the caller's block raised before the close began)
    as its ``__context__``, as Python chains an exception raised in a ``finally`` that runs for
    another: the traceback shows the block's error, then "During handling of the above exception,
    another exception occurred", then the interrupt. It stays a `KeyboardInterrupt` (not a group
    of the two), so the host's ``except KeyboardInterrupt`` and Trio's own handling still stop
    the program. Without a block error, raised with no context: the nursery's cancels are noise.

    Python sets the context of a raised exception to the one being handled, overwriting any set
    before: so the block's error is raised (and handled) here first, its traceback and context
    put back as they were."""
    if block_error is None or block_error is interrupt:
        raise interrupt from None
    if isinstance(block_error, KeyboardInterrupt):  # a Ctrl-C in the block, and one in the close: the first
        raise block_error
    traceback, context = block_error.__traceback__, block_error.__context__
    interrupt.__cause__ = None
    interrupt.__suppress_context__ = False
    try:
        raise block_error
    except BaseException:
        block_error.__traceback__, block_error.__context__ = traceback, context
        raise interrupt  # noqa: B904  # chained to the block's error as its context, on purpose


async def _to_the_end(close: Callable[[Any], Awaitable[None]], arg: Any) -> None:
    """Run one part of the engine's close (``close(arg)``) to its end: shielded from the cancel of
    the nursery that runs it, which a Ctrl-C delivered to the task waiting for that nursery triggers."""
    with trio.CancelScope(shield=True):
        await close(arg)


async def _close_tracker(tracker: Tracker) -> None:
    """Close `tracker` within its limit, a second past `TRACKER_CLOSE_LIMIT_S` (one that keeps to
    it is never cut off); a hang is cancelled and logged, an error logged, never an escape (a
    user's tracker: `body_failure`), so neither hangs nor fails the host's exit."""
    try:
        with trio.move_on_after(TRACKER_CLOSE_LIMIT_S + 1) as bounded:
            await tracker.aclose()
        if bounded.cancelled_caught:
            _log.error("tracker %r did not close within %d seconds; cancelled", tracker, TRACKER_CLOSE_LIMIT_S)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise  # raised into the tracker's own code: the close's nursery keeps it (`_only_interrupt`)
        _log.error("tracker %r failed to close: %s", tracker, printable(body_failure(exc).message))


def _only_interrupt(exc: BaseException) -> KeyboardInterrupt | None:
    """The `KeyboardInterrupt` that `exc` is, or that a group of nothing else holds; else ``None``."""
    if isinstance(exc, KeyboardInterrupt):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(KeyboardInterrupt)
        if rest is None and matched is not None:
            first: BaseException = matched
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            return first if isinstance(first, KeyboardInterrupt) else None
    return None


_log = logging.getLogger("djobs.engine")


class _Started:
    """A task status that remembers whether ``started`` was called (a loop restarted by `_guarded` calls it once)."""

    def __init__(self, status: trio.TaskStatus[None]) -> None:
        self._status: trio.TaskStatus[None] | None = status

    def started(self, value: None = None) -> None:
        if self._status is not None:
            status, self._status = self._status, None
            status.started()


async def _guarded(
    loop: Callable[..., Awaitable[None]], task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run one of the engine's background loops; an unexpected exception is logged and the loop
    restarts a second later, so no bug in one loop cancels the engine's nursery (and the host's program)."""
    status = _Started(task_status)
    while True:
        try:
            await loop(task_status=status)
            return
        except Exception:
            _log.exception("bug: the engine's task %s raised; it restarts in 1 s", getattr(loop, "__qualname__", loop))
            status.started()
            await trio.sleep(1)


async def _tracker_task(tracker: BackgroundTracker, task_status: trio.TaskStatus[None]) -> None:
    """Run a background tracker's own task: an exception past it (a user's tracker) is logged,
    not raised into the engine's nursery; a cancel and a Ctrl-C propagate (`body_failure`)."""
    status = _Started(task_status)
    try:
        await tracker.run(task_status=status)
    except BaseException as exc:
        _log.error(
            "tracker %r stopped: %s; its events are no longer sent", tracker, printable(body_failure(exc).message)
        )
        status.started()


async def _scoped(
    scopes: list[trio.CancelScope], loop: Callable[..., Awaitable[None]], task_status: trio.TaskStatus[None]
) -> None:
    with trio.CancelScope() as scope:
        scopes.append(scope)
        await loop(task_status=task_status)


async def _open_queue(
    env: Env,
    store: Storage,
    nursery: trio.Nursery,
    handlers: dict[str, Any],
    options: WorkerOptions | None,
    tenancy: Tenancy,
    engine_id: str,
    wakeup: Wakeup,
) -> tuple[JobQueue | None, CronScheduler | None, Worker | None]:
    """The job queue, cron jobs and worker of an engine (none if the storage layer holds no queue)."""
    jobs = [h for h in handlers.values() if isinstance(h, JobHandler)]
    cron_jobs = [h for h in handlers.values() if isinstance(h, CronHandler)]
    if not isinstance(store, QueueStorage):
        if jobs or cron_jobs:
            raise StorageError(f"the storage layer {store!r} holds no job queue (it does not implement QueueStorage)")
        return None, None, None
    queue_worker = Worker(
        env, store, nursery, options or DEFAULT_WORKER, claiming=options is not None, worker_id=engine_id
    )
    queue = JobQueue(env, store, queue_worker, tenancy)
    for handler in jobs:
        queue.add(handler)
    for cron in cron_jobs:
        # A cron job's job runs here even if it is not among the definitions.
        known = queue.handlers.get(cron.job.job.name)
        queue.add(known if known is not None and known.job is cron.job.job else JobHandler(cron.job.job, env))
    crons = CronScheduler(env, store, queue, cron_jobs, None if options is None else options.poll_interval_ms, wakeup)
    await crons.sync()
    return queue, crons, queue_worker
