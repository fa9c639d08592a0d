"""Prometheus metrics for djobs: what storage holds, and what an engine did.

Two sources, because a dashboard process has no engine of its own while an
engine process sees every event as it happens:

- `StorageCollector` reads storage (SQLite or PostgreSQL, through the same
  `Inspector` the command line uses) and exposes *gauges*: queue depth by
  status and by job name, jobs due, the current lateness (how long the oldest
  due job has waited), stored instances by kind, job and status, the
  instances active now (whose lease an engine holds), and alarms by state. It works in
  any process. ``collect()`` is synchronous (Prometheus's contract) and reports
  the snapshot the last ``await collector.refresh()`` read; the dashboard
  refreshes it on every scrape of ``/metrics``, your own process calls
  `StorageCollector.run` in a nursery.
- `MetricsTracker` is a tracker layer (``open_engine(tracker=MetricsTracker())``)
  that turns the engine's telemetry events into *counters and histograms*:
  jobs enqueued, started, completed and failed by job name, run duration,
  lateness (claim time minus the due time of jobs enqueued by this process),
  and alarm-driven runs (``alarms fired``: a Continuous run, a Debounce flush,
  a Task execution, a cron fire). It forwards every event to an inner tracker,
  so it can wrap the one you have.

Both register on a `prometheus_client.CollectorRegistry` you pass (the global
``REGISTRY`` by default); `render` writes a registry in the text format.
Needs ``pip install "djobs-trio[metrics]"``. Metric names follow Prometheus's
conventions (``_total`` counters, ``_seconds`` units).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from datetime import datetime

import trio
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._clock import Clock, WallClock
from ._durations import DurationLike, check_at_least
from ._errors import StorageError
from .storage import Storage
from .storage._inspect import Inspector, StorageSummary, inspector
from .tracking import BackgroundTracker, NoopTracker, TrackedEvent, Tracker

__all__ = ["MetricsTracker", "StorageCollector", "render"]

#: Buckets for run durations and lateness, in seconds: 5 ms to 1 hour.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


def render(registry: CollectorRegistry = REGISTRY) -> bytes:
    """`registry` in Prometheus's text exposition format (what ``/metrics`` serves)."""
    return generate_latest(registry)


class StorageCollector(Collector):
    """Gauges read from storage; register it with ``registry.register(collector)``.

    Args:
        source: An open storage (``engine.storage``: SQLite or PostgreSQL) or
            its `Inspector`.
        clock: Where "now" comes from (lateness, due counts); the wall clock by default.

    Raises:
        StorageError: A storage that offers no inspection (a custom layer).
    """

    def __init__(self, source: Storage | Inspector, clock: Clock | None = None) -> None:
        self._inspect = source if isinstance(source, Inspector) else inspector(source)
        self._clock = clock or WallClock()
        self._summary: StorageSummary | None = None
        self._by_name: list[tuple[str, str, int]] = []
        #: Whether the last refresh failed (the gauges then show the snapshot before it).
        self.failed = False

    async def refresh(self) -> None:
        """Read storage now; the next ``collect()`` reports what was read.

        Raises:
            StorageError: The database could not be read (the previous snapshot is kept).
        """
        try:
            summary = await self._inspect.summary(self._clock.now_ms())
            by_name = [(c.name, c.status, c.count) for c in await self._inspect.job_counts_by_name()]
        except StorageError:
            self.failed = True
            raise
        self._summary, self._by_name, self.failed = summary, by_name, False

    async def run(self, every: DurationLike = "15 seconds") -> None:
        """Refresh every `every` until cancelled (a storage error is kept for the next try).

        Raises:
            ValidationError: `every` is not a duration from 1 millisecond to 100 years.
        """
        interval = check_at_least(every, "every", 1, "1 millisecond") / 1000
        while True:
            # On a storage error self.failed says so; the next scrape sees the last good snapshot.
            with contextlib.suppress(StorageError):
                await self.refresh()
            await trio.sleep(interval)

    def collect(self) -> Iterator[Metric]:
        """The gauges of the last snapshot (none before the first refresh)."""
        s = self._summary
        up = GaugeMetricFamily("djobs_storage_up", "1 if the last read of storage succeeded")
        up.add_metric([], 0 if self.failed or s is None else 1)
        yield up
        if s is None:
            return
        depth = GaugeMetricFamily("djobs_queue_jobs", "Queue jobs stored, by status", labels=["status"])
        for status, n in s.jobs.items():
            depth.add_metric([status], n)
        yield depth
        by_name = GaugeMetricFamily(
            "djobs_queue_jobs_by_name", "Queue jobs stored, by job and status", labels=["job", "status"]
        )
        for name, status, n in self._by_name:
            by_name.add_metric([name, status], n)
        yield by_name
        due = GaugeMetricFamily("djobs_queue_due_jobs", "Pending jobs that are due now")
        due.add_metric([], s.jobs_due)
        yield due
        late = GaugeMetricFamily("djobs_queue_lateness_seconds", "How long the oldest due pending job has waited")
        late.add_metric([], 0 if s.oldest_pending is None else (s.now - s.oldest_pending.scheduled_for) / 1000)
        yield late
        instances = GaugeMetricFamily(
            "djobs_instances", "Stored instances, by kind, job and status", labels=["kind", "job", "status"]
        )
        for c in s.instances:
            instances.add_metric([c.kind, c.name, c.status], c.count)
        yield instances
        active = GaugeMetricFamily(
            "djobs_instances_active", "Instances an engine is working on now (holding their lease), across engines"
        )
        active.add_metric([], sum(holder.instances for holder in s.leases))
        yield active
        alarms = GaugeMetricFamily("djobs_alarms", "Instance alarms, by state (due, claimed, later)", labels=["state"])
        alarms.add_metric(["due"], s.alarms.due)
        alarms.add_metric(["claimed"], s.alarms.claimed)
        alarms.add_metric(["later"], s.alarms.later)
        yield alarms


_INSTANCE_KINDS = frozenset({"continuous", "debounce", "task"})


class MetricsTracker:
    """A tracker layer that counts what the engine does, for Prometheus.

    Args:
        inner: A tracker to forward every event to (default none). A
            `djobs.tracking.BackgroundTracker` (``HttpBatchTracker``) keeps its
            task: the engine starts this tracker's `run`, which runs the inner one's.
        registry: Where the counters and histograms are registered.

    Counters (label ``job``, the job's name): ``djobs_jobs_enqueued_total``,
    ``djobs_jobs_started_total`` (an attempt claimed or started),
    ``djobs_jobs_completed_total``, ``djobs_jobs_failed_total`` (an attempt
    that failed, retried or not), ``djobs_alarms_fired_total`` (alarm-driven
    runs). Histograms: ``djobs_job_run_duration_seconds``,
    ``djobs_job_lateness_seconds``.
    """

    def __init__(self, inner: Tracker | None = None, *, registry: CollectorRegistry = REGISTRY) -> None:
        self._inner = inner or NoopTracker()
        labels = ["job"]
        self.enqueued = Counter("djobs_jobs_enqueued", "Jobs enqueued", labels, registry=registry)
        self.started = Counter("djobs_jobs_started", "Job attempts started", labels, registry=registry)
        self.completed = Counter("djobs_jobs_completed", "Jobs completed", labels, registry=registry)
        self.failed = Counter("djobs_jobs_failed", "Job attempts that failed", labels, registry=registry)
        self.alarms_fired = Counter(
            "djobs_alarms_fired",
            "Alarm-driven runs: continuous runs, debounce flushes, task executions, cron fires",
            ["kind", "job"],
            registry=registry,
        )
        self.duration = Histogram(
            "djobs_job_run_duration_seconds",
            "How long one run of a job took",
            labels,
            buckets=BUCKETS,
            registry=registry,
        )
        self.lateness = Histogram(
            "djobs_job_lateness_seconds",
            "From when a job was due to when an attempt started (jobs enqueued by this process)",
            labels,
            buckets=BUCKETS,
            registry=registry,
        )
        self._due: OrderedDict[str, datetime] = OrderedDict()  # job id -> due time, bounded

    def emit(self, event: TrackedEvent) -> None:
        """Count `event`, then forward it."""
        try:
            self._count(event)
        finally:
            self._inner.emit(event)

    def _count(self, event: TrackedEvent) -> None:
        job, data, kind = event.job_name, event.data, event.job_type
        match event.type:
            case "job.enqueued":
                self.enqueued.labels(job).inc()
                due = data.get("scheduled_for")
                if isinstance(due, str):
                    self._due[event.instance_id] = datetime.fromisoformat(due)
                elif data.get("now") or data.get("retry"):
                    self._due[event.instance_id] = event.at
                while len(self._due) > 10_000:
                    self._due.popitem(last=False)
            case "job.claimed":
                self.started.labels(job).inc()
                due_at = self._due.pop(event.instance_id, None)
                if due_at is not None:
                    self.lateness.labels(job).observe(max(0.0, (event.at - due_at).total_seconds()))
            case "job.completed":  # a queue job; its run's duration came with job.executed
                self.completed.labels(job).inc()
            case "job.executed":
                if kind in _INSTANCE_KINDS:
                    self.completed.labels(job).inc()
                    self.started.labels(job).inc()
                    self.alarms_fired.labels(kind, job).inc()
                self._observe(job, data)
            case "job.failed":
                self.failed.labels(job).inc()
                if kind in _INSTANCE_KINDS:
                    self.started.labels(job).inc()
                    self.alarms_fired.labels(kind, job).inc()
                self._observe(job, data)
            case "debounce.flushed":
                self.alarms_fired.labels(kind, job).inc()
            case "cron.fired":
                self.alarms_fired.labels(kind, job).inc()
            case _:
                pass

    def _observe(self, job: str, data: dict[str, object]) -> None:
        took = data.get("duration_ms")
        if isinstance(took, int | float):
            self.duration.labels(job).observe(took / 1000)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the inner tracker's background task, if it has one (the engine starts this)."""
        if isinstance(self._inner, BackgroundTracker):
            await self._inner.run(task_status=task_status)
        else:
            task_status.started()

    async def aclose(self) -> None:
        """Close the inner tracker."""
        await self._inner.aclose()
