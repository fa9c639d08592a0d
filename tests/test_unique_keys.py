"""``unique=True`` keys equal params as one key: the order a dict was built in, and the order a
set iterates in (string hashing differs between processes), make no second job.

The key was the SHA-256 of the params' JSON as written, and msgspec writes a dict's keys in
insertion order and a set's items in iteration order, so ``{"a": 1, "b": 2}`` and
``{"b": 2, "a": 1}`` made two jobs, and so did one set of strings in two processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from postgres_support import (
    STORAGE_KINDS,
    dropped_after,
    new_schema_name,
    storage_layer,
    storage_settings,
)

import djobs
from djobs.testing import open_test_engine, success


class Inner(msgspec.Struct, frozen=True):
    tags: frozenset[str] = frozenset()


class Params(msgspec.Struct):
    counts: dict[str, int] = {}
    names: set[str] = set()
    nested: list[dict[str, Any]] = []
    inner: Inner = Inner()
    by_number: dict[int, str] = {}  # keys that are not str: written as text, sorted all the same
    by_price: dict[float, int] = {}


refresh = djobs.Job.make("refresh", params=Params, execute=lambda params, ctx: None)


def reordered(params: Params, seed: int) -> Params:
    """`params` with every dict and set built again in another order (equal, differently laid out)."""
    import random

    rng = random.Random(seed)

    def shuffled(items: list[Any]) -> list[Any]:
        items = list(items)
        rng.shuffle(items)
        return items

    return Params(
        counts=dict(shuffled(list(params.counts.items()))),
        names=set(shuffled(sorted(params.names))),
        nested=[dict(shuffled(list(d.items()))) for d in params.nested],
        inner=Inner(frozenset(shuffled(sorted(params.inner.tags)))),
        by_number=dict(shuffled(list(params.by_number.items()))),
        by_price=dict(shuffled(list(params.by_price.items()))),
    )


texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6)
params_strategy = st.builds(
    Params,
    counts=st.dictionaries(texts, st.integers(-5, 5), max_size=6),
    names=st.sets(texts, max_size=6),
    nested=st.lists(st.dictionaries(texts, st.integers() | texts | st.none(), max_size=4), max_size=3),
    inner=st.builds(Inner, tags=st.frozensets(texts, max_size=5)),
    by_number=st.dictionaries(st.integers(), texts, max_size=5),
    by_price=st.dictionaries(st.floats(allow_nan=False, allow_infinity=False), st.integers(), max_size=5),
)


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_equal_params_built_in_any_order_are_one_unique_key(kind: str, tmp_path: Any) -> None:
    schema = new_schema_name() if kind == "postgres" else None

    @storage_settings(kind, examples=40, postgres_examples=10)
    @given(params=params_strategy, seeds=st.lists(st.integers(), min_size=1, max_size=3))
    def property(params: Params, seeds: list[int]) -> None:
        async def scenario() -> None:
            async with open_test_engine([refresh], storage=storage_layer(kind, str(tmp_path), schema)) as engine:
                jobs = engine.client.job(refresh)
                first = success(await jobs.later(params, delay="1 hour", unique=True))
                for seed in seeds:
                    again = reordered(params, seed)
                    assert again == params
                    assert success(await jobs.later(again, delay="1 hour", unique=True)) == first
                    as_dict: Any = {
                        "counts": again.counts,
                        "names": again.names,
                        "nested": again.nested,
                        "inner": again.inner,
                        "by_number": again.by_number,
                        "by_price": again.by_price,
                    }
                    assert success(await jobs.later(as_dict, unique=True)) == first  # a dict of its fields
                pending = success(await engine.client.jobs.list(name="refresh", status="pending"))
                assert [job.id for job in pending] == [first]
                success(await engine.client.jobs.cancel(first))  # the next example's key is free

        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))

    with dropped_after(schema):
        property()


ENQUEUE = textwrap.dedent(
    """
    import sys, trio, msgspec, djobs
    from djobs.testing import success

    class Params(msgspec.Struct):
        names: set[str]
        counts: dict[str, int]

    job = djobs.Job.make("refresh", params=Params, execute=lambda params, ctx: None)

    async def main():
        async with djobs.open_engine([job], storage=djobs.sqlite(sys.argv[1])) as e:
            names = {f"name-{i}" for i in range(40)}
            counts = {f"k{i}": i for i in range(40)}
            r = await e.client.job(job).later(Params(names, counts), delay="1 hour", unique=True)
            print(success(r))

    trio.run(main)
    """
)


def test_a_set_of_strings_is_one_unique_key_in_processes_of_different_hash_seeds(tmp_path: Path) -> None:
    script = tmp_path / "enqueue.py"
    script.write_text(ENQUEUE)
    database = str(tmp_path / "jobs.db")
    ids = []
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, str(script), database], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
        ids.append(done.stdout.strip())
    assert ids[0] and ids == [ids[0]] * 3, ids


def test_params_without_dicts_or_sets_keep_the_key_stored_before() -> None:
    """Keys stored before sorting were the SHA-256 of the params' JSON as written: for params
    holding no dict or set (or dicts already in order) the key is unchanged, so a job pending
    across the upgrade still holds it."""
    import hashlib

    from djobs.kinds._job_queue import unique_key_of

    class Plain(msgspec.Struct):
        account_id: str
        pages: list[int] = []
        meta: dict[str, int] = {}

    for value in (Plain("a"), Plain("b", [3, 1, 2]), Plain("c", meta={"a": 1, "b": 2})):
        raw = msgspec.json.encode(value)
        assert unique_key_of(True, raw, Plain).unwrap() == "params:" + hashlib.sha256(raw).hexdigest()
    swapped = msgspec.json.encode(Plain("c", meta={"b": 2, "a": 1}))
    assert unique_key_of(True, swapped, Plain) == unique_key_of(
        True, msgspec.json.encode(Plain("c", meta={"a": 1, "b": 2})), Plain
    )


class Balance(msgspec.Struct):
    account: str
    balance: float
    history: list[float] = []
    by_day: dict[str, float] = {}
    seen: set[float] = set()
    extra: Any = None
    prices: dict[float, int] = {}


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_params_equal_but_for_the_sign_of_a_zero_or_an_int_in_a_float_field_are_one_key(
    kind: str, tmp_path: Any
) -> None:
    """``-0.0 == 0.0`` (a computed balance rounds to -0.0): equal params, one key, wherever the
    zero is; a ``float`` field given ``1`` holds ``1.0``. Params that differ stay two keys."""
    schema = new_schema_name() if kind == "postgres" else None
    balance = djobs.Job.make("balance", params=Balance, execute=lambda params, ctx: None)

    async def scenario() -> None:
        async with open_test_engine([balance], storage=storage_layer(kind, str(tmp_path), schema)) as engine:
            jobs = engine.client.job(balance)
            pairs = [
                (Balance("a", 0.0), Balance("a", -0.0)),
                (Balance("b", 1.0, [0.0, 2.5]), Balance("b", 1, [-0.0, 2.5])),
                (
                    Balance("c", 0, by_day={"mon": 0.0}, seen={0.0, 3.0}),
                    Balance("c", 0, by_day={"mon": -0.0}, seen={-0.0, 3.0}),
                ),
                (Balance("d", 0, extra=[{"x": 0.0}]), Balance("d", 0, extra=[{"x": -0.0}])),
                (Balance("-0.0", 0), Balance("-0.0", -0.0)),  # a "-0.0" in text is kept as written
                # A float key -0.0 is one key with 0.0 in Python: written "-0.0", it made two jobs.
                (Balance("e", 0, prices={0.0: 1, 2.5: 2}), Balance("e", 0, prices={2.5: 2, -0.0: 1})),
            ]
            firsts = []
            for first, second in pairs:
                assert first == second
                firsts.append(success(await jobs.later(first, delay="1 hour", unique=True)))
                assert success(await jobs.later(second, delay="1 hour", unique=True)) == firsts[-1], second
            different = [
                Balance("a", 0.5),
                Balance("0.0", 0),
                Balance("d", 0, extra=[{"x": 1}]),
                Balance("c", 0, by_day={"-0.0": 0.0}),  # a str key "-0.0" is text: kept
                Balance("c", 0, by_day={"0.0": 0.0}),
            ]
            for params in different:
                assert success(await jobs.later(params, delay="1 hour", unique=True)) not in firsts, params
            pending = success(await engine.client.jobs.list(name="balance", status="pending"))
            assert len(pending) == len(pairs) + len(different)

    with dropped_after(schema):
        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
