"""`open_engine`: the engine as an async context manager inside the caller's Trio program."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, TypeVar

import trio

from ._client import Client
from ._clock import Clock, WallClock
from ._durations import DurationLike, duration, to_ms
from ._errors import ValidationError
from ._execution import Env
from ._runtime import AlarmTarget, Runtime
from .storage import Storage, StorageLayer, sqlite
from .tracking import NoopTracker, Tracker


class Definition(Protocol):
    """What ``open_engine`` accepts: a job definition (`Continuous`, ...)."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    def bind(self, runtime: Runtime) -> AlarmTarget: ...


class Engine:
    """A running engine. Use `client` to talk to jobs.

    Attributes:
        client: The typed client verbs.
        storage: The open storage layer.
        clock: The clock layer.
        tracker: The tracker layer.
        services: The application's services given to every job context.
    """

    def __init__(self, runtime: Runtime, client: Client) -> None:
        self._runtime = runtime
        self.client = client
        env = runtime.env
        self.storage: Storage = env.storage
        self.clock: Clock = env.clock
        self.tracker: Tracker = env.tracker
        self.services: Any = env.services

    async def healthcheck(self) -> bool:
        """Whether storage answers."""
        return await self.storage.healthcheck()

    async def wait_idle(self) -> None:
        """Wait until no handler is queued or running and no alarm is due (useful in tests)."""
        spins = 0
        while True:
            await self._runtime.wait_idle()
            next_at = await self.storage.next_alarm_at()
            if next_at is None or next_at > self.clock.now_ms():
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


EngineT = TypeVar("EngineT", bound=Engine)


def check_definitions(definitions: Sequence[Definition]) -> None:
    """Reject two definitions with one name (at open, not at the first run)."""
    seen: dict[str, Definition] = {}
    for d in definitions:
        other = seen.get(d.name)
        if other is not None:
            raise ValidationError(
                f"two jobs are named {d.name!r} ({other.kind} and {d.kind}); job names must be unique per engine"
            )
        seen[d.name] = d


def open_engine(
    definitions: Sequence[Definition],
    *,
    storage: StorageLayer | None = None,
    clock: Clock | None = None,
    tracker: Tracker | None = None,
    services: Any = None,
    max_concurrency: int = 100,
    alarm_lease: DurationLike = "5 minutes",
    alarm_poll_interval: DurationLike | None = "1 second",
    shutdown_grace: DurationLike = "10 seconds",
    seed: int | None = None,
    logger: logging.Logger | None = None,
) -> AbstractAsyncContextManager[Engine]:
    """Open an engine in the current Trio task; it runs until the block exits.

    Args:
        definitions: The jobs this engine runs. Two with one name raise `ValidationError`.
        storage: The storage layer; default ``djobs.sqlite("djobs.db")``.
        clock: The clock layer; default the wall clock.
        tracker: Where telemetry goes; default `NoopTracker`.
        services: Anything the application wants job bodies to reach as ``ctx.services``.
        max_concurrency: How many instance handlers may run at once.
        alarm_lease: How long a claimed alarm is hidden before it fires again
            if its handler never finished (a crash).
        alarm_poll_interval: How often the alarm sleeper looks for alarms set
            by other processes; ``None`` trusts this process alone.
        shutdown_grace: How long closing waits for running handlers.
        seed: Seed for retry jitter (tests); ``None`` is random.
        logger: The parent logger (default ``logging.getLogger("djobs")``).

    Example:
        ```python
        async with djobs.open_engine([token_refresher], storage=djobs.sqlite("jobs.db")) as engine:
            await engine.client.continuous(token_refresher).start(id="user-123", input=Tokens("", "rt"))
        ```
    """
    return open_engine_as(
        Engine, definitions, storage=storage, clock=clock, tracker=tracker, services=services,
        max_concurrency=max_concurrency, alarm_lease=alarm_lease, alarm_poll_interval=alarm_poll_interval,
        shutdown_grace=shutdown_grace, seed=seed, logger=logger,
    )  # fmt: skip


@asynccontextmanager
async def open_engine_as(
    engine_type: type[EngineT],
    definitions: Sequence[Definition],
    *,
    storage: StorageLayer | None,
    clock: Clock | None,
    tracker: Tracker | None,
    services: Any,
    max_concurrency: int,
    alarm_lease: DurationLike,
    alarm_poll_interval: DurationLike | None,
    shutdown_grace: DurationLike,
    seed: int | None,
    logger: logging.Logger | None,
) -> AsyncIterator[EngineT]:
    """`open_engine`, yielding an `Engine` subclass (the test engine's typed attributes)."""
    check_definitions(definitions)
    if max_concurrency < 1:
        raise ValidationError(f"max_concurrency must be at least 1, got {max_concurrency}")
    lease_ms = to_ms(duration(alarm_lease, what="alarm_lease"))
    poll_ms = None if alarm_poll_interval is None else to_ms(duration(alarm_poll_interval, what="alarm_poll_interval"))
    grace = duration(shutdown_grace, what="shutdown_grace").total_seconds()
    layer = storage if storage is not None else sqlite("djobs.db")
    the_tracker: Tracker = tracker if tracker is not None else NoopTracker()
    async with layer.open() as store, trio.open_nursery() as nursery:
        env = Env(
            storage=store, clock=clock or WallClock(), tracker=the_tracker, services=services,
            rng=random.Random(seed), logger=logger or logging.getLogger("djobs"),
        )  # fmt: skip
        runtime = Runtime(env, nursery, max_concurrency=max_concurrency, alarm_lease_ms=lease_ms,
                          alarm_poll_ms=poll_ms)  # fmt: skip
        handlers: dict[str, Any] = {}
        for d in definitions:
            handler = d.bind(runtime)
            handlers[d.name] = handler
            runtime.register(f"{d.kind}:{d.name}:", handler)
        alarm_scope = trio.CancelScope()

        async def alarms() -> None:
            with alarm_scope:
                await runtime.alarm_loop()

        nursery.start_soon(alarms)
        body_error: BaseException | None = None
        try:
            yield engine_type(runtime, Client(handlers))
        except BaseException as exc:
            # Re-raised below, outside the nursery, so an error in the caller's
            # block reaches the caller as itself, not wrapped in an ExceptionGroup.
            body_error = exc
        finally:
            alarm_scope.cancel()
            with trio.CancelScope(shield=True):
                await runtime.close(grace)
                await the_tracker.aclose()
            nursery.cancel_scope.cancel()
    if body_error is not None:
        raise body_error
