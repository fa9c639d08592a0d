"""`Runtime`: an engine's actors, instance leases and alarm sleeper, assembled.

Each concept has its module, arrows one way:

- `djobs._leases`: instance leases (take, renew, give up); storage and clock only.
- `djobs._actors`: one task per active instance, running its handlers in
  order; uses the leases.
- `djobs._alarms`: the alarm sleeper, which claims due alarms and posts them
  to actors.

The kinds hold a `Runtime` (their handlers call `call`, `post`,
`target_for`, ...); this module only wires the three parts together and
closes them in order. The leases and the sleeper's wake-up are built before
the `Env` (which fences check-ins with the one and pokes the other), and
given here with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from ._actors import Actors, Handler, OnError
from ._alarms import AlarmSleeper, AlarmTarget, Timer
from ._execution import Env
from ._leases import DEFAULT_INSTANCE_LEASE, InstanceLeases, dead_local_owner
from ._wakeup import Wakeup
from .storage import Alarm

__all__ = [
    "DEFAULT_INSTANCE_LEASE",
    "AlarmTarget",
    "Runtime",
    "dead_local_owner",
]

T = TypeVar("T")


class Runtime:
    """Actors, the alarm sleeper and the instance leases of one engine.

    Args:
        env: The engine's services.
        nursery: Where actors run.
        leases: The engine's instance leases (the same the env fences check-ins with).
        alarm_wakeup: What the alarm sleeper sleeps on (the same the env's commits poke).
        max_concurrency: How many instance handlers may run at once.
        alarm_lease_ms: How long a claimed alarm stays hidden before it fires again.
        alarm_batch: How many alarms one claim takes at most.
    """

    def __init__(
        self,
        env: Env,
        nursery: trio.Nursery,
        leases: InstanceLeases,
        alarm_wakeup: Wakeup,
        *,
        max_concurrency: int,
        alarm_lease_ms: int,
        alarm_batch: int = 200,
    ) -> None:
        self.env = env
        self.leases = leases
        #: This engine's id: its instance leases and its worker's job leases are held under it.
        self.owner = leases.owner
        self.actors = Actors(nursery, leases, max_concurrency)
        self.alarms = AlarmSleeper(
            env.storage,
            env.clock,
            self.actors,
            env.handoffs,
            alarm_wakeup,
            lease_ms=alarm_lease_ms,
            leases=leases,
            batch=alarm_batch,
        )
        #: Whether this engine's alarm sleeper runs (not in a client-only engine).
        self.fires_alarms = False

    @property
    def alarm_lease_ms(self) -> int:
        """How long a claimed alarm stays hidden before it fires again (its handler never finished)."""
        return self.alarms.lease_ms

    @property
    def active_instances(self) -> int:
        """How many instances have an actor right now."""
        return self.actors.active

    def post(self, key: str, handler: Handler, on_error: OnError | None = None) -> None:
        """Queue `handler` on instance `key`'s actor (`Actors.post`)."""
        self.actors.post(key, handler, on_error)

    def spawn(self, fn: Handler, key: str | None = None, refused: Callable[[], None] | None = None) -> None:
        """Run `fn` in a task of its own, as a handler (of `key`) runs; `refused` instead past
        the grace (`Actors.spawn`)."""
        self.actors.spawn(fn, key, refused)

    async def call(self, key: str, fn: Callable[[], Awaitable[T]], *, breaks_cycles: bool = False) -> T:
        """Run `fn` on instance `key`'s actor and return its value or raise its error (`Actors.call`)."""
        return await self.actors.call(key, fn, breaks_cycles=breaks_cycles)

    def refuse_self_call(self, key: str) -> None:
        """Raise `InvalidStateError` if the calling task runs (or waits for) a handler of `key`, or
        its wait for `key` would close a cycle of waits (`Actors.refuse_self_call`)."""
        self.actors.refuse_self_call(key)

    def enter(self, key: str) -> int | None:
        """Run one handler of `key` in the calling task if the instance is free (`Actors.enter`)."""
        return self.actors.enter(key)

    def within(self, key: str) -> bool:
        """Whether the calling task runs (or waits for) a handler of `key` (`Actors.within`)."""
        return self.actors.within(key)

    def leave(self, key: str) -> None:
        """End what `enter` began (`Actors.leave`)."""
        self.actors.leave(key)

    def untouched(self, key: str) -> bool:
        """Whether nothing of this engine works on `key` now: the engine is not closing, no
        actor has work for it, and its lease is neither held nor being given up (so a write
        may take it, `took_lease`)."""
        actors = self.actors
        return not actors.closing and not actors.has_work(key) and self.leases.free(key)

    def took_lease(self, key: str) -> None:
        """A write of this engine's took `key`'s lease while `untouched(key)` (`InstanceLeases.took`)."""
        self.leases.took(key)

    def lease_serial(self, key: str) -> int | None:
        """The serial number of this engine's lease on `key`, ``None`` if not held (`InstanceLeases.serial`)."""
        return self.leases.serial(key)

    def register(self, prefix: str, target: AlarmTarget) -> None:
        """Route alarms whose key starts with `prefix` (``"continuous:name:"``) to `target`."""
        self.alarms.register(prefix, target)

    def poke(self, fire_at: int) -> None:
        """Something set an alarm at `fire_at` outside a commit: wake the sleeper if that is earlier than its wait."""
        self.alarms.poke(fire_at)

    def done_with(self, alarm: Alarm) -> None:
        """The handler of a claimed alarm finished (committed or gave up)."""
        self.alarms.done_with(alarm)

    def target_for(self, key: str) -> AlarmTarget | None:
        """The handler that instance `key`'s alarms go to (its definition's), if registered."""
        return self.alarms.target_for(key)

    async def alarm_loop(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED, *, timer: Timer | None = None
    ) -> None:
        """Claim and dispatch due alarms forever, and run `timer`'s work when due; the engine's single alarm task."""
        await self.alarms.loop(task_status=task_status, timer=timer)

    async def lease_keeper(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew the leases of instances whose handlers run long; the engine's one renewal task."""
        await self.leases.keeper(task_status=task_status)

    async def lease_releaser(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Give up the leases of instances that went idle, in batches, a moment after."""
        await self.leases.releaser(task_status=task_status)

    @property
    def idle(self) -> bool:
        """Whether no actor has work queued or running and no claimed work awaits its hand-off."""
        return self.actors.idle and not self.env.handoffs.count

    async def wait_idle(self) -> None:
        """Return once no actor has work queued or running and no claimed work awaits its hand-off."""
        handoffs = self.env.handoffs
        while not self.actors.idle or handoffs.count:
            if handoffs.count:
                await handoffs.wait()
            else:
                await self.actors.wait_idle()

    async def close(self, grace_seconds: float) -> None:
        """Stop taking work, let queued handlers finish for up to `grace_seconds`,
        then release the alarms still claimed so a restart fires them at once."""
        self.actors.stop_taking_calls()
        try:
            with trio.move_on_after(grace_seconds):
                await self.wait_idle()
            # Past the grace: cancel what still runs (it commits nothing; its alarm fires
            # again after its lease, or at once after a restart, released below).
            self.alarms.keep_claims()
            await self.actors.cancel_running(max(grace_seconds, 1.0))
        finally:
            self.actors.end_shared()  # whatever happened above: the engine's nursery must be able to close
        await self.leases.release_idle(0)
        await self.alarms.release_claimed()
