"""Encoding and validating the user's structs (state, events, params, results).

Every value is validated when it is written and when it is read back: a
``msgspec.Struct(...)`` call does not check its field types, so a value is
round-tripped through its JSON form and `msgspec.json.Decoder(type)`, which
does. Encoders and decoders are made once and reused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from itertools import count, repeat
from typing import Any, ForwardRef, Literal, TypeVar, cast, get_args, get_origin

import msgspec
import msgspec.inspect
from returns.result import Failure, Result, Success

from ._errors import ValidationError, describe
from ._input import DEFAULT_MAX_PAYLOAD_BYTES, strict_type, struct_mismatch

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def _decoder(tp: Any) -> msgspec.json.Decoder[Any]:
    decoder = _decoders.get(tp)
    if decoder is None:
        decoder = _decoders[tp] = msgspec.json.Decoder(tp)
    return decoder


def decoder(tp: Any) -> msgspec.json.Decoder[Any]:
    """`tp`'s JSON decoder, made once per type. Raises `TypeError` if msgspec cannot decode a `tp`."""
    try:
        return _decoder(tp)
    except TypeError:  # an unhashable type is not cached (or msgspec refused it: raised again here)
        return msgspec.json.Decoder(tp)


_strict_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def _strict_decoder(tp: Any) -> msgspec.json.Decoder[Any]:
    decoder = _strict_decoders.get(tp)
    if decoder is None:
        decoder = _strict_decoders[tp] = msgspec.json.Decoder(strict_type(tp))
    return decoder


def storable_problem(tp: Any) -> str | None:
    """Why values of type `tp` cannot be stored as JSON, or ``None`` if they can.

    ``msgspec.json.Decoder(tp)`` accepts any class, leaving one it does not
    know (a ``CustomType``) to a decode hook djobs does not give, so such a
    type would be refused only when its first value is written. This walks
    the type's description (``msgspec.inspect.type_info``) instead and names
    the first part msgspec cannot encode and decode on its own, so a
    definition with such a type fails when it is made.
    """
    try:
        info = msgspec.inspect.type_info(tp)
    except (TypeError, ValueError) as exc:
        return str(exc)
    seen: set[int] = set()
    todo: list[object] = [info]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue  # a recursive struct refers back to itself
        seen.add(id(node))
        if isinstance(node, msgspec.inspect.CustomType):
            return f"{type_name(node.cls)} is not a type msgspec can store (use a msgspec.Struct)"
        if isinstance(node, msgspec.inspect.Field):
            todo.append(node.type)
        elif isinstance(node, msgspec.inspect.Type):
            for field in node.__struct_fields__:
                value = getattr(node, field)
                if isinstance(value, tuple):
                    todo.extend(value)
                else:
                    todo.append(value)
    return None


def check_storable(tp: Any, what: str) -> None:
    """Raise a `ValidationError` starting with `what` if values of `tp` cannot be stored (`storable_problem`)."""
    problem = storable_problem(tp)
    if problem is not None:
        raise ValidationError(f"{what} {type_name(tp)!r} cannot be stored: {problem}")


def type_name(tp: Any) -> str:
    """`tp` as a message names it: a class's name, anything else (``list[Item]``) as written."""
    if isinstance(tp, type) and not get_args(tp):
        return tp.__name__
    return repr(tp).replace("typing.", "")


def encode(
    tp: type[T], value: object, *, what: str, limit: int = DEFAULT_MAX_PAYLOAD_BYTES, strict: bool = True
) -> Result[bytes, ValidationError]:
    """Validate `value` as a `tp` and return its JSON encoding.

    Accepts an instance of `tp` or a dict of its fields (anything
    ``msgspec.convert`` turns into one). Refused with a `ValidationError`: a
    struct of another class, an unknown (misspelt) field at any depth, text a
    storage cannot hold (a lone surrogate), and an encoding longer than
    `limit` bytes (see `djobs._input`). ``strict=False`` accepts unknown
    fields and structs of other classes whose fields fit (an event's
    listener that reads a part of the payload).
    """
    if value is None and tp is type(None):
        return _NULL  # a job without a result: nothing to check
    checked = _check(tp, value, what, limit, strict)
    if isinstance(checked, ValidationError):
        return Failure(checked)
    return Success(checked[0])


_NULL: Result[bytes, ValidationError] = Success(b"null")


def encoded(
    tp: type[T], value: object, *, what: str, limit: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> bytes | ValidationError:
    """`encode` (strict) without the `Result`, for a hot path: the encoding, or why `value` is refused."""
    if value is None and tp is type(None):
        return b"null"
    checked = _check(tp, value, what, limit, True)
    return checked if isinstance(checked, ValidationError) else checked[0]


def encode_decoded(
    tp: type[T], value: object, *, what: str, limit: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> Result[tuple[bytes, T], ValidationError]:
    """`encode` (strict) and the value decoded back from the encoding: a fresh, checked `tp`, in one step."""
    checked = encoded_copy(tp, value, what=what, limit=limit)
    if isinstance(checked, ValidationError):
        return Failure(checked)
    return Success(checked)


def encoded_copy(
    tp: type[T], value: object, *, what: str, limit: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> tuple[bytes, T] | ValidationError:
    """`encode_decoded` without the `Result`, for a hot path: the encoding and the fresh copy,
    or why `value` is refused."""
    checked = _check(tp, value, what, limit, True)
    if isinstance(checked, ValidationError):
        return checked
    raw, strict_value = checked
    if type(strict_value) is tp:  # the strict copy of `tp` is `tp` itself: already the value
        return raw, strict_value
    try:
        return raw, _decoder(tp).decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return ValidationError(f"{what} does not match {type_name(tp)}: {exc}")


def _check(tp: Any, value: object, what: str, limit: int, strict: bool) -> tuple[bytes, Any] | ValidationError:
    """The encoding of `value` and its validating decode, or why it is refused (see `encode`)."""
    # An instance of `tp` itself (the common case) has no struct to mismatch: no call for it.
    mismatch = struct_mismatch(tp, value) if strict and type(value) is not tp else None
    if mismatch is not None:
        return ValidationError(f"{what} does not match {type_name(tp)}: {mismatch}")
    try:
        raw = _encoder.encode(value)
    except (TypeError, msgspec.EncodeError, OverflowError, RecursionError, ValueError) as exc:
        # ValueError covers UnicodeEncodeError: a lone surrogate in a string.
        return ValidationError(f"{what} cannot be stored as {type_name(tp)}: {exc}")
    except Exception as exc:  # user code msgspec calls: a datetime's tzinfo.utcoffset, say
        return ValidationError(f"{what} cannot be stored as {type_name(tp)}: {describe(exc)}")
    # msgspec writes a nan or ±inf value as null and such a key as text ("nan", "-inf"):
    # only then can one hide in `value`.
    if b"null" in raw or b'nan":' in raw or b'inf":' in raw:
        refused = non_finite(value)
        if refused is not None:
            return ValidationError(f"{what} cannot be stored as {type_name(tp)}: {refused}")
    if len(raw) > limit:
        return ValidationError(
            f"{what} is {len(raw)} bytes encoded; at most {limit} are allowed "
            "(raise the engine's max_payload_bytes, or store large data elsewhere and pass a reference)"
        )
    try:
        # The validation step; also re-checks an instance built unchecked, and refuses unknown fields.
        decoded = (_strict_decoders.get(tp) or _strict_decoder(tp) if strict else _decoder(tp)).decode(raw)
    except msgspec.ValidationError as exc:
        return ValidationError(f"{what} does not match {type_name(tp)}: {exc}")
    except (msgspec.DecodeError, RecursionError, ValueError) as exc:
        return ValidationError(f"{what} cannot be stored as {type_name(tp)}: {exc}")
    except Exception as exc:  # user code msgspec calls: a struct's __post_init__, say
        return ValidationError(f"{what} does not match {type_name(tp)}: {describe(exc)}")
    return raw, decoded


def non_finite(value: object) -> str | None:
    """Where `value` holds a nan or ±inf float, worded for an error, or ``None`` if it holds none.

    JSON has no form for them: msgspec's encoder writes each as ``null``, so
    a ``float | None`` field would be stored as ``None`` and a ``float`` field
    refused as "got null" (a null the caller never passed). A dict's float
    key is looked at too: msgspec writes one as text (``"nan"``), which
    JSON's other readers (PostgreSQL's jsonb among them) do not read as a
    float. `_check` calls this only when an encoding holds ``null`` or a key
    ending in ``nan`` or ``inf``. The path is written as msgspec writes one
    in its errors (``$.field[0]``). Built for few calls (a hot path's payload with a
    ``None`` in it comes here): the common leaves cost none, a struct two.
    """
    # Each entry: a value, the container it is in (its own container, its key there, how the
    # keys of its items are written) and its key in that container.
    todo: list[tuple[object, Any, Any]] = [(value, None, None)]
    while todo:
        item, within, key = todo.pop()
        kind = type(item)
        if kind is float:
            if item - item:  # type: ignore[operator]  # nan or ±inf; a finite x - x is 0.0
                return _non_finite_message(item, within, key)
            continue
        if kind is str or kind is int or kind is bool or item is None:  # the common leaves: no call
            continue
        if isinstance(item, msgspec.Struct):
            todo += zip(msgspec.structs.astuple(item), repeat((within, key, ".")), item.__struct_fields__)
        elif isinstance(item, dict):
            for name in item:
                if type(name) is float and name - name:  # a nan or ±inf key
                    return _non_finite_message(name, within, key, " as a key")
            todo += zip(item.values(), repeat((within, key, "[]")), item.keys())
        elif isinstance(item, list | tuple | set | frozenset):
            todo += zip(item, repeat((within, key, "[]")), count())
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            names = [f.name for f in dataclasses.fields(item)]
            todo += zip([getattr(item, n, None) for n in names], repeat((within, key, ".")), names)
        else:
            attributes = getattr(kind, "__attrs_attrs__", None)  # an attrs class, which msgspec encodes too
            if attributes is not None:
                names = [a.name for a in attributes]
                todo += zip([getattr(item, n, None) for n in names], repeat((within, key, ".")), names)
    return None


def _non_finite_message(item: object, within: Any, key: Any, role: str = "") -> str:
    parts: list[str] = []
    while within is not None:
        within, outer_key, style = within[0], within[1], within[2]
        parts.append(f".{key}" if style == "." else f"[{key!r}]")
        key = outer_key
    path = "$" + "".join(reversed(parts))
    return (
        f"{item!r}{role} at `{path}` is not a finite float, and non-finite floats (nan, inf, -inf) cannot be stored "
        "(JSON has no form for them; store None or a sentinel instead)"
    )


def decode(tp: type[T], raw: bytes, *, what: str) -> Result[T, ValidationError]:
    """Decode and validate stored JSON as a `tp`."""
    try:
        return Success(_decoder(tp).decode(raw))
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return Failure(_stale(tp, what, exc))


def decoded(tp: type[T], raw: bytes, *, what: str) -> T | ValidationError:
    """`decode` without the `Result`, for a hot path: the value, or why the stored JSON is refused."""
    try:
        return cast(T, _decoder(tp).decode(raw))
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return _stale(tp, what, exc)


def _stale(tp: Any, what: str, exc: Exception) -> ValidationError:
    return ValidationError(
        f"stored {what} no longer matches {type_name(tp)}: {exc}; "
        "change the struct compatibly (new fields need defaults)"
    )


def validate(
    tp: type[T], value: object, *, what: str, limit: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> Result[T, ValidationError]:
    """`value` converted to and validated as a `tp` (a fresh, checked instance); see `encode`."""
    return encode_decoded(tp, value, what=what, limit=limit).map(lambda checked: checked[1])


def copier(
    tp: type[T], *, what: str, limit: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> Callable[[object], tuple[bytes, T] | ValidationError]:
    """`encode_decoded` for one type, prepared once: the encoding and fresh copy of a value, or why it is refused.

    For a hot path (a Debounce event and its batch's state, once per ``add``):
    no `Result` is built, and a value of exactly the struct `tp`, whose
    fields hold no struct at any depth, is checked with one decode instead of
    two. Unknown fields (all the strict decode adds) can only come from a dict
    or a struct of another class, and such a value, like every value the
    quick check refuses, goes through `encode_decoded`, which words the error.
    """
    plain = _decoder(tp)
    quick = _struct_free(tp)

    def copy(value: object) -> tuple[bytes, T] | ValidationError:
        if quick and type(value) is tp:
            try:
                raw = _encoder.encode(value)
                # A null (or a "nan": key) may be a nan msgspec wrote so (`non_finite`); one is
                # refused, and worded, below.
                if len(raw) <= limit and (
                    (b"null" not in raw and b'nan":' not in raw and b'inf":' not in raw) or non_finite(value) is None
                ):
                    return raw, plain.decode(raw)
            except Exception:  # refused (or user code msgspec calls raised): worded below
                pass
        match encode_decoded(tp, value, what=what, limit=limit):
            case Success(checked):
                copied: tuple[bytes, T] = checked
                return copied
            case Failure(error):
                refused: ValidationError = error
                return refused
        raise AssertionError("encode_decoded gives a Success or a Failure")

    return copy


def quick_codec(tp: type[T]) -> tuple[Callable[[object], bytes], Callable[[bytes], T]] | None:
    """The encode and the decode of `copier`'s quick check for `tp`, or ``None`` when it has none.

    For a path that runs the check inline rather than through `copier`'s
    function (a Debounce ``add``, per event and per state): only for a value
    whose type is exactly `tp`, the encoding within the payload limit and, if
    it holds ``null``, the value no nan or ±inf (`non_finite`); whatever it
    refuses or raises goes to `copier`'s function, which words the error.
    ``None`` unless `tp` is a struct whose fields hold no struct at any depth.
    """
    if not _struct_free(tp):
        return None
    return _encoder.encode, cast("Callable[[bytes], T]", _decoder(tp).decode)


def _struct_free(tp: Any) -> bool:
    """Whether `tp` is a struct class whose fields' types name no struct at any depth (nor are generic)."""
    if not (isinstance(tp, type) and issubclass(tp, msgspec.Struct)) or getattr(tp, "__parameters__", None):
        return False
    try:
        pending = [field.type for field in msgspec.structs.fields(tp)]
    except Exception:  # an annotation msgspec cannot resolve: take the strict path
        return False
    while pending:
        t = pending.pop()
        if isinstance(t, type) and issubclass(t, msgspec.Struct):
            return False
        if isinstance(t, TypeVar | str | ForwardRef):
            return False
        if get_origin(t) is Literal:
            continue
        supertype = getattr(t, "__supertype__", None)  # a NewType
        if supertype is not None:
            pending.append(supertype)
        pending.extend(a for a in get_args(t) if a is not Ellipsis)
    return True
