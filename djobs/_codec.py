"""Encoding and validating the user's structs (state, events, params, results).

Every value is validated when it is written and when it is read back: a
``msgspec.Struct(...)`` call does not check its field types, so a value is
round-tripped through its JSON form and `msgspec.json.Decoder(type)`, which
does. JSON writes many types as strings, which a ``str`` field reads back, so
the decoded copy must also equal the value and each part be of its type
(`inexact`): a UUID or a date given for a ``str`` field is refused, not
stored as text. Encoders and decoders are made once and reused.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import enum
import re
from collections.abc import Callable, Iterator
from itertools import count, repeat
from typing import (
    Annotated,
    Any,
    ForwardRef,
    Literal,
    TypeVar,
    cast,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

import msgspec
import msgspec.inspect
from returns.result import Failure, Result, Success

from ._errors import ValidationError, describe, safe_repr
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
    for node in _parts(info):
        if isinstance(node, msgspec.inspect.CustomType):
            return f"{type_name(node.cls)} is not a type msgspec can store (use a msgspec.Struct)"
    return None


def _parts(info: msgspec.inspect.Type) -> Iterator[object]:
    """Every node of a type's description (``msgspec.inspect.type_info``), each once: the types
    and fields it is made of, all the way down (a recursive struct's own type is not walked again)."""
    seen: set[int] = set()
    todo: list[object] = [info]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue  # a recursive struct refers back to itself
        seen.add(id(node))
        yield node
        if isinstance(node, msgspec.inspect.Field):
            todo.append(node.type)
        elif isinstance(node, msgspec.inspect.Type):
            for field in node.__struct_fields__:
                value = getattr(node, field)
                if isinstance(value, tuple):
                    todo.extend(value)
                else:
                    todo.append(value)


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
    struct of another class (a subclass of `tp`'s struct is taken if it adds no
    field; one that adds fields is refused naming them: `_added_fields`), an
    unknown (misspelt) field at any depth, a
    value of another type than declared at any depth (`inexact`), text a
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
    return _check(tp, value, what, limit, True)


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
        subclassed = _subclass_problem(tp, value, exc) if type(exc) is TypeError else None
        if subclassed is not None:
            return ValidationError(f"{what} does not match {type_name(tp)}: {subclassed}")
        return ValidationError(f"{what} cannot be stored as {type_name(tp)}: {exc}")
    except Exception as exc:  # user code msgspec calls: a datetime's tzinfo.utcoffset, say
        return ValidationError(f"{what} cannot be stored as {type_name(tp)}: {describe(exc)}")
    # msgspec writes a nan or ±inf value as null and such a key as text ("nan", "-inf"):
    # only then can one hide in `value`.
    if may_hide_non_finite(raw) is not None:
        refused = non_finite(value)
        if refused is not None:
            return ValidationError(f"{what} cannot be stored as {type_name(tp)}: {refused}")
    if len(raw) > limit:
        return ValidationError(
            f"{what} is {len(raw)} bytes encoded; at most {limit} are allowed "
            "(raise the engine's max_payload_bytes, or store large data elsewhere and pass a reference)"
        )
    plan = _plans.get(tp) or _plan(tp)
    try:
        # The validation step; also re-checks an instance built unchecked, and refuses unknown fields
        # (which only a dict or a struct of another class can hold: a struct-free `tp`'s own
        # instance needs the plain decode alone).
        if not strict or (plan.struct_free and type(value) is tp):
            copy = plan.plain.decode(raw)
        else:
            copy = plan.strict.decode(raw)
            if plan.strict_differs:
                copy = plan.plain.decode(raw)
    except msgspec.ValidationError as exc:
        return ValidationError(f"{what} does not match {type_name(tp)}: {_as_passed(str(exc), value, tp)}")
    except (msgspec.DecodeError, RecursionError, ValueError) as exc:
        return ValidationError(f"{what} cannot be stored as {type_name(tp)}: {exc}")
    except Exception as exc:  # user code msgspec calls: a struct's __post_init__, say
        return ValidationError(f"{what} does not match {type_name(tp)}: {describe(exc)}")
    # Exactness: the decoded copy is what the body will receive. Equal to `value` (one C-level
    # compare) means nothing was turned into something else, unless `tp` holds a type whose
    # values compare equal across types (bytes and bytearray, set and frozenset, a str-valued
    # enum and its str): then, as when they differ, `inexact` walks both and names the place.
    try:
        same = plan.anything or (not plan.walk and copy == value)
    except Exception:  # a user struct's own __eq__: walk instead
        same = False
    if not same:
        problem = inexact(copy, value, abstract=plan.abstract)
        if problem is not None:
            return ValidationError(f"{what} does not match {type_name(tp)}: {problem}")
    return raw, copy


_GOT = re.compile(r"got `([^`]+)`")
_AT = re.compile(r" - at `(\$[^`]*)`$")
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
#: msgspec's words for a string its type could not parse, and that type.
_INVALID = {
    "Invalid base64 encoded string": "bytes",
    "Invalid RFC3339 encoded datetime": "datetime",
    "Invalid RFC3339 encoded date": "date",
    "Invalid RFC3339 encoded time": "time",
    "Invalid ISO8601 duration": "timedelta",
    "Invalid UUID": "UUID",
    "Invalid decimal string": "Decimal",
}


def _as_passed(message: str, value: object, tp: Any) -> str:
    """msgspec's decode error `message` naming the Python type of the value as passed, not
    of its JSON form: ``got `str` `` for a Decimal (written as a JSON string) says
    ``got `Decimal` ``, "Invalid UUID" for a str passed where a UUID is declared says
    ``Expected `UUID`, got `str` `` (msgspec's words of the JSON form are dropped), a str
    subclass is named so (``got `H` (a str subclass)``), and a value outside the Literal or
    enum `tp` declares at the path names its values or the enum (`_not_a_member`)."""
    if " - at `key` in `" in message:  # a dict key's: the path is its dict's, not the key's
        return message
    at = _AT.search(message)
    part: object = value
    for step in _STEP.finditer(at.group(1)[1:] if at else ""):
        name, index = step.groups()
        try:
            if index is not None:
                part = part[int(index)]  # type: ignore[index]
            elif isinstance(part, dict):
                part = part[name]
            elif isinstance(part, msgspec.Struct):
                fields = {f.encode_name: f.name for f in msgspec.structs.fields(type(part))}
                part = getattr(part, fields[name])
            else:
                part = getattr(part, name)
        except Exception:  # a path this cannot follow (a dict key, `[...]`): msgspec's words
            return message
    head = message[: at.start()] if at else message
    if head.startswith("Object contains unknown field") and isinstance(part, msgspec.Struct):
        added = _added_fields(tp, at.group(1) if at else "$", part)
        if added is not None:
            return added + (message[at.start() :] if at else "")
    actual = _kind_name(part)
    got = _GOT.search(message)
    if got is not None:
        return message[: got.start(1)] + actual + "`" + _subclass_note(part) + message[got.end(1) + 1 :]
    where = message[at.start() :] if at else ""
    expected = _INVALID.get(head)
    if expected is not None:  # msgspec's words are of the JSON form ("Invalid RFC3339 encoded date")
        return f"Expected `{expected}`, got `{actual}`{_subclass_note(part)}{where}"
    if head.startswith("Invalid enum value"):
        return _not_a_member(tp, at.group(1) if at else "$", part, actual) + where
    return message


def _added_fields(tp: Any, path: str, part: msgspec.Struct) -> str | None:
    """Why `part`, at `path` of `tp`, is refused when its class subclasses the struct declared
    there and adds fields to it: mypy takes the subclass (it is one), but the declared struct
    cannot store those fields and dropping them would lose what the caller passed. ``None``
    if `part` is no such subclass (msgspec's words then)."""
    for node in _declared_at(tp, path):
        if not isinstance(node, msgspec.inspect.StructType):
            continue
        base = node.cls
        if type(part) is not base and isinstance(part, base):
            kept = {f.name for f in msgspec.structs.fields(base)}
            added = [f.name for f in msgspec.structs.fields(part) if f.name not in kept]
            sub, declared = type(part).__name__, base.__name__
            return (
                f"`{sub}` is a subclass of `{declared}` that adds the field{'s' * (len(added) > 1)} "
                f"{', '.join(f'`{name}`' for name in added)}, which `{declared}` cannot store (a subclass "
                f"is taken only if it adds no field); pass `{declared}(...)`, or declare the type as `{sub}`"
            )
    return None


def _not_a_member(tp: Any, path: str, part: object, actual: str) -> str:
    """A value outside the declared Literal's values or enum at `path` of `tp`, in the caller's
    terms: ``Expected one of 'a', 'b', got 'c'``, or ``Expected `Mood`, got `str` ``."""
    literals: list[object] = []
    enums: list[str] = []
    for node in _declared_at(tp, path):
        if isinstance(node, msgspec.inspect.LiteralType):
            literals.extend(node.values)
        elif isinstance(node, msgspec.inspect.EnumType):
            enums.append(node.cls.__name__)
        elif isinstance(node, msgspec.inspect.NoneType):
            literals.append(None)
    if enums:  # a member is passed, not its value: the value is of the wrong type
        return f"Expected `{'` or `'.join(enums)}`, got `{actual}`"
    if len(literals) > (None in literals):
        return f"Expected one of {', '.join(f'{safe_repr(v):.60}' for v in literals)}, got {safe_repr(part):.60}"
    return f"Expected one of the declared values, got {safe_repr(part):.60}"


def _declared_at(tp: Any, path: str) -> list[msgspec.inspect.Type]:
    """The types `tp` declares at `path` (msgspec's ``$.field[0]``), a union's each; none where
    the path cannot be followed."""
    i = msgspec.inspect
    try:
        nodes = _flat([i.type_info(tp)])
    except Exception:  # a type msgspec cannot describe
        return []
    for step in _STEP.finditer(path[1:]):
        name, index = step.groups()
        found: list[i.Type] = []
        for node in nodes:
            if isinstance(node, i.StructType | i.DataclassType | i.TypedDictType):
                fields = node.fields
                if name is not None:
                    found += [f.type for f in fields if f.encode_name == name]
                elif isinstance(node, i.StructType) and node.array_like and int(index) < len(fields):
                    found.append(fields[int(index)].type)
            elif isinstance(node, i.DictType) and name is not None:
                found.append(node.value_type)
            elif index is not None and isinstance(node, i.ListType | i.VarTupleType | i.SetType | i.FrozenSetType):
                found.append(node.item_type)
            elif index is not None and isinstance(node, i.TupleType | i.NamedTupleType):
                types = node.item_types if isinstance(node, i.TupleType) else [f.type for f in node.fields]
                if int(index) < len(types):
                    found.append(types[int(index)])
        nodes = _flat(found)
    return nodes


def _flat(nodes: list[msgspec.inspect.Type]) -> list[msgspec.inspect.Type]:
    """`nodes` with each union replaced by its types and each ``Annotated`` by its type."""
    flat: list[msgspec.inspect.Type] = []
    todo = list(reversed(nodes))
    while todo:
        node = todo.pop()
        if isinstance(node, msgspec.inspect.UnionType):
            todo.extend(reversed(node.types))
        elif isinstance(node, msgspec.inspect.Metadata):
            todo.append(node.type)
        else:
            flat.append(node)
    return flat


def _declared_name(node: msgspec.inspect.Type) -> str:
    """A declared type as an error names it: ``one of 'a', 'b'`` for a Literal, `` `int` ``."""
    if isinstance(node, msgspec.inspect.LiteralType):
        return f"one of {', '.join(f'{safe_repr(v):.60}' for v in node.values)}"
    if isinstance(node, msgspec.inspect.EnumType):
        return f"`{node.cls.__name__}`"
    if isinstance(node, msgspec.inspect.NoneType):
        return "`None`"
    return f"`{type(node).__name__.removesuffix('Type').lower()}`"


def _subclass_note(part: object) -> str:
    """`` (a str subclass)`` for a value of a subclass of str, int or float (not a bool nor an
    enum's member, which msgspec takes as they are), or nothing."""
    kind = type(part)
    if kind in _SCALARS or isinstance(part, bool | enum.Enum):
        return ""
    for base in _SCALARS:
        if isinstance(part, base):
            return f" (a{'n' if base is int else ''} {base.__name__} subclass)"
    return ""


_SCALARS = (str, int, float)
_UNSUPPORTED = re.compile(r"Encoding objects of type .+ is unsupported")


def _as_base(obj: Any) -> Any:
    """`_check`'s encode hook for a value msgspec cannot encode: a str, int or float subclass
    as its base type's value, so that the decode names the field's type at the value's path."""
    for base in _SCALARS:
        if isinstance(obj, base):
            return base(obj)
    raise TypeError(f"Encoding objects of type {type(obj).__name__} is unsupported")


_base_encoder = msgspec.json.Encoder(enc_hook=_as_base)


def _subclass_problem(tp: Any, value: object, exc: TypeError) -> str | None:
    """Where `value` holds a subclass of str, int or float, which msgspec cannot encode (`exc`),
    worded as every other wrong type is, at its path: ``Expected `int`, got `H` (a str
    subclass) - at `$.n` ``; ``None`` for another unsupported type (msgspec's words then)."""
    if not _UNSUPPORTED.fullmatch(str(exc)):
        return None
    try:
        raw = _base_encoder.encode(value)
        (_plans.get(tp) or _plan(tp)).strict.decode(raw)
    except msgspec.ValidationError as refused:
        return _as_passed(str(refused), value, tp)
    except Exception:  # another unsupported part, or user code: msgspec's words
        return None
    # The declared type takes the base's value (a str field given a str subclass): the value
    # as passed is still not of it.
    todo: list[tuple[object, str]] = [(value, "$")]
    while todo:
        part, path = todo.pop()
        note = _subclass_note(part)
        if note:
            # An ``Any`` field takes the base's value: the base is what it can store.
            base = next(f"`{b.__name__}`" for b in _SCALARS if isinstance(part, b))
            declared = " or ".join(
                _declared_name(node) for node in _declared_at(tp, path) if not isinstance(node, msgspec.inspect.AnyType)
            )
            return f"Expected {declared or base}, got `{type(part).__name__}`{note} - at `{path}`"
        parts: list[tuple[object, str]] = []
        if isinstance(part, dict):
            parts = [(v, f"{path}.{k}" if isinstance(k, str) else f"{path}[...]") for k, v in part.items()]
        elif isinstance(part, list | tuple):
            parts = [(v, f"{path}[{n}]") for n, v in enumerate(part)]
        elif isinstance(part, msgspec.Struct):
            parts = [(getattr(part, f.name), f"{path}.{f.encode_name}") for f in msgspec.structs.fields(part)]
        todo.extend(reversed(parts))
    return None


class _Plan:
    """How `_check` validates values of one type, worked out once per type."""

    __slots__ = ("abstract", "anything", "plain", "strict", "strict_differs", "struct_free", "walk")

    def __init__(self, tp: Any) -> None:
        self.plain = _decoder(tp)
        strict = strict_type(tp)
        self.strict = self.plain if strict is tp else _strict_decoder(tp)
        #: The strict decode gives the strict copy's instances: the plain decode gives the body's.
        self.strict_differs = strict is not tp
        #: A struct whose fields hold no struct: its own instance cannot hold an unknown field.
        self.struct_free = _struct_free(tp)
        #: Equality alone cannot tell a value of the wrong type here (`equal_across_types`).
        self.walk = equal_across_types(tp)
        #: `tp` is ``Any`` (a signal's payload, whose type only its receiver names): anything
        #: JSON can hold is taken as its JSON form. (A field typed ``Any`` is checked: what it
        #: holds must come back as itself.)
        self.anything = tp is Any or tp is object
        #: `tp` declares an abstract collection somewhere (``Sequence[int]``, ``AbstractSet[str]``),
        #: which a tuple or a frozenset is as much as a list or a set (`inexact`'s `abstract`).
        self.abstract = _declares_abstract(tp)


#: The abstract collections msgspec takes (decoded as a list or a set): the declared type of a
#: value that may be a list or a tuple, a set or a frozenset.
_ABSTRACT = frozenset(
    {
        collections.abc.Collection,
        collections.abc.Sequence,
        collections.abc.MutableSequence,
        collections.abc.Set,
        collections.abc.MutableSet,
    }
)


def _declares_abstract(tp: Any) -> bool:
    """Whether `tp`, or a type it is made of (a union's member, a container's item, a struct's
    or dataclass's field), is one of `_ABSTRACT`."""
    seen: set[int] = set()
    todo: list[Any] = [tp]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue  # a recursive struct refers back to itself
        seen.add(id(node))
        origin = get_origin(node) or node
        if origin is Annotated:  # the type, not its metadata (which may be any object)
            todo.append(get_args(node)[0])
            continue
        if any(origin is abstract for abstract in _ABSTRACT):  # `is`: an object's own == or hash may raise
            return True
        todo.extend(get_args(node))
        try:
            if isinstance(origin, type) and issubclass(origin, msgspec.Struct):
                todo.extend(f.type for f in msgspec.structs.fields(node))
            elif dataclasses.is_dataclass(origin) or is_typeddict(origin) or hasattr(origin, "_fields"):
                todo.extend(get_type_hints(origin).values())  # a dataclass's, TypedDict's or NamedTuple's fields
        except Exception:  # annotations that do not resolve: msgspec refused such a type already
            continue
    return False


_plans: dict[Any, _Plan] = {}


def _plan(tp: Any) -> _Plan:
    plan = _Plan(tp)
    with contextlib.suppress(TypeError):  # an unhashable type is not cached
        _plans[tp] = plan
    return plan


def equal_across_types(tp: Any) -> bool:
    """Whether a value of `tp` may compare equal to a value of another type that msgspec decodes
    as one (``bytearray(b"a") == b"a"``, ``{1} == frozenset({1})``, ``Decimal(1) == 1``, a
    str-valued enum's member and its str, a named tuple and a tuple), so equality alone cannot
    show that a value passed for `tp` is of its type."""
    try:
        info = msgspec.inspect.type_info(tp)
    except Exception:  # a type msgspec cannot describe: check every value the long way
        return True
    i = msgspec.inspect
    for node in _parts(info):
        if isinstance(
            node,
            i.BytesType
            | i.ByteArrayType
            | i.MemoryViewType
            | i.SetType
            | i.FrozenSetType
            | i.DecimalType
            | i.NamedTupleType,
        ):
            return True
        if isinstance(node, i.EnumType) and getattr(node.cls, "_member_type_", object) is not object:
            return True  # an IntEnum's, a StrEnum's member equals its value
    return False


def inexact(copy: object, value: object, *, abstract: bool = False) -> str | None:
    """Where `value` differs from `copy`, its decoded copy as the declared type, worded as
    msgspec words a mismatch (``Expected `str`, got `UUID` - at `$.name` ``), or ``None``.

    A value is exact when it is an instance of the type its copy has (an int where a float is
    declared, as msgspec's strict mode takes it, too) and equal to its copy; a struct (or a
    dict of its fields, a dataclass) and a container are compared part by part. With
    `abstract` (the declared type holds a ``Sequence`` or an ``AbstractSet``, `_Plan`), a
    tuple is taken for a list and a frozenset for a set, and the other way round.
    """
    todo: list[tuple[Any, Any, str]] = [(copy, value, "$")]
    while todo:
        c, v, path = todo.pop()
        kind = type(c)
        parts: list[tuple[Any, Any, str]] = []
        if isinstance(c, msgspec.Struct):
            fields = msgspec.structs.fields(kind)
            if isinstance(v, dict):
                given = [v.get(f.encode_name, _MISSING) for f in fields]
            elif isinstance(v, list | tuple) and kind.__struct_config__.array_like:
                given = [*v, *[_MISSING] * (len(fields) - len(v))]
            elif isinstance(v, msgspec.Struct) or dataclasses.is_dataclass(v) or hasattr(type(v), "__attrs_attrs__"):
                given = [getattr(v, f.name, _MISSING) for f in fields]
            else:
                return _expected(c, v, path)
            parts = [
                (getattr(c, f.name), g, f"{path}.{f.encode_name}")
                for f, g in zip(fields, given, strict=False)
                if g is not _MISSING
            ]
        elif kind is dict:
            if not isinstance(v, dict):
                return _expected(c, v, path)
            if len(c) != len(v):  # two keys the declared key type makes one ({1: .., "1": ..})
                return f"Two keys are one key as the declared key type - at `{path}`"
            for (ck, cv), (vk, vv) in zip(c.items(), v.items(), strict=True):  # msgspec keeps their order
                problem = _leaf(ck, vk, f"{path}[{vk!r:.40}] (a key)")
                if problem is not None:
                    return problem
                parts.append((cv, vv, f"{path}[{vk!r:.40}]"))
        elif kind is list or kind is tuple:
            if not isinstance(v, list | tuple if abstract else kind) or len(c) != len(v):
                return _expected(c, v, path)
            parts = [(ci, vi, f"{path}[{n}]") for n, (ci, vi) in enumerate(zip(c, v, strict=True))]
        elif kind is set or kind is frozenset:
            if not isinstance(v, set | frozenset if abstract else kind):
                return _expected(c, v, path)
            if c != v:
                odd = next((item for item in v if item not in c), None)
                return f"Expected the set's items as declared, got `{_kind_name(odd)}` - at `{path}[...]`"
            copies = {ci: ci for ci in c}
            for item in v:  # equal sets: each item's type
                problem = _leaf(copies[item], item, f"{path}[...]")
                if problem is not None:
                    return problem
        elif dataclasses.is_dataclass(c):
            if type(v) is not kind and not isinstance(v, dict):
                return _expected(c, v, path)
            for name in (f.name for f in dataclasses.fields(c)):
                g = v.get(name, _MISSING) if isinstance(v, dict) else getattr(v, name, _MISSING)
                if g is not _MISSING:
                    parts.append((getattr(c, name), g, f"{path}.{name}"))
        else:
            problem = _leaf(c, v, path)
            if problem is not None:
                return problem
        todo.extend(reversed(parts))  # the first part is looked at first
    return None


_MISSING = object()


def _leaf(c: object, v: object, path: str) -> str | None:
    kind = type(c)
    if isinstance(v, kind) or (kind is float and type(v) is not bool and isinstance(v, int)):
        with contextlib.suppress(Exception):  # a value's own __eq__: worded below
            if c == v:
                return None
        return (
            f"{safe_repr(v):.60} does not keep its value as `{_kind_name(c)}` "
            f"(it becomes {safe_repr(c):.60}) - at `{path}`"
        )
    return _expected(c, v, path)


def _expected(c: object, v: object, path: str) -> str:
    return f"Expected `{_kind_name(c)}`, got `{type(v).__name__}` - at `{path}`"


def _kind_name(c: object) -> str:
    return "None" if c is None else type(c).__name__


#: A match where msgspec may have written a nan or an infinity (as ``null``, or as a ``"nan"`` or
#: ``"inf"`` key) in an encoding, ``None`` where none can hide: `non_finite` looks only on a match.
#: One search, not ``b"null" in raw`` and the like: CPython 3.11 first tries a ``bytes``'s
#: operand of ``in`` as an int and raises and clears a TypeError, about 1.9k instructions each.
may_hide_non_finite = re.compile(rb'null|nan":|inf":').search

_mi = msgspec.inspect
#: Types whose values hold no float, nor anything else.
_NO_FLOAT_LEAVES = (
    _mi.NoneType,
    _mi.BoolType,
    _mi.IntType,
    _mi.StrType,
    _mi.BytesType,
    _mi.ByteArrayType,
    _mi.DateTimeType,
    _mi.DateType,
    _mi.TimeType,
    _mi.UUIDType,
    _mi.LiteralType,
)

#: Types that hold only what their items, members or keys and values hold.
_NO_FLOAT_CONTAINERS = (
    _mi.UnionType,
    _mi.ListType,
    _mi.SetType,
    _mi.FrozenSetType,
    _mi.VarTupleType,
    _mi.TupleType,
    _mi.DictType,
    _mi.FrozenDictType,
)
_NO_FLOAT_NODES = _NO_FLOAT_LEAVES + _NO_FLOAT_CONTAINERS

#: The ``__eq__`` of a struct, a named tuple and a dict (a typed dict's values) as msgspec and
#: Python define them: each compares every field or item.
_FIELDWISE_EQ = (msgspec.Struct.__eq__, tuple.__eq__, dict.__eq__)


def holds_no_float(tp: Any) -> bool:
    """Whether no value of `tp` can hold a float anywhere (a field, an item, a dict's key), so no
    nan or infinity can hide in its encoding and `may_hide_non_finite` need not search it.

    A quick check that skips the search counts on its decode and ``==`` to refuse a nan put
    where no float belongs (written as ``null``, it reads back as ``None`` in an ``int | None``
    field): so every class in `tp` must compare as msgspec's structs and Python's tuples do,
    field by field. ``False`` when unsure: a float, ``Any``, a decimal, a custom type, an enum
    whose values are not all ints and strings, a dataclass or an attrs class (whose ``__eq__``
    may be the user's, comparing an id only), a struct or a named tuple with an ``__eq__`` of
    its own, or a type msgspec cannot describe. Made once per type.
    """
    try:
        root = _mi.type_info(tp)
    except Exception:  # not a type msgspec describes: unsure
        return False
    for t in _parts(root):  # every node once, a recursive struct's too
        if not isinstance(t, _mi.Type) or isinstance(t, _NO_FLOAT_NODES):
            continue  # a container's items are nodes of their own
        if isinstance(t, _mi.EnumType):
            if not all(type(member.value) in (int, str) for member in t.cls):
                return False
        elif isinstance(t, _mi.StructType | _mi.TypedDictType | _mi.NamedTupleType):
            if getattr(t, "cls", dict).__eq__ not in _FIELDWISE_EQ:
                return False
        else:  # a float, a decimal, Any, a custom type, a dataclass or an attrs class among them
            return False
    return True


def non_finite(value: object) -> str | None:
    """Where `value` holds a nan or ±inf float, worded for an error, or ``None`` if it holds none.

    JSON has no form for them: msgspec's encoder writes each as ``null``, so
    a ``float | None`` field would be stored as ``None`` and a ``float`` field
    refused as "got null" (a null the caller never passed). A dict's float
    key is looked at too: msgspec writes one as text (``"nan"``), which
    JSON's other readers (PostgreSQL's jsonb among them) do not read as a
    float. A float's subclass counts, and so does an enum member whose value
    holds one (a float enum's, or a plain enum's: msgspec writes a member as its
    value, so an ``Any`` field took ``Mode.NAN`` as ``null``). A `Decimal` nan is
    none of these: msgspec writes it as the text ``"NaN"``, read back as it was.
    `_check` calls this only when an encoding holds ``null`` or a key
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
                if type(name) is not str and _non_finite_key(name):  # written as text: "nan", "-inf"
                    return _non_finite_message(name, within, key, " as a key")
            todo += zip(item.values(), repeat((within, key, "[]")), item.keys())
        elif isinstance(item, list | tuple | set | frozenset):
            todo += zip(item, repeat((within, key, "[]")), count())
        elif isinstance(item, enum.Enum):  # msgspec writes a member as its value (a float enum's too)
            if isinstance(item, float) and item - item:
                return _non_finite_message(item, within, key)
            todo.append((item.value, within, key))
        elif isinstance(item, float):  # a subclass: refused by the encoder, unless a hook makes it a float
            if item - item:
                return _non_finite_message(item, within, key)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            names = [f.name for f in dataclasses.fields(item)]
            todo += zip([getattr(item, n, None) for n in names], repeat((within, key, ".")), names)
        else:
            attributes = getattr(kind, "__attrs_attrs__", None)  # an attrs class, which msgspec encodes too
            if attributes is not None:
                names = [a.name for a in attributes]
                todo += zip([getattr(item, n, None) for n in names], repeat((within, key, ".")), names)
    return None


def _non_finite_key(name: object) -> bool:
    """Whether a dict key is a nan or ±inf float (a subclass's, a float enum's member, or the
    value of another enum's member, as msgspec writes a member): a key written as text."""
    if isinstance(name, enum.Enum) and not isinstance(name, float):
        name = name.value
    return isinstance(name, float) and bool(name - name)


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


_canonical_encoder = msgspec.json.Encoder(order="deterministic")
_plain_encoder = msgspec.json.Encoder()


def canonical_json(tp: Any, raw: bytes) -> bytes:
    """`raw`, the checked JSON of a `tp`, written so that equal values give equal bytes.

    msgspec writes a dict's keys in insertion order and a set's items in iteration order (for
    strings, an order that differs between processes: hash randomisation), so equal params
    had different encodings. Decoded as `tp` (sets are sets again) and written with
    ``order="deterministic"``, dict keys and set items are sorted, and a struct's fields stay
    in their declared order, so the JSON of params holding no dict or set is `raw` itself (a
    unique key stored before keeps matching). Params whose sets mix types that do not sort
    are written as they came.

    A float ``-0.0`` is written as ``0.0``, as a value or as a dict's key (``dict[float, ...]``,
    written as the text ``"-0.0"``): the two are equal in Python (``-0.0 == 0.0``, one dict key),
    so params holding one or the other are equal params, where their JSON differs. A ``float``
    field writes ``1`` and ``1.0`` alike (decoded as a float, both are ``1.0``); in a field
    typed ``int | float`` or ``Any`` they stay two values, as their JSON differs.
    """
    try:
        value = _decoder(tp).decode(raw)
        try:
            written = _canonical_encoder.encode(value)
        except TypeError:  # the encoder sorts str keys only: a dict[int, ...] or dict[float, ...]
            _text_keys(value)
            written = _canonical_encoder.encode(value)
    except Exception:  # items that do not sort (a set[int | str]): the encoding as written
        written = raw
    if b"-0" not in written:  # no negative zero anywhere (nearly every params): as written
        return written
    # Read back as plain values (objects keep the order written) and written again with each
    # -0.0 as 0.0; text, integers and every other float come back byte for byte.
    return _plain_encoder.encode(_positive_zeros(msgspec.json.decode(written)))


def _text_keys(value: object) -> None:
    """Each dict in `value` (a freshly decoded value, changed in place) whose keys are not all
    `str` (``dict[int, ...]``, ``dict[float, ...]``, enum keys) keyed by each key's JSON text
    instead, as msgspec writes it, so a deterministic encoder can sort them; a float key ``-0.0``
    as ``0.0``'s text (one key in Python). Two keys of one text (``1`` and ``"1"`` in a
    ``dict[int | str, ...]``) would make unequal params one: a `ValueError` then."""
    todo: list[object] = [value]
    while todo:
        item = todo.pop()
        kind = type(item)
        if kind is str or kind is int or kind is float or kind is bool or item is None:
            continue
        if isinstance(item, msgspec.Struct):
            todo += msgspec.structs.astuple(item)
        elif isinstance(item, dict):
            todo += item.values()
            if all(type(key) is str for key in item):
                continue
            texted = {_key_text(0.0 if type(key) is float and key == 0 else key): v for key, v in item.items()}
            if len(texted) != len(item):
                raise ValueError("two dict keys of one JSON text")
            item.clear()
            item.update(texted)
        elif isinstance(item, list | tuple | set | frozenset):
            todo += item
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            todo += [getattr(item, f.name, None) for f in dataclasses.fields(item)]
        else:
            attributes = getattr(kind, "__attrs_attrs__", None)  # an attrs class, which msgspec decodes too
            if attributes is not None:
                todo += [getattr(item, a.name, None) for a in attributes]


def _key_text(key: object) -> str:
    """`key` as msgspec writes a dict key (``1.5`` as ``"1.5"``, an enum member as its value)."""
    return cast(str, next(iter(msgspec.json.decode(_plain_encoder.encode({key: None})))))


def _positive_zeros(value: Any) -> Any:
    """`value` (plain JSON values) with each float ``-0.0`` written as ``0.0``."""
    if isinstance(value, float):
        return 0.0 if value == 0 else value
    if isinstance(value, list):
        return [_positive_zeros(item) for item in value]
    if isinstance(value, dict):
        return {key: _positive_zeros(item) for key, item in value.items()}
    return value


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
    quick = _struct_free(tp) and not equal_across_types(tp)

    def copy(value: object) -> tuple[bytes, T] | ValidationError:
        if quick and type(value) is tp:
            try:
                raw = _encoder.encode(value)
                # A null (or a "nan": key) may be a nan msgspec wrote so (`non_finite`); one is
                # refused, and worded, below.
                if len(raw) <= limit and (may_hide_non_finite(raw) is None or non_finite(value) is None):
                    decoded = plain.decode(raw)
                    if decoded == value:  # nothing was turned into another type (`_check`)
                        return raw, decoded
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
    it holds ``null``, the value no nan or ±inf (`non_finite`), and the decoded
    copy equal to the value (nothing turned into another type, as `_check`
    demands); whatever it refuses or raises goes to `copier`'s function, which
    words the error. ``None`` unless `tp` is a struct whose fields hold no
    struct at any depth, nor a type equality cannot tell apart (`equal_across_types`).
    """
    if not _struct_free(tp) or equal_across_types(tp):
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
