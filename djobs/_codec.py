"""Encoding and validating the user's structs (state, events, params, results).

Every value is validated when it is written and when it is read back: a
``msgspec.Struct(...)`` call does not check its field types, so a value is
round-tripped through its JSON form and `msgspec.json.Decoder(type)`, which
does. Encoders and decoders are made once and reused.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from returns.result import Failure, Result, Success

from ._errors import ValidationError

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def _decoder(tp: Any) -> msgspec.json.Decoder[Any]:
    decoder = _decoders.get(tp)
    if decoder is None:
        decoder = _decoders[tp] = msgspec.json.Decoder(tp)
    return decoder


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


def encode(tp: type[T], value: object, *, what: str, exact: bool = False) -> Result[bytes, ValidationError]:
    """Validate `value` as a `tp` and return its JSON encoding.

    Accepts an instance of `tp` or anything ``msgspec.convert`` can turn into
    one (a dict of the fields, or another struct with the fields: an event's
    payload reaches each listener as its own params). With `exact`, an
    instance of another struct is refused, since its JSON might decode as a
    `tp` by ignoring unknown fields and defaulting missing ones: a state
    (``ctx.set_state``, or the state a body returns) must be the job's own
    state type.
    """
    other_struct = isinstance(value, msgspec.Struct) and isinstance(tp, type) and not isinstance(value, tp)
    if exact and other_struct and issubclass(tp, msgspec.Struct):
        return Failure(ValidationError(f"{what} is a {type(value).__name__}, not a {_type_name(tp)}"))
    try:
        raw = _encoder.encode(value)
        _decoder(tp).decode(raw)  # the validation step; also re-checks an instance built unchecked
    except msgspec.ValidationError as exc:
        return Failure(ValidationError(f"{what} does not match {_type_name(tp)}: {exc}"))
    except (TypeError, msgspec.EncodeError, OverflowError, RecursionError) as exc:
        return Failure(ValidationError(f"{what} cannot be stored as {_type_name(tp)}: {exc}"))
    return Success(raw)


def decode(tp: type[T], raw: bytes, *, what: str) -> Result[T, ValidationError]:
    """Decode and validate stored JSON as a `tp`."""
    try:
        return Success(_decoder(tp).decode(raw))
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return Failure(
            ValidationError(
                f"stored {what} no longer matches {_type_name(tp)}: {exc}; "
                "change the struct compatibly (new fields need defaults)"
            )
        )


def validate(tp: type[T], value: object, *, what: str) -> Result[T, ValidationError]:
    """`value` converted to and validated as a `tp` (a fresh, checked instance)."""
    return encode(tp, value, what=what).bind(lambda raw: decode(tp, raw, what=what))
