"""Any text given where djobs reads a cursor or a number a person typed is answered, never raised.

The class of the review's inputs: a dead-letter cursor whose time was ``--5`` or twenty digits
raised ValueError or OverflowError out of the client (a bug failure), the CLI and the dashboard
(a 500), and a ``limit`` of more than 4,300 digits made ``int()`` raise. Here every text a
strategy of digits, signs, separators and anything else makes goes through the shared readers
(`whole_number`, `split_dead_letter_cursor`) and through the listing verbs that take a cursor
(``dead_letters.list``, ``workflow.list``, ``jobs.list``) on every storage: each answers a
success or a `ValidationError`, and nothing is stored.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import example, given
from hypothesis import strategies as st
from postgres_support import STORAGE_KINDS, dropped_after, new_schema_name, storage_layer, storage_settings
from returns.pipeline import is_successful

import djobs
from djobs._input import whole_number
from djobs.storage._base import split_dead_letter_cursor
from djobs.testing import failure, open_test_engine, success

#: Text built from what the readers look at (digits, signs, the unit separator, spaces), with
#: anything else mixed in.
CURSORISH = st.text(
    alphabet=st.one_of(st.sampled_from("0123456789-+_ \t\x1f\u0663"), st.characters(codec="utf-8")),
    max_size=40,
) | st.builds(lambda n, rest: n + "\x1f" + rest, st.text(alphabet="-0123456789", max_size=30), st.text(max_size=8))


#: The review's inputs, always tried: a time with two minus signs, one past 64 bits, and a run of
#: digits past what ``int()`` reads.
REVIEWED = ["--5\x1fid", "9" * 20 + "\x1fid", "1" * 5000]


@given(CURSORISH | st.text(alphabet="0123456789", min_size=4290, max_size=4400))
@example(REVIEWED[0])
@example(REVIEWED[1])
@example(REVIEWED[2])
def test_the_readers_answer_any_text(text: str) -> None:
    number = whole_number(text)
    # What a person typed as a number: an optional sign and 1 to 18 ASCII digits, spaces or tabs around.
    matched = re.fullmatch(r"[ \t]*([+-]?[0-9]{1,18})[ \t]*", text, re.ASCII)
    assert number == (int(matched.group(1)) if matched else None)
    split = split_dead_letter_cursor(text)
    if split is not None and split[1] is not None:
        assert -(10**18) < split[1] < 10**18  # held by every storage's 64-bit integer


class P(msgspec.Struct):
    n: int = 0


async def nothing(params: P, ctx: djobs.WorkflowContext) -> P:
    return params


workflow = djobs.Workflow.make("w", input=P, result=P, execute=nothing)
job = djobs.Job.make("j", params=P, execute=lambda params, ctx: None)


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_listing_verbs_answer_any_cursor_text(kind: str, tmp_path: Any) -> None:
    schema = new_schema_name() if kind == "postgres" else None

    @storage_settings(kind, examples=40, postgres_examples=15)
    @given(texts=st.lists(CURSORISH, min_size=1, max_size=6))
    @example(texts=REVIEWED[:2])
    def property(texts: list[str]) -> None:
        async def scenario() -> None:
            async with open_test_engine([workflow, job], storage=storage_layer(kind, str(tmp_path), schema)) as engine:
                c = engine.client
                before = success(await c.jobs.list(limit=10_000))
                for text in texts:
                    for verb, call in (
                        ("dead_letters.list", c.dead_letters.list),
                        ("workflow.list", c.workflow(workflow).list),
                        ("jobs.list", c.jobs.list),
                    ):
                        result = await call(after=text)
                        if not is_successful(result):
                            error = failure(result)
                            assert isinstance(error, djobs.ValidationError), (verb, text, error)
                assert success(await c.jobs.list(limit=10_000)) == before

        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))

    with dropped_after(schema):
        property()
