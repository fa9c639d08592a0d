from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar, overload

import trio
from returns.io import IOFailure, IOResult, IOSuccess
from returns.unsafe import unsafe_perform_io
from typing_extensions import TypeVar as DefaultTypeVar

from .._clock import Clock, VirtualClock
from .._engine import Engine, EnterOnce, open_engine, open_engine_as, require_trio
from .._errors import ValidationError
from .._ids import Ids, RandomIds
from .._input import check_seed
from .._layers import Layers
from .._results import check_result
from .._retry import JitteredRetries, RetryPolicy
from .._worker import WorkerOptions
from ..kinds._common import Definition
from ..storage import StorageLayer, memory
from ..storage._memory import MemoryLayer
from ..tracking import InMemoryTracker, Tracker

V = TypeVar("V")
E = TypeVar("E")
Services = TypeVar("Services")  # named in mypy's message when services fit no definition
D_co = DefaultTypeVar("D_co", covariant=True, default=object)


class TestEngine(Engine[D_co], Generic[D_co]):
    """An `Engine` whose tracker records events and whose clock is virtual."""

    __test__ = False  # not a pytest test class
    tracker: InMemoryTracker
    clock: VirtualClock


@overload
def open_test_engine(
    definitions: Sequence[Definition[object]],
    *,
    start: datetime | None = None,
    services: None = None,
    storage: StorageLayer | None = None,
    seed: int = 0,
    tracker: Tracker | None = None,
    layers: Layers | None = None,
    clock: Clock | None = None,
    retries: RetryPolicy | None = None,
    ids: Ids | None = None,
    **options: Any,
) -> AbstractAsyncContextManager[TestEngine[None]]: ...
@overload
def open_test_engine(
    definitions: Sequence[Definition[Services]],
    *,
    start: datetime | None = None,
    services: Services,
    storage: StorageLayer | None = None,
    seed: int = 0,
    tracker: Tracker | None = None,
    layers: Layers | None = None,
    clock: Clock | None = None,
    retries: RetryPolicy | None = None,
    ids: Ids | None = None,
    **options: Any,
) -> AbstractAsyncContextManager[TestEngine[Services]]: ...
def open_test_engine(
    definitions: Sequence[Definition[Any]],
    *,
    start: datetime | None = None,
    services: Any = None,
    storage: StorageLayer | None = None,
    seed: int = 0,
    tracker: Tracker | None = None,
    layers: Layers | None = None,
    clock: Clock | None = None,
    retries: RetryPolicy | None = None,
    ids: Ids | None = None,
    **options: Any,
) -> AbstractAsyncContextManager[TestEngine[Any]]:
    """An engine for tests: in-memory storage, virtual clock, recording tracker.

    Its layers are `default_layers` (or `layers`), with each layer given by
    keyword swapped in: ``open_test_engine([job], clock=MyClock())`` changes
    the clock alone.

    Args:
        definitions: The jobs under test.
        start: The virtual time the test starts at (default 2026-01-01 00:00 UTC).
        services: Fakes for the application's services: typed as in `open_engine`,
            so a fake must be the services type the definitions need.
        storage: Another storage layer (e.g. ``djobs.sqlite(tmp_path / "t.db")``).
        seed: Seed for retry jitter, so jittered delays repeat from run to run.
        tracker: Another tracker to test (e.g. an ``HttpBatchTracker`` against a
            local server); ``engine.tracker`` is then that tracker, not an
            `InMemoryTracker` as its type says. Default: a new `InMemoryTracker`.
        layers: The layers to start from instead of ``default_layers(start, seed)``
            (then `start` and `seed` are not used).
        clock: Another clock; ``engine.clock`` is then that clock, not a
            `VirtualClock` as its type says.
        retries: Another retry layer (e.g. one that retries without waiting).
        ids: Another ids layer (e.g. one that gives deterministic job ids).
        options: Passed on to `open_engine` (``worker=`` defaults to
            ``WorkerOptions(poll_interval=None)``: one process needs no polling).
    """
    unknown = options.keys() - _ENGINE_OPTIONS
    if unknown:  # named here: open_engine_as would name itself, at the `async with`
        raise TypeError(
            f"open_test_engine() got an unexpected keyword argument {min(unknown)!r}"
            f" (it takes open_engine's: {', '.join(sorted(_ENGINE_OPTIONS))})"
        )
    if layers is not None and not isinstance(layers, Layers):
        raise ValidationError(f"open_test_engine(layers=...) must be a djobs.Layers, got {type(layers).__name__}")
    check_seed(seed, "open_test_engine(seed=...)")
    base = layers if layers is not None else default_layers(start, seed=seed)
    chosen = base.replace(storage=storage, clock=clock, tracker=tracker, retries=retries, ids=ids)
    # A memory layer given with the default clock keeps its virtual time from engine to engine.
    shared = (
        storage if isinstance(storage, MemoryLayer) and layers is None and clock is None and start is None else None
    )
    return EnterOnce(
        _open_test_engine(definitions, layers=chosen, services=services, shared=shared, **options), "open_test_engine"
    )


#: The options open_test_engine passes on to open_engine (those it does not take itself).
_ENGINE_OPTIONS = frozenset(inspect.signature(open_engine).parameters) - {
    "definitions",
    "storage",
    "clock",
    "tracker",
    "layers",
    "services",
    "seed",
}


@dataclass(slots=True)
class _SharedClock:
    """The virtual clock of the test engines on one `djobs.memory()` layer (its ``test_clock``)."""

    clock: VirtualClock
    #: The Trio run the clock follows; in another run a new clock starts from `last_ms`.
    run: trio.lowlevel.TrioToken
    last_ms: int


def _layer_clock(layer: MemoryLayer, layers: Layers) -> Layers:
    """`layers` with the clock the test engines on `layer` share: the one an engine opened on it
    in this Trio run read, or one starting at the virtual time the last engine saw."""
    run = trio.lowlevel.current_trio_token()
    kept = layer.test_clock
    if isinstance(kept, _SharedClock):
        if kept.run is not run:
            # From the reading itself, not a datetime of it: one past the year 9999 has none,
            # and the new engine's verbs say so rather than its open raising.
            kept.clock, kept.run = VirtualClock(), run
            kept.clock.start_ms = kept.last_ms
        return layers.replace(clock=kept.clock)
    if isinstance(layers.clock, VirtualClock):
        layer.test_clock = _SharedClock(layers.clock, run, layers.clock.start_ms)
    return layers


@asynccontextmanager
async def _open_test_engine(
    definitions: Sequence[Definition[Any]],
    *,
    layers: Layers,
    services: object,
    shared: MemoryLayer | None = None,
    **options: Any,
) -> AsyncIterator[TestEngine[Any]]:
    require_trio("open_test_engine")
    if shared is not None:
        layers = _layer_clock(shared, layers)
    settings: dict[str, Any] = {
        "max_concurrency": 100,
        "alarm_lease": "5 minutes",
        "alarm_poll_interval": None,
        "shutdown_grace": "10 seconds",
        "logger": None,
        # Like the alarm sleeper: one process, so the worker need not poll.
        "worker": WorkerOptions(poll_interval=None),
        **options,
    }
    async with open_engine_as(TestEngine, definitions, layers=layers, services=services, **settings) as engine:
        try:
            yield engine
        finally:
            kept = None if shared is None else shared.test_clock
            if isinstance(kept, _SharedClock):
                kept.last_ms = kept.clock.now_ms()


def default_layers(start: datetime | None = None, *, seed: int = 0) -> Layers:
    """The layers of `open_test_engine`: in-memory storage, a `VirtualClock`, an `InMemoryTracker`.

    Retry jitter and a workflow's ``ctx.random()`` are seeded with `seed`,
    so they repeat from run to run. Each call builds new layers (a new
    database, a new tracker), so two test engines never share one by
    accident; swap one with ``default_layers().replace(clock=...)``.

    Args:
        start: The virtual time the clock starts at (default 2026-01-01 00:00 UTC).
        seed: Seed for retry jitter and ``ctx.random()``.

    Examples:
        >>> layers = default_layers()
        >>> type(layers.clock).__name__, type(layers.tracker).__name__
        ('VirtualClock', 'InMemoryTracker')
    """
    return Layers(
        storage=memory(),
        clock=VirtualClock(start),
        tracker=InMemoryTracker(),
        retries=JitteredRetries(seed),
        ids=RandomIds(seed),
    )


def success(result: IOResult[V, E]) -> V:
    """The value of an ``IOSuccess``; fails the test with the error otherwise.

    Examples:
        >>> from returns.io import IOSuccess
        >>> success(IOSuccess(3))
        3

    Raises:
        AssertionError: `result` is an ``IOFailure``.
        TypeError: `result` is not an ``IOResult``: a verb not awaited (a
            ``FutureResult``) gets a message saying to await it.
    """
    check_result(result, "success")
    if isinstance(result, IOFailure):
        raise AssertionError(f"expected IOSuccess, got {result!r}")
    return unsafe_perform_io(result.unwrap())


def failure(result: IOResult[V, E]) -> E:
    """The error of an ``IOFailure``; fails the test otherwise.

    Examples:
        >>> from returns.io import IOFailure
        >>> failure(IOFailure("boom"))
        'boom'

    Raises:
        AssertionError: `result` is an ``IOSuccess``.
        TypeError: `result` is not an ``IOResult``: a verb not awaited (a
            ``FutureResult``) gets a message saying to await it.
    """
    check_result(result, "failure")
    if isinstance(result, IOSuccess):
        raise AssertionError(f"expected IOFailure, got {result!r}")
    return unsafe_perform_io(result.failure())
