"""The benchmarks still run: each script in bench/ at tiny sizes prints one JSON line with its keys.

Not a timing test: no figure is compared with a target here (the scripts do
that, and `make bench` reports it). This keeps the instrument from rotting
between the runs that take the figures. The scripts run at once, each in a
process of its own, so the whole check costs about as long as the slowest.

The peers (Huey, procrastinate, DBOS) come from the ``bench`` extra, which `make
bench` installs and `make test` does not: without them the peer scripts run
with ``--no-peers`` and their peer figures must be ``null``; with them, every
figure must be there. The PostgreSQL scripts need ``DJOBS_TEST_POSTGRES_DSN``;
without it they must print the one line saying they were skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from postgres_support import postgres_dsn

BENCH = Path(__file__).resolve().parent.parent / "bench"
PEERS = all(importlib.util.find_spec(name) is not None for name in ("huey", "procrastinate", "dbos"))

HUEY_KEYS = {
    "huey_normal_jobs_per_s",
    "huey_shipped_jobs_per_s",
    "huey_shipped_synchronous",
    "huey_normal_cpu_ms_per_1000",
    "huey_shipped_cpu_ms_per_1000",
    "ratio_to_huey_normal",
    "ratio_to_huey_shipped",
}

#: script -> (tiny-size flags, keys its line must hold, keys that are its peer's)
SCRIPTS: dict[str, tuple[list[str], set[str], set[str]]] = {
    "drain": (
        ["--jobs", "200", "--stored", "100"],
        {"jobs_per_s", "floor_jobs_per_s", "ratio_to_floor", "cpu_ms_per_1000", "by_stored", "peak_rss_mb"},
        HUEY_KEYS,
    ),
    "enqueue": (
        ["--jobs", "200", "--stored", "100", "--tasks", "20", "--full-floor-jobs", "20"],
        {"jobs_per_s", "floor_jobs_per_s", "group_floor_jobs_per_s", "full_jobs_per_s", "cpu_ms_per_1000"},
        HUEY_KEYS,
    ),
    "enqueue_bulk": (["--sizes", "200", "--stored", "100"], {"jobs_per_s", "floor_jobs_per_s", "by_list_size"}, set()),
    "end_to_end": (["--jobs", "200", "--stored", "100", "--tasks", "20"], {"jobs_per_s", "floor_jobs_per_s"}, set()),
    "debounce": (
        ["--events", "200", "--instances", "20", "--tasks", "10", "--spread-events", "100"],
        {"events_per_s", "floor_events_per_s", "ratio_to_floor", "spread_events_per_s", "cpu_ms_per_1000"},
        set(),
    ),
    "lateness": (
        ["--alarms", "50", "--span-s", "0.2", "--stages", "1"],
        {"p50_ms", "p99_ms", "early", "floor_p99_ms", "stages"},
        set(),
    ),
    "instances": (
        ["--instances", "300", "--due", "100"],
        {"open_to_first_alarm_s", "alarms_fired_per_s", "floor_alarms_per_s", "peak_rss_mb", "cpu_ms_per_1000"},
        set(),
    ),
    "virtual_year": (
        ["--days", "2"],
        {"real_s", "year_real_s", "continuous_runs", "cron_runs", "per_virtual_hour"},
        set(),
    ),
    "postgres_enqueue": (["--jobs", "50"], {"jobs_per_s", "floor_jobs_per_s", "postgres"}, set()),
    "postgres_drain": (
        ["--jobs", "50", "--processes", "1"],
        {"jobs_per_s", "floor_jobs_per_s", "ratio_to_floor", "postgres"},
        {"procrastinate_jobs_per_s", "ratio_to_procrastinate", "procrastinate"},
    ),
    "workflow": (
        ["--count", "100", "--concurrency", "8", "--dbos-count", "20"],
        {"workflows_per_s", "count", "cpu_s"},
        {"dbos_workflows_per_s", "dbos_version", "ratio_to_dbos"},
    ),
}

#: The scripts whose lines hold targets and whether each is met (the engine's-core issue's and the page's).
WITH_TARGETS = {
    "drain",
    "enqueue",
    "enqueue_bulk",
    "end_to_end",
    "debounce",
    "lateness",
    "instances",
    "virtual_year",
    "workflow",
}
#: Words that name a peer in a target: without the peers, such a target's ``met`` is ``null``.
PEER_NAMES = ("huey", "dbos")


@cache
def outputs() -> dict[str, tuple[int, str, str]]:
    """Run every script at once; each one's exit code, stdout and stderr."""
    env = {k: v for k, v in os.environ.items() if k != "DJOBS_BENCH_POSTGRES_DSN"}
    procs = {}
    for name, (flags, _, peer_keys) in SCRIPTS.items():
        args = [sys.executable, str(BENCH / f"{name}.py"), "--quick", *flags]
        if peer_keys and not PEERS:
            args.append("--no-peers")
        procs[name] = subprocess.Popen(args, cwd=BENCH, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        results[name] = (proc.returncode, out.decode(), err.decode())
    return results


def the_line(name: str) -> dict[str, Any]:
    code, out, err = outputs()[name]
    assert code == 0, f"bench/{name}.py exited with {code}:\n{err}"
    lines = out.splitlines()
    assert len(lines) == 1, f"bench/{name}.py printed {len(lines)} lines:\n{out}"
    line: dict[str, Any] = json.loads(lines[0])
    assert line["benchmark"] == name
    return line


def test_every_script_is_checked() -> None:
    scripts = {p.stem for p in BENCH.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_a_script_prints_one_json_line_with_its_figures(name: str) -> None:
    _, keys, peer_keys = SCRIPTS[name]
    line = the_line(name)
    if name.startswith("postgres_") and postgres_dsn() is None:
        assert set(line) == {"benchmark", "skipped"} and "DJOBS_TEST_POSTGRES_DSN" in line["skipped"]
        return
    assert keys <= set(line), f"missing: {keys - set(line)}"
    assert {"runs", "python", "cpus"} <= set(line)
    assert line["runs"] == 1  # --quick
    assert peer_keys <= set(line), f"missing: {peer_keys - set(line)}"
    for key in peer_keys:
        assert (line[key] is not None) == PEERS, f"{key} = {line[key]!r} with the peers installed: {PEERS}"
    if name in WITH_TARGETS:
        assert set(line["targets"]) == set(line["met"]), "every target says whether it is met"
        for target, met in line["met"].items():
            peer_target = any(peer in target for peer in PEER_NAMES)
            assert isinstance(met, bool) or (met is None and not PEERS and peer_target), (target, met)


@pytest.mark.skipif(
    not PEERS, reason="the bench extra (Huey, procrastinate, DBOS) is not installed: `make bench` installs it"
)
def test_huey_is_measured_at_normal_and_as_shipped() -> None:
    for name in ("drain", "enqueue"):
        line = the_line(name)
        assert line["huey_shipped_synchronous"] in {"FULL", "EXTRA", "NORMAL", "OFF"}
        assert line["huey_normal_jobs_per_s"] > 0 and line["huey_shipped_jobs_per_s"] > 0
