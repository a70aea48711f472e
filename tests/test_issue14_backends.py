"""Issue 14, the MongoDB backends: the declared indexes exist on the server and serve the queries the
repository sends; one error type per fault on every backend, at the hub's level (the store level is
pinned by the contract suite, ``tensorhub.testing.index_contract``); mongomock:// decided by tensorhub.query.

SecantusDB (the test server) answers ``explain`` in MongoDB's plan format, but its planner uses an index
only for a filter made of equalities on a prefix of the index's keys (plus at most one range on the next
key): a filter with any other condition (a claim's ``attempts_left: {$gt: 0}``) is a ``COLLSCAN`` there,
where MongoDB scans the index and filters the rest; and it adds a ``SORT`` stage whenever the sort is not
on the index's leading key. So on SecantusDB ``explain`` is asked about the part of the filter the index
bounds (:func:`pinned`), and whether the index serves the whole query, sort included, is checked from
its keys (:func:`serves`) by the rule MongoDB's planner applies: equality on a prefix of the keys, then
the sort's keys in the index's order (or all reversed). Against a real server
(``$TENSORHUB_TEST_MONGODB_URI``) the whole filter is explained too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from bson.son import SON

from tensorhub import TensorHub, datasets, logs, tasks
from tensorhub.backends.mongo import MongoIndexStore
from tensorhub.errors import ConflictError, DuplicateKeyError, InvalidQueryError
from tensorhub.models import _repository as models_repository
from tensorhub.registry import open_stores
from tensorhub.testing.servers import ENV_MONGODB

from conftest import fresh_uri, write_script

Index = list[tuple[str, int]]
#: the server is SecantusDB unless a real one was named (its planner's limits: see the module docstring)
SERVER_IS_SECANTUS = not os.environ.get(ENV_MONGODB)


def declared_indexes() -> dict[str, list[Index]]:
    """Every index the record kinds declare (their modules' ``INDEXES``), by collection."""
    out: dict[str, list[Index]] = {}
    for module in (datasets, models_repository, logs, tasks):
        for collection, indexes in module.INDEXES.items():
            out.setdefault(collection, []).extend([list(keys) for keys in indexes])
    return out


def equalities(filter: Mapping[str, Any]) -> set[str]:
    """The fields ``filter`` pins to one value (top level and inside ``$and``): what index bounds can be exact on."""
    out: set[str] = set()
    for key, value in filter.items():
        if key == "$and":
            for part in value:
                out |= equalities(part)
        elif not key.startswith("$") and not (isinstance(value, Mapping) and set(value) - {"$eq"}):
            out.add(key)
    return out


def pinned(filter: Mapping[str, Any]) -> dict[str, Any]:
    """The equalities of ``filter`` (top level and inside ``$and``) as one flat filter."""
    out: dict[str, Any] = {}
    for key, value in filter.items():
        if key == "$and":
            for part in value:
                out.update(pinned(part))
        elif key in equalities({key: value}):
            out[key] = value["$eq"] if isinstance(value, Mapping) else value
    return out


def serves(index: Index, filter: Mapping[str, Any], sort: list[tuple[str, int]] | None) -> bool:
    """Whether ``index`` serves the query: its leading keys are fields ``filter`` pins (at least one),
    and the keys after them give the order of ``sort`` (less the pinned fields), forwards or backwards."""
    pinned = equalities(filter)
    prefix = 0
    while prefix < len(index) and index[prefix][0] in pinned:
        prefix += 1
    if prefix == 0:
        return False
    wanted = [(field, direction) for field, direction in sort or [] if field not in pinned]
    rest = index[prefix:prefix + len(wanted)]
    if len(rest) < len(wanted):
        return False
    return any(all(k == f and d == sign * w for (k, d), (f, w) in zip(rest, wanted)) for sign in (1, -1))


def scanned_indexes(db: Any, collection: str, filter: Mapping[str, Any], sort: Any) -> list[Index]:
    """The key patterns of the indexes the server's winning plan scans for ``find(filter).sort(sort)``."""
    command: dict[str, Any] = {"find": collection, "filter": dict(filter)}
    if sort:
        command["sort"] = SON(list(sort))
    plan = db.command("explain", command, verbosity="queryPlanner")["queryPlanner"]["winningPlan"]
    found: list[Index] = []

    def walk(stage: Mapping[str, Any]) -> None:
        if stage.get("stage") == "IXSCAN":
            found.append([(k, int(v)) for k, v in stage["keyPattern"].items()])
        for child in [stage.get("inputStage"), *stage.get("inputStages", [])]:
            if child:
                walk(child)

    walk(plan)
    return found


@pytest.fixture
def mongo_hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TensorHub]:
    with TensorHub(fresh_uri("mongodb", request, tmp_path_factory), project_name="issue14") as hub:
        yield hub


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, dict, Any]]:
    """``(method, collection, filter, sort)`` of every find / find_one_and_update a MongoIndexStore sends."""
    calls: list[tuple[str, str, dict, Any]] = []
    find, find_one_and_update = MongoIndexStore.find, MongoIndexStore.find_one_and_update

    def recorded_find(self: MongoIndexStore, collection: str, filter: Any, sort: Any = None, limit: Any = None) -> Any:
        calls.append(("find", collection, dict(filter), sort))
        return find(self, collection, filter, sort, limit)

    def recorded_update(self: MongoIndexStore, collection: str, filter: Any, update: Any, sort: Any = None) -> Any:
        calls.append(("find_one_and_update", collection, dict(filter), sort))
        return find_one_and_update(self, collection, filter, update, sort)

    monkeypatch.setattr(MongoIndexStore, "find", recorded_find)
    monkeypatch.setattr(MongoIndexStore, "find_one_and_update", recorded_update)
    return calls


# --------------------------------------------------------------------------- indexes on mongodb://


def test_item14_mongodb_declared_indexes_exist_on_the_server(mongo_hub: TensorHub) -> None:
    mongo_hub.index.insert_one("tasks", {"_id": ObjectId(), "project_name": "other"})  # the store is written to
    db = mongo_hub.index.db  # type: ignore[attr-defined]
    for collection, indexes in declared_indexes().items():
        on_server = [[(k, int(d)) for k, d in info["key"]] for info in db[collection].index_information().values()]
        for keys in indexes:
            assert keys in on_server, f"{collection}: declared index {keys} is not on the server ({on_server})"


@pytest.mark.parametrize("task_name", ["train", None], ids=["by-name", "any-name"])
def test_item14_mongodb_task_claim_is_served_by_a_declared_index(
    mongo_hub: TensorHub, sent: list, tmp_path: Path, task_name: str | None
) -> None:
    script = write_script(tmp_path, "result = 1\n")
    for i in range(3):
        mongo_hub.create_task("train", script, {"i": i}, priority=i % 2)
    query = {"task_name": task_name} if task_name else {}
    claimed = mongo_hub.task_queue.claim(query)
    assert claimed is not None and claimed["priority"] == 1
    claims = [c for c in sent if c[0] == "find_one_and_update" and c[1] == "tasks"]
    # no lease has expired (the queue looks at the running tasks first, by equality), so the one
    # conditional write is the claim of a pending task
    assert len(claims) == 1 and claims[0][2].get("status") == "pending"
    looks = [c for c in sent if c[0] == "find" and c[1] == "tasks" and c[2].get("status") == "running"]
    assert looks, "the queue did not look for running tasks with an expired lease"
    claims += looks
    declared = declared_indexes()["tasks"]
    db = mongo_hub.index.db  # type: ignore[attr-defined]
    for _, collection, filter, sort in claims:
        assert any(serves(index, filter, sort) for index in declared), \
            f"no declared index serves the claim {filter} sorted by {sort}"
        for explained in [pinned(filter)] + ([] if SERVER_IS_SECANTUS else [filter]):
            scanned = scanned_indexes(db, collection, explained, sort)
            assert scanned and all(index in declared and serves(index, filter, sort) for index in scanned), \
                f"the server scans {scanned or 'no index'} for {explained}"


@pytest.mark.parametrize("sort", [None, [("step", -1)]], ids=["newest-first", "by-step"])
def test_item14_mongodb_logs_of_a_run_are_found_through_a_declared_index(
    mongo_hub: TensorHub, sent: list, sort: Any
) -> None:
    with mongo_hub.start_run("r") as run:
        for step in range(5):
            mongo_hub.log(step=step, loss=1.0 / (step + 1))
    with mongo_hub.start_run("other"):
        mongo_hub.log(step=0, loss=9.0)
    sent.clear()
    rows = mongo_hub.find_training_logs(task_id=run.id, sort=sort, limit=100)
    assert sorted(r["step"] for r in rows) == [0, 1, 2, 3, 4]
    (_, collection, filter, sent_sort), = [c for c in sent if c[1] == "training_logs"]
    by_run = [("project_name", 1), ("task_id", 1), ("time", -1), ("_id", -1)]
    by_step = [("project_name", 1), ("task_id", 1), ("step", 1), ("_id", 1)]
    declared = declared_indexes()["training_logs"]
    assert by_run in declared and by_step in declared
    # the bounds are exact on the run, and the order comes out of an index: newest first from
    # by_run, by step (either way) from by_step
    assert serves(by_run if sort is None else by_step, filter, sent_sort)
    assert pinned(filter) == filter  # nothing but equalities: explained whole, on SecantusDB too
    scanned = scanned_indexes(mongo_hub.index.db, collection, filter, sent_sort)  # type: ignore[attr-defined]
    assert scanned and all(index in declared and serves(index, filter, None) for index in scanned), \
        f"the server scans {scanned or 'no index'}"


LISTINGS = [  # (collection, the filter of a listing, the kind's name field)
    ("training_logs", {"project_name": "p"}),
    ("datasets", {"project_name": "p", "dataset_name": "d"}),
    ("models", {"project_name": "p", "model_name": "m"}),
    ("tasks", {"project_name": "p", "task_name": "t"}),
]


@pytest.mark.parametrize(("collection", "filter"), LISTINGS, ids=[c for c, _ in LISTINGS])
def test_item14_default_order_listing_is_served_by_a_declared_index(collection: str, filter: dict) -> None:
    """A listing newest first (``records.NEWEST_FIRST``, the ``_id`` tiebreak included) with a limit reads
    its first rows off an index: without ``_id`` in the index, MongoDB sorts every match first."""
    from tensorhub.records import NEWEST_FIRST

    assert any(serves(index, filter, NEWEST_FIRST) for index in declared_indexes()[collection]), \
        f"no declared index of {collection} serves {filter} sorted by {NEWEST_FIRST}"


def test_item14_serves_reads_index_keys_as_mongodb_does() -> None:
    """The rule the tests above apply (so that it can fail): equality prefix, then the sort's keys."""
    index = [("p", 1), ("s", 1), ("priority", -1), ("time", 1), ("_id", 1)]
    assert serves(index, {"p": "x", "s": "pending"}, [("priority", -1), ("time", 1), ("_id", 1)])
    assert serves(index, {"p": "x", "s": "pending"}, [("priority", 1), ("time", -1), ("_id", -1)])  # backwards
    assert not serves(index, {"p": "x", "s": "pending"}, [("priority", -1), ("time", 1), ("other", 1)])
    assert not serves(index, {"p": "x", "s": "pending"}, [("priority", -1), ("time", -1)])  # mixed directions
    assert not serves(index, {"p": "x"}, [("priority", -1)])  # s neither pinned nor sorted on
    assert not serves(index, {"s": "pending"}, None)  # no prefix pinned
    assert serves(index, {"$and": [{"p": "x"}, {"s": {"$eq": "pending"}}], "t": {"$gt": 1}}, [("priority", -1)])
    assert pinned({"$and": [{"p": "x"}, {"s": {"$eq": "pending"}}], "t": {"$gt": 1}}) == {"p": "x", "s": "pending"}


# --------------------------------------------------------------------------- error types, every backend


MALFORMED = [
    ("unknown operator", lambda hub: hub.find_training_logs(loss={"$frobnicate": 1})),
    ("$where", lambda hub: hub.find_training_logs(**{"$where": "this.loss > 1"})),
    ("bad $regex", lambda hub: hub.find_training_logs(note={"$regex": "(unclosed"})),
    ("bad sort direction", lambda hub: hub.find_training_logs(sort=[("step", 2)])),
    ("$set of a non-document", lambda hub: hub.index.update_many("training_logs", {}, {"$set": 5})),
    ("unknown update operator", lambda hub: hub.index.update_many("training_logs", {}, {"$rename": {"a": "b"}})),
    ("$inc of a string", lambda hub: hub.index.update_many("training_logs", {}, {"$inc": {"note": 1}})),
]


@pytest.mark.parametrize(("what", "call"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_item14_malformed_query_is_an_invalid_query_error_on_every_backend(hub: TensorHub, what: str, call: Any) -> None:
    hub.save_training_log(step=1, loss=0.5, note="text")
    with pytest.raises(InvalidQueryError):
        call(hub)
    assert [r["note"] for r in hub.find_training_logs()] == ["text"]  # nothing changed


def test_item14_existing_id_is_a_duplicate_key_error_and_inserts_none_on_every_backend(hub: TensorHub) -> None:
    first, second, third = ({"_id": ObjectId(), "project_name": hub.project_name, "i": i} for i in range(3))
    hub.index.insert_one("training_logs", first)
    with pytest.raises(DuplicateKeyError) as caught:
        hub.index.insert_one("training_logs", dict(first, i=9))
    assert isinstance(caught.value, ConflictError)
    with pytest.raises(DuplicateKeyError):
        hub.index.insert_many("training_logs", [second, dict(first, i=9), third])
    assert [d["i"] for d in hub.index.find("training_logs", {})] == [0]  # all or none: none


# --------------------------------------------------------------------------- mongomock:// is tensorhub.query


MONGOMOCK_DEPARTURES = [  # (filter, ids matched by MongoDB among DOCS): each answered differently by mongomock's matcher
    ({"v": 1}, [1]),  # mongomock: True == 1
    ({"v": float("nan")}, [3]),  # mongomock: NaN never equals NaN
    ({"v": {"$mod": [2, 0]}}, [2]),  # mongomock: $mod unimplemented
    ({"v": {"$type": ["string", "bool"]}}, [0, 4]),  # mongomock: no list of types
    ({"a": {"$size": 1}}, [5]),  # mongomock counts a string's size
    ({"a": {"$all": []}}, []),  # mongomock: every document
]
DOCS = [{"_id": 0, "v": True}, {"_id": 1, "v": 1}, {"_id": 2, "v": 4}, {"_id": 3, "v": float("nan")},
        {"_id": 4, "v": "s", "a": "x"}, {"_id": 5, "a": [1]}]


@pytest.mark.parametrize(("filter", "expected"), MONGOMOCK_DEPARTURES, ids=[repr(f) for f, _ in MONGOMOCK_DEPARTURES])
def test_item14_mongomock_decides_filters_as_the_other_backends(tmp_path: Path, filter: dict, expected: list) -> None:
    stores = {scheme: open_stores(uri, blobs=False).index for scheme, uri in
              (("mongomock", "mongomock://issue14"), ("file", f"file://{tmp_path}"))}
    for store in stores.values():
        store.insert_many("c", [dict(d) for d in DOCS])
    for scheme, store in stores.items():
        assert sorted(d["_id"] for d in store.find("c", filter)) == expected, scheme
        assert store.count("c", filter) == len(expected), scheme
        assert store.update_many("c", filter, {"$set": {"seen": scheme}}) == len(expected), scheme
        assert store.delete_many("c", filter) == len(expected), scheme


def test_item14_mongomock_sorts_as_the_other_backends(tmp_path: Path) -> None:
    docs = [{"_id": 0, "k": [5, 1]}, {"_id": 1, "k": 3}, {"_id": 2, "k": float("nan")}, {"_id": 3, "k": None},
            {"_id": 4}, {"_id": 5, "k": [2]}]
    for uri in ("mongomock://issue14sort", f"file://{tmp_path}"):
        store = open_stores(uri, blobs=False).index
        store.insert_many("c", docs)
        # MongoDB: missing and null first, then NaN below every number, an array by its least element
        assert [d["_id"] for d in store.find("c", {}, sort=[("k", 1), ("_id", 1)])] == [3, 4, 2, 0, 5, 1], uri
        assert [d["_id"] for d in store.find("c", {}, sort=[("k", -1), ("_id", 1)])] == [0, 1, 5, 2, 3, 4], uri
        claimed = store.find_one_and_update("c", {"k": {"$type": "number"}}, {"$set": {"taken": True}},
                                            sort=[("k", -1), ("_id", 1)])
        assert claimed is not None and claimed["_id"] == 0 and claimed["taken"] is True, uri
