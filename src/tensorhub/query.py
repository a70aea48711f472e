"""MongoDB's query language, evaluated in Python.

Backends without a query engine of their own (``file://``, ``s3://``) filter, sort and
update documents with this module, so a query means the same there as on MongoDB. It follows
MongoDB's rules: a condition on an array field matches if the array or any element matches;
values of different BSON types order by type bracket (null < numbers < strings < objects <
arrays < binary < ObjectId < booleans < dates); ``{"f": None}`` matches a missing field.
Dotted paths are walked the way the server's matcher walks them (``_resolve``), and sorts use
the keys its index key generator would produce (``_sort_keys``); the two differ on purpose.

Supported: ``$eq $ne $gt $gte $lt $lte $in $nin $exists $regex $options $not $and $or $nor
$all $size $elemMatch $mod $type``; updates ``$set $unset $inc $push $min $max``.
The differential test in ``tests/test_query_differential.py`` checks this against a MongoDB-wire server.

:func:`validate_filter` walks a whole filter before anything is evaluated: every key must be a
string, and every operator, at any depth (inside ``$elemMatch``, ``$not``, ``$all`` and the
logical operators too), must be one of the above, so operators MongoDB would run on the server
(``$where``, ``$expr``, ``$function``, ``$accumulator``, ``$text``...) fail on every backend.

Regexes run with the ``regex`` package (PCRE-like, as MongoDB's) under a time limit, since a
pattern such as ``^(a+)+$`` can backtrack for minutes on one short string: every regex search of
one query evaluation (:func:`regex_budget`) draws on one allowance of :data:`REGEX_TIMEOUT_ENV`
CPU seconds (default :data:`DEFAULT_REGEX_TIMEOUT`), and :class:`~tensorhub.errors.QueryTimeoutError`
ends the query when it is spent. One allowance per query rather than per document: a per-document
bound either lets N documents take N times the bound or cuts long legitimate values short. A
search outside any evaluation gets the whole allowance.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import datetime as _dt
import functools
import math
import operator
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import regex
from bson import ObjectId
from bson.decimal128 import Decimal128
from bson.regex import Regex

from tensorhub.errors import ConfigurationError, InvalidQueryError, QueryTimeoutError

__all__ = ["matches", "sort_documents", "apply_update", "compare_values", "validate_filter", "validate_update",
           "regex_budget", "REGEX_TIMEOUT_ENV"]


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

_NUMBER_TYPES = (int, float, Decimal128)
_EXACT_RANKS = {type(None): 2, bool: 9, int: 3, float: 3, Decimal128: 3, str: 4, dict: 5, list: 6, tuple: 6,
                bytes: 7, ObjectId: 8, _dt.datetime: 10}


def _type_rank(value: Any) -> int:
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


def _regex_key(value: Any) -> tuple[str, int]:
    """A regex's pattern and flags, comparable between ``re.Pattern`` and ``bson.Regex``."""
    flags = value.flags if isinstance(value.flags, int) else 0
    return value.pattern, flags & ~re.UNICODE


def _compare_documents(a: Mapping[str, Any], b: Mapping[str, Any]) -> int:
    """BSON order of two documents: field by field, type bracket first, then name, then value."""
    for (ka, va), (kb, vb) in zip(a.items(), b.items()):
        c = _cmp(_type_rank(va), _type_rank(vb)) or _cmp(ka.encode("utf-8"), kb.encode("utf-8"))
        c = c or compare_values(va, vb)
        if c:
            return c
    return _cmp(len(a), len(b))


def compare_values(a: Any, b: Any) -> int:
    """Three-way comparison in MongoDB's order: -1, 0 or 1."""
    ra, rb = _type_rank(a), _type_rank(b)
    if ra != rb:
        return _cmp(ra, rb)
    if ra in (1, 2):
        return 0
    if ra == 3:
        x, y = _as_number(a), _as_number(b)
        if x != x or y != y:  # NaN sorts below every other number and equals itself
            return _cmp(x == x, y == y)
        return _cmp(x, y)
    if ra == 4:
        return _cmp(a.encode("utf-8"), b.encode("utf-8"))
    if ra == 5:
        return _compare_documents(a, b)
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
        return _cmp(_regex_key(a), _regex_key(b))
    return _cmp(a, b)


def _equal(a: Any, b: Any) -> bool:
    return _type_rank(a) == _type_rank(b) and compare_values(a, b) == 0


#: What a dotted path reaches: ``(value, traverse)`` pairs. ``traverse`` is False for an array
#: that a numeric path component picked out of an outer array: conditions compare it whole.
Reached = list[tuple[Any, bool]]

_ARRAY_TYPES = (list, tuple)
_REGEX_TYPES = (re.Pattern, Regex)
_LOGICAL = ("$and", "$or", "$nor")


def _resolve(value: Any, parts: Sequence[str]) -> Reached:
    """Every value a dotted path reaches, walked the way MongoDB's matcher walks it.

    A path that runs into a scalar or a missing field reaches ``MISSING``. Inside an array only
    sub-documents, and the element a numeric component names, carry the path on: ``"a.b"``
    reaches nothing at all in ``{"a": [1, 2]}``, not even ``MISSING``, so ``{"a.b": None}``
    does not match it (while it does match ``{"a": 1}``).
    """
    if not parts:
        return [(value, True)]
    if isinstance(value, Mapping):
        return _resolve(value[parts[0]], parts[1:]) if parts[0] in value else [(MISSING, True)]
    if isinstance(value, _ARRAY_TYPES):
        return _resolve_in_array(value, parts)
    return [(MISSING, True)]


def _resolve_in_array(array: Sequence[Any], parts: Sequence[str]) -> Reached:
    """The path continued through each sub-document of ``array``, and through the element at
    the index ``parts[0]`` names (``"a.0"``), which is reached as it is, arrays not opened."""
    head, rest = parts[0], parts[1:]
    found: Reached = []
    for index, element in enumerate(array):
        if isinstance(element, Mapping):
            found.extend(_resolve(element, parts))
        if head != str(index):
            continue
        if not rest:
            found.append((element, False))
        elif isinstance(element, (Mapping, *_ARRAY_TYPES)):
            found.extend(_resolve(element, rest))
    return found


def _expand(values: Reached) -> list[Any]:
    """The candidates a condition tests: each value, and each element of an array value.

    One level only (``[[1]]`` offers ``[1]``, not ``1``), and not into an array a numeric path
    component picked out.
    """
    out: list[Any] = []
    for v, traverse in values:
        out.append(v)
        if traverse and isinstance(v, _ARRAY_TYPES):
            out.extend(v)
    return out


#: seconds of regex matching one query evaluation may spend, all documents together
REGEX_TIMEOUT_ENV = "TENSORHUB_REGEX_TIMEOUT"
DEFAULT_REGEX_TIMEOUT = 5.0
_OPTION_FLAGS = {"i": regex.I, "m": regex.M, "s": regex.S, "x": regex.X}
#: flags of a compiled ``re`` pattern or a ``bson.Regex`` that mean the same to the ``regex`` package
_KEPT_FLAGS = re.I | re.M | re.S | re.X


def regex_time_limit() -> float:
    """The regex allowance of one query evaluation, in seconds (``$TENSORHUB_REGEX_TIMEOUT``)."""
    raw = os.environ.get(REGEX_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_REGEX_TIMEOUT
    try:
        limit = float(raw)
    except ValueError:
        limit = math.nan
    if not (limit > 0 and math.isfinite(limit)):
        raise ConfigurationError(f"${REGEX_TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return limit


class _Budget:
    """What is left of one query evaluation's regex allowance, in CPU seconds of the evaluating thread.

    Searches are timed with the cheap wall clock; only when that says the allowance is spent is
    the thread's CPU time read (a system call), which gives back the time a loaded machine kept
    the thread waiting. The ``regex`` package's ``timeout=`` counts CPU time as well.
    """

    __slots__ = ("limit", "left", "cpu_start")

    def __init__(self, limit: float) -> None:
        self.limit = self.left = limit
        self.cpu_start = time.thread_time()

    def recheck(self) -> bool:
        """Set ``left`` from the CPU time really spent since the start; whether some is left."""
        self.left = self.limit - (time.thread_time() - self.cpu_start)
        return self.left > 0


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("tensorhub_regex_budget", default=None)
#: searches of one text after a timeout that CPU time shows was the machine's load, not the pattern's
_RETRIES = 3


@contextlib.contextmanager
def regex_budget() -> Iterator[None]:
    """Make the regex searches inside one query evaluation share one allowance.

    A backend wraps its scan of a collection in this, so a filter over many documents is bounded
    as a whole, not per document. Nested uses share the outermost allowance.
    """
    if _budget.get() is not None:
        yield
        return
    token = _budget.set(_Budget(regex_time_limit()))
    try:
        yield
    finally:
        _budget.reset(token)


def _too_slow(rx: regex.Pattern, limit: float) -> QueryTimeoutError:
    return QueryTimeoutError(
        f"$regex {rx.pattern!r} ran past this query's regex time limit of {limit:g} s (all documents "
        "together); the pattern probably backtracks catastrophically (nested quantifiers such as (a+)+): "
        f"simplify or anchor it, or raise ${REGEX_TIMEOUT_ENV} (seconds) if the query is really that large"
    )


def _search(rx: regex.Pattern, text: str) -> bool:
    """``rx.search(text)`` within what is left of the current evaluation's regex allowance."""
    budget = _budget.get() or _Budget(regex_time_limit())
    for _ in range(_RETRIES):
        if budget.left <= 0 and not budget.recheck():
            break
        start = time.perf_counter()
        try:
            return rx.search(text, timeout=budget.left) is not None
        except TimeoutError:
            budget.left = 0.0  # recheck() says whether this was the pattern or the machine's load
        finally:
            budget.left -= time.perf_counter() - start
    raise _too_slow(rx, budget.limit)


@functools.lru_cache(maxsize=256)
def _compile(pattern: str, flags: int) -> regex.Pattern:
    try:
        return regex.compile(pattern, flags)
    except (regex.error, ValueError) as exc:
        raise InvalidQueryError(f"invalid $regex {pattern!r}: {exc}") from exc


def _regex_of(pattern: Any, options: str = "") -> regex.Pattern:
    """The compiled form of a ``$regex`` (a string, ``re.Pattern`` or ``bson.Regex``) and its ``$options``."""
    flags = 0
    if isinstance(pattern, _REGEX_TYPES):
        flags = pattern.flags & _KEPT_FLAGS if isinstance(pattern.flags, int) else 0
        pattern = pattern.pattern
    if options:
        if not isinstance(options, str):
            raise InvalidQueryError(f"$options must be a string such as 'i', got {options!r}")
        flags = 0  # $options replace the flags of a regex object, as MongoDB's do
        for letter in options:
            flags |= _OPTION_FLAGS.get(letter, 0)
    if not isinstance(pattern, str):
        raise InvalidQueryError(f"invalid $regex {pattern!r}: it must be a string or a regex, not "
                                f"{type(pattern).__name__}")
    return _compile(pattern, flags)


def _value_equals(candidate: Any, target: Any) -> bool:
    if isinstance(target, _REGEX_TYPES):
        return isinstance(candidate, str) and _search(_regex_of(target), candidate)
    if target is None:
        return candidate is None or candidate is MISSING
    return candidate is not MISSING and _equal(candidate, target)


def _field_equals(values: Reached, target: Any) -> bool:
    """Implicit equality (``{"f": target}``, ``$in``, ``$all``): a regex target matches strings."""
    return any(_value_equals(c, target) for c in _expand(values))


def _is_nan(value: Any) -> bool:
    """Whether ``value`` is a NaN number (float or Decimal128)."""
    if not isinstance(value, _NUMBER_TYPES) or isinstance(value, bool):
        return False
    number = _as_number(value)
    return number != number


def _compares(candidate: Any, target: Any, accept: Callable[[int], bool]) -> bool:
    """``accept`` applied to the comparison of two values of one type bracket.

    NaN is equal to NaN and neither above nor below any number: ``{"$lt": 1}`` does not match
    it, although NaN sorts first.
    """
    if _is_nan(candidate) or _is_nan(target):
        return _is_nan(candidate) and _is_nan(target) and accept(0)
    return accept(compare_values(candidate, target))


def _ordered(values: Reached, target: Any, accept: Callable[[int], bool]) -> bool:
    """``$gt``-style comparison: only values in the same type bracket as ``target`` compare."""
    if isinstance(target, _REGEX_TYPES):
        raise InvalidQueryError("a regex cannot be an argument of $gt, $gte, $lt or $lte")
    if target is None:
        # $gte/$lte null match null and missing; $gt/$lt null match nothing.
        return accept(0) and any(c is None or c is MISSING for c in _expand(values))
    rank = _type_rank(target)
    return any(
        c is not MISSING and _type_rank(c) == rank and _compares(c, target, accept) for c in _expand(values)
    )


def _truthy(value: Any) -> bool:
    """MongoDB's truth of an operator argument: only false, 0 and null are false (``""`` is true)."""
    if isinstance(value, _NUMBER_TYPES) and not isinstance(value, bool):
        return _as_number(value) != 0
    return value is not None and value is not False


_BSON_TYPE_ALIASES = {
    "double": (float,), "string": (str,), "object": (dict,), "array": (list, tuple),
    "objectId": (ObjectId,), "bool": (bool,), "date": (_dt.datetime,), "null": (type(None),),
    "int": (int,), "long": (int,), "decimal": (Decimal128,), "number": (int, float, Decimal128),
}


def _type_matches(values: Reached, names: Any) -> bool:
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
        if isinstance(c, tuple(kinds)):
            return True
    return False


def _all_matches(values: Reached, terms: Any) -> bool:
    """``$all``: every term matches, each on its own (an equality, or an ``$elemMatch``)."""
    if not isinstance(terms, _ARRAY_TYPES):
        raise InvalidQueryError("$all needs a list")
    for term in terms:
        if _is_operator_doc(term) and list(term) != ["$elemMatch"]:
            raise InvalidQueryError("$all takes values or {'$elemMatch': ...} documents, not other operators")
    return bool(terms) and all(
        _condition_matches(values, t) if _is_operator_doc(t) else _field_equals(values, t) for t in terms
    )


def _elem_match(values: Reached, query: Any) -> bool:
    """``$elemMatch``: some element of an array the path reaches matches ``query``."""
    if not isinstance(query, Mapping):
        raise InvalidQueryError("$elemMatch needs a document")
    return any(
        isinstance(v, _ARRAY_TYPES) and any(_elem_matches(e, query) for e in v) for v, _ in values
    )


def _mod_matches(values: Reached, arg: Any) -> bool:
    """``$mod``: numbers truncated to integers, remainder with the dividend's sign (as in C)."""
    if not (isinstance(arg, _ARRAY_TYPES) and len(arg) == 2):
        raise InvalidQueryError("$mod needs [divisor, remainder]")
    divisor, remainder = (int(_as_number(a)) for a in arg)
    if divisor == 0:
        raise InvalidQueryError("$mod divisor cannot be 0")
    return any(
        isinstance(c, _NUMBER_TYPES) and not isinstance(c, bool) and math.isfinite(_as_number(c))
        and _c_remainder(int(_as_number(c)), divisor) == remainder
        for c in _expand(values)
    )


def _c_remainder(n: int, d: int) -> int:
    """``n % d`` as C computes it: the sign of ``n`` (``-5 % 2 == -1``), not Python's."""
    r = abs(n) % abs(d)
    return -r if n < 0 else r


def _operator_matches(values: Reached, op: str, arg: Any, condition: Mapping[str, Any]) -> bool:
    if op == "$eq":
        if isinstance(arg, _REGEX_TYPES):  # {"$eq": regex} is equality to a stored regex
            return any(_equal(c, arg) for c in _expand(values))
        return _field_equals(values, arg)
    if op == "$ne":
        if isinstance(arg, _REGEX_TYPES):
            raise InvalidQueryError("$ne cannot take a regex; use {'$not': regex}")
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
        if not isinstance(arg, _ARRAY_TYPES):
            raise InvalidQueryError(f"{op} needs a list, got {type(arg).__name__}")
        if len(arg) > 4 and all(type(t) is str for t in arg):
            # many strings (chunk digests, ids): one set lookup per candidate, not a compare per pair
            wanted = set(arg)
            hit = any(type(c) is str and c in wanted for c in _expand(values))
        else:
            hit = any(_field_equals(values, t) for t in arg)
        return hit if op == "$in" else not hit
    if op == "$exists":
        present = any(v is not MISSING for v, _ in values)
        return present == _truthy(arg)
    if op == "$regex":
        rx = _regex_of(arg, condition.get("$options", ""))
        return any(isinstance(c, str) and _search(rx, c) for c in _expand(values))
    if op == "$options":
        if "$regex" not in condition:
            raise InvalidQueryError("$options needs a $regex beside it")
        return True
    if op == "$not":
        if isinstance(arg, _REGEX_TYPES):
            return not _field_equals(values, arg)
        if not isinstance(arg, Mapping) or not arg:
            raise InvalidQueryError("$not needs an operator expression such as {'$gt': 1} or a regex")
        return not _condition_matches(values, arg)
    if op == "$all":
        return _all_matches(values, arg)
    if op == "$size":
        return any(isinstance(v, _ARRAY_TYPES) and len(v) == arg for v, _ in values)
    if op == "$elemMatch":
        return _elem_match(values, arg)
    if op == "$mod":
        return _mod_matches(values, arg)
    if op == "$type":
        return _type_matches(values, arg)
    raise InvalidQueryError(
        f"unsupported query operator {op!r}; supported: $eq $ne $gt $gte $lt $lte $in $nin $exists "
        "$regex $not $all $size $elemMatch $mod $type, and $and $or $nor at the top"
    )


def _elem_matches(element: Any, query: Mapping[str, Any]) -> bool:
    """One array element against ``$elemMatch``'s argument.

    An operator document (first key ``$gt`` etc.) tests the element itself without looking
    into it, so ``[[5]]`` does not match ``{"$gt": 1}``. A query document tests an element that
    is a document, or an array read as a document keyed ``"0"``, ``"1"``... as MongoDB reads it.
    """
    first = str(next(iter(query), ""))
    if first.startswith("$") and first not in _LOGICAL:
        return _condition_matches([(element, False)], query)
    if isinstance(element, _ARRAY_TYPES):
        element = {str(i): v for i, v in enumerate(element)}
    return isinstance(element, Mapping) and matches(element, query)


def _is_operator_doc(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(str(k).startswith("$") for k in value)


def _condition_matches(values: Reached, condition: Any) -> bool:
    if _is_operator_doc(condition):
        return all(_operator_matches(values, op, arg, condition) for op, arg in condition.items())
    return _field_equals(values, condition)


_FAST_EQUALITY = (str, int)  # exact types only: bool is a subclass of int but not equal to it in MongoDB


def matches(document: Mapping[str, Any], query: Mapping[str, Any]) -> bool:
    """Whether ``document`` matches the MongoDB filter ``query``."""
    if not isinstance(query, Mapping):
        raise InvalidQueryError(f"a query must be a dict, got {type(query).__name__}")
    for key, condition in query.items():
        if key in _LOGICAL:
            if not isinstance(condition, _ARRAY_TYPES) or not condition:
                raise InvalidQueryError(f"{key} needs a non-empty list of queries")
            results = (matches(document, q) for q in condition)
            ok = all(results) if key == "$and" else any(results)
            if (key == "$nor") == ok:
                return False
        elif key == "$comment":
            continue
        elif not isinstance(key, str) or key.startswith("$"):
            _check_query({key: condition}, None)  # raises the error validate_filter gives
        elif type(condition) in _FAST_EQUALITY and "." not in key and type(document) is dict:
            # fast path for the commonest filter, {"status": "pending"}: same exact type -> plain ==
            value = document.get(key, MISSING)
            if type(value) is type(condition):
                if value != condition:
                    return False
            elif value is MISSING or type(value) in _FAST_EQUALITY:
                return False  # missing, or a str against an int: never equal
            elif not _condition_matches(_resolve(document, [key]), condition):
                return False
        elif not _condition_matches(_resolve(document, key.split(".")), condition):
            return False
    return True


def _array_index(part: str, array: Sequence[Any]) -> int | None:
    """The index ``part`` names in ``array``: ``"1"`` does, ``"01"``, ``"x"`` and ``"9"`` (too far) do not."""
    if part.isascii() and part.isdigit() and str(int(part)) == part and int(part) < len(array):
        return int(part)
    return None


def _sort_keys(value: Any, parts: Sequence[str]) -> list[Any]:
    """The keys MongoDB's index key generator derives from a dotted path; a sort orders a
    document by the least of them (ascending) or the greatest (descending).

    Unlike matching, a path that finds nothing gives ``None``, inside arrays too (``"a.b"`` on
    ``{"a": [1]}``); an empty array gives ``UNDEFINED``, which sorts below ``None``; and a
    numeric component over an array takes the element at that index when there is one.
    """
    if not parts:
        if not isinstance(value, _ARRAY_TYPES):
            return [value]
        return list(value) if value else [UNDEFINED]
    if isinstance(value, Mapping):
        return _sort_keys(value[parts[0]], parts[1:]) if parts[0] in value else [None]
    if not isinstance(value, _ARRAY_TYPES):
        return [None]
    index = _array_index(parts[0], value)
    if index is not None:
        element = value[index]
        if parts[1:] or not isinstance(element, _ARRAY_TYPES):
            return _sort_keys(element, parts[1:])
        return [element] if element else [UNDEFINED]  # an array picked by index is one key
    keys: list[Any] = [] if value else [None]
    for element in value:
        keys.extend(_sort_keys(element, parts) if isinstance(element, Mapping) else [None])
    return keys


_SORT_KEY = functools.cmp_to_key(compare_values)


def _document_sort_key(document: Mapping[str, Any], field: str, direction: int) -> Any:
    return _SORT_KEY(_sort_value(document, field, direction))


def _sort_value(document: Mapping[str, Any], field: str, direction: int) -> Any:
    keys = _sort_keys(document, field.split("."))
    return min(keys, key=_SORT_KEY) if direction > 0 else max(keys, key=_SORT_KEY)


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


def _plain_values(documents: list[dict], field: str) -> bool:
    """Whether ``field``'s values sort in Python's own order exactly as :func:`compare_values` orders them.

    True when every document holds the top-level field as a scalar of one kind whose Python
    order is MongoDB's: str (UTF-8 byte order is code point order), int and float without
    NaN (not bool), bool, ObjectId (by its bytes), or datetimes all naive or all aware. A
    scalar's sort key is the value itself, so the values can then be the keys.
    """
    if "." in field:
        return False
    try:
        values = [d[field] for d in documents]
    except (KeyError, TypeError):
        return False
    kinds = set(map(type, values))
    if kinds <= {int, float}:
        return all(v == v for v in values)
    if kinds == {_dt.datetime}:
        return len({v.tzinfo is None for v in values}) == 1
    return len(kinds) == 1 and kinds <= {str, bool, ObjectId}


def sort_documents(documents: list[dict], sort: Any) -> list[dict]:
    """Sort documents in place order by a PyMongo sort spec (stable, MongoDB's type order)."""
    for field, direction in reversed(normalize_sort(sort)):
        if _plain_values(documents, field):  # the common case, ~20x cheaper than comparing through compare_values
            documents.sort(key=operator.itemgetter(field), reverse=direction < 0)
        else:
            documents.sort(key=functools.partial(_document_sort_key, field=field, direction=direction),
                           reverse=direction < 0)
    return documents


_UPDATE_OPERATORS = ("$set", "$unset", "$inc", "$push", "$min", "$max")


def _path_order(path: str) -> list[tuple[int, int, str]]:
    """MongoDB's (5.0+) order of update paths: names lexicographically, array indexes numerically."""
    return [(0, int(p), "") if p.isascii() and p.isdigit() else (1, 0, p) for p in path.split(".")]


def validate_update(update: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidQueryError` for an update :func:`apply_update` would refuse whatever the document.

    The MongoDB backends call it too, so an update operator tensorhub does not implement
    (``$rename``, a pipeline...) fails the same way on every backend.
    """
    for path, op, value in _update_steps(update, copy_values=False):
        if op == "$push":
            _push_items(value)


def _update_steps(update: Mapping[str, Any], copy_values: bool = True) -> list[tuple[str, str, Any]]:
    """The ``(path, operator, value)`` steps of an update document, checked, in MongoDB's order."""
    if not isinstance(update, Mapping) or not update or not all(str(k).startswith("$") for k in update):
        raise InvalidQueryError("an update must use operators such as {'$set': {...}}")
    steps: list[tuple[str, str, Any]] = []
    for op, fields in update.items():
        if op not in _UPDATE_OPERATORS:
            raise InvalidQueryError(f"unsupported update operator {op!r}; use $set $unset $inc $push $min $max")
        if not isinstance(fields, Mapping):
            raise InvalidQueryError(f"{op} needs a document such as {{'field': value}}")
        for path in fields:
            if not isinstance(path, str) or not path:
                raise InvalidQueryError(f"{op} needs field paths as non-empty strings, got {path!r}")
        steps.extend((path, op, copy.deepcopy(value) if copy_values else value) for path, value in fields.items())
    steps.sort(key=lambda step: _path_order(step[0]))
    for (first, _, _), (second, _, _) in zip(steps, steps[1:]):
        if second == first or second.startswith(first + "."):
            raise InvalidQueryError(f"one update cannot change both {first!r} and {second!r}")
    return steps


def _update_index(part: str) -> int | None:
    return int(part) if part.isascii() and part.isdigit() else None


def _child(node: Any, part: str) -> Any:
    """The value under ``part`` of a dict or list, or ``MISSING``."""
    if isinstance(node, dict):
        return node.get(part, MISSING)
    index = _update_index(part)
    return node[index] if index is not None and index < len(node) else MISSING


def _put(node: Any, part: str, value: Any, path: str) -> None:
    """Set ``part`` of a dict, or an index of a list (padding it with nulls, as MongoDB does)."""
    if isinstance(node, dict):
        node[part] = value
        return
    index = _update_index(part)
    if index is None:
        raise InvalidQueryError(f"cannot update {path!r}: {part!r} is not an index of the array it is in")
    node.extend([None] * (index + 1 - len(node)))
    node[index] = value


def _remove(node: Any, part: str) -> None:
    """``$unset``: drop a field; an array element becomes null (the array keeps its length)."""
    if isinstance(node, dict):
        node.pop(part, None)
        return
    index = _update_index(part)
    if index is not None and index < len(node):
        node[index] = None


def _container(document: dict, path: str, create: bool) -> Any:
    """The dict or list that holds the last component of ``path``, created as needed.

    ``None`` when the path cannot exist and ``create`` is False (``$unset`` is then a no-op).
    """
    node: Any = document
    for part in path.split(".")[:-1]:
        child = _child(node, part)
        if isinstance(child, (dict, list)):
            node = child
            continue
        if not create:
            return None
        if child is not MISSING:
            raise InvalidQueryError(
                f"cannot update {path!r}: {part!r} holds a {type(child).__name__}, which has no fields"
            )
        child = {}
        _put(node, part, child, path)
        node = child
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, _NUMBER_TYPES) and not isinstance(value, bool)


def _updated(op: str, current: Any, value: Any, path: str) -> Any:
    """The new value of a field under ``$set $inc $push $min $max`` (``current`` may be ``MISSING``)."""
    if op == "$set":
        return value
    if op == "$inc":
        if not _is_number(value):
            raise InvalidQueryError(f"$inc needs a number, got {value!r} for {path!r}")
        if current is not MISSING and not _is_number(current):
            raise InvalidQueryError(f"cannot $inc {path!r}: it holds a {type(current).__name__}, not a number")
        return value if current is MISSING else current + value
    if op == "$push":
        items = _push_items(value)
        if current is not MISSING and not isinstance(current, list):
            raise InvalidQueryError(f"cannot $push to {path!r}: it holds a {type(current).__name__}, not an array")
        return items if not isinstance(current, list) else current + items
    better = -1 if op == "$min" else 1
    if current is MISSING or compare_values(value, current) == better:
        return value
    return current


def _push_items(value: Any) -> list[Any]:
    """What ``$push`` appends: the value, or the items of ``{"$each": [...]}``."""
    if not (isinstance(value, Mapping) and "$each" in value):
        return [value]
    if set(value) != {"$each"} or not isinstance(value["$each"], _ARRAY_TYPES):
        raise InvalidQueryError("$push supports {'$each': [...]} only (no $slice, $sort or $position)")
    return list(value["$each"])


def _apply_step(document: dict, path: str, op: str, value: Any) -> None:
    if path == "_id" or path.startswith("_id."):
        raise InvalidQueryError("the _id of a record cannot be changed")
    container = _container(document, path, create=op != "$unset")
    if container is None:
        return
    leaf = path.split(".")[-1]
    if op == "$unset":
        _remove(container, leaf)
    else:
        _put(container, leaf, _updated(op, _child(container, leaf), value, path), path)


def apply_update(document: dict, update: Mapping[str, Any]) -> dict:
    """Apply a MongoDB update document to ``document`` in place and return it.

    Fields change in MongoDB's order (by path: names lexicographically, array indexes
    numerically), which is the order new fields are added in. Where MongoDB refuses an update
    (``$inc`` of a string, ``$push`` onto a non-array, a field inside a scalar, two operators
    on one path) this raises :class:`InvalidQueryError` and leaves ``document`` as it was.
    """
    work = copy.deepcopy(document)
    for path, op, value in _update_steps(update):
        _apply_step(work, path, op, value)
    document.clear()
    document.update(work)
    return document


_QUERY_OPERATORS = frozenset(
    ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$regex", "$options", "$not", "$all",
     "$size", "$elemMatch", "$mod", "$type"])
_SUPPORTED = ("supported: $eq $ne $gt $gte $lt $lte $in $nin $exists $regex $options $not $all $size $elemMatch "
              "$mod $type on a field, $and $or $nor $comment around conditions; operators that run on the server "
              "($where, $expr, $function, $accumulator, $text...) are refused on every backend")


def validate_filter(query: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidQueryError` for a malformed filter, even when no document would be tested.

    Evaluating a filter only checks the operators it reaches; this walks all of it, at every
    depth, so a typo such as ``{"$gtt": 1}`` or an operator tensorhub does not implement
    (``$where`` inside an ``$elemMatch``...) fails the same way on an empty collection as on a
    full one, and on MongoDB, where the server would otherwise run it.
    """
    try:
        _check_query(query, None)
    except RecursionError:
        raise InvalidQueryError("the query is nested too deeply to be evaluated; flatten its $and/$or/"
                                "$elemMatch nesting or its compared values") from None


def _check_key(key: Any, where: str) -> None:
    if not isinstance(key, str):
        raise InvalidQueryError(f"query keys must be strings, got {key!r} ({type(key).__name__}) in {where}")


def _check_query(query: Any, within: str | None) -> None:
    """A query document: the top-level filter (``within`` None) or an ``$elemMatch`` or logical term."""
    where = within or "the query"
    if not isinstance(query, Mapping):
        raise InvalidQueryError(f"a query must be a dict, got {type(query).__name__} in {where}")
    for key, condition in query.items():
        _check_key(key, where)
        if key in _LOGICAL:
            if not isinstance(condition, _ARRAY_TYPES) or not condition:
                raise InvalidQueryError(f"{key} needs a non-empty list of queries")
            for sub in condition:
                _check_query(sub, within or f"the {key} list")
        elif key == "$comment":
            continue
        elif key.startswith("$"):
            if within is None:  # as matches() says, before any document is tested
                raise InvalidQueryError(f"unsupported top-level operator {key!r}; use $and, $or or $nor ({_SUPPORTED})")
            raise InvalidQueryError(f"unsupported operator {key!r} in {where}; {_SUPPORTED}")
        else:
            _check_condition(condition, key)


def _starts_operator(value: Any) -> bool:
    """Whether a condition is an operator document, as MongoDB tells: by its first key."""
    if not isinstance(value, Mapping) or not value:
        return False
    first = next(iter(value))
    return isinstance(first, str) and first.startswith("$")


def _check_condition(condition: Any, path: str) -> None:
    """What a field is matched against: an operator document (every key a known operator) or a value."""
    if not _starts_operator(condition):
        _check_value(condition, path)
        return
    for op, arg in condition.items():
        _check_key(op, f"the condition on {path!r}")
        if op not in _QUERY_OPERATORS:
            raise InvalidQueryError(f"unsupported query operator {op!r} in the condition on {path!r}; {_SUPPORTED}")
        if op == "$not":
            if isinstance(arg, _REGEX_TYPES):
                _regex_of(arg)
            elif not _starts_operator(arg):
                raise InvalidQueryError(f"$not on {path!r} needs an operator expression such as {{'$gt': 1}} "
                                        f"or a regex, got {arg!r}")
            else:
                _check_condition(arg, path)
        elif op == "$elemMatch":
            if not isinstance(arg, Mapping):
                raise InvalidQueryError(f"$elemMatch on {path!r} needs a document")
            first = next(iter(arg), "")
            if isinstance(first, str) and first.startswith("$") and first not in _LOGICAL:
                _check_condition(arg, path)  # conditions on each element itself: {"$gt": 1}
            else:
                _check_query(arg, f"the $elemMatch on {path!r}")
        elif op == "$all":
            if not isinstance(arg, _ARRAY_TYPES):
                raise InvalidQueryError("$all needs a list")
            for term in arg:
                if _starts_operator(term):
                    if list(term) != ["$elemMatch"]:
                        raise InvalidQueryError("$all takes values or {'$elemMatch': ...} documents, not other "
                                                f"operators (on {path!r})")
                    _check_condition(term, path)
                else:
                    _check_value(term, path)
        else:
            if op in ("$in", "$nin") and isinstance(arg, _ARRAY_TYPES):
                for value in arg:
                    _check_value(value, path)
            elif op != "$regex":
                _check_value(arg, path)
            _operator_matches([(MISSING, True)], op, arg, condition)  # the argument's own checks


def _check_value(value: Any, path: str) -> None:
    """A value compared with a field: documents in it hold field names, never operators."""
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _check_key(key, f"the value compared with {path!r}")
            if key.startswith("$"):
                raise InvalidQueryError(
                    f"{key!r} inside the value compared with {path!r}: an operator goes first in a condition "
                    "({'$gt': 1}), not inside a value, and field names starting with '$' cannot be queried")
            _check_value(inner, path)
    elif isinstance(value, _ARRAY_TYPES):
        for inner in value:
            _check_value(inner, path)
