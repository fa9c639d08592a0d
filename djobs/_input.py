"""What the edges accept: text every storage can hold, payloads of the declared type and size.

One place decides what a client verb, a definition and a storage layer take,
so every verb and every storage answers a bad input the same way, with a
`ValidationError`:

- *Text* (ids, tenant ids, event ids, idempotency and correlation ids,
  names) must be encodable as UTF-8 (no lone surrogate such as
  ``"\\ud800"``) and hold no NUL character: SQLite would store either, but
  PostgreSQL refuses both in ``text`` columns, and the UTF-8 codec refuses
  the surrogate everywhere. Text that a job *produces* (an error message, a
  progress message) is not refused but made storable with `clean_text`.
- *Payloads* (params, events, state, input, results) are checked against a
  strict copy of their declared type: an unknown (misspelt) field anywhere in
  the value is refused instead of silently dropped, and a struct of another
  class is refused instead of being read as the target's defaults.
- *Size*: an encoded payload larger than the engine's ``max_payload_bytes``
  (default `DEFAULT_MAX_PAYLOAD_BYTES`, 1 MiB) is refused.
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
import random
import re
import sys
import types
import typing
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Union, get_args, get_origin

import msgspec
from returns.result import Failure, Result, Success

from ._errors import ValidationError, capped_message, describe, safe_repr

#: The longest interval, delay or backoff djobs takes or computes: 100 years. Longer ones are
#: refused at definition time (``every``, ``flush_after``) and backoff arithmetic is capped here,
#: so no schedule ever reaches past `LATEST_MS` (9999-12-31T00:00:00Z, a day before `datetime` ends).
LONGEST_INTERVAL = timedelta(days=36_525)

#: The most attempts a retry policy may allow (an attempt counter is a 32-bit int in PostgreSQL).
MAX_ATTEMPTS = 1_000_000

#: The largest count a limit may be (``concurrency=``, a `RateLimit`'s ``count``): PostgreSQL's
#: ``integer``, which its claim casts them to. A larger one would limit nothing; pass ``None``.
MAX_LIMIT = 2**31 - 1

#: The default largest encoded payload (params, event, state, input, result), in bytes: 1 MiB.
DEFAULT_MAX_PAYLOAD_BYTES = 1 << 20


# -- text -----------------------------------------------------------------------------------

# At most 18 digits: every such number fits a 64-bit int (a database's bigint) and is far
# past the range any caller then checks; ``int()`` refuses more than 4,300 with a ValueError.
_WHOLE = re.compile(r"[ \t]*[+-]?[0-9]{1,18}[ \t]*", re.ASCII)


def whole_number(text: str) -> int | None:
    """`text` read as a whole number (1 to 18 ASCII digits, an optional sign, spaces or tabs
    around them), or ``None``: a command-line count or port, a dashboard's ``limit``. Never
    raises: a longer run of digits is ``None`` too (``int()`` raises ValueError past 4,300).

    Narrower than ``int(text)``, which also takes ``"1_0"`` (10), other scripts' digits
    (``"\u0663"``, 3) and more whitespace: what a person typed as a number is one.

    Examples:
        >>> whole_number(" 8080"), whole_number("1_0"), whole_number("0\x1f"), whole_number("9" * 19)
        (8080, None, None, None)
    """
    return int(text) if _WHOLE.fullmatch(text) else None


def text_problem(value: str) -> str | None:
    """Why `value` cannot be stored as text on every storage, or ``None`` if it can."""
    if "\x00" in value:
        return "contains a NUL character (\\x00), which PostgreSQL cannot store"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"contains a lone surrogate ({value[exc.start]!r} at index {exc.start}), which UTF-8 cannot encode"
    return None


def plain_text(value: object) -> object:
    """A str subclass's value as an exact `str` (a `StrEnum` member's, say), anything else as it
    is: the checks and the storage after them then run str's own ``==``, ``hash`` and ``len``,
    never a subclass's, which may raise. The copy is made by str's own slicing, which calls none."""
    if isinstance(value, str) and type(value) is not str:
        return str.__getitem__(value, slice(None))
    return value


class RefusedText:
    """What a constructor holds in place of a text argument it refused (`Client.for_tenant`'s
    tenant id): neither a str nor ``None``, so every check of it (`check_text`) fails, with
    `reason`, which says what was given and why it was refused."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"<refused: {self.reason}>"


#: The longest text argument (an id, a key, a tenant id, a filter), in characters; a name's is 200.
MAX_TEXT_LENGTH = 512

#: The longest reason a caller gives `terminate` or a workflow's `cancel`, in characters; a
#: longer reason a body gives ``ctx.terminate`` is cut to it.
MAX_REASON_LENGTH = 1000

#: The unit separator: djobs joins a tenant id and an instance id with it in a stored key
#: (``task:name:tenant\x1fid``), and a limit's name and key, so no text argument may hold it.
SEPARATOR = "\x1f"


def check_text(value: object, what: str, *, max_length: int = MAX_TEXT_LENGTH) -> Result[str, ValidationError]:
    """`value` (as an exact `str`, `plain_text`) if it is a non-empty `str` of at most
    `max_length` characters that every storage can hold (`text_problem`) and that holds no
    `SEPARATOR`: the one rule of every text argument of every verb (ids, tenant ids, keys,
    names, filters, reasons)."""
    value = plain_text(value)
    if isinstance(value, RefusedText):
        return Failure(ValidationError(f"{what} {value.reason}"))
    if not isinstance(value, str):
        return Failure(ValidationError(f"{what} must be a str, got {type(value).__name__}"))
    if not value:
        return Failure(ValidationError(f"{what} must not be empty"))
    if len(value) > max_length:
        return Failure(ValidationError(f"{what} is {len(value)} characters long; at most {max_length} are allowed"))
    if SEPARATOR in value:
        return Failure(
            ValidationError(
                f"{what} {value!r:.80} contains the unit separator (\\x1f), which djobs keeps to separate "
                "a tenant id from an id in its keys"
            )
        )
    problem = text_problem(value)
    if problem is not None:
        return Failure(ValidationError(f"{what} {value!r:.80} {problem}"))
    return Success(value)


def check_optional_text(
    value: object, what: str, *, max_length: int = MAX_TEXT_LENGTH
) -> Result[str | None, ValidationError]:
    """``None``, or `value` checked by `check_text`: a text argument that may be left out."""
    if value is None:
        return Success(None)
    return check_text(value, what, max_length=max_length)


def check_whole(value: object, what: str, low: int, high: int) -> Result[int, ValidationError]:
    """`value` if it is an int (not a bool) from `low` to `high`: the one rule of every count argument."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return Failure(ValidationError(f"{what} must be an int from {low} to {high}, got {safe_repr(value):.40}"))
    return Success(value)


def check_produced_text(value: object, what: str, max_length: int) -> Result[str | None, ValidationError]:
    """``None``, or `value` made storable if it is a `str`: text a job *produces* at run time (a
    progress message, the reason a body gives ``ctx.terminate``), kept rather than refused, as
    `clean_text` escaped and cut to `max_length` characters. Anything but a `str` or ``None`` (an
    int, bytes, an object whose ``str()`` is not what the job meant) is a `ValidationError`, as a
    verb's text argument is."""
    value = plain_text(value)
    if value is None:
        return Success(None)
    if not isinstance(value, str):
        return Failure(
            ValidationError(f"{what} must be a str or None, got {type(value).__name__} {safe_repr(value):.40}")
        )
    return Success(clean_text(value)[:max_length])


def check_finite(value: object, what: str) -> Result[int | float, ValidationError]:
    """`value` if it is a finite real number: an int (not a bool) as it is, a float or another
    `numbers.Real` (numpy's, a `Fraction`) as a float. nan, inf and -inf have no place on a scale,
    and JSON has no form for them: a `ValidationError`, as anything else is."""
    if isinstance(value, bool):
        pass  # a Real and an int, but a flag, not a number
    elif isinstance(value, int):
        return Success(value)
    elif isinstance(value, numbers.Real):
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            pass
        else:
            if math.isfinite(number):
                return Success(number)
    return Failure(
        ValidationError(f"{what} must be a finite number (an int or a float, not a bool), got {safe_repr(value):.40}")
    )


def os_text_problem(text: str) -> str | None:
    """Why `text` cannot be handed to the operating system or a driver as a file name or
    connection string (a NUL ends a C string early; a lone surrogate has no UTF-8 form), or ``None``."""
    if "\x00" in text:
        return "it contains a NUL character (\\x00), which no file name or connection string can hold"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"it is not valid UTF-8 (a lone surrogate {text[exc.start]!r} at position {exc.start})"
    return None


def clean_text(value: str) -> str:
    """`value` made storable: lone surrogates as ``\\udXXX`` escapes (backslashreplace), NUL as ``\\x00``.

    For text a job produces (error and progress messages): it is kept, readable, never refused.
    """
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def clean_message(message: str) -> str:
    """An error's message as stored: `clean_text`, then cut to `MAX_MESSAGE_LENGTH` again (an
    escaped NUL is four characters), so what is stored is never longer than the limit."""
    return capped_message(clean_text(message))


# -- payloads -------------------------------------------------------------------------------

_STRICT_MODULE = types.ModuleType("djobs._strict_types")
_STRICT_MODULE.__doc__ = "Strict copies of user structs (unknown fields forbidden), made by djobs._input."
sys.modules[_STRICT_MODULE.__name__] = _STRICT_MODULE
_strict_structs: dict[type[msgspec.Struct], type[msgspec.Struct]] = {}
_strict_types: dict[Any, Any] = {}
_refs = 0


def strict_type(tp: Any) -> Any:
    """A copy of the type `tp` in which every struct, however deep, forbids unknown fields.

    Each struct is copied as a subclass of itself with ``forbid_unknown_fields=True``
    and its fields' types made strict the same way (recursive structs
    included: field types are forward references resolved when msgspec first
    uses the copy). Users need not set ``forbid_unknown_fields`` on their
    structs; values decoded through the copy are only used for validation.
    A type the copy cannot be made of is returned as it is.
    """
    try:
        return _strict_types[tp]
    except KeyError:
        pass
    except TypeError:  # unhashable annotation: use it as it is
        return tp
    pending: list[tuple[str, Any]] = []

    def struct(cls: type[msgspec.Struct]) -> type[msgspec.Struct]:
        global _refs
        made = _strict_structs.get(cls)
        if made is not None:
            return made
        if cls.__struct_config__.forbid_unknown_fields or bool(getattr(cls, "__parameters__", None)):
            _strict_structs[cls] = cls  # already strict, or generic: used as it is
            return cls
        annotations: dict[str, str] = {}
        namespace: dict[str, Any] = {"__module__": _STRICT_MODULE.__name__, "__qualname__": cls.__qualname__}
        for field in msgspec.structs.fields(cls):
            _refs += 1
            ref = f"_field_{_refs}"
            annotations[field.name] = ref
            if field.default is not msgspec.NODEFAULT:
                namespace[field.name] = msgspec.field(default=field.default, name=field.encode_name)
            elif field.default_factory is not msgspec.NODEFAULT:
                namespace[field.name] = msgspec.field(default_factory=field.default_factory, name=field.encode_name)
            pending.append((ref, field.type))
        namespace["__annotations__"] = annotations
        copy = types.new_class(cls.__name__, (cls,), {"forbid_unknown_fields": True}, lambda ns: ns.update(namespace))
        _strict_structs[cls] = copy
        return copy

    def rewrite(t: Any) -> Any:
        if isinstance(t, type) and issubclass(t, msgspec.Struct):
            return struct(t)
        origin, args = get_origin(t), get_args(t)
        if origin is None or not args or origin is typing.Literal:
            return t
        if origin is Annotated:
            return Annotated[(rewrite(args[0]), *t.__metadata__)]
        if isinstance(origin, type) and issubclass(origin, msgspec.Struct):
            return t  # a parametrised generic struct: used as it is
        new_args = tuple(a if a is Ellipsis else rewrite(a) for a in args)
        if origin is types.UnionType:
            return functools.reduce(operator.or_, new_args)
        if origin is Union:
            return Union[new_args]  # noqa: UP007  # rebuilding a typing.Union as written
        try:
            return origin[new_args]
        except TypeError:
            return t

    try:
        result = rewrite(tp)
        while pending:
            ref, field_type = pending.pop()
            setattr(_STRICT_MODULE, ref, rewrite(field_type))
    except Exception:  # an annotation this copy does not understand: validate as declared
        result = tp
    _strict_types[tp] = result
    return result


def _struct_members(tp: Any) -> tuple[type[msgspec.Struct], ...] | None:
    """The struct classes a value of type `tp` may be at its top level; ``None`` if `tp` takes no structs."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return (tp,)
    origin = get_origin(tp)
    if origin is Annotated:
        return _struct_members(get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        members = [m for a in get_args(tp) for m in (_struct_members(a) or ())]
        return tuple(members) or None
    return None


def struct_mismatch(tp: Any, value: object) -> str | None:
    """Why `value`, a struct, is not a `tp` (a struct of another class), or why `value`, neither a
    struct nor a dict, is no struct `tp` at all; ``None`` if neither (msgspec's check follows)."""
    if type(value) is tp:
        return None  # an instance of the very struct `tp`: the common case
    if not isinstance(value, msgspec.Struct):
        if isinstance(value, dict) or not (isinstance(tp, type) and issubclass(tp, msgspec.Struct)):
            return None
        if tp.__struct_config__.array_like and isinstance(value, list | tuple):
            return None  # an array-like struct's fields, in order
        # msgspec would say "Expected `object`" (JSON's word for a struct) of the value's JSON form.
        got = (
            f"the class {value.__name__} itself (make one: {value.__name__}(...))"
            if isinstance(value, type)
            else ("None" if value is None else type(value).__name__)
        )
        return f"expected the struct {tp.__name__} (or a dict of its fields), got {got}"
    members = _struct_members(tp)
    if members is None:
        return f"got a {type(value).__name__} struct where no struct is expected"
    if isinstance(value, members):
        return None
    expected = " | ".join(m.__name__ for m in members)
    return f"got a {type(value).__name__} struct, expected {expected} (or a dict of its fields)"


def check_payload_limit(value: object) -> int:
    """Validate a ``max_payload_bytes`` setting (raises: a bad setting is a bug in the program)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1024 <= value <= 1 << 30:
        raise ValidationError(
            f"max_payload_bytes must be an int from 1024 to {1 << 30} (1 GiB), got {safe_repr(value)}"
        )
    return value


# -- numbers, intervals and moments ---------------------------------------------------------


def check_interval(value: timedelta, what: str) -> timedelta:
    """`value` if it is at most `LONGEST_INTERVAL` (raises: a definition-time literal)."""
    if value > LONGEST_INTERVAL:
        raise ValidationError(f"{what} is {value}; at most 100 years ({LONGEST_INTERVAL.days} days) are allowed")
    return value


def check_attempts(value: object, what: str) -> int:
    """`value` if it is an int from 1 to `MAX_ATTEMPTS` (raises: a definition-time literal)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ATTEMPTS:
        raise ValidationError(f"{what} must be an int from 1 to {MAX_ATTEMPTS}, got {safe_repr(value):.40}")
    return value


def check_count(value: object, what: str) -> int:
    """`value` if it is an int from 1 to `MAX_LIMIT` (raises: a definition-time literal)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise ValidationError(f"{what} must be an int from 1 to {MAX_LIMIT}, got {safe_repr(value):.40}")
    return value


def seeded(seed: object, what: str = "seed") -> random.Random:
    """A generator seeded with `seed` (``None``: from the OS); anything but an int or ``None`` is a
    `ValidationError`: `random.Random` takes a float or a string too, but a NaN seeds it from the
    NaN's identity, differently in every run, and a seed is there to make runs repeat."""
    return random.Random(check_seed(seed, what))


def check_seed(seed: object, what: str = "seed") -> int | None:
    """`seed` if it is an int (not a bool) or ``None`` (raises: a definition-time literal)."""
    if seed is not None and type(seed) is not int:
        raise ValidationError(f"{what} must be an int or None, got {type(seed).__name__} {safe_repr(seed):.80}")
    return seed


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def nearest_ms(span: timedelta) -> int:
    """`span` in whole milliseconds, to the nearest (a half up), in integers throughout: through
    a float (``round(span.total_seconds() * 1000)``) a span of centuries, or one ending on a half
    millisecond, came out a millisecond off (the float's step past the year 4000 is 30 µs)."""
    whole, rest = divmod(span // _MICROSECOND, 1_000)
    return whole + (rest >= 500)


def epoch_ms(moment: object, what: str) -> Result[int, ValidationError]:
    """Epoch milliseconds of an aware `datetime`; a naive one, a broken time zone (an offset of
    a day or more) or a moment `datetime` cannot represent in UTC is a `ValidationError`."""
    if not isinstance(moment, datetime):
        return Failure(ValidationError(f"{what} must be a timezone-aware datetime, got {safe_repr(moment):.80}"))
    try:
        if moment.tzinfo is None or moment.utcoffset() is None:
            return Failure(
                ValidationError(f"{what} must be a timezone-aware datetime, got naive {safe_repr(moment):.80}")
            )
        return Success(nearest_ms(moment - _EPOCH))
    except Exception as exc:  # the tzinfo is user code: its utcoffset may raise anything
        shown = moment.replace(tzinfo=None).isoformat()
        zone = safe_repr(moment.tzinfo)
        return Failure(
            ValidationError(f"{what} {shown} in time zone {zone:.80} cannot be turned into UTC: {describe(exc)}")
        )
