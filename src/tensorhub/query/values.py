"""BSON values as MongoDB compares them: type brackets, cross-type order, equality, type names.

Values of different BSON types order by type bracket (null < numbers < strings < objects <
arrays < binary < ObjectId < booleans < dates < regexes); numbers compare by value whatever
their type (int, long, double, decimal), NaN below every other number and equal to itself;
strings by their UTF-8 bytes; binary data by length, then subtype, then bytes (MongoDB's
documented BinData order); documents field by field.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping
from typing import Any

from bson import ObjectId
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.regex import Regex

from tensorhub.errors import InvalidQueryError


class _Missing:
    """Marks a path that does not exist in a document (distinct from an explicit ``None``)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()


class _Undefined:
    """The sort key of an empty array: below ``null`` and missing, as in MongoDB."""

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED = _Undefined()

NUMBER_TYPES = (int, float, Decimal128)
ARRAY_TYPES = (list, tuple)
REGEX_TYPES = (re.Pattern, Regex)
_EXACT_RANKS = {type(None): 2, bool: 9, int: 3, float: 3, Decimal128: 3, Int64: 3, str: 4, dict: 5, list: 6,
                tuple: 6, bytes: 7, ObjectId: 8, _dt.datetime: 10}

#: the option letters MongoDB knows for a regex, and the Python flags that mean the same
REGEX_FLAG_LETTERS = {"i": re.I, "m": re.M, "s": re.S, "x": re.X}


def type_rank(value: Any) -> int:
    """BSON comparison order of ``value``'s type (MongoDB's sort brackets)."""
    rank = _EXACT_RANKS.get(type(value))
    if rank is not None:  # the common types, without isinstance chains (hot in scans)
        return rank
    if value is None or value is MISSING:
        return 2
    if value is UNDEFINED:
        return 1
    if isinstance(value, bool):
        return 9
    if isinstance(value, NUMBER_TYPES):
        return 3
    if isinstance(value, str):
        return 4
    if isinstance(value, Mapping):
        return 5
    if isinstance(value, ARRAY_TYPES):
        return 6
    if isinstance(value, (bytes, bytearray)):
        return 7
    if isinstance(value, ObjectId):
        return 8
    if isinstance(value, _dt.datetime):
        return 10
    if isinstance(value, REGEX_TYPES):
        return 12
    raise InvalidQueryError(f"cannot compare a value of type {type(value).__name__} in a query")


def as_number(value: Any) -> Any:
    """A number as a Python int or float (Decimal128 as float)."""
    return float(value.to_decimal()) if isinstance(value, Decimal128) else value


def is_number(value: Any) -> bool:
    """Whether ``value`` is a BSON number (bool is not one, although Python makes it an int)."""
    return isinstance(value, NUMBER_TYPES) and not isinstance(value, bool)


def is_nan(value: Any) -> bool:
    """Whether ``value`` is a NaN number (float or Decimal128)."""
    if not is_number(value):
        return False
    number = as_number(value)
    return number != number


def _utc(value: _dt.datetime) -> _dt.datetime:
    """Treat naive datetimes as UTC, as MongoDB stores them."""
    return value.replace(tzinfo=_dt.timezone.utc) if value.tzinfo is None else value


def cmp(a: Any, b: Any) -> int:
    """Three-way comparison of two values Python can order."""
    return (a > b) - (a < b)


def regex_flags(value: Any) -> str:
    """A regex's options as MongoDB letters, sorted (``"im"``), from ``re.Pattern`` or ``bson.Regex``."""
    flags = value.flags
    if isinstance(flags, str):
        return "".join(sorted(set(flags) - {"u"}))
    return "".join(letter for letter, bit in sorted(REGEX_FLAG_LETTERS.items()) if flags & bit)


def regex_key(value: Any) -> tuple[str, str]:
    """A regex's pattern and flags, comparable between ``re.Pattern`` and ``bson.Regex``."""
    return value.pattern, regex_flags(value)


def binary_key(value: Any) -> tuple[int, int, bytes]:
    """MongoDB's BinData order: length first, then the subtype, then the bytes (plain bytes: subtype 0)."""
    return len(value), getattr(value, "subtype", 0), bytes(value)


def _compare_documents(a: Mapping[str, Any], b: Mapping[str, Any]) -> int:
    """BSON order of two documents: field by field, type bracket first, then name, then value."""
    for (ka, va), (kb, vb) in zip(a.items(), b.items()):
        c = cmp(type_rank(va), type_rank(vb)) or cmp(ka.encode("utf-8"), kb.encode("utf-8"))
        c = c or compare_values(va, vb)
        if c:
            return c
    return cmp(len(a), len(b))


def compare_values(a: Any, b: Any) -> int:
    """Three-way comparison in MongoDB's order: -1, 0 or 1."""
    ra, rb = type_rank(a), type_rank(b)
    if ra != rb:
        return cmp(ra, rb)
    if ra in (1, 2):
        return 0
    if ra == 3:
        x, y = as_number(a), as_number(b)
        if x != x or y != y:  # NaN sorts below every other number and equals itself
            return cmp(x == x, y == y)
        return cmp(x, y)
    if ra == 4:
        return cmp(a.encode("utf-8"), b.encode("utf-8"))
    if ra == 5:
        return _compare_documents(a, b)
    if ra == 6:
        for va, vb in zip(a, b):
            c = compare_values(va, vb)
            if c:
                return c
        return cmp(len(a), len(b))
    if ra == 7:
        return cmp(binary_key(a), binary_key(b))
    if ra == 8:
        return cmp(a.binary, b.binary)
    if ra == 10:
        return cmp(_utc(a), _utc(b))
    if ra == 12:
        return cmp(regex_key(a), regex_key(b))
    return cmp(a, b)


def equal(a: Any, b: Any) -> bool:
    """MongoDB equality: same type bracket and equal in its order (``1 == 1.0``, ``True != 1``)."""
    return type_rank(a) == type_rank(b) and compare_values(a, b) == 0


_INT32 = range(-(2**31), 2**31)


def bson_type(value: Any) -> str:
    """The BSON type name ``$type`` knows ``value`` by.

    A plain Python ``int`` is ``"int"`` when it fits 32 bits and ``"long"`` otherwise, as PyMongo
    encodes it; ``bson.Int64`` is always ``"long"``.
    """
    kind = type(value)
    name = _TYPE_NAMES.get(kind)
    if name is not None:
        if name == "int" and value not in _INT32:
            return "long"
        return name
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Int64):
        return "long"
    if isinstance(value, int):
        return "int" if value in _INT32 else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, ARRAY_TYPES):
        return "array"
    if isinstance(value, (bytes, bytearray)):
        return "binData"
    if isinstance(value, _dt.datetime):
        return "date"
    if isinstance(value, REGEX_TYPES):
        return "regex"
    return kind.__name__


_TYPE_NAMES: dict[type, str] = {
    float: "double", str: "string", dict: "object", list: "array", tuple: "array", bytes: "binData",
    ObjectId: "objectId", bool: "bool", _dt.datetime: "date", type(None): "null", Regex: "regex",
    re.Pattern: "regex", int: "int", Int64: "long", Decimal128: "decimal",
}
#: ``$type`` names, and the numbers MongoDB also accepts for them
BSON_TYPE_NAMES = frozenset([*_TYPE_NAMES.values(), "number"])
BSON_TYPE_CODES = {1: "double", 2: "string", 3: "object", 4: "array", 5: "binData", 7: "objectId", 8: "bool",
                   9: "date", 10: "null", 11: "regex", 16: "int", 18: "long", 19: "decimal"}
NUMERIC_TYPE_NAMES = frozenset(["int", "long", "double", "decimal"])
