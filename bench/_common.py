"""Shared helpers for the benchmarks: timing, medians, memory, and the one JSON line each prints.

Every benchmark measures djobs and, in the same run, the same work done with
raw APSW and no framework (the floor on this machine), and prints the ratio,
so a result can be read on any machine. Each figure is the median of
``--runs`` runs (default 3).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import apsw


def parse_args(description: str, **defaults: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=3, help="runs to take the median of")
    for name, value in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    return parser.parse_args()


def median(values: list[float]) -> float:
    return statistics.median(values)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def temp_db() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="djobs-bench-") as folder:
        yield os.path.join(folder, "bench.db")


def raw_connection(path: str) -> apsw.Connection:
    """A connection set up like djobs sets up its own: WAL, synchronous=NORMAL."""
    db = apsw.Connection(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def report(name: str, **fields: Any) -> None:
    """Print the benchmark's one JSON line."""
    line = {"benchmark": name, **fields, "python": sys.version.split()[0], "cpus": os.cpu_count()}
    print(json.dumps(line, sort_keys=False), flush=True)
