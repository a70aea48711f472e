"""Issue 14, file://: declared indexes are SQLite indexes, and filters, sorts, limits, counts,
deletes and claims run in SQL with MongoDB's type brackets, giving the evaluator's answers.

The oracle everywhere is :mod:`tensorhub.query` (held to a MongoDB-wire server by
``tests/test_query_differential.py``): ``sort_documents([d for d in docs if matches(d, q)], sort)``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import multiprocessing
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson
import pytest
from bson import ObjectId
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensorhub import TensorHub
from tensorhub.backends.file import SQLiteIndexStore
from tensorhub.query.sql import MARKER
from tensorhub.query import matches, sort_documents

UTC = dt.timezone.utc
OIDS = [ObjectId("0123456789ab0123456789a0"), ObjectId("0123456789ab0123456789a1"), ObjectId("ffffffffffff0123456789a2")]
DATES = [dt.datetime(2020, 1, 1, tzinfo=UTC), dt.datetime(2020, 1, 1, 0, 0, 0, 1000, tzinfo=UTC),
         dt.datetime(1960, 5, 1, tzinfo=UTC)]
# one value of every bracket SQL tells, and values it leaves to the evaluator (arrays, documents, NaN...)
MIXED = [None, 0, 1, -1, 2**62, 0.5, -2.5, 3.0, 1e300, float("nan"), float("inf"), "", "a", "b", "ab", "é", "x" * 300,
         "a\x00", True, False, *OIDS, *DATES, [1, "a"], [], [None], [[1]], {"x": 1}, {}]


def expected(docs: list[dict[str, Any]], query: dict[str, Any], sort: Any = None,
             limit: int | None = None) -> list[Any]:
    found = sort_documents([d for d in docs if matches(d, query)], sort)
    return [d["_id"] for d in (found[:limit] if limit else found)]


def got(store: SQLiteIndexStore, collection: str, query: dict[str, Any], sort: Any = None,
        limit: int | None = None) -> list[Any]:
    return [d["_id"] for d in store.find(collection, query, sort=sort, limit=limit)]


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[SQLiteIndexStore]:
    index = SQLiteIndexStore(tmp_path / "index.sqlite")
    yield index
    index.close()


def _logs(n_runs: int = 4, per_run: int = 50) -> tuple[list[dict[str, Any]], list[ObjectId]]:
    runs = [ObjectId() for _ in range(n_runs)]
    start = dt.datetime(2024, 1, 1, tzinfo=UTC)
    docs = [{"_id": ObjectId(), "project_name": "p", "time": start + dt.timedelta(milliseconds=r * per_run + i),
             "task_id": run, "attempt": 1, "step": i, "loss": 1 / (i + 1)}
            for r, run in enumerate(runs) for i in range(per_run)]
    return docs, runs


def test_item_file_declared_index_is_an_sqlite_index_used_by_queries(store: SQLiteIndexStore, tmp_path: Path) -> None:
    docs, runs = _logs()
    store.insert_many("logs", docs)
    store.create_index("logs", [("project_name", 1), ("task_id", 1)])
    store.create_index("logs", [("project_name", 1), ("time", -1)])
    assert store.supports_server_side_indexes
    query = {"project_name": "p", "task_id": runs[2]}  # an ObjectId equality, decided in SQL
    plan = store.explain("logs", query, sort=[("step", -1), ("_id", -1)], limit=10)
    assert any("USING INDEX thidx_" in line for line in plan), plan
    assert "the matcher decides some rows" not in plan
    assert got(store, "logs", query, [("step", -1), ("_id", -1)], 10) == expected(docs, query, [("step", -1)], 10)
    newest = store.explain("logs", {"project_name": "p"}, sort=[("time", -1), ("_id", -1)], limit=5)
    assert any("USING INDEX thidx_" in line for line in newest), newest
    assert got(store, "logs", {"project_name": "p"}, [("time", -1), ("_id", -1)], 5) == \
        expected(docs, {"project_name": "p"}, [("time", -1), ("_id", -1)], 5)
    # the index lives in SQLite itself: another opener of the store sees and uses it
    other = SQLiteIndexStore(tmp_path / "index.sqlite")
    assert any("USING INDEX thidx_" in line for line in other.explain("logs", query))
    other.close()
    names = [n for (n,) in sqlite3.connect(tmp_path / "index.sqlite").execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'thidx_%'")]
    assert len(names) == 2


def test_item_file_ranges_and_in_use_the_index_with_type_brackets(store: SQLiteIndexStore) -> None:
    docs = [{"_id": i, "k": v} for i, v in enumerate(MIXED)] + [{"_id": 1000 + i} for i in range(3)]
    store.insert_many("c", docs)
    store.create_index("c", [("k", 1)])
    queries = [{"k": {"$gt": 0}}, {"k": {"$gte": "a"}}, {"k": {"$lt": "b"}}, {"k": {"$gt": OIDS[0]}},
               {"k": {"$gte": DATES[0]}}, {"k": {"$lt": DATES[1]}}, {"k": None}, {"k": {"$in": [1, "a", None, OIDS[1]]}},
               {"k": {"$exists": False}}, {"k": {"$ne": 1}}, {"k": {"$nin": ["a", 0.5]}}, {"k": True},
               {"k": {"$gt": 5}}, {"k": {"$lte": 3}}, {"k": {"$gt": 2**62 - 1}}, {"k": {"$eq": 3}},
               {"k": {"$in": list(range(-5, 50))}}, {"k": {"$gt": None}}, {"k": {"$gte": None}}]
    for query in queries:
        assert got(store, "c", query) == expected(docs, query), query
        assert store.count("c", query) == len(expected(docs, query)), query
    # where the key holds only scalars the index serves each of these (arrays elsewhere leave it to a scan)
    scalars = [d for d in docs if not isinstance(d.get("k"), (list, dict))
               and not (isinstance(d.get("k"), (str, float)) and d["k"] not in ("", "a", "b", "ab", "é", 0.5, -2.5, 3.0))]
    store.insert_many("s", scalars)
    store.create_index("s", [("k", 1)])
    for query in queries:
        assert got(store, "s", query) == expected(scalars, query), query
        condition = query["k"] if isinstance(query["k"], dict) else {"$eq": query["k"]}
        if not {"$ne", "$nin", "$exists"} & set(condition) and condition != {"$gt": None}:
            plan = store.explain("s", query)
            assert any("USING INDEX thidx_" in line for line in plan), (query, plan)


def test_item_file_sort_and_limit_in_sql_across_brackets(store: SQLiteIndexStore) -> None:
    scalars = [v for v in MIXED if not isinstance(v, (list, dict)) and v == v and v not in (float("inf"), 1e300)
               and not (isinstance(v, str) and (len(v) > 200 or "\x00" in v))]
    docs = [{"_id": i, "k": v, "n": i % 3} for i, v in enumerate(scalars * 2)] + [{"_id": 900, "n": 1}]
    store.insert_many("c", docs)
    store.create_index("c", [("k", -1)])
    for sort in ([("k", 1)], [("k", -1)], [("n", 1), ("k", -1)], [("k", 1), ("_id", -1)]):
        for limit in (None, 1, 7, 50):
            assert got(store, "c", {}, sort, limit) == expected(docs, {}, sort, limit), (sort, limit)
            query = {"n": {"$in": [0, 2]}}
            assert got(store, "c", query, sort, limit) == expected(docs, query, sort, limit), (sort, limit)
    plan = store.explain("c", {}, sort=[("k", -1)], limit=3)
    assert not any("TEMP B-TREE" in line for line in plan), plan  # the index gives the order
    # an array under the key: the evaluator's order (min/max of the elements), not SQL's
    store.insert_many("c", [{"_id": 901, "k": [5, "z"], "n": 0}])
    docs.append({"_id": 901, "k": [5, "z"], "n": 0})
    for sort in ([("k", 1)], [("k", -1)]):
        assert got(store, "c", {}, sort, 5) == expected(docs, {}, sort, 5)


def _old_fields(document: dict[str, Any]) -> str:
    """``fields`` as layout 2 wrote it: the marker, then scalars as themselves, anything else as {}."""
    out: dict[str, Any] = {"\x00": 2}
    for key, value in document.items():
        if type(value) in (int, float, bool, str) or value is None:
            out[key] = value if not (type(value) is str and len(value) > 200) else {}
        else:
            out[key] = {}
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


@pytest.mark.parametrize("layout", ["layout2", "none"])
def test_item_file_old_layout_store_is_migrated_and_answers_the_same(tmp_path: Path, layout: str) -> None:
    docs, runs = _logs(3, 20)
    docs += [{"_id": ObjectId(), "project_name": "p", "step": v} for v in MIXED]
    conn = sqlite3.connect(tmp_path / "index.sqlite")
    conn.execute("CREATE TABLE documents (collection TEXT NOT NULL, id TEXT NOT NULL, doc BLOB NOT NULL, fields TEXT,"
                 " PRIMARY KEY (collection, id))")
    conn.executemany("INSERT INTO documents VALUES ('logs', ?, ?, ?)",
                     [(str(d["_id"]), bson.encode(d), _old_fields(d) if layout == "layout2" else None) for d in docs])
    conn.commit()
    conn.close()
    store = SQLiteIndexStore(tmp_path / "index.sqlite")
    store.create_index("logs", [("project_name", 1), ("task_id", 1)])
    fields = [f for (f,) in store._conn.execute("SELECT fields FROM documents")]
    assert all(f.startswith(MARKER) for f in fields)
    for query, sort, limit in [({"task_id": runs[1]}, [("step", -1)], 5), ({"step": {"$gte": 10}}, None, None),
                               ({"step": None}, [("_id", 1)], None), ({"step": {"$type": "string"}}, None, None),
                               ({"project_name": "p"}, [("time", -1), ("_id", -1)], 3)]:
        assert got(store, "logs", query, sort, limit) == expected(docs, query, sort, limit), query
    assert any("USING INDEX thidx_" in line for line in store.explain("logs", {"project_name": "p", "task_id": runs[1]}))
    store.close()


def test_item_file_stale_rows_written_meanwhile_are_answered(store: SQLiteIndexStore) -> None:
    docs, runs = _logs(2, 10)
    store.insert_many("logs", docs)
    store.create_index("logs", [("project_name", 1), ("task_id", 1)])
    # an older tensorhub writing into this store: layout-2 fields the new plans must not trust
    late = {"_id": ObjectId(), "project_name": "p", "task_id": runs[0], "step": 99}
    store._conn.execute("INSERT INTO documents VALUES ('logs', ?, ?, ?)",
                        (str(late["_id"]), bson.encode(late), _old_fields(late)))
    docs.append(late)
    query = {"project_name": "p", "task_id": runs[0]}
    assert got(store, "logs", query, [("step", -1)], 2) == expected(docs, query, [("step", -1)], 2)
    assert store.count("logs", query) == 11
    assert store.delete_many("logs", {"step": {"$gte": 9}}) == 3
    assert store.count("logs", {}) == 18


def test_item_file_delete_and_count_by_filter_in_sql(store: SQLiteIndexStore) -> None:
    docs, runs = _logs(4, 25)
    docs.append({"_id": ObjectId(), "project_name": "p", "task_id": [runs[1]], "step": 0})  # an array: the matcher
    store.insert_many("logs", docs)
    store.create_index("logs", [("project_name", 1), ("task_id", 1)])
    assert store.supports_cheap_count
    assert store.count("logs", {"project_name": "p", "task_id": runs[1]}) == 26
    assert store.delete_many("logs", {"project_name": "p", "task_id": runs[1]}) == 26
    assert store.count("logs", {"task_id": runs[1]}) == 0
    assert store.delete_many("logs", {"project_name": "p", "task_id": runs[2], "step": {"$lt": 5}}) == 5
    assert store.count("logs", {}) == 100 - 30
    remaining = [d for d in docs if not matches(d, {"task_id": runs[1]})
                 and not matches(d, {"task_id": runs[2], "step": {"$lt": 5}})]
    assert got(store, "logs", {}) == [d["_id"] for d in remaining]
    ids = [d["_id"] for d in remaining[:40]]
    assert store.delete_many("logs", {"project_name": "p", "_id": {"$in": ids}}) == 40  # a long $in of _ids
    assert store.count("logs", {}) == 30


def _claimer(path: str, count: int, out: Any) -> None:
    store = SQLiteIndexStore(path)
    claimed = []
    for _ in range(count):
        task = store.find_one_and_update(
            "tasks", {"project_name": "p", "status": "pending", "attempts_left": {"$gt": 0},
                      "cancel_requested": {"$ne": True}},
            {"$set": {"status": "running"}, "$inc": {"attempts_left": -1}},
            sort=[("priority", -1), ("time", 1), ("_id", 1)])
        if task is None:
            break
        claimed.append(str(task["_id"]))
    store.close()
    out.put(claimed)


def test_item_file_claim_is_indexed_and_atomic_across_two_processes(store: SQLiteIndexStore, tmp_path: Path) -> None:
    start = dt.datetime(2024, 1, 1, tzinfo=UTC)
    tasks = [{"_id": ObjectId(), "project_name": "p", "task_name": "t", "status": "pending" if i % 4 else "finished",
              "priority": i % 3, "time": start + dt.timedelta(seconds=i), "attempts_left": 1} for i in range(120)]
    store.insert_many("tasks", tasks)
    store.create_index("tasks", [("project_name", 1), ("task_name", 1), ("status", 1), ("priority", -1), ("time", 1)])
    order = [("priority", -1), ("time", 1), ("_id", 1)]
    query = {"project_name": "p", "task_name": "t", "status": "pending", "attempts_left": {"$gt": 0},
             "cancel_requested": {"$ne": True}}
    assert any("USING INDEX thidx_" in line for line in store.explain("tasks", query, order, limit=1))
    first = store.find_one_and_update("tasks", query, {"$set": {"status": "running"}}, sort=order)
    assert first is not None and first["_id"] == expected(tasks, query, order, 1)[0]
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    workers = [ctx.Process(target=_claimer, args=(str(tmp_path / "index.sqlite"), 200, out)) for _ in range(2)]
    for worker in workers:
        worker.start()
    claimed = [out.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(30)
    pending = sum(1 for t in tasks if t["status"] == "pending")
    everything = claimed[0] + claimed[1]
    assert len(everything) == len(set(everything)) == pending - 1  # each pending task claimed exactly once
    assert store.count("tasks", {"status": "pending"}) == 0


def test_item_file_hub_log_queries_are_decided_in_sql(tmp_path: Path) -> None:
    with TensorHub(f"file://{tmp_path}/store", project_name="p") as hub:
        ids = []
        for r in range(3):
            with hub.start_run("r") as run:
                hub.save_training_logs([{"step": i, "loss": 1 / (i + 1)} for i in range(30)])
                ids.append(run.id)
        rows = hub.find_training_logs(task_id=ids[1], sort=[("step", -1)], limit=5)
        assert [r["step"] for r in rows] == [29, 28, 27, 26, 25] and all(r["task_id"] == ids[1] for r in rows)
        plan = hub.index.explain("training_logs", {"project_name": "p", "task_id": ids[1]})
        assert any("USING INDEX thidx_" in line for line in plan) and "the matcher decides some rows" not in plan
        assert hub.delete_training_log(task_id=ids[1]) == 30
        assert len(hub.find_training_logs()) == 60


# ------------------------------------------------------------------ property test: SQL path == evaluator

KEYS = ["a", "b", "c"]
scalar_values = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([2**62, -(2**63), 0.5, -1.5, 2.0, 1e300, float("nan")]),
    st.sampled_from(["", "a", "b", "ab", "é", "x" * 201, "a\x00"]), st.sampled_from(OIDS), st.sampled_from(DATES))
values = st.one_of(scalar_values, st.lists(scalar_values, max_size=3), st.fixed_dictionaries({"x": st.integers(0, 2)}))
documents = st.lists(st.dictionaries(st.sampled_from(KEYS), values, max_size=3), min_size=0, max_size=12)


def _conditions(key: str) -> st.SearchStrategy[Any]:
    ops = st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"])
    simple = st.one_of(scalar_values, st.builds(lambda op, v: {op: v}, ops, scalar_values),
                       st.builds(lambda v: {"$in": v}, st.lists(scalar_values, max_size=4)),
                       st.builds(lambda v: {"$nin": v}, st.lists(scalar_values, max_size=4)),
                       st.builds(lambda v: {"$exists": v}, st.booleans()))
    return st.one_of(simple, st.builds(lambda op, v: {"$not": {op: v}}, ops, scalar_values),
                     st.builds(lambda lo, hi: {"$gte": lo, "$lt": hi}, scalar_values, scalar_values))


field_filters = st.sampled_from(KEYS).flatmap(lambda k: st.builds(lambda c: {k: c}, _conditions(k)))
filters = st.recursive(
    st.one_of(st.just({}), field_filters),
    lambda inner: st.one_of(st.builds(lambda qs: {"$and": qs}, st.lists(inner, min_size=1, max_size=3)),
                            st.builds(lambda qs: {"$or": qs}, st.lists(inner, min_size=1, max_size=3)),
                            st.builds(lambda a, b: {**a, **b}, inner, inner)),
    max_leaves=4)
sorts = st.one_of(st.none(), st.lists(st.tuples(st.sampled_from([*KEYS, "_id"]), st.sampled_from([1, -1])),
                                      min_size=1, max_size=2, unique_by=lambda p: p[0]))
_collections = itertools.count()


@pytest.fixture(scope="module")
def property_store() -> Iterator[SQLiteIndexStore]:
    with tempfile.TemporaryDirectory() as tmp:
        index = SQLiteIndexStore(Path(tmp) / "index.sqlite")
        yield index
        index.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(docs=documents, query=filters, sort=sorts, limit=st.one_of(st.none(), st.integers(1, 5)),
       indexed=st.booleans())
def test_item_file_property_sql_path_equals_the_evaluator(property_store: SQLiteIndexStore, docs: list[dict[str, Any]],
                                                        query: dict[str, Any], sort: Any, limit: int | None,
                                                        indexed: bool) -> None:
    collection = f"c{next(_collections)}"
    docs = [{"_id": i, **d} for i, d in enumerate(docs)]
    if indexed:
        property_store.create_index(collection, [("a", 1), ("b", -1)])
    if docs:
        property_store.insert_many(collection, docs)
    try:
        want = expected(docs, query, sort, limit)
    except Exception as exc:  # the evaluator refuses it (e.g. an invalid sort): so must the store
        with pytest.raises(type(exc)):
            got(property_store, collection, query, sort, limit)
        return
    assert got(property_store, collection, query, sort, limit) == want
    assert property_store.count(collection, query) == len(expected(docs, query))
