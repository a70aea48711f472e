"""``normalize_document``: a record as every backend returns it, with a fast path for flat rows."""

from __future__ import annotations

import datetime as dt
import math
import random

import pytest
from bson import ObjectId

from tensorhub.documents import _plain_copy, decode_document, encode_document, normalize_document
from tensorhub.errors import SerializationError

UTC = dt.timezone.utc


def _values(rng: random.Random) -> list:
    return [rng.randint(-10**6, 10**6), rng.random(), True, False, None, "abc", "", ObjectId(),
            dt.datetime(2020, 1, 2, 3, 4, 5, rng.randint(0, 999) * 1000, tzinfo=UTC),
            dt.datetime(2020, 1, 2, tzinfo=dt.timezone(dt.timedelta(0))), float("nan"), float("-inf"),
            2**31 - 1, 2**31, -2**31, -2**31 - 1, 2**62, -2**63, 2**63 - 1]


def _same(fast: dict, slow: dict) -> None:
    assert list(fast) == list(slow)
    for key, a in fast.items():
        b = slow[key]
        assert type(a) is type(b), (key, a, b)
        if isinstance(a, float) and math.isnan(a):
            assert math.isnan(b)
        else:
            assert a == b
        if isinstance(a, dt.datetime):
            assert a.tzinfo is b.tzinfo


def test_flat_rows_skip_the_round_trip_and_equal_it_exactly() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        values = _values(rng)
        row = {f"k{j}": rng.choice(values) for j in range(rng.randint(0, 8))}
        fast = _plain_copy(row)
        assert fast is not None, row
        _same(fast, decode_document(encode_document(row)))


@pytest.mark.parametrize("row", [
    {"a": 2**63}, {"a": "é"}, {"a": "\ud800"}, {"a": dt.datetime(2020, 1, 1)}, {"é": 1}, {"a\x00": 1},
    {"a": dt.datetime(2020, 1, 1, microsecond=5, tzinfo=UTC)}, {"a": [1]}, {"a": {"b": 1}}, {1: 2}, {"a": (1,)},
    {"a": dt.datetime(2020, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2)))}, {"a": b"bytes"}, {"a": object()},
], ids=lambda row: repr(row) if "object object" not in repr(row) else "{'a': object()}")  # stable ids (xdist)
def test_other_rows_take_the_round_trip(row: dict) -> None:
    assert _plain_copy(row) is None
    try:
        slow = decode_document(encode_document(row))
    except SerializationError:
        with pytest.raises(SerializationError):  # values BSON cannot hold still fail before any write
            normalize_document(row)
    else:
        _same(normalize_document(row), slow)
