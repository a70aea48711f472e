"""Contract tests for :class:`~tensorhub.backends.base.IndexStore` implementations."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from bson import ObjectId

from tensorhub.backends.base import IndexStore
from tensorhub.errors import (
    ConflictError,
    DuplicateKeyError,
    InvalidQueryError,
    TensorHubError,
    UnsupportedOperationError,
)


#: malformed filters: each raises InvalidQueryError on every backend, from every method taking a filter
MALFORMED_FILTERS = {
    "unknown operator": {"i": {"$frobnicate": 1}},
    "$where": {"$where": "this.i > 1"},
    "$expr": {"$expr": {"$gt": ["$i", 1]}},
    "bad $regex": {"tags": {"$regex": "(unclosed"}},
    "operator at the top": {"$gt": 1},
    "$in without a list": {"i": {"$in": 5}},
}
#: malformed updates: each raises InvalidQueryError on every backend, whatever the filter matches
MALFORMED_UPDATES = {
    "$set of a non-document": {"$set": 5},
    "unknown update operator": {"$frobnicate": {"i": 1}},
    "replacement document": {"i": 1},
    "empty update": {},
    "pipeline": [{"$set": {"i": 1}}],
}
#: malformed sorts: each raises InvalidQueryError from find and find_one_and_update
MALFORMED_SORTS = {
    "direction 2": [("i", 2)],
    "direction 0": [("i", 0)],
    "no direction": [("i",)],
    "direction not a number": [("i", "up")],
}


def _docs(n: int) -> list[dict]:
    base = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    return [{"_id": ObjectId(), "i": i, "even": i % 2 == 0, "tags": [f"t{i % 3}"],
             "meta": {"group": "a" if i < n // 2 else "b"}, "time": base + dt.timedelta(minutes=i)}
            for i in range(n)]


class IndexStoreContract:
    """Needs an ``index_store`` fixture yielding an empty store."""

    def test_insert_and_find(self, index_store: IndexStore) -> None:
        docs = _docs(10)
        index_store.insert_many("c", docs)
        found = index_store.find("c", {"i": {"$gte": 5}}, sort=[("i", 1)])
        assert [d["i"] for d in found] == [5, 6, 7, 8, 9]
        assert found[0]["_id"] == docs[5]["_id"]
        assert found[0]["time"] == docs[5]["time"] and found[0]["time"].tzinfo is not None

    def test_collections_are_separate(self, index_store: IndexStore) -> None:
        index_store.insert_many("c1", _docs(3))
        index_store.insert_many("c2", _docs(2))
        assert len(index_store.find("c1", {})) == 3
        assert len(index_store.find("c2", {})) == 2
        assert index_store.find("c3", {}) == []

    def test_sort_and_limit(self, index_store: IndexStore) -> None:
        index_store.insert_many("c", _docs(10))
        found = index_store.find("c", {"even": True}, sort=[("i", -1)], limit=2)
        assert [d["i"] for d in found] == [8, 6]
        found = index_store.find("c", {}, sort=[("meta.group", 1), ("i", -1)], limit=3)
        assert [d["i"] for d in found] == [4, 3, 2]

    def test_dotted_keys_arrays_and_logic(self, index_store: IndexStore) -> None:
        index_store.insert_many("c", _docs(10))
        assert index_store.count("c", {"meta.group": "b"}) == 5
        assert index_store.count("c", {"tags": "t1"}) == 3
        assert index_store.count("c", {"$or": [{"i": 0}, {"i": {"$in": [8, 9]}}]}) == 3
        assert index_store.count("c", {"i": {"$not": {"$lt": 7}}}) == 3
        assert index_store.count("c", {"missing": {"$exists": False}}) == 10
        assert index_store.count("c", {"tags": {"$regex": "^T2", "$options": "i"}}) == 3

    def test_update_many(self, index_store: IndexStore) -> None:
        index_store.insert_many("c", _docs(6))
        assert index_store.update_many("c", {"even": True}, {"$set": {"x": 1}, "$inc": {"i": 100}}) == 3
        assert sorted(d["i"] for d in index_store.find("c", {"x": 1})) == [100, 102, 104]
        assert index_store.update_many("c", {"i": 1}, {"$unset": {"meta": ""}, "$push": {"tags": "new"}}) == 1
        one = index_store.find_one("c", {"i": 1})
        assert "meta" not in one and one["tags"] == ["t1", "new"]

    def test_find_one_and_update_returns_updated_first_match(self, index_store: IndexStore) -> None:
        index_store.insert_many("c", _docs(5))
        got = index_store.find_one_and_update("c", {"even": True}, {"$set": {"taken": True}}, sort=[("i", -1)])
        assert got["i"] == 4 and got["taken"] is True
        assert index_store.find_one_and_update("c", {"i": 99}, {"$set": {"taken": True}}) is None
        assert index_store.count("c", {"taken": True}) == 1

    def test_concurrent_claims_have_one_winner(self, index_store: IndexStore) -> None:
        index_store.insert_many("c", [{"_id": ObjectId(), "status": "pending"}])
        winners: list[str] = []
        barrier = threading.Barrier(8)

        def claim(name: str) -> None:
            barrier.wait(timeout=30)
            got = index_store.find_one_and_update("c", {"status": "pending"}, {"$set": {"status": name}})
            if got is not None:
                winners.append(name)

        threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(winners) == 1
        assert index_store.find_one("c", {})["status"] == winners[0]

    def test_delete_many(self, index_store: IndexStore) -> None:
        index_store.insert_many("c", _docs(6))
        assert index_store.delete_many("c", {"even": False}) == 3
        assert sorted(d["i"] for d in index_store.find("c", {})) == [0, 2, 4]
        assert index_store.delete_many("c", {"i": 99}) == 0

    def test_unsupported_operator_is_a_clear_error(self, index_store: IndexStore) -> None:
        index_store.insert_many("c", _docs(2))
        with pytest.raises(TensorHubError):
            index_store.find("c", {"i": {"$frobnicate": 1}})

    def test_bad_update_is_a_clear_error(self, index_store: IndexStore) -> None:
        index_store.insert_many("c", _docs(2))
        with pytest.raises((InvalidQueryError, TensorHubError)):
            index_store.update_many("c", {}, {"plain": 1})

    def test_a_batch_repeating_an_id_is_a_duplicate_key_error(self, index_store: IndexStore) -> None:
        doc = _docs(1)[0]
        with pytest.raises(DuplicateKeyError) as caught:
            index_store.insert_many("c", [doc, dict(doc, i=2)])
        assert isinstance(caught.value, ConflictError)
        assert index_store.find("c", {}) == []  # all or none: not even the first copy

    # ------------------------------------------------------------------ one error type per fault
    @pytest.mark.parametrize("name", sorted(MALFORMED_FILTERS))
    @pytest.mark.parametrize("stored", [0, 3], ids=["empty", "full"])
    def test_malformed_filter_is_an_invalid_query_error(self, index_store: IndexStore, name: str, stored: int) -> None:
        bad = MALFORMED_FILTERS[name]
        if stored:
            index_store.insert_many("c", _docs(stored))
        calls = {
            "find": lambda: index_store.find("c", bad),
            "count": lambda: index_store.count("c", bad),
            "update_many": lambda: index_store.update_many("c", bad, {"$set": {"x": 1}}),
            "find_one_and_update": lambda: index_store.find_one_and_update("c", bad, {"$set": {"x": 1}}),
            "delete_many": lambda: index_store.delete_many("c", bad),
        }
        for method, call in calls.items():
            with pytest.raises(InvalidQueryError):
                call()
                pytest.fail(f"{method} accepted the filter {bad!r} ({name})")
        assert index_store.count("c", {}) == stored and index_store.count("c", {"x": 1}) == 0  # nothing changed

    @pytest.mark.parametrize("name", sorted(MALFORMED_UPDATES))
    @pytest.mark.parametrize("stored", [0, 3], ids=["empty", "full"])
    def test_malformed_update_is_an_invalid_query_error(self, index_store: IndexStore, name: str, stored: int) -> None:
        bad = MALFORMED_UPDATES[name]
        docs = _docs(stored)
        if stored:
            index_store.insert_many("c", docs)
        with pytest.raises(InvalidQueryError):
            index_store.update_many("c", {}, bad)  # a pipeline (a list) is refused too
        with pytest.raises(InvalidQueryError):
            index_store.find_one_and_update("c", {}, bad, sort=[("i", 1)])
        assert [d["_id"] for d in index_store.find("c", {"i": {"$exists": True}}, sort=[("i", 1)])] == \
            [d["_id"] for d in docs]  # nothing changed

    @pytest.mark.parametrize("name", sorted(MALFORMED_SORTS))
    def test_malformed_sort_is_an_invalid_query_error(self, index_store: IndexStore, name: str) -> None:
        index_store.insert_many("c", _docs(2))
        bad = MALFORMED_SORTS[name]
        with pytest.raises(InvalidQueryError):
            index_store.find("c", {}, sort=bad)
        with pytest.raises(InvalidQueryError):
            index_store.find_one_and_update("c", {}, {"$set": {"x": 1}}, sort=bad)
        assert index_store.count("c", {"x": 1}) == 0

    def test_update_the_stored_value_refuses_is_an_invalid_query_error(self, index_store: IndexStore) -> None:
        doc = dict(_docs(1)[0], s="text")
        index_store.insert_many("c", [doc])
        # refused by what the document holds (so a store with nothing to update accepts them, as MongoDB does)
        for update in ({"$inc": {"s": 1}}, {"$push": {"s": 1}}, {"$set": {"s.inner": 1}}, {"$set": {"_id": 1}}):
            with pytest.raises(InvalidQueryError):
                index_store.update_many("c", {}, update)
            with pytest.raises(InvalidQueryError):
                index_store.find_one_and_update("c", {}, update)
        assert index_store.find("c", {}) == [doc]

    def test_inserting_an_existing_id_is_a_duplicate_key_error(self, index_store: IndexStore) -> None:
        docs = _docs(3)
        index_store.insert_many("c", docs[:1])
        with pytest.raises(DuplicateKeyError) as caught:
            index_store.insert_one("c", dict(docs[0], i=99))
        assert isinstance(caught.value, ConflictError)
        assert index_store.find_one("c", {"_id": docs[0]["_id"]})["i"] == 0  # the stored record is kept

    def test_insert_many_meeting_an_existing_id_inserts_none(self, index_store: IndexStore) -> None:
        """``insert_many`` is all or none: a batch holding one existing ``_id`` (not first) inserts nothing."""
        docs = _docs(4)
        index_store.insert_many("c", docs[:1])
        with pytest.raises(DuplicateKeyError):
            index_store.insert_many("c", [docs[1], dict(docs[0], i=99), docs[2]])
        assert [d["_id"] for d in index_store.find("c", {})] == [docs[0]["_id"]]
        index_store.insert_many("c", docs[1:])  # nothing of the refused batch is left in the way
        assert index_store.count("c", {}) == 4

    # ------------------------------------------------------------------ declared capabilities
    def test_capabilities_are_declared_flags(self, index_store: IndexStore) -> None:
        for flag in ("supports_compaction", "supports_cheap_count", "supports_server_side_indexes"):
            assert isinstance(getattr(type(index_store), flag), bool), f"{flag} must be a bool class attribute"

    def test_compact_does_what_supports_compaction_declares(self, index_store: IndexStore) -> None:
        docs = _docs(6)
        for doc in docs:  # one write each: what compaction exists to merge
            index_store.insert_one("c", doc)
        index_store.update_many("c", {"i": 2}, {"$set": {"x": 1}})
        if index_store.supports_compaction:
            merged = index_store.compact("c")
            assert isinstance(merged, int) and merged >= 0
            assert index_store.compact("c") == 0  # nothing is left to merge right after a compaction
        else:
            with pytest.raises(UnsupportedOperationError, match="supports_compaction"):
                index_store.compact("c")
        found = index_store.find("c", {}, sort=[("i", 1)])
        assert [d["_id"] for d in found] == [d["_id"] for d in docs]  # every document, once
        assert found[2]["x"] == 1

    def test_cheap_count_is_the_stores_own(self, index_store: IndexStore) -> None:
        index_store.insert_many("c", _docs(10))
        if index_store.supports_cheap_count:  # the default count() is a find(): a cheap one overrides it
            assert type(index_store).count is not IndexStore.count
        assert index_store.count("c", {"even": True}) == 5

    def test_create_index_does_what_server_side_indexes_declares(self, index_store: IndexStore) -> None:
        if index_store.supports_server_side_indexes:  # the default create_index() ignores the call
            assert type(index_store).create_index is not IndexStore.create_index
        index_store.create_index("c", [("meta.group", 1), ("i", -1)])  # accepted either way
        index_store.insert_many("c", _docs(4))
        assert [d["i"] for d in index_store.find("c", {"meta.group": "a"}, sort=[("i", -1)])] == [1, 0]

    def test_a_change_token_changes_with_every_write_and_only_then(self, index_store: IndexStore) -> None:
        """``change_token()`` is None (the store cannot tell) or differs after each kind of write."""
        docs = _docs(4)
        index_store.insert_many("c", docs[:2])
        token = index_store.change_token()
        if token is None:  # stores without tokens: pollers just poll
            return
        assert index_store.change_token() == token  # reads change nothing
        index_store.find("c", {"i": 0})
        index_store.find_one_and_update("c", {"i": 99}, {"$set": {"x": 1}})  # a claim that finds nothing
        assert index_store.change_token() == token
        writes = [lambda: index_store.insert_many("c", docs[2:]),
                  lambda: index_store.update_many("c", {"i": 2}, {"$set": {"x": 1}}),
                  lambda: index_store.find_one_and_update("c", {"i": 3}, {"$set": {"x": 2}}),
                  lambda: index_store.delete_many("c", {"i": 0})]
        for write in writes:
            write()
            changed = index_store.change_token()
            assert changed != token
            token = changed
