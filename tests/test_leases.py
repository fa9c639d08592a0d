"""Instance leases: a dead owner on this host is detected at once, a wait on a live one is
logged, and the lease length is an `open_engine` option."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
import trio
from test_timeouts import layer  # noqa: F401  # the memory / SQLite / PostgreSQL fixture

import djobs
import djobs._leases
import djobs.storage
from djobs._ids import engine_id, namespaces_token, proc_stat, start_time
from djobs._leases import dead_local_owner
from djobs._worker import FREE_EXITED_EVERY_MS
from djobs.storage import NewJob
from djobs.testing import open_test_engine, success


class Count(msgspec.Struct):
    n: int = 0


def bump(ctx: djobs.ContinuousContext[Count]) -> Count:
    return Count(ctx.state.n + 1)


counter = djobs.Continuous.make("counter", state=Count, schedule=djobs.every("1 hour"), execute=bump)
KEY = "continuous:counter:a"


def exited_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def owner_of(pid: int, start: int | None = None) -> str:
    """The engine id a process `pid` of this process table would have (its start time read
    from /proc, or `start`)."""
    namespaces = namespaces_token()
    if namespaces is None:  # no /proc (macOS): ids have no token
        return f"{socket.gethostname()}:{pid}:0badc0de"
    if start is None:
        start = start_time(pid)
    return f"{socket.gethostname()}:{pid}:{namespaces}-{start if start is not None else 1}:0badc0de"


linux = pytest.mark.skipif(sys.platform != "linux", reason="the process token is read from Linux's /proc")


@linux
def test_a_dead_owner_is_told_from_a_live_or_foreign_one() -> None:
    host = socket.gethostname()
    assert dead_local_owner(owner_of(exited_pid()))
    assert not dead_local_owner(owner_of(os.getppid()))  # alive
    assert not dead_local_owner(engine_id())  # this process: another engine of it
    assert not dead_local_owner(f"another-{host}:{exited_pid()}:{namespaces_token()}-1:0badc0de")  # cannot tell
    assert not dead_local_owner("not-an-engine-id")
    for malformed in (
        "pid:{ns}-1:r",
        "0:{ns}-1:r",
        "-5:{ns}-1:r",
        "{pid}:{ns}-x:r",
        "{pid}:{ns}:r",
        "{pid}:a:b:c",
        "{pid}",
    ):
        text = malformed.format(pid=exited_pid(), ns=namespaces_token())
        assert not dead_local_owner(f"{host}:{text}"), text


@linux
def test_an_owner_of_another_pid_namespace_or_boot_or_an_older_id_is_never_judged_dead() -> None:
    host, pid = socket.gethostname(), exited_pid()
    # Same host name, another PID namespace (a container sharing the host's name): its pid
    # means nothing in our process table.
    assert not dead_local_owner(f"{host}:{pid}:0123456789ab-1:0badc0de")
    # An id of djobs before the token (``host:pid:random``): it may be such a container's.
    assert not dead_local_owner(f"{host}:{pid}:0badc0de")


@linux
def test_a_reused_pid_is_told_from_its_first_process() -> None:
    start = start_time(os.getppid())
    assert start is not None
    assert dead_local_owner(owner_of(os.getppid(), start + 1))  # the pid now names another process
    assert not dead_local_owner(owner_of(os.getppid(), start))
    assert dead_local_owner(owner_of(os.getpid(), start_time(os.getpid()) + 1))  # type: ignore[operator]


@linux
def test_a_killed_holder_not_yet_reaped_is_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        owner = owner_of(child.pid)
        assert not dead_local_owner(owner)
        child.kill()
        while (proc_stat(child.pid) or ("?", 0))[0] != "Z":
            time.sleep(0.01)
        assert dead_local_owner(owner)  # a zombie: os.kill(pid, 0) still succeeds on it
    finally:
        child.kill()
        child.wait()
    assert dead_local_owner(owner)


def test_without_a_proc_of_our_pid_namespace_no_owner_is_judged_dead(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"{socket.gethostname()}:{exited_pid()}:0123456789ab-1:0badc0de"
    monkeypatch.setattr(djobs._leases, "namespaces_token", lambda: None)
    assert not dead_local_owner(dead)
    assert not dead_local_owner(dead.replace("0123456789ab-1:", ""))


@pytest.mark.skipif(sys.platform == "win32", reason="no signal 0 probe on Windows")
def test_on_macos_an_id_without_a_token_is_judged_by_host_and_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    host = socket.gethostname()
    monkeypatch.setattr(sys, "platform", "darwin")
    assert dead_local_owner(f"{host}:{exited_pid()}:0badc0de")
    assert not dead_local_owner(f"{host}:{os.getppid()}:0badc0de")
    assert not dead_local_owner(f"{host}:{os.getpid()}:0badc0de")
    assert not dead_local_owner(f"another-{host}:{exited_pid()}:0badc0de")


@pytest.mark.trio
async def test_a_lease_held_by_a_dead_process_of_this_host_is_freed_at_once(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = owner_of(exited_pid())
    async with open_test_engine([counter], storage=layer) as engine:
        client = engine.client.continuous(counter)
        assert success(await client.start(id="a", input=Count()))
        await engine.wait_idle()
        await trio.sleep(1)  # this engine gives its idle lease up
        # A SIGKILLed process of this host held the lease (for 30 s more).
        assert await engine.storage.acquire_instance_lease(KEY, dead, engine.clock.now_ms(), 30_000)
        started = trio.current_time()
        with caplog.at_level(logging.WARNING, logger="djobs.engine"):
            assert success(await client.trigger("a"))
        assert trio.current_time() - started < 1  # not the 30 s of the dead owner's lease
        assert any("exited; freeing it" in r.getMessage() and dead in r.getMessage() for r in caplog.records)
        assert success(await client.get_state("a")).state == Count(2)


START = datetime(2026, 1, 1, tzinfo=UTC)


def epoch_ms(at: datetime) -> int:
    return (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


runs: list[int] = []


def record(params: Count, ctx: djobs.JobContext) -> None:
    runs.append(params.n)


work = djobs.Job.make("work", params=Count, execute=record)


@pytest.mark.trio
async def test_what_an_exited_process_of_this_host_held_is_freed_when_an_engine_opens(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs.clear()
    dead = owner_of(exited_pid())
    async with open_test_engine([counter, work], storage=layer, start=START) as engine:
        assert success(await engine.client.continuous(counter).start(id="a", input=Count()))  # runs now, then hourly
        assert success(await engine.client.job(work).later(Count(7), at=START + timedelta(hours=1)))
        await engine.wait_idle()
    # An hour on, a process of this host claimed the due run and the due job, took the
    # instance's lease, and was SIGKILLed: the alarm is hidden and the job leased for 5 minutes.
    now = epoch_ms(START + timedelta(hours=1))
    async with layer.open() as store:
        assert await store.acquire_instance_lease(KEY, dead, now, 30_000)
        assert [a.key for a in await store.claim_alarms(now, 300_000, 10)] == [KEY]
        assert [j.name for j in await store.claim_jobs(now, now + 300_000, dead, ["work"], 10)] == ["work"]  # type: ignore[attr-defined]
    opened = START + timedelta(hours=1, seconds=1)
    with caplog.at_level(logging.WARNING, logger="djobs.engine"):
        async with open_test_engine([counter, work], storage=layer, start=opened) as engine:
            await trio.sleep(1)
            # Both ran at once, not 5 minutes later.
            assert success(await engine.client.continuous(counter).get_state("a")).state == Count(2)
            assert runs == [7]
    assert any(
        "processes of this host that have exited" in r.getMessage() and dead in r.getMessage() for r in caplog.records
    )


@pytest.mark.trio
async def test_a_job_an_exited_process_of_this_host_held_is_reclaimed_by_a_running_engine(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
) -> None:
    runs.clear()
    dead = owner_of(exited_pid())
    # Polling each second, as a worker among processes does (the test engine's does not).
    async with open_test_engine([work], storage=layer, start=START, worker=djobs.WorkerOptions()) as engine:
        await trio.sleep(1)
        # Another process of this host started a job (its lease 5 minutes) and was SIGKILLed.
        now = engine.clock.now_ms()
        row = NewJob(id="killed", name="work", params=b'{"n":3}', max_attempts=3, scheduled_for=now, created_at=now)
        await engine.storage.start_job(row, dead, now + 300_000)  # type: ignore[attr-defined]
        # Reclaimed on the worker's reclaim timer (at most a minute on), not after the 5 minutes.
        await trio.sleep(FREE_EXITED_EVERY_MS / 1000 + 2)
        assert runs == [3]


@pytest.mark.trio
async def test_a_wait_on_a_live_owner_is_logged_and_ends_with_its_lease(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    alive = owner_of(os.getppid())
    async with open_test_engine([counter], storage=layer) as engine:
        client = engine.client.continuous(counter)
        assert success(await client.start(id="a", input=Count()))
        await engine.wait_idle()
        await trio.sleep(1)
        assert await engine.storage.acquire_instance_lease(KEY, alive, engine.clock.now_ms(), 30_000)
        started = trio.current_time()
        with caplog.at_level(logging.INFO, logger="djobs.engine"):
            assert success(await client.trigger("a"))
        assert 30 <= trio.current_time() - started < 31
        waits = [r.getMessage() for r in caplog.records if "waiting for the lease" in r.getMessage()]
        assert len(waits) == 1 and alive in waits[0] and "30.0 s" in waits[0]


@pytest.mark.trio
async def test_the_instance_lease_length_is_an_option(
    autojump_clock: trio.testing.MockClock,
    layer: djobs.storage.StorageLayer,  # noqa: F811
) -> None:
    async def hold(ctx: djobs.ContinuousContext[Count]) -> None:
        await trio.sleep(60)

    holder = djobs.Continuous.make("holder", state=Count, schedule=djobs.every("1 hour"), execute=hold)
    async with open_test_engine([holder], storage=layer, instance_lease="5 seconds") as engine:
        await engine.client.continuous(holder).start(id="h", input=Count())
        await trio.sleep(30)  # the body runs; the lease is renewed every third of 5 s
        held = await engine.storage.instance_lease_holder("continuous:holder:h")
        assert held is not None and held[0] == engine.worker_id
        assert 0 < held[1] - engine.clock.now_ms() <= 5000


@pytest.mark.trio
async def test_a_lease_shorter_than_a_second_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(djobs.ValidationError, match="instance_lease must be at least 1 second"):
        async with open_test_engine([counter], instance_lease="500 ms"):
            pass


class Due(msgspec.Struct):
    at_ms: int


def schedule_at(event: Due, ctx: djobs.TaskEventContext[Due]) -> None:
    ctx.schedule(datetime.fromtimestamp(event.at_ms / 1000, tz=UTC))


def nothing(ctx: djobs.TaskContext[Due]) -> None:
    return None


@pytest.mark.trio
async def test_instances_going_idle_one_after_another_give_their_leases_up_in_few_writes(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Forty instances whose alarms fire a millisecond apart: each lease is given up between
    # the linger (50 ms) and twice it after its instance went idle, in one write per linger,
    # not one write per instance.
    job = djobs.Task.make("tick", state=Due, event=Due, on_event=schedule_at, execute=nothing)
    async with open_test_engine([job], storage=djobs.memory()) as engine:
        releases: list[tuple[float, int]] = []
        release = engine.storage.release_instance_leases

        async def counted(keys: list[str], owner: str) -> None:
            releases.append((trio.current_time(), len(keys)))
            await release(keys, owner)

        monkeypatch.setattr(engine.storage, "release_instance_leases", counted)
        client = engine.client.task(job)
        t0, start = trio.current_time(), engine.clock.now_ms() + 1000
        for i in range(40):
            success(await client.send(id=f"t{i}", event=Due(start + i)))
        await trio.sleep(0.9)  # the sends' leases are given up
        releases.clear()
        await trio.sleep(0.3)  # the alarms run from 1.0 s to 1.039 s
        assert sum(n for _, n in releases) == 40
        assert len(releases) <= 2
        # None before the first idle instance lingered (a virtual wait ends a microsecond early),
        # and the last within twice the linger.
        assert t0 + 1.049 <= releases[0][0] and releases[-1][0] <= t0 + 1.039 + 0.1 + 0.001
        for i in range(40):
            assert await engine.storage.instance_lease_holder(f"task:tick:t{i}") is None


@pytest.mark.trio
async def test_the_alarm_sleeper_reads_its_due_time_once_per_claim_of_alarms_a_millisecond_apart(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A handler's end rechecks the sleeper's due time only if it may sleep until a claimed
    # alarm's lease end: asleep until the next due alarm, it sleeps on (it was woken, and read
    # its due time again, once per alarm as well).
    job = djobs.Task.make("tick", state=Due, event=Due, on_event=schedule_at, execute=nothing)
    async with open_test_engine([job], storage=djobs.memory()) as engine:
        client = engine.client.task(job)
        start = engine.clock.now_ms() + 1000
        for i in range(20):
            success(await client.send(id=f"t{i}", event=Due(start + i)))
        reads: list[int] = []
        next_alarm_at = engine.storage.next_alarm_at

        async def counted(prefixes: list[str] | None = None) -> int | None:
            reads.append(engine.clock.now_ms())
            return await next_alarm_at(prefixes)

        monkeypatch.setattr(engine.storage, "next_alarm_at", counted)
        await trio.sleep(1.1)
        for i in range(20):  # each alarm ran (consumed: the task is idle)
            assert success(await client.status(f"t{i}")).status == "idle"
        assert len(reads) <= 21


@pytest.mark.trio
async def test_the_alarm_sleeper_does_not_wake_at_the_lease_end_of_an_alarm_whose_handler_is_done(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # While a long handler runs, the sleeper's next due time is its claimed alarm's lease end
    # (5 minutes on); the handler's end consumed the alarm, so the sleeper reads again then,
    # not at that lease's end.
    async def slowly(ctx: djobs.TaskContext[Due]) -> None:
        await trio.sleep(10)

    job = djobs.Task.make("slow", state=Due, event=Due, on_event=schedule_at, execute=slowly)
    async with open_test_engine([job], storage=djobs.memory()) as engine:
        reads: list[float] = []
        next_alarm_at = engine.storage.next_alarm_at

        async def counted(prefixes: list[str] | None = None) -> int | None:
            reads.append(trio.current_time())
            return await next_alarm_at(prefixes)

        monkeypatch.setattr(engine.storage, "next_alarm_at", counted)
        t0 = trio.current_time()
        success(await engine.client.task(job).send(id="s", event=Due(engine.clock.now_ms() + 1000)))
        await trio.sleep(600)
        assert reads and all(at <= t0 + 11.001 for at in reads)  # the last at the handler's end
