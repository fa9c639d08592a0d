from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _quiet_djobs_logs(caplog: pytest.LogCaptureFixture) -> None:
    # Jobs log their failures at ERROR on purpose; keep them captured, not printed.
    caplog.set_level(logging.CRITICAL + 1, logger="djobs")
