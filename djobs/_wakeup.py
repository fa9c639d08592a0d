"""`Wakeup`: how the engine's background loops wait.

The alarm sleeper (which fires the cron jobs too) and the queue's claim loop
each sleep until their earliest due time, wake early when this process adds
something due sooner (a poke), and, when other processes share the
database, look again after a poll interval at the latest.
"""

from __future__ import annotations

import math
from typing import final

import trio

from ._clock import Clock, VirtualClock


@final
class Wakeup:
    """A sleep until an epoch time that `poke` can cut short.

    Args:
        clock: The clock layer the due times are read on.
        poll_ms: Wake at least this often (other processes' work is not poked
            here); ``None`` trusts pokes alone.
    """

    __slots__ = ("_clock", "_cut", "_missed", "_poll_ms", "_scope", "_until", "woke_at", "woke_ms")

    def __init__(self, clock: Clock, poll_ms: int | None) -> None:
        self._clock = clock
        self._poll_ms = poll_ms
        self._scope: trio.CancelScope | None = None
        self._until: float = math.inf
        # The earliest poke that came while the loop was awake (reading what is due):
        # what it read may predate the poke's write, so the next sleep ends by then.
        self._missed: float = math.inf
        #: A poke or recheck ended the current sleep.
        self._cut = False
        #: The clock's reading as the last sleep ended, if it took one (the virtual clock's
        #: due time reached): the caller's "now" until its next await. ``None`` otherwise.
        self.woke_ms: int | None = None
        #: With `woke_ms`, the Trio time of the deadline that ended the sleep: no later than now.
        self.woke_at: float | None = None

    async def sleep_until(self, at_ms: int | None) -> bool:
        """Sleep until `at_ms` (forever for ``None``), a poke for an earlier time, or the poll interval.

        A poke that came since the last sleep ended counts too: the loop may have read
        what is due before the poke's write committed (PostgreSQL: the settle of a
        retry, from another task, during the claim loop's read of its next due time).

        Returns whether the sleep lasted until the `at_ms` it was given: neither a poke,
        a recheck nor the poll interval ended it first (so what the caller read as due at
        `at_ms` is due now, unless something changed it without a poke).
        """
        missed, self._missed = self._missed, math.inf
        asked = at_ms
        if missed != math.inf and (at_ms is None or missed < at_ms):
            at_ms = int(missed)
        clock = self._clock
        # A virtual due time is a Trio time: the one scope is both the wait and the poke's,
        # rather than a second scope inside the clock's sleep. Its deadline is given as it is
        # made (a deadline set on an entered scope costs a second registration).
        virtual = False
        due = math.inf
        if at_ms is not None and isinstance(clock, VirtualClock):
            virtual, due = True, clock.trio_deadline(at_ms)
        deadline = due
        if self._poll_ms is not None:
            deadline = min(due, trio.current_time() + self._poll_ms / 1000)
        scope = self._scope = trio.CancelScope(deadline=deadline)
        self._until = math.inf if at_ms is None else at_ms
        self._cut = False
        self.woke_ms = self.woke_at = None
        with scope:
            if at_ms is None or virtual:
                await _sleep_in(scope)
            else:
                await clock.sleep_until(at_ms)
        self._scope = None
        if at_ms is None or virtual:
            # Woken by the scope's own cancel, which raised nothing (`_sleep_in`): one of the
            # engine's own cancels, come at the same moment, is raised here instead.
            await trio.lowlevel.checkpoint_if_cancelled()
        if self._cut or at_ms is None:
            return False
        if virtual:
            if deadline != due:
                return False  # the poll interval ended it
            now = clock.now_ms()
            if now < at_ms:
                await clock.sleep_until(at_ms)  # woken a hair early (float rounding): never before `at_ms`
            else:
                self.woke_ms, self.woke_at = now, deadline
            return at_ms == asked
        # Another clock's sleep returned (it reached `at_ms`), unless the poll interval ended it.
        return at_ms == asked and not scope.cancelled_caught

    def poke(self, at_ms: int) -> None:
        """Something is due at `at_ms`: wake the sleeper if it sleeps past that (or, if it is
        awake, end its next sleep by then)."""
        if self._scope is None:
            self._missed = min(self._missed, at_ms)
        elif at_ms < self._until:
            self._cut = True
            self._scope.cancel()

    def recheck(self, from_ms: float = -math.inf) -> bool:
        """What the sleeper sleeps for may have moved later (a lease it would wake for
        ended early): end its sleep now so it reads its due time again, if it sleeps until
        `from_ms` (epoch ms) or later; a sleep that ends sooner is not for such a time.

        Returns whether a sleep was ended; an awake loop reads its due time anyway.
        """
        if self._scope is None or self._until == math.inf or self._until < from_ms:
            return False
        self._cut = True
        self._scope.cancel()
        return True


async def _sleep_in(scope: trio.CancelScope) -> None:
    """Sleep until `scope` (entered by the caller) is cancelled: its deadline, a poke; as
    ``trio.sleep_forever()`` in it, but its own cancel wakes the task with no ``Cancelled``
    raised and caught (about a fifth of a wake-up's cost, once per due time of the engine's
    loops). A cancel of an outer scope is raised as ever, here or at the caller's next
    checkpoint (where both come at once)."""
    task = trio.lowlevel.current_task()

    def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
        if scope.cancel_called:
            trio.lowlevel.reschedule(task)  # woken with a plain value: nothing to raise or catch
            return trio.lowlevel.Abort.FAILED
        return trio.lowlevel.Abort.SUCCEEDED

    await trio.lowlevel.wait_task_rescheduled(abort)
