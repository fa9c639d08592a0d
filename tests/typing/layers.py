"""Layers are typed: a fake must have its layer's methods, and open_engine takes Layers whole or the pieces.

Lines ending in ``# E: <code>`` must fail mypy with that error code; every other line must pass.
"""

from datetime import timedelta

import djobs
import djobs.testing


class NoWaitRetries:
    def delay_before(self, retry: djobs.Retry, attempt: int) -> timedelta:
        return timedelta(0)


class CountingIds:
    def engine_id(self) -> str:
        return "engine-a"

    def job_id(self, now_ms: int) -> str:
        return f"job-{now_ms}"

    def uuid(self) -> str:
        return "00000000-0000-4000-8000-000000000001"

    def random(self) -> float:
        return 0.25


class HalfAClock:
    def now_ms(self) -> int:
        return 0


class WrongRetries:
    def delay_before(self, retry: djobs.Retry, attempt: int) -> int:
        return 0


layers = djobs.Layers(storage=djobs.memory(), retries=NoWaitRetries(), ids=CountingIds())
swapped: djobs.Layers = layers.replace(clock=djobs.VirtualClock(), tracker=djobs.InMemoryTracker())
test_layers: djobs.Layers = djobs.testing.default_layers().replace(retries=NoWaitRetries())

djobs.Layers(clock=HalfAClock())  # E: arg-type
layers.replace(retries=WrongRetries())  # E: arg-type
layers.replace(ids="ids")  # E: arg-type
layers.replace(timeout=5)  # E: call-arg
layers.clock = djobs.WallClock()  # E: misc

djobs.open_engine([], layers=layers)
djobs.testing.open_test_engine([], layers=test_layers, clock=djobs.VirtualClock(), ids=CountingIds())
djobs.testing.open_test_engine([], retries=WrongRetries())  # E: call-overload
