"""Shielded waits for work a task does for others, without a cancel scope around all of it.

A Debounce writer (`djobs.kinds._debounce`) applies, in its caller's task, the adds
queued behind its own: a cancel of that caller must not stop it (what the others asked
for is done), while the engine's close must, past its grace. A
``trio.CancelScope(shield=True)`` around the whole of it does both, but entering and
leaving one is about 49k instructions under callgrind (some 45 Python calls in Trio),
once for every instance's first add. Yet most of what a writer awaits no cancel can end
anyway: a SQLite write parks its caller until its group commit ends, uninterruptibly. So,
with a storage that says so (``shields_marked_waits = True``, read by
`djobs.storage._base.shields_marked_waits`), the writer marks its task in `SHIELDED`
instead, and only a wait a cancel could end (another connection's write lock, a read
waiting for the open commit, an ``async`` reducer) opens a shielded scope, then and
there (`shielded_wait`), listed in the engine's `Shields` for the close to cancel. While
an awaited reducer runs the task is unmarked: the reducer's own scopes (its code's, the
job's ``timeout``) must still end its storage waits.

Arrows: this module needs Trio and the errors only; the actors, the storages and the
kinds use it.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import trio

from ._errors import CLOSED_MESSAGE, StorageError

__all__ = ["SHIELDED", "Shields", "shielded_wait"]

T = TypeVar("T")


class Shields:
    """The shielded scopes one engine's close cancels past its grace, beside its actors' handlers.

    `scopes`: those open now, filled and emptied by subscript (no call); `writers`: how many
    tasks work marked in `SHIELDED` now (the close's grace waits for a marked writer only
    while it runs a round of an entered instance, `Actors.enter`, as for a handler; not
    while it takes the lease or waits for another connection's write lock); `cut_off`: the
    close cancelled them (`cancel`), and every shielded wait that begins from then on is
    cancelled at once.
    """

    __slots__ = ("cut_off", "scopes", "writers")

    def __init__(self) -> None:
        self.scopes: dict[trio.CancelScope, None] = {}
        self.writers = 0
        self.cut_off = False

    def __bool__(self) -> bool:
        """Whether anything is shielded now: an open scope, or a marked task at work."""
        return bool(self.scopes) or self.writers > 0

    def cancel(self) -> None:
        """Cancel every scope open now and every one opened from now on."""
        self.cut_off = True
        for scope in list(self.scopes):
            scope.cancel()


#: The tasks marked as doing work no cancel of theirs may stop, each with the `Shields` its
#: waits are listed in. A storage with ``shields_marked_waits`` consults it only where it is
#: about to wait in a way a cancel could end.
SHIELDED: dict[trio.lowlevel.Task, Shields] = {}


async def shielded_wait(shields: Shields, waiting: Awaitable[T]) -> T:
    """Await `waiting` under a shielded scope listed in `shields` while it runs.

    Raises:
        StorageError: The engine's close cancelled the scope (or had cancelled them all
            before this wait began, `Shields.cut_off`): what `waiting` was for is not done.
    """
    scope = trio.CancelScope(shield=True)
    if shields.cut_off:
        scope.cancel()
    scopes = shields.scopes
    scopes[scope] = None
    try:
        with scope:
            return await waiting
    finally:
        del scopes[scope]
    raise StorageError(CLOSED_MESSAGE)  # only once the scope caught the close's cancel
