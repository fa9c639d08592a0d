"""Shared helpers for the benchmarks: timing, medians, memory, and the one JSON line each prints.

Every benchmark measures djobs and, in the same run, the same work done with
raw APSW and no framework (the floor on this machine), and prints the ratio,
so a result can be read on any machine. Each figure is the median of
``--runs`` runs (default 3).
"""

from __future__ import annotations

import argparse
import importlib.util
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


def parse_args(
    description: str, quick: dict[str, Any] | None = None, peers: bool = False, **defaults: Any
) -> argparse.Namespace:
    """The script's flags: ``--runs`` (median of N, default 3), ``--quick``, and one flag per default.

    ``--quick`` is one run at the sizes in `quick` (seconds, not minutes: it
    checks the script works, its figures mean little); a flag given
    explicitly still wins over both. ``--no-peers`` is for a checkout without
    the ``bench`` extra: a script that runs a peer (`peers`) then measures
    djobs and the floor only, the peer's figures and the targets that compare
    with it being ``null``; the other scripts accept and ignore it.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=None, help="runs to take the median of (default 3)")
    parser.add_argument("--quick", action="store_true", help="one run at small sizes, to check the script works")
    # Every script takes it, so `make bench BENCH_ARGS=--no-peers` works; a script without a peer ignores it.
    parser.add_argument(
        "--no-peers",
        dest="peers",
        action="store_false",
        help="measure djobs and the floor only" if peers else "accepted for uniformity: this script runs no peer",
    )
    for name, value in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None, help=f"default {value}")
    args = parser.parse_args()
    small = {"runs": 1, **(quick or {})} if args.quick else {}
    for name, value in {"runs": 3, **defaults}.items():
        if getattr(args, name) is None:
            setattr(args, name, small.get(name, value))
    return args


def require_peer(module: str) -> None:
    """Exit with a message a person can act on when a peer's package (the ``bench`` extra) is missing."""
    if importlib.util.find_spec(module) is None:
        sys.exit(
            f"{module} is not installed: `make bench` installs the peers (pip install -e '.[bench]'),"
            " or pass --no-peers to measure djobs and the floor alone"
        )


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


def huey_figures(
    run: Callable[[str, str], tuple[float, float, str]] | None, jobs: int, runs: int, djobs_jobs_per_s: float
) -> dict[str, Any]:
    """Huey's rates at NORMAL and as shipped, its CPU per 1,000 jobs, and djobs's ratios to it.

    `run(path, durability)` is one of ``_huey.drain``/``_huey.enqueue`` bound to
    the work (it returns seconds, CPU seconds and the ``synchronous`` level in
    force); each run gets a fresh file. With `run` None (``--no-peers``) every figure is None.
    """
    names = [
        "huey_normal_jobs_per_s",
        "huey_shipped_jobs_per_s",
        "huey_shipped_synchronous",
        "huey_normal_cpu_ms_per_1000",
        "huey_shipped_cpu_ms_per_1000",
        "ratio_to_huey_normal",
        "ratio_to_huey_shipped",
    ]
    if run is None:
        return dict.fromkeys(names)
    rates: dict[str, list[float]] = {"NORMAL": [], "shipped": []}
    cpu = {"NORMAL": 0.0, "shipped": 0.0}
    shipped_sync = ""
    for _ in range(runs):
        for durability in ("NORMAL", "shipped"):  # alternated, so a slow moment of the machine hits both
            with temp_db() as path:
                seconds, cpu_s, level = run(path, durability)
                cpu[durability] += cpu_s
                rates[durability].append(jobs / seconds)
                if durability == "shipped":
                    shipped_sync = level
    normal, shipped = median(rates["NORMAL"]), median(rates["shipped"])
    return {
        "huey_normal_jobs_per_s": round(normal),
        "huey_shipped_jobs_per_s": round(shipped),
        "huey_shipped_synchronous": shipped_sync,
        "huey_normal_cpu_ms_per_1000": round(cpu["NORMAL"] / (runs * jobs) * 1_000_000, 1),
        "huey_shipped_cpu_ms_per_1000": round(cpu["shipped"] / (runs * jobs) * 1_000_000, 1),
        "ratio_to_huey_normal": round(djobs_jobs_per_s / normal, 3),
        "ratio_to_huey_shipped": round(djobs_jobs_per_s / shipped, 3),
    }


def at_least(figure: float | None, target: float) -> bool | None:
    """Whether `figure` meets a ``>=`` target; None when it was not measured."""
    return None if figure is None else figure >= target
