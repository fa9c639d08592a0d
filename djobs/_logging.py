"""Per-job logging on the standard library's `logging` module.

A job's ``logging=`` option sets its threshold: ``True`` logs everything
(DEBUG), ``False`` only errors (the default), an int is a `logging` level,
``None`` silences the job (anything else is refused at ``make`` with a
`ValidationError`: a level name such as ``"DEBUG"`` is spelled
``logging.DEBUG``). Loggers are named ``djobs.<kind>.<job name>``; each
line carries the instance id, job name, run count and attempt in its `extra`
(as given) and in its ``[job=... instance=...]`` prefix (through `printable`:
an id holding a newline or a bidirectional override cannot forge or reverse
a line).
"""

from __future__ import annotations

import logging
from typing import Any, final

from ._errors import ValidationError, safe_repr
from ._printable import printable

LoggingOption = bool | int | None

_SILENT = logging.CRITICAL + 10


def check_logging(option: object, what: str) -> LoggingOption:
    """`option` if it is a ``logging=`` option: a bool, ``None``, or a level (an int of at least 0).

    Raises:
        ValidationError: Anything else (a level name such as ``"DEBUG"`` included: pass
            ``logging.DEBUG``), naming `what` (the definition).
    """
    if option is None or isinstance(option, bool) or (isinstance(option, int) and option >= 0):
        return option
    hint = f" (pass logging.{option.upper()})" if isinstance(option, str) and option.upper() in _LEVEL_NAMES else ""
    raise ValidationError(
        f"{what}: logging must be True, False, None or a logging level (an int of at least 0),"
        f" got {safe_repr(option):.80}{hint}"
    )


_LEVEL_NAMES = frozenset(("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))


def threshold(option: LoggingOption) -> int:
    """The minimum level a job with this ``logging=`` option emits."""
    if option is None:
        return _SILENT
    if option is True:
        return logging.DEBUG
    if option is False:
        return logging.ERROR
    return int(option)


@final
class JobLog:
    """The ``ctx.log`` of a run: a stdlib logger with the run's identity attached.

    The per-job threshold is applied here rather than on the shared stdlib
    logger, so two jobs with different settings never affect each other.
    """

    __slots__ = ("_extra", "_logger", "_prefix", "_threshold")

    def __init__(self, logger: logging.Logger, level: int, extra: dict[str, Any]) -> None:
        self._logger = logger
        self._threshold = level
        self._extra = extra
        self._prefix: str | None = None  # made at the first line logged: most runs log none

    def _line_prefix(self) -> str:
        """``[job=... instance=... run=... attempt=...]``, each value through `printable`: an id
        is caller's text, and a newline in it would start a forged line of its own (CWE-117)."""
        if self._prefix is None:
            self._prefix = "[" + " ".join(f"{k}={printable(str(v))}" for k, v in self._extra.items()) + "]"
        return self._prefix

    def _log(self, level: int, message: str, args: tuple[object, ...], fields: dict[str, Any]) -> None:
        if level < self._threshold or not self._logger.isEnabledFor(level):
            return
        extra = {**self._extra, **fields}
        self._logger.log(level, f"{self._line_prefix()} {message}", *args, extra={"djobs": extra}, stacklevel=3)

    def debug(self, message: str, *args: object, **fields: Any) -> None:
        """Log at DEBUG; shown only for jobs with ``logging=True`` or a DEBUG level."""
        if self._threshold > logging.DEBUG:  # most jobs' (every run logs here): no call more
            return
        self._log(logging.DEBUG, message, args, fields)

    def info(self, message: str, *args: object, **fields: Any) -> None:
        """Log at INFO."""
        self._log(logging.INFO, message, args, fields)

    def warning(self, message: str, *args: object, **fields: Any) -> None:
        """Log at WARNING."""
        self._log(logging.WARNING, message, args, fields)

    def error(self, message: str, *args: object, **fields: Any) -> None:
        """Log at ERROR; shown unless the job's ``logging=None``."""
        self._log(logging.ERROR, message, args, fields)
