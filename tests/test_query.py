"""Focused tests of tensorhub.query on the edges the differential test found.

Each case states MongoDB's behaviour and where it comes from; several are cases where the
reference server of the differential test (SecantusDB) or mongomock answers otherwise.
"""

from __future__ import annotations

import datetime as dt
import functools
import re

import pytest
from bson import ObjectId

from tensorhub.errors import InvalidQueryError
from tensorhub.query import apply_update, compare_values, matches, sort_documents

NAN = float("nan")
UTC = dt.timezone.utc


def matching(docs: list[dict], query: dict) -> list[int]:
    """The positions of the documents that match ``query``."""
    return [i for i, d in enumerate(docs) if matches(d, query)]


def order(docs: list[dict], sort: list[tuple[str, int]]) -> list[int]:
    """The positions of ``docs`` in sorted order (``docs`` must not already carry ``_id``)."""
    numbered = [dict(d, _id=i) for i, d in enumerate(docs)]
    return [d["_id"] for d in sort_documents(numbered, sort)]


# ------------------------------------------------------------------ dotted paths and null


def test_null_through_a_scalar_matches_but_through_an_array_of_scalars_does_not() -> None:
    # mongod's matcher (matcher/path.cpp): a path running into a scalar reaches a missing
    # field; inside an array only documents carry the path on, so {"a": [1, 2]} offers nothing.
    docs = [{"a": 1}, {"a": None}, {}, {"a": [{"c": 1}]}, {"a": [1, 2]}, {"a": []}, {"a": [None]}, {"a": {"b": 1}}]
    assert matching(docs, {"a.b": None}) == [0, 1, 2, 3]
    assert matching(docs, {"a.b": {"$ne": None}}) == [4, 5, 6, 7]
    assert matching(docs, {"a.b": {"$exists": False}}) == [0, 1, 2, 3, 4, 5, 6]


def test_an_index_past_the_end_of_an_array_is_not_null() -> None:
    # {"ids.0": null} finds {} and {"ids": [null]} but not {"ids": []} on MongoDB
    # (gist.github.com/boutell/db0ca16e4b6de7a592cb79a4ed4a700c; sift.js issue 208).
    docs = [{"a": []}, {}, {"a": [5]}, {"a": [None]}, {"a": 7}]
    assert matching(docs, {"a.0": None}) == [1, 3, 4]
    assert matching(docs, {"a.1": None}) == [1, 4]


def test_an_array_picked_by_index_is_compared_whole() -> None:
    docs = [{"a": [[1, 2], 3]}, {"a": [1]}, {"a": [{"0": 1}]}]
    assert matching(docs, {"a.0": 1}) == [1, 2]
    assert matching(docs, {"a.0": [1, 2]}) == [0]
    assert matching(docs, {"a.0": {"$size": 2}}) == [0]
    # ... while the array a plain path reaches is also opened, one level deep
    assert matching(docs, {"a": [1, 2]}) == [0]
    assert matching(docs, {"a": 1}) == [1]


def test_operators_of_one_condition_may_match_different_elements() -> None:
    docs = [{"a": [0, 5]}, {"a": [{"v": 0}, {"v": 5}]}, {"a": [2]}, {"a": [-1, 0]}]
    assert matching(docs, {"a": {"$gt": 1, "$lt": 3}}) == [0, 2]
    assert matching(docs, {"a.v": {"$gt": 1, "$lt": 3}}) == [1]
    assert matching(docs, {"a": {"$elemMatch": {"$gt": 1, "$lt": 3}}}) == [2]


# ------------------------------------------------------------------ $all and $elemMatch


def test_all_with_an_array_term_matches_a_field_equal_to_that_array() -> None:
    # docs: "{tags: {$all: [["ssl", "security"]]}}" also matches tags equal to ["ssl", "security"]
    docs = [{"a": [1, 2]}, {"a": [[1, 2], 3]}, {"a": [1]}]
    assert matching(docs, {"a": {"$all": [[1, 2]]}}) == [0, 1]


def test_all_is_an_and_of_equalities_so_terms_may_match_different_documents() -> None:
    docs = [{"a": [{"k": "x"}, {"k": "y"}]}, {"a": [{"k": "x"}]}]
    assert matching(docs, {"a.k": {"$all": ["x", "y"]}}) == [0]


def test_all_of_null_matches_a_missing_field_as_equality_to_null_does() -> None:
    docs = [{}, {"a": None}, {"a": [None, 1]}, {"a": 1}]
    assert matching(docs, {"a": {"$all": [None]}}) == matching(docs, {"$and": [{"a": None}]}) == [0, 1, 2]


def test_all_of_nothing_matches_nothing() -> None:
    assert matching([{"a": [1]}, {}], {"a": {"$all": []}}) == []


def test_all_of_elem_matches() -> None:
    docs = [{"a": [{"k": "x", "v": 1}, {"k": "y", "v": 5}]}, {"a": [{"k": "x", "v": 5}]}]
    query = {"a": {"$all": [{"$elemMatch": {"k": "x"}}, {"$elemMatch": {"v": {"$gt": 3}}}]}}
    assert matching(docs, query) == [0, 1]
    with pytest.raises(InvalidQueryError):
        matches(docs[0], {"a": {"$all": [{"$gt": 1}]}})


def test_elem_match_with_operators_does_not_open_nested_arrays() -> None:
    docs = [{"a": [[5]]}, {"a": [5]}, {"a": [[1], 2]}]
    assert matching(docs, {"a": {"$elemMatch": {"$gt": 1}}}) == [1, 2]
    assert matching(docs, {"a": {"$elemMatch": {"$type": "array"}}}) == [0, 2]


def test_elem_match_with_a_query_reads_array_elements_as_documents() -> None:
    # ElemMatchObjectMatchExpression::matchesArray tests every element isABSONObj() accepts:
    # documents and arrays, an array read as {"0": ..., "1": ...}.
    docs = [{"a": [[1, 2]]}, {"a": [1]}, {"a": [{"c": 1}]}, {"a": [{}]}]
    assert matching(docs, {"a": {"$elemMatch": {"0": 1}}}) == [0]
    assert matching(docs, {"a": {"$elemMatch": {"c": None}}}) == [0, 3]
    assert matching(docs, {"a": {"$elemMatch": {}}}) == [0, 2, 3]


# ------------------------------------------------------------------ regexes, NaN, $mod, $type, $exists


def test_eq_with_a_regex_is_equality_not_a_pattern_match() -> None:
    # docs ($eq): {item: {$eq: /abc/}} matches a stored regex /abc/, {item: /abc/} the strings
    docs = [{"s": "abc"}, {"s": "xyz"}]
    assert matching(docs, {"s": {"$eq": re.compile("a")}}) == []
    assert matching(docs, {"s": re.compile("a")}) == [0]
    assert matching(docs, {"s": {"$in": [re.compile("^x"), "abc"]}}) == [0, 1]
    assert matching(docs, {"s": {"$not": re.compile("a")}}) == [1]


@pytest.mark.parametrize("op", ["$ne", "$gt", "$lte"])
def test_a_regex_cannot_be_compared(op: str) -> None:
    with pytest.raises(InvalidQueryError):
        matches({"s": "a"}, {"s": {op: re.compile("a")}})


def test_nan_equals_nan_and_is_neither_above_nor_below_a_number() -> None:
    docs = [{"y": NAN}, {"y": -5}, {"y": 5}]
    assert matching(docs, {"y": NAN}) == [0]
    assert matching(docs, {"y": {"$lt": 0}}) == [1]
    assert matching(docs, {"y": {"$gte": -1e308}}) == [1, 2]
    assert matching(docs, {"y": {"$gte": NAN}}) == [0]
    assert matching(docs, {"y": {"$lt": NAN}}) == []
    assert order(docs, [("y", 1)]) == [0, 1, 2]


def test_mod_keeps_the_sign_of_the_dividend_and_truncates() -> None:
    docs = [{"y": -5}, {"y": 5}, {"y": 5.9}, {"y": -5.9}, {"y": NAN}, {"y": True}]
    assert matching(docs, {"y": {"$mod": [2, 1]}}) == [1, 2]
    assert matching(docs, {"y": {"$mod": [2, -1]}}) == [0, 3]
    with pytest.raises(InvalidQueryError):
        matches(docs[0], {"y": {"$mod": [0, 1]}})


def test_type_takes_a_name_or_a_list_of_names() -> None:
    docs = [{"a": [1]}, {"a": 1}, {"a": True}, {"a": None}, {"a": "s"}, {}]
    assert matching(docs, {"a": {"$type": "array"}}) == [0]
    assert matching(docs, {"a": {"$type": "number"}}) == [0, 1]
    assert matching(docs, {"a": {"$type": ["bool", "null"]}}) == [2, 3]


@pytest.mark.parametrize(("argument", "present"), [(True, True), ("", True), ([], True), (0, False), (None, False)])
def test_exists_reads_its_argument_as_mongodb_does(argument: object, present: bool) -> None:
    # only false, 0 and null are false to MongoDB; "" and [] are true
    assert matching([{"a": 1}, {}], {"a": {"$exists": argument}}) == ([0] if present else [1])


def test_documents_compare_by_field_name_before_value() -> None:
    # BSON order: per field, type bracket, then name, then value
    docs = [{"d": {"b": 0}}, {"d": {"a": 9}}, {"d": {"a": 9, "b": 0}}]
    assert order(docs, [("d", 1)]) == [1, 2, 0]
    assert matching(docs, {"d": {"$gt": {"a": 100}}}) == [0]


# ------------------------------------------------------------------ sorting


def test_an_empty_array_sorts_below_null() -> None:
    # docs (sort order): "a comparison of an empty array treats it as less than null or a missing field"
    docs = [{"a": None}, {"a": []}, {}, {"a": [1]}]
    assert order(docs, [("a", 1), ("_id", 1)]) == [1, 0, 2, 3]
    assert order(docs, [("a", -1), ("_id", 1)]) == [3, 0, 2, 1]
    # the example of jira.mongodb.org/browse/DOCS-2760, with MongoDB's answers
    docs = [{}, {"a": 1}, {"a": []}, {"a": [1]}, {"a": [0, 1]}]
    assert order(docs, [("a", 1)]) == [2, 0, 4, 1, 3]
    assert order(docs, [("a", -1)]) == [1, 3, 4, 0, 2]


def test_a_sort_through_an_array_of_documents_keys_a_missing_field_as_null() -> None:
    # index keys of {"a": [{"b": 5}, {}, 7]} under "a.b" are 5 and null
    # (btree_key_generator_test.cpp, GetKeysArraySubobjectSingleMissing, GetKeysSubobjectMissing)
    docs = [{"a": [{"b": 5}, {}]}, {"a": [{"b": 1}]}, {"a": [{"b": 3}, 7]}, {"a": []}]
    assert order(docs, [("a.b", 1), ("_id", 1)]) == [0, 2, 3, 1]
    assert order(docs, [("a.b", -1), ("_id", 1)]) == [0, 2, 1, 3]


def test_a_sort_uses_the_least_or_greatest_element_one_level_deep() -> None:
    docs = [{"a": [[1, 2], 3]}, {"a": 2}, {"a": [[0]]}, {"a": "s"}]
    assert order(docs, [("a", 1)]) == [1, 0, 3, 2]
    assert order(docs, [("a", -1)]) == [0, 2, 3, 1]


def test_a_sort_by_index_takes_that_element_whole() -> None:
    docs = [{"a": [[1, 2], 0]}, {"a": [5]}, {"a": ["s"]}, {"a": []}]
    assert order(docs, [("a.0", 1)]) == [3, 1, 2, 0]



_COMPARE_KEY = functools.cmp_to_key(compare_values)


@pytest.mark.parametrize("values", [
    ["b", "a", "é", "\U0001f600", "\uffff", "", "B", "a"],  # UTF-8 byte order is code point order
    [3, 1.5, -0.0, 0, 2**63 - 1, -(2**63), 1e300, 2**53 + 1, float(2**53), 1, 1.0, float("inf")],
    [True, False, True],
    [ObjectId("ffffffffffffffffffffffff"), ObjectId("000000000000000000000001"), ObjectId("000000000000000000000001")],
    [dt.datetime(2020, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2))), dt.datetime(2020, 1, 1, tzinfo=UTC),
     dt.datetime(2019, 12, 31, 23, 30, tzinfo=UTC), dt.datetime(2020, 1, 1, tzinfo=UTC)],
    [dt.datetime(2020, 1, 2), dt.datetime(2020, 1, 1)],
    # kinds Python would order otherwise, or not at all: compared in BSON order
    [1, "a", None, 2.5, True],
    [2, NAN, 1, NAN, -1.0],
    [dt.datetime(2020, 1, 2), dt.datetime(2020, 1, 1, tzinfo=UTC)],
    [[2, 1], 3, [0]],
])
@pytest.mark.parametrize("direction", [1, -1])
def test_a_sort_by_plain_values_is_the_bson_order(values: list, direction: int) -> None:
    docs = [{"v": v, "n": i} for i, v in enumerate(values)]
    expected = sorted(range(len(values)), key=lambda i: _COMPARE_KEY(sort_key(values[i], direction)),
                      reverse=direction < 0)
    assert [d["n"] for d in sort_documents(docs, [("v", direction)])] == expected


def sort_key(value: object, direction: int) -> object:
    """The key MongoDB sorts a value by: itself, or an array's least (ascending) or greatest element."""
    keys = value if isinstance(value, list) and value else [value]
    return (min if direction > 0 else max)(keys, key=_COMPARE_KEY)

# ------------------------------------------------------------------ updates


def test_set_and_inc_by_index_pad_the_array_with_nulls() -> None:
    assert apply_update({"a": [1, 2]}, {"$set": {"a.4": 9}}) == {"a": [1, 2, None, None, 9]}
    assert apply_update({"a": [1, 2]}, {"$inc": {"a.1": 1}}) == {"a": [1, 3]}
    assert apply_update({"a": [{"b": 1}]}, {"$set": {"a.2.b": 2}}) == {"a": [{"b": 1}, None, {"b": 2}]}


def test_unset_of_an_array_element_leaves_null() -> None:
    assert apply_update({"a": [1, 2]}, {"$unset": {"a.0": ""}}) == {"a": [None, 2]}
    assert apply_update({"a": [1, 2]}, {"$unset": {"a.5": ""}}) == {"a": [1, 2]}
    assert apply_update({"a": [{"b": 1}], "c": 5}, {"$unset": {"a.b": "", "c.d": ""}}) == {"a": [{"b": 1}], "c": 5}


@pytest.mark.parametrize(
    ("document", "update"),
    [
        ({"a": 5}, {"$set": {"a.b": 1}}),
        ({"a": None}, {"$set": {"a.b": 1}}),
        ({"a": [{"b": 1}]}, {"$set": {"a.b": 2}}),
        ({"a": "x"}, {"$inc": {"a": 1}}),
        ({"a": True}, {"$inc": {"a": 1}}),
        ({"a": None}, {"$inc": {"a": 1}}),
        ({"a": 1}, {"$inc": {"a": True}}),
        ({"a": 5}, {"$push": {"a": 1}}),
        ({"a": [1]}, {"$push": {"a": {"$each": [2], "$slice": 1}}}),
        ({"a": {"b": 1}}, {"$unset": {"a": ""}, "$set": {"a.b": 2}}),
        ({"a": 1}, {"$set": {"_id": 2}}),
    ],
)
def test_an_update_mongodb_refuses_raises_and_changes_nothing(document: dict, update: dict) -> None:
    before = {k: (list(v) if isinstance(v, list) else v) for k, v in document.items()}
    with pytest.raises(InvalidQueryError):
        apply_update(document, update)
    assert document == before


def test_push_appends_a_value_or_each_of_several() -> None:
    assert apply_update({}, {"$push": {"a": [1, 2]}}) == {"a": [[1, 2]]}
    assert apply_update({"a": [0]}, {"$push": {"a": {"$each": [1, 2]}}}) == {"a": [0, 1, 2]}


def test_min_and_max_compare_across_types_in_bson_order() -> None:
    assert apply_update({"a": 5}, {"$min": {"a": None}}) == {"a": None}
    assert apply_update({"a": 5}, {"$max": {"a": "s"}}) == {"a": "s"}
    assert apply_update({"a": 5}, {"$max": {"a": 5.0}}) == {"a": 5}
    assert type(apply_update({"a": 5}, {"$max": {"a": 5.0}})["a"]) is int
    assert apply_update({"a": [3, 1]}, {"$min": {"a": 2}}) == {"a": 2}
    when = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    assert apply_update({"a": when}, {"$max": {"a": True}}) == {"a": when}
    assert apply_update({"a": 1}, {"$min": {"a": NAN}})["a"] != 1


def test_new_fields_are_added_in_mongodb_order() -> None:
    # docs (update operators, behavior): fields are processed in lexicographic order, numeric
    # path components in numeric order (MongoDB 5.0+)
    assert list(apply_update({"a": 1}, {"$set": {"z": 1, "b": 2}, "$inc": {"m": 1}})) == ["a", "b", "m", "z"]
    assert list(apply_update({}, {"$set": {"d.10": 1, "d.9": 2, "d.b": 3}})["d"]) == ["9", "10", "b"]
