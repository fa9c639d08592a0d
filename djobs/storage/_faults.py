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

import difflib
import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal, final, get_args

import apsw

from .._errors import StorageError, ValidationError, safe_repr
from . import _base
from ._base import Storage, StorageLayer
from ._memory import MemoryStorage
from ._postgres import POSTGRES_OPERATIONS
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


def _operations(*classes: type) -> frozenset[str]:
    """The public async methods of `classes`, and of every storage protocol: what a rule may name.

    A method that hands back a coroutine without being one (SQLite's ``commit``) is a
    protocol's async method, so it is named here and wrapped all the same.
    """
    protocols = [c for c in vars(_base).values() if isinstance(c, type) and getattr(c, "_is_protocol", False)]
    return frozenset(
        name
        for cls in (*protocols, *classes)
        for name, value in inspect.getmembers(cls)
        if not name.startswith("_") and inspect.iscoroutinefunction(value)
    )


#: Every storage operation a rule may name: the protocols' and the built-in stores' (PostgreSQL's
#: by their names, `POSTGRES_OPERATIONS`: its class imports psycopg, which a test may not have).
OPERATIONS: Final = _operations(MemoryStorage, SqliteStorage) | POSTGRES_OPERATIONS


def _check_rule(operation: object, kind: object, at: object, times: object) -> None:
    """Refuse a rule that would never fire or fire wrongly, so a typo cannot pass a test unnoticed."""
    if operation is not None and (type(operation) is not str or operation not in OPERATIONS):
        close = difflib.get_close_matches(operation, OPERATIONS, n=1) if type(operation) is str else []
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValidationError(
            f"faulty: no storage operation {safe_repr(operation):.80}{guess}; name one of the storage's "
            f"methods ({', '.join(sorted(OPERATIONS))}), or None for every one"
        )
    if type(kind) is not str or kind not in get_args(FaultKind):
        raise ValidationError(
            f"faulty: kind must be one of {', '.join(get_args(FaultKind))}, got {safe_repr(kind):.80}"
        )
    if type(at) is not str or at not in get_args(FaultPoint):
        raise ValidationError(f"faulty: at must be 'call' or 'commit', got {safe_repr(at):.80}")
    if times is not None and (type(times) is not int or times < 1):
        raise ValidationError(
            f"faulty: times must be a whole number of calls, at least 1 (None: until heal()), "
            f"got {safe_repr(times):.80}"
        )
    if kind == "bug" and at != "call":
        raise ValidationError('faulty: an injected bug is raised at the call (at="call")')


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
            times: Fail this many matching calls, then pass again (at least 1);
                ``None`` until `heal`.

        Raises:
            ValidationError: An `operation` that is no storage method (a typo:
                ``"comit"``), or one this storage does not have; a `kind` or
                `at` not among those named above; `times` not a whole number
                from 1; ``kind="bug"`` at commit; ``at="commit"`` on a storage
                other than SQLite's or the memory store. A rule that could
                never fire would let a test pass without its fault.
        """
        _check_rule(operation, kind, at, times)
        if operation is not None and not self._has(operation):
            raise ValidationError(
                f"faulty: {type(self._inner).__name__} has no operation {operation!r}, so the rule would never fire"
            )
        if at == "commit" and not isinstance(self._inner, SqliteStorage | MemoryStorage):
            raise ValidationError("faulty: faults at commit need a SQLite storage or the memory store")
        self._rules.append(_Rule(operation, kind, at, times))

    def _has(self, operation: str) -> bool:
        """Whether a call of the inner storage can match `operation`: its own method, or a batched form."""
        if callable(getattr(self._inner, operation, None)):
            return True
        return any(operation in same and hasattr(self._inner, name) for name, same in _BATCHED.items())

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
        # By name as well: SQLite's commit, checkpoint_instance and lease_and_load hand back
        # their write's coroutine without being coroutine functions, and were passed unwrapped.
        if (name in OPERATIONS and callable(attr)) or inspect.iscoroutinefunction(attr):
            return self._wrap(name, attr)
        return attr

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

    def fail(
        self, operation: str | None = None, *, kind: FaultKind = "io", at: FaultPoint = "call", times: int | None = None
    ) -> None:
        """Like `FaultyStorage.fail`; remembered until the layer is opened if it is not yet.

        Raises:
            ValidationError: As `FaultyStorage.fail`; before the layer is opened, what
                needs the storage itself (a method it lacks, a fault at commit on
                PostgreSQL) is refused when it opens.
        """
        _check_rule(operation, kind, at, times)
        args: tuple[Any, ...] = (operation,)
        kwargs: dict[str, Any] = {"kind": kind, "at": at, "times": times}
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
