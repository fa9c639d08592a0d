"""The engine's moving parts: instance actors and the alarm sleeper.

- An *actor* is one task per active instance that runs that instance's
  handlers one at a time, in arrival order (client calls and alarms alike),
  like a Durable Object. It exits as soon as its queue is empty, so memory
  grows with active instances, not stored ones. A client call waits for its
  handler, but a cancelled caller does not cancel a handler already queued:
  what was asked for is done.
- The *alarm sleeper* is one task that claims due alarms in batches (each
  claim is a lease: an alarm whose handler never finished fires again after
  the lease), dispatches them to actors, and sleeps until the earliest alarm
  is due or a commit sets an earlier one. There is no task per stored alarm.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import secrets
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import trio

from ._errors import CLOSED_MESSAGE, InvalidStateError, StorageError
from ._execution import Env
from ._wakeup import Wakeup
from .storage import Alarm
from .tracking._base import CALLER_CONTEXT

T = TypeVar("T")

Handler = Callable[[], Awaitable[None]]
OnError = Callable[[StorageError], None]
Message = tuple[Handler, OnError | None]
_log = logging.getLogger("djobs.engine")

#: The instances whose handlers the current task is running, or waiting for
#: through `Runtime.call` (a handler that calls another instance's verb). A call
#: to one of them would wait for itself: it fails at once instead.
_RUNNING: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("djobs_running", default=frozenset())


class AlarmTarget(Protocol):
    """What an alarm is dispatched to: a job kind's handler for one definition."""

    async def on_alarm(self, alarm: Alarm) -> None: ...


def engine_id() -> str:
    """A new engine's id, ``host:pid:random`` (8 hex digits): the owner of every lease it holds.

    Readable, so ``djobs status`` and the lease columns say which machine and
    process hold a lease; the random part tells apart engines of one process.
    """
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


#: How long an instance lease lasts without renewal (``open_engine(instance_lease=...)``).
DEFAULT_INSTANCE_LEASE = "30 seconds"


def dead_local_owner(owner: str) -> bool:
    """Whether lease owner `owner` (``host:pid:random``, `engine_id`) is a process of this host that no longer exists.

    Asked with ``os.kill(pid, 0)``, which sends nothing: ``ProcessLookupError``
    means no such process. Any doubt (another host, this very process, a pid
    we may not signal, an id of another form, Windows, where signal 0 is not
    a probe) answers ``False``: the lease is then left to expire. It assumes
    processes that share a host name share a process table (containers each
    get their own host name by default).
    """
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or sys.platform == "win32":
        return False
    host, pid_text, _ = parts
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class Runtime:
    """Actors, the alarm sleeper and the claimed-alarm bookkeeping of one engine."""

    def __init__(
        self,
        env: Env,
        nursery: trio.Nursery,
        *,
        max_concurrency: int,
        alarm_lease_ms: int,
        alarm_poll_ms: int | None,
        instance_lease_ms: int = 30_000,
        alarm_batch: int = 200,
    ) -> None:
        self.env = env
        self._nursery = nursery
        self._actors: dict[str, trio.MemorySendChannel[Message]] = {}
        #: This engine's id (`engine_id`): its instance leases and its worker's job leases are held under it.
        self.owner = engine_id()
        self._instance_lease_ms = instance_lease_ms
        self._held: set[str] = set()
        self._leases_held = trio.Event()
        self._idle_leases: dict[str, float] = {}
        self._leases_idle = trio.Event()
        self._releasing: dict[str, trio.Event] = {}
        self._lease_linger = 0.05
        self._limiter = trio.CapacityLimiter(max_concurrency)
        self._lease_ms = alarm_lease_ms
        self._batch = alarm_batch
        self._targets: dict[str, AlarmTarget] = {}
        self._claimed: set[int] = set()
        self._wakeup = Wakeup(env.clock, alarm_poll_ms)
        self._idle = trio.Event()
        self._idle.set()
        self._closing = False
        #: The scopes of the handlers running now (shielded; `close` cancels them after the grace).
        self._handler_scopes: set[trio.CancelScope] = set()
        #: Whether this engine's alarm sleeper runs (not in a client-only engine).
        self.fires_alarms = False
        env.on_alarm_set = self.poke
        env.lease_owner = self.owner
        env.on_lease_lost = self._held.discard  # take it afresh next time

    @property
    def alarm_lease_ms(self) -> int:
        """How long a claimed alarm stays hidden before it fires again (its handler never finished)."""
        return self._lease_ms

    # -- actors -----------------------------------------------------------------------

    @property
    def active_instances(self) -> int:
        """How many instances have an actor right now."""
        return len(self._actors)

    def post(self, key: str, handler: Handler, on_error: OnError | None = None) -> None:
        """Queue `handler` on the actor of instance `key`, starting the actor if needed.

        `on_error` is told if the handler cannot run at all (the instance's
        lease could not be taken because storage failed).
        """
        send = self._actors.get(key)
        if send is None:
            send, receive = trio.open_memory_channel[Message](math.inf)
            self._actors[key] = send
            if self._idle.is_set():
                self._idle = trio.Event()
            self._nursery.start_soon(self._actor, key, receive)
        send.send_nowait((handler, on_error))

    async def call(self, key: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn` on instance `key`'s actor and return its value (or raise its error).

        Raises:
            InvalidStateError: The calling task is running a handler of `key`,
                or waiting for one that is (a job body calling a verb on its
                own instance): the call could only wait for itself.
            StorageError: The engine is closing, or the instance's lease could not be taken.
        """
        waiting_for = _RUNNING.get()
        if key in waiting_for:
            kind, name, instance = key.split(":", 2)
            instance = instance.rpartition("\x1f")[2]
            raise InvalidStateError(
                f"a handler of {kind} job {name!r} instance {instance!r} called a verb on that same instance; "
                "it would wait for itself forever. Return the new state or use ctx.set_state / ctx.schedule "
                "instead of the client, or call a different instance"
            )
        if self._closing:
            raise StorageError(CLOSED_MESSAGE)
        done = trio.Event()
        box: list[T] = []
        failure: list[BaseException] = []
        # The caller's contextvars (its trace context): a tracker reads them via current_caller_context().
        caller = contextvars.copy_context()

        async def handler() -> None:
            token = CALLER_CONTEXT.set(caller)
            running = _RUNNING.set(waiting_for | {key})
            try:
                box.append(await fn())
            except Exception as exc:
                failure.append(exc)
            finally:
                _RUNNING.reset(running)
                CALLER_CONTEXT.reset(token)
                done.set()

        def cannot_run(exc: StorageError) -> None:
            failure.append(exc)
            done.set()

        self.post(key, handler, cannot_run)
        await done.wait()
        if failure:
            raise failure[0]
        if not box:
            raise StorageError("the engine closed before the call completed; it may not have been applied")
        return box[0]

    async def _actor(self, key: str, receive: trio.MemoryReceiveChannel[Message]) -> None:
        # Only the holder of the instance's lease runs its handlers, so two
        # engine processes on one database never run one instance at once.
        try:
            await self._take_lease(key)
        except Exception as exc:  # a storage failure, or a bug: the queued callers are told, the engine lives
            error = exc if isinstance(exc, StorageError) else StorageError(f"could not take the lease: {exc!r}", exc)
            self._fail_queued(key, receive, error)
            return
        while True:
            try:
                handler, _ = receive.receive_nowait()
            except trio.WouldBlock:
                # Nothing queued: evict. No await lies between this check and
                # the delete, so a post cannot slip in and be lost. The lease is
                # kept a moment, so a busy instance does not pay for it per call;
                # the lease keeper gives idle leases up in batches.
                del self._actors[key]
                self._idle_leases[key] = trio.current_time()
                self._leases_idle.set()
                if not self._actors:
                    self._idle.set()
                return
            async with self._limiter:
                running = _RUNNING.set(frozenset((key,)))
                # Shielded: a cancel of the scope around the engine does not kill a running
                # handler; `close` lets it finish for the grace period, then cancels this scope.
                scope = trio.CancelScope(shield=True)
                self._handler_scopes.add(scope)
                try:
                    with scope:
                        await handler()
                except Exception:
                    _log.exception("bug: a handler for %s raised; the instance's actor continues", key)
                finally:
                    self._handler_scopes.discard(scope)
                    _RUNNING.reset(running)

    def _fail_queued(self, key: str, receive: trio.MemoryReceiveChannel[Message], exc: StorageError) -> None:
        del self._actors[key]
        if not self._actors:
            self._idle.set()
        messages = []
        while True:
            try:
                messages.append(receive.receive_nowait())
            except trio.WouldBlock:
                break
        _log.error("could not take the lease of %s: %s", key, exc.message)
        for _, on_error in messages:
            if on_error is not None:
                on_error(exc)

    async def _take_lease(self, key: str) -> None:
        releasing = self._releasing.get(key)
        if releasing is not None:
            await releasing.wait()  # our own release of it is in flight; take it afresh after
        if key in self._held:
            self._idle_leases.pop(key, None)
            return
        storage, clock = self.env.storage, self.env.clock
        delay = 0.005
        tries = 0
        while not await storage.acquire_instance_lease(key, self.owner, clock.now_ms(), self._instance_lease_ms):
            # Another process runs this instance now; its lease ends when it is done or dead.
            if tries % 8 == 0:
                await self._free_if_dead(key, logged=tries > 0)
            tries += 1
            await trio.sleep(delay)  # even after freeing a dead owner's lease: never a spin
            delay = min(delay * 2, 0.25)
        if tries:
            _log.info("took the lease of %s after waiting for another engine's", key)
        self._held.add(key)
        self._leases_held.set()

    async def _free_if_dead(self, key: str, *, logged: bool) -> bool:
        """Free `key`'s lease if its holder is a dead process on this host; else log the wait (once)."""
        holder = await self.env.storage.instance_lease_holder(key)
        if holder is None:
            return True  # released meanwhile: take it
        owner, until = holder
        if dead_local_owner(owner):
            _log.warning(
                "the lease of %s is held by %s, a process of this host that has exited; freeing it", key, owner
            )
            await self.env.storage.release_instance_leases([key], owner)
            return True
        if not logged:
            wait = max(0, until - self.env.clock.now_ms()) / 1000
            _log.info("waiting for the lease of %s, held by %s for up to %.1f s more", key, owner, wait)
        return False

    async def _release_idle_leases(self, older_than: float) -> None:
        now = trio.current_time()
        keys = [k for k, idle_since in self._idle_leases.items() if now - idle_since >= older_than]
        if not keys:
            return
        done = trio.Event()
        for k in keys:
            del self._idle_leases[k]
            self._held.discard(k)
            self._releasing[k] = done
        try:
            await self.env.storage.release_instance_leases(keys, self.owner)
        except StorageError as exc:  # they expire by themselves
            _log.warning("could not release %d instance leases: %s", len(keys), exc.message)
        finally:
            for k in keys:
                del self._releasing[k]
            done.set()
        if not self._idle_leases:
            self._leases_idle = trio.Event()

    async def lease_keeper(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew the leases of instances whose handlers run long; the engine's one renewal task."""
        task_status.started()
        while True:
            await self._leases_held.wait()
            await trio.sleep(self._instance_lease_ms / 3000)
            if self._held:
                until = self.env.clock.now_ms() + self._instance_lease_ms
                try:
                    await self.env.storage.renew_instance_leases(sorted(self._held), self.owner, until)
                except StorageError as exc:
                    _log.warning("could not renew instance leases: %s", exc.message)
            else:
                self._leases_held = trio.Event()

    async def lease_releaser(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Give up the leases of instances that went idle, in batches, a moment after."""
        task_status.started()
        while True:
            await self._leases_idle.wait()
            await trio.sleep(self._lease_linger)
            await self._release_idle_leases(self._lease_linger)

    @property
    def idle(self) -> bool:
        """Whether no actor has work queued or running and no claimed work awaits its hand-off."""
        return self._idle.is_set() and not self.env.handoffs

    async def wait_idle(self) -> None:
        """Return once no actor has work queued or running and no claimed work awaits its hand-off."""
        while not self._idle.is_set() or self.env.handoffs:
            if self.env.handoffs:
                await self.env.wait_handoffs()
            else:
                await self._idle.wait()

    # -- alarms ----------------------------------------------------------------------

    def register(self, prefix: str, target: AlarmTarget) -> None:
        """Route alarms whose key starts with `prefix` (``"continuous:name:"``) to `target`."""
        self._targets[prefix] = target

    def poke(self, fire_at: int) -> None:
        """A commit set an alarm at `fire_at`: wake the sleeper if that is earlier than its wait."""
        self._wakeup.poke(fire_at)

    def done_with(self, alarm: Alarm) -> None:
        """The handler of a claimed alarm finished (committed or gave up)."""
        self._claimed.discard(alarm.id)

    def target_for(self, key: str) -> AlarmTarget | None:
        """The handler that instance `key`'s alarms go to (its definition's), if registered."""
        return self._target_for(key)

    def _target_for(self, key: str) -> AlarmTarget | None:
        kind, _, rest = key.partition(":")
        name, _, _ = rest.partition(":")
        return self._targets.get(f"{kind}:{name}:")

    def _dispatch(self, alarm: Alarm) -> None:
        target = self._target_for(alarm.key)
        if target is None:
            # A job removed from the code: leave the alarm leased; it is looked
            # at again after the lease, when the job may be back.
            _log.warning("alarm for %s has no registered job; it will be retried after its lease", alarm.key)
            return
        self._claimed.add(alarm.id)

        async def fire() -> None:
            try:
                await target.on_alarm(alarm)
            finally:
                self.done_with(alarm)

        self.post(alarm.key, fire)

    async def alarm_loop(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Claim and dispatch due alarms forever; the engine's single alarm task."""
        storage, clock = self.env.storage, self.env.clock
        task_status.started()
        while True:
            try:
                # Read first: a wake-up with nothing due costs one read, not a write transaction.
                # Only the alarms of definitions registered here: a partial engine (a
                # script, a rolling deploy) never holds alarms it cannot fire.
                mine = sorted(self._targets)
                next_at = await storage.next_alarm_at(mine)
                now = clock.now_ms()
                if next_at is not None and next_at <= now:
                    # Busy until dispatched: the claim hides the alarms before their actors exist.
                    self.env.handoffs += 1
                    try:
                        alarms = await storage.claim_alarms(now, self._lease_ms, self._batch, mine)
                        for alarm in alarms:
                            self._dispatch(alarm)
                    finally:
                        self.env.handed_off()
                    await trio.lowlevel.checkpoint()
                    continue
            except StorageError as exc:
                _log.error("alarm sleeper: %s; trying again in 1 s", exc.message)
                await trio.sleep(1)
                continue
            await self._wakeup.sleep_until(next_at)

    async def close(self, grace_seconds: float) -> None:
        """Stop taking work, let queued handlers finish for up to `grace_seconds`,
        then release the alarms still claimed so a restart fires them at once."""
        self._closing = True
        with trio.move_on_after(grace_seconds):
            await self.wait_idle()
        if self._handler_scopes:
            # Past the grace: cancel what still runs (it commits nothing; its alarm fires
            # again after its lease, or at once after a restart, released below).
            for scope in list(self._handler_scopes):
                scope.cancel()
            with trio.move_on_after(max(grace_seconds, 1.0)):
                await self._idle.wait()
        await self._release_idle_leases(0)
        if self._claimed:
            try:
                await self.env.storage.release_alarms(sorted(self._claimed))
            except StorageError as exc:
                _log.warning("could not release claimed alarms on close: %s", exc.message)
