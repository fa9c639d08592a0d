"""Trio's park and wake-up, in its own pieces, for a path that parks its caller once per call.

``trio.lowlevel.wait_task_rescheduled`` parks the calling task and
``trio.lowlevel.reschedule`` wakes it: together six Python calls beside the
switch itself (the ``wait_task_rescheduled`` coroutine, the generator under it
that yields Trio's trap, the trap's ``__init__``, the generated ``reschedule``
wrapper, the ``Value(None)`` it sends, its ``unwrap``), and two more frames
resumed at the wake-up. A Debounce ``add`` parks once per event, so its
generator yields the trap itself, and its round wakes each caller with the
runner's own ``reschedule`` and one shared `WOKEN` (which the woken generator
does not unwrap: any other outcome, a cancel's ``Error``, it unwraps). The
runner's ``reschedule`` has no ``KeyboardInterrupt`` protection of its own (the
public wrapper gives it): its caller must be protected
(``trio.lowlevel.enable_ki_protection``), as the Debounce round's ``_answer`` is.

Two more steps, for the same path: a Debounce handler's queued adds park on one trap
of its own (`shared_trap`), whose abort function each sets just before it yields
it: an ``add`` parks only in its engine's Trio run (one from another run is refused
first), and Trio reads the trap's abort function in the very step the task yields
it, before any other task runs; a trap made per park (and its ``__dict__``) cost
about 2.7k instructions. And a round wakes its callers with the steps of the
runner's ``reschedule`` inline (`wakes_inline`), about 1.5k instructions fewer a
wake-up than the call (its ``assert``s, its default outcome, and a Python-level
``in`` of the run's instruments per call since Trio 0.30 made them a ``UserDict``).

These are Trio's own objects, which its public functions are made of (Trio
0.27 to 0.35, the range ``pyproject.toml`` allows); ``tests/test_trap.py``
parks and wakes through them.
"""

from __future__ import annotations

from typing import Any

from outcome import Value
from trio._core._run import GLOBAL_RUN_CONTEXT, Runner
from trio._core._traps import WaitTaskRescheduled

__all__ = ["RUN_CONTEXT", "WOKEN", "WaitTaskRescheduled", "checkpoint_due", "shared_trap", "wakes_inline"]

#: Trio's per-thread run context: ``.runner`` (its ``trio_token``, its ``reschedule``) and
#: ``.task`` (``trio.lowlevel.current_task()``) inside a run; reading either outside one raises
#: ``AttributeError``.
RUN_CONTEXT = GLOBAL_RUN_CONTEXT

#: The outcome every wake-up of a parked add sends: never unwrapped, so one serves all.
WOKEN: Value[None] = Value(None)


def _never_parked(_: object) -> Any:
    raise AssertionError("a shared trap's abort function is set before each park")


def shared_trap() -> tuple[WaitTaskRescheduled, dict[str, Any]]:
    """A trap to yield again and again, and its fields: set ``fields["abort_func"]`` just before
    each yield (the trap is frozen, its ``__dict__`` is not). For the parks of one Trio run only."""
    trap: WaitTaskRescheduled = object.__new__(WaitTaskRescheduled)
    object.__setattr__(trap, "abort_func", _never_parked)
    return trap, trap.__dict__


def wakes_inline(runner: Runner) -> bool:
    """Whether a task parked on Trio's trap may be woken with `runner`'s ``reschedule`` steps
    inline: ``task._next_send_fn = task.coro.send``, ``task._next_send = WOKEN``,
    ``task._abort_func = None``, ``task.custom_sleep_data = None``, ``runner.runq.append(task)``.
    Not when the run has more to do at each: an instrument that hears each task scheduled, or a
    guest run (``trio.lowlevel.start_guest_run``), whose host must be asked for a tick."""
    return not runner.is_guest and "task_scheduled" not in runner.instruments


def checkpoint_due() -> bool:
    """Whether a checkpoint of the calling task would raise now: its cancel scope is cancelled
    (or, in the run's main task, a Ctrl-C is pending). ``trio.lowlevel.checkpoint_if_cancelled``'s
    test, without its coroutine and its ``current_task`` call: a client verb asks it at the start
    of every first await. False outside a Trio run (the verb itself says what is wrong there)."""
    try:
        task = RUN_CONTEXT.task
    except AttributeError:
        return False
    return task._cancel_status.effectively_cancelled or (task is task._runner.main_task and task._runner.ki_pending)
