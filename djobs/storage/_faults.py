"""A fault-injecting storage wrapper, for tests of what happens when the disk misbehaves.

`faulty(layer)` wraps any storage layer. Its `FaultyStorage` passes every
call through, except those a rule picks, which fail the way SQLite fails:
``busy`` (another writer holds the lock), ``io`` (disk I/O error), ``full``
(disk full) or ``readonly``; or ``bug``, an exception that is not a
`StorageError` (a `RuntimeError`, as a bug in a storage layer would raise),
for tests of the engine's paths for the unexpected. A fault can land *before* the call touches
the database, or *at commit*: the call's statements run, then the commit
fails and SQLite rolls the transaction back — the case that shows whether
anything partial becomes visible.

Example:
    ```python
    storage = djobs.storage.faulty(djobs.memory())
    async with open_test_engine([job], storage=storage) as engine:
        storage.fail("commit", kind="full", times=2)   # the next two commits fail
        ...
        storage.heal()
    ```
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, final

import apsw

from .._errors import StorageError
from ._base import Storage, StorageLayer
from ._memory import MemoryStorage
from ._sqlite import SqliteStorage

FaultKind = Literal["busy", "io", "full", "readonly", "bug"]
FaultPoint = Literal["call", "commit"]

_ERRORS: dict[str, tuple[type[apsw.Error], str]] = {
    "busy": (apsw.BusyError, "database is locked"),
    "io": (apsw.IOError, "disk I/O error"),
    "full": (apsw.FullError, "database or disk is full"),
    "readonly": (apsw.ReadOnlyError, "attempt to write a readonly database"),
}


@dataclass(slots=True)
class _Rule:
    operation: str | None
    kind: FaultKind
    at: FaultPoint
    remaining: int | None


#: Operations that do in one call, for many, what another does for one: a rule for the one
#: fails the batched form too (a fault on ``commit`` reaches the check-ins of alarms fired in a batch).
_BATCHED: dict[str, tuple[str, ...]] = {
    "commit_checkins": ("commit",),
    "checkpoint_instance": ("commit",),
    "claim_alarm_runs": ("claim_alarms",),
    "lease_and_load": ("acquire_instance_lease", "load"),
}


@final
class FaultyStorage:
    """A storage that fails chosen operations on purpose. Made by `faulty`.

    Attributes:
        injected: How many faults have fired so far.
    """

    def __init__(self, inner: Storage) -> None:
        self._inner = inner
        self._rules: list[_Rule] = []
        self.injected = 0

    @property
    def inner(self) -> Storage:
        """The wrapped storage."""
        return self._inner

    def fail(
        self, operation: str | None = None, *, kind: FaultKind = "io", at: FaultPoint = "call", times: int | None = None
    ) -> None:
        """Make calls fail from now on.

        Args:
            operation: The storage method to fail (``"commit"``,
                ``"claim_alarms"``, ``"load"``, ...); ``None`` fails every one.
                ``"commit"`` also fails ``commit_checkins`` (many check-ins in one
                call) and ``checkpoint_instance`` (a workflow's checkpoint),
                ``"claim_alarms"`` also ``claim_alarm_runs``, and
                ``"acquire_instance_lease"`` and ``"load"`` also ``lease_and_load``
                (a lease taken with the row read in one write).
            kind: Which SQLite error to give, or ``"bug"``: a `RuntimeError`
                (only ``at="call"``).
            at: ``"call"`` fails before the database is touched; ``"commit"``
                runs the call's statements and fails its commit (SQLite
                storages and the memory store only; a call that commits
                nothing, a read, is not affected).
            times: Fail this many matching calls, then pass again; ``None``
                until `heal`.
        """
        if at == "commit" and not isinstance(self._inner, SqliteStorage | MemoryStorage):
            raise ValueError("faults at commit need a SQLite storage or the memory store")
        if kind == "bug" and at != "call":
            raise ValueError('an injected bug is raised at the call (at="call")')
        self._rules.append(_Rule(operation, kind, at, times))

    def heal(self) -> None:
        """Remove every rule: calls pass through again."""
        self._rules.clear()

    def _take(self, operation: str) -> _Rule | None:
        same = _BATCHED.get(operation, ())
        for rule in self._rules:
            if rule.operation in (None, operation) or rule.operation in same:
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._rules.remove(rule)
                return rule
        return None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        return self._wrap(name, attr)

    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            rule = self._take(name)
            if rule is None:
                return await method(*args, **kwargs)
            if rule.kind == "bug":
                self.injected += 1
                raise RuntimeError(f"{name}: an injected bug")
            error_type, text = _ERRORS[rule.kind]
            if rule.at == "call":
                self.injected += 1
                raise StorageError(f"{name} failed: {text} (injected)", error_type(text))

            def hook() -> bool:
                self.injected += 1
                raise error_type(text)

            inner = self._inner
            if isinstance(inner, MemoryStorage):
                inner.set_commit_hook(hook)
                try:
                    return await method(*args, **kwargs)
                finally:
                    inner.set_commit_hook(None)
            assert isinstance(inner, SqliteStorage)
            db = inner.connection
            db.set_commit_hook(hook, id="djobs.faults")
            try:
                return await method(*args, **kwargs)
            finally:
                db.set_commit_hook(None, id="djobs.faults")

        return call


@final
class FaultyLayer:
    """A storage layer whose opened storage is a `FaultyStorage`.

    The rules can be set before the engine opens; they apply once it has.
    """

    def __init__(self, inner: StorageLayer) -> None:
        self._inner = inner
        self._pending: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.storage: FaultyStorage | None = None

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[Storage]:
        async with self._inner.open() as inner:
            self.storage = FaultyStorage(inner)
            for args, kwargs in self._pending:
                self.storage.fail(*args, **kwargs)
            try:
                yield self.storage  # FaultyStorage forwards every Storage method through __getattr__
            finally:
                self.storage = None

    def open(self) -> AbstractAsyncContextManager[Storage]:
        return self._open()

    def fail(self, *args: Any, **kwargs: Any) -> None:
        """Like `FaultyStorage.fail`; remembered until the layer is opened if it is not yet."""
        if self.storage is None:
            self._pending.append((args, kwargs))
        else:
            self.storage.fail(*args, **kwargs)

    def heal(self) -> None:
        """Like `FaultyStorage.heal`."""
        self._pending.clear()
        if self.storage is not None:
            self.storage.heal()

    @property
    def injected(self) -> int:
        """How many faults have fired in the open storage."""
        return 0 if self.storage is None else self.storage.injected


def faulty(layer: StorageLayer) -> FaultyLayer:
    """Wrap a storage layer so tests can make its operations fail like SQLite does.

    Examples:
        >>> from djobs.storage import memory
        >>> faulty(memory()).injected
        0
    """
    return FaultyLayer(layer)
