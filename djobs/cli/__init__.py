"""The ``djobs`` command line: run a worker, inspect a database, enqueue and batch jobs.

It comes with djobs (``pip install djobs-trio``; no extra) and runs as
``djobs --help``, ``python -m djobs`` or ``python -m djobs.cli``. The guide is
``docs/guides/cli.md``; `main` is the entry point, `ExitCode` what it
returns.
"""

from ._exit import ExitCode as ExitCode
from ._main import main as main

__all__ = ["ExitCode", "main"]
