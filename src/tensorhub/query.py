"""MongoDB's query language, evaluated in Python.

Backends without a query engine of their own (``file://``, ``s3://``) filter, sort and
update documents with this module, so a query means the same there as on MongoDB. It follows
MongoDB's rules: a condition on an array field matches if the array or any element matches;
values of different BSON types order by type bracket (null < numbers < strings < objects <
arrays < binary < ObjectId < booleans < dates); ``{"f": None}`` matches a missing field.

Supported: ``$eq $ne $gt $gte $lt $lte $in $nin $exists $regex $options $not $and $or $nor
$all $size $elemMatch $mod $type``; updates ``$set $unset $inc $push $min $max``.
The differential test in ``tests/test_query_differential.py`` checks this against a MongoDB-wire server.
"""

from __future__ import annotations

import datetime as _dt
import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

from bson import ObjectId
from bson.decimal128 import Decimal128
from bson.regex import Regex

from tensorhub.errors import InvalidQueryError

__all__ = ["matches", "sort_documents", "apply_update", "compare_values"]


class _Missing:
    """Marks a path that does not exist in a document (distinct from an explicit ``None``)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()

_NUMBER_TYPES = (int, float, Decimal128)


def _type_rank(value: Any) -> int:
    """BSON comparison order of ``value``'s type (MongoDB's sort brackets)."""
    if value is None or value is MISSING:
        return 2
    if isinstance(value, bool):
        return 9
    if isinstance(value, _NUMBER_TYPES):
        return 3
    if isinstance(value, str):
        return 4
    if isinstance(value, Mapping):
        return 5
    if isinstance(value, (list, tuple)):
        return 6
    if isinstance(value, (bytes, bytearray)):
        return 7
    if isinstance(value, ObjectId):
        return 8
    if isinstance(value, _dt.datetime):
        return 10
    if isinstance(value, (re.Pattern, Regex)):
        return 12
    raise InvalidQueryError(f"cannot compare a value of type {type(value).__name__} in a query")


def _as_number(value: Any) -> float:
    return float(value.to_decimal()) if isinstance(value, Decimal128) else value


def _utc(value: _dt.datetime) -> _dt.datetime:
    """Treat naive datetimes as UTC, as MongoDB stores them."""
    return value.replace(tzinfo=_dt.timezone.utc) if value.tzinfo is None else value


def _cmp(a: Any, b: Any) -> int:
    return (a > b) - (a < b)


def compare_values(a: Any, b: Any) -> int:
    """Three-way comparison in MongoDB's order: -1, 0 or 1."""
    ra, rb = _type_rank(a), _type_rank(b)
    if ra != rb:
        return _cmp(ra, rb)
    if ra == 2:
        return 0
    if ra == 3:
        x, y = _as_number(a), _as_number(b)
        if x != x or y != y:  # NaN sorts below every other number and equals itself
            return _cmp(x == x, y == y)
        return _cmp(x, y)
    if ra == 4:
        return _cmp(a.encode("utf-8"), b.encode("utf-8"))
    if ra == 5:
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):
            c = compare_values(va, vb) or _cmp(ka, kb)
            if c:
                return c
        return _cmp(len(a), len(b))
    if ra == 6:
        for va, vb in zip(a, b):
            c = compare_values(va, vb)
            if c:
                return c
        return _cmp(len(a), len(b))
    if ra == 8:
        return _cmp(a.binary, b.binary)
    if ra == 10:
        return _cmp(_utc(a), _utc(b))
    if ra == 12:
        return _cmp(str(a), str(b))
    return _cmp(a, b)


def _equal(a: Any, b: Any) -> bool:
    return _type_rank(a) == _type_rank(b) and compare_values(a, b) == 0


def _resolve(value: Any, parts: Sequence[str]) -> list[Any]:
    """Every value a dotted path reaches, descending into arrays as MongoDB does."""
    if not parts:
        return [value]
    head, rest = parts[0], parts[1:]
    if isinstance(value, Mapping):
        return _resolve(value[head], rest) if head in value else [MISSING]
    if isinstance(value, (list, tuple)):
        found: list[Any] = []
        if head.isdigit() and int(head) < len(value):
            found.extend(_resolve(value[int(head)], rest))
        for element in value:
            if isinstance(element, Mapping):
                found.extend(_resolve(element, parts))
        return found or [MISSING]
    return [MISSING]


def _expand(values: list[Any]) -> list[Any]:
    """The candidates a scalar condition tests: each value, and each element of an array value."""
    out: list[Any] = []
    for v in values:
        out.append(v)
        if isinstance(v, (list, tuple)):
            out.extend(v)
    return out


def _regex_of(pattern: Any, options: str = "") -> re.Pattern:
    if isinstance(pattern, Regex):
        pattern = pattern.try_compile()
    if isinstance(pattern, re.Pattern):
        if not options:
            return pattern
        pattern = pattern.pattern
    flags = 0
    for letter in options:
        flags |= {"i": re.I, "m": re.M, "s": re.S, "x": re.X}.get(letter, 0)
    try:
        return re.compile(pattern, flags)
    except (re.error, TypeError) as exc:
        raise InvalidQueryError(f"invalid $regex {pattern!r}: {exc}") from exc


def _value_equals(candidate: Any, target: Any) -> bool:
    if isinstance(target, (re.Pattern, Regex)):
        return isinstance(candidate, str) and _regex_of(target).search(candidate) is not None
    if target is None:
        return candidate is None or candidate is MISSING
    return candidate is not MISSING and _equal(candidate, target)


def _field_equals(values: list[Any], target: Any) -> bool:
    return any(_value_equals(c, target) for c in _expand(values))


def _ordered(values: list[Any], target: Any, accept: Any) -> bool:
    """``$gt``-style comparison: only values in the same type bracket as ``target`` compare."""
    if target is None:
        # $gte/$lte null match null and missing; $gt/$lt null match nothing.
        return accept(0) and any(c is None or c is MISSING for c in _expand(values))
    rank = _type_rank(target)
    return any(
        c is not MISSING and _type_rank(c) == rank and accept(compare_values(c, target))
        for c in _expand(values)
    )


_BSON_TYPE_ALIASES = {
    "double": (float,), "string": (str,), "object": (dict,), "array": (list, tuple),
    "objectId": (ObjectId,), "bool": (bool,), "date": (_dt.datetime,), "null": (type(None),),
    "int": (int,), "long": (int,), "decimal": (Decimal128,), "number": (int, float, Decimal128),
}


def _type_matches(values: list[Any], names: Any) -> bool:
    names = names if isinstance(names, list) else [names]
    kinds: list[type] = []
    for name in names:
        if name not in _BSON_TYPE_ALIASES:
            raise InvalidQueryError(f"$type {name!r} is not supported; use one of {sorted(_BSON_TYPE_ALIASES)}")
        kinds.extend(_BSON_TYPE_ALIASES[name])
    for c in _expand(values):
        if c is MISSING:
            continue
        if isinstance(c, bool) and bool not in kinds:
            continue
        if isinstance(c, kinds):
            return True
    return False


def _operator_matches(values: list[Any], op: str, arg: Any, condition: Mapping[str, Any]) -> bool:
    if op == "$eq":
        return _field_equals(values, arg)
    if op == "$ne":
        return not _field_equals(values, arg)
    if op == "$gt":
        return _ordered(values, arg, lambda c: c > 0) if arg is not None else False
    if op == "$gte":
        return _ordered(values, arg, lambda c: c >= 0)
    if op == "$lt":
        return _ordered(values, arg, lambda c: c < 0) if arg is not None else False
    if op == "$lte":
        return _ordered(values, arg, lambda c: c <= 0)
    if op in ("$in", "$nin"):
        if not isinstance(arg, (list, tuple)):
            raise InvalidQueryError(f"{op} needs a list, got {type(arg).__name__}")
        hit = any(_field_equals(values, t) for t in arg)
        return hit if op == "$in" else not hit
    if op == "$exists":
        present = any(v is not MISSING for v in values)
        return present == bool(arg)
    if op == "$regex":
        rx = _regex_of(arg, condition.get("$options", ""))
        return any(isinstance(c, str) and rx.search(c) for c in _expand(values))
    if op == "$options":
        if "$regex" not in condition:
            raise InvalidQueryError("$options needs a $regex beside it")
        return True
    if op == "$not":
        if isinstance(arg, (re.Pattern, Regex)):
            return not _field_equals(values, arg)
        if not isinstance(arg, Mapping) or not arg:
            raise InvalidQueryError("$not needs an operator expression such as {'$gt': 1} or a regex")
        return not _condition_matches(values, arg)
    if op == "$all":
        if not isinstance(arg, (list, tuple)):
            raise InvalidQueryError("$all needs a list")
        return bool(arg) and all(_field_equals(values, t) for t in arg)
    if op == "$size":
        return any(isinstance(v, (list, tuple)) and len(v) == arg for v in values)
    if op == "$elemMatch":
        if not isinstance(arg, Mapping):
            raise InvalidQueryError("$elemMatch needs a document")
        for v in values:
            if not isinstance(v, (list, tuple)):
                continue
            for element in v:
                if _elem_matches(element, arg):
                    return True
        return False
    if op == "$mod":
        if not (isinstance(arg, (list, tuple)) and len(arg) == 2):
            raise InvalidQueryError("$mod needs [divisor, remainder]")
        divisor, remainder = arg
        return any(
            isinstance(c, (int, float)) and not isinstance(c, bool) and int(c) % divisor == remainder
            for c in _expand(values)
            if c is not MISSING
        )
    if op == "$type":
        return _type_matches(values, arg)
    raise InvalidQueryError(
        f"unsupported query operator {op!r}; supported: $eq $ne $gt $gte $lt $lte $in $nin $exists "
        "$regex $not $all $size $elemMatch $mod $type, and $and $or $nor at the top"
    )


def _elem_matches(element: Any, query: Mapping[str, Any]) -> bool:
    if any(k.startswith("$") for k in query) and not any(k in ("$and", "$or", "$nor") for k in query):
        return _condition_matches([element], query)
    return isinstance(element, Mapping) and matches(element, query)


def _is_operator_doc(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(str(k).startswith("$") for k in value)


def _condition_matches(values: list[Any], condition: Any) -> bool:
    if _is_operator_doc(condition):
        return all(_operator_matches(values, op, arg, condition) for op, arg in condition.items())
    return _field_equals(values, condition)


def matches(document: Mapping[str, Any], query: Mapping[str, Any]) -> bool:
    """Whether ``document`` matches the MongoDB filter ``query``."""
    if not isinstance(query, Mapping):
        raise InvalidQueryError(f"a query must be a dict, got {type(query).__name__}")
    for key, condition in query.items():
        if key in ("$and", "$or", "$nor"):
            if not isinstance(condition, (list, tuple)) or not condition:
                raise InvalidQueryError(f"{key} needs a non-empty list of queries")
            results = (matches(document, q) for q in condition)
            ok = all(results) if key == "$and" else any(results)
            if (key == "$nor") == ok:
                return False
        elif key == "$comment":
            continue
        elif key.startswith("$"):
            raise InvalidQueryError(f"unsupported top-level operator {key!r}; use $and, $or or $nor")
        elif not _condition_matches(_resolve(document, key.split(".")), condition):
            return False
    return True


def _sort_value(document: Mapping[str, Any], field: str, direction: int) -> Any:
    values = [v for v in _resolve(document, field.split(".")) if v is not MISSING]
    flat: list[Any] = []
    for v in values:
        if isinstance(v, (list, tuple)):
            flat.extend(v) if v else flat.append(v)
        else:
            flat.append(v)
    if not flat:
        return None
    key = functools.cmp_to_key(compare_values)
    return min(flat, key=key) if direction > 0 else max(flat, key=key)


def normalize_sort(sort: Any) -> list[tuple[str, int]]:
    """Accept PyMongo's sort forms (``[("f", -1)]``, ``("f", -1)``, ``"f"``) and return a list of pairs."""
    if sort is None:
        return []
    if isinstance(sort, str):
        return [(sort, 1)]
    if isinstance(sort, tuple) and len(sort) == 2 and isinstance(sort[0], str):
        sort = [sort]
    if isinstance(sort, Mapping):
        sort = list(sort.items())
    try:
        pairs = [(str(field), int(direction)) for field, direction in sort]
    except (TypeError, ValueError) as exc:
        raise InvalidQueryError(f"sort must look like [('time', -1)], got {sort!r}") from exc
    for field, direction in pairs:
        if direction not in (1, -1):
            raise InvalidQueryError(f"sort direction for {field!r} must be 1 or -1, got {direction}")
    return pairs


def sort_documents(documents: list[dict], sort: Any) -> list[dict]:
    """Sort documents in place order by a PyMongo sort spec (stable, MongoDB's type order)."""
    for field, direction in reversed(normalize_sort(sort)):
        documents.sort(
            key=functools.cmp_to_key(
                lambda a, b, f=field, d=direction: compare_values(_sort_value(a, f, d), _sort_value(b, f, d))
            ),
            reverse=direction < 0,
        )
    return documents


def _parent(document: dict, path: str, create: bool) -> tuple[Any, str]:
    parts = path.split(".")
    node: Any = document
    for part in parts[:-1]:
        if isinstance(node, list) and part.isdigit():
            node = node[int(part)]
            continue
        if part not in node or not isinstance(node[part], (dict, list)):
            if not create:
                return None, parts[-1]
            node[part] = {}
        node = node[part]
    return node, parts[-1]


def apply_update(document: dict, update: Mapping[str, Any]) -> dict:
    """Apply a MongoDB update document to ``document`` in place and return it."""
    if not update or not all(str(k).startswith("$") for k in update):
        raise InvalidQueryError("an update must use operators such as {'$set': {...}}")
    for op, fields in update.items():
        for path, value in fields.items():
            if path == "_id" and op != "$setOnInsert":
                raise InvalidQueryError("the _id of a record cannot be changed")
            parent, leaf = _parent(document, path, create=op != "$unset")
            if parent is None:
                continue
            if op == "$set":
                parent[leaf] = value
            elif op == "$unset":
                parent.pop(leaf, None)
            elif op == "$inc":
                parent[leaf] = parent.get(leaf, 0) + value
            elif op == "$push":
                parent.setdefault(leaf, []).append(value)
            elif op == "$min":
                if leaf not in parent or compare_values(value, parent[leaf]) < 0:
                    parent[leaf] = value
            elif op == "$max":
                if leaf not in parent or compare_values(value, parent[leaf]) > 0:
                    parent[leaf] = value
            else:
                raise InvalidQueryError(f"unsupported update operator {op!r}; use $set $unset $inc $push $min $max")
    return document


def validate_filter(query: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidQueryError` for a malformed filter, even when no document would be tested.

    Evaluating a filter only checks the operators it reaches; this walks all of them, so a typo
    such as ``{"$gtt": 1}`` fails the same way on an empty collection as on a full one.
    """
    probe: dict = {}
    if not isinstance(query, Mapping):
        raise InvalidQueryError(f"a query must be a dict, got {type(query).__name__}")
    for key, condition in query.items():
        if key in ("$and", "$or", "$nor"):
            if not isinstance(condition, (list, tuple)) or not condition:
                raise InvalidQueryError(f"{key} needs a non-empty list of queries")
            for sub in condition:
                validate_filter(sub)
        elif _is_operator_doc(condition):
            for op, arg in condition.items():
                if op == "$not" and isinstance(arg, Mapping):
                    validate_filter({key: arg})
                elif op == "$elemMatch" and isinstance(arg, Mapping) and not _is_operator_doc(arg):
                    validate_filter(arg)
                else:
                    _operator_matches([MISSING], op, arg, condition)
        else:
            matches(probe, {key: condition})
