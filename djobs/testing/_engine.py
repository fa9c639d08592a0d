from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar

from returns.io import IOFailure, IOResult, IOSuccess

from .._clock import VirtualClock
from .._engine import Definition, Engine, open_engine_as, require_trio
from .._worker import WorkerOptions
from ..storage import StorageLayer, memory
from ..tracking import InMemoryTracker, Tracker

V = TypeVar("V")
E = TypeVar("E")


class TestEngine(Engine):
    """An `Engine` whose tracker records events and whose clock is virtual."""

    __test__ = False  # not a pytest test class
    tracker: InMemoryTracker
    clock: VirtualClock


@asynccontextmanager
async def open_test_engine(
    definitions: Sequence[Definition],
    *,
    start: datetime | None = None,
    services: Any = None,
    storage: StorageLayer | None = None,
    seed: int = 0,
    tracker: Tracker | None = None,
    **options: Any,
) -> AsyncIterator[TestEngine]:
    """An engine for tests: in-memory storage, virtual clock, recording tracker.

    Args:
        definitions: The jobs under test.
        start: The virtual time the test starts at (default 2026-01-01 00:00 UTC).
        services: Fakes for the application's services.
        storage: Another storage layer (e.g. ``djobs.sqlite(tmp_path / "t.db")``).
        seed: Seed for retry jitter, so jittered delays repeat from run to run.
        tracker: Another tracker to test (e.g. an ``HttpBatchTracker`` against a
            local server); ``engine.tracker`` is then that tracker, not an
            `InMemoryTracker` as its type says. Default: a new `InMemoryTracker`.
        options: Passed on to `open_engine` (``worker=`` defaults to
            ``WorkerOptions(poll_interval=None)``: one process needs no polling).
    """
    require_trio("open_test_engine")
    tracker = tracker if tracker is not None else InMemoryTracker()
    clock = VirtualClock(start)
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
    async with open_engine_as(
        TestEngine,
        definitions,
        storage=storage or memory(),
        clock=clock,
        tracker=tracker,
        services=services,
        seed=seed,
        **settings,
    ) as engine:
        yield engine


def success(result: IOResult[V, E]) -> V:
    """The value of an ``IOSuccess``; fails the test with the error otherwise.

    Examples:
        >>> from returns.io import IOSuccess
        >>> success(IOSuccess(3))
        3
    """
    if not isinstance(result, IOSuccess):
        raise AssertionError(f"expected IOSuccess, got {result!r}")
    value: V = result._inner_value.unwrap()
    return value


def failure(result: IOResult[V, E]) -> E:
    """The error of an ``IOFailure``; fails the test otherwise.

    Examples:
        >>> from returns.io import IOFailure
        >>> failure(IOFailure("boom"))
        'boom'
    """
    if not isinstance(result, IOFailure):
        raise AssertionError(f"expected IOFailure, got {result!r}")
    error: E = result._inner_value.failure()
    return error
