from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol, final

import msgspec


class TrackedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One telemetry event, e.g. ``job.executed``.

    Attributes:
        type: The event name (``"job.executed"``, ``"debounce.flushed"``, ...).
        instance_id: The instance's storage key (``continuous:refresh:u1``) or a queued job's id.
        job_type: ``continuous``, ``debounce``, ``task``, ``job`` or ``cron``.
        job_name: The registered job name.
        at: When it happened (aware UTC, from the clock layer).
        data: The event's own fields (``run_count``, ``duration_ms``, ...).
    """

    type: str
    instance_id: str
    job_type: str
    job_name: str
    at: datetime
    data: dict[str, Any] = msgspec.field(default_factory=dict)


class Tracker(Protocol):
    """Where telemetry goes. `emit` is called after the commit it describes."""

    def emit(self, event: TrackedEvent) -> None:
        """Accept one event. Must not block, raise, or wait on I/O."""
        ...

    async def aclose(self) -> None:
        """Deliver what is buffered and release resources; called when the engine closes."""
        ...


@final
class NoopTracker:
    """The default tracker: drops every event."""

    def emit(self, event: TrackedEvent) -> None:
        pass

    async def aclose(self) -> None:
        pass
