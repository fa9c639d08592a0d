"""``python -m crash --cycles N [--seed S] [--dir D]``: a soak run of the crash harness (``make soak``)."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .driver import run


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
        "--check-every",
        type=int,
        default=None,
        help="check the invariants every N cycles (default 1, or 10 above 200 cycles)",
    )
    parser.add_argument("--mutant", default="", help="plant a known defect, to see the checks catch it")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int(time.time())
    check_every = args.check_every or (1 if args.cycles <= 200 else 10)
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="djobs-soak-"))
    print(f"soak: {args.cycles} cycles, seed {seed}, in {workdir}", flush=True)
    report = run(
        args.cycles,
        seed,
        workdir,
        check_every=check_every,
        mutant=args.mutant,
        log=lambda line: print(line, flush=True),
    )
    print(report.summary())
    for problem in report.problems:
        print(f"PROBLEM {problem}")
    if report.problems or args.dir is not None:
        print(f"the database, journals and logs are in {workdir}")
        return 1 if report.problems else 0
    shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
