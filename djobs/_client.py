"""The client: typed verbs per job definition, reached as ``engine.client``."""

from __future__ import annotations

from typing import Any, TypeVar, overload

from .kinds._continuous import Continuous, ContinuousClient, ContinuousHandler

S = TypeVar("S")


class Client:
    """Entry point to every job's verbs.

    ``client.continuous(token_refresher)`` is typed by the definition;
    ``client.continuous("tokenRefresher")`` works by name (untyped state). A
    name the engine does not know gives a client whose every verb fails with
    `JobNotFoundError`.
    """

    def __init__(self, handlers: dict[str, Any]) -> None:
        self._handlers = handlers

    def _handler(self, job: object, kind: type[Any]) -> tuple[str, Any]:
        name = job if isinstance(job, str) else getattr(job, "name", repr(job))
        handler = self._handlers.get(name)
        if handler is None or not isinstance(handler, kind):
            return name, None
        if not isinstance(job, str) and handler.job is not job:
            return name, None  # same name, another definition: not this engine's job
        return name, handler

    @overload
    def continuous(self, job: Continuous[S]) -> ContinuousClient[S]: ...
    @overload
    def continuous(self, job: str) -> ContinuousClient[Any]: ...
    def continuous(self, job: Continuous[Any] | str) -> ContinuousClient[Any]:
        """The verbs of a continuous job: start, trigger, status, get_state, terminate."""
        return ContinuousClient(*self._handler(job, ContinuousHandler))
