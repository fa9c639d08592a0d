"""The client: typed verbs per job definition, reached as ``engine.client``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar, overload

from returns.future import FutureResult

from ._dead_letters import DeadLetters, DeadLettersClient
from ._durations import DurationLike
from ._errors import StorageError, TenantError, ValidationError, safe_repr
from ._event import Event
from ._execution import Env
from ._input import RefusedText, plain_text
from .kinds._common import effect, name_of, refused
from .kinds._continuous import Continuous, ContinuousClient, ContinuousHandler
from .kinds._cron import CronScheduler, CronsClient
from .kinds._debounce import Debounce, DebounceClient, DebounceHandler
from .kinds._job import EventResult, Job
from .kinds._job_client import JobClient, JobsClient
from .kinds._job_queue import JobQueue
from .kinds._task import Task, TaskClient, TaskHandler
from .kinds._workflow import Workflow, WorkflowClient, WorkflowHandler

S = TypeVar("S")
E = TypeVar("E")
P = TypeVar("P")
R = TypeVar("R")
I = TypeVar("I")  # noqa: E741


#: How a message names a job of each kind, and the client verb that takes it.
_KIND_NAMES = {
    "job": "one-off job",
    "cron": "cron job",
    "continuous": "continuous job",
    "debounce": "debounce job",
    "task": "task",
    "workflow": "workflow",
}
_CLIENTS = {"cron": "crons.get"}


class Client:
    """Entry point to every job's verbs.

    ``client.continuous(token_refresher)`` is typed by the definition;
    ``client.continuous("tokenRefresher")`` works by name (untyped state). A
    name the engine does not know gives a client whose every verb fails with
    `JobNotFoundError`. The queue's verbs are ``client.job(job)``,
    ``client.jobs``, ``client.send_event`` and ``client.crons``;
    ``client.for_tenant(t)`` is a client for one tenant.
    """

    def __init__(
        self,
        handlers: dict[str, Any],
        *,
        queue: JobQueue | None = None,
        crons: CronScheduler | None = None,
        dead_letters: DeadLetters | None = None,
        tenant_id: str | None = None,
        home: Env | None = None,
    ) -> None:
        self._handlers = handlers
        self._home = home  # the engine's env: a verb of a client without a handler fails as its verbs do
        self._queue = queue
        self._crons = crons
        self._dead_letters = dead_letters
        self._tenant_id = tenant_id

    @property
    def tenant_id(self) -> str | None:
        """The tenant this client acts for (see `for_tenant`), or ``None`` for every tenant.

        Raises:
            ValidationError: The client was made by `for_tenant` with a tenant id it refused
                (``None``, another tenant's on a scoped client): it acts for no tenant, and
                every verb of it fails with the same error.
        """
        scope = self._tenant_id
        if isinstance(scope, RefusedText):
            raise ValidationError(f"the client's tenant id {scope.reason}")
        return scope

    def for_tenant(self, tenant_id: str) -> Client:
        """A client that acts for one tenant only.

        What it enqueues belongs to `tenant_id`; it reads and changes only
        that tenant's queued jobs, cron jobs and instances: another tenant's
        is answered as an unknown one is (`InstanceNotFoundError` for a job
        or an instance, `JobNotFoundError` for a cron job), and naming
        another tenant in a verb's ``tenant_id`` gives `TenantError`.

        A bad `tenant_id` (``None``, not a string, empty, too long) gives a
        client whose every verb fails with `ValidationError`, never the
        unscoped client; so does, on a client already scoped to a tenant
        (``ctx.client`` in a tenant's job), another tenant: a scoped client
        cannot widen or move its scope.

        Example:
            ```python
            acme = engine.client.for_tenant("acme")
            job_id = (await acme.job(send_email).later(Email("a@acme.test"))).unwrap()
            ```
        """
        scope: Any = tenant_id
        mine = self._tenant_id
        if isinstance(mine, RefusedText):
            scope = mine  # a client for no tenant makes only clients for no tenant
        elif tenant_id is None:
            # None means "every tenant" below: a missing id must not widen the client's reach.
            scope = RefusedText("must be a non-empty string, got None (given to for_tenant)")
        elif mine is not None and not (isinstance(tenant_id, str) and plain_text(tenant_id) == plain_text(mine)):
            # (a str subclass, a StrEnum member, names its tenant as the verbs take it: by its str value)
            scope = RefusedText(
                f"is refused: for_tenant({safe_repr(tenant_id):.80}) on a client that acts for tenant"
                f" {safe_repr(mine):.80} only (a scoped client cannot widen or move its scope)"
            )
        return Client(
            self._handlers,
            queue=self._queue,
            crons=self._crons,
            dead_letters=self._dead_letters,
            tenant_id=scope,
            home=self._home,
        )

    def _job_queue(self) -> JobQueue:
        if self._queue is None:
            raise StorageError("this engine's storage layer does not hold a job queue")
        return self._queue

    @overload
    def job(self, job: Job[P, R, Any]) -> JobClient[P, R]: ...
    @overload
    def job(self, job: str) -> JobClient[Any, Any]: ...
    def job(self, job: Job[Any, Any, Any] | str) -> JobClient[Any, Any]:
        """The verbs of a one-off job: now, later, batch."""
        if self._queue is None:
            name = job if isinstance(job, str) else job.name
            return JobClient(name, None, None, home=self._home)
        name, handler = self._queue.handler(job)
        missing = None if handler is not None else self._missing(job, name, "job")
        return JobClient(name, handler, self._queue, self._tenant_id, missing=missing, home=self._home)

    @property
    def jobs(self) -> JobsClient:
        """The verbs on queued jobs by id: status, cancel, retry, list.

        Raises:
            StorageError: The storage layer has no job queue (a custom layer
                that does not implement `QueueStorage`).
        """
        return JobsClient(self._job_queue(), self._tenant_id)

    @property
    def dead_letters(self) -> DeadLettersClient:
        """The verbs on dead letters (work that failed for good, of every kind):
        list, get, retry, discard, purge.

        Raises:
            StorageError: The client was built without an engine's dead letters.
        """
        if self._dead_letters is None:
            raise StorageError("this client has no engine's dead letters")
        return DeadLettersClient(self._dead_letters, self._tenant_id)

    @property
    def crons(self) -> CronsClient:
        """The verbs on cron jobs: list, get, enable, disable, next_runs.

        Raises:
            StorageError: The storage layer has no job queue.
        """
        if self._crons is None:
            raise StorageError("this engine's storage layer does not hold cron jobs")
        return CronsClient(self._crons, self._tenant_id)

    @overload
    def send_event(
        self,
        event: Event[P],
        payload: P,
        *,
        tenant_id: str | None = None,
        correlation_id: str | None = None,
        idempotency_key: str | None = None,
        at: datetime | None = None,
        delay: DurationLike | None = None,
    ) -> FutureResult[EventResult, ValidationError | TenantError | StorageError]: ...
    @overload
    def send_event(
        self,
        event: str,
        payload: object,
        *,
        tenant_id: str | None = None,
        correlation_id: str | None = None,
        idempotency_key: str | None = None,
        at: datetime | None = None,
        delay: DurationLike | None = None,
    ) -> FutureResult[EventResult, ValidationError | TenantError | StorageError]: ...
    def send_event(
        self,
        event: Event[Any] | str,
        payload: object,
        *,
        tenant_id: str | None = None,
        correlation_id: str | None = None,
        idempotency_key: str | None = None,
        at: datetime | None = None,
        delay: DurationLike | None = None,
    ) -> FutureResult[EventResult, ValidationError | TenantError | StorageError]:
        """Enqueue one job per definition listening to `event` (``Job.make(..., on=event)``).

        Sent as a typed `Event` (``send_event(order_created, OrderCreated(...))``),
        the payload must be of the event's type (or a subtype), which mypy
        checks and the call checks again at run time. Sent by name, any
        payload type-checks and is validated at run time.

        The payload is validated against every listener's params before
        anything is stored; the jobs are stored in one transaction. No
        listener is not an error: the result says ``delivered=False``.

        Args:
            event: The event: a typed `Event`, or its name.
            payload: What every listener's params are built from.
            tenant_id: The tenant the jobs belong to (a tenant-scoped client sets it).
            correlation_id: Given to every job.
            idempotency_key: A repeat of the key enqueues nothing and returns the first jobs' ids.
            at: Run the jobs at this aware datetime (a past one means now), as ``later`` does.
            delay: Or after this duration (``"10 minutes"``, a timedelta, ms as an int).
                The jobs are stored now, due later, so a delayed event survives a
                restart; giving both `at` and `delay` is a `ValidationError`.

        Example:
            ```python
            sent = await engine.client.send_event("order.created", {"order_id": "o-1"})
            ```
        """
        queue, scope = self._queue, self._tenant_id
        if queue is None:
            return refused(StorageError("this engine's storage layer does not hold a job queue"), self._home)
        return effect(
            lambda: queue.send_event(
                scope,
                event,
                payload,
                tenant_id=tenant_id,
                correlation_id=correlation_id,
                idempotency_key=idempotency_key,
                at=at,
                delay=delay,
            ),
            queue.env,
        )

    @property
    def _tenant_required(self) -> bool:
        return self._queue is not None and self._queue.tenancy == "required"

    def _handler(self, job: object, kind: type[Any]) -> tuple[str, Any]:
        name = name_of(job)
        handler = self._handlers.get(name)
        if handler is None or not isinstance(handler, kind):
            return name, None
        if not isinstance(job, str) and handler.job is not job:
            return name, None  # same name, another definition: not this engine's job
        return name, handler

    def _lookup(self, job: object, kind: type[Any], wanted: str) -> dict[str, Any]:
        """The client arguments for `job`: its name, its handler of `kind` (or ``None``) and,
        if there is none, why (`_missing`)."""
        name, handler = self._handler(job, kind)
        missing = None if handler is not None else self._missing(job, name, wanted)
        return {"name": name, "handler": handler, "missing": missing, "home": self._home}

    def _missing(self, job: object, name: str, wanted: str) -> str | None:
        """Why no `wanted` job is found for `job` (a definition or a name), when the engine knows
        the name: it is another kind's (say which, and which client to use), or another definition's."""
        found = self._handlers.get(name)
        kind = getattr(getattr(found, "job", None), "kind", None)
        if found is None or not isinstance(kind, str):
            return None
        prefix = f"no {_KIND_NAMES.get(wanted, wanted)} named {name!r} is registered with this engine"
        if kind != wanted:
            use = f"client.{_CLIENTS.get(kind, kind)}({name!r})"
            return f"{prefix}: {name!r} is a {_KIND_NAMES.get(kind, kind)}; use {use}"
        if not isinstance(job, str) and getattr(found, "job", None) is not job:
            return (
                f"{prefix}: the {_KIND_NAMES.get(kind, kind)} this engine runs under that name is another definition"
                " (pass the one given to open_engine, or its name)"
            )
        return None

    @overload
    def continuous(self, job: Continuous[S, Any]) -> ContinuousClient[S]: ...
    @overload
    def continuous(self, job: str) -> ContinuousClient[Any]: ...
    def continuous(self, job: Continuous[Any, Any] | str) -> ContinuousClient[Any]:
        """The verbs of a continuous job: start, trigger, status, get_state, terminate."""
        return ContinuousClient(
            tenant=self._tenant_id,
            tenant_required=self._tenant_required,
            **self._lookup(job, ContinuousHandler, "continuous"),
        )

    @overload
    def debounce(self, job: Debounce[E, S, Any]) -> DebounceClient[E, S]: ...
    @overload
    def debounce(self, job: str) -> DebounceClient[Any, Any]: ...
    def debounce(self, job: Debounce[Any, Any, Any] | str) -> DebounceClient[Any, Any]:
        """The verbs of a debounce job: add, flush, clear, status, get_state."""
        return DebounceClient(
            tenant=self._tenant_id,
            tenant_required=self._tenant_required,
            **self._lookup(job, DebounceHandler, "debounce"),
        )

    @overload
    def task(self, job: Task[S, E, Any]) -> TaskClient[S, E]: ...
    @overload
    def task(self, job: str) -> TaskClient[Any, Any]: ...
    def task(self, job: Task[Any, Any, Any] | str) -> TaskClient[Any, Any]:
        """The verbs of a task job: send, trigger, status, get_state, terminate."""
        return TaskClient(
            tenant=self._tenant_id, tenant_required=self._tenant_required, **self._lookup(job, TaskHandler, "task")
        )

    # -- workflows (kinds/_workflow.py) ---------------------------------------------------

    @overload
    def workflow(self, job: Workflow[I, R, Any]) -> WorkflowClient[I, R]: ...
    @overload
    def workflow(self, job: str) -> WorkflowClient[Any, Any]: ...
    def workflow(self, job: Workflow[Any, Any, Any] | str) -> WorkflowClient[Any, Any]:
        """The verbs of a workflow: start, status, result, signal, cancel, list."""
        return WorkflowClient(
            tenant=self._tenant_id,
            tenant_required=self._tenant_required,
            **self._lookup(job, WorkflowHandler, "workflow"),
        )
