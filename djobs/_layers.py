"""`Layers`: the services an engine is built from, in one frozen value.

Each layer is a small `Protocol` for one concept, and what a layer depends
on is given when it is built (Effect's rule: a service's methods require
nothing), so a test swaps one layer without knowing the others:

- `storage`: a `StorageLayer`, opening an instance store, its alarms and
  (optionally) a job queue; ``sqlite("djobs.db")`` (tests: ``memory()``).
- `clock`: a `Clock`; `WallClock` (tests: `VirtualClock`).
- `tracker`: a `Tracker`; `NoopTracker` (tests: `InMemoryTracker`).
- `retries`: a `RetryPolicy`; ``JitteredRetries(seed)`` (tests: seed 0).
- `ids`: `Ids`; ``RandomIds(seed)`` (tests: seed 0).

The instance store, its alarms and the job queue come from one storage
layer because a check-in writes an instance and its alarm in one
transaction (and a retry's job row with its alarm-like due time): they
share a connection, so they are opened together.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import final

from ._clock import Clock, WallClock
from ._errors import ValidationError, safe_repr
from ._ids import Ids, RandomIds
from ._retry import JitteredRetries, RetryPolicy
from .storage import StorageLayer, sqlite
from .tracking import NoopTracker, Tracker

# What each layer must have, checked when `Layers` is built: a wrong object fails there
# with a message, not with an AttributeError from inside the engine.
_LAYER_METHODS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("storage", ("open",)),
    ("clock", ("now_ms", "sleep_until")),
    ("tracker", ("emit",)),  # and an async aclose, checked below
    ("retries", ("delay_before",)),
    ("ids", ("engine_id", "job_id")),
)
_LAYER_TYPES = {
    "storage": "StorageLayer",
    "clock": "Clock",
    "tracker": "Tracker",
    "retries": "RetryPolicy",
    "ids": "Ids",
}


def _default_storage() -> StorageLayer:
    return sqlite("djobs.db")


@final
@dataclass(frozen=True, slots=True)
class Layers:
    """The services an engine runs on; ``open_engine(definitions, layers=...)`` takes them whole.

    Every field has the production default, so ``Layers(storage=djobs.memory())``
    changes only the storage. Built once, never patched: the engine reads its
    layers when it opens and keeps them until it closes.

    Attributes:
        storage: Opens the database: instances, alarms, leases and the job queue.
        clock: Every "now" and every wait (epoch milliseconds).
        tracker: Where telemetry events go.
        retries: How long a failed run waits before its next attempt.
        ids: Engine ids, job ids, and a workflow's ``ctx.uuid()`` / ``ctx.random()``.

    Examples:
        >>> from djobs import VirtualClock, memory
        >>> layers = Layers(storage=memory())
        >>> layers.replace(clock=VirtualClock()).storage is layers.storage
        True
    """

    storage: StorageLayer = field(default_factory=_default_storage)
    clock: Clock = field(default_factory=WallClock)
    tracker: Tracker = field(default_factory=NoopTracker)
    retries: RetryPolicy = field(default_factory=JitteredRetries)
    ids: Ids = field(default_factory=RandomIds)

    def __post_init__(self) -> None:
        for name, methods in _LAYER_METHODS:
            layer = getattr(self, name)
            if isinstance(layer, type):  # its methods are there, unbound: each call would fail later
                raise ValidationError(
                    f"{name} must be a {_LAYER_TYPES[name]}, got the class {layer.__name__} itself:"
                    f" call it ({name}={layer.__name__}(...))"
                )
            missing = [m for m in methods if not callable(getattr(layer, m, None))]
            if missing:
                hint = ""
                if name == "storage" and isinstance(layer, str):
                    hint = (
                        "; did you mean djobs.postgres(dsn)?"
                        if "://" in layer
                        else f"; did you mean djobs.sqlite({safe_repr(layer):.80}) (or djobs.postgres(dsn))?"
                    )
                raise ValidationError(
                    f"{name} must be a {_LAYER_TYPES[name]} (with {', '.join(methods)}),"
                    f" got {type(layer).__name__} {safe_repr(layer):.80}{hint}"
                )
        if not inspect.iscoroutinefunction(getattr(self.tracker, "aclose", None)):
            # The engine awaits it when it closes: a plain function would fail there, at every close.
            raise ValidationError(
                f"tracker must be a Tracker (with emit() and an async aclose()), got {type(self.tracker).__name__}"
                f" {safe_repr(self.tracker):.80} whose aclose is missing or not an async def"
            )

    def replace(
        self,
        *,
        storage: StorageLayer | None = None,
        clock: Clock | None = None,
        tracker: Tracker | None = None,
        retries: RetryPolicy | None = None,
        ids: Ids | None = None,
    ) -> Layers:
        """These layers with the ones given swapped in (``None`` keeps a layer as it is)."""
        return Layers(
            storage=self.storage if storage is None else storage,
            clock=self.clock if clock is None else clock,
            tracker=self.tracker if tracker is None else tracker,
            retries=self.retries if retries is None else retries,
            ids=self.ids if ids is None else ids,
        )
