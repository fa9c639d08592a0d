"""Two and four engine processes on one SQLite file.

Real processes (the crash harness's workload, ``--profile peer``) open one
file at once, all of them enqueueing jobs, adding debounce events, sending
task events and triggering continuous instances, on the same few instances.
Every handler journals when it started and ended (a system-wide monotonic
clock) and in which process. Then:

- each queued job's attempt started exactly once, and every job completed;
- no two handlers of one instance (or attempts of one job) ran at once, in
  one process or across processes (instance leases);
- every acknowledged debounce event was in exactly one successful flush,
  every acknowledged task event reached ``on_event`` exactly once, and each
  continuous run succeeded once: no update was lost or applied twice;
- and the crash harness's invariants hold (nothing acknowledged is missing,
  nothing half written).
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing
from crash import invariants
from crash.driver import Harness, Incarnation, close
from crash.invariants import History
from returns.io import IOSuccess

import djobs
import djobs.storage
from djobs.testing import open_test_engine, success

LOAD_SECONDS = 2.0
MIN_CALLS = 40

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the harness stops processes with POSIX signals")


def run_peers(workdir: Path, peers: int, *, mutant: str = "", settle_timeout: float = 30) -> tuple[History, list[str]]:
    """Run `peers` workload processes on one file until their work is done; their history and broken invariants."""
    harness = Harness(workdir, seed=0, mutant=mutant)
    # Each client calls for the seconds and at least MIN_CALLS times, so the work checked below is
    # done however loaded the machine is (on a busy machine the seconds alone gave too few calls).
    extra = ["--profile", "peer", "--clients", "2", "--load-seconds", str(LOAD_SECONDS), "--min-calls", str(MIN_CALLS)]
    tags = [f"p{i}" for i in range(peers)]
    # All at once, on a file that does not exist yet: they race to create and migrate it.
    incs = [
        Incarnation(harness, tag, "run", seed=i, seq_base=(i + 1) * 1_000_000, extra=extra)
        for i, tag in enumerate(tags)
    ]
    problems: list[str] = []
    try:
        for inc in incs:
            if not inc.expect("READY", timeout=60):
                problems.append(f"{inc.tag} never became ready:\n{inc.stderr_path.read_text()[-2000:]}")
        for inc in incs:
            if not inc.expect("LOADED", timeout=LOAD_SECONDS + 30):
                problems.append(f"{inc.tag} did not stop calling after {LOAD_SECONDS} s")
        # Their clients are done; what they set in motion (alarms, flushes, retries) must now finish.
        if not problems and not harness.wait_settled(tags, settle_timeout):
            problems.append(f"the processes did not finish their work within {settle_timeout:.0f} s")
        problems += close(incs)
    finally:
        for inc in incs:
            inc.kill()
    for tag in tags:
        harness.history.ingest(harness.journals, tag)
    problems += invariants.check(harness.db, harness.history, final_tags=set(tags))
    return harness.history, problems


def exactly_once_problems(history: History) -> list[str]:
    """Without crashes, at-least-once is exactly once: find anything that ran twice or never."""
    problems: list[str] = []
    for job_id, runs in history.job_runs.items():
        starts = [r["attempt"] for r in runs if r["k"] == "job_start"]
        if sorted(starts) != list(range(1, len(starts) + 1)):
            problems.append(f"job {job_id}: attempts started {sorted(starts)}, not each once")
        if any(r["k"] == "job_interrupted" for r in runs):
            problems.append(f"job {job_id}: was interrupted, though no process stopped before the work was done")
    for (kind, instance_id), ops in history.by_instance.items():
        for op in ops:
            if op.outcome != "ack" or op.seq is None:
                continue
            if kind == "d" and history.flush_counts[(instance_id, op.seq)] != 1:
                n = history.flush_counts[(instance_id, op.seq)]
                problems.append(f"debounce {instance_id}: acknowledged event {op.seq} was flushed {n} time(s)")
            if kind == "t" and history.poke_counts[(instance_id, op.seq)] != 1:
                n = history.poke_counts[(instance_id, op.seq)]
                problems.append(f"task {instance_id}: acknowledged event {op.seq} was handled {n} time(s)")
    for (instance_id, run), n in history.tick_counts.items():
        if n != 1:
            problems.append(f"continuous {instance_id}: run {run} succeeded {n} times")
    return problems


def spread(history: History) -> tuple[int, int]:
    """How many processes ran queued jobs, and how many instances had handlers in more than one process."""
    job_pids = {r["pid"] for runs in history.job_runs.values() for r in runs}
    shared = sum(
        1
        for key, spans in history.intervals.items()
        if not key.startswith("job:") and len({pid for _, _, pid, _ in spans}) > 1
    )
    return len(job_pids), shared


@pytest.mark.parametrize("peers", [2, 4])
def test_engine_processes_share_one_file(tmp_path: Path, peers: int) -> None:
    history, problems = run_peers(tmp_path, peers)
    problems += exactly_once_problems(history)
    assert not problems, "\n".join(problems[:40])
    acked = [op for ops in history.by_instance.values() for op in ops if op.outcome == "ack"]
    jobs = [op for op in history.enqueues.values() if op.outcome == "ack"]
    assert len(acked) >= 40 and len(jobs) >= 10, (len(acked), len(jobs))  # the processes did real work
    # ... on shared instances, from every process: the contention the guarantees are about happened.
    job_processes, shared_instances = spread(history)
    assert job_processes >= 2
    assert shared_instances >= 4


def test_the_overlap_check_catches_processes_without_leases(tmp_path: Path) -> None:
    # Plant the defect the leases prevent: every process believes it holds every instance.
    _, problems = run_peers(tmp_path, 2, mutant="no_instance_lease", settle_timeout=10)
    assert any("ran at once" in p for p in problems), "\n".join(problems[:20])


# -- a lease that lapses while its holder still runs --------------------------------------------


class Count(msgspec.Struct):
    n: int = 0


@pytest.mark.trio
async def test_a_handler_whose_lease_lapsed_cannot_overwrite_the_next_holder(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    first = True

    async def bump(ctx: djobs.ContinuousContext[Count]) -> None:
        nonlocal first
        n = ctx.state.n
        if first:
            first = False
            await trio.sleep(60)  # engine a's run takes a minute; its lease renewals fail meanwhile
        ctx.set_state(Count(n + 1))

    counter = djobs.Continuous.make(
        "counter", state=Count, schedule=djobs.every("1 day"), execute=bump, start_immediately=False
    )
    path = tmp_path / "shared.db"
    a_storage = djobs.storage.faulty(djobs.sqlite(path))
    async with (
        open_test_engine([counter], storage=a_storage) as a,
        open_test_engine([counter], storage=djobs.sqlite(path)) as b,
    ):
        success(await a.client.continuous(counter).start(id="x", input=Count()))
        a_storage.fail("renew_instance_leases", kind="busy")
        acknowledged = 0  # runs a caller was told succeeded

        async def trigger(engine: djobs.Engine) -> None:
            nonlocal acknowledged
            result = await engine.client.continuous(counter).trigger("x")
            acknowledged += isinstance(result, IOSuccess) and success(result).outcome == "succeeded"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trigger, a)
            await trio.sleep(45)  # a's 30 s lease has lapsed, its run goes on
            await trigger(b)  # b takes the instance over and runs it
        state = success(await b.client.continuous(counter).get_state("x")).state
    # Every run acknowledged as succeeded is in the state: a's stale commit must fail, not overwrite b's.
    assert acknowledged >= 1
    assert state.n == acknowledged
