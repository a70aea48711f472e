"""Contract tests for :class:`~tensorhub.backends.base.BlobStore` implementations."""

from __future__ import annotations

import datetime as dt
import io
import os

import pytest

from tensorhub.backends.base import BlobStore
from tensorhub.errors import NotFoundError


class BlobStoreContract:
    """Needs a ``blob_store`` fixture yielding an empty store."""

    def test_put_get_bytes(self, blob_store: BlobStore) -> None:
        blob_store.put("a/b/c.bin", b"hello")
        assert blob_store.get("a/b/c.bin") == b"hello"

    def test_put_stream(self, blob_store: BlobStore) -> None:
        data = os.urandom(3 << 20)
        blob_store.put("big", io.BytesIO(data))
        assert blob_store.get("big") == data

    def test_put_replaces(self, blob_store: BlobStore) -> None:
        blob_store.put("k", b"old value")
        blob_store.put("k", b"new")
        assert blob_store.get("k") == b"new"
        assert list(blob_store.list("k")) == ["k"]

    def test_missing_key_raises_not_found(self, blob_store: BlobStore) -> None:
        with pytest.raises(NotFoundError):
            blob_store.get("nope/never")
        with pytest.raises(LookupError):  # NotFoundError is also a LookupError
            blob_store.get("nope/never")

    def test_exists(self, blob_store: BlobStore) -> None:
        assert not blob_store.exists("x/y")
        blob_store.put("x/y", b"1")
        assert blob_store.exists("x/y")

    def test_get_range(self, blob_store: BlobStore) -> None:
        data = bytes(range(256)) * 10
        blob_store.put("r", data)
        assert blob_store.get_range("r", 10, 20) == data[10:30]
        assert blob_store.get_range("r", 2500) == data[2500:]
        assert blob_store.get_range("r", 2550, 100) == data[2550:]

    def test_open_reads_stream(self, blob_store: BlobStore) -> None:
        blob_store.put("s", b"streamed bytes")
        with blob_store.open("s") as stream:
            assert stream.read() == b"streamed bytes"

    def test_delete_and_delete_missing(self, blob_store: BlobStore) -> None:
        blob_store.put("d", b"1")
        blob_store.delete("d")
        assert not blob_store.exists("d")
        blob_store.delete("d")  # a missing key is not an error

    def test_list_by_prefix(self, blob_store: BlobStore) -> None:
        for key in ("p/1", "p/2", "p/sub/3", "q/1", "pp/1"):
            blob_store.put(key, b"x")
        assert sorted(blob_store.list("p/")) == ["p/1", "p/2", "p/sub/3"]
        assert sorted(blob_store.list("")) == ["p/1", "p/2", "p/sub/3", "pp/1", "q/1"]

    def test_delete_prefix(self, blob_store: BlobStore) -> None:
        for key in ("p/1", "p/sub/2", "q/1"):
            blob_store.put(key, b"x")
        assert blob_store.delete_prefix("p/") == 2
        assert sorted(blob_store.list("")) == ["q/1"]

    def test_list_modified_gives_each_key_its_write_time(self, blob_store: BlobStore) -> None:
        before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)  # clock skew of a server
        for key in ("p/1", "p/sub/2", "q/1"):
            blob_store.put(key, b"x")
        listed = dict(blob_store.list_modified("p/"))
        assert sorted(listed) == ["p/1", "p/sub/2"]
        for when in listed.values():
            if when is not None:  # None: the backend cannot tell (garbage collection then keeps the blob)
                assert when.tzinfo is not None and before <= when <= before + dt.timedelta(minutes=5)

    def test_freshen_says_whether_the_key_exists_and_keeps_its_value(self, blob_store: BlobStore) -> None:
        assert blob_store.freshen("absent/key") is False
        assert list(blob_store.list("absent")) == []
        blob_store.put("kept", b"value")
        assert blob_store.freshen("kept") is True
        assert blob_store.get("kept") == b"value"
