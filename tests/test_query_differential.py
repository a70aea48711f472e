"""Differential test: every IndexStore means by a MongoDB query what MongoDB means by it.

The same seeded documents (ints, floats with -0.0 and NaN, strings, bools, null, missing fields,
nested documents, arrays of scalars, of documents and of arrays, UTC datetimes) go into:

* ``<mongodb_base>/<db>``: the REFERENCE, a MongoDB-wire server over TCP (SecantusDB, or the
  server ``$TENSORHUB_TEST_MONGODB_URI`` names);
* ``file://<tmp>``: SQLite, filtered, sorted and updated by :mod:`tensorhub.query` (as ``s3://`` is);
* ``mongomock://<name>``.

Then seeded queries, sorts and updates run on each, and every backend must give the
reference's answer: the same set of ``_id`` for a filter, the same order for a sort (every sort
ends with ``("_id", 1)``, so the order is total), the same documents after an update.

Known disagreements are spelled out, never dropped silently:

* :func:`reference_is_wrong`: where SecantusDB departs from MongoDB (its documentation, or the
  server's source where the documentation is silent) the case is skipped with the reason, and
  only when the reference is SecantusDB. ``tests/test_query.py`` pins what :mod:`tensorhub.query`
  does there instead.
* mongomock has no exceptions: ``mongomock://`` keeps its documents in mongomock but decides every
  filter, sort and update with :mod:`tensorhub.query`, as ``file://`` does, so it must agree
  wherever ``file://`` does (mongomock's own matcher departed from MongoDB in 169 of these cases).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import random
import re
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from bson.binary import Binary
from bson.int64 import Int64
from bson.regex import Regex

from tensorhub.backends.mongo import MongoIndexStore
from tensorhub.errors import InvalidQueryError
from tensorhub.registry import open_stores
from tensorhub.testing.servers import ENV_MONGODB

# The reference is SecantusDB unless a real server was named; the exclusions below are
# SecantusDB's departures from MongoDB, so against a real server every case runs.
REFERENCE_IS_SECANTUS = not os.environ.get(ENV_MONGODB)
BACKENDS = ["file", "mongomock"]
COLLECTION = "docs"

# --------------------------------------------------------------------------- documents

UTC = dt.timezone.utc
NAN = float("nan")
NUMBERS = [-7, -3, -1, 0, 1, 2, 3, 5, 8, 100, -2.5, -0.5, 0.0, -0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.75, 1e9]
STRINGS = ["", "a", "A", "ab", "Ab", "abc", "b", "B", "ba", "hello", "Hello", "HELLO", "x1", "10", "2", "é",
           "zeta", "Zeta", "a.b", "a b"]
DATES = [dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC), dt.datetime(2020, 1, 1, tzinfo=UTC),
         dt.datetime(2020, 1, 1, 0, 0, 0, 1000, tzinfo=UTC), dt.datetime(2021, 6, 15, 12, 30, tzinfo=UTC),
         dt.datetime(2024, 2, 29, tzinfo=UTC)]
SCALARS = [*NUMBERS, *STRINGS, *DATES, True, False, None, NAN]


def scalar(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.4:
        return rng.choice(NUMBERS) if rng.random() < 0.97 else NAN
    if r < 0.7:
        return rng.choice(STRINGS)
    if r < 0.8:
        return rng.choice(DATES)
    if r < 0.9:
        return rng.choice([True, False])
    return None


def array(rng: random.Random) -> Any:
    """Mostly an array of scalars; sometimes empty, nested (``[[x, y], z]``) or a plain scalar."""
    r = rng.random()
    if r < 0.1:
        return []
    if r < 0.15:
        return [[scalar(rng), scalar(rng)], scalar(rng)]
    if r < 0.25:
        return scalar(rng)
    return [scalar(rng) for _ in range(rng.randint(1, 4))]


def subdocument(rng: random.Random) -> Any:
    """Mostly ``{"a": ..., "b": {"c": ...}}``; sometimes null, a scalar or an array of documents."""
    r = rng.random()
    if r < 0.1:
        return None
    if r < 0.2:
        return scalar(rng)
    if r < 0.35:
        docs: list[Any] = [{"a": scalar(rng), "b": {"c": scalar(rng)}} for _ in range(rng.randint(0, 2))]
        return docs + ([scalar(rng)] if rng.random() < 0.3 else [])
    d: dict[str, Any] = {}
    if rng.random() < 0.8:
        d["a"] = scalar(rng) if rng.random() < 0.8 else array(rng)
    rb = rng.random()
    if rb < 0.5:
        d["b"] = {"c": scalar(rng)} if rng.random() < 0.8 else {}
    elif rb < 0.7:
        d["b"] = scalar(rng)
    elif rb < 0.8:
        d["b"] = [{"c": scalar(rng)}, {"c": scalar(rng)}]
    return d


def items(rng: random.Random) -> list[Any]:
    """An array of ``{"k": str, "v": number, "w": [numbers]}`` with fields left out, and stray scalars."""
    out: list[Any] = []
    for _ in range(rng.randint(0, 3)):
        if rng.random() < 0.1:
            out.append(scalar(rng))
            continue
        item: dict[str, Any] = {}
        if rng.random() < 0.9:
            item["k"] = rng.choice(STRINGS[:10])
        if rng.random() < 0.9:
            item["v"] = rng.choice(NUMBERS) if rng.random() < 0.8 else scalar(rng)
        if rng.random() < 0.3:
            item["w"] = [rng.choice(NUMBERS) for _ in range(rng.randint(0, 2))]
        out.append(item)
    return out


FIELDS = {
    "x": scalar,
    "y": lambda rng: rng.choice(NUMBERS) if rng.random() < 0.85 else scalar(rng),
    "s": lambda rng: rng.choice(STRINGS) if rng.random() < 0.85 else scalar(rng),
    "flag": lambda rng: rng.choice([True, False, True, False, None, 0, 1]),
    "t": lambda rng: rng.choice(DATES) if rng.random() < 0.85 else scalar(rng),
    "arr": array,
    "tags": lambda rng: [rng.choice(STRINGS[:8]) for _ in range(rng.randint(0, 3))],
    "sub": subdocument,
    "items": items,
}


def make_documents(n: int = 300, seed: int = 20240611) -> list[dict[str, Any]]:
    """``n`` documents with integer ``_id`` 0..n-1; each field is missing from 15% of them."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        doc: dict[str, Any] = {"_id": i}
        for name, make in FIELDS.items():
            if rng.random() < 0.85:
                doc[name] = make(rng)
        docs.append(doc)
    return docs


DOCUMENTS = make_documents()

# --------------------------------------------------------------------------- queries

PATHS = ["x", "y", "s", "flag", "t", "arr", "tags", "sub", "items", "sub.a", "sub.b", "sub.b.c", "items.k",
         "items.v", "items.w", "arr.0", "arr.1", "items.0.v", "tags.0", "sub.0.a", "sub.a.0", "nosuch"]
COMPARISONS = ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"]
PATTERNS = ["^a", "b$", "A", "^$", "[0-9]", "l+", "^h.*o$", "é", r"\.", "^(a|b)"]


def values_at(value: Any, parts: list[str]) -> Iterator[Any]:
    """Scalars found under a dotted path (through documents and arrays), to draw operands from."""
    if isinstance(value, list):
        for element in value:
            yield from values_at(element, parts)
    elif not parts:
        yield value
    elif isinstance(value, dict) and parts[0] in value:
        yield from values_at(value[parts[0]], parts[1:])


PATH_VALUES = {path: [v for d in DOCUMENTS for v in values_at(d, path.split("."))] for path in PATHS}


def operand(rng: random.Random, path: str = "") -> Any:
    """A value to compare with: often one the path holds somewhere, else any kind of value."""
    r = rng.random()
    if r < 0.45 and PATH_VALUES.get(path):
        return rng.choice(PATH_VALUES[path])
    if r < 0.85:
        return rng.choice(SCALARS)
    if r < 0.95:
        return [scalar(rng) for _ in range(rng.randint(0, 2))]
    return {"c": scalar(rng)}


def field_condition(rng: random.Random) -> dict[str, Any]:
    """One ``{path: condition}`` of a random kind."""
    path = rng.choice(PATHS)
    kind = rng.randrange(12)
    if kind == 0:
        return {path: operand(rng, path)}
    if kind in (1, 2):
        return {path: {rng.choice(COMPARISONS): operand(rng, path)}}
    if kind == 3:
        return {path: dict(zip(("$gt", "$lt"), bounds(rng, path)))}
    if kind == 4:
        return {path: {rng.choice(["$in", "$nin"]): [operand(rng, path) for _ in range(rng.randint(0, 4))]}}
    if kind == 5:
        return {path: {"$exists": rng.choice([True, False])}}
    if kind == 6:
        pattern, options = rng.choice(PATTERNS), rng.choice(["", "i"])
        return {path: {"$regex": pattern, "$options": options} if options else {"$regex": pattern}}
    if kind == 7:
        return {path: {"$not": negated(rng, path)}}
    if kind == 8:
        held = list(values_at(rng.choice(DOCUMENTS), path.split(".")))
        return {path: {"$all": rng.sample(held, min(len(held), rng.randint(0, 3))) or [operand(rng, path)]}}
    if kind == 9:
        return {path: {"$size": rng.randint(0, 3)}}
    if kind == 10:
        return {path: {"$elemMatch": rng.choice([
            {"$gt": rng.choice(SCALARS)},
            {"$gte": rng.choice(NUMBERS), "$lt": rng.choice(NUMBERS)},
            {"k": rng.choice(STRINGS[:10])},
            {"v": {"$gt": rng.choice(NUMBERS)}, "k": {"$ne": "a"}},
            {"c": None},
        ])}}
    return {path: None}


def bounds(rng: random.Random, path: str) -> tuple[Any, Any]:
    """Two values for ``$gt`` and ``$lt``: of one kind and in order when the path allows, else any two."""
    low, high = operand(rng, path), operand(rng, path)
    kinds = (type(low) in (int, float) and type(high) in (int, float)) or type(low) is type(high)
    if kinds and isinstance(low, (int, float, str, dt.datetime)) and not isinstance(low, bool) and high < low:
        return high, low
    return low, high


def negated(rng: random.Random, path: str) -> Any:
    """The argument of a ``$not``: an operator document or a regex."""
    if rng.random() < 0.2:
        return Regex(rng.choice(PATTERNS), rng.choice(["", "i"]))
    return rng.choice([
        {rng.choice(COMPARISONS[2:]): operand(rng, path)},
        {"$in": [operand(rng, path), operand(rng, path)]},
        {"$exists": True},
        {"$eq": operand(rng, path)},
    ])


def make_queries(n: int = 380, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.75:
            out.append(field_condition(rng))
        else:
            out.append({rng.choice(["$and", "$or", "$nor"]): [field_condition(rng) for _ in range(rng.randint(1, 3))]})
    return out


# Hand-picked: one of each rule worth pinning, whatever the random ones happen to cover.
EDGE_QUERIES: list[dict[str, Any]] = [
    {"x": None}, {"x": {"$ne": None}}, {"x": {"$exists": False}}, {"x": {"$in": [None, "a", 1.5]}},
    {"x": {"$nin": [None, 2]}}, {"x": {"$gte": None}}, {"x": {"$lt": None}},
    {"sub.a": None}, {"sub.b.c": None}, {"items.v": None}, {"items.k": {"$exists": False}}, {"sub.b.c": {"$ne": None}},
    {"arr": []}, {"arr": {"$size": 0}}, {"arr": {"$gt": []}}, {"arr": {"$lte": []}}, {"arr": [[]]},
    {"arr.0": {"$exists": False}}, {"arr.0": {"$exists": True}}, {"tags.1": {"$exists": True}},
    {"sub": {"a": 1}}, {"sub": {"$gt": {}}}, {"sub": {"$type": "object"}}, {"sub": {"b": {"c": "B"}}},
    {"items": {"$elemMatch": {"k": "a", "v": {"$gt": 0}}}}, {"items": {"$elemMatch": {}}},
    {"items": {"$all": [{"$elemMatch": {"k": "b"}}, {"$elemMatch": {"v": {"$gte": 2}}}]}},
    {"arr": {"$elemMatch": {"$elemMatch": {"$gt": 0}}}}, {"arr": {"$elemMatch": {"$type": "array"}}},
    {"arr": {"$elemMatch": {"$gt": 1, "$lt": 10}}}, {"arr": {"$gt": 1, "$lt": 10}},
    {"tags": {"$all": ["a", "b"]}}, {"tags": {"$all": ["a"]}, "arr": {"$size": 2}},
    {"x": {"$eq": re.compile("a")}}, {"x": re.compile("^a", re.I)}, {"s": {"$in": [re.compile("^h"), None]}},
    {"s": {"$nin": [re.compile("^h", re.I)]}}, {"tags": {"$all": [re.compile("^a")]}},
    {"s": {"$regex": "^H", "$options": "i"}}, {"s": {"$not": re.compile("^h")}}, {"arr": {"$regex": "b"}},
    {"y": NAN}, {"y": {"$in": [NAN, 1]}}, {"y": {"$lt": 0}}, {"y": {"$gte": NAN}}, {"y": {"$ne": NAN}},
    {"y": 0}, {"y": -0.0}, {"y": 2}, {"y": 2.0}, {"y": {"$gt": 1, "$lte": 3}}, {"y": {"$type": "number"}},
    {"y": {"$mod": [2, 1]}}, {"y": {"$mod": [3, -1]}}, {"y": {"$mod": [2, 0]}},
    {"flag": True}, {"flag": 1}, {"flag": {"$ne": False}}, {"flag": {"$in": [0, None]}}, {"flag": {"$gt": False}},
    {"t": {"$gt": dt.datetime(2020, 1, 1, tzinfo=UTC)}}, {"t": {"$lte": DATES[2]}},
    {"t": {"$type": "date"}}, {"x": {"$type": "string"}}, {"x": {"$type": ["bool", "null"]}},
    {"arr": {"$type": "array"}}, {"x": {"$exists": True, "$ne": None}},
    {"$nor": [{"x": None}, {"y": {"$gt": 1}}]}, {"$or": [{"sub.a": {"$exists": False}}, {"sub.a": {"$size": 1}}]},
    {"$and": [{"tags": "a"}, {"tags": {"$ne": "b"}}]}, {"$comment": "ignored", "s": "hello"},
]

# --------------------------------------------------------------------------- inspecting a query

LOGICAL = ("$and", "$or", "$nor")


def is_operator_doc(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(str(k).startswith("$") for k in value)


def field_conditions(query: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every ``(path, condition)`` of a filter, inside ``$and``/``$or``/``$nor`` too."""
    for key, condition in query.items():
        if key in LOGICAL:
            for sub in condition:
                yield from field_conditions(sub)
        elif not key.startswith("$"):
            yield key, condition


def operators(condition: Any) -> set[str]:
    """Every operator a condition uses, at any depth."""
    found: set[str] = set()
    if isinstance(condition, Mapping):
        for key, value in condition.items():
            if str(key).startswith("$"):
                found.add(key)
            found |= operators(value)
    elif isinstance(condition, list):
        for value in condition:
            found |= operators(value)
    return found


def compared_values(condition: Any) -> list[Any]:
    """The values a condition compares fields with (not the arguments of $exists, $size, $type...)."""
    if not is_operator_doc(condition):
        return [condition]
    out: list[Any] = []
    for op, arg in condition.items():
        if op in ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte"):
            out.append(arg)
        elif op in ("$in", "$nin", "$all"):
            for term in arg:
                out.extend(compared_values(term) if is_operator_doc(term) else [term])
        elif op == "$not" and isinstance(arg, Mapping):
            out.extend(compared_values(arg))
        elif op == "$elemMatch":
            out.extend(compared_values(arg) if is_operator_doc(arg)
                       else [v for _, c in field_conditions(arg) for v in compared_values(c)])
    return out


def null_matching_values(condition: Any) -> list[Any]:
    """The values compared by the operators that can match a missing field: equality, $ne,
    $in, $nin, $all, $gte, $lte, and $not of those ($gt, $lt and $elemMatch never do)."""
    if not is_operator_doc(condition):
        return [condition]
    out: list[Any] = []
    for op, arg in condition.items():
        if op in ("$eq", "$ne", "$gte", "$lte"):
            out.append(arg)
        elif op in ("$in", "$nin", "$all"):
            out.extend(arg)
        elif op == "$not" and isinstance(arg, Mapping):
            out.extend(null_matching_values(arg))
    return out


def atoms(value: Any) -> Iterator[Any]:
    """A value and everything inside it."""
    yield value
    if isinstance(value, Mapping):
        for v in value.values():
            yield from atoms(v)
    elif isinstance(value, list):
        for v in value:
            yield from atoms(v)


def is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def has_index_component(path: str) -> bool:
    return any(part.isdigit() for part in path.split("."))


# Paths whose arrays hold arrays in DOCUMENTS ("arr": [[x, y], z]; "sub": {"a": [[x, y], z]}).
NESTED_ARRAY_PATHS = {"arr", "sub.a"}
NEGATIONS = {"$ne", "$nin", "$not", "$exists"}
# Paths that run through an array of documents before their last component.
THROUGH_ARRAY_PATHS = {"sub.a", "sub.b", "sub.b.c", "items.k", "items.v", "items.w"}


def reference_is_wrong(query: Mapping[str, Any]) -> str | None:
    """Why SecantusDB's answer to ``query`` is not MongoDB's, or None when it is trusted.

    Each rule is a SecantusDB departure that this test found and that MongoDB's documentation or
    its server source settles; tests/test_query.py pins the MongoDB behaviour.
    """
    for path, condition in field_conditions(query):
        if has_index_component(path) and None in null_matching_values(condition):
            # {"a.0": null} does not match {"a": []}: an index past the end of an array reaches
            # nothing, not a missing field (mongod's matcher, src/mongo/db/matcher/path.cpp;
            # also gist.github.com/boutell/db0ca16e4b6de7a592cb79a4ed4a700c, sift.js#208).
            # SecantusDB matches it.
            return "SecantusDB: an array index past the end compares equal to null"
        for op, arg in (condition.items() if is_operator_doc(condition) else []):
            if op == "$all" and any(isinstance(t, list) for t in arg):
                # Documented: {$all: [["A"]]} also matches a field equal to ["A"]
                # (mongodb.com/docs/manual/reference/operator/query/all). SecantusDB only
                # matches ["A"] as an element.
                return "SecantusDB: $all with an array term misses a field equal to that array"
            if op == "$all" and None in arg:
                # Documented the same way: {$all: [null]} is {$and: [{f: null}]}, which matches a
                # missing field (mongod parses each term into an EqualityMatchExpression).
                # SecantusDB does not match a missing field.
                return "SecantusDB: {$all: [null]} does not match a missing field"
            if op == "$all" and len(arg) > 1 and path in THROUGH_ARRAY_PATHS:
                # Documented: $all is equivalent to an $and of equalities on the path, so the
                # terms may match in different elements of an array of documents
                # ({"a.k": {"$all": ["a", "b"]}} matches {"a": [{"k": "a"}, {"k": "b"}]}).
                # SecantusDB requires one element to match every term.
                return "SecantusDB: dotted $all requires a single array element to match every term"
        criteria = condition.get("$elemMatch") if isinstance(condition, Mapping) else None
        if path in NESTED_ARRAY_PATHS and isinstance(criteria, Mapping) and not is_operator_doc(criteria):
            if operators(criteria) & NEGATIONS or any(a is None for a in atoms(criteria)):
                # mongod's $elemMatch with a query document tests every element that is a
                # document OR an array (BSONElement::isABSONObj in ElemMatchObjectMatchExpression
                # ::matchesArray), reading [1, 2] as {"0": 1, "1": 2}, so [[1, 2]] matches
                # {"$elemMatch": {"c": null}}. SecantusDB skips array elements. (Criteria with
                # no null and no negation cannot match such an element, and are not skipped.)
                return "SecantusDB: $elemMatch with a query document skips elements that are arrays"
    return None


def _query_cases() -> list[Any]:
    cases = []
    for i, query in enumerate([*make_queries(), *EDGE_QUERIES]):
        reason = reference_is_wrong(query) if REFERENCE_IS_SECANTUS else None
        marks = [pytest.mark.skip(reason=f"{reason}: {query!r}")] if reason else []
        cases.append(pytest.param(query, id=f"q{i:03d}", marks=marks))
    return cases


QUERY_CASES = _query_cases()

# --------------------------------------------------------------------------- sorts

# Paths that never hold an array in DOCUMENTS; a compound sort uses at most one other path,
# because MongoDB refuses to sort by two arrays ("parallel arrays") and sorts by two paths through
# one array by per-element keys ({"a.b": 1, "a.c": 1}), neither of which tensorhub.query models.
SCALAR_PATHS = ["x", "y", "s", "flag", "t", "nosuch"]
ARRAY_PATHS = ["arr", "tags", "sub", "items", "sub.a", "sub.b.c", "items.v", "items.k", "arr.0"]


def make_sorts(n: int = 70, seed: int = 11) -> list[tuple[dict[str, Any], list[tuple[str, int]]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        keys = rng.sample(SCALAR_PATHS, rng.randint(0, 2))
        if not keys or rng.random() < 0.6:
            keys.insert(rng.randrange(len(keys) + 1), rng.choice(ARRAY_PATHS))
        query = field_condition(rng) if rng.random() < 0.3 else {}
        out.append((query, [(k, rng.choice([1, -1])) for k in keys] + [("_id", 1)]))
    return out


def sort_reference_is_wrong(query: Mapping[str, Any], sort: list[tuple[str, int]]) -> str | None:
    for path, direction in sort:
        if direction == 1 and path in THROUGH_ARRAY_PATHS:
            # mongod sorts by index keys, and {"a": [{"b": 5}, {}]} has the keys 5 and null under
            # "a.b" (btree_key_generator_test.cpp, GetKeysArraySubobjectSingleMissing), so it
            # sorts ascending as null. SecantusDB leaves out the elements lacking the field and
            # sorts it as 5. (Descending takes the greatest key, where both agree.)
            return "SecantusDB: an ascending sort through an array of documents ignores elements lacking the field"
    return reference_is_wrong(query)


def _sort_cases() -> list[Any]:
    cases = []
    for i, (query, sort) in enumerate(make_sorts()):
        reason = sort_reference_is_wrong(query, sort) if REFERENCE_IS_SECANTUS else None
        marks = [pytest.mark.skip(reason=f"{reason}: {sort!r}")] if reason else []
        cases.append(pytest.param(query, sort, id=f"s{i:03d}", marks=marks))
    return cases


SORT_CASES = _sort_cases()

# --------------------------------------------------------------------------- fixtures


class ServerJudged(MongoIndexStore):
    """The reference: every filter goes to the server as it is. MongoIndexStore checks filters with
    tensorhub.query first, which would make a refusal of tensorhub's look like the server's."""

    def _filter(self, filter: Mapping[str, Any]) -> dict[str, Any]:
        return dict(filter)


@pytest.fixture(scope="module")
def stores(mongodb_base: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The reference and every backend under test, each holding DOCUMENTS in COLLECTION."""
    unique = f"differential_{uuid.uuid4().hex[:8]}"
    opened = {
        "reference": open_stores(f"{mongodb_base}/{unique}", blobs=False).index,
        "file": open_stores(f"file://{tmp_path_factory.mktemp('differential')}", blobs=False).index,
        "mongomock": open_stores(f"mongomock://{unique}", blobs=False).index,
    }
    opened["reference"].__class__ = ServerJudged
    for store in opened.values():
        store.insert_many(COLLECTION, [dict(d) for d in DOCUMENTS])
    yield opened
    for store in opened.values():
        store.close()


@pytest.fixture(scope="module")
def reference_answers() -> dict[str, Any]:
    """The reference's answers, computed once per case and shared by the backends under test."""
    return {}


def reference_answer(answers: dict[str, Any], key: str, compute: Any) -> Any:
    if key not in answers:
        answers[key] = compute()
    return answers[key]


def run(store: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """The result of a store call, or the exception it raised (compared like a result)."""
    try:
        return getattr(store, method)(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a raised error is an answer to compare
        return exc


def ids(result: Any) -> Any:
    return result if isinstance(result, Exception) else [d["_id"] for d in result]


def check(backend: str, got: Any, expected: Any, message: str) -> None:
    """Assert ``got == expected`` (a refusal by the reference must be an InvalidQueryError here)."""
    if isinstance(expected, Exception):
        assert isinstance(got, InvalidQueryError), f"the reference refused the operation ({expected}); {message}"
        return
    assert not isinstance(got, Exception), f"{backend} raised {got!r}; {message}"
    assert got == expected, message


def describe(query: Any, got: Any, expected: Any) -> str:
    """A failure message: the query, the ids only one side returned, and those documents."""
    text = f"query {query!r}"
    if isinstance(got, (set, list)) and isinstance(expected, (set, list)):
        extra, missing = sorted(set(got) - set(expected)), sorted(set(expected) - set(got))
        text += f"\n  returned but not by the reference: {extra}\n  missed: {missing}"
        for i in (extra + missing)[:3]:
            text += f"\n    {DOCUMENTS[i]!r}"
        if not extra and not missing:
            text += f"\n  order {got}\n  reference order {expected}"
    return text


# --------------------------------------------------------------------------- find


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("query", QUERY_CASES)
def test_find_returns_the_reference_ids(
    stores: dict[str, Any], reference_answers: dict[str, Any], backend: str, query: dict[str, Any]
) -> None:
    expected = reference_answer(
        reference_answers, f"find {query!r}", lambda: ids(run(stores["reference"], "find", COLLECTION, query))
    )
    got = ids(run(stores[backend], "find", COLLECTION, query))
    if isinstance(expected, list):
        expected = set(expected)
    if isinstance(got, list):
        got = set(got)
    check(backend, got, expected, describe(query, got, expected))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("query", "sort"), SORT_CASES)
def test_sorted_find_returns_the_reference_order(
    stores: dict[str, Any],
    reference_answers: dict[str, Any],
    backend: str,
    query: dict[str, Any],
    sort: list[tuple[str, int]],
) -> None:
    expected = reference_answer(
        reference_answers,
        f"sort {query!r} {sort!r}",
        lambda: ids(run(stores["reference"], "find", COLLECTION, query, sort=sort)),
    )
    got = ids(run(stores[backend], "find", COLLECTION, query, sort=sort))
    message = f"sort {sort!r}; " + describe(query, got, expected)
    check(backend, got, expected, message)


# --------------------------------------------------------------------------- updates

UPDATE_DOCUMENTS = DOCUMENTS[:50]
UPDATE_PATHS = {
    "$set": ["x", "fresh", "sub", "sub.a", "sub.b.c", "arr.1", "arr.5", "items.0.v", "items.3.k", "tags"],
    "$unset": ["x", "sub.a", "sub.b.c", "items.k", "arr.0", "arr.7", "nosuch", "tags"],
    "$inc": ["y", "counter", "sub.a", "items.0.v", "arr.0"],
    "$push": ["tags", "arr", "items", "fresh_list", "sub.a"],
    "$min": ["y", "x", "t", "s", "sub.a", "fresh"],
    "$max": ["y", "x", "t", "s", "sub.a", "fresh"],
}
MISSING = object()


def update_value(rng: random.Random, op: str) -> Any:
    if op == "$unset":
        return ""
    if op == "$inc":
        return rng.choice([1, -2, 0.5, 2.5, 100, -0.5])
    if op == "$push":
        return rng.choice([scalar(rng), [scalar(rng)], {"k": "new", "v": 1}, {"$each": [scalar(rng), scalar(rng)]}])
    return operand(rng)


def refused(document: Mapping[str, Any], path: str, op: str) -> bool:
    """Whether MongoDB refuses ``op`` on ``path`` of ``document``: a field inside a scalar or null,
    a name inside an array, ``$inc`` of a non-number, ``$push`` onto a non-array."""
    node: Any = document
    parts = path.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, dict):
            child = node.get(part, MISSING)
        elif isinstance(node, list) and part.isdigit():
            child = node[int(part)] if int(part) < len(node) else MISSING
        else:
            return op != "$unset"
        if child is MISSING:
            return False
        if i == len(parts) - 1:
            if op == "$inc":
                return isinstance(child, bool) or not isinstance(child, (int, float))
            return op == "$push" and not isinstance(child, list)
        node = child
    return False


def make_updates(n: int = 60, seed: int = 5) -> list[tuple[dict[str, Any], list[int], list[int]]]:
    """``(update, ids it applies to, ids it is refused on)``, 1 to 3 operators on unrelated paths."""
    rng = random.Random(seed)
    out = []
    for _ in range(4 * n):  # bounded: a draw that applies to no document is dropped
        if len(out) == n:
            break
        update: dict[str, dict[str, Any]] = {}
        paths: list[str] = []
        for _ in range(rng.randint(1, 3)):
            op = rng.choice(list(UPDATE_PATHS))
            path = rng.choice(UPDATE_PATHS[op])
            if any(p == path or p.startswith(path + ".") or path.startswith(p + ".") for p in paths):
                continue
            paths.append(path)
            update.setdefault(op, {})[path] = update_value(rng, op)
        steps = [(path, op) for op, fields in update.items() for path in fields]
        good = [d["_id"] for d in UPDATE_DOCUMENTS if not any(refused(d, p, o) for p, o in steps)]
        bad = [d["_id"] for d in UPDATE_DOCUMENTS if d["_id"] not in good]
        if good:
            out.append((update, good, bad))
    return out


def canonical(value: Any) -> Any:
    """A comparable form of a document that keeps types apart (1, 1.0 and True differ).

    Field order is left out: SecantusDB adds the fields an update creates in the update's
    order, MongoDB (5.0+) in lexicographic order of their paths, as tensorhub.query does
    (https://www.mongodb.com/docs/manual/reference/operator/update/#behavior; pinned in
    tests/test_query.py).
    """
    if isinstance(value, Mapping):
        return ("document", tuple(sorted(((k, canonical(v)) for k, v in value.items()), key=lambda kv: kv[0])))
    if isinstance(value, list):
        return ("array", tuple(canonical(v) for v in value))
    if is_nan(value):
        return ("nan",)
    return (type(value).__name__, value)


def fresh_collection(store: Any) -> str:
    """A new collection of ``store`` holding UPDATE_DOCUMENTS."""
    name = f"updates_{uuid.uuid4().hex[:8]}"
    store.insert_many(name, [dict(d) for d in UPDATE_DOCUMENTS])
    return name


def contents(store: Any, collection: str) -> Any:
    return [canonical(d) for d in store.find(collection, {}, sort=[("_id", 1)])]


def updated(store: Any, method: str, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """``(answer, collection contents after)`` of an update call on a fresh collection of ``store``.

    The answer is the count (update_many), the canonical returned document
    (find_one_and_update), or the exception raised.
    """
    collection = fresh_collection(store)
    answer = run(store, method, collection, *args, **kwargs)
    if isinstance(answer, Mapping):
        answer = canonical(answer)
    return answer, contents(store, collection)


UPDATES = make_updates()
UPDATE_CASES = [pytest.param(u, good, id=f"u{i:03d}") for i, (u, good, _) in enumerate(UPDATES)]
# each refused on its first document it cannot apply to
REFUSED_CASES = [pytest.param(u, bad[0], id=f"u{i:03d}") for i, (u, _, bad) in enumerate(UPDATES) if bad][:15]
# find_one_and_update picks by a sort on a field of mixed types (bools, 0 and 1, null, missing).
PICK_SORT = [("flag", -1), ("_id", 1)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("update", "good"), UPDATE_CASES)
def test_update_many_matches_and_leaves_the_reference_documents(
    stores: dict[str, Any], reference_answers: dict[str, Any], backend: str, update: dict[str, Any], good: list[int]
) -> None:
    args = ({"_id": {"$in": good}}, update)
    expected = reference_answer(
        reference_answers, f"update_many {args!r}", lambda: updated(stores["reference"], "update_many", *args)
    )
    got = updated(stores[backend], "update_many", *args)
    check(backend, got[0], expected[0], f"matched count of update {update!r}")
    check(backend, got[1], expected[1], f"documents after update {update!r}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("update", "good"), UPDATE_CASES[:30])
def test_find_one_and_update_returns_and_leaves_the_reference_documents(
    stores: dict[str, Any], reference_answers: dict[str, Any], backend: str, update: dict[str, Any], good: list[int]
) -> None:
    args, kwargs = ({"_id": {"$in": good}}, update), {"sort": PICK_SORT}
    expected = reference_answer(
        reference_answers,
        f"find_one_and_update {args!r}",
        lambda: updated(stores["reference"], "find_one_and_update", *args, **kwargs),
    )
    got = updated(stores[backend], "find_one_and_update", *args, **kwargs)
    check(backend, got[0], expected[0], f"document returned by update {update!r}")
    check(backend, got[1], expected[1], f"documents after update {update!r}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("update", "bad"), REFUSED_CASES)
def test_refused_update_raises_and_changes_nothing(
    stores: dict[str, Any], reference_answers: dict[str, Any], backend: str, update: dict[str, Any], bad: int
) -> None:
    args = ({"_id": bad}, update)
    expected = reference_answer(
        reference_answers,
        f"refused {args!r}",
        lambda: updated(stores["reference"], "find_one_and_update", *args),
    )
    assert isinstance(expected[0], InvalidQueryError), f"the reference accepted {update!r} on {bad}"
    got = updated(stores[backend], "find_one_and_update", *args)
    assert isinstance(got[0], InvalidQueryError), f"{backend} answered {got[0]!r} to {update!r}"
    assert got[1] == expected[1], f"{backend} changed documents although it refused {update!r}"


# --------------------------------------------------------------------------- issue 14: BSON types and refusals

# Values DOCUMENTS does not hold (binary with subtypes, stored regexes, longs), and two paths
# through one array, in a collection of their own so the seeded cases above stay as they are.
EXTRA_COLLECTION = "extra"
EXTRA_DOCUMENTS: list[dict[str, Any]] = [
    {"_id": 1, "a": [{"b": 1, "c": 5}, {"b": 2, "c": 0}]}, {"_id": 2, "a": [{"b": 1.5, "c": 0}]},
    {"_id": 3, "a": [{"b": 0, "c": 1}]},
    {"_id": 10, "bin": Binary(b"ab", 0)}, {"_id": 11, "bin": Binary(b"ab", 5)}, {"_id": 12, "bin": Binary(b"b", 0)},
    {"_id": 13, "bin": Binary(b"aaa", 0)},
    {"_id": 20, "r": Regex("^ab", "i")}, {"_id": 21, "r": "ABC"}, {"_id": 22, "r": Regex("^ab")}, {"_id": 23, "r": "x"},
    {"_id": 30, "n": Int64(5)}, {"_id": 31, "n": 5}, {"_id": 32, "n": 2**40}, {"_id": 33, "n": 5.0},
    {"_id": 40, "x": [1, 2], "y": [3, 4]},
]
_BINARY = "SecantusDB compares BinData byte by byte in $gt/$lt; MongoDB documents length, then subtype, then bytes"
_SAME_ARRAY = ("SecantusDB takes each sort key's extreme apart; MongoDB's sort pairs the keys of one array element "
               "(the index key generator's compound keys)")
_ACCEPTS = "SecantusDB accepts what MongoDB refuses: "
#: (filter, sort, why SecantusDB's answer is not MongoDB's or None); mongomock:// has no exceptions
EXTRA_CASES: list[tuple[dict[str, Any], Any, str | None]] = [
    ({"bin": Binary(b"ab", 5)}, None, None),
    ({"bin": {"$exists": True}}, [("bin", 1)], None),
    ({"bin": {"$gt": Binary(b"b", 0)}}, None, _BINARY),
    ({"r": {"$in": [Regex("^ab", "i"), "zz"]}}, None, None),
    ({"r": Regex("^ab", "i")}, None, None),
    ({"r": {"$regex": "^ab"}}, None, None),
    ({"n": {"$type": "long"}}, None, None),
    ({"n": {"$type": "int"}}, None, None),
    ({"n": {"$type": "number"}}, None, None),
    ({"_id": {"$lt": 10}}, [("a.c", 1), ("a.b", 1), ("_id", 1)], _SAME_ARRAY),
    # refused by MongoDB (and by the reference)
    ({"r": {"$not": {"b": 3}}}, None, None),
    ({"r": {"$in": [{"$elemMatch": {"b": 1}}]}}, None, None),
    ({"r": {"$nin": [{"$elemMatch": {"b": 1}}]}}, None, None),
    ({"r": {"$regex": "a", "$options": "z"}}, None, None),
    ({"n": {"$mod": [float("nan"), 1]}}, None, None),
    ({"n": {"$mod": ["a", 0]}}, None, None),
    ({"n": {"$mod": [0, 1]}}, None, None),
    ({"n": {"$type": [{}, "string"]}}, None, None),
    # refused by MongoDB, accepted by SecantusDB
    ({"r": {"$regex": Regex("^ab", "i"), "$options": "m"}}, None, _ACCEPTS + "options set in both $regex and $options"),
    ({"r": {"$regex": "a\0b"}}, None, _ACCEPTS + "a NUL in a regex pattern"),
    ({"n": {"$mod": [1, float("inf")]}}, None, _ACCEPTS + "an infinite $mod remainder (MongoDB 5.1+ refuses)"),
    ({"_id": 40}, [("x", 1), ("y", 1)], _ACCEPTS + "a sort by two parallel arrays"),
]


def _extra_cases() -> list[Any]:
    cases = []
    for i, (query, sort, server) in enumerate(EXTRA_CASES):
        marks = [pytest.mark.skip(reason=f"{server}: {query!r}")] if server and REFERENCE_IS_SECANTUS else []
        cases.append(pytest.param(query, sort, id=f"e{i:02d}", marks=marks))
    return cases


@pytest.fixture(scope="module")
def extra_stores(stores: dict[str, Any]) -> dict[str, Any]:
    for store in stores.values():
        store.insert_many(EXTRA_COLLECTION, [dict(d) for d in EXTRA_DOCUMENTS])
    return stores


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("query", "sort"), _extra_cases())
def test_issue14_bson_types_and_refusals_match_the_reference(
    extra_stores: dict[str, Any], backend: str, query: dict[str, Any], sort: Any
) -> None:
    expected = ids(run(extra_stores["reference"], "find", EXTRA_COLLECTION, query, sort=sort))
    got = ids(run(extra_stores[backend], "find", EXTRA_COLLECTION, query, sort=sort))
    if sort is None:
        expected, got = (set(x) if isinstance(x, list) else x for x in (expected, got))
    check(backend, got, expected, f"query {query!r} sort {sort!r}")
