"""Instance leases: only the engine holding an instance's lease runs its handlers.

An engine takes an instance's lease (a row in storage, owned by the
engine's id) before its actor runs the first handler, keeps it while the
actor has work and for a moment after (so a busy instance does not pay for
it per call), renews the leases of long handlers in one task, and gives idle
ones up in batches. Two engine processes on one database therefore never run
one instance at once; a lease whose owner died ends after its length, or at
once when the owner was a process sharing this process table that has exited
(`dead_local_owner`).

The same holds for every lease an engine holds under its id: `free_exited`
frees those of this host's exited processes (instance leases, the claims on
their instances' alarms, running jobs' leases), when an engine opens and on
its worker's reclaim timer.

Arrows: this module needs storage and the clock; the actors
(`djobs._actors`) use it, never the other way.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
from collections.abc import Iterable

import trio

from ._clock import Clock
from ._errors import StorageError
from ._ids import namespaces_token, proc_stat
from ._printable import printable
from ._trap import RUN_CONTEXT
from ._wakeup import Wakeup
from .storage import InstanceStore, LeaseFreer

_log = logging.getLogger("djobs.engine")

#: How long an instance lease lasts without renewal (``open_engine(instance_lease=...)``).
DEFAULT_INSTANCE_LEASE = "30 seconds"


def dead_local_owner(owner: str) -> bool:
    """Whether lease owner `owner` (an engine id, ``host:pid:token:random``) is a process that shares
    this process's process table and has exited, so that its leases may be freed at once.

    ``True`` only when all of these hold (Linux): the host name is ours; the token
    (`djobs._ids.process_token`) names our boot and our PID and time namespaces;
    and the pid is gone (``os.kill(pid, 0)`` finds no such process), or is a zombie
    (killed, not yet reaped: ``Z`` in ``/proc/<pid>/stat``, no thread of it left), or
    started at another time than the token says (the pid was reused). Processes that
    share a host name but not the process table (containers with ``--network host``
    or ``--uts=host``, Kubernetes ``hostNetwork``, any other PID namespace) have
    another token, so their leases are never freed by a process that cannot see them.

    Any doubt answers ``False`` and the lease is left to end after its length: an id
    of another form (one without a token, from an older djobs or a process without
    /proc), another host, boot or namespace, an unreadable /proc, Windows. On macOS
    (no /proc, no PID namespaces) an id without a token is judged by host name and
    ``os.kill`` alone, as before: a zombie or reused pid then looks alive (the lease
    ends after its length), and two Macs sharing a host name and a database would
    mislead it.
    """
    host = socket.gethostname()
    if not owner.startswith(host + ":") or sys.platform == "win32":
        return False
    parts = owner[len(host) + 1 :].split(":")
    pid_text = parts[0]
    if not pid_text.isdigit() or not 0 < int(pid_text) < 1 << 31:
        return False
    pid = int(pid_text)
    if len(parts) == 2:  # ``host:pid:random``: no token
        return sys.platform == "darwin" and pid != os.getpid() and _gone(pid)
    if len(parts) != 3:
        return False
    namespaces, _, start_text = parts[1].partition("-")
    ours = namespaces_token()
    if ours is None or namespaces != ours or not start_text.isdigit():
        return False  # another boot or PID namespace, or no /proc of ours: cannot tell
    if _gone(pid):
        return True
    try:
        stat = proc_stat(pid)
    except FileNotFoundError:  # exited since (or hidden from us: ask again)
        return _gone(pid)
    if stat is None:
        return False
    state, start = stat
    if start != int(start_text):
        return True  # the pid now names another process: the holder has exited
    return state in ("Z", "X") and _no_threads_left(pid)


def _gone(pid: int) -> bool:
    """Whether no process `pid` exists (``os.kill(pid, 0)``, which sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (a pid we may not signal), or we cannot tell
    return False


def _no_threads_left(pid: int) -> bool:
    """Whether zombie `pid` has no thread still running (a main thread that exited alone shows ``Z``)."""
    try:
        return os.listdir(f"/proc/{pid}/task") in ([], [str(pid)])
    except FileNotFoundError:
        return _gone(pid)
    except OSError:
        return False


async def free_exited(storage: object, clock: Clock) -> bool:
    """Free at once every lease held by a process of this host that has exited (`dead_local_owner`).

    The owners come from the storage (`LeaseFreer.lease_owners`: instance leases and
    running jobs' leases named after this host); each one found dead has all its leases
    freed in one transaction (`LeaseFreer.free_leases`): instance leases, the claims on
    those instances' alarms (a due Debounce flush, a workflow's guard: due at once, not
    one ``alarm_lease`` later), running jobs' leases (reclaimed at the worker's next look).
    A storage that is not a `LeaseFreer` leaves them to end after their length. A
    `StorageError` is logged (they end after their length, or are freed next time).

    Returns:
        Whether anything was freed (alarms may be due now: the caller wakes the sleeper).
    """
    if not isinstance(storage, LeaseFreer):
        return False
    try:
        owners = [owner for owner in await storage.lease_owners(socket.gethostname()) if dead_local_owner(owner)]
        if not owners:
            return False
        freed = await storage.free_leases(owners, clock.now_ms())
    except StorageError as exc:
        _log.warning("could not free the leases of exited processes of this host: %s", printable(exc.message))
        return False
    if freed:
        _log.warning("freed %d leases held by %s, processes of this host that have exited", freed, ", ".join(owners))
    return freed > 0


class InstanceLeases:
    """The instance leases one engine holds, takes, renews and gives up.

    Args:
        storage: The instance store the leases are kept in.
        clock: The clock lease ends are read on.
        owner: The engine's id (from the ids layer), the owner of every lease taken here.
        lease_ms: How long a lease lasts without renewal.
        alarms: The alarm sleeper's wake-up, poked when freeing an exited owner's leases made
            the alarms it had claimed due.
    """

    def __init__(
        self, storage: InstanceStore, clock: Clock, owner: str, lease_ms: int, alarms: Wakeup | None = None
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._alarms = alarms
        self.owner = owner
        self.lease_ms = lease_ms
        #: The leases held, each with the serial number of its taking: a lease given up
        #: (or lost) and taken again has a new one, so a copy of an instance's state kept
        #: under the old lease is known to be stale (`serial`).
        self._held: dict[str, int] = {}
        self._serials = 0
        self._idle: dict[str, float] = {}
        self._leases_idle = trio.Event()
        self._releasing: dict[str, trio.Event] = {}
        #: How long (Trio seconds) an idle lease is kept before it is given up.
        self.linger = 0.05
        #: The keeper's sleep: its deadline is the next renewal, never while no lease is held
        #: (set and cleared without waking the keeper).
        self._renewal: trio.CancelScope | None = None

    def lost(self, key: str) -> None:
        """A check-in found `key`'s lease held by another engine: take it afresh next time."""
        self._held.pop(key, None)

    def gave_up(self, keys: Iterable[str]) -> None:
        """A write of this engine's gave the leases of `keys` up with it (a batch's write-back,
        `AlarmRunStore.commit_checkins`): no longer held, nothing left to release or renew."""
        held, idle = self._held, self._idle
        for key in keys:
            held.pop(key, None)
            idle.pop(key, None)
        if not held:
            self._none_held()

    def _none_held(self) -> None:
        renewal = self._renewal
        if renewal is not None and renewal.deadline != math.inf:
            renewal.deadline = math.inf  # nothing left to renew: the keeper need not wake for it

    def serial(self, key: str) -> int | None:
        """The serial number of this engine's taking of `key`'s lease, or ``None`` if it does not hold it.

        While the number stays the same, no other engine has held the lease in
        between (as far as this engine knows: a lease lost to expiry shows at the
        next fenced check-in, `lost`). A lease being given up counts as not held.
        """
        if key in self._releasing:
            return None
        return self._held.get(key)

    def releasing(self, key: str) -> bool:
        """Whether this engine is giving `key`'s lease up now."""
        return key in self._releasing

    def free(self, key: str) -> bool:
        """Whether this engine neither holds `key`'s lease nor is giving it up now."""
        return key not in self._held and key not in self._releasing

    def took(self, key: str, *, renew: bool = True) -> None:
        """A write of this engine's took `key`'s lease itself (`InstanceCreator`): hold it from now on.

        Call only while `free(key)` held when the write began, and before any
        actor of `key` could have taken the lease. With ``renew=False`` the keeper's
        wake-up is left to the caller's `renew_from`, before its task next checkpoints.
        """
        self._serials += 1
        self._held[key] = self._serials
        if renew:
            renewal = self._renewal
            # `renew_from(now)`, reading the clock only when the keeper has no renewal due yet.
            if renewal is not None and renewal.deadline == math.inf:
                renewal.deadline = RUN_CONTEXT.runner.current_time() + self.lease_ms / 3000

    def renew_from(self, since: float) -> None:
        """Leases were taken at Trio time `since`: if any is held, the keeper renews a third of
        a lease after it (unless it wakes sooner already). A caller that took leases with
        ``took(renew=False)`` and gave them up before any checkpoint has nothing to schedule."""
        if self._held:
            renewal = self._renewal
            if renewal is not None and renewal.deadline == math.inf:
                renewal.deadline = since + self.lease_ms / 3000  # renew a third of a lease on

    def took_all(self, keys: Iterable[str], *, renew: bool = True) -> None:
        """A write of this engine's took the leases of `keys` (a batch's claim, each key held
        by `Actors.hold`): hold each from now on, as `took` (`renew` too), unless held already."""
        held, releasing = self._held, self._releasing
        serials = self._serials
        for key in keys:
            if key in releasing or key not in held:  # `serial(key) is None`
                serials += 1
                held[key] = serials
        if serials != self._serials:
            self._serials = serials
            if renew:
                self.renew_from(trio.current_time())

    def keep(self, key: str) -> bool:
        """`key`'s lease is wanted for work held outside an actor (`Actors.hold`): keep it (as
        `busy`) and return ``True``, unless this engine is giving it up now (``False``)."""
        if key in self._releasing:
            return False
        self._idle.pop(key, None)
        return True

    def busy(self, key: str) -> None:
        """`key`'s lease is in use again (a handler runs in its caller's task): keep it."""
        self._idle.pop(key, None)

    def went_idle(self, key: str) -> None:
        """The actor of `key` has no more work: give its lease up after `linger`, unless work comes back."""
        if key not in self._held:
            return  # given up already (`gave_up`, `lost`): nothing to release
        self._idle[key] = RUN_CONTEXT.runner.current_time()  # `trio.current_time()`, a call fewer
        self._leases_idle.set()

    def went_idle_all(self, keys: Iterable[str]) -> None:
        """`went_idle` for each of `keys` (the work a batch held is done)."""
        held, idle = self._held, self._idle
        now: float | None = None
        for key in keys:
            if key in held:
                if now is None:
                    now = trio.current_time()
                idle[key] = now
        if now is not None:
            self._leases_idle.set()

    async def take(self, key: str) -> None:
        """Hold `key`'s lease, waiting while another engine holds it; raises `StorageError`."""
        releasing = self._releasing.get(key)
        if releasing is not None:
            await releasing.wait()  # our own release of it is in flight; take it afresh after
        if key in self._held:
            self._idle.pop(key, None)
            return
        storage, clock = self._storage, self._clock
        delay = 0.005
        tries = 0
        while not await storage.acquire_instance_lease(key, self.owner, clock.now_ms(), self.lease_ms):
            # Another process runs this instance now; its lease ends when it is done or dead.
            if tries % 8 == 0:
                await self._free_if_dead(key, logged=tries > 0)
            tries += 1
            await trio.sleep(delay)  # even after freeing a dead owner's lease: never a spin
            delay = min(delay * 2, 0.25)
        if tries:
            _log.info("took the lease of %s after waiting for another engine's", printable(key))
        self.took(key)

    async def _free_if_dead(self, key: str, *, logged: bool) -> bool:
        """Free `key`'s lease if its holder is a dead process on this host; else log the wait (once)."""
        holder = await self._storage.instance_lease_holder(key, self._clock.now_ms())
        if holder is None:
            return True  # released meanwhile: take it
        owner, until = holder
        if dead_local_owner(owner):
            _log.warning(
                "the lease of %s is held by %s, a process of this host that has exited; freeing it",
                printable(key),
                printable(owner),
            )
            storage = self._storage
            if isinstance(storage, LeaseFreer):  # all of its leases (`free_exited`), not this one alone
                now = self._clock.now_ms()
                if await storage.free_leases([owner], now) and self._alarms is not None:
                    self._alarms.poke(now)  # the alarms it had claimed are due
            else:
                await storage.release_instance_leases([key], owner)
            return True
        if not logged:
            wait = max(0, until - self._clock.now_ms()) / 1000
            _log.info(
                "waiting for the lease of %s, held by %s for up to %.1f s more", printable(key), printable(owner), wait
            )
        return False

    async def release_idle(self, older_than: float) -> None:
        """Give up the leases idle for at least `older_than` Trio seconds, in one storage call."""
        now = trio.current_time()
        # Compared as `releaser` sleeps (since + linger), so the sleep's end always finds them.
        keys = [k for k, idle_since in self._idle.items() if idle_since + older_than <= now]
        if not keys:
            return
        done = trio.Event()
        for k in keys:
            del self._idle[k]
            self._held.pop(k, None)
            self._releasing[k] = done
        try:
            await self._storage.release_instance_leases(keys, self.owner)
        except StorageError as exc:  # they expire by themselves
            _log.warning("could not release %d instance leases: %s", len(keys), printable(exc.message))
        finally:
            for k in keys:
                del self._releasing[k]
            done.set()
        if not self._held:
            self._none_held()
        if not self._idle:
            self._leases_idle = trio.Event()

    async def keeper(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew the leases of instances whose handlers run long; the engine's one renewal task."""
        task_status.started()
        while True:
            # A third of a lease on while leases are held; no deadline (and so no wake-up for an
            # idle engine) while none is: `took` and `release_idle` move it without waking us.
            deadline = trio.current_time() + self.lease_ms / 3000 if self._held else math.inf
            with trio.CancelScope(deadline=deadline) as scope:
                self._renewal = scope
                await trio.sleep_forever()
            self._renewal = None
            if self._held:
                now = self._clock.now_ms()
                try:
                    await self._storage.renew_instance_leases(sorted(self._held), self.owner, now + self.lease_ms, now)
                except StorageError as exc:
                    _log.warning("could not renew instance leases: %s", printable(exc.message))

    async def releaser(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Give up the leases of instances that went idle, in batches, a moment after.

        Each lease is given up between `linger` and twice `linger` after it went idle: a
        release gives up every lease idle for `linger` by then, and the next comes no sooner
        than `linger` after it. Instances going idle one after another (an alarm due every
        millisecond, each on its own instance) cost a write per `linger`, not one each.
        """
        task_status.started()
        last = -math.inf
        while True:
            await self._leases_idle.wait()
            if not self._idle:  # taken back into use meanwhile
                self._leases_idle = trio.Event()
                continue
            # Until the first idle lease has lingered its time, and a `linger` past the last release.
            last = max(min(self._idle.values()), last) + self.linger
            await trio.sleep_until(last)
            await self.release_idle(self.linger)
