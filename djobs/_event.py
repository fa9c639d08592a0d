"""Typed event names: an event's name bound to the type of its payload.

``order_created = djobs.Event("order.created", OrderCreated)`` is what
``Job.make(..., on=order_created)`` listens to and what
``client.send_event(order_created, payload)`` sends: the payload's type is
then checked by mypy (a payload of another type is an error: "Cannot infer
value of type parameter"), as the seed platform's typed event map checks it
in TypeScript.
Sending by the plain name still works, with the payload checked at run time
only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar, final

import msgspec

from ._codec import check_storable
from ._errors import ValidationError, safe_repr
from ._input import SEPARATOR, text_problem

__all__ = ["Event", "event_name"]

P = TypeVar("P")

#: The longest event name, as `Job.make(..., on=...)` has always allowed.
MAX_NAME = 200


def name_problem(name: object) -> str | None:
    """Why `name` is not a valid event name, or ``None``: a non-empty string of at most
    `MAX_NAME` characters, without a NUL or a lone surrogate (text no storage holds,
    `djobs._input.text_problem`), the same rule as every other name djobs takes."""
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        return f"an event name must be a non-empty string of at most {MAX_NAME} characters, got {safe_repr(name):.80}"
    if SEPARATOR in name:
        return f"event name {name!r:.80} contains the unit separator (\\x1f), which djobs keeps to separate keys"
    problem = text_problem(name)
    return None if problem is None else f"event name {name!r:.80} {problem}"


def _check_name(name: object) -> str:
    problem = name_problem(name)
    if problem is not None:
        raise ValidationError(problem)
    assert isinstance(name, str)
    return name


@final
@dataclass(frozen=True, slots=True)
class Event(Generic[P]):
    """An event name and the type of its payload.

    Attributes:
        name: The name listeners are registered under (``"order.created"``).
        payload: The ``msgspec.Struct`` type every payload of this event has.

    Raises:
        ValidationError: An empty or over-long name, or a payload that is not
            a ``msgspec.Struct`` type.

    Examples:
        >>> import msgspec
        >>> class OrderCreated(msgspec.Struct):
        ...     order_id: str
        >>> Event("order.created", OrderCreated)
        Event('order.created', OrderCreated)
    """

    name: str
    payload: type[P]

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not (isinstance(self.payload, type) and issubclass(self.payload, msgspec.Struct)):
            raise ValidationError(f"Event {self.name!r}: payload must be a msgspec.Struct type, got {self.payload!r}")
        check_storable(self.payload, f"Event {self.name!r}: payload")

    def __repr__(self) -> str:
        return f"Event({self.name!r}, {self.payload.__qualname__})"


def event_name(event: Event[Any] | str) -> str:
    """The name of `event`, given as an `Event` or as its name.

    Raises:
        ValidationError: Neither an `Event` nor a valid name.
    """
    return event.name if isinstance(event, Event) else _check_name(event)
