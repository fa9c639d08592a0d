from __future__ import annotations

from typing import final

from ._base import TrackedEvent


@final
class InMemoryTracker:
    """A tracker that records every event, for tests.

    Examples:
        >>> t = InMemoryTracker()
        >>> t.count("job.executed")
        0
    """

    def __init__(self) -> None:
        self.events: list[TrackedEvent] = []

    def emit(self, event: TrackedEvent) -> None:
        self.events.append(event)

    async def aclose(self) -> None:
        pass

    def of_type(self, type: str) -> list[TrackedEvent]:
        """The recorded events named `type`, oldest first."""
        return [e for e in self.events if e.type == type]

    def count(self, type: str) -> int:
        """How many events named `type` were recorded."""
        return sum(1 for e in self.events if e.type == type)

    def types(self) -> list[str]:
        """Every recorded event's name, oldest first."""
        return [e.type for e in self.events]

    def clear(self) -> None:
        """Forget what was recorded."""
        self.events.clear()
