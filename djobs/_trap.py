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

These are Trio's own objects, which its public functions are made of (Trio
0.27 to 0.35, the range ``pyproject.toml`` allows); ``tests/test_trap.py``
parks and wakes through them.
"""

from __future__ import annotations

from outcome import Value
from trio._core._run import GLOBAL_RUN_CONTEXT
from trio._core._traps import WaitTaskRescheduled

__all__ = ["RUN_CONTEXT", "WOKEN", "WaitTaskRescheduled"]

#: Trio's per-thread run context: ``.runner`` (its ``trio_token``, its ``reschedule``) and
#: ``.task`` (``trio.lowlevel.current_task()``) inside a run; reading either outside one raises
#: ``AttributeError``.
RUN_CONTEXT = GLOBAL_RUN_CONTEXT

#: The outcome every wake-up of a parked add sends: never unwrapped, so one serves all.
WOKEN: Value[None] = Value(None)
