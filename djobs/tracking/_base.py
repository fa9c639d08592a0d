from __future__ import annotations

from contextvars import Context, ContextVar
from datetime import datetime
from typing import Any, Protocol, final, runtime_checkable

import msgspec
import trio


class TrackedEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One telemetry event, e.g. ``job.executed``.

    Attributes:
        type: The event name (``"job.executed"``, ``"debounce.flushed"``, ...).
        instance_id: The instance's storage key (``continuous:refresh:u1``) or a queued job's id.
        job_type: ``continuous``, ``debounce``, ``task``, ``job`` or ``cron``.
        job_name: The registered job name.
        at: When it happened (aware UTC, from the clock layer).
        data: The event's own fields (``run_count``, ``duration_ms``, ...).

    Not tracked by Python's cycle collector (msgspec's ``gc=False``): an event is a leaf
    record, which the engine builds from strings, numbers and a time, so it holds no
    cycle; a tracker that keeps every event (`InMemoryTracker`) adds none of them to the
    collector's passes. Put no container that refers back to the event in `data`: such
    a cycle would never be freed.
    """

    type: str
    instance_id: str
    job_type: str
    job_name: str
    at: datetime
    data: dict[str, Any] = msgspec.field(default_factory=dict)


#: Every event type the engine emits (the telemetry guide's "The events" lists them with their fields).
EVENT_TYPES: frozenset[str] = frozenset(
    {
        "job.started",
        "job.executed",
        "job.failed",
        "job.retry_exhausted",
        "job.terminated",
        "job.paused",
        "job.resumed",
        "debounce.started",
        "debounce.flushed",
        "task.scheduled",
        "job.enqueued",
        "job.claimed",
        "job.completed",
        "job.cancelled",
        "job.lease_expired",
        "cron.fired",
        "cron.skipped",
        "workflow.started",
        "workflow.step_completed",
        "workflow.step_failed",
        "workflow.sleeping",
        "workflow.waiting",
        "workflow.signal_received",
        "workflow.signal_rejected",
        "workflow.completed",
        "workflow.failed",
        "workflow.cancelled",
    }
)

TRACKER_CLOSE_LIMIT_S = 30
"""Seconds `Tracker.aclose` may take (OpenTelemetry's batch processor gives its export the same
30 seconds by default); the engine's close cancels it a second after that."""


class Tracker(Protocol):
    """Where telemetry goes. `emit` is called after the commit it describes.

    A tracker that does I/O (sending batches over the network) also has a
    ``run`` method, described by `BackgroundTracker`: the engine starts it in
    its own nursery when it opens. `NoopTracker` and `InMemoryTracker` need
    nothing of the kind.
    """

    def emit(self, event: TrackedEvent) -> None:
        """Accept one event. Must not block, raise, or wait on I/O."""
        ...

    async def aclose(self) -> None:
        """Deliver what is buffered and release resources; called when the engine closes.

        It may take 30 seconds (``TRACKER_CLOSE_LIMIT_S``): the engine cancels the call a
        second after that and logs an error, so a tracker that hangs cannot hang the host's exit.
        """
        ...


@final
class NoopTracker:
    """The default tracker: drops every event."""

    def emit(self, event: TrackedEvent) -> None:
        pass

    async def aclose(self) -> None:
        pass


@runtime_checkable
class BackgroundTracker(Tracker, Protocol):
    """A `Tracker` with a task of its own, such as `HttpBatchTracker`'s sender.

    When the engine opens it runs ``await nursery.start(tracker.run)`` in its
    nursery; when it closes it awaits ``tracker.aclose()`` (shielded), which
    must make ``run`` return and deliver what is buffered within a bound of
    its own, and only then cancels the nursery. Once started, ``run`` must
    not raise: a tracker failure never reaches the engine or a job.
    """

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Do the tracker's background work until `aclose` asks it to stop."""
        ...


# Set by the runtime around a handler that a client call queued: the caller's contextvars,
# copied when the verb was called, so a tracker can read the caller's trace context.
CALLER_CONTEXT: ContextVar[Context | None] = ContextVar("djobs_caller_context", default=None)


def current_caller_context() -> Context | None:
    """The ``contextvars.Context`` of the client call that caused the code running now.

    Inside a tracker's ``emit``, this is a copy of the caller's context (taken
    when the client verb was awaited) if the event comes from a handler that a
    client call ran, e.g. ``trigger``; it is ``None`` for work an alarm
    started (a scheduled run, a retry) or code running outside the engine.
    `OpenTelemetryTracker` uses it to parent a run's span on the caller's span.

    Examples:
        >>> current_caller_context() is None
        True
    """
    return CALLER_CONTEXT.get()
