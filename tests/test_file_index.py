"""The ``file://`` index's SQL pushdown: it may rule rows out or in, never change an answer.

:func:`tensorhub.backends.file.pushdown` turns a filter into an SQL expression over each row's
``fields`` JSON with three values: 0 (cannot match), 2 (matches, the Python matcher is skipped)
and 1 (the matcher decides). Every test here holds SQL to :func:`tensorhub.query.matches`,
which ``tests/test_query_differential.py`` holds to a MongoDB-wire server: a 0 on a matching
row or a 2 on a non-matching one is a wrong answer. Stores written before the current
``fields`` layout (only str and int values, or no ``fields`` column at all) must be answered
the same.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import bson
import pytest
from bson import ObjectId
from test_query_differential import DOCUMENTS, EDGE_QUERIES, make_queries

from tensorhub import TensorHub
from tensorhub.backends.file import SQLiteIndexStore, pushdown, scalar_fields
from tensorhub.errors import InvalidQueryError
from tensorhub.query import matches

UTC = dt.timezone.utc
NAN = float("nan")
COLLECTION = "docs"

# Values of "n": numbers at the edges of int64, of float parsing and of the type brackets,
# and everything a numeric filter must not take for a number.
NUMBERS = [0, -0.0, 0.0, 1, 1.0, -1, 0.1, 0.2, 0.30000000000000004, 0.1 + 0.2, 2.5, -2.5, 2.4999999999999996,
           1e-320, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -1.7976931348623157e308,
           2**53, 2**53 + 1, float(2**53), 2**63 - 1, -(2**63), 9.3e18, -9.3e18, 1e22, 123456789.12345679,
           float("inf"), float("-inf"), NAN]
OTHERS = [True, False, None, "5", "", "0.1", [1, 7], [], [0.1, "a"], [[2]], {"a": 1}, {},
          dt.datetime(2020, 1, 1, tzinfo=UTC), ObjectId("0123456789ab0123456789ab")]
# Values of "u": text at the edges of what SQLite's JSON functions read back exactly.
TEXTS = ["a", "b", "", "A", "a\x00b", "a\x00", "\x00", "é", "e\u0301", "\U0001f600", "\x01", "tab\t", "new\nline",
         'q"uote', "back\\slash", "\u2028", "\ufffd", "x" * 200, "x" * 201, "5", "null", "{}"]

# keys a JSON path may not name as they are, and keys that look like path syntax
ODD_KEYS = ["é", "\U0001f600", 'q"k', "back\\k", "new\nk", "a b", "dot.ted", "$dollar", "'", "", "[0]", "*", "a$b"]


def _documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [dict(d) for d in DOCUMENTS]
    next_id = 1000
    for value in [*NUMBERS, *OTHERS]:
        docs.append({"_id": next_id, "n": value})
        next_id += 1
    for value in [*TEXTS, *NUMBERS[:6], *OTHERS]:
        docs.append({"_id": next_id, "u": value})
        next_id += 1
    for key in ODD_KEYS:
        docs.append({"_id": next_id, key: 1, "n": 2})
        docs.append({"_id": next_id + 1, key: "x"})
        next_id += 2
    docs.append({"_id": next_id, "n": 3, "u": "a"})  # and the empty document: every field missing
    docs.append({"_id": next_id + 1})
    return docs


ALL_DOCUMENTS = _documents()

TARGETS = [*NUMBERS, 2.0000000000000004, 0.30000000000000004, 2**63, -(2**63) - 1, 2**64, 10**400, True, False, None,
           *TEXTS, "a\x00c", [1, 7], [], {"a": 1}, dt.datetime(2020, 1, 1, tzinfo=UTC)]


def _pushdown_queries() -> list[dict[str, Any]]:
    queries: list[dict[str, Any]] = []
    for path in ("n", "u"):
        for target in TARGETS:
            queries += [{path: target}, {path: {"$ne": target}}, {path: {"$in": [target]}},
                        {path: {"$nin": [target]}}, {path: {"$in": [target, None]}}, {path: {"$in": [target, "a", 1]}},
                        {path: {"$not": {"$eq": target}}}]
            queries += [{path: {op: target}} for op in ("$eq", "$gt", "$gte", "$lt", "$lte")]
        queries += [{path: {"$exists": arg}} for arg in (True, False, 0, 1, None)]
        queries += [{path: {"$gt": 0.1, "$lte": 2**53}}, {path: {"$gte": "a", "$lt": "b"}}, {path: {"$in": []}},
                    {path: {"$nin": []}}, {path: {"$in": list(range(600))}}, {path: {"$gt": 1, "$type": "double"}}]
    for key in ODD_KEYS:
        queries += [{key: 1}, {key: {"$exists": False}}, {key: None}, {key: {"$ne": 1}}]
    queries += [
        {"$or": [{"n": {"$gt": 2.5}}, {"u": "a"}]}, {"$nor": [{"n": {"$lt": 1}}, {"u": {"$exists": True}}]},
        {"$and": [{"n": {"$gte": 0}}, {"n": {"$ne": 1}}]}, {"n": {"$not": {"$gt": 1}}, "u": {"$exists": False}},
        {"$or": [{"n": None}, {"u": {"$regex": "^a"}}]}, {"$comment": "c", "n": 1}, {"n": 3, "u": "a"},
        {"$nor": [{"n": {"$type": "string"}}, {"n": {"$gt": 0}}]},
        # more parameters than an older SQLite takes in one statement: not pushed down
        {"n": {"$in": list(range(-2, 498))}, "u": {"$nin": [str(i) for i in range(500)]}},
    ]
    return queries


QUERIES = [*make_queries(), *EDGE_QUERIES, *_pushdown_queries()]


def old_scalar_fields(document: dict[str, Any]) -> str:
    """``fields`` as written before layout 2: top-level str (<= 200 characters) and int values only."""
    return json.dumps({k: v for k, v in document.items()
                       if type(v) in (str, int) and not (type(v) is str and len(v) > 200)}, separators=(",", ":"))


def open_store(tmp_path: Path, layout: str, documents: list[dict[str, Any]]) -> SQLiteIndexStore:
    """A store holding ``documents`` with ``fields`` as ``layout`` writes it ("current", "old" or "none")."""
    store = SQLiteIndexStore(tmp_path / "index.sqlite")
    store.insert_many(COLLECTION, documents)
    if layout != "current":
        rewritten = [(old_scalar_fields(d) if layout == "old" else None, str(d["_id"])) for d in documents]
        with store._transaction(immediate=True) as conn:
            conn.executemany("UPDATE documents SET fields = ? WHERE collection = 'docs' AND id = ?", rewritten)
    return store


def verdicts(store: SQLiteIndexStore, query: dict[str, Any]) -> list[int]:
    """The value SQL gives each row of the collection (in insertion order) for ``query``."""
    expression, params = pushdown(query)
    rows = store._conn.execute(f"SELECT {expression} FROM documents WHERE collection = :collection ORDER BY rowid",
                               {**params, "collection": COLLECTION})
    return [verdict for (verdict,) in rows]


@pytest.fixture(scope="module")
def expected() -> dict[int, list[Any] | None]:
    """The matcher's answer to each of QUERIES (by position), or None where it refuses the filter."""
    answers: dict[int, list[Any] | None] = {}
    for i, query in enumerate(QUERIES):
        try:
            answers[i] = [d["_id"] for d in ALL_DOCUMENTS if matches(d, query)]
        except InvalidQueryError:
            answers[i] = None
    return answers


@pytest.mark.parametrize("layout", ["current", "old", "none"])
def test_sql_never_contradicts_the_matcher(tmp_path: Path, expected: dict[int, Any], layout: str) -> None:
    store = open_store(tmp_path, layout, ALL_DOCUMENTS)
    wrong, decided, total = [], 0, 0
    # the old layouts check that SQL leaves what it cannot tell of stale rows to the matcher: every
    # third query is enough there, and keeps the suite in its budget (all three took ~110 s of it)
    step = 1 if layout == "current" else 3
    for i, query in list(enumerate(QUERIES))[::step]:
        if expected[i] is None:
            with pytest.raises(InvalidQueryError):
                store.find(COLLECTION, query)
            continue
        for doc, verdict in zip(ALL_DOCUMENTS, verdicts(store, query)):
            total += 1
            decided += verdict != 1
            if verdict != 1 and (verdict == 2) != (doc["_id"] in expected[i]):
                wrong.append(f"{query!r}: SQL says {verdict} for {doc!r}")
        got = [d["_id"] for d in store.find(COLLECTION, query)]
        if got != expected[i]:
            wrong.append(f"{query!r}: find returned {got}, the matcher {expected[i]}")
    store.close()
    assert not wrong, f"{len(wrong)} wrong answers:\n" + "\n".join(wrong[:20])
    print(f"{layout}: SQL decided {decided} of {total} (query, row) pairs")
    if layout == "current":
        assert decided > 0.5 * total, "SQL decides few rows: is the pushdown switched off?"


def test_a_log_query_is_decided_in_sql(tmp_path: Path) -> None:
    store = open_store(tmp_path, "current", [{"_id": ObjectId(), "project_name": "p", "time": dt.datetime.now(UTC),
                                              "step": i, "loss": 1 / (i + 1)} for i in range(50)])
    query = {"project_name": "p", "step": {"$gt": 24}}
    assert verdicts(store, query) == [0] * 25 + [2] * 25
    # floats only filter (SQLite may read their text an ulp away): loss 1/10 is at the bound, kept for the matcher
    assert verdicts(store, {"project_name": "p", "loss": {"$lt": 0.1}}) == [0] * 9 + [1] * 41
    store.close()


def test_fields_of_the_current_layout() -> None:
    document = {"_id": ObjectId(), "s": 'q"\n\x01é', "i": 7, "f": 0.5, "b": True, "none": None, "list": [1],
                "nan": NAN, "inf": float("inf"), "long": "x" * 201, "nul": "a\x00", "dot.ted": 1, "$d": 1, 'k"': 1,
                "é": 2}
    fields = scalar_fields(document)
    assert fields.startswith('{"\\u0000":3,')  # layout 3: [type bracket, value], [-1] for "present, not told"
    assert json.loads(fields) == {"\x00": 3, "_id": [8, str(document["_id"])], "s": [4, 'q"\n\x01é'], "i": [3, 7],
                                  "f": [3, 0.5], "b": [9, 1], "none": [2, None], "list": [-1], "nan": [-1],
                                  "inf": [-1], "long": [-1], "nul": [-1], "é": [3, 2]}


def test_a_store_written_before_the_layout_is_answered_and_rewritten_on_update(tmp_path: Path) -> None:
    docs = [{"_id": i, "project_name": "p", "step": i, "loss": i / 2, "tag": "a\x00b" if i % 2 else "a"}
            for i in range(10)]
    store = open_store(tmp_path, "old", docs)
    assert [d["_id"] for d in store.find(COLLECTION, {"loss": {"$gte": 3.0}})] == [6, 7, 8, 9]
    assert [d["_id"] for d in store.find(COLLECTION, {"tag": "a\x00b", "step": {"$lt": 5}})] == [1, 3]
    assert [d["_id"] for d in store.find(COLLECTION, {"flag": {"$exists": False}, "step": {"$lt": 2}})] == [0, 1]
    assert store.update_many(COLLECTION, {"step": {"$lt": 3}}, {"$set": {"flag": True}}) == 3
    fields = [f for (f,) in store._conn.execute("SELECT fields FROM documents ORDER BY rowid")]
    assert all(f.startswith('{"\\u0000":3,') for f in fields[:3]) and not any(f.startswith('{"\\u') for f in fields[3:])
    assert [d["_id"] for d in store.find(COLLECTION, {"flag": {"$ne": True}})] == list(range(3, 10))
    store.close()


def test_a_store_without_the_fields_column_gets_it(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "index.sqlite")
    conn.execute("CREATE TABLE documents (collection TEXT NOT NULL, id TEXT NOT NULL, doc BLOB NOT NULL,"
                 " PRIMARY KEY (collection, id))")
    docs = [{"_id": ObjectId(), "project_name": "p", "step": i} for i in range(4)]
    conn.executemany("INSERT INTO documents VALUES ('logs', ?, ?)", [(str(d["_id"]), bson.encode(d)) for d in docs])
    conn.commit()
    conn.close()
    store = SQLiteIndexStore(tmp_path / "index.sqlite")
    assert [d["step"] for d in store.find("logs", {"project_name": "p", "step": {"$gt": 1}})] == [2, 3]
    store.close()


def test_hub_queries_see_floats_and_nul_strings(tmp_path: Path) -> None:
    with TensorHub(f"file://{tmp_path}/store", project_name="p") as hub:
        hub.save_training_logs([{"step": i, "loss": 0.1 * i, "note": "a\x00b" if i == 3 else "a"} for i in range(6)])
        assert [r["step"] for r in hub.find_training_logs(loss={"$gt": 0.30000000000000004})] == [5, 4]
        assert [r["step"] for r in hub.find_training_logs(loss={"$lte": 0.30000000000000004})] == [3, 2, 1, 0]
        assert [r["step"] for r in hub.find_training_logs(note="a\x00b")] == [3]
        assert [r["step"] for r in hub.find_training_logs(step={"$gt": 2.5}, note={"$ne": "a"})] == [3]
