"""The pytest plugin djobs registers: the ``djobs_test_engine`` fixture."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from ._engine import TestEngine, open_test_engine


@pytest.fixture
def djobs_test_engine() -> Callable[..., AbstractAsyncContextManager[TestEngine]]:
    """`open_test_engine`, as a fixture.

    pytest-trio runs a test on a mock clock only when the test itself
    receives the clock, so request ``autojump_clock`` too to run on
    virtual time:

    Example:
        ```python
        @pytest.mark.trio
        async def test_it(djobs_test_engine, autojump_clock):
            async with djobs_test_engine([my_job]) as engine:
                await trio.sleep(7 * 24 * 3600)   # a virtual week
        ```
    """
    factory: Callable[..., AbstractAsyncContextManager[TestEngine]] = open_test_engine
    return factory
