"""The tracker layer: telemetry events out of the engine.

A tracker receives `TrackedEvent` values after the change they describe is
committed. `emit` must never block or fail a job; a tracker that talks to
the network buffers and sends from its own task (a `BackgroundTracker`).

`HttpBatchTracker` needs the ``http`` extra (``pip install 'djobs-trio[http]'``)
and `OpenTelemetryTracker` the ``otel`` extra; importing this package needs
neither, only making one of them does.
"""

from ._base import BackgroundTracker as BackgroundTracker
from ._base import NoopTracker as NoopTracker
from ._base import TrackedEvent as TrackedEvent
from ._base import Tracker as Tracker
from ._base import current_caller_context as current_caller_context
from ._http import SERVICE_KEY_HEADER as SERVICE_KEY_HEADER
from ._http import HttpBatchTracker as HttpBatchTracker
from ._memory import InMemoryTracker as InMemoryTracker
from ._otel import OpenTelemetryTracker as OpenTelemetryTracker

__all__ = [
    "BackgroundTracker",
    "HttpBatchTracker",
    "InMemoryTracker",
    "NoopTracker",
    "OpenTelemetryTracker",
    "SERVICE_KEY_HEADER",
    "TrackedEvent",
    "Tracker",
    "current_caller_context",
]
