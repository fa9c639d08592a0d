"""The pytest plugin djobs registers: the ``djobs_test_engine`` fixture."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio.testing

from ._engine import open_test_engine


@pytest.fixture
def djobs_test_engine(autojump_clock: trio.testing.MockClock) -> Callable[..., Any]:
    """`open_test_engine`, with the test put on a virtual clock that jumps ahead.

    Example:
        ```python
        @pytest.mark.trio
        async def test_it(djobs_test_engine):
            async with djobs_test_engine([my_job]) as engine:
                ...
        ```
    """
    return open_test_engine
