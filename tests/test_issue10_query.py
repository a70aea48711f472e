"""Issue 10, items 13-15 (queries): every filter is checked whole, regexes are time-bounded,
malformed keys and NaN mean the same on every backend.

The tests go through the public API (``find_training_logs``, ``delete_training_log``,
``find_tasks``, ``cancel_tasks``) on every backend of ``tests/conftest.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from bson.regex import Regex

from tensorhub import TensorHub
from tensorhub.errors import ConfigurationError, InvalidQueryError, QueryTimeoutError
from tensorhub.query import REGEX_TIMEOUT_ENV

from conftest import SPLIT_BLOBS, fresh_uri

NAN = float("nan")

# --------------------------------------------------------------------------- item 13

#: operators that MongoDB runs on the server (JavaScript, aggregation expressions), with an argument each
SERVER_SIDE = {
    "$where": "function() { return true; }",
    "$expr": {"$gt": ["$n", 0]},
    "$function": {"body": "function() { return true; }", "args": [], "lang": "js"},
    "$accumulator": {"init": "function() { return 0; }", "lang": "js"},
}


def _nested(op: str, arg: Any) -> list[dict[str, Any]]:
    """``op`` at every depth a filter can hold it, each a whole filter."""
    return [
        {"tags": {"$elemMatch": {op: arg}}},
        {"items": {"$elemMatch": {"k": "a", op: arg}}},
        {"items": {"$elemMatch": {"$and": [{op: arg}]}}},
        {"items": {"$elemMatch": {"v": {"$elemMatch": {op: arg}}}}},
        {"$or": [{"n": 1}, {"tags": {"$elemMatch": {op: arg}}}]},
        {"$nor": [{"$and": [{op: arg}]}]},
        {"tags": {"$not": {"$elemMatch": {op: arg}}}},
        {"tags": {"$all": [{"$elemMatch": {op: arg}}]}},
        {"tags": {"$gt": 0, op: arg}},
        {"tags": {"$not": {op: arg}}},
        {"tags": {"$in": [{op: arg}]}},
        {"tags": {"$eq": {op: arg}}},
    ]


def _refused_everywhere(hub: TensorHub, query: dict[str, Any]) -> None:
    for call in (hub.find_training_logs, hub.delete_training_log, hub.find_tasks, hub.cancel_tasks):
        with pytest.raises(InvalidQueryError):
            call(**query)


def test_item13_server_side_operators_are_refused_at_every_depth(hub: TensorHub) -> None:
    # $where/$expr/$function/$accumulator were refused at the top only: inside $elemMatch they
    # reached MongoDB, passed on an empty file/s3 collection and ran on mongomock
    queries = [q for op, arg in SERVER_SIDE.items() for q in _nested(op, arg)]
    for query in queries:  # an empty collection: nothing is evaluated, the check alone must refuse
        _refused_everywhere(hub, query)
    hub.save_training_log(n=1, tags=[1, 2], items=[{"k": "a", "v": [1]}])
    for query in queries:
        _refused_everywhere(hub, query)
    assert len(hub.find_training_logs()) == 1  # no delete ran


def test_item13_unknown_operators_are_refused_at_every_depth(hub: TensorHub) -> None:
    # an operator tensorhub.query does not implement fails the same on every backend, however deep
    queries = [q for op in ("$gtt", "$text", "$jsonSchema", "$near") for q in _nested(op, 1)]
    hub.save_training_log(n=1, tags=[1, 2], items=[{"k": "a", "v": [1]}])
    for query in queries:
        with pytest.raises(InvalidQueryError, match="unsupported|operator"):
            hub.find_training_logs(**query)
    # what is supported still works at those depths
    assert len(hub.find_training_logs(items={"$elemMatch": {"k": "a", "v": {"$elemMatch": {"$gt": 0}}}})) == 1
    assert len(hub.find_training_logs(tags={"$not": {"$elemMatch": {"$gt": 5}}})) == 1
    assert len(hub.find_training_logs(tags={"$all": [{"$elemMatch": {"$gte": 2}}]})) == 1


# --------------------------------------------------------------------------- item 14

#: backends where tensorhub evaluates regexes itself (MongoDB runs them in the server's own engine)
EVALUATING_BACKENDS = ["file", "s3", "mongomock"]
#: ``^(a|a)+$`` over this backtracks about 2**40 times: hours with an unbounded engine
SLOW_ROW = "a" * 40 + "!"


@pytest.fixture(params=EVALUATING_BACKENDS)
def evaluating_hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TensorHub]:
    uri = fresh_uri(request.param, request, tmp_path_factory)
    with TensorHub(uri, project_name="contract", blobs=SPLIT_BLOBS.get(uri)) as hub:
        yield hub


@pytest.mark.timeout(120)
def test_item14_catastrophic_regex_fails_with_a_timeout_error(
    evaluating_hub: TensorHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ^(a+)+$ over one 30-character row took 36-45 s on file:// and s3://, without limit
    monkeypatch.setenv(REGEX_TIMEOUT_ENV, "0.05")
    hub = evaluating_hub
    hub.save_training_logs([{"s": "plain", "i": i} for i in range(3)] + [{"s": SLOW_ROW}])
    # the reported pattern: the regex engine's guards answer it at once, no error
    assert hub.find_training_logs(s={"$regex": "^(a+)+$"}) == []
    for query in ({"s": {"$regex": "^(a|a)+$"}}, {"s": {"$regex": "^(A|AA)+$", "$options": "i"}},
                  {"s": Regex("^(a|a)+$", "i")}, {"s": re.compile("^(a|a)+$")},
                  {"s": {"$in": ["x", re.compile("^(a|a)+$")]}}, {"s": {"$not": re.compile("^(a|a)+$")}},
                  {"$or": [{"i": 5}, {"s": {"$regex": "^(a|aa)+$"}}]}):
        with pytest.raises(QueryTimeoutError, match=re.escape(REGEX_TIMEOUT_ENV)):
            hub.find_training_logs(**query)
    with pytest.raises(QueryTimeoutError):
        hub.delete_training_log(s={"$regex": "^(a|a)+$"})
    assert len(hub.find_training_logs()) == 4  # nothing deleted
    assert len(hub.find_training_logs(s={"$regex": "^(a|a)+!$"})) == 1  # a pattern that does match is fine
    monkeypatch.setenv(REGEX_TIMEOUT_ENV, "soon")
    with pytest.raises(ConfigurationError, match=REGEX_TIMEOUT_ENV):
        hub.find_training_logs(s={"$regex": "^p"})


def test_item14_regex_options_keep_mongodb_meaning(hub: TensorHub) -> None:
    # the bounded engine reads i, m, s, x and BSON regexes as MongoDB (PCRE) does, on every backend
    hub.save_training_logs([{"s": "first\nSecond"}, {"s": "a\nb"}, {"s": "abc"}])

    def found(**query: Any) -> list[str]:
        return sorted(r["s"] for r in hub.find_training_logs(**query))

    assert found(s={"$regex": "^second", "$options": "im"}) == ["first\nSecond"]
    assert found(s={"$regex": "^second", "$options": "i"}) == []
    assert found(s={"$regex": "a.b", "$options": "s"}) == ["a\nb"]
    assert found(s={"$regex": "a.b"}) == []
    assert found(s={"$regex": "a b c  # spaced", "$options": "x"}) == ["abc"]
    assert found(s=Regex("^SEC", "im")) == ["first\nSecond"]
    assert found(s=re.compile("B$", re.I)) == ["a\nb"]
    assert found(s={"$not": Regex("^a")}) == ["first\nSecond"]
    with pytest.raises(InvalidQueryError, match="regex"):
        hub.find_training_logs(s={"$regex": "(unclosed"})


# --------------------------------------------------------------------------- item 15


def test_item15_non_string_keys_are_refused_at_every_depth(hub: TensorHub) -> None:
    # {"$and": [{1: 2}]} raised AttributeError
    queries = [{"$and": [{1: 2}]}, {"$or": [{"n": 1}, {None: 1}]}, {"$nor": [{"$and": [{(1, 2): 1}]}]},
               {"tags": {"$elemMatch": {1: 2}}}, {"tags": {"$gt": 0, 2: 3}}, {"tags": {"$in": [{1: 2}]}},
               {"tags": {1: 2}}, {"tags": {"$not": {"$elemMatch": {"k": {"$in": [{"x": {3: 4}}]}}}}}]
    for query in queries:
        _refused_everywhere(hub, query)
    hub.save_training_log(n=1, tags=[1, 2])
    for query in queries:
        with pytest.raises(InvalidQueryError, match="strings"):
            hub.find_training_logs(**query)
    assert hub.find_training_logs(n=1) != []


def test_item15_nan_matches_a_stored_nan_on_every_backend(hub: TensorHub) -> None:
    # mongomock compared with ==, so {"acc": nan} missed the stored NaN that file and mongodb match
    hub.save_training_logs([{"acc": NAN, "i": 0}, {"acc": 0.5, "i": 1}, {"i": 2}, {"acc": [1.0, NAN], "i": 3}])

    def found(**query: Any) -> list[int]:
        return sorted(r["i"] for r in hub.find_training_logs(**query))

    assert found(acc=NAN) == [0, 3]
    assert found(acc={"$eq": NAN}) == [0, 3]
    assert found(acc={"$in": [NAN, 0.5]}) == [0, 1, 3]
    assert found(acc={"$ne": NAN}) == [1, 2]
    assert found(acc={"$nin": [NAN]}) == [1, 2]
    assert found(**{"$or": [{"acc": NAN}, {"i": 2}]}) == [0, 2, 3]
    assert found(**{"$nor": [{"acc": NAN}]}) == [1, 2]
    assert hub.delete_training_log(acc=NAN) == 2
    assert found() == [1, 2]


# --------------------------------------------------------------------------- item 13: updates

UPDATES = [{"$rename": {"a": "b"}}, {"$currentDate": {"t": True}}, {"$set": {1: 2}}, {"a": 1},
           [{"$set": {"a": {"$function": SERVER_SIDE["$function"]}}}], {"$push": {"a": {"$each": [1], "$slice": 1}}}]


def test_item13_updates_are_validated_the_same_on_every_index(hub: TensorHub) -> None:
    # the repository builds its updates itself, but an index store must refuse what tensorhub.query
    # cannot apply (pipelines, $rename...) the same way everywhere, matched or not
    for collection in ("empty", "full"):
        if collection == "full":
            hub.index.insert_many("full", [{"_id": 1, "a": [1]}])
        for update in UPDATES:
            with pytest.raises(InvalidQueryError):
                hub.index.update_many(collection, {}, update)
            with pytest.raises(InvalidQueryError):
                hub.index.find_one_and_update(collection, {}, update)
    assert hub.index.find("full", {}) == [{"_id": 1, "a": [1]}]
