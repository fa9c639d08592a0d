"""The alarm sleeper: one task that claims due alarms and hands them to actors.

It claims due alarms in batches (each claim is a lease: an alarm whose
handler never finished fires again after the lease), posts each to its
instance's actor (`djobs._actors`), and sleeps until the earliest alarm is
due or a commit sets an earlier one. There is no task per stored alarm.

Arrows: the sleeper posts to the actors and reads the alarm store and the clock;
kinds register as `AlarmTarget`s without being imported here.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

import trio

from ._actors import Actors
from ._clock import Clock
from ._errors import StorageError
from ._execution import Handoffs
from ._leases import InstanceLeases
from ._printable import printable
from ._wakeup import Wakeup
from .storage import Alarm, AlarmRunStore, AlarmStore, ClaimedAlarm
from .storage._base import writes_inline

_log = logging.getLogger("djobs.engine")


class AlarmTarget(Protocol):
    """What an alarm is dispatched to: a job kind's handler for one definition."""

    async def on_alarm(self, alarm: Alarm) -> None: ...


class Timer(Protocol):
    """Work that the sleeper's task does at due times of its own (the cron jobs): one task
    and one wake-up when it falls due with an alarm, not a second task beside the sleeper."""

    def due_at(self) -> int | None:
        """When it next has work, in epoch ms; ``None`` for never (until it pokes the sleeper)."""
        ...

    async def run_due(self, now: int) -> None:
        """Do the work due at `now` (the clock's reading, with no checkpoint since; then
        `due_at` is later); raises nothing but a cancel."""
        ...


@runtime_checkable
class AlarmBatchTarget(AlarmTarget, Protocol):
    """A target that can also run many claimed alarms at once, their instances' leases and
    rows taken by the claim (`AlarmRunStore.claim_alarm_runs`)."""

    @property
    def takes_batches(self) -> bool:
        """Whether this definition's alarms go to `fire_batch` (else one by one to `on_alarm`)."""
        ...

    async def fire_batch(self, runs: list[ClaimedAlarm], finish: Callable[[Sequence[ClaimedAlarm]], None]) -> None:
        """Run `runs` (each leased, held by this engine) and tell `finish` of each exactly once
        when it is done (of many at once where they end together: one call per batch, not per run).

        It awaits only the storage (its claim's write-back, a bug's commit) and hands anything
        else that would await to a task of its own: on a storage whose engine writes run
        inline (`writes_inline`) it reaches no checkpoint but a cancel-shielded one, so the
        sleeper runs it in its own task without a shield."""
        ...


@runtime_checkable
class AlarmClaimTarget(AlarmTarget, Protocol):
    """A target whose alarms run on their instance's actor with the lease and row their claim
    took (`AlarmRunStore.claim_alarm_runs`): the actor neither takes the lease nor loads the row."""

    async def on_claimed(self, claimed: ClaimedAlarm) -> None:
        """Run `claimed` (leased, held by this engine, its row as the claim read it) as `on_alarm` would."""
        ...


class AlarmSleeper:
    """Claims due alarms of the registered definitions and dispatches them.

    Args:
        storage: Where the alarms are stored.
        clock: The clock alarms are due on.
        actors: Where a claimed alarm's handler runs.
        handoffs: Counts the alarms claimed but not yet posted (`Engine.wait_idle` waits for them).
        wakeup: What the sleeper sleeps on; a commit that sets an earlier alarm pokes it.
        lease_ms: How long a claimed alarm stays hidden before it fires again.
        leases: The engine's instance leases: with a storage that is an `AlarmRunStore`,
            a claim takes the leases of the instances it runs in batches.
        batch: How many alarms one claim takes at most.
        in_flight: The most claimed alarms whose handlers have not finished
            (back-pressure); ``0`` means twice `batch`.
    """

    def __init__(
        self,
        storage: AlarmStore,
        clock: Clock,
        actors: Actors,
        handoffs: Handoffs,
        wakeup: Wakeup,
        *,
        lease_ms: int,
        leases: InstanceLeases | None = None,
        batch: int = 200,
        in_flight: int = 0,
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._actors = actors
        self._handoffs = handoffs
        self._wakeup = wakeup
        self.lease_ms = lease_ms
        self._batch = batch
        #: The most claimed alarms whose handlers have not finished (back-pressure):
        #: past it the sleeper claims no more until half of them are done.
        self._in_flight = in_flight or 2 * batch
        self._room = trio.Event()
        self._room.set()
        self._targets: dict[str, AlarmTarget] = {}
        #: `_targets`' keys, sorted (`prefixes`), kept as they are registered: read per wake-up.
        self._prefixes: list[str] = []
        #: The targets whose alarms run in batches (`AlarmBatchTarget`), by key prefix.
        self._batched: dict[str, AlarmBatchTarget] = {}
        #: The other targets that take their alarms' leases and rows from the claim (`AlarmClaimTarget`).
        self._handed: dict[str, AlarmClaimTarget] = {}
        self._leases = leases
        self._runs = storage if isinstance(storage, AlarmRunStore) and leases is not None else None
        #: The claim and the write-back of a batch run to their end without a checkpoint
        #: (`writes_inline`): the leases a claim takes get their renewal scheduled only if
        #: still held once the batch is done (a batch run here gives them up before then).
        self._inline = self._runs is not None and writes_inline(storage)
        #: The Trio time of the claim whose leases' renewal waits for `_renew_deferred`.
        self._deferred_since: float | None = None
        #: The claimed alarms whose handlers have not finished, by id (back-pressure). An alarm
        #: set again is rewritten in place, keeping its id, and one whose handler outlives its
        #: alarm lease is claimed again meanwhile (queued behind it on the instance's actor): a
        #: second claim of one id counts once here, and the first handler's end un-counts it,
        #: so back-pressure admits one more alarm while it waits. That is all the id keying
        #: changes: whether a claim fires is decided by its handler comparing the whole alarm
        #: (id, fire_at, purpose) with the stored one (`Alarm`), never by this set, so a claim
        #: of a rewritten alarm is neither skipped nor run twice; and a close releases rows by
        #: id, which only makes a row due at its own fire time, always safe.
        self._claimed: set[int] = set()
        #: The earliest lease end (epoch ms) of the claims made since `_claimed` was last empty:
        #: the sleeper can sleep until a claimed alarm's lease end only at that time or later.
        self._leases_end_from = 0
        #: Set by `keep_claims` once the close starts cancelling handlers: from then on an
        #: alarm whose handler ends is remembered in `_cut_off`, to be released on close.
        self._keeping = False
        self._cut_off: set[int] = set()

    def register(self, prefix: str, target: AlarmTarget) -> None:
        """Route alarms whose key starts with `prefix` (``"continuous:name:"``) to `target`."""
        self._targets[prefix] = target
        self._prefixes = sorted(self._targets)
        if isinstance(target, AlarmBatchTarget) and target.takes_batches:
            self._batched[prefix] = target
        elif isinstance(target, AlarmClaimTarget):
            self._handed[prefix] = target

    @property
    def prefixes(self) -> list[str]:
        """The key prefixes of the registered definitions, sorted: the alarms this sleeper claims."""
        return list(self._prefixes)

    def poke(self, fire_at: int) -> None:
        """A commit set an alarm at `fire_at`: wake the sleeper if that is earlier than its wait."""
        self._wakeup.poke(fire_at)

    def keep_claims(self) -> None:
        """The close is about to cancel the handlers still running: their alarms stay to be
        released by `release_claimed`, so a restart fires them at once, not after the alarm lease."""
        self._keeping = True

    def done_with(self, alarm: Alarm) -> None:
        """The handler of a claimed alarm finished (committed or gave up)."""
        self._done((alarm.id,))

    def _done(self, ids: Sequence[int]) -> None:
        """The handlers of the claimed alarms `ids` finished."""
        if self._keeping:
            # Cancelled by the close (or finished as it came): releasing an alarm is always
            # safe, it only makes the row's due time its fire time again.
            self._cut_off.update(ids)
        self._claimed.difference_update(ids)
        if len(self._claimed) <= self._in_flight // 2:
            self._room.set()
        if not self._claimed:
            # The sleeper may sleep until a claimed alarm's lease ends, which its commit
            # has moved since: it reads its next due time again now, not at that lease's end.
            # A sleep that ends before any of those ends is for a due alarm: left alone.
            self._wakeup.recheck(self._leases_end_from)

    def target_for(self, key: str) -> AlarmTarget | None:
        """The handler that instance `key`'s alarms go to (its definition's), if registered."""
        kind, _, rest = key.partition(":")
        name, _, _ = rest.partition(":")
        return self._targets.get(f"{kind}:{name}:")

    def _dispatch(self, alarm: Alarm) -> None:
        target = self.target_for(alarm.key)
        if target is None:
            # A job removed from the code: leave the alarm leased; it is looked
            # at again after the lease, when the job may be back.
            _log.warning("alarm for %s has no registered job; it will be retried after its lease", printable(alarm.key))
            return
        self._claimed.add(alarm.id)

        async def fire() -> None:
            try:
                await target.on_alarm(alarm)
            finally:
                self.done_with(alarm)

        # Told if the handler cannot run at all (its lease could not be taken): the
        # alarm fires again after its lease, and no longer counts as in flight here.
        self._actors.post(alarm.key, fire, lambda _error: self.done_with(alarm))

    async def _claim_runs(
        self, runs: AlarmRunStore, now: int, limit: int, mine: list[str], since: float | None = None
    ) -> tuple[Callable[[], Awaitable[None]], list[ClaimedAlarm]] | None:
        """Claim due alarms with their instances' leases and rows, and run those in batches
        (or, for an `AlarmClaimTarget`, first on the instance's actor).

        An instance something of this engine works on already (an actor, a lease being
        given up), or one whose lease another engine holds, goes to its actor as before.
        Returns the batch's run (with the batch) to run in the sleeper's own task, when the claim took every due
        alarm (fewer than `limit`) into one batch: no further claim waits for it to end, so
        no task of its own is started for it; ``None`` when every batch runs in a task.
        `since`: a Trio time no later than the claim's (the sleep's deadline it woke at), for
        the leases' deferred renewal; ``None`` to read the clock.
        """
        actors, leases = self._actors, self._leases
        assert leases is not None
        held: dict[str, AlarmBatchTarget] = {}
        handed: dict[str, AlarmClaimTarget] = {}
        batched, to_hand = self._batched, self._handed

        if len(batched) == 1 and not to_hand:
            # One definition's alarms run in batches, none on claimed actors (the usual case):
            # whether a key is that definition's is one prefix test.
            [(only, only_target)] = batched.items()
            hold = actors.hold

            def runs_here(key: str) -> bool:
                # In the claim's transaction, with no await: from here no actor starts for `key`.
                if key.startswith(only) and hold(key):
                    held[key] = only_target
                    return True
                return False
        else:
            runs_here = functools.partial(self._runs_here, held, handed)

        try:
            claimed = await runs.claim_alarm_runs(
                now, self.lease_ms, limit, mine, leases.owner, leases.lease_ms, runs_here
            )
        except BaseException:
            for key in [*held, *handed]:
                actors.leave(key)
            raise
        # The claim's bookkeeping once per batch: the leases it took, the alarms now in flight.
        keys: list[str] = []
        in_flight = self._claimed
        for one in claimed:
            if one.leased:
                alarm = one.alarm
                keys.append(alarm.key)
                in_flight.add(alarm.id)
        if keys:
            renew = not self._inline
            if not renew and self._deferred_since is None:
                # The claim's time, or just before it: a renewal a little early is harmless.
                self._deferred_since = trio.current_time() if since is None else since
            leases.took_all(keys, renew=renew)  # taken while `Actors.hold` held them
        batches: dict[int, tuple[AlarmBatchTarget, list[ClaimedAlarm]]] = {}
        if len(batched) == 1 and not to_hand and len(keys) == len(claimed):
            # Every alarm claimed was leased for the one batch target (the usual case).
            if claimed:
                [target] = batched.values()
                batches[id(target)] = (target, claimed)
        else:
            for one in claimed:
                key = one.alarm.key
                if not one.leased:
                    self._dispatch(one.alarm)
                    if key in held or key in handed:
                        actors.leave(key)  # its actor (posted to above) waits for the other engine's lease
                    continue
                if key in handed:
                    # Told if the handler cannot run at all: as `_dispatch`'s.
                    on_error = self._not_run(one.alarm)
                    actors.hand_over(key, functools.partial(self._run_claimed, handed[key], one), on_error)
                    continue
                target = held[key]  # leased: runs_here held it
                batches.setdefault(id(target), (target, []))[1].append(one)
        if len(batches) == 1 and len(claimed) < limit:
            [(target, batch)] = batches.values()
            return functools.partial(target.fire_batch, batch, self._finish), batch
        for target, batch in batches.values():
            actors.spawn(functools.partial(target.fire_batch, batch, self._finish), refused=self._refused(batch))
        return None

    def _refused(self, batch: list[ClaimedAlarm]) -> Callable[[], None]:
        """What a batch that never ran (the close cut it off while it waited for a slot) ends:
        its holds and claims, as its run would have (its alarms are released by the close)."""
        return lambda: self._finish(batch)

    def _renew_deferred(self) -> None:
        """The leases the last claim took without scheduling their renewal (`_inline`): the
        keeper renews those still held a third of a lease after the claim, as if scheduled then."""
        since = self._deferred_since
        if since is not None:
            self._deferred_since = None
            assert self._leases is not None
            self._leases.renew_from(since)

    def _not_run(self, alarm: Alarm) -> Callable[[StorageError], None]:
        return lambda _error: self.done_with(alarm)

    async def _run_claimed(self, target: AlarmClaimTarget, claimed: ClaimedAlarm) -> None:
        try:
            await target.on_claimed(claimed)
        finally:
            self.done_with(claimed.alarm)

    def _runs_here(self, held: dict[str, AlarmBatchTarget], handed: dict[str, AlarmClaimTarget], key: str) -> bool:
        """Whether claimed `key` runs in a batch (into `held`) or on a claimed actor (into
        `handed`), held from now on; in the claim's transaction, with no await: from here
        no actor starts for `key`."""
        # Its definition's batch target, by the key's ``kind:name:`` prefix (as `target_for`).
        kind, _, rest = key.partition(":")
        prefix = f"{kind}:{rest.partition(':')[0]}:"
        target = self._batched.get(prefix)
        if target is not None:
            if self._actors.hold(key):
                held[key] = target
                return True
            return False
        other = self._handed.get(prefix)
        if other is not None and self._actors.hold(key):
            handed[key] = other
            return True
        return False

    def _finish(self, runs: Sequence[ClaimedAlarm]) -> None:
        """The batch runs `runs` are done (written back, or given up): end their holds."""
        if not runs:
            return  # every run of the batch went on in a task of its own, which tells its own end
        ids: list[int] = []
        keys: list[str] = []
        for claimed in runs:
            alarm = claimed.alarm
            ids.append(alarm.id)
            keys.append(alarm.key)
        self._done(ids)
        self._actors.leave_held(keys)

    async def loop(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED, *, timer: Timer | None = None
    ) -> None:
        """Claim and dispatch due alarms forever, and run `timer`'s work when it is due; the
        engine's single alarm task."""
        storage, clock, handoffs = self._storage, self._clock, self._handoffs
        task_status.started()
        reached = False  # the last sleep lasted until the alarm due time it was given
        owed = False  # no checkpoint since the last claim (a storage write need not be one)
        next_at: int | None = None
        #: After a batch ran in this task, the reading it was claimed at: the next pass reads
        #: the clock only if something was due by then (see below).
        ran_at: int | None = None
        while True:
            try:
                # Read first: a wake-up with nothing due costs one read, not a write transaction.
                # Only the alarms of definitions registered here: a partial engine (a
                # script, a rolling deploy) never holds alarms it cannot fire.
                mine = self._prefixes  # not copied: only `register` replaces it
                woke_at = None
                if not reached:
                    next_at = await storage.next_alarm_at(mine)
                # Once per pass, after its read: no await from here to the sleep but the work's.
                due = None if timer is None else timer.due_at()
                if reached:
                    # Slept until the earliest due alarm it read: it is due now (one that was
                    # cleared or moved since is not claimed, and the next pass reads again).
                    # The sleep's own reading, if it took one: no await since.
                    reached = False
                    woke, woke_at = self._wakeup.woke_ms, self._wakeup.woke_at
                    now = next_at = clock.now_ms() if woke is None else woke
                elif ran_at is not None and (next_at is None or next_at > ran_at) and (due is None or due > ran_at):
                    # Nothing due by the last claim's reading: this pass sleeps, on absolute
                    # due times, so it needs no reading (what fell due since ends the sleep
                    # at once, and is claimed at the reading taken as it ends).
                    now = ran_at
                else:
                    now = clock.now_ms()
                ran_at = None
                ran = due is not None and due <= now
                if ran:
                    assert timer is not None
                    await timer.run_due(now)  # raises nothing but a cancel
                    if not self._inline:
                        # Its writes let time pass. (With inline ones, the reading taken before
                        # still tells what is due below: an alarm due since waits a pass, no more.)
                        now = clock.now_ms()
                if next_at is not None and next_at <= now:
                    if ran and self._inline:
                        # The timer's work ran in this task (a synchronous cron body, for as
                        # long as it took): the claim's leases start now, not at the reading
                        # taken before it, or they would end early by the body's run time.
                        now = clock.now_ms()
                    free = self._in_flight - len(self._claimed)
                    if free <= 0:
                        # Back-pressure: as many handlers in flight as allowed; claim more
                        # once half of them are done, not an actor per due alarm at once.
                        self._room = trio.Event()
                        await self._wait_for_room(timer)
                        continue
                    if owed:
                        # Due again at once: a checkpoint before the next claim, so a run of due
                        # alarms never starves the other tasks (the spawned ones start).
                        owed = False
                        await trio.lowlevel.checkpoint()
                    if not self._claimed:
                        self._leases_end_from = now + self.lease_ms  # where this claim hides its alarms
                    # Busy until dispatched: the claim hides the alarms before their actors exist
                    # (unless it runs inline, never letting another task see it half done).
                    runs = self._runs if self._batched or self._handed else None
                    counted = runs is None or not self._inline
                    if counted:
                        handoffs.begin()
                    last = None
                    try:
                        if runs is not None:
                            last = await self._claim_runs(runs, now, min(self._batch, free), mine, woke_at)
                        else:
                            alarms = await storage.claim_alarms(now, self.lease_ms, min(self._batch, free), mine)
                            for alarm in alarms:
                                self._dispatch(alarm)
                    finally:
                        if counted:
                            handoffs.end()
                    if last is None:
                        self._renew_deferred()
                        # The actors and tasks just started run at the next sleep, which is a
                        # checkpoint, or at the next claim's: not at a pass of their own first.
                        owed = True
                    else:
                        try:
                            # A batch of synchronous bodies whose writes run inline never
                            # checkpoints but shielded (a bug's write): no shield to open for it.
                            run, batch = last
                            if not await self._actors.run_here(run, checkpoints=not self._inline):
                                # No concurrency slot free now: it waits for one in a task.
                                self._actors.spawn(run, refused=self._refused(batch))
                        finally:
                            self._renew_deferred()
                        owed = True  # the next sleep is the checkpoint, or the next claim takes one
                        ran_at = now
                    continue
            except StorageError as exc:
                _log.error("alarm sleeper: %s; trying again in 1 s", printable(exc.message))
                await trio.sleep(1)
                continue
            wake_at = next_at
            if ran and timer is not None:
                due = timer.due_at()  # moved on by the work done (else as read, with no await since)
            if due is not None and (wake_at is None or due < wake_at):
                wake_at = due
            reached = await self._wakeup.sleep_until(wake_at) and wake_at == next_at
            owed = False

    async def _wait_for_room(self, timer: Timer | None) -> None:
        """Wait until half the claimed handlers are done, or until `timer` is due: its work
        (a cron fire) is not held up by alarms in flight."""
        due = None if timer is None else timer.due_at()
        if due is None:
            await self._room.wait()
            return
        # A clock layer's time passes at Trio's pace: woken early, the loop waits again.
        with trio.move_on_after(max(0, due - self._clock.now_ms()) / 1000):
            await self._room.wait()

    async def release_claimed(self) -> None:
        """Make the alarms still claimed due again at their fire time (a clean close: a restart fires them at once)."""
        claimed = self._claimed | self._cut_off
        if claimed:
            try:
                await self._storage.release_alarms(sorted(claimed))
            except StorageError as exc:
                _log.warning("could not release claimed alarms on close: %s", printable(exc.message))
