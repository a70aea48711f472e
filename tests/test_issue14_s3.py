"""Issue 14 on ``s3://``: zone maps prune the segments a query reads, claims skip finished tasks,
and an existing ``_id`` is refused (moto server from ``tests/conftest.py``; GETs counted per key)."""

from __future__ import annotations

import datetime as dt
import random
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from bson import ObjectId
from bson.int64 import Int64

from tensorhub import TensorHub
from tensorhub.backends.s3 import _compaction as s3_compaction
from tensorhub.backends.s3._zones import build_zone, encode_zone, may_match, sid_zone
from tensorhub.documents import normalize_document
from tensorhub.errors import DuplicateKeyError
from tensorhub.query import matches, sort_documents
from tensorhub.registry import open_stores
from tests.conftest import fresh_uri

C = "zones"


@pytest.fixture
def uri(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(s3_compaction, "COMPACT_TRIGGER", 0)  # no background merges: GET counts are exact
    return fresh_uri("s3", request, tmp_path_factory)


class _Gets:
    """Counts the GETs a store's client sends, by kind of key (``seg`` or ``state``)."""

    def __init__(self, index: Any) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        index._conn.client.meta.events.register("before-parameter-build.s3.GetObject", self._count)

    def _count(self, params: Any, **_: Any) -> None:
        with self._lock:
            self.counts["seg" if "/seg/" in params["Key"] else "state"] += 1


@pytest.fixture
def open_index(uri: str) -> Iterator[Any]:
    opened: list[Any] = []

    def make() -> Any:
        index = open_stores(uri, blobs=False).index
        opened.append(index)
        return index

    yield make
    for index in opened:
        index.close()


def normalize(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [normalize_document(d) for d in docs]


def _ids(docs: list[dict[str, Any]]) -> list[Any]:
    return [d["_id"] for d in docs]


# ------------------------------------------------------------------------------ item 1: zone maps
def test_item14_s3_a_runs_logs_are_read_from_its_segments_only(uri: str) -> None:
    """1,500 log rows of 30 runs in 60 segments: a cold hub reads one run's rows in 2 segment GETs."""
    runs = [ObjectId() for _ in range(30)]
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    with TensorHub(uri, project_name="p") as hub:
        for half in range(2):
            for r, run in enumerate(runs):
                hub.index.insert_many("training_logs", [
                    {"_id": ObjectId(), "project_name": "p", "time": start + dt.timedelta(seconds=step),
                     "task_id": run, "attempt": 1, "step": step, "loss": 1.0 / (step + 1 + r)}
                    for step in range(half * 25, half * 25 + 25)])
    with TensorHub(uri, project_name="p") as cold:
        gets = _Gets(cold.index)
        rows = cold.find_training_logs(task_id=runs[7], sort=[("step", -1)], limit=30)
        assert [r["step"] for r in rows] == list(range(49, 19, -1))
        assert gets.counts["seg"] == 2, gets.counts  # its two segments, of 60
        assert gets.counts["state"] == 0
        gets.counts.clear()
        assert len(cold.find_training_logs(step={"$gte": 48})) == 60  # a range on another field
        assert gets.counts["seg"] == 29  # the second halves of the other runs: the first halves are ruled out
        gets.counts.clear()
        assert len(cold.find_training_logs(task_id=runs[7])) == 50  # warm: nothing downloaded again
        assert gets.counts["seg"] == 0


def _random_value(rng: random.Random) -> Any:
    kind = rng.randrange(12)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randrange(-3, 4)
    if kind == 3:
        return Int64(rng.randrange(-3, 4))
    if kind == 4:
        return rng.choice([0.5, -1.5, 2.0, float("nan"), 3.0])
    if kind == 5:
        return rng.choice(["a", "b", "ab", "", "é", "Z"])
    if kind == 6:
        return dt.datetime(2026, 1, 1 + rng.randrange(3), tzinfo=dt.timezone.utc)
    if kind == 7:
        return [rng.randrange(3), "a"]  # an array: its segment cannot be pruned on the field
    if kind == 8:
        return {"x": rng.randrange(2)}
    if kind == 9:
        return ObjectId(f"{rng.randrange(3):024x}")
    return rng.randrange(100)  # many distinct values: a min/max summary


_VALUES = [None, True, False, 0, 1, 2, Int64(2), 2.0, 0.5, float("nan"), 50, "a", "ab", "", "Z",
           dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc), ObjectId(f"{1:024x}"), [0, "a"], {"x": 1}]


def _filters() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{}]
    for v in _VALUES:
        out += [{"f": v}, {"f": {"$eq": v}}, {"f": {"$ne": v}}, {"g": v}]
        if not isinstance(v, (list, dict)):
            out += [{"f": {"$gt": v}}, {"f": {"$gte": v}}, {"f": {"$lt": v}}, {"f": {"$lte": v}}]
    out += [{"f": {"$in": [1, "a", None]}}, {"f": {"$in": [50, 60]}}, {"f": {"$nin": [1, 2]}},
            {"f": {"$exists": False}}, {"f": {"$type": "long"}}, {"f": {"$type": "int"}},
            {"f": {"$gte": 10, "$lt": 40}}, {"f": {"$regex": "^a"}}, {"f.x": 1}, {"f": {"$size": 2}},
            {"$or": [{"f": 1}, {"g": "b"}]}, {"$and": [{"f": {"$gt": 5}}, {"g": {"$lt": 50}}]},
            {"$nor": [{"f": 1}]}, {"f": {"$elemMatch": {"$eq": 1}}}, {"f": {"$not": {"$gt": 5}}},
            {"f": {"$in": [[0, "a"], {"x": 1}]}}]
    return out


def _random_docs(rng: random.Random, n: int, start: int = 0) -> list[dict[str, Any]]:
    docs = []
    for i in range(n):
        doc: dict[str, Any] = {"_id": ObjectId(), "i": start + i}
        if rng.random() < 0.8:
            doc["f"] = _random_value(rng)
        if rng.random() < 0.8:
            doc["g"] = _random_value(rng)
        docs.append(doc)
    return docs


def test_item14_s3_a_zone_never_rules_out_a_segment_holding_a_match() -> None:
    """The zone maps against the evaluator, over many small random segments (no S3 needed)."""
    rng = random.Random(7)
    pruned = 0
    for _ in range(80):
        docs = normalize([*_random_docs(rng, rng.randrange(1, 15))])
        if rng.random() < 0.3:  # segments of one kind of value (what prunes in practice)
            value = _random_value(rng)
            for d in docs:
                d["f"] = value
        for budget in (None, 120):  # all fields, and a key too short for some of them
            zone = sid_zone("x.z" + encode_zone(build_zone(docs, ["f"], budget=budget)))
            for flt in _filters():
                if any(matches(d, flt) for d in docs):
                    assert may_match(zone, flt), (flt, docs)
                else:
                    pruned += not may_match(zone, flt)
    assert pruned > 500  # and it does rule segments out


def test_item14_s3_pruned_answers_equal_the_evaluators_over_mixed_types_arrays_and_missing(open_index: Any) -> None:
    rng = random.Random(14)
    writer = open_index()
    docs: list[dict[str, Any]] = []
    for _ in range(30):  # 30 segments of 1-12 documents, each holding a few kinds of values
        batch = _random_docs(rng, rng.randrange(1, 13), len(docs))
        writer.insert_many(C, batch)
        docs += batch
    # updates give some segments states (with their own zones): values change type, become arrays, vanish
    assert writer.update_many(C, {"i": {"$in": list(range(0, len(docs), 7))}}, {"$set": {"f": "moved"}}) > 0
    assert writer.update_many(C, {"i": {"$in": list(range(3, len(docs), 11))}}, {"$set": {"g": [1, 2]}}) > 0
    assert writer.update_many(C, {"i": {"$in": list(range(5, len(docs), 13))}}, {"$unset": {"f": ""}}) > 0
    current = writer.find(C, {})
    assert len(current) == len(docs)
    cold = open_index()  # prunes while it reads
    for flt in _filters()[::5] + [{"f": "moved"}, {"f": None}, {"g": [1, 2]}, {"g": 1}]:
        expected = [d["_id"] for d in current if matches(d, flt)]
        assert _ids(cold.find(C, flt)) == expected, flt
    assert cold.count(C, {"f": {"$gte": 1}}) == sum(matches(d, {"f": {"$gte": 1}}) for d in current)
    sort = [("f", 1), ("i", -1)]
    assert _ids(cold.find(C, {"f": {"$gte": 1}}, sort=sort)) == _ids(
        sort_documents([d for d in current if matches(d, {"f": {"$gte": 1}})], sort))


def test_item14_s3_an_update_that_moves_values_out_of_a_zone_is_still_found(open_index: Any) -> None:
    writer = open_index()
    writer.insert_many(C, [{"_id": ObjectId(), "k": "a", "n": i} for i in range(20)])
    writer.insert_many(C, [{"_id": ObjectId(), "k": "b", "n": i} for i in range(20)])
    assert writer.update_many(C, {"k": "a", "n": {"$lt": 5}}, {"$set": {"k": "c"}}) == 5
    cold = open_index()
    gets = _Gets(cold)
    assert len(cold.find(C, {"k": "c"})) == 5
    assert gets.counts == Counter({"state": 1, "seg": 1})  # only the "a" segment, whose state says "c"
    assert len(cold.find(C, {"k": "a"})) == 15 and len(writer.find(C, {"k": "a"})) == 15
    assert len(cold.find(C, {"k": "b"})) == 20


# ------------------------------------------------------------------------------ item 2: claims
def test_item14_s3_a_claim_does_not_read_segments_of_finished_tasks(open_index: Any) -> None:
    writer = open_index()
    sweeps = []
    for s in range(10):  # 10 sweeps of 20 tasks, one segment each; 9 of them run to the end
        tasks = [{"_id": ObjectId(), "project_name": "p", "task_name": "t", "status": "pending", "priority": 0,
                  "time": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), "attempts_left": 3, "sweep": s}
                 for _ in range(20)]
        writer.insert_many("tasks", tasks)
        sweeps.append(tasks)
    claim = {"project_name": "p", "task_name": "t", "status": "pending", "attempts_left": {"$gt": 0}}
    order = [("priority", -1), ("time", 1), ("_id", 1)]
    for _ in range(3):  # claims through the index, as runners do
        task = writer.find_one_and_update("tasks", claim, {"$set": {"status": "running"}}, sort=order)
        assert task is not None and task["sweep"] == 0
    # the first 9 sweeps end (their states now hold every task, finished, and say so in their zones)
    assert writer.update_many("tasks", {"sweep": {"$lt": 9}}, {"$set": {"status": "finished"}}) == 180
    cold = open_index()
    gets = _Gets(cold)
    task = cold.find_one_and_update("tasks", claim, {"$set": {"status": "running"}}, sort=order)
    assert task is not None and task["sweep"] == 9
    assert gets.counts["seg"] == 1, gets.counts  # the 9 finished sweeps are ruled out by their states' zones
    assert gets.counts["state"] == 9
    gets.counts.clear()
    again = cold.find_one_and_update("tasks", claim, {"$set": {"status": "running"}}, sort=order)
    assert again is not None and again["sweep"] == 9 and again["_id"] != task["_id"]
    assert gets.counts["seg"] == 0
    assert len(cold.find("tasks", {"status": "finished"})) == 180  # still all there when asked for


# ------------------------------------------------------------------------------ item 3: duplicate _id
def test_item14_s3_inserting_an_existing_id_is_a_duplicate_key_error(open_index: Any) -> None:
    writer, other = open_index(), open_index()
    doc = {"_id": ObjectId(), "n": 1}
    writer.insert_many(C, [doc, {"_id": ObjectId(), "n": 2}])
    with pytest.raises(DuplicateKeyError, match="exists"):
        writer.insert_many(C, [{"_id": ObjectId(), "n": 3}, {"_id": doc["_id"], "n": 4}])
    with pytest.raises(DuplicateKeyError, match="exists"):  # another instance (process) checks the store too
        other.insert_many(C, [{"_id": doc["_id"], "n": 5}])
    with pytest.raises(DuplicateKeyError):
        other.insert_many(C, [{"_id": "s"}, {"_id": "s"}])  # within the batch
    assert sorted(d["n"] for d in other.find(C, {})) == [1, 2]  # nothing of the refused batches landed
    assert writer.delete_many(C, {"_id": doc["_id"]}) == 1
    other.insert_many(C, [{"_id": doc["_id"], "n": 6}])  # a deleted _id may be used again
    assert sorted(d["n"] for d in writer.find(C, {})) == [2, 6]
