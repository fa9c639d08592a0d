"""The parts every job context shares: identity, time, logging, services, state."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, NoReturn, cast

from typing_extensions import TypeVar

from ._clock import to_datetime
from ._codec import encoded
from ._errors import ValidationError
from ._execution import Checkout, Env
from ._logging import JobLog

if TYPE_CHECKING:
    from ._client import Client

S = TypeVar("S")
#: The application's services a context gives its body (``ctx.services``). A
#: context is covariant in them: one that has more services is usable where less is asked.
D_co = TypeVar("D_co", covariant=True, default=object)


class BaseContext(Generic[D_co]):
    """What every context has: ``instance_id``, ``job_name``, ``tenant_id``, ``now()``, ``log``,
    ``services`` and ``client``.

    `D_co` is the type of the application's services, as the body declares
    it (``ContinuousContext[Tokens, HasTokenApi]``); it defaults to
    ``object``, a body that uses no services.
    """

    __slots__ = ("_env", "instance_id", "job_name", "log", "tenant_id")

    def __init__(self, env: Env, job_name: str, instance_id: str, log: JobLog, tenant_id: str | None = None) -> None:
        self._env = env
        self.job_name = job_name
        self.instance_id = instance_id
        self.log = log
        self.tenant_id = tenant_id

    def now(self) -> datetime:
        """The current time from the engine's clock layer, as an aware UTC datetime.

        Raises:
            SchedulerError: The clock reads after the year 9999 (a test's virtual
                clock slept past it): no datetime holds its time.
        """
        return to_datetime(self._env.clock.now_ms())

    @property
    def services(self) -> D_co:
        """The application's own services, as passed to ``open_engine(services=...)``.

        Typed by the context's second parameter: ``open_engine`` accepts a
        definition only with services of that type (a mypy error otherwise).
        """
        return cast(D_co, self._env.services)

    @property
    def client(self) -> Client:
        """The engine's client, acting for this run's tenant (`tenant_id`; every tenant if ``None``).

        A Debounce flush can send to a Task, a Task can enqueue a Job. A verb
        on the instance that is running this very body (or on one waiting
        for it) would wait for itself: it fails at once with
        `InvalidStateError` instead.
        """
        return cast("Client", self._env.clients.for_tenant(self.tenant_id))


class StatefulContext(BaseContext[D_co], Generic[S, D_co]):
    """A context over an instance's state; changes are buffered until the run commits."""

    __slots__ = ("_checkout", "_state_type")

    def __init__(
        self,
        env: Env,
        job_name: str,
        instance_id: str,
        log: JobLog,
        checkout: Checkout[S],
        state_type: type[Any],
        tenant_id: str | None = None,
    ) -> None:
        super().__init__(env, job_name, instance_id, log, tenant_id)
        self._checkout = checkout
        self._state_type = state_type

    @property
    def state(self) -> S:
        """The instance's current state, including changes made earlier in this run."""
        return self._checkout.state

    def set_state(self, state: S) -> None:
        """Replace the state. It is validated and encoded now, and that encoding is committed
        with the run's outcome: a change made to `state` in place afterwards is not stored
        unless ``set_state`` is called again.

        Raises:
            ValidationError: `state` does not match the job's state type; the
                run fails with this error and nothing is written.
        """
        # Raising (rather than returning a Result) ends the run at the point
        # of the mistake; the execution service turns it into a failure value.
        raw = encoded(self._state_type, state, what="state", limit=self._env.max_payload_bytes)
        if isinstance(raw, ValidationError):
            raise raw
        checkout = self._checkout
        checkout.state, checkout.encoded = state, raw

    def update_state(self, fn: Callable[[S], S]) -> None:
        """Replace the state with ``fn(state)``."""
        self.set_state(fn(self._checkout.state))

    def terminate(self, reason: str | None = None) -> NoReturn:
        """End this run now and delete the instance with its state and alarm.

        The id can be used again afterwards. Nothing else this run changed is kept.

        `reason` is kept as text a job produces (escaped where no storage holds it, cut to 1,000
        characters).

        Raises:
            ValidationError: `reason` is neither a str nor ``None``; the run fails with it instead.
        """
        self._checkout.terminate(reason)
