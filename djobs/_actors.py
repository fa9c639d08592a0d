"""Instance actors: one Trio task per active instance, running its handlers one at a time.

An actor runs one instance's handlers in arrival order (client calls and
alarms alike), like a Durable Object. It takes the instance's lease
(`djobs._leases`) before the first handler and exits as soon as its queue is
empty, so memory grows with active instances, not stored ones. A client call
waits for its handler, but a cancelled caller does not cancel a handler
already queued: what was asked for is done.

Arrows: actors use the leases; the alarm sleeper (`djobs._alarms`) and the
kinds post to actors; actors import neither.
"""

from __future__ import annotations

import contextvars
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TypeVar

import trio

from ._errors import CLOSED_MESSAGE, InvalidStateError, StorageError, describe
from ._leases import InstanceLeases
from ._printable import printable
from ._shield import Shields
from .tracking._base import CALLER_CONTEXT

T = TypeVar("T")

Handler = Callable[[], Awaitable[None]]
OnError = Callable[[StorageError], None]
Message = tuple[Handler, OnError | None]
_log = logging.getLogger("djobs.engine")
#: What a call queued on an actor behind a handler the close cut off is told (it never ran).
NOT_STARTED_MESSAGE = "the engine closed before the call started: it was not applied"

_STATE_ADVICE = "Return the new state or use ctx.set_state instead of the client, or call a different instance"
#: What a handler that called a verb on its own instance should do instead, by kind (the context's own calls).
_SELF_ADVICE = {
    "task": "Use ctx.set_state / ctx.schedule instead of the client, or call a different instance",
    "workflow": (
        "A workflow cannot be its own child nor signal or cancel itself: give ctx.child another id, "
        "or return (or raise) to end the workflow"
    ),
}
_SELF_NAMES = {"workflow": "workflow", "task": "task"}
#: What the handlers of a wait cycle (`Actors.cycle`) should do instead.
_CYCLE_ADVICE = (
    "Nothing was changed by this call, and the other handlers go on. Make the call without waiting "
    "for it (from a one-off job the handler enqueues: ctx.client.job(...).now(...)), or let calls "
    "between these instances go one way only"
)


def describe_instance(key: str) -> str:
    """Instance `key` (``kind:name:id``, a tenant's id after ``\x1f``) as a person reads it."""
    kind, name, instance = key.split(":", 2)
    instance = instance.rpartition("\x1f")[2]
    return f"{_SELF_NAMES.get(kind, kind + ' job')} {name!r} instance {instance!r}"


def _own_refusal(key: str) -> InvalidStateError:
    """What a verb on instance `key` gets from a handler of `key` or from one `key` waits for."""
    return InvalidStateError(
        f"a verb on {describe_instance(key)} was called from "
        "a handler of that instance, or from one it is waiting for; it would wait for itself forever. "
        f"{_SELF_ADVICE.get(key.partition(':')[0], _STATE_ADVICE)}"
    )


#: A concurrency slot (`Actors._free_slot`): slots are counted, so one object stands for each.
_SLOT = object()

#: The concurrency slot of the handler the current task runs (or a child task of it): ``[held,
#: waiting, retaking, ended]``, one cell its child tasks share, so a handler that waits for many
#: instances at once (a nursery of sends) lends its one slot once (`Actors.lend_slot`). ``None``
#: where the running work holds no slot (a handler `enter` lets run in its caller's task).
_SLOT_CELL: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("djobs_slot_cell", default=None)

#: The instances whose handlers the current task is running, or waiting for
#: through `Actors.call` (a handler that calls another instance's verb). A call
#: to one of them would wait for itself: it fails at once instead.
_RUNNING: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("djobs_running", default=frozenset())
#: The same variable, for a caller that runs user code as a handler in a context it made itself
#: (a batch-fired Continuous run: `context_for` without its two calls).
RUNNING_KEYS = _RUNNING
#: Of `_RUNNING`'s instances, those whose handlers wait for the current task through `call`
#: (set only while `call`'s handler runs): the others are the instances the current task
#: runs itself, which its own waits hold up (`Actors.waiting`).
_CALLERS: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("djobs_callers", default=frozenset())


class Actors:
    """The actors of one engine's instances.

    Args:
        nursery: Where actors run (the engine's nursery).
        leases: The engine's instance leases: an actor holds its instance's.
        max_concurrency: How many handlers may run at once, over all instances.
    """

    def __init__(self, nursery: trio.Nursery, leases: InstanceLeases, max_concurrency: int) -> None:
        self._nursery = nursery
        self._leases = leases
        #: Each active instance's queue of work (a plain deque: one task reads it, `post` appends).
        self._actors: dict[str, deque[Message]] = {}
        #: Concurrency slots free now, and the tasks waiting for one (`_acquire`), whom `_release`
        #: serves first. Counted here, not by a `trio.CapacityLimiter`: a slot holds no borrower's
        #: identity, and a count asks no property of the limiter per take and per give-back.
        self._free = max_concurrency
        self._slot_waiters = trio.lowlevel.ParkingLot()
        #: What `wait_idle` waits on, made only when a task waits: no actor and no held instance
        #: (`idle`) is read off the two dicts, so taking and leaving an instance touches no event.
        self._idle_waiter: trio.Event | None = None
        self._closing = False
        #: The scopes of the handlers running now (shielded; `close` cancels them after the grace).
        self._handler_scopes: set[trio.CancelScope] = set()
        #: The shielded scopes of work run in its callers' tasks outside `enter`'s bookkeeping (a
        #: Debounce caller applying adds, `djobs._shield`): `cancel_running` cancels them with the
        #: handlers. A marked task is waited for (`wait_idle`) only while it runs a round of an
        #: instance it entered (`enter`), not while it takes a lease or waits for a write lock.
        self.shields = Shields()
        #: Whether `cancel_running` ran: past the grace, the close cancelled what still ran. Work
        #: queued behind it does not start (`_refuse_queued`): the close ends within its grace.
        self.cut_off = False
        #: The instances whose handler runs in its caller's task now (`enter`); work
        #: posted to one of them waits, its actor started only at `leave`.
        self._inline: dict[str, contextvars.Token[frozenset[str]] | None] = {}
        self._waiting: dict[str, deque[Message]] = {}
        #: Where actors run (`run`): a nursery inside one shielded scope, so a handler needs no
        #: shielded scope of its own (entering and leaving one is about 45 Python calls in Trio);
        #: ``None`` before `run` starts and once `cancel_running` cancelled that scope: then actors
        #: start in the engine's nursery, each handler under a shielded scope of its own.
        self._shared: trio.Nursery | None = None
        self._shield = trio.CancelScope(shield=True)
        #: Handlers running in the shared nursery (without a scope of their own).
        self._running = 0
        #: Actors of instances whose lease is held here, waiting for a concurrency slot without a
        #: task yet (`_start`); a slot given back (`_release`) starts the first of them.
        self._backlog: deque[tuple[str, deque[Message]]] = deque()
        #: The wait-for graph of this engine's instances: for each instance whose handler (or
        #: the task running it) waits now for other instances' actors, those instances, once
        #: per wait (`waiting`). A call that would close a cycle is refused (`cycle`). Empty
        #: while no handler waits for another instance: a call then costs one lookup.
        self._waits: dict[str, list[str]] = {}
        #: The same graph, read-only for the kinds (a Debounce ``add`` from a handler looks a key up).
        self.waits: Mapping[str, list[str]] = self._waits

    @property
    def active(self) -> int:
        """How many instances have an actor right now."""
        return len(self._actors)

    @property
    def idle(self) -> bool:
        """Whether no actor has work queued or running."""
        return not self._actors and not self._inline

    async def wait_idle(self) -> None:
        """Return once no actor has work queued or running (a checkpoint if none has now)."""
        if not self._actors and not self._inline:
            await trio.lowlevel.checkpoint()
            return
        waiter = self._idle_waiter
        if waiter is None:
            waiter = self._idle_waiter = trio.Event()
        await waiter.wait()

    def _went_idle(self) -> None:
        """No actor has work nor is any instance held any longer: wake the tasks in `wait_idle`
        (called only while one waits)."""
        waiter = self._idle_waiter
        assert waiter is not None
        self._idle_waiter = None
        waiter.set()

    def post(self, key: str, handler: Handler, on_error: OnError | None = None) -> None:
        """Queue `handler` on the actor of instance `key`, starting the actor if needed.

        `on_error` is told if the handler cannot run at all (the instance's
        lease could not be taken because storage failed).
        """
        queue = self._actors.get(key)
        if queue is None:
            queue = self._actors[key] = deque()
            if key in self._inline:
                self._waiting[key] = queue  # after the handler running in its caller's task (`leave`)
            else:
                self._start(key, queue)
        queue.append((handler, on_error))

    def _start(self, key: str, queue: deque[Message]) -> None:
        """Start the actor of `key`. When this engine holds `key`'s lease (the actor takes it
        without waiting), a concurrency slot is taken for its first handler now, or, with none
        free, it waits in the backlog without a task of its own until `_release` starts it:
        no task is started only to wait on the limiter (a Trio task step fewer per handler).
        """
        if self._leases.serial(key) is None:
            self._launch(key, queue, None)
            return
        self._leases.busy(key)  # not given up while it waits
        slot = self._free_slot()
        if slot is None:
            self._backlog.append((key, queue))
            return
        self._launch(key, queue, slot)

    def _launch(self, key: str, queue: deque[Message], slot: object | None) -> None:
        """Start the task of `key`'s actor: in the shared nursery while it is open, else in the engine's."""
        shared = self._shared
        if shared is not None:
            shared.start_soon(self._actor, key, queue, slot, False)
        else:
            self._nursery.start_soon(self._actor, key, queue, slot, True)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the shared nursery of actors open, shielded from a cancel of the engine's scope,
        until `cancel_running` cancels it (the engine's close always calls it)."""
        with self._shield:
            async with trio.open_nursery() as nursery:
                self._shared = nursery
                try:
                    task_status.started()
                    await trio.sleep_forever()
                finally:
                    self._shared = None

    def _free_slot(self) -> object | None:
        """A concurrency slot taken now if one is free and no task waits for one first (no trip
        through the scheduler), else ``None``."""
        if self._free <= 0 or self._slot_waiters:
            return None
        self._free -= 1
        return _SLOT

    async def _acquire(self) -> object:
        """Take a concurrency slot, waiting for one only when none is free."""
        slot = self._free_slot()
        if slot is None:
            # `_release` hands its slot to the first waiter; a cancel ends the wait with none taken.
            await self._slot_waiters.park()
            slot = _SLOT
        return slot

    def _release(self, slot: object) -> None:
        """Give a concurrency slot back (to the first task waiting for one, if any); start the
        backlog's actors while slots are free."""
        if self._slot_waiters:
            self._slot_waiters.unpark()
        else:
            self._free += 1
        backlog = self._backlog
        while backlog and (free := self._free_slot()) is not None:
            key, queue = backlog.popleft()
            self._launch(key, queue, free)

    @property
    def closing(self) -> bool:
        """Whether the engine is closing: `call` refuses new calls."""
        return self._closing

    def has_work(self, key: str) -> bool:
        """Whether instance `key` has an actor, or a handler running in its caller's task (`enter`)."""
        return key in self._actors or key in self._inline

    def within(self, key: str) -> bool:
        """Whether the calling task runs a handler of `key`, or waits for one that does (`call` refuses it)."""
        return key in _RUNNING.get()

    #: The instances the calling task runs a handler of, or waits for one of: ``key in
    #: running_keys()`` is `within` without a Python call (a Debounce ``add`` asks it per event).
    running_keys: Callable[[], frozenset[str]] = _RUNNING.get

    def enter(self, key: str) -> int | None:
        """Run one handler of instance `key` in the calling task, if the instance is free now.

        Free means: this engine holds `key`'s lease, no actor has work for `key`
        and no other task runs one of its handlers in this way. Then `key` is
        taken (work posted to it waits until `leave`) and the lease's serial
        number (`InstanceLeases.serial`) is returned; otherwise ``None``, and the
        caller goes through `call`. Saves a task switch per call for an
        instance that is busy with one caller at a time. The caller must call
        `leave` once done, and must not be cancelled in between (shield it).
        """
        if self._closing or key in self._actors or key in self._inline:
            return None
        serial = self._leases.serial(key)
        if serial is None:
            return None
        running = _RUNNING.get()
        if key in running:
            return None  # a handler of `key` calling its own instance: `call` refuses it
        self._leases.busy(key)
        self._inline[key] = _RUNNING.set(running | {key})
        return serial

    def hold(self, key: str) -> bool:
        """Take instance `key` for work run outside its actor (a batch of alarms), if nothing of
        this engine works on it now: no actor has work for it, no other task holds it, the
        engine is not closing and its lease is not being given up. Then work posted to `key`
        waits until `leave`; the caller takes the lease (or holds it already) and records it
        (`InstanceLeases.took_all`).
        Returns whether `key` was taken. Unlike `enter`, marks no task as running `key`.
        """
        if self._closing or key in self._actors or key in self._inline or not self._leases.keep(key):
            return False
        self._inline[key] = None
        return True

    def hand_over(self, key: str, handler: Handler, on_error: OnError | None = None) -> None:
        """End what `hold` began by running `handler` on `key`'s actor before anything posted
        to `key` meanwhile: it sees the instance as the holder left it. The lease must be held
        (`InstanceLeases.took_all`), so the actor does not take it; `on_error` as for `post`."""
        queue = self._waiting.get(key)
        if queue is None:
            queue = self._actors[key] = self._waiting[key] = deque()
        queue.appendleft((handler, on_error))
        self.leave(key)

    def spawn(self, fn: Handler, key: str | None = None, refused: Callable[[], None] | None = None) -> None:
        """Run `fn` in a task of its own, as a handler runs: under the concurrency limit and
        shielded (`close` cancels it after the grace); with `key`, as a handler of `key`
        (its calls to `key` fail at once, as `call` says). Past the grace (`cut_off`) `fn`
        does not start, waiting for a slot or not: `refused` is called instead, for `fn`'s
        own cleanup (the holds and claims it would have ended)."""
        if self.cut_off:
            if refused is not None:
                refused()
            return
        self._nursery.start_soon(self._shielded, fn, key, refused)

    async def run_here(self, fn: Handler, *, checkpoints: bool = True) -> bool:
        """Run `fn` in the calling task as `spawn` would run it in a task of its own (shielded,
        under the concurrency limit, cancelled by `close` after the grace, its bug logged), if a
        concurrency slot is free now; returns whether it ran (``False``: nothing was done).
        Saves the task's start and end for work its caller would only wait for anyway.

        ``checkpoints=False`` says `fn` reaches no checkpoint but cancel-shielded ones (a
        batch of synchronous bodies on a storage whose writes run inline): no cancel can
        reach it, so it runs without the shielded scope, which would change nothing."""
        slot = self._free_slot()
        if slot is None:
            return False
        cell, held = self.holding_slot()
        if not checkpoints:
            try:
                await fn()
            except Exception:
                _log.exception("bug: work run outside an actor raised; the engine continues")
            finally:
                self.slot_released(cell, held)
                self._release(slot)
            return True
        scope = trio.CancelScope(shield=True)
        self._handler_scopes.add(scope)
        try:
            with scope:
                await fn()
        except Exception:
            _log.exception("bug: work run outside an actor raised; the engine continues")
        finally:
            self._handler_scopes.discard(scope)
            self.slot_released(cell, held)
            self._release(slot)
        return True

    def context_for(self, key: str) -> contextvars.Context:
        """A copy of the calling task's context in which user code runs as a handler of `key`."""
        context = contextvars.copy_context()
        context.run(_RUNNING.set, frozenset((key,)))
        return context

    async def _shielded(self, fn: Handler, key: str | None, refused: Callable[[], None] | None) -> None:
        if key is not None:
            _RUNNING.set(frozenset((key,)))  # this task's own context
        scope = trio.CancelScope(shield=True)
        self._handler_scopes.add(scope)
        started = False
        try:
            with scope:
                slot = await self._acquire()
                if self.cut_off:  # a slot given back by a handler the close cut off: too late
                    self._release(slot)
                else:
                    started = True
                    cell, held = self.holding_slot()
                    try:
                        await fn()
                    finally:
                        self.slot_released(cell, held)
                        self._release(slot)
        except Exception:
            _log.exception("bug: work run outside an actor raised; the engine continues")
        finally:
            self._handler_scopes.discard(scope)
            if not started and refused is not None:
                refused()  # cut off while it waited for a slot: `fn` never ran

    def leave(self, key: str) -> None:
        """The handler `enter` let run in its caller's task (or the work `hold` took) is done:
        start the work posted meanwhile."""
        token = self._inline.pop(key)
        if token is not None:
            _RUNNING.reset(token)
        queue = self._waiting.pop(key, None)
        if queue is not None:
            self._start(key, queue)
            return
        self._leases.went_idle(key)
        if self._idle_waiter is not None and not self._actors and not self._inline:
            self._went_idle()

    def leave_held(self, keys: Iterable[str]) -> None:
        """`leave` for each of `keys`, all taken by `hold` (a batch of alarms is done)."""
        inline, waiting = self._inline, self._waiting
        idle: list[str] = []
        for key in keys:
            del inline[key]  # `hold` stored no context token
            queue = waiting.pop(key, None)
            if queue is None:
                idle.append(key)
            else:
                self._start(key, queue)
        if idle:
            self._leases.went_idle_all(idle)
        if self._idle_waiter is not None and not self._actors and not inline:
            self._went_idle()

    def refuse_self_call(self, key: str) -> None:
        """Raise what `call` raises for a verb on instance `key` that could only wait for the
        calling task (`refusal`); a verb checks this before anything it does ahead of `call` (a
        terminate's stop of the running handler), so the refused call changes nothing.

        Raises:
            InvalidStateError: The calling task is running a handler of `key`, or one it waits
                for, or `key` waits (through other instances' handlers) for the calling task.
        """
        refused = self.refusal(key)
        if refused is not None:
            raise refused

    def refusal(self, key: str) -> InvalidStateError | None:
        """Why a wait of the calling task for instance `key`'s actor would never end, or ``None``:
        the task runs a handler of `key` or waits for one that does, or its wait would close a
        cycle of waits (`cycle`). One lookup when the task runs no handler, or `key` waits for
        no other instance."""
        running = _RUNNING.get()
        if key in running:
            return _own_refusal(key)
        if not running or key not in self._waits:
            return None
        path = self.cycle(key, running)
        if path is None:
            return None
        chain = " waits for ".join(describe_instance(k) for k in path)
        return InvalidStateError(
            f"a verb on {describe_instance(key)} was called from a handler that instance is waiting for "
            f"({chain}, whose handler made this call): they would wait for each other forever. {_CYCLE_ADVICE}"
        )

    @staticmethod
    def _refuse_own(key: str, running: frozenset[str]) -> None:
        if key in running:
            raise _own_refusal(key)

    def cycle(self, key: str, running: frozenset[str]) -> list[str] | None:
        """The instances from `key` to one of `running` along the wait-for graph, if a wait for
        `key` by a task that runs (or waits for) the instances in `running` would close a cycle:
        `key`'s handler waits for another instance's, ..., which waits for one in `running`.
        ``None`` when it would not. A search through the waits of now, none of whom moves
        meanwhile (no await)."""
        waits = self._waits
        came_from: dict[str, str | None] = {key: None}
        todo = [key]
        while todo:
            at = todo.pop()
            for target in waits.get(at, ()):
                if target in came_from:
                    continue
                came_from[target] = at
                if target in running:
                    path = [target]
                    step = came_from[target]
                    while step is not None:
                        path.append(step)
                        step = came_from[step]
                    path.reverse()
                    return path
                todo.append(target)
        return None

    def waiting(self, key: str) -> list[str] | None:
        """Record that the calling task's handler waits now for instance `key`'s actor (after
        `refuse_self_call` let it): the instances the calling task runs itself wait for `key`
        in the wait-for graph. Returns what to give `done_waiting` once the wait ends (done or
        cancelled), ``None`` for a task that runs no handler (nothing waits on it)."""
        running = _RUNNING.get()
        if not running:
            return None
        own = running - _CALLERS.get() or running
        waits = self._waits
        for k in own:
            targets = waits.get(k)
            if targets is None:
                waits[k] = [key]
            else:
                targets.append(key)
        return [key, *own]

    def lend_slot(self) -> list[int] | None:
        """Give the calling handler's concurrency slot back while it waits for another instance
        (it runs nothing meanwhile); it takes one again (`take_slot`, shielded) once the wait ends.
        Once per handler, however many of its tasks wait at once; nothing where the running work
        holds no slot. Returns what `take_slot` is given."""
        cell = _SLOT_CELL.get()
        if cell is None or cell[3]:
            return None
        cell[1] += 1
        if cell[0]:
            cell[0] = 0
            self._release(_SLOT)
        return cell

    async def take_slot(self, cell: list[int] | None) -> None:
        """End a wait `lend_slot` lent for (`cell`, as it returned it): the last of a handler's
        waits takes a slot again, waiting for one if none is free (call it shielded)."""
        if cell is None:
            return
        cell[1] -= 1
        if cell[1] or cell[0] or cell[2]:
            return  # other waits go on, or the slot is held or being taken again
        cell[2] = 1
        try:
            await self._acquire()
        finally:
            cell[2] = 0
        cell[0] = 1
        if cell[1]:  # a wait began meanwhile: lent again at once
            cell[0] = 0
            self._release(_SLOT)

    @staticmethod
    def holding_slot() -> tuple[list[int], contextvars.Token[list[int] | None]]:
        """Mark the calling task as running a handler that holds a slot (`_SLOT_CELL`)."""
        cell = [1, 0, 0, 0]
        return cell, _SLOT_CELL.set(cell)

    @staticmethod
    def slot_released(cell: list[int], token: contextvars.Token[list[int] | None]) -> None:
        """The handler `holding_slot` marked has ended: its cell lends nothing more."""
        cell[3] = 1
        _SLOT_CELL.reset(token)

    def done_waiting(self, edges: list[str]) -> None:
        """End a wait `waiting` recorded (`edges`, as it returned them)."""
        waits = self._waits
        key = edges[0]
        for k in edges[1:]:
            targets = waits[k]
            targets.remove(key)
            if not targets:
                del waits[k]

    async def call(self, key: str, fn: Callable[[], Awaitable[T]], *, breaks_cycles: bool = False) -> T:
        """Run `fn` on instance `key`'s actor and return its value (or raise its error).

        Raises:
            InvalidStateError: The calling task is running a handler of `key`,
                or waiting for one that is (a job body calling a verb on its
                own instance), or `key`'s handler waits, through other
                instances' handlers, for the calling task (a cycle of waits,
                `cycle`; not with `breaks_cycles`, for a verb that stops
                `key`'s running handler first, ending its wait): the call
                could only wait for itself.
            StorageError: The engine is closing, or the instance's lease could not be taken.
        """
        waiting_for = _RUNNING.get()
        if waiting_for:  # a handler calls: refused if it could only wait for itself (`refusal`)
            if breaks_cycles:
                self._refuse_own(key, waiting_for)
            else:
                refused = self.refusal(key)
                if refused is not None:
                    raise refused
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
            callers = _CALLERS.set(waiting_for) if waiting_for else None
            try:
                box.append(await fn())
            except Exception as exc:
                failure.append(exc)
            finally:
                if callers is not None:
                    _CALLERS.reset(callers)
                _RUNNING.reset(running)
                CALLER_CONTEXT.reset(token)
                done.set()

        def cannot_run(exc: StorageError) -> None:
            failure.append(exc)
            done.set()

        self.post(key, handler, cannot_run)
        if waiting_for:  # a handler waits for `key`: a call to its instances now waits for `key`
            edges = self.waiting(key)
            assert edges is not None
            # And it lends its concurrency slot while it waits (it runs nothing meanwhile): else
            # as many handlers waiting at once as there are slots would wait for ever for
            # instances whose actors need a slot to start.
            lent = self.lend_slot()
            try:
                await done.wait()
            finally:
                self.done_waiting(edges)
                with trio.CancelScope(shield=True):
                    await self.take_slot(lent)
        else:
            await done.wait()
        if failure:
            raise failure[0]
        if not box:
            raise StorageError("the engine closed before the call completed; it may not have been applied")
        return box[0]

    async def _actor(self, key: str, queue: deque[Message], slot: object | None, scoped: bool) -> None:
        # `slot`: a concurrency slot `_start` took for the first handler, or None. `scoped`: each
        # handler runs under a shielded scope of its own (outside the shared nursery); else the
        # actor runs in the shared nursery, and its handlers need no scope of their own.
        # Only the holder of the instance's lease runs its handlers, so two
        # engine processes on one database never run one instance at once.
        if _CALLERS.get():  # inherited from the task that posted (`start_soon` copies its context)
            _CALLERS.set(frozenset())
        try:
            try:
                if slot is None or self._leases.serial(key) is None:  # else `_start` found it held, and kept it
                    await self._leases.take(key)
            except trio.Cancelled:
                if slot is not None:
                    self._release(slot)
                raise
            except Exception as exc:  # a storage failure, or a bug: the queued callers are told, the engine lives
                if slot is not None:
                    self._release(slot)
                error = (
                    exc
                    if isinstance(exc, StorageError)
                    else StorageError(f"could not take the lease: {describe(exc)}", exc)
                )
                self._fail_queued(key, queue, error)
                return
            while queue:
                if slot is None:
                    slot = await self._acquire()
                if self.cut_off:
                    # Past the grace nothing starts: what waited here is told it did not run.
                    self._release(slot)
                    self._refuse_queued(key, queue)
                    return
                handler, _ = queue.popleft()
                running = _RUNNING.set(frozenset((key,)))
                cell, held = self.holding_slot()
                # Shielded: a cancel of the scope around the engine does not kill a running
                # handler; `close` lets it finish for the grace period, then cancels its scope
                # (the shared nursery's, or its own).
                try:
                    if scoped:
                        scope = trio.CancelScope(shield=True)
                        self._handler_scopes.add(scope)
                        try:
                            with scope:
                                await handler()
                        finally:
                            self._handler_scopes.discard(scope)
                    else:
                        self._running += 1
                        try:
                            await handler()
                        finally:
                            self._running -= 1
                except Exception:
                    _log.exception("bug: a handler for %s raised; the instance's actor continues", printable(key))
                finally:
                    self.slot_released(cell, held)
                    _RUNNING.reset(running)
                    self._release(slot)
                    slot = None
        except trio.Cancelled:
            if scoped:
                raise
            # `cancel_running` cancelled the shared scope: the running handler (if any) ended as
            # its own scope's cancel ended it before, and the rest of the queue goes on as it did
            # then, in a task of the engine's nursery, each handler under a scope of its own.
            # (In the actor's own frame, not a wrapper's: one coroutine fewer for each handler's
            # awaits to pass through.)
            self._nursery.start_soon(self._actor, key, queue, None, True)
            return
        # Nothing queued: evict. No await lies between the check of the queue and the
        # delete, so a post cannot slip in and be lost. The lease is kept a moment, so a
        # busy instance does not pay for it per call; the lease releaser gives idle leases
        # up in batches.
        del self._actors[key]
        self._leases.went_idle(key)
        if self._idle_waiter is not None and not self._actors and not self._inline:
            self._went_idle()

    def _refuse_queued(self, key: str, queue: deque[Message]) -> None:
        """End `key`'s actor without running what is queued on it (the close cut off the
        handlers past its grace): each is told, as for a lease that could not be taken, and
        the lease, held but idle now, is given up with the others by the close."""
        self._fail_queued(key, queue, StorageError(NOT_STARTED_MESSAGE), log=False)
        self._leases.went_idle(key)

    def _fail_queued(self, key: str, queue: deque[Message], exc: StorageError, *, log: bool = True) -> None:
        del self._actors[key]
        if self._idle_waiter is not None and not self._actors and not self._inline:
            self._went_idle()
        messages = list(queue)
        queue.clear()
        if log:
            _log.error("could not take the lease of %s: %s", printable(key), printable(exc.message))
        for _, on_error in messages:
            if on_error is not None:
                on_error(exc)

    def stop_taking_calls(self) -> None:
        """Refuse new `call`s (the engine is closing); posted work still runs."""
        self._closing = True

    def end_shared(self) -> None:
        """Cancel the shared nursery's scope (`run` returns once its actors are done); actors
        started from now on run in the engine's nursery. `cancel_running` does it too."""
        self._shared = None
        self._shield.cancel()

    async def cancel_running(self, wait_seconds: float) -> None:
        """Cancel the handlers still running (past the grace) and wait up to `wait_seconds` for them to end.

        Also closes the shared nursery (`run`): actors started from now on run in the engine's."""
        self.cut_off = True
        running = self._running or self._handler_scopes or self.shields
        self.end_shared()
        self.shields.cancel()  # and every shielded wait a writer begins from now on
        if not running:
            return
        # They commit nothing; their alarms fire again after the lease, or at once after a restart.
        for scope in list(self._handler_scopes):
            scope.cancel()
        with trio.move_on_after(wait_seconds):
            await self.wait_idle()
