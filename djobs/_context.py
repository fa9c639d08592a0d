"""The parts every job context shares: identity, time, logging, services, state."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, NoReturn, TypeVar

from returns.result import Success

from ._clock import to_datetime
from ._codec import encode
from ._execution import Checkout, Env
from ._logging import JobLog

S = TypeVar("S")


class BaseContext:
    """What every context has: ``instance_id``, ``job_name``, ``now()``, ``log``, ``services``."""

    __slots__ = ("_env", "instance_id", "job_name", "log")

    def __init__(self, env: Env, job_name: str, instance_id: str, log: JobLog) -> None:
        self._env = env
        self.job_name = job_name
        self.instance_id = instance_id
        self.log = log

    def now(self) -> datetime:
        """The current time from the engine's clock layer, as an aware UTC datetime."""
        return to_datetime(self._env.clock.now_ms())

    @property
    def services(self) -> Any:
        """The application's own services, as passed to ``open_engine(services=...)``."""
        return self._env.services


class StatefulContext(BaseContext, Generic[S]):
    """A context over an instance's state; changes are buffered until the run commits."""

    __slots__ = ("_checkout", "_state_type")

    def __init__(
        self, env: Env, job_name: str, instance_id: str, log: JobLog, checkout: Checkout[S], state_type: type[Any]
    ) -> None:
        super().__init__(env, job_name, instance_id, log)
        self._checkout = checkout
        self._state_type = state_type

    @property
    def state(self) -> S:
        """The instance's current state, including changes made earlier in this run."""
        return self._checkout.state

    def set_state(self, state: S) -> None:
        """Replace the state. It is validated now and committed with the run's outcome.

        Raises:
            ValidationError: `state` does not match the job's state type; the
                run fails with this error and nothing is written.
        """
        # Raising (rather than returning a Result) ends the run at the point
        # of the mistake; the execution service turns it into a failure value.
        checked = encode(self._state_type, state, what="state", limit=self._env.max_payload_bytes)
        if not isinstance(checked, Success):
            raise checked.failure()
        self._checkout.set_state(state)

    def update_state(self, fn: Callable[[S], S]) -> None:
        """Replace the state with ``fn(state)``."""
        self.set_state(fn(self._checkout.state))

    def terminate(self, reason: str | None = None) -> NoReturn:
        """End this run now and delete the instance with its state and alarm.

        The id can be used again afterwards. Nothing else this run changed is kept.
        """
        self._checkout.terminate(reason)
