"""Issue 10, storage items: fields the repository owns (2), one index per blob store (3), leftovers of
killed writes (11), damaged records and records nested too deep (12)."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from bson import ObjectId

from tensorhub import TensorHub
from tensorhub.errors import ConfigurationError, CorruptDataError, InvalidArgumentError, SerializationError
from tensorhub.ownership import OWNER_KEY

from conftest import fresh_uri

TWO_DAYS = 2 * 24 * 3600


def _script(tmp_path: Path) -> str:
    path = tmp_path / "task.py"
    path.write_text("x = 1\n")
    return str(path)


def _blobs(hub: TensorHub) -> set[str]:
    return {key for key in hub.blobs.list("") if key != OWNER_KEY}


# ---------------------------------------------------------------------------- item 2
@pytest.mark.parametrize("field", ["blob_prefix", "blob_refs"])
def test_item02_fields_the_repository_owns_are_refused_on_every_kind(hub: TensorHub, tmp_path: Path,
                                                                      field: str) -> None:
    value = "chunks/"
    script = _script(tmp_path)
    attempts = {
        "training log": lambda: hub.save_training_log(loss=1.0, **{field: value}),
        "validation logs": lambda: hub.save_validation_logs([{"loss": 1.0, field: value}]),
        "testing log": lambda: hub.save_testing_log(loss=1.0, **{field: value}),
        "dataset": lambda: hub.save_dataset(np.ones(3), "d", **{field: value}),
        "model": lambda: hub.save_model([np.ones(3)], "m", **{field: value}),
        "task": lambda: hub.create_task("t", script, **{field: value}),
    }
    for kind, attempt in attempts.items():
        with pytest.raises(InvalidArgumentError, match=field):
            attempt()
            pytest.fail(f"a {kind} accepted the field {field!r}")
    assert hub.find_training_logs() == hub.find_validation_logs() == hub.find_testing_logs() == []
    assert hub.find_dataset_records() == [] and hub.find_model() is None and hub.find_tasks() == []
    assert _blobs(hub) == set()


def test_item02_a_delete_frees_only_blobs_under_the_records_own_id(hub: TensorHub) -> None:
    # another project's dataset (with a pickled leaf: a record blob of its own) and model (chunks)
    other = TensorHub(hub.uri, project_name="victim", blobs=hub.blobs_uri)
    try:
        data = [np.arange(1000.0), {"obj": {1, 2}}]
        victim_id = other.save_dataset(data, "victim-data", allow_pickle=True)
        other.save_model([np.arange(50.0)], "victim-model")
        victim_blobs = _blobs(hub)
        assert any(key.startswith(f"datasets/{victim_id}/") for key in victim_blobs)
        chunk = next(key[len("chunks/"):] for key in victim_blobs if key.startswith("chunks/"))

        # records a hostile or careless writer put in the shared store directly, bypassing the API
        now = dt.datetime.now(dt.timezone.utc)
        base = {"project_name": hub.project_name, "time": now}
        hub.index.insert_one("training_logs", {"_id": ObjectId(), **base, "loss": 1.0, "blob_prefix": "chunks/"})
        hub.index.insert_one("tasks", {"_id": ObjectId(), **base, "task_name": "t", "status": "finished",
                                       "blob_prefix": f"datasets/{victim_id}/", "blob_refs": [chunk]})
        hub.index.insert_one("datasets", {"_id": ObjectId(), **base, "dataset_name": "evil", "spec": "{}",
                                          "schema": [], "blob_prefix": f"datasets/{victim_id}/",
                                          "blob_refs": [f"../datasets/{victim_id}/pickle-0.bin", "x" * 64,
                                                        f"{chunk}/.."]})
        assert hub.delete_training_log() == 1
        assert hub.delete_tasks() == 1
        assert hub.delete_datasets(dataset_name="evil") == 1
        assert _blobs(hub) == victim_blobs  # nothing of another record was freed
        loaded = other.find_dataset("victim-data", allow_pickle=True)
        np.testing.assert_array_equal(loaded[0], data[0])
        assert loaded[1] == data[1]
        np.testing.assert_array_equal(other.find_model(model_name="victim-model")[0], np.arange(50.0))

        # records written by tensorhub, which store blob_prefix themselves, still free their blobs
        assert other.delete_datasets() == 1 and other.delete_model() == 1
        assert _blobs(hub) == set()
    finally:
        other.close()


# ---------------------------------------------------------------------------- item 3
def _uris_sharing_blobs(backend: str, request: pytest.FixtureRequest,
                        tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """Two index URIs and one blobs URI they would share."""
    if backend == "file":
        return (fresh_uri("file", request, tmp_path_factory), fresh_uri("file", request, tmp_path_factory),
                fresh_uri("file", request, tmp_path_factory))
    first, second = fresh_uri("mongodb", request, tmp_path_factory), fresh_uri("mongodb", request, tmp_path_factory)
    if backend == "mongodb":
        return first, second, fresh_uri("mongodb", request, tmp_path_factory)
    return first, second, fresh_uri("s3", request, tmp_path_factory)  # "mongodb+s3"


@pytest.mark.parametrize("backend", ["file", "mongodb", "mongodb+s3"])
def test_item03_a_second_index_on_the_same_blobs_is_refused(backend: str, request: pytest.FixtureRequest,
                                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    first_uri, second_uri, blobs_uri = _uris_sharing_blobs(backend, request, tmp_path_factory)
    x = np.random.default_rng(3).random((500, 4))
    with TensorHub(first_uri, project_name="p", blobs=blobs_uri) as first:
        first.save_dataset([x], "mine")
    with pytest.raises(ConfigurationError, match="belongs to another index") as refused:
        TensorHub(second_uri, project_name="p", blobs=blobs_uri)
    assert OWNER_KEY in str(refused.value) and "blobs" in str(refused.value)
    # the owner opens it again (same identity), and nothing of its data was touched
    with TensorHub(first_uri, project_name="p", blobs=blobs_uri) as again:
        np.testing.assert_array_equal(again.find_dataset("mine")[0], x)
        again.collect_garbage(older_than=0)
        np.testing.assert_array_equal(again.find_dataset("mine")[0], x)
    # the second index with blobs of its own works
    with TensorHub(second_uri, project_name="p") as second:
        second.save_dataset([x], "mine")
        assert second.delete_datasets() == 1


def test_item03_the_default_layout_of_a_store_is_not_borrowed_by_another_index(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    owner = fresh_uri("file", request, tmp_path_factory)
    with TensorHub(owner, project_name="p") as hub:
        hub.save_dataset([np.arange(10)], "d")
    borrower = fresh_uri("file", request, tmp_path_factory)
    with pytest.raises(ConfigurationError, match="belongs to another index"):
        TensorHub(borrower, project_name="p", blobs=owner)  # an empty index on a marked blob store


def test_item03_a_store_written_before_markers_is_adopted(hub: TensorHub) -> None:
    hub.save_dataset([np.arange(10)], "d")
    assert OWNER_KEY in set(hub.blobs.list(""))
    hub.blobs.delete(OWNER_KEY)  # as a store written before owner markers existed
    with TensorHub(hub.uri, project_name=hub.project_name, blobs=hub.blobs_uri) as again:
        assert OWNER_KEY in set(again.blobs.list(""))  # adopted by its index
        np.testing.assert_array_equal(again.find_dataset("d")[0], np.arange(10))
    with TensorHub(hub.uri, project_name=hub.project_name, blobs=hub.blobs_uri) as third:  # and still its own
        assert third.collect_garbage(older_than=0)["chunks"] == 0
        np.testing.assert_array_equal(third.find_dataset("d")[0], np.arange(10))


# ---------------------------------------------------------------------------- item 11
def test_item11_gc_sweeps_temp_files_of_killed_saves_by_age(tmp_path: Path) -> None:
    with TensorHub(f"file://{tmp_path}", project_name="p") as hub:
        hub.save_dataset([np.arange(100)], "d")
        chunks = tmp_path / "blobs" / "chunks"
        old, young = chunks / ".tmp-killed1", chunks / ".tmp-killed2"
        old.write_bytes(b"x" * 1000)
        young.write_bytes(b"y" * 1000)
        aged = time.time() - TWO_DAYS
        os.utime(old, (aged, aged))
        assert hub.collect_garbage(dry_run=True)["incomplete"] == 1 and old.exists()
        assert hub.collect_garbage()["incomplete"] == 1  # the default grace (a day) keeps the young one
        assert not old.exists() and young.exists()
        assert hub.collect_garbage(older_than=0)["incomplete"] == 1
        assert not young.exists()
        np.testing.assert_array_equal(hub.find_dataset("d")[0], np.arange(100))
        with pytest.raises(InvalidArgumentError, match=".tmp-"):
            hub.blobs.put("notes/.tmp-mine", b"a key the sweep would take for a temp file")


def test_item11_gc_sweeps_gridfs_pieces_of_killed_uploads_by_age(request: pytest.FixtureRequest,
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    with TensorHub(fresh_uri("mongodb", request, tmp_path_factory), project_name="p") as hub:
        x = np.random.default_rng(1).random(100_000)
        hub.save_dataset([x], "d")
        database = hub.blobs.files.database
        pieces = database["blobs.chunks"]
        stored = pieces.count_documents({})
        # an upload killed after writing pieces, before its files document: one begun two days ago, one now
        old_id = ObjectId.from_datetime(dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=TWO_DAYS))
        pieces.insert_many([{"files_id": files_id, "n": n, "data": b"o" * 1000}
                            for files_id in (old_id, ObjectId()) for n in range(3)])
        assert hub.collect_garbage(dry_run=True)["incomplete"] == 1
        assert pieces.count_documents({}) == stored + 6
        assert hub.collect_garbage()["incomplete"] == 1  # the default grace keeps the upload begun now
        assert pieces.count_documents({"files_id": old_id}) == 0
        assert hub.collect_garbage(older_than=0)["incomplete"] == 1
        assert pieces.count_documents({}) == stored
        np.testing.assert_array_equal(hub.find_dataset("d")[0], x)


# ---------------------------------------------------------------------------- item 12
def test_item12_a_damaged_row_of_the_file_index_is_a_corrupt_data_error_naming_it(tmp_path: Path) -> None:
    with TensorHub(f"file://{tmp_path}", project_name="p") as hub:
        hub.save_training_log(loss=1.0)
        damaged = hub.save_training_log(loss=2.0)
        with sqlite3.connect(tmp_path / "index.sqlite") as db:
            db.execute("UPDATE documents SET doc = ? WHERE id = ?", (b"\x30\x00\x00\x00\x02oops\x00", str(damaged)))
        for call in (hub.find_training_logs, hub.delete_training_log):
            with pytest.raises(CorruptDataError, match=str(damaged)) as failed:
                call()
            assert "training_logs" in str(failed.value) and "DELETE FROM documents" in str(failed.value)
        assert [r["loss"] for r in hub.find_training_logs(loss=1.0)] == [1.0]  # rows it does not read still work


@pytest.mark.parametrize("kind", ["dataset", "model"])
def test_item12_a_missing_gridfs_piece_is_a_corrupt_data_error_naming_the_record(
        kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    with TensorHub(fresh_uri("mongodb", request, tmp_path_factory), project_name="p") as hub:
        x = np.random.default_rng(2).random(100_000)  # incompressible: 800 KB, several GridFS pieces
        saved = hub.save_dataset([x], "d") if kind == "dataset" else hub.save_model([x], "m")
        deleted = hub.blobs.files.database["blobs.chunks"].delete_one({"n": 1})
        assert deleted.deleted_count == 1
        with pytest.raises(CorruptDataError, match=str(saved)):
            hub.find_dataset("d") if kind == "dataset" else hub.find_model(model_name="m")
        with pytest.raises(CorruptDataError, match="GridFS"):
            hub.blobs.get(next(iter(hub.blobs.list("chunks/"))))


def _nested(levels: int, leaf: object) -> object:
    value = leaf
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


def test_item12_records_nested_too_deep_to_read_back_are_refused(hub: TensorHub, tmp_path: Path) -> None:
    from tensorhub.documents import MAX_DEPTH

    deep = _nested(MAX_DEPTH + 50, 1)
    looped: list = []
    looped.append(looped)
    script = _script(tmp_path)
    for value in (deep, _nested(990, 1), looped):
        with pytest.raises(SerializationError, match=str(MAX_DEPTH)):
            hub.save_training_log(deep=value)
        with pytest.raises(SerializationError, match=str(MAX_DEPTH)):
            hub.save_model([np.ones(2)], "m", deep=value)
        with pytest.raises(SerializationError, match=str(MAX_DEPTH)):
            hub.create_task("t", script, hyper_parameters={"deep": value})
        with pytest.raises(SerializationError, match=str(MAX_DEPTH)):
            hub.save_dataset(_nested(490, np.ones(2)) if value is not looped else [np.ones(2), looped], "d")
    assert hub.find_training_logs() == [] and hub.find_model() is None and hub.find_tasks() == []
    assert hub.find_dataset_records() == [] and _blobs(hub) == set()
    # as deep as allowed: saved and read back the same on every backend
    hub.save_training_log(deep=_nested(MAX_DEPTH - 1, 1))
    assert hub.find_training_logs()[0]["deep"] == _nested(MAX_DEPTH - 1, 1)
    hub.save_dataset(_nested(MAX_DEPTH - 1, np.arange(3)), "d")
    assert str(hub.find_dataset("d")) == str(_nested(MAX_DEPTH - 1, np.arange(3)))


def test_item03_identity_is_kept_in_the_index(tmp_path: Path) -> None:
    # the marker names the index's identity, kept in the index itself: a copy of the blob store's
    # marker under a new index does not make that index its owner
    from tensorhub.ownership import index_identity

    with TensorHub(f"file://{tmp_path / 'a'}", project_name="p") as hub:
        hub.save_training_log(step=0)  # a new store is created (and its identity written) by its first write
        first = index_identity(hub.index)
        assert first == index_identity(hub.index, create=False) and uuid.UUID(hex=first)
    with TensorHub(f"file://{tmp_path / 'a'}", project_name="p") as hub:
        assert index_identity(hub.index) == first
