"""Loading ``module:attribute`` references to the user's code (an engine factory, a job)."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

from .._engine import Engine
from .._errors import describe
from ..kinds._continuous import Continuous
from ..kinds._job import Job
from ._exit import CommandError, ExitCode

#: What ``djobs worker`` (and ``--engine``) expects ``module:attribute`` to name.
EngineFactory = Callable[[], AbstractAsyncContextManager[Engine]]


def load(reference: str, what: str) -> object:
    """The object ``module:attribute`` names (the attribute may be dotted).

    The current directory is importable, as it is for ``python -m``: a
    console script would not otherwise find the user's ``jobs_app.py``.

    Raises:
        CommandError: A malformed reference, a missing module or attribute
            (usage), or a module that raised while importing (its traceback
            is printed; failed).
    """
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise CommandError(
            f"{what} must be given as module:attribute (e.g. jobs_app:make_engine), got {reference!r}", ExitCode.USAGE
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise CommandError(f"cannot import {module_name!r} for the {what}: {exc}", ExitCode.USAGE) from None
        traceback.print_exc()
        raise CommandError(f"importing {module_name!r} failed: {exc}", ExitCode.FAILED) from None
    except Exception as exc:
        # The user's module itself is broken: its traceback is what they need.
        traceback.print_exc()
        raise CommandError(f"importing {module_name!r} failed: {describe(exc)}", ExitCode.FAILED) from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CommandError(f"{module_name!r} has no attribute {attribute!r} (the {what})", ExitCode.USAGE) from None
    return target


def load_factory(reference: str) -> EngineFactory:
    """The engine factory ``module:attribute`` names: a callable taking no arguments.

    Raises:
        CommandError: It cannot be loaded or is not callable.
    """
    factory = load(reference, "engine factory")
    if not callable(factory):
        raise CommandError(
            f"{reference} is a {type(factory).__name__}, not a callable that opens an engine "
            "(def make_engine() -> AbstractAsyncContextManager[Engine])",
            ExitCode.USAGE,
        )
    return cast(EngineFactory, factory)


def open_factory(factory: EngineFactory, reference: str) -> AbstractAsyncContextManager[Engine]:
    """Call the factory and check it gave an async context manager.

    Raises:
        CommandError: It returned something else (usage).
    """
    opened = factory()
    if not (hasattr(opened, "__aenter__") and hasattr(opened, "__aexit__")):
        raise CommandError(
            f"{reference}() returned {type(opened).__name__}, not an async context manager; return "
            "djobs.open_engine(...) or decorate an async generator with @asynccontextmanager",
            ExitCode.USAGE,
        )
    return opened


def check_engine(engine: object, reference: str) -> Engine:
    """`engine` if the factory's context manager yielded a djobs `Engine`.

    Raises:
        CommandError: It yielded something else (usage).
    """
    if not isinstance(engine, Engine):
        raise CommandError(f"{reference}() opened {type(engine).__name__}, not a djobs.Engine", ExitCode.USAGE)
    return engine


def load_job(reference: str) -> Job[Any, Any, Any]:
    """The `djobs.Job` ``module:attribute`` names.

    Raises:
        CommandError: It cannot be loaded or is not a `Job`.
    """
    job = load(reference, "job")
    if not isinstance(job, Job):
        raise CommandError(f"{reference} is a {type(job).__name__}, not a djobs.Job", ExitCode.USAGE)
    return job


def load_continuous(reference: str) -> Continuous[Any, Any]:
    """The `djobs.Continuous` ``module:attribute`` names.

    Raises:
        CommandError: It cannot be loaded or is not a `Continuous`.
    """
    job = load(reference, "continuous job")
    if not isinstance(job, Continuous):
        raise CommandError(f"{reference} is a {type(job).__name__}, not a djobs.Continuous", ExitCode.USAGE)
    return job
