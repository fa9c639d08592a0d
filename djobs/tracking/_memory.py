from __future__ import annotations

import difflib
from typing import final

from .._errors import ValidationError, safe_repr
from ._base import EVENT_TYPES, TrackedEvent


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
        """The recorded events named `type`, oldest first.

        Raises:
            ValidationError: `type` is no event type the engine emits nor one
                recorded here (a typo, job.excuted), which would match nothing.
        """
        self._check(type)
        return [e for e in self.events if e.type == type]

    def count(self, type: str) -> int:
        """How many events named `type` were recorded.

        Raises:
            ValidationError: `type` is no event type the engine emits nor one
                recorded here: a count of a typo (job.excuted) would be 0 whatever ran.
        """
        self._check(type)
        return sum(1 for e in self.events if e.type == type)

    def _check(self, type: object) -> None:
        if isinstance(type, str) and (type in EVENT_TYPES or any(e.type == type for e in self.events)):
            return
        close = difflib.get_close_matches(type, EVENT_TYPES, n=1) if isinstance(type, str) else []
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValidationError(
            f"no event type {safe_repr(type):.80}{guess}: the engine emits {', '.join(sorted(EVENT_TYPES))}"
        )

    def types(self) -> list[str]:
        """Every recorded event's name, oldest first."""
        return [e.type for e in self.events]

    def clear(self) -> None:
        """Forget what was recorded."""
        self.events.clear()
