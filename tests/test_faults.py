"""Storage faults: callers get StorageError values, the engine stays up, nothing partial is visible,
and when the fault clears everything continues."""

from __future__ import annotations

import contextlib
import inspect
import itertools
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from postgres_support import require_postgres, throwaway_schema

import djobs
from djobs.storage import FaultyLayer, faulty
from djobs.storage._faults import OPERATIONS
from djobs.testing import failure, open_test_engine, success


class Count(msgspec.Struct):
    n: int = 0


def bump(ctx: djobs.ContinuousContext[Count]) -> None:
    ctx.update_state(lambda s: Count(s.n + 1))


ticker = djobs.Continuous.make("ticker", state=Count, schedule=djobs.every("1 minute"), execute=bump)


@pytest.mark.trio
@pytest.mark.parametrize("kind", ["busy", "io", "full", "readonly"])
async def test_client_calls_get_storage_errors_and_nothing_is_written(
    autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    storage = faulty(djobs.memory())
    async with open_test_engine([ticker], storage=storage) as engine:
        client = engine.client.continuous(ticker)
        storage.fail("commit", kind=kind, at="commit", times=1)  # type: ignore[arg-type]
        error = failure(await client.start(id="a", input=Count()))
        assert isinstance(error, djobs.StorageError)
        assert storage.injected == 1
        assert success(await client.status("a")).status == "not_found"  # rolled back, nothing partial
        assert engine.tracker.count("job.started") == 0  # no event for what was not stored
        # The fault was for one call: the next works.
        assert success(await client.start(id="a", input=Count())).created


@pytest.mark.trio
async def test_reads_fail_before_touching_the_database(autojump_clock: trio.testing.MockClock) -> None:
    storage = faulty(djobs.memory())
    async with open_test_engine([ticker], storage=storage) as engine:
        client = engine.client.continuous(ticker)
        await client.start(id="a", input=Count())
        storage.fail("load", kind="io")
        assert isinstance(failure(await client.get_state("a")), djobs.StorageError)
        assert isinstance(failure(await client.status("a")), djobs.StorageError)
        storage.heal()
        assert success(await client.status("a")).status == "running"


def failing_layer() -> FaultyLayer:
    return faulty(djobs.memory())


@pytest.mark.trio
async def test_the_engine_stays_up_through_a_full_disk_and_catches_up(autojump_clock: trio.testing.MockClock) -> None:
    storage = failing_layer()
    async with open_test_engine([ticker], storage=storage, alarm_lease="2 minutes") as engine:
        client = engine.client.continuous(ticker)
        await client.start(id="a", input=Count())
        await trio.sleep(5 * 60 + 1)
        assert success(await client.get_state("a")).state.n == 6
        # The disk fills: every commit fails for ten minutes, alarm claims included.
        storage.fail(kind="full", at="commit")
        await trio.sleep(10 * 60)
        assert storage.injected > 0
        stuck = success(await client.get_state("a")).state.n
        assert stuck == 6  # no run was recorded, and no partial run either
        storage.heal()
        # Claimed alarms fire again after their lease; the schedule carries on.
        await trio.sleep(5 * 60)
        state = success(await client.get_state("a")).state
        assert state.n > 6
        status = success(await client.status("a"))
        assert status.status == "running"
        assert status.run_count == state.n  # every recorded run committed its state with it


@pytest.mark.trio
async def test_faults_can_be_set_before_the_engine_opens(autojump_clock: trio.testing.MockClock) -> None:
    storage = faulty(djobs.memory())
    storage.fail("claim_alarms", kind="busy", times=3)
    async with open_test_engine([ticker], storage=storage) as engine:
        await engine.client.continuous(ticker).start(id="a", input=Count())
        await trio.sleep(10)
        assert storage.injected == 3
        assert success(await engine.client.continuous(ticker).get_state("a")).state.n == 1


class JumpingClock:
    """A virtual clock whose reading can jump, like a wall clock corrected by NTP or a person."""

    def __init__(self) -> None:
        self.base = djobs.VirtualClock()
        self.offset_ms = 0

    def now_ms(self) -> int:
        return self.base.now_ms() + self.offset_ms

    async def sleep_until(self, epoch_ms: int) -> None:
        # Re-read after at most a minute, as the engine's poll interval does for a wall clock.
        while (left := epoch_ms - self.now_ms()) > 0:  # noqa: ASYNC110 - polling a clock that can jump is the point
            await trio.sleep(min(60.0, left / 1000))


@pytest.mark.trio
@pytest.mark.parametrize("jump_minutes", [60, -60])
async def test_a_jumping_wall_clock_neither_repeats_nor_loses_a_daily_run(
    autojump_clock: trio.testing.MockClock, jump_minutes: int
) -> None:
    fired: list[int] = []

    def record(ctx: djobs.ContinuousContext[Count]) -> None:
        fired.append(round(ctx.now().timestamp()))

    daily = djobs.Continuous.make(
        "daily", state=Count, schedule=djobs.cron("0 9 * * *"), start_immediately=False, execute=record
    )
    clock = JumpingClock()
    engine_options: dict[str, Any] = {"storage": djobs.memory(), "clock": clock, "alarm_poll_interval": "1 minute"}
    async with djobs.open_engine([daily], **engine_options) as engine:
        await engine.client.continuous(daily).start(id="d", input=Count())
        await trio.sleep(9 * 3600 + 30 * 60)  # 09:30 on day 1: fired once
        assert len(fired) == 1
        clock.offset_ms += jump_minutes * 60_000  # the wall clock jumps (to 10:30, or back to 08:30)
        await trio.sleep(3 * 24 * 3600)
    # One run per day, each at a distinct 09:00: nothing twice, nothing lost. After the jump the
    # three days end at 10:30 on day 4 (jumped forward: its 09:00 ran) or 08:30 (jumped back: not yet).
    expected = 4 if jump_minutes > 0 else 3
    assert len(fired) == expected
    assert len(set(fired)) == expected
    assert all(b - a == 24 * 3600 for a, b in itertools.pairwise(fired))


#: Rules that could never fire as written (a test with one would pass without its fault), and what
#: the refusal says.
BAD_RULES: list[tuple[tuple[Any, ...], dict[str, Any], str]] = [
    (("comit",), {"kind": "full"}, "no storage operation 'comit' (did you mean 'commit'?)"),
    (("Commit",), {}, "no storage operation 'Commit'"),
    (("call",), {}, "no storage operation 'call'"),  # at='s word, not an operation
    ((5,), {}, "no storage operation 5"),
    (("commit",), {"kind": "fuul"}, "kind must be one of busy, io, full, readonly, bug, got 'fuul'"),
    (("commit",), {"at": "comit"}, "at must be 'call' or 'commit', got 'comit'"),
    (("commit",), {"times": 0}, "times must be a whole number of calls, at least 1"),
    (("commit",), {"times": -1}, "times must be a whole number of calls, at least 1"),
    (("commit",), {"times": True}, "times must be a whole number of calls, at least 1"),
    (("commit",), {"times": 1.5}, "times must be a whole number of calls, at least 1"),
    (("commit",), {"kind": "bug", "at": "commit"}, "an injected bug is raised at the call"),
]


@pytest.mark.parametrize(("args", "kwargs", "says"), BAD_RULES)
def test_a_rule_that_could_never_fire_is_refused_before_and_after_the_layer_opens(
    args: tuple[Any, ...], kwargs: dict[str, Any], says: str
) -> None:
    layer = faulty(djobs.memory())
    with pytest.raises(djobs.ValidationError, match=r"^faulty: ") as before:
        layer.fail(*args, **kwargs)
    assert says in before.value.message

    async def opened() -> None:
        async with layer.open():
            with pytest.raises(djobs.ValidationError) as after:
                layer.fail(*args, **kwargs)
            assert says in after.value.message
            assert layer.storage is not None
            with pytest.raises(djobs.ValidationError):
                layer.storage.fail(*args, **kwargs)

    trio.run(opened)
    assert layer.injected == 0


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres"])
def test_every_storage_operation_a_rule_names_fails_when_called(kind: str, tmp_path: Path) -> None:
    # SQLite's commit, checkpoint_instance and lease_and_load hand back a coroutine without being
    # coroutine functions: the wrapper passed them through, and a fault on "commit" never fired.
    # PostgreSQL's own operations (watch_enqueues) were refused as no storage operation.
    with contextlib.ExitStack() as stack:
        if kind == "postgres":
            dsn = require_postgres()
            inner = djobs.postgres(dsn, schema=stack.enter_context(throwaway_schema(dsn)))
        else:
            inner = djobs.memory() if kind == "memory" else djobs.sqlite(tmp_path / "jobs.db")
        _every_operation_fails(faulty(inner))


def test_a_rule_may_name_every_operation_of_postgres_storage_before_it_opens() -> None:
    pytest.importorskip("psycopg")
    from djobs.storage._faults import _operations
    from djobs.storage._pgstore import PostgresStorage

    assert _operations(PostgresStorage) <= OPERATIONS
    layer = faulty(djobs.postgres("postgresql://nobody@127.0.0.1:1/none"))  # not opened: connects to nothing
    for name in sorted(_operations(PostgresStorage)):
        layer.fail(name, times=1)  # a ValidationError before: watch_enqueues, aclose


def _every_operation_fails(layer: FaultyLayer) -> None:

    async def check() -> list[str]:
        missed = []
        async with layer.open() as storage:
            assert layer.storage is not None
            inner = layer.storage.inner
            for name in sorted(OPERATIONS):
                if not hasattr(inner, name) or name == "aclose":  # (the layer closes it)
                    continue
                layer.heal()
                layer.fail(name, kind="busy", times=1)
                before = layer.injected
                with contextlib.suppress(djobs.StorageError):
                    await getattr(storage, name)(*([None] * _arity(storage, name)))
                if layer.injected != before + 1:
                    missed.append(name)
        return missed

    assert trio.run(check) == []


def _arity(storage: Any, name: str) -> int:
    params = inspect.signature(getattr(storage.inner, name)).parameters.values()
    return sum(1 for p in params if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD)


@pytest.mark.trio
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_fault_on_commit_fails_a_start_on_every_store(
    autojump_clock: trio.testing.MockClock, kind: str, tmp_path: Path
) -> None:
    storage = faulty(djobs.memory() if kind == "memory" else djobs.sqlite(tmp_path / "jobs.db"))
    async with open_test_engine([ticker], storage=storage) as engine:
        client = engine.client.continuous(ticker)
        for at in ("call", "commit"):
            storage.fail("commit", kind="full", at=at, times=1)  # type: ignore[arg-type]
            assert isinstance(failure(await client.start(id="a", input=Count())), djobs.StorageError), at
            assert storage.injected == (1 if at == "call" else 2)
            assert success(await client.status("a")).status == "not_found"  # nothing was written
