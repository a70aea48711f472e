"""Issue 15 item 2: ``tensorhub import-tensorlayer`` / ``import_tensorlayer``.

The source is a database written the way TensorLayer's ``tensorlayer/db.py`` (``tl.db.TensorHub``)
writes it: ``TLWriter`` below reproduces its layout with pymongo + GridFS on SecantusDB (collections
``Dataset``, ``Model``, ``TrainLog``/``ValidLog``/``TestLog``, ``Task``; buckets
``datasetFilesystem`` and ``modelfs``; ``_serialization`` = ``pickle.dumps(x, HIGHEST_PROTOCOL)``;
``time`` = ``datetime.utcnow()``; the user's keywords as fields, ``project_name`` on every record).
It is imported into ``file://``, ``mongodb://`` (another database of the same server) and ``s3://``.
"""

from __future__ import annotations

import datetime as dt
import os
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gridfs
import numpy as np
import pymongo
import pytest
from click.testing import CliRunner
from conftest import fresh_uri

from tensorhub import SerializationError, TensorHub
from tensorhub.cli import main as cli_main
from tensorhub.importers.restricted_pickle import RefusedPickle, restricted_loads
from tensorhub.importers.tensorlayer import ImportRefusedError, import_tensorlayer

SCRIPT = b"test_accuracy = 1.0 - 1.0 / n_units\n"
MARKER_NAME = "tl_import_pwned"


class TLWriter:
    """Writes records as TensorLayer's ``tl.db.TensorHub`` does (same collections, buckets, fields)."""

    def __init__(self, database: Any, project_name: str) -> None:
        self.db, self.project_name = database, project_name
        self.dataset_fs = gridfs.GridFS(database, collection="datasetFilesystem")
        self.model_fs = gridfs.GridFS(database, collection="modelfs")

    @staticmethod
    def _serialization(ps: Any) -> bytes:
        return pickle.dumps(ps, protocol=pickle.HIGHEST_PROTOCOL)

    def _stamp(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs.update(project_name=self.project_name, time=dt.datetime.utcnow())  # noqa: DTZ003 - as TensorLayer
        return kwargs

    def save_dataset(self, dataset: Any, dataset_name: str, raw: bytes | None = None, **kwargs: Any) -> Any:
        kwargs = self._stamp({**kwargs, "dataset_name": dataset_name})
        kwargs["dataset_id"] = self.dataset_fs.put(raw if raw is not None else self._serialization(dataset))
        return self.db.Dataset.insert_one(kwargs).inserted_id

    def save_model(self, params: list, architecture: Any, model_name: str = "model", **kwargs: Any) -> Any:
        kwargs = self._stamp({**kwargs, "model_name": model_name, "architecture": architecture})
        kwargs["params_id"] = self.model_fs.put(self._serialization(params))
        return self.db.Model.insert_one(kwargs).inserted_id

    def save_log(self, collection: str, **kwargs: Any) -> Any:
        return self.db[collection].insert_one(self._stamp(kwargs)).inserted_id

    def create_task(self, task_name: str, script: bytes, hyper_parameters: dict, saved_result_keys: list,
                    status: str = "pending", result: dict | None = None, **kwargs: Any) -> Any:
        kwargs = self._stamp({**kwargs, "task_name": task_name, "hyper_parameters": hyper_parameters,
                              "saved_result_keys": saved_result_keys})
        kwargs.update(status=status, script=script, result=result or {})
        return self.db.Task.insert_one(kwargs).inserted_id


class Evil:
    """A pickle that runs a command when loaded (the attack a restricted unpickler must stop)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def tl_source(mongodb_base: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A TensorLayer database with two projects, and what was written to it."""
    name = f"tl_{uuid.uuid4().hex[:8]}"
    client: pymongo.MongoClient = pymongo.MongoClient(f"{mongodb_base}/{name}", tz_aware=True)
    db = client[name]
    rng = np.random.default_rng(0)
    mnist = TLWriter(db, "mnist")
    X, y = rng.random((50, 6)).astype(np.float32), np.arange(50, dtype=np.int64) % 10
    params = [rng.random((6, 4)).astype(np.float32), np.zeros(4, np.float32), rng.random((4, 2))]
    marker = tmp_path / MARKER_NAME
    ids = {
        "dataset": mnist.save_dataset((X, y), "digits", description="handwriting digit", version=2),
        "evil_dataset": mnist.save_dataset(None, "evil", raw=pickle.dumps(Evil(marker))),
        "model": mnist.save_model(params, [{"class": "DenseLayer", "args": {"n_units": 4}}], "mlp",
                                  test_accuracy=0.93, dataset="digits"),
        "pending": mnist.create_task("train", SCRIPT, {"n_units": 800}, ["test_accuracy"], description="800",
                                     timeout=3),
        "finished": mnist.create_task("train", SCRIPT, {"n_units": 400}, ["test_accuracy"], status="finished",
                                      result={"test_accuracy": 0.9975}, description="400"),
    }
    for step in range(5):
        mnist.save_log("TrainLog", step=step, loss=1.0 / (step + 1), note="tl")
    mnist.save_log("ValidLog", epoch=1, accuracy=0.9)
    mnist.save_log("TestLog", accuracy=0.91)
    other = TLWriter(db, "other")
    other.save_dataset({"a": np.arange(3)}, "tiny")
    other.save_log("TrainLog", step=0, loss=2.0)
    yield {"uri": f"{mongodb_base}/{name}", "db": db, "X": X, "y": y, "params": params, "ids": ids,
           "marker": marker}
    client.drop_database(name)
    client.close()


@pytest.fixture(params=["file", "mongodb", "s3"])
def target_uri(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    return fresh_uri(request.param, request, tmp_path_factory)


def _time(doc: dict) -> dt.datetime:
    when = doc["time"]
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def test_item02_import_round_trips_datasets_params_logs_tasks(tl_source: dict, target_uri: str) -> None:
    db = tl_source["db"]
    with TensorHub(target_uri, project_name="mnist") as hub:
        report = import_tensorlayer(tl_source["uri"], hub, trust_pickle=True)
        assert report.imported == {"datasets": 2, "models": 1, "tasks": 2, "training_logs": 6,
                                   "validation_logs": 1, "testing_logs": 1}
        assert report.projects == ["mnist", "other"] and report.found["Dataset"] == 3
        # datasets: arrays equal, time and user fields kept
        X2, y2 = hub.find_dataset("digits")
        assert np.array_equal(X2, tl_source["X"]) and X2.dtype == np.float32 and np.array_equal(y2, tl_source["y"])
        record = hub.find_dataset_records("digits")[0]
        source = db.Dataset.find_one({"_id": tl_source["ids"]["dataset"]})
        assert record["time"] == _time(source) and record["tensorlayer_id"] == source["_id"]
        assert record["description"] == "handwriting digit" and record["version"] == 2
        # models: the parameter list, the architecture as a note + JSON text, clashing fields renamed
        model = hub.find_model(model_name="mlp")
        assert len(model) == 3 and all(np.array_equal(a, b) for a, b in zip(model, tl_source["params"]))
        rec = model.tensorhub_record
        assert rec["time"] == _time(db.Model.find_one({"_id": tl_source["ids"]["model"]}))
        assert rec["test_accuracy"] == 0.93 and "parameters only" in rec["tensorlayer_note"]
        assert "DenseLayer" in rec["tensorlayer_architecture"]
        assert rec["tensorlayer_dataset"] == "digits" and "dataset_id" not in rec
        assert any("parameters only" in note for note in report.notes)
        # logs: every row, its time and fields
        rows = hub.find_training_logs(sort=[("step", 1)])
        sources = list(db.TrainLog.find({"project_name": "mnist"}, sort=[("step", 1)]))
        assert [r["step"] for r in rows] == list(range(5)) and all(r["note"] == "tl" for r in rows)
        assert [r["time"] for r in rows] == [_time(s) for s in sources]
        assert [r["loss"] for r in rows] == [s["loss"] for s in sources]
        assert hub.find_validation_logs()[0]["accuracy"] == 0.9 and hub.find_testing_logs()[0]["accuracy"] == 0.91
        # tasks: script, hyper-parameters, status and result kept
        tasks = {t["description"]: t for t in hub.find_tasks("train")}
        assert tasks["800"]["status"] == "pending" and tasks["800"]["hyper_parameters"] == {"n_units": 800}
        assert tasks["800"]["script"] == SCRIPT.decode() and tasks["800"]["saved_result_keys"] == ["test_accuracy"]
        assert tasks["800"]["tensorlayer_timeout"] == 3 and tasks["800"]["timeout"] is None
        assert tasks["400"]["status"] == "finished" and tasks["400"]["result"] == {"test_accuracy": 0.9975}
        assert tasks["400"]["time"] == _time(db.Task.find_one({"_id": tl_source["ids"]["finished"]}))
    with TensorHub(target_uri, project_name="other") as other:  # each TensorLayer project into its own
        assert np.array_equal(other.find_dataset("tiny")["a"], np.arange(3))
        assert len(other.find_training_logs()) == 1


def test_item02_second_import_skips_what_the_first_imported(tl_source: dict, tmp_path: Path) -> None:
    with TensorHub(f"file://{tmp_path / 'store'}", project_name="mnist") as hub:
        import_tensorlayer(tl_source["uri"], hub, project="mnist", trust_pickle=True)
        again = import_tensorlayer(tl_source["uri"], hub, project="mnist", trust_pickle=True)
        assert sum(again.imported.values()) == 0 and again.already["training_logs"] == 5
        assert len(hub.find_training_logs()) == 5 and len(hub.find_all_datasets("digits")) == 1
        assert hub.list_projects()[0]["project_name"] == "mnist" and len(hub.list_projects()) == 1


def test_item02_without_trust_lists_and_refuses(tl_source: dict, tmp_path: Path) -> None:
    store = tmp_path / "store"
    with TensorHub(f"file://{store}", project_name="mnist") as hub:
        with pytest.raises(ImportRefusedError, match="unpickling runs code") as caught:
            import_tensorlayer(tl_source["uri"], hub)
        assert isinstance(caught.value, SerializationError)
        assert caught.value.report.found["TrainLog"] == 6 and caught.value.report.bucket_bytes["modelfs"] > 0
        assert hub.list_projects() == []
    result = CliRunner().invoke(cli_main, ["import-tensorlayer", tl_source["uri"], "--to", f"file://{store}"])
    assert result.exit_code == 1 and "--trust-pickle" in result.output and "TrainLog 6" in result.output
    assert not store.exists() or TensorHub(f"file://{store}").list_projects() == []
    assert not tl_source["marker"].exists()


def test_item02_restricted_unpickler_skips_a_malicious_item(tl_source: dict, tmp_path: Path) -> None:
    store = f"file://{tmp_path / 'store'}"
    result = CliRunner().invoke(cli_main, ["import-tensorlayer", tl_source["uri"], "--to", store, "-p", "mnist",
                                           "--trust-pickle"])
    assert result.exit_code == 0, result.output
    assert not tl_source["marker"].exists()  # the os.system reduce never ran
    assert f"skipped Dataset {tl_source['ids']['evil_dataset']}" in result.output and "system" in result.output
    with TensorHub(store, project_name="mnist") as hub:
        assert hub.find_dataset("evil") is None and hub.find_dataset("digits") is not None


def test_item02_restricted_unpickler_allows_only_arrays_and_containers(tmp_path: Path) -> None:
    values = [np.arange(4, dtype=np.float32), np.float64(2.5), np.zeros(2, dtype=[("a", "f4"), ("b", "i2")]),
              {"a": [1, 2.0, "x", None, True]}, (1 + 2j, b"raw", frozenset({1})), np.arange(6).reshape(2, 3).T]
    for protocol in (2, 5):
        for value in values:
            back = restricted_loads(pickle.dumps(value, protocol=protocol))
            assert type(back) is type(value)
            if isinstance(value, np.ndarray):
                assert np.array_equal(back, value) and back.dtype == value.dtype
    marker = tmp_path / MARKER_NAME
    for bad in (Evil(marker), [np.ones(2), Evil(marker)], dt.timedelta(1)):
        with pytest.raises(RefusedPickle):
            restricted_loads(pickle.dumps(bad, protocol=2))
    assert not marker.exists()


def test_item02_time_is_kept_only_inside_keeping_time(tmp_path: Path) -> None:
    from tensorhub import InvalidArgumentError
    from tensorhub.records import keeping_time

    when = dt.datetime(2018, 5, 4, 3, 2, 1, 123456)  # naive: UTC, as TensorLayer wrote it
    with TensorHub(f"file://{tmp_path / 'store'}", project_name="p") as hub:
        with pytest.raises(InvalidArgumentError, match="stamped by tensorhub"):
            hub.save_training_logs([{"time": when, "loss": 1.0}])
        with keeping_time():
            hub.save_training_logs([{"time": when, "loss": 1.0}])
            hub.save_dataset(np.arange(3), "d", time=when)
        assert hub.find_training_logs()[0]["time"] == when.replace(microsecond=123000, tzinfo=dt.timezone.utc)
        assert hub.find_dataset_records("d")[0]["time"].year == 2018
        with pytest.raises(InvalidArgumentError, match="stamped by tensorhub"):  # the block ended
            hub.save_dataset(np.arange(3), "d", time=when)
