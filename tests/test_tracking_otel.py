"""OpenTelemetryTracker: one span per execution, recorded with the SDK's in-memory exporter."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
import trio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from returns.result import Failure, Result, Success

import djobs
from djobs.testing import open_test_engine, success
from djobs.tracking import InMemoryTracker, OpenTelemetryTracker, TrackedEvent


class Count(msgspec.Struct):
    n: int = 0


class Both:
    """Records events and forwards them to the tracker under test, to match spans with events."""

    def __init__(self, otel: OpenTelemetryTracker) -> None:
        self.otel = otel
        self.recorded = InMemoryTracker()

    def emit(self, event: TrackedEvent) -> None:
        self.recorded.emit(event)
        self.otel.emit(event)

    async def aclose(self) -> None:
        await self.otel.aclose()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def epoch_ns(moment: datetime) -> int:
    return round(moment.timestamp() * 1_000_000) * 1000


def fails_on_run_2(ctx: djobs.ContinuousContext[Count]) -> Result[None, djobs.ExecutionError]:
    ctx.set_state(Count(ctx.state.n + 1))
    if ctx.run_count == 2:
        return Failure(djobs.ExecutionError("upstream said no"))
    return Success(None)


@pytest.mark.trio
async def test_one_span_per_execution_with_the_runs_identity_and_outcome(
    autojump_clock: trio.testing.MockClock, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    job = djobs.Continuous.make("counter", state=Count, schedule=djobs.every("1 minute"), execute=fails_on_run_2)
    tracker = Both(OpenTelemetryTracker(tracer_provider=provider))
    async with open_test_engine([job], tracker=tracker) as engine:
        await engine.client.continuous(job).start(id="u1", input=Count())
        await trio.sleep(3 * 60 + 1)  # runs at 0, 1, 2 and 3 minutes
        await engine.client.continuous(job).terminate("u1")

    spans: list[ReadableSpan] = sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0)
    # job.started and the terminate verb's job.terminated are not executions: no span.
    assert [s.name for s in spans] == ["continuous counter"] * 4
    assert [dict(s.attributes or {}) for s in spans] == [
        {
            "djobs.job.type": "continuous",
            "djobs.job.name": "counter",
            "djobs.instance.id": "continuous:counter:u1",
            "djobs.outcome": outcome,
            "djobs.run_count": run,
            "djobs.attempt": 1,
            **extra,
        }
        for run, outcome, extra in [
            (1, "succeeded", {}),
            (2, "failed", {"error.type": "execution"}),
            (3, "succeeded", {}),
            (4, "succeeded", {}),
        ]
    ]
    assert [s.status.status_code for s in spans] == [
        StatusCode.UNSET,
        StatusCode.ERROR,
        StatusCode.UNSET,
        StatusCode.UNSET,
    ]
    assert spans[1].status.description == "upstream said no"
    # Each span ends at its event's time and lasts the run's duration_ms (job.failed carries none yet: 0).
    ends = [e for e in tracker.recorded.events if e.type in ("job.executed", "job.failed")]
    assert [s.end_time for s in spans] == [epoch_ns(e.at) for e in ends]
    assert epoch_ns(ends[0].at) == epoch_ns(datetime(2026, 1, 1, tzinfo=UTC))
    assert [(s.end_time or 0) - (s.start_time or 0) for s in spans] == [
        round(e.data.get("duration_ms", 0) * 1_000_000) for e in ends
    ]
    assert (spans[0].end_time or 0) > (spans[0].start_time or 0)
    assert all(s.parent is None for s in spans)


@pytest.mark.trio
async def test_a_retried_failure_and_a_terminate_have_their_outcomes(
    autojump_clock: trio.testing.MockClock, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    def flaky_then_done(ctx: djobs.ContinuousContext[Count]) -> Result[None, djobs.ExecutionError]:
        if ctx.attempt == 1:
            return Failure(djobs.ExecutionError("try again"))
        ctx.terminate(reason="done")

    job = djobs.Continuous.make(
        "flaky",
        state=Count,
        schedule=djobs.every("1 hour"),
        execute=flaky_then_done,
        retry=djobs.Retry(max_attempts=3, delay="1 second"),
    )
    async with open_test_engine([job], tracker=OpenTelemetryTracker(tracer_provider=provider)) as engine:
        await engine.client.continuous(job).start(id="u1", input=Count())
        await trio.sleep(5)

    spans = sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0)
    assert [(s.attributes or {}).get("djobs.outcome") for s in spans] == ["retrying", "terminated"]
    assert [(s.attributes or {}).get("djobs.run_count") for s in spans] == [1, 1]
    assert (spans[0].attributes or {}).get("djobs.attempt") == 1  # job.terminated carries no attempt
    assert [s.status.status_code for s in spans] == [StatusCode.ERROR, StatusCode.UNSET]


@pytest.mark.trio
async def test_a_triggered_run_is_a_child_of_the_callers_span_and_scheduled_runs_are_roots(
    autojump_clock: trio.testing.MockClock, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    job = djobs.Continuous.make("counter", state=Count, schedule=djobs.every("1 minute"), execute=fails_on_run_2)
    app = provider.get_tracer("app")
    # The engine opens inside a span: its tasks inherit that context, yet it causes no run.
    with app.start_as_current_span("startup"):
        async with open_test_engine([job], tracker=OpenTelemetryTracker(tracer_provider=provider)) as engine:
            client = engine.client.continuous(job)
            with app.start_as_current_span("start request"):
                await client.start(id="u1", input=Count())
            await trio.sleep(1)  # the first run, from its alarm
            with app.start_as_current_span("trigger request") as request:
                triggered = success(await client.trigger("u1"))
            await trio.sleep(60)  # the next scheduled run

    runs = {
        (s.attributes or {}).get("djobs.run_count"): s
        for s in exporter.get_finished_spans()
        if s.name == "continuous counter"
    }
    assert set(runs) == {1, 2, 3}
    assert triggered.run_count == 2
    child = runs[2]
    assert child.parent is not None
    assert child.parent.span_id == request.get_span_context().span_id
    assert child.context is not None and child.context.trace_id == request.get_span_context().trace_id
    assert runs[1].parent is None and runs[3].parent is None
