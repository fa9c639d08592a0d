"""`OpenTelemetryTracker`: one span per execution (optional extra ``djobs-trio[otel]``).

The span is made from the event that ends a run (``job.executed``,
``job.failed``, or ``job.terminated`` from ``ctx.terminate``), after the run
is committed: it starts ``duration_ms`` before the event's time and ends at
it. A run that a client call caused and waited for (``trigger``) is parented
on the span that was current in the caller; a run an alarm started (its
schedule, a retry) is a root span.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, final

from ._base import TrackedEvent, current_caller_context

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from opentelemetry.util.types import AttributeValue

__all__ = ["OpenTelemetryTracker"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_ns(moment: datetime) -> int:
    # Integer arithmetic: a float of epoch nanoseconds loses the microseconds.
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _outcome(event: TrackedEvent) -> str | None:
    """What the run an event ends came to, or ``None`` if the event does not end a run."""
    if event.type == "job.executed":
        return "succeeded"
    if event.type == "job.failed":
        return "retrying" if event.data.get("will_retry") else "failed"
    if event.type == "job.terminated" and "run_count" in event.data:
        # Only a run's own ctx.terminate() carries run_count; a terminate verb or exhausted retries do not.
        return "terminated"
    return None


@final
class OpenTelemetryTracker:
    """A tracker that records one OpenTelemetry span per execution of a job.

    Spans are named ``"{job_type} {job_name}"`` (``"continuous tokenRefresher"``)
    and carry the attributes ``djobs.job.type``, ``djobs.job.name``,
    ``djobs.instance.id`` (the instance's key, or a queued job's id),
    ``djobs.run_count``, ``djobs.attempt`` and ``djobs.outcome``
    (``succeeded``, ``retrying``, ``failed`` or ``terminated``). A failed run's
    span has an error status with the error's message, and ``error.type`` set
    to the error's tag. Other events make no span.

    Args:
        tracer_provider: Where spans go; default the global provider set with
            ``opentelemetry.trace.set_tracer_provider``.

    Raises:
        ImportError: opentelemetry-api is not installed (``pip install 'djobs-trio[otel]'``).

    Example:
        ```python
        from opentelemetry.sdk.trace import TracerProvider

        async with djobs.open_engine(jobs, tracker=djobs.tracking.OpenTelemetryTracker(TracerProvider())):
            ...
        ```
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        try:
            from opentelemetry import trace
        except ImportError as exc:
            raise ImportError(
                "OpenTelemetryTracker needs opentelemetry-api, which the otel extra installs:"
                " pip install 'djobs-trio[otel]'"
            ) from exc
        self._tracer = trace.get_tracer("djobs", tracer_provider=tracer_provider)

    def __repr__(self) -> str:
        return "OpenTelemetryTracker()"

    def emit(self, event: TrackedEvent) -> None:
        """Record the span of the run that `event` ends; other events are ignored."""
        outcome = _outcome(event)
        if outcome is None:
            return
        from opentelemetry import context, trace

        data = event.data
        end = _epoch_ns(event.at)
        took = data.get("duration_ms")
        start = end - round(took * 1_000_000) if isinstance(took, int | float) and took > 0 else end
        caller = current_caller_context()
        # An explicit empty context, not None: None would mean "the current task's context", and an
        # engine task's context is whatever the task that spawned it had, not the run's cause.
        parent = caller.run(context.get_current) if caller is not None else context.Context()
        attributes: dict[str, AttributeValue] = {
            "djobs.job.type": event.job_type,
            "djobs.job.name": event.job_name,
            "djobs.instance.id": event.instance_id,
            "djobs.outcome": outcome,
        }
        for name in ("run_count", "attempt"):
            value = data.get(name)
            if isinstance(value, int):
                attributes[f"djobs.{name}"] = value
        span = self._tracer.start_span(
            f"{event.job_type} {event.job_name}", context=parent, attributes=attributes, start_time=start
        )
        if outcome in ("retrying", "failed"):
            error = data.get("error")
            tag = error.get("tag") if isinstance(error, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            if isinstance(tag, str):
                span.set_attribute("error.type", tag)
            span.set_status(trace.Status(trace.StatusCode.ERROR, message if isinstance(message, str) else None))
        span.end(end_time=end)

    async def aclose(self) -> None:
        """Nothing to deliver: spans go to the tracer provider's processors as they end."""
