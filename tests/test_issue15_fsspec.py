"""Issue 15, item 3: fsspec filesystems as the blob layer (``backends/fsspec.py``).

The blob contract suite runs on ``memory://`` and on a local directory through fsspec
(``fsspec+file:///path``: ``file://`` is tensorhub's own backend), both writing by temp key +
move, and on a memory store declared ``"put"`` (one upload per key, as gcs/azure); then a whole
hub with its index on ``file://`` and its blobs on fsspec.
"""

from __future__ import annotations

import datetime as dt
import importlib
import io
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pytest

from tensorhub import TensorHub
from tensorhub import registry
from tensorhub.backends.base import BlobStore
from tensorhub.backends.fsspec import TMP_PREFIX, FsspecBlobStore
from tensorhub.errors import (
    BackendNotInstalledError,
    ConfigurationError,
    InvalidArgumentError,
)
from tensorhub.ownership import OWNER_KEY
from tensorhub.registry import open_stores
from tensorhub.testing import BlobStoreContract

LAYOUTS = ["memory", "local", "memory-put"]


def _memory_uri() -> str:
    return f"memory://tensorhub-test/{uuid.uuid4().hex}"


def _open(layout: str, tmp_path: Path) -> FsspecBlobStore:
    if layout == "memory":
        store = open_stores(_memory_uri(), index=False).blobs
    elif layout == "local":
        store = open_stores(f"fsspec+file://{tmp_path}/blobs", index=False).blobs
    else:  # what gs:// and az:// do: one put per key, no temp key
        fs = fsspec.filesystem("memory")
        uri = _memory_uri()
        store = FsspecBlobStore(fs, uri[len("memory:/"):], uri, "put")
    assert isinstance(store, FsspecBlobStore)
    return store


@pytest.fixture(params=LAYOUTS)
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    store = _open(request.param, tmp_path)
    yield store
    store.close()
    if store.fs.exists(store.root):  # memory:// lives as long as the process
        store.fs.rm(store.root, recursive=True)


class TestFsspecBlobStore(BlobStoreContract):
    """item 3: the shipped blob contract on memory://, fsspec+file:// and a "put" store."""


def _paths(store: FsspecBlobStore) -> list[str]:
    return sorted(store.fs.find(store.root))


class _Broken(io.RawIOBase):
    """A stream that fails after its first read: a put killed mid-way."""

    def __init__(self) -> None:
        self.reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        self.reads += 1
        if self.reads > 1:
            raise OSError("connection reset while reading the source")
        buffer[:4] = b"part"
        return 4


def test_item03_a_put_that_fails_midway_keeps_the_old_value_and_leaves_nothing(blob_store: FsspecBlobStore) -> None:
    blob_store.put("chunks/k", b"old value")
    before = _paths(blob_store)
    with pytest.raises(Exception, match="connection reset"):
        blob_store.put("chunks/k", io.BufferedReader(_Broken()))
    assert blob_store.get("chunks/k") == b"old value"
    assert _paths(blob_store) == before  # no temp key, nothing half-written
    with pytest.raises(Exception, match="connection reset"):
        blob_store.put("chunks/new", io.BufferedReader(_Broken()))
    assert not blob_store.exists("chunks/new") and _paths(blob_store) == before


def test_item03_writes_declare_how_they_are_atomic(blob_store: FsspecBlobStore, tmp_path: Path) -> None:
    """Temp key + move on memory/local (the temp key never listed), one put on "put" stores."""
    moves: list[tuple[str, str]] = []
    original = blob_store.fs.mv

    def mv(path1: str, path2: str, **kwargs: object) -> None:
        assert blob_store.fs.cat_file(path1) == b"v"  # the whole value exists before it is moved
        assert list(blob_store.list("")) == []        # and the temp key is not a blob
        moves.append((path1, path2))
        original(path1, path2, **kwargs)

    blob_store.fs.mv = mv  # type: ignore[method-assign]
    try:
        blob_store.put("a/b", b"v")
    finally:
        del blob_store.fs.mv
    assert blob_store.get("a/b") == b"v"
    if blob_store.atomic_writes == "rename":
        [(tmp, final)] = moves
        assert tmp.rsplit("/", 1)[1].startswith(TMP_PREFIX) and final == f"{blob_store.root}/a/b"
    else:
        assert moves == []


def test_item03_declared_capabilities_per_protocol() -> None:
    from tensorhub.backends.fsspec import PROTOCOLS

    assert {p: PROTOCOLS[p].atomic_writes for p in ("memory", "file", "gs", "az", "sftp")} == {
        "memory": "rename", "file": "rename", "gs": "put", "az": "put", "sftp": "rename"}
    assert open_stores(_memory_uri(), index=False).blobs.atomic_writes == "rename"


def test_item03_sweep_incomplete_removes_only_old_temp_keys(blob_store: FsspecBlobStore) -> None:
    if blob_store.atomic_writes == "put":
        assert blob_store.sweep_incomplete(dt.timedelta(0)) == 0  # a put publishes whole or not at all
        return
    blob_store.put("chunks/kept", b"x")
    leftover = f"{blob_store.root}/chunks/{TMP_PREFIX}killed"  # what a put killed before its move leaves
    blob_store.fs.pipe_file(leftover, b"partial")
    assert sorted(blob_store.list("")) == ["chunks/kept"]
    assert dict(blob_store.list_modified("")).keys() == {"chunks/kept"}
    assert blob_store.sweep_incomplete(dt.timedelta(hours=1)) == 0  # young: a put may still be writing it
    assert blob_store.sweep_incomplete(dt.timedelta(0), dry_run=True) == 1
    assert blob_store.fs.exists(leftover)
    assert blob_store.sweep_incomplete(dt.timedelta(0)) == 1
    assert not blob_store.fs.exists(leftover) and blob_store.get("chunks/kept") == b"x"


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/abs/key", "a//b", "./a", f"a/{TMP_PREFIX}x", "a\\..\\b", ""])
def test_item03_keys_with_dotdot_or_absolute_parts_are_refused(key: str, tmp_path: Path) -> None:
    store = _open("local", tmp_path)
    for call in (lambda: store.put(key, b"x"), lambda: store.get(key), lambda: store.delete(key),
                 lambda: store.exists(key), lambda: store.freshen(key)):
        with pytest.raises(InvalidArgumentError, match="invalid blob key"):
            call()
    assert not (tmp_path / "escape").exists() and not Path("/abs/key").exists()


def test_item03_the_uri_path_scopes_the_store() -> None:
    base = _memory_uri()
    one, other = (open_stores(uri, index=False).blobs for uri in (f"{base}/p", f"{base}/p2"))
    one.put("chunks/a", b"1")
    other.put("chunks/b", b"2")
    assert list(one.list("")) == ["chunks/a"] and list(other.list("")) == ["chunks/b"]
    assert fsspec.filesystem("memory").cat_file(f"{base[len('memory:/'):]}/p/chunks/a") == b"1"
    assert one.delete_prefix("") == 1 and other.get("chunks/b") == b"2"


def test_item03_an_fsspec_uri_is_no_index_and_says_what_to_give() -> None:
    uri = _memory_uri()
    with pytest.raises(ConfigurationError, match=r"holds no index.*file://.*mongodb://.*blobs="):
        TensorHub(uri, project_name="p")
    with pytest.raises(ConfigurationError, match="holds no index"):
        open_stores("fsspec+file:///tmp/x")


def test_item03_s3_stays_on_boto3_and_unatomic_filesystems_are_refused() -> None:
    assert registry._lookup("s3").target == "tensorhub.backends.s3:open_stores"
    with pytest.raises(ConfigurationError, match=r"boto3.*s3://"):
        open_stores("fsspec+s3://bucket/prefix", index=False)
    with pytest.raises(ConfigurationError, match=r"'http'.*not declared to write a key atomically.*register_fsspec_protocol"):
        open_stores("fsspec+http://example.org/files", index=False)
    with pytest.raises(ConfigurationError, match="names no location"):
        open_stores("memory://", index=False)


def test_item03_missing_gcsfs_or_adlfs_names_the_package_and_the_extra(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    fsspec_registry = importlib.import_module("fsspec.registry")  # the module (fsspec.registry is its mapping)

    for module in ("gcsfs", "adlfs"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails, installed or not
    for protocol in ("gs", "gcs", "az", "abfs"):  # classes fsspec imported already, if any
        monkeypatch.delitem(getattr(fsspec_registry, "_registry", {}), protocol, raising=False)
    with pytest.raises(BackendNotInstalledError, match=r"gcsfs.*pip install 'tensorhub\[gcs\]'") as raised:
        TensorHub(f"file://{tmp_path}/hub", project_name="p", blobs="gs://bucket/prefix")
    assert isinstance(raised.value, ImportError)
    with pytest.raises(BackendNotInstalledError, match=r"adlfs.*pip install 'tensorhub\[azure\]'"):
        open_stores("az://container/prefix", index=False)


def test_item03_missing_fsspec_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)
    monkeypatch.delitem(sys.modules, "tensorhub.backends.fsspec")
    with pytest.raises(BackendNotInstalledError, match=r"tensorhub\[fsspec\]"):
        open_stores(_memory_uri(), index=False)
    with pytest.raises(BackendNotInstalledError, match=r"tensorhub\[gcs\]"):
        open_stores("gs://bucket/prefix", index=False)


@pytest.fixture(params=["memory", "local"])
def blobs_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        uri = _memory_uri()
        yield uri
        fs = fsspec.filesystem("memory")
        if fs.exists(uri[len("memory:/"):]):
            fs.rm(uri[len("memory:/"):], recursive=True)
    else:
        yield f"fsspec+file://{tmp_path}/fsspec-blobs"


def test_item03_a_hub_with_its_index_on_file_and_its_blobs_on_fsspec(blobs_uri: str, tmp_path: Path) -> None:
    index_uri = f"file://{tmp_path}/index"
    x = np.arange(60_000, dtype=np.float32).reshape(2000, 30)
    y = np.arange(2000) % 10
    params = [np.ones((30, 10), np.float32), np.zeros(10, np.float32)]
    with TensorHub(index_uri, project_name="p", blobs=blobs_uri) as hub:
        assert isinstance(hub.blobs, FsspecBlobStore)
        assert not (tmp_path / "index" / "blobs").exists()  # the bytes went to fsspec
        hub.save_dataset([x, y], "mnist", chunk_bytes=40_000)
        hub.save_model(params, "mlp", accuracy=0.9)
        keys = set(hub.blobs.list(""))
        assert OWNER_KEY in keys and sum(k.startswith("chunks/") for k in keys) >= 6
    with TensorHub(index_uri, project_name="p", blobs=blobs_uri) as hub:  # reopened: the same bytes
        got_x, got_y = hub.find_dataset("mnist")
        np.testing.assert_array_equal(got_x, x)
        np.testing.assert_array_equal(got_y, y)
        lazy_x, _ = hub.find_dataset("mnist", lazy=True)
        np.testing.assert_array_equal(lazy_x[1990:], x[1990:])
        model = hub.find_model(model_name="mlp")
        np.testing.assert_array_equal(model[0], params[0])
        assert hub.delete_datasets(dataset_name="mnist") == 1
        assert hub.delete_model(model_name="mlp") == 1
        assert set(hub.blobs.list("")) == {OWNER_KEY}  # deleting the records deleted their blobs
        assert hub.collect_garbage(older_than=0)["incomplete"] == 0
    with pytest.raises(ConfigurationError, match="another index|owned|owner"):  # one index per blob store
        TensorHub(f"file://{tmp_path}/other-index", project_name="p", blobs=blobs_uri).save_dataset([x], "d")


def test_item03_collect_garbage_sweeps_what_killed_puts_left(tmp_path: Path) -> None:
    blobs_uri = f"fsspec+file://{tmp_path}/blobs"
    with TensorHub(f"file://{tmp_path}/index", project_name="p", blobs=blobs_uri) as hub:
        hub.save_dataset([np.arange(10)], "d")
        leftover = tmp_path / "blobs" / "chunks" / f"{TMP_PREFIX}killed"
        leftover.write_bytes(b"partial")
        assert hub.collect_garbage(older_than=0)["incomplete"] == 1
        assert not leftover.exists()
        np.testing.assert_array_equal(hub.find_dataset("d")[0], np.arange(10))



def test_item03_freshen_makes_an_old_blob_young_and_keeps_its_value(blob_store: FsspecBlobStore) -> None:
    import os

    blob_store.put("chunks/old", b"reused bytes")
    path = f"{blob_store.root}/chunks/old"
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)
    if blob_store.fs.protocol == "file" or "file" in blob_store.fs.protocol:
        os.utime(path, (old.timestamp(), old.timestamp()))
    else:  # fsspec's memory keeps the times on its file objects
        entry = blob_store.fs.store[path]
        entry.created = entry.modified = old
    assert dict(blob_store.list_modified("chunks/"))["chunks/old"] < old + dt.timedelta(minutes=1)
    before = _paths(blob_store)
    assert blob_store.freshen("chunks/old") is True
    assert dict(blob_store.list_modified("chunks/"))["chunks/old"] > dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    assert blob_store.get("chunks/old") == b"reused bytes" and _paths(blob_store) == before
