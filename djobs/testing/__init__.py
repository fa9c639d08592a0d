"""Test tools for djobs users (and djobs itself).

`open_test_engine` opens an engine on in-memory storage, a `VirtualClock`
and an `InMemoryTracker`. `check_storage` proves a storage layer against the
contract every storage djobs ships passes. Run the test under
``trio.testing.MockClock(autojump_threshold=0)`` (pytest-trio's
``autojump_clock`` fixture, or this package's ``djobs_test_engine`` fixture
which requests it) and ``await trio.sleep(7 * 24 * 3600)`` is a virtual week
that takes milliseconds.

Example:
    ```python
    @pytest.mark.trio
    async def test_refreshes_every_half_hour(autojump_clock):
        async with djobs.testing.open_test_engine([token_refresher]) as engine:
            await engine.client.continuous(token_refresher).start(id="u", input=Tokens("", "rt"))
            await trio.sleep(24 * 3600 + 1)
            assert engine.tracker.count("job.executed") == 49
    ```
"""

from .._clock import VirtualClock as VirtualClock
from ..tracking import InMemoryTracker as InMemoryTracker
from ._engine import TestEngine as TestEngine
from ._engine import default_layers as default_layers
from ._engine import failure as failure
from ._engine import open_test_engine as open_test_engine
from ._engine import success as success
from ._storage import check_storage as check_storage

__all__ = [
    "InMemoryTracker",
    "TestEngine",
    "VirtualClock",
    "check_storage",
    "default_layers",
    "failure",
    "open_test_engine",
    "success",
]
