"""The errors djobs gives back, as values.

Every failure a caller can meet is one of these classes. They are returned
inside ``Failure`` / ``IOFailure`` containers, never raised at a caller; the
few places that raise them are definition-time mistakes (a bad literal in a
``Continuous.make`` call, two jobs with one name at ``open_engine``), which
are bugs in the program rather than outcomes of a run.

The tree::

    JobError                      base: every error has a ``tag`` and a ``message``
    ├── JobNotFoundError          no job with that name is registered
    ├── InstanceNotFoundError     no instance with that id exists
    ├── InvalidStateError         the instance is not in a state that allows the call
    ├── ValidationError           input did not match its schema or format
    ├── ExecutionError            user code failed (returned a failure or raised)
    ├── DuplicateEventError       an idempotency key was seen before
    ├── StorageError              the storage layer failed or the file is unusable
    ├── SchedulerError            a schedule could not be computed or set
    ├── JobCancelledError         the queued job was cancelled
    ├── RetryExhaustedError       every allowed attempt failed
    ├── JobTimeoutError           a body ran past its definition's ``timeout``
    └── TenantError               a tenant id is missing or belongs to someone else

Each error compares equal to another of the same class with the same fields,
so tests can ``assert result == IOFailure(JobNotFoundError("nope"))``.

A message is at most `MAX_MESSAGE_LENGTH` characters (16,384): a longer one
(an exception whose text is a whole response body) keeps its first
characters and ends with a marker saying how many were cut, so every
stored, logged or tracked error is bounded as payloads are.
"""

from __future__ import annotations

import re
from typing import ClassVar, NoReturn

#: The most characters of an error's message djobs keeps, stores and logs (the marker included).
MAX_MESSAGE_LENGTH = 16_384


def capped_message(message: str) -> str:
    """`message`, or its first characters and ``"… [N more characters cut]"`` if it is longer
    than `MAX_MESSAGE_LENGTH`; the result is never longer than that."""
    if len(message) <= MAX_MESSAGE_LENGTH:
        return message
    # A message built around one already cut (a wrapper's "gave up after 1 attempt(s): ...")
    # ends with that cut's marker: its count joins this cut's, so N is every character cut.
    earlier = _CUT_MARKER.search(message)
    cut_before = 0
    if earlier is not None:
        message, cut_before = message[: earlier.start()], int(earlier.group(1).replace(",", ""))
    keep = MAX_MESSAGE_LENGTH
    while True:  # the marker's own length decides how much is cut: at most twice round
        marker = f"… [{len(message) - min(keep, len(message)) + cut_before:,} more characters cut]"
        if keep + len(marker) <= MAX_MESSAGE_LENGTH:
            return message[:keep] + marker
        keep = MAX_MESSAGE_LENGTH - len(marker)


_CUT_MARKER = re.compile(r"… \[([0-9,]+) more characters cut\]\Z")


class JobError(Exception):
    """Base of every djobs error.

    Attributes:
        tag: A stable, lower-snake-case name of the error kind, for ``match``
            statements, logs and telemetry.
        message: A sentence a person can act on; at most `MAX_MESSAGE_LENGTH`
            characters (a longer one is cut, with a marker saying how much).
    """

    tag: ClassVar[str] = "job_error"
    #: Whether a retry policy may retry a run that failed with this error.
    retryable: bool = True

    def __init__(self, message: str) -> None:
        if isinstance(message, str) and len(message) > MAX_MESSAGE_LENGTH:
            message = capped_message(message)
        super().__init__(message)
        self.message = message

    def _fields(self) -> tuple[object, ...]:
        return (self.message,)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobError) and type(other) is type(self) and other._fields() == self._fields()

    def __hash__(self) -> int:
        return hash((type(self), self._fields()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __str__(self) -> str:
        return self.message


class JobNotFoundError(JobError):
    """No job definition with this name is registered with the engine."""

    tag = "job_not_found"
    retryable = False

    def __init__(self, name: str, message: str | None = None) -> None:
        super().__init__(message or f"no job named {name!r} is registered with this engine")
        self.name = name

    def _fields(self) -> tuple[object, ...]:
        return (self.name, self.message)

    def __repr__(self) -> str:
        return f"JobNotFoundError({self.name!r})"


class InstanceNotFoundError(JobError):
    """The job exists, but no instance with this id is stored."""

    tag = "instance_not_found"
    retryable = False

    def __init__(self, job_name: str, instance_id: str, kind: str = "job") -> None:
        super().__init__(f"{kind} {job_name!r} has no instance with id {instance_id!r}")
        self.job_name = job_name
        self.instance_id = instance_id

    def _fields(self) -> tuple[object, ...]:
        return (self.job_name, self.instance_id)

    def __repr__(self) -> str:
        return f"InstanceNotFoundError({self.job_name!r}, {self.instance_id!r})"


class InvalidStateError(JobError):
    """The call is not allowed in the instance's or job's current state."""

    tag = "invalid_state"
    retryable = False


class ValidationError(JobError):
    """Input did not match its schema or accepted format; nothing was written.

    Attributes:
        path: Where in the input the problem is (``"$.expires_at"``), if known.
    """

    tag = "validation"
    retryable = False

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path

    def _fields(self) -> tuple[object, ...]:
        return (self.message, self.path)


class ExecutionError(JobError):
    """User code failed: it returned a failure, or raised.

    Attributes:
        cause: The failure value the job returned, or the exception it raised.
        retryable: ``False`` makes a retry policy give up at once.
    """

    tag = "execution"

    def __init__(self, message: str, cause: object = None, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.cause = cause
        self.retryable = retryable

    def _fields(self) -> tuple[object, ...]:
        return (self.message, self.retryable)

    def __repr__(self) -> str:
        return f"ExecutionError({self.message!r}, cause={safe_repr(self.cause)})"


class DuplicateEventError(JobError):
    """An event with this idempotency key was already accepted."""

    tag = "duplicate_event"
    retryable = False

    def __init__(self, instance_id: str, event_id: str) -> None:
        super().__init__(f"event {event_id!r} was already accepted by instance {instance_id!r}")
        self.instance_id = instance_id
        self.event_id = event_id

    def _fields(self) -> tuple[object, ...]:
        return (self.instance_id, self.event_id)


class StorageError(JobError):
    """The storage layer failed, or the database cannot be used.

    Attributes:
        cause: The underlying driver exception, if any.
    """

    tag = "storage"

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


#: The message of the `StorageError` every verb gives once its engine has closed (or is closing),
#: on every storage: the one typed failure of a call that came too late.
CLOSED_MESSAGE = "the engine is closed (or closing): no new calls are accepted"


class SchedulerError(JobError):
    """A schedule could not be computed or an alarm could not be set."""

    tag = "scheduler"
    retryable = False


class JobCancelledError(JobError):
    """The queued job was cancelled before or while it ran."""

    tag = "job_cancelled"
    retryable = False

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} was cancelled")
        self.job_id = job_id

    def _fields(self) -> tuple[object, ...]:
        return (self.job_id,)


class RetryExhaustedError(JobError):
    """Every allowed attempt failed; ``last_error`` is the final failure."""

    tag = "retry_exhausted"
    retryable = False

    def __init__(self, attempts: int, last_error: JobError) -> None:
        super().__init__(f"gave up after {attempts} attempt(s): {last_error.message}")
        self.attempts = attempts
        self.last_error = last_error

    def _fields(self) -> tuple[object, ...]:
        return (self.attempts, self.last_error)


class JobTimeoutError(JobError):
    """A body ran longer than its definition's ``timeout`` and was cancelled.

    Retryable: a retry policy runs the body again (as Celery's and Huey's
    time limits fail a task that its retries then take up). A ``blocking``
    body's thread cannot be stopped by Python; it is abandoned, its result
    ignored (see the reliability page).

    Attributes:
        timeout_seconds: The definition's limit, in seconds.
    """

    tag = "timeout"

    def __init__(self, what: str, timeout_seconds: float) -> None:
        super().__init__(f"{what} did not finish within its timeout of {timeout_seconds:g} s; it was cancelled")
        self.what = what
        self.timeout_seconds = timeout_seconds

    def _fields(self) -> tuple[object, ...]:
        return (self.what, self.timeout_seconds)


class TenantError(JobError):
    """A tenant id is required but missing, or names another tenant's data."""

    tag = "tenant"
    retryable = False


def describe(exc: BaseException) -> str:
    """``"TypeName: message"`` (``"TypeName"`` if the message is empty) for an exception from user code.

    Never raises: an exception whose ``__str__`` raises is described as
    ``"TypeName: <unprintable TypeName object: str() raised OtherError>"``,
    as the standard library's traceback module falls back, so a hostile
    exception is still a failure a person can read.
    """
    name = _type_name(exc)
    try:
        text = str(exc)
    except BaseException as failed:  # user code's __str__: anything may come out of it
        text = f"<unprintable {name} object: str() raised {_type_name(failed)}>"
    return f"{name}: {text}" if text else name


def safe_repr(value: object) -> str:
    """``repr(value)``, or ``"<unprintable TypeName object: repr() raised OtherError>"`` if that raises."""
    try:
        return repr(value)
    except BaseException as failed:  # user code's __repr__
        return f"<unprintable {_type_name(value)} object: repr() raised {_type_name(failed)}>"


def _type_name(value: object) -> str:
    name = getattr(type(value), "__name__", None)
    return name if isinstance(name, str) else "object"


def raise_error(error: JobError) -> NoReturn:
    """Raise `error`. ``result.alt(raise_error).unwrap()`` turns a failure into a raise where
    raising is the contract: a mistake in a definition (``Continuous.make``), or a
    ``ctx.set_state`` that must end the body at the mistake."""
    raise error
