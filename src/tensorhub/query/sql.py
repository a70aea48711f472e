"""MongoDB filters and sorts as SQL over the ``file://`` index's ``fields`` column (SQLite).

The ``file://`` index keeps each document as BSON (``doc``) beside a JSON object of its top-level
scalars (``fields``). This module writes that JSON (:func:`encode_fields`) and compiles a filter
and a sort into SQL over it (:func:`compile_query`); :mod:`tensorhub.query` decides what SQL
cannot. It imports nothing of ``backends/file.py``, which imports it (it is the SQL half of the query language).

**Layout 3 of ``fields``.** ``{"\\u0000":3, "key": [bracket, value], ...}``: the marker first (no
document key can hold a NUL), then every top-level key :func:`pushable_key` accepts, each as a
pair of its MongoDB type bracket (the type ranks of :func:`tensorhub.query.compare_values`) and a
value whose SQLite order is MongoDB's order within that bracket:

========  =======  ==========================================================================
bracket   type     value
========  =======  ==========================================================================
2         null     ``null`` (a missing key reads as bracket 2 too: null and missing sort alike)
3         number   an int64 as itself, a finite float as its shortest ``repr``
4         string   the text (at most 200 characters, no NUL: SQLite's JSON cuts text at a NUL)
8         ObjectId its 24 lowercase hex digits (their order is the bytes' order)
9         bool     0 or 1
10        date     milliseconds since the epoch (what BSON keeps)
-1        other    no value (``[-1]``): arrays, documents, long text, NaN... "present, not told"
========  =======  ==========================================================================

So :func:`bracket_sql` and :func:`value_sql` are two SQL expressions per key whose lexicographic
order is MongoDB's sort order for every told value, and the declared indexes are SQLite indexes
on them (:func:`index_sql`). Rows of another layout (older stores, or an older tensorhub writing
into this one) are *stale*: the index store rewrites them when it opens a store, and until then
answers with :func:`pushdown`'s verdict, which leaves every stale row to the evaluator.

**Three values.** A filter becomes, per row, 0 (cannot match), 2 (matches: every field it reads
is told exactly) or 1 (maybe: :func:`tensorhub.query.matches` decides). Conditions combine in
Kleene's logic (AND is min, OR is max, NOT is 2 - x), so SQL never changes an answer, only the
work. Floats that are not exact integers only ever filter (SQLite may read their text an ulp
away): near a bound they are 1. Beside the verdict, each condition gives a *necessary* SQL term
(every matching row satisfies it) in the form an expression index serves (``bracket = 3 AND
value >= 5``), and whether it is *exact* (the term holds exactly where the verdict is 2): a filter
whose terms are all exact needs no verdict at all.

**Kinds.** Per collection and key, a bitmask of what the collection's rows have ever held there
(:data:`KIND_BITS`; kept by the store, never cleared by deletes): it tells whether a sort on
the key can be done in SQL (no inexact float, nothing untold) and lets exact terms stay exact.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any

from bson import ObjectId
from bson.datetime_ms import _datetime_to_millis
from bson.regex import Regex

LAYOUT = 3
#: how every ``fields`` of the current layout starts (11 characters)
MARKER = '{"\\u0000":3'
#: 1 for a row of the current layout, else 0 (never NULL, even when ``fields`` is NULL)
CURRENT = "(substr(fields, 1, 11) IS '{\"\\u0000\":3')"
#: the rows to rewrite (the condition of the partial index that finds them)
STALE = "(substr(fields, 1, 11) IS NOT '{\"\\u0000\":3')"

NULL, NUMBER, STRING, OBJECTID, BOOL, DATE, UNTOLD = 2, 3, 4, 8, 9, 10, -1
#: kind bits: what a collection's rows hold under a key
K_NULL, K_NUMBER, K_REAL, K_STRING, K_OBJECTID, K_BOOL, K_DATE, K_UNTOLD = 1, 2, 4, 8, 16, 32, 64, 128
#: every bit: what is assumed of a key when nothing is known
K_ANY = 255
KIND_BITS = {"null": K_NULL, "number (int64, or a float that is an exact integer <= 2**53)": K_NUMBER,
             "other float": K_REAL, "string": K_STRING, "ObjectId": K_OBJECTID, "bool": K_BOOL,
             "datetime": K_DATE, "anything else (not told)": K_UNTOLD}
#: keys of these kinds sort in SQL exactly
SORTABLE = K_ANY & ~(K_REAL | K_UNTOLD)

_MAX_TEXT = 200
_UNSAFE_KEY = re.compile(r'[."\\\x00-\x1f]')
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_EXACT_FLOAT = 2.0**53
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MICRO = dt.timedelta(microseconds=1)


def pushable_key(key: Any) -> bool:
    """Whether a top-level key goes into ``fields``: one a ``$."key"`` JSON path names exactly.

    Python's JSON encoder (``ensure_ascii=False``) escapes only ``"``, ``\\`` and control
    characters, and SQLite matches path labels against the raw JSON text, so keys with those
    are left out; so are dotted keys, which a filter never names (``"a.b"`` is a path).
    """
    return type(key) is str and not key.startswith("$") and _UNSAFE_KEY.search(key) is None


@functools.lru_cache(maxsize=4096)
def _key_json(key: str) -> str:
    """``,"key":`` for a pushable key, else the empty string (cached: records repeat their keys)."""
    return f",{encode_basestring(key)}:" if pushable_key(key) else ""


def _told(value: Any) -> tuple[str, int]:
    """The ``[bracket, value]`` JSON of one top-level value and its kind bit."""
    kind = type(value)
    if kind is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return f"[3,{int.__repr__(value)}]", K_NUMBER
    elif kind is str:
        if len(value) <= _MAX_TEXT and "\x00" not in value:
            return f"[4,{encode_basestring(value)}]", K_STRING
    elif kind is float:
        if math.isfinite(value):
            exact = value.is_integer() and abs(value) <= _EXACT_FLOAT
            return f"[3,{float.__repr__(value)}]", K_NUMBER if exact else K_REAL
    elif kind is bool:
        return ("[9,1]" if value else "[9,0]"), K_BOOL
    elif value is None:
        return "[2,null]", K_NULL
    elif kind is ObjectId:
        return f'[8,"{value}"]', K_OBJECTID
    elif kind is dt.datetime:
        return f"[10,{_datetime_to_millis(value)}]", K_DATE
    return "[-1]", K_UNTOLD


def encode_fields(document: Mapping[str, Any]) -> tuple[str, dict[str, int]]:
    """The ``fields`` JSON of a document (layout 3) and the kind bit of each of its keys there.

    Written by hand as :class:`json.JSONEncoder` would (``ensure_ascii=False``, no spaces),
    at half its cost: the encoder is rebuilt on every call.
    """
    parts = [MARKER]
    kinds: dict[str, int] = {}
    for key, value in document.items():
        name = _key_json(key)
        if not name:
            continue
        text, kinds[key] = _told(value)
        parts.append(name + text)
    parts.append("}")
    return "".join(parts), kinds


def scalar_fields(document: Mapping[str, Any]) -> str:
    """The ``fields`` JSON of a document (layout 3, see the module's docstring)."""
    return encode_fields(document)[0]


def literal(text: str) -> str:
    """``text`` as an SQL string literal (identifiers of expression indexes must be spelled, not bound)."""
    return "'" + text.replace("'", "''") + "'"


def _path(key: str, suffix: str = "") -> str:
    """The JSON path of a key's entry in ``fields`` as an SQL literal."""
    return literal('$."' + key + '"' + suffix)


@functools.lru_cache(maxsize=4096)
def bracket_sql(key: str) -> str:
    """SQL of the key's type bracket (2 when missing): the first column of its index entry."""
    return f"ifnull(json_extract(fields, {_path(key, '[0]')}), 2)"


@functools.lru_cache(maxsize=4096)
def value_sql(key: str) -> str:
    """SQL of the key's value within its bracket (NULL for null, missing and untold)."""
    return f"json_extract(fields, {_path(key, '[1]')})"


@functools.lru_cache(maxsize=4096)
def _number_type_sql(key: str) -> str:
    return f"json_type(fields, {_path(key, '[1]')})"


@functools.lru_cache(maxsize=4096)
def _present_sql(key: str) -> str:
    return f"(json_type(fields, {_path(key)}) IS NOT NULL)"


def _within(bracket: str, number: int, need: str | None) -> str:
    return f"{bracket} = {number}" + (f" AND {need}" if need else "")


def index_name(collection: str, keys: Sequence[tuple[str, int]]) -> str:
    """A stable SQLite name for the index of ``keys`` on ``collection``."""
    digest = hashlib.sha1(json.dumps([collection, [list(k) for k in keys]]).encode()).hexdigest()[:16]
    return f"thidx_{digest}"


def indexable_keys(keys: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """The longest prefix of an index's keys SQL can index (top-level pushable fields)."""
    usable = []
    for key, direction in keys:
        if not pushable_key(key):
            break
        usable.append((key, -1 if direction == -1 else 1))
    return usable


def index_sql(collection: str, keys: Sequence[tuple[str, int]], name: str) -> str:
    """``CREATE INDEX`` of ``keys`` (already :func:`indexable_keys`) over ``collection``'s rows only."""
    columns = ", ".join(f"{bracket_sql(k)}{' DESC' if d < 0 else ''}, {value_sql(k)}{' DESC' if d < 0 else ''}"
                        for k, d in keys)
    return f'CREATE INDEX IF NOT EXISTS "{name}" ON documents ({columns}) WHERE collection = {literal(collection)}'


def literal_ok(text: str) -> bool:
    """Whether a collection name can be spelled into SQL (expression and partial indexes need literals)."""
    return "\x00" not in text


# ------------------------------------------------------------------ filters as SQL

NO, MAYBE, YES = "0", "1", "2"
_RANGES = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
#: at most this many values of an $in are decided in SQL (a json_each parameter each way)
_MAX_IN = 100_000


@dataclass(frozen=True)
class Term:
    """One condition's SQL: ``verdict`` (0/1/2 per row), ``need`` (a term every matching row
    satisfies, or None) and ``exact`` (``need`` holds exactly where ``verdict`` is 2)."""

    verdict: str
    need: str | None = None
    exact: bool = False


_NO_TERM = Term(NO, "0", True)
_YES_TERM = Term(YES, None, True)
_MAYBE_TERM = Term(MAYBE, None, False)


def _and_sql(parts: list[str]) -> str:
    parts = [p for p in parts if p != YES]
    if NO in parts:
        return NO
    if not parts:
        return YES
    return parts[0] if len(parts) == 1 else f"min({', '.join(parts)})"


def _or_sql(parts: list[str]) -> str:
    parts = [p for p in parts if p != NO]
    if YES in parts:
        return YES
    if not parts:
        return NO
    return parts[0] if len(parts) == 1 else f"max({', '.join(parts)})"


def _not_sql(part: str) -> str:
    return {NO: YES, YES: NO, MAYBE: MAYBE}.get(part) or f"(2 - {part})"


def all_of(terms: list[Term]) -> Term:
    if any(t.verdict == NO for t in terms):
        return _NO_TERM
    terms = [t for t in terms if t.verdict != YES]
    if not terms:
        return _YES_TERM
    needs = [t.need for t in terms if t.need is not None]
    return Term(_and_sql([t.verdict for t in terms]), " AND ".join(needs) if needs else None,
                all(t.exact and t.need is not None for t in terms))


def any_of(terms: list[Term]) -> Term:
    if any(t.verdict == YES for t in terms):
        return _YES_TERM
    terms = [t for t in terms if t.verdict != NO]
    if not terms:
        return _NO_TERM
    verdict = _or_sql([t.verdict for t in terms])
    if any(t.need is None for t in terms):
        return Term(verdict)
    need = terms[0].need if len(terms) == 1 else "(" + " OR ".join(f"({t.need})" for t in terms) + ")"
    return Term(verdict, need, all(t.exact for t in terms))


def negation(term: Term) -> Term:
    if term.verdict == NO:
        return _YES_TERM
    if term.verdict == YES:
        return _NO_TERM
    return Term(_not_sql(term.verdict))


def _is_number(value: Any) -> bool:
    return (type(value) is int and _INT64_MIN <= value <= _INT64_MAX) or (type(value) is float and math.isfinite(value))


def _margin(bound: float) -> float:
    """How far SQLite's reading of a float's text could at most be from it, many times over."""
    return abs(bound) * 2.0**-40 + 2.0**-1000


def _is_operator_doc(value: Any) -> bool:  # as tensorhub.query reads a condition
    return isinstance(value, Mapping) and bool(value) and all(str(k).startswith("$") for k in value)


def _micros(value: dt.datetime) -> int:
    """Microseconds since the epoch (naive datetimes are UTC, as MongoDB and the evaluator read them)."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
    return (aware - _EPOCH) // _MICRO


class Compiler:
    """Builds the :class:`Term` of a filter; ``params`` are its named parameters.

    ``kinds`` (key -> kind bits) is what the collection holds; a key it does not name holds
    nothing (every row lacks it). None: unknown, anything may be anywhere.
    """

    def __init__(self, kinds: Mapping[str, int] | None = None) -> None:
        self.params: dict[str, Any] = {}
        self.kinds = kinds

    def kind(self, key: str) -> int:
        return K_ANY if self.kinds is None else self.kinds.get(key, 0)

    def param(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return ":" + name

    # -------------------------------------------------------------- structure
    def query(self, query: Mapping[str, Any]) -> Term:
        parts = []
        for key, condition in query.items():
            if key in ("$and", "$or", "$nor"):
                if not (isinstance(condition, (list, tuple)) and condition
                        and all(isinstance(q, Mapping) for q in condition)):
                    parts.append(_MAYBE_TERM)  # malformed: the matcher raises
                    continue
                subs = [self.query(q) for q in condition]
                parts.append(all_of(subs) if key == "$and" else any_of(subs) if key == "$or"
                             else negation(any_of(subs)))
            elif key == "$comment":
                continue
            elif isinstance(key, str) and pushable_key(key):
                parts.append(self.field(key, condition))
            else:
                parts.append(_MAYBE_TERM)
        return all_of(parts)

    def field(self, key: str, condition: Any) -> Term:
        if not _is_operator_doc(condition):
            return self.equals(key, condition)
        return all_of([self.operator(key, op, arg) for op, arg in condition.items()])

    def operator(self, key: str, op: str, arg: Any) -> Term:
        if op == "$eq":
            return self.equals(key, arg)
        if op == "$ne":
            return negation(self.equals(key, arg)) if not isinstance(arg, (re.Pattern, Regex)) else _MAYBE_TERM
        if op in _RANGES:
            return self.compare(key, op, arg)
        if op in ("$in", "$nin") and isinstance(arg, (list, tuple)):
            hit = self.one_of(key, arg)
            return hit if op == "$in" else negation(hit)
        if op == "$exists" and (type(arg) in (bool, int) or arg is None):
            present = _present_sql(key)
            if arg:
                return Term(f"(2 * {present})")
            return Term(f"(2 - 2 * {present})", f"{bracket_sql(key)} = {NULL}")
        if op == "$not" and _is_operator_doc(arg):
            return negation(self.field(key, arg))
        return _MAYBE_TERM

    # -------------------------------------------------------------- one bracket's SQL
    def bracketed(self, key: str, outcome: dict[int, str], need: str | None, exact: bool) -> Term:
        """``outcome`` (verdict SQL, with ``$V`` for the value) by the key's bracket, 0 for brackets it
        leaves out, 1 for untold values; ``need`` the necessary term over the bracket and value.
        ``exact`` is given up where the collection may hold untold values of the key."""
        untold = bool(self.kind(key) & K_UNTOLD)
        outcome = {b: o for b, o in outcome.items() if o != NO}
        if untold:
            outcome[UNTOLD] = MAYBE
        if not outcome:
            return _NO_TERM
        b, v = bracket_sql(key), value_sql(key)
        whens = " ".join(f"WHEN {bracket} THEN {sql}" for bracket, sql in outcome.items())
        verdict = f"(CASE {b} {whens} ELSE 0 END)".replace("$V", v)
        if untold and need is not None:
            need = f"({need} OR {b} = {UNTOLD})"
            exact = False
        return Term(verdict, need, exact and need is not None)

    def numbers(self, key: str, op: str, target: int | float) -> tuple[str, str | None, bool]:
        """Verdict SQL (``$V`` the value), necessary term over the value (None: any number) and
        exactness of ``value op target`` in the number bracket.

        Integers (and floats that are whole and <= 2**53) compare exactly; any other float entry
        is read as SQLite reads its text, so within a margin of the bound it is left to the
        matcher (1), and the term widens by that margin.
        """
        v = value_sql(key)
        reals = bool(self.kind(key) & K_REAL)
        near = float(target)
        int_need: str | None
        if op == "=":
            whole = int(target) if type(target) is int or near.is_integer() else None
            if whole is None or not _INT64_MIN <= whole <= _INT64_MAX:
                ints, int_need = "0", "0"
            else:
                p = self.param(whole)
                ints, int_need = f"2 * ($V = {p})", f"{v} = {p}"
            if not reals:
                return ints, int_need, True
            low, high = self.param(near - _margin(near)), self.param(near + _margin(near))
            verdict = f"(CASE {_number_type_sql(key)} WHEN 'integer' THEN {ints} ELSE ($V BETWEEN {low} AND {high}) END)"
            return verdict, f"{v} BETWEEN {low} AND {high}", False
        # an integer bound decides whole numbers exactly: x > 2.5 <=> x > 2 for a whole x
        if type(target) is float:
            bound = math.floor(target) if op in (">", "<=") else math.ceil(target)
        else:
            bound = int(target)
        if bound > _INT64_MAX or bound < _INT64_MIN:  # beyond every integer (and every exact float)
            above = bound > _INT64_MAX
            ints = YES if (op in ("<", "<=")) == above else NO
            int_need = None if ints == YES else "0"
        else:
            p = self.param(bound)
            ints, int_need = f"2 * ($V {op} {p})", f"{v} {op} {p}"
        if not reals:
            return ints, int_need, True
        low_side = ">" in op
        widened = self.param(near - _margin(near) if low_side else near + _margin(near))
        real = f"($V >= {widened})" if low_side else f"($V <= {widened})"
        verdict = f"(CASE {_number_type_sql(key)} WHEN 'integer' THEN {ints} ELSE {real} END)"
        return verdict, (f"{v} >= {widened}" if low_side else f"{v} <= {widened}"), False

    # -------------------------------------------------------------- conditions
    def equals(self, key: str, target: Any) -> Term:
        """``{key: target}``: equality, or for None a null or missing field."""
        b, v = bracket_sql(key), value_sql(key)
        if target is None:
            return self.bracketed(key, {NULL: YES}, f"{b} = {NULL}", True)
        told = self.scalar(target)
        if told is None:
            return _MAYBE_TERM
        bracket, value = told
        if bracket == NUMBER:
            verdict, need, exact = self.numbers(key, "=", target)
            return self.bracketed(key, {NUMBER: verdict}, _within(b, NUMBER, need), exact)
        if value is None:  # a datetime between two milliseconds: no stored value equals it
            return self.bracketed(key, {}, None, True)
        p = self.param(value)
        return self.bracketed(key, {bracket: f"2 * ($V = {p})"}, f"{b} = {bracket} AND {v} = {p}", True)

    @staticmethod
    def scalar(target: Any) -> tuple[int, Any] | None:
        """``(bracket, value)`` of a filter's scalar as ``fields`` stores it; None when SQL cannot
        compare it (a NUL in text, NaN, a regex, arrays, documents...). A datetime's value is
        its microseconds, or None for equality purposes when it is not a whole millisecond."""
        kind = type(target)
        if kind is str:
            return (STRING, target) if "\x00" not in target else None
        if kind is bool:
            return BOOL, int(target)
        if _is_number(target):
            return NUMBER, target
        if kind is ObjectId:
            return OBJECTID, str(target)
        if isinstance(target, dt.datetime):
            micros = _micros(target)
            return DATE, (micros // 1000 if micros % 1000 == 0 else None)
        return None

    def one_of(self, key: str, targets: list | tuple) -> Term:
        """``$in``: equal to one of ``targets`` (all of simple types, else MAYBE)."""
        if not targets:
            return _NO_TERM
        if len(targets) > _MAX_IN:
            return _MAYBE_TERM
        by_bracket: dict[int, list[Any]] = {}
        null = False
        for target in targets:
            if target is None:
                null = True
                continue
            told = self.scalar(target)
            if told is None:
                return _MAYBE_TERM
            by_bracket.setdefault(told[0], []).append(target if told[0] == NUMBER else told[1])
        b, v = bracket_sql(key), value_sql(key)
        terms = [self.equals(key, None)] if null else []
        for bracket, values in by_bracket.items():
            if bracket == NUMBER:
                terms += [self.equals(key, t) for t in values] if len(values) <= 8 else [self.many_numbers(key, values)]
                continue
            values = list(dict.fromkeys(x for x in values if x is not None))
            if not values:
                continue
            p = self.param(json.dumps(values, ensure_ascii=False))
            within = f"IN (SELECT value FROM json_each({p}))"
            terms.append(self.bracketed(key, {bracket: f"2 * ($V {within})"}, f"{b} = {bracket} AND {v} {within}",
                                        True))
        return any_of(terms)

    def many_numbers(self, key: str, values: list[Any]) -> Term:
        """``$in`` over many numbers: integers exactly, floats that are no integer left to the matcher."""
        b, v = bracket_sql(key), value_sql(key)
        whole = sorted({int(x) for x in values if type(x) is int or float(x).is_integer()})
        fractional = any(type(x) is float and not x.is_integer() for x in values)
        p = self.param(json.dumps(whole))
        within = f"IN (SELECT value FROM json_each({p}))"
        reals = bool(self.kind(key) & K_REAL)
        if not reals and all(abs(x) <= _EXACT_FLOAT for x in whole):
            return self.bracketed(key, {NUMBER: f"2 * ($V {within})"}, f"{b} = {NUMBER} AND {v} {within}", True)
        real = MAYBE if (fractional or whole) else NO
        verdict = f"(CASE {_number_type_sql(key)} WHEN 'integer' THEN 2 * ($V {within}) ELSE {real} END)"
        need = f"{b} = {NUMBER}" + ("" if reals else f" AND {v} {within}")
        return self.bracketed(key, {NUMBER: verdict}, need, False)

    def compare(self, key: str, op: str, target: Any) -> Term:
        """``$gt $gte $lt $lte``: only values of the target's type bracket compare."""
        sql = _RANGES[op]
        b, v = bracket_sql(key), value_sql(key)
        if target is None:  # $gte/$lte null match null and missing; $gt/$lt null match nothing
            return self.equals(key, None) if "=" in sql else _NO_TERM
        if isinstance(target, dt.datetime):
            micros = _micros(target)
            # a stored millisecond m (m * 1000 microseconds) against the target's microseconds
            bound = micros // 1000 if sql in (">", "<=") else -((-micros) // 1000)
            p = self.param(bound)
            return self.bracketed(key, {DATE: f"2 * ($V {sql} {p})"}, f"{b} = {DATE} AND {v} {sql} {p}", True)
        told = self.scalar(target)
        if told is None:
            return _MAYBE_TERM
        bracket, value = told
        if bracket == NUMBER:
            verdict, need, exact = self.numbers(key, sql, target)
            return self.bracketed(key, {NUMBER: verdict}, _within(b, NUMBER, need), exact)
        p = self.param(value)  # text compares by its UTF-8 bytes: MongoDB's order of strings
        return self.bracketed(key, {bracket: f"2 * ($V {sql} {p})"}, f"{b} = {bracket} AND {v} {sql} {p}", True)


def pushdown(query: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The three-valued SQL expression of a filter over any row's ``fields`` and its parameters.

    0: the row cannot match; 2: it matches; 1: :func:`tensorhub.query.matches` must decide.
    Rows of another layout (stale) get 1. Rows SQL drops (0) never match, so results never
    change, only the work.
    """
    compiler = Compiler()
    term = compiler.query(query)
    if term.verdict in (NO, YES, MAYBE):
        verdict = term.verdict if term.verdict == MAYBE else f"(CASE WHEN {CURRENT} THEN {term.verdict} ELSE 1 END)"
    else:
        verdict = f"(CASE WHEN {CURRENT} THEN {term.verdict} ELSE 1 END)"
    return verdict, compiler.params


# ------------------------------------------------------------------ sorts and plans

def sort_sql(sort: Sequence[tuple[str, int]], kinds: Mapping[str, int]) -> str | None:
    """``ORDER BY`` terms giving MongoDB's order of ``sort`` (ties in insertion order), or None
    when SQL cannot order the collection's values exactly (arrays, documents, inexact floats...)."""
    terms = []
    for key, direction in sort:
        if not pushable_key(key) or kinds.get(key, 0) & ~SORTABLE:
            return None
        order = " DESC" if direction < 0 else ""
        # _id too is ordered by its JSON pair, not the id column: the declared indexes (a queue's
        # ends with _id) hold the pair, and an ORDER BY they serve needs no sort of the ties before it
        terms += [f"{bracket_sql(key)}{order}", f"{value_sql(key)}{order}"]
    if all(key != "_id" for key, _ in sort):  # _id is unique: no ties after it
        terms.append("rowid")
    return ", ".join(terms) if terms else None


@dataclass
class Plan:
    """The SQL of one query: ``where`` (necessary terms, without the collection), ``verdict``
    (0/1/2 per row, YES when the terms decide), ``order`` (ORDER BY, or None: sort in Python)."""

    where: str
    verdict: str
    params: dict[str, Any] = field(default_factory=dict)
    order: str | None = None

    @property
    def empty(self) -> bool:
        return self.verdict == NO

    @property
    def decided(self) -> bool:
        """Whether SQL alone decides every row (the matcher is never needed)."""
        return self.verdict == YES


def compile_query(query: Mapping[str, Any], sort: Sequence[tuple[str, int]] | None,
                  kinds: Mapping[str, int] | None) -> Plan:
    """Plan a query over rows of the current layout; ``kinds`` as :class:`Compiler` takes them
    (None for a collection that may hold stale rows: then every stale row is left to the matcher)."""
    compiler = Compiler(kinds)
    term = compiler.query(query)
    order = sort_sql(sort, kinds) if sort and kinds is not None else None
    if kinds is None:  # stale rows may be there: no necessary terms, they would drop them
        verdict = term.verdict if term.verdict in (NO, MAYBE) else f"(CASE WHEN {CURRENT} THEN {term.verdict} ELSE 1 END)"
        return Plan("1", verdict, compiler.params, None)
    if term.verdict == NO:
        return Plan("0", NO, compiler.params, order)
    where = term.need or "1"
    verdict = YES if term.exact else term.verdict
    return Plan(where, verdict, compiler.params, order)
