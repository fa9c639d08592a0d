"""Exit codes, and the one exception a command raises to end with one.

A command returns an `ExitCode`, or raises `CommandError` with a message
for stderr and the code; `main` prints the message (never a traceback for
an expected failure) and returns the code.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NoReturn

from .._errors import (
    InstanceNotFoundError,
    JobError,
    JobNotFoundError,
    StorageError,
    TenantError,
    ValidationError,
)


class ExitCode(IntEnum):
    """What a ``djobs`` command exits with; scripts may rely on these values.

    Attributes:
        OK: The command did what it was asked.
        FAILED: The command ran but what it did failed: a job in a batch
            failed, a retry of a job that is not failed, a cancel of a job
            that had already finished, a worker's engine crashed.
        USAGE: Bad arguments: an unknown option, params that do not match
            the job's struct, a ``module:attribute`` that cannot be loaded.
        DATABASE: The database cannot be used: missing (read-only commands
            never create one), not a djobs database, a schema of another
            version, locked or unreadable.
        NOT_FOUND: No instance or job with the given key or id.
        INTERRUPTED: Stopped by Ctrl-C before it finished; for ``djobs
            worker``, whose normal stop is a Ctrl-C (exit 0), a second Ctrl-C
            during its graceful stop.
        TERMINATED: ``djobs worker`` stopped by a second SIGTERM during its
            graceful stop (128 + 15, the status a shell gives a process
            SIGTERM killed, as 130 is 128 + SIGINT's 2).
    """

    OK = 0
    FAILED = 1
    USAGE = 2
    DATABASE = 3
    NOT_FOUND = 4
    INTERRUPTED = 130
    TERMINATED = 143


class CommandError(Exception):
    """Ends a command with `message` on stderr and exit `code`."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def exit_code(error: JobError) -> ExitCode:
    """The exit code a djobs error value ends a command with."""
    if isinstance(error, StorageError):
        return ExitCode.DATABASE
    if isinstance(error, InstanceNotFoundError):
        return ExitCode.NOT_FOUND
    if isinstance(error, ValidationError | JobNotFoundError | TenantError):
        return ExitCode.USAGE
    return ExitCode.FAILED


def command_error(error: JobError) -> CommandError:
    """A `CommandError` for a djobs error value, with its exit code."""
    return CommandError(error.message, exit_code(error))


def raise_command_error(error: JobError) -> NoReturn:
    """Raise `error` as a `CommandError`: ``result.alt(raise_command_error).unwrap()`` is a result's
    value, or the command's end with the error's message and exit code (the command line is the edge)."""
    raise command_error(error)


def raise_usage_error(error: JobError) -> NoReturn:
    """Raise `error` as a usage error (exit code 2): for a value given on the command line."""
    raise CommandError(error.message, ExitCode.USAGE)
