"""``python -m crash --cycles N [--seed S] [--dir D] [--processes P] [--storage sqlite|postgres]``:
a soak run of the crash harness (``make soak``)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from . import invariants
from .driver import run, run_fleet

DSN_VARIABLE = "DJOBS_TEST_POSTGRES_DSN"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m crash", description="Kill the djobs workload N times, then check.")
    parser.add_argument("--cycles", type=int, default=100, help="kill cycles to run (default 100)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the run (default: the time)")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the database and journals go (kept); default a temporary directory, removed if no invariant broke",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="workload processes at once (default 1); with more, each cycle kills or stops one of them",
    )
    parser.add_argument(
        "--storage",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help=f"a SQLite file in --dir, or a fresh schema on the server named by ${DSN_VARIABLE}",
    )
    parser.add_argument(
        "--check-every",
        type=int,
        default=None,
        help="check the invariants every N cycles (default: 1, or 10 above 200 cycles; 25 with several processes)",
    )
    parser.add_argument("--mutant", default="", help="plant a known defect, to see the checks catch it")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int(time.time())
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="djobs-soak-"))
    database: invariants.Database | None = None
    if args.storage == "postgres":
        dsn = os.environ.get(DSN_VARIABLE, "").strip()
        if not dsn:
            parser.error(f"--storage postgres needs ${DSN_VARIABLE} (e.g. postgresql://postgres@127.0.0.1:5432/test)")
        database = invariants.PostgresSchema(dsn, f"djobs_soak_{uuid.uuid4().hex[:12]}")
    where = f"schema {database.schema}" if isinstance(database, invariants.PostgresSchema) else "crash.db"
    print(
        f"soak: {args.cycles} cycles, {args.processes} process(es) on {args.storage} ({where}), seed {seed}, "
        f"in {workdir}",
        flush=True,
    )
    log = lambda line: print(line, flush=True)  # noqa: E731 - a one-line callback
    if args.processes > 1:
        report = run_fleet(
            args.cycles,
            seed,
            workdir,
            processes=args.processes,
            check_every=args.check_every or 25,
            mutant=args.mutant,
            log=log,
            database=database,
        )
    else:
        report = run(
            args.cycles,
            seed,
            workdir,
            check_every=args.check_every or (1 if args.cycles <= 200 else 10),
            mutant=args.mutant,
            log=log,
            database=database,
        )
    print(report.summary())
    for problem in report.problems:
        print(f"PROBLEM {problem}")
    if report.problems or args.dir is not None:
        print(f"the journals and logs are in {workdir}" + (f", the rows in {where}" if database else ""))
        return 1 if report.problems else 0
    shutil.rmtree(workdir)
    if isinstance(database, invariants.PostgresSchema):
        database.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
