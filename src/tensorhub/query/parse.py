"""A filter, checked whole and turned once into a plan: a function from a document to a bool.

:func:`compile_filter` walks the whole filter before anything is evaluated, as MongoDB's parser
does: every key must be a string, and every operator, at any depth (inside ``$elemMatch``,
``$not``, ``$all`` and the logical operators too), must be one :data:`OPERATORS` knows, with a
well-formed argument, so operators MongoDB would run on the server (``$where``, ``$expr``,
``$function``, ``$accumulator``, ``$text``...) and malformed arguments fail on every backend,
on an empty collection as on a full one.

Each field operator is an entry of :data:`OPERATORS` (name -> builder). A builder checks its
argument and returns a :class:`Cond`: a test of one candidate value that any candidate must pass
(``ANY``: ``$eq``, ``$gt``, ``$in``, ``$regex``...), that no candidate may pass (``NONE``: ``$ne``,
``$nin``), or a test of everything the path reaches (``RAW``: ``$exists``, ``$size``,
``$elemMatch``, ``$all``, ``$not``). The candidates are MongoDB's: each value a dotted path
reaches and each element of an array value (:mod:`tensorhub.query.paths`); each operator of a
condition is tested on its own.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from tensorhub.errors import InvalidQueryError
from tensorhub.query.paths import Reached, expand, resolve
from tensorhub.query.regexes import regex_letters, regex_of, search
from tensorhub.query.values import (
    ARRAY_TYPES,
    BSON_TYPE_CODES,
    BSON_TYPE_NAMES,
    MISSING,
    NUMERIC_TYPE_NAMES,
    REGEX_TYPES,
    as_number,
    bson_type,
    compare_values,
    equal,
    is_nan,
    is_number,
    regex_key,
    type_rank,
)

Pred = Callable[[Any], bool]
Plan = Callable[[Mapping[str, Any]], bool]
ANY, NONE, RAW = "any", "none", "raw"
LOGICAL = ("$and", "$or", "$nor")


class Cond(NamedTuple):
    """One operator of a condition, compiled: ``kind`` says how ``fn`` is applied (see the module doc)."""

    kind: str
    fn: Callable[[Any], bool]
    #: for RAW: the test of a single value reached by a one-component path, when cheaper than ``fn``
    on_value: Callable[[Any], bool] | None = None


Builder = Callable[[Any, Mapping[str, Any], str], "Cond | None"]

_SUPPORTED = ("supported: $eq $ne $gt $gte $lt $lte $in $nin $exists $regex $options $not $all $size $elemMatch "
              "$mod $type on a field, $and $or $nor $comment around conditions; operators that run on the server "
              "($where, $expr, $function, $accumulator, $text...) are refused on every backend")


# --------------------------------------------------------------------------- checks


def check_key(key: Any, where: str) -> None:
    if not isinstance(key, str):
        raise InvalidQueryError(f"query keys must be strings, got {key!r} ({type(key).__name__}) in {where}")


def starts_operator(value: Any) -> bool:
    """Whether a condition is an operator document, as MongoDB tells: by its first key."""
    if not isinstance(value, Mapping) or not value:
        return False
    first = next(iter(value))
    return isinstance(first, str) and first.startswith("$")


def check_value(value: Any, path: str) -> None:
    """A value compared with a field: documents in it hold field names, never operators."""
    if isinstance(value, Mapping):
        for key, inner in value.items():
            check_key(key, f"the value compared with {path!r}")
            if key.startswith("$"):
                raise InvalidQueryError(
                    f"{key!r} inside the value compared with {path!r}: an operator goes first in a condition "
                    "({'$gt': 1}), not inside a value (nor inside $in, $nin or $all lists), and field names "
                    "starting with '$' cannot be queried")
            check_value(inner, path)
    elif isinstance(value, ARRAY_TYPES):
        for inner in value:
            check_value(inner, path)
    else:
        type_rank(value)  # a value no BSON type holds cannot be compared


# --------------------------------------------------------------------------- candidate tests


def _regex_pred(rx: Any, key: tuple[str, str]) -> Pred:
    """A regex as MongoDB matches it: strings it finds a match in, and a stored regex equal to it."""
    def pred(c: Any) -> bool:
        if isinstance(c, str):
            return search(rx, c)
        return isinstance(c, REGEX_TYPES) and regex_key(c) == key
    return pred


def equality_pred(target: Any) -> Pred:
    """Implicit equality (``{"f": target}``, ``$in``, ``$all``): a regex target matches strings too."""
    if isinstance(target, REGEX_TYPES):
        return _regex_pred(regex_of(target), regex_key(target))
    if target is None:
        return lambda c: c is None or c is MISSING
    kind = type(target)
    if kind is str:
        return lambda c: type(c) is str and c == target
    if (kind is int or kind is float) and target == target:
        def number(c: Any) -> bool:
            t = type(c)
            if t is int or t is float:
                return bool(c == target)
            return is_number(c) and equal(c, target)
        return number
    if kind is bool:
        return lambda c: type(c) is bool and c == target
    return lambda c: c is not MISSING and equal(c, target)


def _compares(candidate: Any, target: Any, accept: Callable[[int], bool]) -> bool:
    """``accept`` applied to the comparison of two values of one type bracket.

    NaN is equal to NaN and neither above nor below any number: ``{"$lt": 1}`` does not match
    it, although NaN sorts first.
    """
    if is_nan(candidate) or is_nan(target):
        return is_nan(candidate) and is_nan(target) and accept(0)
    return accept(compare_values(candidate, target))


_ORDER = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}


def _never(reached: Any) -> bool:
    return False


def _ordered(op: str, target: Any, path: str) -> Cond:
    """``$gt``-style comparison: only values in the same type bracket as ``target`` compare."""
    if isinstance(target, REGEX_TYPES):
        raise InvalidQueryError("a regex cannot be an argument of $gt, $gte, $lt or $lte")
    check_value(target, path)
    order = _ORDER[op]
    accept: Callable[[int], bool] = lambda c: order(c, 0)  # noqa: E731
    if target is None:
        # $gte/$lte null match null and missing; $gt/$lt null match nothing.
        if op in ("$gt", "$lt"):
            return Cond(RAW, _never, _never)
        return Cond(ANY, lambda c: c is None or c is MISSING)
    kind = type(target)
    if (kind is int or kind is float) and target == target:
        def number(c: Any) -> bool:
            t = type(c)
            if t is int or t is float:
                return bool(order(c, target))  # NaN: False, as _compares says
            return is_number(c) and _compares(c, target, accept)
        return Cond(ANY, number)
    if kind is str:
        def string(c: Any) -> bool:  # code point order is UTF-8 byte order
            return bool(order(c, target)) if type(c) is str else isinstance(c, str) and _compares(c, target, accept)
        return Cond(ANY, string)
    rank = type_rank(target)
    return Cond(ANY, lambda c: c is not MISSING and type_rank(c) == rank and _compares(c, target, accept))


def _truthy(value: Any) -> bool:
    """MongoDB's truth of an operator argument: only false, 0 and null are false (``""`` is true)."""
    if is_number(value):
        return as_number(value) != 0
    return value is not None and value is not False


# --------------------------------------------------------------------------- the operator table


def _eq(arg: Any, condition: Mapping[str, Any], path: str) -> Cond:
    if isinstance(arg, REGEX_TYPES):  # {"$eq": regex} is equality to a stored regex, not a regex search
        regex_of(arg)
        return Cond(ANY, lambda c: isinstance(c, REGEX_TYPES) and equal(c, arg))
    check_value(arg, path)
    return Cond(ANY, equality_pred(arg))


def _ne(arg: Any, condition: Mapping[str, Any], path: str) -> Cond:
    if isinstance(arg, REGEX_TYPES):
        raise InvalidQueryError("$ne cannot take a regex; use {'$not': regex}")
    check_value(arg, path)
    return Cond(NONE, equality_pred(arg))


def _comparison(op: str) -> Builder:
    return lambda arg, condition, path: _ordered(op, arg, path)


def _in_pred(op: str, arg: Any, path: str) -> Pred:
    if not isinstance(arg, ARRAY_TYPES):
        raise InvalidQueryError(f"{op} needs a list, got {type(arg).__name__}")
    fast: set[Any] = set()  # str and number targets: one set lookup per candidate of those types
    every: list[Pred] = []
    others: list[Pred] = []
    for target in arg:
        if not isinstance(target, REGEX_TYPES):
            check_value(target, f"{path} ({op})")
        term = equality_pred(target)
        every.append(term)
        kind = type(target)
        if kind is str or ((kind is int or kind is float) and target == target):
            fast.add(target)
        else:
            others.append(term)

    def pred(c: Any) -> bool:
        kind = type(c)
        if kind is str or kind is int or kind is float:  # exact types: True must not find 1
            if c in fast:
                return True
            return any(p(c) for p in others) if others else False
        return any(p(c) for p in every)
    return pred


def _in(arg: Any, condition: Mapping[str, Any], path: str) -> Cond:
    return Cond(ANY, _in_pred("$in", arg, path))


def _nin(arg: Any, condition: Mapping[str, Any], path: str) -> Cond:
    return Cond(NONE, _in_pred("$nin", arg, path))


def _exists(arg: Any, condition: Mapping[str, Any], path: str) -> Cond:
    want = _truthy(arg)
    return Cond(RAW, lambda reached: any(v is not MISSING for v, _ in reached) == want,
                lambda v: (v is not MISSING) == want)


def _regex(arg: Any, condition: Mapping[str, Any], path: str) -> Cond:
    options = condition.get("$options") if "$options" in condition else None
    rx = regex_of(arg, options)
    pattern = arg.pattern if isinstance(arg, REGEX_TYPES) else arg
    return Cond(ANY, _regex_pred(rx, (pattern, regex_letters(arg, options))))


def _options(arg: Any, condition: Mapping[str, Any], path: str) -> None:
    if "$regex" not in condition:
        raise InvalidQueryError(f"$options needs a $regex beside it (on {path!r})")
    return None  # checked and used by $regex


def _not(arg: Any, condition: Mapping[str, Any], path: str) -> Cond:
    if isinstance(arg, REGEX_TYPES):
        pred = _regex_pred(regex_of(arg), regex_key(arg))
        return Cond(NONE, pred)
    if not starts_operator(arg):
        raise InvalidQueryError(f"$not on {path!r} needs an operator expression such as {{'$gt': 1}} "
                                f"or a regex, got {arg!r}")
    conds = compile_condition(arg, path)
    inner, inner_value = reached_test(conds), value_test(conds)
    return Cond(RAW, lambda reached: not inner(reached), lambda v: not inner_value(v))


def _size(arg: Any, condition: Mapping[str, Any], path: str) -> Cond:
    if not is_number(arg) or is_nan(arg):
        raise InvalidQueryError(f"$size on {path!r} needs a number, got {arg!r}")
    number = as_number(arg)
    if number != int(number):
        raise InvalidQueryError(f"$size on {path!r} must be a whole number, got {arg!r}")
    if number < 0:
        raise InvalidQueryError(f"$size on {path!r} cannot be negative, got {arg!r}")
    size = int(number)
    return Cond(RAW, lambda reached: any(isinstance(v, ARRAY_TYPES) and len(v) == size for v, _ in reached),
                lambda v: isinstance(v, ARRAY_TYPES) and len(v) == size)


def _element_test(arg: Any, path: str) -> Pred:
    """One array element against ``$elemMatch``'s argument.

    An operator document (first key ``$gt`` etc.) tests the element itself without looking
    into it, so ``[[5]]`` does not match ``{"$gt": 1}``. A query document tests an element that
    is a document, or an array read as a document keyed ``"0"``, ``"1"``... as MongoDB reads it.
    """
    if not isinstance(arg, Mapping):
        raise InvalidQueryError(f"$elemMatch on {path!r} needs a document")
    first = next(iter(arg), "")
    if isinstance(first, str) and first.startswith("$") and first not in LOGICAL:
        test = reached_test(compile_condition(arg, path))
        return lambda element: test([(element, False)])
    plan = compile_query(arg, f"the $elemMatch on {path!r}")

    def element_test(element: Any) -> bool:
        if isinstance(element, ARRAY_TYPES):
            element = {str(i): v for i, v in enumerate(element)}
        return isinstance(element, Mapping) and plan(element)
    return element_test


def _elem_match(arg: Any, condition: Mapping[str, Any], path: str) -> Cond:
    """``$elemMatch``: some element of an array the path reaches matches ``arg``."""
    element = _element_test(arg, path)

    def on_value(v: Any) -> bool:
        return isinstance(v, ARRAY_TYPES) and any(element(e) for e in v)
    return Cond(RAW, lambda reached: any(on_value(v) for v, _ in reached), on_value)


def _all(arg: Any, condition: Mapping[str, Any], path: str) -> Cond:
    """``$all``: every term matches, each on its own (an equality, or an ``$elemMatch``); ``[]`` matches nothing."""
    if not isinstance(arg, ARRAY_TYPES):
        raise InvalidQueryError(f"$all on {path!r} needs a list")
    conds: list[Cond] = []
    for term in arg:
        if starts_operator(term):
            if list(term) != ["$elemMatch"]:
                raise InvalidQueryError("$all takes values or {'$elemMatch': ...} documents, not other "
                                        f"operators (on {path!r})")
            conds.append(_elem_match(term["$elemMatch"], term, path))
        else:
            if not isinstance(term, REGEX_TYPES):
                check_value(term, path)
            conds.append(Cond(ANY, equality_pred(term)))
    if not conds:
        return Cond(RAW, _never, _never)
    return Cond(RAW, reached_test(conds), value_test(conds))


_INT64 = range(-(2**63), 2**63)


def _mod_operand(value: Any, what: str) -> int:
    """A ``$mod`` divisor or remainder: a finite number, truncated to an integer that fits 64 bits."""
    if not is_number(value):
        raise InvalidQueryError(f"$mod {what} must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        number: Any = value
        finite = math.isfinite(number)
    else:  # Decimal128
        number = value.to_decimal()
        finite = number.is_finite()
    if not finite:
        raise InvalidQueryError(f"$mod {what} cannot be NaN or infinite, got {value!r}")
    whole = int(number)
    if whole not in _INT64:
        raise InvalidQueryError(f"$mod {what} {value!r} is out of range: it must fit a 64-bit integer")
    return whole


def _c_remainder(n: int, d: int) -> int:
    """``n % d`` as C computes it: the sign of ``n`` (``-5 % 2 == -1``), not Python's."""
    r = abs(n) % abs(d)
    return -r if n < 0 else r


def _mod(arg: Any, condition: Mapping[str, Any], path: str) -> Cond:
    """``$mod``: numbers truncated to integers, remainder with the dividend's sign (as in C)."""
    if not (isinstance(arg, ARRAY_TYPES) and len(arg) == 2):
        raise InvalidQueryError(f"$mod on {path!r} needs [divisor, remainder], got {arg!r}")
    divisor, remainder = _mod_operand(arg[0], "divisor"), _mod_operand(arg[1], "remainder")
    if divisor == 0:
        raise InvalidQueryError(f"$mod divisor cannot be 0 (on {path!r})")

    def pred(c: Any) -> bool:
        if not is_number(c):
            return False
        number = as_number(c)
        return math.isfinite(number) and _c_remainder(int(number), divisor) == remainder
    return Cond(ANY, pred)


def _type(arg: Any, condition: Mapping[str, Any], path: str) -> Cond:
    names = arg if isinstance(arg, ARRAY_TYPES) else [arg]
    wanted: set[str] = set()
    for name in names:
        if is_number(name) and not is_nan(name) and as_number(name) == int(as_number(name)):
            name = BSON_TYPE_CODES.get(int(as_number(name)), name)
        if not isinstance(name, str) or name not in BSON_TYPE_NAMES:
            raise InvalidQueryError(f"$type {name!r} is not supported; use one of {sorted(BSON_TYPE_NAMES)} "
                                    f"or their numbers {sorted(BSON_TYPE_CODES)}")
        wanted |= NUMERIC_TYPE_NAMES if name == "number" else {name}
    return Cond(ANY, lambda c: c is not MISSING and bson_type(c) in wanted)


#: every field operator: name -> builder(argument, the whole condition, path) -> Cond (None: no test of its own)
OPERATORS: dict[str, Builder] = {
    "$eq": _eq, "$ne": _ne, "$gt": _comparison("$gt"), "$gte": _comparison("$gte"), "$lt": _comparison("$lt"),
    "$lte": _comparison("$lte"), "$in": _in, "$nin": _nin, "$exists": _exists, "$regex": _regex,
    "$options": _options, "$not": _not, "$all": _all, "$size": _size, "$elemMatch": _elem_match, "$mod": _mod,
    "$type": _type,
}


# --------------------------------------------------------------------------- conditions and queries


def compile_condition(condition: Mapping[str, Any], path: str) -> list[Cond]:
    """An operator document (``{"$gt": 1, "$lt": 5}``): one Cond per operator, all checked."""
    conds: list[Cond] = []
    for op, arg in condition.items():
        check_key(op, f"the condition on {path!r}")
        builder = OPERATORS.get(op)
        if builder is None:
            raise InvalidQueryError(f"unsupported query operator {op!r} in the condition on {path!r}; {_SUPPORTED}")
        cond = builder(arg, condition, path)
        if cond is not None:
            conds.append(cond)
    return conds


def _any_in_value(pred: Pred) -> Pred:
    """A candidate test applied to one reached value: the value, or any element of an array value."""
    def test(v: Any) -> bool:
        if pred(v):
            return True
        if isinstance(v, ARRAY_TYPES):
            for element in v:
                if pred(element):
                    return True
        return False
    return test


def _on_value(cond: Cond) -> Pred:
    if cond.kind == ANY:
        return _any_in_value(cond.fn)
    if cond.kind == NONE:
        hit = _any_in_value(cond.fn)
        return lambda v: not hit(v)
    if cond.on_value is not None:
        return cond.on_value
    raw = cond.fn
    return lambda v: raw([(v, True)])


def value_test(conds: list[Cond]) -> Pred:
    """All of ``conds`` on the one value a one-component path reaches (``MISSING`` if none)."""
    tests = [_on_value(c) for c in conds]
    if len(tests) == 1:
        return tests[0]

    def test(v: Any) -> bool:
        for t in tests:
            if not t(v):
                return False
        return True
    return test


def reached_test(conds: list[Cond]) -> Callable[[Reached], bool]:
    """All of ``conds`` on what a dotted path reaches."""
    if len(conds) == 1 and conds[0].kind == ANY:
        pred = conds[0].fn
        return lambda reached: any(map(pred, expand(reached)))

    def test(reached: Reached) -> bool:
        candidates = None
        for kind, fn, _ in conds:
            if kind == RAW:
                ok = fn(reached)
            else:
                if candidates is None:
                    candidates = expand(reached)
                ok = any(map(fn, candidates)) == (kind == ANY)
            if not ok:
                return False
        return True
    return test


def _field_plan(path: str, condition: Any) -> Plan:
    if starts_operator(condition):
        conds = compile_condition(condition, path)
    else:
        if not isinstance(condition, REGEX_TYPES):
            check_value(condition, path)
        conds = [Cond(ANY, equality_pred(condition))]
    parts = path.split(".")
    if len(parts) > 1:
        test = reached_test(conds)
        return lambda document: test(resolve(document, parts))
    on_value = value_test(conds)
    kind = type(condition)
    if kind is str or kind is int:
        # the commonest filter, {"status": "pending"}: a value of the same exact type compares with ==
        def equality(document: Mapping[str, Any]) -> bool:
            value = document.get(path, MISSING)
            if type(value) is kind:
                return bool(value == condition)
            return on_value(value)
        return equality
    return lambda document: on_value(document.get(path, MISSING))


def _all_of(plans: list[Plan]) -> Plan:
    if not plans:
        return lambda document: True
    if len(plans) == 1:
        return plans[0]
    if len(plans) == 2:
        first, second = plans
        return lambda document: first(document) and second(document)

    def conjunction(document: Mapping[str, Any]) -> bool:
        for plan in plans:
            if not plan(document):
                return False
        return True
    return conjunction


def _any_of(plans: list[Plan], negate: bool) -> Plan:
    """``$or`` (``negate`` False) or ``$nor`` of compiled terms."""
    def disjunction(document: Mapping[str, Any]) -> bool:
        for plan in plans:
            if plan(document):
                return not negate
        return negate
    return disjunction


def compile_query(query: Any, within: str | None) -> Plan:
    """A query document: the top-level filter (``within`` None) or an ``$elemMatch`` or logical term."""
    where = within or "the query"
    if not isinstance(query, Mapping):
        raise InvalidQueryError(f"a query must be a dict, got {type(query).__name__} in {where}")
    plans: list[Plan] = []
    for key, condition in query.items():
        check_key(key, where)
        if key in LOGICAL:
            if not isinstance(condition, ARRAY_TYPES) or not condition:
                raise InvalidQueryError(f"{key} needs a non-empty list of queries")
            terms = [compile_query(sub, within or f"the {key} list") for sub in condition]
            if key == "$and":
                plans.append(_all_of(terms))
            else:
                plans.append(_any_of(terms, negate=key == "$nor"))
        elif key == "$comment":
            continue
        elif key.startswith("$"):
            if within is None:
                raise InvalidQueryError(f"unsupported top-level operator {key!r}; use $and, $or or $nor ({_SUPPORTED})")
            raise InvalidQueryError(f"unsupported operator {key!r} in {where}; {_SUPPORTED}")
        else:
            plans.append(_field_plan(key, condition))
    return _all_of(plans)


def compile_filter(query: Mapping[str, Any]) -> Plan:
    """Check a whole filter and return its plan: ``plan(document)`` says whether the document matches.

    Raises :class:`InvalidQueryError` for a malformed filter, whatever the documents.
    """
    try:
        return compile_query(query, None)
    except RecursionError:
        raise InvalidQueryError("the query is nested too deeply to be evaluated; flatten its $and/$or/"
                                "$elemMatch nesting or its compared values") from None


def validate_filter(query: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidQueryError` for a malformed filter, even when no document would be tested.

    Evaluating a filter only checks the operators it reaches; this walks all of it, at every
    depth, so a typo such as ``{"$gtt": 1}`` or an operator tensorhub does not implement
    (``$where`` inside an ``$elemMatch``...) fails the same way on an empty collection as on a
    full one, and on MongoDB, where the server would otherwise run it.
    """
    compile_filter(query)
