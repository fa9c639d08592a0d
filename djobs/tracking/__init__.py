"""The tracker layer: telemetry events out of the engine.

A tracker receives `TrackedEvent` values after the change they describe is
committed. `emit` must never block or fail a job; a tracker that talks to
the network buffers and sends from its own task.
"""

from ._base import NoopTracker as NoopTracker
from ._base import TrackedEvent as TrackedEvent
from ._base import Tracker as Tracker
from ._memory import InMemoryTracker as InMemoryTracker

__all__ = ["InMemoryTracker", "NoopTracker", "TrackedEvent", "Tracker"]
